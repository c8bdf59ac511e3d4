"""DMMPE vs data-parallel evaluation of supernet candidates, at equal workers.

    python bench/bench_dmmpe.py              # full run (about 4 minutes on 2 cores), writes docs/benchmarks.md
    python bench/bench_dmmpe.py --quick      # smoke run: few candidates, no file written unless --output is given
    python bench/bench_dmmpe.py --evaluators mypackage.module:factory     # another evaluator

What it does, in one process:

1. Saves a random-init `EvoNetSupernet(EvoNetSupernetConfig.tiny(resolution_choices=[8, 16], num_labels=10))` to a
   temporary folder (throughput does not depend on the weights) and samples distinct candidate architectures from
   its space (seeded).
2. For each evaluator of `--evaluators`, starts one `search.pool.EvaluationPool` of `--workers` worker processes
   (1 torch thread each). Each worker builds the evaluator once, `factory(supernet_folder) -> evaluate(payload)`, on
   the digits validation split (180 images): `payload["arch"]` is an architecture encoding; with `payload["shard"]` /
   `payload["num_shards"]` only that contiguous slice of the images is evaluated; the result holds `accuracy`, `loss`
   and the number of images `count`. Built in:
   - `ranking`: `evonets.engine.evaluation.evaluate` of `supernet(x, arch=arch)` (validation accuracy with inherited
     weights);
   - `search`: `search.evaluators.SupernetEvaluator`, what `search/run.py` runs (extracts the subnet, then accuracy,
     loss, MACs and parameters).
   Any `module:function` with the same contract can be swapped in.
3. Times, in alternating rounds (rotating order, fresh candidates every time, so every candidate is new to every
   worker, as in a search), after one warm-up pass of each mode:
   - **DMMPE**: the search loop's pattern: keep `idle_workers` candidates submitted, collect results as they come
     (`wait()`); every candidate is evaluated whole by one worker.
   - **data-parallel**: candidates one after another; every worker evaluates its slice of the candidate's
     validation images, and the next candidate starts when all slices are back (a barrier per candidate); accuracy
     and loss are combined weighted by slice size.
   Both modes use the same worker processes and transport, so only the scheduling differs. Wall clock gives the
   measured evaluations per second; the workers' CPU time per evaluation (which other jobs on a shared machine hardly
   change) gives a model of idle cores. Checks on a few candidates that both modes give the same accuracy.
4. Prints the markdown and writes it to `docs/benchmarks.md` between `<!-- dmmpe:start -->` and `<!-- dmmpe:end -->`.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

from _report import DOC_PATH, machine_description, write_section

from distill.config import DataConfig
from evonets.data.classification import load_data
from evonets.engine.evaluation import evaluate as evaluate_model
from evonets.engine.evaluation import tensor_batches
from evonets.models.search_space import EvoNetSupernetConfig
from evonets.models.supernet import EvoNetSupernet
from search.pool import EvaluationPool
from search.ranking import sample_architectures, validation_tensors

IMAGE_SIZE = 16
RESOLUTIONS = [8, 16]
GOAL_RATIO = 1.7
AGREEMENT_CANDIDATES = 6


def ranking_evaluator(supernet_folder: str) -> Callable[[dict], dict]:
    """Validation accuracy and loss of `payload["arch"]` with the supernet's weights
    (`evonets.engine.evaluation.evaluate`)."""
    supernet = EvoNetSupernet.from_pretrained(supernet_folder).eval()
    pixel_values, labels = validation_tensors(load_data(DataConfig(source="digits"), image_size=IMAGE_SIZE))

    @torch.inference_mode()
    def evaluate(payload: dict) -> dict:
        arch = supernet.search_space.decode(payload["arch"])
        images, targets = validation_slice(pixel_values, labels, payload)
        batches = tensor_batches(images, targets)
        metrics = evaluate_model(lambda x: supernet(x, arch=arch).logits, batches, arch["resolution"])
        return {**metrics, "count": len(targets)}

    return evaluate


def search_evaluator(supernet_folder: str) -> Callable[[dict], dict]:
    """`search.evaluators.SupernetEvaluator`, the search's fitness (extracted subnet: accuracy, loss, MACs, parameters),
    scoring the validation slice the payload names."""
    from search.evaluators import FitnessSpec, SupernetEvaluator

    evaluator = SupernetEvaluator(FitnessSpec(supernet=supernet_folder, data={"source": "digits"}))
    pixel_values, labels = evaluator.pixel_values, evaluator.labels

    def evaluate(payload: dict) -> dict:
        evaluator.pixel_values, evaluator.labels = validation_slice(pixel_values, labels, payload)
        return {**evaluator({"encoding": payload["arch"]}), "count": len(evaluator.labels)}

    return evaluate


def validation_slice(pixel_values: torch.Tensor, labels: torch.Tensor, payload: dict):
    """The contiguous slice `payload["shard"]` of `payload["num_shards"]` (default: everything)."""
    shard, num_shards = payload.get("shard", 0), payload.get("num_shards", 1)
    return torch.tensor_split(pixel_values, num_shards)[shard], torch.tensor_split(labels, num_shards)[shard]


EVALUATORS = {"ranking": ranking_evaluator, "search": search_evaluator}


def imported_evaluator(spec: str, supernet_folder: str) -> Callable[[dict], dict]:
    """The evaluator of the factory named `module:function`, imported inside the worker."""
    module_name, _, function_name = spec.partition(":")
    return getattr(importlib.import_module(module_name), function_name)(supernet_folder)


# The two schedules ----------------------------------------------------------------------------------------------


def run_dmmpe(pool: EvaluationPool, encodings: list[str]) -> tuple[float, dict[str, dict]]:
    """Wall seconds and results of evaluating `encodings`, each whole on one worker, keeping every worker busy."""
    results, pending = {}, list(encodings)
    start = time.perf_counter()
    while pending or pool.in_flight:
        while pending and pool.idle_workers:
            encoding = pending.pop(0)
            pool.submit(encoding, {"arch": encoding})
        results.update(pool.wait())
    return time.perf_counter() - start, results


def run_data_parallel(pool: EvaluationPool, encodings: list[str]) -> tuple[float, dict[str, dict], list[dict]]:
    """Wall seconds and combined results of evaluating `encodings` one after another, each split over all workers;
    plus per candidate its wall time and its slices' evaluation times."""
    shards, results, timings = pool.num_workers, {}, []
    start = time.perf_counter()
    for encoding in encodings:
        candidate_start = time.perf_counter()
        for shard in range(shards):
            pool.submit(f"{encoding}/{shard}", {"arch": encoding, "shard": shard, "num_shards": shards})
        slices = [result for _, result in pool.drain()]
        wall = time.perf_counter() - candidate_start
        errors = [result["error"] for result in slices if "error" in result]
        if errors:
            raise RuntimeError(f"evaluating {encoding} failed: {errors[0]}")
        count = sum(result["count"] for result in slices)
        results[encoding] = {
            key: sum(result[key] * result["count"] for result in slices) / count for key in ("accuracy", "loss")
        }
        timings.append(
            {
                "wall": wall,
                "slices": [result["eval_seconds"] for result in slices],
                "cpu_slices": [result["eval_cpu_seconds"] for result in slices],
            }
        )
    return time.perf_counter() - start, results, timings


def check_results(results: dict[str, dict]) -> None:
    errors = [result["error"] for result in results.values() if "error" in result]
    if errors:
        raise RuntimeError(f"{len(errors)} evaluations failed, e.g. {errors[0]}")


# Measurement and report -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few candidates, for a smoke run")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, the same for both modes (default 2)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="alternating rounds of both modes (default 10, quick 2)"
    )
    parser.add_argument(
        "--candidates", type=int, default=None, help="fresh candidates per mode and round (default 16, quick 6)"
    )
    parser.add_argument(
        "--evaluators",
        nargs="+",
        default=list(EVALUATORS),
        help=f"evaluators to measure: {', '.join(EVALUATORS)} or `module:function` (default: all built in)",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="markdown file to update (default docs/benchmarks.md, quick: none)"
    )
    args = parser.parse_args(argv)
    for name, full, quick in (("rounds", 10, 2), ("candidates", 16, 6)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    for name in ("workers", "rounds", "candidates"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} = {getattr(args, name)} is invalid: expected an integer >= 1.")
    for name in args.evaluators:
        if name not in EVALUATORS and ":" not in name:
            parser.error(f"--evaluators: {name!r} is invalid: expected {' or '.join(EVALUATORS)} or `module:function`.")
    if args.output is None and not args.quick:
        args.output = DOC_PATH
    return args


def measure(args: argparse.Namespace, folder: str, evaluator: str, log: Callable[[str], None]) -> dict:
    """Both modes with one evaluator: totals, per-round rates, per-candidate times."""
    space = EvoNetSupernetConfig.from_pretrained(folder).search_space
    # Disjoint candidate sets: warm-up, the agreement check, then one per mode and round.
    per_set, warmup_count = args.candidates, 2 * args.workers
    count = warmup_count + AGREEMENT_CANDIDATES + 2 * per_set * args.rounds
    encodings = [space.encode(arch) for arch in sample_architectures(space, count, seed=0)]
    warmup = encodings[:warmup_count]
    agreement = encodings[warmup_count : warmup_count + AGREEMENT_CANDIDATES]
    timed = encodings[warmup_count + AGREEMENT_CANDIDATES :]
    if evaluator in EVALUATORS:
        make_evaluator = functools.partial(EVALUATORS[evaluator], folder)
    else:
        make_evaluator = functools.partial(imported_evaluator, evaluator, folder)

    report = {
        "dmmpe": {"seconds": 0.0, "count": 0, "eval": [], "cpu": [], "rates": []},
        "dp": {"seconds": 0.0, "count": 0, "timings": [], "rates": []},
    }
    with EvaluationPool(make_evaluator, workers=args.workers, threads_per_worker=1) as pool:
        start = time.perf_counter()
        pool.wait_ready()
        log(f"{evaluator}: {pool.num_workers} workers ready in {time.perf_counter() - start:.1f} s")
        run_dmmpe(pool, warmup)
        run_data_parallel(pool, warmup)
        for round_index in range(args.rounds):
            sets = {mode: timed[(2 * round_index + i) * per_set :][:per_set] for i, mode in enumerate(("dmmpe", "dp"))}
            for mode in ("dmmpe", "dp") if round_index % 2 == 0 else ("dp", "dmmpe"):
                if mode == "dmmpe":
                    seconds, results = run_dmmpe(pool, sets[mode])
                    check_results(results)
                    report[mode]["eval"] += [result["eval_seconds"] for result in results.values()]
                    report[mode]["cpu"] += [result["eval_cpu_seconds"] for result in results.values()]
                else:
                    seconds, results, timings = run_data_parallel(pool, sets[mode])
                    report[mode]["timings"] += timings
                report[mode]["seconds"] += seconds
                report[mode]["count"] += len(results)
                report[mode]["rates"].append(len(results) / seconds)
                log(f"{evaluator}, round {round_index + 1}, {mode}: {len(results) / seconds:.1f} evaluations/s")
        _, whole = run_dmmpe(pool, agreement)
        _, split = run_data_parallel(pool, agreement)[:2]
        report["agreement"] = max(abs(whole[e]["accuracy"] - split[e]["accuracy"]) for e in agreement)
        report["workers"] = pool.num_workers
    return report


def summarize(report: dict) -> dict:
    """The figures of the report: measured rates (wall clock) and the CPU model of idle cores, where DMMPE keeps every
    worker busy and data-parallel takes as long per candidate as its slower slice."""
    dmmpe, dp, workers = report["dmmpe"], report["dp"], report["workers"]
    whole_cpu = statistics.fmean(dmmpe["cpu"])
    critical_cpu = statistics.fmean(max(t["cpu_slices"]) for t in dp["timings"])
    figures = {
        "dmmpe_rate": dmmpe["count"] / dmmpe["seconds"],
        "dp_rate": dp["count"] / dp["seconds"],
        "round_ratios": [whole / split for whole, split in zip(dmmpe["rates"], dp["rates"])],
        # share of the workers' wall time spent inside evaluate()
        "dmmpe_busy": sum(dmmpe["eval"]) / (workers * dmmpe["seconds"]),
        "dp_busy": sum(s for t in dp["timings"] for s in t["slices"]) / (workers * dp["seconds"]),
        "whole_cpu_ms": whole_cpu * 1e3,
        "split_cpu_ms": statistics.fmean(sum(t["cpu_slices"]) for t in dp["timings"]) * 1e3,
        "model_dmmpe_rate": workers / whole_cpu,
        "model_dp_rate": 1 / critical_cpu,
        "whole_ms": statistics.median(dmmpe["eval"]) * 1e3,
        "slice_ms": statistics.median(s for t in dp["timings"] for s in t["slices"]) * 1e3,
        "straggler_ms": statistics.median(max(t["slices"]) - min(t["slices"]) for t in dp["timings"]) * 1e3,
        "overhead_ms": statistics.median(t["wall"] - max(t["slices"]) for t in dp["timings"]) * 1e3,
    }
    figures["ratio"] = figures["dmmpe_rate"] / figures["dp_rate"]
    figures["model_ratio"] = figures["model_dmmpe_rate"] / figures["model_dp_rate"]
    figures["work_ratio"] = figures["split_cpu_ms"] / figures["whole_cpu_ms"]
    return figures


def render(reports: dict[str, dict], args: argparse.Namespace) -> str:
    workers = next(iter(reports.values()))["workers"]
    figures = {name: summarize(report) for name, report in reports.items()}
    lines = [
        f"Measured by `python bench/bench_dmmpe.py{' --quick' if args.quick else ''}` on {machine_description(1)}.",
        "",
        (
            f"{workers} worker processes of `search.pool.EvaluationPool`, 1 torch thread each; a random-init "
            f"`EvoNetSupernetConfig.tiny(resolution_choices=[8, 16])` supernet; digits validation split (180 images); "
            f"{args.rounds} alternating round(s) of {args.candidates} fresh random candidates per mode, after a "
            f"warm-up. Evaluators: `ranking` = `evonets.engine.evaluation.evaluate` of the supernet forward; "
            f"`search` = `search.evaluators.SupernetEvaluator` (extracts the subnet; accuracy, loss, MACs, "
            f"parameters). *Measured* is wall clock; the *CPU model* gives what idle cores would do, from the workers' "
            f"CPU time per "
            f"evaluation, which other jobs on the machine hardly change: DMMPE {workers} / (CPU time of a candidate), "
            f"data-parallel 1 / (CPU time of a candidate's slower slice)."
        ),
        "",
        (
            "| evaluator | mode | candidates | wall s | workers busy | evaluations/s | CPU ms per candidate | "
            "evaluations/s, CPU model |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, report in reports.items():
        f = figures[name]
        dmmpe, dp = report["dmmpe"], report["dp"]
        lines += [
            (
                f"| {name} | DMMPE (whole candidate per worker) | {dmmpe['count']} | {dmmpe['seconds']:.2f} | "
                f"{f['dmmpe_busy']:.0%} | {f['dmmpe_rate']:.2f} | {f['whole_cpu_ms']:.1f} | {f['model_dmmpe_rate']:.2f} |"
            ),
            (
                f"| {name} | data-parallel ({workers} slices, barrier) | {dp['count']} | {dp['seconds']:.2f} | "
                f"{f['dp_busy']:.0%} | {f['dp_rate']:.2f} | {f['split_cpu_ms']:.1f} | {f['model_dp_rate']:.2f} |"
            ),
        ]
    lines += [
        "",
        (
            "| evaluator | DMMPE / data-parallel, measured | per round: median (range) | CPU model | data-parallel's "
            "extra CPU work | slice / whole wall time | slower-slice wait, ms | pool round trip, ms | accuracy difference |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, report in reports.items():
        f = figures[name]
        ratios = f["round_ratios"]
        lines.append(
            f"| {name} | **{f['ratio']:.2f}x** | {statistics.median(ratios):.2f}x ({min(ratios):.2f}x-{max(ratios):.2f}x)"
            f" | {f['model_ratio']:.2f}x | {f['work_ratio']:.2f}x | {f['slice_ms'] / f['whole_ms']:.0%} | "
            f"{f['straggler_ms']:.1f} | {f['overhead_ms']:.1f} | {report['agreement']:.2g} |"
        )
    verdicts = ", ".join(
        f"{name} {'met' if f['ratio'] >= GOAL_RATIO else 'not met'} ({f['ratio']:.2f}x)" for name, f in figures.items()
    )
    lines += [
        "",
        (
            f"Goal >= {GOAL_RATIO}x more evaluations per second (EvoNAS reports > 70 %), measured: {verdicts}. Why "
            f"data-parallel loses: a 1/{workers} slice costs far more than 1/{workers} of a whole candidate, because "
            f"building the subnet (its template and weight slices; for `search` also the extraction and the MAC "
            f"count) happens on every worker for every candidate and PyTorch's per-op overhead on small tensors does "
            f"not shrink with the batch (the extra-CPU-work column, a lower bound of the gain on idle cores); then the "
            f"per-candidate barrier waits for the slower slice and for the round trip through the pool. Without fixed "
            f"per-candidate costs and a barrier both modes would run at the same rate: DMMPE gains exactly the work "
            f"that data-parallel duplicates or waits for, so its gain grows with the per-candidate fixed cost and "
            f"shrinks with larger validation batches. The measured figures swing with the load of other jobs (see "
            f"the load average above: each worker gets a varying share of a core; the per-round range shows it), and "
            f"CPU-time noise on a busy machine overstates the slower-slice wait in the model."
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    log = lambda message: print(message, file=sys.stderr, flush=True)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        config = EvoNetSupernetConfig.tiny(resolution_choices=RESOLUTIONS, num_labels=10)
        EvoNetSupernet(config).save_pretrained(folder)
        reports = {name: measure(args, folder, name, log) for name in args.evaluators}
    markdown = render(reports, args)
    print(markdown)
    if args.output is not None:
        write_section("dmmpe", "DMMPE vs data-parallel evaluation", markdown, args.output)
        log(f"wrote {args.output}")
    return markdown


if __name__ == "__main__":
    main()
