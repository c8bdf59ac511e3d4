"""Multi-head self-attention token mixer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EvoNetAttention(nn.Module):
    r"""
    Global multi-head self-attention over the H x W tokens, with heads of a fixed size.

    `q, k, v = qkv(x)`, each of `A = num_heads * P` channels split into `num_heads` heads of `P = head_dim`;
    `y = softmax(q kᵀ / sqrt(P)) v` through `F.scaled_dot_product_attention` (which picks a fused kernel);
    `out = proj(y)` back to C channels. No position embedding: the patch stem, the strided downsampling convs and
    any SS2D / conv blocks before it already encode position.

    Why P is fixed rather than `C / num_heads` (as in AutoFormer): in a supernet, head h is then rows
    `[h * P, (h + 1) * P)` of q, k and v in every subnet, whatever its width and number of heads, where `P = C /
    num_heads` would regroup the same rows into different heads for every (width, heads) pair; and any number of
    heads suits any width.

    Shapes: hidden_states (B, H, W, C) -> (B, H, W, C); inside, q/k/v are (B, heads, L, P) with L = H * W.
    """

    # How `EvoNetSupernet` cuts this mixer out of a larger one (see `EvoNetSS2D.elastic_layout`): q, k and v each
    # keep their leading heads; `proj` keeps its leading rows (C) and columns (A) like any Linear.
    elastic_layout = {
        "qkv.weight": (("attention_dim", "attention_dim", "attention_dim"), None),  # rows [q | k | v]
        "qkv.bias": (("attention_dim", "attention_dim", "attention_dim"),),
    }

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int = 32):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.qkv = nn.Linear(hidden_size, 3 * num_heads * head_dim)
        self.proj = nn.Linear(num_heads * head_dim, hidden_size)

    @classmethod
    def from_config(cls, config, args: dict) -> EvoNetAttention:
        """Build from an `EvoNetConfig` and one block's resolved sizes (`config.block_args(stage, index)`)."""
        return cls(args["hidden_size"], num_heads=args["num_heads"], head_dim=config.attention_head_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, height * width, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, P)
        attended = F.scaled_dot_product_attention(query, key, value)
        attended = attended.transpose(1, 2).reshape(batch, height, width, self.num_heads * self.head_dim)
        return self.proj(attended)


__all__ = ["EvoNetAttention"]
