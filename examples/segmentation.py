"""Fine-tune an EvoNet segmenter on real COCO semantic masks with `transformers.Trainer`.

    python examples/segmentation.py                                  # all-MLP decoder, a few CPU minutes
    python examples/segmentation.py --decoder upernet                # transformers' UperNet on the same backbone
    python examples/segmentation.py --decoder both --epochs 10
    python examples/segmentation.py --backbone runs/quickstart/search/models/<hash>   # a searched backbone

Data: the 100 COCO images of `../shared/data/coco128` that have semantic masks (129 COCO panoptic classes remapped
to contiguous ids, "unlabeled" ignored), split 80 / 20 with a fixed seed, resized to `--image-size`. Prints
validation mIoU and pixel accuracy beside the trivial baseline (the training split's most frequent class predicted
everywhere, scored on the same validation split), and writes per decoder the model + image processor, `results.json`
and `predictions.png` (image / ground truth / prediction for a few validation images).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from transformers import Trainer, TrainingArguments

import evonets
from evonets.data.segmentation import (
    IGNORE_INDEX,
    SegmentationCollator,
    SegmentationMetrics,
    SemanticSegmentationDataset,
    check_label_space,
    load_coco_semantic,
    preprocess_logits_for_metrics,
    train_validation_split,
)
from evonets.models.modeling_evonet_segmentation import build_upernet


def default_backbone(image_size: int) -> evonets.EvoNetConfig:
    """A small hybrid EvoNet: a conv stage at 1/4 resolution, then SS2D, SSD and attention stages."""
    return evonets.EvoNetConfig(
        image_size=image_size,
        depths=[1, 1, 2, 1],
        hidden_sizes=[32, 64, 128, 192],
        block_types=["conv", "ss2d", "ssd", "attention"],
        mlp_ratios=2.0,
        d_states=8,
    )


def build_model(decoder: str, backbone, id2label: dict[int, str], hidden_size: int):
    if decoder == "mlp":
        return evonets.EvoNetForSemanticSegmentation.from_backbone(
            backbone, id2label=id2label, decoder_hidden_size=hidden_size
        )
    return build_upernet(backbone, id2label=id2label, hidden_size=hidden_size, ignore_index=IGNORE_INDEX)


def majority_baseline(train: SemanticSegmentationDataset, validation: SemanticSegmentationDataset) -> dict:
    """The training split's most frequent class predicted for every pixel, scored on the validation split."""
    majority = int(train.label_counts().argmax())
    metrics = SegmentationMetrics(train.num_labels)
    for index in range(len(validation)):
        labels = validation.load_labels(index)
        metrics.update(np.full_like(labels, majority), labels)
    return {"class": train.id2label[majority], **metrics.compute()}


def colourise(labels: np.ndarray, num_labels: int) -> np.ndarray:
    """Class ids (H, W) -> RGB (H, W, 3) in [0, 1], one fixed colour per class, black where ignored."""
    palette = np.random.default_rng(0).uniform(0.1, 1.0, size=(num_labels + 1, 3))
    palette[-1] = 0.0
    return palette[np.where(labels == IGNORE_INDEX, num_labels, labels)]


def save_triplets(path: Path, dataset: SemanticSegmentationDataset, predictions: np.ndarray, title: str) -> None:
    rows = min(4, len(dataset))
    figure = Figure(figsize=(7.5, 2.5 * rows))
    axes = figure.subplots(rows, 3, squeeze=False)
    for row in range(rows):
        image = Image.open(dataset.samples[row][0]).convert("RGB")
        panels = (
            image,
            colourise(dataset.load_labels(row), dataset.num_labels),
            colourise(predictions[row], dataset.num_labels),
        )
        for column, (panel, name) in enumerate(zip(panels, ("image", "ground truth", "prediction"))):
            axes[row, column].imshow(panel, interpolation="nearest", extent=(0, 1, 0, 1))
            axes[row, column].set_axis_off()
            if row == 0:
                axes[row, column].set_title(name)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def run(decoder: str, args: argparse.Namespace, train, validation, baseline: dict) -> dict:
    torch.manual_seed(args.seed)
    backbone = args.backbone if args.backbone else default_backbone(args.image_size)
    model = build_model(decoder, backbone, train.id2label, args.decoder_hidden_size)
    check_label_space(model.config, train)
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    head = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("backbone.")) / 1e6
    print(f"\n[{decoder}] {type(model).__name__}: {parameters:.2f} M parameters ({head:.2f} M in the decoder)")

    output_dir = Path(args.output_dir) / decoder
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=args.epochs,
        learning_rate=args.learning_rate,
        weight_decay=0.01,
        warmup_steps=20,
        lr_scheduler_type="cosine",
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        eval_strategy="steps",
        eval_steps=50,
        save_strategy="no",
        logging_steps=10,
        report_to="none",
        seed=args.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=SegmentationCollator(num_labels=train.num_labels),
        compute_metrics=SegmentationMetrics(num_labels=train.num_labels),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    prediction = trainer.predict(validation)
    scores = {key.removeprefix("test_"): value for key, value in prediction.metrics.items()}

    trainer.save_model(output_dir)
    train.processor.save_pretrained(output_dir)
    title = (
        f"{decoder}: mIoU {scores['mean_iou']:.3f}, pixel acc {scores['pixel_accuracy']:.3f} "
        f"(baseline {baseline['mean_iou']:.3f} / {baseline['pixel_accuracy']:.3f})"
    )
    save_triplets(output_dir / "predictions.png", validation, prediction.predictions, title)
    results = {
        "decoder": decoder,
        "steps": trainer.state.global_step,
        "image_size": args.image_size,
        "train_seconds": round(train_seconds, 1),
        "mean_iou": scores["mean_iou"],
        "pixel_accuracy": scores["pixel_accuracy"],
        "baseline": baseline,
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"[{decoder}] saved model, processor, results.json and predictions.png to {output_dir}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decoder", choices=["mlp", "upernet", "both"], default="mlp")
    parser.add_argument(
        "--backbone",
        default=None,
        help="a saved EvoNet folder (e.g. a search run's models/<hash>/); default: a small EvoNet trained from scratch",
    )
    parser.add_argument("--output-dir", default="outputs/segmentation")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=float, default=30)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--decoder-hidden-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_coco_semantic(image_size=args.image_size)
    train, validation = train_validation_split(data, validation_fraction=0.2, seed=args.seed)
    print(
        f"COCO semantic masks: {len(train)} train / {len(validation)} validation images at {args.image_size} px, "
        f"{data.num_labels} classes"
    )
    baseline = majority_baseline(train, validation)

    decoders = ["mlp", "upernet"] if args.decoder == "both" else [args.decoder]
    results = [run(decoder, args, train, validation, baseline) for decoder in decoders]

    print(f"\nvalidation ({len(validation)} images, {args.image_size} px)   mIoU     pixel acc   steps   train time")
    for result in results:
        print(
            f"  {result['decoder']:<36}{result['mean_iou']:.4f}   {result['pixel_accuracy']:.4f}      "
            f"{result['steps']:<7} {result['train_seconds']:.0f} s"
        )
    print(f"  baseline: always {baseline['class']!r:<20}{baseline['mean_iou']:.4f}   {baseline['pixel_accuracy']:.4f}")


if __name__ == "__main__":
    main()
