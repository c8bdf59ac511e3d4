"""Shared fixtures."""

import os
import subprocess
import sys
import textwrap
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
