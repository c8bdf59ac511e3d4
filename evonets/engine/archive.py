"""Append-only JSON-lines records that survive `kill -9`.

Every record is one line, written with one `write`, flushed and `fsync`ed before the call returns, so a finished
evaluation is on disk before the optimizer hears of it. A kill can at worst leave a partial last line; the next
append starts on a fresh line and reading skips the torn one, so nothing acknowledged is lost.

The search writes two files of these: the run's `archive.jsonl` (every ask, result and latency measurement, in
order) and a fitness cache shared across runs (per supernet and validation data).
"""

from __future__ import annotations

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
        if not self.path.is_file():
            return
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:  # a record torn by a kill mid-write: it was never acknowledged
                    logger.warning("%s: skipping a torn record (%d characters)", self.path, len(line))

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


__all__ = ["JsonlArchive", "write_json_atomic"]
