"""Train a from-scratch teacher of another family (ConvNeXtV2 or ViT) on the distillation data, and save it.

    python distill/train_teacher.py --config configs/quickstart.yaml          # writes teacher.path
    python distill/train_teacher.py --config configs/quickstart.yaml --teacher.train.epochs 10

For when no pretrained teacher fits the data (the CPU quickstart on digits). The model is an ordinary transformers
`ConvNextV2ForImageClassification` (or `ViTForImageClassification`) built from its config, trained with AdamW, a
cosine schedule and label smoothing on the train split, selected on the validation split (the test split is never
read), and saved with `save_pretrained` plus a `preprocessor_config.json` carrying the data's size and normalisation
and `teacher_metrics.json` (validation accuracy per epoch). `distill/train.py` calls it when `teacher.train_if_missing`
is set and `teacher.path` does not exist yet.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: drop distill/ from the path, make the repository importable
    _here = Path(__file__).resolve().parent
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.append(str(_here.parent))

import torch
import torch.nn.functional as F

from distill.config import DistillConfig, TeacherTrainConfig


def build_teacher_model(
    config: TeacherTrainConfig, num_labels: int, id2label: dict[int, str], image_size: int, num_channels: int
):
    """A randomly initialised transformers classifier of `config.family`."""
    label2id = {name: index for index, name in id2label.items()}
    common = {"num_labels": num_labels, "id2label": id2label, "label2id": label2id, "num_channels": num_channels}
    if config.family == "convnextv2":
        from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

        model_config = ConvNextV2Config(
            patch_size=config.patch_size,
            num_stages=len(config.hidden_sizes),
            hidden_sizes=list(config.hidden_sizes),
            depths=list(config.depths),
            image_size=image_size,
            drop_path_rate=0.0,
            **common,
        )
        return ConvNextV2ForImageClassification(model_config)
    if config.family == "vit":
        from transformers import ViTConfig, ViTForImageClassification

        hidden = config.hidden_sizes[0]
        model_config = ViTConfig(
            image_size=image_size,
            patch_size=config.patch_size,
            hidden_size=hidden,
            num_hidden_layers=sum(config.depths),
            num_attention_heads=max(1, hidden // 32),
            intermediate_size=4 * hidden,
            **common,
        )
        return ViTForImageClassification(model_config)
    raise ValueError(
        f"Config field teacher.train.family = {config.family!r} is invalid: expected 'convnextv2' or 'vit'."
    )


def train_teacher(config: DistillConfig, output_dir: str | Path | None = None, log=print) -> dict:
    """Train and save a teacher as `config.teacher.train` says; returns its metrics. `output_dir` defaults to
    `config.teacher.path`."""
    from distill.trainer import torch_threads

    with torch_threads(config.trainer.num_threads):
        return _train_teacher(config, Path(output_dir or config.teacher.path), log)


def _train_teacher(config: DistillConfig, output_dir: Path, log) -> dict:
    from transformers import get_cosine_schedule_with_warmup

    from distill.trainer import build_space_config
    from evonets.data.classification import EpochShuffleSampler, collate, load_data

    train_config = config.teacher.train
    space_config = build_space_config(config.supernet, num_labels=2)
    image_size = config.data.image_size or max(space_config.resolution_choices)
    data = load_data(config.data, image_size, num_channels=space_config.num_channels)

    torch.manual_seed(train_config.seed)
    model = build_teacher_model(train_config, data.num_labels, data.id2label, image_size, space_config.num_channels)
    sampler = EpochShuffleSampler(len(data.train), train_config.seed)
    loader = torch.utils.data.DataLoader(
        data.train, batch_size=train_config.batch_size, sampler=sampler, collate_fn=collate, drop_last=True
    )
    val_loader = torch.utils.data.DataLoader(data.validation, batch_size=256, collate_fn=collate)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train_config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=train_config.lr,
    )
    total = train_config.epochs * len(loader)
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, math.ceil(0.05 * total)), total)
    parameters = sum(p.numel() for p in model.parameters())
    log(
        f"teacher: {type(model).__name__}, {parameters / 1e6:.2f} M parameters, {train_config.epochs} epochs x "
        f"{len(loader)} steps on {len(data.train)} images at {image_size} px"
    )

    history, best, best_state, start = [], -1.0, None, time.perf_counter()
    for epoch in range(train_config.epochs):
        sampler.set_epoch(epoch)
        model.train()
        losses = []
        for batch in loader:
            logits = model(pixel_values=batch["pixel_values"]).logits
            loss = F.cross_entropy(logits, batch["labels"], label_smoothing=train_config.label_smoothing)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        accuracy = evaluate(model, val_loader)
        history.append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses), "val_accuracy": accuracy})
        if accuracy >= best:
            best, best_state = accuracy, {k: v.detach().clone() for k, v in model.state_dict().items()}
        if (epoch + 1) % max(1, train_config.epochs // 5) == 0 or epoch + 1 == train_config.epochs:
            log(
                f"teacher epoch {epoch + 1}/{train_config.epochs}: loss {history[-1]['train_loss']:.3f}, "
                f"val accuracy {accuracy:.3f} ({time.perf_counter() - start:.0f} s)"
            )
    model.load_state_dict(best_state)
    metrics = {
        "model": type(model).__name__,
        "parameters": parameters,
        "best_val_accuracy": best,
        "seconds": round(time.perf_counter() - start, 1),
        "history": history,
    }
    save_teacher(model, data, output_dir, metrics)
    log(f"teacher saved to {output_dir} (best val accuracy {best:.3f})")
    return metrics


@torch.no_grad()
def evaluate(model, loader) -> float:
    model.eval()
    correct = count = 0
    for batch in loader:
        logits = model(pixel_values=batch["pixel_values"]).logits
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
        count += len(batch["labels"])
    return correct / max(1, count)


def save_teacher(model, data, output_dir: Path, metrics: dict) -> None:
    """`save_pretrained` + a plain resize / rescale / normalise processor config + the metrics."""
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    try:
        from transformers import ViTImageProcessorPil as Processor  # PIL-only: no torchvision needed
    except ImportError:  # older transformers: the slow processor is the PIL one
        from transformers import ViTImageProcessor as Processor
    processor = Processor(
        size={"height": data.image_size, "width": data.image_size},
        image_mean=list(data.processor.image_mean),
        image_std=list(data.processor.image_std),
    )
    processor.save_pretrained(output_dir)
    (output_dir / "teacher_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict:
    from distill.train import parse_config

    config = parse_config(argv, prog="distill/train_teacher.py", description=__doc__)
    if not config.teacher.path:
        raise SystemExit("error: set teacher.path (where to save the teacher), e.g. --teacher.path runs/teacher")
    return train_teacher(config)


if __name__ == "__main__":
    main()
