"""The student of the distillation: the supernet's search space from the config, the stages whose features are
aligned with the teacher's, the supernet and the loss's projectors in one trainable module, and the sandwich step
that trains it (every sampled subnet's forward + backward on one micro-batch, then one gradient all-reduce)."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from evonets.data.classification import resize_batch
from evonets.models.search_space import EvoNetSupernetConfig
from evonets.models.supernet import EvoNetSupernet

from .config import DistillConfig, SupernetSettings
from .losses import DistillationLoss, TeacherTargets


def build_space_config(
    settings: SupernetSettings, num_labels: int, id2label: dict[int, str] | None = None
) -> EvoNetSupernetConfig:
    """The supernet's search space: the preset with the overrides, or a saved supernet's, with the data's labels."""
    labels = {"num_labels": num_labels}
    if id2label is not None:
        labels = {"id2label": dict(id2label), "label2id": {name: index for index, name in id2label.items()}}
    if settings.init_from:
        config = EvoNetSupernetConfig.from_pretrained(settings.init_from)
        if id2label is not None and config.num_labels != len(id2label):
            raise ValueError(
                f"supernet.init_from = {settings.init_from!r} has num_labels = {config.num_labels}, but the data has "
                f"{len(id2label)} classes."
            )
        return config
    unknown = sorted(
        set(settings.overrides) - set(EvoNetSupernetConfig().to_dict()) - {"num_labels", "id2label", "label2id"}
    )
    if unknown:
        raise ValueError(
            f"Config field supernet.overrides has unknown keys {unknown}: expected fields of EvoNetSupernetConfig."
        )
    overrides = {**settings.overrides, **labels}
    if settings.preset == "tiny":
        return EvoNetSupernetConfig.tiny(**overrides)
    return EvoNetSupernetConfig(**overrides)


def stage_channels(space_config: EvoNetSupernetConfig, indices: list[int]) -> tuple[list[int], list[int]]:
    """Resolve student stage indices (into hidden_states: 0 = stem, i = stage i) to non-negative ones, and give each
    the largest width it can have."""
    count = space_config.num_stages + 1
    resolved, channels = [], []
    for index in indices:
        if not -count <= index < count:
            raise ValueError(
                f"Config field loss.student_stages has index {index}, but the supernet has {count} hidden states "
                f"(stem + {space_config.num_stages} stages; valid: {-count} .. {count - 1})."
            )
        index %= count
        resolved.append(index)
        channels.append(max(space_config.width_choices[max(0, index - 1)]))
    return resolved, channels


class DistillModule(nn.Module):
    """The trainable parts in one module (one `prepare`, one checkpoint): the supernet and the loss's projectors."""

    def __init__(self, supernet: EvoNetSupernet, loss: DistillationLoss, stage_indices: list[int]):
        super().__init__()
        self.supernet = supernet
        self.loss = loss
        self.stage_indices = stage_indices

    def forward(self, pixel_values: torch.Tensor, arch: dict, with_features: bool = True):
        """(logits, [chosen stage maps (B, C, H, W)]) of subnet `arch`."""
        with_features = with_features and self.loss.uses_features
        outputs = self.supernet(pixel_values, arch=arch, output_hidden_states=with_features, return_dict=True)
        features = [outputs.hidden_states[index] for index in self.stage_indices] if with_features else []
        return outputs.logits, features


def train_micro_step(
    accelerator, model, unwrapped: DistillModule, teacher, batch, subnets, config: DistillConfig
) -> dict[str, float]:
    """Forward + backward of every subnet on one micro-batch; returns the logged values (unweighted terms, summed
    weighted loss, per-role CE)."""
    pixel_values, labels = batch["pixel_values"], batch["labels"]
    teacher_targets = None
    if teacher is not None:
        with accelerator.autocast():
            teacher_targets = teacher(pixel_values, with_features=unwrapped.loss.uses_features)
    inplace: TeacherTargets | None = None
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    total = 0.0
    for role, arch in subnets:
        with accelerator.no_sync(model):
            logits, features = model(resize_batch(pixel_values, arch["resolution"]), arch, True)
            result = unwrapped.loss(logits, features, labels, role, teacher=teacher_targets, inplace=inplace)
            accelerator.backward(result.total)  # accelerate divides by gradient_accumulation_steps
        if role == "largest":
            inplace = TeacherTargets(logits=logits.detach().float(), features=[p.detach() for p in result.projected])
        total += float(result.total.detach())
        for name, value in result.terms.items():
            sums[name] += value
            counts[name] += 1
        if "ce" in result.terms and role in ("largest", "smallest"):
            sums[f"ce_{role}"] += result.terms["ce"]
            counts[f"ce_{role}"] += 1
    logged = {name: sums[name] / counts[name] for name in sums}
    logged["loss"] = total
    return logged


def sync_gradients(module: nn.Module, num_processes: int) -> None:
    """Average every trainable parameter's gradient over processes in one flat all-reduce. Every process ran the same
    subnets, so the same parameters have gradients; missing ones count as zero and stay None when zero everywhere."""
    if num_processes == 1:
        return
    parameters = [p for p in module.parameters() if p.requires_grad]
    missing = [p.grad is None for p in parameters]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters])
    torch.distributed.all_reduce(flat)
    flat /= num_processes
    offset = 0
    for parameter, was_missing in zip(parameters, missing):
        chunk = flat[offset : offset + parameter.numel()].view_as(parameter)
        offset += parameter.numel()
        if was_missing and not bool(chunk.any()):
            continue
        if parameter.grad is None:
            parameter.grad = chunk.clone()
        else:
            parameter.grad.copy_(chunk)


__all__ = ["DistillModule", "build_space_config", "stage_channels", "sync_gradients", "train_micro_step"]
