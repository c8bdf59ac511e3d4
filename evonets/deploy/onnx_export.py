"""ONNX export of EvoNet models, checked against PyTorch in onnxruntime.

`export_onnx(model, path)` exports an `EvoNetModel`, `EvoNetForImageClassification` or `EvoNetBackbone` (or any
model whose forward takes `pixel_values` and returns a `ModelOutput` of tensors) with `torch.onnx.export`, then
runs the file in onnxruntime on a random input and raises `OnnxCheckError` if any output differs from PyTorch by
more than `atol`. `OnnxRuntimeModel(path)` runs an exported file (the search times candidates with it).

The graph has one input, `pixel_values` (batch, channels, height, width), and one output per tensor of the model's
`ModelOutput`, named after its field; tuples get an index: `logits` (classification), `last_hidden_state` and
`pooler_output` (`EvoNetModel`), `feature_maps.0`, `feature_maps.1`, ... (`EvoNetBackbone`, one per
`out_features`). Height and width are fixed at export; with `dynamic_batch` the batch axis is free.

Models with other inputs pass `example_inputs`, a `{name: tensor}` dict of keyword arguments of their forward (e.g.
`EvoNetForNovelViewSynthesis.example_inputs(image_size)`: source images, poses, intrinsics and target rays): the
names become the graph's inputs, in that order, every shape but the batch axis is fixed at export, and the check
runs on these inputs and on them with their first item appended (one more batch).

During export the model is in eval mode and every selective scan runs the pure-PyTorch chunked backend
(`backend="torch"`: exp, multiply and sum, unrolled over the steps of a chunk, so plain ONNX ops), whatever backend
its `EvoNetSelectiveScan` modules were set to (the fused CPU and CUDA kernels are custom ops ONNX lacks); both are
restored afterwards. The check compares against the model as it normally runs, with its own backends.

Exporter: `dynamo=False` (the TorchScript tracer) by default. In torch 2.13 both export every block type and match
onnxruntime to ~1e-6, but the traced scan is a long chain of small ops (the steps of a chunk are unrolled), which
the dynamo exporter (`torch.export`, decompositions, onnxscript optimiser) is slow on: on a busy 2-core CPU machine a
tiny 4-stage mixed EvoNet at 64x64 took ~90 s with `dynamo=True` against ~4 s traced, and a 2-block one at 16x16
12-16 s against 0.9 s; the default 224x224 EvoNet traces in ~16 s. The search exports many candidates. The dynamo
exporter also silently fixes a batch axis it sees at size 1, so with `dynamic_batch` both trace at batch >= 2.
The tracer is deprecated upstream since torch 2.9; pass `dynamo=True` where it is gone: the files are
interchangeable (same input/output names, dynamic batch axis, weights inside the one `.onnx` file).

Needs the `onnx` extra: `pip install evonets[onnx]` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from evonets.engine.timer import Stopwatch
from evonets.models.mixer_ss2d import EvoNetSelectiveScan

INPUT_NAME = "pixel_values"
EXPORT_SCAN_BACKEND = "torch"  # the pure-PyTorch chunked scan of `selective_scan`
_INSTALL_HINT = "pip install evonets[onnx]"


class OnnxCheckError(RuntimeError):
    """The exported model's outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class ExportReport:
    """What `export_onnx` wrote and how well it matched PyTorch.

    `input_shapes` are the traced shapes per input and `input_shape` the first one's (with `dynamic_batch` the batch
    axis is free); `max_abs_diff` is the largest absolute difference over all outputs and all `checked_batch_sizes`
    (`None` without a check).
    """

    path: str
    opset: int
    exporter: str
    input_names: list[str]
    output_names: list[str]
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    export_seconds: float
    max_abs_diff: float | None = None
    max_abs_diff_per_output: dict[str, float] = field(default_factory=dict)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    checked_batch_sizes: list[int] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)


def _import_onnx(dynamo: bool = False) -> tuple[Any, Any]:
    """Import onnx and onnxruntime (and check onnxscript for the dynamo exporter), or say how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"ONNX export needs onnx and onnxruntime: {_INSTALL_HINT} ({error})") from error
    if dynamo:
        try:
            import onnxscript  # noqa: F401
        except ImportError as error:
            raise ImportError(f"torch.onnx.export(dynamo=True) needs onnxscript: {_INSTALL_HINT} ({error})") from error
    return onnx, onnxruntime


def _flatten_outputs(output: Any) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of a `ModelOutput` (or tensor / tuple), in field order; `None` fields are skipped."""
    if isinstance(output, torch.Tensor):
        return [("output", output)]
    items = output.items() if hasattr(output, "items") else ((f"output.{i}", v) for i, v in enumerate(output))
    flat = []
    for name, value in items:
        if isinstance(value, torch.Tensor):
            flat.append((name, value))
        elif isinstance(value, (tuple, list)):
            flat.extend((f"{name}.{index}", tensor) for index, tensor in enumerate(value))
        elif value is not None:
            raise TypeError(f"cannot export model output {name!r} of type {type(value).__name__}")
    return flat


def named_outputs(
    model: nn.Module, inputs: torch.Tensor | Mapping[str, torch.Tensor]
) -> list[tuple[str, torch.Tensor]]:
    """`model(pixel_values)` without loss and hidden states, or `model(**inputs)` for a dict of named inputs, as the
    (ONNX output name, tensor) pairs it exports to."""
    if isinstance(inputs, Mapping):
        return _flatten_outputs(model(**inputs, return_dict=True))
    return _flatten_outputs(model(inputs, output_hidden_states=False, return_dict=True))


class EvoNetOnnxWrapper(nn.Module):
    """`pixel_values -> tuple of tensors`, or positional tensors passed to the model as `input_names`: the plain
    forward the exporters trace (output names from `named_outputs`)."""

    def __init__(self, model: nn.Module, input_names: Sequence[str] | None = None):
        super().__init__()
        self.model = model
        self.input_names = list(input_names) if input_names is not None else None

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, inputs)) if self.input_names is not None else inputs[0]
        return tuple(tensor for _, tensor in named_outputs(self.model, named))


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration; every submodule's own mode restored on exit."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def export_mode(model: nn.Module, scan_backend: str = EXPORT_SCAN_BACKEND) -> Iterator[nn.Module]:
    """Eval mode and the given backend on every selective scan for the duration; both restored on exit."""
    scans = [module for module in model.modules() if isinstance(module, EvoNetSelectiveScan)]
    backends = [scan.backend for scan in scans]
    with _eval_mode(model):
        try:
            for scan in scans:
                scan.backend = scan_backend
            yield model
        finally:
            for scan, backend in zip(scans, backends):
                scan.backend = backend


def _image_size(model: nn.Module, image_size: int | Sequence[int] | None) -> tuple[int, int]:
    if image_size is None:
        image_size = getattr(getattr(model, "config", None), "image_size", None)
        if image_size is None:
            raise ValueError("image_size is required: the model has no config.image_size")
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    image_size: int | Sequence[int] | None = None,
    batch_size: int = 1,
    opset: int | None = None,
    dynamo: bool = False,
    dynamic_batch: bool = True,
    check: bool = True,
    atol: float = 1e-4,
    rtol: float = 0.0,
    seed: int = 0,
    example_inputs: Mapping[str, torch.Tensor] | None = None,
) -> ExportReport:
    """Export `model` to the ONNX file `path` and (with `check`) compare it with PyTorch in onnxruntime.

    Args:
        model: an `EvoNetModel`, `EvoNetForImageClassification` or `EvoNetBackbone` (any module taking
            `pixel_values` and returning a `ModelOutput` of tensors works). Exported in eval mode with the
            pure-PyTorch scan; its mode and scan backends are restored afterwards.
        path: the `.onnx` file to write (parent folders are created). Weights are stored inside it.
        image_size: `int` or `(height, width)` of the traced input; defaults to `model.config.image_size`. Unused
            with `example_inputs`.
        batch_size: batch of the random input used to trace and check. With `dynamic_batch` a batch of 1 is traced
            as 2, because `torch.export` fixes axes it sees at size 1 (`example_inputs` of batch 1 get their item
            twice). Unused with `example_inputs`, whose own batch is traced.
        opset: ONNX opset; `None` takes the exporter's default.
        dynamo: `False` (default) uses the TorchScript tracer, `True` the `torch.export`-based exporter (needs
            onnxscript); see the module docstring for why.
        dynamic_batch: leave the batch axis of the input and of every output free.
        check: run the file in onnxruntime (CPU) at the traced batch and, with `dynamic_batch`, at one more, and
            raise `OnnxCheckError` if any output differs from PyTorch by more than `atol + rtol * |PyTorch|`.
        rtol: relative part of the tolerance, for outputs of large magnitude (e.g. depths along rays).
        seed: seeds the random check inputs (a local generator; the global RNG is untouched).
        example_inputs: `{name: tensor}` keyword arguments of the model's forward, traced and checked instead of a
            random `pixel_values`; the names become the ONNX input names. Every tensor has the batch on axis 0.

    Returns:
        An `ExportReport` (path, opset, exporter, names, traced shape, timings, differences).
    """
    _import_onnx(dynamo)
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size} is invalid: expected a positive int")
    example, next_example = _trace_example(model, example_inputs, image_size, batch_size, dynamic_batch, seed)
    input_names = list(example) if isinstance(example, dict) else [INPUT_NAME]
    example_args = tuple(example.values()) if isinstance(example, dict) else (example,)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    output_names, export_seconds = _write_onnx(
        model, example, example_args, path, input_names, opset, dynamo, dynamic_batch
    )
    report = ExportReport(
        path=path,
        opset=_opset_of(path),
        exporter="dynamo" if dynamo else "torchscript",
        input_names=input_names,
        output_names=output_names,
        input_shape=tuple(example_args[0].shape),
        input_shapes={name: tuple(tensor.shape) for name, tensor in zip(input_names, example_args)},
        dynamic_batch=dynamic_batch,
        export_seconds=export_seconds,
    )
    if check:
        _check_export(report, model, example, next_example, atol=atol, rtol=rtol)
    return report


def _trace_example(model, example_inputs, image_size, batch_size, dynamic_batch, seed) -> tuple[Any, Any]:
    """The input to trace (`example_inputs`, or a random `pixel_values`) and a function drawing one of one more batch."""
    if example_inputs is not None:
        return _named_examples(example_inputs, dynamic_batch)
    trace_batch = max(batch_size, 2) if dynamic_batch else batch_size
    return _random_pixel_values(model, image_size, trace_batch, seed)


def _write_onnx(
    model, example, example_args, path, input_names, opset, dynamo, dynamic_batch
) -> tuple[list[str], float]:
    """Write the ONNX file with the chosen exporter, in export mode; return the output names and the seconds taken."""
    with export_mode(model), torch.no_grad():
        wrapper = EvoNetOnnxWrapper(model, input_names if isinstance(example, dict) else None).eval()
        output_names = [name for name, _ in named_outputs(model, example)]
        watch = Stopwatch()
        if dynamo:
            _export_dynamo(wrapper, example_args, path, input_names, output_names, opset, dynamic_batch)
        else:
            _export_torchscript(wrapper, example_args, path, input_names, output_names, opset, dynamic_batch)
        return output_names, watch.seconds


def _check_export(report: ExportReport, model, example, next_example, *, atol: float, rtol: float) -> None:
    """Compare the written file with PyTorch at the traced batch (and one more with a dynamic batch); record the
    differences and providers in `report`."""
    runtime = OnnxRuntimeModel(report.path)
    report.providers = runtime.providers
    trace_batch = report.input_shape[0]
    batches = [trace_batch] + ([trace_batch + 1] if report.dynamic_batch else [])
    inputs = [example] + ([next_example()] if report.dynamic_batch else [])
    report.max_abs_diff_per_output = compare_with_pytorch(model, runtime, inputs, atol=atol, rtol=rtol)
    report.checked_batch_sizes = batches
    report.max_abs_diff = max(report.max_abs_diff_per_output.values())


def _random_pixel_values(model, image_size, batch, seed) -> tuple[torch.Tensor, Any]:
    """A random `pixel_values` of `batch` at the model's size, and a function drawing one of `batch + 1`."""
    height, width = _image_size(model, image_size)
    num_channels = getattr(getattr(model, "config", None), "num_channels", 3)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    generator = torch.Generator().manual_seed(seed)

    def random_input(size: int) -> torch.Tensor:
        return torch.randn(size, num_channels, height, width, generator=generator).to(device=device, dtype=dtype)

    return random_input(batch), lambda: random_input(batch + 1)


def _named_examples(example_inputs: Mapping[str, torch.Tensor], dynamic_batch: bool) -> tuple[dict, Any]:
    """The named inputs to trace (a batch of 1 doubled under `dynamic_batch`), and a function returning them with
    their first item appended (one more batch, to check the free batch axis)."""
    if not example_inputs or not all(isinstance(value, torch.Tensor) for value in example_inputs.values()):
        raise ValueError("example_inputs is invalid: expected a non-empty dict of {input name: torch.Tensor}.")
    batches = {name: tensor.shape[0] if tensor.ndim else None for name, tensor in example_inputs.items()}
    if len(set(batches.values())) != 1 or None in batches.values():
        raise ValueError(f"example_inputs have batch sizes {batches}: expected one batch size on axis 0 of each.")
    example = dict(example_inputs)
    if dynamic_batch and next(iter(batches.values())) == 1:
        example = {name: torch.cat([tensor, tensor]) for name, tensor in example.items()}
    return example, lambda: {name: torch.cat([tensor, tensor[:1]]) for name, tensor in example.items()}


def _export_torchscript(wrapper, example_args, path, input_names, output_names, opset, dynamic_batch) -> None:
    dynamic_axes = {name: {0: "batch"} for name in [*input_names, *output_names]} if dynamic_batch else None
    with warnings.catch_warnings():
        # The tracer warns that it is deprecated, and about Python-level shape checks (the embeddings' input
        # validation, the scan's padding branch) that are constant for a fixed height and width.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapper,
            example_args,
            path,
            input_names=input_names,
            output_names=output_names,
            opset_version=opset,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            dynamo=False,
        )


def _export_dynamo(wrapper, example_args, path, input_names, output_names, opset, dynamic_batch) -> None:
    batch = torch.export.Dim("batch")
    dynamic_shapes = (tuple({0: batch} for _ in example_args),) if dynamic_batch else None  # the `*inputs` varargs
    program = torch.onnx.export(
        wrapper,
        example_args,
        input_names=input_names,
        output_names=output_names,
        opset_version=opset,
        dynamic_shapes=dynamic_shapes,
        dynamo=True,
        verbose=False,
    )
    program.save(path, external_data=False)  # one file; onnxscript still splits models over 2 GB


def _opset_of(path: str) -> int:
    onnx, _ = _import_onnx()
    model = onnx.load(path, load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def compare_with_pytorch(
    model: nn.Module,
    runtime: OnnxRuntimeModel,
    inputs: Sequence[torch.Tensor | Mapping[str, torch.Tensor]],
    atol: float = 1e-4,
    rtol: float = 0.0,
) -> dict[str, float]:
    """Largest absolute difference per output between `runtime` and `model` (in eval mode) over `inputs` (each a
    `pixel_values` tensor or a dict of named inputs).

    Raises `OnnxCheckError` naming the output, input shape and difference when one exceeds `atol + rtol * |PyTorch|`
    (elementwise, as `numpy.allclose`), or when the outputs' names or shapes disagree.
    """
    differences: dict[str, float] = {}
    with _eval_mode(model):
        for model_inputs in inputs:
            with torch.no_grad():
                expected = dict(named_outputs(model, model_inputs))
            actual = runtime(model_inputs)
            shape = (
                {name: tuple(tensor.shape) for name, tensor in model_inputs.items()}
                if isinstance(model_inputs, Mapping)
                else tuple(model_inputs.shape)
            )
            if list(actual) != list(expected):
                raise OnnxCheckError(f"ONNX outputs {list(actual)} differ from PyTorch's {list(expected)}")
            for name, tensor in expected.items():
                reference = tensor.detach().float().cpu().numpy()
                if actual[name].shape != reference.shape:
                    raise OnnxCheckError(
                        f"ONNX output {name!r} has shape {actual[name].shape}, PyTorch {reference.shape} (input {shape})"
                    )
                error = np.abs(actual[name].astype(np.float32) - reference)
                difference = float(np.max(error, initial=0.0))
                if not np.isfinite(difference) or np.any(error > atol + rtol * np.abs(reference)):
                    raise OnnxCheckError(
                        f"ONNX output {name!r} differs from PyTorch by {difference:.3g} > atol {atol:g}"
                        + (f" + rtol {rtol:g} * |PyTorch|" if rtol else "")
                        + f" (input {shape}, file {runtime.path})"
                    )
                differences[name] = max(differences.get(name, 0.0), difference)
    return differences


_NUMPY_DTYPES = {"tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxRuntimeModel:
    """An exported EvoNet in onnxruntime: `runtime(pixel_values)` returns `{output name: np.ndarray}`; a graph with
    several inputs takes a `{input name: array or tensor}` dict.

    `num_threads` sets onnxruntime's intra-op threads (`None`: its default, one per physical core); inter-op
    parallelism is off, so latencies measured with it are those of one sequential graph.

    `memory_reuse=False` (default) turns off onnxruntime's buffer-reuse planning. The traced scan unrolls the steps
    of a chunk into a long chain of small ops (about 10k nodes for the default 224x224 EvoNet), on which that
    planner is very slow: with onnxruntime 1.31 on 2 CPU cores, creating the session took ~50 s with it and ~5 s
    without, with the same peak memory (0.8 GB at batch 1, 6 GB at batch 8) and no slower inference.

    What its latency measures: the ONNX graph, whose SS2D scans are the unrolled chunked scan. For the default
    224x224 EvoNet at batch 1 on one thread that was 0.81 s, against 0.68 s for PyTorch with the same `"torch"`
    scan and 0.19 s with the fused CPU kernel: an SS2D-heavy candidate looks slower here than in PyTorch.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        num_threads: int | None = None,
        providers: Sequence[str] | None = None,
        memory_reuse: bool = False,
    ):
        _, onnxruntime = _import_onnx()
        self.path = os.fspath(path)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.enable_mem_reuse = memory_reuse
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        self.session = onnxruntime.InferenceSession(
            self.path, options, providers=list(providers or ["CPUExecutionProvider"])
        )
        self.input_name = self.session.get_inputs()[0].name
        self.input_dtype = _NUMPY_DTYPES.get(self.session.get_inputs()[0].type, np.float32)
        self.input_dtypes = {node.name: _NUMPY_DTYPES.get(node.type, np.float32) for node in self.session.get_inputs()}
        self.output_names = [output.name for output in self.session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def __call__(
        self, inputs: np.ndarray | torch.Tensor | Mapping[str, np.ndarray | torch.Tensor]
    ) -> dict[str, np.ndarray]:
        named = inputs if isinstance(inputs, Mapping) else {self.input_name: inputs}
        if set(named) != set(self.input_dtypes):
            raise ValueError(f"inputs {sorted(named)} are invalid: {self.path} takes {list(self.input_dtypes)}.")
        feed = {name: self._array(value, self.input_dtypes[name]) for name, value in named.items()}
        outputs = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, outputs))

    @staticmethod
    def _array(value: np.ndarray | torch.Tensor, dtype) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().float().numpy()
        return np.ascontiguousarray(value, dtype=dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, outputs={self.output_names})"


__all__ = [
    "EvoNetOnnxWrapper",
    "ExportReport",
    "OnnxCheckError",
    "OnnxRuntimeModel",
    "compare_with_pytorch",
    "export_mode",
    "export_onnx",
    "named_outputs",
]
