"""Per-block latency look-up table of a search space: predicts an architecture's latency without building it.

A network is a chain of parts, and each part's cost depends only on a few genes:

    stem(resolution, width_0)
      + sum over stages s > 0 of   downsample(grid_{s-1}, width_{s-1}, width_s)
      + sum over blocks of         block(grid_s, width_s, block type, its sizes)
      + head(grid_last, width_last)                          (mean-pool, final LayerNorm, classifier)

with `grid_s = resolution / (patch_size * 2**s)` the side of stage s's token map. `LatencyTable.build` enumerates
every entry some architecture of the space can reach (an entry is keyed by what determines its computation, so a
part shared by two stages or resolutions is timed once), builds the parts with the model code itself
(`EvoNetForImageClassification` networks whose one stage holds the block variants, initialised by `post_init`;
`EvoNetDownsample`), and times each on its real input shape with `evonets.deploy.latency` (the same settings, runtime
and fingerprint as a measurement). The parts of one probe network are timed together, in rounds that visit each part
in turn, so a burst of load from another process spreads over all of them instead of spoiling a few. With the
`"onnxruntime"` backend each part is exported to its own ONNX file and timed in its own session, as the whole
networks it predicts are.

The table is SSM-aware by construction: it times every (d_state, ssm_ratio, token grid) of the SS2D and SSD blocks
the space allows, rather than modelling them. Their cost does not follow MACs: the SS2D scan is a sequential
recurrence that runs at a fraction of the matmul rate and that FLOP counters miss, and at small sizes a block's time is
mostly the dispatch overhead of its dozens of small ops (the SS2D's four scan orders alone are flips, transposes and
copies), whatever its MACs.

Isolated parts miss what a whole network adds (the stage, encoder and model wrappers' Python frames, the output
dataclass, one session call instead of many) and run on warmer caches. So `build` also times a few whole networks
(the smallest, the largest, and random ones drawn with their own seed, never those `lut_error` checks; together, in
rounds, like the parts) and fits `measured = scale * sum(entries) + offset` to them, robustly, on the relative error
(`Calibration.fit`). `lut_error` reports how well the result predicts `measure_architecture` on random
architectures. A table is valid for one search space (`space_config_hash`) on one device (`fingerprint_key`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.optimize import least_squares
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedConfig

from evonets.deploy.fingerprint import device_fingerprint, fingerprint_key
from evonets.deploy.latency import (
    Exporter,
    LatencyMeasurement,
    LatencySettings,
    measure_latency,
    prepare_process,
    reference_latency_ms,
    time_modules,
)
from evonets.deploy.onnx_export import export_mode
from evonets.engine.archive import write_json_atomic
from evonets.engine.cli import is_int
from evonets.engine.identity import digest
from evonets.models.configuration_evonet import BLOCK_TYPES
from evonets.models.modeling_evonet import EvoNetDownsample, EvoNetForImageClassification
from evonets.models.search_space import BLOCK_TYPE_GENES, EvoNetSupernetConfig, SearchSpace, format_number

if TYPE_CHECKING:
    from evonets.models.supernet import EvoNetSupernet

logger = logging.getLogger(__name__)

TABLE_FORMAT = "evonets-latency-table"
TABLE_VERSION = 2  # 2: entries in the reference network's long-run milliseconds
# Rounds over a probe network's parts when building a table (see `evonets.deploy.latency.time_modules`).
TABLE_ROUNDS = 5
# Block variants per probe network: bounds the memory of the largest stage's variants (the default space has 45 per
# stage, up to ~4 M parameters each).
PROBE_BLOCKS = 16
# Whole networks measured to calibrate a table, and the seed of the random ones (`lut_error` samples with seeds from 0).
CALIBRATION_NETWORKS = 8
CALIBRATION_SEED = 1_000_003


def space_config_hash(space_config: EvoNetSupernetConfig) -> str:
    """A short stable id of what a search space's networks are: every field `EvoNetSupernetConfig` declares (choices
    and fixed network fields) and `num_labels`, not labels' names or bookkeeping such as the transformers version."""
    inherited = {item.name for item in dataclasses.fields(PreTrainedConfig)}
    fields = {
        item.name: getattr(space_config, item.name)
        for item in dataclasses.fields(space_config)
        if item.name not in inherited
    }
    fields["num_labels"] = space_config.num_labels
    return digest(fields)


def measure_architecture(supernet: EvoNetSupernet, arch: dict | str, settings: LatencySettings) -> LatencyMeasurement:
    """Latency of the standalone network of `arch` (a dict or its encoding): `supernet.extract(arch)`, timed at the
    architecture's resolution."""
    arch = _canonical(supernet.search_space, arch)
    model = supernet.extract(arch)
    return measure_latency(model, arch["resolution"], settings, num_channels=supernet.config.num_channels)


# Look-up table: entries ---------------------------------------------------------------------------------------------


def _grid(space_config: EvoNetSupernetConfig, resolution: int, stage: int) -> int:
    """Side of stage `stage`'s token map: the stem divides the resolution by patch_size, each downsample by 2."""
    return resolution // (space_config.patch_size * 2**stage)


def _stem_key(resolution: int, width: int) -> str:
    return f"stem {resolution}x{resolution} w{width}"


def _downsample_key(grid: int, width_in: int, width_out: int) -> str:
    return f"downsample {grid}x{grid} w{width_in}->w{width_out}"


def _block_key(grid: int, width: int, block: dict) -> str:
    sizes = "".join(f" {gene}={format_number(block[gene])}" for gene in BLOCK_TYPE_GENES[block["type"]])
    return f"block {grid}x{grid} w{width} {block['type']}{sizes}"


def _head_key(grid: int, width: int) -> str:
    return f"head {grid}x{grid} w{width}"


def _architecture_keys(space_config: EvoNetSupernetConfig, arch: dict) -> list[str]:
    """The table entries a canonical architecture runs, in forward order (a repeated block appears repeatedly)."""
    resolution, stages = arch["resolution"], arch["stages"]
    keys = [_stem_key(resolution, stages[0]["width"])]
    for stage, stage_arch in enumerate(stages):
        grid = _grid(space_config, resolution, stage)
        if stage > 0:
            previous = _grid(space_config, resolution, stage - 1)
            keys.append(_downsample_key(previous, stages[stage - 1]["width"], stage_arch["width"]))
        keys.extend(_block_key(grid, stage_arch["width"], block) for block in stage_arch["blocks"])
    keys.append(_head_key(_grid(space_config, resolution, len(stages) - 1), stages[-1]["width"]))
    return keys


def block_variants(space: SearchSpace, stage: int) -> list[dict]:
    """Every distinct block a stage can hold: each block type allowed at some position, with every combination of the
    sizes it uses (`BLOCK_TYPE_GENES`), as architecture block dicts."""
    variants = []
    for block_type in BLOCK_TYPES:
        if not any(block_type in space.block_type_choices(stage, index) for index in range(space.max_depth(stage))):
            continue
        genes = BLOCK_TYPE_GENES[block_type]
        for sizes in itertools.product(*(space.size_choices(stage, gene) for gene in genes)):
            variants.append({"type": block_type, **dict(zip(genes, sizes))})
    return variants


@dataclass
class _Part:
    """One table entry to time: `kind` is "stem", "downsample", "block" or "head"; `index` is the block's position in
    the probe network's stage, or the downsample's input width."""

    key: str
    kind: str
    input_shape: tuple[int, ...]
    index: int = 0


class _ClassifierHead(nn.Module):
    """What `EvoNetForImageClassification` runs after its last stage, on that stage's channels-last output: the
    encoder's permute to channels-first, the spatial mean, the final LayerNorm and the classifier."""

    def __init__(self, layernorm: nn.Module, classifier: nn.Module):
        super().__init__()
        self.layernorm, self.classifier = layernorm, classifier

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        last_hidden_state = hidden_states.permute(0, 3, 1, 2)  # (B, C, H, W), as EvoNetEncoder returns it
        return self.classifier(self.layernorm(last_hidden_state.mean(dim=(-2, -1))))


@dataclass
class _ProbeNetwork:
    """An `EvoNetForImageClassification` whose stage `stage` is `width` wide and holds `variants` as its blocks (the
    other stages at their smallest): built by the model code and initialised by `post_init` like any EvoNet, it
    supplies the blocks, stem and head to time; downsamples are built as `EvoNetStage` builds them."""

    stage: int
    width: int
    variants: list[dict]
    parts: list[_Part] = field(default_factory=list)

    def modules(self, space_config: EvoNetSupernetConfig) -> dict[str, nn.Module]:
        space = space_config.search_space
        arch = space.smallest()
        arch["stages"][self.stage] = {"depth": len(self.variants), "width": self.width, "blocks": self.variants}
        model = EvoNetForImageClassification(space.evonet_config(arch)).eval()
        modules = {}
        for part in self.parts:
            if part.kind == "stem":
                modules[part.key] = model.evonet.embeddings
            elif part.kind == "downsample":
                modules[part.key] = EvoNetDownsample(part.index, self.width, space_config.layer_norm_eps).eval()
            elif part.kind == "block":
                modules[part.key] = model.evonet.encoder.stages[self.stage].blocks[part.index]
            else:
                modules[part.key] = _ClassifierHead(model.evonet.layernorm, model.classifier).eval()
        return modules


def _plan(space_config: EvoNetSupernetConfig, batch_size: int) -> list[_ProbeNetwork]:
    """Every entry an architecture of the space can reach, once, grouped by the probe network that supplies it."""
    space = space_config.search_space
    resolutions, last = space_config.resolution_choices, space.num_stages - 1
    probes, planned = [], set()

    def add(probe: _ProbeNetwork, key: str, kind: str, shape: tuple[int, ...], index: int = 0) -> None:
        if key not in planned:
            planned.add(key)
            probe.parts.append(_Part(key, kind, (batch_size, *shape), index))

    for stage in range(space.num_stages):
        variants = block_variants(space, stage)
        for width in space_config.width_choices[stage]:
            chunks = [variants[start : start + PROBE_BLOCKS] for start in range(0, len(variants), PROBE_BLOCKS)]
            for chunk_index, chunk in enumerate(chunks):
                probe = _ProbeNetwork(stage, width, chunk)
                for resolution in resolutions:
                    grid = _grid(space_config, resolution, stage)
                    if chunk_index == 0 and stage == 0:
                        shape = (space_config.num_channels, resolution, resolution)
                        add(probe, _stem_key(resolution, width), "stem", shape)
                    if chunk_index == 0 and stage > 0:
                        previous = _grid(space_config, resolution, stage - 1)
                        for width_in in space_config.width_choices[stage - 1]:
                            key = _downsample_key(previous, width_in, width)
                            add(probe, key, "downsample", (previous, previous, width_in), width_in)
                    for index, block in enumerate(chunk):
                        add(probe, _block_key(grid, width, block), "block", (grid, grid, width), index)
                    if chunk_index == 0 and stage == last:
                        add(probe, _head_key(grid, width), "head", (grid, grid, width))
                if probe.parts:
                    probes.append(probe)
    return probes


# Look-up table ------------------------------------------------------------------------------------------------------


@dataclass
class LatencyEntry:
    """Latency of one part in isolation, in milliseconds (the measurement's unit: see `evonets.deploy.latency`): median
    and inter-quartile range of its timed calls, and the measurement's spread."""

    median_ms: float
    iqr_ms: float
    spread: float | None = None


@dataclass
class Calibration:
    """`predicted = scale * sum(entries) + offset_ms`, fitted on whole networks (`networks`: their `encoding`,
    `measured_ms` and `sum_ms`, the sum of their entries)."""

    scale: float = 1.0
    offset_ms: float = 0.0
    networks: list[dict] = field(default_factory=list)

    @classmethod
    def fit(cls, networks: list[dict]) -> Calibration:
        """Fit `scale >= 0` and `offset_ms` to the networks' relative errors `(scale * sum_ms + offset_ms) / measured_ms
        - 1`, robustly (scipy's `least_squares` with the soft-L1 loss, which weighs residuals beyond 5 % linearly), so
        that one network timed during a burst of load does not tilt the line."""
        sums = np.array([network["sum_ms"] for network in networks])
        measured = np.array([network["measured_ms"] for network in networks])

        def relative_errors(parameters: np.ndarray) -> np.ndarray:
            return (parameters[0] * sums + parameters[1]) / measured - 1.0

        start = np.array([np.median(measured / sums), 0.0])
        fitted = least_squares(
            relative_errors, start, loss="soft_l1", f_scale=0.05, x_scale="jac", bounds=([0.0, -np.inf], np.inf)
        )
        scale, offset = fitted.x
        return cls(float(scale), float(offset), networks)


class LatencyTable:
    """Per-block latency LUT for one search space on one device: predicts a whole architecture's latency.

    ```python
    >>> table = LatencyTable.load_or_build("runs/latency.json", space_config, LatencySettings())
    >>> table.predict_ms(arch)            # milliseconds per call of the architecture's standalone network
    >>> table.breakdown(arch)             # [(entry key, isolated milliseconds), ...] in forward order
    ```

    See the module docstring for what the entries are and how they are combined.
    """

    def __init__(
        self,
        space_config: EvoNetSupernetConfig,
        fingerprint: dict,
        entries: dict[str, LatencyEntry],
        calibration: Calibration | None = None,
        build_seconds: float | None = None,
        settings: dict | None = None,
        reference_ms: float | None = None,
    ):
        self.space_config = space_config
        self.space = space_config.search_space
        self.space_hash = space_config_hash(space_config)
        self.fingerprint = fingerprint
        self.entries = entries
        self.calibration = calibration if calibration is not None else Calibration()
        self.build_seconds = build_seconds
        self.settings = settings or {}
        # The reference's long-run milliseconds the entries are expressed in (None: the clock's own milliseconds).
        self.reference_ms = reference_ms

    def __repr__(self) -> str:
        return (
            f"LatencyTable({len(self.entries)} entries, space {self.space_hash}, device {self.fingerprint_key}, "
            f"scale {self.calibration.scale:.3f}, offset {self.calibration.offset_ms:.3f} ms)"
        )

    @property
    def fingerprint_key(self) -> str:
        return fingerprint_key(self.fingerprint)

    # Building -----------------------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        space_config: EvoNetSupernetConfig,
        settings: LatencySettings,
        progress: bool = True,
        calibration_networks: int = CALIBRATION_NETWORKS,
    ) -> LatencyTable:
        """Time every entry the space can reach, then calibrate on `calibration_networks` whole networks (>= 2)."""
        settings = settings.validate()
        if not is_int(calibration_networks) or calibration_networks < 2:
            raise ValueError(f"calibration_networks = {calibration_networks!r} is invalid: expected an int >= 2.")
        start = time.perf_counter()
        prepare_process(settings)
        fingerprint = device_fingerprint(settings)
        reference_ms = reference_latency_ms(settings) if settings.reference else None
        probes = _plan(space_config, settings.batch_size)
        entries: dict[str, LatencyEntry] = {}
        with tqdm(
            total=sum(len(probe.parts) for probe in probes), desc="latency table", unit="entry", disable=not progress
        ) as bar:
            for probe in probes:
                modules = probe.modules(space_config)
                timed = _time_entries(
                    [(modules[part.key], part.input_shape) for part in probe.parts], settings, _export_part
                )
                entries.update((part.key, entry) for part, entry in zip(probe.parts, timed))
                bar.update(len(probe.parts))
        table = cls(
            space_config,
            fingerprint,
            entries,
            settings={"warmup": settings.warmup, "repeats": settings.repeats},
            reference_ms=reference_ms,
        )
        table.calibration = table._calibrate(settings, calibration_networks, progress)
        table.build_seconds = time.perf_counter() - start
        message = (
            f"Latency table: {len(entries)} entries and {calibration_networks} calibration networks timed in "
            f"{table.build_seconds:.1f} s ({settings.backend}, {settings.threads} threads, batch "
            f"{settings.batch_size}); scale {table.calibration.scale:.3f}, offset {table.calibration.offset_ms:.3f} ms."
        )
        if progress:
            tqdm.write(message)
        else:
            logger.info(message)
        return table

    def _calibrate(self, settings: LatencySettings, count: int, progress: bool) -> Calibration:
        """Time `count` whole networks (the smallest, the largest, then random ones from `CALIBRATION_SEED`), built
        from their configs, together as the entries were, and fit the calibration to them."""
        space, channels, batch = self.space, self.space_config.num_channels, settings.batch_size
        archs = [space.smallest(), space.largest()]
        rng = random.Random(CALIBRATION_SEED)
        archs += [space.sample(rng) for _ in range(count - len(archs))]
        networks = [
            (
                EvoNetForImageClassification(space.to_config(arch)).eval(),
                (batch, channels, arch["resolution"], arch["resolution"]),
            )
            for arch in tqdm(archs, desc="latency calibration", unit="network", disable=not progress)
        ]
        timed = _time_entries(networks, settings)
        return Calibration.fit(
            [
                {
                    "encoding": space.encode(arch),
                    "measured_ms": entry.median_ms,
                    "sum_ms": sum(ms for _, ms in self.breakdown(arch)),
                }
                for arch, entry in zip(archs, timed)
            ]
        )

    # Prediction ---------------------------------------------------------------------------------------------------

    def breakdown(self, arch: dict | str) -> list[tuple[str, float]]:
        """The entries an architecture (a dict or its encoding) runs, in forward order, with their isolated median
        milliseconds. Raises `ValueError` for architectures outside the table's space."""
        keys = _architecture_keys(self.space_config, _canonical(self.space, arch))
        missing = [key for key in keys if key not in self.entries]
        if missing:
            raise ValueError(
                f"The latency table has no entries {missing}: it was built for another search space (space hash "
                f"{self.space_hash}) or an older version of it."
            )
        return [(key, self.entries[key].median_ms) for key in keys]

    def predict_ms(self, arch: dict | str) -> float:
        """Predicted latency of an architecture's standalone network, in milliseconds per call (one batch)."""
        total = sum(ms for _, ms in self.breakdown(arch))
        return self.calibration.scale * total + self.calibration.offset_ms

    # Files --------------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format": TABLE_FORMAT,
            "version": TABLE_VERSION,
            "fingerprint": self.fingerprint,
            "fingerprint_key": self.fingerprint_key,
            "space_hash": self.space_hash,
            "space_config": self.space_config.to_dict(),
            "settings": self.settings,
            "build_seconds": self.build_seconds,
            "reference_ms": self.reference_ms,
            "calibration": dataclasses.asdict(self.calibration),
            "entries": {key: dataclasses.asdict(entry) for key, entry in self.entries.items()},
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the table as JSON (atomically: a reader never sees half a file)."""
        write_json_atomic(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        """Read a table written by `save`. Raises `ValueError` for files that are not one, or that were edited."""
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT or data.get("version") != TABLE_VERSION:
            raise ValueError(
                f"{path} is not an evonets latency table (format {TABLE_FORMAT!r} version {TABLE_VERSION})."
            )
        table = cls(
            EvoNetSupernetConfig.from_dict(data["space_config"]),
            data["fingerprint"],
            {key: LatencyEntry(**entry) for key, entry in data["entries"].items()},
            Calibration(**data["calibration"]),
            data["build_seconds"],
            data["settings"],
            data["reference_ms"],
        )
        if table.space_hash != data["space_hash"]:
            raise ValueError(f"{path}: the space config does not match its recorded hash {data['space_hash']}.")
        return table

    @classmethod
    def load_or_build(
        cls,
        path: str | os.PathLike,
        space_config: EvoNetSupernetConfig,
        settings: LatencySettings,
        progress: bool = True,
    ) -> LatencyTable:
        """The table saved at `path` if it was built for this space and this device fingerprint; otherwise build one,
        save it there, and log why."""
        path = Path(path)
        if not path.exists():
            reason = "there is none yet"
        else:
            try:
                table = cls.load(path)
            except (OSError, ValueError, KeyError, TypeError) as error:
                reason = f"the file could not be read ({error})"
            else:
                reason = table.mismatch(space_config, settings)
                if reason is None:
                    logger.info("Reusing the latency table %s (%s).", path, table)
                    if settings.reference:
                        table.rescale(reference_latency_ms(settings))
                    return table
        logger.warning("Building the latency table %s: %s.", path, reason)
        table = cls.build(space_config, settings, progress=progress)
        table.save(path)
        return table

    def rescale(self, reference_ms: float) -> None:
        """Express the table in other reference milliseconds (e.g. a run's pinned `latency.reference_ms`): every
        entry was timed as a ratio to the reference, so this is exact."""
        if self.reference_ms is None:
            raise ValueError("This latency table was timed without the reference network: it cannot be rescaled.")
        factor = reference_ms / self.reference_ms
        for entry in self.entries.values():
            entry.median_ms, entry.iqr_ms = entry.median_ms * factor, entry.iqr_ms * factor
        self.calibration.offset_ms *= factor
        for network in self.calibration.networks:
            network["measured_ms"], network["sum_ms"] = network["measured_ms"] * factor, network["sum_ms"] * factor
        self.reference_ms = reference_ms

    def mismatch(self, space_config: EvoNetSupernetConfig, settings: LatencySettings) -> str | None:
        """Why this table does not apply to `space_config` on this device with `settings` (`None` if it does)."""
        space_hash = space_config_hash(space_config)
        if space_hash != self.space_hash:
            return f"it was built for another search space (hash {self.space_hash}, now {space_hash})"
        fingerprint = device_fingerprint(settings)
        if fingerprint != self.fingerprint:
            changes = ", ".join(
                f"{name} {self.fingerprint.get(name)!r} -> {fingerprint.get(name)!r}"
                for name in sorted(set(fingerprint) | set(self.fingerprint))
                if fingerprint.get(name) != self.fingerprint.get(name)
            )
            return f"the device fingerprint changed ({changes})"
        return None


def _time_entries(
    modules: Sequence[tuple[nn.Module, tuple[int, ...]]], settings: LatencySettings, export: Exporter | None = None
) -> list[LatencyEntry]:
    """Time (module, input shape) pairs together, in `TABLE_ROUNDS` interleaved rounds (`time_modules`), so that load
    from other processes hits them alike: each one's median, inter-quartile range and spread. With onnxruntime each is
    exported by `export` (default: as a whole network)."""
    return [
        LatencyEntry(measurement.median_ms, measurement.iqr_ms, measurement.spread)
        for measurement in time_modules(modules, settings, TABLE_ROUNDS, export)
    ]


def _export_part(module: nn.Module, example: torch.Tensor, path: str) -> None:
    """Export one table part (one tensor in, one out) the way `export_onnx` exports whole networks: the TorchScript
    tracer, eval mode and the pure-PyTorch scan (`export_mode`), weights inside the file, fixed shapes."""
    with export_mode(module), torch.no_grad(), warnings.catch_warnings():
        # The tracer's deprecation notice, and Python-level shape checks that are constant for a fixed input shape.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (example,),
            path,
            input_names=["input"],
            output_names=["output"],
            do_constant_folding=True,
            dynamo=False,
        )


# Error of the table -------------------------------------------------------------------------------------------------


def lut_error(
    supernet: EvoNetSupernet,
    table: LatencyTable,
    settings: LatencySettings,
    count: int = 50,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """How well `table` predicts measured latency: `count` random architectures (`space.sample(random.Random(seed))`)
    measured with `measure_architecture` and predicted with `table.predict_ms`.

    Returns `median_abs_error`, `mean_abs_error` and `p90_abs_error` of the relative error
    `(predicted - measured) / measured` (0.1 = 10 %), `count`, `unstable` (measurements flagged unsteady),
    `fingerprint`, and `rows`: per architecture its `encoding`, `measured_ms`, `predicted_ms`, signed `error`, and the
    measurement's `spread` and `stable` flag. Raises `ValueError` when the table was built for
    another space or another device fingerprint than `settings` give here.
    """
    settings = settings.validate()
    if not is_int(count) or count < 1:
        raise ValueError(f"count = {count!r} is invalid: expected an int >= 1.")
    reason = table.mismatch(supernet.config, settings)
    if reason is not None:
        raise ValueError(f"The latency table does not apply to this supernet and settings: {reason}.")
    space = supernet.search_space
    rng = random.Random(seed)
    rows = []
    for arch in tqdm([space.sample(rng) for _ in range(count)], desc="LUT error", unit="arch", disable=not progress):
        measurement = measure_architecture(supernet, arch, settings)
        measured, predicted = measurement.median_ms, table.predict_ms(arch)
        rows.append(
            {
                "encoding": space.encode(arch),
                "measured_ms": measured,
                "predicted_ms": predicted,
                "error": (predicted - measured) / measured,
                "spread": measurement.spread,
                "stable": measurement.stable,
            }
        )
    errors = np.abs([row["error"] for row in rows])
    return {
        "median_abs_error": float(np.median(errors)),
        "mean_abs_error": float(np.mean(errors)),
        "p90_abs_error": float(np.percentile(errors, 90)),
        "count": count,
        "unstable": sum(not row["stable"] for row in rows),
        "fingerprint": table.fingerprint,
        "rows": rows,
    }


# Helpers ------------------------------------------------------------------------------------------------------------


def _canonical(space: SearchSpace, arch: dict | str) -> dict:
    return space.decode(arch) if isinstance(arch, str) else space.validate(arch)


__all__ = [
    "CALIBRATION_NETWORKS",
    "Calibration",
    "LatencyEntry",
    "LatencyTable",
    "block_variants",
    "lut_error",
    "measure_architecture",
    "space_config_hash",
]
