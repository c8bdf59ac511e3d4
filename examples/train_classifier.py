"""Fine-tune a small hybrid EvoNet on scikit-learn's real handwritten digits with `transformers.Trainer`.

    python examples/train_classifier.py                      # ~2 CPU minutes
    python examples/train_classifier.py --epochs 1 --output-dir /tmp/digits

Prints test accuracy beside the majority-class baseline, and saves model + image processor so that
`pipeline("image-classification", model=OUTPUT_DIR)` works.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainingArguments, pipeline

import evonets
from evonets.data.digits import load_digits_dataset

IMAGE_SIZE = 32  # the 8x8 digits, upsampled: four stages at patch 2 see 16x16, 8x8, 4x4 and 2x2 token grids


def build_model(num_labels: int, id2label: dict[int, str]) -> evonets.EvoNetForImageClassification:
    config = evonets.EvoNetConfig(
        image_size=IMAGE_SIZE,
        patch_size=2,
        depths=[1, 1, 2, 1],
        hidden_sizes=[32, 48, 96, 128],
        block_types=["ss2d", "ssd", ["attention", "conv"], "attention"],
        mlp_ratios=2.0,
        d_states=8,
        drop_path_rate=0.05,
        num_labels=num_labels,
        id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
    )
    return evonets.EvoNetForImageClassification(config)


def accuracy(eval_prediction) -> dict[str, float]:
    logits, labels = eval_prediction
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/digits-evonet")
    parser.add_argument("--epochs", type=float, default=6)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    data = load_digits_dataset(seed=args.seed)
    label_names = data["train"].features["label"].names
    processor = evonets.EvoNetImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )

    def preprocess(batch: dict) -> dict:
        pixel_values = processor(batch["image"], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": batch["label"]}

    encoded = data.with_transform(preprocess)
    model = build_model(len(label_names), dict(enumerate(label_names)))
    print(
        f"EvoNet: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"blocks {model.config.block_types}"
    )

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        learning_rate=args.learning_rate,
        weight_decay=0.05,
        warmup_steps=20,
        lr_scheduler_type="cosine",
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=256,
        eval_strategy="epoch",
        save_strategy="no",
        logging_steps=10,
        remove_unused_columns=False,
        report_to="none",
        seed=args.seed,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        compute_metrics=accuracy,
    )
    trainer.train()

    test_accuracy = trainer.evaluate(encoded["test"], metric_key_prefix="test")["test_accuracy"]
    train_labels = np.array(data["train"]["label"])
    majority_class = int(np.bincount(train_labels).argmax())
    baseline_accuracy = float((np.array(data["test"]["label"]) == majority_class).mean())

    output_dir = Path(args.output_dir)
    trainer.save_model(output_dir)
    processor.save_pretrained(output_dir)
    classifier = pipeline("image-classification", model=str(output_dir), device="cpu")
    first = data["test"][0]
    prediction = classifier(first["image"].convert("RGB"))[0]

    results = {"test_accuracy": test_accuracy, "majority_class_baseline": baseline_accuracy}
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\ntest accuracy {test_accuracy:.4f}   majority-class baseline {baseline_accuracy:.4f}")
    print(
        f"pipeline on the first test image: predicted {prediction['label']} "
        f"(p={prediction['score']:.2f}), true {label_names[first['label']]}"
    )
    print(f"saved to {output_dir}")


if __name__ == "__main__":
    main()
