"""EvoNet configuration: one concrete hybrid state-space / attention / conv backbone."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from transformers.activations import ACT2FN

from ._compat import BackboneConfigMixin, PreTrainedConfig

BLOCK_TYPES = ("ss2d", "ssd", "attention", "conv")

# Fields that hold one value per block. Each may be given as a single value (every block), a list with one
# entry per stage, or a list with one list per stage holding one value per block. The supernet writes the
# per-block form; people usually write the first two.
PER_BLOCK_FIELDS = ("mlp_ratios", "d_states", "ssm_ratios", "num_heads")


class EvoNetNetworkConfig(PreTrainedConfig):
    """Fields fixed for a whole network and shared, unchanged, by every subnet of a supernet: declared once here,
    inherited by `EvoNetConfig` and `EvoNetSupernetConfig` (see `EvoNetConfig` for their meaning)."""

    num_channels: int = 3
    patch_size: int = 4
    dt_rank: int | str = "auto"
    ssm_conv_kernel: int = 3
    conv_kernel_size: int = 7
    attention_head_dim: int = 32
    hidden_act: str = "gelu"
    drop_path_rate: float = 0.0
    layer_scale_init_value: float = 0.0
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02

    @classmethod
    def network_fields(cls) -> tuple[str, ...]:
        """Names of the fields above, as a supernet hands them to each subnet's `EvoNetConfig`."""
        return tuple(
            field.name
            for field in dataclasses.fields(EvoNetNetworkConfig)
            if field.name not in {f.name for f in dataclasses.fields(PreTrainedConfig)}
        )


class EvoNetConfig(BackboneConfigMixin, EvoNetNetworkConfig):
    r"""
    Configuration of an [`EvoNetModel`]: a hierarchical backbone of `len(depths)` stages whose every block picks
    its token mixer.

    Args:
        num_channels (`int`, defaults to 3): channels of the input images.
        image_size (`int`, defaults to 224): the resolution the model is built and benchmarked at (the model
            itself accepts any size divisible by `patch_size * 2 ** (num_stages - 1)`).
        patch_size (`int`, defaults to 4): stride of the patch-embedding stem.
        depths (`list[int]`): number of blocks per stage.
        hidden_sizes (`list[int]`): channels per stage.
        block_types (`list[list[str]] | list[str]`): the token mixer of every block, one of
            `"ss2d"` (VMamba 2-D selective scan), `"ssd"` (non-causal Mamba2 state-space duality),
            `"attention"` (multi-head self-attention) and `"conv"` (depthwise convolution). A plain string for a
            stage means every block of that stage. Defaults to SS2D in the first two stages, SSD in the third and
            attention in the last.
        mlp_ratios, d_states, ssm_ratios, num_heads: per-block sizes (see `PER_BLOCK_FIELDS`): MLP expansion,
            SSM state size, SSM expansion (`d_inner = ssm_ratio * hidden_size`), and heads of attention and SSD
            mixers. `num_heads=None` means one head per `attention_head_dim` channels (attention) or per 64 inner
            channels (SSD).
        attention_head_dim (`int`, defaults to 32): channels per attention head. Fixed for a whole network, so an
            attention block's q / k / v width is `num_heads * attention_head_dim` whatever its `hidden_size`: in a
            supernet, head h is then the same weights in every subnet (see `EvoNetAttention`).
        dt_rank (`int | "auto"`): rank of the SS2D time-step projection; `"auto"` is `ceil(hidden_size / 16)`.
        ssm_conv_kernel (`int`): depthwise conv kernel applied before the SS2D / SSD scan.
        conv_kernel_size (`int`): depthwise kernel of the `"conv"` mixer.
        hidden_act (`str`): activation of the MLPs.
        drop_path_rate (`float`): stochastic depth, increasing linearly over blocks up to this value.
        layer_scale_init_value (`float`): initial layer-scale; 0 disables layer-scale.
        layer_norm_eps (`float`), initializer_range (`float`): as usual.
        arch_encoding (`str`, *optional*): the search-space encoding this network was extracted from
            (`SearchSpace.encode`), so checkpoints and model cards say which architecture they are.
        out_features / out_indices: which of `stage_names` (`"stem"`, `"stage1"`, ...) `EvoNetBackbone` returns.

    Example:

    ```python
    >>> import evonets
    >>> config = evonets.EvoNetConfig(depths=[2, 2, 4, 2], hidden_sizes=[48, 96, 192, 384], num_labels=10)
    >>> model = evonets.EvoNetForImageClassification(config)
    ```
    """

    model_type = "evonet"
    attribute_map = {"num_hidden_layers": "num_stages"}

    image_size: int = 224
    depths: list[int] | tuple[int, ...] = (2, 2, 4, 2)
    hidden_sizes: list[int] | tuple[int, ...] = (48, 96, 192, 384)
    # One value, one per stage or one per block: `validate_architecture` checks these and names the field and what is
    # allowed; typed `Any` so that transformers' strict field typing does not reject them first with a bare TypeError.
    block_types: Any = None
    mlp_ratios: Any = 4.0
    d_states: Any = 16
    ssm_ratios: Any = 2.0
    num_heads: Any = None
    arch_encoding: str | None = None
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        self.depths = list(self.depths)
        self.hidden_sizes = list(self.hidden_sizes)
        if self.block_types is None:
            self.block_types = _default_block_types(len(self.depths))
        self.stage_names = ["stem"] + [f"stage{idx}" for idx in range(1, len(self.depths) + 1)]
        out_features, out_indices = kwargs.pop("out_features", None), kwargs.pop("out_indices", None)
        super().__post_init__(**kwargs)
        self.validate_architecture()
        self.set_output_features_output_indices(out_indices=out_indices, out_features=out_features)

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def validate_architecture(self):
        """Raise `ValueError` naming the field, the bad value and what is allowed."""
        _require(
            isinstance(self.depths, list) and len(self.depths) > 0,
            "depths",
            self.depths,
            "a non-empty list of positive ints",
        )
        for value in self.depths:
            _require(_is_int(value) and value >= 1, "depths", self.depths, "positive ints")
        _require(
            len(self.hidden_sizes) == len(self.depths),
            "hidden_sizes",
            self.hidden_sizes,
            f"one int per stage ({len(self.depths)} stages, from `depths`)",
        )
        for value in self.hidden_sizes:
            _require(_is_int(value) and value >= 1, "hidden_sizes", self.hidden_sizes, "positive ints")
        for name in (
            "num_channels",
            "image_size",
            "patch_size",
            "ssm_conv_kernel",
            "conv_kernel_size",
            "attention_head_dim",
        ):
            value = getattr(self, name)
            _require(_is_int(value) and value >= 1, name, value, "a positive int")
        for name in ("ssm_conv_kernel", "conv_kernel_size"):
            _require(getattr(self, name) % 2 == 1, name, getattr(self, name), "an odd int (same-size padding)")
        _require(
            self.dt_rank == "auto" or (isinstance(self.dt_rank, int) and self.dt_rank >= 1),
            "dt_rank",
            self.dt_rank,
            '"auto" or a positive int',
        )
        _require(
            self.image_size >= self.patch_size,
            "image_size",
            self.image_size,
            f"at least patch_size = {self.patch_size} (the stem cuts patches of that size)",
        )
        _require(
            _is_real(self.drop_path_rate) and 0.0 <= self.drop_path_rate < 1.0,
            "drop_path_rate",
            self.drop_path_rate,
            "a float in [0, 1)",
        )
        _require(
            _is_real(self.layer_scale_init_value) and self.layer_scale_init_value >= 0,
            "layer_scale_init_value",
            self.layer_scale_init_value,
            "a finite number >= 0",
        )
        _require(
            _is_real(self.layer_norm_eps) and self.layer_norm_eps > 0,
            "layer_norm_eps",
            self.layer_norm_eps,
            "a finite number > 0 (the normalisation divides by sqrt(variance + eps))",
        )
        _require(self.hidden_act in ACT2FN, "hidden_act", self.hidden_act, f"one of {sorted(ACT2FN)}")

        self._per_block("block_types")  # shape check
        for stage, types in enumerate(self._per_block("block_types")):
            for index, block_type in enumerate(types):
                _require(
                    block_type in BLOCK_TYPES,
                    f"block_types[{stage}][{index}]",
                    block_type,
                    f"one of {list(BLOCK_TYPES)}",
                )
        for stage in range(self.num_stages):
            for index in range(self.depths[stage]):
                self._check_block(stage, index, self.block_args(stage, index))

    def _check_block(self, stage: int, index: int, args: dict) -> None:
        where = f"[{stage}][{index}]"
        _require(
            _is_real(args["mlp_ratio"]) and args["mlp_ratio"] > 0,
            f"mlp_ratios{where}",
            args["mlp_ratio"],
            "a finite positive number",
        )
        _require(
            _is_int(args["d_state"]) and args["d_state"] >= 1,
            f"d_states{where}",
            args["d_state"],
            "a positive int",
        )
        _require(
            _is_real(args["ssm_ratio"]) and args["ssm_ratio"] > 0,
            f"ssm_ratios{where}",
            args["ssm_ratio"],
            "a finite positive number",
        )
        if args["block_type"] in ("ss2d", "ssd"):
            _require(
                args["d_inner"] >= 1,
                f"ssm_ratios{where}",
                args["ssm_ratio"],
                f"large enough for at least one inner channel (ssm_ratio * hidden_size = {args['d_inner']})",
            )
        heads = args["num_heads"]
        _require(_is_int(heads) and heads >= 1, f"num_heads{where}", heads, "a positive int or None")
        if args["block_type"] == "ssd":
            _require(
                args["d_inner"] % heads == 0,
                f"num_heads{where}",
                heads,
                f"a divisor of d_inner = ssm_ratio * hidden_size = {args['d_inner']} (ssd block)",
            )

    def _per_block(self, name: str) -> list[list[Any]]:
        """Expand a per-block field (single value / per stage / per block) to one list per stage."""
        value = getattr(self, name)
        if not isinstance(value, (list, tuple)):
            return [[value] * depth for depth in self.depths]
        _require(
            len(value) == self.num_stages,
            name,
            value,
            f"a single value, or a list with one entry per stage ({self.num_stages} stages)",
        )
        expanded = []
        for stage, (entry, depth) in enumerate(zip(value, self.depths)):
            if isinstance(entry, (list, tuple)):
                _require(
                    len(entry) == depth,
                    f"{name}[{stage}]",
                    entry,
                    f"one value per block of stage {stage} (depths[{stage}] = {depth})",
                )
                expanded.append(list(entry))
            else:
                expanded.append([entry] * depth)
        return expanded

    def block_args(self, stage: int, index: int) -> dict[str, Any]:
        """Everything a block needs, resolved: the one place where per-stage and per-block forms meet."""
        hidden_size = self.hidden_sizes[stage]
        block_type = self._per_block("block_types")[stage][index]
        ssm_ratio = self._per_block("ssm_ratios")[stage][index]
        d_inner = round(ssm_ratio * hidden_size)
        num_heads = self._per_block("num_heads")[stage][index]
        if num_heads is None:
            num_heads = (
                _default_heads(d_inner, 64) if block_type == "ssd" else max(1, hidden_size // self.attention_head_dim)
            )
        return {
            "block_type": block_type,
            "hidden_size": hidden_size,
            "mlp_ratio": self._per_block("mlp_ratios")[stage][index],
            "d_state": self._per_block("d_states")[stage][index],
            "ssm_ratio": ssm_ratio,
            "d_inner": d_inner,
            "num_heads": num_heads,
            "attention_dim": num_heads * self.attention_head_dim,
            "dt_rank": math.ceil(hidden_size / 16) if self.dt_rank == "auto" else self.dt_rank,
        }


def _default_block_types(num_stages: int) -> list[list[str] | str]:
    layout = ["ss2d", "ss2d", "ssd", "attention"]
    return [layout[min(stage, 3)] if stage < num_stages - 1 else "attention" for stage in range(num_stages)]


def _default_heads(channels: int, channels_per_head: int) -> int:
    """About one head per `channels_per_head` channels: the largest divisor of `channels` not above that."""
    target = max(1, channels // channels_per_head)
    return max(d for d in range(1, target + 1) if channels % d == 0)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    """An int or float (not a bool, not a string) that is finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(condition: bool, field: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ValueError(f"EvoNetConfig.{field} = {value!r} is invalid: expected {allowed}.")


__all__ = ["BLOCK_TYPES", "PER_BLOCK_FIELDS", "EvoNetConfig", "EvoNetNetworkConfig"]
