"""Semantic segmentation data for `transformers.Trainer`: loaders, collator and metrics.

- `load_ade20k(root)`: ADE20K layout (`images/*.jpg`, `annotations/*.png` with 0 = other and 1..150 the classes,
  `objectInfo150.csv` naming them).
- `load_coco_semantic(root)`: COCO semantic masks (`images/*.jpg`, `semantic_masks/*.png` holding sparse COCO
  panoptic category ids, 0 = unlabeled; `semantic_classes.yaml` naming them).

Both give a [`SemanticSegmentationDataset`] of `{"pixel_values": (3, S, S), "labels": (S, S)}` items: images resized
and normalised by an `EvoNetImageProcessor`, masks resized (nearest) and remapped to contiguous class ids
`0 .. num_labels - 1` with `IGNORE_INDEX` (255) for unlabelled pixels; `dataset.label_mapping` records the remapping.
[`SegmentationCollator`] stacks items and checks them against the model's label space; [`SegmentationMetrics`] is a
`compute_metrics` for `Trainer` (mIoU and pixel accuracy from one confusion matrix), and
[`preprocess_logits_for_metrics`] turns logits into label-sized predictions so evaluation keeps class ids, not
scores, in memory.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from evonets.data.augmentation import SeededAugmentation
from evonets.data.paths import shared_data_dir
from evonets.models.image_processing_evonet import EvoNetImageProcessor

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MISSING_MASKS = ("error", "skip")
MIN_CROP = 0.5  # training crops keep 50-100 % of each side of the image


class SemanticSegmentationDataset(SeededAugmentation, torch.utils.data.Dataset):
    r"""
    Image / mask pairs as a torch `Dataset` for `Trainer`.

    Item `i` is `{"pixel_values": FloatTensor (3, S, S), "labels": LongTensor (S, S)}` with S = `image_size`: the
    image resized (bicubic) and normalised with ImageNet mean / std, the mask resized (nearest) and remapped through
    `label_mapping` (file value -> class id); file values in `ignore_values` become `IGNORE_INDEX`. With `augment`,
    image and mask are cropped together to a random window of 50-100 % of each side (`MIN_CROP`) and flipped
    left-right with probability 1/2, drawn from the item's own generator (`evonets.data.augmentation`: seeded by
    `(seed, epoch, index)`).

    Every mask is read once when the dataset is built: a file that is empty, not a single-channel 8-bit PNG, of
    another size than its image, holding a value that is neither a class nor ignored, or without one labelled pixel
    raises `ValueError` naming it.

    Attributes:
        samples (`list[tuple[Path, Path]]`): (image, mask) paths, sorted by file name.
        id2label (`dict[int, str]`): class id -> name, ids `0 .. num_labels - 1`.
        label_mapping (`dict[int, int]`): mask file value -> class id.
        ignore_values (`tuple[int, ...]`): mask file values that mean "unlabelled".
        processor (`EvoNetImageProcessor`): the image preprocessing; save it beside a trained model.
    """

    def __init__(
        self,
        samples: list[tuple[Path, Path]],
        id2label: dict[int, str],
        label_mapping: dict[int, int],
        ignore_values: tuple[int, ...] = (0,),
        image_size: int = 128,
        augment: bool = False,
        validate: bool = True,
        seed: int = 0,
    ):
        if not (isinstance(image_size, int) and image_size >= 1):
            raise ValueError(f"image_size = {image_size!r} is invalid: expected a positive int (pixels).")
        if sorted(id2label) != list(range(len(id2label))) or sorted(set(label_mapping.values())) != sorted(id2label):
            raise ValueError(
                "id2label must name the class ids 0 .. num_labels - 1 and label_mapping must map mask values onto "
                f"exactly those ids; got ids {sorted(id2label)[:5]}... and mapped ids "
                f"{sorted(set(label_mapping.values()))[:5]}..."
            )
        if len(id2label) > IGNORE_INDEX or not all(0 <= value <= 255 for value in (*label_mapping, *ignore_values)):
            raise ValueError(
                f"label_mapping / ignore_values are invalid: expected 8-bit mask values (0..255) and at most "
                f"{IGNORE_INDEX} classes (class id {IGNORE_INDEX} is the ignore index); got {len(id2label)} classes."
            )
        self.samples = list(samples)
        self.seed = seed
        self.id2label = dict(id2label)
        self.label_mapping = dict(label_mapping)
        self.ignore_values = tuple(ignore_values)
        self.image_size = image_size
        self.augment = augment
        self.processor = EvoNetImageProcessor(size={"height": image_size, "width": image_size})
        # file value (0..255) -> class id, IGNORE_INDEX, or -1 for a value the label space does not know
        self._lookup = np.full(256, -1, dtype=np.int64)
        self._lookup[list(self.ignore_values)] = IGNORE_INDEX
        for value, class_id in self.label_mapping.items():
            self._lookup[value] = class_id
        if validate:
            for image_path, mask_path in self.samples:
                self._validate_pair(image_path, mask_path)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not self.augment:
            return self.load_item(index)
        rng = self.item_rng(index)
        width, height = (MIN_CROP + (1.0 - MIN_CROP) * rng.random(2)).tolist()
        left, top = (rng.random(2) * [1.0 - width, 1.0 - height]).tolist()
        return self.load_item(index, region=(left, top, left + width, top + height), flip=bool(rng.random() < 0.5))

    def load_item(
        self, index: int, region: tuple[float, float, float, float] | None = None, flip: bool = False
    ) -> dict[str, torch.Tensor]:
        """Item `index`, optionally cropped to `region` (left, top, right, bottom as fractions of the image) before
        resizing, and flipped left-right."""
        with Image.open(self.samples[index][0]) as image:
            image.draft("RGB", (self.image_size, self.image_size))  # JPEG: decode at a reduced scale, much faster
            image = image.convert("RGB")
            if region is not None:
                image = image.crop(_pixel_box(region, image.size))
            pixel_values = self.processor(image, return_tensors="pt")["pixel_values"][0]
        labels = torch.from_numpy(self.load_labels(index, region=region))
        if flip:
            pixel_values, labels = pixel_values.flip(-1), labels.flip(-1)
        return {"pixel_values": pixel_values, "labels": labels}

    def load_labels(
        self, index: int, size: int | None = None, region: tuple[float, float, float, float] | None = None
    ) -> np.ndarray:
        """Mask `index` as class ids (IGNORE_INDEX for unlabelled), optionally cropped to `region` (fractions, as in
        `load_item`), resized (nearest) to `size` x `size` pixels (default: `image_size`; 0 keeps the file's size).
        Shape (size, size), int64."""
        size = self.image_size if size is None else size
        with Image.open(self.samples[index][1]) as mask:
            if region is not None:
                mask = mask.crop(_pixel_box(region, mask.size))
            if size:
                mask = mask.resize((size, size), Image.Resampling.NEAREST)
            return self._lookup[np.asarray(mask)]

    def label_counts(self) -> np.ndarray:
        """Pixels per class id over every mask at `image_size` (unlabelled pixels left out): shape (num_labels,)."""
        counts = np.zeros(self.num_labels, dtype=np.int64)
        for index in range(len(self)):
            labels = self.load_labels(index)
            counts += np.bincount(labels[labels != IGNORE_INDEX], minlength=self.num_labels)
        return counts

    def subset(self, indices: list[int] | np.ndarray, augment: bool | None = None) -> SemanticSegmentationDataset:
        """The samples at `indices` (same classes and preprocessing), with `augment` on or off (default: as is)."""
        return SemanticSegmentationDataset(
            [self.samples[int(index)] for index in indices],
            self.id2label,
            self.label_mapping,
            self.ignore_values,
            self.image_size,
            augment=self.augment if augment is None else augment,
            validate=False,
            seed=self.seed,
        )

    def _validate_pair(self, image_path: Path, mask_path: Path) -> None:
        if mask_path.stat().st_size == 0:
            raise ValueError(f"annotation file {mask_path} is empty (0 bytes).")
        try:
            with Image.open(mask_path) as mask:
                mode, size, values = mask.mode, mask.size, np.asarray(mask)
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"annotation file {mask_path} is not a readable image: {error}") from error
        if mode not in ("L", "P"):
            raise ValueError(
                f"annotation file {mask_path} has PIL mode {mode!r}: expected a single-channel 8-bit PNG (mode 'L' or "
                "'P') holding one class value per pixel."
            )
        with Image.open(image_path) as image:
            if image.size != size:
                raise ValueError(
                    f"annotation file {mask_path} is {size[0]}x{size[1]} but its image {image_path.name} is "
                    f"{image.size[0]}x{image.size[1]}: a mask must label every pixel of its image."
                )
        present = np.unique(values)
        unknown = [int(value) for value in present if self._lookup[value] < 0]
        if unknown:
            raise ValueError(
                f"annotation file {mask_path} holds values {unknown[:10]} that are neither a class of the label space "
                f"({self.num_labels} classes, file values {sorted(self.label_mapping)[:3]}...) nor ignored "
                f"({list(self.ignore_values)}). Is the class list the one these masks were made with?"
            )
        if all(self._lookup[value] == IGNORE_INDEX for value in present):
            raise ValueError(
                f"annotation file {mask_path} has no labelled pixel (every value is ignored: "
                f"{list(self.ignore_values)}); remove it or its image."
            )


def _pixel_box(region: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Fractions (left, top, right, bottom) of an image of `size` (width, height) -> a PIL crop box in pixels."""
    width, height = size
    left, top, right, bottom = region
    return (round(left * width), round(top * height), max(round(right * width), 1), max(round(bottom * height), 1))


def load_ade20k(
    root: str | os.PathLike | None = None,
    image_size: int = 128,
    missing_masks: str = "error",
    augment: bool = False,
) -> SemanticSegmentationDataset:
    """An ADE20K-format folder: `images/<name>.jpg`, `annotations/<name>.png` (0 = other, ignored; 1..150 the
    classes, which become ids 0..149) and `objectInfo150.csv` (columns `Idx` and `Name`; the first of a name's
    `;`-separated synonyms is kept). Default `root`: the shared sample (`ade20k_sample`, 3 validation images).

    `missing_masks`: "error" (default) raises for an image without a mask; "skip" leaves such images out.
    """
    root = Path(root) if root is not None else shared_data_dir() / "ade20k_sample"
    if not root.is_dir():
        raise ValueError(f"ADE20K folder {root} does not exist.")
    class_file = root / "objectInfo150.csv"
    if not class_file.is_file():
        raise ValueError(f"ADE20K class file {class_file} is missing: expected objectInfo150.csv in {root}.")
    with class_file.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"Idx", "Name"} <= set(rows[0]):
        raise ValueError(f"ADE20K class file {class_file} is empty or lacks the columns 'Idx' and 'Name'.")
    names = {int(row["Idx"]): row["Name"].split(";")[0] for row in rows}
    if 0 in names:
        raise ValueError(f"ADE20K class file {class_file} lists Idx 0, which ADE20K reserves for 'other' (ignored).")
    return _remapped_dataset(
        _pair_files(root / "images", root / "annotations", missing_masks), names, image_size, augment
    )


def load_coco_semantic(
    root: str | os.PathLike | None = None,
    image_size: int = 128,
    missing_masks: str = "skip",
    augment: bool = False,
) -> SemanticSegmentationDataset:
    """COCO semantic masks: `images/<name>.jpg`, `semantic_masks/<name>.png` holding COCO panoptic category ids
    (sparse, 1..200; 0 = unlabeled, ignored) and `semantic_classes.yaml` (`classes: {id: name}`). The ids present in
    the class file, sorted, become contiguous ids 0..K-1 (`dataset.label_mapping`). Default `root`: the shared
    `coco128`, where 100 of the 128 images have a mask.

    `missing_masks`: "skip" (default: the other images are unlabelled, not an error) or "error".
    """
    import yaml

    root = Path(root) if root is not None else shared_data_dir() / "coco128"
    if not root.is_dir():
        raise ValueError(f"COCO folder {root} does not exist.")
    class_file = root / "semantic_classes.yaml"
    if not class_file.is_file():
        raise ValueError(f"COCO class file {class_file} is missing: expected semantic_classes.yaml in {root}.")
    classes = (yaml.safe_load(class_file.read_text()) or {}).get("classes") or {}
    named = {int(value): str(name) for value, name in classes.items() if int(value) != 0}
    if not named:
        raise ValueError(f"COCO class file {class_file} has no `classes:` besides 0 (unlabeled).")
    return _remapped_dataset(
        _pair_files(root / "images", root / "semantic_masks", missing_masks), named, image_size, augment
    )


def _remapped_dataset(pairs, names: dict[int, str], image_size: int, augment: bool) -> SemanticSegmentationDataset:
    """The dataset whose mask values `names` (value -> class name; 0 = ignored) become contiguous class ids 0..K-1 in
    the order of the values."""
    values = sorted(names)
    return SemanticSegmentationDataset(
        pairs,
        id2label={class_id: names[value] for class_id, value in enumerate(values)},
        label_mapping={value: class_id for class_id, value in enumerate(values)},
        ignore_values=(0,),
        image_size=image_size,
        augment=augment,
    )


def train_validation_split(
    dataset: SemanticSegmentationDataset, validation_fraction: float = 0.2, seed: int = 0, augment_train: bool = True
) -> tuple[SemanticSegmentationDataset, SemanticSegmentationDataset]:
    """A fixed random split of `dataset` (same `seed`, same split on every machine): (train, validation).
    The train part is augmented (random crops and flips, seeded by `seed` too) when `augment_train`; validation never
    is."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction = {validation_fraction!r} is invalid: expected a float in (0, 1).")
    num_validation = round(validation_fraction * len(dataset))
    if not 0 < num_validation < len(dataset):
        raise ValueError(
            f"validation_fraction = {validation_fraction} of {len(dataset)} samples leaves an empty split."
        )
    order = np.random.default_rng(seed).permutation(len(dataset))
    validation, train = np.sort(order[:num_validation]), np.sort(order[num_validation:])
    train_part = dataset.subset(train, augment=augment_train)
    train_part.seed = seed
    return train_part, dataset.subset(validation, augment=False)


def _pair_files(image_dir: Path, mask_dir: Path, missing_masks: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs matched by file stem, sorted; clear errors for unmatched or missing files."""
    if missing_masks not in MISSING_MASKS:
        raise ValueError(f"missing_masks = {missing_masks!r} is invalid: expected one of {list(MISSING_MASKS)}.")
    for folder, what in ((image_dir, "image"), (mask_dir, "annotation")):
        if not folder.is_dir():
            raise ValueError(f"{what} folder {folder} does not exist.")
    images = {path.stem: path for path in image_dir.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES}
    masks = {path.stem: path for path in mask_dir.glob("*.png")}
    if not masks:
        raise ValueError(f"annotation folder {mask_dir} holds no mask PNGs.")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise ValueError(
            f"{len(orphans)} masks in {mask_dir} have no image in {image_dir} (first: {orphans[0]}.png); expected an "
            f"image with the same file stem ({', '.join(IMAGE_SUFFIXES)})."
        )
    unlabelled = sorted(set(images) - set(masks))
    if unlabelled and missing_masks == "error":
        raise ValueError(
            f"{len(unlabelled)} images in {image_dir} have no mask in {mask_dir} (first: {images[unlabelled[0]].name}); "
            "pass missing_masks='skip' to use only the labelled images."
        )
    if unlabelled:
        logger.info("%d of %d images in %s have no mask and are left out.", len(unlabelled), len(images), image_dir)
    return [(images[stem], masks[stem]) for stem in sorted(masks)]


@dataclasses.dataclass
class SegmentationCollator:
    """Stacks dataset items into a batch `{"pixel_values": (B, 3, S, S), "labels": (B, S, S)}` and checks the labels
    against the model's label space: a value that is neither a class id in `[0, num_labels)` nor `ignore_index`
    raises `ValueError` (a dataset with more classes than the model's `config.num_labels`)."""

    num_labels: int
    ignore_index: int = IGNORE_INDEX

    def __call__(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("SegmentationCollator got an empty list of examples.")
        shapes = {tuple(example["labels"].shape) for example in examples}
        if len(shapes) > 1:
            raise ValueError(f"labels of one batch differ in shape {sorted(shapes)}: resize all samples to one size.")
        labels = torch.stack([example["labels"] for example in examples]).long()
        bad = labels[((labels < 0) | (labels >= self.num_labels)) & (labels != self.ignore_index)]
        if bad.numel():
            raise ValueError(
                f"labels hold values {bad.unique()[:10].tolist()} outside the model's label space: expected class ids "
                f"in [0, {self.num_labels}) (the model's num_labels) or the ignore index {self.ignore_index}."
            )
        return {"pixel_values": torch.stack([example["pixel_values"] for example in examples]), "labels": labels}


def check_label_space(model_config, dataset: SemanticSegmentationDataset) -> None:
    """Raise `ValueError` when a model's classes (`config.num_labels` / `id2label`) are not the dataset's."""
    if model_config.num_labels != dataset.num_labels:
        raise ValueError(
            f"the model has num_labels = {model_config.num_labels} but the dataset has {dataset.num_labels} classes: "
            "build the head with the dataset's id2label (e.g. `from_backbone(..., id2label=dataset.id2label)`)."
        )
    model_names = {int(index): name for index, name in model_config.id2label.items()}
    differing = [index for index, name in dataset.id2label.items() if model_names.get(index) != name]
    if differing:
        index = differing[0]
        raise ValueError(
            f"the model's id2label differs from the dataset's for {len(differing)} class ids (first: {index} is "
            f"{model_names.get(index)!r} in the model, {dataset.id2label[index]!r} in the dataset)."
        )


def preprocess_logits_for_metrics(logits: torch.Tensor | tuple, labels: torch.Tensor) -> torch.Tensor:
    """`Trainer`'s `preprocess_logits_for_metrics`: logits (B, K, h, w) at any resolution -> predicted class ids
    (B, H, W) at the labels' size (bilinear upsampling of the scores, then argmax)."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)


def confusion_matrix(
    predictions: np.ndarray, labels: np.ndarray, num_labels: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """(num_labels, num_labels) pixel counts, rows = ground-truth class, columns = predicted class, over the pixels
    whose label is not `ignore_index`. `predictions` and `labels` are class-id arrays of one shape."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions of shape {predictions.shape} and labels of shape {labels.shape} differ: pass class ids at "
            "the labels' size (see preprocess_logits_for_metrics)."
        )
    valid = labels != ignore_index
    labels, predictions = labels[valid].astype(np.int64), predictions[valid].astype(np.int64)
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_labels):
            raise ValueError(
                f"{name} hold class ids outside [0, {num_labels}) (min {values.min()}, max {values.max()}) besides the "
                f"ignore index {ignore_index}: is num_labels the model's?"
            )
    return np.bincount(labels * num_labels + predictions, minlength=num_labels**2).reshape(num_labels, num_labels)


class SegmentationMetrics:
    r"""
    Mean IoU and pixel accuracy, accumulated in one confusion matrix C (rows: ground truth, columns: prediction;
    pixels labelled `ignore_index` left out):

        IoU_k          = C_kk / (sum_j C_kj + sum_i C_ik - C_kk)
        mean_iou       = mean of IoU_k over the classes k present in the ground truth or the predictions
        pixel_accuracy = sum_k C_kk / sum_ij C_ij

    Use as `Trainer(compute_metrics=SegmentationMetrics(num_labels), preprocess_logits_for_metrics=...)`: called
    with an `EvalPrediction` it scores it whole; with `batch_eval_metrics=True` it accumulates each batch and scores
    when `compute_result` is true. Predictions may be class ids (B, H, W) or logits (B, K, h, w).
    `update` / `compute` / `reset` work outside `Trainer` too.
    """

    def __init__(self, num_labels: int, ignore_index: int = IGNORE_INDEX):
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.confusion = np.zeros((num_labels, num_labels), dtype=np.int64)

    def reset(self) -> None:
        self.confusion[:] = 0

    def update(self, predictions, labels) -> None:
        predictions, labels = _to_numpy(predictions), _to_numpy(labels)
        if predictions.ndim == labels.ndim + 1:  # logits
            predictions = _to_numpy(
                preprocess_logits_for_metrics(torch.from_numpy(predictions), torch.from_numpy(labels))
            )
        self.confusion += confusion_matrix(predictions, labels, self.num_labels, self.ignore_index)

    def per_class_iou(self) -> np.ndarray:
        """IoU per class id, NaN for classes in neither the ground truth nor the predictions: shape (num_labels,)."""
        intersection = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(axis=0) + self.confusion.sum(axis=1) - intersection
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, intersection / union, np.nan)

    def compute(self) -> dict[str, float]:
        total = self.confusion.sum()
        if total == 0:
            raise ValueError("no labelled pixel was scored: every label is the ignore index or nothing was updated.")
        return {
            "mean_iou": float(np.nanmean(self.per_class_iou())),
            "pixel_accuracy": float(np.trace(self.confusion) / total),
        }

    def __call__(self, eval_prediction, compute_result: bool | None = None) -> dict[str, float]:
        if compute_result is None:
            self.reset()
        self.update(eval_prediction.predictions, eval_prediction.label_ids)
        if compute_result is False:
            return {}
        scores = self.compute()
        self.reset()
        return scores


def _to_numpy(values) -> np.ndarray:
    if isinstance(values, (tuple, list)):
        values = values[0]
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


__all__ = [
    "IGNORE_INDEX",
    "SegmentationCollator",
    "SegmentationMetrics",
    "SemanticSegmentationDataset",
    "check_label_space",
    "confusion_matrix",
    "load_ade20k",
    "load_coco_semantic",
    "preprocess_logits_for_metrics",
    "train_validation_split",
]
