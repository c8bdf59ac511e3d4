"""Stable short identities of JSON-able values and of files: the keys of every cache and of every record that must
match across processes, machines and sessions.

An architecture's own identity is `SearchSpace.hash(arch)` (it lives with the search space in the models, so a saved
folder carries it); everything else that needs a key (a device fingerprint, a search space, a stand-alone recipe, a
fitness setting) takes it from `digest` here. Lengths are per caller, so that keys written before stay valid.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path


def digest(value, length: int = 12) -> str:
    """The first `length` hex digits of the SHA-256 of `value`'s canonical JSON (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()[:length]


def files_digest(paths: Iterable[str | Path], value=None, length: int = 16) -> str:
    """The first `length` hex digits of the SHA-256 of the files' bytes (in the given order), then of `value`'s
    canonical JSON when given: e.g. a supernet's weights together with the settings they are scored under."""
    hasher = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(chunk)
    if value is not None:
        hasher.update(json.dumps(value, sort_keys=True).encode())
    return hasher.hexdigest()[:length]


__all__ = ["digest", "files_digest"]
