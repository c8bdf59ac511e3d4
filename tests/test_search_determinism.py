"""`search.tell_order: ask`: the same command and seed give the same archive, whatever order results arrive in.

Evaluations here sleep a random time (`make_jittery_evaluator`, drawn from the OS's entropy, not from any seed), so
two workers finish in a different order in every run. With `tell_order: ask` the optimizer is still told in ask order,
so two runs, and a run killed with SIGKILL and resumed, archive the same candidates with the same objectives, in the
same order. Run as a script (`python tests/test_search_determinism.py ARGS...`), this module is `search/run.py` with
the jittery evaluator, for the kill test.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BUDGET = 14


def make_jittery_evaluator(spec: dict):
    """The search's evaluator (`search.evaluators.make_evaluator`), sleeping 0-0.3 s (unseeded) before each result."""
    from search.evaluators import make_evaluator

    evaluate, jitter = make_evaluator(spec), random.Random(os.urandom(16))

    def jittery(payload: dict) -> dict:
        time.sleep(jitter.uniform(0.0, 0.3))
        return evaluate(payload)

    return jittery


def run_search(argv: list[str]):
    """`search/run.py` with the jittery evaluator (in this process; its pool workers import this module)."""
    import search.runner
    from search.run import main

    original, search.runner.make_evaluator = search.runner.make_evaluator, make_jittery_evaluator
    try:
        return main(argv)
    finally:
        search.runner.make_evaluator = original


@pytest.fixture(scope="module")
def supernet_dir(tmp_path_factory):
    from evonets.models.search_space import EvoNetSupernetConfig
    from evonets.models.supernet import EvoNetSupernet

    folder = tmp_path_factory.mktemp("supernet")
    torch.manual_seed(0)
    EvoNetSupernet(EvoNetSupernetConfig.tiny(resolution_choices=[8, 16], num_labels=10)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    return tmp_path_factory.mktemp("latency_tables")  # one look-up table for every run: the same predictions


def _args(supernet_dir, output_dir, tables, *extra):
    return [
        "--supernet", str(supernet_dir),
        "--output_dir", str(output_dir),
        "--fitness.cache_dir", "null",
        "--latency.table_dir", str(tables),
        "--latency.warmup", "1",
        "--latency.repeats", "3",
        "--latency.num_threads", "1",
        "--pool.workers", "2",
        "--search.budget", str(BUDGET),
        "--search.tell_order", "ask",
        "--export_front", "false",
        "--progress_bar", "false",
        *extra,
    ]  # fmt: skip


def _told(output_dir) -> list[tuple]:
    """(index, encoding, objectives) of every archived result, in archive order (the order they were told)."""
    records = map(json.loads, (Path(output_dir) / "archive.jsonl").read_text().splitlines())
    return [(r["index"], r["encoding"], r["objectives"]) for r in records if r.get("kind") == "result"]


@pytest.fixture(scope="module")
def reference_run(supernet_dir, tables, tmp_path_factory):
    """One uninterrupted `tell_order: ask` run: what every other run must reproduce."""
    output_dir = tmp_path_factory.mktemp("reference") / "run"
    run_search(_args(supernet_dir, output_dir, tables))
    return output_dir


def test_two_runs_in_ask_order_archive_the_same_results(reference_run, supernet_dir, tables, tmp_path):
    again = tmp_path / "again"
    run_search(_args(supernet_dir, again, tables))
    told = _told(reference_run)
    assert [index for index, _, _ in told] == list(range(BUDGET))  # told strictly in ask order
    assert _told(again) == told
    assert len({encoding for _, encoding, _ in told}) > 3  # the optimizer moved: not one candidate over and over
    # (not the final front: its members' latency is timed for real at the end, and timings vary from run to run)


def test_kill_minus_nine_then_resume_in_ask_order_gives_the_uninterrupted_archive(
    reference_run, supernet_dir, tables, tmp_path
):
    output_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, __file__, *_args(supernet_dir, output_dir, tables)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    archive = output_dir / "archive.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not (archive.is_file() and len(_told(output_dir)) >= 5):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run never archived 5 results"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the coordinator and its workers, mid-run
        process.wait()
    before = _told(output_dir)
    assert 5 <= len(before) < BUDGET

    run_search(_args(supernet_dir, output_dir, tables))
    assert _told(output_dir) == _told(reference_run)


def test_ask_order_refuses_to_resume_a_run_told_in_arrival_order(tmp_path):
    from search.run_folder import ArchiveReplay
    from search.runner import SearchLoop

    # what read_archive gives for a run whose result 1 was told before result 0 finished
    replay = ArchiveReplay(results=[{"index": 1, "encoding": "y"}], asked={0: {"kind": "ask", "index": 0}})
    loop = SearchLoop.__new__(SearchLoop)  # only the check that runs before anything else is needed
    loop.state_path = tmp_path / "search_state.json"
    with pytest.raises(ValueError, match=r"search\.tell_order = 'ask' is invalid .* arrival order"):
        loop.replay_in_ask_order(replay)


if __name__ == "__main__":
    run_search(sys.argv[1:])
