"""The weight-sharing supernet: exact extraction, the slicing layout, gradients, caching, save / load."""

import copy
import random

import pytest
import torch

from evonets.models.configuration_evonet import BLOCK_TYPES
from evonets.models.modeling_evonet import EvoNetBackbone, EvoNetForImageClassification
from evonets.models.search_space import EvoNetSupernetConfig
from evonets.models.supernet import EvoNetSupernet

STAGE_NAMES = ["stem", "stage1", "stage2", "stage3", "stage4"]


def _test_space(**kwargs) -> EvoNetSupernetConfig:
    """The default space (4 stages of depth 1-2 / 1-2 / 2-6 / 1-2, all four block types at every position, the
    default mlp / ssm ratios) at test widths and resolutions."""
    space = dict(
        width_choices=[[8, 16], [16, 24], [24, 32], [32, 48]],
        d_state_choices=[2, 4],
        num_heads_choices=[1, 2],
        resolution_choices=[32, 64],
        num_labels=10,
    )
    space.update(kwargs)
    return EvoNetSupernetConfig(**space)


def _images(arch: dict, batch: int = 2, seed: int = 0) -> torch.Tensor:
    size = arch["resolution"]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def supernet() -> EvoNetSupernet:
    torch.manual_seed(0)
    return EvoNetSupernet(_test_space()).eval()


@pytest.fixture(scope="module")
def entry_ids() -> EvoNetSupernet:
    """The test supernet with every parameter entry holding its own global index (exact in float32 below 2**24), so
    an extracted model shows which supernet entries it took."""
    model = EvoNetSupernet(_test_space())
    total = sum(parameter.numel() for parameter in model.parameters())
    assert total < 2**24
    start = 0
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.arange(start, start + parameter.numel(), dtype=torch.float32).view_as(parameter))
            start += parameter.numel()
    return model


def _used_entries(entry_ids: EvoNetSupernet, models) -> dict[str, torch.Tensor]:
    """Per supernet parameter, a boolean mask of the entries that appear in any of `models`."""
    total = sum(parameter.numel() for parameter in entry_ids.parameters())
    seen = torch.zeros(total, dtype=torch.bool)
    for model in models:
        for parameter in model.parameters():
            seen[parameter.detach().flatten().long()] = True
    masks, start = {}, 0
    for name, parameter in entry_ids.named_parameters():
        masks[name] = seen[start : start + parameter.numel()].view_as(parameter)
        start += parameter.numel()
    return masks


def test_extracted_models_equal_the_supernet_on_random_architectures(supernet, tmp_path):
    space = supernet.search_space
    rng = random.Random(0)
    for step in range(50):
        arch = space.sample(rng)
        pixel_values = _images(arch, seed=step)
        supernet.set_architecture(arch)
        with torch.no_grad():
            expected = supernet(pixel_values).logits
            model = supernet.extract()
            logits = model(pixel_values).logits
        assert logits.shape == (2, 10)
        assert (logits - expected).abs().max().item() <= 1e-5, space.encode(arch)
        with torch.device("meta"):
            reference = EvoNetForImageClassification(space.to_config(arch))
        assert model.num_parameters() == reference.num_parameters()
        assert model.config.arch_encoding == space.encode(arch)
        assert space.decode(model.config.arch_encoding) == arch
        model.save_pretrained(tmp_path / str(step))
        reloaded = EvoNetForImageClassification.from_pretrained(tmp_path / str(step))
        with torch.no_grad():
            assert torch.equal(reloaded(pixel_values).logits, logits)
        if step % 5 == 0:
            # With gradients on, the supernet slices afresh instead of using its cache: same numbers.
            assert (supernet(pixel_values).logits.detach() - expected).abs().max().item() <= 1e-5


def test_segments_keep_their_own_leading_entries(supernet):
    """Hand-written slices, independent of the `elastic_layout` declarations: a smaller d_state keeps the first B
    and C rows of every scan order, a smaller inner width the first rows of x, z and of every order's A_log / D."""
    arch = supernet.search_space.smallest("conv")
    stage = arch["stages"][3]  # max width 48, ssm_ratio 2 -> E = 96, d_state 4, dt_rank 3, heads 2
    stage["width"] = 32  # E = 32 with ssm_ratio 1, dt_rank 2
    stage["depth"] = 2
    stage["blocks"] = [
        {"type": "ss2d", "mlp_ratio": 3.0, "d_state": 2, "ssm_ratio": 1.0},
        {"type": "ssd", "mlp_ratio": 3.0, "d_state": 2, "ssm_ratio": 1.0, "num_heads": 1},
    ]
    arch["stages"][2]["blocks"][0] = {"type": "attention", "mlp_ratio": 2.0, "num_heads": 1}  # width 24 of 32
    model = supernet.extract(arch)
    big = supernet.evonet.encoder.stages
    small = model.evonet.encoder.stages
    C, E, N, R, Em, Nm, Rm = 32, 32, 2, 2, 96, 4, 3

    ss2d, ss2d_max = small[3].blocks[0].mixer, big[3].blocks[0]["ss2d"].mixer
    assert torch.equal(
        ss2d.in_proj.weight, torch.cat([ss2d_max.in_proj.weight[:E, :C], ss2d_max.in_proj.weight[Em : Em + E, :C]])
    )
    x_proj = ss2d_max.x_proj_weight
    expected = torch.cat([x_proj[:, :R, :E], x_proj[:, Rm : Rm + N, :E], x_proj[:, Rm + Nm : Rm + Nm + N, :E]], dim=1)
    assert torch.equal(ss2d.x_proj_weight, expected)
    assert torch.equal(ss2d.A_log, torch.cat([ss2d_max.A_log[k * Em : k * Em + E, :N] for k in range(4)]))
    assert torch.equal(ss2d.D, torch.cat([ss2d_max.D[k * Em : k * Em + E] for k in range(4)]))
    assert torch.equal(ss2d.dt_proj_weight, ss2d_max.dt_proj_weight[:, :E, :R])
    assert torch.equal(ss2d.out_proj.weight, ss2d_max.out_proj.weight[:C, :E])

    ssd, ssd_max = small[3].blocks[1].mixer, big[3].blocks[1]["ssd"].mixer
    heads, heads_max = 1, 2
    rows = [(0, E), (Em, E), (2 * Em, N), (2 * Em + Nm, N), (2 * Em + 2 * Nm, heads)]
    assert torch.equal(ssd.in_proj.weight, torch.cat([ssd_max.in_proj.weight[s : s + n, :C] for s, n in rows]))
    channels = [(0, E), (Em, N), (Em + Nm, N)]
    assert torch.equal(ssd.conv.weight, torch.cat([ssd_max.conv.weight[s : s + n] for s, n in channels]))
    assert torch.equal(ssd.conv.bias, torch.cat([ssd_max.conv.bias[s : s + n] for s, n in channels]))
    assert torch.equal(ssd.A_log, ssd_max.A_log[:heads]) and ssd_max.A_log.shape == (heads_max,)

    # Attention keeps its leading heads of fixed size P in each of q, k, v, and the leading input channels.
    C, heads, heads_max = 24, 1, 2
    attention, attention_max = small[2].blocks[0].mixer, big[2].blocks[0]["attention"].mixer
    P = attention.head_dim
    A, Am = heads * P, heads_max * P
    qkv = attention_max.qkv
    assert attention_max.num_heads == heads_max and attention_max.head_dim == P
    assert torch.equal(attention.qkv.weight, torch.cat([qkv.weight[k * Am : k * Am + A, :C] for k in range(3)]))
    assert torch.equal(attention.qkv.bias, torch.cat([qkv.bias[k * Am : k * Am + A] for k in range(3)]))
    assert torch.equal(attention.proj.weight, attention_max.proj.weight[:C, :A])
    assert torch.equal(model.evonet.encoder.stages[3].downsample.conv.weight, big[3].downsample.conv.weight[:32, :24])
    assert torch.equal(model.classifier.weight, supernet.classifier.weight[:, :32])


def test_largest_architectures_use_every_parameter(entry_ids):
    space = entry_ids.search_space
    models = []
    for block_type in BLOCK_TYPES:
        models.append(entry_ids.extract(space.largest(block_type)))
        models.append(entry_ids.extract(space.largest(block_type), task="backbone", out_features=STAGE_NAMES))
    unused = {name: int((~mask).sum()) for name, mask in _used_entries(entry_ids, models).items() if not mask.all()}
    assert unused == {}
    # and one largest architecture alone reads whole tensors: no copies, only views
    template = entry_ids._template("classification", space.largest("ssd"), None)
    assert all(dim is None for rule in template.rules for dim in rule.dims)


def test_training_gradients_reach_exactly_the_shared_entries(supernet, entry_ids):
    space = supernet.search_space
    arch = space.sample(random.Random(3))
    used = _used_entries(entry_ids, [entry_ids.extract(arch)])
    model = copy.deepcopy(supernet).train()
    active = model.active_architecture
    output = model(_images(arch), labels=torch.tensor([1, 7]), arch=arch, num_items_in_batch=2)
    output.loss.backward()
    touched = 0
    for name, parameter in model.named_parameters():
        grad = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
        assert not grad[~used[name]].any(), f"{name}: gradient outside the entries the subnet uses"
        if used[name].any():
            assert grad[used[name]].any(), f"{name}: no gradient in the entries the subnet uses"
            touched += 1
    assert touched == len(list(entry_ids.extract(arch).parameters()))
    assert model.active_architecture == active  # arch= does not change the active architecture


def test_per_position_block_types_build_only_the_allowed_blocks():
    # Heads of 3 suit no width of stage 0, which allows neither attention nor SSD: a valid space.
    config = EvoNetSupernetConfig.tiny(
        num_labels=10,
        block_type_choices=[["conv", "ss2d"], [["ssd"], ["attention", "conv"]], ["attention"]],
        num_heads_choices=[[3], [1, 2], [2, 4]],
    )
    model = EvoNetSupernet(config).eval()
    stages = model.evonet.encoder.stages
    assert [list(blocks) for blocks in stages[1].blocks] == [["ssd"], ["attention", "conv"]]
    assert list(stages[0].blocks[1]) == ["conv", "ss2d"]
    rng = random.Random(0)
    for _ in range(5):
        arch = model.search_space.sample(rng)
        with torch.no_grad():
            logits = model(_images(arch), arch=arch).logits
            assert torch.equal(model.extract(arch)(_images(arch)).logits, logits)


def test_backbone_view_matches_extracted_backbone(supernet):
    space = supernet.search_space
    for seed in range(3):
        arch = space.sample(random.Random(100 + seed))
        pixel_values = _images(arch, seed=seed)
        with torch.no_grad():
            features = supernet.forward_backbone(pixel_values, out_features=["stem", "stage2", "stage4"], arch=arch)
            backbone = supernet.extract(arch, task="backbone", out_features=["stem", "stage2", "stage4"])
            reference = backbone(pixel_values)
        assert isinstance(backbone, EvoNetBackbone)
        widths = [arch["stages"][0]["width"], arch["stages"][1]["width"], arch["stages"][3]["width"]]
        assert [feature.shape[1] for feature in features.feature_maps] == widths
        for feature, expected in zip(features.feature_maps, reference.feature_maps):
            assert (feature - expected).abs().max().item() <= 1e-5


def test_eval_cache_follows_parameter_changes_and_device_moves():
    torch.manual_seed(1)
    model = EvoNetSupernet(_test_space()).eval()
    arch = model.search_space.sample(random.Random(5))
    model.set_architecture(arch)
    pixel_values = _images(arch)
    with torch.no_grad():
        first = model(pixel_values).logits
        assert torch.equal(model(pixel_values).logits, first)  # served from the cache
        model.classifier.weight.mul_(2.0)  # an in-place write: the version counter moves
        second = model(pixel_values).logits
        assert not torch.allclose(second, first)
        assert torch.equal(second, model.extract()(pixel_values).logits)
        model.double()  # a dtype move replaces the storages
        third = model(pixel_values.double()).logits
        assert third.dtype == torch.float64
        assert torch.allclose(third, second.double(), atol=1e-5)
        model.to(torch.bfloat16)
        assert model(pixel_values.bfloat16()).logits.dtype == torch.bfloat16
    templates = [template.model for template in model._templates.values()]
    assert templates and all(p.device.type == "meta" for template in templates for p in template.parameters())


def test_supernet_save_load_round_trip(supernet, tmp_path):
    supernet.save_pretrained(tmp_path)
    reloaded = EvoNetSupernet.from_pretrained(tmp_path)
    for field in (
        "depth_choices",
        "width_choices",
        "block_type_choices",
        "mlp_ratio_choices",
        "d_state_choices",
        "ssm_ratio_choices",
        "num_heads_choices",
        "resolution_choices",
        "patch_size",
        "id2label",
    ):
        assert getattr(reloaded.config, field) == getattr(supernet.config, field), field
    assert reloaded.search_space.cardinality() == supernet.search_space.cardinality()
    reloaded_state = reloaded.state_dict()
    for name, tensor in supernet.state_dict().items():
        assert torch.equal(reloaded_state[name], tensor), name
    arch = supernet.search_space.sample(random.Random(9))
    with torch.no_grad():
        assert torch.equal(reloaded(_images(arch), arch=arch).logits, supernet(_images(arch), arch=arch).logits)


def test_initialisation_matches_the_standalone_model():
    model = EvoNetSupernet(EvoNetSupernetConfig.tiny(num_labels=10))
    ss2d = model.evonet.encoder.stages[0].blocks[0]["ss2d"].mixer
    assert torch.allclose(ss2d.A_log[5], torch.log(torch.arange(1.0, 9.0)))  # S4D-real, d_state 8
    assert torch.equal(ss2d.D, torch.ones_like(ss2d.D))
    assert torch.equal(model.hidden_states_norms["stage2"].weight, torch.ones(48))
    assert 0.015 < model.classifier.weight.std().item() < 0.025
    # A subnet with a smaller d_state keeps exactly the standalone S4D-real initialisation of its states.
    small = model.extract(model.search_space.smallest("ss2d"))
    a_log = small.evonet.encoder.stages[0].blocks[0].mixer.A_log
    assert torch.allclose(a_log, torch.log(torch.arange(1.0, 5.0)).expand_as(a_log))


def test_architecture_arguments_are_validated(supernet):
    arch = supernet.search_space.smallest()
    arch["stages"][0]["width"] = 12
    with pytest.raises(ValueError, match=r"stages\[0\]\.width = 12 is invalid: expected one of \[8, 16\]"):
        supernet.set_architecture(arch)
    with pytest.raises(ValueError, match="not canonical|is invalid"):
        supernet(torch.zeros(1, 3, 32, 32), arch="r32-s0:d9")
    encoding = supernet.search_space.encode(supernet.search_space.smallest())
    with torch.no_grad():
        by_string = supernet(torch.zeros(1, 3, 32, 32), arch=encoding).logits
        by_dict = supernet(torch.zeros(1, 3, 32, 32), arch=supernet.search_space.smallest()).logits
    assert torch.equal(by_string, by_dict)
    with pytest.raises(ValueError, match="task = 'detection'"):
        supernet.extract(task="detection")
