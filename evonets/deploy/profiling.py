"""Parameter and MAC counting: the one definition of "MACs" for the whole project.

Search objectives, model cards and benchmarks all call `count_macs`, so every MAC figure EvoNets reports is
counted the same way, for EvoNets and for any other torch model (other models simply have no scans).

What one MAC is here
--------------------
One multiply-accumulate of a matrix product or a convolution, plus one per state element and token of an
SS2D selective scan:

* Counted by `torch.utils.flop_counter.FlopCounterMode` (its FLOPs / 2): `mm`, `addmm`, `bmm`, `baddbmm`
  (so `nn.Linear`, `matmul`, `einsum`), and convolutions as `C_out * C_in / groups * k_h * k_w * H_out * W_out`
  per image (a depthwise k x k conv is `C * k * k * H * W`).
* Added here because `FlopCounterMode` of torch 2.13 misses them on CPU: scaled-dot-product attention
  (`F.scaled_dot_product_attention` dispatches to an op it has no formula for), counted as the two batched
  products `Q Kᵀ` and `softmax(.) V`: `batch * heads * L_q * L_k * (head_dim + value_dim)`; and matrix-vector /
  dot products (`mv`, `addmv`, `dot`).
* Not counted: bias additions, normalisations, activations, softmax, elementwise products, residual adds,
  pooling, permutes and copies. They cost time (often most of it on a CPU at batch 1) but no MACs; that is
  why benchmarks report latency next to MACs.
* Selective scans: whatever the flop counter sees inside an `EvoNetSelectiveScan` module is dropped (the
  chunked pure-PyTorch backend does einsums, the fused kernel and the sequential reference do not, so the
  counted figure would depend on the backend), and every module that defines `scan_macs(height, width)`
  (`EvoNetSS2D`) adds that analytic count per image, with `height, width` read from its channels-last input
  `(batch, height, width, channels)`: `2 * 4 orders * d_inner * H * W * d_state` (one MAC per state element
  for the update `h = exp(ΔA) h + ΔB u`, one for the read-out `<C, h>`). The SSD mixer needs nothing
  special: its state is two plain matmuls, which the flop counter sees.

Counts are for the batch passed in; pass one image to get MACs per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from evonets.models.mixer_ss2d import EvoNetSelectiveScan

aten = torch.ops.aten

SCAN_KEY = "selective_scan (analytic)"


def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of scaled-dot-product attention: `Q Kᵀ` then `P V`, two FLOPs per MAC; grouped K/V heads broadcast."""
    batch, heads, query_length, head_dim = query_shape
    key_length, value_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * query_length * key_length * (head_dim + value_dim)


def _mv_flop(matrix_shape, vector_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * matrix_shape[0] * matrix_shape[1]


def _addmv_flop(self_shape, matrix_shape, vector_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * matrix_shape[0] * matrix_shape[1]


def _dot_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0]


# Formulas FlopCounterMode lacks in torch 2.13 (keys are op packets, as in its own registry). SDPA is listed
# both as the public op (reaches the mode undecomposed under some modes) and as its CPU kernel; an op that
# decomposes into another is counted only once, at the leaf.
_EXTRA_FLOP_FORMULAS = {
    aten.scaled_dot_product_attention: _sdpa_flop,
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flop,
    aten.mv: _mv_flop,
    aten.addmv: _addmv_flop,
    aten.dot: _dot_flop,
}


@dataclass
class MacCount:
    """Result of `count_macs`. `int(count)` is `count.total`.

    Attributes:
        total: the MACs of the forward, as defined in this module's docstring.
        counted: MACs the flop counter saw outside selective-scan modules.
        scan: analytic MACs of all selective scans (`scan_macs`), included in `total`.
        excluded: MACs the flop counter saw inside `EvoNetSelectiveScan` modules, dropped (not in `total`).
        by_module_type: `total` split by the class name of the innermost module that ran each op (so an SS2D's
            projections appear under `Linear`, its einsums under `EvoNetSS2D`, SDPA under the attention class),
            plus `"selective_scan (analytic)"` for the scans. Sums to `total`.
        by_block_type: for models with blocks that carry a `block_type` (`EvoNetBlock`): MACs of whole blocks
            (mixer + MLP, scans included) per block type. Stem, downsampling and head are not in it.
        by_mixer_type: the same for the mixers alone (a block's `mixer` submodule).
    """

    total: int
    counted: int
    scan: int
    excluded: int
    by_module_type: dict[str, int] = field(default_factory=dict)
    by_block_type: dict[str, int] = field(default_factory=dict)
    by_mixer_type: dict[str, int] = field(default_factory=dict)

    def __int__(self) -> int:
        return self.total

    def __index__(self) -> int:
        return self.total

    @property
    def gmacs(self) -> float:
        return self.total / 1e9


class _Frame:
    """Book-keeping of one running module call while counting."""

    __slots__ = ("child_flops", "in_scan", "nested_excluded", "nested_scan", "scan_owner", "start_flops")

    def __init__(self, start_flops: int, scan_owner: bool, in_scan: bool):
        self.start_flops, self.scan_owner, self.in_scan = start_flops, scan_owner, in_scan
        self.child_flops = self.nested_scan = self.nested_excluded = 0


def _add(table: dict[str, int], key: str, value: int) -> None:
    table[key] = table.get(key, 0) + value


class _MacTally:
    """The forward hooks of `count_macs` and what they gather: a stack of `_Frame`s (one per running module call),
    the MACs per module, block and mixer type, the analytic scan MACs added and the counted MACs dropped."""

    def __init__(self, model: nn.Module, counter: FlopCounterMode):
        self.counter = counter
        self.stack: list[_Frame] = []
        self.by_module_type: dict[str, int] = {}
        self.by_block_type: dict[str, int] = {}
        self.by_mixer_type: dict[str, int] = {}
        self.excluded = 0
        self.scan = 0
        self.mixer_types = {
            id(module.mixer): module.block_type
            for module in model.modules()
            if isinstance(getattr(module, "block_type", None), str)
            and isinstance(getattr(module, "mixer", None), nn.Module)
        }

    def flops_so_far(self) -> int:
        return sum(self.counter.flop_counts["Global"].values())

    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        in_scan = any(frame.in_scan for frame in self.stack) or isinstance(module, EvoNetSelectiveScan)
        owner = hasattr(module, "scan_macs") and not in_scan and not any(frame.scan_owner for frame in self.stack)
        self.stack.append(_Frame(self.flops_so_far(), owner, in_scan))

    def post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        frame = self.stack.pop()
        inclusive_flops = self.flops_so_far() - frame.start_flops
        if isinstance(module, EvoNetSelectiveScan):
            nested_scan, nested_excluded, inclusive_macs = self._drop_scan_internals(inclusive_flops)
        else:
            nested_scan, nested_excluded, inclusive_macs = self._book_call(module, args, frame, inclusive_flops)
        block_type = getattr(module, "block_type", None)
        if isinstance(block_type, str):
            _add(self.by_block_type, block_type, inclusive_macs)
        if id(module) in self.mixer_types:
            _add(self.by_mixer_type, self.mixer_types[id(module)], inclusive_macs)
        if self.stack:
            parent = self.stack[-1]
            parent.child_flops += inclusive_flops
            parent.nested_scan += nested_scan
            parent.nested_excluded += nested_excluded

    def _drop_scan_internals(self, inclusive_flops: int) -> tuple[int, int, int]:
        """(nested scan, nested excluded, inclusive MACs) of an `EvoNetSelectiveScan` call."""
        # Everything inside is replaced by the owner's analytic `scan_macs`.
        if not any(outer.in_scan for outer in self.stack):
            self.excluded += inclusive_flops // 2
        return 0, inclusive_flops // 2, 0

    def _book_call(self, module: nn.Module, args: tuple, frame: _Frame, inclusive_flops: int) -> tuple[int, int, int]:
        """Book the call's own MACs (and, for a scan owner, its `scan_macs`) under its module type; return (nested
        scan, nested excluded, inclusive MACs)."""
        scan_macs = 0
        if frame.scan_owner:
            batch, height, width = args[0].shape[:3]  # channels-last input (B, H, W, C)
            scan_macs = batch * int(module.scan_macs(height, width))
            self.scan += scan_macs
            _add(self.by_module_type, SCAN_KEY, scan_macs)
        if not frame.in_scan:
            _add(self.by_module_type, type(module).__name__, (inclusive_flops - frame.child_flops) // 2)
        nested_scan = frame.nested_scan + scan_macs
        nested_excluded = frame.nested_excluded
        return nested_scan, nested_excluded, inclusive_flops // 2 - nested_excluded + nested_scan

    def result(self) -> MacCount:
        counted_total = self.counter.get_total_flops() // 2
        counted = counted_total - self.excluded
        total = counted + self.scan
        by_module_type = {name: macs for name, macs in self.by_module_type.items() if macs}
        # Ops run outside every module (none, for a model called directly) would be missing from the breakdown.
        unattributed = total - sum(by_module_type.values())
        if unattributed:
            by_module_type["(outside modules)"] = unattributed
        return MacCount(
            total=total,
            counted=counted,
            scan=self.scan,
            excluded=self.excluded,
            by_module_type=dict(sorted(by_module_type.items(), key=lambda item: -item[1])),
            by_block_type=self.by_block_type,
            by_mixer_type=self.by_mixer_type,
        )


def count_macs(model: nn.Module, pixel_values: torch.Tensor, **forward_kwargs: Any) -> MacCount:
    """Count the MACs of `model(pixel_values, **forward_kwargs)` (see the module docstring for what counts).

    Runs one forward in eval mode without gradients (the training flag is restored afterwards). Works for any
    `nn.Module`; only EvoNet SS2D mixers (modules with `scan_macs`) add scan MACs. Where such modules nest, only
    the outermost one adds its `scan_macs`.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    tally = _MacTally(model, counter)
    _hooked_forward(model, tally, pixel_values, forward_kwargs)
    return tally.result()


def _hooked_forward(model: nn.Module, tally: _MacTally, pixel_values: torch.Tensor, forward_kwargs: dict) -> None:
    """One forward under the flop counter with `tally`'s hooks on every module, in eval mode without gradients;
    hooks removed and mode and `requires_grad` flags restored afterwards."""
    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(tally.pre_hook))
        handles.append(module.register_forward_hook(tally.post_hook))
    was_training = model.training
    # FlopCounterMode's module tracker fails on a module called with a parameter that requires grad under
    # no_grad (SS2D passes `self.D.float()`, which is the parameter itself), so switch the flags off meanwhile.
    trainable = [param for param in model.parameters() if param.requires_grad]
    model.eval()
    try:
        for param in trainable:
            param.requires_grad_(False)
        with torch.no_grad(), tally.counter:
            model(pixel_values, **forward_kwargs)
    finally:
        for handle in handles:
            handle.remove()
        for param in trainable:
            param.requires_grad_(True)
        model.train(was_training)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters once); `trainable_only` keeps those with `requires_grad`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["SCAN_KEY", "MacCount", "count_macs", "count_parameters"]
