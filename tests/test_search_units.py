"""The search's pieces on their own: archive, Pareto front and hypervolume, constraints, config checks, nevergrad
parametrization and its resume state."""

import random

import numpy as np
import pytest

from evonets.engine.archive import JsonlArchive
from evonets.models.search_space import EvoNetSupernetConfig
from search.config import Constraint, SearchConfig
from search.evolution import Evolution, optimizer_class
from search.pareto import add_to_front, dominates, hypervolume, pareto_indices


def test_archive_survives_a_torn_last_line(tmp_path):
    archive = JsonlArchive(tmp_path / "archive.jsonl")
    archive.append({"index": 0})
    archive.append_many([{"index": 1}, {"index": 2}])
    with open(archive.path, "a") as handle:  # what a kill in the middle of a write leaves
        handle.write('{"index": 3, "metr')
    assert [r["index"] for r in archive.records()] == [0, 1, 2]
    archive.append({"index": 4})  # starts on a fresh line: nothing before it is lost
    assert [r["index"] for r in archive.records()] == [0, 1, 2, 4]


def test_pareto_front_matches_brute_force_and_respects_feasibility():
    rng = random.Random(0)
    points = [[rng.randint(0, 6), rng.randint(0, 6), rng.randint(0, 6)] for _ in range(60)]
    feasible = [rng.random() > 0.3 for _ in points]
    front = pareto_indices(points, feasible)
    for i in range(len(points)):
        expected = feasible[i] and not any(
            feasible[j] and dominates(points[j], points[i]) for j in range(len(points)) if j != i
        )
        assert (i in front) == expected
    incremental = []  # the run's per-result update gives the same front
    for i in range(len(points)):
        if feasible[i]:
            incremental = add_to_front(incremental, points, i)
    assert sorted(incremental) == sorted(front)
    # an infeasible point that dominates everything never reaches the front
    points.append([-1, -1, -1])
    feasible.append(False)
    assert len(points) - 1 not in pareto_indices(points, feasible)


def test_hypervolume_two_objectives_by_hand():
    # boxes under the reference (4, 4), scaled to the unit square: union area of [1,4]x[3,4], [2,4]x[1,4], [3,4]x[0,4]
    points = [[1, 3], [2, 1], [3, 0]]
    expected = (3 * 1 + 2 * 2 + 1 * 1) / 16
    assert hypervolume(points, [4, 4]) == pytest.approx(expected)
    assert hypervolume([[5, 1]], [4, 4]) == 0.0  # outside the reference box
    assert hypervolume(points + [[2.5, 2]], [4, 4]) == pytest.approx(expected)  # a dominated point adds nothing


def test_hypervolume_three_objectives_by_monte_carlo():
    rng = np.random.default_rng(0)
    points = rng.uniform(0.1, 0.9, size=(6, 3))
    samples = rng.uniform(0, 1, size=(200_000, 3))
    dominated = np.zeros(len(samples), dtype=bool)
    for point in points:
        dominated |= np.all(samples >= point, axis=1)
    assert hypervolume(points.tolist(), [1, 1, 1]) == pytest.approx(dominated.mean(), abs=5e-3)


def test_constraints_parse_and_measure_violation():
    constraint = Constraint.parse(" latency_ms <= 20 ")
    assert (constraint.objective, constraint.bound) == ("latency_ms", 20.0)
    assert constraint.violation({"latency_ms": 19.0}) == 0.0
    assert constraint.violation({"latency_ms": 25.0}) == pytest.approx(5.0)
    assert Constraint.parse("macs < 5e6").violation({"macs": 5e6}) > 0
    for bad in ("latency <= 20", "latency_ms >= 20", "latency_ms <= fast"):
        with pytest.raises(ValueError, match="search.constraints"):
            Constraint.parse(bad)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"search": {"objectives": ["latency_ms"]}}, "search.objectives"),
        ({"search": {"objectives": ["error", "speed"]}}, "search.objectives"),
        ({"search": {"optimizer": "NoSuchOptimizer"}}, "search.optimizer"),
        ({"search": {"budget": 0}}, "search.budget"),
        ({"search": {"reference_point": {"error": 1.0}}}, "search.reference_point"),
        ({"latency": {"backend": "tensorrt"}}, "latency.backend"),
        ({"pool": {"workers": 0}}, "pool.workers"),
        ({"supernet": None}, "supernet"),
    ],
)
def test_config_errors_name_the_field(changes, field):
    from search.run import build_parser

    parser = build_parser()
    config = parser.instantiate(parser.parse_object({"supernet": "runs/x"}))
    config = SearchConfig(**{name: config[name] for name in SearchConfig.__dataclass_fields__})
    for section, value in changes.items():
        if isinstance(value, dict):
            for key, item in value.items():
                setattr(getattr(config, section), key, item)
        else:
            setattr(config, section, value)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        config.validate()


def test_random_is_nevergrads_random_search():
    import nevergrad as ng

    assert optimizer_class("random") is ng.optimizers.registry["RandomSearch"]


def _space():
    return EvoNetSupernetConfig.tiny(resolution_choices=[8, 16]).search_space


def test_parametrization_covers_the_space_and_maps_back():
    space = _space()
    evolution = Evolution(space, "random", budget=50, seed=0, num_workers=2, num_objectives=2)
    encodings = set()
    for _ in range(50):
        candidate, arch = evolution.ask()
        assert space.validate(arch) == arch
        encodings.add(space.encode(arch))
        evolution.tell(candidate, [random.random(), random.random()], [])
    assert len(encodings) > 40  # random search over a huge space rarely repeats


def test_evolution_resume_state_round_trip(tmp_path):
    """A fresh optimizer told the archived results again knows as much as the one that kept running, and gets its
    random state back (the replay cannot rebuild every internal detail, e.g. the order of asks, bit for bit)."""
    space = _space()

    def make():
        return Evolution(space, "DiscreteLenglerOnePlusOne", budget=40, seed=3, num_workers=1, num_objectives=2)

    running, history = make(), []
    for step in range(10):
        candidate, arch = running.ask()
        losses = [len(space.encode(arch)) / 200, step / 10]
        running.tell(candidate, losses, [])
        history.append((arch, losses))
    running.save_state(tmp_path / "state.json", asked=10)

    resumed = make()
    for arch, losses in history:
        assert resumed.remember(arch, losses, [])
    assert resumed.load_state(tmp_path / "state.json") == 10
    assert resumed.optimizer.num_tell == running.optimizer.num_tell
    expected, actual = running.optimizer.parametrization.random_state, resumed.optimizer.parametrization.random_state
    assert expected.randint(1 << 30) == actual.randint(1 << 30)
    front = {space.encode(space.from_genes(p.value)) for p in running.optimizer.pareto_front()}
    assert {space.encode(space.from_genes(p.value)) for p in resumed.optimizer.pareto_front()} == front


def test_extremes_are_suggested_first():
    space = _space()
    evolution = Evolution(space, "DiscreteLenglerOnePlusOne", budget=10, seed=0, num_workers=1, num_objectives=2)
    for arch in (space.smallest(), space.largest()):
        evolution.suggest(arch)
    asked = [space.encode(evolution.ask()[1]) for _ in range(2)]
    assert set(asked) == {space.encode(space.smallest()), space.encode(space.largest())}


def test_every_gene_choice_is_reachable():
    space = _space()
    evolution = Evolution(space, "random", budget=400, seed=1, num_workers=1, num_objectives=1)
    seen = {gene.name: set() for gene in space.genes}
    for _ in range(400):
        candidate, _ = evolution.ask()
        for name, value in candidate.value.items():
            seen[name].add(value)
        evolution.tell(candidate, [0.5], [])
    for gene in space.genes:
        assert seen[gene.name] == set(gene.choices), gene.name


def test_batchnorm_recalibration_re_estimates_running_statistics():
    import torch

    from search.evaluators import recalibrate_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    model[1].running_mean.fill_(5.0)  # stale statistics, as inherited from a supernet
    batches = [torch.randn(8, 3, 6, 6) * 2 + 1 for _ in range(3)]
    assert recalibrate_batchnorm(model, batches) == 1
    with torch.no_grad():
        features = torch.cat([model[0](x) for x in batches])
    torch.testing.assert_close(model[1].running_mean, features.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not model.training and model[1].momentum == 0.1  # mode and momentum restored
    assert recalibrate_batchnorm(torch.nn.Linear(2, 2), batches) == 0


def test_resume_replay_survives_optimizers_that_reject_untold_points():
    """DiscreteDE (nevergrad 1.0.12) raises inside nevergrad on some tells of points it did not ask; a resume must
    carry on regardless."""
    space = _space()
    evolution = Evolution(space, "DiscreteDE", budget=200, seed=0, num_workers=2, num_objectives=2)
    rng = random.Random(0)
    told = [evolution.remember(space.sample(rng), [rng.random(), rng.random()], []) for _ in range(120)]
    assert any(told)
    candidate, _ = evolution.ask()  # still usable
    evolution.tell(candidate, [0.5, 0.5], [])


def test_no_batchnorm_no_recalibration_batch_is_drawn():
    import torch

    from evonets.models.supernet import EvoNetSupernet
    from search.evaluators import batchnorm_layers, recalibrate_batchnorm

    def batches():
        raise AssertionError("a recalibration batch was drawn for a model without BatchNorm")
        yield

    assert recalibrate_batchnorm(torch.nn.Linear(2, 2), batches()) == 0
    assert batchnorm_layers(EvoNetSupernet(_space().config)) == []  # so the evaluator never recalibrates


def _result(index, digest, latency_ms, source="lut"):
    latency = {"ms": latency_ms, "source": source, "fingerprint": "k"}
    if source == "measured":
        latency["iqr_ms"] = 0.1
    return {
        "kind": "result", "index": index, "hash": digest, "encoding": digest,
        "metrics": {"accuracy": 0.9, "loss": 0.3, "macs": 10.0, "params": 5.0},
        "objectives": {"error": 0.1, "latency_ms": latency_ms}, "latency": latency, "violations": [0.0], "feasible": True,
    }  # fmt: skip


def test_run_folder_replays_the_archive(tmp_path):
    from search.run_folder import read_archive, read_results

    archive = JsonlArchive(tmp_path / "archive.jsonl")
    archive.append_many([
        {"kind": "ask", "index": 0, "encoding": "a"},
        {"kind": "ask", "index": 1, "encoding": "b"},  # in flight at the kill
        _result(0, "a", 1.0),
        {"kind": "ask", "index": 2, "encoding": "c"},
        _result(2, "c", 3.0, source="measured"),
        {"kind": "latency", "hash": "a", "measurement": {"median_ms": 2.5, "iqr_ms": 0.2}},  # a front member, timed
    ])  # fmt: skip
    replay = read_archive(archive.path)
    assert [r["index"] for r in replay.results] == [0, 2] and list(replay.asked) == [1] and replay.num_asked == 3
    assert replay.measured == {"c": {"median_ms": 3.0, "iqr_ms": 0.1}, "a": {"median_ms": 2.5, "iqr_ms": 0.2}}
    assert replay.results[0]["latency"]["source"] == "lut"  # as it was told, before the measurement
    records = read_results(archive.path, [Constraint.parse("latency_ms <= 2")])
    assert records[0]["latency"] == {  # an older measurement record has no spread; it counts as stable
        "ms": 2.5, "iqr_ms": 0.2, "spread": None, "stable": True, "source": "measured", "fingerprint": "k"
    }  # fmt: skip
    assert records[0]["objectives"] == {"error": pytest.approx(0.1), "latency_ms": 2.5}
    assert records[0]["violations"] == [pytest.approx(0.5)] and not records[0]["feasible"]
    assert read_archive(tmp_path / "none.jsonl").num_asked == 0
