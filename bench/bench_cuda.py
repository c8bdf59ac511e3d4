"""The CUDA path (issue 21, item 4): mamba-ssm's scan against ours, and the supernet's distillation and the search's
evaluations on GPU against the same machine's CPU.

    python bench/bench_cuda.py            # on a CUDA machine with mamba-ssm (under 5 min on an H200); writes the docs
    python bench/bench_cuda.py --quick    # CPU smoke run of parts 2 and 3 (about 2 min on 2 cores); part 1 needs CUDA
    bash bench/cuda_device.sh             # on a borrowed GPU machine: carried wheels, mamba-ssm built, then this

What it does, in one process (the distillations in fresh child processes):

1. **Scan parity** (CUDA only). An `EvoNetSS2D` mixer (hidden 96, d_inner 192, d_state 16) on a non-square 24 x 32 map,
   so that a row/column mix-up cannot cancel out. Its scan is run with `backend="cuda"` (mamba-ssm's
   `selective_scan_fn`) and with `backend="torch"` (the per-module setting `mixer.scan.backend`, the one ONNX export
   switches too): output, input gradient and every parameter's gradient. Then each of the four scan orders alone:
   the exact inputs the mixer hands its scan (caught by a forward pre-hook), one order's channels and B/C group,
   scanned by `selective_scan(..., backend=...)` with "cuda", "torch" and "reference": y and the gradients of u,
   delta, A, B, C, D and delta_bias. Error = max |ours - mamba-ssm| / max |mamba-ssm| per tensor, float32; above
   `RELATIVE_TOLERANCE` the run fails. Also the mixer's forward + backward time per backend at VMamba-T's stage-1 size.
   Without CUDA this part is skipped with a message; with CUDA but no importable mamba-ssm it fails.
2. **Distillation** on the quickstart setting (`configs/quickstart.yaml`: real digits at 16 px, `tiny` space,
   CA-DDKD with a ConvNeXtV2 teacher, trained here for a few epochs first) through distill's entry point
   `build_supernet`: on the GPU (accelerate picks CUDA unless `trainer.cpu`), then with `trainer.cpu = true` on one
   CPU thread and on all cores. Each run is a fresh process, because accelerate fixes its device once per process.
   Throughput = the median of the training log's `images_per_s` windows after the first (the warm-up). Checks: the
   run's device is the one asked for, on GPU its peak CUDA memory holds at least the parameters, and the loss falls.
3. **Search evaluations**: subnets of the supernet trained in part 2, on the validation split, by
   `search.evaluators.SupernetEvaluator` (what the search runs: extract, accuracy and loss, MACs, parameters) on one
   CPU thread, and through `search.pool.EvaluationPool` with one single-threaded worker per core (the search's DMMPE
   path). The evaluator has no device setting, so the search evaluates on CPU even on a GPU machine; what a GPU would
   change, its accuracy-and-loss half (extract, then `evaluate` over the validation tensors), is timed on each device,
   and the GPU's scores are checked against the CPU evaluator's.
4. Writes every figure to `--json` after each part (a run cut short keeps the parts done) and, unless `--quick`,
   the markdown to `docs/benchmarks.md` between `<!-- bench_cuda:start -->` and `<!-- bench_cuda:end -->`.
   Exits non-zero, saying why, when a check failed.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch
from _report import DOC_PATH, machine_description, write_section

from evonets.models.selective_scan import BACKEND_ENV_VAR

REPO = Path(__file__).resolve().parents[1]

SCAN_ORDER_NAMES = ("row-major", "column-major", "row-major reversed", "column-major reversed")  # `scan_orders`
SCAN_INPUTS = ("u", "delta", "A", "B", "C", "D", "delta_bias")
# mamba-ssm builds with --use_fast_math, and a scan sums hundreds of decayed terms per output in another order than
# ours: float32 agreement is ~1e-5 relative. A wrong layout, order or gradient is off by O(1).
RELATIVE_TOLERANCE = 2e-3
# Candidates per pool worker in the timed pool run: enough that its start and end (workers idle while the last
# candidates finish) weigh little.
CANDIDATES_PER_POOL_WORKER = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, for a smoke run; no markdown written")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.yaml")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_cuda", help="teacher and runs")
    parser.add_argument(
        "--json", type=Path, default=None, help="results file (default bench/results/cuda.json, quick: in --work)"
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="markdown to update (default docs/benchmarks.md, quick: none)"
    )
    parser.add_argument("--teacher-epochs", type=int, default=None, help="teacher training (default 4, quick 1)")
    parser.add_argument("--gpu-steps", type=int, default=60, help="distillation steps on the GPU")
    parser.add_argument(
        "--cpu-steps", type=int, default=None, help="distillation steps per CPU run (default 20, quick 8)"
    )
    parser.add_argument(
        "--cpu-threads", type=int, nargs="+", default=None, help="CPU distillation runs (default: 1 and all cores)"
    )
    parser.add_argument(
        "--evaluations", type=int, default=None, help="subnets evaluated per mode (default 48, quick 6)"
    )
    parser.add_argument("--note", default="", help="appended to the markdown, e.g. how mamba-ssm was installed")
    args = parser.parse_args(argv)
    quick = args.quick
    args.teacher_epochs = args.teacher_epochs or (1 if quick else 4)
    args.cpu_steps = args.cpu_steps or (8 if quick else 20)
    args.cpu_threads = args.cpu_threads or sorted({1, os.cpu_count() or 1})
    args.evaluations = args.evaluations or (6 if quick else 48)
    if quick:
        args.work = args.work.with_name(args.work.name + "_quick")
    args.json = args.json or (args.work / "results.json" if quick else REPO / "bench" / "results" / "cuda.json")
    if args.output is None and not quick:
        args.output = DOC_PATH
    if not quick and not torch.cuda.is_available():
        parser.error("no CUDA device: the full run measures the GPU (use --quick for the CPU smoke run)")
    return args


def log(message: str) -> None:
    print(message, flush=True)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|: scale-free, and unmoved by elements that happen to be near zero."""
    return float((ours.float() - reference.float()).abs().max() / reference.float().abs().max().clamp_min(1e-30))


def cuda_seconds(call: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median wall seconds of `call()` on the GPU, synchronised around each call."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# 1. Scan parity ------------------------------------------------------------------------------------------------


def scan_parity() -> dict:
    """mamba-ssm's scan against ours on CUDA, in the SS2D mixer and per scan order (see the module docstring)."""
    from evonets.models.mixer_ss2d import NUM_SCAN_ORDERS, EvoNetSS2D
    from evonets.models.selective_scan import available_backends

    try:  # for its message: the backend switch below only says whether it imports
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception as error:  # noqa: BLE001 -- not installed, or no working CUDA extension
        return {"error": f"mamba-ssm does not import ({type(error).__name__}: {error})"}
    if "cuda" not in available_backends():
        return {"error": "mamba-ssm imports, but evonets' selective scan does not offer the 'cuda' backend"}

    torch.manual_seed(0)
    mixer = EvoNetSS2D(hidden_size=96, d_inner=192, d_state=16, dt_rank=6)
    mixer.init_ssm_parameters()
    mixer = mixer.cuda()
    hidden_states = torch.randn(2, 24, 32, 96, device="cuda")

    scan_inputs = []
    keep_inputs = mixer.scan.register_forward_pre_hook(lambda module, inputs: scan_inputs.append(inputs))
    mixer_errors = compare_mixer(mixer, hidden_states)
    keep_inputs.remove()

    u, delta, A, B, C, D, delta_bias = (x.detach() for x in scan_inputs[0])
    delta_bias = delta_bias.reshape(-1)  # per order (K, E), as the scan module flattens it
    channels_per_order = u.shape[1] // NUM_SCAN_ORDERS
    order_errors = {}
    for order, name in enumerate(SCAN_ORDER_NAMES):
        channels = slice(order * channels_per_order, (order + 1) * channels_per_order)
        one_order = {
            "u": u[:, channels],
            "delta": delta[:, channels],
            "A": A[channels],
            "B": B[:, order : order + 1],
            "C": C[:, order : order + 1],
            "D": D[channels],
            "delta_bias": delta_bias[channels],
        }
        order_errors[name] = compare_scans(one_order)
        log(
            f"scan order {name}: "
            + ", ".join(f"{ours} {max(e.values()):.1e}" for ours, e in order_errors[name].items())
        )

    scan_errors = [
        error for backends in order_errors.values() for errors in backends.values() for error in errors.values()
    ]
    largest = max(*mixer_errors.values(), *scan_errors)
    return {
        "size": {"batch": 2, "height": 24, "width": 32, "hidden_size": 96, "d_inner": 192, "d_state": 16},
        "mixer": mixer_errors,
        "orders": order_errors,
        "largest_error": largest,
        "mixer_ms": time_mixer_backends(),
    }


def compare_mixer(mixer, hidden_states: torch.Tensor) -> dict[str, float]:
    """Relative errors of the mixer's output and of the gradients of its input and parameters, backend "torch"
    against "cuda" (same weights, same upstream gradient)."""
    names = ["output", "grad hidden_states"] + [f"grad {name}" for name, _ in mixer.named_parameters()]
    grad_output = torch.randn_like(hidden_states)
    results = {}
    for backend in ("cuda", "torch"):
        mixer.scan.backend = backend
        hidden = hidden_states.clone().requires_grad_()
        output = mixer(hidden)
        grads = torch.autograd.grad(output, [hidden, *mixer.parameters()], grad_output)
        results[backend] = [output.detach(), *grads]
    mixer.scan.backend = "auto"
    errors = {
        name: relative_error(ours, theirs) for name, ours, theirs in zip(names, results["torch"], results["cuda"])
    }
    log(f"SS2D mixer, torch vs cuda: largest error {max(errors.values()):.1e} ({max(errors, key=errors.get)})")
    return errors


def compare_scans(inputs: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per our backend ("torch", "reference"), the relative errors of y and of each input's gradient against "cuda"."""
    from evonets.models.selective_scan import selective_scan

    grad_y = torch.randn_like(inputs["u"])
    results = {}
    for backend in ("cuda", "torch", "reference"):
        leaves = {name: x.clone().requires_grad_() for name, x in inputs.items()}
        y = selective_scan(**leaves, delta_softplus=True, backend=backend)
        grads = torch.autograd.grad(y, list(leaves.values()), grad_y)
        results[backend] = {"y": y.detach(), **{f"grad {name}": g for name, g in zip(SCAN_INPUTS, grads)}}
    return {
        ours: {name: relative_error(results[ours][name], results["cuda"][name]) for name in results["cuda"]}
        for ours in ("torch", "reference")
    }


def time_mixer_backends() -> dict[str, float]:
    """Forward + backward milliseconds of an SS2D mixer at VMamba-T's stage-1 size (batch 16, 56 x 56, hidden 96,
    d_inner 192), per scan backend."""
    from evonets.models.mixer_ss2d import EvoNetSS2D

    mixer = EvoNetSS2D(hidden_size=96, d_inner=192, d_state=16, dt_rank=6)
    mixer.init_ssm_parameters()
    mixer = mixer.cuda()
    hidden_states = torch.randn(16, 56, 56, 96, device="cuda", requires_grad=True)
    milliseconds = {}
    for backend in ("cuda", "torch"):
        mixer.scan.backend = backend
        milliseconds[backend] = 1e3 * cuda_seconds(lambda: mixer(hidden_states).sum().backward(), repeats=10)
        log(f"SS2D mixer forward + backward at 56 x 56, batch 16, {backend}: {milliseconds[backend]:.1f} ms")
    return milliseconds


# 2. Distillation -----------------------------------------------------------------------------------------------


def distill_config_argv(args, output_dir: Path, steps: int, *overrides: str) -> list[str]:
    """The command line of one distillation: the quickstart config, the bench's teacher, `steps` steps logged in
    four windows, no checkpoints or trackers."""
    return [
        "--config",
        str(args.config),
        "--teacher.path",
        str(args.work / "teacher"),
        "--teacher.train.epochs",
        str(args.teacher_epochs),
        "--trainer.output_dir",
        str(output_dir),
        "--trainer.max_steps",
        str(steps),
        "--trainer.warmup_steps",
        str(max(1, steps // 10)),
        "--trainer.log_every",
        str(max(1, steps // 4)),
        "--trainer.eval_every",
        "0",
        "--trainer.save_every",
        "0",
        "--trainer.log_with",
        "none",
        "--trainer.progress_bar",
        "false",
        *overrides,
    ]


def distill_in_this_process(argv: list[str], device: str) -> dict:
    """One distillation by `distill.build_supernet`, and what its training log says: device, throughput, losses.
    Runs in a fresh process (`distill_in_fresh_process`)."""
    from distill import build_supernet, parse_config
    from evonets.models.selective_scan import resolve_backend

    config = parse_config(argv)
    result = build_supernet(config, log=log)
    rows = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    start = next(row for row in rows if row.get("event") == "start")
    windows = [row for row in rows if "loss" in row]
    if not start["device"].startswith(device):
        raise RuntimeError(f"asked for a {device} distillation, but accelerate ran it on {start['device']}")
    report = {
        "device": start["device"],
        "threads": config.trainer.num_threads,
        "scan_backend": resolve_backend("auto", device),
        "steps": result.steps,
        "batch_size": config.trainer.batch_size,
        "parameters": start["supernet_parameters"] + start["projector_parameters"],
        "losses": [(row["step"], row["loss"]) for row in windows],
        # The first window holds the warm-up (CUDA context and kernels, allocator, the first batches' caches).
        "images_per_s": statistics.median(row["images_per_s"] for row in windows[1:]),
        "val_accuracy": result.val_accuracy,
        "supernet_dir": str(result.supernet_dir),
        "data": asdict(config.data),
        "seconds": result.seconds,
    }
    if device == "cuda":
        report["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.max_memory_allocated() < 4 * report["parameters"]:  # float32
            raise RuntimeError(
                f"the GPU distillation peaked at {report['peak_cuda_mib']:.1f} MiB of CUDA memory, less than its "
                f"{report['parameters']} parameters take: the model did not run on the GPU"
            )
    return report


def distill_in_fresh_process(argv: list[str], device: str) -> dict:
    """`distill_in_this_process` in a spawned child: accelerate's process-wide state keeps the device of the first
    `Accelerator` (a later `cpu=True` raises after a GPU run, a later GPU run silently stays on CPU)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(distill_in_this_process, argv, device).result()


def distillation(args) -> dict:
    """The distillation on the GPU (when there is one), then on the CPU per `--cpu-threads`. The first run trains the
    teacher (the quickstart's `teacher.train_if_missing`), before its first step."""
    from evonets.models.selective_scan import available_backends

    available_backends()  # builds the fused CPU scan kernel now, outside the CPU runs' timings

    runs = {}
    if torch.cuda.is_available():
        runs["GPU"] = (args.gpu_steps, "cuda", [])
    for threads in args.cpu_threads:
        label = f"CPU, {threads} thread{'s' if threads > 1 else ''}"
        runs[label] = (args.cpu_steps, "cpu", ["--trainer.cpu", "true", "--trainer.num_threads", str(threads)])
    reports = {}
    for label, (steps, device, overrides) in runs.items():
        output_dir = args.work / "distill" / label.replace(", ", "_").replace(" ", "_")
        shutil.rmtree(output_dir, ignore_errors=True)  # a fresh run each time (build_supernet reuses finished ones)
        reports[label] = distill_in_fresh_process(distill_config_argv(args, output_dir, steps, *overrides), device)
        log(f"distillation, {label}: {reports[label]['images_per_s']:.0f} images/s over {steps} steps")
    main = reports[next(iter(reports))]
    (_, first_loss), (_, last_loss) = main["losses"][0], main["losses"][-1]
    return {
        "runs": reports,
        "main_run": next(iter(reports)),
        "loss_falls": last_loss < first_loss,
        "teacher_epochs": args.teacher_epochs,
    }


# 3. Search evaluations -----------------------------------------------------------------------------------------


def search_evaluations(args, supernet_dir: str, data: dict) -> dict:
    """Evaluations per second of the search's evaluator and pool on CPU, and of its accuracy half per device."""
    from evonets.engine.training import torch_threads
    from search.evaluators import FitnessSpec, SupernetEvaluator
    from search.ranking import sample_architectures

    spec = FitnessSpec(supernet=supernet_dir, data=data)
    evaluator = SupernetEvaluator(spec)
    workers = os.cpu_count() or 1
    pool_count = CANDIDATES_PER_POOL_WORKER * workers
    archs = sample_architectures(evaluator.space, 1 + args.evaluations + workers + pool_count, seed=0)
    warmup, *encodings = [evaluator.space.encode(arch) for arch in archs]  # every candidate new to every evaluator
    encodings, pool_warmup, pool_encodings = (
        encodings[: args.evaluations],
        encodings[args.evaluations : args.evaluations + workers],
        encodings[args.evaluations + workers :],
    )

    with torch_threads(1):
        evaluator({"encoding": warmup})
        start = time.perf_counter()
        scores = {encoding: evaluator({"encoding": encoding}) for encoding in encodings}
        evaluator_rate = len(encodings) / (time.perf_counter() - start)
    log(f"search evaluator, 1 CPU thread: {evaluator_rate:.2f} evaluations/s")

    pool_rate = pool_evaluations_per_second(spec, pool_warmup, pool_encodings, workers)
    log(f"search pool, {workers} workers x 1 thread: {pool_rate:.2f} evaluations/s")

    accuracy_rates, largest_accuracy_gap, largest_loss_gap = {}, 0.0, 0.0
    for device in ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]:
        with torch_threads(1):
            rate, device_scores = accuracy_and_loss(evaluator, warmup, encodings, device)
        accuracy_rates[device] = rate
        for encoding, score in device_scores.items():
            largest_accuracy_gap = max(largest_accuracy_gap, abs(score["accuracy"] - scores[encoding]["accuracy"]))
            largest_loss_gap = max(largest_loss_gap, abs(score["loss"] - scores[encoding]["loss"]))
        log(f"accuracy and loss only, {device}: {rate:.2f} evaluations/s")
    return {
        "evaluations": len(encodings),
        "validation_images": len(evaluator.labels),
        "evaluator_cpu_per_s": evaluator_rate,
        "pool_workers": workers,
        "pool_evaluations": len(pool_encodings),
        "pool_cpu_per_s": pool_rate,
        "accuracy_only_per_s": accuracy_rates,
        "largest_accuracy_gap": largest_accuracy_gap,
        "largest_loss_gap": largest_loss_gap,
    }


def pool_evaluations_per_second(spec, warmup: list[str], encodings: list[str], workers: int) -> float:
    """The search's DMMPE path on CPU: an `EvaluationPool` of `workers` single-threaded workers, each warmed up by
    about one candidate of `warmup` (a worker's first evaluation pays one-off costs), then all of `encodings` at once."""
    from search.evaluators import make_evaluator
    from search.pool import EvaluationPool

    with EvaluationPool(functools.partial(make_evaluator, asdict(spec)), workers=workers, threads_per_worker=1) as pool:
        pool.wait_ready()
        evaluate_in_pool(pool, warmup)
        start = time.perf_counter()
        evaluate_in_pool(pool, encodings)
        return len(encodings) / (time.perf_counter() - start)


def evaluate_in_pool(pool, encodings: list[str]) -> None:
    for encoding in encodings:
        pool.submit(encoding, {"encoding": encoding})
    errors = [result["error"] for _, result in pool.drain() if "error" in result]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(encodings)} pool evaluations failed, e.g. {errors[0]}")


def accuracy_and_loss(evaluator, warmup: str, encodings: list[str], device: str) -> tuple[float, dict[str, dict]]:
    """Evaluations per second, and the scores, of what `SupernetEvaluator` does for accuracy and loss (decode, extract,
    evaluate the validation tensors in the spec's batches) with the supernet and tensors moved to `device`."""
    from evonets.engine.evaluation import evaluate, tensor_batches
    from evonets.models.supernet import EvoNetSupernet

    supernet = EvoNetSupernet.from_pretrained(evaluator.spec.supernet).to(device).eval()
    pixel_values, labels = evaluator.pixel_values.to(device), evaluator.labels.to(device)

    def score(encoding: str) -> dict[str, float]:
        arch = evaluator.space.decode(encoding)
        model = supernet.extract(arch)
        batches = tensor_batches(pixel_values, labels, evaluator.spec.batch_size)
        return evaluate(lambda x: model(x).logits, batches, arch["resolution"])  # its float() waits for the GPU

    score(warmup)
    start = time.perf_counter()
    scores = {encoding: score(encoding) for encoding in encodings}
    return len(encodings) / (time.perf_counter() - start), scores


# Report --------------------------------------------------------------------------------------------------------


def gpu_description() -> str:
    if not torch.cuda.is_available():
        return "no CUDA device"
    properties = torch.cuda.get_device_properties(0)
    try:
        mamba = f"mamba-ssm {importlib.metadata.version('mamba_ssm')}"
    except importlib.metadata.PackageNotFoundError:
        mamba = "mamba-ssm not installed"
    return (
        f"{properties.name} ({properties.total_memory / 2**30:.0f} GiB, {properties.multi_processor_count} SMs, "
        f"compute capability {properties.major}.{properties.minor}); CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}, {mamba}"
    )


def render(args, results: dict) -> str:
    lines = [
        (
            f"`python bench/bench_cuda.py{' --quick' if args.quick else ''}` rewrites this block. GPU: "
            f"{results['gpu']}. CPU: {results['machine']}."
        ),
        "",
    ]
    parity = results.get("scan_parity")
    if parity is None or "error" in parity:
        lines += [f"**Scan parity**: not run ({parity['error'] if parity else 'no CUDA device'}).", ""]
    else:
        lines += render_parity(parity)
    if "distillation" in results:
        lines += render_distillation(results["distillation"])
    if "search" in results:
        lines += render_search(results["search"])
    if args.note:
        lines += [args.note, ""]
    return "\n".join(lines)


def render_parity(parity: dict) -> list[str]:
    size = parity["size"]
    columns = ["y"] + [f"grad {name}" for name in SCAN_INPUTS]
    lines = [
        (
            f"**Scan parity**, float32, an SS2D mixer (hidden {size['hidden_size']}, d_inner {size['d_inner']}, "
            f"d_state {size['d_state']}) on a batch of {size['batch']} {size['height']} x {size['width']} maps. Error = "
            "max |ours - mamba-ssm| / max |mamba-ssm| per tensor (the run fails above "
            f"{RELATIVE_TOLERANCE:g}). Each scan order alone, on the inputs the mixer gives its scan:"
        ),
        "",
        "| scan order | our backend | " + " | ".join(columns) + " |",
        "| --- | --- |" + " ---: |" * len(columns),
    ]
    for order, backends in parity["orders"].items():
        for ours, errors in backends.items():
            lines.append(f"| {order} | {ours} | " + " | ".join(f"{errors[c]:.1e}" for c in columns) + " |")
    mixer = parity["mixer"]
    grads = {name: error for name, error in mixer.items() if name.startswith("grad ")}
    worst_grad = max(grads, key=grads.get)
    timing = parity["mixer_ms"]
    lines += [
        "",
        (
            f"The whole mixer, backend torch against cuda: output {mixer['output']:.1e}, input gradient "
            f"{mixer['grad hidden_states']:.1e}, largest parameter gradient error {grads[worst_grad]:.1e} "
            f"({worst_grad.removeprefix('grad ')}). Forward + backward at VMamba-T's stage-1 size (batch 16, 56 x 56, "
            f"d_inner 192): {timing['cuda']:.1f} ms with mamba-ssm's kernel, {timing['torch']:.1f} ms with the chunked "
            f"PyTorch scan ({timing['torch'] / timing['cuda']:.1f}x)."
        ),
        "",
    ]
    return lines


def render_distillation(distillation: dict) -> list[str]:
    runs = distillation["runs"]
    main = runs[distillation["main_run"]]
    (first_step, first_loss), (last_step, last_loss) = main["losses"][0], main["losses"][-1]
    lines = [
        (
            "**Distillation**, the quickstart setting (`configs/quickstart.yaml`: digits at 16 px, `tiny` space, "
            f"CA-DDKD, sandwich of 4 subnets per step, batch {main['batch_size']}; ConvNeXtV2 teacher, "
            f"{distillation['teacher_epochs']} epoch(s)) through `distill.build_supernet`, each run in a fresh "
            "process; images/s = median of the training log's windows after the first:"
        ),
        "",
        f"| run | device | scan backend | steps | images / s | {distillation['main_run']} / run |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for label, run in runs.items():
        lines.append(
            f"| {label} | {run['device']} | {run['scan_backend']} | {run['steps']} | {run['images_per_s']:.0f} | "
            f"{main['images_per_s'] / run['images_per_s']:.1f}x |"
        )
    accuracy = ", ".join(f"{name} {value:.3f}" for name, value in main["val_accuracy"].items())
    peak = f"; peak CUDA memory {main['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in main else ""
    lines += [
        "",
        (
            f"{distillation['main_run']}: loss {first_loss:.3f} (mean of the window ending at step {first_step}) -> "
            f"{last_loss:.3f} (step {last_step}); validation accuracy {accuracy}{peak}."
        ),
        "",
    ]
    return lines


def render_search(search: dict) -> list[str]:
    rates = search["accuracy_only_per_s"]
    lines = [
        (
            f"**Search evaluations**, {search['evaluations']} subnets of that supernet on the "
            f"{search['validation_images']} validation images:"
        ),
        "",
        "| what | where | evaluations / s |",
        "| --- | --- | ---: |",
        f"| `SupernetEvaluator` (the search's) | CPU, 1 thread | {search['evaluator_cpu_per_s']:.2f} |",
        (
            f"| `EvaluationPool` of that evaluator ({search['pool_evaluations']} other subnets) | CPU, "
            f"{search['pool_workers']} workers x 1 thread | {search['pool_cpu_per_s']:.2f} |"
        ),
    ]
    for device, rate in rates.items():
        where = "GPU" if device == "cuda" else "CPU, 1 thread"
        lines.append(f"| its accuracy and loss only (extract, evaluate) | {where} | {rate:.2f} |")
    mac_share = 1 - search["evaluator_cpu_per_s"] / rates["cpu"]
    agreement = (
        f" Scores on GPU against the CPU evaluator's: accuracy within {search['largest_accuracy_gap']:.4f}, loss within "
        f"{search['largest_loss_gap']:.1e}."
        if "cuda" in rates
        else ""
    )
    lines += [
        "",
        (
            "The search's evaluator has no device setting: the search evaluates on CPU workers even on a GPU machine. "
            f"MAC and parameter counting take {100 * mac_share:.0f} % of its time on CPU and would not move to a GPU."
            + agreement
        ),
        "",
    ]
    return lines


# Main ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    results = {"gpu": gpu_description(), "machine": machine_description(), "quick": args.quick, "note": args.note}
    log(f"GPU: {results['gpu']}\nCPU: {results['machine']}")

    def save() -> None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")

    failures = []
    if torch.cuda.is_available():
        try:
            parity = scan_parity()
        except Exception as error:  # noqa: BLE001 -- e.g. a kernel built for another GPU: parts 2 and 3 still run
            parity = {"error": f"{type(error).__name__}: {error}"}
            os.environ[BACKEND_ENV_VAR] = "torch"  # what "auto" picks from now on, in the child processes too
            log(f"scan parity failed ({parity['error']}); the GPU runs below use the 'torch' scan")
        results["scan_parity"] = parity
        if "error" in parity:
            failures.append(f"scan parity not checked: {parity['error']}")
        elif parity["largest_error"] > RELATIVE_TOLERANCE:
            failures.append(
                f"our scan and mamba-ssm's differ by {parity['largest_error']:.1e} > {RELATIVE_TOLERANCE:g} (see "
                f"scan_parity in {args.json})"
            )
    else:
        log("scan parity skipped: no CUDA device (it compares mamba-ssm's CUDA kernel with ours on the GPU)")
    save()

    results["distillation"] = distillation(args)
    if not results["distillation"]["loss_falls"] and not args.quick:
        failures.append(f"the {results['distillation']['main_run']} distillation's loss did not fall")
    save()

    main_run = results["distillation"]["runs"][results["distillation"]["main_run"]]
    results["search"] = search_evaluations(args, main_run["supernet_dir"], main_run["data"])
    if results["search"]["largest_accuracy_gap"] > 1.5 / results["search"]["validation_images"]:
        failures.append(
            f"accuracy on a device and the search evaluator's differ by over one image: {results['search']}"
        )
    save()

    markdown = render(args, results)
    print(markdown)
    if args.output:
        write_section("bench_cuda", "CUDA", markdown, args.output)
        log(f"written to {args.output}")
    log(f"results in {args.json}")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
