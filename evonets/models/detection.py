"""Object detection on an EvoNet backbone: transformers' RT-DETR with `EvoNetBackbone` as its backbone.

RT-DETR (a real-time DETR: hybrid CNN / attention encoder over multi-scale features, deformable-attention decoder,
Hungarian-matched set loss with denoising queries) is a transformers class, so the detector is an ordinary
`RTDetrForObjectDetection`: `labels` in, `loss` out, `Trainer`, `save_pretrained` and
`AutoModelForObjectDetection.from_pretrained` (with `import evonets`, which registers the backbone's config).

Shapes: `pixel_values` (B, 3, H, W) with H, W divisible by the backbone's largest stride; `labels` a list of B dicts
with `class_labels` (N_i,) and `boxes` (N_i, 4) as normalised `(cx, cy, w, h)`; out come `logits`
(B, num_queries, num_labels) (sigmoid scores: focal / varifocal loss) and `pred_boxes` (B, num_queries, 4),
normalised `(cx, cy, w, h)`. The RT-DETR image processor's `post_process_object_detection` gives absolute
`(x0, y0, x1, y1)` boxes in the original image size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from transformers import RTDetrConfig, RTDetrForObjectDetection

from .task_backbone import BackboneSource, backbone_config, load_backbone_weights

RT_DETR_EDGE_SIZES = {
    "encoder_hidden_dim": 96,
    "encoder_ffn_dim": 256,
    "encoder_attention_heads": 4,
    "hidden_expansion": 0.5,
    "d_model": 96,
    "decoder_ffn_dim": 256,
    "decoder_attention_heads": 4,
    "decoder_layers": 3,
    "num_queries": 100,
    "num_denoising": 50,
}
"""The default detector sizes: a small encoder-decoder for edge CPUs (RT-DETR-R18 uses 256 channels, 1024-wide FFNs,
300 queries and 100 denoising queries; 3 decoder layers and hidden expansion 0.5 are its own)."""


def build_rt_detr(
    backbone_source: BackboneSource,
    id2label: Mapping[int, str],
    out_features: Sequence[str] | None = None,
    **detector_sizes,
) -> RTDetrForObjectDetection:
    """An `RTDetrForObjectDetection` on the EvoNet described by `backbone_source`.

    Args:
        backbone_source: an `EvoNetConfig` or its dict (backbone from scratch), or a saved EvoNet folder such as a
            search run's `models/<hash>/` (its weights are copied in), see `evonets.models.task_backbone`.
        id2label: the detector's classes, `{0: name, 1: name, ...}` (e.g. `evonets.data.detection.id2label(train)`).
        out_features: the backbone stages fed to the encoder; defaults to the last three (strides 8, 16, 32 for
            patch 4 and 4 stages).
        detector_sizes: `RTDetrConfig` fields overriding `RT_DETR_EDGE_SIZES` (e.g. `d_model=128`,
            `num_queries=300`, `decoder_layers=6`).
    """
    labels = {int(index): str(name) for index, name in id2label.items()}
    if not labels or sorted(labels) != list(range(len(labels))):
        raise ValueError(
            f"id2label = {dict(id2label)!r} is invalid: expected a non-empty mapping from 0, 1, ..., num_labels - 1 "
            "to class names."
        )
    backbone = backbone_config(backbone_source)
    if out_features is None:
        out_features = backbone.stage_names[1:][-3:]
    unknown = [name for name in out_features if name not in backbone.stage_names[1:]]
    if not out_features or unknown:
        raise ValueError(
            f"out_features = {list(out_features)!r} is invalid: expected a non-empty list of backbone stages from "
            f"{backbone.stage_names[1:]}."
        )
    backbone.set_output_features_output_indices(out_features=list(out_features), out_indices=None)
    # stage i (1-based) of an EvoNet sees the image at stride patch_size * 2 ** (i - 1)
    strides = [backbone.patch_size * 2 ** (backbone.stage_names.index(name) - 1) for name in backbone.out_features]
    sizes = {**RT_DETR_EDGE_SIZES, **detector_sizes}
    config = RTDetrConfig(
        backbone_config=backbone,
        encoder_in_channels=[backbone.hidden_sizes[backbone.stage_names.index(name) - 1] for name in out_features],
        feat_strides=strides,
        encode_proj_layers=[len(strides) - 1],
        num_feature_levels=len(strides),
        decoder_in_channels=[sizes["encoder_hidden_dim"]] * len(strides),
        freeze_backbone_batch_norms=False,  # EvoNets have no batch norm
        id2label=labels,
        label2id={name: index for index, name in labels.items()},
        **sizes,
    )
    model = RTDetrForObjectDetection(config)
    load_backbone_weights(model.model.backbone.model, backbone_source)
    return model


__all__ = ["RT_DETR_EDGE_SIZES", "build_rt_detr"]
