"""MAC and parameter counting (`evonets.deploy.profiling`): every figure is checked against a hand computation."""

import importlib

import pytest
import torch
from torch import nn

import evonets
from evonets.deploy.profiling import SCAN_KEY, count_macs, count_parameters
from evonets.models.mixer_ss2d import EvoNetSelectiveScan, EvoNetSS2D

SCAN_BACKENDS = ("reference", "torch", "cpu_fused")


def _model(image_size: int, **kwargs) -> evonets.EvoNetForImageClassification:
    torch.manual_seed(0)
    config = evonets.EvoNetConfig(image_size=image_size, patch_size=4, num_labels=10, **kwargs)
    return evonets.EvoNetForImageClassification(config).eval()


def _mlp_macs(tokens: int, channels: int, ratio: int = 4) -> int:
    return 2 * tokens * channels * ratio * channels


def test_conv_and_attention_evonet_matches_hand_count():
    # 32x32 image, patch 4: stage 1 is 8x8 tokens of 8 channels (conv mixer), stage 2 is 4x4 tokens of 16 (attention).
    model = _model(
        32, depths=[1, 1], hidden_sizes=[8, 16], block_types=["conv", "attention"], num_heads=2, attention_head_dim=8
    )
    stem = 3 * 8 * 4 * 4 * 8 * 8  # 4x4 stride-4 conv, 3 -> 8 channels, 8x8 outputs
    conv_block = 8 * 7 * 7 * 8 * 8 + _mlp_macs(64, 8)  # depthwise 7x7 + MLP
    downsample = 8 * 16 * 2 * 2 * 4 * 4  # 2x2 stride-2 conv, 8 -> 16
    tokens, width = 16, 16
    # qkv + Q K^T and P V over 2 heads of 8 (together tokens^2 * 2 * width) + out-projection
    attention = tokens * width * 3 * width + tokens * tokens * 2 * width + tokens * width * width
    assert model.config.block_args(1, 0)["attention_dim"] == width  # heads of 8: q, k, v as wide as the stage
    attention_block = attention + _mlp_macs(tokens, width)
    head = 16 * 10
    expected = stem + conv_block + downsample + attention_block + head

    result = count_macs(model, torch.randn(1, 3, 32, 32))

    assert result.total == expected
    assert int(result) == expected
    assert result.scan == 0 and result.excluded == 0
    assert result.by_block_type == {"conv": conv_block, "attention": attention_block}
    assert result.by_mixer_type == {"conv": 8 * 7 * 7 * 8 * 8, "attention": attention}
    assert sum(result.by_module_type.values()) == expected
    # The attention products run inside the attention module itself (SDPA), the rest in Linear / Conv2d.
    assert result.by_module_type["EvoNetAttention"] == tokens * tokens * 2 * width


def test_macs_scale_with_batch():
    model = _model(32, depths=[1], hidden_sizes=[8], block_types=["conv"])
    single = count_macs(model, torch.randn(1, 3, 32, 32)).total
    assert count_macs(model, torch.randn(3, 3, 32, 32)).total == 3 * single


def _ss2d_model() -> evonets.EvoNetForImageClassification:
    # hidden 32 -> dt_rank 2, ssm_ratio 2 -> d_inner 64, d_state 4; 8x8 tokens.
    return _model(32, depths=[1], hidden_sizes=[32], block_types=["ss2d"], d_states=4, ssm_ratios=2.0, mlp_ratios=4.0)


def _ss2d_expected() -> tuple[int, int]:
    channels, inner, state, rank, orders, tokens = 32, 64, 4, 2, 4, 64
    scan = 2 * orders * inner * tokens * state
    ss2d = (
        tokens * channels * 2 * inner  # in_proj
        + inner * 3 * 3 * tokens  # depthwise 3x3
        + orders * (rank + 2 * state) * inner * tokens  # x_proj einsum
        + orders * inner * rank * tokens  # dt_proj einsum
        + tokens * inner * channels  # out_proj
        + scan
    )
    stem, head = 3 * channels * 4 * 4 * tokens, channels * 10
    return stem + ss2d + _mlp_macs(tokens, channels) + head, scan


def test_ss2d_scan_macs_are_included_and_analytic():
    model = _ss2d_model()
    expected_total, expected_scan = _ss2d_expected()
    mixer = model.evonet.encoder.stages[0].blocks[0].mixer
    assert isinstance(mixer, EvoNetSS2D)
    assert mixer.scan_macs(8, 8) == expected_scan

    result = count_macs(model, torch.randn(1, 3, 32, 32))

    assert result.scan == expected_scan
    assert result.by_module_type[SCAN_KEY] == expected_scan
    assert result.total == expected_total
    assert result.counted == expected_total - expected_scan
    assert count_macs(model, torch.randn(2, 3, 32, 32)).scan == 2 * expected_scan


def _available_backends() -> tuple[str, ...]:
    # `evonets.models.selective_scan` is the function; the module holds `available_backends`.
    return importlib.import_module("evonets.models.selective_scan").available_backends()


@pytest.mark.parametrize("backend", SCAN_BACKENDS)
def test_macs_do_not_depend_on_scan_backend(backend):
    if backend not in _available_backends():
        pytest.skip(f"scan backend {backend!r} is not available here")
    model = _ss2d_model()
    for module in model.modules():
        if isinstance(module, EvoNetSelectiveScan):
            module.backend = backend
    assert count_macs(model, torch.randn(1, 3, 32, 32)).total == _ss2d_expected()[0]


class _MatmulScan(EvoNetSelectiveScan):
    """A scan whose implementation does a large matmul: the counter must drop it, whatever it costs."""

    def forward(self, u, delta, A, B, C, D, delta_bias):
        waste = torch.bmm(u, u.transpose(1, 2))  # (B, KE, KE): counted by FlopCounterMode
        return super().forward(u, delta, A, B, C, D, delta_bias) + 0 * waste.sum()


def test_matmuls_inside_the_scan_module_are_replaced_by_the_analytic_count():
    model = _ss2d_model()
    mixer = model.evonet.encoder.stages[0].blocks[0].mixer
    mixer.scan = _MatmulScan()
    result = count_macs(model, torch.randn(1, 3, 32, 32))
    channels, tokens = 4 * 64, 64
    assert result.excluded == channels * tokens * channels
    assert result.total == _ss2d_expected()[0]
    assert sum(result.by_module_type.values()) == result.total


def test_any_torch_model_and_state_is_restored():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 7)).train()
    model[0].weight.requires_grad_(False)
    result = count_macs(model, torch.randn(2, 3, 5, 5))
    assert result.total == 2 * (4 * 3 * 3 * 3 * 5 * 5 + 100 * 7)
    assert result.by_module_type == {"Conv2d": 2 * 4 * 27 * 25, "Linear": 2 * 700}
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True]


def test_count_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False))
    assert count_parameters(model) == 3 * 4 + 4 + 4 * 2
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 8
    shared = nn.Linear(2, 2)
    assert count_parameters(nn.Sequential(shared, shared)) == 6
