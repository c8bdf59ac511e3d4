"""Shared fixtures."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from evonets.data.paths import shared_data_dir

REPOSITORY = str(Path(__file__).resolve().parents[1])

# Prepended to every `without_evonets` script: a user who has only transformers, not this repository. Every entry of
# sys.path that could reach the checkout (the repository and its folders, the editable install's finder) is scrubbed, and a
# finder refuses our four packages in case anything else still reaches them.
HIDE_EVONETS = f"""
import importlib.abc
import sys

REPOSITORY = {str(REPOSITORY)!r}
OUR_PACKAGES = ("evonets", "distill", "search", "hub_cards")
sys.path[:] = [
    entry for entry in sys.path
    if "site-packages" in entry or not (entry or ".").startswith(REPOSITORY)  # a virtualenv inside the checkout stays
]
sys.meta_path[:] = [finder for finder in sys.meta_path if "__editable__" not in getattr(finder, "__module__", "")]


class HideOurPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in OUR_PACKAGES:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)")
        return None


sys.meta_path.insert(0, HideOurPackages())
for package in OUR_PACKAGES:
    try:
        __import__(package)
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit(f"{{package}} is still importable")
"""


@pytest.fixture(scope="module")
def one_thread():
    """torch at one intra-op thread for a module's tests (restored after). Their networks are tiny: a second thread
    only adds synchronisation, which on a busy 2-core machine costs 10-20x in wall time (measured), and latency is
    measured at one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data():
    """`../shared/data` (the real sample data). CI always has it, so there a missing folder fails the test loudly;
    elsewhere the test is skipped with the reason."""
    folder = shared_data_dir()
    if not folder.is_dir():
        message = f"the shared sample data is missing: {folder} (set EVONETS_DATA_DIR)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture
def without_evonets(tmp_path):
    """`run(body, *args)` runs the Python source `body` in a fresh interpreter where `import evonets` fails (so
    `trust_remote_code=True` must use the code saved in the folder), offline and with its own modules cache under
    `tmp_path`, as `python script.py *args`. It fails the test, with the script's output, unless the script exits
    with 0, and returns the `subprocess.CompletedProcess` for further checks on its stdout."""

    def run(body: str, *args) -> subprocess.CompletedProcess:
        script = tmp_path / "without_evonets.py"
        script.write_text(HIDE_EVONETS + textwrap.dedent(body))
        env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
        env.pop("PYTHONPATH", None)
        result = subprocess.run(
            [sys.executable, str(script), *map(str, args)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    return run


def archived_results(output_dir) -> list[dict]:
    """The result records of a search run folder's `archive.jsonl`, in order."""
    lines = (Path(output_dir) / "archive.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record.get("kind") == "result"]


@pytest.fixture
def kill_then_resume():
    """`kill_then_resume(command, output_dir, budget, least, timeout, resume)`: start a search `command`, `kill -9`
    its process group (coordinator and workers) once `least` results are archived, resume with `resume()` (returns
    the `SearchResult`), and check that nothing finished before the kill is lost or rewritten and that only the
    candidates in flight at the kill ran again. Returns (results before the kill, the resumed run's result)."""

    def run(command, output_dir, budget, least, timeout, resume):
        archive = Path(output_dir) / "archive.jsonl"
        process = subprocess.Popen(
            command, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while not (archive.is_file() and len(archived_results(output_dir)) >= least):
            assert process.poll() is None, f"the run ended first: {process.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, f"fewer than {least} results after {timeout} s"
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        before = archived_results(output_dir)
        lines = archive.read_text().splitlines()
        asked = {json.loads(line)["index"] for line in lines if '"kind": "ask"' in line}
        in_flight = asked - {record["index"] for record in before}
        assert least <= len(before) < budget

        result = resume()
        after = archived_results(output_dir)
        assert after[: len(before)] == before  # nothing finished before the kill is lost or rewritten
        assert sorted(record["index"] for record in after) == list(range(budget))
        new_asks = [
            json.loads(line) for line in archive.read_text().splitlines()[len(lines) :] if '"kind": "ask"' in line
        ]
        assert all(ask["index"] not in asked for ask in new_asks)  # only the candidates in flight ran again
        assert {record["index"] for record in after[len(before) :]} == in_flight | {ask["index"] for ask in new_asks}
        return before, result

    return run
