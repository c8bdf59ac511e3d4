"""Fine-tune an RT-DETR detector on an EvoNet backbone with `transformers.Trainer` on real detection data.

    python examples/detection.py                                  # BCCD blood cells (Pascal VOC XML), a few CPU min
    python examples/detection.py --data coco128                   # 128 COCO images (COCO JSON), 80 classes
    python examples/detection.py --backbone runs/quickstart/search/models/<hash>   # a searched EvoNet, its weights

Prints COCO mAP and mAP@0.5 on the validation split beside two trivial baselines (no detections; the training set's
mean box per class scored by the class prior), writes `detections.png` (validation images, ground truth in green,
predictions in red) and saves model + image processor, so that `pipeline("object-detection", model=OUTPUT_DIR)`
works (with `import evonets`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import RTDetrImageProcessorPil, Trainer, TrainingArguments, pipeline

import evonets
from evonets.data.detection import (
    CocoDetectionEvaluator,
    DetectionPreprocessor,
    collate_detection,
    id2label,
    load_coco_detection,
    load_voc_detection,
    mean_box_detections,
)
from evonets.data.paths import shared_data_dir
from evonets.models.detection import build_rt_detr

# A small hybrid EvoNet: a conv stage at stride 4 (where a scan would cost most), SSD in the middle, attention at the
# coarse end; stages 2-4 (strides 8, 16, 32) feed the detector.
DEFAULT_BACKBONE = evonets.EvoNetConfig(
    depths=[1, 1, 2, 1],
    hidden_sizes=[32, 64, 128, 192],
    block_types=["conv", "ssd", ["ssd", "attention"], "attention"],
    mlp_ratios=3.0,
    d_states=8,
)


def load_data(name: str, seed: int):
    """(train, validation) splits: BCCD's own train / val files; coco128 has one split, so 20 % is held out."""
    if name == "bccd":
        root = shared_data_dir() / "bccd"
        return load_voc_detection(root, "train"), load_voc_detection(root, "val")
    splits = load_coco_detection(shared_data_dir() / "coco128").train_test_split(test_size=0.2, seed=seed)
    return splits["train"], splits["test"]


def draw(rows, detections: list[list[dict]], path: Path, threshold: float) -> None:
    """Ground truth (green) and the pipeline's detections above `threshold` (red) on four images, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    figure, axes = plt.subplots(2, 2, figsize=(10, 8))
    for axis, row, found in zip(axes.flat, rows, detections):
        axis.imshow(row["image"].convert("RGB"))
        for x, y, w, h in row["objects"]["bbox"]:
            axis.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="lime", linewidth=1.2))
        for detection in found:
            if detection["score"] >= threshold:
                box = detection["box"]
                x0, y0, x1, y1 = box["xmin"], box["ymin"], box["xmax"], box["ymax"]
                axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=1.2))
                axis.text(x0, y0, f"{detection['label']} {detection['score']:.2f}", color="red", fontsize=6)
        axis.set_title(f"validation image {row['image_id']}", fontsize=9)
        axis.axis("off")
    figure.suptitle(f"ground truth (green), detections with score >= {threshold} (red)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["bccd", "coco128"], default="bccd")
    parser.add_argument(
        "--backbone", default=None, help="a saved EvoNet folder (default: a small EvoNet, from scratch)"
    )
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default="outputs/detection-evonet")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started, started_cpu = time.perf_counter(), time.process_time()

    train, validation = load_data(args.data, args.seed)
    label_names = id2label(train)
    processor = RTDetrImageProcessorPil(size={"height": args.image_size, "width": args.image_size}, do_normalize=True)
    model = build_rt_detr(args.backbone or DEFAULT_BACKBONE, label_names)
    backbone_parameters = sum(p.numel() for p in model.model.backbone.parameters())
    print(
        f"RT-DETR on EvoNet: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters "
        f"({backbone_parameters / 1e6:.2f} M backbone); {len(train)} train / {len(validation)} validation images, "
        f"{len(label_names)} classes"
    )

    evaluator = CocoDetectionEvaluator(validation, processor)
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        weight_decay=1e-4,
        warmup_steps=min(30, args.max_steps // 10),
        lr_scheduler_type="cosine",
        max_grad_norm=0.1,  # RT-DETR's own clipping
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=16,
        eval_do_concat_batches=False,  # per-batch (logits, pred_boxes) and label dicts for the COCO evaluator
        eval_strategy="no",
        save_strategy="no",
        logging_steps=20,
        remove_unused_columns=False,
        report_to="none",
        seed=args.seed,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        data_collator=collate_detection,
        train_dataset=train.with_transform(DetectionPreprocessor(processor, augment=True, seed=args.seed)),
        eval_dataset=validation.with_transform(DetectionPreprocessor(processor)),
        compute_metrics=evaluator,
    )
    train_result = trainer.train()
    metrics = trainer.evaluate()
    baselines = {
        "no detections": evaluator.evaluate([]),
        "mean box per class": evaluator.evaluate(mean_box_detections(train, validation)),
    }

    output_dir = Path(args.output_dir)
    trainer.save_model(output_dir)
    processor.save_pretrained(output_dir)
    detector = pipeline("object-detection", model=str(output_dir), device="cpu", threshold=0.0)
    shown = validation.select(range(4))
    # the pipeline returns boxes in original-image pixels
    draw(shown, [detector(row["image"].convert("RGB")) for row in shown], output_dir / "detections.png", 0.4)

    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    results = {
        "data": args.data,
        "steps": args.max_steps,
        "image_size": args.image_size,
        "train_seconds": train_result.metrics["train_runtime"],
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "map": metrics["eval_map"],
        "map_50": metrics["eval_map_50"],
        "baselines": {name: {"map": values["map"], "map_50": values["map_50"]} for name, values in baselines.items()},
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nvalidation ({args.data}, {len(validation)} images, {args.image_size} px, {args.max_steps} steps):")
    print(f"  {'EvoNet RT-DETR':<30} mAP {metrics['eval_map']:.4f}   mAP@0.5 {metrics['eval_map_50']:.4f}")
    for name, values in baselines.items():
        print(f"  {'baseline: ' + name:<30} mAP {values['map']:.4f}   mAP@0.5 {values['map_50']:.4f}")
    print(
        f"wall time {wall / 60:.1f} min (training {train_result.metrics['train_runtime'] / 60:.1f} min), CPU time "
        f"{cpu / 60:.1f} min; "
        f"saved to {output_dir}, boxes drawn in {output_dir / 'detections.png'}"
    )


if __name__ == "__main__":
    main()
