"""Detection on EvoNet backbones: COCO / VOC loaders on the real sample data, box conventions, the pycocotools
metric, RT-DETR with an EvoNet backbone (loss, save / load, backbone from a folder) and a short Trainer run."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForObjectDetection,
    EvalPrediction,
    RTDetrImageProcessorPil,
    Trainer,
    TrainingArguments,
    pipeline,
)

import evonets
from evonets.data.detection import (
    CocoDetectionEvaluator,
    DetectionPreprocessor,
    collate_detection,
    id2label,
    load_coco_detection,
    load_voc_detection,
    mean_box_detections,
)
from evonets.models.detection import build_rt_detr

IMAGE_SIZE = 128
BCCD_CLASSES = ["Platelets", "RBC", "WBC"]
TINY_DETECTOR = {
    "encoder_hidden_dim": 32,
    "encoder_ffn_dim": 64,
    "d_model": 32,
    "decoder_ffn_dim": 64,
    "decoder_layers": 2,
    "num_queries": 30,
    "num_denoising": 10,
}


def tiny_backbone(**kwargs) -> evonets.EvoNetConfig:
    return evonets.EvoNetConfig(
        depths=[1, 1, 1, 1],
        hidden_sizes=[16, 32, 48, 64],
        block_types=["conv", "ssd", "attention", "attention"],
        mlp_ratios=2.0,
        d_states=4,
        **kwargs,
    )


def processor() -> RTDetrImageProcessorPil:
    return RTDetrImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_normalize=True)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def coco128(shared_data):
    return load_coco_detection(shared_data / "coco128")


@pytest.fixture(scope="module")
def bccd(shared_data):
    return {split: load_voc_detection(shared_data / "bccd", split) for split in ("train", "val")}


def boxes_of(dataset, crowd: bool | None = None) -> list[list[float]]:
    return [
        box
        for objects in dataset["objects"]
        for box, iscrowd in zip(objects["bbox"], objects["iscrowd"])
        if crowd is None or bool(iscrowd) == crowd
    ]


def assert_boxes_inside_images(dataset) -> None:
    for row in dataset.select_columns(["width", "height", "objects"]):
        for x, y, w, h in row["objects"]["bbox"]:
            assert w > 0 and h > 0
            assert x >= 0 and y >= 0 and x + w <= row["width"] + 1e-3 and y + h <= row["height"] + 1e-3


# ---------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------


def test_coco_loader_counts_crowd_and_negatives(coco128):
    assert len(coco128) == 128
    assert len(boxes_of(coco128, crowd=False)) == 929
    assert len(boxes_of(coco128, crowd=True)) == 10
    names = id2label(coco128)
    assert len(names) == 80 and names[0] == "person" and names[79] == "toothbrush"  # COCO ids 1..90 -> 0..79
    assert sum(len(objects["bbox"]) == 0 for objects in coco128["objects"]) == 2  # kept as negatives
    first = coco128[0]
    assert (first["width"], first["height"]) == first["image"].size
    assert_boxes_inside_images(coco128)


def test_voc_loader_counts_and_clips_degenerate_boxes(shared_data, caplog):
    with caplog.at_level(logging.WARNING, logger="evonets.data.detection"):
        train = load_voc_detection(shared_data / "bccd", "train")
        val = load_voc_detection(shared_data / "bccd", "val")
    assert (len(train), len(val)) == (205, 87)
    assert id2label(train) == id2label(val) == dict(enumerate(BCCD_CLASSES))
    # 2805 + 1138 boxes in the XML files; one zero-area box (xmin == xmax, ymin == ymax) in each split is dropped
    assert (len(boxes_of(train)), len(boxes_of(val))) == (2804, 1137)
    dropped = [record.getMessage() for record in caplog.records if "dropped" in record.getMessage()]
    assert len(dropped) == 2
    assert "BloodImage_00343.jpg" in dropped[0] and "BloodImage_00338.jpg" in dropped[1]
    assert_boxes_inside_images(train)
    assert_boxes_inside_images(val)
    assert set(train["width"]) == {640} and set(train["height"]) == {480}


# ---------------------------------------------------------------------------------------------------------------
# Box conventions, post-processing, metric
# ---------------------------------------------------------------------------------------------------------------


def ground_truth_outputs(labels: list[dict], num_labels: int, num_queries: int):
    """Model outputs that "detect" exactly the processed targets: one confident query per box."""
    logits = torch.full((len(labels), num_queries, num_labels), -20.0)
    pred_boxes = torch.full((len(labels), num_queries, 4), 0.5)
    for index, target in enumerate(labels):
        count = len(target["class_labels"])
        logits[index, torch.arange(count), target["class_labels"]] = 20.0
        pred_boxes[index, :count] = target["boxes"]
    return logits, pred_boxes


@pytest.mark.parametrize("data", ["bccd", "coco128"])
def test_boxes_round_trip_to_original_image_coordinates(data, bccd, coco128):
    """xywh pixels -> (processor) normalised cxcywh at 128x128 -> (post-processing) xyxy in the ORIGINAL size."""
    dataset = bccd["val"] if data == "bccd" else coco128
    rows = dataset.select(range(6))
    image_processor = processor()
    batch = collate_detection([rows.with_transform(DetectionPreprocessor(image_processor))[i] for i in range(6)])
    assert batch["pixel_values"].shape == (6, 3, IMAGE_SIZE, IMAGE_SIZE)
    for target in batch["labels"]:
        assert target["boxes"].min() >= 0 and target["boxes"].max() <= 1
    evaluator = CocoDetectionEvaluator(rows, image_processor)
    logits, pred_boxes = ground_truth_outputs(batch["labels"], len(id2label(dataset)), num_queries=100)
    detections = evaluator.post_process(logits, pred_boxes, batch["labels"])
    for row, detection in zip(rows, detections):
        assert detection["image_id"] == row["image_id"]
        keep = [not crowd for crowd in row["objects"]["iscrowd"]]
        expected = np.array([[x, y, x + w, y + h] for (x, y, w, h), k in zip(row["objects"]["bbox"], keep) if k])
        found = detection["boxes"][detection["scores"] > 0.5].numpy()
        assert found.shape == expected.shape
        # order of the confident queries follows the score sort: compare as sets of boxes
        np.testing.assert_allclose(np.sort(found, axis=0), np.sort(expected, axis=0), atol=0.05)
        assert (row["width"], row["height"]) != (IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize("data", ["bccd", "coco128"])
def test_cocoeval_perfect_empty_and_mean_box_baseline(data, bccd, coco128):
    dataset = bccd["val"] if data == "bccd" else coco128
    evaluator = CocoDetectionEvaluator(dataset, processor())
    perfect = []
    for row in dataset.select_columns(["image_id", "objects"]):
        objects = row["objects"]
        keep = [i for i, crowd in enumerate(objects["iscrowd"]) if not crowd]  # crowd boxes are ignore regions
        boxes = np.array([objects["bbox"][i] for i in keep]).reshape(-1, 4)
        perfect.append(
            {
                "image_id": row["image_id"],
                "boxes": np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1),
                "scores": np.ones(len(keep)),
                "labels": np.array([objects["category"][i] for i in keep]),
            }
        )
    metrics = evaluator.evaluate(perfect)
    assert metrics["map"] == pytest.approx(1.0) and metrics["map_50"] == pytest.approx(1.0)
    empty = evaluator.evaluate([])
    assert empty["map"] == 0.0 and empty["map_50"] == 0.0
    train = bccd["train"] if data == "bccd" else coco128
    baseline = evaluator.evaluate(mean_box_detections(train, dataset))
    assert 0.0 <= baseline["map"] < 0.2


def test_compute_metrics_reads_trainer_eval_batches(bccd):
    """`Trainer` with eval_do_concat_batches=False hands over per-batch output tuples (loss_dict first when labels
    were given) and per-batch label lists; model outputs equal to the targets score mAP 1."""
    rows = bccd["val"].select(range(5))
    image_processor = processor()
    encoded = rows.with_transform(DetectionPreprocessor(image_processor))
    batches = [collate_detection([encoded[i] for i in chunk]) for chunk in ([0, 1, 2], [3, 4])]
    predictions, label_ids = [], []
    for batch in batches:
        logits, pred_boxes = ground_truth_outputs(batch["labels"], 3, num_queries=40)
        predictions.append(({"loss_vfl": np.float32(0.1)}, logits.numpy(), pred_boxes.numpy(), np.zeros((3, 40, 32))))
        label_ids.append([{key: value.numpy() for key, value in target.items()} for target in batch["labels"]])
    metrics = CocoDetectionEvaluator(rows, image_processor)(
        EvalPrediction(predictions=predictions, label_ids=label_ids)
    )
    assert metrics["map"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="eval_do_concat_batches=False"):
        CocoDetectionEvaluator(rows, image_processor)(
            EvalPrediction(predictions=np.zeros((5, 40, 3)), label_ids=label_ids)
        )


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


def write_coco(tmp_path, images: list[dict], annotations: list[dict], categories=None):
    path = tmp_path / "annotations" / "instances.json"
    path.parent.mkdir(exist_ok=True)
    categories = categories if categories is not None else [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_loader_errors_and_negatives(tmp_path, shared_data):
    images_dir = str(shared_data / "coco128" / "images")
    image = {"id": 9, "file_name": "000000000009.jpg", "width": 640, "height": 480}
    negative = {"id": 25, "file_name": "000000000025.jpg"}
    box = {"id": 1, "image_id": 9, "category_id": 3, "bbox": [10, 20, 30, 40], "area": 1200.0, "iscrowd": 0}

    write_coco(tmp_path, [image, negative], [box])
    dataset = load_coco_detection(tmp_path, "annotations/instances.json", images_dir)
    assert id2label(dataset) == {0: "person", 1: "car"}
    assert dataset[0]["objects"]["category"] == [1] and dataset[1]["objects"]["bbox"] == []  # negative kept
    remapped = load_coco_detection(tmp_path, "annotations/instances.json", images_dir, class_names=["car", "person"])
    assert remapped[0]["objects"]["category"] == [0]

    with pytest.raises(ValueError, match=r"category 'car' .* not in the label space: expected one of \['person'\]"):
        load_coco_detection(tmp_path, "annotations/instances.json", images_dir, class_names=["person"])
    write_coco(tmp_path, [image], [{**box, "category_id": 7}])
    with pytest.raises(
        ValueError, match=r"category_id = 7, which is not in the file's categories \(allowed ids: \[1, 3\]"
    ):
        load_coco_detection(tmp_path, "annotations/instances.json", images_dir)
    write_coco(tmp_path, [image], [])
    with pytest.raises(ValueError, match="has no 'annotations'"):
        load_coco_detection(tmp_path, "annotations/instances.json", images_dir)
    write_coco(tmp_path, [{**image, "file_name": "missing.jpg"}], [box])
    with pytest.raises(FileNotFoundError, match="1 image files referenced .* do not exist .*missing.jpg"):
        load_coco_detection(tmp_path, "annotations/instances.json", images_dir)
    write_coco(tmp_path, [{**image, "width": 320}], [box])
    with pytest.raises(ValueError, match="declares image .* as 320x480, but the file is 640x480"):
        load_coco_detection(tmp_path, "annotations/instances.json", images_dir)

    with pytest.raises(
        ValueError, match=r"split = 'test' is not a split .* expected one of \['train', 'trainval', 'val'\]"
    ):
        load_voc_detection(shared_data / "bccd", "test")
    with pytest.raises(ValueError, match=r"category 'Platelets' .* expected one of \['RBC', 'WBC'\]"):
        load_voc_detection(shared_data / "bccd", "val", class_names=["RBC", "WBC"])


def test_builder_and_evaluator_errors(bccd):
    with pytest.raises(ValueError, match="id2label = .* expected a non-empty mapping from 0, 1"):
        build_rt_detr(tiny_backbone(), {1: "RBC", 2: "WBC"})
    with pytest.raises(ValueError, match=r"out_features = \['stage5'\] is invalid: .*\['stage1', 'stage2'"):
        build_rt_detr(tiny_backbone(), {0: "cell"}, out_features=["stage5"])
    evaluator = CocoDetectionEvaluator(bccd["val"], processor())
    wrong = [{"image_id": 0, "boxes": np.array([[0, 0, 10, 10]]), "scores": np.array([0.9]), "labels": np.array([3])}]
    with pytest.raises(ValueError, match=r"label indices in \[0, 3\)"):
        evaluator.evaluate(wrong)
    with pytest.raises(ValueError, match=r"image_id \[1000\] which are not in the evaluated split"):
        evaluator.evaluate([{**wrong[0], "image_id": 1000, "labels": np.array([1])}])


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bccd_batch(bccd):
    """Four real BCCD validation images plus one without boxes (the same image, its boxes removed)."""
    encoded = bccd["val"].select(range(4)).with_transform(DetectionPreprocessor(processor()))
    examples = [encoded[i] for i in range(4)]
    negative = {**examples[0], "labels": {**examples[0]["labels"]}}
    negative["labels"]["class_labels"] = negative["labels"]["class_labels"][:0]
    negative["labels"]["boxes"] = negative["labels"]["boxes"][:0]
    return collate_detection(examples + [negative])


def test_forward_backward_with_labels(bccd_batch):
    torch.manual_seed(0)
    model = build_rt_detr(tiny_backbone(), dict(enumerate(BCCD_CLASSES)), **TINY_DETECTOR)
    assert isinstance(model.model.backbone.model, evonets.EvoNetBackbone)
    assert model.config.feat_strides == [8, 16, 32] and model.config.encoder_in_channels == [32, 48, 64]
    model.train()
    outputs = model(**bccd_batch)
    assert torch.isfinite(outputs.loss) and "loss_giou" in outputs.loss_dict
    outputs.loss.backward()
    stem = model.model.backbone.model.embeddings.patch_embeddings.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    with torch.no_grad():  # in training, the denoising queries are appended to the 30 object queries
        outputs = model.eval()(**bccd_batch)
    assert outputs.logits.shape == (5, 30, 3) and outputs.pred_boxes.shape == (5, 30, 4)
    assert torch.isfinite(outputs.loss)


def test_save_load_round_trip_and_pipeline(tmp_path, bccd_batch, bccd):
    torch.manual_seed(0)
    model = build_rt_detr(tiny_backbone(), dict(enumerate(BCCD_CLASSES)), **TINY_DETECTOR).eval()
    model.save_pretrained(tmp_path)
    processor().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "rt_detr" and saved["backbone_config"]["model_type"] == "evonet"
    assert saved["backbone_config"]["out_features"] == ["stage2", "stage3", "stage4"]
    loaded = AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.model.backbone.model, evonets.EvoNetBackbone)
    with torch.no_grad():
        expected, actual = model(bccd_batch["pixel_values"]), loaded(bccd_batch["pixel_values"])
    torch.testing.assert_close(actual.logits, expected.logits)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes)

    detector = pipeline("object-detection", model=str(tmp_path), device="cpu", threshold=0.0)
    image = bccd["val"][0]["image"]
    found = detector(image)
    assert found and {d["label"] for d in found} <= set(BCCD_CLASSES)
    assert max(d["box"]["xmax"] for d in found) <= image.width and max(d["box"]["ymax"] for d in found) <= image.height


def test_backbone_from_a_saved_evonet_folder(tmp_path):
    torch.manual_seed(0)
    classifier = evonets.EvoNetForImageClassification(tiny_backbone(num_labels=5))
    classifier.save_pretrained(tmp_path)
    model = build_rt_detr(tmp_path, {0: "cell"}, **TINY_DETECTOR)
    backbone = model.model.backbone.model.state_dict()
    source = classifier.evonet.state_dict()
    shared = [key for key in backbone if key in source]
    assert len(shared) > 20 and all(key.startswith("hidden_states_norms.") for key in set(backbone) - set(shared))
    for key in shared:
        torch.testing.assert_close(backbone[key], source[key], msg=key)
    fresh = build_rt_detr(tiny_backbone(), {0: "cell"}, **TINY_DETECTOR).model.backbone.model.state_dict()
    assert not torch.equal(fresh["embeddings.patch_embeddings.weight"], backbone["embeddings.patch_embeddings.weight"])


def test_trainer_fine_tunes_and_evaluates_on_real_bccd(bccd, tmp_path):
    """A short real Trainer run on 16 BCCD images: the loss on them falls, and evaluation goes through the COCO
    compute_metrics."""
    torch.manual_seed(0)
    rows = bccd["train"].select(range(16))
    image_processor = processor()
    model = build_rt_detr(tiny_backbone(), id2label(rows), **TINY_DETECTOR)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=30,
        learning_rate=1e-3,
        warmup_steps=3,
        max_grad_norm=0.1,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        eval_do_concat_batches=False,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=collate_detection,
        train_dataset=rows.with_transform(DetectionPreprocessor(image_processor, augment=True)),
        eval_dataset=rows.with_transform(DetectionPreprocessor(image_processor)),
        compute_metrics=CocoDetectionEvaluator(rows, image_processor),
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < 0.8 * before["eval_loss"]
    assert 0.0 <= after["eval_map"] <= 1.0 and 0.0 <= after["eval_map_50"] <= 1.0
