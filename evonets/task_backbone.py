"""Where a task head gets its EvoNet backbone from, and where the shared real data lives.

Every downstream head (segmentation, detection, depth, view synthesis) takes its backbone from one *source*:

- an `EvoNetConfig` (or its dict): a backbone initialised from scratch;
- a folder holding a saved EvoNet (`config.json` + `model.safetensors`), e.g. a search run's `models/<hash>/`: the
  same architecture, with its weights (supernet-inherited or fine-tuned) copied into the head's backbone.

`backbone_config(source, out_features)` gives the config a head is built from; `load_backbone_weights(backbone,
source)` fills a built head's backbone from the folder. Both read only safetensors and JSON.
"""

from __future__ import annotations

import os
from pathlib import Path

from .configuration_evonet import EvoNetConfig

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
    """The `EvoNetConfig` of `source` (config, dict or saved folder), returning the stages in `out_features`.

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
    if out_features is not None:
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
    return missing


def shared_data_dir() -> Path:
    """The real sample data (`coco128`, `ade20k_sample`, `bccd`, `rgbd_sample`, `llff_fern`).

    `$EVONETS_DATA_DIR` if set, else `../shared/data` beside the repository checkout. The data is never copied into
    the project (several licences are research-only).
    """
    if "EVONETS_DATA_DIR" in os.environ:
        return Path(os.environ["EVONETS_DATA_DIR"]).expanduser()
    return Path(__file__).resolve().parents[2] / "shared" / "data"


__all__ = ["BackboneSource", "backbone_config", "load_backbone_weights", "shared_data_dir"]
