"""CA-DDKD: cross-architecture dual-domain knowledge distillation, as loss functions and one `nn.Module`.

For a sampled subnet with logits `s`, chosen stage maps `F_s` (B, C_s, H_s, W_s) and labels `y`, and a teacher with
logits `t` and stage maps `F_t` (B, C_t, H_t, W_t):

    L = w_ce  * CE(s, y)
      + w_kd  * T^2 KL(softmax(t / T) || softmax(s / T))                            logit KD
      + w_ip  * T'^2 KL(softmax(s_L / T') || softmax(s / T'))                         in-place KD (s_L: largest subnet)
      + sum over stage pairs of
          w_sp * mean((N(P(F_s)) - N(F_t))^2)                                          spatial
        + w_fr * (w_lo * E_low(P(F_s), F_t) + w_hi * E_high(P(F_s), F_t))              frequency

`P` is a `FeatureProjector` (1x1 conv from the stage's largest width to C_t, plus a resize to (H_t, W_t)); `N`
normalises every position over channels (parameter-free LayerNorm), so the alignment ignores scale. The frequency
term transforms the normalised maps with an orthonormal 2-D DCT-II (or FFT) per channel and compares them in a low
band (radial frequency < cutoff, DC included) and a high band, each band's squared error divided by the teacher's
energy in that band (`band_normalization="energy"`): the weak high band counts as much as the strong low band.

Why bands: by Parseval, an *unweighted* sum over all coefficients of an orthonormal transform is just the spatial
MSE again; the EvoNAS code's "frequency" term zeroes the DC coefficient only, which equals the MSE of the
mean-centred maps (see `dc_removed_loss`) and is blind to a difference in the mean. Splitting and re-weighting the
bands is what makes the frequency domain add information.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import LossConfig

# Logit terms --------------------------------------------------------------------------------------------------


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over the batch (Hinton et al.)."""
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * temperature**2


# Spatial term -------------------------------------------------------------------------------------------------


def normalize_channels(features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, H, W) -> the same, standardised over C at every position (LayerNorm without affine)."""
    features = features.float()
    mean = features.mean(dim=1, keepdim=True)
    var = features.var(dim=1, keepdim=True, unbiased=False)
    return (features - mean) * torch.rsqrt(var + eps)


def spatial_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Normalised feature regression: MSE of the channel-normalised maps; both (B, C, H, W) of equal shape."""
    _check_same_shape(student, teacher)
    return F.mse_loss(normalize_channels(student), normalize_channels(teacher))


# Frequency term -----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _dct_matrix_cpu(size: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (size, size): X = D x, x = D^T X."""
    n = torch.arange(size, dtype=torch.float64)
    k = n[:, None]
    matrix = torch.cos(math.pi * (2 * n[None, :] + 1) * k / (2 * size)) * math.sqrt(2.0 / size)
    matrix[0] /= math.sqrt(2.0)
    return matrix.float()


def dct_matrix(size: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return _dct_matrix_cpu(size).to(device=device, dtype=dtype)


def dct2(features: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two dims, as two matrix products: D_H @ x @ D_W^T."""
    height, width = features.shape[-2:]
    d_h = dct_matrix(height, features.device, features.dtype)
    d_w = dct_matrix(width, features.device, features.dtype)
    return d_h @ features @ d_w.T


def idct2(coefficients: torch.Tensor) -> torch.Tensor:
    """Inverse of `dct2`: D_H^T @ X @ D_W."""
    height, width = coefficients.shape[-2:]
    d_h = dct_matrix(height, coefficients.device, coefficients.dtype)
    d_w = dct_matrix(width, coefficients.device, coefficients.dtype)
    return d_h.T @ coefficients @ d_w


def spectrum(features: torch.Tensor, transform: str) -> torch.Tensor:
    """(B, C, H, W) -> coefficients: real (B, C, H, W) for `dct`, complex (B, C, H, W // 2 + 1) for `fft`."""
    if transform == "dct":
        return dct2(features)
    if transform == "fft":
        return torch.fft.rfft2(features, norm="ortho")
    raise ValueError(f"transform = {transform!r} is invalid: expected 'dct' or 'fft'.")


def radial_frequency(height: int, width: int, transform: str) -> torch.Tensor:
    """Per coefficient of `spectrum`, sqrt(fy^2 + fx^2) with each axis frequency in [0, 1] (1 = Nyquist).

    DCT-II index u has frequency u / (2H) cycles per sample, i.e. u / H of Nyquist; FFT bins use |fftfreq| / 0.5."""
    if transform == "dct":
        fy = torch.arange(height, dtype=torch.float32) / height
        fx = torch.arange(width, dtype=torch.float32) / width
    elif transform == "fft":
        fy = torch.fft.fftfreq(height).abs() / 0.5
        fx = torch.fft.rfftfreq(width) / 0.5
    else:
        raise ValueError(f"transform = {transform!r} is invalid: expected 'dct' or 'fft'.")
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def band_masks(height: int, width: int, transform: str, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (low, high) masks over the coefficients of `spectrum`; low = radial frequency < cutoff (DC is low)."""
    low = radial_frequency(height, width, transform) < cutoff
    return low, ~low


def band_losses(
    student: torch.Tensor,
    teacher: torch.Tensor,
    transform: str = "dct",
    cutoff: float = 0.5,
    normalization: str = "energy",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) band errors between two (B, C, H, W) maps, compared as given (no channel normalisation).

    `energy`: per sample, the band's summed squared error over the teacher's summed energy in the band, then the
    batch mean. `none`: the mean squared error over the band's coefficients. A band with no coefficients (a 1x1 map
    has no high band) gives 0."""
    _check_same_shape(student, teacher)
    if normalization not in ("energy", "none"):
        raise ValueError(f"normalization = {normalization!r} is invalid: expected 'energy' or 'none'.")
    student_coefficients = spectrum(student.float(), transform)
    teacher_coefficients = spectrum(teacher.float(), transform)
    error = (student_coefficients - teacher_coefficients).abs() ** 2  # (B, C, H, W')
    energy = teacher_coefficients.abs() ** 2
    masks = band_masks(*student.shape[-2:], transform, cutoff)
    total_energy = energy.sum(dim=(1, 2, 3))
    results = []
    for mask in masks:
        mask = mask.to(error.device)
        if not bool(mask.any()):
            results.append(error.sum() * 0.0)
            continue
        band_error = (error * mask).sum(dim=(1, 2, 3))
        if normalization == "energy":
            band_energy = (energy * mask).sum(dim=(1, 2, 3))
            results.append((band_error / (band_energy + 1e-6 * total_energy + 1e-12)).mean())
        else:
            results.append(band_error.mean() / (mask.sum() * student.shape[1]))
    return results[0], results[1]


def dc_removed_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The EvoNAS code's "frequency" term, for comparison only: DCT, zero the DC coefficient, compare. By Parseval
    this is the MSE of the spatially mean-centred maps; it cannot see a difference in the mean."""
    error = dct2(student.float()) - dct2(teacher.float())
    error[..., 0, 0] = 0.0
    return (error**2).mean()


def _check_same_shape(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.ndim != 4 or student.shape != teacher.shape:
        raise ValueError(
            f"feature maps of shapes {tuple(student.shape)} and {tuple(teacher.shape)} cannot be aligned: expected "
            "two (B, C, H, W) maps of equal shape (project the student first)."
        )


# Projector ----------------------------------------------------------------------------------------------------


class FeatureProjector(nn.Module):
    """1x1 conv from a student stage (any width up to `in_channels`) to the teacher's width, then a bilinear resize to
    the teacher's grid. Elastic, Once-for-All style: a subnet of width c uses the first c input channels of the one
    max-width kernel, `weight[:, :c]`, so every subnet trains the same projector. (1x1 conv and bilinear resize are
    both linear and commute; the projection runs at the smaller of the two grids.)"""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """features: (B, c, h, w) with c <= in_channels -> (B, out_channels, *size)."""
        channels = features.shape[1]
        if features.ndim != 4 or channels > self.in_channels:
            raise ValueError(
                f"FeatureProjector got features of shape {tuple(features.shape)}: expected (B, c, h, w) with "
                f"c <= {self.in_channels} (the stage's largest width)."
            )
        size = tuple(size)
        features = features.to(self.proj.weight.dtype)  # half-precision features from an autocast forward
        weight = self.proj.weight[:, :channels]
        if features.shape[-2] * features.shape[-1] > size[0] * size[1]:
            return F.conv2d(_resize(features, size), weight, self.proj.bias)
        return _resize(F.conv2d(features, weight, self.proj.bias), size)

    def extra_repr(self) -> str:
        return f"in_channels<={self.in_channels}, out_channels={self.out_channels}"


def _resize(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(features.shape[-2:]) == size:
        return features
    shrinking = features.shape[-2] > size[0] or features.shape[-1] > size[1]
    return F.interpolate(features, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


# The combined loss --------------------------------------------------------------------------------------------


@dataclass
class TeacherTargets:
    """What the teacher (or the largest subnet, for in-place distillation) gives a student: logits and feature maps
    (already in teacher space), all detached."""

    logits: torch.Tensor | None = None
    features: list[torch.Tensor] = field(default_factory=list)


@dataclass
class SubnetLoss:
    """The weighted total, each term's unweighted value (detached floats), and the subnet's projected features."""

    total: torch.Tensor
    terms: dict[str, float]
    projected: list[torch.Tensor]


class DistillationLoss(nn.Module):
    """CA-DDKD for one sampled subnet. Holds the feature projectors (trainable, one per aligned stage pair).

    Args:
        config: the `LossConfig` (weights, temperatures, bands).
        student_channels: per aligned pair, the largest width of the student stage.
        teacher_channels: per aligned pair, the teacher's channels; None without a teacher (no feature terms).
    """

    def __init__(self, config: LossConfig, student_channels: list[int], teacher_channels: list[int] | None):
        super().__init__()
        self.config = config
        use_features = teacher_channels is not None and (config.spatial_weight > 0 or config.frequency_weight > 0)
        if use_features and len(student_channels) != len(teacher_channels):
            raise ValueError(
                f"{len(student_channels)} student stages cannot pair with {len(teacher_channels)} teacher stages."
            )
        self.projectors = nn.ModuleList(
            FeatureProjector(cs, ct) for cs, ct in zip(student_channels, teacher_channels or []) if use_features
        )

    @property
    def uses_features(self) -> bool:
        return len(self.projectors) > 0

    def forward(
        self,
        logits: torch.Tensor,
        stage_features: list[torch.Tensor],
        labels: torch.Tensor | None,
        role: str,
        teacher: TeacherTargets | None = None,
        inplace: TeacherTargets | None = None,
    ) -> SubnetLoss:
        """Loss of one subnet. `role` is "largest", "smallest" or "random"; `stage_features` the subnet's chosen
        stage maps, `teacher` the external teacher's targets, `inplace` the largest subnet's (None for the largest)."""
        config = self.config
        is_largest = role == "largest"
        total = logits.new_zeros((), dtype=torch.float32)
        terms: dict[str, float] = {}

        def add(name: str, weight: float, value: torch.Tensor) -> None:
            nonlocal total
            total = total + weight * value
            terms[name] = float(value.detach())

        if config.ce_weight > 0 and labels is not None and (config.ce_for == "all" or is_largest):
            add("ce", config.ce_weight, F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing))
        teacher_applies = teacher is not None and (config.teacher_terms_for == "all" or is_largest)
        if teacher_applies and config.kd_weight > 0 and teacher.logits is not None:
            add("kd", config.kd_weight, kd_loss(logits, teacher.logits, config.kd_temperature))
        if inplace is not None and not is_largest and config.inplace_kd_weight > 0 and inplace.logits is not None:
            add("inplace_kd", config.inplace_kd_weight, kd_loss(logits, inplace.logits, config.inplace_kd_temperature))

        projected = []
        # Projected features are needed for the teacher terms, and (from every subnet) for in-place features.
        needs_projection = (
            self.uses_features and teacher is not None and (teacher_applies or config.inplace_feature_weight > 0)
        )
        if needs_projection:
            projected = [
                projector(features, target.shape[-2:])
                for projector, features, target in zip(self.projectors, stage_features, teacher.features)
            ]
        if teacher_applies and projected:
            if config.spatial_weight > 0:
                add(
                    "spatial",
                    config.spatial_weight,
                    _mean(spatial_loss(p, t) for p, t in zip(projected, teacher.features)),
                )
            if config.frequency_weight > 0:
                lows, highs = zip(
                    *(
                        band_losses(
                            normalize_channels(p),
                            normalize_channels(t),
                            config.frequency_transform,
                            config.frequency_cutoff,
                            config.band_normalization,
                        )
                        for p, t in zip(projected, teacher.features)
                    )
                )
                low, high = _mean(lows), _mean(highs)
                add("freq", config.frequency_weight, config.low_band_weight * low + config.high_band_weight * high)
                terms["freq_low"], terms["freq_high"] = float(low.detach()), float(high.detach())
        if (
            inplace is not None
            and not is_largest
            and config.inplace_feature_weight > 0
            and projected
            and inplace.features
        ):
            add(
                "inplace_feature",
                config.inplace_feature_weight,
                _mean(spatial_loss(p, t) for p, t in zip(projected, inplace.features)),
            )
        return SubnetLoss(total=total, terms=terms, projected=projected)


def _mean(values) -> torch.Tensor:
    values = list(values)
    return torch.stack(values).mean()


__all__ = [
    "DistillationLoss",
    "FeatureProjector",
    "SubnetLoss",
    "TeacherTargets",
    "band_losses",
    "band_masks",
    "dc_removed_loss",
    "dct2",
    "dct_matrix",
    "idct2",
    "kd_loss",
    "normalize_channels",
    "radial_frequency",
    "spatial_loss",
    "spectrum",
]
