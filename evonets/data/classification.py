"""Training data through `datasets`: the sources, the explicit train/validation split, up-front checks, transforms.

Sources (`DataConfig.source`):

- `digits`: scikit-learn's bundled real handwritten digits (`evonets.data.digits.load_digits_dataset`), fixed split.
- `imagefolder`: `<path>/<class>/<image>` (one split; validation is held out) or `<path>/<split>/<class>/<image>`.
- `load_from_disk`: a `DatasetDict` (or a single `Dataset`) saved with `save_to_disk`.
- `hub`: `datasets.load_dataset(path, name)` (needs internet).

`load_data` returns only the train and validation splits: the test split is never handed to training or search. It
checks, before any training starts, that the path exists, the columns exist, labels are class indices in range with
the same names in both splits, and that a spread-out sample of images (`check_samples`) decodes and has a usable
mode and shape, raising `ValueError` that names the split, the row and what is wrong.

Images become `pixel_values` lazily (`Dataset.with_transform`) through an `EvoNetImageProcessor` (resize to
`image_size`, rescale, normalise): the same processor is saved next to the supernet, so search and inference see
the same preprocessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from evonets.data.config import DataConfig
from evonets.models.image_processing_evonet import EvoNetImageProcessor

if TYPE_CHECKING:
    import datasets

# PIL modes with an unambiguous 8-bit conversion to "L" / "RGB". High-bit-depth and float modes ("I", "F", "I;16")
# have no agreed scale to [0, 255]: we refuse them rather than guess.
CONVERTIBLE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


@dataclass
class ClassificationData:
    """The checked splits with their transform, the label names and the processor."""

    train: datasets.Dataset  # items {"pixel_values": (C, S, S) float, "labels": int}
    validation: datasets.Dataset
    label_names: list[str]
    processor: EvoNetImageProcessor
    image_size: int

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))


def load_data(config: DataConfig, image_size: int, num_channels: int = 3) -> ClassificationData:
    """Load, split, check and wrap the data (see the module docstring)."""
    if num_channels not in (1, 3):
        raise ValueError(
            f"num_channels = {num_channels} is invalid: the data pipeline makes 1 (L) or 3 (RGB) channels."
        )
    if len(config.image_mean) != num_channels:
        raise ValueError(
            f"Config field data.image_mean = {config.image_mean} is invalid: expected {num_channels} entries (the "
            f"supernet takes {num_channels}-channel images)."
        )
    train, validation = load_splits(config)
    label_names = check_labels(train, validation, config)
    for split_name, split in (("train", train), ("validation", validation)):
        check_images(split, config, split_name)
    processor = EvoNetImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        do_convert_rgb=num_channels == 3,
    )
    transform = make_transform(processor, config, num_channels)
    return ClassificationData(
        train=train.with_transform(transform),
        validation=validation.with_transform(transform),
        label_names=label_names,
        processor=processor,
        image_size=image_size,
    )


def load_splits(config: DataConfig):
    """(train, validation) `datasets.Dataset`s; validation is held out of train when the dataset has none."""
    import datasets

    source = config.source
    if source == "digits":
        from evonets.data.digits import load_digits_dataset

        splits = load_digits_dataset(seed=config.seed)
    elif source in ("imagefolder", "load_from_disk"):
        path = Path(config.path).expanduser()
        if not path.exists():
            raise ValueError(
                f"Config field data.path = {config.path!r} is invalid: no such folder (data.source = {source!r})."
            )
        if not path.is_dir():
            raise ValueError(f"Config field data.path = {config.path!r} is invalid: expected a folder, found a file.")
        if source == "imagefolder":
            try:
                splits = datasets.load_dataset("imagefolder", data_dir=str(path))
            except Exception as error:  # datasets raises several types for empty / unreadable folders
                raise ValueError(
                    f"data.path = {config.path!r} could not be read as an image folder (expected <path>/<class>/<image> "
                    f"or <path>/<split>/<class>/<image>): {error}"
                ) from error
        else:
            try:
                splits = datasets.load_from_disk(str(path))
            except Exception as error:
                raise ValueError(
                    f"data.path = {config.path!r} could not be read by datasets.load_from_disk (expected a folder written "
                    f"by Dataset(Dict).save_to_disk): {error}"
                ) from error
    elif source == "hub":
        try:
            splits = datasets.load_dataset(config.path, config.name)
        except Exception as error:
            raise ValueError(
                f"Hub dataset data.path = {config.path!r} (name {config.name!r}) could not be loaded: {error}"
            ) from error
    else:
        raise ValueError(
            f"Config field data.source = {source!r} is invalid: expected digits, imagefolder, load_from_disk or hub."
        )

    if isinstance(splits, datasets.Dataset):
        splits = datasets.DatasetDict({config.train_split: splits})
    if config.train_split not in splits:
        raise ValueError(
            f"Config field data.train_split = {config.train_split!r} is invalid: the dataset has splits {sorted(splits)}."
        )
    train = splits[config.train_split]
    for column in (config.image_column, config.label_column):
        if column not in train.column_names:
            field = "data.image_column" if column == config.image_column else "data.label_column"
            hint = " (an image folder needs one sub-folder per class)" if source == "imagefolder" else ""
            raise ValueError(
                f"Config field {field} = {column!r} is invalid: split {config.train_split!r} has columns "
                f"{train.column_names}{hint}."
            )
    train = train.select_columns([config.image_column, config.label_column])
    if config.validation_split and config.validation_split in splits:
        validation = splits[config.validation_split]
        missing = [c for c in (config.image_column, config.label_column) if c not in validation.column_names]
        if missing:
            raise ValueError(f"Validation split {config.validation_split!r} lacks columns {missing}.")
        validation = validation.select_columns([config.image_column, config.label_column])
    else:
        train, validation = _hold_out(train, config)
    if config.max_train_samples is not None:
        train = train.select(range(min(config.max_train_samples, len(train))))
    if len(train) == 0 or len(validation) == 0:
        raise ValueError(f"Empty split: {len(train)} training and {len(validation)} validation examples.")
    return train, validation


def _hold_out(train, config: DataConfig):
    """Stratified hold-out of `validation_fraction` of the training split (seeded)."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(train[config.label_column])
    indices = np.arange(len(labels))
    counts = np.bincount(labels) if labels.size and labels.min() >= 0 else np.array([0])
    held_out = math.ceil(config.validation_fraction * len(labels))
    stratifiable = counts[counts > 0].min() >= 2 and held_out >= (counts > 0).sum()
    stratify = labels if stratifiable else None
    kept, held = train_test_split(
        indices, test_size=config.validation_fraction, random_state=config.seed, stratify=stratify
    )
    return train.select(sorted(kept.tolist())), train.select(sorted(held.tolist()))


def check_labels(train, validation, config: DataConfig) -> list[str]:
    """The label names (from a `ClassLabel`, else "0".."K-1"); every label an int in range; same names in both splits."""
    import datasets

    feature = train.features[config.label_column]
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        other = validation.features[config.label_column]
        if isinstance(other, datasets.ClassLabel) and list(other.names) != names:
            raise ValueError(
                f"Label mismatch: the train split's classes {names} differ from the validation split's {list(other.names)}."
            )
    else:
        values = train[config.label_column]
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            bad = next(v for v in values if not isinstance(v, (int, np.integer)) or isinstance(v, bool))
            raise ValueError(
                f"Config field data.label_column = {config.label_column!r} is invalid: expected integer class indices, "
                f"found {bad!r} ({type(bad).__name__})."
            )
        names = [str(i) for i in range(int(max(values)) + 1)]
    present = np.unique(np.asarray(train[config.label_column]))
    if len(names) < 2 or len(present) < 2:
        only = names[int(present[0])] if len(present) == 1 and 0 <= present[0] < len(names) else list(present)
        raise ValueError(
            f"Config field data.label_column = {config.label_column!r} is invalid: expected labels of at least 2 "
            f"classes, but every one of the {len(train)} training rows has class {only!r} (classes named: {names})."
        )
    for split_name, split in (("train", train), ("validation", validation)):
        labels = np.asarray(split[config.label_column])
        bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
        if bad.size:
            raise ValueError(
                f"Label mismatch: {split_name} row {int(bad[0])} has label {int(labels[bad[0]])}, outside "
                f"[0, {len(names)}) for classes {names}."
            )
    return names


def check_images(split, config: DataConfig, split_name: str) -> None:
    """Decode a spread-out sample of images (all when `check_samples` is 0) and check mode and shape."""
    count = len(split)
    if config.check_samples == 0 or config.check_samples >= count:
        rows = range(count)
    else:
        rows = sorted(set(np.linspace(0, count - 1, config.check_samples).round().astype(int).tolist()))
    for row in rows:
        where = f"{split_name}[{row}]"
        try:
            image = split[int(row)][config.image_column]
        except Exception as error:  # unreadable file
            raise ValueError(
                f"Image {where}{_source(split, row, config.image_column)} could not be decoded: {error}"
            ) from error
        try:
            describe_image(image, where)
        except ValueError as error:
            source = _source(split, row, config.image_column)
            raise ValueError(str(error).replace(where, where + source, 1)) from None


def _source(split, row: int, column: str) -> str:
    """ " (file <path>)" for images stored as files, else ""."""
    import datasets

    if not isinstance(split.features.get(column), datasets.Image):
        return ""
    try:
        path = split.cast_column(column, datasets.Image(decode=False))[int(row)][column].get("path")
    except Exception:  # noqa: BLE001  (only decorates an error message)
        return ""
    return f" (file {path})" if path else ""


def describe_image(image: Any, where: str) -> tuple[str, tuple[int, ...]]:
    """(kind, shape) of a usable image; `ValueError` naming `where` otherwise."""
    from PIL import Image

    if image is None:
        raise ValueError(f"Image {where} is missing (None).")
    if isinstance(image, Image.Image):
        if image.mode not in CONVERTIBLE_MODES:
            raise ValueError(
                f"Image {where} has mode {image.mode!r}, which has no unambiguous 8-bit conversion: expected one of "
                f"{list(CONVERTIBLE_MODES)} (convert high-bit-depth or float images to 8-bit 'L' or 'RGB' first)."
            )
        if min(image.size) < 1:
            raise ValueError(f"Image {where} is empty (size {image.size}).")
        return image.mode, image.size
    array = np.asarray(image)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(
            f"Image {where} is a {type(image).__name__} of dtype {array.dtype}: expected a PIL image or numeric array."
        )
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4)):
        if np.issubdtype(array.dtype, np.integer) and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"Image {where} has integer values in [{array.min()}, {array.max()}]: expected uint8 range [0, 255]."
            )
        if np.issubdtype(array.dtype, np.floating) and (array.min() < 0 or array.max() > 1):
            raise ValueError(
                f"Image {where} has float values in [{array.min():.3g}, {array.max():.3g}]: expected [0, 1]."
            )
        return "array", array.shape
    raise ValueError(
        f"Image {where} has shape {array.shape}: expected (H, W) or (H, W, C) with C in (1, 3, 4), channels last."
    )


def to_pil(image: Any, num_channels: int):
    """A PIL image in mode "RGB" (num_channels 3) or "L" (1)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if np.issubdtype(array.dtype, np.floating):
            array = (array * 255.0).round()
        array = array.astype(np.uint8)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        image = Image.fromarray(array)
    mode = "RGB" if num_channels == 3 else "L"
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert(mode) if image.mode != mode else image


def make_transform(processor: EvoNetImageProcessor, config: DataConfig, num_channels: int):
    """The batch transform for `Dataset.with_transform`: images -> `pixel_values`, labels -> `labels`."""

    def transform(batch: dict) -> dict:
        images = [to_pil(image, num_channels) for image in batch[config.image_column]]
        pixel_values = processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": torch.as_tensor(batch[config.label_column], dtype=torch.long)}

    return transform


def collate(examples: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.stack([torch.as_tensor(example["labels"]) for example in examples]),
    }


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A permutation of range(n) that is a pure function of (seed, epoch): resume = set the epoch and skip batches,
    with no generator state to save. `set_epoch` before iterating."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


def training_loader(dataset, batch_size: int, seed: int, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """The loader every classification training uses: full batches in an order that is a pure function of (seed,
    epoch) (`EpochShuffleSampler`; call `loader.sampler.set_epoch`), so a run and its resume see the same batches."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(len(dataset), seed),
        collate_fn=collate,
        drop_last=True,
        num_workers=num_workers,
    )


def resize_batch(pixel_values: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of a (B, C, H, W) batch to size x size; a no-op at that size."""
    if pixel_values.shape[-1] == size and pixel_values.shape[-2] == size:
        return pixel_values
    shrinking = pixel_values.shape[-1] > size
    return torch.nn.functional.interpolate(
        pixel_values, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking
    )


__all__ = [
    "CONVERTIBLE_MODES",
    "ClassificationData",
    "EpochShuffleSampler",
    "check_images",
    "check_labels",
    "collate",
    "describe_image",
    "load_data",
    "load_splits",
    "make_transform",
    "resize_batch",
    "to_pil",
    "training_loader",
]
