"""Semantic segmentation on an EvoNet backbone: a light all-MLP decoder of ours, and transformers' UperNet.

- [`EvoNetForSemanticSegmentation`]: EvoNet backbone + SegFormer-style all-MLP decoder (one 1x1 projection per
  feature map, upsample, concatenate, one 1x1 fusion): a few thousand MACs per pixel, for edge budgets.
- [`build_upernet`]: transformers' `UperNetForSemanticSegmentation` (pyramid pooling + FPN, 3x3 convolutions) with an
  `EvoNetBackbone` through `UperNetConfig(backbone_config=...)`; heavier, and the usual reference head.

Both take their backbone from an `EvoNetConfig` or a saved EvoNet folder (a search run's `models/<hash>/`) through
`evonets.models.task_backbone`, take `labels` (B, H, W) with `ignore_index` (255) for unlabelled pixels, and return a
`SemanticSegmenterOutput` with `loss`.

Reading order: config -> decoder -> `PreTrainedModel` -> model -> UperNet builder. Tensors are channels-first
(B, C, H, W) throughout, as the backbone's feature maps are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import UperNetConfig, UperNetForSemanticSegmentation
from transformers.modeling_outputs import SemanticSegmenterOutput

from .modeling_evonet import EvoNetBackbone
from .task_backbone import (
    BackboneSource,
    EvoNetHeadConfig,
    EvoNetHeadPreTrainedModel,
    backbone_config,
    load_backbone_weights,
)


class EvoNetSegmentationConfig(EvoNetHeadConfig):
    r"""
    Configuration of an [`EvoNetForSemanticSegmentation`]: an EvoNet backbone and an all-MLP decoder.

    Args:
        backbone_config (`EvoNetConfig | dict`, *optional*): the backbone; the decoder fuses the feature maps of its
            `out_features`. Defaults to `EvoNetConfig(out_features=[every stage])`. To start from a trained backbone
            (a search run's `models/<hash>/` folder), use `EvoNetForSemanticSegmentation.from_backbone`.
        decoder_hidden_size (`int`, defaults to 128): channels every feature map is projected to before fusion.
        classifier_dropout_prob (`float`, defaults to 0.1): dropout before the per-pixel classifier.
        semantic_loss_ignore_index (`int`, defaults to 255): label value of unlabelled pixels, left out of the loss.
        initializer_range (`float`, defaults to 0.02): std of the decoder's initial weights.
        num_labels / id2label / label2id: the classes (at least 2).

    Example:

    ```python
    >>> import evonets
    >>> backbone = evonets.EvoNetConfig(depths=[1, 1, 2, 1], hidden_sizes=[32, 64, 128, 192],
    ...                                 out_features=["stage1", "stage2", "stage3", "stage4"])
    >>> config = evonets.EvoNetSegmentationConfig(backbone_config=backbone, num_labels=150)
    >>> model = evonets.EvoNetForSemanticSegmentation(config)
    ```
    """

    model_type = "evonet_segmentation"

    decoder_hidden_size: int = 128
    classifier_dropout_prob: float = 0.1
    semantic_loss_ignore_index: int = 255

    def validate_architecture(self):
        """Raise `ValueError` naming the field, the bad value and what is allowed."""
        super().validate_architecture()
        if not (isinstance(self.decoder_hidden_size, int) and self.decoder_hidden_size >= 1):
            raise ValueError(
                f"EvoNetSegmentationConfig.decoder_hidden_size = {self.decoder_hidden_size!r} is invalid: expected a "
                "positive int."
            )
        if not 0.0 <= self.classifier_dropout_prob < 1.0:
            raise ValueError(
                f"EvoNetSegmentationConfig.classifier_dropout_prob = {self.classifier_dropout_prob!r} is invalid: "
                "expected a float in [0, 1)."
            )
        if self.num_labels < 2:
            raise ValueError(
                f"EvoNetSegmentationConfig.num_labels = {self.num_labels} is invalid: expected at least 2 classes "
                "(pass id2label={0: ..., 1: ..., ...})."
            )
        if 0 <= self.semantic_loss_ignore_index < self.num_labels:
            raise ValueError(
                f"EvoNetSegmentationConfig.semantic_loss_ignore_index = {self.semantic_loss_ignore_index} is invalid: "
                f"it is a class id (num_labels = {self.num_labels}); expected a value outside [0, {self.num_labels}), "
                "e.g. 255."
            )


class EvoNetSegmentationMLPDecoder(nn.Module):
    r"""
    SegFormer-style all-MLP decoder. For the backbone's feature maps F_1 .. F_N (finest first, F_i of shape
    (B, C_i, H_i, W_i)) and D = decoder_hidden_size, K = num_labels:

        E_i = Up(W_i F_i + b_i, to H_1 x W_1)                (B, D, H_1, W_1), W_i a per-pixel linear map C_i -> D
        Z   = Dropout(ReLU(BatchNorm(W_f [E_1; ...; E_N])))  (B, D, H_1, W_1), W_f a per-pixel linear map N*D -> D
        logits = W_c Z + b_c                                 (B, K, H_1, W_1)

    with Up a bilinear resize. Every per-pixel linear map is a 1x1 convolution: the decoder costs about
    (sum_i C_i + N D + K) D multiply-adds per output pixel and no spatial convolution, the backbone's stages supply
    the context.
    """

    def __init__(self, in_channels: list[int], hidden_size: int, num_labels: int, dropout_prob: float):
        super().__init__()
        self.projections = nn.ModuleList(nn.Conv2d(channels, hidden_size, kernel_size=1) for channels in in_channels)
        self.fuse = nn.Conv2d(hidden_size * len(in_channels), hidden_size, kernel_size=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(hidden_size)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout_prob)
        self.classifier = nn.Conv2d(hidden_size, num_labels, kernel_size=1)

    def forward(self, feature_maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
        size = feature_maps[0].shape[-2:]
        projected = [
            F.interpolate(projection(feature_map), size=size, mode="bilinear", align_corners=False)
            for projection, feature_map in zip(self.projections, feature_maps)
        ]
        fused = self.activation(self.batch_norm(self.fuse(torch.cat(projected, dim=1))))
        return self.classifier(self.dropout(fused))


class EvoNetSegmentationPreTrainedModel(EvoNetHeadPreTrainedModel):
    """EvoNet weight init (SSM parameters, layer-scale) for the backbone, the default init for the decoder."""

    config_class = EvoNetSegmentationConfig


class EvoNetForSemanticSegmentation(EvoNetSegmentationPreTrainedModel):
    r"""
    EvoNet backbone -> [`EvoNetSegmentationMLPDecoder`]: per-pixel class scores at the resolution of the finest
    feature map (H / 4 x W / 4 for `patch_size` 4 and `stage1` in `out_features`). The loss upsamples them to the
    labels' size; resize `logits` the same way for predictions (see `evonets.data.segmentation`).
    Inputs should be divisible by the backbone's total stride (`patch_size * 2 ** (num_stages - 1)`).
    """

    def __init__(self, config: EvoNetSegmentationConfig):
        super().__init__(config)
        self.backbone = EvoNetBackbone(config.backbone_config)
        self.decode_head = EvoNetSegmentationMLPDecoder(
            self.backbone.channels, config.decoder_hidden_size, config.num_labels, config.classifier_dropout_prob
        )
        self.post_init()

    @classmethod
    def from_backbone(
        cls,
        source: BackboneSource,
        id2label: dict[int, str],
        out_features: list[str] | None = None,
        **config_kwargs,
    ) -> EvoNetForSemanticSegmentation:
        """A segmentation model for the classes `id2label` whose backbone comes from `source`: an `EvoNetConfig` /
        dict (from scratch) or a saved EvoNet folder such as a search run's `models/<hash>/` (architecture and
        weights).

        `out_features` (default: every stage, `stage1` .. `stageN`) are the maps the decoder fuses;
        `config_kwargs` go to `EvoNetSegmentationConfig` (`decoder_hidden_size`, `classifier_dropout_prob`, ...).
        """
        return super().from_backbone(
            source, out_features, id2label=dict(id2label), label2id=_label2id(id2label), **config_kwargs
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SemanticSegmenterOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`): normalised images.
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*): class ids in
            `[0, num_labels)`, or `config.semantic_loss_ignore_index` for unlabelled pixels; gives `loss`, the
            pixel-wise cross-entropy of the logits upsampled (bilinear) to the labels' size, over labelled pixels.
            `**kwargs` absorbs what `Trainer` passes (`num_items_in_batch`).

        Returns `SemanticSegmenterOutput` with `logits` (batch_size, num_labels, H_1, W_1) at the finest feature
        map's resolution, `loss` when `labels` is given, and with `output_hidden_states` the backbone's stem and
        stage maps.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.backbone(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.decode_head(outputs.feature_maps)

        loss = None
        if labels is not None:
            self._check_labels(labels, batch_size=pixel_values.shape[0])
            upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(upsampled, labels.long(), ignore_index=self.config.semantic_loss_ignore_index)
        output = SemanticSegmenterOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states if output_hidden_states else None
        )
        return output if return_dict else output.to_tuple()

    def _check_labels(self, labels: torch.Tensor, batch_size: int) -> None:
        if labels.ndim != 3 or labels.shape[0] != batch_size:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} is invalid: expected class-id maps (batch, height, width) "
                f"with batch = {batch_size}."
            )
        ignore_index = self.config.semantic_loss_ignore_index
        labelled = labels[labels != ignore_index]
        if labelled.numel() and (labelled.min() < 0 or labelled.max() >= self.config.num_labels):
            bad = labelled[(labelled < 0) | (labelled >= self.config.num_labels)].unique()[:5].tolist()
            raise ValueError(
                f"labels hold values {bad} outside the model's label space: expected class ids in "
                f"[0, {self.config.num_labels}) (num_labels of the config) or the ignore index {ignore_index}. "
                "Does the dataset have more classes than the model?"
            )


def build_upernet(
    source: BackboneSource,
    id2label: dict[int, str],
    out_features: list[str] | None = None,
    ignore_index: int = 255,
    **upernet_kwargs,
) -> UperNetForSemanticSegmentation:
    """transformers' `UperNetForSemanticSegmentation` on an EvoNet backbone from `source` (an `EvoNetConfig` / dict
    from scratch, or a saved EvoNet folder such as a search run's `models/<hash>/`, whose weights go into
    `model.backbone`).

    `out_features` (default: every stage) are the maps UperNet fuses; `upernet_kwargs` go to `UperNetConfig`
    (`hidden_size`, `pool_scales`, `use_auxiliary_head`, ...). Defaults differ from UperNet's for edge budgets:
    `hidden_size=128` (UperNet: 512) and no auxiliary head. The result saves and loads with
    `UperNetForSemanticSegmentation` / `AutoModelForSemanticSegmentation` wherever evonets is imported.
    """
    config = backbone_config(source, out_features)
    options = {"hidden_size": 128, "use_auxiliary_head": False, **upernet_kwargs}
    if len(id2label) < 2:
        raise ValueError(f"id2label has {len(id2label)} classes: a segmentation model needs at least 2.")
    model = UperNetForSemanticSegmentation(
        UperNetConfig(
            backbone_config=config,
            id2label=dict(id2label),
            label2id=_label2id(id2label),
            loss_ignore_index=ignore_index,
            **options,
        )
    )
    load_backbone_weights(model.backbone, source)
    return model


def _label2id(id2label: dict[int, str]) -> dict[str, int]:
    return {name: int(index) for index, name in id2label.items()}


__all__ = [
    "EvoNetForSemanticSegmentation",
    "EvoNetSegmentationConfig",
    "EvoNetSegmentationMLPDecoder",
    "EvoNetSegmentationPreTrainedModel",
    "build_upernet",
]
