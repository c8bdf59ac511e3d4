"""SSD: non-causal Mamba2 state-space duality (VSSD-style) token mixer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._compat import init


class EvoNetSSD(nn.Module):
    r"""
    Non-causal state-space duality (VSSD's NC-SSD).

    Mamba2 has one scalar decay per head, so its causal scan is a masked linear attention. Dropping the causal
    mask (every token sees every token, which is what a 2-D image wants) removes the decay between token pairs
    and leaves each token's `Δ_t · |A|` as its weight in one global state. With `E = d_inner`, `N = d_state`,
    heads `h` of size `P = E / num_heads` and `L = H * W` tokens:

    1. `z, x, B, C, dt = in_proj(hidden)`: (B, L, E), (B, L, E), (B, L, N), (B, L, N), (B, L, heads).
    2. `x, B, C = SiLU(DWConv_kxk([x, B, C]))` over the 2-D token grid.
    3. `w_t = softplus(dt_t + dt_bias) * exp(A_log)`, (B, L, heads).
    4. `S = (1/L) Σ_t B_tᵀ (w_t x_t)`, (B, N, E): one state for the whole image, shared B/C across heads (Mamba2's
       single group). Averaging instead of summing keeps the state's scale independent of the resolution.
    5. `y_t = C_t S + D x_t`, (B, L, E); `y = LayerNorm(y) * SiLU(z)`; `out_proj`: -> C.

    Two matmuls of size L x N x E: O(L) time and memory, no sequential scan, exports to ONNX as plain MatMuls.

    Shapes: hidden_states (B, H, W, C) -> (B, H, W, C).
    """

    # How `EvoNetSupernet` cuts this mixer out of a larger one (see `EvoNetSS2D.elastic_layout`).
    elastic_layout = {
        "in_proj.weight": (
            ("d_inner", "d_inner", "d_state", "d_state", "num_heads"),
            None,
        ),  # rows [z | x | B | C | dt]
        "conv.weight": (("d_inner", "d_state", "d_state"), None, None, None),  # channels [x | B | C]
        "conv.bias": (("d_inner", "d_state", "d_state"),),
    }

    def __init__(
        self,
        hidden_size: int,
        d_inner: int,
        d_state: int,
        num_heads: int,
        conv_kernel: int = 3,
        layer_norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.d_inner, self.d_state, self.num_heads = d_inner, d_state, num_heads
        # Output features of in_proj: [z (E) | x (E) | B (N) | C (N) | dt (heads)].
        self.in_proj = nn.Linear(hidden_size, 2 * d_inner + 2 * d_state + num_heads, bias=False)
        conv_channels = d_inner + 2 * d_state
        self.conv = nn.Conv2d(conv_channels, conv_channels, conv_kernel, padding=conv_kernel // 2, groups=conv_channels)
        self.dt_bias = nn.Parameter(torch.empty(num_heads))
        self.A_log = nn.Parameter(torch.empty(num_heads))
        self.D = nn.Parameter(torch.empty(num_heads))
        self.out_norm = nn.LayerNorm(d_inner, eps=layer_norm_eps)
        self.out_proj = nn.Linear(d_inner, hidden_size, bias=False)

    @classmethod
    def from_config(cls, config, args: dict) -> EvoNetSSD:
        """Build from an `EvoNetConfig` and one block's resolved sizes (`config.block_args(stage, index)`)."""
        return cls(
            args["hidden_size"],
            d_inner=args["d_inner"],
            d_state=args["d_state"],
            num_heads=args["num_heads"],
            conv_kernel=config.ssm_conv_kernel,
            layer_norm_eps=config.layer_norm_eps,
        )

    @torch.no_grad()
    def init_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """Mamba2's initialisation: A uniform in [1, 16] per head; softplus(dt_bias) log-uniform in [dt_min, dt_max]."""
        init.copy_(self.A_log, torch.log(torch.empty(self.num_heads).uniform_(1, 16)))
        dt = torch.exp(torch.rand(self.num_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        init.copy_(self.dt_bias, dt + torch.log(-torch.expm1(-dt)))
        init.ones_(self.D)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = hidden_states.shape
        length = height * width
        z, xBC, dt = self.in_proj(hidden_states).split(
            [self.d_inner, self.d_inner + 2 * self.d_state, self.num_heads], dim=-1
        )
        xBC = F.silu(self.conv(xBC.permute(0, 3, 1, 2))).flatten(2).transpose(1, 2)  # (B, L, E + 2N)
        x, B, C = xBC.split([self.d_inner, self.d_state, self.d_state], dim=-1)
        weight = F.softplus(dt.reshape(batch, length, self.num_heads) + self.dt_bias) * torch.exp(self.A_log)
        head_dim = self.d_inner // self.num_heads
        x = x.reshape(batch, length, self.num_heads, head_dim)
        weighted = (x * weight.unsqueeze(-1)).reshape(batch, length, self.d_inner)
        state = B.transpose(1, 2) @ weighted / length  # (B, N, E)
        y = C @ state + (x * self.D.unsqueeze(-1)).reshape(batch, length, self.d_inner)  # (B, L, E)
        y = self.out_norm(y.reshape(batch, height, width, self.d_inner)) * F.silu(z)
        return self.out_proj(y)


__all__ = ["EvoNetSSD"]
