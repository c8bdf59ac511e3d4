"""The nevergrad side of the search: parametrization from the search space, optimizer, ask / tell, resume.

The parametrization is generated from `SearchSpace.genes` (the one encoding of an architecture): an ordered gene
(resolution, depth, width, sizes) becomes a `TransitionChoice`, whose mutations move to neighbouring values, and a
block type a `Choice`. A candidate's value maps back with `space.from_genes`. Besides nevergrad's registry,
`DiscreteSMSEMOA` (`search.pareto_evolution`) is ours, a nevergrad optimizer too.

Objectives are told to nevergrad divided by the run's fixed reference point (so error, milliseconds and MACs weigh
alike), after a `MultiobjectiveReference` tell of ones that fixes nevergrad's own hypervolume bounds. Constraint
violations go with each tell; nevergrad steers away from them, and `search.pareto` keeps them off the front.

Resume without unpickling: the archive is the optimizer's memory. A restarted run creates the optimizer afresh, tells
it every archived result again (`spawn_child` of the archived genes; nevergrad accepts tells of points it did not
ask), and restores the parametrization's random state saved in `search_state.json`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from evonets.engine.archive import write_json_atomic

RANDOM_SEARCH = "RandomSearch"

logger = logging.getLogger(__name__)


COMMON_OPTIMIZERS = (
    "DiscreteSMSEMOA",  # ours (search/pareto_evolution.py), run as a nevergrad optimizer
    "DiscreteLenglerOnePlusOne",
    "PortfolioDiscreteOnePlusOne",
    "DiscreteDE",
    "TwoPointsDE",
    "NGOpt",
    "CMA",
    "random",
)
"""The optimizers worth trying on a discrete space (named in errors, compared by bench/bench_optimizers.py)."""


def optimizer_class(name: str):
    """The nevergrad optimizer registered as `name` (`random` is `RandomSearch`), or ours (`DiscreteSMSEMOA`,
    `search.pareto_evolution`); `ValueError` lists some names."""
    import nevergrad as ng

    from .pareto_evolution import DiscreteSMSEMOA

    if name == DiscreteSMSEMOA.__name__:  # ours, beside nevergrad's registry
        return DiscreteSMSEMOA
    registered = RANDOM_SEARCH if name == "random" else name
    if registered not in ng.optimizers.registry:
        common = list(COMMON_OPTIMIZERS)
        raise ValueError(
            f"Config field search.optimizer = {name!r} is invalid: expected a name in nevergrad.optimizers.registry "
            f"({len(ng.optimizers.registry)} optimizers), e.g. {common}."
        )
    return ng.optimizers.registry[registered]


def parametrization(space, seed: int):
    """`ng.p.Dict` with one `TransitionChoice` (ordered) or `Choice` (unordered) per gene, seeded."""
    import nevergrad as ng

    genes = {
        gene.name: (ng.p.TransitionChoice if gene.ordered else ng.p.Choice)(list(gene.choices)) for gene in space.genes
    }
    param = ng.p.Dict(**genes)
    param.random_state = np.random.RandomState(seed)
    return param


class Evolution:
    """One nevergrad optimizer over a search space: `ask` architectures, `tell` normalised objectives."""

    def __init__(self, space, optimizer: str, budget: int, seed: int, num_workers: int, num_objectives: int):
        import nevergrad as ng

        from .pareto_evolution import DiscreteSMSEMOA

        self.space = space
        self.name = optimizer
        self.optimizer = optimizer_class(optimizer)(
            parametrization=parametrization(space, seed), budget=budget, num_workers=max(1, num_workers)
        )
        if isinstance(self.optimizer, DiscreteSMSEMOA):  # one key per architecture: unused genes do not count
            self.optimizer.canonical = lambda values: space.hash(space.from_genes(values))
        self.num_objectives = num_objectives
        if num_objectives > 1:  # objectives arrive divided by the reference point: ones bound nevergrad's hypervolume
            self.optimizer.tell(ng.p.MultiobjectiveReference(), [1.0] * num_objectives)

    def ask(self):
        """(candidate, canonical architecture)."""
        candidate = self.optimizer.ask()
        return candidate, self.space.from_genes(candidate.value)

    def candidate(self, arch: dict):
        """A candidate for a known architecture (to re-submit one asked before a restart)."""
        return self.optimizer.parametrization.spawn_child(new_value=self.space.to_genes(arch))

    def suggest(self, arch: dict) -> None:
        """Make the next `ask` return `arch`."""
        self.optimizer.suggest(self.space.to_genes(arch))

    def tell(self, candidate, normalised: list[float], violations: list[float]) -> None:
        loss = list(normalised) if self.num_objectives > 1 else float(normalised[0])
        self.optimizer.tell(candidate, loss, constraint_violation=list(violations) or None)

    # Resume -------------------------------------------------------------------------------------------------

    def remember(self, arch: dict, normalised: list[float], violations: list[float]) -> bool:
        """Tell an archived result the optimizer did not ask (resume). Some nevergrad optimizers cannot take every
        such tell (e.g. `DiscreteDE` 1.0.12 fails once its population is full: a KeyError inside nevergrad); the
        result stays in the archive and on the front, the optimizer just does not learn from it. Returns whether it
        was told."""
        try:
            self.tell(self.candidate(arch), normalised, violations)
        except Exception as error:  # noqa: BLE001 (nevergrad raises assorted types here)
            logger.warning("%s could not take an archived result on resume (%r); continuing", self.name, error)
            return False
        return True

    def save_state(self, path: str | Path, asked: int) -> None:
        """The parametrization's random state and the ask count, as JSON (written atomically)."""
        name, keys, position, has_gauss, cached = self.optimizer.parametrization.random_state.get_state()
        state = {
            "asked": asked,
            "random_state": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
        }
        write_json_atomic(path, state)

    def load_state(self, path: str | Path) -> int:
        """Restore the random state saved by `save_state`; the ask count it recorded (0 without a file)."""
        path = Path(path)
        if not path.is_file():
            return 0
        state = json.loads(path.read_text())
        name, keys, position, has_gauss, cached = state["random_state"]
        self.optimizer.parametrization.random_state.set_state(
            (name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached)
        )
        return int(state["asked"])


__all__ = ["Evolution", "optimizer_class", "parametrization"]
