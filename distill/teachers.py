"""Teachers: frozen image classifiers of another family than the student, with their stage features.

Two families (`teacher.family`):

- `transformers`: any transformers image-classification model, a local folder or a Hub id, loaded with
  `AutoModelForImageClassification` (ConvNeXt(V2), ViT, DeiT, DINOv2 classifiers, ResNet, Swin, EvoNet, ...).
- `cifar_resnet`: the CIFAR ResNets of He et al. (`distill.cifar_resnet`), built in code and loaded from a
  `.safetensors` file with a strict key check (the teachers of `../shared/data/teachers`).

`load_teacher` checks the model against the data (number and names of labels, input channels) and wraps it in a
`Teacher` whose forward returns logits and the chosen stages' feature maps as (B, C, H, W):

- ConvNets and hierarchical models return 4-D hidden states: used as they are (Swin's `reshaped_hidden_states`).
- ViT-style models return tokens (B, L, D): the prefix tokens (CLS, distillation, registers) are dropped and the
  rest reshaped to the patch grid (H / patch, W / patch).

The teacher receives the student's batch, resized to its resolution and renormalised from the data's mean / std to
its own (a transformers model's `preprocessor_config.json`; the CIFAR ResNets' fixed statistics), so one data
pipeline serves both. `teacher_accuracy` scores it on the data's test split: the check, printed when a distillation
loads it, that the right weights and preprocessing were loaded.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from evonets.data.classification import resize_batch

from .losses import TeacherTargets

TEACHER_FAMILIES = ("transformers", "cifar_resnet")
_GENERIC_LABEL = re.compile(r"LABEL_\d+")


class Teacher(nn.Module):
    """A frozen image classifier exposing logits and stage feature maps.

    Args:
        model: a module called as `model(pixel_values=..., output_hidden_states=..., return_dict=True)` that returns
            `logits` and `hidden_states` (a transformers `*ForImageClassification` model, or a `CifarResNet`).
        stages: indices into its `hidden_states` (negatives from the end).
        image_size: resolution the teacher sees.
        data_mean, data_std: normalisation of the incoming pixel values.
        teacher_mean, teacher_std: normalisation the teacher was trained with.
        patch_size: the patch size of a ViT-style teacher, whose tokens are reshaped to the patch grid (None: none).
    """

    def __init__(
        self,
        model: nn.Module,
        stages: list[int],
        image_size: int,
        data_mean: list[float],
        data_std: list[float],
        teacher_mean: list[float],
        teacher_std: list[float],
        patch_size: int | tuple[int, int] | None = None,
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.stages = list(stages)
        self.image_size = image_size
        self.patch_size = patch_size
        data_mean, data_std = torch.tensor(data_mean), torch.tensor(data_std)
        teacher_mean, teacher_std = torch.tensor(teacher_mean), torch.tensor(teacher_std)
        # x_teacher = (x * data_std + data_mean - teacher_mean) / teacher_std
        self.register_buffer("scale", (data_std / teacher_std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((data_mean - teacher_mean) / teacher_std).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        return super().train(False)  # always in eval mode (dropout, BatchNorm statistics)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor, with_features: bool = True) -> TeacherTargets:
        pixel_values = resize_batch(pixel_values, self.image_size) * self.scale + self.shift
        outputs = self.model(pixel_values=pixel_values, output_hidden_states=with_features, return_dict=True)
        features = []
        if with_features:
            name = type(self.model).__name__
            features = [
                feature_map(outputs, index, pixel_values.shape[-2:], self.patch_size, name) for index in self.stages
            ]
        return TeacherTargets(logits=outputs.logits.float(), features=[f.float() for f in features])


def feature_map(outputs, index: int, input_size: tuple[int, int], patch_size, teacher_name: str) -> torch.Tensor:
    """Hidden state `index` of a model output as (B, C, H, W)."""
    hidden_states = getattr(outputs, "reshaped_hidden_states", None) or outputs.hidden_states
    if hidden_states is None:
        raise ValueError(f"The teacher ({teacher_name}) returns no hidden_states; it cannot teach features.")
    count = len(hidden_states)
    if not -count <= index < count:
        raise ValueError(
            f"Config field teacher.stages has index {index}, but the teacher returns {count} hidden states "
            f"(valid: {-count} .. {count - 1})."
        )
    hidden = hidden_states[index]
    if hidden.ndim == 4:
        return hidden
    if hidden.ndim != 3:
        raise ValueError(
            f"Teacher hidden state {index} has shape {tuple(hidden.shape)}: expected 3-D tokens or a 4-D map."
        )
    return tokens_to_grid(hidden, input_size, patch_size)


def tokens_to_grid(tokens: torch.Tensor, input_size: tuple[int, int], patch_size) -> torch.Tensor:
    """(B, L, D) ViT tokens -> (B, D, H / p, W / p), dropping the L - grid prefix tokens (CLS, distillation,
    registers). Without a usable patch size, the largest square number of trailing tokens is taken."""
    batch, length, dim = tokens.shape
    if isinstance(patch_size, (list, tuple)):
        patch_h, patch_w = patch_size
    else:
        patch_h = patch_w = patch_size
    if patch_h:
        grid_h, grid_w = input_size[0] // patch_h, input_size[1] // patch_w
    else:
        grid_h = grid_w = 0
    if not grid_h or grid_h * grid_w > length or length - grid_h * grid_w > 16:
        side = math.isqrt(length)
        while side > 0 and length - side * side > 16:
            side -= 1
        grid_h = grid_w = side
    if grid_h * grid_w == 0:
        raise ValueError(f"Cannot reshape teacher tokens of shape {tuple(tokens.shape)} to a grid.")
    grid = tokens[:, length - grid_h * grid_w :]
    return grid.transpose(1, 2).reshape(batch, dim, grid_h, grid_w)


def read_preprocessor(path: str) -> dict:
    """The teacher's `preprocessor_config.json` as a dict (empty when absent; a Hub download when `path` is an id)."""
    local = Path(path) / "preprocessor_config.json"
    if local.is_file():
        return json.loads(local.read_text())
    if Path(path).exists():
        return {}
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(path, "preprocessor_config.json")).read_text())
    except Exception:  # noqa: BLE001  (offline, or the model has no processor)
        return {}


def processor_size(preprocessor: dict) -> int | None:
    size = preprocessor.get("crop_size") or preprocessor.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    return int(size) if isinstance(size, (int, float)) else None


def check_labels(teacher_labels: list[str], label_names: list[str], where: str) -> None:
    """`ValueError` when the teacher's head does not match the data's classes (count, or real names in another order;
    transformers' generic `LABEL_<i>` names match any)."""
    num_labels = len(label_names)
    if len(teacher_labels) != num_labels:
        raise ValueError(
            f"Teacher {where!r} has num_labels = {len(teacher_labels)}, but the data has {num_labels} classes "
            f"{label_names[:10]}{'...' if num_labels > 10 else ''}: logit KD needs the same classes. Fine-tune the teacher "
            "on this data first (python distill/train_teacher.py trains one from scratch), or set loss.kd_weight 0 to "
            "distil features only."
        )
    generic = all(_GENERIC_LABEL.fullmatch(str(name)) for name in teacher_labels)
    if not generic and [str(n) for n in teacher_labels] != [str(n) for n in label_names]:
        raise ValueError(
            f"Teacher {where!r} labels {list(teacher_labels)} differ from the data's {label_names} (names or order): "
            "logit KD would compare different classes."
        )


class TeacherModel(NamedTuple):
    """A loaded teacher network and what `load_teacher` checks it against the data with."""

    model: nn.Module
    label_names: list[str]  # transformers' generic LABEL_<i> when the model has no real names
    num_channels: int
    image_size: int | None  # the resolution it was trained at, when known
    mean: list[float]
    std: list[float]
    patch_size: int | tuple[int, int] | None  # ViT-style teachers: tokens are reshaped to this patch grid


def load_teacher(
    path: str,
    stages: list[int],
    num_labels: int,
    label_names: list[str],
    data_image_size: int,
    data_mean: list[float],
    data_std: list[float],
    image_size: int | None = None,
    require_labels: bool = True,
    family: str = "transformers",
) -> Teacher:
    """Load and check a teacher of `family` (see the module docstring). `require_labels`: its classes must be the
    data's `label_names` (for logit KD); without, any head will do (feature distillation only)."""
    if family == "transformers":
        loaded = _transformers_classifier(path, data_mean, data_std)
    elif family == "cifar_resnet":
        loaded = _cifar_resnet(path)
    else:
        raise ValueError(
            f"Config field teacher.family = {family!r} is invalid: expected one of {list(TEACHER_FAMILIES)}."
        )
    if require_labels:
        check_labels(loaded.label_names, label_names, path)
    if loaded.num_channels != len(data_mean):
        raise ValueError(
            f"Teacher {path!r} takes {loaded.num_channels}-channel images, the data pipeline makes {len(data_mean)}."
        )
    size = image_size or loaded.image_size or data_image_size
    teacher = Teacher(loaded.model, stages, size, data_mean, data_std, loaded.mean, loaded.std, loaded.patch_size)
    # One dry run: checks the stage indices and the grid reshaping before training starts.
    probe = torch.zeros(1, len(data_mean), data_image_size, data_image_size)
    try:
        targets = teacher(probe, with_features=bool(stages))
    except ValueError:
        raise
    except Exception as error:
        raise ValueError(
            f"Teacher {path!r} failed on a {size} x {size} batch ({type(error).__name__}: {error}); set teacher.image_size "
            "to the resolution it takes."
        ) from error
    if require_labels and targets.logits.shape[-1] != num_labels:
        raise ValueError(f"Teacher {path!r} returned {targets.logits.shape[-1]} logits, expected {num_labels}.")
    return teacher


def _transformers_classifier(path: str, data_mean: list[float], data_std: list[float]) -> TeacherModel:
    """A transformers image classifier (local folder or Hub id) with its preprocessor's size and statistics."""
    from transformers import AutoConfig, AutoModelForImageClassification

    import evonets  # noqa: F401  (registers EvoNet with the Auto classes, so EvoNet teachers load too)

    looks_local = Path(path).is_absolute() or path.startswith((".", "~")) or path.count("/") > 1
    if looks_local and not Path(path).expanduser().exists():
        raise ValueError(
            f"Config field teacher.path = {path!r} is invalid: no such folder (set teacher.train_if_missing: true to "
            "train a teacher there first, or run python distill/train_teacher.py)."
        )
    try:
        model_config = AutoConfig.from_pretrained(path)
    except Exception as error:
        raise ValueError(
            f"Config field teacher.path = {path!r} is invalid: neither a model folder nor a reachable Hub model ({error})."
        ) from error
    id2label = model_config.id2label or {}
    labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(model_config.num_labels)]
    preprocessor = read_preprocessor(path)
    normalizes = preprocessor.get("do_normalize", True)
    mean = preprocessor.get("image_mean", data_mean) if normalizes else [0.0] * len(data_mean)
    std = preprocessor.get("image_std", data_std) if normalizes else [1.0] * len(data_mean)
    if len(mean) != len(data_mean):  # statistics of another channel count: assume the data's
        mean, std = data_mean, data_std
    return TeacherModel(
        model=AutoModelForImageClassification.from_pretrained(path),
        label_names=labels,
        num_channels=getattr(model_config, "num_channels", len(data_mean)),
        image_size=processor_size(preprocessor),
        mean=list(mean),
        std=list(std),
        patch_size=getattr(model_config, "patch_size", None),
    )


def _cifar_resnet(path: str) -> TeacherModel:
    """A CIFAR ResNet `.safetensors` file (`distill.cifar_resnet`): 32 px, ImageNet statistics, CIFAR-10 labels."""
    from .cifar_resnet import CIFAR10_LABELS, CIFAR_RESNET_MEAN, CIFAR_RESNET_STD, CifarResNet

    model = CifarResNet.from_safetensors(path)
    outputs = model.linear.out_features
    labels = list(CIFAR10_LABELS) if outputs == len(CIFAR10_LABELS) else [f"LABEL_{i}" for i in range(outputs)]
    return TeacherModel(model, labels, 3, 32, list(CIFAR_RESNET_MEAN), list(CIFAR_RESNET_STD), None)


@torch.no_grad()
def teacher_accuracy(teacher: Teacher, test_split, batch_size: int = 500) -> float:
    """The teacher's accuracy on `test_split` (items `{"pixel_values", "labels"}` with the data's preprocessing)."""
    from evonets.data.classification import collate
    from evonets.engine.evaluation import evaluate

    loader = torch.utils.data.DataLoader(test_split, batch_size=batch_size, collate_fn=collate)
    device = teacher.scale.device
    batches = ({key: value.to(device) for key, value in batch.items()} for batch in loader)
    return evaluate(lambda pixel_values: teacher(pixel_values, with_features=False).logits, batches)["accuracy"]


__all__ = [
    "TEACHER_FAMILIES",
    "Teacher",
    "TeacherModel",
    "check_labels",
    "feature_map",
    "load_teacher",
    "read_preprocessor",
    "teacher_accuracy",
    "tokens_to_grid",
]
