"""Supernet overhead: a subnet run inside `EvoNetSupernet` vs the same subnet extracted as a standalone model.

    python bench/bench_supernet.py            # full run (about 5 minutes on 2 idle cores), writes docs/benchmarks.md
    python bench/bench_supernet.py --quick    # smoke run: few repeats, no file written unless --output is given

What it does, in one process:

1. Builds the quickstart supernet (`EvoNetSupernetConfig.tiny`, random weights: latency does not depend on them) and
   takes three architectures: `largest()` (SS2D everywhere, the first allowed type), `smallest()` and one
   `sample(random.Random(0))`, each at the quickstart resolution of 32 x 32.
2. For each thread count (1 and 2), architecture and batch size (1 and 32), times under `torch.inference_mode`,
   eval mode:
   - `extracted`: `supernet.extract(arch)(pixel_values)`, the standalone `EvoNetForImageClassification`;
   - `supernet`: `supernet(pixel_values)` after `set_architecture(arch)`: the architecture's meta template run with
     the cached slices of the shared weights in its parameter slots (the search and evaluation path);
   - `supernet, re-sliced`: the same after `clear_cache()` before every call, i.e. slicing (views and segment
     concatenations) on every call, which is what every call costs after a weight update.
   Interleaved rounds (every entry of one architecture and batch per round, rotating order, one untimed call before
   the timed ones), median and inter-quartile range of wall-clock time over all timed calls, and the median of the
   process CPU time per call: on a shared machine the CPU-time ratio is the steadier comparison.
3. Times a training step (train mode, forward + loss + backward, batch 32) of the supernet, which slices with
   gradients on every call, against the extracted model.
4. Times the cold start of an architecture never seen before (`set_architecture` + first batch-1 forward: builds
   its meta template and slicing rules) over `--cold` fresh random architectures.
5. Prints the markdown and writes it to `docs/benchmarks.md` between `<!-- bench_supernet:start -->` and
   `<!-- bench_supernet:end -->` under `## Supernet overhead`, leaving the rest of the file alone.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


from _report import DOC_PATH, machine_description, summarize, time_interleaved, write_section

from evonets.models.search_space import EvoNetSupernetConfig
from evonets.models.supernet import EvoNetSupernet

THREADS = (1, 2)
RESOLUTION = 32
BATCHES = (1, 32)
TRAIN_BATCH = 32
GOAL_RATIO = 1.3


def architectures(supernet: EvoNetSupernet) -> dict[str, dict]:
    space = supernet.search_space
    archs = {
        "largest": space.largest(),
        "smallest": space.smallest(),
        "random (seed 0)": space.sample(random.Random(0)),
    }
    for arch in archs.values():
        arch["resolution"] = RESOLUTION
    return archs


def cold_starts(supernet: EvoNetSupernet, count: int) -> list[float]:
    """Seconds of `set_architecture` + the first batch-1 forward for `count` architectures never run before."""
    space, rng, seen, seconds = supernet.search_space, random.Random(1), set(), []
    pixel_values = torch.randn(1, 3, RESOLUTION, RESOLUTION)
    with torch.inference_mode():
        while len(seconds) < count:
            arch = space.sample(rng)
            arch["resolution"] = RESOLUTION
            if space.encode(arch) in seen:
                continue
            seen.add(space.encode(arch))
            start = time.perf_counter()
            supernet.set_architecture(arch)
            supernet(pixel_values)
            seconds.append(time.perf_counter() - start)
    return seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, for a smoke run")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=list(THREADS), help="torch thread counts to measure (default 1 2)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 10, quick 2)")
    parser.add_argument(
        "--per-round", type=int, default=None, help="timed calls per entry and round (default 5, quick 2)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per entry first (default 3, quick 1)")
    parser.add_argument(
        "--cold", type=int, default=None, help="fresh architectures for the cold start (default 20, quick 3)"
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="markdown file to update (default docs/benchmarks.md, quick: none)"
    )
    args = parser.parse_args(argv)
    defaults = (2, 2, 1, 3) if args.quick else (10, 5, 3, 20)
    for name, default in zip(("rounds", "per_round", "warmup", "cold"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.output is None and not args.quick:
        args.output = DOC_PATH
    return args


def measure(supernet: EvoNetSupernet, args: argparse.Namespace, log: Callable[[str], None]) -> list[dict]:
    """One row per thread count, architecture and batch size."""
    space, rows = supernet.search_space, []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for label, arch in architectures(supernet).items():
            extracted = supernet.extract(arch)
            for batch in BATCHES:
                generator = torch.Generator().manual_seed(0)
                pixel_values = torch.randn(batch, 3, RESOLUTION, RESOLUTION, generator=generator)
                supernet.set_architecture(arch)

                def resliced(pixel_values=pixel_values):
                    supernet.clear_cache()
                    return supernet(pixel_values)

                calls = {
                    "extracted": lambda pixel_values=pixel_values, extracted=extracted: extracted(pixel_values),
                    "supernet": lambda pixel_values=pixel_values: supernet(pixel_values),
                    "resliced": resliced,
                }
                samples = time_interleaved(calls, args.rounds, args.per_round, args.warmup)
                row = {
                    "threads": threads,
                    "label": label,
                    "encoding": space.encode(arch),
                    "params": sum(parameter.numel() for parameter in extracted.parameters()),
                    "batch": batch,
                    "wall": {name: summarize(timing.wall) for name, timing in samples.items()},
                    "cpu": {name: statistics.median(timing.cpu) * 1e3 for name, timing in samples.items()},
                }
                rows.append(row)
                log(
                    f"{threads} thread(s), {label}, batch {batch}: "
                    + ", ".join(f"{name} {median:.2f} ms" for name, (median, _) in row["wall"].items())
                )
    return rows


def measure_training(supernet: EvoNetSupernet, args: argparse.Namespace, log: Callable[[str], None]) -> list[dict]:
    """Forward + backward of a cross-entropy loss at batch 32, train mode: the supernet slices with gradients on every
    call (gradients land in the max-size weights) vs the extracted model."""
    torch.set_num_threads(args.threads[0])
    rows, labels = [], torch.arange(TRAIN_BATCH) % 10
    pixel_values = torch.randn(TRAIN_BATCH, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(0))
    supernet.train()
    for label, arch in architectures(supernet).items():
        extracted = supernet.extract(arch).train()
        supernet.set_architecture(arch)

        def step(model):
            model.zero_grad(set_to_none=True)
            model(pixel_values, labels=labels).loss.backward()

        calls = {"extracted": lambda model=extracted: step(model), "supernet": lambda: step(supernet)}
        samples = time_interleaved(calls, args.rounds, max(1, args.per_round // 2), args.warmup, grad=True)
        rows.append(
            {
                "label": label,
                "wall": {name: summarize(timing.wall) for name, timing in samples.items()},
                "cpu": {name: statistics.median(timing.cpu) * 1e3 for name, timing in samples.items()},
            }
        )
        log(f"training, {label}: " + ", ".join(f"{n} {m:.2f} ms" for n, (m, _) in rows[-1]["wall"].items()))
    supernet.eval()
    return rows


def _cell(median: float, iqr: float) -> str:
    return f"{median:.2f} ({iqr:.2f}){' †' if iqr > median / 2 else ''}"


def render(
    rows: list[dict], training: list[dict], supernet: EvoNetSupernet, cold: list[float], args: argparse.Namespace
) -> str:
    space = supernet.search_space
    n_params = sum(parameter.numel() for parameter in supernet.parameters())
    lines = [
        "Generated by `python bench/bench_supernet.py`; do not edit by hand.",
        "",
        f"Machine: {machine_description()}. The machine was shared with other jobs while measuring: the "
        "inter-quartile ranges (IQR) show that noise, and the CPU-time ratios (process CPU time per call, which "
        "does not count waiting for a core) are the steadier comparison.",
        "",
        f"Quickstart space (`EvoNetSupernetConfig.tiny`: 3 stages, widths 16-64, all four block types at every "
        f"position; {space.cardinality():.2e} architectures, {n_params / 1e6:.2f} M supernet parameters), "
        f"{RESOLUTION} x {RESOLUTION} input, fp32, eval, `torch.inference_mode`; median (IQR) wall-clock ms over "
        f"{args.rounds} x {args.per_round} interleaved calls. *extracted*: `supernet.extract(arch)`, a standalone "
        "`EvoNetForImageClassification`; *supernet*: `set_architecture(arch)` then `supernet(pixel_values)`, the "
        "architecture's meta template run on cached slices of the shared weights (search and evaluation); "
        "*re-sliced*: the slices rebuilt on every call (what the first call after a weight update costs).",
        "",
        "| threads | architecture | params | batch | extracted ms | supernet ms | ratio | CPU-time ratio "
        "| re-sliced ms | ratio | CPU-time ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        wall, cpu = row["wall"], row["cpu"]
        base, cpu_base = wall["extracted"][0], cpu["extracted"]
        cells = {name: _cell(median, iqr) for name, (median, iqr) in wall.items()}
        lines.append(
            f"| {row['threads']} | {row['label']} | {row['params'] / 1e3:.0f} k | {row['batch']} "
            f"| {cells['extracted']} | {cells['supernet']} | {wall['supernet'][0] / base:.2f}x "
            f"| {cpu['supernet'] / cpu_base:.2f}x | {cells['resliced']} | {wall['resliced'][0] / base:.2f}x "
            f"| {cpu['resliced'] / cpu_base:.2f}x |"
        )
    lines += ["", "† IQR above half the median: other jobs took the cores during these calls."]
    labels = {row["label"]: row["encoding"] for row in rows}
    lines += ["", "Architectures: " + "; ".join(f"{label} `{encoding}`" for label, encoding in labels.items()) + "."]
    lines += [
        "",
        f"Goal: the supernet at most {GOAL_RATIO}x slower than the extracted model (worst row, cached slices):",
    ]
    for threads in args.threads:
        subset = [row for row in rows if row["threads"] == threads]
        worst_cpu = max(row["cpu"]["supernet"] / row["cpu"]["extracted"] for row in subset)
        worst_wall = max(row["wall"]["supernet"][0] / row["wall"]["extracted"][0] for row in subset)
        verdict = "met" if worst_cpu <= GOAL_RATIO else "NOT met"
        lines.append(
            f"- {threads} thread(s): **{verdict}** by CPU time (worst {worst_cpu:.2f}x); worst wall-clock ratio "
            f"{worst_wall:.2f}x."
        )
    lines += [
        "",
        f"Training step (train mode, forward + cross-entropy + backward, batch {TRAIN_BATCH}, {args.threads[0]} "
        "thread(s)): the supernet slices with gradients on every call, so gradients land in the max-size weights.",
        "",
        "| architecture | extracted ms | supernet ms | ratio | CPU-time ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in training:
        wall, cpu = row["wall"], row["cpu"]
        lines.append(
            f"| {row['label']} | {_cell(*wall['extracted'])} | {_cell(*wall['supernet'])} "
            f"| {wall['supernet'][0] / wall['extracted'][0]:.2f}x "
            f"| {cpu['supernet'] / cpu['extracted']:.2f}x |"
        )
    lines += [
        "",
        f"Cold start of an architecture never run before (`set_architecture` + first batch-1 forward, which builds its "
        f"meta template and slicing rules), {len(cold)} random architectures, {args.threads[0]} thread(s): median "
        f"{statistics.median(cold):.1f} ms, max {max(cold):.1f} ms.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    log = lambda message: print(message, file=sys.stderr, flush=True)
    torch.manual_seed(0)
    supernet = EvoNetSupernet(EvoNetSupernetConfig.tiny(num_labels=10)).eval()
    rows = measure(supernet, args, log)
    training = measure_training(supernet, args, log)
    torch.set_num_threads(args.threads[0])
    cold = [seconds * 1e3 for seconds in cold_starts(supernet, args.cold)]
    markdown = render(rows, training, supernet, cold, args)
    print(markdown)
    if args.output is not None:
        write_section("bench_supernet", "Supernet overhead", markdown, args.output)
        log(f"wrote {args.output}")
    return markdown


if __name__ == "__main__":
    main()
