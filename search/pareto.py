"""The Pareto front and its hypervolume (the plot of a run's front is `search.run_folder.plot_front`).

nevergrad's `optimizer.pareto_front()` ignores constraint violations and fails for `Dict` parametrizations, so the
front is computed here from the archive's records: among the feasible points (every constraint satisfied), those
no other feasible point dominates (no worse in every objective and better in one). Points with equal objectives are
all kept. The hypervolume is nevergrad's exact `HypervolumeIndicator`, on objectives divided by a fixed reference
point, so it is in [0, 1] and runs with the same reference compare.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """`a` is no worse than `b` in every objective and better in at least one (all minimised)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_indices(points: Sequence[Sequence[float]], feasible: Sequence[bool] | None = None) -> list[int]:
    """Indices of the non-dominated feasible points, sorted by the first objective then the others."""
    candidates = [i for i in range(len(points)) if feasible is None or feasible[i]]
    front = [i for i in candidates if not any(dominates(points[j], points[i]) for j in candidates if j != i)]
    return sorted(front, key=lambda i: tuple(points[i]))


def add_to_front(front: list[int], points: Sequence[Sequence[float]], index: int) -> list[int]:
    """The front after adding feasible point `index` to the non-dominated set `front` (indices into `points`): one
    pass over the front instead of recomputing it over every point."""
    if any(dominates(points[i], points[index]) for i in front):
        return front
    return [i for i in front if not dominates(points[index], points[i])] + [index]


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """The hypervolume dominated by `points` and bounded by `reference`, with every objective divided by its
    reference value (so the whole box is 1). Points not strictly better than the reference in every objective
    add nothing."""
    reference = np.asarray(reference, dtype=float)
    scaled = [np.asarray(p, dtype=float) / reference for p in points]
    inside = [p for p in scaled if np.all(p < 1.0)]
    if not inside:
        return 0.0
    from nevergrad.optimization.multiobjective import HypervolumeIndicator

    return float(HypervolumeIndicator(np.ones(len(reference))).compute(inside))


__all__ = ["add_to_front", "dominates", "hypervolume", "pareto_indices"]
