"""Selective-scan backends against the sequential reference: outputs, all gradients, options, export."""

from __future__ import annotations

import importlib
import logging
import math
import shutil

import pytest
import torch

from evonets.models.selective_scan import (
    BACKEND_ENV_VAR,
    BACKENDS,
    TORCH_CHUNK_SIZE,
    available_backends,
    selective_scan,
)

# The module itself (the package re-exports the function under the same name).
scan_module = importlib.import_module("evonets.models.selective_scan")
INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def make_inputs(
    batch: int,
    groups: int,
    per_group: int,
    length: int,
    d_state: int,
    seed: int = 0,
    max_decay_rate: float = 16.0,
    delta_shift: float = -2.0,
) -> dict[str, torch.Tensor]:
    """Inputs scaled like a trained SS2D: dt = softplus(N(0, 1) + delta_shift + bias), A = -exp(U(0, log max))."""
    generator = torch.Generator().manual_seed(seed)
    channels = groups * per_group

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    log_rate = torch.rand(channels, d_state, generator=generator) * math.log(max_decay_rate)
    return {
        "u": randn(batch, channels, length),
        "delta": randn(batch, channels, length) + delta_shift,
        "A": -torch.exp(log_rate),
        "B": randn(batch, groups, d_state, length),
        "C": randn(batch, groups, d_state, length),
        "D": randn(channels),
        "delta_bias": 0.5 * randn(channels),
    }


def run(
    inputs: dict[str, torch.Tensor | None], backend: str, grad_y: torch.Tensor, **kwargs
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """y and the gradients of <y, grad_y> w.r.t. every non-None input."""
    leaves = {name: x.clone().requires_grad_() for name, x in inputs.items() if x is not None}
    args = {name: leaves.get(name) for name in INPUT_NAMES}
    y = selective_scan(**args, backend=backend, **kwargs)
    grads = torch.autograd.grad(y, list(leaves.values()), grad_y)
    return y.detach(), dict(zip(leaves, grads))


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, name: str, tol: float = 1e-4) -> None:
    """Elementwise |actual - expected| <= tol * (|expected| + max|expected|): relative to the tensor's scale."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")


@pytest.fixture(scope="module")
def fused_available() -> bool:
    """The fused kernel must build wherever a C++ compiler exists; only a compiler-less machine skips."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the fused CPU kernel cannot be built here")
    assert "cpu_fused" in available_backends(), "the fused CPU kernel failed to build (see the logged warning)"
    return True


@pytest.fixture
def two_threads():
    """Two threads, so the fused backward also splits a group's channels across tasks."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


SHAPES = [  # batch, groups, per_group, length, d_state
    (2, 4, 3, 100, 16),  # two chunks of 50 steps
    (1, 1, 5, 2 * TORCH_CHUNK_SIZE, 1),  # full chunks; one group, split across threads in the fused backward
    (2, 1, 4, 37, 64),  # a single short chunk
    (3, 4, 9, 3 * TORCH_CHUNK_SIZE + 5, 16),  # padded last chunk; channels per group not a multiple of 8 lanes
    (1, 4, 2, 70, 5),  # d_state not a multiple of 8
]


@pytest.mark.parametrize("backend", ["torch", "cpu_fused"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}g{}c{}L{}N{}".format(*s))
def test_matches_reference(backend, shape, request, two_threads):
    if backend == "cpu_fused":
        request.getfixturevalue("fused_available")
    inputs = make_inputs(*shape, seed=sum(shape))
    grad_y = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(1))
    y_ref, grads_ref = run(inputs, "reference", grad_y)
    y, grads = run(inputs, backend, grad_y)
    assert_close_scaled(y, y_ref, "y")
    for name in INPUT_NAMES:
        assert_close_scaled(grads[name], grads_ref[name], f"d{name}")


@pytest.mark.parametrize("backend", ["torch", "cpu_fused"])
def test_strong_decay_and_large_steps_stay_finite(backend, request):
    """A down to -256 and dt up to ~5: exp(dt A) underflows to 0 for many states, and nothing overflows."""
    if backend == "cpu_fused":
        request.getfixturevalue("fused_available")
    inputs = make_inputs(2, 2, 4, 150, 16, seed=3, max_decay_rate=256.0, delta_shift=2.0)
    grad_y = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(2))
    y_ref, grads_ref = run(inputs, "reference", grad_y)
    y, grads = run(inputs, backend, grad_y)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads.values())
    assert_close_scaled(y, y_ref, "y")
    for name in INPUT_NAMES:
        assert_close_scaled(grads[name], grads_ref[name], f"d{name}")


@pytest.mark.parametrize("backend", ["torch", "cpu_fused"])
def test_without_softplus_D_and_bias(backend, request):
    if backend == "cpu_fused":
        request.getfixturevalue("fused_available")
    inputs = make_inputs(2, 2, 3, 90, 16, seed=4)
    inputs["delta"] = torch.nn.functional.softplus(inputs["delta"])  # already a step size
    inputs["D"] = inputs["delta_bias"] = None
    grad_y = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(3))
    y_ref, grads_ref = run(inputs, "reference", grad_y, delta_softplus=False)
    y, grads = run(inputs, backend, grad_y, delta_softplus=False)
    assert set(grads) == {"u", "delta", "A", "B", "C"}
    assert_close_scaled(y, y_ref, "y")
    for name, grad in grads.items():
        assert_close_scaled(grad, grads_ref[name], f"d{name}")


def test_softplus_flag_changes_result():
    inputs = make_inputs(1, 1, 2, 20, 4)
    with_softplus = selective_scan(**inputs, backend="torch")
    without = selective_scan(**inputs, delta_softplus=False, backend="torch")
    assert not torch.allclose(with_softplus, without)


@pytest.mark.parametrize("backend", ["torch", "cpu_fused"])
def test_half_precision_inputs_return_input_dtype(backend, request):
    if backend == "cpu_fused":
        request.getfixturevalue("fused_available")
    inputs = {k: v.to(torch.bfloat16) for k, v in make_inputs(1, 2, 4, 50, 16, seed=5).items()}
    y = selective_scan(**inputs, backend=backend)
    y_ref = selective_scan(**{k: v.float() for k, v in inputs.items()}, backend="reference")
    assert y.dtype == torch.bfloat16
    assert_close_scaled(y.float(), y_ref, "y", tol=1e-2)  # bf16 rounding of the output


def test_unknown_backend_names_the_allowed_ones():
    inputs = make_inputs(1, 1, 1, 4, 2)
    with pytest.raises(ValueError, match="cpu_fused") as error:
        selective_scan(**inputs, backend="triton")
    assert all(name in str(error.value) for name in BACKENDS)


def test_bad_shapes_are_rejected():
    inputs = make_inputs(1, 2, 3, 10, 4)
    inputs["C"] = inputs["C"][..., :-1]
    with pytest.raises(ValueError, match="B and C"):
        selective_scan(**inputs, backend="torch")


def test_environment_variable_overrides_auto_only(monkeypatch):
    u = torch.zeros(1, 2, 3)
    monkeypatch.setenv(BACKEND_ENV_VAR, "reference")
    assert scan_module.resolve_backend("auto", u.device.type) == "reference"
    assert scan_module.resolve_backend("torch", u.device.type) == "torch"
    monkeypatch.setenv(BACKEND_ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=BACKEND_ENV_VAR):
        scan_module.resolve_backend("auto", u.device.type)


def test_auto_picks_fused_kernel_on_cpu(fused_available, monkeypatch):
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    assert scan_module.resolve_backend("auto", "cpu") == "cpu_fused"


def test_missing_kernel_source_falls_back_to_torch(monkeypatch, tmp_path, caplog):
    """As in a Hugging Face remote-code folder, where only the .py file travels."""
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    monkeypatch.setattr(scan_module, "_CPU_KERNEL_SOURCE", tmp_path / "missing.cpp")
    monkeypatch.setattr(scan_module, "_cpu_kernel_loaded", None)
    inputs = make_inputs(1, 2, 2, 30, 4)
    with caplog.at_level(logging.INFO, logger=scan_module.__name__):
        assert scan_module.resolve_backend("auto", inputs["u"].device.type) == "torch"
        assert scan_module.resolve_backend("cpu_fused", inputs["u"].device.type) == "torch"
        y = selective_scan(**inputs)
    assert sum("not found" in record.message for record in caplog.records) == 1  # logged once
    torch.testing.assert_close(y, selective_scan(**inputs, backend="reference"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_bad_build_timeout_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(scan_module.BUILD_TIMEOUT_ENV_VAR, value)
    monkeypatch.setattr(scan_module, "_cpu_kernel_loaded", None)
    with pytest.raises(ValueError, match=scan_module.BUILD_TIMEOUT_ENV_VAR):
        available_backends()


def test_build_timeout_zero_never_builds(monkeypatch, tmp_path, caplog):
    """Nothing built in the (empty) extensions folder and building switched off: one warning, the 'torch' scan."""
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv(scan_module.BUILD_TIMEOUT_ENV_VAR, "0")
    monkeypatch.setattr(scan_module, "_cpu_kernel_loaded", None)
    with caplog.at_level(logging.INFO, logger=scan_module.__name__):
        assert scan_module.resolve_backend("auto", "cpu") == "torch"
        assert "cpu_fused" not in available_backends()
    warnings = [record.message for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"{scan_module.BUILD_TIMEOUT_ENV_VAR}=0" in warnings[0]
    assert not list(tmp_path.rglob("*.so"))


class ScanModule(torch.nn.Module):
    """A minimal SS2D-like user of selective_scan with its own A, D and delta_bias."""

    def __init__(self, channels: int, d_state: int):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.A_log = torch.nn.Parameter(torch.rand(channels, d_state, generator=generator) * math.log(16.0))
        self.D = torch.nn.Parameter(torch.randn(channels, generator=generator))
        self.delta_bias = torch.nn.Parameter(torch.randn(channels, generator=generator) - 2.0)

    def forward(self, u: torch.Tensor, delta: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        A = -torch.exp(self.A_log)
        return selective_scan(u, delta, A, B, C, self.D, self.delta_bias, backend="auto")


@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_export_matches_pytorch(dynamo, tmp_path, monkeypatch):
    """backend="auto" must pick the exportable "torch" scan while exporting (the fused op has no ONNX form)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    # Small chunks keep the unrolled graph, and so the export, small; the code path is the same.
    monkeypatch.setattr(scan_module, "TORCH_CHUNK_SIZE", 8)
    inputs = make_inputs(2, 2, 3, 3 * 8 + 5, 4, seed=6)  # four chunks, the last one ragged
    model = ScanModule(channels=6, d_state=4).eval()
    args = tuple(inputs[name] for name in ("u", "delta", "B", "C"))
    path = tmp_path / "scan.onnx"
    torch.onnx.export(model, args, str(path), input_names=["u", "delta", "B", "C"], dynamo=dynamo)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y_onnx,) = session.run(None, {name: x.numpy() for name, x in zip(("u", "delta", "B", "C"), args)})
    with torch.no_grad():
        y_reference = selective_scan(
            args[0], args[1], -torch.exp(model.A_log), args[2], args[3], model.D, model.delta_bias, backend="reference"
        )
    assert_close_scaled(torch.from_numpy(y_onnx), y_reference, "onnx y")
