"""Where the shared real sample data lives (never copied into the project: several licences are research-only)."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir() -> Path:
    """The real sample data (`coco128`, `ade20k_sample`, `bccd`, `rgbd_sample`, `llff_fern`).

    `$EVONETS_DATA_DIR` if set, else `../shared/data` beside the repository checkout. The data is never copied into
    the project (several licences are research-only).
    """
    if "EVONETS_DATA_DIR" in os.environ:
        return Path(os.environ["EVONETS_DATA_DIR"]).expanduser()
    return Path(__file__).resolve().parents[3] / "shared" / "data"


__all__ = ["shared_data_dir"]
