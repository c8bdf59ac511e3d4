"""EvoNet: hierarchical vision backbones whose every block chooses its token mixer.

Reading order: layers (drop-path, layer-scale, MLP) -> mixer registry -> block -> stage -> encoder -> embeddings ->
`PreTrainedModel` -> model -> classification head -> backbone. Inside stages tensors are channels-last
(B, H, W, C), as the mixers and LayerNorms want; everything a user sees (hidden states, feature maps) is
channels-first (B, C, H, W), as in the other vision models of transformers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutputWithNoAttention,
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
)

from ._compat import BackboneMixin, GradientCheckpointingLayer, init
from .configuration_evonet import EvoNetConfig
from .mixer_attention import EvoNetAttention
from .mixer_conv import EvoNetConvMixer
from .mixer_ss2d import EvoNetSS2D
from .mixer_ssd import EvoNetSSD


def drop_path(hidden_states: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample, rescaling the kept ones."""
    if drop_prob == 0.0 or not training:
        return hidden_states
    keep_prob = 1.0 - drop_prob
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    mask = hidden_states.new_empty(shape).bernoulli_(keep_prob)
    return hidden_states * mask / keep_prob


class EvoNetDropPath(nn.Module):
    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return drop_path(hidden_states, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class EvoNetLayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT / ConvNeXt)."""

    def __init__(self, hidden_size: int, init_value: float):
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((hidden_size,), init_value))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.gamma


class EvoNetLayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first (B, C, H, W) map, at every position."""

    def __init__(self, num_channels: int, eps: float):
        super().__init__(num_channels, eps=eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class EvoNetMlp(nn.Module):
    """Linear -> activation -> Linear on channels-last tokens."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


MIXERS = {"ss2d": EvoNetSS2D, "ssd": EvoNetSSD, "attention": EvoNetAttention, "conv": EvoNetConvMixer}


def build_mixer(config: EvoNetConfig, args: dict) -> nn.Module:
    """The one place where a block-type string becomes a mixer module (`args` from `config.block_args`)."""
    return MIXERS[args["block_type"]].from_config(config, args)


class EvoNetBlock(GradientCheckpointingLayer):
    """norm -> mixer -> (layer-scale, drop-path) residual -> norm -> MLP -> (layer-scale, drop-path) residual."""

    def __init__(self, config: EvoNetConfig, args: dict, drop_path_rate: float = 0.0):
        super().__init__()
        hidden_size = args["hidden_size"]
        self.block_type = args["block_type"]
        self.norm1 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mixer = build_mixer(config, args)
        self.norm2 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = EvoNetMlp(hidden_size, round(hidden_size * args["mlp_ratio"]), config.hidden_act)
        scale = config.layer_scale_init_value
        self.layer_scale1 = EvoNetLayerScale(hidden_size, scale) if scale > 0 else nn.Identity()
        self.layer_scale2 = EvoNetLayerScale(hidden_size, scale) if scale > 0 else nn.Identity()
        self.drop_path = EvoNetDropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.drop_path(self.layer_scale1(self.mixer(self.norm1(hidden_states))))
        hidden_states = hidden_states + self.drop_path(self.layer_scale2(self.mlp(self.norm2(hidden_states))))
        return hidden_states


class EvoNetDownsample(nn.Module):
    """LayerNorm then a 2x2 stride-2 conv: halves the resolution and changes the width between stages."""

    def __init__(self, in_channels: int, out_channels: int, layer_norm_eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(in_channels, eps=layer_norm_eps)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.norm(hidden_states).permute(0, 3, 1, 2)  # (B, C, H, W)
        return self.conv(hidden_states).permute(0, 2, 3, 1)  # (B, H/2, W/2, C')


class EvoNetStage(nn.Module):
    def __init__(self, config: EvoNetConfig, stage: int, drop_path_rates: list[float]):
        super().__init__()
        if stage == 0:
            self.downsample = nn.Identity()
        else:
            self.downsample = EvoNetDownsample(
                config.hidden_sizes[stage - 1], config.hidden_sizes[stage], config.layer_norm_eps
            )
        self.blocks = nn.ModuleList(
            EvoNetBlock(config, config.block_args(stage, index), drop_path_rates[index])
            for index in range(config.depths[stage])
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.downsample(hidden_states)
        for block in self.blocks:
            hidden_states = block(hidden_states)
        return hidden_states


class EvoNetEncoder(nn.Module):
    def __init__(self, config: EvoNetConfig):
        super().__init__()
        # device="cpu": the rates are Python floats, also when the model is built under a meta-device context.
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()
        starts = [sum(config.depths[:stage]) for stage in range(config.num_stages)]
        self.stages = nn.ModuleList(
            EvoNetStage(config, stage, rates[start : start + depth])
            for stage, (start, depth) in enumerate(zip(starts, config.depths))
        )

    def forward(
        self, hidden_states: torch.Tensor, output_hidden_states: bool = False
    ) -> BaseModelOutputWithNoAttention:
        """hidden_states: (B, H, W, C) channels-last; returned hidden states are channels-first."""
        all_hidden_states = (hidden_states.permute(0, 3, 1, 2),) if output_hidden_states else None
        for stage in self.stages:
            hidden_states = stage(hidden_states)
            if output_hidden_states:
                all_hidden_states += (hidden_states.permute(0, 3, 1, 2),)
        return BaseModelOutputWithNoAttention(
            last_hidden_state=hidden_states.permute(0, 3, 1, 2), hidden_states=all_hidden_states
        )


class EvoNetEmbeddings(nn.Module):
    """Patch-embedding stem: a patch_size x patch_size stride-patch_size conv, then LayerNorm."""

    def __init__(self, config: EvoNetConfig):
        super().__init__()
        self.num_channels = config.num_channels
        self.patch_embeddings = nn.Conv2d(
            config.num_channels, config.hidden_sizes[0], kernel_size=config.patch_size, stride=config.patch_size
        )
        self.norm = nn.LayerNorm(config.hidden_sizes[0], eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"pixel_values of shape {tuple(pixel_values.shape)} is invalid: expected (batch, "
                f"{self.num_channels}, height, width) with num_channels = {self.num_channels} from the config."
            )
        return self.norm(self.patch_embeddings(pixel_values).permute(0, 2, 3, 1))  # (B, H/p, W/p, C)


def _is_body_weight(key: str) -> bool:
    """A parameter of the stem or the stages (not of a head added on top, nor a backbone's feature norms)."""
    parts = key.split(".")
    return "embeddings" in parts or "encoder" in parts


class EvoNetPreTrainedModel(PreTrainedModel):
    config_class = EvoNetConfig
    base_model_prefix = "evonet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["EvoNetBlock"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, (EvoNetSS2D, EvoNetSSD)):
            module.init_ssm_parameters()
        elif isinstance(module, EvoNetLayerScale):
            init.constant_(module.gamma, module.init_value)

    @classmethod
    def from_pretrained(cls, *args, allow_missing_body_weights: bool = False, **kwargs):
        """transformers' `from_pretrained`, refusing a checkpoint that lacks weights of the network's body (stem,
        stages: e.g. a `config.json` edited to one block more than the weights hold) instead of initialising them
        at random with a warning. A missing task head (`classifier`, the backbone's feature norms, a new decoder) is
        still fine, as in transformers; pass `allow_missing_body_weights=True` to accept random body weights too."""
        return_info = kwargs.pop("output_loading_info", False)
        where = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        folder = Path(str(where)).expanduser()
        if folder.is_dir() and kwargs.get("config") is None and not (folder / "config.json").is_file():
            raise ValueError(
                f"{where} has no config.json: a saved EvoNet folder holds config.json (the architecture) beside its "
                "weights; pass config=EvoNetConfig(...) to load bare weights."
            )
        try:
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        except SafetensorError as error:
            raise ValueError(
                f"the safetensors weights of {where} are damaged or truncated ({error}): copy or download them again."
            ) from error
        body = [key for key in info.get("missing_keys", ()) if _is_body_weight(key)]
        if body and not allow_missing_body_weights:
            raise ValueError(
                f"{where} holds no weights for {len(body)} tensors of the network's body (first: {min(body)!r}): "
                "its config.json describes a larger network than its weights. Fix the folder, or pass "
                "allow_missing_body_weights=True to initialise them at random."
            )
        return (model, info) if return_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        # transformers writes only the saved class into `auto_map`, but the folder's modeling_evonet.py defines all
        # the EvoNet models: list each registered one, so that without evonets installed `AutoModel` and
        # `AutoBackbone` load a saved classifier with trust_remote_code=True too.
        if type(self.config) is EvoNetConfig and type(self)._auto_class is not None:
            registered = {
                cls._auto_class: f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
                for cls in (EvoNetModel, EvoNetForImageClassification, EvoNetBackbone)
                if cls._auto_class is not None
            }
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **registered}
        return super().save_pretrained(save_directory, *args, **kwargs)


class EvoNetModel(EvoNetPreTrainedModel):
    def __init__(self, config: EvoNetConfig):
        super().__init__(config)
        self.embeddings = EvoNetEmbeddings(config)
        self.encoder = EvoNetEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_sizes[-1], eps=config.layer_norm_eps)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        r"""
        Returns `last_hidden_state` (B, C_last, H/32, W/32 for patch 4 and 4 stages), `pooler_output` (B, C_last),
        the LayerNorm of the spatial mean, and with `output_hidden_states` the stem's and every stage's output.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        encoder_outputs = self.encoder(self.embeddings(pixel_values), output_hidden_states=output_hidden_states)
        last_hidden_state = encoder_outputs.last_hidden_state
        pooled_output = self.layernorm(last_hidden_state.mean(dim=(-2, -1)))
        output = BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled_output,
            hidden_states=encoder_outputs.hidden_states,
        )
        return output if return_dict else output.to_tuple()


class EvoNetForImageClassification(EvoNetPreTrainedModel):
    def __init__(self, config: EvoNetConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.evonet = EvoNetModel(config)
        self.classifier = (
            nn.Linear(config.hidden_sizes[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`): class indices in `[0, num_labels)`; the loss follows
        `config.problem_type` (cross-entropy, MSE for `num_labels == 1`, BCE for multi-label), as everywhere in
        transformers. `**kwargs` absorbs what `Trainer` passes (`num_items_in_batch`).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.evonet(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        output = ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return output if return_dict else output.to_tuple()


class EvoNetBackbone(BackboneMixin, EvoNetPreTrainedModel):
    """Multi-scale feature maps for dense heads (UperNet, DETR-family detectors, our depth / view-synthesis heads)."""

    has_attentions = False

    def __init__(self, config: EvoNetConfig):
        super().__init__(config)
        self.embeddings = EvoNetEmbeddings(config)
        self.encoder = EvoNetEncoder(config)
        self.num_features = [config.hidden_sizes[0]] + list(config.hidden_sizes)
        self.hidden_states_norms = nn.ModuleDict(
            {
                stage: EvoNetLayerNorm2d(channels, config.layer_norm_eps)
                for stage, channels in zip(self.out_features, self.channels)
            }
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        r"""
        Returns `feature_maps`: one normalised (B, C_i, H_i, W_i) map per entry of `config.out_features`, in order.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden_states = self.encoder(self.embeddings(pixel_values), output_hidden_states=True).hidden_states
        feature_maps = tuple(
            self.hidden_states_norms[stage](hidden_state)
            for stage, hidden_state in zip(self.stage_names, hidden_states)
            if stage in self.out_features
        )
        output = BackboneOutput(
            feature_maps=feature_maps, hidden_states=hidden_states if output_hidden_states else None
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "MIXERS",
    "EvoNetBackbone",
    "EvoNetBlock",
    "EvoNetForImageClassification",
    "EvoNetModel",
    "EvoNetPreTrainedModel",
    "build_mixer",
]
