"""The sandwich sampler: largest + smallest + n random, seeded and per-rank identical, checkpointable, shrinking."""

import io

import pytest
import torch

from distill.config import ShrinkPhase
from distill.sampling import SandwichSampler
from evonets.models.search_space import EvoNetSupernetConfig


@pytest.fixture(scope="module")
def space():
    return EvoNetSupernetConfig.tiny(num_labels=10).search_space


def _ordered_genes(arch):
    """(resolution, per stage (depth, width, per block the size genes)) without block types."""
    return (
        arch["resolution"],
        [
            (s["depth"], s["width"], [{k: v for k, v in b.items() if k != "type"} for b in s["blocks"]])
            for s in arch["stages"]
        ],
    )


def test_sandwich_yields_largest_smallest_and_n_random_valid_subnets(space):
    sampler = SandwichSampler(space, num_random=3, seed=0)
    config = space.config
    for step in range(20):
        subnets = sampler.sample(step)
        assert [role for role, _ in subnets] == ["largest", "smallest", "random", "random", "random"]
        for _, arch in subnets:
            assert space.validate(arch) == arch
        largest, smallest = subnets[0][1], subnets[1][1]
        assert largest["resolution"] == max(config.resolution_choices)
        assert smallest["resolution"] == min(config.resolution_choices)
        for stage, (big, small) in enumerate(zip(largest["stages"], smallest["stages"])):
            assert big["depth"] == max(config.depth_choices[stage]) and small["depth"] == min(
                config.depth_choices[stage]
            )
            assert big["width"] == max(config.width_choices[stage]) and small["width"] == min(
                config.width_choices[stage]
            )
            for block in big["blocks"]:
                assert all(block[g] == max(getattr(config, f"{g}_choices")[stage]) for g in block if g != "type")
            for block in small["blocks"]:
                assert all(block[g] == min(getattr(config, f"{g}_choices")[stage]) for g in block if g != "type")


def test_random_block_types_cover_every_mixer_and_random_subnets_vary(space):
    sampler = SandwichSampler(space, num_random=2, seed=0)
    types, encodings = set(), set()
    for step in range(30):
        for role, arch in sampler.sample(step):
            if role == "largest":
                types.update(b["type"] for s in arch["stages"] for b in s["blocks"])
            encodings.add(space.encode(arch))
    assert types == {"ss2d", "ssd", "attention", "conv"}
    assert len(encodings) > 60


def test_block_type_policies(space):
    assert SandwichSampler(space, 0, block_types="first").sample(0)[0][1] == space.largest()
    assert SandwichSampler(space, 0, block_types="first").sample(0)[1][1] == space.smallest()
    conv = SandwichSampler(space, 0, block_types="conv").sample(0)
    assert conv[0][1] == space.largest("conv") and conv[1][1] == space.smallest("conv")
    with pytest.raises(ValueError, match="block_types"):
        SandwichSampler(space, 0, block_types="mamba")


def test_same_seed_same_subnets_on_every_rank_and_other_seeds_differ(space):
    rank0, rank1 = SandwichSampler(space, 2, seed=7), SandwichSampler(space, 2, seed=7)
    other = SandwichSampler(space, 2, seed=8)
    a = [rank0.sample(step) for step in range(10)]
    assert a == [rank1.sample(step) for step in range(10)]
    assert a != [other.sample(step) for step in range(10)]


def test_state_round_trips_through_torch_save_like_a_checkpoint(space):
    straight = SandwichSampler(space, 2, seed=3)
    for step in range(5):
        straight.sample(step)
    buffer = io.BytesIO()
    torch.save(straight.state_dict(), buffer)  # what accelerate's save_state does with registered objects
    expected = [straight.sample(step) for step in range(5, 10)]
    resumed = SandwichSampler(space, 2, seed=3)
    resumed.sample(0)  # some unrelated history: the loaded state overrides it
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert [resumed.sample(step) for step in range(5, 10)] == expected
    with pytest.raises(ValueError, match="same sampling.seed"):
        SandwichSampler(space, 2, seed=4).load_state_dict(straight.state_dict())


def test_progressive_shrinking_pins_genes_outside_the_phase(space):
    schedule = [ShrinkPhase(until=0.25, elastic=[]), ShrinkPhase(until=0.5, elastic=["width"]), ShrinkPhase(until=1.0)]
    sampler = SandwichSampler(space, 3, seed=0, shrink_schedule=schedule, max_steps=100)
    subnets = sampler.sample(0)
    for role, arch in subnets:  # phase 1: nothing elastic, every subnet is the step's largest
        assert arch == subnets[0][1]
    widths = set()
    for step in range(25, 50):  # phase 2: only widths vary
        subnets = sampler.sample(step)
        largest = subnets[0][1]
        for _, arch in subnets:
            assert arch["resolution"] == largest["resolution"]
            for stage, big in zip(arch["stages"], largest["stages"]):
                assert stage["depth"] == big["depth"] and [b["type"] for b in stage["blocks"]] == [
                    b["type"] for b in big["blocks"]
                ]
                assert stage["blocks"] == big["blocks"]
                widths.add(stage["width"])
    assert widths == {w for choices in space.config.width_choices for w in choices}
    resolutions = {arch["resolution"] for step in range(50, 100) for _, arch in sampler.sample(step)}
    assert resolutions == set(space.config.resolution_choices)  # phase 3: everything elastic
    with pytest.raises(ValueError, match="max_steps"):
        SandwichSampler(space, 1, shrink_schedule=schedule)
