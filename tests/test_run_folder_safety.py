"""Damaged, tampered and shared run folders: nothing read back from a run folder writes outside it, damaged records
and files give a warning or a clear error naming the file, a duplicated result counts once, and two runs never
write one folder at once (a lock the kernel releases when its process dies, even on `kill -9`).

Small hand-written run folders; the end-to-end checks on a real run are in `test_search_run.py` (kill and resume)
and `test_hub_cards.py` (a tampered `pareto.json` of the quickstart run)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from evonets.engine.archive import JsonlArchive
from evonets.models.search_space import EvoNetSupernetConfig
from search.config import SearchConfig
from search.evolution import Evolution
from search.run_folder import load_run, read_archive

SPACE = EvoNetSupernetConfig.tiny(resolution_choices=[8, 16], num_labels=10).search_space
ARCH = SPACE.smallest()
ENCODING, DIGEST = SPACE.encode(ARCH), SPACE.hash(ARCH)


def _result(index: int, digest: str = DIGEST, encoding: str = ENCODING) -> dict:
    return {
        "kind": "result", "index": index, "hash": digest, "encoding": encoding,
        "metrics": {"accuracy": 0.5, "loss": 1.0, "macs": 100.0, "params": 10.0},
        "objectives": {"error": 0.5, "macs": 100.0},
        "latency": {"ms": 1.0, "iqr_ms": 0.1, "source": "measured", "fingerprint": "k"},
        "violations": [], "feasible": True,
    }  # fmt: skip


def _config(output_dir: Path, **search) -> SearchConfig:
    config = SearchConfig(supernet="unused", output_dir=str(output_dir))
    config.search.objectives = ["error", "macs"]
    config.search.optimizer = "random"
    for name, value in search.items():
        setattr(config.search, name, value)
    return config


def _resume(output_dir: Path):
    """`search.runner._resume` as a restart in `output_dir` calls it."""
    from search.runner import _resume

    config = _config(output_dir)
    evolution = Evolution(SPACE, "random", budget=10, seed=0, num_workers=1, num_objectives=2)
    known: dict = {}
    replay = _resume(config, output_dir, evolution, SPACE, SimpleNamespace(measured={}), known, {"error": 1.0,
                     "macs": 1000.0})  # fmt: skip
    return replay, known


def _warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def test_the_hash_pattern_is_the_search_spaces():
    from search.run_folder import HASH_PATTERN

    assert HASH_PATTERN.fullmatch(DIGEST)
    assert not HASH_PATTERN.fullmatch("../../../x") and not HASH_PATTERN.fullmatch(DIGEST.upper())


# Item 3: no path out of the run folder ---------------------------------------------------------------------------


def test_a_traversal_hash_in_the_archive_is_not_resumed(tmp_path, caplog):
    """A result whose hash is `../../../x` (or any hash that is not its encoding's) is skipped on resume with a
    warning naming the file and line; its candidate stays in flight, so it is evaluated again."""
    JsonlArchive(tmp_path / "archive.jsonl").append_many([
        {"kind": "ask", "index": 0, "encoding": ENCODING},
        _result(0, digest="../../../x"),
    ])  # fmt: skip
    with caplog.at_level(logging.WARNING):
        replay, known = _resume(tmp_path)
    assert replay.results == [] and list(replay.asked) == [0] and "../../../x" not in known
    assert any(
        "archive.jsonl" in message and "line 2" in message and "hash" in message for message in _warnings(caplog)
    )


def test_the_report_never_writes_a_model_outside_the_run_folder(tmp_path):
    """`write_outputs` makes `models/<hash>` from a record's hash: a hash that is not one is a clear error before any
    model is written (the record could come from a tampered archive)."""
    from search.report import write_outputs

    written = []

    class Model:
        def save_pretrained(self, folder):
            written.append(Path(folder))
            Path(folder).mkdir(parents=True, exist_ok=True)

    supernet = SimpleNamespace(search_space=SPACE, extract=lambda arch: Model())
    run_dir = tmp_path / "a" / "b" / "run"
    run_dir.mkdir(parents=True)
    record = _result(0, digest="../../../x")
    result = SimpleNamespace(output_dir=run_dir, front=[record], records=[record], hypervolume=0.5, evaluations=1,
                             seconds=1.0)  # fmt: skip
    info = {"latency_fingerprint": {}, "supernet": "s", "latency_mode": "measure", "optimizer": "random", "seed": 0,
            "reference_point": {}}  # fmt: skip
    with pytest.raises(ValueError, match=r"hash '\.\./\.\./\.\./x'.*12 lowercase hex"):
        write_outputs(result, config=_config(run_dir), supernet=supernet, supernet_dir=tmp_path, info=info,
                      oracle=None, timing={})  # fmt: skip
    assert written == [] and not (tmp_path / "a" / "x").exists() and not (tmp_path / "x").exists()


def _hand_written_run(run_dir: Path, member: dict) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"objectives": ["error", "macs"], "supernet": None}))
    (run_dir / "pareto.json").write_text(json.dumps({"front": [member]}))
    (run_dir / "models").mkdir()
    return run_dir


@pytest.mark.parametrize("where", ["absolute", "relative", "hash"])
def test_cards_never_write_outside_the_run_folder(tmp_path, where):
    """`pareto.json`'s `model_dir` (or the hash it defaults from) must stay inside the run folder: `build_cards`
    refuses it, naming the file and the field, and writes nothing into the folder it points at."""
    from hub_cards.cards import build_cards

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text("{}")
    member = _result(0)
    if where == "absolute":
        member["model_dir"], field = str(elsewhere), "model_dir"
    elif where == "relative":
        member["model_dir"], field = "../elsewhere", "model_dir"
    else:
        member["hash"], field = "../../elsewhere", "hash"
    run_dir = _hand_written_run(tmp_path / "run", member)
    with pytest.raises(ValueError, match=rf"pareto.json.*'{field}'"):
        build_cards(run_dir, with_supernet_card=False)
    assert sorted(path.name for path in elsewhere.iterdir()) == ["config.json"]


def test_the_supernet_card_folder_must_be_inside_the_run_folder(tmp_path):
    from hub_cards.cards import write_supernet_card

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir = _hand_written_run(tmp_path / "run", _result(0))
    (run_dir / "supernet_card").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match="outside the run folder"):
        write_supernet_card(load_run(run_dir))
    assert list(elsewhere.iterdir()) == []


# Item 5: damaged run folders --------------------------------------------------------------------------------------


def test_lines_that_are_not_records_are_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "archive.jsonl"
    JsonlArchive(path).append_many([
        {"kind": "ask", "index": 0, "encoding": ENCODING},
        {"foo": 1},  # `echo '{"foo":1}' >> archive.jsonl`
        {"kind": "result", "index": 0},  # a result without its fields
        {"kind": "wat", "index": 3},
        {"kind": "ask", "index": "1", "encoding": ENCODING},
        _result(0),
        {"kind": "ask", "index": 1, "encoding": ENCODING},
    ])  # fmt: skip
    with open(path, "a") as handle:
        handle.write("[1, 2]\n")
    with caplog.at_level(logging.WARNING):
        replay = read_archive(path)
    assert [r["index"] for r in replay.results] == [0] and list(replay.asked) == [1] and replay.num_asked == 2
    messages = _warnings(caplog)
    for line in (2, 3, 4, 5, 8):
        assert sum(f"{path}, line {line}:" in message for message in messages) == 1, (line, messages)
    assert len(messages) == 5


def test_resume_skips_a_line_that_is_not_a_record(tmp_path, caplog):
    """The issue's reproduction: `echo '{"foo":1}' >> archive.jsonl` stopped resume with a bare KeyError."""
    path = tmp_path / "archive.jsonl"
    JsonlArchive(path).append_many([{"kind": "ask", "index": 0, "encoding": ENCODING}, _result(0)])
    with open(path, "a") as handle:
        handle.write('{"foo":1}\n')
    with caplog.at_level(logging.WARNING):
        replay, known = _resume(tmp_path)
    assert [r["index"] for r in replay.results] == [0] and known == {DIGEST: _result(0)["metrics"]}
    assert any(f"{path}, line 3:" in message for message in _warnings(caplog))


def test_a_duplicated_result_counts_once(tmp_path, caplog):
    path = tmp_path / "archive.jsonl"
    lines = [{"kind": "ask", "index": 0, "encoding": ENCODING}, _result(0), {"kind": "ask", "index": 1,
             "encoding": ENCODING}, _result(1)]  # fmt: skip
    JsonlArchive(path).append_many(lines[:2] + lines[1:2] + lines[2:])  # result 0 twice
    with caplog.at_level(logging.WARNING):
        replay = read_archive(path)
    assert [r["index"] for r in replay.results] == [0, 1] and replay.num_asked == 2
    assert any(f"{path}, line 3:" in message and "index 0" in message for message in _warnings(caplog))


def test_a_corrupt_run_json_is_a_clear_error(tmp_path):
    from search.runner import _pin_run

    (tmp_path / "run.json").write_text('{"space": "abc", ')  # a write cut short
    with pytest.raises(ValueError, match=r"run.json is not valid JSON.*output_dir"):
        _pin_run(_config(tmp_path), tmp_path, tmp_path, "key", None, SimpleNamespace(search_space=SPACE))
    (tmp_path / "run.json").write_text("[]")
    with pytest.raises(ValueError, match=r"run.json .*expected a JSON object"):
        _pin_run(_config(tmp_path), tmp_path, tmp_path, "key", None, SimpleNamespace(search_space=SPACE))


@pytest.mark.parametrize("text", ["{garbage", '{"asked": 3}', "null"])
def test_a_corrupt_search_state_is_a_clear_error(tmp_path, text):
    JsonlArchive(tmp_path / "archive.jsonl").append({"kind": "ask", "index": 0, "encoding": ENCODING})
    (tmp_path / "search_state.json").write_text(text)
    with pytest.raises(ValueError, match=r"search_state.json .*Delete it to resume"):
        _resume(tmp_path)


@pytest.mark.parametrize("name", ["run.json", "pareto.json"])
def test_a_corrupt_file_of_a_finished_run_is_a_clear_error(tmp_path, name):
    run_dir = _hand_written_run(tmp_path / "run", _result(0))
    (run_dir / name).write_text("{")
    with pytest.raises(ValueError, match=rf"{name} is not valid JSON"):
        load_run(run_dir)


# Item 5: one run per folder --------------------------------------------------------------------------------------

HOLD = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.write(fd, b"%d\\n" % os.getpid())
    print("locked", flush=True)
    time.sleep(120)
    """
)


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding the run folder's lock, as a run writing it does."""
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_run_on_a_locked_folder_fails_at_once(tmp_path):
    from search.runner import _coordinate

    output_dir = tmp_path / "run"
    holder = _hold_lock(output_dir)
    try:
        start = time.monotonic()
        with pytest.raises(RuntimeError, match=rf"{output_dir}.* is being written by another run \(process"):
            _coordinate(_config(output_dir), tmp_path / "no_supernet", None, None, False)
        assert time.monotonic() - start < 5
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the kernel releases the lock of a killed process
        holder.wait()
    for _ in range(2):  # past the lock now (and it is released again after a failed run)
        with pytest.raises(OSError):
            _coordinate(_config(output_dir), tmp_path / "no_supernet", None, None, False)


def test_the_lock_dies_with_its_process(tmp_path):
    from evonets.engine.archive import FolderLockedError, locked_folder

    with (
        locked_folder(tmp_path, ".lock"),
        pytest.raises(FolderLockedError, match=f"process {os.getpid()}"),
        locked_folder(tmp_path, ".lock"),
    ):
        pass
    with locked_folder(tmp_path, ".lock"):  # released on leaving the block
        pass
    holder = _hold_lock(tmp_path)
    with pytest.raises(FolderLockedError), locked_folder(tmp_path, ".lock"):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with locked_folder(tmp_path, ".lock") as path:
        assert path == tmp_path / ".lock" and path.read_text().strip() == str(os.getpid())


def _pin(output_dir: Path, fitness_key: str) -> dict:
    """`search.runner._pin_run` as a run in `output_dir` calls it (a configured reference point: nothing is timed)."""
    from search.runner import _pin_run

    config = _config(output_dir, reference_point={"error": 1.0, "macs": 1000.0})
    supernet = SimpleNamespace(search_space=SPACE)
    oracle = SimpleNamespace(fingerprint={"cpu": "x"}, settings=SimpleNamespace(reference_ms=0.5))
    return _pin_run(config, output_dir, Path("sn"), fitness_key, oracle, supernet)


def test_a_first_try_that_recorded_no_result_does_not_block_the_corrected_command(tmp_path):
    """A run that stopped before any result (e.g. on a bad data section, whose settings went into run.json) used to
    refuse the corrected command until the folder was deleted; its asks and settings are now set aside, not lost."""
    _pin(tmp_path, fitness_key="bad-data")
    JsonlArchive(tmp_path / "archive.jsonl").append({"kind": "ask", "index": 0, "encoding": ENCODING})
    info = _pin(tmp_path, fitness_key="corrected-data")
    assert info["fitness_key"] == "corrected-data"
    assert json.loads((tmp_path / "run.json").read_text())["fitness_key"] == "corrected-data"
    set_aside = sorted(path.name for path in tmp_path.iterdir() if ".set-aside-" in path.name)
    assert [name.split(".set-aside-")[0] for name in set_aside] == ["archive.jsonl", "run.json"]
    assert not (tmp_path / "archive.jsonl").exists()


def test_a_run_with_results_still_refuses_other_settings(tmp_path):
    _pin(tmp_path, fitness_key="first")
    JsonlArchive(tmp_path / "archive.jsonl").append_many(
        [{"kind": "ask", "index": 0, "encoding": ENCODING}, _result(0)]
    )
    with pytest.raises(ValueError, match=r"holds a search run with different \['fitness_key'\]"):
        _pin(tmp_path, fitness_key="second")
    assert _pin(tmp_path, fitness_key="first")["fitness_key"] == "first"  # the same settings resume
    assert not [path for path in tmp_path.iterdir() if ".set-aside-" in path.name]
