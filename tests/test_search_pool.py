"""DMMPE pool (`search/pool.py`): results, completion order, evaluator errors, SIGKILLed workers, two gloo ranks.

Worker processes are started with "spawn", so the evaluators below are module-level functions. This file is also the
script of the multi-rank tests: `python tests/test_search_pool.py <mode> ...` (see `main`).
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from search.pool import EvaluationPool, resolve_bind_address, serve

REPO = Path(__file__).resolve().parents[1]


def make_test_evaluator(supernet_folder: str | None = None):
    """Evaluates `payload["arch"]` with `make_supernet_evaluator(supernet_folder)` (built on first use); otherwise
    squares `payload["x"]`, after optional misbehaviour: `raise` (an exception), `kill_self` (SIGKILL of its own
    process), `hang_once` (a marker file: the first attempt writes `"<RANK> <pid>"` to it and sleeps `hang` seconds),
    `sleep` (seconds)."""
    supernet_evaluate = None

    def evaluate(payload: dict) -> dict:
        nonlocal supernet_evaluate
        if "arch" in payload:
            supernet_evaluate = supernet_evaluate or make_supernet_evaluator(supernet_folder)
            return supernet_evaluate(payload)
        started = time.time()
        if "hang_once" in payload and not Path(payload["hang_once"]).exists():
            partial = Path(payload["hang_once"] + ".partial")
            partial.write_text(f"{os.environ.get('RANK', '0')} {os.getpid()}")
            partial.rename(payload["hang_once"])
            time.sleep(payload.get("hang", 600.0))
        if payload.get("kill_self"):
            os.kill(os.getpid(), signal.SIGKILL)
        if "raise" in payload:
            raise ValueError(payload["raise"])
        time.sleep(payload.get("sleep", 0.0))
        return {"value": payload["x"] ** 2, "pid": os.getpid(), "started": started, "finished": time.time()}

    return evaluate


def make_failing_evaluator():
    raise OSError("no supernet at /nonexistent")


def make_supernet_evaluator(folder: str):
    """Validation accuracy and loss on digits of `payload["arch"]` (an encoding) with the supernet's weights."""
    from evonets.data.classification import load_data
    from evonets.data.config import DataConfig
    from evonets.engine.evaluation import evaluate as evaluate_model
    from evonets.engine.evaluation import tensor_batches
    from evonets.models.supernet import EvoNetSupernet
    from search.ranking import validation_tensors

    supernet = EvoNetSupernet.from_pretrained(folder).eval()
    pixel_values, labels = validation_tensors(load_data(DataConfig(source="digits"), image_size=16))

    @torch.inference_mode()
    def evaluate(payload: dict) -> dict:
        arch = supernet.search_space.decode(payload["arch"])
        batches = tensor_batches(pixel_values, labels)
        return evaluate_model(lambda x: supernet(x, arch=arch).logits, batches, arch["resolution"])

    return evaluate


def without_bookkeeping(result: dict) -> dict:
    return {key: value for key, value in result.items() if key not in ("worker", "eval_seconds", "eval_cpu_seconds")}


@pytest.fixture(scope="module")
def supernet_folder(tmp_path_factory) -> str:
    """A random-init quickstart-space supernet (rankings do not matter here, only that results are reproduced)."""
    from evonets.models.search_space import EvoNetSupernetConfig
    from evonets.models.supernet import EvoNetSupernet

    folder = tmp_path_factory.mktemp("supernet")
    torch.manual_seed(0)
    EvoNetSupernet(EvoNetSupernetConfig.tiny(resolution_choices=[8, 16], num_labels=10)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def pool(supernet_folder):
    """One pool of two workers for the tests below (each worker process takes seconds to start)."""
    make_evaluator = functools.partial(make_test_evaluator, supernet_folder)
    with EvaluationPool(make_evaluator, workers=2, max_retries=1, threads_per_worker=1) as pool:
        assert pool.wait_ready(timeout=120)
        yield pool


def wait_for_file(path: Path, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return path.read_text()


# Local workers -------------------------------------------------------------------------------------------------


def test_pool_results_equal_serial_supernet_evaluation(pool, supernet_folder):
    from evonets.models.search_space import EvoNetSupernetConfig

    torch.set_num_threads(1)
    space, rng = EvoNetSupernetConfig.from_pretrained(supernet_folder).search_space, random.Random(0)
    encodings = [space.encode(space.sample(rng)) for _ in range(8)]
    assert pool.num_workers == 2 and pool.idle_workers == 2
    for index, encoding in enumerate(encodings):
        pool.submit(f"arch{index}", {"arch": encoding})
    assert pool.in_flight == 8 and pool.idle_workers == 0
    results = dict(pool.drain())
    assert pool.in_flight == 0 and pool.idle_workers == 2

    serial = make_supernet_evaluator(supernet_folder)
    assert sorted(results) == [f"arch{index}" for index in range(8)]
    for index, encoding in enumerate(encodings):
        expected, result = serial({"arch": encoding}), results[f"arch{index}"]
        assert without_bookkeeping(result) == pytest.approx(expected, rel=1e-6)
        assert result["worker"] in ("r0w0", "r0w1") and result["eval_seconds"] > 0 and result["eval_cpu_seconds"] > 0
    assert len({result["loss"] for result in results.values()}) > 1  # distinct subnets, distinct results


def test_results_come_in_completion_order_and_free_workers_pull_at_once(pool):
    pool.submit("slow", {"x": 100, "sleep": 2.0})
    assert pool.wait(timeout=0.05) == []  # nothing finished: returns after the timeout
    for index in range(5):
        pool.submit(f"fast{index}", {"x": index, "sleep": 0.05})
    order, results = [], {}
    while pool.in_flight:
        for task_id, result in pool.wait():
            order.append(task_id)
            results[task_id] = result
    assert order == [f"fast{index}" for index in range(5)] + ["slow"]
    slow = results["slow"]
    assert slow["value"] == 10_000
    for index in range(5):
        fast = results[f"fast{index}"]
        assert fast["value"] == index**2
        assert fast["worker"] != slow["worker"]  # the other worker took every fast task ...
        assert fast["started"] < slow["finished"]  # ... while the slow one was still running
    assert pool.wait(timeout=0.01) == []  # nothing in flight: returns at once


def test_evaluator_exception_becomes_error_result_and_worker_survives(pool):
    pids = pool.worker_pids
    pool.submit("bad", {"x": 1, "raise": "boom"})
    for index in range(4):
        pool.submit(f"good{index}", {"x": index})
    results = dict(pool.drain())
    assert results["bad"]["error"] == "ValueError: boom"
    assert "Traceback" in results["bad"]["traceback"]
    assert results["bad"]["worker"] in pids
    assert [results[f"good{index}"]["value"] for index in range(4)] == [0, 1, 4, 9]
    assert pool.worker_pids == pids  # no worker died or was replaced


def test_sigkill_mid_task_requeues_it_and_every_task_finishes(pool, tmp_path):
    marker = tmp_path / "victim.started"
    requeued = pool.requeued
    pool.submit("victim", {"x": 7, "hang_once": str(marker)})
    for index in range(6):
        pool.submit(f"other{index}", {"x": index, "sleep": 0.05})
    victim_pid = int(wait_for_file(marker).split()[1])
    victim_worker = pool.running["victim"]
    assert pool.worker_pids[victim_worker] == victim_pid
    os.kill(victim_pid, signal.SIGKILL)

    results = dict(pool.drain())
    assert sorted(results) == sorted(["victim"] + [f"other{index}" for index in range(6)])
    assert all("error" not in result for result in results.values())
    assert results["victim"]["value"] == 49
    assert results["victim"]["worker"] != victim_worker
    assert pool.requeued == requeued + 1
    assert pool.wait_ready(timeout=120)  # the replacement registered
    assert len(pool.worker_pids) == 2 and victim_pid not in pool.worker_pids.values()


def test_task_that_kills_every_worker_comes_back_as_error(pool):
    pool.submit("poison", {"x": 0, "kill_self": True})
    pool.submit("fine", {"x": 3})
    results = dict(pool.drain())
    assert results["fine"]["value"] == 9
    assert results["poison"]["error"].startswith("WorkerDied: 2 workers died evaluating this task (max_retries = 1)")
    assert pool.wait_ready(timeout=120)
    pool.submit("after", {"x": 4})
    assert dict(pool.drain())["after"]["value"] == 16  # the pool still works


def test_submit_rejects_bad_input(pool):
    with pytest.raises(TypeError, match="payload"):
        pool.submit("a", [1, 2])
    with pytest.raises(ValueError, match="JSON"):
        pool.submit("a", {"x": object()})
    pool.submit("same", {"x": 1, "sleep": 0.2})
    with pytest.raises(ValueError, match="already in flight"):
        pool.submit("same", {"x": 2})
    assert dict(pool.drain())["same"]["value"] == 1


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"workers": 0}, "workers"),
        ({"max_retries": -1}, "max_retries"),
        ({"heartbeat_timeout": 0.5}, "heartbeat_timeout"),
        ({"threads_per_worker": 0}, "threads_per_worker"),
        ({"distributed": True}, "distributed"),  # no process group in this process
    ],
)
def test_pool_rejects_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EvaluationPool(make_test_evaluator, **kwargs)


# Where the store listens ---------------------------------------------------------------------------------------


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on `port` (`/proc/net/tcp`, `/proc/net/tcp6`)."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is host order
                found.add(socket.inet_ntop(family, words))
    return found


def test_store_listens_on_loopback_only_in_a_one_machine_run(pool):
    host, port = pool.address
    assert host == "127.0.0.1"
    assert _listening_addresses(port) == {"127.0.0.1"}  # not 0.0.0.0 or ::, which every machine on the network reaches


def test_bind_address_choices(monkeypatch):
    for name in ("LOCAL_WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    assert resolve_bind_address(None) == ("127.0.0.1", "127.0.0.1")
    assert resolve_bind_address("lo") == ("127.0.0.1", "127.0.0.1")  # an interface name
    assert resolve_bind_address("127.0.0.1", world_size=2) == ("127.0.0.1", "127.0.0.1")
    assert resolve_bind_address("localhost")[0] in ("127.0.0.1", "::1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.2")
    assert resolve_bind_address("0.0.0.0", world_size=2) == ("0.0.0.0", "127.0.0.2")  # every interface: asked for
    # several ranks: loopback when the launcher says they all run here, else the interface of MASTER_ADDR
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "192.0.2.123")
    assert resolve_bind_address(None, world_size=2) == ("127.0.0.1", "127.0.0.1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    with pytest.raises(ValueError, match=r"bind_address = None \(the interface of MASTER_ADDR = '192.0.2.123'\)"):
        resolve_bind_address(None, world_size=2)  # TEST-NET-1: no address of this machine
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert resolve_bind_address(None, world_size=2) == ("127.0.0.1", "127.0.0.1")
    monkeypatch.delenv("MASTER_ADDR")
    with pytest.raises(ValueError, match="bind_address = None .* without MASTER_ADDR"):
        resolve_bind_address(None, world_size=2)
    for bad in ("192.0.2.123", "", " lo", 5):
        with pytest.raises(ValueError, match="bind_address = .* is invalid"):
            resolve_bind_address(bad)


def test_a_bad_bind_address_is_a_clear_error():
    with pytest.raises(ValueError, match="bind_address = '192.0.2.123' is invalid: expected an interface name"):
        EvaluationPool(make_test_evaluator, bind_address="192.0.2.123")
    from search.config import PoolConfig, SearchConfig

    with pytest.raises(ValueError, match=r"Config field pool\.bind_address = '192.0.2.123' is invalid"):
        SearchConfig(supernet="runs/x", pool=PoolConfig(bind_address="192.0.2.123")).validate()


def test_evaluator_that_cannot_be_built_fails_the_pool():
    error = "could not build its evaluator: OSError: no supernet"
    with EvaluationPool(make_failing_evaluator, workers=1) as pool, pytest.raises(RuntimeError, match=error):
        pool.wait_ready(timeout=120)


# Two gloo ranks ------------------------------------------------------------------------------------------------


def test_two_gloo_ranks_under_accelerate_launch(tmp_path):
    output = tmp_path / "results.json"
    # On a CPU machine `--multi_gpu --num_processes 2` starts two processes, and Accelerator(cpu=True) joins them in
    # a gloo group (`--cpu --num_processes 2` starts only one).
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [*launcher, __file__, "two-ranks", str(output)],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["world_size"] == 2 and report["num_workers"] == 2
    results = dict(report["results"])
    assert sorted(results) == sorted(f"task{index}" for index in range(12))
    assert all(results[f"task{index}"]["value"] == index**2 for index in range(12))
    ranks = {result["worker"][:2] for result in results.values()}
    assert ranks == {"r0", "r1"}  # both ranks evaluated tasks
    assert len({result["pid"] for result in results.values()}) == 2


@pytest.mark.slow
def test_rank_gone_requeues_its_task(tmp_path):
    """Rank 1 (its supervisor and worker) is SIGKILLed mid-task: rank 0 notices the missing heartbeats, re-queues the
    task on its own worker and finishes the run with one evaluator."""
    output, markers = tmp_path / "results.json", [tmp_path / "hang0", tmp_path / "hang1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = str(_free_port())
    ranks = [
        subprocess.Popen(
            [sys.executable, __file__, "rank-gone", str(rank), str(output), *map(str, markers)],
            cwd=REPO,
            env=env,
            start_new_session=True,  # rank 1 and its worker form one process group, killed together below
        )
        for rank in (0, 1)
    ]
    try:
        owners = dict(wait_for_file(marker).split() for marker in markers)  # RANK -> pid of the hanging worker
        assert set(owners) == {"0", "1"}  # one hanging task on each rank
        os.killpg(ranks[1].pid, signal.SIGKILL)
        assert ranks[0].wait(timeout=120) == 0
    finally:
        for process in ranks:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    report = json.loads(output.read_text())
    results = dict(report["results"])
    assert sorted(results) == sorted(f"task{index}" for index in range(6))
    assert all(results[f"task{index}"]["value"] == index**2 for index in range(6))
    assert all(result["worker"] == "r0w0" for result in results.values())  # rank 1 never finished a task
    assert report["requeued"] == 1 and report["num_workers_after"] == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Scripts of the multi-rank tests -------------------------------------------------------------------------------


def two_ranks(output: str) -> None:
    """Under `accelerate launch --multi_gpu --num_processes 2`: rank 0 runs the pool, rank 1 serves."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    if accelerator.is_main_process:
        with EvaluationPool(make_test_evaluator, workers=1, distributed=True) as pool:
            assert pool.wait_ready(timeout=120)
            for index in range(12):
                pool.submit(f"task{index}", {"x": index, "sleep": 0.1})
            results = pool.drain()
            report = {"world_size": dist.get_world_size(), "num_workers": pool.num_workers, "results": results}
        Path(output).write_text(json.dumps(report))
    else:
        serve(make_test_evaluator, workers=1)
    accelerator.wait_for_everyone()


def rank_gone(rank: int, output: str, *markers: str) -> None:
    """Two gloo ranks formed by hand (so that killing rank 1 does not end rank 0, as a launcher would)."""
    os.environ["RANK"] = str(rank)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    if rank:
        serve(make_test_evaluator, workers=1)
        return
    with EvaluationPool(make_test_evaluator, workers=1, distributed=True, heartbeat_timeout=4.0) as pool:
        assert pool.wait_ready(timeout=120)
        for index in range(6):
            payload = {"x": index, "sleep": 0.05}
            if index < len(markers):  # one per worker: each hangs 5 s on its first attempt
                payload.update(hang_once=markers[index], hang=5.0)
            pool.submit(f"task{index}", payload)
        results = pool.drain()
        report = {"results": results, "requeued": pool.requeued, "num_workers_after": pool.num_workers}
    Path(output).write_text(json.dumps(report))


def main(argv: list[str]) -> None:
    mode, *args = argv
    if mode == "two-ranks":
        two_ranks(*args)
    elif mode == "rank-gone":
        rank_gone(int(args[0]), *args[1:])
    else:
        raise ValueError(f"mode = {mode!r} is invalid: expected two-ranks or rank-gone.")


if __name__ == "__main__":
    main(sys.argv[1:])
