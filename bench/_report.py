"""What every benchmark script shares: the machine description, and writing its own section of docs/benchmarks.md.

Benchmark scripts run as `python bench/<name>.py`, so this module is importable as `_report`.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path

try:
    import resource
except ImportError:  # not on Windows
    resource = None

import torch
import transformers

REPO = Path(__file__).resolve().parents[1]

from evonets.deploy.fingerprint import cpu_model  # one definition, also in every latency fingerprint

DOC_PATH = REPO / "docs" / "benchmarks.md"


def machine_description(threads: int | None = None) -> str:
    """CPU, cores and vector ISA, library versions, threads, load average and date: one line for the docs.

    The load average matters: these machines are shared, so tables compare ratios taken in one run.
    """
    load = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    threads = torch.get_num_threads() if threads is None else threads
    return (
        f"{cpu_model()}, {os.cpu_count()} cores ({torch.backends.cpu.get_cpu_capability()}); "
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}; "
        f"{threads} threads; load average at start {load}; {datetime.datetime.now():%Y-%m-%d %H:%M}"
    )


def write_section(name: str, title: str, body: str, path: Path = DOC_PATH) -> None:
    """Replace the text between `<!-- {name}:start -->` and `<!-- {name}:end -->` in `path`, leaving the rest of
    the file alone; create the file, or append the section under `## {title}`, when missing."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@dataclass
class Timing:
    """Per-call seconds of one timed entry: wall clock, and process CPU time (which does not count waiting for a core,
    so on a shared machine it is the steadier figure; with two threads it also counts OpenMP's spin-waiting)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    minor_faults: int = 0


def minor_page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def time_interleaved(
    calls: dict[Hashable, Callable[[], object]], rounds: int, per_round: int, warmup: int, grad: bool = False
) -> dict[Hashable, Timing]:
    """Time every entry in rounds that visit all entries in a rotating order, so machine noise hits all alike.

    Each entry is warmed up, then re-warmed once per round after the previous entry ran. Under
    `torch.inference_mode` unless `grad`.
    """
    names = list(calls)
    timings = {name: Timing() for name in names}
    with torch.inference_mode(not grad):
        for name in names:
            for _ in range(warmup):
                calls[name]()
        for round_index in range(rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                call, timing = calls[name], timings[name]
                call()
                faults_before = minor_page_faults()
                for _ in range(per_round):
                    wall, cpu = time.perf_counter(), time.process_time()
                    call()
                    timing.cpu.append(time.process_time() - cpu)
                    timing.wall.append(time.perf_counter() - wall)
                timing.minor_faults += minor_page_faults() - faults_before
    return timings


def summarize(seconds: list[float]) -> tuple[float, float]:
    """Median and inter-quartile range, in milliseconds."""
    quartiles = statistics.quantiles(seconds, n=4, method="inclusive")
    return statistics.median(seconds) * 1e3, (quartiles[2] - quartiles[0]) * 1e3
