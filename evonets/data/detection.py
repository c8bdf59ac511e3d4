"""Object-detection data: COCO-JSON and Pascal-VOC-XML loaders, RT-DETR preprocessing, collator, COCO mAP.

Both loaders give the same `datasets.Dataset` (the layout of the Hub's detection datasets, e.g. cppe-5):

- `image_id` (int), `image` (decoded lazily from its file), `width`, `height` (pixels, read from the file header);
- `objects`: `bbox` (absolute `[x, y, w, h]` in original-image pixels, COCO order), `category` (`ClassLabel`: the
  label index of the detector, `0 .. num_labels - 1`), `area` (pixels^2) and `iscrowd` (1 = an ignore region:
  COCO crowd boxes, VOC "difficult" objects; pycocotools ignores them and the RT-DETR image processor drops them
  from the training targets).

Box rules, the same for both formats and applied once at load time, so training targets and evaluation ground truth
agree: boxes are clipped to the image; boxes that have zero width or height after clipping are dropped with a
warning that names them. Images with no boxes are kept as negatives (COCO allows them; for VOC, an XML file
without `<object>`). A label space can be imposed with `class_names` (e.g. a model's `id2label`): a category
outside it raises `ValueError`. A referenced image file that does not exist raises `FileNotFoundError`.

`DetectionPreprocessor` turns rows into `pixel_values` and RT-DETR `labels` ({`class_labels`, `boxes` normalised
`(cx, cy, w, h)`, `image_id`, `orig_size`, ...}) with transformers' RT-DETR image processor; `collate_detection`
batches them for `Trainer`; `CocoDetectionEvaluator` is a `compute_metrics` that runs pycocotools' COCOeval on the
predictions, post-processed to absolute `(x0, y0, x1, y1)` boxes in the original image size.

`datasets`, PIL and pycocotools are imported lazily: the modeling code never needs them.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from evonets.data.augmentation import SeededAugmentation

if TYPE_CHECKING:
    import datasets
    from pycocotools.coco import COCO

logger = logging.getLogger(__name__)

COCO_METRICS = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)  # fmt: skip
"""Names of COCOeval's 12 summary numbers, in its order: box AP (IoU 0.5:0.95, 0.5, 0.75, by size), then AR."""


# ---------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------


def load_coco_detection(
    root: str | Path,
    annotation_file: str = "annotations/instances_train2017.json",
    images_dir: str = "images",
    class_names: Sequence[str] | None = None,
) -> datasets.Dataset:
    """A COCO-JSON detection set (e.g. `shared_data_dir() / "coco128"`) as a `datasets.Dataset` (see module doc).

    Categories become label indices in the order of `class_names` if given (matched by name), else in the order of
    the JSON's `categories` sorted by id (COCO's 80 classes become 0..79). Raises `ValueError` for an annotation file
    without images or without annotations, or for a `category_id` missing from `categories` / `class_names`.
    """
    root = Path(root)
    path = root / annotation_file
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file {str(path)!r} does not exist.")
    coco = json.loads(path.read_text())
    for key in ("images", "annotations", "categories"):
        if not coco.get(key):
            raise ValueError(
                f"COCO annotation file {str(path)!r} has no {key!r}: a detection set needs images, categories and "
                "at least one box (images without boxes are fine as negatives)."
            )
    categories = sorted(coco["categories"], key=lambda category: category["id"])
    category_names = {category["id"]: category["name"] for category in categories}
    names = list(class_names) if class_names is not None else [category["name"] for category in categories]
    label_of = {name: index for index, name in enumerate(names)}
    objects_of: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        category_id = annotation["category_id"]
        if category_id not in category_names:
            raise ValueError(
                f"annotation {annotation.get('id')} in {str(path)!r} has category_id = {category_id}, which is not "
                f"in the file's categories (allowed ids: {sorted(category_names)})."
            )
        if annotation["image_id"] not in objects_of:
            raise ValueError(
                f"annotation {annotation.get('id')} in {str(path)!r} refers to image_id = {annotation['image_id']}, "
                "which is not in the file's images."
            )
        objects_of[annotation["image_id"]].append(
            {
                "bbox": annotation["bbox"],
                "name": category_names[category_id],
                "area": annotation.get("area"),
                "iscrowd": annotation.get("iscrowd", 0),
            }
        )
    rows = [
        {
            "image_id": image["id"],
            "path": root / images_dir / image["file_name"],
            "declared_size": (image.get("width"), image.get("height")),
            "objects": objects_of[image["id"]],
        }
        for image in coco["images"]
    ]
    return _build_dataset(rows, names, label_of, source=str(path))


def load_voc_detection(
    root: str | Path, split: str = "train", class_names: Sequence[str] | None = None
) -> datasets.Dataset:
    """A Pascal-VOC split (e.g. `shared_data_dir() / "bccd"`, `split="val"`) as a `datasets.Dataset` (module doc).

    Reads `ImageSets/Main/<split>.txt`, `Annotations/<id>.xml` and `JPEGImages/<filename>`. Categories become label
    indices in the order of `class_names` if given, else of the sorted names found in all of `Annotations/` (so
    every split of one folder has the same label space). `image_id` is the image's line number in the split file.
    """
    root = Path(root)
    split_dir = root / "ImageSets" / "Main"
    available = sorted(path.stem for path in split_dir.glob("*.txt"))
    if split not in available:
        raise ValueError(
            f"split = {split!r} is not a split of the VOC folder {str(root)!r}: expected one of {available}."
        )
    stems = (split_dir / f"{split}.txt").read_text().split()
    if not stems:
        raise ValueError(f"split file {str(split_dir / f'{split}.txt')!r} is empty.")
    if class_names is None:
        found = {name for xml in (root / "Annotations").glob("*.xml") for name, *_ in _voc_objects(xml)}
        names = sorted(found)
    else:
        names = list(class_names)
    label_of = {name: index for index, name in enumerate(names)}
    rows = []
    for image_id, stem in enumerate(stems):
        xml = root / "Annotations" / f"{stem}.xml"
        if not xml.is_file():
            raise FileNotFoundError(f"VOC annotation {str(xml)!r} (listed in split {split!r}) does not exist.")
        tree = _parse_xml(xml)
        filename = tree.findtext("filename") or f"{stem}.jpg"
        declared = (_int_or_none(tree.findtext("size/width")), _int_or_none(tree.findtext("size/height")))
        objects = [
            {"bbox": [x0, y0, x1 - x0, y1 - y0], "name": name, "area": None, "iscrowd": int(difficult)}
            for name, x0, y0, x1, y1, difficult in _voc_objects(xml)
        ]
        rows.append(
            {
                "image_id": image_id,
                "path": root / "JPEGImages" / filename,
                "declared_size": declared,
                "objects": objects,
            }
        )
    return _build_dataset(rows, names, label_of, source=str(root))


def id2label(dataset: datasets.Dataset) -> dict[int, str]:
    """The label space of a dataset made by the loaders above, as a model config's `id2label`."""
    return dict(enumerate(dataset.features["objects"]["category"].feature.names))


def _parse_xml(xml: Path) -> ET.Element:
    try:
        return ET.parse(xml).getroot()
    except ET.ParseError as error:
        raise ValueError(f"VOC annotation {str(xml)!r} is not valid XML ({error}).") from error


def _voc_objects(xml: Path) -> list[tuple[str, float, float, float, float, bool]]:
    """(name, xmin, ymin, xmax, ymax, difficult) of every `<object>` of a VOC XML file, as written."""
    objects = []
    for element in _parse_xml(xml).iter("object"):
        name = (element.findtext("name") or "").strip()
        corners = [element.findtext(f"bndbox/{key}") for key in ("xmin", "ymin", "xmax", "ymax")]
        if not name or None in corners:
            raise ValueError(f"VOC annotation {str(xml)!r} has an <object> without <name> or a full <bndbox>.")
        objects.append((name, *(float(value) for value in corners), element.findtext("difficult", "0").strip() == "1"))
    return objects


def _int_or_none(text: str | None) -> int | None:
    return int(float(text)) if text else None


def _build_dataset(rows: list[dict], names: list[str], label_of: dict[str, int], source: str) -> datasets.Dataset:
    """Check files and categories, clip boxes, drop empty ones, and build the `datasets.Dataset`."""
    import datasets
    from PIL import Image

    missing = [str(row["path"]) for row in rows if not row["path"].is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image files referenced by {source!r} do not exist (first: {missing[0]!r})."
        )
    columns: dict[str, list] = {"image_id": [], "image": [], "width": [], "height": [], "objects": []}
    dropped = []
    for row in rows:
        with Image.open(row["path"]) as image:  # reads the header only
            width, height = image.size
        declared_width, declared_height = row["declared_size"]
        if declared_width and declared_height and (declared_width, declared_height) != (width, height):
            raise ValueError(
                f"{source!r} declares image {str(row['path'])!r} as {declared_width}x{declared_height}, but the "
                f"file is {width}x{height}."
            )
        objects = {"bbox": [], "category": [], "area": [], "iscrowd": []}
        for obj in row["objects"]:
            if obj["name"] not in label_of:
                raise ValueError(
                    f"category {obj['name']!r} of image {str(row['path'])!r} is not in the label space: expected one "
                    f"of {names} (class_names / id2label)."
                )
            x, y, w, h = (float(value) for value in obj["bbox"])
            x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x1 <= x0 or y1 <= y0:
                dropped.append(f"{row['path'].name} {obj['name']} {[x, y, w, h]}")
                continue
            objects["bbox"].append([x0, y0, x1 - x0, y1 - y0])
            objects["category"].append(label_of[obj["name"]])
            objects["area"].append(float(obj["area"]) if obj["area"] is not None else (x1 - x0) * (y1 - y0))
            objects["iscrowd"].append(int(obj["iscrowd"]))
        columns["image_id"].append(int(row["image_id"]))
        columns["image"].append(str(row["path"]))
        columns["width"].append(width)
        columns["height"].append(height)
        columns["objects"].append(objects)
    if dropped:
        logger.warning(
            "%s: dropped %d boxes with zero width or height after clipping to the image: %s",
            source,
            len(dropped),
            "; ".join(dropped),
        )
    features = datasets.Features(
        {
            "image_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "objects": {
                "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                "category": datasets.List(datasets.ClassLabel(names=names)),
                "area": datasets.List(datasets.Value("float32")),
                "iscrowd": datasets.List(datasets.Value("int8")),
            },
        }
    )
    return datasets.Dataset.from_dict(columns, features=features)


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing and collation
# ---------------------------------------------------------------------------------------------------------------


def coco_annotations(image_id: int, objects: Mapping[str, list]) -> dict[str, Any]:
    """One dataset row's `objects` in the COCO-detection form the DETR-family image processors take as
    `annotations`: `{"image_id", "annotations": [{"bbox": [x, y, w, h], "category_id", "area", "iscrowd"}]}`."""
    return {
        "image_id": image_id,
        "annotations": [
            {"bbox": list(bbox), "category_id": category, "area": area, "iscrowd": iscrowd}
            for bbox, category, area, iscrowd in zip(
                objects["bbox"], objects["category"], objects["area"], objects["iscrowd"]
            )
        ],
    }


class DetectionPreprocessor(SeededAugmentation):
    """A `Dataset.with_transform` function: rows -> `pixel_values` (3, H, W) and RT-DETR `labels`.

    The image processor (e.g. `RTDetrImageProcessorPil(size={"height": 256, "width": 256}, do_normalize=True)`)
    resizes, rescales and normalises the image and turns the boxes into normalised `(cx, cy, w, h)`; crowd / difficult
    objects are left out of the targets. With `augment=True` each image is flipped left-right with probability 1/2
    (boxes flipped with it), drawn from the item's own generator (`evonets.data.augmentation`), keyed by the row's
    `image_id`: a `with_transform` function sees rows, not positions. Call `set_epoch` for new draws per epoch.
    """

    def __init__(self, image_processor, augment: bool = False, seed: int = 0):
        self.image_processor = image_processor
        self.augment = augment
        self.seed = seed

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        images, annotations = [], []
        for image_id, image, objects in zip(batch["image_id"], batch["image"], batch["objects"]):
            image = image.convert("RGB")
            if self.augment and self.item_rng(image_id).random() < 0.5:
                image, objects = _flip_left_right(image, objects)
            images.append(image)
            annotations.append(coco_annotations(image_id, objects))
        encoded = self.image_processor(images=images, annotations=annotations, return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"], "labels": encoded["labels"]}


def _flip_left_right(image, objects: Mapping[str, list]):
    from PIL import Image

    width = image.width
    flipped = {**objects, "bbox": [[width - x - w, y, w, h] for x, y, w, h in objects["bbox"]]}
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), flipped


def collate_detection(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """`Trainer` data collator: stack `pixel_values` (B, 3, H, W); keep `labels` as a list of per-image dicts
    (the DETR-family losses take a list, since images have different numbers of boxes)."""
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": [example["labels"] for example in examples],
    }


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------


class CocoDetectionEvaluator:
    """COCO box mAP of detections on one dataset split, with pycocotools; also a `Trainer` `compute_metrics`.

    The ground truth is the split itself (original-image pixels, crowd / difficult boxes as ignore regions). Use
    it directly with `evaluate(detections)`, or as `Trainer(compute_metrics=evaluator)` with
    `TrainingArguments(eval_do_concat_batches=False)`: then each evaluation batch brings the model's `logits`
    (B, Q, num_labels) and `pred_boxes` (B, Q, 4, normalised cx, cy, w, h), which the image processor's
    `post_process_object_detection` turns into absolute `(x0, y0, x1, y1)` boxes at each image's `orig_size`
    (from the labels). Returns the COCOeval summary as `COCO_METRICS` (mAP over IoU 0.5:0.95, mAP@0.5, ...); no
    detections score 0, and -1 means the split has no ground truth in that size range, as in pycocotools.
    """

    def __init__(self, dataset: datasets.Dataset, image_processor, threshold: float = 0.0):
        self.image_processor = image_processor
        self.threshold = threshold
        self.num_labels = len(id2label(dataset))
        self.ground_truth = _coco_ground_truth(dataset.select_columns(["image_id", "width", "height", "objects"]))

    def __call__(self, eval_prediction) -> dict[str, float]:
        detections = []
        for outputs, targets in zip(eval_prediction.predictions, eval_prediction.label_ids):
            logits, pred_boxes = _logits_and_boxes(outputs)
            detections += self.post_process(logits, pred_boxes, targets)
        return self.evaluate(detections)

    def post_process(self, logits, pred_boxes, targets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One batch of model outputs -> per-image `{"image_id", "scores", "labels", "boxes" (x0, y0, x1, y1)}` in
        original-image pixels. `targets` are the batch's labels (for `image_id` and `orig_size` = (height, width))."""
        from transformers.utils import ModelOutput

        outputs = ModelOutput(logits=torch.as_tensor(logits), pred_boxes=torch.as_tensor(pred_boxes))
        sizes = torch.as_tensor(np.stack([np.asarray(target["orig_size"]) for target in targets]))
        results = self.image_processor.post_process_object_detection(
            outputs, threshold=self.threshold, target_sizes=sizes
        )
        for result, target in zip(results, targets):
            result["image_id"] = int(np.asarray(target["image_id"]).reshape(-1)[0])
        return results

    def evaluate(self, detections: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """COCO metrics of per-image detections (`image_id`, `scores`, `labels`, `boxes` as absolute x0, y0, x1, y1
        in the original image)."""
        from pycocotools.cocoeval import COCOeval

        results = []
        for detection in detections:
            boxes = np.asarray(detection["boxes"], dtype=np.float64).reshape(-1, 4)
            labels = np.asarray(detection["labels"]).reshape(-1)
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_labels):
                raise ValueError(
                    f"detection labels must be label indices in [0, {self.num_labels}) of the evaluated split; got "
                    f"{sorted(set(labels.tolist()))}."
                )
            for box, score, label in zip(boxes, np.asarray(detection["scores"]).reshape(-1), labels):
                x0, y0, x1, y1 = box.tolist()
                results.append(
                    {
                        "image_id": detection["image_id"],
                        "category_id": int(label),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": float(score),
                    }
                )
        evaluation = COCOeval(self.ground_truth, _coco_results(self.ground_truth, results), iouType="bbox")
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        return {name: float(value) for name, value in zip(COCO_METRICS, evaluation.stats)}


def _logits_and_boxes(outputs) -> tuple[np.ndarray, np.ndarray]:
    """The `logits` and `pred_boxes` of one evaluation batch as the Trainer gathers it: the model output's fields in
    declaration order, without `loss` (RT-DETR: `loss_dict` when labels were given, then `logits`, `pred_boxes`,
    ...). They are its first two arrays."""
    arrays = [value for value in outputs if isinstance(value, (np.ndarray, torch.Tensor))]
    if len(arrays) < 2 or arrays[1].shape[-1] != 4:
        raise ValueError(
            "compute_metrics expected a DETR-family output (logits, pred_boxes, ...) per evaluation batch; pass "
            "`eval_do_concat_batches=False` to TrainingArguments."
        )
    return arrays[0], arrays[1]


def _coco_ground_truth(dataset: datasets.Dataset) -> COCO:

    images, annotations = [], []
    for row in dataset:
        images.append({"id": row["image_id"], "width": row["width"], "height": row["height"]})
        objects = row["objects"]
        for bbox, category, area, iscrowd in zip(
            objects["bbox"], objects["category"], objects["area"], objects["iscrowd"]
        ):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": row["image_id"],
                    "category_id": category,
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": iscrowd,
                }
            )
    categories = [{"id": index, "name": name} for index, name in id2label(dataset).items()]
    return _coco_object({"images": images, "annotations": annotations, "categories": categories})


def _coco_results(ground_truth: COCO, results: list[dict]) -> COCO:
    """Detections as a pycocotools `COCO` object, as `COCO.loadRes` makes it for boxes (`loadRes` fails on an empty
    list, and on images not in the ground truth without saying which)."""
    known = set(ground_truth.getImgIds())
    unknown = {result["image_id"] for result in results} - known
    if unknown:
        raise ValueError(f"detections for image_id {sorted(unknown)[:5]} which are not in the evaluated split.")
    annotations = [
        {**result, "id": index + 1, "area": result["bbox"][2] * result["bbox"][3], "iscrowd": 0}
        for index, result in enumerate(results)
    ]
    return _coco_object(
        {
            "images": ground_truth.dataset["images"],
            "categories": ground_truth.dataset["categories"],
            "annotations": annotations,
        }
    )


def _coco_object(dataset: dict) -> COCO:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # "creating index..."
        coco.createIndex()
    return coco


def mean_box_detections(train: datasets.Dataset, dataset: datasets.Dataset) -> list[dict[str, Any]]:
    """A trivial detector for a baseline: on every image of `dataset`, for every class, the training set's mean box
    of that class (normalised `(cx, cy, w, h)`, scaled to the image) scored by the class's share of training boxes."""
    sums = np.zeros((len(id2label(train)), 4))
    counts = np.zeros(len(id2label(train)))
    for row in train.select_columns(["width", "height", "objects"]):
        scale = np.array([row["width"], row["height"]] * 2, dtype=np.float64)
        for (x, y, w, h), category, iscrowd in zip(*(row["objects"][key] for key in ("bbox", "category", "iscrowd"))):
            if not iscrowd:
                sums[category] += np.array([x + w / 2, y + h / 2, w, h]) / scale
                counts[category] += 1
    present = np.flatnonzero(counts)
    mean_boxes = sums[present] / counts[present, None]
    corners = np.concatenate([mean_boxes[:, :2] - mean_boxes[:, 2:] / 2, mean_boxes[:, :2] + mean_boxes[:, 2:] / 2], 1)
    priors = counts[present] / counts.sum()
    return [
        {
            "image_id": row["image_id"],
            "labels": present,
            "scores": priors,
            "boxes": corners * np.array([row["width"], row["height"]] * 2),
        }
        for row in dataset.select_columns(["image_id", "width", "height"])
    ]


__all__ = [
    "COCO_METRICS",
    "CocoDetectionEvaluator",
    "DetectionPreprocessor",
    "coco_annotations",
    "collate_detection",
    "id2label",
    "load_coco_detection",
    "load_voc_detection",
    "mean_box_detections",
]
