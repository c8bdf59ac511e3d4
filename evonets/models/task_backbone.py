"""Where a task head gets its EvoNet backbone from.

Every downstream head (segmentation, detection, depth, view synthesis) takes its backbone from one *source*:

- an `EvoNetConfig` (or its dict): a backbone initialised from scratch;
- a folder holding a saved EvoNet (`config.json` + `model.safetensors`), e.g. a search run's `models/<hash>/`: the
  same architecture, with its weights (supernet-inherited or fine-tuned) copied into the head's backbone.

`backbone_config(source, out_features)` gives the config a head is built from; `load_backbone_weights(backbone,
source)` fills a built head's backbone from the folder. Both read only safetensors and JSON.

Our own heads (depth, segmentation MLP decoder, view synthesis) share two bases: `EvoNetHeadConfig` (the
`backbone_config` sub-config) and `EvoNetHeadPreTrainedModel` (its `from_backbone(source, ...)` builder).
transformers' own heads (UperNet, RT-DETR) get the same two functions from their builders.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import ClassVar

from ._compat import PreTrainedConfig
from .configuration_evonet import EvoNetConfig
from .modeling_evonet import EvoNetPreTrainedModel

logger = logging.getLogger(__name__)

BackboneSource = EvoNetConfig | dict | str | os.PathLike


def _folder(source: str | os.PathLike) -> Path:
    folder = Path(source).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"backbone source {str(source)!r} is not a saved EvoNet folder (config.json + model.safetensors, e.g. a "
            f"search run's models/<hash>/): {'it has no config.json' if folder.is_dir() else 'no such folder'}."
        )
    return folder


def backbone_config(source: BackboneSource, out_features: list[str] | None = None) -> EvoNetConfig:
    """The `EvoNetConfig` of `source` (config, dict or saved folder), returning the stages in `out_features`
    (default: every stage, `stage1` .. `stageN`).

    Classification-only fields of a saved classifier (labels, `architectures`) are dropped: the head has its own.
    """
    if isinstance(source, EvoNetConfig):
        config = EvoNetConfig.from_dict(source.to_dict())
    elif isinstance(source, dict):
        config = EvoNetConfig.from_dict(source)
    elif isinstance(source, (str, os.PathLike)):
        config = EvoNetConfig.from_pretrained(_folder(source))
        if config.model_type != EvoNetConfig.model_type:
            raise ValueError(
                f"backbone source {str(source)!r} holds a {config.model_type!r} model; a head needs an "
                f"{EvoNetConfig.model_type!r} folder (a supernet gives one with `extract(arch).save_pretrained`)."
            )
    else:
        raise TypeError(
            f"backbone source must be an EvoNetConfig, a dict or a folder path, not {type(source).__name__}"
        )
    config.architectures = None
    config.id2label, config.label2id = {0: "LABEL_0", 1: "LABEL_1"}, {"LABEL_0": 0, "LABEL_1": 1}
    if out_features is None:
        out_features = config.stage_names[1:]
    config.set_output_features_output_indices(out_features=list(out_features), out_indices=None)
    return config


def load_backbone_weights(backbone, source: BackboneSource) -> list[str]:
    """Copy the weights saved in folder `source` into `backbone` (an `EvoNetBackbone` inside a head).

    A config or dict source means "from scratch": nothing is copied. Returns the backbone parameters that the
    folder did not have (the per-stage output norms of `EvoNetBackbone`, which a classifier lacks). Raises if the
    folder's architecture differs from the backbone's.
    """
    if isinstance(source, (EvoNetConfig, dict)):
        return []
    from safetensors.torch import load_file

    folder = _folder(source)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"backbone source {str(source)!r} has a config.json but no model.safetensors to load.")
    prefix = "evonet."
    state = {key.removeprefix(prefix): tensor for key, tensor in load_file(weights).items()}
    own = backbone.state_dict()
    shape_mismatch = [key for key in own if key in state and state[key].shape != own[key].shape]
    if shape_mismatch:
        raise ValueError(
            f"backbone source {str(source)!r} does not match the head's backbone architecture: "
            f"{len(shape_mismatch)} tensors differ in shape (first: {shape_mismatch[0]!r})."
        )
    missing = [key for key in own if key not in state]
    unmatched_body = [key for key in missing if not key.startswith("hidden_states_norms.")]
    if unmatched_body:
        raise ValueError(
            f"backbone source {str(source)!r} lacks {len(unmatched_body)} backbone tensors "
            f"(first: {unmatched_body[0]!r}); is it an EvoNet of the same architecture?"
        )
    backbone.load_state_dict({key: state[key] for key in own if key in state}, strict=False)
    if missing:
        logger.info("Backbone weights from %s; newly initialised: %s", source, ", ".join(missing))
    return missing


class EvoNetHeadConfig(PreTrainedConfig):
    r"""
    Base of the configs of our task heads: an EvoNet backbone as the `backbone_config` sub-config.

    Args:
        backbone_config (`EvoNetConfig | dict`, *optional*): the backbone; the head uses the feature maps of its
            `out_features`. Defaults to `EvoNetConfig()` returning every stage. To start from a trained backbone (a
            search run's `models/<hash>/` folder), use the model's `from_backbone`.
        initializer_range (`float`, defaults to 0.02): std of the initial weights of the head (the backbone has its
            own init).
    """

    sub_configs_defaults: ClassVar[dict] = {"backbone_config": EvoNetConfig}

    backbone_config: dict | PreTrainedConfig | None = None
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        # Resolved here rather than by transformers' AutoConfig lookup, so that the remote-code copy of this file
        # also loads where evonets (and its "evonet" AutoConfig registration) is not installed.
        if self.backbone_config is None:
            self.backbone_config = backbone_config(EvoNetConfig())
        elif isinstance(self.backbone_config, dict):
            self.backbone_config = EvoNetConfig.from_dict(self.backbone_config)
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self):
        """Raise `ValueError` naming the field, the bad value and what is allowed (`TypeError` for a wrong type);
        subclasses check their own fields after this."""
        if not isinstance(self.backbone_config, EvoNetConfig):
            raise TypeError(
                f"{type(self).__name__}.backbone_config is a {type(self.backbone_config).__name__}: expected an "
                "EvoNetConfig or its dict."
            )


class EvoNetHeadPreTrainedModel(EvoNetPreTrainedModel):
    """Base of our task heads: EvoNet weight init (SSM parameters, layer-scale) for the backbone, the default init
    (normal of std `initializer_range`, zero biases) for the rest; the backbone is `self.backbone`."""

    config_class = EvoNetHeadConfig
    base_model_prefix = "backbone"

    def __init__(self, config: EvoNetHeadConfig, *inputs, **kwargs):
        if not isinstance(getattr(config, "backbone_config", None), PreTrainedConfig):
            raise TypeError(
                f"{type(self).__name__} takes a {self.config_class.__name__} (a head config whose backbone_config is "
                f"the EvoNet), not a {type(config).__name__}; from an EvoNetConfig or a saved EvoNet folder, build it "
                f"with {type(self).__name__}.from_backbone(source, ...)."
            )
        super().__init__(config, *inputs, **kwargs)

    @classmethod
    def from_backbone(cls, source: BackboneSource, out_features: list[str] | None = None, **config_kwargs):
        """A head whose backbone comes from `source`: an `EvoNetConfig` / dict (from scratch) or a saved EvoNet
        folder such as a search run's `models/<hash>/` (architecture and weights).

        `out_features` (default: every stage, `stage1` .. `stageN`) are the maps the head uses; `config_kwargs` go
        to the head's config class (`cls.config_class`).
        """
        config = cls.config_class(backbone_config=backbone_config(source, out_features), **config_kwargs)
        model = cls(config)
        load_backbone_weights(model.backbone, source)
        return model


__all__ = [
    "BackboneSource",
    "EvoNetHeadConfig",
    "EvoNetHeadPreTrainedModel",
    "backbone_config",
    "load_backbone_weights",
]
