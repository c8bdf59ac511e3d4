"""Distillation: training throughput of the sandwich step, and the loss ablation that matters (rank correlation).

    python bench/bench_distill.py            # full run (~25 min on 2 busy cores), writes docs/benchmarks.md
    python bench/bench_distill.py --quick    # smoke run: tiny budgets, no file written unless --output is given

What it does, in one process, on the quickstart setting (`configs/quickstart.yaml`: digits at 8/16 px, the `tiny`
space, a ConvNeXtV2 teacher trained from scratch, one thread):

1. **Throughput** (batch 64, train mode, forward + loss + backward + AdamW step, interleaved rounds, median):
   - `sandwich step (CA-DDKD)`: one optimizer step of `distill/student.py` (teacher forward, largest + smallest + 2
     random subnets with random block types, all loss terms);
   - per block type, the largest subnet with cross-entropy only, run in the supernet (`supernet(x, arch=...)`: sliced
     shared weights) and as the extracted standalone `EvoNetForImageClassification`.
2. **Ablation**: supernets trained with the quickstart budget (2 seeds each) by (a) CE only (sandwich rule, every
   subnet on the labels), (b) + in-place KD from the largest subnet, (c) + CA-DDKD (teacher logit KD + spatial +
   two-band DCT feature alignment), (d) = (c) without the frequency term. The digits rank-check protocol
   (`search/ranking.py`, `docs/distill.md`): 30 architectures sampled with seed 1234; supernet score = validation
   accuracy and cross-entropy with inherited weights; stand-alone score = the same after 40 steps of training from
   scratch (fixed recipe), mean of 3 seeds, cached in `<work>/standalone.json`; Kendall's tau-b, Spearman's rho,
   top-5 overlap; and the ceiling: how well single stand-alone seeds rank each other (mean tau over pairs of seeds).
   Validation split only.
3. Prints the markdown and writes it to `docs/benchmarks.md` between `<!-- bench_distill:start -->` and
   `<!-- bench_distill:end -->` under `## Distillation`, leaving the rest of the file alone.

Supernet runs and stand-alone results are kept in `--work` (default `runs/bench_distill`), so a second run reuses
them (the trainer resumes finished runs instantly).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch
from _report import DOC_PATH, machine_description, write_section

REPO = Path(__file__).resolve().parents[1]

BLOCK_TYPES = ("conv", "attention", "ssd", "ss2d")
VARIANTS = {
    "(a) CE only": {
        "loss.kd_weight": 0.0,
        "loss.inplace_kd_weight": 0.0,
        "loss.spatial_weight": 0.0,
        "loss.frequency_weight": 0.0,
    },
    "(b) + in-place KD": {"loss.kd_weight": 0.0, "loss.spatial_weight": 0.0, "loss.frequency_weight": 0.0},
    "(c) + CA-DDKD": {},
    "(d) CA-DDKD w/o frequency": {"loss.frequency_weight": 0.0},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, for a smoke run")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.yaml")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_distill", help="runs and caches")
    parser.add_argument("--archs", type=int, default=None, help="architectures ranked (default 30, quick 4)")
    parser.add_argument(
        "--standalone-steps", type=int, default=None, help="stand-alone recipe steps (default 40, quick 10)"
    )
    parser.add_argument(
        "--distill-steps", type=int, default=None, help="supernet steps (default: the config's, quick 6)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="supernet training seeds per variant")
    parser.add_argument(
        "--standalone-seeds", type=int, nargs="+", default=[0, 1, 2], help="stand-alone seeds per architecture"
    )
    parser.add_argument("--rounds", type=int, default=None, help="throughput rounds (default 5, quick 1)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument(
        "--output", type=Path, default=None, help="markdown to update (default docs/benchmarks.md, quick: none)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.archs = args.archs or (4 if quick else 30)
    args.standalone_steps = args.standalone_steps or (10 if quick else 40)
    args.distill_steps = args.distill_steps or (6 if quick else None)
    args.rounds = args.rounds or (1 if quick else 5)
    if args.quick:
        args.work = args.work.with_name(args.work.name + "_quick")
    if args.output is None and not quick:
        args.output = DOC_PATH
    return args


def base_config(args, *overrides: str):
    from distill import parse_config

    argv = [
        "--config",
        str(args.config),
        "--teacher.path",
        str(args.work / "teacher"),
        "--trainer.progress_bar",
        "false",
    ]
    if args.quick:
        argv += ["--teacher.train.epochs", "1"]
    if args.distill_steps:
        argv += ["--trainer.max_steps", str(args.distill_steps), "--trainer.save_every", str(args.distill_steps)]
    return parse_config(argv + list(overrides))


# Throughput ----------------------------------------------------------------------------------------------------


class _SingleProcess:
    """What `train_micro_step` asks of an `Accelerator`, for one process in fp32 (the accelerate state stays free
    for the `train()` calls of the ablation)."""

    @staticmethod
    def autocast():
        return contextlib.nullcontext()

    @staticmethod
    def no_sync(model):
        return contextlib.nullcontext()

    @staticmethod
    def backward(loss):
        loss.backward()


def measure_throughput(args, log) -> list[dict]:
    from distill.losses import DistillationLoss
    from distill.sampling import SandwichSampler
    from distill.student import DistillModule, build_space_config, stage_channels, train_micro_step
    from distill.teachers import load_teacher
    from distill.train_teacher import train_teacher
    from evonets.data.classification import collate, load_data
    from evonets.engine.training import parameter_groups
    from evonets.models.supernet import EvoNetSupernet

    config = base_config(args)
    torch.set_num_threads(config.trainer.num_threads or torch.get_num_threads())
    if not Path(config.teacher.path).exists():
        train_teacher(config, log=log)
    space_config = build_space_config(config.supernet, num_labels=2)
    size = config.data.image_size or max(space_config.resolution_choices)
    data = load_data(config.data, size)
    space_config = build_space_config(config.supernet, data.num_labels, data.id2label)
    teacher = load_teacher(
        config.teacher.path,
        config.teacher.stages,
        data.num_labels,
        data.label_names,
        size,
        config.data.image_mean,
        config.data.image_std,
    )
    batch = collate([data.train[i] for i in range(config.trainer.batch_size)])
    torch.manual_seed(0)
    supernet = EvoNetSupernet(space_config)
    indices, channels = stage_channels(space_config, config.loss.student_stages)
    probe = teacher(batch["pixel_values"][:1])
    module = DistillModule(
        supernet, DistillationLoss(config.loss, channels, [f.shape[1] for f in probe.features]), indices
    )
    accelerator = _SingleProcess()
    optimizer = torch.optim.AdamW(parameter_groups(module, 0.05), lr=1e-4)
    sampler = SandwichSampler(supernet.search_space, config.sampling.num_random, config.sampling.block_types, seed=0)
    space = supernet.search_space

    def sandwich():
        train_micro_step(accelerator, module, module, teacher, batch, sampler.sample(0), config)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    entries = {"sandwich step (CA-DDKD)": (sandwich, 1 + 1 + config.sampling.num_random)}
    for block_type in BLOCK_TYPES:
        arch = space.largest(block_type)
        extracted = supernet.extract(arch).train()
        extracted_optimizer = torch.optim.AdamW(extracted.parameters(), lr=1e-4)
        pixel_values = batch["pixel_values"]

        def in_supernet(arch=arch, pixel_values=pixel_values):
            supernet(pixel_values, labels=batch["labels"], arch=arch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def standalone(model=extracted, opt=extracted_optimizer, pixel_values=pixel_values):
            model(pixel_values, labels=batch["labels"]).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        entries[f"largest {block_type}, in supernet"] = (in_supernet, 1)
        entries[f"largest {block_type}, standalone"] = (standalone, 1)
    module.train()
    times = {name: [] for name in entries}
    for name, (fn, _) in entries.items():
        fn()  # warm-up: templates, kernels
    for round_index in range(args.rounds):
        names = list(entries)
        names = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in names:
            for _ in range(2 if not args.quick else 1):
                start = time.process_time()
                entries[name][0]()
                times[name].append(time.process_time() - start)
        log(f"throughput round {round_index + 1}/{args.rounds}")
    rows = []
    for name, (_, subnets) in entries.items():
        seconds = statistics.median(times[name])
        rows.append(
            {"name": name, "ms": 1000 * seconds, "images_per_s": len(batch["labels"]) / seconds, "subnets": subnets}
        )
    return rows


# Ablation ------------------------------------------------------------------------------------------------------


def run_ablation(args, log) -> dict:
    from distill import build_supernet as train
    from evonets.data.classification import load_data
    from evonets.models.supernet import EvoNetSupernet
    from search.ranking import (
        StandaloneRecipe,
        rank_correlations,
        sample_architectures,
        seed_ceiling,
        standalone_scores,
        supernet_scores,
    )

    results = {"variants": {}}
    supernet_dirs = {}
    for name, overrides in VARIANTS.items():
        for seed in args.seeds:
            slug = name.split(")")[0].strip("(") + f"_seed{seed}"
            flags = [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
            flags += [
                "--trainer.output_dir",
                str(args.work / "supernets" / slug),
                "--trainer.seed",
                str(seed),
                "--sampling.seed",
                str(seed),
            ]
            config = base_config(args, *flags)
            start = time.perf_counter()
            result = train(config)
            log(f"{name} seed {seed}: {time.perf_counter() - start:.0f} s, val {result.val_accuracy}")
            supernet_dirs[name, seed] = result.supernet_dir
    config = base_config(args)
    results["distill_steps"] = config.trainer.max_steps
    space_config = EvoNetSupernet.config_class.from_pretrained(next(iter(supernet_dirs.values())))
    data = load_data(config.data, config.data.image_size or max(space_config.resolution_choices))
    space = space_config.search_space
    archs = sample_architectures(space, args.archs, seed=1234)
    recipe = StandaloneRecipe(steps=args.standalone_steps, warmup_steps=min(15, args.standalone_steps // 4))
    start = time.perf_counter()
    standalone = standalone_scores(
        space, archs, data, recipe, tuple(args.standalone_seeds), args.work / "standalone.json", log=log
    )
    results["standalone_seconds"] = time.perf_counter() - start
    results["standalone"] = standalone
    results["ceiling"] = {metric: seed_ceiling(standalone, metric) for metric in ("accuracy", "loss")}
    results["archs"] = [space.encode(arch) for arch in archs]
    results["recipe"] = recipe
    for name in VARIANTS:
        per_seed = []
        for seed in args.seeds:
            supernet = EvoNetSupernet.from_pretrained(supernet_dirs[name, seed])
            scores = supernet_scores(supernet, data, archs)
            entry = {"mean_accuracy": sum(x["accuracy"] for x in scores) / len(scores)}
            for metric, sign in (("accuracy", 1), ("loss", -1)):  # higher is better for both rankings
                correlations = rank_correlations(
                    [sign * x[metric] for x in scores], [sign * x[metric] for x in standalone], top_k=5
                )
                entry.update({f"{metric}_{key}": value for key, value in correlations.items()})
            per_seed.append(entry)
        results["variants"][name] = per_seed
    return results


# Report --------------------------------------------------------------------------------------------------------


def render(args, throughput: list[dict] | None, ablation: dict | None) -> str:
    lines = [
        (
            "Training on the quickstart setting (`configs/quickstart.yaml`: digits at 8/16 px, `tiny` space, ConvNeXtV2 "
            "teacher trained from scratch), one thread. `python bench/bench_distill.py` rewrites this block "
            f"({'quick smoke run' if args.quick else 'full run'})."
        ),
        "",
    ]
    if throughput:
        sandwich = throughput[0]
        lines += [
            (
                f"**Throughput**, batch {base_config(args).trainer.batch_size}, forward + loss + backward + AdamW step, "
                "median process CPU time per step (the machine is shared: CPU time is the steadier measure):"
            ),
            "",
            "| step | ms / step | images / s | subnet-images / s |",
            "| --- | ---: | ---: | ---: |",
        ]
        for row in throughput:
            lines.append(
                f"| {row['name']} | {row['ms']:.0f} | {row['images_per_s']:.0f} | {row['images_per_s'] * row['subnets']:.0f} |"
            )
        standalone = [row for row in throughput if row["name"].endswith("standalone")]
        in_supernet = [row for row in throughput if row["name"].endswith("in supernet")]
        ratio = statistics.mean(s["ms"] for s in in_supernet) / statistics.mean(s["ms"] for s in standalone)
        sandwich_ratio = sandwich["ms"] / statistics.mean(s["ms"] for s in standalone)
        lines += [
            "",
            (
                f"A sandwich step trains {sandwich['subnets']} subnets plus the teacher forward and the feature losses; "
                f"it costs {sandwich_ratio:.1f}x one standalone step of a largest subnet (mean over block types). A "
                f"subnet trained inside the supernet (slicing the shared weights with gradients every step) costs "
                f"{ratio:.2f}x the same network standalone."
            ),
            "",
        ]
    if ablation:
        recipe = ablation["recipe"]
        seeds = len(next(iter(ablation["variants"].values())))
        standalone = ablation["standalone"]
        standalone_seeds = len(standalone[0]["per_seed"])
        k = min(5, len(ablation["archs"]))
        lines += [
            (
                f"**Ablation: does the supernet rank subnets like stand-alone training?** {len(ablation['archs'])} "
                "architectures sampled from the space (seed 1234). Supernet score: validation accuracy and validation "
                "cross-entropy with inherited weights. Stand-alone score: the same after training from scratch "
                f"({recipe.steps} steps, batch {recipe.batch_size}, AdamW lr {recipe.lr}, cosine, CE), mean of "
                f"{standalone_seeds} seed(s). Supernets: {ablation['distill_steps']} steps, {seeds} seed(s) each (mean ± standard "
                "deviation over seeds). Validation split only (180 images: accuracy moves in steps of 0.0056 and ties "
                "a lot, hence the loss ranking beside it)."
            ),
            "",
            (
                f"| supernet trained with | tau (accuracy) | rho (accuracy) | tau (loss) | rho (loss) | top-{k} (loss) "
                "| mean supernet acc. |"
            ),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, per_seed in ablation["variants"].items():
            keys = (
                "accuracy_kendall_tau",
                "accuracy_spearman_rho",
                "loss_kendall_tau",
                "loss_spearman_rho",
                "loss_top_k_overlap",
            )
            cells = " | ".join(_cell(per_seed, key) for key in keys)
            mean_accuracy = statistics.mean(entry["mean_accuracy"] for entry in per_seed)
            lines.append(f"| {name} | {cells} | {mean_accuracy:.3f} |")
        ceiling = ablation["ceiling"]
        if ceiling["accuracy"] is not None:
            lines.append(
                f"| *stand-alone seed 0 vs seed 1 (ceiling)* | {ceiling['accuracy']:.2f} | | {ceiling['loss']:.2f} | | | |"
            )
        accuracies = [entry["accuracy"] for entry in standalone]
        losses = [entry["loss"] for entry in standalone]
        lines += [
            "",
            (
                f"Stand-alone accuracies span {min(accuracies):.3f} to {max(accuracies):.3f} (mean "
                f"{statistics.mean(accuracies):.3f}), losses {min(losses):.3f} to {max(losses):.3f}; the stand-alone "
                f"trainings took {ablation['standalone_seconds']:.0f} s this run (0 when cached)."
            ),
            "",
        ]
    lines += [f"Machine: {machine_description()}."]
    return "\n".join(lines)


def _cell(per_seed: list[dict], key: str) -> str:
    """Mean over seeds, with the standard deviation when there are several."""
    values = [entry[key] for entry in per_seed]
    text = f"{statistics.mean(values):.2f}"
    return text + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def main(argv=None) -> str:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, flush=True)

    throughput = None if args.skip_throughput else measure_throughput(args, log)
    ablation = None if args.skip_ablation else run_ablation(args, log)
    markdown = render(args, throughput, ablation)
    print(markdown)
    if args.output:
        write_section("bench_distill", "Distillation", markdown, args.output)
        print(f"written to {args.output}")
    return markdown


if __name__ == "__main__":
    main()
