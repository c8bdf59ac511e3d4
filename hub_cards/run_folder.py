"""A search run folder, read as files: everything a card says comes from here.

`load_run(run_dir)` reads what `search/report.py` and `search/runner.py` wrote (`run.json`, `config.yaml`,
`pareto.json`, `archive.jsonl`, `standalone_check.json`, `models/<hash>/search_result.json`) and what sits beside
the supernet the run searched: its `config.json` (the search space), and when `distill/` trained it, its
`distill_summary.json`, the distillation's `train_log.jsonl` and the teacher folder (`config.json`,
`teacher_metrics.json`). Missing optional files leave their fields `None`; a card then says "not recorded".

Paths recorded in a run (the supernet, the teacher) may be relative to the folder the run was started from, or
point into a folder that was copied elsewhere: `locate` tries them as they are, then against each ancestor of an
anchor folder (the run folder for the supernet, the supernet folder for the teacher).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from evonets.engine.archive import JsonlArchive

logger = logging.getLogger(__name__)

RANK_CHECK = "rank_check.json"


def locate(text: str | None, anchors: list[Path]) -> Path | None:
    """The existing path `text` names: as given (absolute, or relative to the working folder), else relative to an
    anchor or one of its ancestors; None if none exists."""
    if not text:
        return None
    path = Path(text).expanduser()
    if path.exists():
        return path
    if not path.is_absolute():
        for anchor in anchors:
            for base in (anchor, *anchor.resolve().parents):
                if (base / path).exists():
                    return base / path
    return None


def read_json(path: Path) -> dict | None:
    """The JSON file at `path`, or None if there is none."""
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class RunFolder:
    """One search run folder and what it points to (see the module docstring)."""

    path: Path
    info: dict
    """`run.json`: space hash, fitness key, latency fingerprint and mode, objectives, constraints, reference point,
    optimizer, seed, supernet path."""
    config: dict
    """`config.yaml`: the run's merged config."""
    pareto: dict
    """`pareto.json`: the front, hypervolume, result counts, timing."""
    standalone_check: dict | None
    supernet_dir: Path | None
    distill_summary: dict | None
    """`<supernet>/distill_summary.json`: steps, validation accuracies, the whole distillation config."""
    train_start: dict | None
    """The `start` event of the distillation's `train_log.jsonl` (examples, parameters, device)."""
    teacher_dir: Path | None
    teacher_config: dict | None
    teacher_metrics: dict | None

    @property
    def front(self) -> list[dict]:
        return self.pareto["front"]

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def member(self, model_hash: str) -> dict:
        """The front member with this hash; `ValueError` listing the front's hashes otherwise."""
        for member in self.front:
            if member["hash"] == model_hash:
                return member
        raise ValueError(
            f"--model {model_hash!r} is not on the Pareto front of {self.path}: expected one of "
            f"{[member['hash'] for member in self.front]}."
        )

    def best_member(self) -> dict:
        """The most accurate front member (the one `standalone_check.json` reloads and tests)."""
        if not self.front:
            raise ValueError(f"the run folder {self.path} has an empty Pareto front: there is no model to publish.")
        return max(self.front, key=lambda member: member["metrics"]["accuracy"])

    def model_dir(self, member: dict) -> Path:
        folder = self.path / member.get("model_dir", f"models/{member['hash']}")
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"front member {member['hash']} has no model folder {folder} (config.json + model.safetensors): the run "
                "was made with export_front = false; run it again with --export_front true to write the models."
            )
        return folder

    def standalone_check_of(self, member: dict) -> dict | None:
        """The stand-alone check (validation and test accuracy after reloading) if it was made on this member."""
        check = self.standalone_check
        if check and Path(check["folder"]).name == member["hash"]:
            return check
        return None

    @property
    def data_config(self) -> dict | None:
        """The data the fitness was measured on: the run's `data:`, else its `distill.data`, else the supernet's."""
        if self.config.get("data"):
            return self.config["data"]
        if self.config.get("distill"):
            return self.config["distill"]["data"]
        if self.distill_summary:
            return self.distill_summary["config"]["data"]
        return None

    def records(self) -> list[dict]:
        """Every result of `archive.jsonl`, in order, with the latency measurements the run made of front members
        applied (objectives and feasibility), as the run's own `pareto.png` plots them."""
        from search.config import Constraint
        from search.runner import apply_measurements, read_archive

        constraints = [Constraint.parse(text) for text in self.info.get("constraints", [])]
        results, _, measured = read_archive(JsonlArchive(self.path / "archive.jsonl"))
        apply_measurements(results, measured, constraints)
        return results


def load_run(run_dir: str | Path, supernet_dir: str | Path | None = None) -> RunFolder:
    """Read the run folder `run_dir`; `supernet_dir` overrides the supernet folder recorded in `run.json`."""
    path = Path(run_dir).expanduser()
    for name in ("run.json", "pareto.json"):
        if not (path / name).is_file():
            raise ValueError(
                f"RUN_DIR {str(run_dir)!r} is not a search run folder: it has no {name} (written by search/run.py)."
            )
    info = json.loads((path / "run.json").read_text())
    config_path = path / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    if supernet_dir is not None:
        given, supernet_dir = supernet_dir, Path(supernet_dir).expanduser()
        if not (supernet_dir / "config.json").is_file():
            raise ValueError(f"--supernet-dir {str(given)!r} is not a saved supernet folder (it has no config.json).")
    else:
        supernet_dir = locate(info.get("supernet"), [path])
        if supernet_dir is None:
            logger.warning("the run's supernet %s is not found: cards will lack its recipe", info.get("supernet"))
    summary = read_json(supernet_dir / "distill_summary.json") if supernet_dir else None
    train_start = None
    if supernet_dir is not None and (supernet_dir.parent / "train_log.jsonl").is_file():
        events = JsonlArchive(supernet_dir.parent / "train_log.jsonl").records()
        train_start = next((event for event in events if event.get("event") == "start"), None)
    teacher_dir = locate(summary.get("teacher"), [supernet_dir]) if summary else None
    return RunFolder(
        path=path,
        info=info,
        config=config,
        pareto=json.loads((path / "pareto.json").read_text()),
        standalone_check=read_json(path / "standalone_check.json"),
        supernet_dir=supernet_dir,
        distill_summary=summary,
        train_start=train_start,
        teacher_dir=teacher_dir,
        teacher_config=read_json(teacher_dir / "config.json") if teacher_dir else None,
        teacher_metrics=read_json(teacher_dir / "teacher_metrics.json") if teacher_dir else None,
    )


@dataclass
class RankCheck:
    """A `rank_check.json` (written by `search/rank_check.py`) and whether it is about the run's own supernet."""

    path: Path
    report: dict
    same_supernet: bool


def find_rank_check(run: RunFolder, explicit: str | Path | None = None) -> RankCheck | None:
    """The rank check to show on the cards.

    `explicit` (a `rank_check.json`, or a folder holding one) is used whatever supernet it measured (the card says so
    when it is not the run's). Otherwise `<run>/rank_check.json` and `<supernet>/rank_check.json` are looked at, and
    only a check of the run's own supernet is taken. None: not measured.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        path = path / RANK_CHECK if path.is_dir() else path
        if not path.is_file():
            raise ValueError(
                f"--rank-check {str(explicit)!r} is not a rank_check.json (written by search/rank_check.py)."
            )
        candidates, required = [path], False
    else:
        candidates = [run.path / RANK_CHECK] + ([run.supernet_dir / RANK_CHECK] if run.supernet_dir else [])
        required = True
    for path in candidates:
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        checked = locate(report.get("supernet"), [path.parent])
        same = bool(run.supernet_dir and checked and checked.resolve() == run.supernet_dir.resolve())
        if same or not required:
            return RankCheck(path=path, report=report, same_supernet=same)
        logger.info("%s measured another supernet (%s): not shown", path, report.get("supernet"))
    return None


__all__ = ["RANK_CHECK", "RankCheck", "RunFolder", "find_rank_check", "load_run", "locate", "read_json"]
