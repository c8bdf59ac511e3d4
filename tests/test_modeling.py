"""EvoNet models: config validation, shapes, mixer math, save/load, Auto classes, checkpointing, compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification

import evonets
from evonets.models.mixer_attention import EvoNetAttention
from evonets.models.mixer_ss2d import EvoNetSS2D, merge_orders, scan_orders
from evonets.models.mixer_ssd import EvoNetSSD
from evonets.models.selective_scan import available_backends

MIXED_BLOCKS = [["ss2d", "conv"], ["ssd", "ss2d"], ["attention", "ssd"], ["conv", "attention"]]


def tiny_config(**overrides) -> evonets.EvoNetConfig:
    kwargs = dict(
        image_size=32,
        patch_size=2,
        depths=[2, 2, 2, 2],
        hidden_sizes=[16, 32, 48, 64],
        block_types=MIXED_BLOCKS,
        d_states=4,
        num_heads=[1, 2, 2, 4],
        num_labels=10,
    )
    kwargs.update(overrides)
    return evonets.EvoNetConfig(**kwargs)


# ----------------------------------------------------------------------------------------------- configuration


def test_design_contract_config_builds_and_runs():
    config = evonets.EvoNetConfig(
        depths=[2, 2, 4, 2],
        hidden_sizes=[48, 96, 192, 384],
        block_types=[["ss2d"] * 2, ["ss2d", "ssd"], ["ssd", "ssd", "attention", "attention"], ["attention"] * 2],
        num_labels=10,
    )
    model = evonets.EvoNetForImageClassification(config).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), labels=torch.tensor([3]))
    assert out.logits.shape == (1, 10)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


@pytest.mark.parametrize(
    "overrides, field, allowed",
    [
        (dict(depths=[2, 0, 2, 2]), "depths", "positive ints"),
        (dict(hidden_sizes=[16, 32]), "hidden_sizes", "one int per stage"),
        (dict(block_types=[["ss2d", "mamba"], "ssd", "ssd", "attention"]), "block_types[0][1]", "'attention'"),
        (dict(block_types=["ss2d", "ssd"]), "block_types", "one entry per stage"),
        (dict(block_types=[["ss2d"], "ssd", "ssd", "attention"]), "block_types[0]", "depths[0] = 2"),
        (dict(attention_head_dim=0), "attention_head_dim", "a positive int"),
        (dict(num_heads=[1, 3, 2, 4]), "num_heads[1][0]", "divisor of d_inner = ssm_ratio * hidden_size = 64"),
        (dict(d_states=0), "d_states[0][0]", "positive int"),
        (dict(mlp_ratios=[4.0, -1.0, 4.0, 4.0]), "mlp_ratios[1][0]", "positive"),
        (dict(dt_rank="big"), "dt_rank", '"auto" or a positive int'),
        (dict(conv_kernel_size=4), "conv_kernel_size", "odd"),
        (dict(drop_path_rate=1.5), "drop_path_rate", "[0, 1)"),
    ],
)
def test_config_rejects_bad_values_naming_field_and_allowed(overrides, field, allowed):
    with pytest.raises(ValueError) as error:
        tiny_config(**overrides)
    message = str(error.value)
    assert f"EvoNetConfig.{field}" in message
    assert allowed in message


def test_per_block_fields_accept_scalar_per_stage_and_per_block_forms():
    scalar = tiny_config(mlp_ratios=3.0)
    per_stage = tiny_config(mlp_ratios=[3.0, 3.0, 3.0, 3.0])
    per_block = tiny_config(mlp_ratios=[[3.0, 3.0]] * 4)
    for stage in range(4):
        for index in range(2):
            assert scalar.block_args(stage, index) == per_stage.block_args(stage, index)
            assert scalar.block_args(stage, index) == per_block.block_args(stage, index)
    mixed = tiny_config(mlp_ratios=[2.0, [1.0, 4.0], 2.0, 2.0])
    assert [mixed.block_args(1, i)["mlp_ratio"] for i in range(2)] == [1.0, 4.0]


def test_default_heads_divide_the_ssd_width_and_tile_the_attention_width():
    config = evonets.EvoNetConfig(
        depths=[1, 1], hidden_sizes=[224, 400], block_types=["ssd", "attention"], ssm_ratios=1.0
    )
    assert config.block_args(0, 0)["num_heads"] == 2  # 224 // 64 = 3 does not divide 224
    # Attention heads have a fixed size, so they need not divide the width: 400 // 32 = 12 heads of 32.
    assert config.block_args(1, 0)["num_heads"] == 12
    assert config.block_args(1, 0)["attention_dim"] == 384


def test_attention_heads_keep_their_size_at_any_width():
    config = tiny_config(num_heads=[1, 2, 2, 3], attention_head_dim=8)  # 3 heads in a 64-wide attention stage
    model = evonets.EvoNetModel(config).eval()
    mixer = model.encoder.stages[3].blocks[1].mixer
    assert (mixer.num_heads, mixer.head_dim) == (3, 8)
    assert mixer.qkv.weight.shape == (3 * 3 * 8, 64) and mixer.proj.weight.shape == (64, 3 * 8)
    assert model(torch.randn(1, 3, 64, 64)).last_hidden_state.shape[1] == 64


def test_config_round_trips_through_dict_and_auto_config(tmp_path):
    config = tiny_config(out_features=["stage2", "stage4"])
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, evonets.EvoNetConfig)
    assert loaded.block_types == config.block_types
    assert loaded.out_features == ["stage2", "stage4"] and loaded.out_indices == [2, 4]
    assert loaded.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]


# ------------------------------------------------------------------------------------------------------ mixers


def test_scan_orders_and_merge_are_inverse_up_to_the_four_orders():
    x = torch.randn(2, 5, 3, 7)
    orders = scan_orders(x)
    assert orders.shape == (2, 4, 5, 21)
    assert torch.equal(orders[:, 0, :, :7], x[:, :, 0, :])  # row-major: first row first
    assert torch.equal(orders[:, 1, :, :3], x[:, :, :, 0])  # column-major: first column first
    assert torch.equal(orders[:, 2], orders[:, 0].flip(-1)) and torch.equal(orders[:, 3], orders[:, 1].flip(-1))
    assert torch.allclose(merge_orders(orders, 3, 7), 4 * x.flatten(2))


def test_ss2d_column_orders_scan_columns():
    """Transposing the image swaps the row and column scans: with the row / column order weights swapped, SS2D
    of the transposed image is the transpose of SS2D of the image."""
    torch.manual_seed(0)
    mixer = EvoNetSS2D(8, d_inner=16, d_state=4, dt_rank=2).eval()
    mixer.init_ssm_parameters()
    with torch.no_grad():
        for name in ("x_proj_weight", "dt_proj_weight", "dt_proj_bias"):
            getattr(mixer, name).normal_(0, 0.3)
        mixer.A_log.uniform_(-1, 1)
    swapped = EvoNetSS2D(8, d_inner=16, d_state=4, dt_rank=2).eval()
    swapped.load_state_dict(mixer.state_dict())
    with torch.no_grad():
        order = [1, 0, 3, 2]
        for name in ("x_proj_weight", "dt_proj_weight", "dt_proj_bias"):
            getattr(swapped, name).copy_(getattr(mixer, name)[order])
        for name in ("A_log", "D"):
            getattr(swapped, name).copy_(getattr(mixer, name).view(4, 16, -1)[order].reshape_as(getattr(mixer, name)))
        # the depthwise conv must see the transposed image too
        swapped.conv.weight.copy_(mixer.conv.weight.transpose(2, 3))
        x = torch.randn(1, 5, 6, 8)
        expected = mixer(x).transpose(1, 2)
        actual = swapped(x.transpose(1, 2).contiguous())
    assert torch.allclose(actual, expected, atol=1e-5)


def test_ssd_matches_its_linear_attention_formula():
    torch.manual_seed(0)
    hidden, inner, state, heads = 12, 24, 5, 3
    mixer = EvoNetSSD(hidden, d_inner=inner, d_state=state, num_heads=heads).eval()
    with torch.no_grad():
        mixer.A_log.uniform_(0, 2)
        mixer.dt_bias.normal_()
        mixer.D.normal_()
        x = torch.randn(2, 4, 5, hidden)
        z, xBC, dt = mixer.in_proj(x).split([inner, inner + 2 * state, heads], dim=-1)
        xBC = F.silu(mixer.conv(xBC.permute(0, 3, 1, 2))).permute(0, 2, 3, 1).reshape(2, 20, -1)
        u, B, C = xBC.split([inner, state, state], dim=-1)
        weight = F.softplus(dt.reshape(2, 20, heads) + mixer.dt_bias) * mixer.A_log.exp()
        u = u.reshape(2, 20, heads, inner // heads)
        y = torch.zeros_like(u)
        for t in range(20):  # y_t = C_t · mean_s(B_s ⊗ w_s u_s) + D u_t, token by token
            state_t = torch.einsum("bsn,bsh,bshp->bhnp", B, weight, u) / 20
            y[:, t] = torch.einsum("bn,bhnp->bhp", C[:, t], state_t) + mixer.D[:, None] * u[:, t]
        y = mixer.out_norm(y.reshape(2, 4, 5, inner)) * F.silu(z)
        expected = mixer.out_proj(y)
        assert torch.allclose(mixer(x), expected, atol=1e-5)


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    mixer = EvoNetAttention(16, num_heads=4, head_dim=4).eval()
    reference = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(mixer.qkv.weight)
        reference.in_proj_bias.copy_(mixer.qkv.bias)
        reference.out_proj.weight.copy_(mixer.proj.weight)
        reference.out_proj.bias.copy_(mixer.proj.bias)
        x = torch.randn(2, 3, 5, 16)
        tokens = x.reshape(2, 15, 16)
        expected = reference(tokens, tokens, tokens, need_weights=False)[0].reshape(2, 3, 5, 16)
        assert torch.allclose(mixer(x), expected, atol=1e-5)


@pytest.mark.parametrize("block_type", evonets.BLOCK_TYPES)
def test_every_block_type_keeps_shape_and_has_gradients(block_type):
    config = tiny_config(block_types=block_type, layer_scale_init_value=1e-2, drop_path_rate=0.1)
    block = evonets.EvoNetModel(config).encoder.stages[1].blocks[0]
    x = torch.randn(2, 6, 5, 32, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    missing = [name for name, p in block.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"{block_type}: parameters without gradient: {missing}"


# ------------------------------------------------------------------------------------------------------ models


def test_model_outputs_and_shapes():
    model = evonets.EvoNetModel(tiny_config()).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 48), output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 64, 2, 3)
    assert out.pooler_output.shape == (2, 64)
    assert [tuple(h.shape[1:]) for h in out.hidden_states] == [
        (16, 16, 24),
        (16, 16, 24),
        (32, 8, 12),
        (48, 4, 6),
        (64, 2, 3),
    ]
    as_tuple = model(torch.randn(1, 3, 32, 32), return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[0].shape == (1, 64, 2, 2)


def test_wrong_channel_count_is_a_clear_error():
    model = evonets.EvoNetModel(tiny_config())
    with pytest.raises(ValueError, match=r"num_channels = 3"):
        model(torch.randn(1, 1, 32, 32))


def test_classification_loss_matches_cross_entropy():
    model = evonets.EvoNetForImageClassification(tiny_config()).eval()
    pixel_values, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 4, 9])
    with torch.no_grad():
        out = model(pixel_values, labels=labels)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))


def test_backbone_feature_maps_follow_out_features():
    config = tiny_config(out_features=["stem", "stage2", "stage4"])
    backbone = evonets.EvoNetBackbone(config).eval()
    assert backbone.channels == [16, 32, 64]
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in out.feature_maps] == [(1, 16, 32, 32), (1, 32, 16, 16), (1, 64, 4, 4)]
    assert out.hidden_states is None
    # per-position LayerNorm over channels
    assert torch.allclose(out.feature_maps[1].mean(dim=1), torch.zeros(1, 16, 16), atol=1e-5)


@pytest.mark.parametrize(
    "model_class, auto_class",
    [
        (evonets.EvoNetModel, AutoModel),
        (evonets.EvoNetForImageClassification, AutoModelForImageClassification),
        (evonets.EvoNetBackbone, None),
    ],
)
def test_save_and_load_give_identical_outputs(tmp_path, model_class, auto_class):
    torch.manual_seed(0)
    model = model_class(tiny_config(out_features=["stage1", "stage3"])).eval()
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and not any(name.endswith(".bin") for name in files)
    # AutoBackbone.from_pretrained(local_dir) tries the Hub first in transformers 5.23: use the class
    loaded = (auto_class or model_class).from_pretrained(tmp_path).eval()
    assert type(loaded) is model_class
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(model(x).to_tuple(), loaded(x).to_tuple()):
            for ta, tb in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
                assert torch.equal(ta, tb)


def test_auto_backbone_from_config():
    backbone = AutoBackbone.from_config(tiny_config(out_features=["stage4"]))
    assert isinstance(backbone, evonets.EvoNetBackbone)


def test_init_weights_sets_ssm_parameters():
    model = evonets.EvoNetModel(tiny_config(block_types="ss2d"))
    mixer = model.encoder.stages[0].blocks[0].mixer
    assert torch.allclose(mixer.A_log.exp(), torch.arange(1.0, 5.0).expand(mixer.A_log.shape[0], -1))
    assert torch.equal(mixer.D, torch.ones_like(mixer.D))
    dt = F.softplus(mixer.dt_proj_bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = evonets.EvoNetForImageClassification(tiny_config())
    x, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    model(x, labels=labels).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    model(x, labels=labels).loss.backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], atol=1e-5, rtol=1e-4), name


def test_compiles_without_graph_breaks():
    available_backends()  # build / load the fused scan kernel outside compilation (the loader is not traceable)
    model = evonets.EvoNetForImageClassification(tiny_config()).eval()
    x = torch.randn(1, 3, 32, 32)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: any graph break raises
    with torch.no_grad():
        assert torch.allclose(compiled(x).logits, model(x).logits, atol=1e-5)
