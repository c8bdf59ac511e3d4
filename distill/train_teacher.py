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
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.config import DistillConfig, TeacherTrainConfig, parse_config
from distill.student import build_space_config
from evonets.engine.evaluation import eval_mode, evaluate
from evonets.engine.timer import Stopwatch
from evonets.engine.training import Callback, TrainingLoop, parameter_groups, torch_threads


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
    with torch_threads(config.trainer.num_threads):
        return _train_teacher(config, Path(output_dir or config.teacher.path), log)


def _train_teacher(config: DistillConfig, output_dir: Path, log) -> dict:
    from transformers import get_cosine_schedule_with_warmup

    from evonets.data.classification import collate, load_data, training_loader

    train_config = config.teacher.train
    space_config = build_space_config(config.supernet, num_labels=2)
    image_size = config.data.image_size or max(space_config.resolution_choices)
    data = load_data(config.data, image_size, num_channels=space_config.num_channels)

    torch.manual_seed(train_config.seed)
    model = build_teacher_model(train_config, data.num_labels, data.id2label, image_size, space_config.num_channels)
    loader = training_loader(data.train, train_config.batch_size, train_config.seed)
    val_loader = torch.utils.data.DataLoader(data.validation, batch_size=256, collate_fn=collate)
    # Decay on every tensor of two or more dimensions, ConvNeXtV2's (1, 1, 1, C) GRN bias included.
    optimizer = torch.optim.AdamW(
        parameter_groups(model, train_config.weight_decay, exempt_by_name=False), lr=train_config.lr
    )
    total = train_config.epochs * len(loader)
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, math.ceil(0.05 * total)), total)
    parameters = sum(p.numel() for p in model.parameters())
    log(
        f"teacher: {type(model).__name__}, {parameters / 1e6:.2f} M parameters, {train_config.epochs} epochs x "
        f"{len(loader)} steps on {len(data.train)} images at {image_size} px"
    )

    def step(batch: dict) -> dict[str, float]:
        logits = model(pixel_values=batch["pixel_values"]).logits
        loss = F.cross_entropy(logits, batch["labels"], label_smoothing=train_config.label_smoothing)
        loss.backward()
        return {"loss": loss.item()}

    epochs = TeacherEpochs(model, val_loader, len(loader), train_config.epochs, log)
    model.train()
    TrainingLoop(model, optimizer, scheduler, loader, step, total, callbacks=[epochs]).run()
    model.load_state_dict(epochs.best_state)
    metrics = {
        "model": type(model).__name__,
        "parameters": parameters,
        "best_val_accuracy": epochs.best,
        "seconds": round(epochs.watch.seconds, 1),
        "history": epochs.history,
    }
    save_teacher(model, data, output_dir, metrics)
    log(f"teacher saved to {output_dir} (best val accuracy {epochs.best:.3f})")
    return metrics


class TeacherEpochs(Callback):
    """At the end of every epoch: the validation accuracy, the epoch's mean loss in `history`, the best weights so far
    (ties go to the later epoch), and a progress line five times per run."""

    def __init__(self, model, val_loader, steps_per_epoch: int, epochs: int, log):
        self.model, self.val_loader, self.log = model, val_loader, log
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.history, self.losses, self.best, self.best_state = [], [], -1.0, None
        self.watch = Stopwatch()

    def on_micro_step_end(self, loop: TrainingLoop, values: dict[str, float]) -> None:
        self.losses.append(values["loss"])

    def on_step_end(self, loop: TrainingLoop, values: dict[str, float]) -> None:
        if loop.state.step % self.steps_per_epoch:
            return
        epoch = loop.state.step // self.steps_per_epoch
        model = self.model
        with eval_mode(model):
            accuracy = evaluate(lambda x: model(pixel_values=x).logits, self.val_loader)["accuracy"]
        self.history.append(
            {"epoch": epoch, "train_loss": sum(self.losses) / len(self.losses), "val_accuracy": accuracy}
        )
        self.losses = []
        if accuracy >= self.best:
            self.best, self.best_state = accuracy, {k: v.detach().clone() for k, v in model.state_dict().items()}
        if epoch % max(1, self.epochs // 5) == 0 or epoch == self.epochs:
            self.log(
                f"teacher epoch {epoch}/{self.epochs}: loss {self.history[-1]['train_loss']:.3f}, "
                f"val accuracy {accuracy:.3f} ({self.watch.seconds:.0f} s)"
            )


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
    config = parse_config(argv, prog="distill/train_teacher.py", description=__doc__)
    if not config.teacher.path:
        raise SystemExit("error: set teacher.path (where to save the teacher), e.g. --teacher.path runs/teacher")
    return train_teacher(config)


def cli() -> None:
    """The console script's entry: `main`, exiting with status 0 once it succeeds (the object `main` returns is for
    Python callers; returned to the script's `sys.exit` it would print and exit 1)."""
    main()


if __name__ == "__main__":
    cli()
