"""The fixed reference network latency is measured against, and where its long-run latency on a device is kept.

On a shared machine a core's speed changes from process to process and minute to minute (a small EvoNet timed in
five fresh processes on an idle machine gave 1.5 to 3.1 ms, with the thread's CPU time equal to its wall time): no
clock, wall or CPU, sees it. What does hold is a ratio: timed in the same process, in interleaved rounds, a network
and a fixed reference network slow down together, and their ratio stays within a few per cent across processes. So
`evonets.deploy.latency` times every network beside `reference_network()` and reports its latency as that ratio times
the reference's long-run milliseconds on the device (`reference_latency_ms`, calibrated once over several fresh
processes and cached per device fingerprint in `cache_dir()`).

The reference is a small EvoNet (a conv stage and an attention stage at 32 px, about half a millisecond on one core):
the same kinds of work, and the same Python dispatch, as the networks it is the yardstick of. Its weights are drawn
from a fixed seed; `REFERENCE_ID` names its definition, so that a changed reference never passes for the old one
(the id is part of the device fingerprint).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from evonets.engine.identity import digest
from evonets.models.configuration_evonet import EvoNetConfig
from evonets.models.modeling_evonet import EvoNetForImageClassification

REFERENCE_CONFIG = {
    "image_size": 32,
    "patch_size": 2,
    "depths": [1, 1],
    "hidden_sizes": [32, 64],
    "block_types": [["conv"], ["attention"]],
    "num_labels": 10,
}
"""The reference network's `EvoNetConfig` fields."""

REFERENCE_SEED = 0
REFERENCE_ID = digest({"config": REFERENCE_CONFIG, "seed": REFERENCE_SEED, "input": "randn(1, 3, 32, 32) seed 0"})
"""Names the reference (its definition and input): part of every device fingerprint that times against it."""

CACHE_ENV = "EVONETS_LATENCY_CACHE"
"""Environment variable naming the folder of the reference's calibrations (default `~/.cache/evonets/latency`)."""


def reference_network() -> EvoNetForImageClassification:
    """The reference network, in eval mode, with weights drawn from `REFERENCE_SEED` (the global RNG is left as it
    was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REFERENCE_SEED)
        return EvoNetForImageClassification(EvoNetConfig(**REFERENCE_CONFIG)).eval()


def reference_input() -> torch.Tensor:
    """The input the reference is timed on: one standard-normal 32 px image, seeded (0)."""
    size = REFERENCE_CONFIG["image_size"]
    return torch.randn((1, 3, size, size), generator=torch.Generator().manual_seed(0))


def cache_dir() -> Path:
    """The folder of the reference's calibrations: `$EVONETS_LATENCY_CACHE`, else `~/.cache/evonets/latency`."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/evonets/latency").expanduser()


__all__ = [
    "CACHE_ENV",
    "REFERENCE_CONFIG",
    "REFERENCE_ID",
    "REFERENCE_SEED",
    "cache_dir",
    "reference_input",
    "reference_network",
]
