"""The search run: distill (if asked) -> evolution with the DMMPE pool -> measured front -> run folder.

`run(config)` is the whole run (`search/run.py` is its command line):

1. the supernet: `config.supernet`, or the `distill:` section trained first (its finished output is reused);
2. the run folder's `run.json` pins what results depend on (space, supernet weights and data, latency device
   fingerprint, objectives, reference point); a restart with the same settings resumes, a different one is refused;
3. latency: the per-block look-up table for this device and space (built once, cached), or measurement;
4. the evolution loop on rank 0: keep every worker busy (ask as soon as one is free), tell results in the order
   they finish, append every ask and result to `archive.jsonl` (fsync) *before* telling the optimizer;
   architectures seen before (this run or the fitness cache of earlier runs) are told without evaluating;
5. the front: feasible non-dominated points; with the look-up table, front members are then timed for real (pool
   stopped, so timing is isolated) and the front recomputed until every member is measured;
6. outputs (`search.report`): `pareto.json` / `.csv` / `.png`, `models/<hash>/`, `summary.md`, the printed table.

Resume: the archive holds every ask and result. A restart tells the optimizer every archived result again, restores
its random state, re-submits the candidates that were asked but not finished (and only those), and carries on to the
same budget. Ranks other than 0 only evaluate (`search.pool.serve`).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from evonets.engine.archive import JsonlArchive
from search.evaluators import FitnessSpec, make_evaluator

from .config import SearchConfig
from .evolution import Evolution
from .latency import space_config_hash
from .pareto import add_to_front, hypervolume, pareto_indices

logger = logging.getLogger("search")

ARCHIVE = "archive.jsonl"
STATE = "search_state.json"
RUN_INFO = "run.json"


@dataclass
class SearchResult:
    """What a run produced (also in `<output_dir>/pareto.json`)."""

    output_dir: Path
    front: list[dict]
    records: list[dict]
    hypervolume: float
    evaluations: int
    seconds: float


def _say(message: str) -> None:
    logger.info(message)
    print(message, flush=True)


# The supernet -------------------------------------------------------------------------------------------------


def resolve_supernet(config: SearchConfig) -> Path:
    """The supernet folder: given, or the `distill:` section's output (trained, or resumed, when not finished with
    the same config)."""
    if config.supernet is not None:
        path = Path(config.supernet).expanduser()
        if not (path / "config.json").is_file():
            raise ValueError(
                f"Config field supernet = {config.supernet!r} is invalid: expected a folder written by "
                "EvoNetSupernet.save_pretrained (with config.json and model.safetensors)."
            )
        return path
    from distill.trainer import config_changes, train

    distill = config.distill
    output_dir = Path(distill.trainer.output_dir)
    supernet_dir = output_dir / "supernet"
    finished = (supernet_dir / "distill_summary.json").is_file()
    if finished and not config_changes(output_dir / "config.yaml", distill):
        _say(f"distill: reusing the finished supernet {supernet_dir}")
        return supernet_dir
    return Path(train(distill).supernet_dir)


# Objectives ---------------------------------------------------------------------------------------------------


def objectives_of(metrics: dict, latency_ms: float) -> dict[str, float]:
    return {
        "error": 1.0 - metrics["accuracy"],
        "latency_ms": float(latency_ms),
        "macs": float(metrics["macs"]),
        "params": float(metrics["params"]),
    }


class LatencyOracle:
    """Latency of architectures for the run: the look-up table's prediction, or a measurement (cached per hash)."""

    def __init__(self, config: SearchConfig, supernet, space):
        from .latency import LatencySettings, LatencyTable, device_fingerprint, fingerprint_key

        latency = config.latency
        self.mode = latency.mode
        self.settings = LatencySettings(
            **{name: getattr(latency, name) for name in LatencySettings.__dataclass_fields__}
        )
        self.supernet, self.space = supernet, space
        self.fingerprint = device_fingerprint(self.settings)
        self.key = fingerprint_key(self.fingerprint)
        self.measured: dict[str, dict] = {}
        self.table = None
        if self.mode == "lut":
            table_path = Path(latency.table_dir).expanduser() / f"{self.key}-{space_config_hash(space.config)}.json"
            self.table = LatencyTable.load_or_build(table_path, space.config, self.settings)

    def estimate(self, arch: dict) -> tuple[float, str]:
        """(milliseconds, source): a measurement when there is one, else the table (lut) or a new measurement."""
        digest = self.space.hash(arch)
        if digest in self.measured:
            return self.measured[digest]["median_ms"], "measured"
        if self.mode == "lut":
            return float(self.table.predict_ms(arch)), "lut"
        return self.measure(arch)["median_ms"], "measured"

    def measure(self, arch: dict) -> dict:
        from .latency import measure_architecture

        digest = self.space.hash(arch)
        if digest not in self.measured:
            self.measured[digest] = measure_architecture(self.supernet, arch, self.settings).to_dict()
        return self.measured[digest]


def reference_point(config: SearchConfig, space, oracle: LatencyOracle, supernet) -> dict[str, float]:
    """The fixed hypervolume reference: the configured one, else error 1 and 1.1x the largest architecture's
    latency / MACs / params (the largest over every block type the space allows)."""
    if config.search.reference_point is not None:
        return {name: float(config.search.reference_point[name]) for name in config.search.objectives}
    import torch

    from evonets.deploy.profiling import count_macs, count_parameters
    from evonets.models.configuration_evonet import BLOCK_TYPES

    worst = {"error": 1.0, "latency_ms": 0.0, "macs": 0.0, "params": 0.0}
    for block_type in BLOCK_TYPES:
        arch = space.largest(block_type)
        model = supernet.extract(arch)
        pixel_values = torch.zeros(1, supernet.config.num_channels, arch["resolution"], arch["resolution"])
        worst["macs"] = max(worst["macs"], 1.1 * int(count_macs(model, pixel_values)))
        worst["params"] = max(worst["params"], 1.1 * count_parameters(model))
        if "latency_ms" in config.search.objectives:
            worst["latency_ms"] = max(worst["latency_ms"], 1.1 * oracle.estimate(arch)[0])
    return {name: worst[name] for name in config.search.objectives}


# The run ------------------------------------------------------------------------------------------------------


def run(config: SearchConfig) -> SearchResult | None:
    """Run (or resume) a search; see the module docstring. Returns the result on rank 0, None on other ranks."""
    config.validate()
    from accelerate import PartialState

    supernet_dir = resolve_supernet(config)
    state = PartialState(cpu=True) if _launched_distributed() else None
    spec = FitnessSpec(
        supernet=str(supernet_dir),
        data=asdict(config.fitness_data),
        batch_size=config.fitness.batch_size,
    )
    make = functools.partial(make_evaluator, asdict(spec))
    if state is not None and not state.is_main_process:
        from .pool import serve

        serve(make, workers=config.pool.workers, threads_per_worker=config.fitness.num_threads)
        return None
    return _coordinate(config, supernet_dir, spec, make, distributed=state is not None and state.num_processes > 1)


def _launched_distributed() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _coordinate(config: SearchConfig, supernet_dir: Path, spec: FitnessSpec, make, distributed: bool) -> SearchResult:
    import torch
    from tqdm.auto import tqdm

    from evonets.models.supernet import EvoNetSupernet

    from .pool import EvaluationPool
    from .report import write_outputs

    start = time.perf_counter()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    supernet = EvoNetSupernet.from_pretrained(supernet_dir).eval()
    space = supernet.search_space
    objectives = list(config.search.objectives)
    constraints = config.constraints
    fitness_key = spec.key()

    oracle = LatencyOracle(config, supernet, space)
    saved_info = json.loads((output_dir / RUN_INFO).read_text()) if (output_dir / RUN_INFO).is_file() else {}
    # Fixed for the whole run: a resumed run keeps the reference point it started with.
    reference = saved_info.get("reference_point") or reference_point(config, space, oracle, supernet)
    info = {
        "space": space_config_hash(space.config),
        "fitness_key": fitness_key,
        "latency_fingerprint": oracle.fingerprint,
        "latency_mode": config.latency.mode,
        "objectives": objectives,
        "constraints": [str(c) for c in constraints],
        "reference_point": reference,
        "optimizer": config.search.optimizer,
        "seed": config.search.seed,
        "supernet": str(supernet_dir),
    }
    _check_same_run(output_dir / RUN_INFO, info)
    (output_dir / "config.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))

    archive = JsonlArchive(output_dir / ARCHIVE)
    cache = (
        JsonlArchive(Path(config.fitness.cache_dir).expanduser() / f"{fitness_key}.jsonl")
        if (config.fitness.cache_dir)
        else None
    )
    known: dict[str, dict] = {}  # hash -> metrics (fitness cache, then this run's archive)
    if cache is not None:
        for record in cache.records():
            known[record["hash"]] = record["metrics"]

    evolution = Evolution(
        space,
        config.search.optimizer,
        config.search.budget,
        config.search.seed,
        num_workers=config.pool.workers * (torch.distributed.get_world_size() if distributed else 1),
        num_objectives=len(objectives),
    )
    records, asked, measured = read_archive(archive)
    oracle.measured.update(measured)
    for record in records:
        known.setdefault(record["hash"], record["metrics"])
        # told as they were told before the kill: the objectives at the time, before later measurements
        evolution.remember(
            space.decode(record["encoding"]),
            _normalised(record["objectives"], objectives, reference),
            record["violations"],
        )
    apply_measurements(records, oracle.measured, constraints)
    num_asked = max([r["index"] + 1 for r in records] + [i + 1 for i in asked] + [0])
    if num_asked:
        evolution.load_state(output_dir / STATE)
        _say(f"resuming {output_dir}: {len(records)} results archived, {len(asked)} in flight at the kill")
    elif config.search.suggest_extremes:
        for arch in (space.smallest(), space.largest()):
            evolution.suggest(arch)

    budget = config.search.budget
    resubmit = [(index, space.decode(record["encoding"])) for index, record in sorted(asked.items())]
    in_flight: dict[str, tuple] = {}  # task id -> (index, candidate, arch)
    progress = tqdm(total=budget, initial=len(records), desc="search", disable=not config.progress_bar)
    evaluations_start, evaluated = time.perf_counter(), 0
    live_points = _PointsView(records, objectives)
    live_front = pareto_indices(live_points, _feasible(records))  # for the progress bar, updated per result
    ask_seconds = 0.0

    def finish(index: int, candidate, arch: dict, metrics: dict, extra: dict) -> None:
        latency_ms, source = oracle.estimate(arch)
        values = objectives_of(metrics, latency_ms)
        violations = [constraint.violation(values) for constraint in constraints]
        if "error" in extra:  # a failed evaluation is told as infeasible so the optimizer moves away from it
            violations = [max(v, 1.0) for v in violations] or [1.0]
        record = {
            "kind": "result",
            "index": index,
            "hash": space.hash(arch),
            "encoding": space.encode(arch),
            "metrics": metrics,
            "objectives": {name: values[name] for name in objectives},
            "latency": {"ms": latency_ms, "source": source, "fingerprint": oracle.key}
            | ({"iqr_ms": oracle.measured[space.hash(arch)]["iqr_ms"]} if source == "measured" else {}),
            "violations": violations,
            "feasible": not any(violations) and "error" not in extra,
            **extra,
        }
        archive.append(record)  # on disk before the optimizer hears of it
        records.append(record)
        if record["feasible"]:
            live_front[:] = add_to_front(live_front, live_points, len(records) - 1)
        evolution.tell(candidate, _normalised(record["objectives"], objectives, reference), violations)
        progress.update(1)
        if len(records) % config.search.save_every == 0:
            evolution.save_state(output_dir / STATE, num_asked)

    with EvaluationPool(
        make,
        workers=config.pool.workers,
        distributed=distributed,
        max_retries=config.pool.max_retries,
        heartbeat_timeout=config.pool.heartbeat_timeout,
        threads_per_worker=config.fitness.num_threads,
    ) as pool:
        # One candidate queued beyond the workers, so a worker that finishes takes the next one at once instead of
        # waiting for the optimizer's ask (tens of ms for nevergrad over a few dozen genes).
        capacity = pool.num_workers + 1
        while len(records) < budget:
            ready = []  # (index, candidate, arch, metrics, extra) to archive and tell
            # Fill every idle worker (pull-based: no generation barrier).
            while len(in_flight) + len(ready) < capacity and len(records) + len(in_flight) + len(ready) < budget:
                tick = time.perf_counter()
                if resubmit:
                    index, arch = resubmit.pop(0)
                    candidate = evolution.candidate(arch)
                else:
                    index = num_asked
                    candidate, arch = evolution.ask()
                    num_asked += 1
                    archive.append({"kind": "ask", "index": index, "encoding": space.encode(arch)})
                ask_seconds += time.perf_counter() - tick
                digest = space.hash(arch)
                if digest in known:  # seen before (this run or the fitness cache): no evaluation
                    ready.append((index, candidate, arch, known[digest], {"cached": True}))
                    continue
                in_flight[str(index)] = (index, candidate, arch)
                pool.submit(str(index), {"encoding": space.encode(arch)})
            results = pool.wait(timeout=1.0) if in_flight and not ready else []
            if oracle.mode == "measure" and (results or ready):
                results += pool.drain()  # time latency with no evaluation running beside it
            for task_id, result in results:
                index, candidate, arch = in_flight.pop(task_id)
                extra = {"worker": result.get("worker"), "eval_seconds": result.get("eval_seconds")}
                if "error" in result:
                    extra["error"] = result["error"]
                    metrics = {
                        "accuracy": 0.0,
                        "loss": None,
                        "macs": reference.get("macs", 0.0),
                        "params": reference.get("params", 0.0),
                    }
                    logger.warning("candidate %s failed: %s", space.encode(arch), result["error"])
                else:
                    metrics = {key: result[key] for key in ("accuracy", "loss", "macs", "params")}
                    known[space.hash(arch)] = metrics
                    if cache is not None:
                        cache.append({"hash": space.hash(arch), "encoding": space.encode(arch), "metrics": metrics})
                    evaluated += 1
                ready.append((index, candidate, arch, metrics, extra))
            for index, candidate, arch, metrics, extra in ready:
                tick = time.perf_counter()
                finish(index, candidate, arch, metrics, extra)
                ask_seconds += time.perf_counter() - tick
            if ready:
                front_size = len(live_front)
                elapsed = time.perf_counter() - evaluations_start
                progress.set_postfix(front=front_size, evals_per_s=f"{evaluated / max(elapsed, 1e-9):.2f}")
    progress.close()
    evolution.save_state(output_dir / STATE, num_asked)
    search_seconds = time.perf_counter() - evaluations_start

    front = _measured_front(records, objectives, constraints, oracle, space, archive)
    points = _points(records, objectives)
    volume = hypervolume([points[i] for i in front], [reference[name] for name in objectives])
    result = SearchResult(
        output_dir=output_dir,
        front=[records[i] for i in front],
        records=records,
        hypervolume=volume,
        evaluations=evaluated,
        seconds=time.perf_counter() - start,
    )
    write_outputs(
        result,
        config=config,
        supernet=supernet,
        supernet_dir=supernet_dir,
        info=info,
        oracle=oracle,
        timing={"search_seconds": search_seconds, "ask_tell_seconds": ask_seconds, "evaluated": evaluated},
    )
    return result


def _measured_front(records: list[dict], objectives: list[str], constraints, oracle, space, archive) -> list[int]:
    """The feasible front, with every member's latency measured (not predicted): time the members still on the
    table's estimate (the pool is closed, so nothing runs beside the timing), update their objectives and
    constraint checks, recompute, until every front member is measured."""
    while True:
        front = pareto_indices(_points(records, objectives), _feasible(records))
        unmeasured = [i for i in front if records[i]["latency"]["source"] != "measured"]
        if not unmeasured:
            return front
        for i in unmeasured:
            measurement = oracle.measure(space.decode(records[i]["encoding"]))
            archive.append({"kind": "latency", "hash": records[i]["hash"], "measurement": measurement})
            for record in records:
                if record["hash"] == records[i]["hash"]:
                    apply_latency(record, measurement, constraints)


def read_archive(archive: JsonlArchive) -> tuple[list[dict], dict[int, dict], dict[str, dict]]:
    """What `archive` holds: the results in order; the asks whose result never came (index -> ask record: in flight
    at a kill); and the latency measurements by architecture hash (front members measured after prediction, and the
    timings that `latency.mode: measure` put in the results themselves)."""
    results: list[dict] = []
    asked: dict[int, dict] = {}
    measured: dict[str, dict] = {}
    for record in archive.records():
        if record["kind"] == "ask":
            asked[record["index"]] = record
        elif record["kind"] == "result":
            asked.pop(record["index"], None)
            results.append(record)
            if record["latency"]["source"] == "measured":
                measured.setdefault(
                    record["hash"], {"median_ms": record["latency"]["ms"], "iqr_ms": record["latency"]["iqr_ms"]}
                )
        elif record["kind"] == "latency":
            measured[record["hash"]] = record["measurement"]
    return results, asked, measured


def apply_measurements(results: list[dict], measured: dict[str, dict], constraints) -> None:
    """`apply_latency` to every result whose latency was predicted and whose architecture was measured since."""
    for record in results:
        if record["hash"] in measured and record["latency"]["source"] != "measured":
            apply_latency(record, measured[record["hash"]], constraints)


def apply_latency(record: dict, measurement: dict, constraints) -> None:
    """Replace a result record's predicted latency by `measurement` (a `measure_latency` dict), recomputing its
    objectives and, for a successful evaluation, its constraint violations and feasibility."""
    record["latency"] = {
        "ms": measurement["median_ms"],
        "iqr_ms": measurement["iqr_ms"],
        "source": "measured",
        "fingerprint": record["latency"]["fingerprint"],
    }
    values = objectives_of(record["metrics"], measurement["median_ms"])
    record["objectives"] = {name: values[name] for name in record["objectives"]}
    if "error" not in record:
        record["violations"] = [constraint.violation(values) for constraint in constraints]
        record["feasible"] = not any(record["violations"])


class _PointsView:
    """`records` seen as objective vectors, without copying (the list grows during the run)."""

    def __init__(self, records: list[dict], objectives: list[str]):
        self.records, self.objectives = records, objectives

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> list[float]:
        return [self.records[index]["objectives"][name] for name in self.objectives]


def _points(records: list[dict], objectives: list[str]) -> list[list[float]]:
    return [[record["objectives"][name] for name in objectives] for record in records]


def _feasible(records: list[dict]) -> list[bool]:
    return [record["feasible"] for record in records]


def _normalised(values: dict[str, float], objectives: list[str], reference: dict[str, float]) -> list[float]:
    return [values[name] / reference[name] for name in objectives]


def _check_same_run(path: Path, info: dict) -> None:
    """Write `run.json`, or check that the run being resumed in this folder had the same settings."""
    if path.is_file():
        saved = json.loads(path.read_text())
        # The supernet's path may move; its weights are pinned by fitness_key.
        changed = sorted(
            key for key in info.keys() | saved.keys() if key != "supernet" and saved.get(key) != info.get(key)
        )
        if changed:
            raise ValueError(
                f"Config field output_dir = {str(path.parent)!r} holds a search run with different {changed}; "
                "expected the same settings to resume it, or a new output_dir."
            )
        return
    path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


__all__ = [
    "SearchResult",
    "apply_latency",
    "apply_measurements",
    "objectives_of",
    "read_archive",
    "reference_point",
    "resolve_supernet",
    "run",
]
