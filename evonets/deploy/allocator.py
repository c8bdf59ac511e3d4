"""glibc malloc's treatment of freed memory, on which CPU latency depends: keep it, and say whether it is kept.

By default glibc serves allocations above a (self-adjusting) threshold with fresh `mmap`s and unmaps them on free, so
a network whose temporaries are large re-faults their pages on every call (~800 minor page faults per call for the
smallest 224 px EvoNet; ~8k for PVTv2-b0, ~10 ms of its ~30 ms), and how many depends on what ran before in the
process. `keep_freed_memory` raises `M_MMAP_THRESHOLD` to its maximum (32 MiB) and `M_TRIM_THRESHOLD` to 1 GiB, so
that every network reuses its memory, as jemalloc and tcmalloc, usual for CPU inference, do. It holds for the rest of
the process: glibc has no way to read the thresholds back, so nothing can restore them.

The latency measurement applies it (`evonets.deploy.latency.prepare_process`); the device fingerprint only reads
`freed_memory_kept` and `can_keep_freed_memory`, which change nothing.
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from <malloc.h>
_kept = False  # whether `keep_freed_memory` has told glibc to keep freed memory in this process


def can_keep_freed_memory() -> bool:
    """Whether this process runs on glibc, whose `mallopt` `keep_freed_memory` calls (asked of `confstr`, which
    loads nothing)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr (Windows), or no such name (not glibc)
        return False


def freed_memory_kept() -> bool:
    """Whether `keep_freed_memory` has made glibc keep freed memory in this process."""
    return _kept


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for the rest of the process (see the module docstring); return whether
    it does (False where the C library is not glibc). Done once: later calls only return the answer."""
    global _kept
    if not _kept and can_keep_freed_memory():
        libc = ctypes.CDLL("libc.so.6")
        _kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _kept


__all__ = ["can_keep_freed_memory", "freed_memory_kept", "keep_freed_memory"]
