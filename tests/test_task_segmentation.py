"""Semantic segmentation: loaders on real ADE20K / COCO masks, metrics, label-space errors, the all-MLP head and
UperNet on EvoNet backbones (forward, backward, save / load, backbone from a folder), and a short real Trainer run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForSemanticSegmentation,
    EvalPrediction,
    Trainer,
    TrainingArguments,
)

import evonets
from evonets.data.segmentation import (
    IGNORE_INDEX,
    SegmentationCollator,
    SegmentationMetrics,
    check_label_space,
    confusion_matrix,
    load_ade20k,
    load_coco_semantic,
    preprocess_logits_for_metrics,
    train_validation_split,
)
from evonets.models.modeling_evonet_segmentation import build_upernet

IMAGE_SIZE = 64


def small_backbone() -> evonets.EvoNetConfig:
    return evonets.EvoNetConfig(
        image_size=IMAGE_SIZE,
        depths=[1, 1, 1, 1],
        hidden_sizes=[16, 32, 48, 64],
        block_types=["conv", "ss2d", "ssd", "attention"],
        mlp_ratios=2.0,
        d_states=4,
        num_heads=[1, 2, 2, 2],
    )


@pytest.fixture(scope="module")
def coco(shared_data):
    return load_coco_semantic(shared_data / "coco128", image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def ade(shared_data):
    return load_ade20k(shared_data / "ade20k_sample", image_size=IMAGE_SIZE)


def copy_ade20k(shared_data, tmp_path):
    """A writable copy of the ADE20K sample, to break in the error tests."""
    root = tmp_path / "ade"
    shutil.copytree(shared_data / "ade20k_sample", root)
    return root


# Loaders ------------------------------------------------------------------------------------------------------


def test_ade20k_loader_shapes_and_zero_becomes_ignore(ade, shared_data):
    assert len(ade) == 3 and ade.num_labels == 150
    assert ade.id2label[0] == "wall" and ade.id2label[2] == "sky"  # Idx 1 and 3 of objectInfo150.csv
    assert ade.label_mapping[1] == 0 and ade.label_mapping[150] == 149
    item = ade[0]
    assert item["pixel_values"].shape == (3, IMAGE_SIZE, IMAGE_SIZE) and item["pixel_values"].dtype == torch.float32
    assert item["labels"].shape == (IMAGE_SIZE, IMAGE_SIZE) and item["labels"].dtype == torch.int64
    # at full size, the remapped mask is the file minus one, with 0 ("other") -> IGNORE_INDEX
    raw = np.asarray(Image.open(ade.samples[0][1])).astype(np.int64)
    remapped = ade.load_labels(0, size=0)
    assert (raw == 0).any()
    np.testing.assert_array_equal(remapped, np.where(raw == 0, IGNORE_INDEX, raw - 1))


def test_coco_loader_remaps_sparse_panoptic_ids_to_contiguous(coco):
    assert len(coco) == 100  # 100 of the 128 images have a semantic mask; the rest are skipped
    assert coco.num_labels == 129 and sorted(coco.id2label) == list(range(129))
    assert coco.label_mapping[1] == 0 and coco.id2label[0] == "person"
    assert coco.label_mapping[200] == 128 and coco.id2label[128] == "rug-merged"
    assert coco.label_mapping[13] == 11 and coco.id2label[11] == "stop sign"  # 12 is not a COCO category
    assert 0 not in coco.label_mapping and coco.ignore_values == (0,)
    seen = set()
    for index in range(0, 100, 10):
        raw = np.asarray(Image.open(coco.samples[index][1])).astype(np.int64)
        remapped = coco.load_labels(index, size=0)
        expected = np.vectorize(lambda value: coco.label_mapping.get(value, IGNORE_INDEX))(raw)
        np.testing.assert_array_equal(remapped, expected)
        seen |= set(np.unique(remapped).tolist())
    assert max(seen - {IGNORE_INDEX}) < 129 and IGNORE_INDEX in seen
    item = coco[3]
    assert item["pixel_values"].shape == (3, IMAGE_SIZE, IMAGE_SIZE) and item["labels"].shape == (IMAGE_SIZE,) * 2


def test_train_validation_split_is_fixed_and_disjoint(coco):
    train, validation = train_validation_split(coco, validation_fraction=0.2, seed=0)
    again_train, again_validation = train_validation_split(coco, validation_fraction=0.2, seed=0)
    assert (len(train), len(validation)) == (80, 20)
    assert validation.samples == again_validation.samples and train.samples == again_train.samples
    assert not set(train.samples) & set(validation.samples)
    assert train.augment and not validation.augment
    other_seed = train_validation_split(coco, validation_fraction=0.2, seed=1)[1]
    assert other_seed.samples != validation.samples


def test_augmentation_crops_and_flips_image_and_mask_together(coco):
    plain = coco[0]
    flipped = coco.load_item(0, flip=True)
    torch.testing.assert_close(flipped["pixel_values"], plain["pixel_values"].flip(-1))
    assert torch.equal(flipped["labels"], plain["labels"].flip(-1))
    # a crop of the left half: the labels are that half of the full-resolution mask, remapped, resized (nearest)
    cropped = coco.load_item(0, region=(0.0, 0.0, 0.5, 1.0))
    with Image.open(coco.samples[0][1]) as mask:
        half = mask.crop((0, 0, round(mask.width / 2), mask.height)).resize((IMAGE_SIZE,) * 2, Image.Resampling.NEAREST)
    expected = np.vectorize(lambda value: coco.label_mapping.get(value, IGNORE_INDEX))(np.asarray(half))
    np.testing.assert_array_equal(cropped["labels"].numpy(), expected)
    assert cropped["pixel_values"].shape == plain["pixel_values"].shape
    assert not torch.allclose(cropped["pixel_values"], plain["pixel_values"])

    augmented = coco.subset([0], augment=True)
    draws = []
    for epoch in range(6):
        augmented.set_epoch(epoch)
        draws.append(augmented[0]["labels"])
    assert all(draw.shape == (IMAGE_SIZE, IMAGE_SIZE) for draw in draws)
    assert len({draw.numpy().tobytes() for draw in draws}) == 6  # a new window every epoch
    torch.manual_seed(123)  # the global generator plays no part: the item's own (seed, epoch, index) decides
    assert torch.equal(augmented[0]["labels"], draws[-1])
    augmented.set_epoch(0)
    assert torch.equal(augmented[0]["labels"], draws[0])
    assert not coco.subset([0])[0]["labels"].equal(draws[0])


# Metrics ------------------------------------------------------------------------------------------------------


def test_confusion_matrix_and_scores_on_a_hand_computed_case():
    # 3 classes; one ignored pixel (255) must not count
    labels = np.array([[0, 0, 1, 1], [2, 2, 2, IGNORE_INDEX]])
    predictions = np.array([[0, 1, 1, 1], [2, 2, 0, 1]])
    confusion = confusion_matrix(predictions, labels, num_labels=3)
    np.testing.assert_array_equal(confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    metrics = SegmentationMetrics(num_labels=3)
    metrics.update(predictions, labels)
    # IoU_0 = 1 / (2 + 2 - 1) = 1/3, IoU_1 = 2 / (2 + 3 - 2) = 2/3, IoU_2 = 2 / (3 + 2 - 2) = 2/3
    np.testing.assert_allclose(metrics.per_class_iou(), [1 / 3, 2 / 3, 2 / 3])
    scores = metrics.compute()
    assert scores["mean_iou"] == pytest.approx(5 / 9)
    assert scores["pixel_accuracy"] == pytest.approx(5 / 7)


def test_mean_iou_averages_only_classes_in_ground_truth_or_prediction():
    metrics = SegmentationMetrics(num_labels=5)
    labels = np.array([[0, 0, 0, 0]])
    metrics.update(np.array([[0, 0, 0, 3]]), labels)
    # class 0: 3 / 4; class 3 was predicted but never true: IoU 0; classes 1, 2, 4: absent, left out
    iou = metrics.per_class_iou()
    assert np.isnan(iou[[1, 2, 4]]).all()
    assert metrics.compute() == pytest.approx({"mean_iou": (0.75 + 0.0) / 2, "pixel_accuracy": 0.75})


def test_metrics_as_trainer_compute_metrics_whole_and_batched():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(6, 8, 8))
    labels[0, 0] = IGNORE_INDEX
    logits = rng.normal(size=(6, 4, 4, 4)).astype(np.float32)  # quarter resolution, as the MLP head gives
    predictions = preprocess_logits_for_metrics(torch.from_numpy(logits), torch.from_numpy(labels)).numpy()
    assert predictions.shape == labels.shape
    metrics = SegmentationMetrics(num_labels=4)
    whole = metrics(EvalPrediction(predictions=predictions, label_ids=labels))
    assert whole == metrics(EvalPrediction(predictions=logits, label_ids=labels))  # logits are resized the same way
    assert metrics(EvalPrediction(predictions=predictions[:3], label_ids=labels[:3]), compute_result=False) == {}
    batched = metrics(EvalPrediction(predictions=predictions[3:], label_ids=labels[3:]), compute_result=True)
    assert batched == pytest.approx(whole)
    manual = (predictions == labels)[labels != IGNORE_INDEX].mean()
    assert whole["pixel_accuracy"] == pytest.approx(manual)


def test_metrics_reject_class_ids_outside_the_label_space():
    with pytest.raises(ValueError, match=r"labels hold class ids outside \[0, 3\)"):
        confusion_matrix(np.zeros((2, 2), int), np.array([[0, 1], [2, 7]]), num_labels=3)
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), num_labels=3)
    with pytest.raises(ValueError, match="no labelled pixel"):
        metrics = SegmentationMetrics(num_labels=3)
        metrics.update(np.zeros((2, 2), int), np.full((2, 2), IGNORE_INDEX))
        metrics.compute()


# Errors on bad data -------------------------------------------------------------------------------------------


def test_image_without_mask_is_an_error_unless_skipped(shared_data, tmp_path):
    root = copy_ade20k(shared_data, tmp_path)
    (root / "annotations" / "ADE_val_00000002.png").unlink()
    with pytest.raises(ValueError, match=r"1 images .* have no mask .*ADE_val_00000002\.jpg.*missing_masks='skip'"):
        load_ade20k(root)
    assert len(load_ade20k(root, missing_masks="skip")) == 2
    with pytest.raises(ValueError, match=r"missing_masks = 'ignore' is invalid: expected one of \['error', 'skip'\]"):
        load_ade20k(root, missing_masks="ignore")


def test_mask_without_image_and_empty_folders_are_errors(shared_data, tmp_path):
    root = copy_ade20k(shared_data, tmp_path)
    (root / "images" / "ADE_val_00000003.jpg").unlink()
    with pytest.raises(ValueError, match=r"1 masks .* have no image .*ADE_val_00000003\.png"):
        load_ade20k(root)
    for mask in (root / "annotations").iterdir():
        mask.unlink()
    with pytest.raises(ValueError, match="annotation folder .* holds no mask PNGs"):
        load_ade20k(root)
    (root / "annotations").rmdir()
    with pytest.raises(ValueError, match="annotation folder .* does not exist"):
        load_ade20k(root)
    with pytest.raises(ValueError, match="ADE20K folder .*nowhere does not exist"):
        load_ade20k(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="COCO folder .*nowhere does not exist"):
        load_coco_semantic(tmp_path / "nowhere")


def test_empty_or_foreign_annotation_files_are_errors(shared_data, tmp_path):
    root = copy_ade20k(shared_data, tmp_path)
    mask_path = root / "annotations" / "ADE_val_00000001.png"
    original = np.asarray(Image.open(mask_path))
    mask_path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"ADE_val_00000001\.png is empty \(0 bytes\)"):
        load_ade20k(root)
    Image.fromarray(np.zeros_like(original)).save(mask_path)
    with pytest.raises(ValueError, match="has no labelled pixel"):
        load_ade20k(root)
    Image.fromarray(original[:100]).save(mask_path)
    with pytest.raises(ValueError, match="a mask must label every pixel of its image"):
        load_ade20k(root)
    Image.fromarray(np.stack([original] * 3, axis=-1)).save(mask_path)
    with pytest.raises(ValueError, match="PIL mode 'RGB': expected a single-channel 8-bit PNG"):
        load_ade20k(root)
    broken = original.copy()
    broken[0, 0] = 151  # ADE20K has 150 classes
    Image.fromarray(broken).save(mask_path)
    with pytest.raises(ValueError, match=r"holds values \[151\] that are neither a class"):
        load_ade20k(root)
    (root / "objectInfo150.csv").write_text("")
    with pytest.raises(ValueError, match="objectInfo150.csv is empty"):
        load_ade20k(root)


def test_label_space_mismatches_are_errors(coco, ade):
    collate = SegmentationCollator(num_labels=100)  # COCO has 129 classes
    items = [coco[index] for index in range(8)]
    assert max(int(item["labels"][item["labels"] != IGNORE_INDEX].max()) for item in items) >= 100
    with pytest.raises(ValueError, match=r"outside the model's label space: expected class ids in \[0, 100\)"):
        collate(items)
    batch = SegmentationCollator(num_labels=coco.num_labels)(items)
    assert batch["pixel_values"].shape == (8, 3, IMAGE_SIZE, IMAGE_SIZE) and batch["labels"].shape == (8, 64, 64)

    model = evonets.EvoNetForSemanticSegmentation.from_backbone(small_backbone(), id2label=ade.id2label)
    check_label_space(model.config, ade)
    with pytest.raises(ValueError, match="the model has num_labels = 150 but the dataset has 129 classes"):
        check_label_space(model.config, coco)
    with pytest.raises(ValueError, match=r"labels hold values \[150\] outside the model's label space"):
        model(batch["pixel_values"][:1], labels=torch.full((1, 64, 64), 150))
    with pytest.raises(ValueError, match="num_labels = 1 is invalid"):
        evonets.EvoNetSegmentationConfig(backbone_config=small_backbone(), num_labels=1)
    with pytest.raises(ValueError, match="semantic_loss_ignore_index = 3 is invalid"):
        evonets.EvoNetSegmentationConfig(num_labels=5, semantic_loss_ignore_index=3)


# Models -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", ["mlp", "upernet"])
def test_heads_forward_backward_and_round_trip(decoder, coco, tmp_path):
    torch.manual_seed(0)
    if decoder == "mlp":
        model = evonets.EvoNetForSemanticSegmentation.from_backbone(
            small_backbone(), id2label=coco.id2label, decoder_hidden_size=32
        )
        logits_size = IMAGE_SIZE // 4
    else:
        model = build_upernet(small_backbone(), id2label=coco.id2label, hidden_size=32)
        logits_size = IMAGE_SIZE
    assert isinstance(model.backbone, evonets.EvoNetBackbone)
    assert model.backbone.out_features == ["stage1", "stage2", "stage3", "stage4"]
    batch = SegmentationCollator(coco.num_labels)([coco[index] for index in range(2)])
    out = model(**batch)
    assert out.logits.shape == (2, 129, logits_size, logits_size)
    assert torch.isfinite(out.loss) and out.loss.item() == pytest.approx(np.log(129), rel=0.2)  # ~uniform at init
    out.loss.backward()
    assert model.backbone.embeddings.patch_embeddings.weight.grad.abs().sum() > 0
    assert model.backbone.encoder.stages[1].blocks[0].mixer.in_proj.weight.grad.abs().sum() > 0  # ss2d stage

    model.save_pretrained(tmp_path)
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.config.id2label[128] == "rug-merged"
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch["pixel_values"]).logits, model(batch["pixel_values"]).logits)
    if decoder == "mlp":  # remote code: the folder carries the modeling files
        assert (tmp_path / "modeling_evonet_segmentation.py").is_file()


LOAD_WITH_REMOTE_CODE = """
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForSemanticSegmentation

folder, tensors = sys.argv[1], load_file(sys.argv[2])
model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__name__ == "EvoNetForSemanticSegmentation" and not type(model).__module__.startswith("evonets")
with torch.no_grad():
    diff = (model(tensors["pixel_values"]).logits - tensors["logits"]).abs().max().item()
assert diff <= 1e-5, diff
print("ok", diff)
"""


def test_mlp_head_folder_loads_with_remote_code_without_evonets(tmp_path, without_evonets):
    torch.manual_seed(0)
    model = evonets.EvoNetForSemanticSegmentation.from_backbone(small_backbone(), id2label={0: "a", 1: "b"}).eval()
    model.save_pretrained(tmp_path / "model")
    pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        save_file(
            {"pixel_values": pixel_values, "logits": model(pixel_values).logits.contiguous()},
            tmp_path / "expected.safetensors",
        )
    result = without_evonets(LOAD_WITH_REMOTE_CODE, tmp_path / "model", tmp_path / "expected.safetensors")
    assert "ok" in result.stdout, result.stdout + result.stderr


def test_mlp_head_ignores_unlabelled_pixels_in_the_loss():
    torch.manual_seed(0)
    model = evonets.EvoNetForSemanticSegmentation.from_backbone(small_backbone(), id2label={0: "a", 1: "b", 2: "c"})
    model.eval()
    pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    labels = torch.randint(0, 3, (1, IMAGE_SIZE, IMAGE_SIZE))
    ignored = labels.clone()
    ignored[:, : IMAGE_SIZE // 2] = IGNORE_INDEX
    with torch.no_grad():
        logits = model(pixel_values).logits
        upsampled = torch.nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear")
        expected = torch.nn.functional.cross_entropy(upsampled[:, :, IMAGE_SIZE // 2 :], labels[:, IMAGE_SIZE // 2 :])
        torch.testing.assert_close(model(pixel_values, labels=ignored).loss, expected)


@pytest.mark.parametrize("decoder", ["mlp", "upernet"])
def test_backbone_from_a_saved_evonet_folder(decoder, tmp_path):
    torch.manual_seed(0)
    config = small_backbone()
    config.num_labels = 10
    classifier = evonets.EvoNetForImageClassification(config)
    folder = tmp_path / "models" / "abc123"
    classifier.save_pretrained(folder)
    id2label = {0: "background", 1: "thing", 2: "stuff"}
    if decoder == "mlp":
        model = evonets.EvoNetForSemanticSegmentation.from_backbone(folder, id2label=id2label)
    else:
        model = build_upernet(folder, id2label=id2label, hidden_size=32)
    saved = load_file(folder / "model.safetensors")
    backbone_state = model.backbone.state_dict()
    body = [key for key in backbone_state if not key.startswith("hidden_states_norms.")]
    assert len(body) > 20
    for key in body:
        torch.testing.assert_close(backbone_state[key], saved[f"evonet.{key}"])
    assert model.backbone.config.depths == config.depths
    assert model.config.num_labels == 3
    with pytest.raises(ValueError, match="not a saved EvoNet folder"):
        evonets.EvoNetForSemanticSegmentation.from_backbone(tmp_path / "missing", id2label=id2label)


# Trainer on real data ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_trainer_loss_falls_on_real_coco_masks(coco, tmp_path):
    torch.manual_seed(0)
    train, validation = train_validation_split(coco, validation_fraction=0.2, seed=0)
    train = train.subset(range(16))
    model = evonets.EvoNetForSemanticSegmentation.from_backbone(
        small_backbone(), id2label=coco.id2label, decoder_hidden_size=32
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=20,
        learning_rate=5e-3,
        warmup_steps=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        logging_steps=2,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation.subset(range(8)),
        data_collator=SegmentationCollator(coco.num_labels),
        compute_metrics=SegmentationMetrics(coco.num_labels),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:2]), losses
    assert after["eval_loss"] < before["eval_loss"]
    assert 0.0 <= after["eval_mean_iou"] <= 1.0 and 0.0 < after["eval_pixel_accuracy"] <= 1.0
