"""The fused CPU kernel's build never hangs a process: not after a `kill -9` during a build, not on a lock left
behind, not behind another process's build. Every test builds in its own temporary TORCH_EXTENSIONS_DIR, in
subprocesses (a build is once per process), and looks for compiler processes left running in the build folder."""

from __future__ import annotations

import fcntl
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

scan_module = importlib.import_module("evonets.models.selective_scan")

# Spelled out rather than read from the module: they are the documented interface.
KERNEL_NAME = "evonets_selective_scan_cpu"
TIMEOUT_VAR = "EVONETS_KERNEL_BUILD_TIMEOUT"
BUILD_LOCK = "evonets_build.lock"  # our fcntl lock beside torch's `lock`, held by whoever builds

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None or shutil.which("ninja") is None or not Path("/proc").is_dir(),
    reason="needs a C++ compiler, ninja and /proc (Linux)",
)

# Prints the backends; warnings go to stderr as "WARNING:<logger>:<message>" so that they can be counted.
PROBE = (
    "import logging; logging.basicConfig(format='%(levelname)s:%(name)s:%(message)s', level=logging.INFO); "
    "from evonets.models.selective_scan import available_backends; print(available_backends())"
)
TORCH_ONLY = "('torch', 'reference')"
WITH_KERNEL = "('torch', 'cpu_fused', 'reference')"


def _env(extensions_dir: Path, **variables: str) -> dict[str, str]:
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(extensions_dir), **variables)
    env.pop(scan_module.BACKEND_ENV_VAR, None)
    return env


def _probe(extensions_dir: Path, timeout: float = 60, **variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        env=_env(extensions_dir, **variables),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("WARNING:")]


def _processes_in(directory: Path) -> dict[int, str]:
    """Command lines of the live processes working in `directory` (ninja and the compiler run there), by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "cwd") == str(directory):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone, a zombie, or not ours
            continue
    return found


def _wait_until(condition, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


@pytest.fixture
def build_dir(tmp_path: Path) -> Path:
    directory = tmp_path / KERNEL_NAME
    directory.mkdir()
    yield directory
    for pid, command in _processes_in(directory).items():  # never leave a compiler running, even when a test fails
        print("left running:", command)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_stale_lock_is_removed_and_a_slow_build_falls_back_with_one_warning(build_dir):
    """The issue's reproduction: torch's lock file without a live owner. The next process neither waits on it nor
    fails: it removes the lock, starts the build, stops it at the timeout and uses the 'torch' backend."""
    (build_dir / "lock").touch()
    started = time.monotonic()
    result = _probe(build_dir.parent, **{TIMEOUT_VAR: "2"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == TORCH_ONLY, result.stderr
    warnings = _warnings(result.stderr)
    assert len(warnings) == 1 and TIMEOUT_VAR in warnings[0], result.stderr
    assert "stale" in result.stderr  # says what it found (at INFO)
    assert time.monotonic() - started < 45
    assert not (build_dir / "lock").exists()
    assert _wait_until(lambda: not _processes_in(build_dir), 5), _processes_in(build_dir)


def test_a_live_builder_is_waited_for_then_its_lock_is_left_alone(build_dir):
    """Another process holding the build lock is building: wait for it up to the timeout, then fall back with one
    warning, and do not touch its lock."""
    (build_dir / "lock").touch()  # what torch's build in that process has created
    with open(build_dir / BUILD_LOCK, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        result = _probe(build_dir.parent, **{TIMEOUT_VAR: "2"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == TORCH_ONLY, result.stderr
    warnings = _warnings(result.stderr)
    assert len(warnings) == 1 and "another process" in warnings[0], result.stderr
    assert (build_dir / "lock").exists()


@pytest.mark.slow
def test_kill_during_a_real_build_then_the_next_process_builds(build_dir):
    """`kill -9` a process while its compiler runs: the compiler dies with it, and the next process builds the
    kernel (over the lock the kill left behind); a third one loads it from the cache without building."""
    first = subprocess.Popen(
        [sys.executable, "-c", PROBE],
        env=_env(build_dir.parent),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        compiling = _wait_until(
            lambda: any("cc1plus" in c or "c++" in c for c in _processes_in(build_dir).values()), 60
        )
        assert compiling, "the build never started"
        time.sleep(1.0)  # well inside the compilation (it takes several seconds)
        assert first.poll() is None, "the build finished before it could be killed"
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert _wait_until(lambda: not _processes_in(build_dir), 10), f"orphans: {_processes_in(build_dir)}"

    result = _probe(build_dir.parent, timeout=240)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == WITH_KERNEL, result.stderr
    assert not _warnings(result.stderr), result.stderr
    assert not (build_dir / "lock").exists()

    (build_dir / "lock").touch()  # a stale lock again; the kernel is built, so nothing needs building
    cached = _probe(build_dir.parent, **{TIMEOUT_VAR: "0"})
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout.strip() == WITH_KERNEL, cached.stderr
    assert not _warnings(cached.stderr), cached.stderr
