"""Novel view synthesis on an EvoNet backbone: an image-conditioned radiance field (pixelNeRF, Yu et al., CVPR 2021).

A target ray is rendered from a few posed source images, without per-scene optimisation: the backbone encodes the
source images once, every 3-D sample point on the ray is projected into every source view, the features and colours
found there condition an MLP together with the point's position and the ray's direction in that source camera's
frame, the per-view hidden states are averaged over the views, and the averaged state gives a density and a colour
that volume rendering composites along the ray.

Cameras use OpenCV axes (x right, y down, z forward), poses are camera-to-world 4x4 matrices and a pixel (row i,
column j) covers [j, j + 1) x [i, i + 1) in image coordinates (`evonets.data.llff` loads LLFF scenes this way).

Reading order: config -> camera projection -> positional encoding -> volume rendering -> source-view encoder ->
radiance field -> output -> `PreTrainedModel` -> model.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .modeling_evonet import EvoNetBackbone
from .task_backbone import EvoNetHeadConfig, EvoNetHeadPreTrainedModel


def camera_rays(
    pose: np.ndarray, intrinsics: np.ndarray, height: int, width: int, pixels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""
    Rays through pixel centres of a pinhole camera, OpenCV axes.

    For pixel p = row i * width + column j, with camera-to-world pose [R | c]:

        direction = R [ (j + 0.5 - cx) / fx, (i + 0.5 - cy) / fy, 1 ]^T,    origin = c

    The direction has unit z in the camera frame, so the point origin + t * direction lies at depth t in front of
    the camera: ray parameters and LLFF's depth bounds share units.

    Args:
        pose: (4, 4) camera-to-world. intrinsics: (3, 3).
        pixels: (R,) flat pixel indices, or None for all H * W pixels in row-major order.
    Returns:
        origins (R, 3) and directions (R, 3), float32 world coordinates.
    """
    if pixels is None:
        pixels = np.arange(height * width)
    rows, columns = np.divmod(np.asarray(pixels), width)
    camera_directions = np.stack(
        [
            (columns + 0.5 - intrinsics[0, 2]) / intrinsics[0, 0],
            (rows + 0.5 - intrinsics[1, 2]) / intrinsics[1, 1],
            np.ones(len(rows)),
        ],
        axis=-1,
    )
    directions = camera_directions @ pose[:3, :3].T
    origins = np.broadcast_to(pose[:3, 3], directions.shape)
    return origins.astype(np.float32), directions.astype(np.float32)


class EvoNetViewSynthesisConfig(EvoNetHeadConfig):
    r"""
    Configuration of an [`EvoNetForNovelViewSynthesis`]: an EvoNet backbone that encodes the source views and a
    pixelNeRF-style radiance field conditioned on them.

    Args:
        backbone_config (`EvoNetConfig | dict`, *optional*): the source-view encoder; the feature maps of its
            `out_features` are fused into one map per source view. Defaults to `EvoNetConfig(out_features=[every
            stage])`. To start from a trained backbone (a search run's `models/<hash>/` folder), use
            `EvoNetForNovelViewSynthesis.from_backbone`.
        hidden_size (`int`, defaults to 128): width of the radiance-field MLP and of the fused feature map.
        num_view_layers (`int`, defaults to 2): residual MLP blocks applied per source view, before the mean over
            the views.
        num_pooled_layers (`int`, defaults to 1): residual MLP blocks after the mean, before density and colour.
        num_frequencies (`int`, defaults to 6): frequencies of the positional encoding of the point coordinates.
        num_samples (`int`, defaults to 32): sample points per ray.
        sample_in_inverse_depth (`bool`, defaults to `True`): space the samples evenly in 1 / depth (dense near the
            camera, as forward-facing scenes such as LLFF want) rather than evenly in depth.
        perturb_samples (`bool`, defaults to `True`): in training, jitter each sample uniformly inside its interval
            (NeRF's stratified sampling), so the field is trained at every depth, not only at fixed ones.
        near, far (`float`, *optional*): the sampling range of the ray parameter t (the depth in the target camera for
            rays from `camera_rays` below). None (the default): take `near` / `far` from the inputs, as
            the LLFF datasets give them from the scene's bounds.
        use_source_colors (`bool`, defaults to `True`): also condition on the source pixel colours at the projected
            points (sampled at full resolution), besides the backbone features (IBRNet does so too); the backbone's
            first map is `patch_size` times coarser than the image.
        source_image_mean, source_image_std (`list[float]`, defaults to 0.5 each): the backbone sees
            (source_images - mean) / std; source images come in [0, 1]. Match the backbone's training.
        ray_chunk_size (`int`, defaults to 2048): rays (per batch element) processed at once, bounding the memory
            of rendering whole images.
        initializer_range (`float`, defaults to 0.02): std of the initial weights of the feature projections and the
            radiance field.

    Example:

    ```python
    >>> import evonets
    >>> backbone = evonets.EvoNetConfig(depths=[1, 1, 2, 1], hidden_sizes=[32, 48, 96, 128],
    ...                                 out_features=["stage1", "stage2", "stage3", "stage4"])
    >>> model = evonets.EvoNetForNovelViewSynthesis(evonets.EvoNetViewSynthesisConfig(backbone_config=backbone))
    ```
    """

    model_type = "evonet_view_synthesis"

    hidden_size: int = 128
    num_view_layers: int = 2
    num_pooled_layers: int = 1
    num_frequencies: int = 6
    num_samples: int = 32
    sample_in_inverse_depth: bool = True
    perturb_samples: bool = True
    near: float | None = None
    far: float | None = None
    use_source_colors: bool = True
    source_image_mean: list[float] | tuple[float, ...] = (0.5, 0.5, 0.5)
    source_image_std: list[float] | tuple[float, ...] = (0.5, 0.5, 0.5)
    ray_chunk_size: int = 2048

    def __post_init__(self, **kwargs):
        self.source_image_mean = list(self.source_image_mean)
        self.source_image_std = list(self.source_image_std)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Raise `ValueError` naming the field, the bad value and what is allowed."""
        super().validate_architecture()
        name = type(self).__name__
        for field, minimum in (
            ("hidden_size", 1),
            ("num_view_layers", 0),
            ("num_pooled_layers", 0),
            ("num_frequencies", 0),
            ("num_samples", 2),
            ("ray_chunk_size", 1),
        ):
            value = getattr(self, field)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
                raise ValueError(f"{name}.{field} = {value!r} is invalid: expected an int >= {minimum}.")
        if (self.near is None) != (self.far is None) or (self.near is not None and not 0 < self.near < self.far):
            raise ValueError(
                f"{name}.near = {self.near!r}, far = {self.far!r} are invalid: expected both None (bounds from the "
                "inputs) or 0 < near < far."
            )
        if self.backbone_config.num_channels != 3:
            raise ValueError(
                f"{name}.backbone_config.num_channels = {self.backbone_config.num_channels} is invalid: expected 3 "
                "(source views are RGB photos)."
            )
        for field in ("source_image_mean", "source_image_std"):
            value = getattr(self, field)
            if len(value) != 3:
                raise ValueError(f"{name}.{field} = {value!r} is invalid: expected one value per RGB channel (3).")
        if not all(std > 0 for std in self.source_image_std):
            raise ValueError(f"{name}.source_image_std = {self.source_image_std!r} is invalid: expected values > 0.")


def project_points(
    points: torch.Tensor, poses: torch.Tensor, intrinsics: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    Pinhole projection of world points into S cameras.

    With camera-to-world pose [R | c] and intrinsics K, a world point x has camera coordinates x_cam = R^T (x - c)
    and image coordinates (u, v) = (fx x_cam / z_cam + cx, fy y_cam / z_cam + cy), in pixels, (j + 0.5, i + 0.5)
    being the centre of pixel (row i, column j).

    Args:
        points: (B, P, 3) world coordinates. poses: (B, S, 4, 4) camera-to-world. intrinsics: (B, S, 3, 3).
    Returns:
        pixels (B, S, P, 2) as (u, v), and camera_points (B, S, P, 3), x_cam (z_cam > 0 in front of the camera).
    """
    rotation, centre = poses[..., :3, :3], poses[..., :3, 3]
    camera_points = torch.einsum("bsji,bspj->bspi", rotation, points[:, None] - centre[:, :, None])
    depth = camera_points[..., 2:3]
    # Keeps the division finite on the camera plane; callers mask points with z_cam <= 0 (no image there).
    normalized = camera_points[..., :2] / torch.where(depth.abs() < 1e-6, torch.full_like(depth, 1e-6), depth)
    focal = torch.stack([intrinsics[..., 0, 0], intrinsics[..., 1, 1]], dim=-1)[:, :, None]  # (B, S, 1, 2)
    principal_point = intrinsics[..., :2, 2][:, :, None]
    return normalized * focal + principal_point, camera_points


def positional_encoding(coordinates: torch.Tensor, num_frequencies: int) -> torch.Tensor:
    r"""
    NeRF's positional encoding, applied to each coordinate p:

        gamma(p) = (p, sin(2^0 pi p), cos(2^0 pi p), ..., sin(2^{L-1} pi p), cos(2^{L-1} pi p))

    (..., D) -> (..., D (1 + 2 L)), L = num_frequencies.
    """
    if num_frequencies == 0:
        return coordinates
    frequencies = math.pi * 2.0 ** torch.arange(num_frequencies, dtype=coordinates.dtype, device=coordinates.device)
    angles = (coordinates[..., None] * frequencies).flatten(-2)  # (..., D * L)
    return torch.cat([coordinates, torch.sin(angles), torch.cos(angles)], dim=-1)


def sample_along_rays(
    near: torch.Tensor, far: torch.Tensor, num_samples: int, inverse_depth: bool, perturb: bool, num_rays: int
) -> torch.Tensor:
    r"""
    Ray parameters t_1 < ... < t_N in [near, far], one per interval of N equal intervals of s in [0, 1]:

        s_i = (i + u_i) / N,   u_i = 1/2 (evaluation) or u_i ~ U(0, 1) (stratified training samples)
        t_i = near + s_i (far - near)                                   (evenly in depth)
        t_i = 1 / (1 / near + s_i (1 / far - 1 / near))                 (evenly in inverse depth)

    Args:
        near, far: (B,). Returns (B, num_rays, N).
    """
    batch_size = near.shape[0]
    offsets = (
        torch.rand(batch_size, num_rays, num_samples, dtype=near.dtype, device=near.device)
        if perturb
        else torch.full((batch_size, num_rays, num_samples), 0.5, dtype=near.dtype, device=near.device)
    )
    fractions = (torch.arange(num_samples, dtype=near.dtype, device=near.device) + offsets) / num_samples
    near, far = near[:, None, None], far[:, None, None]
    if inverse_depth:
        return 1.0 / (1.0 / near + fractions * (1.0 / far - 1.0 / near))
    return near + fractions * (far - near)


def volume_render(
    densities: torch.Tensor, colors: torch.Tensor, sample_depths: torch.Tensor, direction_norms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""
    Alpha compositing of N samples along each ray (NeRF, Mildenhall et al., ECCV 2020):

        delta_i = (t_{i+1} - t_i) |d|          (distance to the next sample; delta_N = 1e10, so that the last
                                                 sample absorbs whatever light is left: an opaque background)
        alpha_i = 1 - exp(-sigma_i delta_i)
        T_i     = prod_{j<i} exp(-sigma_j delta_j)   (transmittance: the light reaching sample i)
        w_i     = T_i alpha_i
        rgb     = sum_i w_i c_i,    depth = sum_i w_i t_i

    Args:
        densities: (..., N) sigma_i >= 0. colors: (..., N, 3). sample_depths: (..., N) increasing t_i.
        direction_norms: (...) |d|, the length of each ray's direction vector.
    Returns:
        rgb (..., 3), depth (...), weights (..., N).
    """
    deltas = sample_depths[..., 1:] - sample_depths[..., :-1]
    deltas = torch.cat([deltas, torch.full_like(deltas[..., :1], 1e10)], dim=-1) * direction_norms[..., None]
    optical_depth = densities * deltas
    alphas = 1.0 - torch.exp(-optical_depth)
    # T_i = exp(-sum_{j<i} sigma_j delta_j): an exclusive cumulative sum, shifted rather than computed as
    # cumsum - own term, which loses T_N to rounding next to the 1e10-long last interval.
    accumulated = torch.cumsum(optical_depth[..., :-1], dim=-1)
    transmittance = torch.exp(-torch.cat([torch.zeros_like(accumulated[..., :1]), accumulated], dim=-1))
    weights = transmittance * alphas
    rgb = (weights[..., None] * colors).sum(dim=-2)
    depth = (weights * sample_depths).sum(dim=-1)
    return rgb, depth, weights


class EvoNetSourceViewEncoder(nn.Module):
    r"""
    Source images (B S, 3, H, W) in [0, 1] -> one feature map (B S, D, H_1, W_1), D = hidden_size, at the resolution
    of the backbone's first `out_features` map:

        F_k = backbone((image - mean) / std)_k                          (B S, C_k, H_k, W_k), k over out_features
        M   = sum_k Up(Conv1x1_k(F_k), to H_1 x W_1)                    (B S, D, H_1, W_1)

    Up is a bilinear resize. Bilinear sampling and the 1x1 convolutions are linear, so sampling M at a point equals
    (up to the resize) a linear layer on pixelNeRF's concatenation of the per-scale features sampled there, at a
    fraction of the cost: the projection runs once per map position, not once per sample point and view. The images
    are padded (edge pixels repeated) at the bottom and right to a multiple of the backbone's total stride; the map
    then covers the padded extent (`padded_size`).
    """

    def __init__(self, config: EvoNetViewSynthesisConfig):
        super().__init__()
        self.backbone = EvoNetBackbone(config.backbone_config)
        self.projections = nn.ModuleList(
            nn.Conv2d(channels, config.hidden_size, kernel_size=1) for channels in self.backbone.channels
        )
        backbone = config.backbone_config
        self.stride = backbone.patch_size * 2 ** (backbone.num_stages - 1)
        # Plain floats, not buffers: from_pretrained builds the model on the meta device, and buffers absent from the
        # checkpoint would come back uninitialised.
        self.image_mean = list(config.source_image_mean)
        self.image_std = list(config.source_image_std)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        return height + (-height % self.stride), width + (-width % self.stride)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        padded_height, padded_width = self.padded_size(height, width)
        pixel_values = F.pad(
            (images - images.new_tensor(self.image_mean)[:, None, None])
            / images.new_tensor(self.image_std)[:, None, None],
            (0, padded_width - width, 0, padded_height - height),
            mode="replicate",
        )
        feature_maps = self.backbone(pixel_values, return_dict=True).feature_maps
        size = feature_maps[0].shape[-2:]
        fused = self.projections[0](feature_maps[0])
        for projection, feature_map in zip(self.projections[1:], feature_maps[1:]):
            fused = fused + F.interpolate(projection(feature_map), size=size, mode="bilinear", align_corners=False)
        return fused


class EvoNetRadianceFieldBlock(nn.Module):
    """Residual MLP block (pixelNeRF's ResnetBlockFC): h + W_2 ReLU(W_1 ReLU(h)), (..., D) -> (..., D)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.fc2(F.relu(self.fc1(F.relu(hidden_states))))


class EvoNetRadianceField(nn.Module):
    r"""
    pixelNeRF's conditional radiance field, for P points seen by S source views:

        x_s, d_s = point and ray direction in source camera s's frame (R_s^T (x - c_s), R_s^T d / |d|)
        h_s      = W_in [gamma(x_s), d_s, c_s] + M_s(pi_s(x))      (c_s: source colour at the projection pi_s(x),
                                                                    if use_source_colors; M_s: encoder map)
        h_s      = ViewBlocks(h_s)                                 (num_view_layers residual blocks)
        h        = sum_s v_s h_s / max(sum_s v_s, 1)               (mean over the views that see x: v_s = 1 if x
                                                                    projects inside view s, in front of it)
        sigma, c = softplus(a), sigmoid(b),  (a, b) = W_out ReLU(PooledBlocks(h))

    Shapes: view_inputs (B, S, P, F_in) and sampled features (B, S, P, D) -> densities (B, P), colors (B, P, 3).
    """

    def __init__(self, config: EvoNetViewSynthesisConfig):
        super().__init__()
        coordinate_size = 3 * (1 + 2 * config.num_frequencies)
        self.input_size = coordinate_size + 3 + (3 if config.use_source_colors else 0)
        self.input_projection = nn.Linear(self.input_size, config.hidden_size)
        self.view_blocks = nn.ModuleList(
            EvoNetRadianceFieldBlock(config.hidden_size) for _ in range(config.num_view_layers)
        )
        self.pooled_blocks = nn.ModuleList(
            EvoNetRadianceFieldBlock(config.hidden_size) for _ in range(config.num_pooled_layers)
        )
        self.output = nn.Linear(config.hidden_size, 4)

    def forward(
        self, view_inputs: torch.Tensor, view_features: torch.Tensor, visible: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states = self.input_projection(view_inputs) + view_features  # (B, S, P, D)
        for block in self.view_blocks:
            hidden_states = block(hidden_states)
        visible = visible.to(hidden_states.dtype)[..., None]  # (B, S, P, 1)
        pooled = (hidden_states * visible).sum(dim=1) / visible.sum(dim=1).clamp_min(1.0)  # (B, P, D)
        for block in self.pooled_blocks:
            pooled = block(pooled)
        raw = self.output(F.relu(pooled))  # (B, P, 4)
        return F.softplus(raw[..., 0]), torch.sigmoid(raw[..., 1:])


@dataclasses.dataclass
class NovelViewSynthesisOutput(ModelOutput):
    r"""
    Output of [`EvoNetForNovelViewSynthesis`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): mean squared error of `rgb` to the `labels` colours.
        rgb (`torch.FloatTensor` of shape `(batch_size, num_rays, 3)`): rendered colours in [0, 1].
        depth (`torch.FloatTensor` of shape `(batch_size, num_rays)`): expected ray parameter sum_i w_i t_i (the
            depth in the target camera for rays with unit-z directions).
        weights (`torch.FloatTensor` of shape `(batch_size, num_rays, num_samples)`, *optional*): compositing
            weights w_i, with `output_weights=True`.
        sample_depths (`torch.FloatTensor` of shape `(batch_size, num_rays, num_samples)`, *optional*): the t_i of
            the samples, with `output_weights=True`.
    """

    loss: torch.FloatTensor | None = None
    rgb: torch.FloatTensor | None = None
    depth: torch.FloatTensor | None = None
    weights: torch.FloatTensor | None = None
    sample_depths: torch.FloatTensor | None = None


class EvoNetViewSynthesisPreTrainedModel(EvoNetHeadPreTrainedModel):
    """EvoNet weight init (SSM parameters, layer-scale) for the backbone, the default init (normal weights of std
    `initializer_range`, zero biases) for the projections and the radiance field."""

    config_class = EvoNetViewSynthesisConfig
    base_model_prefix = "view_synthesis"  # the backbone sits inside the source-view encoder
    main_input_name = "source_images"


class EvoNetForNovelViewSynthesis(EvoNetViewSynthesisPreTrainedModel):
    r"""
    Renders target rays from S posed source views: [`EvoNetSourceViewEncoder`] -> projection of N samples per ray
    into every source view -> bilinear sampling (`F.grid_sample`) -> [`EvoNetRadianceField`] -> [`volume_render`].

    For ray r with origin o and direction d, sample i at x = o + t_i d ([`sample_along_rays`]) is projected into
    source view s ([`project_points`]); the encoder map and (with `use_source_colors`) the source image are sampled
    there with `grid_sample(align_corners=False)`, whose normalised coordinates (2 u / W - 1, 2 v / H - 1) are exactly
    our pixel convention. Points outside a view read zeros and do not count in the mean over views.
    """

    def __init__(self, config: EvoNetViewSynthesisConfig):
        super().__init__(config)
        self.encoder = EvoNetSourceViewEncoder(config)
        self.radiance_field = EvoNetRadianceField(config)
        self.post_init()

    @property
    def backbone(self) -> EvoNetBackbone:
        return self.encoder.backbone

    def forward(
        self,
        source_images: torch.Tensor,
        source_poses: torch.Tensor,
        source_intrinsics: torch.Tensor,
        ray_origins: torch.Tensor,
        ray_directions: torch.Tensor,
        near: torch.Tensor | None = None,
        far: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_weights: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> NovelViewSynthesisOutput | tuple:
        r"""
        source_images (`torch.FloatTensor` of shape `(batch_size, num_source_views, 3, height, width)`): RGB in
            [0, 1]. num_source_views >= 1.
        source_poses (`torch.FloatTensor` of shape `(batch_size, num_source_views, 4, 4)`): camera-to-world, OpenCV
            axes (x right, y down, z forward).
        source_intrinsics (`torch.FloatTensor` of shape `(batch_size, num_source_views, 3, 3)`): pinhole matrices
            for the source images' size.
        ray_origins, ray_directions (`torch.FloatTensor` of shape `(batch_size, num_rays, 3)`): target rays in world
            coordinates (`camera_rays` below).
        near, far (`torch.FloatTensor` of shape `(batch_size,)`, *optional*): sampling range of the ray parameter;
            required unless the config sets `near` / `far` (which then take precedence).
        labels (`torch.FloatTensor` of shape `(batch_size, num_rays, 3)`, *optional*): target ray colours in
            [0, 1]; gives `loss`, their mean squared error. `**kwargs` absorbs what `Trainer` passes
            (`num_items_in_batch`).
        output_weights (`bool`): also return the compositing weights and sample depths.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        near, far = self._check_inputs(
            source_images, source_poses, source_intrinsics, ray_origins, ray_directions, near, far, labels
        )
        batch_size, num_views, _, height, width = source_images.shape
        feature_maps = self.encoder(source_images.flatten(0, 1))
        feature_maps = feature_maps.unflatten(0, (batch_size, num_views))  # (B, S, D, H_1, W_1)
        padded_size = self.encoder.padded_size(height, width)

        outputs = [
            self._render_rays(
                source_images,
                feature_maps,
                padded_size,
                source_poses,
                source_intrinsics,
                origins,
                directions,
                near,
                far,
            )
            for origins, directions in zip(
                ray_origins.split(self.config.ray_chunk_size, dim=1),
                ray_directions.split(self.config.ray_chunk_size, dim=1),
            )
        ]
        rgb, depth, weights, sample_depths = (torch.cat(parts, dim=1) for parts in zip(*outputs))

        loss = F.mse_loss(rgb, labels.to(rgb.dtype)) if labels is not None else None
        output = NovelViewSynthesisOutput(
            loss=loss,
            rgb=rgb,
            depth=depth,
            weights=weights if output_weights else None,
            sample_depths=sample_depths if output_weights else None,
        )
        return output if return_dict else output.to_tuple()

    def example_inputs(
        self,
        image_size: int | tuple[int, int],
        batch_size: int = 1,
        num_source_views: int = 2,
        num_rays: int = 64,
        seed: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Keyword inputs of `forward` for a valid random camera batch: what ONNX export traces and latency times.

        `num_source_views` cameras on a 0.1-wide horizontal baseline, all looking down +z (identity rotation, focal
        length max(height, width), principal point at the image centre), see random images of `image_size` (an int
        or (height, width)); the target camera sits at the middle of the baseline and `num_rays` of its rays
        (`camera_rays` below) pass through pixels spread evenly over its image. `near` / `far` are 1 and
        10 (about where the source frusta overlap), left out when the config sets them. Not a scene: for shapes,
        export checks and timing only. Returns float32 CPU tensors with batch `batch_size`.
        """
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        generator = torch.Generator().manual_seed(seed)
        intrinsics = torch.tensor(
            [[max(height, width), 0.0, width / 2], [0.0, max(height, width), height / 2], [0.0, 0.0, 1.0]]
        )
        poses = torch.eye(4).repeat(num_source_views, 1, 1)
        poses[:, 0, 3] = 0.1 * (torch.arange(num_source_views) - (num_source_views - 1) / 2)
        pixels = torch.linspace(0, height * width - 1, num_rays).round().long().numpy()
        origins, directions = camera_rays(torch.eye(4).numpy(), intrinsics.numpy(), height, width, pixels)
        inputs = {
            "source_images": torch.rand(batch_size, num_source_views, 3, height, width, generator=generator),
            "source_poses": poses.expand(batch_size, -1, -1, -1).clone(),
            "source_intrinsics": intrinsics.expand(batch_size, num_source_views, -1, -1).clone(),
            "ray_origins": torch.from_numpy(origins).expand(batch_size, -1, -1).clone(),
            "ray_directions": torch.from_numpy(directions).expand(batch_size, -1, -1).clone(),
        }
        if self.config.near is None:
            inputs["near"] = torch.full((batch_size,), 1.0)
            inputs["far"] = torch.full((batch_size,), 10.0)
        return inputs

    def _render_rays(
        self,
        source_images: torch.Tensor,
        feature_maps: torch.Tensor,
        padded_size: tuple[int, int],
        source_poses: torch.Tensor,
        source_intrinsics: torch.Tensor,
        ray_origins: torch.Tensor,
        ray_directions: torch.Tensor,
        near: torch.Tensor,
        far: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One chunk of R rays: (B, R, 3) origins / directions -> rgb (B, R, 3), depth (B, R), weights and sample
        depths (B, R, N)."""
        config = self.config
        batch_size, num_rays, _ = ray_origins.shape
        num_views, _, height, width = source_images.shape[1:]
        sample_depths = sample_along_rays(
            near,
            far,
            config.num_samples,
            config.sample_in_inverse_depth,
            perturb=config.perturb_samples and self.training,
            num_rays=num_rays,
        )  # (B, R, N)
        points = ray_origins[:, :, None] + sample_depths[..., None] * ray_directions[:, :, None]  # (B, R, N, 3)
        pixels, camera_points = project_points(points.flatten(1, 2), source_poses, source_intrinsics)  # (B, S, P, .)

        padded_height, padded_width = padded_size
        grid = 2.0 * pixels / pixels.new_tensor([padded_width, padded_height]) - 1.0
        view_features = F.grid_sample(
            feature_maps.flatten(0, 1), grid.flatten(0, 1)[:, :, None], mode="bilinear", align_corners=False
        )  # (B S, D, P, 1)
        view_features = view_features.squeeze(-1).unflatten(0, (batch_size, num_views)).transpose(2, 3)

        directions = ray_directions / ray_directions.norm(dim=-1, keepdim=True)
        view_directions = torch.einsum("bsji,brj->bsri", source_poses[..., :3, :3], directions)  # (B, S, R, 3)
        view_directions = view_directions[:, :, :, None].expand(-1, -1, -1, config.num_samples, -1).flatten(2, 3)
        inputs = [positional_encoding(camera_points, config.num_frequencies), view_directions]
        image_grid = 2.0 * pixels / pixels.new_tensor([width, height]) - 1.0
        if config.use_source_colors:
            colors = F.grid_sample(
                source_images.flatten(0, 1), image_grid.flatten(0, 1)[:, :, None], mode="bilinear", align_corners=False
            )  # (B S, 3, P, 1)
            inputs.append(colors.squeeze(-1).unflatten(0, (batch_size, num_views)).transpose(2, 3))
        visible = (camera_points[..., 2] > 0) & (image_grid.abs() <= 1.0).all(dim=-1)  # (B, S, P)

        densities, colors = self.radiance_field(torch.cat(inputs, dim=-1), view_features, visible)
        densities = densities.view(batch_size, num_rays, config.num_samples)
        colors = colors.view(batch_size, num_rays, config.num_samples, 3)
        rgb, depth, weights = volume_render(densities, colors, sample_depths, ray_directions.norm(dim=-1))
        return rgb, depth, weights, sample_depths

    def _check_inputs(
        self, source_images, source_poses, source_intrinsics, ray_origins, ray_directions, near, far, labels
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raise `ValueError` for inputs of the wrong shape; return the (B,) near / far to sample between."""
        if source_images.ndim != 5 or source_images.shape[2] != 3:
            raise ValueError(
                f"source_images of shape {tuple(source_images.shape)} is invalid: expected (batch, num_source_views, "
                "3, height, width)."
            )
        batch_size, num_views = source_images.shape[:2]
        if num_views == 0:
            raise ValueError("source_images has no source view (num_source_views = 0): target rays need at least one.")
        if ray_origins.ndim != 3:
            raise ValueError(
                f"ray_origins of shape {tuple(ray_origins.shape)} is invalid: expected (batch, num_rays, 3)."
            )
        num_rays = ray_origins.shape[1]
        expected = {
            "source_poses": (source_poses, (batch_size, num_views, 4, 4)),
            "source_intrinsics": (source_intrinsics, (batch_size, num_views, 3, 3)),
            "ray_origins": (ray_origins, (batch_size, num_rays, 3)),
            "ray_directions": (ray_directions, (batch_size, num_rays, 3)),
        }
        if labels is not None:
            expected["labels"] = (labels, (batch_size, num_rays, 3))
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(
                    f"{name} of shape {tuple(tensor.shape)} is invalid: expected {shape} to match source_images "
                    f"{tuple(source_images.shape)} (batch, num_source_views, ...) and ray_origins (batch, num_rays, 3)."
                )
        if self.config.near is not None:
            near = source_images.new_full((batch_size,), self.config.near)
            far = source_images.new_full((batch_size,), self.config.far)
        elif near is None or far is None:
            raise ValueError(
                "near and far are required (shape (batch,)): the config sets no near / far sampling range. Pass the "
                "scene's bounds, or set EvoNetViewSynthesisConfig.near and .far."
            )
        near = torch.as_tensor(near, dtype=source_images.dtype, device=source_images.device).expand(batch_size)
        far = torch.as_tensor(far, dtype=source_images.dtype, device=source_images.device).expand(batch_size)
        if not bool(((near > 0) & (far > near)).all()):
            raise ValueError(f"near = {near.tolist()}, far = {far.tolist()} are invalid: expected 0 < near < far.")
        return near, far


__all__ = [
    "EvoNetForNovelViewSynthesis",
    "EvoNetRadianceField",
    "EvoNetSourceViewEncoder",
    "EvoNetViewSynthesisConfig",
    "EvoNetViewSynthesisPreTrainedModel",
    "NovelViewSynthesisOutput",
    "camera_rays",
    "positional_encoding",
    "project_points",
    "sample_along_rays",
    "volume_render",
]
