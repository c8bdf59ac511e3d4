"""RGB-D data for the depth head: sensor-format decoding, frame loading, crop / flip dataset, collator, metrics.

Depth PNGs are single-channel uint16; each sensor format stores metres differently (`DEPTH_FORMATS`). Everything
here returns depth as float32 metres with 0 marking a pixel without depth, which `EvoNetForDepthEstimation`'s loss
and the metrics below skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from evonets.data.augmentation import SeededAugmentation
from evonets.data.paths import shared_data_dir
from evonets.models.image_processing_evonet import EvoNetImageProcessor


def _decode_nyu(raw: np.ndarray) -> np.ndarray:
    return raw.astype(np.float32) / 1000.0


def _decode_tum(raw: np.ndarray) -> np.ndarray:
    return raw.astype(np.float32) / 5000.0


def _decode_sun(raw: np.ndarray) -> np.ndarray:
    # The SUN RGB-D toolbox stores millimetres rotated right by 3 bits within 16: undo the rotation first.
    value = raw.astype(np.uint32)
    millimetres = ((value >> 3) | (value << 13)) & 0xFFFF
    return millimetres.astype(np.float32) / 1000.0


# uint16 PNG value v -> metres; v = 0 stays 0 (no depth) in every format.
DEPTH_FORMATS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "nyu": _decode_nyu,  # NYU-Depth v2: millimetres
    "tum": _decode_tum,  # TUM RGB-D: v / 5000
    "sun": _decode_sun,  # SUN RGB-D: ((v >> 3) | (v << 13)) & 0xFFFF millimetres
}


def decode_depth(raw: np.ndarray, depth_format: str) -> np.ndarray:
    """A raw uint16 depth map (H, W) in `depth_format` -> float32 metres (H, W), 0 where the sensor has no depth."""
    if depth_format not in DEPTH_FORMATS:
        raise ValueError(f"depth_format = {depth_format!r} is unknown: expected one of {sorted(DEPTH_FORMATS)}.")
    if raw.ndim != 2 or raw.dtype != np.uint16:
        raise ValueError(
            f"raw depth of shape {raw.shape} and dtype {raw.dtype} is invalid: expected a single-channel uint16 "
            "map (height, width)."
        )
    return DEPTH_FORMATS[depth_format](raw)


@dataclass
class RGBDFrame:
    """One RGB image with its depth: `image` RGB (W x H), `depth` float32 (H, W) metres, 0 = invalid."""

    name: str
    image: Image.Image
    depth: np.ndarray
    depth_format: str

    @property
    def valid_fraction(self) -> float:
        return float((self.depth > 0).mean())


def load_rgbd_frame(
    image_path: str | os.PathLike, depth_path: str | os.PathLike | None, depth_format: str, name: str | None = None
) -> RGBDFrame:
    """Read an RGB image and its 16-bit depth PNG, decoded from `depth_format` (one of `DEPTH_FORMATS`) to metres.

    Raises `ValueError` for an image without a depth map, a depth map that is not single-channel 16-bit, a depth map
    whose size differs from the image's, an unknown format, or a depth map without any valid pixel.
    """
    image_path = Path(image_path)
    if depth_format not in DEPTH_FORMATS:
        raise ValueError(f"depth_format = {depth_format!r} is unknown: expected one of {sorted(DEPTH_FORMATS)}.")
    if not image_path.is_file():
        raise ValueError(f"image {str(image_path)!r} does not exist.")
    if depth_path is None or not Path(depth_path).is_file():
        reason = "none given" if depth_path is None else f"{str(depth_path)!r} does not exist"
        raise ValueError(
            f"image {str(image_path)!r} has no depth map ({reason}): every training or evaluation image needs one."
        )
    image = Image.open(image_path).convert("RGB")
    with Image.open(depth_path) as depth_image:
        if depth_image.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise ValueError(
                f"depth map {str(depth_path)!r} has PIL mode {depth_image.mode!r}: expected a single-channel 16-bit PNG."
            )
        raw = np.array(depth_image)
    if raw.dtype != np.uint16:  # mode "I" (int32) holding 16-bit values
        if raw.min() < 0 or raw.max() > np.iinfo(np.uint16).max:
            raise ValueError(f"depth map {str(depth_path)!r} holds values outside uint16: not a 16-bit depth PNG.")
        raw = raw.astype(np.uint16)
    if raw.shape != (image.height, image.width):
        raise ValueError(
            f"depth map {str(depth_path)!r} is {raw.shape[1]}x{raw.shape[0]} but its image {str(image_path)!r} is "
            f"{image.width}x{image.height} (width x height): they must be registered pixel to pixel."
        )
    depth = decode_depth(raw, depth_format)
    if not (depth > 0).any():
        raise ValueError(f"depth map {str(depth_path)!r} has no valid pixel (all 0): nothing to train or score on.")
    return RGBDFrame(name=name or image_path.stem, image=image, depth=depth, depth_format=depth_format)


def load_rgbd_sample(data_dir: str | os.PathLike | None = None) -> list[RGBDFrame]:
    """The real RGB-D frames of `<shared data>/rgbd_sample`, one per sensor: NYU-Depth v2 (160x120), TUM RGB-D and
    SUN RGB-D (640x480), in that order, named "nyu", "tum" and "sun"."""
    folder = Path(data_dir) if data_dir is not None else shared_data_dir() / "rgbd_sample"
    nyu_images = sorted((folder / "nyu_fixture" / "images").glob("*.jpg"))
    if not nyu_images:
        raise ValueError(f"{str(folder)!r} has no NYU frame in nyu_fixture/images: is it the rgbd_sample folder?")
    nyu = nyu_images[0]
    return [
        load_rgbd_frame(nyu, folder / "nyu_fixture" / "annotations" / f"{nyu.stem}.png", "nyu", name="nyu"),
        load_rgbd_frame(folder / "TUM_color.png", folder / "TUM_depth.png", "tum", name="tum"),
        load_rgbd_frame(folder / "SUN_color.jpg", folder / "SUN_depth.png", "sun", name="sun"),
    ]


def resize_frame(frame: RGBDFrame, height: int, width: int) -> RGBDFrame:
    """Resize image (bicubic) and depth (nearest: averaging would invent depths between surfaces and mix valid
    pixels with invalid ones) to height x width."""
    image = frame.image.resize((width, height), Image.Resampling.BICUBIC)
    depth = np.array(Image.fromarray(frame.depth.astype(np.float32)).resize((width, height), Image.Resampling.NEAREST))
    return RGBDFrame(name=frame.name, image=image, depth=depth, depth_format=frame.depth_format)


def column_mask(width: int, columns: tuple[float, float]) -> np.ndarray:
    """Boolean (width,) mask of the columns in [columns[0] * width, columns[1] * width)."""
    start, stop = (round(fraction * width) for fraction in columns)
    mask = np.zeros(width, dtype=bool)
    mask[start:stop] = True
    return mask


class DepthFramesDataset(SeededAugmentation, torch.utils.data.Dataset):
    r"""
    Items `{"pixel_values": (3, h, w) float, "labels": (h, w) float metres, 0 = invalid}` from RGB-D frames, whose
    labels come only from the columns `columns` (fractions of the width) of each frame, e.g. (0, 0.75) for the left
    three quarters and (0.75, 1) for the right quarter.

    - `crop_size=None` (evaluation): item i is the whole frame i; labels outside `columns` are set to 0, so the
      model sees the whole image and is scored on the region only.
    - `crop_size=(h, w)` (training): `num_samples` items, each a random h x w crop lying inside `columns` of a
      random frame (a crop as large as the region is the whole region), mirrored left-right with probability 1/2 if
      `horizontal_flip`, and with `color_jitter = j > 0` photometrically perturbed: every channel of the
      normalised image is multiplied by a factor drawn from [1 - j, 1 + j], then the image is shifted by one offset
      drawn from [-j, j] (contrast, colour balance and brightness). Crops with less than `min_valid_fraction` valid
      pixels are redrawn (up to 20 times, then the best draw is kept). With `scale_range = (s_min, s_max)`, each
      crop is first cut at a random scale s in [s_min, s_max] (s * h x s * w, still inside `columns`) and then
      resized to h x w (image bilinear, depth nearest so that no depth is invented between surfaces and invalid
      pixels stay invalid): a zoom that keeps every pixel's metric depth, as a longer or shorter lens would.

    Images are normalised once per frame by `processor` (default `EvoNetImageProcessor(do_resize=False)`).
    """

    def __init__(
        self,
        frames: list[RGBDFrame],
        columns: tuple[float, float] = (0.0, 1.0),
        crop_size: tuple[int, int] | None = None,
        num_samples: int | None = None,
        horizontal_flip: bool = False,
        color_jitter: float = 0.0,
        min_valid_fraction: float = 0.2,
        scale_range: tuple[float, float] | None = None,
        processor: EvoNetImageProcessor | None = None,
        seed: int = 0,
    ):
        if not frames:
            raise ValueError("frames is empty: give at least one RGBDFrame.")
        if not 0.0 <= columns[0] < columns[1] <= 1.0:
            raise ValueError(f"columns = {columns!r} is invalid: expected (start, stop) with 0 <= start < stop <= 1.")
        processor = processor or EvoNetImageProcessor(do_resize=False)
        self.pixel_values = [processor(frame.image, return_tensors="pt")["pixel_values"][0] for frame in frames]
        self.depths = []
        self.regions = []  # (first column, last column + 1) of the labelled region per frame
        for frame in frames:
            mask = column_mask(frame.depth.shape[1], columns)
            self.depths.append(torch.from_numpy(np.where(mask[None, :], frame.depth, 0.0).astype(np.float32)))
            columns_in = np.flatnonzero(mask)
            self.regions.append((int(columns_in[0]), int(columns_in[-1]) + 1))
        if crop_size is not None:
            for frame, (start, stop) in zip(frames, self.regions):
                if crop_size[0] > frame.depth.shape[0] or crop_size[1] > stop - start:
                    raise ValueError(
                        f"crop_size = {crop_size} does not fit frame {frame.name!r}: its labelled region is "
                        f"{frame.depth.shape[0]}x{stop - start} (height x width)."
                    )
            if num_samples is None or num_samples < 1:
                raise ValueError(f"num_samples = {num_samples!r} is invalid: random crops need a positive int.")
        if scale_range is not None and (crop_size is None or not 0.0 < scale_range[0] <= scale_range[1] <= 1.0):
            raise ValueError(
                f"scale_range = {scale_range!r} is invalid: expected (min, max) with 0 < min <= max <= 1, together "
                "with a crop_size."
            )
        self.scale_range = scale_range
        self.crop_size = crop_size
        self.num_samples = num_samples if crop_size is not None else len(frames)
        if not 0.0 <= color_jitter < 1.0:
            raise ValueError(f"color_jitter = {color_jitter!r} is invalid: expected a float in [0, 1).")
        self.horizontal_flip = horizontal_flip
        self.color_jitter = color_jitter
        self.min_valid_fraction = min_valid_fraction
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} is out of range for {self.num_samples} items.")
        if self.crop_size is None:
            return {"pixel_values": self.pixel_values[index], "labels": self.depths[index]}
        return self._random_crop(self.item_rng(index % self.num_samples))

    def _random_crop(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        output_size = self.crop_size
        crop_height, crop_width = output_size
        if self.scale_range is not None:
            scale = float(rng.uniform(*self.scale_range))
            crop_height, crop_width = max(1, round(scale * crop_height)), max(1, round(scale * crop_width))
        frame = int(rng.integers(len(self.depths)))
        depth = self.depths[frame]
        start, stop = self.regions[frame]
        best = None
        for _ in range(20):
            top = int(rng.integers(depth.shape[0] - crop_height + 1))
            left = int(rng.integers(start, stop - crop_width + 1))
            valid_fraction = float((depth[top : top + crop_height, left : left + crop_width] > 0).float().mean())
            if best is None or valid_fraction > best[0]:
                best = (valid_fraction, top, left)
            if valid_fraction >= self.min_valid_fraction:
                break
        _, top, left = best
        pixel_values = self.pixel_values[frame][:, top : top + crop_height, left : left + crop_width]
        labels = depth[top : top + crop_height, left : left + crop_width]
        if labels.shape != output_size:
            pixel_values = F.interpolate(pixel_values[None], size=output_size, mode="bilinear", align_corners=False)[0]
            labels = F.interpolate(labels[None, None], size=output_size, mode="nearest-exact")[0, 0]
        if self.horizontal_flip and rng.random() < 0.5:
            pixel_values, labels = pixel_values.flip(-1), labels.flip(-1)
        if self.color_jitter > 0:
            jitter = self.color_jitter
            gain = torch.from_numpy(rng.uniform(1 - jitter, 1 + jitter, (pixel_values.shape[0], 1, 1)))
            pixel_values = pixel_values * gain.float() + float(rng.uniform(-jitter, jitter))
        return {"pixel_values": pixel_values, "labels": labels}


def collate_depth(features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch items of possibly different sizes for `Trainer`: pad each to the largest height and width at the
    bottom / right, `pixel_values` with 0 and `labels` with 0 (invalid: padding is never scored).

    Returns `pixel_values` (B, 3, H, W) and `labels` (B, H, W).
    """
    height = max(feature["pixel_values"].shape[-2] for feature in features)
    width = max(feature["pixel_values"].shape[-1] for feature in features)
    pixel_values = torch.zeros(len(features), features[0]["pixel_values"].shape[0], height, width)
    labels = torch.zeros(len(features), height, width)
    for index, feature in enumerate(features):
        if feature["labels"].shape != feature["pixel_values"].shape[-2:]:
            raise ValueError(
                f"labels of shape {tuple(feature['labels'].shape)} do not match pixel_values of shape "
                f"{tuple(feature['pixel_values'].shape)} in item {index}: depth and image must have the same size."
            )
        h, w = feature["labels"].shape
        pixel_values[index, :, :h, :w] = feature["pixel_values"]
        labels[index, :h, :w] = feature["labels"]
    return {"pixel_values": pixel_values, "labels": labels}


def depth_metrics(predicted_depth: np.ndarray, target_depth: np.ndarray) -> dict[str, float]:
    r"""
    Standard depth metrics of one image over its valid pixels V = {p : target_p > 0}, with prediction y and
    ground truth y*, both in metres:

        abs_rel = mean_V |y - y*| / y*
        rmse    = sqrt(mean_V (y - y*)^2)                 (metres)
        delta1  = fraction of V with max(y / y*, y* / y) < 1.25

    Raises `ValueError` if the target has no valid pixel or the shapes differ.
    """
    predicted_depth, target_depth = np.asarray(predicted_depth, np.float64), np.asarray(target_depth, np.float64)
    if predicted_depth.shape != target_depth.shape:
        raise ValueError(
            f"predicted depth of shape {predicted_depth.shape} and target of shape {target_depth.shape} differ."
        )
    valid = target_depth > 0
    if not valid.any():
        raise ValueError("the target depth map has no valid pixel (depth > 0): nothing to score.")
    predicted, target = predicted_depth[valid], target_depth[valid]
    ratio = np.maximum(predicted / target, target / np.maximum(predicted, 1e-12))
    return {
        "abs_rel": float(np.mean(np.abs(predicted - target) / target)),
        "rmse": float(np.sqrt(np.mean((predicted - target) ** 2))),
        "delta1": float(np.mean(ratio < 1.25)),
    }


def compute_depth_metrics(eval_prediction) -> dict[str, float]:
    """`compute_metrics` for `Trainer`: `depth_metrics` per image, averaged over the images that have valid pixels.

    Predictions and labels are (N, H, W); pixels with label <= 0 are skipped (0 = no depth, and Trainer pads images
    of different sizes with -100).
    """
    predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    per_image = [depth_metrics(p, t) for p, t in zip(predictions, labels) if (t > 0).any()]
    if not per_image:
        raise ValueError("no evaluation image has a valid depth pixel: nothing to score.")
    return {name: float(np.mean([metrics[name] for metrics in per_image])) for name in per_image[0]}


__all__ = [
    "DEPTH_FORMATS",
    "DepthFramesDataset",
    "RGBDFrame",
    "collate_depth",
    "column_mask",
    "compute_depth_metrics",
    "decode_depth",
    "depth_metrics",
    "load_rgbd_frame",
    "load_rgbd_sample",
    "resize_frame",
]
