"""ONNX export (`evonets.deploy.onnx_export`): every block type and whole mixed EvoNets match PyTorch in onnxruntime."""

import sys

import numpy as np
import pytest
import torch

import evonets
from evonets.deploy.onnx_export import OnnxCheckError, OnnxRuntimeModel, compare_with_pytorch, export_onnx
from evonets.models import mixer_ss2d
from evonets.models.mixer_ss2d import EvoNetSelectiveScan
from evonets.models.selective_scan import TORCH_CHUNK_SIZE, selective_scan

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ATOL = 1e-4
# Every block type in a 4-stage net. SS2D sits where grids are small: the traced scan unrolls one chunk's time steps
# (up to `TORCH_CHUNK_SIZE`), and graph size, export and onnxruntime session creation grow with it.
MIXED_BLOCK_TYPES = [["conv", "ssd"], ["ssd", "ss2d"], ["ss2d", "attention"], ["attention"]]


@pytest.fixture(autouse=True)
def quick_pytorch(monkeypatch):
    """PyTorch side of the comparisons: the pure-PyTorch scan (the fused CPU kernel would be built on first use,
    and the backends are checked against each other in the scan's own tests), and one intra-op thread: these models
    are tiny, and on a busy 2-core machine spinning OpenMP threads turn a 0.03 s forward into seconds."""
    monkeypatch.setenv("EVONETS_SCAN_BACKEND", "torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(**kwargs) -> evonets.EvoNetConfig:
    """Two stages; at the default 16x16 image their token grids are 4x4 and 2x2."""
    defaults = dict(depths=[1, 1], hidden_sizes=[16, 32], image_size=16, d_states=4, num_labels=5)
    return evonets.EvoNetConfig(**{**defaults, **kwargs})


def _model(cls, config, seed: int = 0):
    torch.manual_seed(seed)
    return cls(config).eval()


def _assert_matches(model, path, pixel_values: torch.Tensor) -> dict:
    """Run the file in onnxruntime and compare every output with PyTorch, independently of export_onnx's check."""
    runtime = OnnxRuntimeModel(path)
    actual = runtime(pixel_values)
    with torch.no_grad():
        output = model(pixel_values, return_dict=True)
    for name, value in actual.items():
        field, _, index = name.partition(".")
        expected = output[field][int(index)] if index else output[field]
        np.testing.assert_allclose(value, expected.numpy(), rtol=0, atol=ATOL, err_msg=name)
    return actual


def _graph_ops(path) -> set[tuple[str, str]]:
    return {(node.domain, node.op_type) for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("block_type", ["ss2d", "ssd", "attention", "conv"])
def test_each_block_type_exports_and_matches(block_type, tmp_path):
    model = _model(evonets.EvoNetForImageClassification, _config(block_types=[block_type, block_type]))
    report = export_onnx(model, tmp_path / "model.onnx", batch_size=2)

    assert report.output_names == ["logits"]
    assert report.max_abs_diff is not None and report.max_abs_diff <= ATOL
    assert report.checked_batch_sizes == [2, 3]
    assert {domain for domain, _ in _graph_ops(report.path)} <= {"", "ai.onnx"}  # standard ops only
    torch.manual_seed(1)
    logits = _assert_matches(model, report.path, torch.randn(2, 3, 16, 16))["logits"]
    assert logits.shape == (2, 5) and np.abs(logits[0] - logits[1]).max() > 1e-4  # depends on the input


def test_export_uses_torch_scan_and_restores_model_state(tmp_path, monkeypatch):
    model = _model(evonets.EvoNetForImageClassification, _config(block_types=["ss2d", "ss2d"]))
    scans = [module for module in model.modules() if isinstance(module, EvoNetSelectiveScan)]
    for scan in scans:
        scan.backend = "reference"  # the sequential loop; the export must trace the chunked scan instead
    model.train()
    traced_backends = []

    def spy(*args, backend, **kwargs):
        if torch.onnx.is_in_onnx_export():
            traced_backends.append(backend)
        return selective_scan(*args, backend=backend, **kwargs)

    monkeypatch.setattr(mixer_ss2d, "selective_scan", spy)
    report = export_onnx(model, tmp_path / "model.onnx", batch_size=2)

    assert len(traced_backends) >= 2 and set(traced_backends) == {"torch"}  # both SS2D blocks, chunked scan
    assert model.training and all(scan.backend == "reference" for scan in scans)
    assert report.max_abs_diff <= ATOL


def _mixed_config(**kwargs) -> evonets.EvoNetConfig:
    return _config(
        depths=[2, 2, 2, 1],
        hidden_sizes=[16, 24, 32, 48],
        block_types=MIXED_BLOCK_TYPES,
        num_heads=2,
        image_size=64,
        **kwargs,
    )


def test_mixed_classifier_exports_and_matches(tmp_path):
    model = _model(evonets.EvoNetForImageClassification, _mixed_config())
    report = export_onnx(model, tmp_path / "classifier.onnx", batch_size=2)

    assert report.input_shape == (2, 3, 64, 64) and report.output_names == ["logits"]
    assert report.max_abs_diff <= ATOL
    torch.manual_seed(2)
    _assert_matches(model, report.path, torch.randn(2, 3, 64, 64))


def test_mixed_backbone_exports_every_requested_feature_map(tmp_path):
    out_features = ["stem", "stage1", "stage3", "stage4"]
    model = _model(evonets.EvoNetBackbone, _mixed_config(out_features=out_features))
    report = export_onnx(model, tmp_path / "backbone.onnx", batch_size=2)

    assert report.output_names == [f"feature_maps.{index}" for index in range(4)]
    assert report.max_abs_diff <= ATOL
    torch.manual_seed(3)
    maps = _assert_matches(model, report.path, torch.randn(2, 3, 64, 64))
    shapes = [maps[f"feature_maps.{index}"].shape for index in range(4)]
    assert shapes == [(2, 16, 16, 16), (2, 16, 16, 16), (2, 32, 4, 4), (2, 48, 2, 2)]


def test_base_model_exports_hidden_state_and_pooler(tmp_path):
    model = _model(evonets.EvoNetModel, _config(block_types=["conv", "ssd"]))
    report = export_onnx(model, tmp_path / "model.onnx", batch_size=2)

    assert report.output_names == ["last_hidden_state", "pooler_output"]
    assert report.max_abs_diff <= ATOL


def test_dynamic_batch_runs_at_other_batch_sizes(tmp_path):
    model = _model(evonets.EvoNetForImageClassification, _config(block_types=["ss2d", "attention"]))
    report = export_onnx(model, tmp_path / "model.onnx", batch_size=1)  # traced at 2: see export_onnx

    graph = onnx.load(report.path).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    torch.manual_seed(4)
    for batch in (1, 5):
        assert _assert_matches(model, report.path, torch.randn(batch, 3, 16, 16))["logits"].shape == (batch, 5)


def test_static_batch_fixes_the_input_shape(tmp_path):
    model = _model(evonets.EvoNetForImageClassification, _config(block_types=["conv", "conv"]))
    report = export_onnx(model, tmp_path / "model.onnx", batch_size=3, dynamic_batch=False)

    dims = onnx.load(report.path).graph.input[0].type.tensor_type.shape.dim
    assert [dim.dim_value for dim in dims] == [3, 3, 16, 16]
    assert report.checked_batch_sizes == [3] and report.max_abs_diff <= ATOL


def test_token_grid_not_divisible_by_scan_chunk(tmp_path):
    # 4x4 patches of a 28x44 image: the SS2D stage is a 7x11 grid of 77 tokens, more than one chunk of the scan
    # and not a multiple of the chunk count, so the last chunk is padded (the conv stage after it gets 3x5).
    tokens, n_chunks = 77, -(-77 // TORCH_CHUNK_SIZE)
    assert n_chunks > 1 and tokens % n_chunks != 0, "pick another image size for this scan chunk size"
    model = _model(evonets.EvoNetForImageClassification, _config(block_types=["ss2d", "conv"]))
    report = export_onnx(model, tmp_path / "model.onnx", image_size=(28, 44), batch_size=2)

    assert report.input_shape == (2, 3, 28, 44)
    assert report.max_abs_diff <= ATOL
    torch.manual_seed(5)
    _assert_matches(model, report.path, torch.randn(3, 3, 28, 44))


def test_check_fails_when_onnx_and_pytorch_differ(tmp_path):
    model = _model(evonets.EvoNetForImageClassification, _config(block_types=["conv", "conv"]))
    report = export_onnx(model, tmp_path / "model.onnx", check=False)
    assert report.max_abs_diff is None

    with torch.no_grad():
        model.classifier.bias += 1e-3  # the exported file now lags the model
    with pytest.raises(OnnxCheckError, match="'logits' differs from PyTorch"):
        compare_with_pytorch(model, OnnxRuntimeModel(report.path), [torch.randn(2, 3, 16, 16)], atol=ATOL)


@pytest.mark.slow  # the dynamo exporter takes 10-20 s even for this 16x16 model
def test_dynamo_exporter_matches(tmp_path):
    model = _model(evonets.EvoNetForImageClassification, _config(block_types=["ss2d", "ssd"]))
    report = export_onnx(model, tmp_path / "model.onnx", batch_size=2, dynamo=True)

    assert report.exporter == "dynamo" and report.checked_batch_sizes == [2, 3]
    assert report.max_abs_diff <= ATOL


def test_missing_onnxruntime_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    model = _model(evonets.EvoNetForImageClassification, _config(block_types=["conv", "conv"]))
    with pytest.raises(ImportError, match=r"pip install evonets\[onnx\]"):
        export_onnx(model, tmp_path / "model.onnx")
