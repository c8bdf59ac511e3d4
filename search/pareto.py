"""The Pareto front, its hypervolume and its plot.

nevergrad's `optimizer.pareto_front()` ignores constraint violations and fails for `Dict` parametrizations, so the
front is computed here from the archive's records: among the feasible points (every constraint satisfied), those
no other feasible point dominates (no worse in every objective and better in one). Points with equal objectives are
all kept. The hypervolume is nevergrad's exact `HypervolumeIndicator`, on objectives divided by a fixed reference
point, so it is in [0, 1] and runs with the same reference compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


def plot_front(
    path: str | Path,
    points: Sequence[dict[str, float]],
    front: Sequence[int],
    feasible: Sequence[bool],
    x: str = "latency_ms",
    y: str = "error",
    constraints: Sequence = (),
    title: str = "",
    highlight: int | None = None,
    highlight_label: str = "this model",
) -> Path:
    """Scatter every evaluation on (`x`, `y`), infeasible ones greyed, the front highlighted and joined, and a
    dashed line for each constraint on `x` or `y`; point `highlight` (an index into `points`), if given, is drawn as
    a large star labelled `highlight_label` (a model card marks its model so). Written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    if highlight is not None:
        axes.scatter(
            [points[highlight][x]],
            [points[highlight][y]],
            s=260,
            marker="*",
            c="gold",
            edgecolors="black",
            zorder=4,
            label=highlight_label,
        )
    ok = [i for i in range(len(points)) if feasible[i] and i not in set(front)]
    bad = [i for i in range(len(points)) if not feasible[i]]
    if bad:
        axes.scatter(
            [points[i][x] for i in bad], [points[i][y] for i in bad], s=14, c="0.75", label="violates a constraint"
        )
    if ok:
        axes.scatter(
            [points[i][x] for i in ok], [points[i][y] for i in ok], s=14, c="tab:blue", alpha=0.6, label="evaluated"
        )
    if front:
        ordered = sorted(front, key=lambda i: (points[i][x], points[i][y]))
        axes.scatter(
            [points[i][x] for i in ordered],
            [points[i][y] for i in ordered],
            s=40,
            c="tab:red",
            edgecolors="black",
            zorder=3,
            label=f"Pareto front ({len(front)})",
        )
        # The 2-D staircase of the front members that are also non-dominated in these two objectives.
        staircase = [points[i] for i in ordered]
        best, steps = float("inf"), []
        for point in staircase:
            if point[y] < best:
                best = point[y]
                steps.append(point)
        axes.step([p[x] for p in steps], [p[y] for p in steps], where="post", c="tab:red", lw=1)
    for constraint in constraints:
        if constraint.objective == x:
            axes.axvline(constraint.bound, ls="--", c="black", lw=1, label=str(constraint))
        elif constraint.objective == y:
            axes.axhline(constraint.bound, ls="--", c="black", lw=1, label=str(constraint))
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path


__all__ = ["add_to_front", "dominates", "hypervolume", "pareto_indices", "plot_front"]
