"""Time the selective-scan backends at VMamba's stage-1 size and record the table in docs/benchmarks.md.

Size: batch 1, 4 scan orders x d_inner 384 = 1536 channels in 4 groups, length 56 x 56 = 3136, d_state 16.
For "reference", "torch" and "cpu_fused" it times the forward (under no_grad) and forward + backward (all
inputs require grad), reporting the median over repeats. The reference forward + backward takes minutes,
so it runs once; --quick skips it. The result replaces the text between the bench_scan markers of
docs/benchmarks.md (the file and its "## Selective scan" section are created when missing).

    python bench/bench_scan.py [--quick] [--repeats 5] [--threads 2] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _report import DOC_PATH, machine_description, write_section

from evonets.models.selective_scan import available_backends, selective_scan

GOALS = {"fwd": 7.0, "fwd_bwd": 20.0}  # required speed-ups of "cpu_fused" over "reference"


def make_inputs(groups: int, per_group: int, length: int, d_state: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Batch-1 inputs scaled like a trained SS2D: dt = softplus(N(0, 1) - 2 + bias), A = -exp(U(0, log 16))."""
    generator = torch.Generator().manual_seed(seed)
    channels = groups * per_group
    return {
        "u": torch.randn(1, channels, length, generator=generator),
        "delta": torch.randn(1, channels, length, generator=generator) - 2.0,
        "A": -torch.exp(torch.rand(channels, d_state, generator=generator) * math.log(16.0)),
        "B": torch.randn(1, groups, d_state, length, generator=generator),
        "C": torch.randn(1, groups, d_state, length, generator=generator),
        "D": torch.randn(channels, generator=generator),
        "delta_bias": 0.5 * torch.randn(channels, generator=generator),
    }


def median_seconds(step: Callable[[], None], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_backend(inputs: dict[str, torch.Tensor], backend: str, repeats: int, with_backward: bool) -> float:
    grad_y = torch.ones_like(inputs["u"])

    def forward() -> None:
        with torch.no_grad():
            selective_scan(**inputs, backend=backend)

    def forward_backward() -> None:
        leaves = {name: x.detach().requires_grad_() for name, x in inputs.items()}
        selective_scan(**leaves, backend=backend).backward(grad_y)

    if not with_backward:
        return median_seconds(forward, repeats)
    # The reference's backward takes minutes: no warm-up round for a single repeat.
    return median_seconds(forward_backward, repeats, warmup=0 if repeats == 1 else 1)


def single_thread_cpu_seconds(inputs: dict[str, torch.Tensor], backend: str, repeats: int) -> float:
    """Median process CPU time of one forward on one thread: waiting for a core busy with other jobs does not
    count, so this compares backends fairly on a shared machine (unlike wall time with spinning OpenMP threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        with torch.no_grad():
            selective_scan(**inputs, backend=backend)
            for _ in range(repeats):
                start = time.process_time()
                selective_scan(**inputs, backend=backend)
                times.append(time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times)


def format_ms(seconds: float | None) -> str:
    return "skipped" if seconds is None else f"{1e3 * seconds:,.1f}"


def format_speedup(reference: float | None, seconds: float | None) -> str:
    return "n/a" if reference is None or seconds is None else f"{reference / seconds:,.1f}x"


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backends = ["reference", "torch"]
    if "cpu_fused" in available_backends():  # builds the kernel now, outside the timings
        backends.append("cpu_fused")
    else:
        print("warning: the fused CPU kernel is not available; timing reference and torch only", file=sys.stderr)
    groups, per_group, length, d_state = 4, 384, 56 * 56, 16
    inputs = make_inputs(groups, per_group, length, d_state)
    started = datetime.datetime.now()
    header = machine_description(args.threads)
    print(header, flush=True)

    results: dict[str, dict[str, float | None]] = {}
    for backend in backends:
        reference = backend == "reference"
        fwd = time_backend(inputs, backend, 2 if reference else args.repeats, with_backward=False)
        print(f"{backend}: forward {1e3 * fwd:.1f} ms", flush=True)
        fwd_bwd = None
        if not (reference and args.quick):
            fwd_bwd = time_backend(inputs, backend, 1 if reference else args.repeats, with_backward=True)
            print(f"{backend}: forward + backward {1e3 * fwd_bwd:.1f} ms", flush=True)
        results[backend] = {"fwd": fwd, "fwd_bwd": fwd_bwd}

    ref = results["reference"]
    lines = [
        f"Measured {started:%Y-%m-%d %H:%M} by `python bench/bench_scan.py{' --quick' if args.quick else ''}` "
        f"on {header}.",
        "",
        f"Size: batch 1, {groups} x {per_group} = {groups * per_group} channels in {groups} groups, "
        f"length {length}, d_state {d_state}, float32. Median of {args.repeats} runs "
        "(reference: forward 2 runs, forward + backward 1 run).",
        "",
        "| backend | fwd ms | fwd+bwd ms | fwd speed-up | fwd+bwd speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for backend, times in results.items():
        lines.append(
            f"| {backend} | {format_ms(times['fwd'])} | {format_ms(times['fwd_bwd'])} | "
            f"{format_speedup(ref['fwd'], times['fwd'])} | {format_speedup(ref['fwd_bwd'], times['fwd_bwd'])} |"
        )
    cpu_times = {backend: single_thread_cpu_seconds(inputs, backend, 3) for backend in results}
    lines += [
        "",
        "Forward on 1 thread, process CPU time (median of 3; other jobs on the machine barely affect it):",
        "",
        "| backend | fwd CPU ms | speed-up |",
        "|---|---:|---:|",
    ]
    for backend, seconds in cpu_times.items():
        lines.append(f"| {backend} | {format_ms(seconds)} | {format_speedup(cpu_times['reference'], seconds)} |")
    if "cpu_fused" in results:
        fused = results["cpu_fused"]
        checks = [("forward", ref["fwd"], fused["fwd"], GOALS["fwd"])]
        if ref["fwd_bwd"] is not None:
            checks.append(("forward + backward", ref["fwd_bwd"], fused["fwd_bwd"], GOALS["fwd_bwd"]))
        checks.append(("forward by 1-thread CPU time", cpu_times["reference"], cpu_times["cpu_fused"], GOALS["fwd"]))
        verdicts = []
        for label, reference, seconds, goal in checks:
            speedup = reference / seconds
            verdicts.append(f"{label} {speedup:,.1f}x (goal >= {goal:g}x: {'met' if speedup >= goal else 'MISSED'})")
        lines += ["", "cpu_fused vs reference: " + "; ".join(verdicts) + "."]

        lines += [
            "",
            "cpu_fused by d_state (same size otherwise):",
            "",
            "| d_state | fwd ms | fwd+bwd ms |",
            "|---:|---:|---:|",
        ]
        for n in (1, 16, 64):
            sized = make_inputs(groups, per_group, length, n)
            lines.append(
                f"| {n} | {format_ms(time_backend(sized, 'cpu_fused', args.repeats, False))} | "
                f"{format_ms(time_backend(sized, 'cpu_fused', args.repeats, True))} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip the reference forward + backward (minutes)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--no-write", action="store_true", help=f"print only; do not update {DOC_PATH.name}")
    parser.add_argument("--doc", type=Path, default=DOC_PATH, help="markdown file to update")
    args = parser.parse_args()
    generated = run(args)
    print(generated)
    if not args.no_write:
        write_section("bench_scan", "Selective scan", generated, args.doc)
        print(f"updated {args.doc}")


if __name__ == "__main__":
    main()
