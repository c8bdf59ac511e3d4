"""Monocular depth estimation on an EvoNet backbone: config, FPN fusion decoder, depth head, scale-invariant log loss.

transformers' DPT head needs ViT-style token sequences and has no training loss, so the depth head is ours.

Reading order: config -> loss -> decoder layers -> decoder -> depth head -> `PreTrainedModel` -> model. Tensors are
channels-first (B, C, H, W) throughout, as the backbone's feature maps are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import DepthEstimatorOutput

from .modeling_evonet import EvoNetBackbone, EvoNetLayerNorm2d
from .task_backbone import EvoNetHeadConfig, EvoNetHeadPreTrainedModel


class EvoNetDepthConfig(EvoNetHeadConfig):
    r"""
    Configuration of an [`EvoNetForDepthEstimation`]: an EvoNet backbone, a multi-scale fusion decoder and a
    depth head trained with the scale-invariant log loss.

    Args:
        backbone_config (`EvoNetConfig | dict`, *optional*): the backbone; the decoder fuses the feature maps of its
            `out_features`. Defaults to `EvoNetConfig(out_features=[every stage])`. To start from a trained backbone
            (a search run's `models/<hash>/` folder), use `EvoNetForDepthEstimation.from_backbone`.
        decoder_hidden_size (`int`, defaults to 64): channels of every level of the fusion decoder.
        head_hidden_size (`int`, defaults to 32): channels of the depth head before its last convolution.
        min_depth, max_depth (`float`, defaults to 0.1 and 10.0): predictions lie in (min_depth, max_depth) metres,
            spaced evenly in log-depth. The defaults cover indoor sensors (NYU, TUM, SUN RGB-D cap at about 10 m).
        silog_lambda (`float`, defaults to 0.5): weight of the squared mean in the scale-invariant log loss;
            0 is a plain mean squared log error, 1 ignores a global scale of the prediction (see
            `scale_invariant_log_loss`). 0.5 is Eigen et al.'s training value.
        initializer_range (`float`, defaults to 0.02): std of the decoder's initial weights.

    Example:

    ```python
    >>> import evonets
    >>> backbone = evonets.EvoNetConfig(depths=[1, 1, 2, 1], hidden_sizes=[32, 64, 128, 160],
    ...                                 out_features=["stage1", "stage2", "stage3", "stage4"])
    >>> model = evonets.EvoNetForDepthEstimation(evonets.EvoNetDepthConfig(backbone_config=backbone))
    ```
    """

    model_type = "evonet_depth"

    decoder_hidden_size: int = 64
    head_hidden_size: int = 32
    min_depth: float = 0.1
    max_depth: float = 10.0
    silog_lambda: float = 0.5

    def validate_architecture(self):
        """Raise `ValueError` naming the field, the bad value and what is allowed (`TypeError` for a wrong type)."""
        super().validate_architecture()
        for name in ("decoder_hidden_size", "head_hidden_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"EvoNetDepthConfig.{name} = {value!r} is invalid: expected a positive int.")
        if not (self.min_depth > 0 and self.max_depth > self.min_depth):
            raise ValueError(
                f"EvoNetDepthConfig.min_depth = {self.min_depth!r}, max_depth = {self.max_depth!r} are invalid: "
                "expected 0 < min_depth < max_depth (metres)."
            )
        if not 0.0 <= self.silog_lambda <= 1.0:
            raise ValueError(
                f"EvoNetDepthConfig.silog_lambda = {self.silog_lambda!r} is invalid: expected a float in [0, 1]."
            )


def scale_invariant_log_loss(
    predicted_depth: torch.Tensor, labels: torch.Tensor, silog_lambda: float = 0.5
) -> torch.Tensor:
    r"""
    Scale-invariant log loss (Eigen, Puhrsch and Fergus, NeurIPS 2014), per image, averaged over images.

    For image b with valid pixels V_b = {p : labels[b, p] > 0} (0 marks a pixel without depth) and
    d_p = log predicted_depth[b, p] - log labels[b, p]:

        L_b = (1 / |V_b|) sum_p d_p^2  -  lambda * ((1 / |V_b|) sum_p d_p)^2
        L   = mean of L_b over the images with |V_b| > 0.

    L_b = Var(d) + (1 - lambda) * mean(d)^2 >= 0, and 0 for a perfect prediction. lambda = 1 leaves only the
    variance, so multiplying a prediction by any constant does not change the loss; lambda = 0 is the mean squared
    log error.

    Args:
        predicted_depth: (B, H, W) positive depths in metres.
        labels: (B, H, W) ground-truth depths in metres, 0 (or any value <= 0) where invalid.
    Returns:
        a scalar tensor.
    """
    valid = labels > 0
    counts = valid.sum(dim=(-2, -1))  # (B,)
    if not bool((counts > 0).any()):
        raise ValueError("labels has no valid pixel (depth > 0) in any image of the batch: nothing to learn from.")
    log_ratio = torch.where(valid, torch.log(predicted_depth) - torch.log(labels.clamp_min(1e-6)), 0.0)
    has_depth = counts > 0
    counts = counts.clamp_min(1).to(log_ratio.dtype)
    mean_square = log_ratio.pow(2).sum(dim=(-2, -1)) / counts
    mean = log_ratio.sum(dim=(-2, -1)) / counts
    per_image = mean_square - silog_lambda * mean.pow(2)
    return per_image[has_depth].mean()


class EvoNetDepthConvLayer(nn.Module):
    """Conv k x k (same padding) -> channels LayerNorm -> GELU on (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, layer_norm_eps: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = EvoNetLayerNorm2d(out_channels, layer_norm_eps)
        self.activation = nn.GELU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(hidden_states)))


class EvoNetDepthFusionDecoder(nn.Module):
    r"""
    FPN-style top-down fusion of the backbone's feature maps F_1 .. F_N (finest first, F_i of shape
    (B, C_i, H_i, W_i)) into one map at the finest level:

        L_i = Conv1x1(F_i)                                   (B, D, H_i, W_i), D = decoder_hidden_size
        P_N = Smooth_N(L_N)
        P_i = Smooth_i(L_i + Up(P_{i+1}, to H_i x W_i))      for i = N-1 .. 1
        returns P_1                                          (B, D, H_1, W_1)

    with Up a bilinear resize and Smooth a 3x3 conv -> LayerNorm -> GELU, so coarse, global context (the scene's
    depth range) flows down into the fine maps that carry edges.
    """

    def __init__(self, in_channels: list[int], hidden_size: int, layer_norm_eps: float):
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(channels, hidden_size, kernel_size=1) for channels in in_channels)
        self.smooth_layers = nn.ModuleList(
            EvoNetDepthConvLayer(hidden_size, hidden_size, 3, layer_norm_eps) for _ in in_channels
        )

    def forward(self, feature_maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
        fused = None
        for level in reversed(range(len(feature_maps))):
            lateral = self.lateral_convs[level](feature_maps[level])
            if fused is not None:
                lateral = lateral + F.interpolate(fused, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            fused = self.smooth_layers[level](lateral)
        return fused


class EvoNetDepthHead(nn.Module):
    r"""
    Fused map (B, D, h, w) -> depth (B, H, W) in metres at the input size H x W:

        x = Conv3x3-LayerNorm-GELU(P_1)                      (B, K, h, w), K = head_hidden_size
        z = Conv3x3(Up(x, to H x W))                         (B, 1, H, W)
        depth = exp(log d_min + sigmoid(z) * (log d_max - log d_min))

    The sigmoid in log space keeps every prediction in (d_min, d_max), positive for the log loss, with equal
    resolution at every relative depth; the expensive convolution runs at the decoder's resolution, only a
    K -> 1 one at the full resolution.
    """

    def __init__(self, config: EvoNetDepthConfig):
        super().__init__()
        eps = config.backbone_config.layer_norm_eps
        self.conv = EvoNetDepthConvLayer(config.decoder_hidden_size, config.head_hidden_size, 3, eps)
        self.predictor = nn.Conv2d(config.head_hidden_size, 1, kernel_size=3, padding=1)
        self.log_min_depth = math.log(config.min_depth)
        self.log_depth_range = math.log(config.max_depth) - math.log(config.min_depth)

    def forward(self, fused: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        hidden_states = F.interpolate(self.conv(fused), size=size, mode="bilinear", align_corners=False)
        logits = self.predictor(hidden_states).squeeze(1)  # (B, H, W)
        return torch.exp(self.log_min_depth + torch.sigmoid(logits) * self.log_depth_range)


class EvoNetDepthPreTrainedModel(EvoNetHeadPreTrainedModel):
    """EvoNet weight init (SSM parameters, layer-scale) for the backbone, the default init for the decoder."""

    config_class = EvoNetDepthConfig


class EvoNetForDepthEstimation(EvoNetDepthPreTrainedModel):
    r"""
    EvoNet backbone -> [`EvoNetDepthFusionDecoder`] -> [`EvoNetDepthHead`]: metric depth (metres) for every pixel.

    Any input size works: the image is padded (edge pixels repeated) at the bottom and right to a multiple of the
    backbone's total stride (`patch_size * 2 ** (num_stages - 1)`), and the prediction is cropped back.
    """

    def __init__(self, config: EvoNetDepthConfig):
        super().__init__(config)
        self.backbone = EvoNetBackbone(config.backbone_config)
        self.decoder = EvoNetDepthFusionDecoder(
            self.backbone.channels, config.decoder_hidden_size, config.backbone_config.layer_norm_eps
        )
        self.head = EvoNetDepthHead(config)
        backbone = config.backbone_config
        self.backbone_stride = backbone.patch_size * 2 ** (backbone.num_stages - 1)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DepthEstimatorOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`): normalised images.
        labels (`torch.FloatTensor` of shape `(batch_size, height, width)`, *optional*): ground-truth depth in
            metres, 0 where the sensor has no depth; gives `loss` = `scale_invariant_log_loss` over valid pixels.
            `**kwargs` absorbs what `Trainer` passes (`num_items_in_batch`).

        Returns `DepthEstimatorOutput` with `predicted_depth` (batch_size, height, width) in metres, `loss` when
        `labels` is given, and with `output_hidden_states` the backbone's stem and stage maps (of the padded input).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values of shape {tuple(pixel_values.shape)} is invalid: expected (batch, channels, height, "
                "width)."
            )
        batch_size, _, height, width = pixel_values.shape
        if labels is not None and tuple(labels.shape) != (batch_size, height, width):
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} is invalid: expected depth maps (batch, height, width) = "
                f"{(batch_size, height, width)}, the size of pixel_values; resize depth and image together."
            )
        pad_height, pad_width = -height % self.backbone_stride, -width % self.backbone_stride
        padded = F.pad(pixel_values, (0, pad_width, 0, pad_height), mode="replicate")
        outputs = self.backbone(padded, output_hidden_states=output_hidden_states, return_dict=True)
        fused = self.decoder(outputs.feature_maps)
        predicted_depth = self.head(fused, size=padded.shape[-2:])[:, :height, :width].contiguous()

        loss = None
        if labels is not None:
            loss = scale_invariant_log_loss(predicted_depth, labels.to(predicted_depth.dtype), self.config.silog_lambda)
        output = DepthEstimatorOutput(
            loss=loss,
            predicted_depth=predicted_depth,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "EvoNetDepthConfig",
    "EvoNetDepthFusionDecoder",
    "EvoNetDepthHead",
    "EvoNetDepthPreTrainedModel",
    "EvoNetForDepthEstimation",
    "scale_invariant_log_loss",
]
