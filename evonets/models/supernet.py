"""EvoNet supernet: every architecture of a search space runs by slicing one set of max-size weights.

Sharing scheme
--------------
The supernet holds the parameters, never a second copy of the model code:

- per stage and block position, ONE max-size `EvoNetBlock` per block type allowed there (norms + mixer + MLP),
  built by the ordinary modules of `modeling_evonet` at the stage's largest width, mlp_ratio, d_state, ssm_ratio and
  num_heads (`dt_rank="auto"` follows the largest width). Different block types at one position have their own
  parameters; a stage of depth k uses positions 0..k-1.
- a max-size stem, downsamples, final norm and classifier, and one backbone norm per stage for the dense heads.

An architecture runs through a *template*: `EvoNetForImageClassification(space.to_config(arch))` (or
`EvoNetBackbone`) built on the meta device (no memory; cached per architecture), called with its parameter slots
pointed at slices of the matching max-size parameters for the duration of the call, as `torch.func.functional_call`
does (but with the slots resolved once per template instead of by dotted name on every call, which cost a quarter of
a small subnet's forward). So the supernet runs exactly the standalone model's code, and `extract(arch)` (the same
slices, copied into a real model) has the same outputs and the same parameter count by construction.

The slicing rules are the elastic layers, Once-for-All style (a smaller layer is the leading part of the larger):
every dimension of a parameter keeps its leading entries (Linear `weight[:out, :in]`, Conv2d `weight[:out, :in]`,
LayerNorm `[:C]`, stem `[:C0]`, downsample `[:C_out, :C_in]`, classifier `[:, :C_last]`), except dimensions that
concatenate independent parts. Those are declared next to the math, as `elastic_layout` on each mixer class (part
sizes named as in `EvoNetConfig.block_args`), and each part keeps its own leading entries:

- SS2D: `in_proj.weight` rows [x (E) | z (E)]; `x_proj_weight` rows [Δ (R) | B (N) | C (N)] per scan order, so a
  smaller d_state keeps the trained B/C rows of the first N states; `A_log` and `D` one block of E rows per scan order.
- SSD: `in_proj.weight` rows [z (E) | x (E) | B (N) | C (N) | Δ (heads)]; its conv channels [x (E) | B (N) | C (N)].
- Attention: `qkv` rows [q (A) | k (A) | v (A)], A = num_heads * attention_head_dim: heads have a fixed size, so a
  smaller subnet keeps the leading heads, each with the same weights at every width.

Slices are views where the kept parts are contiguous (always for the largest architecture) and concatenations
otherwise; in training they stay differentiable, so gradients land in the max-size weights. Without gradients
(eval, search) the sliced dict of the running architecture is cached; the cache is dropped on `set_architecture`,
`train()` / `eval()`, and when any source parameter changes (its version counter or storage: optimizer steps,
`load_state_dict`, `.to()`). Writes through `.data` bypass the version counter: call `clear_cache()` after those.

EvoNet has no BatchNorm (LayerNorm only), so a subnet needs no statistics recalibration after extraction.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections import OrderedDict

import torch
from torch import nn
from transformers.modeling_outputs import BackboneOutput, ImageClassifierOutputWithNoAttention

from .modeling_evonet import (
    MIXERS,
    EvoNetBackbone,
    EvoNetBlock,
    EvoNetDownsample,
    EvoNetEmbeddings,
    EvoNetForImageClassification,
    EvoNetLayerNorm2d,
    EvoNetPreTrainedModel,
)
from .search_space import BLOCK_SIZE_GENES, EvoNetSupernetConfig, SearchSpace

TASKS = {"classification": EvoNetForImageClassification, "backbone": EvoNetBackbone}
_BLOCK_PARAMETER = re.compile(r"evonet\.encoder\.stages\.(\d+)\.blocks\.(\d+)\.(.+)")
_MAX_TEMPLATES = 16  # meta templates hold no memory; this bounds the Python objects kept


class EvoNetSupernetStage(nn.Module):
    """A stage at its largest: the downsample and, per block position, one max-size block per allowed type."""

    def __init__(self, downsample: nn.Module, blocks: list[dict[str, EvoNetBlock]]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(nn.ModuleDict(choices) for choices in blocks)


class EvoNetSupernetEncoder(nn.Module):
    def __init__(self, stages: list[EvoNetSupernetStage]):
        super().__init__()
        self.stages = nn.ModuleList(stages)


class EvoNetSupernetBody(nn.Module):
    """Mirrors `EvoNetModel`'s parameter names, with the block type after the block index:
    `encoder.stages.{s}.blocks.{i}.{block_type}.mixer...`."""

    def __init__(self, embeddings: EvoNetEmbeddings, encoder: EvoNetSupernetEncoder, layernorm: nn.LayerNorm):
        super().__init__()
        self.embeddings = embeddings
        self.encoder = encoder
        self.layernorm = layernorm


class _SliceRule:
    """How one template parameter comes out of one supernet parameter: per dimension, `None` (all of it) or the
    (start, length) segments to keep, concatenated in order."""

    __slots__ = ("dims", "name", "owner", "source_name")

    def __init__(self, name: str, owner: nn.Module, source_name: str, dims: list):
        self.name, self.owner, self.source_name, self.dims = name, owner, source_name, dims

    def source(self) -> torch.Tensor:
        # Read through the owning module, so parameters replaced by `load_state_dict(assign=True)` are seen.
        return self.owner._parameters[self.source_name]

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        # Plain narrows first (views), then the concatenations (copies) on what is left.
        for dim, segments in sorted(enumerate(self.dims), key=lambda item: item[1] is not None and len(item[1]) > 1):
            if segments is None:
                continue
            if len(segments) == 1:
                tensor = tensor.narrow(dim, *segments[0])
            else:
                tensor = torch.cat([tensor.narrow(dim, start, length) for start, length in segments], dim=dim)
        return tensor


class _Template:
    """The meta-device model of one architecture and the rules that fill it from the supernet."""

    __slots__ = ("meta", "model", "rules", "slots")

    def __init__(self, model: EvoNetPreTrainedModel, rules: list[_SliceRule]):
        self.model, self.rules = model, rules
        self.slots = []  # (module, attribute) of every parameter, in the order of `rules`
        for rule in rules:
            module_name, _, attribute = rule.name.rpartition(".")
            self.slots.append((model.get_submodule(module_name), attribute))
        self.meta = [module._parameters[attribute] for module, attribute in self.slots]

    @contextlib.contextmanager
    def bound(self, tensors: list[torch.Tensor]):
        """The template with `tensors` in its parameter slots, restored to the meta parameters afterwards."""
        try:
            for (module, attribute), tensor in zip(self.slots, tensors):
                module._parameters[attribute] = tensor
            yield self.model
        finally:
            for (module, attribute), meta in zip(self.slots, self.meta):
                module._parameters[attribute] = meta


class EvoNetSupernet(EvoNetPreTrainedModel):
    r"""
    Weight-sharing supernet over the architectures of an [`EvoNetSupernetConfig`] (see the module docstring for
    the sharing scheme).

    ```python
    >>> sn = EvoNetSupernet(EvoNetSupernetConfig.tiny(num_labels=10))
    >>> arch = sn.search_space.sample(random.Random(0))
    >>> sn.set_architecture(arch)
    >>> logits = sn(pixel_values).logits                 # the active subnet
    >>> model = sn.extract(arch)                         # standalone EvoNetForImageClassification, same logits
    >>> features = sn.forward_backbone(pixel_values, out_features=["stage1", "stage3"]).feature_maps
    ```

    The active architecture starts as `search_space.largest()`; `forward(..., arch=...)` runs another one without
    changing it. A forward borrows the architecture's template for the duration of the call, so run one forward at a
    time per supernet object (processes or DistributedDataParallel, not threads or `nn.DataParallel`).
    """

    config_class = EvoNetSupernetConfig
    _no_split_modules = ["EvoNetBlock"]
    supports_gradient_checkpointing = False

    def __init__(self, config: EvoNetSupernetConfig):
        super().__init__(config)
        space = config.search_space
        largest = space.largest()
        widths = [stage["width"] for stage in largest["stages"]]
        # Max-size block arguments per (stage, block type), resolved by `EvoNetConfig.block_args` like any block: one
        # config per block type, with that type in the stages that allow it (a conv block elsewhere, which is valid
        # at any size) and every size at its largest choice.
        self.max_block_args: dict[tuple[int, str], dict] = {}
        max_configs = {}
        for block_type in MIXERS:
            allowed = [
                any(block_type in types for types in config.block_type_choices[stage])
                for stage in range(space.num_stages)
            ]
            arch = copy.deepcopy(largest)
            for stage, stage_arch in enumerate(arch["stages"]):
                sizes = {gene: space.size_choices(stage, gene)[-1] for gene in BLOCK_SIZE_GENES}
                block = {"type": block_type if allowed[stage] else "conv", **sizes}
                stage_arch.update(depth=1, blocks=[block])
            max_configs[block_type] = space.evonet_config(arch)
            for stage in range(space.num_stages):
                if allowed[stage]:
                    self.max_block_args[stage, block_type] = max_configs[block_type].block_args(stage, 0)
        base = max_configs["conv"]  # the fields every block and the stem share (norm eps, activation, kernels, ...)

        stages = []
        for stage in range(space.num_stages):
            downsample = (
                nn.Identity()
                if stage == 0
                else EvoNetDownsample(widths[stage - 1], widths[stage], config.layer_norm_eps)
            )
            blocks = [
                {block_type: EvoNetBlock(base, self.max_block_args[stage, block_type]) for block_type in types}
                for types in config.block_type_choices[stage]
            ]
            stages.append(EvoNetSupernetStage(downsample, blocks))
        self.evonet = EvoNetSupernetBody(
            EvoNetEmbeddings(base), EvoNetSupernetEncoder(stages), nn.LayerNorm(widths[-1], eps=config.layer_norm_eps)
        )
        self.classifier = nn.Linear(widths[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        stage_channels = {"stem": widths[0], **{f"stage{stage + 1}": width for stage, width in enumerate(widths)}}
        self.hidden_states_norms = nn.ModuleDict(
            {name: EvoNetLayerNorm2d(channels, config.layer_norm_eps) for name, channels in stage_channels.items()}
        )
        self._active_arch, self._active_encoding = largest, space.encode(largest)
        self._templates: OrderedDict[tuple, _Template] = OrderedDict()
        self._eval_cache: tuple | None = None
        self.post_init()

    # Architecture -------------------------------------------------------------------------------------------

    @property
    def search_space(self) -> SearchSpace:
        return self.config.search_space

    @property
    def active_architecture(self) -> dict:
        return copy.deepcopy(self._active_arch)

    def set_architecture(self, arch: dict | str) -> dict:
        """Make `arch` (a dict or its encoding) the subnet that `forward` runs; returns its canonical form."""
        self._active_arch = self._canonical(arch)
        self._active_encoding = self.search_space.encode(self._active_arch)
        self._eval_cache = None
        return self.active_architecture

    def clear_cache(self) -> None:
        """Forget the cached slices (needed only after writing parameters through `.data`)."""
        self._eval_cache = None

    def train(self, mode: bool = True):
        self._eval_cache = None
        return super().train(mode)

    def __getstate__(self):
        # Templates and cached slices are rebuilt on demand; do not pickle or deep-copy them.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_templates"] = OrderedDict()
        state["_eval_cache"] = None
        return state

    # Forward ------------------------------------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        arch: dict | str | None = None,
        **kwargs,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        r"""
        The active subnet's (or `arch`'s) `EvoNetForImageClassification.forward`: logits, the loss when `labels` are
        given, hidden states on request. Feed images at the architecture's `resolution`; the model itself accepts any
        size divisible by `patch_size * 2 ** (stages - 1)`. `**kwargs` absorbs what `Trainer` passes.
        """
        template, tensors = self._prepare("classification", arch, None)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        with template.bound(tensors) as model:
            return model(
                pixel_values, labels=labels, output_hidden_states=output_hidden_states, return_dict=return_dict
            )

    def forward_backbone(
        self,
        pixel_values: torch.Tensor,
        out_features: list[str] | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        arch: dict | str | None = None,
    ) -> BackboneOutput | tuple:
        """The active subnet (or `arch`) as an `EvoNetBackbone`: normalised feature maps of `out_features` (names
        from `"stem"`, `"stage1"`, ...; default the last stage), as `extract(arch, task="backbone")` computes them."""
        template, tensors = self._prepare("backbone", arch, out_features)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        with template.bound(tensors) as model:
            return model(pixel_values, output_hidden_states=output_hidden_states, return_dict=return_dict)

    def extract(
        self, arch: dict | str | None = None, task: str = "classification", out_features: list[str] | None = None
    ) -> EvoNetForImageClassification | EvoNetBackbone:
        """A standalone `EvoNetForImageClassification` (or, with `task="backbone"`, `EvoNetBackbone` returning
        `out_features`) of `arch` (default: the active one), holding copies of its slices of the shared weights, on the
        supernet's device and dtype, in eval mode. Its config carries `arch_encoding`."""
        template = self._template(task, arch, out_features)
        config = self.search_space.to_config(self._canonical(arch), **_task_kwargs(out_features))
        with torch.device("meta"):
            model = type(template.model)(config)
        if next(model.buffers(), None) is not None:  # nothing in EvoNet has buffers; they would need copying too
            raise NotImplementedError(f"{type(model).__name__} has buffers, which extract() does not fill.")
        with torch.no_grad():
            state = {
                rule.name: rule.apply(rule.source()).clone(memory_format=torch.contiguous_format)
                for rule in template.rules
            }
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    # Templates and slices -----------------------------------------------------------------------------------

    def _canonical(self, arch: dict | str | None) -> dict:
        if arch is None:
            return self._active_arch
        return self.search_space.decode(arch) if isinstance(arch, str) else self.search_space.validate(arch)

    def _prepare(self, task: str, arch: dict | str | None, out_features) -> tuple[_Template, list[torch.Tensor]]:
        """The template to run and the slices for its parameter slots (cached when no gradient is recorded)."""
        template = self._template(task, arch, out_features)
        if template.model.training != self.training:
            template.model.train(self.training)
        if torch.is_grad_enabled():
            return template, [rule.apply(rule.source()) for rule in template.rules]
        sources = [rule.source() for rule in template.rules]
        fingerprint = [(tensor.data_ptr(), tensor._version) for tensor in sources]
        cached = self._eval_cache
        if cached is not None and cached[0] is template and cached[1] == fingerprint:
            return template, cached[2]
        tensors = [rule.apply(source).contiguous() for rule, source in zip(template.rules, sources)]
        # Keeping `sources` alive keeps their storages, so a moved or reloaded parameter cannot reuse an address.
        self._eval_cache = (template, fingerprint, tensors, sources)
        return template, tensors

    def _template(self, task: str, arch: dict | str | None, out_features) -> _Template:
        if task not in TASKS:
            raise ValueError(f"task = {task!r} is invalid: expected one of {list(TASKS)}.")
        if task != "backbone" and out_features is not None:
            raise ValueError("out_features is only used with task='backbone'.")
        if arch is None:
            arch, encoding = self._active_arch, self._active_encoding
        else:
            arch = self._canonical(arch)
            encoding = self.search_space.encode(arch)
        key = (task, encoding, None if out_features is None else tuple(out_features))
        template = self._templates.get(key)
        if template is not None:
            self._templates.move_to_end(key)
            return template
        config = self.search_space.to_config(arch, **_task_kwargs(out_features))
        with torch.device("meta"):
            model = TASKS[task](config)
        template = _Template(model, self._slice_rules(model, arch))
        self._templates[key] = template
        if len(self._templates) > _MAX_TEMPLATES:
            self._templates.popitem(last=False)
        return template

    def _slice_rules(self, model: EvoNetPreTrainedModel, arch: dict) -> list[_SliceRule]:
        """One rule per template parameter: its supernet source and, per dimension, the segments to keep."""
        rules, modules, block_args = [], dict(self.named_modules()), {}
        for name, parameter in model.named_parameters():
            source_name = (
                name
                if not isinstance(model, EvoNetBackbone) or name.startswith("hidden_states_norms.")
                else f"evonet.{name}"
            )
            layout, max_args, args = None, None, None
            match = _BLOCK_PARAMETER.fullmatch(source_name)
            if match is not None:
                stage, index, rest = int(match.group(1)), int(match.group(2)), match.group(3)
                block_type = arch["stages"][stage]["blocks"][index]["type"]
                source_name = f"evonet.encoder.stages.{stage}.blocks.{index}.{block_type}.{rest}"
                if rest.startswith("mixer."):
                    layout = MIXERS[block_type].elastic_layout.get(rest[len("mixer.") :])
                    if (stage, index) not in block_args:
                        block_args[stage, index] = model.config.block_args(stage, index)
                    max_args, args = self.max_block_args[stage, block_type], block_args[stage, index]
            owner_name, _, parameter_name = source_name.rpartition(".")
            owner = modules[owner_name]
            source = owner._parameters[parameter_name]
            dims = _segments(source_name, tuple(source.shape), tuple(parameter.shape), layout, max_args, args)
            rules.append(_SliceRule(name, owner, parameter_name, dims))
        return rules


def _task_kwargs(out_features: list[str] | None) -> dict:
    return {} if out_features is None else {"out_features": list(out_features)}


def _segments(name: str, source_shape: tuple, shape: tuple, layout, max_args: dict | None, args: dict | None) -> list:
    """Per dimension, `None` (keep all) or the (start, length) segments of the source that make up the target."""
    if len(source_shape) != len(shape):
        raise RuntimeError(f"{name}: supernet shape {source_shape} and subnet shape {shape} differ in rank.")
    dims = []
    for dim, (source_size, size) in enumerate(zip(source_shape, shape)):
        parts = layout[dim] if layout is not None else None
        if parts is None:
            segments = [(0, size)]
        else:
            max_sizes = [max_args[part] for part in parts]
            sizes = [args[part] for part in parts]
            if sum(max_sizes) != source_size or sum(sizes) != size:
                raise RuntimeError(
                    f"{name}: elastic_layout {parts} of dim {dim} gives {sum(max_sizes)} / {sum(sizes)} entries, "
                    f"but the supernet / subnet parameters have {source_size} / {size}."
                )
            starts = [sum(max_sizes[:part]) for part in range(len(parts))]
            segments = [(start, length) for start, length in zip(starts, sizes) if length > 0]
        if any(length > bound for length, bound in ((s[1], source_size - s[0]) for s in segments)):
            raise RuntimeError(f"{name}: subnet shape {shape} does not fit in the supernet shape {source_shape}.")
        merged = []
        for start, length in segments:  # adjacent parts (full-size ones) read as one view
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((start, length))
        dims.append(None if merged == [(0, source_size)] else merged)
    return dims


__all__ = ["EvoNetSupernet", "EvoNetSupernetConfig", "SearchSpace"]
