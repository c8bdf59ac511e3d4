"""What a classification data set is and how it becomes pixel values: the `data:` section of every pipeline config.

`evonets.data.classification.load_data(config, image_size)` reads it; `distill/` and `search/` embed it in their
configs (`DistillConfig.data`), so one YAML section drives training, search and the rank check alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DataConfig:
    """Where the images come from, how they are split and turned into pixel values."""

    source: Literal["digits", "imagefolder", "parquet", "load_from_disk", "hub"] = "digits"
    """`digits`: scikit-learn's bundled real handwritten digits (fixed train/validation/test split, no download).
    `imagefolder`: a local folder, either `<path>/<class>/<image>` or `<path>/<split>/<class>/<image>`.
    `parquet`: a local folder of Hub-style parquet files, one or more per split named `<split>-*.parquet` or
    `<split>.parquet` (e.g. `../shared/data/cifar10`: `train-00000-of-00001.parquet`, `test-...`).
    `load_from_disk`: a folder written by `DatasetDict.save_to_disk`. `hub`: a Hub dataset id (needs internet)."""

    path: str | None = None
    """Folder (imagefolder, parquet, load_from_disk) or dataset id (hub). Unused for digits."""

    name: str | None = None
    """Hub dataset configuration name (source=hub only)."""

    train_split: str = "train"
    """Split to train on."""

    validation_split: str | None = "validation"
    """Split for validation metrics. When the dataset has no such split, `validation_fraction` of `train_split` is
    held out instead (stratified, seeded by `seed`). The test split is never read by training or search."""

    validation_fraction: float = 0.1
    """Fraction of `train_split` held out when there is no `validation_split`."""

    test_split: str | None = "test"
    """Split read only for a final report (a front member's stand-alone check, a teacher's check when it loads); never
    by training, search or the rank check. None: the data has none."""

    image_column: str = "image"
    """Column holding the images (PIL images, or uint8 arrays of shape (H, W) or (H, W, C))."""

    label_column: str = "label"
    """Column holding integer class labels (ideally a `ClassLabel`, whose names become `id2label`)."""

    image_size: int | None = None
    """Side of the square pixel_values the loader produces. Default: the largest resolution of the search space;
    subnets with smaller resolutions get the batch resized on the fly."""

    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    """Per-channel mean subtracted after rescaling to [0, 1]."""

    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    """Per-channel std divided after subtracting the mean."""

    augmentation: Literal["none", "crop_flip"] = "none"
    """Random changes of the training images (validation and test images never change). `crop_flip`: the CIFAR
    recipe: pad by 1/8 of the side (4 px at 32) with black, crop back to the original size at a random offset, flip
    left-right with probability 1/2. Each item draws from its own generator seeded by (training seed, epoch, index)
    (`evonets.data.augmentation`)."""

    seed: int = 0
    """Seed of the digits split, the held-out validation fraction and the `max_train_samples` subset."""

    max_train_samples: int | None = None
    """Train on a subset of N examples of the training split (after the validation hold-out): seeded by `seed` and
    stratified by class, so a subset of a class-sorted split (CIFAR-10's is) keeps every class. None: all."""

    check_samples: int = 256
    """Images checked up front for decodability, mode and shape (evenly spread over each split); 0 checks all."""

    num_workers: int = 0
    """DataLoader worker processes per training process."""


__all__ = ["DataConfig"]
