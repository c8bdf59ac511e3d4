"""Append-only JSON-lines records that survive `kill -9`.

Every record is one line, written with one `write`, flushed and `fsync`ed before the call returns, so a finished
evaluation is on disk before the optimizer hears of it. A kill can at worst leave a partial last line; the next
append starts on a fresh line and reading skips the torn one, so nothing acknowledged is lost.

The search writes two files of these: the run's `archive.jsonl` (every ask, result and latency measurement, in
order) and a fitness cache shared across runs (per supernet and validation data). A line that is not a JSON object
(a torn write, or text added by hand) is skipped with a warning naming the file and the line; what a record must
hold is its reader's to check.

`locked_folder` keeps a second process from writing a folder at the same time: an `fcntl.flock` on a lock file in
it, which the kernel releases when the holding process ends, however it ends (`kill -9` included), so a killed run
never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


class JsonlArchive:
    """Append-only records in `path` (created with its folder on first append)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def records(self) -> Iterator[dict]:
        """Every complete record, in order (a torn last line from a kill is skipped)."""
        for _, record in self.numbered_records():
            yield record

    def numbered_records(self) -> Iterator[tuple[int, dict]]:
        """(line number from 1, record) of every complete record, in order; a line that is not a JSON object (a
        record torn by a kill, or text added by hand) is skipped with a warning naming the file and the line."""
        if not self.path.is_file():
            return
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a record torn by a kill mid-write: it was never acknowledged
                    logger.warning(
                        "%s, line %d: skipping a torn record (%d characters of invalid JSON)",
                        self.path,
                        number,
                        len(line),
                    )
                    continue
                if not isinstance(record, dict):
                    logger.warning(
                        "%s, line %d: skipping a line that is not a record (JSON %s, not an object)",
                        self.path,
                        number,
                        "null" if record is None else type(record).__name__,
                    )
                    continue
                yield number, record

    def append(self, record: dict) -> None:
        self.append_many([record])

    def append_many(self, records: list[dict]) -> None:
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
        with open(self.path, "a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:  # after a torn line, start on a new one
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    text = "\n" + text
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())


def write_json_atomic(path: str | Path, value, indent: int | None = None) -> None:
    """Write `value` as JSON so that a reader (or the next run after a kill) sees the old file or the new one, never
    half of one: a temporary file beside it, fsynced, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=indent)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock (see `locked_folder`)."""


@contextlib.contextmanager
def locked_folder(folder: str | Path, name: str = ".lock") -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (created if missing) for the duration of the block; yields the lock file.

    The lock is an `fcntl.flock` on `folder/name`, which holds the holder's process id. It is released on leaving the
    block and, by the kernel, whenever the process ends (`kill -9` included): the file itself may stay, and means
    nothing without a live holder. Raises `FolderLockedError` at once, naming the folder and the holder's process id,
    when another process (or another block of this one) holds it. The descriptor is not inherited by processes
    started with `exec` (`spawn` workers, subprocesses).
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held elsewhere
        holder = os.pread(descriptor, 64, 0).decode("utf-8", errors="replace").strip()
        os.close(descriptor)
        raise FolderLockedError(
            f"{folder} is being written by another run (process {holder or 'unknown'}, holding the lock {path}): "
            "two runs must not write one folder at once. Wait for that run to end or stop it (a killed run releases "
            "the lock), or use another folder."
        ) from None
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(descriptor)  # releases the lock


__all__ = ["FolderLockedError", "JsonlArchive", "locked_folder", "write_json_atomic"]
