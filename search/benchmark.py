"""A tabular benchmark as the search's problem: cells looked up in a table; no network is built and nothing is timed.

NAS-Bench-201 and the tables built on it (NATS-Bench, HW-NAS-Bench) hold every cell of the space trained, and
measured on devices. A benchmark run (a `benchmark:` section, `configs/nb201.yaml`) searches the cell space
(`search.cell_space`) through the same optimizer, pool, archive, front, hypervolume, resume and run folder as a
supernet search. Only the problem differs:

- fitness: the pool's workers look the cell up in `benchmark.fitness_column` (`search.evaluators.TableEvaluator`);
  accuracy is that value divided by `benchmark.accuracy_scale` (100 for percentages), error is 1 - accuracy;
- latency: `benchmark.latency_column` as the table has it, a measurement made on the benchmark's device
  (`BenchmarkTable.estimate`, source `"table"`); the front is not timed again;
- report: `benchmark.report_column` (an independent training, e.g. NAS-Bench-201's test accuracy) scores the final
  front for `summary.md` and `pareto.json` only (`BenchmarkTable.report`). The workers never read it and the
  optimizer never hears of it, so a search on one training reports on another without leaking it.

A table is any parquet file with an `arch` column of cell strings (`CellSearchSpace.encode`, NAS-Bench-201's format)
and numeric columns: `read_columns` checks that it holds every cell of the space once, and that the named columns
exist and are finite numbers, with errors that name the config field and the table's columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from evonets.engine.cli import field_error
from evonets.engine.identity import files_digest

from .cell_space import CellSearchSpace
from .pareto import hypervolume

ARCH_COLUMN = "arch"
"""The column of cell strings that every benchmark table has."""

TABLE_OBJECTIVES = ("error", "latency_ms")
"""What a benchmark run can minimise: the fitness column's error and the latency column."""


def read_columns(path: str | Path, columns: dict[str, str], space: CellSearchSpace) -> dict[str, dict[str, float]]:
    """`{column: {cell encoding: value}}` for the columns of the parquet table at `path`; `columns` maps the config
    field that names each (`"benchmark.fitness_column"`) to the column, for the errors. `ValueError` naming the field
    unless the table has one row per cell of `space` and every named column is finite numbers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path).expanduser()
    if not path.is_file():
        raise field_error("benchmark.table", str(path), "a parquet file of cells (an 'arch' column and numeric ones)")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as error:
        raise field_error("benchmark.table", str(path), f"a parquet file (reading it failed: {error})") from None
    numeric = [item.name for item in schema if pa.types.is_integer(item.type) or pa.types.is_floating(item.type)]
    if ARCH_COLUMN not in schema.names:
        raise field_error(
            "benchmark.table", str(path), f"a table with an {ARCH_COLUMN!r} column (it has {schema.names})"
        )
    for field, column in columns.items():
        if column not in numeric:
            raise field_error(field, column, f"a numeric column of {path} among {numeric}")
    table = pq.read_table(path, columns=[ARCH_COLUMN, *dict.fromkeys(columns.values())]).to_pydict()
    cells = table[ARCH_COLUMN]
    every_cell = space.encodings()
    for row, cell in enumerate(cells):
        if cell not in every_cell:  # an empty value, or a string that is not a cell of the space: decode says why
            try:
                space.decode(cell)
            except (TypeError, ValueError) as error:
                raise field_error(
                    "benchmark.table", str(path), f"cells of the space in {ARCH_COLUMN!r}: row {row}: {error}"
                ) from None
    if len(set(cells)) != len(cells) or len(cells) != space.cardinality():
        raise field_error(
            "benchmark.table",
            str(path),
            f"one row for each of the {space.cardinality()} cells of {space} (it has {len(cells)} rows, "
            f"{len(set(cells))} distinct cells)",
        )
    values = {}
    for field, column in columns.items():
        bad = [row for row, value in enumerate(table[column]) if value is None or not math.isfinite(value)]
        if bad:
            raise field_error(
                field, column, f"a column of finite numbers ({len(bad)} rows of {path} are empty or not finite, "
                f"e.g. row {bad[0]})"
            )  # fmt: skip
        values[column] = dict(zip(cells, map(float, table[column])))
    return values


def accuracies(values: dict[str, float], field: str, column: str, scale: float) -> dict[str, float]:
    """An accuracy column as fractions (`value / scale`); `ValueError` naming `field` unless every value is in
    [0, scale] (a column in percent read with scale 1, or an error column, would otherwise pass unnoticed)."""
    outside = [value for value in values.values() if not 0.0 <= value <= scale]
    if outside:
        raise field_error(
            field, column, f"an accuracy column with values in [0, benchmark.accuracy_scale = {scale:g}] "
            f"({len(outside)} values are outside, e.g. {outside[0]:g})"
        )  # fmt: skip
    return {cell: value / scale for cell, value in values.items()}


def check_table(
    table: str, fitness_column: str, latency_column: str, report_column: str | None, accuracy_scale: float
) -> None:
    """Read every named column of `table` once, as the workers and the coordinator will, so that a bad table or column
    is an error naming its config field before the run starts."""
    space = CellSearchSpace()
    accuracy_fields = {"benchmark.fitness_column": fitness_column}
    if report_column is not None:
        accuracy_fields["benchmark.report_column"] = report_column
    values = read_columns(table, {**accuracy_fields, "benchmark.latency_column": latency_column}, space)
    for field, column in accuracy_fields.items():
        accuracies(values[column], field, column, accuracy_scale)


def table_key(path: str | Path, settings: dict) -> str:
    """What values read from a table depend on: its bytes and the columns and scale read (`settings`)."""
    return files_digest([Path(path).expanduser()], settings)


class BenchmarkTable:
    """The coordinator's side of a benchmark run: the latency of a cell (the run's latency oracle, with the interface
    of `search.runner.LatencyOracle` that the search loop uses), the default reference point, and the report scores
    of the final front. The fitness column is not read here: that is the workers' (`TableEvaluator`)."""

    mode = "table"
    """The latency mode of a benchmark run: values of the table, never timed (run.json's `latency_mode`)."""

    def __init__(
        self,
        space: CellSearchSpace,
        table: str,
        latency_column: str,
        report_column: str | None = None,
        accuracy_scale: float = 100.0,
    ):
        self.space = space
        self.path = Path(table).expanduser()
        self.latency_column, self.report_column = latency_column, report_column
        columns = {"benchmark.latency_column": latency_column}
        if report_column is not None:
            columns["benchmark.report_column"] = report_column
        values = read_columns(self.path, columns, space)
        self.latency = values[latency_column]
        self.report_accuracy = (
            accuracies(values[report_column], "benchmark.report_column", report_column, accuracy_scale)
            if report_column is not None
            else None
        )
        self.key = table_key(self.path, {"latency_column": latency_column})
        # the latency's identity (the table's bytes and column, not its path: a moved table resumes)
        self.fingerprint = {"latency_column": latency_column, "key": self.key}
        self.measured: dict[str, dict] = {}  # the oracle's interface: nothing is ever measured in a benchmark run

    def estimate(self, arch: dict) -> tuple[float, str]:
        """(the latency column's value, `"table"`)."""
        return self.latency[self.space.encode(arch)], "table"

    def reference_point(self, objectives: Sequence[str]) -> dict[str, float]:
        """The default hypervolume reference: error 1 and 1.1x the table's largest latency (like a supernet run's,
        fixed by the space and the device alone)."""
        worst = {"error": 1.0, "latency_ms": 1.1 * max(self.latency.values())}
        return {name: worst[name] for name in objectives}

    def report(self, front: Sequence[dict], objectives: Sequence[str], reference: dict[str, float]) -> dict | None:
        """The front (result records, chosen on the fitness column) scored with the report column: each member's
        report accuracy, and the hypervolume of the front with each error taken from the report column (the same
        reference point). None without a report column."""
        if self.report_accuracy is None:
            return None
        cells = [record["encoding"] for record in front]
        return {
            "column": self.report_column,
            "hypervolume": report_hypervolume(cells, self.report_accuracy, self.latency, objectives, reference),
            "accuracy": {record["hash"]: self.report_accuracy[record["encoding"]] for record in front},
        }


def report_hypervolume(
    cells: Sequence[str],
    accuracy: dict[str, float],
    latency: dict[str, float],
    objectives: Sequence[str],
    reference: dict[str, float],
) -> float:
    """The hypervolume of `cells` (encodings, e.g. a front chosen on the fitness column) with error 1 - `accuracy`
    and latency from `latency`, divided by the reference box: NAS-Bench-201's report-scored, normalised
    hypervolume when `accuracy` is the report column."""
    values = {"error": lambda cell: 1.0 - accuracy[cell], "latency_ms": lambda cell: latency[cell]}
    points = [[values[name](cell) for name in objectives] for cell in cells]
    return hypervolume(points, [reference[name] for name in objectives])


__all__ = [
    "ARCH_COLUMN",
    "TABLE_OBJECTIVES",
    "BenchmarkTable",
    "accuracies",
    "check_table",
    "read_columns",
    "report_hypervolume",
    "table_key",
]
