"""The search space as data: genes, canonical architectures, encoding, hashing, conversion to `EvoNetConfig`."""

import itertools
import json
import random

import pytest

from evonets.models.configuration_evonet import BLOCK_TYPES, EvoNetConfig
from evonets.models.search_space import BLOCK_TYPE_GENES, EvoNetSupernetConfig, SearchSpace


def _micro_space() -> SearchSpace:
    """Small enough to enumerate: 2 stages, per-position block types, some single-choice genes."""
    return EvoNetSupernetConfig(
        patch_size=2,
        resolution_choices=[8, 16],
        depth_choices=[[1, 2], [1]],
        width_choices=[[4, 8], [8]],
        block_type_choices=[[["conv", "ss2d"], ["attention", "ssd"]], [["ssd", "conv"]]],
        mlp_ratio_choices=[[1.0, 2.0], [2.0]],
        d_state_choices=[2],
        ssm_ratio_choices=[1.0, 2.0],
        num_heads_choices=[[1, 2], [1, 2]],
    ).search_space


def test_default_space_mixes_all_block_types_everywhere():
    config = EvoNetSupernetConfig()
    for space_config in (config, EvoNetSupernetConfig.tiny()):
        for stage in space_config.block_type_choices:
            for position in stage:
                assert sorted(position) == sorted(BLOCK_TYPES)
    assert config.num_stages == 4
    assert config.search_space.cardinality() > 10**12


def test_shorthands_are_expanded_and_choices_sorted():
    config = EvoNetSupernetConfig(
        depth_choices=[[2, 1], [1]],
        width_choices=[[16, 8], [16]],
        block_type_choices=[["conv", "attention"], [["ssd"]]],
        mlp_ratio_choices=[4.0, 2.0],
        num_heads_choices=[2, 1],
        resolution_choices=[64, 32],
        patch_size=4,
    )
    assert config.depth_choices == [[1, 2], [1]]
    assert config.width_choices == [[8, 16], [16]]
    assert config.block_type_choices == [[["conv", "attention"], ["conv", "attention"]], [["ssd"]]]
    assert config.mlp_ratio_choices == [[2.0, 4.0], [2.0, 4.0]]
    assert config.num_heads_choices == [[1, 2], [1, 2]]
    assert config.resolution_choices == [32, 64]


@pytest.mark.parametrize(
    "overrides, field, needle",
    [
        (  # 4 divides both widths of this SSD-only stage, but not the inner width round(1.5 * 36) = 54
            dict(
                width_choices=[[36, 48], [64], [128], [256]],
                ssm_ratio_choices=[[1.0, 1.5], [1.0], [1.0], [1.0]],
                num_heads_choices=[[4], [2], [4], [8]],
                block_type_choices=[["ssd"], ["conv"], ["conv"], ["conv"]],
            ),
            "num_heads_choices[0]",
            "4 does not divide 54",
        ),
        (dict(block_type_choices=["ss2d", "mamba"]), "block_type_choices[0][0]", "'mamba'"),
        (dict(width_choices=[[32], [64]]), "width_choices", "4 stages"),
        (dict(resolution_choices=[100]), "resolution_choices", "divisible by patch_size * 2 ** (stages - 1) = 32"),
        (dict(depth_choices=[[0, 1], [1], [1], [1]]), "depth_choices[0]", "positive ints"),
        (dict(mlp_ratio_choices=[2.0, 2.0]), "mlp_ratio_choices[0]", "distinct"),
        (
            dict(block_type_choices=[[["conv"]] * 3] * 4),
            "block_type_choices[0]",
            "one list of block types per position",
        ),
    ],
)
def test_bad_spaces_raise_naming_the_field(overrides, field, needle):
    with pytest.raises(ValueError) as error:
        EvoNetSupernetConfig(**overrides)
    assert f"EvoNetSupernetConfig.{field} = " in str(error.value)
    assert needle in str(error.value)


def test_encode_decode_round_trip_and_hash_stability():
    space = EvoNetSupernetConfig().search_space
    rng = random.Random(0)
    encodings = set()
    for _ in range(200):
        arch = space.sample(rng)
        encoding = space.encode(arch)
        assert space.decode(encoding) == space.validate(arch) == arch  # samples are canonical
        assert space.encode(space.decode(encoding)) == encoding
        assert space.hash(arch) == space.hash(json.loads(json.dumps(arch)))  # JSON round trip keeps the identity
        encodings.add(encoding)
    assert len(encodings) == 200
    largest = space.largest()
    assert space.encode(largest) == (
        "r224-s0:d2w64[ss2d.m4.n16.e2,ss2d.m4.n16.e2]-s1:d2w128[ss2d.m4.n16.e2,ss2d.m4.n16.e2]-"
        "s2:d6w256[" + ",".join(["ss2d.m4.n16.e2"] * 6) + "]-s3:d2w512[ss2d.m4.n16.e2,ss2d.m4.n16.e2]"
    )
    # A literal: hashes name checkpoints and archive rows, so they must not drift between releases.
    assert space.hash(largest) == "ea008ef90651"
    assert space.encode(space.smallest("attention")).startswith("r160-s0:d1w32[attention.m2.h1]-")


def test_canonical_form_drops_genes_that_do_not_change_the_network():
    space = EvoNetSupernetConfig.tiny().search_space
    arch = space.smallest("conv")
    padded = json.loads(json.dumps(arch))
    stage = padded["stages"][0]
    stage["blocks"][0].update(d_state=8, num_heads=2, ssm_ratio=2.0)  # a conv block ignores them
    stage["blocks"].append({"type": "attention", "mlp_ratio": 3.0, "num_heads": 2})  # beyond depth 1
    assert space.validate(padded) == arch
    assert space.encode(padded) == space.encode(arch)
    assert space.hash(padded) == space.hash(arch)
    with pytest.raises(ValueError, match="not canonical"):
        space.decode(space.encode(arch).replace("r24", "r024"))


@pytest.mark.parametrize(
    "edit, gene, needle",
    [
        (lambda a: a.update(resolution=28), "resolution", "[24, 32]"),
        (lambda a: a["stages"][1].update(width=40), "stages[1].width", "[32, 48]"),
        (lambda a: a["stages"][2].update(depth=3), "stages[2].depth", "[1, 2]"),
        (lambda a: a["stages"][0]["blocks"][0].update(type="mamba"), "stages[0].blocks[0].type", "'ss2d', 'ssd'"),
        (lambda a: a["stages"][0]["blocks"][0].update(mlp_ratio=4.0), "stages[0].blocks[0].mlp_ratio", "[2.0, 3.0]"),
        (lambda a: a["stages"][0]["blocks"][0].pop("d_state"), "stages[0].blocks[0].d_state", "[4, 8]"),
        (lambda a: a["stages"][0]["blocks"][0].update(mlp_ration=2.0), "stages[0].blocks[0]", "'mlp_ration'"),
        (lambda a: a["stages"].pop(), "stages", "3 stage dicts"),
        (
            lambda a: a["stages"][1].update(depth=2, blocks=a["stages"][1]["blocks"][:1]),
            "stages[1].blocks",
            "depth = 2",
        ),
    ],
)
def test_validate_names_the_gene_and_allowed_values(edit, gene, needle):
    space = EvoNetSupernetConfig.tiny().search_space
    arch = space.largest()  # ss2d everywhere, depth 2
    edit(arch)
    with pytest.raises(ValueError) as error:
        space.validate(arch)
    message = str(error.value)
    assert message.startswith(f"Architecture gene {gene} = ")
    assert needle in message


@pytest.mark.parametrize(
    "encoding, needle",
    [
        ("r32", "3 stages"),
        ("r32-s0:d1w16[conv.m2]-s1:d1w32[conv.m2]-s2:d1w48[conv.m2.x3]", "unknown size letter 'x'"),
        ("r32-s0:d1w16[conv.m2]-s1:d1w32[conv.m2]-s2:d2w48[conv.m2]", "has depth 2 but 1 blocks"),
        ("r32-s0:d1w16[conv.m2]-s2:d1w32[conv.m2]-s1:d1w48[conv.m2]", "is not 's1:"),
        ("r32-s0:d1w16[conv.m2]-s1:d1w32[conv.m2]-s2:d1w48[conv.m5]", "stages[2].blocks[0].mlp_ratio = '5'"),
        ("r32-s0:d1w16[conv.m2]-s1:d1w32[conv.m2]-s2:d1w48[conv]", "stages[2].blocks[0].mlp_ratio = None"),
    ],
)
def test_decode_rejects_bad_strings(encoding, needle):
    space = EvoNetSupernetConfig.tiny().search_space
    with pytest.raises(ValueError) as error:
        space.decode(encoding)
    assert needle in str(error.value)


def test_cardinality_counts_distinct_networks():
    space = _micro_space()
    genes = space.genes
    distinct = {
        space.encode(space.from_genes(dict(zip((gene.name for gene in genes), values))))
        for values in itertools.product(*(gene.choices for gene in genes))
    }
    # resolution x stage 0 (2 widths x (depth 1: conv 2 + ss2d 2 x 2 | depth 2: that x (attention 2 x 2 +
    # ssd 2 x 2 x 2))) x stage 1 (ssd 2 x 2 + conv 1); the 2 ** 13 gene combinations collapse to these.
    assert space.cardinality() == len(distinct) == 2 * (2 * (6 + 6 * 12)) * (4 + 1)


def test_genes_round_trip_and_build_a_nevergrad_parametrization():
    ng = pytest.importorskip("nevergrad")
    space = EvoNetSupernetConfig.tiny().search_space
    genes = space.genes
    assert [gene.name for gene in genes[:5]] == ["resolution", "s0.depth", "s0.width", "s0.b0.type", "s0.b0.mlp_ratio"]
    assert {gene.ordered for gene in genes if gene.name.endswith(".type")} == {False}
    rng = random.Random(1)
    for _ in range(20):
        arch = space.sample(rng)
        assert space.from_genes(space.to_genes(arch)) == arch
    parametrization = ng.p.Dict(
        **{gene.name: (ng.p.TransitionChoice if gene.ordered else ng.p.Choice)(gene.choices) for gene in genes}
    )
    parametrization.random_state.seed(0)
    for _ in range(5):
        candidate = parametrization.spawn_child()
        candidate.mutate()
        space.validate(space.from_genes(candidate.value))


def test_sample_is_seeded_and_reaches_every_choice():
    space = EvoNetSupernetConfig.tiny().search_space
    assert space.sample(random.Random(7)) == space.sample(random.Random(7))
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        arch = space.sample(rng)
        for stage, stage_arch in enumerate(arch["stages"]):
            seen.add((stage, "depth", stage_arch["depth"]))
            for index, block in enumerate(stage_arch["blocks"]):
                seen.add((stage, index, block["type"]))
    for stage in range(space.num_stages):
        for index in range(space.max_depth(stage)):
            assert {block_type for block_type in BLOCK_TYPES if (stage, index, block_type) in seen} == set(BLOCK_TYPES)


def test_to_config_gives_per_block_sizes():
    space = EvoNetSupernetConfig.tiny(num_labels=10).search_space
    arch = {
        "resolution": 32,
        "stages": [
            {
                "depth": 2,
                "width": 24,
                "blocks": [
                    {"type": "ss2d", "mlp_ratio": 3.0, "d_state": 8, "ssm_ratio": 1.0},
                    {"type": "ssd", "mlp_ratio": 2.0, "d_state": 4, "ssm_ratio": 2.0, "num_heads": 2},
                ],
            },
            {"depth": 1, "width": 32, "blocks": [{"type": "attention", "mlp_ratio": 2.0, "num_heads": 1}]},
            {"depth": 1, "width": 64, "blocks": [{"type": "conv", "mlp_ratio": 3.0}]},
        ],
    }
    config = space.to_config(arch)
    assert isinstance(config, EvoNetConfig)
    assert (config.image_size, config.depths, config.hidden_sizes, config.num_labels) == (
        32,
        [2, 1, 1],
        [24, 32, 64],
        10,
    )
    assert config.arch_encoding == space.encode(arch)
    for stage, stage_arch in enumerate(arch["stages"]):
        for index, block in enumerate(stage_arch["blocks"]):
            args = config.block_args(stage, index)
            assert args["block_type"] == block["type"]
            for gene in BLOCK_TYPE_GENES[block["type"]]:
                assert args[gene] == block[gene]
    assert config.block_args(0, 1)["d_inner"] == 48
    roundtrip = EvoNetConfig.from_dict(config.to_dict())
    assert roundtrip.arch_encoding == config.arch_encoding


def test_largest_and_smallest_take_the_extreme_choices():
    space = EvoNetSupernetConfig.tiny().search_space
    largest, smallest = space.largest("ssd"), space.smallest("ssd")
    assert [s["width"] for s in largest["stages"]] == [24, 48, 64]
    assert [s["width"] for s in smallest["stages"]] == [16, 32, 48]
    assert largest["stages"][2]["blocks"][1] == {
        "type": "ssd",
        "mlp_ratio": 3.0,
        "d_state": 8,
        "ssm_ratio": 2.0,
        "num_heads": 4,
    }
    assert smallest["stages"][0]["blocks"] == [
        {"type": "ssd", "mlp_ratio": 2.0, "d_state": 4, "ssm_ratio": 1.0, "num_heads": 1}
    ]
    with pytest.raises(ValueError, match="block_type = 'mlp'"):
        space.largest("mlp")
