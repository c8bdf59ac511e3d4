"""Device fingerprints: what a latency depends on besides the network, as a JSON-able dict and a short key.

`device_fingerprint(settings)` records the CPU model and vector ISA, cores, threads, runtime (PyTorch or onnxruntime),
selective-scan backend, batch, clock, allocator, the reference network latency is expressed against, and library
versions. Latencies with different fingerprints are not
comparable; `fingerprint_key` is the short hash that says whether two are.

A fingerprint is a report: computing one reads the machine, the libraries and this process, and changes none of
them. What a measurement changes in the process before timing (glibc keeping freed memory, the fused scan kernel
built) the measurement applies itself (`evonets.deploy.latency.prepare_process`); the fingerprint describes the
process as the measurement will find it: the allocator as the settings ask for it (or as an earlier measurement left
it, for good), the scan backend as `resolve_backend(build=False)` reports it (exact once the kernel was tried in this
process, a forecast from what its build needs before). So it is the same before and after a measurement.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Protocol

import torch

from evonets.deploy.allocator import can_keep_freed_memory, freed_memory_kept
from evonets.deploy.onnx_export import EXPORT_SCAN_BACKEND
from evonets.deploy.reference import REFERENCE_ID
from evonets.engine.identity import digest
from evonets.models.selective_scan import resolve_backend

_INSTALL_HINT = "pip install evonets[onnx]"


class FingerprintedSettings(Protocol):
    """What a fingerprint reads of `evonets.deploy.latency.LatencySettings` (a protocol: the measurement imports this
    module, so this module does not import it back)."""

    backend: str
    batch_size: int
    clock: str
    keep_freed_memory: bool
    reference: bool

    @property
    def threads(self) -> int: ...

    def validate(self) -> FingerprintedSettings: ...


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def scan_backend(settings: FingerprintedSettings) -> str:
    """The selective-scan backend the timed SS2D blocks run: with PyTorch, what `backend="auto"` picks for CPU tensors
    in this process (`resolve_backend(build=False)`: the fused CPU kernel is not built here; the measurement builds it
    before timing); with onnxruntime, the export's pure-PyTorch scan."""
    if settings.backend == "onnxruntime":
        return EXPORT_SCAN_BACKEND
    return resolve_backend("auto", "cpu", build=False)


def allocator_state(settings: FingerprintedSettings) -> str:
    """How malloc treats freed memory while latency is measured with `settings`: kept where `keep_freed_memory` asks
    for it on glibc (the measurement applies it before timing), or where an earlier measurement of this process
    applied it (it cannot be undone); else the default."""
    kept = freed_memory_kept() or (settings.keep_freed_memory and can_keep_freed_memory())
    return "glibc, freed memory kept" if kept else "default"


def device_fingerprint(settings: FingerprintedSettings) -> dict:
    """What a latency depends on besides the network: a JSON-able dict, equal for comparable measurements. Validates
    the settings (raising `ValueError` for invalid ones) and changes nothing in the process."""
    settings = settings.validate()
    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cores": os.cpu_count(),
        "num_threads": settings.threads,
        "backend": settings.backend,
        "scan_backend": scan_backend(settings),
        "batch_size": settings.batch_size,
        "dtype": "float32",
        "clock": settings.clock,
        "allocator": allocator_state(settings),
        # Latencies are expressed in the reference network's long-run milliseconds (`evonets.deploy.reference`).
        "reference": REFERENCE_ID if settings.reference else None,
        "torch": torch.__version__,
        "onnxruntime": _onnxruntime_version() if settings.backend == "onnxruntime" else None,
        # The installed distribution's version: the package root (`evonets.__version__`) sits above this layer.
        "evonets": importlib.metadata.version("evonets"),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.machine()}",
    }


def fingerprint_key(fingerprint: dict) -> str:
    """A short stable id of a fingerprint: 12 hex digits of the SHA-256 of its canonical JSON."""
    return digest(fingerprint)


def _onnxruntime_version() -> str:
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"latency.backend = 'onnxruntime' needs onnxruntime: {_INSTALL_HINT} ({error})") from error
    return onnxruntime.__version__


__all__ = ["allocator_state", "cpu_model", "device_fingerprint", "fingerprint_key", "scan_backend"]
