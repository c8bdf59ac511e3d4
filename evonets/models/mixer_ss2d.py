"""SS2D: VMamba's 2-D selective scan token mixer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._compat import init
from .selective_scan import selective_scan

NUM_SCAN_ORDERS = 4


def scan_orders(x: torch.Tensor) -> torch.Tensor:
    """(batch, channels, H, W) -> (batch, 4, channels, H*W): row-major, column-major, and both reversed."""
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def merge_orders(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(batch, 4, channels, H*W) -> (batch, channels, H*W) in row-major order, summing the four scans."""
    rows = y[:, 0] + y[:, 2].flip(-1)
    cols = y[:, 1] + y[:, 3].flip(-1)
    batch, channels, _ = rows.shape
    cols = cols.view(batch, channels, width, height).transpose(2, 3).reshape(batch, channels, -1)
    return rows + cols


class EvoNetSelectiveScan(nn.Module):
    """Module form of `selective_scan`, so the backend is a per-module setting and MAC counting can find scans."""

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = backend

    def forward(self, u, delta, A, B, C, D, delta_bias) -> torch.Tensor:
        # `delta_bias` may come per order, (K, E): flattened here rather than by the caller, because a view of a
        # parameter made under `torch.no_grad()` and passed as a module input breaks torch's module tracker (and so
        # `FlopCounterMode` under `no_grad`).
        delta_bias = delta_bias.reshape(-1)
        return selective_scan(u, delta, A, B, C, D, delta_bias=delta_bias, delta_softplus=True, backend=self.backend)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


class EvoNetSS2D(nn.Module):
    r"""
    VMamba 2-D selective scan (SS2D).

    With `E = d_inner`, `N = d_state`, `R = dt_rank`, `K = 4` scan orders and `L = H * W` tokens:

    1. `x, z = in_proj(hidden)`: (B, H, W, C) -> two (B, H, W, E).
    2. `x = SiLU(DWConv_kxk(x))`, then flatten in K orders (row, column, both reversed): u of shape (B, K, E, L).
    3. Per order k, input-dependent parameters from the token itself:
       `[dt_low, B_t, C_t] = W_x[k] u_t` with shapes (R,), (N,), (N,), and `Δ_t = softplus(W_dt[k] dt_low + b_dt[k])`, (E,).
    4. Per order and channel e, the selective scan over t = 1..L, with `A = -exp(A_log)` of shape (K*E, N):
       `h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t`,   `y_t = <C_t, h_t> + D u_t`.
    5. Un-flip and sum the K outputs back to row-major (B, H, W, E); `y = LayerNorm(y) * SiLU(z)`; `out_proj`: -> C.

    The scan is the only sequential part; `selective_scan` picks a fused CPU kernel, mamba-ssm's CUDA kernel or
    the chunked pure-PyTorch formulation (used for ONNX export).

    Shapes: hidden_states (B, H, W, C) -> (B, H, W, C).
    """

    # How `EvoNetSupernet` cuts this mixer out of a larger one: for a parameter whose dimension concatenates parts,
    # the parts' sizes per dimension, named as in `EvoNetConfig.block_args` (`None`: one part). Each part keeps its
    # own leading entries; unlisted parameters and dimensions keep their leading entries.
    elastic_layout = {
        "in_proj.weight": (("d_inner", "d_inner"), None),  # rows [x | z]
        "x_proj_weight": (None, ("dt_rank", "d_state", "d_state"), None),  # per order, rows [dt | B | C]
        "A_log": (("d_inner",) * NUM_SCAN_ORDERS, None),  # one block of rows per scan order
        "D": (("d_inner",) * NUM_SCAN_ORDERS,),
    }

    def __init__(
        self,
        hidden_size: int,
        d_inner: int,
        d_state: int,
        dt_rank: int,
        conv_kernel: int = 3,
        layer_norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, dt_rank
        self.in_proj = nn.Linear(hidden_size, 2 * d_inner, bias=False)
        self.conv = nn.Conv2d(d_inner, d_inner, conv_kernel, padding=conv_kernel // 2, groups=d_inner)
        # Rows of x_proj_weight[k]: [dt_rank | d_state (B) | d_state (C)]. The supernet slices each segment
        # separately, so their order here is part of the checkpoint format.
        self.x_proj_weight = nn.Parameter(torch.empty(NUM_SCAN_ORDERS, dt_rank + 2 * d_state, d_inner))
        self.dt_proj_weight = nn.Parameter(torch.empty(NUM_SCAN_ORDERS, d_inner, dt_rank))
        self.dt_proj_bias = nn.Parameter(torch.empty(NUM_SCAN_ORDERS, d_inner))
        self.A_log = nn.Parameter(torch.empty(NUM_SCAN_ORDERS * d_inner, d_state))
        self.D = nn.Parameter(torch.empty(NUM_SCAN_ORDERS * d_inner))
        self.scan = EvoNetSelectiveScan()
        self.out_norm = nn.LayerNorm(d_inner, eps=layer_norm_eps)
        self.out_proj = nn.Linear(d_inner, hidden_size, bias=False)

    @classmethod
    def from_config(cls, config, args: dict) -> EvoNetSS2D:
        """Build from an `EvoNetConfig` and one block's resolved sizes (`config.block_args(stage, index)`)."""
        return cls(
            args["hidden_size"],
            d_inner=args["d_inner"],
            d_state=args["d_state"],
            dt_rank=args["dt_rank"],
            conv_kernel=config.ssm_conv_kernel,
            layer_norm_eps=config.layer_norm_eps,
        )

    @torch.no_grad()
    def init_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """Mamba's initialisation: S4D-real A = -(1..N); Δ's bias so softplus(bias) is log-uniform in [dt_min, dt_max]."""
        init.uniform_(self.x_proj_weight, -(self.d_inner**-0.5), self.d_inner**-0.5)
        init.uniform_(self.dt_proj_weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(
            torch.rand(self.dt_proj_bias.shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_floor)
        init.copy_(self.dt_proj_bias, dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).expand(self.A_log.shape[0], -1)
        init.copy_(self.A_log, torch.log(A))
        init.ones_(self.D)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = hidden_states.shape
        length = height * width
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, H, W, E) each
        x = F.silu(self.conv(x.permute(0, 3, 1, 2)))  # (B, E, H, W)
        u = scan_orders(x)  # (B, K, E, L)
        x_dbl = torch.einsum("bkel,kce->bkcl", u, self.x_proj_weight)  # (B, K, R + 2N, L)
        dt_low, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        delta = torch.einsum("bkrl,ker->bkel", dt_low, self.dt_proj_weight)  # (B, K, E, L)
        y = self.scan(
            u.reshape(batch, -1, length),
            delta.reshape(batch, -1, length),
            -torch.exp(self.A_log.float()),
            B.contiguous(),
            C.contiguous(),
            self.D.float(),
            self.dt_proj_bias.float(),
        ).view(batch, NUM_SCAN_ORDERS, self.d_inner, length)
        y = merge_orders(y, height, width).transpose(1, 2).reshape(batch, height, width, self.d_inner)
        y = self.out_norm(y) * F.silu(z)
        return self.out_proj(y)

    def scan_macs(self, height: int, width: int) -> int:
        """Multiply-accumulates of the scan, which FLOP counters miss: per order, channel, token and state one
        for the state update `h = exp(ΔA) h + ΔB u` and one for the read-out `<C, h>`."""
        return 2 * NUM_SCAN_ORDERS * self.d_inner * height * width * self.d_state


__all__ = ["NUM_SCAN_ORDERS", "EvoNetSS2D", "EvoNetSelectiveScan", "merge_orders", "scan_orders"]
