"""The console scripts of pyproject.toml exit with status 0 after a successful run: a script's `sys.exit(target())`
turns any returned object into status 1 (and prints it), so every target returns None."""

import importlib
from pathlib import Path

import pytest
import tomllib

SCRIPTS = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_successful_run_exits_with_status_zero(name, monkeypatch):
    module_name, function_name = SCRIPTS[name].split(":")
    module = importlib.import_module(module_name)
    if function_name == "main":  # the target is the command itself: it must return nothing
        assert module.main.__annotations__.get("return") in (None, "None")
        return
    monkeypatch.setattr(module, "main", lambda argv=None: {"a": "result object"})
    assert getattr(module, function_name)() is None
