"""The search config: one dataclass tree, read from YAML and the command line by jsonargparse.

`SearchConfig` is the root. It names a trained supernet folder (`supernet`), or carries the whole distillation
config (`distill:`, the tree of `distill/config.py`) so that one file and one command run distill -> search. Every
field has a docstring, which is what `python search/run.py --help` prints; `SearchConfig.validate()` checks what the
types cannot and raises `ValueError` naming the field and the allowed values before anything is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from distill import DistillConfig
from evonets.data.config import DataConfig
from evonets.deploy.latency import LatencySettings
from evonets.engine.cli import check_field, check_writable_folder, is_real
from search.run_folder import OBJECTIVES, Constraint


@dataclass
class EvolutionConfig:
    """The nevergrad optimizer, the objectives and the budget."""

    optimizer: str = "DiscreteLenglerOnePlusOne"
    """A nevergrad optimizer name (`nevergrad.optimizers.registry`), `random` (the baseline, `RandomSearch`), or
    `DiscreteSMSEMOA` (ours, `search/pareto_evolution.py`: non-dominated sorting, hypervolume-contribution survivors,
    categorical-aware mutation, no architecture asked twice). Multi-objective: nevergrad ranks a candidate by the
    hypervolume it adds to its Pareto front."""

    budget: int = 100
    """Candidates to ask for (duplicates the optimizer proposes again are told from the cache, not re-evaluated)."""

    seed: int = 0
    """Seed of the optimizer's random state."""

    objectives: list[str] = field(default_factory=lambda: ["error", "latency_ms", "macs"])
    """Objectives to minimise, from `error`, `latency_ms`, `macs`, `params`. `error` must be one of them."""

    constraints: list[str] = field(default_factory=list)
    """Upper bounds such as `latency_ms <= 20` or `macs <= 5e6`. A candidate breaking one is told to the optimizer
    with its violation and never reaches the reported front."""

    reference_point: dict[str, float] | None = None
    """Hypervolume reference point per objective. Default: error 1, and 1.1x the largest architecture's latency,
    MACs and params (fixed by the space, so runs of one space compare)."""

    suggest_extremes: bool = True
    """Evaluate the space's smallest and largest architectures first (they anchor the front)."""

    save_every: int = 10
    """Write the optimizer's random state to `search_state.json` every N results (and at the end)."""

    tell_order: Literal["arrival", "ask"] = "arrival"
    """When the optimizer hears of a result. `arrival` (default, fastest): as soon as it finishes, so the run depends
    on which evaluation finishes first and the same command and seed can give different fronts. `ask`: strictly in
    the order the candidates were asked, with at most `pool.workers` x ranks + 1 candidates asked and not yet told;
    results that finish early wait (and a worker can idle behind a slow one), and the run is deterministic: the same
    config, seed and number of workers give the same archive, also across a kill and resume (with `latency.mode: lut`
    and a deterministic evaluator; measured latency varies from run to run)."""


@dataclass
class FitnessConfig:
    """How a candidate's validation error is measured with inherited supernet weights."""

    batch_size: int = 256
    """Validation batch size."""

    num_threads: int = 1
    """torch threads per evaluation worker (small models on a shared CPU: one thread per worker is fastest)."""

    cache_dir: str | None = "~/.cache/evonets/fitness"
    """Where fitness results are kept across runs, per supernet weights and validation data (None: no cache)."""


@dataclass
class LatencyConfig(LatencySettings):
    """How latency is timed (the `LatencySettings` fields: backend, batch size, warm-up, repeats, threads) and how the
    search uses it."""

    mode: Literal["lut", "measure"] = "lut"
    """`lut`: predict every candidate from the per-block look-up table, then measure the front members (repeating
    until every front member is measured). `measure`: time every new architecture, with the pool paused."""

    table_dir: str = "~/.cache/evonets/latency"
    """Where look-up tables are kept, one per device fingerprint and search space."""


@dataclass
class PoolConfig:
    """The DMMPE evaluation pool (see `search/pool.py`)."""

    workers: int = 2
    """Evaluation worker processes (per rank under `accelerate launch` / `torchrun`)."""

    max_retries: int = 2
    """A candidate whose worker dies is re-queued up to this many times, then recorded as failed."""

    heartbeat_timeout: float = 60.0
    """Seconds without a heartbeat after which a remote rank's worker counts as dead."""

    bind_address: str | None = None
    """Where rank 0's pool store (unauthenticated TCP: see docs/search.md) listens. None: loopback (127.0.0.1) when
    every rank runs on this machine, else the interface of `MASTER_ADDR` (where the launcher's rendezvous already
    listens). Or an interface name (`eth0`), an address of this machine, or a host name resolving to one; `0.0.0.0`
    listens on every interface. Only rank 0 uses it."""


@dataclass
class BenchmarkConfig:
    """A tabular benchmark (`search/benchmark.py`): NAS-Bench-201 cells looked up in a table instead of scored on a
    supernet. No supernet is built or loaded, and latency is the table's (nothing is timed)."""

    table: str | None = None
    """A parquet table with one row per NAS-Bench-201 cell (15,625): an `arch` column of cell strings
    (`|nor_conv_3x3~0|+|...|`) and numeric columns, e.g. `../shared/data/nasbench201/nb201_cifar10_pi5.parquet`."""

    fitness_column: str = "cifar10_val_accuracy"
    """The accuracy the search optimises (error = 1 - value / accuracy_scale)."""

    report_column: str | None = "cifar10_test_accuracy"
    """An independent accuracy that scores the final front in `summary.md` and `pareto.json` only: the workers never
    read it and the optimizer is never told it. None: no report."""

    latency_column: str = "pi5_onnx_latency_ms"
    """The cost objective (`latency_ms`), as the table has it (another cost works too, e.g. `pi5_onnx_energy_mj`)."""

    accuracy_scale: float = 100.0
    """The full mark of the accuracy columns: 100 for percentages, 1 for fractions."""

    def validate(self) -> None:
        """Check the fields and the table itself (every cell once, the columns numeric and finite, accuracies within
        the scale), so that a bad table is an error naming the field before any worker starts."""
        from search.benchmark import check_table

        check_field(self.table is not None, "benchmark.table", self.table, "a parquet table path")
        check_field(
            is_real(self.accuracy_scale) and self.accuracy_scale > 0,
            "benchmark.accuracy_scale",
            self.accuracy_scale,
            "a finite number > 0 (100 for percentages, 1 for fractions)",
        )
        check_field(
            self.report_column != self.fitness_column,
            "benchmark.report_column",
            self.report_column,
            f"a column other than benchmark.fitness_column = {self.fitness_column!r} (the report must not be what "
            "the search optimises), or null",
        )
        check_table(self.table, self.fitness_column, self.latency_column, self.report_column, self.accuracy_scale)


@dataclass
class SearchConfig:
    """Search a trained EvoNet supernet for the Pareto front of error, latency and MACs."""

    supernet: str | None = None
    """A supernet folder (`EvoNetSupernet.save_pretrained`). None: build it first with the `distill:` section."""

    distill: DistillConfig | None = None
    """The distillation config (see `distill/train.py --help`); used when `supernet` is None. Its finished output is
    reused when its config has not changed."""

    data: DataConfig | None = None
    """Data for the fitness (its validation split only). Default: `distill.data`."""

    benchmark: BenchmarkConfig | None = None
    """A tabular benchmark to search instead of a supernet (`configs/nb201.yaml`); `supernet`, `distill` and `data`
    stay unset."""

    search: EvolutionConfig = field(default_factory=EvolutionConfig)
    """Optimizer, objectives, constraints, budget."""

    fitness: FitnessConfig = field(default_factory=FitnessConfig)
    """Validation error with inherited weights."""

    latency: LatencyConfig = field(default_factory=LatencyConfig)
    """Latency measurement and look-up table."""

    pool: PoolConfig = field(default_factory=PoolConfig)
    """Evaluation workers."""

    output_dir: str = "runs/search"
    """Run folder: `archive.jsonl`, `pareto.json`/`.csv`/`.png`, `models/<hash>/`, `summary.md`. Running the same
    command again resumes the run in it."""

    export_front: bool = True
    """Write every front member as a standalone `transformers` model to `models/<hash>/`."""

    progress_bar: bool = True
    """tqdm progress bar (front size, evaluations per second)."""

    def validate(self) -> SearchConfig:
        """Raise `ValueError` naming the first invalid field; return self."""
        if self.benchmark is not None:
            self._validate_benchmark()
        elif self.supernet is None and self.distill is None:
            raise ValueError(
                "Config fields supernet and distill are both unset: expected a supernet folder (--supernet PATH), "
                "a 'distill:' section that trains one, or a 'benchmark:' table."
            )
        if self.distill is not None:
            self.distill.validate()
        if self.supernet is None and self.data is not None:
            raise ValueError(
                "Config field data is set together with distill: the fitness uses distill.data; set one of them."
            )
        evolution = self.search
        for objective in evolution.objectives:
            check_field(
                objective in OBJECTIVES, "search.objectives", evolution.objectives, f"entries of {list(OBJECTIVES)}"
            )
        check_field(
            "error" in evolution.objectives, "search.objectives", evolution.objectives, "a list including 'error'"
        )
        check_field(
            len(set(evolution.objectives)) == len(evolution.objectives),
            "search.objectives",
            evolution.objectives,
            "no repeated entries",
        )
        for text in evolution.constraints:
            Constraint.parse(text)
        check_field(evolution.budget >= 1, "search.budget", evolution.budget, "an integer >= 1")
        check_field(evolution.save_every >= 1, "search.save_every", evolution.save_every, "an integer >= 1")
        if evolution.reference_point is not None:
            _check_reference_point(evolution.reference_point, evolution.objectives)
        check_writable_folder("output_dir", self.output_dir)
        from search.evolution import optimizer_class

        optimizer_class(evolution.optimizer)  # raises ValueError for an unknown name
        check_field(self.fitness.batch_size >= 1, "fitness.batch_size", self.fitness.batch_size, "an integer >= 1")
        check_field(self.fitness.num_threads >= 1, "fitness.num_threads", self.fitness.num_threads, "an integer >= 1")
        self.latency.validate()
        check_field(self.pool.workers >= 1, "pool.workers", self.pool.workers, "an integer >= 1")
        check_field(self.pool.max_retries >= 0, "pool.max_retries", self.pool.max_retries, "an integer >= 0")
        check_field(
            evolution.tell_order in ("arrival", "ask"), "search.tell_order", evolution.tell_order, "'arrival' or 'ask'"
        )
        if self.pool.bind_address is not None and int(os.environ.get("RANK", "0")) == 0:  # it binds on rank 0 only
            from search.pool import resolve_bind_address

            try:
                resolve_bind_address(self.pool.bind_address)
            except ValueError as error:
                raise ValueError(f"Config field pool.{error}") from None
        return self

    def _validate_benchmark(self) -> None:
        """A benchmark run has no supernet, and minimises what a table gives: error and latency."""
        from search.benchmark import TABLE_OBJECTIVES

        for name in ("supernet", "distill", "data"):
            if getattr(self, name) is not None:
                raise ValueError(
                    f"Config field {name} is set together with benchmark: a benchmark run looks cells up in a table "
                    "and loads no supernet or data; set one of them."
                )
        objectives = self.search.objectives
        expected = f"entries of {list(TABLE_OBJECTIVES)} (what a benchmark table gives)"
        check_field(set(objectives) <= set(TABLE_OBJECTIVES), "search.objectives", objectives, expected)
        for text in self.search.constraints:
            constraint = Constraint.parse(text)
            check_field(constraint.objective in TABLE_OBJECTIVES, "search.constraints", text, f"bounds on {expected}")
        self.benchmark.validate()

    @property
    def constraints(self) -> list[Constraint]:
        return [Constraint.parse(text) for text in self.search.constraints]

    @property
    def fitness_data(self) -> DataConfig:
        """The data whose validation split the fitness reads."""
        if self.data is not None:
            return self.data
        if self.distill is not None:
            return self.distill.data
        return DataConfig()


def _check_reference_point(reference: dict[str, float], objectives: list[str]) -> None:
    """A value for every objective, each a finite number (a NaN would make every hypervolume 0)."""
    missing = sorted(set(objectives) - set(reference))
    check_field(not missing, "search.reference_point", reference, f"a value for each of {missing}")
    for name in objectives:
        value = reference[name]
        check_field(is_real(value) and value > 0, f"search.reference_point.{name}", value, "a finite number > 0")


__all__ = [
    "OBJECTIVES",
    "BenchmarkConfig",
    "Constraint",
    "EvolutionConfig",
    "FitnessConfig",
    "LatencyConfig",
    "PoolConfig",
    "SearchConfig",
]
