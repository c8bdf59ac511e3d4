"""The console scripts of pyproject.toml are installed, point at a `main`, and answer `--help` like the scripts they
stand for (`python search/run.py`, `python distill/train.py`, ...)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

SCRIPTS = {point.name: point for point in distribution("evonets").entry_points if point.group == "console_scripts"}


def test_every_pipeline_has_a_console_script():
    assert set(SCRIPTS) == {"evonets-search", "evonets-distill", "evonets-train-teacher", "evonets-rank-check",
                            "evonets-hub"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_is_installed_and_answers_help(name):
    assert callable(SCRIPTS[name].load())
    executable = shutil.which(name) or str(Path(sys.executable).parent / name)
    result = subprocess.run([executable, "--help"], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "usage:" in result.stdout.lower()
