"""What every benchmark script shares: the machine description, and writing its own section of docs/benchmarks.md.

Benchmark scripts run as `python bench/<name>.py`, so this module is importable as `_report`.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

import torch
import transformers

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


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
