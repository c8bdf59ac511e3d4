"""CPU latency of EvoNets against transformers' small vision models: batch 1, 224 x 224, 2 threads, one process.

    python bench/bench_latency.py            # full run (about 2 minutes on 2 idle cores), writes docs/benchmarks.md
    python bench/bench_latency.py --quick    # smoke run: few repeats, no file written unless --output is given

What it does, all in one process and one run so that machine noise hits every model alike:

1. Builds the baselines from `transformers` configs, without weights: DeiT-tiny (ViT, 192 wide, 12 layers, 3 heads),
   ConvNeXtV2-atto and -nano, PVTv2-b0 and Swin-tiny; and the three EvoNets of `EVONET_CONFIGS`.
2. Counts parameters and MACs with `evonets.deploy.profiling` (the project's one MAC definition: matmuls and convs,
   SDPA included, plus the SS2D scans' state updates counted analytically).
3. Times `model(pixel_values)` under `torch.inference_mode` in eval mode: a warm-up, then interleaved rounds
   (each round runs every model, in a rotating order, one untimed call then `--per-round` timed calls), and reports
   median and inter-quartile range over all timed calls. The machine's fp32 matmul ceiling (a 2048 x 2048 matmul)
   is one more entry of the same rounds.
4. Per-mixer profile: one EvoNet block of each mixer type at each stage of the ~1 GMAC EvoNet (its widths, d_state,
   ratios), block and mixer alone, timed the same way.
5. `torch.profiler` of the ~1 GMAC EvoNet: the top ops by self CPU time, and time per op category.
6. Prints the markdown and writes it to `docs/benchmarks.md` between `<!-- bench_latency:start -->` and
   `<!-- bench_latency:end -->` under `## CPU latency`, leaving the rest of the file alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

try:
    import resource
except ImportError:  # not on Unix
    resource = None
from pathlib import Path

import _report
import torch
from torch import nn
from transformers import (
    ConvNextV2Config,
    ConvNextV2ForImageClassification,
    DeiTConfig,
    DeiTForImageClassification,
    PvtV2Config,
    PvtV2ForImageClassification,
    SwinConfig,
    SwinForImageClassification,
)

import evonets
from evonets.deploy.allocator import keep_freed_memory
from evonets.deploy.profiling import count_macs, count_parameters
from evonets.models.mixer_ss2d import EvoNetSelectiveScan
from evonets.models.modeling_evonet import EvoNetBlock
from evonets.models.selective_scan import BACKEND_ENV_VAR, resolve_backend

THREADS = 2
IMAGE_SIZE = 224
CEILING_SIZE = 2048
SECTION_NAME, SECTION_TITLE = "bench_latency", "CPU latency"  # <!-- bench_latency:start/end --> under ## CPU latency
REFERENCE = "DeiT-tiny"
GOAL_MODEL = "EvoNet-1G"
GOAL_RIVALS = ("DeiT-tiny", "PVTv2-b0")
GOAL_SPEEDUP, GOAL_CEILING_FRACTION = 1.5, 0.5

# The EvoNets, as `EvoNetConfig` keyword arguments, designed from per-mixer measurements on this 2-core CPU
# (the "Per-mixer profile" of docs/benchmarks.md):
# * An 8x8 patch stem skips the 56x56 stage: there blocks are narrow (K = C <= 80 in every matmul) and the
#   LayerNorms, GELU and depthwise convs over 3136 tokens are memory-bound.
# * Most MACs sit in 28x28 blocks 112-160 wide: with 784 tokens the MLP matmuls reach ~170-190 of ~190-200 GFLOP/s,
#   more than with 196 tokens (~140-170) or 49 (weights streamed for few rows). Conv blocks (depthwise 7x7 + MLP)
#   are the fastest per MAC (~160 GFLOP/s a block), then SSD and attention blocks (~145-155).
# * SS2D runs at a third to a half of that per MAC at every size tried (its fused scan, a softplus and an exp per
#   channel and step, takes a third of its time; the four scan orders' flips, transposes and stacking a sixth),
#   so the 0.5G and 1G models leave it out and the 2.5G model has one, 14x14, ssm_ratio 1, d_state 2.
# * "1G" is 0.85 GMAC: the whole model already runs its linear layers at ~180 GFLOP/s, so each 0.05 GMAC costs
#   ~0.7 ms; at 0.90 GMAC (hidden_sizes [160, 320]) it measured ~1.5x DeiT-tiny but ~1.45x PVTv2-b0.
EVONET_CONFIGS: dict[str, dict] = {
    "EvoNet-0.5G": {
        "patch_size": 8,
        "depths": [3, 1],
        "hidden_sizes": [112, 224],
        "block_types": [["conv", "ssd", "conv"], ["attention"]],
        "d_states": 32,
        "ssm_ratios": 1.0,
    },
    "EvoNet-1G": {
        "patch_size": 8,
        "depths": [3, 1],
        "hidden_sizes": [160, 288],
        "block_types": [["conv", "ssd", "conv"], ["attention"]],
        "d_states": 32,
        "ssm_ratios": 1.0,
    },
    "EvoNet-2.5G": {
        "patch_size": 8,
        "depths": [5, 3],
        "hidden_sizes": [192, 384],
        "block_types": [["conv", "ssd", "conv", "ssd", "conv"], ["attention", "ss2d", "attention"]],
        "d_states": [32, [32, 2, 32]],
        "ssm_ratios": 1.0,
    },
}


# ----------------------------------------------------------------------------------------------------------- models


def build_baselines() -> dict[str, nn.Module]:
    """transformers' small vision models from their configs (random weights: latency does not depend on them)."""
    configs = {
        "DeiT-tiny": (
            DeiTForImageClassification,
            DeiTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
        ),
        "ConvNeXtV2-atto": (
            ConvNextV2ForImageClassification,
            ConvNextV2Config(depths=[2, 2, 6, 2], hidden_sizes=[40, 80, 160, 320]),
        ),
        "ConvNeXtV2-nano": (
            ConvNextV2ForImageClassification,
            ConvNextV2Config(depths=[2, 2, 8, 2], hidden_sizes=[80, 160, 320, 640]),
        ),
        "PVTv2-b0": (PvtV2ForImageClassification, PvtV2Config()),  # the defaults are b0
        "Swin-tiny": (
            SwinForImageClassification,
            SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7),
        ),
    }
    models = {}
    for name, (model_class, config) in configs.items():
        config.num_labels = 1000
        torch.manual_seed(0)
        models[name] = model_class(config).eval()
    return models


def build_evonets() -> dict[str, nn.Module]:
    models = {}
    for name, kwargs in EVONET_CONFIGS.items():
        torch.manual_seed(0)
        config = evonets.EvoNetConfig(image_size=IMAGE_SIZE, num_labels=1000, **kwargs)
        models[name] = evonets.EvoNetForImageClassification(config).eval()
    return models


def resolved_scan_backend() -> str:
    """What the SS2D scans' `backend="auto"` runs here (building the fused CPU kernel if needed)."""
    backend = resolve_backend("auto", "cpu")
    override = os.environ.get(BACKEND_ENV_VAR, "")
    return f"{backend} (from {BACKEND_ENV_VAR})" if override and override != "auto" else backend


def scan_backends(model: nn.Module) -> list[str]:
    return sorted({module.backend for module in model.modules() if isinstance(module, EvoNetSelectiveScan)})


# ----------------------------------------------------------------------------------------------------------- timing


def matmul_ceiling_call(size: int = CEILING_SIZE) -> tuple[Callable[[], object], int]:
    """A `size`^3 fp32 matmul and its FLOPs: the machine's practical compute ceiling at this thread count."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    return (lambda: torch.mm(a, b, out=out)), 2 * size**3


class OtherCpuUse:
    """CPU time other processes used while this one ran, from /proc/stat minus our own rusage (Linux only).

    The load average lags by a minute and counts this run's own threads; this measures the interference itself.
    """

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = [float(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        except (OSError, ValueError, IndexError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        own = resource.getrusage(resource.RUSAGE_SELF) if resource is not None else None
        own_seconds = own.ru_utime + own.ru_stime if own is not None else 0.0
        return busy, own_seconds, time.perf_counter()

    def cores(self) -> float | None:
        """Average number of cores other processes kept busy since construction."""
        end = self._sample()
        if self.start is None or end is None:
            return None
        wall = end[2] - self.start[2]
        return max(0.0, (end[0] - self.start[0]) - (end[1] - self.start[1])) / wall if wall > 0 else None


# -------------------------------------------------------------------------------------------------- per-mixer profile


def mixer_profile_blocks(kwargs: dict, donors: list[dict]) -> list[dict]:
    """One block of each mixer type at each stage of the EvoNet `kwargs` describes, plus the geometries it avoids.

    Geometries: every stage of the model (its resolution and width), and also the 56x56 stage a patch-4 stem would
    add (at half the first width) and a 7x7 stage after the last (at twice the last width), marked "not in model".
    A block type the model uses in a stage gets that block's sizes; otherwise the stage's width with the sizes
    (mlp_ratio, d_state, ssm_ratio) of the type's first block in `kwargs` or else in `donors` (the other EvoNet
    configs), or else the config defaults; heads are the config default for the width.
    """
    config = evonets.EvoNetConfig(image_size=IMAGE_SIZE, **kwargs)
    grid = config.image_size // config.patch_size
    all_args = []
    for donor_kwargs in [kwargs, *donors]:
        donor_config = evonets.EvoNetConfig(image_size=IMAGE_SIZE, **donor_kwargs)
        all_args += [
            donor_config.block_args(stage, index)
            for stage in range(donor_config.num_stages)
            for index in range(donor_config.depths[stage])
        ]
    geometries = [(None, 2 * grid, config.hidden_sizes[0] // 2)]
    geometries += [(stage, grid // 2**stage, config.hidden_sizes[stage]) for stage in range(config.num_stages)]
    geometries += [(None, grid // 2**config.num_stages, 2 * config.hidden_sizes[-1])]
    entries = []
    for stage, resolution, width in geometries:
        stage_args = (
            [config.block_args(stage, index) for index in range(config.depths[stage])] if stage is not None else []
        )
        for block_type in evonets.BLOCK_TYPES:
            args = next((a for a in stage_args if a["block_type"] == block_type), None)
            in_model = args is not None
            if args is None:
                donor = next((a for a in all_args if a["block_type"] == block_type), None)
                probe = evonets.EvoNetConfig(
                    image_size=IMAGE_SIZE,
                    depths=[1],
                    hidden_sizes=[width],
                    block_types=[[block_type]],
                    mlp_ratios=donor["mlp_ratio"] if donor else config.block_args(0, 0)["mlp_ratio"],
                    d_states=donor["d_state"] if donor else 16,
                    ssm_ratios=donor["ssm_ratio"] if donor else 2.0,
                )
                args = probe.block_args(0, 0)
            torch.manual_seed(0)
            block = EvoNetBlock(config, args).eval()
            for module in block.modules():
                if hasattr(module, "init_ssm_parameters"):
                    module.init_ssm_parameters()
            hidden = torch.randn(1, resolution, resolution, width)
            with torch.no_grad():
                mixer_input = block.norm1(hidden)
            is_ssm = block_type in ("ss2d", "ssd")
            entries.append(
                {
                    "stage": "-" if stage is None else str(stage + 1),
                    "block_type": block_type,
                    "resolution": resolution,
                    "width": width,
                    "d_state": args["d_state"] if is_ssm else None,
                    "ssm_ratio": args["ssm_ratio"] if is_ssm else None,
                    "in_model": in_model,
                    "block": block,
                    "input": hidden,
                    "mixer_input": mixer_input,
                    "block_macs": count_macs(block, hidden).total,
                    "mixer_macs": count_macs(block.mixer, mixer_input).total,
                }
            )
    return entries


# ------------------------------------------------------------------------------------------------------ op profile

OP_CATEGORIES = (
    ("matmul", ("addmm", "aten::mm", "bmm", "matmul", "linear", "einsum", "scaled_dot_product", "flash_attention")),
    ("conv", ("conv",)),
    ("selective scan", ("selective_scan", "scan")),
    ("norm", ("layer_norm", "native_layer_norm", "batch_norm", "group_norm")),
    (
        "copy / layout",
        (
            "copy_",
            "contiguous",
            "clone",
            "cat",
            "stack",
            "flip",
            "to_copy",
            "permute",
            "transpose",
            "reshape",
            "view",
            "_unsafe_view",
            "expand",
            "as_strided",
            "empty",
            "split",
            "chunk",
            "unbind",
            "select",
            "slice",
        ),
    ),
)


def op_category(name: str) -> str:
    lowered = name.lower()
    for category, keys in OP_CATEGORIES:
        if any(key in lowered for key in keys):
            return category
    return "elementwise / other"


def profile_ops(model: nn.Module, pixel_values: torch.Tensor, runs: int) -> tuple[list[dict], dict[str, float], float]:
    """Top ops by self CPU time per forward, time per op category (ms per forward), profiled forward time."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for _ in range(3):
            model(pixel_values)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model(pixel_values)
    events = [event for event in prof.key_averages() if event.self_cpu_time_total > 0]
    total_us = sum(event.self_cpu_time_total for event in events)
    rows = [
        {
            "op": event.key,
            "ms": event.self_cpu_time_total / runs / 1e3,
            "share": event.self_cpu_time_total / total_us,
            "calls": event.count / runs,
        }
        for event in sorted(events, key=lambda event: -event.self_cpu_time_total)
    ]
    categories: dict[str, float] = {}
    for row in rows:
        category = op_category(row["op"])
        categories[category] = categories.get(category, 0.0) + row["ms"]
    return rows, dict(sorted(categories.items(), key=lambda item: -item[1])), total_us / runs / 1e3


# -------------------------------------------------------------------------------------------------------- markdown


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine inflates and scatters the timings."""
    return "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def markdown_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["left"] + ["right"] * (len(header) - 1)
    rule = ["---:" if side == "right" else ":---" for side in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


# ------------------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, for a smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 30, quick 2)")
    parser.add_argument(
        "--per-round", type=int, default=None, help="timed calls per model and round (default 5, quick 2)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per model first (default 5, quick 1)")
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile'd EvoNets and DeiT-tiny")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc malloc as it is (by default it is told to keep freed memory: see evonets.deploy.allocator)",
    )
    parser.add_argument("--no-mixer-profile", action="store_true", help="skip the per-mixer block timings")
    parser.add_argument("--no-op-profile", action="store_true", help="skip the torch.profiler op breakdown")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="markdown file to update (default docs/benchmarks.md; with --quick nothing is written unless given)",
    )
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 30)
    args.per_round = args.per_round or (2 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    if args.output is None and not args.quick:
        args.output = _report.DOC_PATH
    return args


def measure_models(
    args: argparse.Namespace, models: dict[str, nn.Module], pixel_values: torch.Tensor, log: Callable[[str], None]
) -> tuple[list[dict], dict]:
    """Parameters and MACs of every model, then all of them and the matmul ceiling timed in interleaved rounds: one
    result row per model, and the ceiling's GFLOP/s, median and IQR."""
    stats = {}
    for name, model in models.items():
        if name.endswith("(compiled)"):
            stats[name] = stats[name.removesuffix(" (compiled)")]
            continue
        macs = count_macs(model, pixel_values)
        stats[name] = {"params": count_parameters(model), "macs": macs}
        log(f"{name}: {stats[name]['params'] / 1e6:.2f} M params, {macs.total / 1e9:.3f} GMACs")

    ceiling_call, ceiling_flops = matmul_ceiling_call()
    calls = {name: (lambda model=model: model(pixel_values)) for name, model in models.items()}
    calls["matmul 2048^3"] = ceiling_call
    log(f"timing {len(calls)} entries: {args.rounds} rounds x {args.per_round} calls ...")
    timings = _report.time_interleaved(calls, args.rounds, args.per_round, args.warmup)
    samples = {name: timing.wall for name, timing in timings.items()}
    faults = {name: timing.minor_faults for name, timing in timings.items()}
    ceiling_ms, ceiling_iqr = _report.summarize(samples.pop("matmul 2048^3"))
    ceiling = ceiling_flops / (ceiling_ms / 1e3) / 1e9  # GFLOP/s
    reference_ms = _report.summarize(samples[REFERENCE])[0]

    results = []
    for name in models:
        median_ms, iqr_ms = _report.summarize(samples[name])
        macs = stats[name]["macs"].total
        gflops = 2 * macs / (median_ms / 1e3) / 1e9
        results.append(
            {
                "name": name,
                "params": stats[name]["params"],
                "macs": macs,
                "scan_macs": stats[name]["macs"].scan,
                "median_ms": median_ms,
                "iqr_ms": iqr_ms,
                "min_ms": min(samples[name]) * 1e3,
                "faults": faults[name] / len(samples[name]),
                "gflops": gflops,
                "ceiling_share": gflops / ceiling,
                "speedup": reference_ms / median_ms,
            }
        )
    for row in results:
        log(f"{row['name']:24s} {row['median_ms']:8.2f} ms  {row['gflops']:6.1f} GFLOP/s  x{row['speedup']:.2f}")
    log(f"matmul ceiling: {ceiling:.1f} GFLOP/s")
    return results, {"gflops": ceiling, "ms": ceiling_ms, "iqr_ms": ceiling_iqr}


def time_mixer_profile(args: argparse.Namespace, log: Callable[[str], None]) -> tuple[list[dict], list[dict]]:
    """The per-mixer profile: the blocks of `mixer_profile_blocks`, each block and its mixer alone timed in
    interleaved rounds. Returns the table rows and the entries (blocks and inputs) they were timed on."""
    donors = [kwargs for name, kwargs in EVONET_CONFIGS.items() if name != GOAL_MODEL]
    entries = mixer_profile_blocks(EVONET_CONFIGS[GOAL_MODEL], donors)
    log(f"timing {len(entries)} single blocks ...")
    block_calls = {}
    for index, entry in enumerate(entries):
        block_calls[(index, "block")] = lambda entry=entry: entry["block"](entry["input"])
        block_calls[(index, "mixer")] = lambda entry=entry: entry["block"].mixer(entry["mixer_input"])
    rounds = max(2, args.rounds // 2)
    block_samples = {
        key: timing.wall
        for key, timing in _report.time_interleaved(block_calls, rounds, args.per_round, args.warmup).items()
    }
    mixer_rows = []
    for index, entry in enumerate(entries):
        block_ms = _report.summarize(block_samples[(index, "block")])[0]
        mixer_ms = _report.summarize(block_samples[(index, "mixer")])[0]
        mixer_rows.append(
            {
                **{
                    key: entry[key]
                    for key in ("stage", "block_type", "resolution", "width", "d_state", "ssm_ratio", "in_model")
                },
                "block_ms": block_ms,
                "block_macs": entry["block_macs"],
                "block_gflops": 2 * entry["block_macs"] / block_ms / 1e6,
                "mixer_ms": mixer_ms,
                "mixer_macs": entry["mixer_macs"],
                "mixer_gflops": 2 * entry["mixer_macs"] / mixer_ms / 1e6,
            }
        )
    return mixer_rows, entries


def profile_slow_mixer(args: argparse.Namespace, mixer_rows: list[dict], entries: list[dict]) -> dict:
    """The mixer furthest below the ceiling at the model's own stages (conv mixers have almost no MACs, so their
    GFLOP/s says nothing), profiled alone."""
    candidates = [
        (row, entry) for row, entry in zip(mixer_rows, entries) if row["stage"] != "-" and row["block_type"] != "conv"
    ]
    row, entry = min(candidates, key=lambda pair: pair[0]["mixer_gflops"])
    rows, categories, total_ms = profile_ops(entry["block"].mixer, entry["mixer_input"], runs=10 if args.quick else 100)
    mixer = entry["block"].mixer
    scan_macs = mixer.scan_macs(row["resolution"], row["resolution"]) if hasattr(mixer, "scan_macs") else 0
    return {"row": row, "rows": rows, "categories": categories, "profiled_ms": total_ms, "scan_macs": scan_macs}


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(THREADS)
    malloc_tuned = False if args.default_malloc else keep_freed_memory()
    machine = {"line": _report.machine_description(THREADS), "load": load_average(), "malloc_tuned": malloc_tuned}
    other_cpu = OtherCpuUse()
    log = lambda message: print(message, file=sys.stderr, flush=True)
    pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))

    models = {**build_baselines(), **build_evonets()}
    if args.torch_compile:
        for name in [REFERENCE, *EVONET_CONFIGS]:
            models[f"{name} (compiled)"] = torch.compile(models[name])
    results, ceiling_stats = measure_models(args, models, pixel_values, log)
    mixer_rows, entries = time_mixer_profile(args, log) if not args.no_mixer_profile else ([], [])

    op_rows, op_categories, profiled_ms = [], {}, 0.0
    slow_mixer = None
    if not args.no_op_profile:
        log("profiling ops ...")
        op_rows, op_categories, profiled_ms = profile_ops(
            models[GOAL_MODEL], pixel_values, runs=5 if args.quick else 30
        )
        if mixer_rows:
            slow_mixer = profile_slow_mixer(args, mixer_rows, entries)

    machine["load_end"] = load_average()
    machine["other_cores"] = other_cpu.cores()
    ops = {"rows": op_rows, "categories": op_categories, "profiled_ms": profiled_ms, "slow_mixer": slow_mixer}
    body = render(args, machine, results, ceiling_stats, mixer_rows, ops, models)
    print(body)
    if args.output is not None:
        _report.write_section(SECTION_NAME, SECTION_TITLE, body, path=args.output)
        log(f"wrote {args.output}")
    return body


def render(
    args: argparse.Namespace,
    machine: dict,
    results: list[dict],
    ceiling_stats: dict,
    mixer_rows: list[dict],
    ops: dict,
    models: dict[str, nn.Module],
) -> str:
    """The markdown section: setup, model table, goal check, per-mixer profile, op profile."""
    by_name = {row["name"]: row for row in results}
    lines = setup_lines(args, machine, ceiling_stats, models)
    lines += model_lines(results, by_name)
    lines += goal_lines(by_name, ceiling_stats["gflops"])
    if mixer_rows:
        lines += mixer_profile_lines(mixer_rows)
    if ops["rows"]:
        lines += op_profile_lines(ops["rows"], ops["categories"], ops["profiled_ms"])
    if ops.get("slow_mixer"):
        lines += slow_mixer_lines(ops["slow_mixer"])
    return "\n".join(lines)


def setup_lines(
    args: argparse.Namespace, machine: dict, ceiling_stats: dict, models: dict[str, nn.Module]
) -> list[str]:
    """How it was measured: machine, timing, other load, matmul ceiling, MAC definition, allocator."""
    ceiling, ceiling_ms, ceiling_iqr = ceiling_stats["gflops"], ceiling_stats["ms"], ceiling_stats["iqr_ms"]
    backends = sorted({backend for model in models.values() for backend in scan_backends(model)})
    if backends == ["auto"]:
        backends = [f"auto = {resolved_scan_backend()}"]
    samples_per_model = args.rounds * args.per_round
    lines = [
        (
            f"Measured by `python bench/bench_latency.py{' --quick' if args.quick else ''}`: {machine['line']}; "
            f"load average at the end {machine['load_end']}. Batch 1, 224 x 224, fp32, eval, `torch.inference_mode`, "
            f"random weights (models built from configs). All models in one process, timed in {args.rounds} interleaved rounds "
            f"of {args.per_round} calls "
            f"({samples_per_model} calls each, after {args.warmup} warm-up calls). SS2D scan backend: "
            f"{', '.join(backends) or 'n/a'}."
        ),
        "",
    ]
    other = machine["other_cores"]
    if other is not None:
        lines += [
            f"Other processes (or the hypervisor) used {other:.2f} of the {os.cpu_count()} cores on average during the "
            "run (busy CPU time from /proc/stat minus this process's own)."
            + (
                " **That is enough to disturb the timings**: absolute times are inflated and scattered, models made "
                "of many small ops (PVTv2, Swin) suffer most since every op's OpenMP threads wait for a preempted "
                "peer; ratios suffer less (the rounds are interleaved), and the minimum is the least disturbed "
                "figure."
                if other > 0.1
                else ""
            ),
            "",
        ]
    lines += [
        (
            f"**Matmul ceiling**: fp32 {CEILING_SIZE}x{CEILING_SIZE} @ {CEILING_SIZE}x{CEILING_SIZE} takes {fmt(ceiling_ms)} ms "
            f"(IQR {fmt(ceiling_iqr, 2)}) = **{fmt(ceiling)} GFLOP/s** on {THREADS} threads."
        ),
        "",
        (
            "MACs are `evonets.deploy.profiling.count_macs`: matmuls and convolutions (attention's `QKᵀ` and `PV` included), "
            "plus each SS2D scan's state updates and read-outs (`2 * 4 * d_inner * H * W * d_state`) counted analytically; "
            "norms, activations and elementwise ops are free. Achieved GFLOP/s = 2 * MACs / median time."
        ),
        "",
        (
            "Memory allocator: glibc malloc told to keep freed memory (`M_MMAP_THRESHOLD` 32 MiB, `M_TRIM_THRESHOLD` "
            "1 GiB, as jemalloc / tcmalloc behave), so no model re-faults its temporaries' pages on every call. With "
            "glibc's defaults (`--default-malloc`) models with large temporaries pay minor page faults per call "
            "(PVTv2-b0: ~8k, ~10 ms) and their latency depends on what ran before in the process."
            if machine["malloc_tuned"]
            else "Memory allocator: glibc defaults (`--default-malloc` or not glibc): models with large temporaries "
            "pay minor page faults on every call (see the last column), and their latency depends on what ran "
            "before in the process."
        ),
        "",
    ]
    return lines


def model_lines(results: list[dict], by_name: dict[str, dict]) -> list[str]:
    """The model table and the EvoNet configurations."""
    header = [
        "model",
        "params (M)",
        "GMACs",
        "median ms",
        "IQR ms",
        "min ms",
        "GFLOP/s",
        "% of ceiling",
        f"speed vs {REFERENCE}",
        "page faults / call",
    ]
    rows = [
        [
            row["name"],
            fmt(row["params"] / 1e6, 2),
            fmt(row["macs"] / 1e9, 3),
            fmt(row["median_ms"], 1),
            fmt(row["iqr_ms"], 1),
            fmt(row["min_ms"], 1),
            fmt(row["gflops"], 1),
            fmt(100 * row["ceiling_share"], 0) + " %",
            fmt(row["speedup"], 2) + "x",
            fmt(row["faults"], 0),
        ]
        for row in results
    ]
    lines = [
        markdown_table(header, rows),
        "",
        "EvoNet configurations (`evonets.EvoNetConfig` keyword arguments; `image_size=224`, `num_labels=1000`):",
        "",
    ]
    for name, kwargs in EVONET_CONFIGS.items():
        scan = by_name[name]["scan_macs"]
        scan_note = f"SS2D scan MACs {scan / 1e6:.1f} M" if scan else "no SS2D"
        lines.append(f"- **{name}** ({scan_note}): `{kwargs}`")
    lines.append("")

    return lines


def goal_lines(by_name: dict[str, dict], ceiling: float) -> list[str]:
    """Whether the goal model meets its speed goal against its rivals and the matmul ceiling."""
    goal = by_name.get(GOAL_MODEL)
    if goal is None:
        return []
    ratios = {rival: goal["speedup"] / by_name[rival]["speedup"] for rival in GOAL_RIVALS}
    met = all(ratio >= GOAL_SPEEDUP for ratio in ratios.values()) and goal["ceiling_share"] >= GOAL_CEILING_FRACTION
    needed_ms = 2 * goal["macs"] / (GOAL_CEILING_FRACTION * ceiling * 1e9) * 1e3
    return [
        f"**Goal** ({GOAL_MODEL} at >= {GOAL_SPEEDUP}x the speed of {' and '.join(GOAL_RIVALS)}, at >= "
        f"{int(100 * GOAL_CEILING_FRACTION)} % of the matmul ceiling): **{'met' if met else 'not met'}**. "
        + ", ".join(f"{fmt(ratio, 2)}x {rival}" for rival, ratio in ratios.items())
        + f", {fmt(100 * goal['ceiling_share'], 0)} % of the ceiling ({fmt(goal['median_ms'])} ms for "
        f"{fmt(goal['macs'] / 1e9, 3)} GMACs; {int(100 * GOAL_CEILING_FRACTION)} % of the ceiling would be "
        f"{fmt(needed_ms)} ms).",
        "",
    ]


def mixer_profile_lines(mixer_rows: list[dict]) -> list[str]:
    """The per-mixer profile table."""
    lines = [
        "### Per-mixer profile",
        "",
        (
            f"One block (LayerNorm, mixer, residual, LayerNorm, MLP, residual) of each mixer type at each stage of "
            f"{GOAL_MODEL} (its width; the mixer sizes of the EvoNets above: d_state N, ssm_ratio r, default heads), "
            f"and at two geometries it avoids (stage '-': the 56x56 stage of a patch-4 stem at half the first width, "
            f"and a 7x7 stage at twice the last width). 'mixer' is the token mixer alone. Same timing method, "
            f"interleaved, batch 1; 'used' marks the block types {GOAL_MODEL} has in that stage."
        ),
        "",
    ]
    header = [
        "stage",
        "tokens",
        "width",
        "mixer",
        "used",
        "block ms",
        "block MMACs",
        "block GFLOP/s",
        "mixer ms",
        "mixer MMACs",
        "mixer GFLOP/s",
    ]
    rows = []
    for row in mixer_rows:
        extra = f" (N={row['d_state']}, r={row['ssm_ratio']:g})" if row["d_state"] is not None else ""
        rows.append(
            [
                row["stage"],
                f"{row['resolution']}x{row['resolution']}",
                str(row["width"]),
                row["block_type"] + extra,
                "yes" if row["in_model"] else "",
                fmt(row["block_ms"], 2),
                fmt(row["block_macs"] / 1e6),
                fmt(row["block_gflops"]),
                fmt(row["mixer_ms"], 2),
                fmt(row["mixer_macs"] / 1e6),
                fmt(row["mixer_gflops"]),
            ]
        )
    return lines + [markdown_table(header, rows, ["right", "left", "right", "left", "left"] + ["right"] * 6), ""]


def op_profile_lines(op_rows: list[dict], op_categories: dict[str, float], profiled_ms: float) -> list[str]:
    """Where the goal model's time goes, by op category and top ops."""
    return [
        f"### Where {GOAL_MODEL}'s time goes",
        "",
        (
            f"`torch.profiler` (CPU, self time of each op, averaged over the profiled forwards; profiled forward "
            f"{fmt(profiled_ms)} ms including profiler overhead). By category:"
        ),
        "",
        markdown_table(
            ["category", "ms / forward", "share"],
            [[name, fmt(ms, 2), fmt(100 * ms / profiled_ms, 0) + " %"] for name, ms in op_categories.items()],
        ),
        "",
        "Top ops:",
        "",
        markdown_table(
            ["op", "self ms / forward", "share", "calls / forward"],
            [
                [f"`{row['op']}`", fmt(row["ms"], 2), fmt(100 * row["share"], 1) + " %", fmt(row["calls"], 0)]
                for row in op_rows[:15]
            ],
        ),
        "",
    ]


def slow_mixer_lines(slow: dict) -> list[str]:
    """The slowest mixer per MAC under the profiler, with the scan's rate when it has one."""
    row = slow["row"]
    lines = [
        (
            f"### Slowest mixer per MAC: {row['block_type']} at {row['resolution']}x{row['resolution']}, "
            f"{row['width']} wide"
        ),
        "",
        (
            f"The mixer alone ({fmt(row['mixer_ms'], 2)} ms for {fmt(row['mixer_macs'] / 1e6)} MMACs, "
            f"{fmt(row['mixer_gflops'])} GFLOP/s in the table above), under `torch.profiler` "
            f"({fmt(slow['profiled_ms'], 2)} ms per call with profiler overhead). By category:"
        ),
        "",
        markdown_table(
            ["category", "ms / call", "share"],
            [
                [name, fmt(ms, 3), fmt(100 * ms / slow["profiled_ms"], 0) + " %"]
                for name, ms in slow["categories"].items()
            ],
        ),
        "",
    ]
    scan_ms = slow["categories"].get("selective scan", 0.0)
    if slow["scan_macs"] and scan_ms:
        updates = slow["scan_macs"] / 2  # one update and one read-out MAC per state element and step
        steps = row["resolution"] ** 2 * 4 * (row["ssm_ratio"] * row["width"])  # tokens x orders x d_inner
        lines += [
            (
                f"The scan does {updates / 1e6:.2f} M state updates ({fmt(100 * slow['scan_macs'] / row['mixer_macs'])} "
                f"% of the mixer's MACs) in {fmt(scan_ms, 2)} ms ({fmt(100 * scan_ms / slow['profiled_ms'], 0)} % of "
                f"its time): {updates / scan_ms / 1e6:.2f} G updates/s, {scan_ms * 1e6 / steps:.1f} ns per channel "
                f"and step. The four scan orders (flip, transpose, stack, and back) are most of 'copy / layout'; "
                f"'matmul' is in_proj / out_proj (`mm`) and the per-order x_proj / dt_proj einsums (`bmm`)."
            ),
            "",
        ]
    lines += [
        markdown_table(
            ["op", "self ms / call", "share", "calls / call"],
            [
                [f"`{op['op']}`", fmt(op["ms"], 3), fmt(100 * op["share"], 1) + " %", fmt(op["calls"], 0)]
                for op in slow["rows"][:12]
            ],
        ),
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
