"""Training data through `datasets`: the sources, the explicit train/validation split, up-front checks, transforms.

Sources (`DataConfig.source`):

- `digits`: scikit-learn's bundled real handwritten digits (`evonets.data.digits.load_digits_dataset`), fixed split.
- `imagefolder`: `<path>/<class>/<image>` (one split; validation is held out) or `<path>/<split>/<class>/<image>`.
- `parquet`: Hub-style parquet files in a local folder, `<split>-*.parquet` or `<split>.parquet` (CIFAR-10 in
  `../shared/data/cifar10`), read by `datasets.load_dataset("parquet", data_files=...)`.
- `load_from_disk`: a `DatasetDict` (or a single `Dataset`) saved with `save_to_disk`.
- `hub`: `datasets.load_dataset(path, name)` (needs internet).

`load_data` returns only the train and validation splits: the test split is never handed to training or search;
`load_test_data` reads it for a final report. `max_train_samples` takes a seeded, class-stratified subset. It checks, before any training starts, that the path exists, the columns exist, labels are class indices in range with
the same names in both splits, and that a spread-out sample of images (`check_samples`) decodes and has a usable
mode and shape, raising `ValueError` that names the split, the row and what is wrong.

Images become `pixel_values` when read (`ClassificationSplit`) through an `EvoNetImageProcessor` (resize to
`image_size`, rescale, normalise): the same processor is saved next to the supernet, so search and inference see
the same preprocessing. The training split is augmented as `DataConfig.augmentation` says, each item from its own
generator seeded by (training seed, epoch, index) (`evonets.data.augmentation`); `training_loader` gives it the
training's seed and `evonets.engine.training.TrainingLoop` the epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from evonets.data.augmentation import SeededAugmentation
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

    train: ClassificationSplit  # augmented as DataConfig.augmentation says
    validation: ClassificationSplit
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
    return ClassificationData(
        train=ClassificationSplit(train, processor, config, num_channels, config.augmentation, seed=config.seed),
        validation=ClassificationSplit(validation, processor, config, num_channels),
        label_names=label_names,
        processor=processor,
        image_size=image_size,
    )


def load_test_data(
    config: DataConfig, data: ClassificationData, max_samples: int | None = None
) -> ClassificationSplit | None:
    """The test split (`config.test_split`) with the preprocessing of `data`, for a final report only (a front
    member's stand-alone check, a teacher's check): training, search and the rank check never call this. None when
    the data has no such split. `max_samples`: a seeded (`config.seed`), class-stratified subset of that many.
    Its labels are checked against `data`'s classes and a sample of its images decoded."""
    if config.test_split is None:
        return None
    splits = read_splits(config)
    if config.test_split not in splits:
        return None
    test = splits[config.test_split]
    missing = [column for column in (config.image_column, config.label_column) if column not in test.column_names]
    if missing:
        raise ValueError(f"Test split {config.test_split!r} lacks columns {missing} (it has {test.column_names}).")
    test = test.select_columns([config.image_column, config.label_column])
    if max_samples is not None and max_samples < len(test):
        subset, _ = stratified_split(test[config.label_column], len(test) - max_samples, config.seed)
        test = test.select(subset)
    check_labels(data.train.rows, test, config, other_name="test")
    check_images(test, config, "test")
    return ClassificationSplit(test, data.processor, config, data.validation.num_channels)


def read_splits(config: DataConfig) -> datasets.DatasetDict:
    """Every split of the configured source as `datasets` reads it: nothing selected, held out or checked yet."""
    import datasets

    source = config.source
    if source == "digits":
        from evonets.data.digits import load_digits_dataset

        return load_digits_dataset(seed=config.seed)
    if source == "hub":
        try:
            splits = datasets.load_dataset(config.path, config.name)
        except Exception as error:
            raise ValueError(
                f"Hub dataset data.path = {config.path!r} (name {config.name!r}) could not be loaded: {error}"
            ) from error
    elif source in ("imagefolder", "parquet", "load_from_disk"):
        path = Path(config.path).expanduser()
        if not path.exists():
            raise ValueError(
                f"Config field data.path = {config.path!r} is invalid: no such folder (data.source = {source!r})."
            )
        if not path.is_dir():
            raise ValueError(f"Config field data.path = {config.path!r} is invalid: expected a folder, found a file.")
        try:
            if source == "imagefolder":
                expected = "an image folder: <path>/<class>/<image> or <path>/<split>/<class>/<image>"
                splits = datasets.load_dataset("imagefolder", data_dir=str(path))
            elif source == "parquet":
                expected = "Hub-style parquet files, <split>-*.parquet or <split>.parquet"
                splits = datasets.load_dataset("parquet", data_files=parquet_files(path, config.path))
            else:
                expected = "a folder written by Dataset(Dict).save_to_disk"
                splits = datasets.load_from_disk(str(path))
        except ValueError:
            raise
        except Exception as error:  # datasets raises several types for empty / unreadable folders
            raise ValueError(f"data.path = {config.path!r} could not be read as {expected}: {error}") from error
    else:
        raise ValueError(
            f"Config field data.source = {source!r} is invalid: expected digits, imagefolder, parquet, load_from_disk "
            "or hub."
        )
    if isinstance(splits, datasets.Dataset):
        splits = datasets.DatasetDict({config.train_split: splits})
    return splits


def parquet_files(folder: Path, field_value: str) -> dict[str, list[str]]:
    """{split: its parquet files} of a folder of `<split>-*.parquet` / `<split>.parquet` files (the Hub's naming:
    `train-00000-of-00001.parquet`)."""
    files: dict[str, list[str]] = {}
    for file in sorted(folder.glob("*.parquet")):
        files.setdefault(file.stem.split("-")[0], []).append(str(file))
    if not files:
        raise ValueError(
            f"Config field data.path = {field_value!r} is invalid: no <split>-*.parquet or <split>.parquet files in it."
        )
    return files


def load_splits(config: DataConfig):
    """(train, validation) `datasets.Dataset`s; validation is held out of train when the dataset has none, and
    `max_train_samples` subsets the rest."""
    splits = read_splits(config)
    if config.train_split not in splits:
        raise ValueError(
            f"Config field data.train_split = {config.train_split!r} is invalid: the dataset has splits {sorted(splits)}."
        )
    train = splits[config.train_split]
    for column in (config.image_column, config.label_column):
        if column not in train.column_names:
            field = "data.image_column" if column == config.image_column else "data.label_column"
            hint = " (an image folder needs one sub-folder per class)" if config.source == "imagefolder" else ""
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
        kept, held = stratified_split(train[config.label_column], config.validation_fraction, config.seed)
        train, validation = train.select(kept), train.select(held)
    if config.max_train_samples is not None and config.max_train_samples < len(train):
        subset, _ = stratified_split(train[config.label_column], len(train) - config.max_train_samples, config.seed)
        train = train.select(subset)
    if len(train) == 0 or len(validation) == 0:
        raise ValueError(f"Empty split: {len(train)} training and {len(validation)} validation examples.")
    return train, validation


def stratified_split(labels, held_out: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held) row indices, each in increasing order: `held_out` rows (a count, or a fraction of all) drawn with
    `seed`, stratified by label when every class has two rows and there are enough held-out rows for every class."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    counts = np.bincount(labels) if labels.size and labels.min() >= 0 else np.array([0])
    held_count = held_out if isinstance(held_out, int) else math.ceil(held_out * len(labels))
    classes = (counts > 0).sum()
    stratifiable = counts[counts > 0].min() >= 2 and min(held_count, len(labels) - held_count) >= classes
    kept, held = train_test_split(
        np.arange(len(labels)), test_size=held_out, random_state=seed, stratify=labels if stratifiable else None
    )
    return sorted(kept.tolist()), sorted(held.tolist())


def check_labels(train, other, config: DataConfig, other_name: str = "validation") -> list[str]:
    """The label names (from a `ClassLabel`, else "0".."K-1"); every label an int in range; the same names in the
    train split and `other` (the validation split, or the test split)."""
    import datasets

    feature = train.features[config.label_column]
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        other_feature = other.features[config.label_column]
        if isinstance(other_feature, datasets.ClassLabel) and list(other_feature.names) != names:
            raise ValueError(
                f"Label mismatch: the train split's classes {names} differ from the {other_name} split's "
                f"{list(other_feature.names)}."
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
    for split_name, split in (("train", train), (other_name, other)):
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


class ClassificationSplit(SeededAugmentation, torch.utils.data.Dataset):
    """One split as model inputs: item `i` is `{"pixel_values": (C, S, S) float, "labels": int64}`, decoded and
    preprocessed when read (`processor`: resize to S, rescale, normalise); `split[a:b]` is a stacked batch, as from a
    `datasets.Dataset` with a transform. A `DataLoader` reads whole batches through `__getitems__`.

    With `augmentation` (`DataConfig.augmentation`), each image is changed before preprocessing with draws from its
    own generator, `item_rng(index)`: a pure function of (`seed`, epoch, index) (`with_seed`, `set_epoch`).

    Attributes:
        rows (`datasets.Dataset`): the split's image and label columns, undecoded.
    """

    def __init__(
        self,
        rows: datasets.Dataset,
        processor: EvoNetImageProcessor,
        config: DataConfig,
        num_channels: int,
        augmentation: str = "none",
        seed: int = 0,
    ):
        if augmentation not in AUGMENTATIONS:
            raise ValueError(
                f"Config field data.augmentation = {augmentation!r} is invalid: expected one of {list(AUGMENTATIONS)}."
            )
        self.rows, self.processor, self.num_channels = rows, processor, num_channels
        self.image_column, self.label_column = config.image_column, config.label_column
        self.augment = AUGMENTATIONS[augmentation]
        self.seed = seed

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> list[int]:
        return list(self.rows[self.label_column])

    def __getitem__(self, key: int | slice) -> dict[str, torch.Tensor]:
        if isinstance(key, slice):
            return self.encode(range(len(self))[key])
        batch = self.encode([key])
        return {name: values[0] for name, values in batch.items()}

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        batch = self.encode(indices)
        return [{name: values[row] for name, values in batch.items()} for row in range(len(indices))]

    def encode(self, indices) -> dict[str, torch.Tensor]:
        """Rows `indices` as one batch: `pixel_values` (N, C, S, S), `labels` (N,)."""
        indices = [int(index) for index in indices]
        rows = self.rows[indices]
        images = [to_pil(image, self.num_channels) for image in rows[self.image_column]]
        if self.augment is not None:
            images = [self.augment(image, self.item_rng(index)) for image, index in zip(images, indices)]
        pixel_values = self.processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": torch.as_tensor(rows[self.label_column], dtype=torch.long)}


def crop_flip(image, rng: np.random.Generator):
    """CIFAR's augmentation: pad by 1/8 of each side (4 px at 32) with black, crop the original size back at a random
    offset, flip left-right with probability 1/2. Draws, in order: top offset, left offset, flip."""
    from PIL import Image

    array = np.asarray(image)
    height, width = array.shape[:2]
    pad_y, pad_x = max(1, round(height / 8)), max(1, round(width / 8))
    top, left = int(rng.integers(0, 2 * pad_y + 1)), int(rng.integers(0, 2 * pad_x + 1))
    padded = np.pad(array, ((pad_y, pad_y), (pad_x, pad_x)) + ((0, 0),) * (array.ndim - 2))
    cropped = padded[top : top + height, left : left + width]
    if rng.random() < 0.5:
        cropped = cropped[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(cropped), mode=image.mode)


AUGMENTATIONS = {"none": None, "crop_flip": crop_flip}
"""`DataConfig.augmentation` -> the function that changes one training image, `(PIL image, generator) -> image`."""


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
    epoch) (`EpochShuffleSampler`; call `loader.sampler.set_epoch`), so a run and its resume see the same batches. An
    augmented split draws with the same `seed` (`SeededAugmentation.with_seed`; the loop sets its epoch too)."""
    if isinstance(dataset, SeededAugmentation):
        dataset = dataset.with_seed(seed)
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
    "AUGMENTATIONS",
    "CONVERTIBLE_MODES",
    "ClassificationData",
    "ClassificationSplit",
    "EpochShuffleSampler",
    "check_images",
    "check_labels",
    "collate",
    "crop_flip",
    "describe_image",
    "load_data",
    "load_splits",
    "load_test_data",
    "parquet_files",
    "read_splits",
    "resize_batch",
    "stratified_split",
    "to_pil",
    "training_loader",
]
