"""`DiscreteSMSEMOA`: a steady-state multi-objective evolution over discrete genes, as a nevergrad optimizer.

SMS-EMOA (Beume, Naujoks and Emmerich 2007) on the search's parametrization (an `ng.p.Dict` of `Choice` and
`TransitionChoice` genes, `search.evolution.parametrization`), so the search drives it like any nevergrad optimizer
(ask / tell in any order, tells of points it did not ask on resume, the random state of the parametrization):

- **population**: the best `POPULATION` results told so far. After each tell the worst one leaves: the one that breaks
  the constraints most, else, among the members of the last non-dominated front, the one that adds least hypervolume
  (against the population's worst point in each objective, plus one, so the front's extremes always count);
- **offspring**: two parents, each the better of two random members (constraint violation, then front); uniform
  crossover; then each gene mutated with probability `strength / genes` (at least one gene): an unordered gene
  (`Choice`) to another of its choices, an ordered one (`TransitionChoice`) to a neighbouring choice;
- **no repeats**: a candidate whose canonical key was asked or told before is drawn again (stronger mutation as the
  tries go on), so the budget is not spent on known architectures. The key is the gene values, or `canonical(values)`
  when the search space offers a canonical form (`Evolution` sets it: architectures whose unused genes differ are one);
- the first `POPULATION` asks are uniform random samples.

Nothing in it knows a particular space: it sees genes, their choices and objective vectors only.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import nevergrad as ng
import numpy as np
from nevergrad.optimization import base
from nevergrad.optimization.multiobjective import HypervolumeIndicator

from .pareto import pareto_indices

POPULATION = 20
"""Results kept as parents (and random samples before the first offspring)."""

MAX_TRIES = 100
"""Draws of an offspring before a repeat is accepted (a nearly exhausted space)."""


@dataclass
class _Member:
    values: dict
    key: Hashable
    losses: np.ndarray
    violation: float


class DiscreteSMSEMOA(base.Optimizer):
    """See the module docstring."""

    def __init__(self, parametrization, budget: int | None = None, num_workers: int = 1):
        super().__init__(parametrization, budget=budget, num_workers=num_workers)
        # survivors are chosen here: nevergrad's own hypervolume bookkeeping of every tell would only cost time
        self._no_hypervolume = True
        for name, gene in self.parametrization.items():
            if not isinstance(gene, ng.p.Choice | ng.p.TransitionChoice):
                raise TypeError(f"DiscreteSMSEMOA needs Choice or TransitionChoice genes; gene {name!r} is {gene!r}.")
        self.genes = {
            name: (tuple(gene.choices.value), isinstance(gene, ng.p.TransitionChoice))
            for name, gene in self.parametrization.items()
        }
        self.canonical: Callable[[dict], Hashable] | None = None
        self.population: list[_Member] = []
        self.seen: set[Hashable] = set()
        self._fronts: list[int] = []  # per member, the index of its non-dominated front (0: the best)
        self._violations: dict[str, float] = {}

    def tell(self, candidate, loss, constraint_violation=None, penalty_style=None) -> None:
        # nevergrad folds a violation into a scalar penalty; the population ranks the violation itself
        if constraint_violation is not None:
            self._violations[candidate.uid] = float(np.sum(np.maximum(constraint_violation, 0.0)))
        super().tell(candidate, loss, constraint_violation, penalty_style)

    # Ask ----------------------------------------------------------------------------------------------------

    def _internal_ask_candidate(self):
        for attempt in range(MAX_TRIES):
            if len(self.population) < POPULATION:
                values = {name: self._draw(choices) for name, (choices, _) in self.genes.items()}
            else:
                values = self._offspring(strength=1 + attempt // 10)
            if self._key(values) not in self.seen:
                break
        self.seen.add(self._key(values))
        return self.parametrization.spawn_child(new_value=values)

    def _draw(self, choices: tuple):
        return choices[self._rng.randint(len(choices))]

    def _key(self, values: dict) -> Hashable:
        return self.canonical(values) if self.canonical is not None else tuple(values[name] for name in self.genes)

    def _parent(self) -> dict:
        """The better of two random members (binary tournament)."""
        first, second = self._rng.randint(len(self.population), size=2)
        return self.population[min(first, second, key=self._rank)].values

    def _rank(self, index: int) -> tuple[float, int]:
        return self.population[index].violation, self._fronts[index]

    def _offspring(self, strength: int) -> dict:
        first, second = self._parent(), self._parent()
        child = {name: (first if self._rng.rand() < 0.5 else second)[name] for name in self.genes}
        mutate = self._rng.rand(len(self.genes)) < strength / len(self.genes)
        if not mutate.any():
            mutate[self._rng.randint(len(self.genes))] = True
        for (name, (choices, ordered)), chosen in zip(self.genes.items(), mutate):
            if chosen and len(choices) > 1:
                child[name] = self._mutate(choices, ordered, choices.index(child[name]))
        return child

    def _mutate(self, choices: tuple, ordered: bool, index: int):
        if ordered:  # a neighbouring choice, as nevergrad's TransitionChoice moves
            step = -1 if index == len(choices) - 1 or (index > 0 and self._rng.rand() < 0.5) else 1
            return choices[index + step]
        other = self._rng.randint(len(choices) - 1)  # any other choice, uniformly
        return choices[other + (other >= index)]

    # Tell ---------------------------------------------------------------------------------------------------

    def _internal_tell_candidate(self, candidate, loss: float) -> None:
        violation = self._violations.pop(candidate.uid, 0.0)
        key = self._key(candidate.value)
        self.seen.add(key)
        if any(member.key == key for member in self.population):  # a repeat (from a cache, or on resume): nothing new
            return
        losses = np.asarray(candidate.losses, dtype=float)
        self.population.append(_Member(dict(candidate.value), key, losses, violation))
        self._fronts = _front_indices([member.losses for member in self.population])
        if len(self.population) > POPULATION:
            del self.population[self._worst()]
            self._fronts = _front_indices([member.losses for member in self.population])

    def _worst(self) -> int:
        """The member to drop: the worst violation, else the least hypervolume contributor of the last front."""
        violations = [member.violation for member in self.population]
        if max(violations) > 0:
            return int(np.argmax(violations))
        last = [i for i, front in enumerate(self._fronts) if front == max(self._fronts)]
        if len(last) == 1:
            return last[0]
        points = [self.population[i].losses for i in last]
        # unnormalised, so that losses of any sign work (the search tells them divided by its reference point)
        indicator = HypervolumeIndicator(np.max([member.losses for member in self.population], axis=0) + 1.0)
        whole = indicator.compute(points)
        contributions = [whole - indicator.compute(points[:k] + points[k + 1 :]) for k in range(len(points))]
        return last[int(np.argmin(contributions))]


def _front_indices(points: list[np.ndarray]) -> list[int]:
    """Per point, its non-dominated front (0: not dominated; 1: dominated only by front 0; ...)."""
    fronts, remaining, level = [0] * len(points), list(range(len(points))), 0
    while remaining:
        front = [remaining[i] for i in pareto_indices([points[j] for j in remaining])]
        for index in front:
            fronts[index] = level
        remaining = [index for index in remaining if index not in set(front)]
        level += 1
    return fronts


__all__ = ["POPULATION", "DiscreteSMSEMOA"]
