"""Latency of a network on this machine's CPU: how it is measured (`LatencySettings`) and the measurement.

`measure_latency(model, resolution, settings)` times `model(pixel_values)` on a random (batch, channels, r, r) input:

- backend `"torch"`: PyTorch eager, in eval mode under `torch.inference_mode`, with the selective-scan backend that
  `"auto"` picks here (the fused CPU kernel when it builds);
- backend `"onnxruntime"`: the model exported by `evonets.deploy.onnx_export.export_onnx` (fixed shapes, the pure-PyTorch
  chunked scan) and run in an onnxruntime session (`OnnxRuntimeModel`).

`warmup` untimed calls, then `repeats` calls timed one by one, with Python's garbage collector paused (as `timeit`
does) and torch / onnxruntime held at `num_threads` intra-op threads. The clock is the wall clock (`perf_counter`), or
with `clock="cpu"` the timing thread's CPU time, which on a machine shared with other jobs leaves out the time they
hold the core. Before anything is timed, `prepare_process` puts the process in the state timing needs, once: glibc
keeps freed memory (`keep_freed_memory`, see `evonets.deploy.allocator`), and the fused scan kernel is built, so that
no build lands in a timed call. The result (`LatencyMeasurement`) is the median and quartiles of the timed calls,
stamped with the `device_fingerprint` (`evonets.deploy.fingerprint`). Only CPU latency is measured.

`time_modules` times several modules together, in interleaved rounds that visit each in turn, so that a burst of load
from another process spreads over all of them instead of spoiling a few (the per-block latency table of `search` times
its parts so).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
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
from evonets.deploy.fingerprint import device_fingerprint
from evonets.deploy.onnx_export import OnnxRuntimeModel, export_onnx
from evonets.engine.cli import field_error, is_int
from evonets.models.selective_scan import resolve_backend

BACKENDS = ("torch", "onnxruntime")
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}

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
        if not isinstance(self.keep_freed_memory, bool):
            raise field_error("latency.keep_freed_memory", self.keep_freed_memory, "a bool")
        return self

    @property
    def threads(self) -> int:
        """The intra-op threads timing uses: `num_threads`, or torch's current setting."""
        return self.num_threads if self.num_threads is not None else torch.get_num_threads()


@dataclass
class LatencyMeasurement:
    """Latency of one network in milliseconds per call (one batch): median, quartiles, inter-quartile range, and the
    fingerprint of the device and runtime it was measured on."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    iqr_ms: float
    repeats: int
    fingerprint: dict = field(default_factory=dict)

    @classmethod
    def from_seconds(cls, seconds: Sequence[float], fingerprint: dict) -> LatencyMeasurement:
        q1, median, q3 = (float(value) * 1e3 for value in np.percentile(seconds, [25, 50, 75]))
        return cls(median, q1, q3, q3 - q1, len(seconds), fingerprint)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LatencyMeasurement:
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
    prepare_process(settings)
    fingerprint = device_fingerprint(settings)
    if example_inputs is None:
        example_inputs = _random_input((settings.batch_size, num_channels, resolution, resolution))
    training = model.training
    model.eval()
    try:
        (seconds,) = _time([(model, example_inputs)], settings, rounds=1, export=_export_network)
    finally:
        model.train(training)
    return LatencyMeasurement.from_seconds(seconds, fingerprint)


def time_modules(
    modules: Sequence[tuple[nn.Module, tuple[int, ...]]],
    settings: LatencySettings,
    rounds: int,
    export: Exporter | None = None,
) -> list[list[float]]:
    """Seconds of the `settings.repeats` timed calls of each (module in eval mode, input shape) pair, on seeded random
    inputs, timed together in `rounds` interleaved rounds (`_time_interleaved`) so that load from other processes hits
    them alike. With onnxruntime each is exported first by `export(module, example, path)` (default: `export_onnx` at
    the example's fixed shape)."""
    settings = settings.validate()
    prepare_process(settings)
    examples = [(module, _random_input(shape)) for module, shape in modules]
    return _time(examples, settings, rounds, export or _export_network)


def _random_input(shape: tuple[int, ...]) -> torch.Tensor:
    """The input latency is timed on: standard normal, seeded (0)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _time(
    examples: Sequence[tuple[nn.Module, Example]], settings: LatencySettings, rounds: int, export: Exporter
) -> list[list[float]]:
    """Seconds of the timed calls of each (module, example input) pair, run by the settings' backend (`_runner`, the
    ONNX files in a temporary folder) under `_timing_conditions`."""
    with tempfile.TemporaryDirectory(prefix="evonets-latency-") as folder, contextlib.ExitStack() as stack:
        calls = [
            stack.enter_context(_runner(module, example, settings, export, os.path.join(folder, f"{index}.onnx")))
            for index, (module, example) in enumerate(examples)
        ]
        with _timing_conditions(settings.threads):
            return _time_interleaved(calls, settings.warmup, settings.repeats, rounds, CLOCKS[settings.clock])


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
) -> list[list[float]]:
    """Seconds of `repeats` timed runs of each call, after `warmup` untimed ones.

    The timed runs are spread over `rounds` rounds; each round visits every call, in an order rotated by one per
    round, and (with several calls) re-warms each by one untimed run before timing it, since the call before it used
    the caches. So a burst of load from another process hits all calls alike. One call and one round: the plain
    warm-up, then `repeats` runs back to back.
    """
    for call in calls:
        for _ in range(warmup):
            call()
    samples: list[list[float]] = [[] for _ in calls]
    order = list(range(len(calls)))
    rounds = max(1, min(rounds, repeats))
    for round_index in range(rounds):
        count = repeats // rounds + (round_index < repeats % rounds)
        shift = round_index % len(order)
        for index in order[shift:] + order[:shift]:
            call, timings = calls[index], samples[index]
            if len(calls) > 1:
                call()
            for _ in range(count):
                start = clock()
                call()
                timings.append(clock() - start)
    return samples


__all__ = [
    "BACKENDS",
    "CLOCKS",
    "Exporter",
    "LatencyMeasurement",
    "LatencySettings",
    "measure_latency",
    "prepare_process",
    "time_modules",
]
