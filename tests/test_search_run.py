"""`search/run.py` end to end: the run folder, constraints, the fitness cache across runs, resume after `kill -9`,
two gloo ranks, and the README's quickstart pipeline (slow).

The supernets here are small and mostly random-init: these tests check the search's mechanics and its outputs'
consistency (front members are feasible, non-dominated, measured, and their saved models reproduce the supernet's
validation accuracy), not how well anything learns; the quickstart test and `docs/` cover that on real training.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import archived_results

from evonets import EvoNetForImageClassification
from evonets.models.search_space import EvoNetSupernetConfig
from evonets.models.supernet import EvoNetSupernet
from search.pareto import dominates
from search.run import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def supernet_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("supernet")
    torch.manual_seed(0)
    config = EvoNetSupernetConfig.tiny(resolution_choices=[8, 16], num_labels=10)
    EvoNetSupernet(config).save_pretrained(folder)
    return folder


def _args(supernet_dir, output_dir, tmp_path, *extra):
    return [
        "--supernet", str(supernet_dir),
        "--output_dir", str(output_dir),
        "--fitness.cache_dir", str(tmp_path / "fitness_cache"),
        "--latency.table_dir", str(tmp_path.parent / "latency_tables"),  # one table for the session's runs
        "--latency.warmup", "2",
        "--latency.repeats", "5",
        "--latency.num_threads", "1",
        "--pool.workers", "2",
        "--progress_bar", "false",
        *extra,
    ]  # fmt: skip


def test_run_writes_a_consistent_run_folder(supernet_dir, tmp_path):
    output_dir = tmp_path / "run"
    result = main(_args(supernet_dir, output_dir, tmp_path, "--search.budget", "14", "--search.constraints",
                        "[macs <= 1.5e6]"))  # fmt: skip
    for name in ("archive.jsonl", "pareto.json", "pareto.csv", "pareto.png", "summary.md", "run.json"):
        assert (output_dir / name).is_file(), name
    records = archived_results(output_dir)
    assert len(records) == 14 and sorted(r["index"] for r in records) == list(range(14))
    pareto = json.loads((output_dir / "pareto.json").read_text())
    front = pareto["front"]
    assert front and 0.0 < pareto["hypervolume"] <= 1.0
    feasible = [r for r in result.records if r["feasible"]]
    for member in front:
        assert member["objectives"]["macs"] <= 1.5e6 and member["feasible"]
        assert member["latency"]["source"] == "measured" and member["latency"]["iqr_ms"] >= 0
        assert not any(dominates(list(o["objectives"].values()), list(member["objectives"].values())) for o in feasible)
    assert any(not r["feasible"] for r in records), "the constraint should exclude some of the sampled networks"

    # every front member is a transformers model folder that reproduces the supernet's validation accuracy
    supernet = EvoNetSupernet.from_pretrained(supernet_dir).eval()
    pixel_values = torch.randn(3, 3, 16, 16)
    for member in front:
        folder = output_dir / member["model_dir"]
        model = EvoNetForImageClassification.from_pretrained(folder).eval()
        saved = json.loads((folder / "search_result.json").read_text())
        assert model.config.arch_encoding == member["encoding"] == saved["encoding"]
        arch = supernet.search_space.decode(member["encoding"])
        x = torch.nn.functional.interpolate(pixel_values, size=arch["resolution"])
        torch.testing.assert_close(model(x).logits, supernet(x, arch=arch).logits)
    check = json.loads((output_dir / "standalone_check.json").read_text())
    assert check["matches_search"] and 0.0 <= check["test_accuracy"] <= 1.0

    # the same command again: the run is complete, nothing is evaluated, the front is the same
    again = main(_args(supernet_dir, output_dir, tmp_path, "--search.budget", "14", "--search.constraints",
                       "[macs <= 1.5e6]"))  # fmt: skip
    assert again.evaluations == 0 and len(archived_results(output_dir)) == 14
    assert [r["hash"] for r in again.front] == [r["hash"] for r in front]

    # a new run on the same supernet and data reuses the fitness cache for the architectures it meets again
    other = main(_args(supernet_dir, tmp_path / "other", tmp_path, "--search.budget", "6"))
    cached = [r for r in archived_results(tmp_path / "other") if r.get("cached")]
    assert len(cached) >= 2  # at least the suggested smallest and largest architectures
    assert other.evaluations == 6 - len(cached)


def test_measure_mode_times_every_candidate_in_onnxruntime(supernet_dir, tmp_path):
    result = main(_args(supernet_dir, tmp_path / "run", tmp_path, "--search.budget", "4", "--latency.mode", "measure",
                        "--latency.backend", "onnxruntime", "--export_front", "false"))  # fmt: skip
    records = archived_results(tmp_path / "run")
    assert len(records) == 4 and all(r["latency"]["source"] == "measured" for r in records)  # never the table
    fingerprint = json.loads((tmp_path / "run" / "run.json").read_text())["latency_fingerprint"]
    assert fingerprint["backend"] == "onnxruntime" and "onnxruntime" in json.dumps(fingerprint)
    assert all(r["latency"]["ms"] > 0 and r["latency"]["iqr_ms"] >= 0 for r in records)
    assert result.front


def test_a_changed_run_is_refused(supernet_dir, tmp_path):
    main(_args(supernet_dir, tmp_path / "run", tmp_path, "--search.budget", "3", "--export_front", "false"))
    with pytest.raises(ValueError, match="output_dir .* holds a search run with different .'seed'."):
        main(_args(supernet_dir, tmp_path / "run", tmp_path, "--search.budget", "3", "--search.seed", "1"))


def test_kill_minus_nine_then_resume_loses_nothing(supernet_dir, tmp_path, kill_then_resume):
    output_dir = tmp_path / "run"
    arguments = _args(supernet_dir, output_dir, tmp_path, "--search.budget", "30", "--fitness.cache_dir", "null")
    before, result = kill_then_resume(
        [sys.executable, str(REPO / "search" / "run.py"), *arguments], output_dir, 30, 8, 240, lambda: main(arguments)
    )
    assert result.evaluations <= 30 - len(before)


@pytest.mark.slow
def test_two_gloo_ranks_share_the_evaluations(supernet_dir, tmp_path):
    output_dir = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO / "search" / "run.py"),
               *_args(supernet_dir, output_dir, tmp_path, "--search.budget", "16", "--pool.workers", "1",
                      "--fitness.cache_dir", "null", "--export_front", "false")]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-4000:]
    records = archived_results(output_dir)
    assert len(records) == 16
    ranks = {r["worker"][:2] for r in records if r.get("worker")}
    assert ranks == {"r0", "r1"}, ranks


@pytest.mark.slow
def test_quickstart_pipeline_distill_search_front(tmp_path):
    """The README's main job, shortened: distill -> search -> front -> models, from one config and one command."""
    command = [sys.executable, str(REPO / "search" / "run.py"), "--config", str(REPO / "configs" / "quickstart.yaml"),
               "--distill.teacher.path", str(tmp_path / "teacher"),
               "--distill.teacher.train.epochs", "3",
               "--distill.trainer.output_dir", str(tmp_path / "distill"),
               "--distill.trainer.max_steps", "40",
               "--output_dir", str(tmp_path / "search"),
               "--search.budget", "16",
               "--fitness.cache_dir", "null",
               "--latency.table_dir", str(tmp_path / "tables"),
               "--latency.repeats", "5",
               "--progress_bar", "false"]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200, check=False)
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "Pareto front" in completed.stdout and "majority-class baseline" in completed.stdout
    pareto = json.loads((tmp_path / "search" / "pareto.json").read_text())
    best = max(member["metrics"]["accuracy"] for member in pareto["front"])
    assert best > 0.3  # the distilled supernet's subnets learned: ten classes, chance is 0.1
    check = json.loads((tmp_path / "search" / "standalone_check.json").read_text())
    assert check["matches_search"] and check["test_accuracy"] > check["test_majority_baseline"]
