"""Depthwise-convolution token mixer (ConvNeXt-style), so CNN baselines live in the same search space."""

from __future__ import annotations

import torch
from torch import nn


class EvoNetConvMixer(nn.Module):
    r"""
    Depthwise k x k convolution: `y[c] = Σ_{i,j} w[c, i, j] x[c, h + i, w + j] + b[c]`, same padding.

    Inside an EvoNet block (norm -> mixer -> residual -> norm -> MLP -> residual) this is exactly a ConvNeXt
    block with a pre-norm, and with k = 3 close to an MBConv without squeeze-excitation.

    Shapes: hidden_states (B, H, W, C) -> (B, H, W, C).
    """

    # How `EvoNetSupernet` cuts this mixer out of a larger one (see `EvoNetSS2D.elastic_layout`): leading channels.
    elastic_layout = {}

    def __init__(self, hidden_size: int, kernel_size: int = 7):
        super().__init__()
        self.dwconv = nn.Conv2d(hidden_size, hidden_size, kernel_size, padding=kernel_size // 2, groups=hidden_size)

    @classmethod
    def from_config(cls, config, args: dict) -> EvoNetConvMixer:
        """Build from an `EvoNetConfig` and one block's resolved sizes (`config.block_args(stage, index)`)."""
        return cls(args["hidden_size"], kernel_size=config.conv_kernel_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dwconv(hidden_states.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


__all__ = ["EvoNetConvMixer"]
