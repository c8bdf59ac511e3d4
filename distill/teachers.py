"""Teachers: any transformers image-classification model (local folder or Hub id), frozen, with its stage features.

`load_teacher` loads the model with `AutoModelForImageClassification` (ConvNeXt(V2), ViT, DeiT, DINOv2 classifiers,
ResNet, Swin, EvoNet, ...), checks it against the data (number and names of labels, input channels) and wraps it in
a `Teacher` whose forward returns logits and the chosen stages' feature maps as (B, C, H, W):

- ConvNets and hierarchical models return 4-D hidden states: used as they are (Swin's `reshaped_hidden_states`).
- ViT-style models return tokens (B, L, D): the prefix tokens (CLS, distillation, registers) are dropped and the
  rest reshaped to the patch grid (H / patch, W / patch).

The teacher receives the student's batch, resized to its resolution and renormalised from the data's mean / std to
its own (`preprocessor_config.json`), so one data pipeline serves both.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from evonets.data.classification import resize_batch

from .losses import TeacherTargets

_GENERIC_LABEL = re.compile(r"LABEL_\d+")


class Teacher(nn.Module):
    """A frozen image classifier exposing logits and stage feature maps.

    Args:
        model: a transformers `*ForImageClassification` model.
        stages: indices into its `hidden_states` (negatives from the end).
        image_size: resolution the teacher sees.
        data_mean, data_std: normalisation of the incoming pixel values.
        teacher_mean, teacher_std: normalisation the teacher was trained with.
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
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.stages = list(stages)
        self.image_size = image_size
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
            features = [
                feature_map(outputs, index, pixel_values.shape[-2:], self.model.config) for index in self.stages
            ]
        return TeacherTargets(logits=outputs.logits.float(), features=[f.float() for f in features])


def feature_map(outputs, index: int, input_size: tuple[int, int], config) -> torch.Tensor:
    """Hidden state `index` of a model output as (B, C, H, W)."""
    hidden_states = getattr(outputs, "reshaped_hidden_states", None) or outputs.hidden_states
    if hidden_states is None:
        raise ValueError(f"The teacher ({type(config).__name__}) returns no hidden_states; it cannot teach features.")
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
    return tokens_to_grid(hidden, input_size, getattr(config, "patch_size", None))


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


def check_labels(model_config, num_labels: int, label_names: list[str], where: str) -> None:
    """`ValueError` when the teacher's head does not match the data's classes (count, or real names in another order)."""
    if model_config.num_labels != num_labels:
        raise ValueError(
            f"Teacher {where!r} has num_labels = {model_config.num_labels}, but the data has {num_labels} classes "
            f"{label_names[:10]}{'...' if num_labels > 10 else ''}: logit KD needs the same classes. Fine-tune the teacher "
            "on this data first (python distill/train_teacher.py trains one from scratch), or set loss.kd_weight 0 to "
            "distil features only."
        )
    names = [model_config.id2label[i] for i in range(num_labels)] if model_config.id2label else []
    generic = all(_GENERIC_LABEL.fullmatch(str(name)) for name in names)
    if names and not generic and [str(n) for n in names] != [str(n) for n in label_names]:
        raise ValueError(
            f"Teacher {where!r} labels {names} differ from the data's {label_names} (names or order): logit KD "
            "would compare different classes."
        )


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
) -> Teacher:
    """Load and check a teacher (see the module docstring). `require_labels`: its classes must be the data's (for
    logit KD); without, any head will do (feature distillation only)."""
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
    if require_labels:
        check_labels(model_config, num_labels, label_names, path)
    teacher_channels = getattr(model_config, "num_channels", len(data_mean))
    if teacher_channels != len(data_mean):
        raise ValueError(
            f"Teacher {path!r} takes {teacher_channels}-channel images, the data pipeline makes {len(data_mean)}."
        )
    model = AutoModelForImageClassification.from_pretrained(path)
    preprocessor = read_preprocessor(path)
    size = image_size or processor_size(preprocessor) or data_image_size
    teacher_mean = (
        preprocessor.get("image_mean", data_mean) if preprocessor.get("do_normalize", True) else [0.0] * len(data_mean)
    )
    teacher_std = (
        preprocessor.get("image_std", data_std) if preprocessor.get("do_normalize", True) else [1.0] * len(data_mean)
    )
    if len(teacher_mean) != len(data_mean):
        teacher_mean, teacher_std = data_mean, data_std
    teacher = Teacher(model, stages, size, data_mean, data_std, list(teacher_mean), list(teacher_std))
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


__all__ = ["Teacher", "check_labels", "feature_map", "load_teacher", "read_preprocessor", "tokens_to_grid"]
