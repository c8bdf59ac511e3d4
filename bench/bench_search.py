"""Search benchmarks: optimizers against random search at equal budget, the search loop's own overhead, and the
quickstart's wall time.

    python bench/bench_search.py --supernet runs/quickstart/distill/supernet          # optimizers + overhead
    python bench/bench_search.py --supernet ... --quickstart                          # + the whole quickstart, timed
    python bench/bench_search.py --supernet ... --quick                               # 1 seed, small budget

**Hypervolume.** Each optimizer runs `search/run.py` on the same supernet with the same budget, for seeds 0, 1, 2.
The hypervolume is taken over *every* feasible result of a run (the objectives it was told: validation error, the
look-up table's latency, MACs), against the same fixed reference point, so runs differ only by what the optimizer
asked for; measured front latencies (noisy on a shared machine) are not used. All runs share one fitness cache, so
an architecture met by several runs is evaluated once.

**Overhead.** One fresh run of the first optimizer (no fitness cache): the coordinator's ask / tell / archive /
bookkeeping time per result against the workers' evaluation time, from its `pareto.json`.

**Quickstart.** `python search/run.py --config configs/quickstart.yaml` from nothing (teacher, distillation, look-up
table, search, front measurement, export), in fresh folders, timed by wall clock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from _report import DOC_PATH, machine_description, write_section

from search.pareto import hypervolume

OPTIMIZERS = ("DiscreteLenglerOnePlusOne", "PortfolioDiscreteOnePlusOne", "DiscreteDE", "NGOpt", "ES", "random")
GOAL_RATIO = 1.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supernet", required=True, help="A trained supernet folder (e.g. the quickstart's).")
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quickstart", action="store_true", help="Also time the whole quickstart from nothing.")
    parser.add_argument("--quick", action="store_true", help="One seed, budget 30, two optimizers.")
    parser.add_argument("--work-dir", default=None, help="Where runs go (default: a temporary folder).")
    parser.add_argument("--output", type=Path, default=DOC_PATH)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.budget, args.optimizers = [0], 30, [args.optimizers[0], "random"]
    return args


def run_search(args, work: Path, optimizer: str, seed: int, fresh: bool = False) -> dict:
    """One search run in a subprocess (fresh interpreter, like a user's); its archive's results and timing. `fresh`:
    a new run folder and no fitness cache, so every candidate is evaluated (for timing)."""
    output_dir = work / (f"fresh-{optimizer}-{time.time_ns()}" if fresh else f"{optimizer}-seed{seed}")
    command = [
        sys.executable, str(REPO / "search" / "run.py"),
        "--supernet", args.supernet,
        "--output_dir", str(output_dir),
        "--search.optimizer", optimizer,
        "--search.seed", str(seed),
        "--search.budget", str(args.budget),
        "--pool.workers", str(args.workers),
        "--fitness.cache_dir", "null" if fresh else str(work / "fitness_cache"),
        "--latency.table_dir", str(work / "latency_tables"),
        "--latency.num_threads", "1",
        "--export_front", "false",
        "--progress_bar", "false",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (output_dir / "archive.jsonl").read_text().splitlines()]
    results = [r for r in records if r.get("kind") == "result"]
    pareto = json.loads((output_dir / "pareto.json").read_text())
    return {"results": results, "pareto": pareto, "seconds": seconds}


def run_hypervolume(run: dict) -> float:
    """Hypervolume of every feasible result as told to the optimizer (look-up-table latency)."""
    objectives = run["pareto"]["objectives"]
    reference = [run["pareto"]["reference_point"][name] for name in objectives]
    points = [[r["objectives"][name] for name in objectives] for r in run["results"] if r["feasible"]]
    return hypervolume(points, reference)


def time_quickstart(work: Path) -> float:
    folder = work / f"quickstart-{time.time_ns()}"  # from nothing: nothing to resume
    command = [
        sys.executable, str(REPO / "search" / "run.py"), "--config", str(REPO / "configs" / "quickstart.yaml"),
        "--distill.teacher.path", str(folder / "teacher"),
        "--distill.trainer.output_dir", str(folder / "distill"),
        "--output_dir", str(folder / "search"),
        "--fitness.cache_dir", "null",
        "--latency.table_dir", str(folder / "tables"),
        "--progress_bar", "false",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    machine = machine_description()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.work_dir or temporary)
        runs: dict[str, list[dict]] = {}
        for seed in args.seeds:  # seed-major, so machine load drifts over every optimizer alike
            for optimizer in args.optimizers:
                run = run_search(args, work, optimizer, seed)
                runs.setdefault(optimizer, []).append(run)
                print(f"{optimizer} seed {seed}: hypervolume {run_hypervolume(run):.4f}, {run['seconds']:.0f} s",
                      flush=True)  # fmt: skip
        overhead_run = run_search(args, work, args.optimizers[0], seed=0, fresh=True)
        quickstart_seconds = time_quickstart(work) if args.quickstart else None

    baseline = statistics.mean(run_hypervolume(run) for run in runs["random"]) if "random" in runs else None
    lines = [
        (
            f"Machine: {machine}. Supernet `{args.supernet}`; budget {args.budget} candidates per run, "
            f"{args.workers} workers, seeds {args.seeds}; objectives error, latency_ms (look-up table), MACs."
        ),
        "",
        "| optimizer | hypervolume per seed | mean | vs random | distinct architectures evaluated (mean) |",
        "|---|---|---|---|---|",
    ]
    for optimizer, optimizer_runs in runs.items():
        volumes = [run_hypervolume(run) for run in optimizer_runs]
        mean = statistics.mean(volumes)
        distinct = statistics.mean(len({r["hash"] for r in run["results"]}) for run in optimizer_runs)
        ratio = f"{mean / baseline:.3f}x" if baseline else "n/a"
        lines.append(
            f"| {optimizer} | {', '.join(f'{v:.4f}' for v in volumes)} | {mean:.4f} | {ratio} | {distinct:.0f} |"
        )
    # The ceiling: the front of every result of every run together (all architectures any optimizer found).
    every_run = [run for optimizer_runs in runs.values() for run in optimizer_runs]
    pooled = {r["hash"]: r for run in every_run for r in run["results"] if r["feasible"]}
    first = every_run[0]["pareto"]
    ceiling = hypervolume(
        [[r["objectives"][name] for name in first["objectives"]] for r in pooled.values()],
        [first["reference_point"][name] for name in first["objectives"]],
    )
    ceiling_ratio = f" = {ceiling / baseline:.3f}x random's mean" if baseline else ""
    lines += [
        "",
        (
            f"Goal: the default optimizer >= {GOAL_RATIO}x random's mean hypervolume at equal budget. Ceiling: the front "
            f"of all {len(pooled)} distinct architectures found by every run together has hypervolume {ceiling:.4f}"
            f"{ceiling_ratio}; no single run can exceed the best front of the space, which this approximates from below."
        ),
        "",
    ]

    timing = overhead_run["pareto"]["timing"]
    eval_seconds = [r["eval_seconds"] for r in overhead_run["results"] if r.get("eval_seconds")]
    per_result_ms = 1000 * timing["ask_tell_seconds"] / max(1, len(overhead_run["results"]))
    lines += [
        (
            f"Search loop overhead: one fresh run ({args.optimizers[0]}, budget {args.budget}, no fitness cache, "
            f"{args.workers} workers)."
        ),
        "",
        "| | value |",
        "|---|---|",
        f"| coordinator: ask + tell + archive (fsync) + bookkeeping, per result | {per_result_ms:.1f} ms |",
        f"| worker: one evaluation (median of {len(eval_seconds)}) | {1000 * statistics.median(eval_seconds):.0f} ms |",
        f"| evaluations per second of the search loop | {timing['evaluated'] / timing['search_seconds']:.2f} |",
        (
            f"| whole run (worker start-up, look-up table from cache, front timing, outputs) | "
            f"{overhead_run['seconds']:.0f} s |"
        ),
    ]
    if quickstart_seconds is not None:
        lines += [
            "",
            (
                f"Quickstart from nothing (`python search/run.py --config configs/quickstart.yaml`: teacher, distillation, "
                f"look-up table, search, front measurement, export): **{quickstart_seconds / 60:.1f} min** (goal <= 10 min)."
            ),
        ]
    markdown = "\n".join(lines)
    print(markdown)
    write_section("bench_search", "Search: optimizers, overhead, quickstart", markdown, args.output)
    return markdown


if __name__ == "__main__":
    main()
