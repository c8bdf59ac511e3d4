"""Which subnets each training step runs: the sandwich rule, with optional progressive shrinking.

Every step trains the largest subnet, the smallest and `num_random` random ones (Yu & Huang's sandwich rule); the
largest runs first so that its detached logits can supervise the others (in-place distillation).

Block types are unordered, so "largest" and "smallest" fix only the ordered genes (depth, width, sizes,
resolution) at their ends; their block types follow `block_types`: `random` draws them every step (so every mixer is
trained at its extremes), `first` takes each position's first allowed type (`SearchSpace.largest()`), a type name
takes that type where allowed.

All draws come from one `random.Random(seed)` owned by the sampler: no global state, identical on every process
given the same seed, and saved with the checkpoint (`state_dict` / `load_state_dict`, written as JSON by
`evonets.engine.checkpoints`), so a resumed run draws the same subnets as an uninterrupted one.

Progressive shrinking (Once-for-All) makes genes elastic in phases: outside a phase's `elastic` list a gene stays
at the step's largest value.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from evonets.models.search_space import BLOCK_TYPE_GENES, SearchSpace

from .config import BLOCK_TYPE_POLICIES, ELASTIC_GENES, ShrinkPhase

ROLES = ("largest", "smallest", "random")


class SandwichSampler:
    """Per step: `[("largest", arch), ("smallest", arch), ("random", arch) * num_random]`, canonical archs.

    Args:
        space: the supernet's `SearchSpace`.
        num_random: random subnets per step besides the two extremes.
        block_types: `random`, `first`, or a block type (see the module docstring).
        seed: seed of the sampler's own generator.
        shrink_schedule: progressive-shrinking phases (empty: all genes elastic).
        max_steps: the run's length, to place the phases (`until` is a fraction of it).
    """

    def __init__(
        self,
        space: SearchSpace,
        num_random: int = 2,
        block_types: str = "random",
        seed: int = 0,
        shrink_schedule: Sequence[ShrinkPhase] = (),
        max_steps: int | None = None,
    ):
        if block_types not in BLOCK_TYPE_POLICIES:
            raise ValueError(f"block_types = {block_types!r} is invalid: expected one of {list(BLOCK_TYPE_POLICIES)}.")
        if num_random < 0:
            raise ValueError(f"num_random = {num_random} is invalid: expected >= 0.")
        if shrink_schedule and max_steps is None:
            raise ValueError("a shrink_schedule needs max_steps to place its phases.")
        self.space = space
        self.num_random = num_random
        self.block_types = block_types
        self.seed = seed
        self.shrink_schedule = list(shrink_schedule)
        self.max_steps = max_steps
        self.rng = random.Random(seed)

    # State ------------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"seed": self.seed, "rng_version": version, "rng_internal": list(internal), "rng_gauss": gauss}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed:
            raise ValueError(
                f"Checkpointed sampler was seeded with {state.get('seed')}, this run with {self.seed}: resume with the "
                "same sampling.seed."
            )
        self.rng.setstate((state["rng_version"], tuple(state["rng_internal"]), state["rng_gauss"]))

    # Sampling ---------------------------------------------------------------------------------------------------

    def elastic_genes(self, step: int) -> set[str]:
        """The genes that vary at `step` (0-based optimizer step)."""
        if not self.shrink_schedule:
            return set(ELASTIC_GENES)
        for phase in self.shrink_schedule:
            if step < phase.until * self.max_steps:
                return set(phase.elastic)
        return set(self.shrink_schedule[-1].elastic)

    def sample(self, step: int) -> list[tuple[str, dict]]:
        """The subnets of one optimizer step, largest first."""
        elastic = self.elastic_genes(step)
        largest = self._extreme(-1)
        subnets = [("largest", largest), ("smallest", self._restrict(self._extreme(0), largest, elastic))]
        for _ in range(self.num_random):
            subnets.append(("random", self._restrict(self.space.sample(self.rng), largest, elastic)))
        return subnets

    def _extreme(self, end: int) -> dict:
        """Every ordered gene at its smallest (end=0) or largest (end=-1) choice; block types by the policy."""
        space = self.space
        if self.block_types == "first":
            return space.largest() if end == -1 else space.smallest()
        if self.block_types != "random":
            return space.largest(self.block_types) if end == -1 else space.smallest(self.block_types)
        config = space.config
        stages = []
        for stage in range(space.num_stages):
            depth = config.depth_choices[stage][end]
            blocks = []
            for index in range(depth):
                block_type = self.rng.choice(space.block_type_choices(stage, index))
                blocks.append(
                    {"type": block_type, **{g: space.size_choices(stage, g)[end] for g in BLOCK_TYPE_GENES[block_type]}}
                )
            stages.append({"depth": depth, "width": config.width_choices[stage][end], "blocks": blocks})
        return space.validate({"resolution": config.resolution_choices[end], "stages": stages})

    def _restrict(self, arch: dict, largest: dict, elastic: set[str]) -> dict:
        """`arch` with every gene outside `elastic` set to its value in `largest` (the step's largest subnet)."""
        if elastic >= set(ELASTIC_GENES):
            return arch
        space = self.space
        stages = []
        for stage, (stage_arch, big) in enumerate(zip(arch["stages"], largest["stages"])):
            depth = stage_arch["depth"] if "depth" in elastic else big["depth"]
            width = stage_arch["width"] if "width" in elastic else big["width"]
            blocks = []
            for index in range(depth):
                own = stage_arch["blocks"][index] if index < stage_arch["depth"] else big["blocks"][index]
                block_type = own["type"] if "block_type" in elastic else big["blocks"][index]["type"]
                block = {"type": block_type}
                for gene in BLOCK_TYPE_GENES[block_type]:
                    if gene in elastic and own["type"] == block_type:
                        block[gene] = own[gene]
                    elif gene in elastic:  # the block type was pinned: draw the size afresh
                        block[gene] = self.rng.choice(space.size_choices(stage, gene))
                    else:
                        block[gene] = space.size_choices(stage, gene)[-1]
                blocks.append(block)
            stages.append({"depth": depth, "width": width, "blocks": blocks})
        resolution = arch["resolution"] if "resolution" in elastic else largest["resolution"]
        return space.validate({"resolution": resolution, "stages": stages})


__all__ = ["ROLES", "SandwichSampler"]
