"""The CIFAR ResNets of He et al. (2016, section 4.2), built in code to load the teachers of `../shared/data/teachers`.

6n + 2 layers (n = 3: ResNet-20, n = 9: ResNet-56), parameter names as in the files:

- stem `conv1` (3x3, 3 -> 16, no bias) -> `bn1` -> ReLU, at the input's resolution;
- `layer1`, `layer2`, `layer3`: n basic blocks at 16, 32, 64 channels; the first block of `layer2` and `layer3` has
  stride 2. A block is conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU;
- the shortcut where the shape changes is "option A" (no parameters): every second pixel, channels zero-padded by
  `planes // 4` on each side;
- global average pooling, `linear` 64 -> 10. BatchNorm eps 1e-5 (PyTorch's default).

The network takes RGB in [0, 1] normalised with `CIFAR_RESNET_MEAN` / `CIFAR_RESNET_STD`, and returns a transformers
`ImageClassifierOutputWithNoAttention` whose `hidden_states` are (stem, layer1, layer2, layer3), as transformers'
`ResNetForImageClassification` returns (embeddings, stage1, ...): a `distill.teachers.Teacher` wraps it like any other.
At 32 px the maps are 16x32x32, 16x32x32, 32x16x16 and 64x8x8.

Weights load from safetensors only (`CifarResNet.from_safetensors`, strict key check): never from a pickle.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CIFAR_RESNET_MEAN = (0.485, 0.456, 0.406)
CIFAR_RESNET_STD = (0.229, 0.224, 0.225)
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STAGE_CHANNELS = (16, 32, 64)


class CifarResNetBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the option-A shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, eps=1e-5)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.shortcut = OptionAShortcut(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(hidden)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(hidden))


class OptionAShortcut(nn.Module):
    """The parameter-free shortcut of a block that halves the resolution and doubles the channels: every second
    pixel, then `planes // 4` zero channels on each side."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, C + 2 * pad, H / 2, W / 2)
        return F.pad(hidden[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class CifarResNet(nn.Module):
    """ResNet-(6n + 2) for 10-class 32 px images (see the module docstring).

    Args:
        blocks_per_stage: n, the basic blocks of each of the three stages.
        num_labels: outputs of `linear`.
    """

    def __init__(self, blocks_per_stage: int, num_labels: int = len(CIFAR10_LABELS)):
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage = {blocks_per_stage} is invalid: expected >= 1.")
        self.blocks_per_stage = blocks_per_stage
        self.conv1 = nn.Conv2d(3, STAGE_CHANNELS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_CHANNELS[0], eps=1e-5)
        in_planes, stages = STAGE_CHANNELS[0], []
        for index, planes in enumerate(STAGE_CHANNELS):
            strides = [1 if index == 0 else 2] + [1] * (blocks_per_stage - 1)
            blocks = []
            for stride in strides:
                blocks.append(CifarResNetBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(STAGE_CHANNELS[-1], num_labels)

    @property
    def depth(self) -> int:
        return 6 * self.blocks_per_stage + 2

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False, return_dict: bool = True):
        from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

        hidden = F.relu(self.bn1(self.conv1(pixel_values)))
        hidden_states = [hidden]
        for stage in (self.layer1, self.layer2, self.layer3):
            hidden = stage(hidden)
            hidden_states.append(hidden)
        logits = self.linear(hidden.mean(dim=(2, 3)))
        return ImageClassifierOutputWithNoAttention(
            logits=logits, hidden_states=tuple(hidden_states) if output_hidden_states else None
        )

    @classmethod
    def from_safetensors(cls, path: str | Path, field: str = "teacher.path") -> CifarResNet:
        """The network of a `.safetensors` state dict, its depth read from the `layer1.<i>.` keys, loaded with
        `strict=True`. `ValueError` naming `field` when the file is missing or is not such a network."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path).expanduser()
        if not path.is_file() or path.suffix != ".safetensors":
            raise ValueError(
                f"Config field {field} = {str(path)!r} is invalid: expected an existing .safetensors file of a CIFAR "
                "ResNet (e.g. ../shared/data/teachers/resnet56_cifar10.safetensors)."
            )
        try:
            state_dict = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"Config field {field} = {str(path)!r} could not be read as safetensors: {error}"
            ) from error
        blocks = {key.split(".")[1] for key in state_dict if key.startswith("layer1.")}
        if not blocks or "linear.weight" not in state_dict:
            raise ValueError(
                f"Config field {field} = {str(path)!r} is not a CIFAR ResNet state dict: expected conv1, bn1, "
                f"layer1..3.<i>.conv1/bn1/conv2/bn2 and linear keys, found {sorted(state_dict)[:6]}..."
            )
        model = cls(len(blocks), num_labels=state_dict["linear.weight"].shape[0])
        # The files hold no BatchNorm `num_batches_tracked`; BatchNorm fills it in itself when a state dict has no
        # version metadata, so the strict check still covers every weight and running statistic.
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:  # missing / unexpected keys or a shape mismatch
            raise ValueError(
                f"Config field {field} = {str(path)!r} does not match a ResNet-{model.depth} built as specified: {error}"
            ) from error
        return model.eval()


__all__ = ["CIFAR10_LABELS", "CIFAR_RESNET_MEAN", "CIFAR_RESNET_STD", "CifarResNet"]
