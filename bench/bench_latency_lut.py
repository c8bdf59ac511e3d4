"""Latency look-up table: how well `search.latency_table.LatencyTable` predicts measured latency, and how
reproducible both are across processes on a shared machine.

    python bench/bench_latency_lut.py            # every setting, 3 runs each (~1 hour on 2 cores), docs/benchmarks.md
    python bench/bench_latency_lut.py --quick    # quickstart space, reference and raw, 10 architectures, 2 runs
    python bench/bench_latency_lut.py --settings quickstart-torch quickstart-torch-raw --runs 3 --count 30

A *run* of a setting (a search space and `LatencySettings`) happens in its own fresh process, because that is where
latency on shared hardware differs (a core can be slower for a whole process): the runs of all settings are
interleaved (run 1 of every setting, then run 2, ...) so that a slow period hits them alike. One run:

1. `LatencyTable.build`: times every entry of the space (stem, downsamples, block variants, head) and calibrates on
   `CALIBRATION_NETWORKS` (8) whole networks; saves the table.
2. `lut_error`: measures `--count` random architectures (`space.sample(random.Random(0))`, the same in every run)
   extracted from a supernet with random weights (latency does not depend on them) and compares them with
   `predict_ms`; and with the tables of the setting's earlier runs (a table is built once and reused by later
   processes: that is how the search uses it).
3. Two baselines on the same architectures: the sum of the entries without the calibration, and a MAC model
   (`evonets.deploy.profiling.count_macs`, SS2D scans included), `scale * MACs + offset` fitted the same way on the
   same calibration networks.

Every run appends one record to `bench/results/latency_lut.jsonl` (committed; rerunning skips the runs it holds, so a
killed benchmark resumes; `--fresh` starts over). The report gives, per setting, the median over runs of each run's
median error with its range, the error of tables used in other processes, and the spread of the same architecture's
measured latency across processes; it is printed and written to `docs/benchmarks.md` between
`<!-- latency-lut:start -->` and `<!-- latency-lut:end -->`.

Settings: the quickstart space (`configs/quickstart.yaml`'s `distill.supernet`) at the quickstart's latency settings
(batch 1, 1 thread, 5 warm-up and 30 timed calls) and the default ImageNet-scale space at 224 px (2 + 10 calls), each
measured against the in-process reference network (the default, `reference=True`) and, as the comparison, in the
clock's raw milliseconds (`-raw`: wall clock; `-raw-cpu`: the timing thread's CPU time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

from _report import DOC_PATH, machine_description, write_section

from distill.config import SupernetSettings
from distill.student import build_space_config
from evonets.deploy.latency import LatencySettings, reference_latency_ms
from evonets.deploy.profiling import count_macs
from evonets.engine.archive import JsonlArchive
from evonets.models.modeling_evonet import EvoNetForImageClassification
from evonets.models.search_space import EvoNetSupernetConfig
from evonets.models.supernet import EvoNetSupernet
from search.latency_table import CALIBRATION_NETWORKS, Calibration, LatencyTable, lut_error

SECTION_NAME, SECTION_TITLE = "latency-lut", "Latency look-up table"
GOAL = 0.10  # median absolute relative error
QUICKSTART = REPO / "configs" / "quickstart.yaml"
RECORDS = REPO / "bench" / "results" / "latency_lut.jsonl"
TABLES = REPO / "runs" / "bench-latency-lut"  # the runs' tables (not committed: later runs of a setting reuse them)


@dataclass
class Setting:
    name: str
    space: str  # "quickstart" or "default-224"
    settings: LatencySettings


def quickstart_space() -> EvoNetSupernetConfig:
    """The quickstart's search space, from `configs/quickstart.yaml` as `distill/train.py` builds it (digits: 10
    classes)."""
    supernet = yaml.safe_load(QUICKSTART.read_text())["distill"]["supernet"]
    return build_space_config(SupernetSettings(**supernet), num_labels=10)


def default_space_224() -> EvoNetSupernetConfig:
    """The default ImageNet-scale space (4 stages, widths 32-512, all four block types) at its largest resolution."""
    return EvoNetSupernetConfig(resolution_choices=[224], num_labels=1000)


SPACES = {"quickstart": quickstart_space, "default-224": default_space_224}
QUICKSTART_TIMING = {"batch_size": 1, "num_threads": 1, "warmup": 5, "repeats": 30}
LARGE_TIMING = {"batch_size": 1, "num_threads": 1, "warmup": 2, "repeats": 10}
RAW = {"reference": False}
SETTINGS = {
    setting.name: setting
    for setting in [
        Setting("quickstart-torch", "quickstart", LatencySettings(**QUICKSTART_TIMING)),
        Setting("quickstart-torch-raw", "quickstart", LatencySettings(**QUICKSTART_TIMING, **RAW)),
        Setting("quickstart-torch-raw-cpu", "quickstart", LatencySettings(clock="cpu", **QUICKSTART_TIMING, **RAW)),
        Setting("quickstart-onnxruntime", "quickstart", LatencySettings("onnxruntime", **QUICKSTART_TIMING)),
        Setting("default-224-torch", "default-224", LatencySettings(**LARGE_TIMING)),
        Setting("default-224-torch-raw", "default-224", LatencySettings(**LARGE_TIMING, **RAW)),
    ]
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="quickstart-torch and -raw, 10 architectures, 2 runs")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=None, help="settings to run")
    parser.add_argument("--runs", type=int, default=None, help="fresh processes per setting (default 3)")
    parser.add_argument("--count", type=int, default=None, help="random architectures per run (default 50)")
    parser.add_argument("--records", type=Path, default=None, help=f"JSONL of the runs (default {RECORDS})")
    parser.add_argument("--fresh", action="store_true", help="forget the records and tables of earlier runs")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to update")
    parser.add_argument("--worker", nargs=2, metavar=("SETTING", "RUN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.settings is None:
        args.settings = ["quickstart-torch", "quickstart-torch-raw"] if args.quick else list(SETTINGS)
    if args.runs is None:
        args.runs = 2 if args.quick else 3
    if args.count is None:
        args.count = 10 if args.quick else 50
    if args.records is None:
        args.records = RECORDS.with_name("latency_lut_quick.jsonl") if args.quick else RECORDS
    if args.output is None and not args.quick:
        args.output = DOC_PATH
    return args


def load_average() -> str:
    return "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def mmacs_of(space_config: EvoNetSupernetConfig, encoding: str) -> float:
    """Millions of MACs of one image through the architecture's standalone network (`count_macs`)."""
    space = space_config.search_space
    arch = space.decode(encoding)
    model = EvoNetForImageClassification(space.to_config(arch)).eval()
    pixel_values = torch.zeros(1, space_config.num_channels, arch["resolution"], arch["resolution"])
    return int(count_macs(model, pixel_values)) / 1e6


def relative_errors(predicted: list[float], measured: list[float]) -> np.ndarray:
    return np.abs(np.array(predicted) / np.array(measured) - 1.0)


def table_path(name: str, run: int, count: int) -> Path:
    return TABLES / f"{name}-n{count}-run{run}.json"


def one_run(setting: Setting, run: int, count: int) -> dict:
    """Build the setting's table, measure `count` architectures, and compare (see the module docstring): the record
    of one run, made in this process."""
    space_config = SPACES[setting.space]()
    load_start = load_average()
    reference_ms = reference_latency_ms(setting.settings) if setting.settings.reference else None
    start = time.perf_counter()
    table = LatencyTable.build(space_config, setting.settings, progress=False)
    build_seconds = time.perf_counter() - start
    earlier = {
        other: LatencyTable.load(table_path(setting.name, other, count))
        for other in range(run)
        if table_path(setting.name, other, count).exists()
    }
    TABLES.mkdir(parents=True, exist_ok=True)
    table.save(table_path(setting.name, run, count))
    torch.manual_seed(0)
    supernet = EvoNetSupernet(space_config).eval()
    report = lut_error(supernet, table, setting.settings, count=count, seed=0, progress=False)
    rows = report["rows"]
    measured = [row["measured_ms"] for row in rows]

    # Baselines on the same architectures: the raw sum of the entries, and a MAC model calibrated like the table.
    sums = [sum(ms for _, ms in table.breakdown(row["encoding"])) for row in rows]
    calibration_macs = [
        {"sum_ms": mmacs_of(space_config, network["encoding"]), "measured_ms": network["measured_ms"]}
        for network in table.calibration.networks
    ]
    mac_model = Calibration.fit(calibration_macs)
    mac_predictions = [mac_model.scale * mmacs_of(space_config, row["encoding"]) + mac_model.offset_ms for row in rows]
    return {
        "setting": setting.name,
        "run": run,
        "count": count,
        "fingerprint_key": table.fingerprint_key,
        "reference_ms": reference_ms,
        "entries": len(table.entries),
        "build_seconds": build_seconds,
        "calibration": {"scale": table.calibration.scale, "offset_ms": table.calibration.offset_ms},
        "median_abs_error": report["median_abs_error"],
        "mean_abs_error": report["mean_abs_error"],
        "p90_abs_error": report["p90_abs_error"],
        "unstable": report["unstable"],
        # Tables of earlier runs (other processes) predicting this run's measurements.
        "other_process_errors": {
            str(other): float(np.median(relative_errors([old.predict_ms(row["encoding"]) for row in rows], measured)))
            for other, old in earlier.items()
        },
        "sum_error": float(np.median(relative_errors(sums, measured))),
        "mac_error": float(np.median(relative_errors(mac_predictions, measured))),
        "rows": [
            {key: row[key] for key in ("encoding", "measured_ms", "predicted_ms", "spread", "stable")} for row in rows
        ],
        "load": [load_start, load_average()],
        "machine": machine_description(threads=setting.settings.threads),
    }


def run_in_fresh_process(name: str, run: int, args: argparse.Namespace) -> dict:
    """`one_run` in a new Python process (see the module docstring: why a fresh one)."""
    command = [sys.executable, __file__, "--worker", name, str(run), "--count", str(args.count)]
    process = subprocess.run(command, capture_output=True, text=True, check=False)
    if process.returncode != 0:
        raise RuntimeError(f"{name} run {run} failed:\n{process.stderr[-3000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def spread_across_runs(records: list[dict]) -> float:
    """Median over architectures of (largest / smallest measured latency across the runs - 1)."""
    by_arch: dict[str, list[float]] = {}
    for record in records:
        for row in record["rows"]:
            by_arch.setdefault(row["encoding"], []).append(row["measured_ms"])
    return float(np.median([max(values) / min(values) - 1 for values in by_arch.values() if len(values) > 1]))


def render(records: list[dict], args: argparse.Namespace) -> str:
    by_setting: dict[str, list[dict]] = {}
    for record in records:
        by_setting.setdefault(record["setting"], []).append(record)
    machine = records[0]["machine"]
    lines = [
        "Generated by `python bench/bench_latency_lut.py"
        + (" --quick" if args.quick else "")
        + f" --runs {args.runs} --count {args.count}`; do not edit by hand. Records: "
        f"`{os.path.relpath(args.records, REPO)}`.",
        "",
        f"Machine (first run): {machine}.",
        "",
        (
            "`search.latency_table.LatencyTable` predicts a network's latency as `scale * (sum of its parts) + offset`: "
            "the parts timed in isolation on their real input shapes, the line fitted on "
            f"{CALIBRATION_NETWORKS} whole networks. Error = predicted / measured - 1 on {args.count} random "
            "architectures (`space.sample(random.Random(0))`, none of them calibration networks), each measured by "
            "`measure_architecture`. Every run is a fresh process; the runs of all settings are interleaved. "
            "*reference*: latency relative to the in-process reference network, in its long-run milliseconds "
            "(the default); *raw wall* / *raw cpu*: the clock's own milliseconds (wall clock; the timing thread's CPU "
            "time). Columns: the median over runs of each run's median absolute error (range over runs); the same "
            "for a table built in another process (how the search reuses a cached table); the median over "
            "architectures of how far one architecture's measured latency moves across processes (largest / smallest "
            "- 1); measurements flagged unsteady; and, on the first run, the uncalibrated sum and a MAC model."
        ),
        "",
        (
            "| setting | unit | runs | entries | build s | median error (range) | table of another process "
            "| same arch across processes | unsteady | uncalibrated sum | MAC model | measured ms (min / median / max) |"
        ),
        "|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for name, runs in by_setting.items():
        timing = SETTINGS[name].settings
        unit = "reference" if timing.reference else f"raw {timing.clock}"
        errors = [run["median_abs_error"] for run in runs]
        other = [value for run in runs for value in run["other_process_errors"].values()]
        other_text = (
            f"{percent(statistics.median(other))} ({percent(min(other))}-{percent(max(other))})" if other else "-"
        )
        measured = [row["measured_ms"] for row in runs[0]["rows"]]
        lines.append(
            f"| {SETTINGS[name].space}, {timing.backend}, batch {timing.batch_size}, {timing.threads} thread, "
            f"{timing.warmup} + {timing.repeats} calls | {unit} | {len(runs)} | {runs[0]['entries']} "
            f"| {statistics.median(run['build_seconds'] for run in runs):.0f} "
            f"| **{percent(statistics.median(errors))}** ({percent(min(errors))}-{percent(max(errors))}) "
            f"| {other_text} | {percent(spread_across_runs(runs)) if len(runs) > 1 else '-'} "
            f"| {sum(run['unstable'] for run in runs)} / {sum(len(run['rows']) for run in runs)} "
            f"| {percent(runs[0]['sum_error'])} | {percent(runs[0]['mac_error'])} "
            f"| {min(measured):.2f} / {statistics.median(measured):.2f} / {max(measured):.2f} |"
        )
    lines += ["", f"Goal: median absolute error <= {percent(GOAL)}, in every run."]
    for name, runs in by_setting.items():
        worst_run = max(run["median_abs_error"] for run in runs)
        verdict = "met" if worst_run <= GOAL else "NOT met"
        references = sorted({run["reference_ms"] for run in runs if run["reference_ms"] is not None})
        loads = "; ".join(f"{run['load'][0]} -> {run['load'][1]}" for run in runs)
        lines.append(
            f"- `{name}`: **{verdict}** (worst run {percent(worst_run)}); "
            + (f"reference {', '.join(f'{value:.3f}' for value in references)} ms; " if references else "")
            + f"load averages {loads}."
        )
    spaces = {SETTINGS[name].space for name in by_setting}
    lines += ["", "Spaces:"]
    for name in sorted(spaces):
        space_config = SPACES[name]()
        block_types = sorted({kind for stage in space_config.block_type_choices for types in stage for kind in types})
        lines.append(
            f"- {name}: {space_config.search_space.cardinality():.3g} architectures, resolutions "
            f"{space_config.resolution_choices}, widths {space_config.width_choices}, depths "
            f"{space_config.depth_choices}, block types {block_types}."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str | None:
    args = parse_args(argv)
    if args.worker:
        name, run = args.worker
        print(json.dumps(one_run(SETTINGS[name], int(run), args.count)))
        return None

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.fresh:
        args.records.unlink(missing_ok=True)
        for path in TABLES.glob("*.json"):
            path.unlink()
    archive = JsonlArchive(args.records)
    done = {(record["setting"], record["run"], record["count"]) for record in archive.records()}
    for run in range(args.runs):
        for name in args.settings:
            if (name, run, args.count) in done:
                continue
            log(f"{name} run {run + 1}/{args.runs} ...")
            record = run_in_fresh_process(name, run, args)
            archive.append(record)
            log(f"  median error {percent(record['median_abs_error'])}, build {record['build_seconds']:.0f} s")
    records = [
        record
        for record in archive.records()
        if record["setting"] in args.settings and record["count"] == args.count and record["run"] < args.runs
    ]
    markdown = render(records, args)
    print(markdown)
    if args.output is not None:
        write_section(SECTION_NAME, SECTION_TITLE, markdown, args.output)
        log(f"wrote {args.output}")
    return markdown


if __name__ == "__main__":
    main()
