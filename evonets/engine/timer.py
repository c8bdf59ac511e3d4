"""The one timer of the pipelines: wall-clock and CPU seconds of a stretch of work.

Latency measurement is not done here: it has its own clocks and conditions (`evonets.deploy.latency`).
"""

from __future__ import annotations

import resource
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self


def cpu_seconds(children: bool = False) -> float:
    """CPU time (user + system, all threads) of this process; with `children`, plus that of its ended children
    (e.g. a worker pool's processes)."""
    seconds = time.process_time()
    if children:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds += usage.ru_utime + usage.ru_stime
    return seconds


class Stopwatch:
    """Wall-clock and CPU seconds since it was started (or last restarted).

    >>> watch = Stopwatch()
    >>> watch.seconds >= 0.0
    True
    """

    def __init__(self, children: bool = False):
        self.children = children
        self.restart()

    def restart(self) -> float:
        """Start again from now; returns the seconds of the stretch that ended."""
        now = time.perf_counter()
        elapsed = now - getattr(self, "_start", now)
        self._start, self._cpu_start = now, cpu_seconds(self.children)
        return elapsed

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._start

    @property
    def cpu_seconds(self) -> float:
        return cpu_seconds(self.children) - self._cpu_start


class Accumulator:
    """Total wall-clock seconds spent inside `with accumulator:` blocks (e.g. the optimizer's share of a loop)."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self) -> Self:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds += time.perf_counter() - self._start


__all__ = ["Accumulator", "Stopwatch", "cpu_seconds"]
