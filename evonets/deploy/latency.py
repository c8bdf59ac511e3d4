"""Latency of a network on this machine's CPU: how it is measured (`LatencySettings`) and the measurement.

`measure_latency(model, resolution, settings)` times `model(pixel_values)` on a random (batch, channels, r, r) input:

- backend `"torch"`: PyTorch eager, in eval mode under `torch.inference_mode`, with the selective-scan backend that
  `"auto"` picks here (the fused CPU kernel when it builds);
- backend `"onnxruntime"`: the model exported by `evonets.deploy.onnx_export.export_onnx` (fixed shapes, the pure-PyTorch
  chunked scan) and run in an onnxruntime session (`OnnxRuntimeModel`).

`warmup` untimed calls, then `repeats` calls timed one by one in rounds, with Python's garbage collector paused (as
`timeit` does) and torch / onnxruntime held at `num_threads` intra-op threads. The clock is the wall clock
(`perf_counter`), or with `clock="cpu"` the timing thread's CPU time. Before anything is timed, `prepare_process` puts
the process in the state timing needs, once: glibc keeps freed memory (`keep_freed_memory`, see
`evonets.deploy.allocator`), and the fused scan kernel is built, so that no build lands in a timed call.

Latency on a shared machine is not reproducible in absolute terms: a core runs slower in one process than in the next
and no clock sees it (`evonets.deploy.reference`). So by default (`reference=True`) every round also times a fixed
reference network, and a call's latency is its time divided by the reference's in the same round, times the
reference's long-run milliseconds on this device (`reference_latency_ms`: calibrated once over several fresh
processes, cached per device fingerprint). The figures are then milliseconds of a typical process on this device, and
they agree across processes as the ratio does. Two checks guard each measurement: the spread of the per-round ratios
(`spread`, relative inter-quartile range), and the share of the timed section's wall time that the process had the
cores for (`cpu_share`, below 1 when another process held them: real contention, which bends the ratio too). A
measurement past `max_spread` or under `min_cpu_share` is repeated up to `retries` times, and the steadiest attempt
is kept, flagged `stable=False` if none passed. The result (`LatencyMeasurement`) is the median and quartiles, the
raw clock's median, the ratio, spread, CPU share and attempts, stamped with the `device_fingerprint`
(`evonets.deploy.fingerprint`). Only CPU latency is measured.

`time_modules` times several modules together (and the reference), in interleaved rounds that visit each in turn, so
that a burst of load from another process spreads over all of them instead of spoiling a few (the per-block latency
table of `search` times its parts so).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import numpy as np
import torch
from torch import nn

from evonets.deploy.allocator import keep_freed_memory
from evonets.deploy.fingerprint import device_fingerprint, fingerprint_key
from evonets.deploy.onnx_export import OnnxRuntimeModel, export_onnx
from evonets.deploy.reference import cache_dir, reference_input, reference_network
from evonets.engine.archive import write_json_atomic
from evonets.engine.cli import field_error, is_int, is_real
from evonets.models.selective_scan import resolve_backend

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
ROUNDS = 10
"""Rounds `measure_latency` spreads its timed calls over (each round also times the reference)."""
REFERENCE_CALLS_PER_ROUND = 5
"""The reference's timed calls per round at least: its per-round median is the yardstick of the round, and one call
of it (half a millisecond) is too jittery for that when a large network gets one call per round."""
CALIBRATION_FORMAT = "evonets-latency-reference"

Example = torch.Tensor | dict[str, torch.Tensor]
# export(module, example input, path): writes the ONNX file an onnxruntime session times.
Exporter = Callable[[nn.Module, Example, str], None]


@dataclass
class LatencySettings:
    """How latency is measured: the runtime, the input batch, and the timing protocol."""

    backend: Literal["torch", "onnxruntime"] = "torch"
    """`torch`: PyTorch eager with the fastest selective-scan backend available here. `onnxruntime`: the model exported
    to ONNX and run in an onnxruntime CPU session."""

    batch_size: int = 1
    """Images per timed call."""

    warmup: int = 5
    """Untimed calls before timing."""

    repeats: int = 30
    """Timed calls; the latency is their median, the spread their inter-quartile range."""

    num_threads: int | None = None
    """Intra-op threads of torch / onnxruntime while timing; `None`: torch's current setting
    (`torch.get_num_threads()`), for both backends."""

    clock: Literal["wall", "cpu"] = "wall"
    """`wall`: wall-clock time (`time.perf_counter`), the latency. `cpu`: the CPU time of the timing thread
    (`time.thread_time`), which leaves out the time other processes hold the core: on a machine shared with other jobs,
    it is what the wall clock would show on an idle one. Needs one thread (both backends then compute on the calling
    thread)."""

    keep_freed_memory: bool = True
    """Tell glibc's malloc, before timing and for the rest of the process, to keep freed memory instead of returning it
    to the system (`M_MMAP_THRESHOLD` 32 MiB, `M_TRIM_THRESHOLD` 1 GiB, as jemalloc and tcmalloc behave). With glibc's
    defaults a network re-faults the pages of its larger temporaries on every call (~800 minor page faults per call for
    the smallest 224 px EvoNet, against ~300 for its parts timed one by one), a cost that depends on the whole network's
    allocation pattern and that no per-part table can add up. `False` leaves the allocator as it is."""

    reference: bool = True
    """Time a fixed reference network (`evonets.deploy.reference`) in the same rounds and express latency in its
    long-run milliseconds on this device (see the module docstring): figures that agree across processes on a shared
    machine. `False`: the clock's own milliseconds in this process."""

    reference_ms: float | None = None
    """The reference network's long-run latency on this device, in milliseconds (with `reference`). `None`: calibrate
    it once over `reference_processes` fresh processes and cache it per device fingerprint (`reference_latency_ms`);
    a search run pins the value it started with."""

    reference_processes: int = 3
    """Fresh processes the reference's long-run latency is calibrated over (the median of theirs)."""

    max_spread: float = 0.2
    """Largest relative inter-quartile range of the per-round ratios (or, without the reference, of the per-round
    medians) a measurement may have; past it, it is repeated."""

    min_cpu_share: float = 0.9
    """Smallest share of the timed section's wall time the process may have had the cores for; under it, another
    process held them and the measurement is repeated."""

    retries: int = 2
    """Repeats of a measurement that failed `max_spread` or `min_cpu_share`; the steadiest attempt is kept, flagged
    unstable if none passed."""

    def validate(self) -> LatencySettings:
        """Raise `ValueError` naming the first invalid field; return self."""
        if self.backend not in BACKENDS:
            raise field_error("latency.backend", self.backend, f"one of {list(BACKENDS)}")
        for name, minimum in (("batch_size", 1), ("warmup", 0), ("repeats", 1)):
            value = getattr(self, name)
            if not is_int(value) or value < minimum:
                raise field_error(f"latency.{name}", value, f"an int >= {minimum}")
        if self.num_threads is not None and (not is_int(self.num_threads) or self.num_threads < 1):
            raise field_error("latency.num_threads", self.num_threads, "None or an int >= 1")
        if self.clock not in CLOCKS:
            raise field_error("latency.clock", self.clock, f"one of {list(CLOCKS)}")
        if self.clock == "cpu" and self.threads != 1:
            raise field_error(
                "latency.clock",
                self.clock,
                f"'wall' with {self.threads} threads ('cpu' times one thread: num_threads = 1)",
            )
        for name in ("keep_freed_memory", "reference"):
            if not isinstance(getattr(self, name), bool):
                raise field_error(f"latency.{name}", getattr(self, name), "a bool")
        if self.reference_ms is not None and not (is_real(self.reference_ms) and self.reference_ms > 0):
            raise field_error("latency.reference_ms", self.reference_ms, "None or a finite number > 0")
        if not is_int(self.reference_processes) or self.reference_processes < 1:
            raise field_error("latency.reference_processes", self.reference_processes, "an int >= 1")
        if not (is_real(self.max_spread) and self.max_spread > 0):
            raise field_error("latency.max_spread", self.max_spread, "a finite number > 0")
        if not (is_real(self.min_cpu_share) and 0 <= self.min_cpu_share <= 1):
            raise field_error("latency.min_cpu_share", self.min_cpu_share, "a number in [0, 1]")
        if not is_int(self.retries) or self.retries < 0:
            raise field_error("latency.retries", self.retries, "an int >= 0")
        return self

    @property
    def threads(self) -> int:
        """The intra-op threads timing uses: `num_threads`, or torch's current setting."""
        return self.num_threads if self.num_threads is not None else torch.get_num_threads()


@dataclass
class LatencyMeasurement:
    """Latency of one network in milliseconds per call (one batch), in the reference's long-run milliseconds when
    timed against it: median, quartiles, inter-quartile range; how it was obtained (the raw clock's median in this
    process, the ratio to the reference and that reference's long-run milliseconds, the spread, the CPU share, the
    attempts); and the fingerprint of the device and runtime it was measured on."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    iqr_ms: float
    repeats: int
    fingerprint: dict = field(default_factory=dict)
    raw_median_ms: float | None = None
    """The clock's median in the measuring process (equal to `median_ms` without the reference)."""
    ratio: float | None = None
    """Median over rounds of (this network's time / the reference's time in the same round); None without it."""
    reference_ms: float | None = None
    """The reference's long-run milliseconds `median_ms` is expressed in; None without it."""
    spread: float | None = None
    """Relative inter-quartile range of the per-round ratios (without the reference: of the per-round medians)."""
    cpu_share: float | None = None
    """Share of the timed section's wall time the process had its cores for (1: no other process held them)."""
    attempts: int = 1
    """Measurements made to get this one (more than 1: earlier ones were unsteady or contended)."""
    stable: bool = True
    """False when no attempt met `max_spread` and `min_cpu_share`: use the figure with care."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LatencyMeasurement:
        """Read `to_dict`'s output (also an older record without the fields after `fingerprint`)."""
        return cls(**data)


def prepare_process(settings: LatencySettings) -> None:
    """Put this process in the state latency is measured in (once; neither step can be undone): glibc keeps freed
    memory if `settings.keep_freed_memory` says so, and with PyTorch the fused CPU scan kernel is built (when it can
    be), so that its build lands in no timed call and `device_fingerprint` names the scan backend that runs."""
    if settings.keep_freed_memory:
        keep_freed_memory()
    if settings.backend == "torch":
        resolve_backend("auto", "cpu")


def measure_latency(
    model: nn.Module,
    resolution: int,
    settings: LatencySettings,
    num_channels: int = 3,
    example_inputs: dict[str, torch.Tensor] | None = None,
) -> LatencyMeasurement:
    """Time `model(pixel_values)` on a random (batch_size, num_channels, resolution, resolution) input with the
    settings' backend (see the module docstring). The model must be on the CPU; its training mode is restored after.

    A model with other inputs passes `example_inputs`, the `{name: tensor}` keyword arguments of its forward, timed
    as `model(**example_inputs)` (exported with them as named inputs): they replace the random input, so their own
    batch is the one timed (give them `settings.batch_size`)."""
    settings = settings.validate()
    for name, value in (("resolution", resolution), ("num_channels", num_channels)):
        if not is_int(value) or value < 1:
            raise ValueError(f"{name} = {value!r} is invalid: expected a positive int.")
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.device.type != "cpu":
        raise ValueError(f"model is on {parameter.device}: latency is measured on the CPU; move it there first.")
    if example_inputs is None:
        example_inputs = _random_input((settings.batch_size, num_channels, resolution, resolution))
    training = model.training
    model.eval()
    try:
        (measurement,) = _measure([(model, example_inputs)], settings, ROUNDS, _export_network)
    finally:
        model.train(training)
    return measurement


def time_modules(
    modules: Sequence[tuple[nn.Module, tuple[int, ...]]],
    settings: LatencySettings,
    rounds: int,
    export: Exporter | None = None,
) -> list[LatencyMeasurement]:
    """The measurement of each (module in eval mode, input shape) pair, on seeded random inputs, timed together (with
    the reference) in `rounds` interleaved rounds so that load from other processes hits them alike. With onnxruntime
    each is exported first by `export(module, example, path)` (default: `export_onnx` at the example's fixed shape);
    the reference always as a whole network."""
    settings = settings.validate()
    examples = [(module, _random_input(shape)) for module, shape in modules]
    return _measure(examples, settings, rounds, export or _export_network)


def reference_latency_ms(settings: LatencySettings) -> float:
    """The reference network's long-run milliseconds on this device with `settings` (its backend, threads, batch-free
    input, clock): `settings.reference_ms` when set; else the cached calibration for this device fingerprint; else a
    new calibration, the median over `settings.reference_processes` fresh processes of each one's median, cached in
    `evonets.deploy.reference.cache_dir()` (with the spread across processes and each one's CPU share)."""
    settings = settings.validate()
    if settings.reference_ms is not None:
        return float(settings.reference_ms)
    fingerprint = device_fingerprint(settings)
    path = cache_dir() / f"reference-{fingerprint_key(fingerprint)}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        calibration = json.loads(path.read_text())
        if calibration["format"] == CALIBRATION_FORMAT and calibration["fingerprint"] == fingerprint:
            return float(calibration["reference_ms"])
    logger.info(
        "Calibrating the latency reference over %d fresh processes (once per device).", settings.reference_processes
    )
    runs = [_calibrate_in_fresh_process(settings) for _ in range(settings.reference_processes)]
    samples = [run["median_ms"] for run in runs]
    reference_ms = float(np.median(samples))
    write_json_atomic(
        path,
        {
            "format": CALIBRATION_FORMAT,
            "fingerprint": fingerprint,
            "reference_ms": reference_ms,
            "spread": float((max(samples) - min(samples)) / reference_ms),
            "processes": runs,
        },
        indent=1,
    )
    return reference_ms


# The calibration child: times the reference alone (no reference of its own) and prints its measurement as JSON.
_CALIBRATION_SCRIPT = """
import json, sys
from evonets.deploy.latency import LatencySettings, _measure_reference_alone
print(json.dumps(_measure_reference_alone(LatencySettings(**json.loads(sys.argv[1])))))
"""


def _calibrate_in_fresh_process(settings: LatencySettings) -> dict:
    """One fresh process's measurement of the reference alone: its `median_ms`, `cpu_share` and `stable`."""
    fields = dataclasses.asdict(dataclasses.replace(settings, reference=False))
    fields = {name: fields[name] for name in LatencySettings.__dataclass_fields__}
    process = subprocess.run(
        [sys.executable, "-c", _CALIBRATION_SCRIPT, json.dumps(fields)], capture_output=True, text=True, check=False
    )
    if process.returncode != 0:
        raise RuntimeError(f"Calibrating the latency reference failed in a fresh process:\n{process.stderr[-2000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def _measure_reference_alone(settings: LatencySettings) -> dict:
    """The reference network timed with `settings` (which must have `reference=False`), with four times the repeats:
    what one process contributes to the calibration."""
    settings = dataclasses.replace(settings, repeats=4 * settings.repeats).validate()
    (measurement,) = _measure([(reference_network(), reference_input())], settings, ROUNDS, _export_network)
    return {"median_ms": measurement.median_ms, "cpu_share": measurement.cpu_share, "stable": measurement.stable}


def _random_input(shape: tuple[int, ...]) -> torch.Tensor:
    """The input latency is timed on: standard normal, seeded (0)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _measure(
    examples: Sequence[tuple[nn.Module, Example]], settings: LatencySettings, rounds: int, export: Exporter
) -> list[LatencyMeasurement]:
    """Time the (module, example) pairs (and the reference, with `settings.reference`) in interleaved rounds, up to
    `1 + settings.retries` times until an attempt is steady and uncontended; summarise the steadiest one."""
    prepare_process(settings)
    fingerprint = device_fingerprint(settings)
    reference_ms = reference_latency_ms(settings) if settings.reference else None
    least_per_round = []
    if settings.reference:
        least_per_round = [0] * len(examples) + [REFERENCE_CALLS_PER_ROUND]
        examples = [*examples, (reference_network(), reference_input())]
    best: tuple[float, list[LatencyMeasurement]] | None = None
    for attempt in range(1, settings.retries + 2):
        samples, cpu_share = _time(examples, settings, rounds, export, least_per_round)
        measurements = _summarise(samples, reference_ms, cpu_share, fingerprint)
        worst_spread = max(measurement.spread for measurement in measurements)
        steady = worst_spread <= settings.max_spread and cpu_share >= settings.min_cpu_share
        if best is None or worst_spread < best[0] or steady:
            best = (worst_spread, measurements)
        if steady:
            break
    measurements = best[1]
    for measurement in measurements:
        measurement.attempts, measurement.stable = attempt, steady
    if not steady:
        logger.warning(
            "Latency stayed unsteady over %d attempts (spread %.2f, limit %.2f; CPU share %.2f, limit %.2f): kept the "
            "steadiest, flagged stable=False. Another process may be using the cores.",
            attempt,
            best[0],
            settings.max_spread,
            cpu_share,
            settings.min_cpu_share,
        )
    return measurements


def _summarise(
    samples: list[list[list[float]]], reference_ms: float | None, cpu_share: float, fingerprint: dict
) -> list[LatencyMeasurement]:
    """One measurement per timed call from `samples[call][round]` (seconds). With `reference_ms`, the last call is
    the reference: every time is divided by the reference's median in its round and multiplied by `reference_ms`."""
    if reference_ms is None:
        return [_summary(rounds, None, None, cpu_share, fingerprint) for rounds in samples]
    reference_rounds = [float(np.median(times)) for times in samples[-1]]
    return [_summary(rounds, reference_rounds, reference_ms, cpu_share, fingerprint) for rounds in samples[:-1]]


def _summary(
    rounds: list[list[float]],
    reference_rounds: list[float] | None,
    reference_ms: float | None,
    cpu_share: float,
    fingerprint: dict,
) -> LatencyMeasurement:
    raw = np.concatenate(rounds) * 1e3
    if reference_rounds is None:
        values, per_round, ratio = raw, np.array([np.median(times) for times in rounds]), None
    else:
        values = (
            np.concatenate([np.asarray(times) / reference for times, reference in zip(rounds, reference_rounds)])
            * reference_ms
        )
        per_round = np.array([np.median(times) / reference for times, reference in zip(rounds, reference_rounds)])
        ratio = float(np.median(per_round))
    q1, median, q3 = (float(value) for value in np.percentile(values, [25, 50, 75]))
    round_q1, round_median, round_q3 = np.percentile(per_round, [25, 50, 75])
    return LatencyMeasurement(
        median_ms=median,
        q1_ms=q1,
        q3_ms=q3,
        iqr_ms=q3 - q1,
        repeats=len(raw),
        fingerprint=fingerprint,
        raw_median_ms=float(np.median(raw)),
        ratio=ratio,
        reference_ms=reference_ms,
        spread=float((round_q3 - round_q1) / round_median),
        cpu_share=cpu_share,
    )


def _time(
    examples: Sequence[tuple[nn.Module, Example]],
    settings: LatencySettings,
    rounds: int,
    export: Exporter,
    least_per_round: Sequence[int] = (),
) -> tuple[list[list[list[float]]], float]:
    """Seconds of the timed calls of each (module, example input) pair, per round (`_time_interleaved`, with each
    pair's `least_per_round`), run by the
    settings' backend (`_runner`, the ONNX files in a temporary folder) under `_timing_conditions`; and the share of
    the timed section's wall time the process had its threads' cores for."""
    with tempfile.TemporaryDirectory(prefix="evonets-latency-") as folder, contextlib.ExitStack() as stack:
        calls = [
            stack.enter_context(_runner(module, example, settings, export, os.path.join(folder, f"{index}.onnx")))
            for index, (module, example) in enumerate(examples)
        ]
        with _timing_conditions(settings.threads):
            wall, cpu = time.perf_counter(), time.process_time()
            samples = _time_interleaved(
                calls, settings.warmup, settings.repeats, rounds, CLOCKS[settings.clock], least_per_round
            )
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    # Busy intra-op threads spin between ops, so an uncontended process uses its threads' cores for the whole wall
    # time; less means the scheduler gave them to another process for a while.
    return samples, min(1.0, cpu / (wall * settings.threads))


@contextlib.contextmanager
def _runner(
    module: nn.Module, example: Example, settings: LatencySettings, export: Exporter, onnx_path: str
) -> Iterator[Callable[[], object]]:
    """A no-argument call that runs `module` once on `example` (a tensor, or a dict of named inputs) with the
    settings' backend. For onnxruntime, `export(module, example, onnx_path)` writes the file its session runs (the
    caller removes it)."""
    named = isinstance(example, dict)
    if settings.backend == "torch":
        yield partial(module, **example) if named else partial(module, example)
        return
    export(module, example, onnx_path)
    runtime = OnnxRuntimeModel(onnx_path, num_threads=settings.threads)
    yield partial(runtime, {name: tensor.numpy() for name, tensor in example.items()} if named else example.numpy())


def _export_network(model: nn.Module, example: Example, path: str) -> None:
    """`export_onnx` at the example's fixed shape; no check against PyTorch (timing does not need one)."""
    if isinstance(example, dict):
        export_onnx(model, path, example_inputs=example, dynamic_batch=False, check=False)
        return
    export_onnx(
        model, path, image_size=tuple(example.shape[-2:]), batch_size=example.shape[0], dynamic_batch=False, check=False
    )


@contextlib.contextmanager
def _timing_conditions(num_threads: int) -> Iterator[None]:
    """torch at `num_threads` intra-op threads, no autograd, Python's garbage collector paused; all restored after."""
    threads, collecting = torch.get_num_threads(), gc.isenabled()
    torch.set_num_threads(num_threads)
    gc.disable()
    try:
        with torch.inference_mode():
            yield
    finally:
        if collecting:
            gc.enable()
        torch.set_num_threads(threads)


def _time_interleaved(
    calls: Sequence[Callable[[], object]],
    warmup: int,
    repeats: int,
    rounds: int,
    clock: Callable[[], float] = time.perf_counter,
    least_per_round: Sequence[int] = (),
) -> list[list[list[float]]]:
    """Seconds of `repeats` timed runs of each call, after `warmup` untimed ones, as `samples[call][round]`; call `i`
    runs at least `least_per_round[i]` times per round (when given), more than `repeats` if need be.

    The timed runs are spread over `rounds` rounds; each round visits every call, in an order rotated by one per
    round, and (with several calls) re-warms each by one untimed run before timing it, since the call before it used
    the caches. So a burst of load from another process hits all calls alike, and calls timed in the same round can be
    compared. One call: the plain warm-up, then `repeats` runs back to back.
    """
    for call in calls:
        for _ in range(warmup):
            call()
    rounds = max(1, min(rounds, repeats))
    samples: list[list[list[float]]] = [[[] for _ in range(rounds)] for _ in calls]
    order = list(range(len(calls)))
    least = list(least_per_round) + [0] * (len(calls) - len(least_per_round))
    for round_index in range(rounds):
        count = repeats // rounds + (round_index < repeats % rounds)
        shift = round_index % len(order)
        for index in order[shift:] + order[:shift]:
            call, timings = calls[index], samples[index][round_index]
            if len(calls) > 1:
                call()
            for _ in range(max(count, least[index])):
                start = clock()
                call()
                timings.append(clock() - start)
    return samples


__all__ = [
    "BACKENDS",
    "CALIBRATION_FORMAT",
    "CLOCKS",
    "ROUNDS",
    "Exporter",
    "LatencyMeasurement",
    "LatencySettings",
    "measure_latency",
    "prepare_process",
    "reference_latency_ms",
    "time_modules",
]
