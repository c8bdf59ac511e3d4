"""The reader of a search run folder: its file names, its records, and the front plot, for the search and its readers.

A run folder (`SearchConfig.output_dir`) holds what `search.runner` and `search.report` write:

- `run.json`: what the results depend on (space, fitness key, latency fingerprint and mode, objectives, constraints,
  reference point, optimizer, seed, supernet path); `config.yaml`: the run's merged config;
- `archive.jsonl`: every ask, result and latency measurement, in order (`read_archive` replays it);
- `search_state.json`: the optimizer's random state (resume);
- `pareto.json` / `.csv` / `.png`, `standalone_check.json`, `summary.md`, `models/<hash>/` (with `search_result.json`).

A result record carries its objectives (`objectives_of` its metrics and latency), its constraint violations
(`Constraint`) and whether it is feasible. Front members predicted by the latency table are measured at the end of a
run; `apply_measurements` puts those measurements into the records as the run did, so every reader sees the same
front and plot.

`load_run(run_dir)` reads a finished run and what it points to: the supernet's folder (its `config.json` is the
search space) and, when `distill/` trained it, its `distill_summary.json`, the distillation's `train_log.jsonl` and the
teacher folder (`config.json`, `teacher_metrics.json`); `find_rank_check` finds a `rank_check.json` of its supernet.
Missing optional files leave their fields `None`. Paths recorded in a run (the supernet, the teacher) may be relative
to the folder the run was started from, or point into a folder that was copied elsewhere: `locate` tries them as they
are, then against each ancestor of an anchor folder (the run folder for the supernet, the supernet folder for the
teacher).

Damaged or tampered folders. `read_archive` skips a line that is not a well-formed record (and a second result of
one index) with a warning naming the file and the line: the run never writes such a line, and a skipped result's
candidate stays in flight, so a resume evaluates it again and nothing acknowledged is lost. A JSON file that does not
parse (`read_json`, `read_search_state`) is a `ValueError` naming it and saying what to do. Every path made from a
run folder's files stays inside it: an architecture hash must be the search space's (`HASH_PATTERN`) before it
becomes `models/<hash>`, and `inside` refuses a path (`pareto.json`'s `model_dir`, a symlink) that resolves
elsewhere, so neither the search nor `hub_cards` ever writes outside the run folder. While a run writes the folder
it holds `RUN_LOCK` (`evonets.engine.archive.locked_folder`).

This module is what `hub_cards` knows of `search`: it imports nothing of the search's machinery (no torch, no
nevergrad, no distill).
"""

from __future__ import annotations

import json
import logging
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from evonets.engine.archive import JsonlArchive

logger = logging.getLogger(__name__)

ARCHIVE = "archive.jsonl"
STATE = "search_state.json"
RUN_INFO = "run.json"
CONFIG = "config.yaml"
PARETO = "pareto.json"
PARETO_CSV = "pareto.csv"
PLOT = "pareto.png"
SUMMARY = "summary.md"
STANDALONE_CHECK = "standalone_check.json"
SEARCH_RESULT = "search_result.json"
MODELS = "models"
RANK_CHECK = "rank_check.json"
RUN_LOCK = ".lock"
"""The lock file a run holds while it writes the folder (`evonets.engine.archive.locked_folder`)."""

HASH_PATTERN = re.compile(r"[0-9a-f]{12}")
"""An architecture's hash, as `SearchSpace.hash` makes it: the first 12 hex digits of its encoding's SHA-256."""

_REMEDIES = {
    RUN_INFO: (
        "it pins the settings the archived results depend on. Restore it, or delete it to pin the folder to the "
        "settings of the next run (only if they are this run's), or choose a new output_dir"
    ),
    STATE: (
        f"it holds the optimizer's random state. Delete it to resume from {ARCHIVE} with a fresh random state: no "
        "result is lost, but the rest of the search will not be the one an uninterrupted run would have made"
    ),
    PARETO: (
        f"it is written at the end of a search. Run the search again with the same command and output_dir: it "
        f"resumes from {ARCHIVE} without evaluating again and rewrites it"
    ),
}

OBJECTIVES = ("error", "latency_ms", "macs", "params")
"""What the search can minimise: validation error (1 - accuracy), latency in ms, MACs, parameters."""

_COMPARISONS = {"<=": operator.le, "<": operator.lt}
_CONSTRAINT = re.compile(r"^\s*([a-z_]+)\s*(<=|<)\s*([0-9.eE+-]+)\s*$")


# Paths from a run folder's files -------------------------------------------------------------------------------


def check_hash(value, where: str) -> str:
    """`value` if it is an architecture hash (`HASH_PATTERN`); `ValueError` naming `where` (the file and field) else."""
    if not isinstance(value, str) or not HASH_PATTERN.fullmatch(value):
        raise ValueError(
            f"{where} has hash {value!r}, which is not an architecture hash (12 lowercase hex digits, as "
            "SearchSpace.hash makes them): the file is damaged or was edited; it is not used as a folder name."
        )
    return value


def inside(run_dir: str | Path, relative, where: str) -> Path:
    """`run_dir / relative`, checked to resolve (symlinks followed) inside the run folder `run_dir`; `ValueError`
    naming `where` (the file and field the path came from) otherwise."""
    run_dir = Path(run_dir)
    if not isinstance(relative, (str, Path)) or not str(relative):
        raise ValueError(f"{where} is {relative!r}: expected a path relative to the run folder {run_dir}.")
    path = run_dir / relative
    root = run_dir.resolve()
    if not path.resolve().is_relative_to(root):
        raise ValueError(
            f"{where} is {str(relative)!r}, which resolves to {path.resolve()}, outside the run folder {root}: "
            "paths of a run folder must stay inside it (the file is damaged or was edited); nothing was written there."
        )
    return path


def model_folder(run_dir: str | Path, model_hash, where: str) -> Path:
    """`<run_dir>/models/<hash>`, with the hash and the folder checked (`check_hash`, `inside`)."""
    return inside(run_dir, f"{MODELS}/{check_hash(model_hash, where)}", where)


# Result records -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constraint:
    """An upper bound on one objective, parsed from text such as `"latency_ms <= 20"`."""

    objective: str
    comparison: str
    bound: float

    @classmethod
    def parse(cls, text: str, where: str = "search.constraints") -> Constraint:
        match = _CONSTRAINT.match(text) if isinstance(text, str) else None
        if match is None or match.group(1) not in OBJECTIVES:
            raise ValueError(
                f"Config field {where} has {text!r}, which is invalid: expected '<objective> <= <number>' (or '<') "
                f"with objective one of {list(OBJECTIVES)}, e.g. 'latency_ms <= 20'."
            )
        try:
            bound = float(match.group(3))
        except ValueError:
            raise ValueError(f"Config field {where} has {text!r}: {match.group(3)!r} is not a number.") from None
        return cls(match.group(1), match.group(2), bound)

    def violation(self, objectives: dict[str, float]) -> float:
        """How far `objectives` break the bound (0 when satisfied; nevergrad's `constraint_violation` convention)."""
        value = objectives[self.objective]
        if _COMPARISONS[self.comparison](value, self.bound):
            return 0.0
        return max(value - self.bound, 1e-12)

    def __str__(self) -> str:
        return f"{self.objective} {self.comparison} {self.bound:g}"


def objectives_of(metrics: dict, latency_ms: float) -> dict[str, float]:
    """Every objective of a result: error (from its accuracy) and its latency, and MACs and parameters when its
    evaluator counts them (a supernet's does; a benchmark table's look-up gives accuracy only)."""
    values = {"error": 1.0 - metrics["accuracy"], "latency_ms": float(latency_ms)}
    values.update({name: float(metrics[name]) for name in ("macs", "params") if name in metrics})
    return values


def measured_latency(measurement: dict, fingerprint_key: str) -> dict:
    """A result record's `latency` from a measurement (a `measure_latency` dict): the median and inter-quartile range
    in milliseconds, with the measurement's spread and stability flag (None / True in records older than them)."""
    return {
        "ms": measurement["median_ms"],
        "iqr_ms": measurement["iqr_ms"],
        "spread": measurement.get("spread"),
        "stable": measurement.get("stable", True),
        "source": "measured",
        "fingerprint": fingerprint_key,
    }


def apply_latency(record: dict, measurement: dict, constraints: Sequence[Constraint]) -> None:
    """Replace a result record's predicted latency by `measurement` (a `measure_latency` dict), recomputing its
    objectives and, for a successful evaluation, its constraint violations and feasibility."""
    record["latency"] = measured_latency(measurement, record["latency"]["fingerprint"])
    values = objectives_of(record["metrics"], measurement["median_ms"])
    record["objectives"] = {name: values[name] for name in record["objectives"]}
    if "error" not in record:
        record["violations"] = [constraint.violation(values) for constraint in constraints]
        record["feasible"] = not any(record["violations"])


def apply_measurements(results: list[dict], measured: dict[str, dict], constraints: Sequence[Constraint]) -> None:
    """`apply_latency` to every result whose latency was predicted and whose architecture was measured since."""
    for record in results:
        if record["hash"] in measured and record["latency"]["source"] != "measured":
            apply_latency(record, measured[record["hash"]], constraints)


@dataclass
class ArchiveReplay:
    """What an `archive.jsonl` holds (see `read_archive`)."""

    results: list[dict] = field(default_factory=list)
    """The result records, in order, as they were told to the optimizer (latency measurements not applied)."""
    asked: dict[int, dict] = field(default_factory=dict)
    """The asks whose result never came (index -> ask record): in flight at a kill."""
    measured: dict[str, dict] = field(default_factory=dict)
    """Latency measurements by architecture hash: front members measured after prediction, and the timings that
    `latency.mode: measure` put in the results themselves."""

    @property
    def num_asked(self) -> int:
        """Candidates asked so far (the next ask's index)."""
        return max([r["index"] + 1 for r in self.results] + [i + 1 for i in self.asked] + [0])


def read_archive(path: str | Path, hash_of=None) -> ArchiveReplay:
    """Replay the archive at `path` (a missing file is an empty archive).

    A line that is not a well-formed record, and a result of an index already read, are skipped with a warning naming
    the file and the line (see the module docstring). `hash_of` (encoding -> hash; the resume passes the search
    space's) also skips a record whose encoding is not an architecture of the space, and a result whose hash is not
    its encoding's (so it never becomes a model folder).
    """
    replay = ArchiveReplay()
    told: set[int] = set()
    for number, record in JsonlArchive(path).numbered_records():
        problem = _record_problem(record, hash_of)
        if problem is None and record["kind"] == "result" and record["index"] in told:
            problem = f"a second result of index {record['index']} (counted once: the first is kept)"
        if problem is not None:
            logger.warning("%s, line %d: skipping %s", path, number, problem)
            continue
        if record["kind"] == "ask":
            replay.asked[record["index"]] = record
        elif record["kind"] == "result":
            told.add(record["index"])
            replay.asked.pop(record["index"], None)
            replay.results.append(record)
            if record["latency"]["source"] == "measured":
                replay.measured.setdefault(
                    record["hash"], {"median_ms": record["latency"]["ms"], "iqr_ms": record["latency"]["iqr_ms"]}
                )
        elif record["kind"] == "latency":
            replay.measured[record["hash"]] = record["measurement"]
    return replay


_FIELDS = {
    "ask": {"index": int, "encoding": str},
    "result": {
        "index": int,
        "hash": str,
        "encoding": str,
        "metrics": dict,
        "objectives": dict,
        "latency": dict,
        "violations": list,
        "feasible": bool,
    },
    "latency": {"hash": str, "measurement": dict},
}
_NUMBERS = {
    "metrics": ("accuracy",),  # and the MACs and parameters a result has or is ranked by (`_record_problem`)
    "latency": ("ms",),
    "measurement": ("median_ms", "iqr_ms"),
}


def _record_problem(record: dict, hash_of=None) -> str | None:
    """What makes `record` not an archive record (None if it is one): its kind, its fields and their types."""
    kind = record.get("kind")
    if kind not in _FIELDS:
        return f"a line that is not a record (kind {kind!r}; expected one of {sorted(_FIELDS)})"
    for name, expected in _FIELDS[kind].items():
        value = record.get(name)
        if not isinstance(value, expected) or (expected is int and (isinstance(value, bool) or value < 0)):
            return f"a malformed {kind} record (field {name!r} is {value!r}, expected {expected.__name__})"
    for name, keys in _NUMBERS.items():
        fields = record.get(name, {})
        for key in keys if name in record else ():
            if isinstance(fields.get(key), bool) or not isinstance(fields.get(key), (int, float)):
                return f"a malformed {kind} record (field {name}.{key} is {fields.get(key)!r}, expected a number)"
    if kind == "result":
        for name in ("macs", "params"):
            value = record["metrics"].get(name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if (name in record["metrics"] or name in record["objectives"]) and not number:
                return f"a malformed result record (field metrics.{name} is {value!r}, expected a number)"
        source = record["latency"].get("source")
        if not isinstance(source, str):
            return "a malformed result record (field latency.source is missing)"
        iqr_ms = record["latency"].get("iqr_ms")
        if source == "measured" and (isinstance(iqr_ms, bool) or not isinstance(iqr_ms, (int, float))):
            return f"a malformed result record (a measured latency with latency.iqr_ms {iqr_ms!r})"
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in record["objectives"].values()):
            return f"a malformed result record (field objectives is {record['objectives']!r}, expected numbers)"
    if kind in ("ask", "result") and hash_of is not None:
        try:
            expected_hash = hash_of(record["encoding"])
        except Exception as error:  # noqa: BLE001 (a damaged encoding fails in assorted ways)
            return f"an {kind} whose encoding {record['encoding']!r} is not an architecture of the space ({error})"
        if kind == "result" and record["hash"] != expected_hash:
            return (
                f"a result whose field 'hash' {record['hash']!r} is not its encoding's hash {expected_hash!r} "
                "(the candidate is evaluated again)"
            )
    return None


def read_results(path: str | Path, constraints: Sequence[Constraint]) -> list[dict]:
    """Every result of the archive at `path`, in order, with the latency measurements of the run applied (objectives
    and feasibility), as the run's own front and plot have them."""
    replay = read_archive(path)
    apply_measurements(replay.results, replay.measured, constraints)
    return replay.results


# The front plot -----------------------------------------------------------------------------------------------


def plot_front(
    path: str | Path,
    records: Sequence[dict],
    front: Sequence[int],
    objectives: Sequence[str],
    constraints: Sequence[Constraint] = (),
    title: str = "",
    highlight: int | None = None,
    highlight_label: str = "this model",
) -> Path:
    """The run's Pareto plot, as PNG: every result on (latency, or the first other objective; error), infeasible ones
    greyed, the front (indices into `records`) highlighted and joined, and a dashed line for each constraint on either
    axis; result `highlight`, if given, is drawn as a large star labelled `highlight_label` (a model card marks its
    model so)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = "latency_ms" if "latency_ms" in objectives else next(name for name in objectives if name != "error")
    y = "error"
    points = [record["objectives"] for record in records]
    feasible = [record["feasible"] for record in records]
    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    if highlight is not None:
        axes.scatter(
            [points[highlight][x]],
            [points[highlight][y]],
            s=260,
            marker="*",
            c="gold",
            edgecolors="black",
            zorder=4,
            label=highlight_label,
        )
    ok = [i for i in range(len(points)) if feasible[i] and i not in set(front)]
    bad = [i for i in range(len(points)) if not feasible[i]]
    if bad:
        axes.scatter(
            [points[i][x] for i in bad], [points[i][y] for i in bad], s=14, c="0.75", label="violates a constraint"
        )
    if ok:
        axes.scatter(
            [points[i][x] for i in ok], [points[i][y] for i in ok], s=14, c="tab:blue", alpha=0.6, label="evaluated"
        )
    if front:
        _draw_front(axes, [points[i] for i in front], x, y)
    for constraint in constraints:
        if constraint.objective == x:
            axes.axvline(constraint.bound, ls="--", c="black", lw=1, label=str(constraint))
        elif constraint.objective == y:
            axes.axhline(constraint.bound, ls="--", c="black", lw=1, label=str(constraint))
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path


def _draw_front(axes, members: list[dict[str, float]], x: str, y: str) -> None:
    """The front members, and the 2-D staircase of those that are also non-dominated in (`x`, `y`)."""
    ordered = sorted(members, key=lambda point: (point[x], point[y]))
    axes.scatter(
        [point[x] for point in ordered],
        [point[y] for point in ordered],
        s=40,
        c="tab:red",
        edgecolors="black",
        zorder=3,
        label=f"Pareto front ({len(members)})",
    )
    best, steps = float("inf"), []
    for point in ordered:
        if point[y] < best:
            best = point[y]
            steps.append(point)
    axes.step([p[x] for p in steps], [p[y] for p in steps], where="post", c="tab:red", lw=1)


# A finished run ------------------------------------------------------------------------------------------------


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
    """The JSON object in the file at `path`, or None if there is none; a file that does not parse, or holds something
    else than an object, is a `ValueError` naming it and saying what to do (for the run folder's own files)."""
    path = Path(path)
    if not path.is_file():
        return None
    remedy = _REMEDIES.get(path.name, "restore it, or delete it if it is optional")
    try:
        value = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): the file is damaged; {remedy}.") from None
    if not isinstance(value, dict):  # a damaged file, like one that does not parse: a ValueError
        raise ValueError(  # noqa: TRY004
            f"{path} holds {_json_kind(value)}, expected a JSON object: the file is damaged; {remedy}."
        )
    return value


def _json_kind(value) -> str:
    """What a JSON value is, in JSON's words ("an array", "null", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    kinds = {list: "an array", str: "a string", int: "a number", float: "a number", dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


def read_search_state(path: Path) -> dict | None:
    """The optimizer state file (`search_state.json`: `asked` and `random_state`) checked, or None if there is none;
    `ValueError` naming it and saying what to do when it is damaged."""
    state = read_json(path)
    if state is not None and (
        not isinstance(state.get("asked"), int)
        or not isinstance(state.get("random_state"), list)
        or len(state["random_state"]) != 5
    ):
        raise ValueError(
            f"{path} is not a search state (expected 'asked' and a 5-entry 'random_state'): the file is damaged; "
            f"{_REMEDIES[STATE]}."
        )
    return state


def is_run_folder(path: str | Path) -> bool:
    """Whether `path` holds a finished search run (its `pareto.json`)."""
    return (Path(path).expanduser() / PARETO).is_file()


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

    @property
    def objectives(self) -> list[str]:
        return self.info["objectives"]

    @property
    def constraints(self) -> list[Constraint]:
        return [Constraint.parse(text) for text in self.info.get("constraints", [])]

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
        """The member's model folder: `pareto.json`'s `model_dir` (relative to the run folder), else
        `models/<hash>`; both are checked to stay inside the run folder (`check_hash`, `inside`)."""
        where = f"{self.path / PARETO}: front member field"
        model_hash = check_hash(member.get("hash"), f"{where} 'hash'")
        if "model_dir" in member:
            folder = inside(self.path, member["model_dir"], f"{where} 'model_dir' of {model_hash}")
        else:
            folder = model_folder(self.path, model_hash, f"{where} 'hash'")
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"front member {member['hash']} has no model folder {folder} (config.json + model.safetensors): the run "
                "was made with export_front = false; run it again with --export_front true to write the models."
            )
        return folder

    def search_result(self, member: dict) -> dict | None:
        """The member's `models/<hash>/search_result.json` (its encoding, metrics, latency and fingerprint)."""
        return read_json(self.model_dir(member) / SEARCH_RESULT)

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
        return read_results(self.path / ARCHIVE, self.constraints)

    def plot(self, path: str | Path, member: dict) -> Path:
        """The run's Pareto plot (every result, the front, the constraints) with `member` starred, as PNG."""
        records = self.records()
        front_hashes = {other["hash"] for other in self.front}
        return plot_front(
            path,
            records,
            [i for i, record in enumerate(records) if record["hash"] in front_hashes and record["feasible"]],
            self.objectives,
            constraints=self.constraints,
            title=(
                f"{self.name}: {len(records)} results; Pareto front ({len(self.front)}) over "
                f"{', '.join(self.objectives)}"
            ),
            highlight=next(i for i, record in enumerate(records) if record["hash"] == member["hash"]),
            highlight_label=f"this model ({member['hash']})",
        )


def load_run(run_dir: str | Path, supernet_dir: str | Path | None = None) -> RunFolder:
    """Read the run folder `run_dir`; `supernet_dir` overrides the supernet folder recorded in `run.json`."""
    path = Path(run_dir).expanduser()
    for name in (RUN_INFO, PARETO):
        if not (path / name).is_file():
            raise ValueError(
                f"RUN_DIR {str(run_dir)!r} is not a search run folder: it has no {name} (written by search/run.py)."
            )
    info = read_json(path / RUN_INFO)
    config_path = path / CONFIG
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    supernet_dir = _supernet_dir(path, info, supernet_dir)
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
        pareto=read_json(path / PARETO),
        standalone_check=read_json(path / STANDALONE_CHECK),
        supernet_dir=supernet_dir,
        distill_summary=summary,
        train_start=train_start,
        teacher_dir=teacher_dir,
        teacher_config=read_json(teacher_dir / "config.json") if teacher_dir else None,
        teacher_metrics=read_json(teacher_dir / "teacher_metrics.json") if teacher_dir else None,
    )


def _supernet_dir(path: Path, info: dict, given: str | Path | None) -> Path | None:
    """The supernet folder: `given` (checked), else the one `run.json` records, found with `locate`."""
    if given is not None:
        supernet_dir = Path(given).expanduser()
        if not (supernet_dir / "config.json").is_file():
            raise ValueError(f"--supernet-dir {str(given)!r} is not a saved supernet folder (it has no config.json).")
        return supernet_dir
    supernet_dir = locate(info.get("supernet"), [path])
    if supernet_dir is None:
        logger.warning("the run's supernet %s is not found: cards will lack its recipe", info.get("supernet"))
    return supernet_dir


@dataclass
class RankCheck:
    """A `rank_check.json` (written by `search/rank_check.py`) and whether it is about the run's own supernet."""

    path: Path
    report: dict
    same_supernet: bool


def find_rank_check(run: RunFolder, explicit: str | Path | None = None) -> RankCheck | None:
    """The rank check of the run's supernet.

    `explicit` (a `rank_check.json`, or a folder holding one) is used whatever supernet it measured (`same_supernet`
    says whether it is the run's). Otherwise `<run>/rank_check.json` and `<supernet>/rank_check.json` are looked at,
    and only a check of the run's own supernet is taken. None: not measured.
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


__all__ = [
    "ARCHIVE",
    "CONFIG",
    "HASH_PATTERN",
    "MODELS",
    "OBJECTIVES",
    "PARETO",
    "PARETO_CSV",
    "PLOT",
    "RANK_CHECK",
    "RUN_INFO",
    "RUN_LOCK",
    "SEARCH_RESULT",
    "STANDALONE_CHECK",
    "STATE",
    "SUMMARY",
    "ArchiveReplay",
    "Constraint",
    "RankCheck",
    "RunFolder",
    "apply_latency",
    "apply_measurements",
    "check_hash",
    "find_rank_check",
    "inside",
    "is_run_folder",
    "load_run",
    "locate",
    "measured_latency",
    "model_folder",
    "objectives_of",
    "plot_front",
    "read_archive",
    "read_json",
    "read_results",
    "read_search_state",
]
