"""The search run: distill (if asked) -> evolution with the DMMPE pool -> measured front -> run folder.

`run(config)` is the whole run (`search/run.py` is its command line):

1. the supernet: `config.supernet`, or the `distill:` section trained first (its finished output is reused);
2. the run folder's `run.json` pins what results depend on (space, supernet weights and data, latency device
   fingerprint, objectives, reference point); a restart with the same settings resumes, a different one is refused;
3. latency: the per-block look-up table for this device and space (built once, cached), or measurement;
4. the evolution loop on rank 0 (`SearchLoop`): keep every worker busy (ask as soon as one is free), tell results in
   the order they finish (or in ask order, `search.tell_order: ask`: deterministic, resume included), append every
   ask and result to `archive.jsonl` (fsync) *before* telling the optimizer;
   architectures seen before (this run or the fitness cache of earlier runs) are told without evaluating;
5. the front: feasible non-dominated points; with the look-up table, front members are then timed for real (pool
   stopped, so timing is isolated) and the front recomputed until every member is measured;
6. outputs (`search.report`): `pareto.json` / `.csv` / `.png`, `models/<hash>/`, `summary.md`, the printed table.

Resume: the archive holds every ask and result. A restart tells the optimizer every archived result again, restores
its random state, re-submits the candidates that were asked but not finished (and only those), and carries on to the
same budget. Ranks other than 0 only evaluate (`search.pool.serve`). The run folder's files and records, and their
reading back (here for resume, in `hub_cards` for the cards), are `search.run_folder`'s.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from evonets.engine import identity
from evonets.engine.archive import JsonlArchive, locked_folder
from evonets.engine.timer import Accumulator, Stopwatch
from search.evaluators import FitnessSpec, TableSpec, make_evaluator, make_table_evaluator

from .benchmark import BenchmarkTable
from .cell_space import CellSearchSpace
from .config import SearchConfig
from .evolution import Evolution
from .latency_table import space_config_hash
from .pareto import add_to_front, hypervolume, pareto_indices
from .run_folder import (
    ARCHIVE,
    CONFIG,
    RUN_INFO,
    RUN_LOCK,
    STATE,
    ArchiveReplay,
    Constraint,
    apply_latency,
    apply_measurements,
    measured_latency,
    objectives_of,
    read_archive,
    read_json,
    read_search_state,
)

logger = logging.getLogger("search")


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
    from distill import build_supernet

    return Path(build_supernet(config.distill, log=_say).supernet_dir)


# Latency and the hypervolume reference ------------------------------------------------------------------------


class LatencyOracle:
    """Latency of architectures for the run: the look-up table's prediction, or a measurement (cached per hash)."""

    def __init__(self, config: SearchConfig, supernet, space, run_info: dict | None = None):
        from evonets.deploy.fingerprint import device_fingerprint, fingerprint_key
        from evonets.deploy.latency import LatencySettings, prepare_process, reference_latency_ms

        from .latency_table import LatencyTable

        latency = config.latency
        self.mode = latency.mode
        self.settings = LatencySettings(
            **{name: getattr(latency, name) for name in LatencySettings.__dataclass_fields__}
        )
        self.supernet, self.space = supernet, space
        # Every run times latency (the table, or at least the front members at the end): set the process up for it
        # now, before the evaluation workers fork, so the whole run allocates under the measured allocator setting.
        prepare_process(self.settings)
        self.fingerprint = device_fingerprint(self.settings)
        if self.settings.reference and self.settings.reference_ms is None:
            # One unit for the whole run: the reference milliseconds it started with on this device (`run_info`, its
            # `run.json`), else this device's calibration; a recalibration between a kill and the resume changes
            # nothing.
            run_info = run_info or {}
            pinned = (
                run_info.get("latency_reference_ms")
                if run_info.get("latency_fingerprint") == self.fingerprint
                else None
            )
            self.settings.reference_ms = pinned or reference_latency_ms(self.settings)
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
        from .latency_table import measure_architecture

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

    supernet_dir = resolve_supernet(config) if config.benchmark is None else None
    state = PartialState(cpu=True) if _launched_distributed() else None
    if config.benchmark is None:
        spec = FitnessSpec(
            supernet=str(supernet_dir),
            data=asdict(config.fitness_data),
            batch_size=config.fitness.batch_size,
        )
        make = functools.partial(make_evaluator, asdict(spec))
    else:  # a tabular benchmark: the workers look cells up in the table (its fitness column only)
        benchmark = config.benchmark
        spec = TableSpec(benchmark.table, benchmark.fitness_column, benchmark.accuracy_scale)
        make = functools.partial(make_table_evaluator, asdict(spec))
    if state is not None and not state.is_main_process:
        from .pool import serve

        serve(make, workers=config.pool.workers, threads_per_worker=config.fitness.num_threads)
        return None
    return _coordinate(config, supernet_dir, spec, make, distributed=state is not None and state.num_processes > 1)


def _launched_distributed() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _coordinate(
    config: SearchConfig, supernet_dir: Path | None, spec: FitnessSpec | TableSpec, make, distributed: bool
) -> SearchResult:
    """Rank 0's run, holding the run folder's lock (`RUN_LOCK`) throughout: a second run on the same output_dir fails
    at once; the kernel releases the lock when this process ends, even on `kill -9`, so a restart resumes."""
    with locked_folder(config.output_dir, RUN_LOCK):
        return _coordinate_locked(config, supernet_dir, spec, make, distributed)


def _coordinate_locked(
    config: SearchConfig, supernet_dir: Path | None, spec: FitnessSpec | TableSpec, make, distributed: bool
) -> SearchResult:
    """Rank 0's run: pin the run folder, resume the optimizer from the archive, search, measure the front, report. A
    benchmark run differs only in its space (NAS-Bench-201 cells), its latency (the table's) and its report."""
    from evonets.models.supernet import EvoNetSupernet

    from .report import write_benchmark_outputs, write_outputs

    watch = Stopwatch()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if config.benchmark is None:
        supernet = EvoNetSupernet.from_pretrained(supernet_dir).eval()
        space = supernet.search_space
        oracle = LatencyOracle(config, supernet, space, read_json(output_dir / RUN_INFO))
        info = _pin_run(config, output_dir, supernet_dir, spec.key(), oracle, supernet)
    else:
        benchmark, supernet, space = config.benchmark, None, CellSearchSpace()
        oracle = BenchmarkTable(
            space, benchmark.table, benchmark.latency_column, benchmark.report_column, benchmark.accuracy_scale
        )
        info = _pin_benchmark_run(config, output_dir, spec.key(), oracle, space)
    cache, known = _open_cache(config, info["fitness_key"])
    evolution = Evolution(
        space,
        config.search.optimizer,
        config.search.budget,
        config.search.seed,
        num_workers=config.pool.workers * _world_size(distributed),
        num_objectives=len(config.search.objectives),
    )
    replay = _resume(config, output_dir, evolution, space, oracle, known, info["reference_point"])
    loop = SearchLoop(config, space, evolution, oracle, info["reference_point"], output_dir, cache, known, replay)
    loop.run(make, distributed)

    objectives, reference, records = loop.objectives, info["reference_point"], loop.records
    front = _measured_front(records, objectives, loop.constraints, oracle, space, loop.archive)
    points = _points(records, objectives)
    volume = hypervolume([points[i] for i in front], [reference[name] for name in objectives])
    result = SearchResult(
        output_dir=output_dir,
        front=[records[i] for i in front],
        records=records,
        hypervolume=volume,
        evaluations=loop.evaluated,
        seconds=watch.seconds,
    )
    timing = {"search_seconds": loop.seconds, "ask_tell_seconds": loop.ask_tell.seconds, "evaluated": loop.evaluated}
    if supernet is None:
        write_benchmark_outputs(result, config=config, info=info, table=oracle, timing=timing)
    else:
        write_outputs(
            result, config=config, supernet=supernet, supernet_dir=supernet_dir, info=info, oracle=oracle, timing=timing
        )
    return result


def _world_size(distributed: bool) -> int:
    import torch

    return torch.distributed.get_world_size() if distributed else 1


def _pin_run(config: SearchConfig, output_dir: Path, supernet_dir: Path, fitness_key: str, oracle, supernet) -> dict:
    """The run's `run.json` (what its results depend on: written, or checked against the run being resumed) and its
    `config.yaml`; returns the run info."""
    saved = read_json(output_dir / RUN_INFO) or {}  # a damaged run.json: a clear error naming it, first
    space = supernet.search_space
    info = {
        "space": space_config_hash(space.config),
        "fitness_key": fitness_key,
        "latency_fingerprint": oracle.fingerprint,
        "latency_mode": config.latency.mode,
        "latency_reference_ms": oracle.settings.reference_ms,
        "objectives": list(config.search.objectives),
        "constraints": [str(c) for c in config.constraints],
        "optimizer": config.search.optimizer,
        "seed": config.search.seed,
        "supernet": str(supernet_dir),
    }
    return _pin(config, output_dir, saved, info, lambda: reference_point(config, space, oracle, supernet))


def _pin_benchmark_run(config: SearchConfig, output_dir: Path, fitness_key: str, table, space) -> dict:
    """`_pin_run` of a benchmark run: the table's columns (`fitness_key`, the latency fingerprint) instead of a
    supernet, and the configured reference point or the table's default."""
    saved = read_json(output_dir / RUN_INFO) or {}
    objectives = list(config.search.objectives)
    info = {
        "space": identity.digest(space.identity()),
        "fitness_key": fitness_key,
        "latency_fingerprint": table.fingerprint,
        "latency_mode": table.mode,
        "objectives": objectives,
        "constraints": [str(c) for c in config.constraints],
        "optimizer": config.search.optimizer,
        "seed": config.search.seed,
        "supernet": None,
        "table": str(table.path),
    }
    reference = config.search.reference_point or table.reference_point(objectives)
    return _pin(config, output_dir, saved, info, lambda: {name: float(reference[name]) for name in objectives})


def _pin(config: SearchConfig, output_dir: Path, saved: dict, info: dict, new_reference) -> dict:
    """Write the run's `run.json` (`info` and the reference point), or check it against `saved` (the run.json of the
    run being resumed), and its `config.yaml`; returns the run info. `new_reference()`: a new run's reference point."""
    # Fixed for the whole run: a resumed run keeps the reference point it started with.
    info["reference_point"] = saved.get("reference_point") or new_reference()
    if _changed_settings(saved, info) and not _has_results(output_dir):
        # E.g. the first try stopped on a bad data section before any result: nothing depends on its settings.
        _set_aside_unfinished_start(output_dir)
        info["reference_point"] = new_reference()
    _check_same_run(output_dir / RUN_INFO, info)
    (output_dir / CONFIG).write_text(yaml.safe_dump(asdict(config), sort_keys=False))
    return info


def _open_cache(config: SearchConfig, fitness_key: str) -> tuple[JsonlArchive | None, dict[str, dict]]:
    """The fitness cache shared across runs (None when switched off, and for a benchmark, whose table is its own
    cache) and what it knows: hash -> metrics."""
    if not config.fitness.cache_dir or config.benchmark is not None:
        return None, {}
    cache = JsonlArchive(Path(config.fitness.cache_dir).expanduser() / f"{fitness_key}.jsonl")
    return cache, {record["hash"]: record["metrics"] for record in cache.records()}


def _resume(
    config: SearchConfig, output_dir: Path, evolution: Evolution, space, oracle, known: dict, reference: dict
) -> ArchiveReplay:
    """Replay the run folder's archive: tell the optimizer every archived result again, as it was told before the
    kill (the objectives at the time, before later measurements), and restore its random state; a new run instead
    suggests the space's extremes. The replayed results then get the measurements made since."""
    objectives = list(config.search.objectives)
    # Damaged lines, repeated results and results whose hash is not their encoding's are skipped (with a warning).
    replay = read_archive(output_dir / ARCHIVE, hash_of=lambda encoding: space.hash(space.decode(encoding)))
    oracle.measured.update(replay.measured)
    if config.search.tell_order == "ask":
        return replay  # SearchLoop replays the run's asks and tells in their order instead (`replay_in_ask_order`)
    for record in replay.results:
        known.setdefault(record["hash"], record["metrics"])
        evolution.remember(
            space.decode(record["encoding"]),
            _normalised(record["objectives"], objectives, reference),
            record["violations"],
        )
    apply_measurements(replay.results, oracle.measured, config.constraints)
    if replay.num_asked:
        read_search_state(output_dir / STATE)  # a damaged file: a clear error naming it, not the optimizer's
        evolution.load_state(output_dir / STATE)
        in_flight = len(replay.asked)
        _say(f"resuming {output_dir}: {len(replay.results)} results archived, {in_flight} in flight at the kill")
    elif config.search.suggest_extremes:
        for arch in (space.smallest(), space.largest()):
            evolution.suggest(arch)
    return replay


class SearchLoop:
    """Rank 0's evolution loop over the DMMPE pool (see the module docstring, step 4).

    Keeps every worker busy (asks as soon as one is free: no generation barrier), tells results in the order they
    finish (with `search.tell_order: ask`, in the order they were asked: see `in_tell_order`), and appends every ask
    and result to the archive before the optimizer hears of it. Architectures seen
    before (this run, or the fitness cache of earlier runs) are told from `known` without evaluating; candidates in
    flight at a kill are re-submitted under their index before anything new is asked.
    """

    def __init__(
        self,
        config: SearchConfig,
        space,
        evolution: Evolution,
        oracle: LatencyOracle,
        reference: dict[str, float],
        output_dir: Path,
        cache: JsonlArchive | None,
        known: dict[str, dict],
        replay: ArchiveReplay,
    ):
        self.config, self.space, self.evolution, self.oracle = config, space, evolution, oracle
        self.reference = reference
        self.objectives = list(config.search.objectives)
        self.constraints: list[Constraint] = config.constraints
        self.budget = config.search.budget
        self.archive, self.state_path = JsonlArchive(output_dir / ARCHIVE), output_dir / STATE
        self.cache, self.known = cache, known  # hash -> metrics (fitness cache, then this run's results)
        self.records = replay.results
        self.num_asked = replay.num_asked
        self.resubmit = [(index, space.decode(record["encoding"])) for index, record in sorted(replay.asked.items())]
        self.in_flight: dict[str, tuple] = {}  # task id -> (index, candidate, arch)
        # search.tell_order ask: results wait in `held` until every earlier ask is told, and at most `window` candidates
        # are asked and not told (fixed by the config, not by the workers alive, so that the asks are too)
        self.ask_order = config.search.tell_order == "ask"
        self.window = evolution.optimizer.num_workers + 1
        self.held: dict[int, tuple] = {}  # index -> (index, candidate, arch, metrics, extra)
        self.replayed: dict[int, object] = {}  # index -> the candidate the replay asked again, to re-submit
        if self.ask_order:
            self.replay_in_ask_order(replay)
        self.evaluated = 0  # evaluations this session (not told from the cache or the archive)
        self.ask_tell = Accumulator()  # the optimizer's and the bookkeeping's share of the loop
        self.seconds = 0.0  # the loop's wall-clock time, pool start and stop included
        self._points = _PointsView(self.records, self.objectives)
        self.live_front = pareto_indices(self._points, _feasible(self.records))  # for the progress bar
        self.progress = None

    def run(self, make, distributed: bool) -> None:
        """Evaluate candidates until the budget is spent, then save the optimizer's state."""
        from tqdm.auto import tqdm

        from .pool import EvaluationPool

        self.progress = tqdm(
            total=self.budget, initial=len(self.records), desc="search", disable=not self.config.progress_bar
        )
        watch = Stopwatch()
        pool_config = self.config.pool
        with EvaluationPool(
            make,
            workers=pool_config.workers,
            distributed=distributed,
            max_retries=pool_config.max_retries,
            heartbeat_timeout=pool_config.heartbeat_timeout,
            threads_per_worker=self.config.fitness.num_threads,
            bind_address=pool_config.bind_address,
        ) as pool:
            while len(self.records) < self.budget:
                self.step(pool, watch)
        self.progress.close()
        self.checkpoint()
        self.seconds = watch.seconds

    def step(self, pool, watch: Stopwatch) -> None:
        """Fill the idle workers, wait for results (at most a second), archive and tell what is ready."""
        ready = self.in_tell_order(self.dispatch(pool))
        results = pool.wait(timeout=1.0) if self.in_flight and not ready else []
        if self.oracle.mode == "measure" and (results or ready):
            results += pool.drain()  # time latency with no evaluation running beside it
        ready += self.in_tell_order([self.receive(task_id, result) for task_id, result in results])
        with self.ask_tell:
            for index, candidate, arch, metrics, extra in ready:
                self.tell(index, candidate, arch, metrics, extra)
        if ready:
            rate = self.evaluated / max(watch.seconds, 1e-9)
            self.progress.set_postfix(front=len(self.live_front), evals_per_s=f"{rate:.2f}")

    def dispatch(self, pool) -> list[tuple]:
        """Submit candidates until every worker has one and one more waits (so that a worker that finishes takes the
        next at once instead of waiting for the optimizer's ask); returns those seen before, ready to tell as
        (index, candidate, arch, metrics, extra)."""
        capacity = self.window if self.ask_order else pool.num_workers + 1
        ready = []
        while (queued := len(self.in_flight) + len(ready) + len(self.held)) < capacity and (
            len(self.records) + queued < self.budget
        ):
            with self.ask_tell:
                index, candidate, arch = self.ask()
            digest = self.space.hash(arch)
            if digest in self.known:  # seen before (this run or the fitness cache): no evaluation
                ready.append((index, candidate, arch, self.known[digest], {"cached": True}))
                continue
            self.in_flight[str(index)] = (index, candidate, arch)
            pool.submit(str(index), {"encoding": self.space.encode(arch)})
        return ready

    def ask(self) -> tuple[int, object, dict]:
        """(index, candidate, arch): a candidate in flight at the kill again, else a new ask (archived)."""
        if self.resubmit:
            index, arch = self.resubmit.pop(0)
            candidate = self.replayed.pop(index, None)  # tell_order ask: the candidate the replay asked again
            return index, self.evolution.candidate(arch) if candidate is None else candidate, arch
        index = self.num_asked
        candidate, arch = self.evolution.ask()
        self.num_asked += 1
        self.archive.append({"kind": "ask", "index": index, "encoding": self.space.encode(arch)})
        return index, candidate, arch

    def in_tell_order(self, ready: list[tuple]) -> list[tuple]:
        """What to tell now: `ready` as it is (tell_order arrival); with tell_order ask, the next result in ask order
        only (one a step, so that each tell is followed by the asks it allows), the others held back."""
        if not self.ask_order:
            return ready
        self.held.update((item[0], item) for item in ready)
        upcoming = len(self.records)  # results are told in index order, so this is the next index to tell
        return [self.held.pop(upcoming)] if upcoming in self.held else []

    def replay_in_ask_order(self, replay: ArchiveReplay) -> None:
        """Start or resume a tell_order ask run: a fresh optimizer repeats the archived asks and tells in the order the
        run made them (the suggestions, asks while fewer than `window` wait to be told, the next result in ask order,
        and so on), each ask giving the archived candidate again, so it ends in the state the killed run had. The
        candidates asked and not told are re-submitted (`replayed`); nothing comes from `search_state.json`."""
        results, output_dir = replay.results, str(self.state_path.parent)
        if [record["index"] for record in results] != list(range(len(results))):
            raise ValueError(
                f"Config field search.tell_order = 'ask' is invalid for output_dir = {output_dir!r}: its results are "
                "not the asks 0, 1, 2, ... in order (told in arrival order, or a result line skipped as damaged); "
                "expected search.tell_order = 'arrival' to resume it."
            )
        if self.config.search.suggest_extremes:
            for arch in (self.space.smallest(), self.space.largest()):
                self.evolution.suggest(arch)
        encodings = {record["index"]: record["encoding"] for record in [*results, *replay.asked.values()]}
        asked = told = 0
        while True:
            while asked - told < self.window and asked < replay.num_asked:
                candidate, arch = self.evolution.ask()
                if self.space.encode(arch) != encodings.get(asked):
                    raise ValueError(
                        f"Config field search.tell_order = 'ask' cannot resume output_dir = {output_dir!r}: the "
                        f"optimizer asks {self.space.encode(arch)} as candidate {asked}, the archive has "
                        f"{encodings.get(asked)}; expected the same search and pool settings (pool.workers, ranks) and "
                        "nevergrad version as the run had, or search.tell_order = 'arrival'."
                    )
                self.replayed[asked] = candidate
                asked += 1
            if told == len(results):
                break
            record = results[told]
            self.known.setdefault(record["hash"], record["metrics"])
            normalised = _normalised(record["objectives"], self.objectives, self.reference)
            self.evolution.tell(self.replayed.pop(told), normalised, record["violations"])
            told += 1
        apply_measurements(results, self.oracle.measured, self.constraints)  # after the tells, as the run had them
        if replay.num_asked:
            _say(f"resuming {output_dir}: {len(results)} results archived, {len(replay.asked)} in flight at the kill")

    def receive(self, task_id: str, result: dict) -> tuple:
        """A worker's result as (index, candidate, arch, metrics, extra); a success goes to `known` and the cache, a
        failure gets the worst metrics."""
        index, candidate, arch = self.in_flight.pop(task_id)
        extra = {"worker": result.get("worker"), "eval_seconds": result.get("eval_seconds")}
        if "error" in result:
            extra["error"] = result["error"]
            metrics = {
                "accuracy": 0.0,
                "loss": None,
                "macs": self.reference.get("macs", 0.0),
                "params": self.reference.get("params", 0.0),
            }
            logger.warning("candidate %s failed: %s", self.space.encode(arch), result["error"])
        else:
            # what the evaluator measured: a supernet's gives all four, a benchmark table's the accuracy only
            metrics = {key: result[key] for key in ("accuracy", "loss", "macs", "params") if key in result}
            digest = self.space.hash(arch)
            self.known[digest] = metrics
            if self.cache is not None:
                self.cache.append({"hash": digest, "encoding": self.space.encode(arch), "metrics": metrics})
            self.evaluated += 1
        return index, candidate, arch, metrics, extra

    def tell(self, index: int, candidate, arch: dict, metrics: dict, extra: dict) -> None:
        """Archive the result (on disk before the optimizer hears of it), then tell the optimizer."""
        record = self.result_record(index, arch, metrics, extra)
        self.archive.append(record)
        self.records.append(record)
        if record["feasible"]:
            self.live_front = add_to_front(self.live_front, self._points, len(self.records) - 1)
        normalised = _normalised(record["objectives"], self.objectives, self.reference)
        self.evolution.tell(candidate, normalised, record["violations"])
        self.progress.update(1)
        if len(self.records) % self.config.search.save_every == 0:
            self.checkpoint()

    def result_record(self, index: int, arch: dict, metrics: dict, extra: dict) -> dict:
        """The archive's record of a result: objectives with the latency estimate, constraint violations (a failed
        evaluation is told as infeasible, so the optimizer moves away from it), feasibility."""
        latency_ms, source = self.oracle.estimate(arch)
        values = objectives_of(metrics, latency_ms)
        violations = [constraint.violation(values) for constraint in self.constraints]
        if "error" in extra:
            violations = [max(v, 1.0) for v in violations] or [1.0]
        digest = self.space.hash(arch)
        latency = {"ms": latency_ms, "source": source, "fingerprint": self.oracle.key}
        if source == "measured":
            latency = measured_latency(self.oracle.measured[digest], self.oracle.key)
        return {
            "kind": "result",
            "index": index,
            "hash": digest,
            "encoding": self.space.encode(arch),
            "metrics": metrics,
            "objectives": {name: values[name] for name in self.objectives},
            "latency": latency,
            "violations": violations,
            "feasible": not any(violations) and "error" not in extra,
            **extra,
        }

    def checkpoint(self) -> None:
        """Save the optimizer's random state with the number of candidates asked."""
        self.evolution.save_state(self.state_path, self.num_asked)


def _measured_front(records: list[dict], objectives: list[str], constraints, oracle, space, archive) -> list[int]:
    """The feasible front, with every member's latency measured (not predicted): time the members still on the
    table's estimate (the pool is closed, so nothing runs beside the timing), update their objectives and
    constraint checks, recompute, until every front member is measured."""
    while True:
        front = pareto_indices(_points(records, objectives), _feasible(records))
        # the look-up table's predictions; measurements and a benchmark table's values are final
        unmeasured = [i for i in front if records[i]["latency"]["source"] == "lut"]
        if not unmeasured:
            return front
        for i in unmeasured:
            measurement = oracle.measure(space.decode(records[i]["encoding"]))
            archive.append({"kind": "latency", "hash": records[i]["hash"], "measurement": measurement})
            for record in records:
                if record["hash"] == records[i]["hash"]:
                    apply_latency(record, measurement, constraints)


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


def _set_aside_unfinished_start(output_dir: Path) -> None:
    """A run folder with settings but no result (its first try failed before any evaluation): this run starts over
    with its own settings. Its asks and optimizer state are renamed, not deleted, so nothing on disk is lost."""
    import time

    suffix = f".set-aside-{int(time.time())}"
    for name in (ARCHIVE, STATE, RUN_INFO):
        if (output_dir / name).is_file():
            (output_dir / name).rename(output_dir / (name + suffix))
    logger.warning("%s held no result yet: its earlier settings are set aside (*%s); starting over", output_dir, suffix)


def _has_results(output_dir: Path) -> bool:
    """Whether the run folder's archive records any result (asks alone depend on no setting)."""
    return any(record.get("kind") == "result" for record in JsonlArchive(output_dir / ARCHIVE).records())


def _changed_settings(saved: dict, info: dict) -> list[str]:
    """The run settings that differ between a saved `run.json` and this run (none for a new folder). The supernet's
    path may move: its weights are pinned by `fitness_key`; so may a benchmark's table, pinned by `fitness_key` and the
    latency fingerprint."""
    if not saved:
        return []
    movable = ("supernet", "table")
    return sorted(key for key in info.keys() | saved.keys() if key not in movable and saved.get(key) != info.get(key))


def _check_same_run(path: Path, info: dict) -> None:
    """Write `run.json`, or check that the run being resumed in this folder had the same settings."""
    if path.is_file():
        changed = _changed_settings(json.loads(path.read_text()), info)
        if changed:
            raise ValueError(
                f"Config field output_dir = {str(path.parent)!r} holds a search run with different {changed}; "
                "expected the same settings to resume it, or a new output_dir."
            )
        return
    path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


__all__ = [
    "LatencyOracle",
    "SearchLoop",
    "SearchResult",
    "reference_point",
    "resolve_supernet",
    "run",
]
