"""`search.pareto_evolution.DiscreteSMSEMOA` through `search.evolution.Evolution`, as a search drives it, on the
supernet's space (ordered and unordered genes, unused genes) and on the NAS-Bench-201 cell space (real table)."""

import random

import numpy as np
import pytest

from evonets.models.search_space import EvoNetSupernetConfig
from search.benchmark import accuracies, read_columns
from search.cell_space import CellSearchSpace
from search.evolution import Evolution
from search.pareto import pareto_indices
from search.pareto_evolution import POPULATION


def _toy_objectives(space, arch):
    """A cheap deterministic pair of objectives of a supernet architecture (its size against its 'error')."""
    genes = space.to_genes(arch)
    size = sum(float(value) for value in genes.values() if isinstance(value, (int, float)))
    kinds = sum(value == "attention" for value in genes.values())
    return [1.0 / (1.0 + size / 100.0) + 0.05 * kinds, size / 1000.0]


def test_it_never_asks_an_architecture_twice_and_keeps_a_non_dominated_core():
    space = EvoNetSupernetConfig.tiny().search_space
    evolution = Evolution(space, "DiscreteSMSEMOA", budget=120, seed=0, num_workers=1, num_objectives=2)
    hashes, told = [], []
    for _ in range(120):
        candidate, arch = evolution.ask()
        hashes.append(space.hash(arch))
        objectives = _toy_objectives(space, arch)
        evolution.tell(candidate, objectives, [])
        told.append(objectives)
    assert len(set(hashes)) == 120  # the canonical form: architectures that differ only in unused genes are one
    population = evolution.optimizer.population
    assert len(population) == POPULATION
    front = [told[i] for i in pareto_indices(told)]
    kept = [list(member.losses) for member in population]
    # SMS-EMOA drops only from the last front: every non-dominated result survives while they fit, else only they do
    if len(front) <= POPULATION:
        assert all(point in kept for point in front), (len(front), front)
    else:
        assert all(point in front for point in kept), len(front)


def test_a_resumed_optimizer_learns_the_archive_and_continues_the_same_way():
    space = CellSearchSpace()

    def run(resume_after):
        evolution = Evolution(space, "DiscreteSMSEMOA", budget=60, seed=3, num_workers=1, num_objectives=2)
        asked = []
        for index in range(60):
            if index == resume_after:  # a fresh optimizer, told the archive, with the random state carried over
                state = evolution.optimizer.parametrization.random_state.get_state()
                fresh = Evolution(space, "DiscreteSMSEMOA", budget=60, seed=3, num_workers=1, num_objectives=2)
                for arch, objectives in asked:
                    assert fresh.remember(arch, objectives, [])
                fresh.optimizer.parametrization.random_state.set_state(state)
                evolution = fresh
            candidate, arch = evolution.ask()
            rng = random.Random(space.encode(arch))
            objectives = [rng.random(), rng.random()]
            evolution.tell(candidate, objectives, [])
            asked.append((arch, objectives))
        return [space.encode(arch) for arch, _ in asked]

    assert run(resume_after=None) == run(resume_after=35)


def test_it_beats_random_search_on_the_table(shared_data):
    """Five seeds, 150 evaluations: the fitness-column hypervolume of what it finds, against nevergrad's random
    search driven the same way (a check that the selection works, with a wide margin)."""
    space = CellSearchSpace()
    table = shared_data / "nasbench201" / "nb201_cifar10_pi5.parquet"
    columns = read_columns(table, {"f": "cifar10_val_accuracy", "l": "pi5_onnx_latency_ms"}, space)
    accuracy = accuracies(columns["cifar10_val_accuracy"], "f", "cifar10_val_accuracy", 100.0)
    latency = columns["pi5_onnx_latency_ms"]

    def volume(optimizer, seed):
        from search.pareto import hypervolume

        evolution = Evolution(space, optimizer, budget=150, seed=seed, num_workers=1, num_objectives=2)
        points = []
        for _ in range(150):
            candidate, arch = evolution.ask()
            cell = space.encode(arch)
            point = [(1 - accuracy[cell]) / 0.15, latency[cell] / 5.0]
            evolution.tell(candidate, point, [])
            points.append(point)
        return hypervolume(points, [1.0, 1.0])

    ours = np.median([volume("DiscreteSMSEMOA", seed) for seed in range(5)])
    baseline = np.median([volume("random", seed) for seed in range(5)])
    assert ours > baseline + 0.005, (ours, baseline)


def test_other_parameters_are_refused():
    import nevergrad as ng

    from search.pareto_evolution import DiscreteSMSEMOA

    with pytest.raises(TypeError, match="Choice or TransitionChoice"):
        DiscreteSMSEMOA(ng.p.Dict(x=ng.p.Scalar()), budget=10)
