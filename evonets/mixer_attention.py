"""Multi-head self-attention token mixer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EvoNetAttention(nn.Module):
    r"""
    Global multi-head self-attention over the H x W tokens.

    `q, k, v = qkv(x)`, each split into `num_heads` heads of size `P = C / num_heads`;
    `y = softmax(q kᵀ / sqrt(P)) v` through `F.scaled_dot_product_attention` (which picks a fused kernel);
    `out = proj(y)`. No position embedding: the patch stem, the strided downsampling convs and any SS2D / conv
    blocks before it already encode position.

    Shapes: hidden_states (B, H, W, C) -> (B, H, W, C); inside, q/k/v are (B, heads, L, P) with L = H * W.
    """

    # How `EvoNetSupernet` cuts this mixer out of a larger one (see `EvoNetSS2D.elastic_layout`); heads change no
    # parameter shape.
    elastic_layout = {
        "qkv.weight": (("hidden_size", "hidden_size", "hidden_size"), None),  # rows [q | k | v]
        "qkv.bias": (("hidden_size", "hidden_size", "hidden_size"),),
    }

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    @classmethod
    def from_config(cls, config, args: dict) -> EvoNetAttention:
        """Build from an `EvoNetConfig` and one block's resolved sizes (`config.block_args(stage, index)`)."""
        return cls(args["hidden_size"], num_heads=args["num_heads"])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, height * width, 3, self.num_heads, channels // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, P)
        attended = F.scaled_dot_product_attention(query, key, value)
        attended = attended.transpose(1, 2).reshape(batch, height, width, channels)
        return self.proj(attended)


__all__ = ["EvoNetAttention"]
