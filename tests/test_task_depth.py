"""Depth head on EvoNet backbones: sensor formats on the real RGB-D frames, loss, metrics, model, Auto round trip,
backbone from a saved folder, input errors, and a short real `Trainer` run."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForDepthEstimation, EvalPrediction, Trainer, TrainingArguments

import evonets
from evonets.data.depth import (
    DEPTH_FORMATS,
    DepthFramesDataset,
    collate_depth,
    compute_depth_metrics,
    decode_depth,
    depth_metrics,
    load_rgbd_frame,
    load_rgbd_sample,
    resize_frame,
)
from evonets.models.modeling_evonet_depth import scale_invariant_log_loss

ALL_STAGES = ["stage1", "stage2", "stage3", "stage4"]


def tiny_backbone(**kwargs) -> evonets.EvoNetConfig:
    return evonets.EvoNetConfig(
        depths=[1, 1, 1, 1],
        hidden_sizes=[16, 24, 32, 48],
        block_types=["ss2d", "ssd", "conv", "attention"],
        mlp_ratios=2.0,
        d_states=4,
        **kwargs,
    )


def tiny_depth_model(**kwargs) -> evonets.EvoNetForDepthEstimation:
    config = evonets.EvoNetDepthConfig(
        backbone_config=tiny_backbone(out_features=ALL_STAGES), decoder_hidden_size=16, head_hidden_size=8, **kwargs
    )
    return evonets.EvoNetForDepthEstimation(config)


@pytest.fixture(scope="module")
def rgbd_folder(shared_data):
    return shared_data / "rgbd_sample"


@pytest.fixture(scope="module")
def frames(rgbd_folder):
    return load_rgbd_sample(rgbd_folder)


# --- sensor formats on the real frames -------------------------------------------------------------------------------


def test_each_format_decodes_to_plausible_indoor_metres(frames):
    assert [(frame.name, frame.depth_format) for frame in frames] == [("nyu", "nyu"), ("tum", "tum"), ("sun", "sun")]
    for frame in frames:
        assert frame.depth.dtype == np.float32
        assert frame.depth.shape == (frame.image.height, frame.image.width)
        assert frame.valid_fraction > 0.5, (frame.name, frame.valid_fraction)
        valid = frame.depth[frame.depth > 0]
        low, median, high = np.percentile(valid, [1, 50, 99])
        assert 0.3 <= low and high <= 10.0, (frame.name, low, high)
        assert 1.0 <= median <= 5.0, (frame.name, median)


def test_sun_bit_rotation_matters(rgbd_folder, frames):
    raw = np.array(Image.open(rgbd_folder / "SUN_depth.png"))
    naive_metres = raw[raw > 0].astype(np.float64) / 1000.0
    rotated = frames[2].depth[frames[2].depth > 0]
    assert np.median(naive_metres) > 15.0  # without undoing the rotation an office corridor would be ~21 m deep
    assert np.median(rotated) < 4.0
    # hand-computed: millimetres m are stored as v = (m << 3) | (m >> 13) in 16 bits
    millimetres = np.array([[1234, 8191, 40000]], dtype=np.uint32)
    stored = (((millimetres << 3) | (millimetres >> 13)) & 0xFFFF).astype(np.uint16)
    np.testing.assert_allclose(decode_depth(stored, "sun"), millimetres / 1000.0, rtol=1e-6)
    assert not np.allclose(decode_depth(stored, "nyu"), millimetres / 1000.0)


def test_nyu_and_tum_scales_and_zero_stays_invalid():
    raw = np.array([[0, 1500, 5000, 10000]], dtype=np.uint16)
    np.testing.assert_allclose(decode_depth(raw, "nyu"), [[0.0, 1.5, 5.0, 10.0]], rtol=1e-6)
    np.testing.assert_allclose(decode_depth(raw, "tum"), [[0.0, 0.3, 1.0, 2.0]], rtol=1e-6)
    for depth_format in DEPTH_FORMATS:
        assert decode_depth(raw, depth_format)[0, 0] == 0.0


def test_invalid_pixels_are_masked_out_of_loss_metrics_and_batches(frames):
    frame = resize_frame(frames[1], 60, 80)
    target = torch.from_numpy(frame.depth)[None]
    invalid = target == 0
    assert invalid.any() and (~invalid).any()
    prediction = target.clamp_min(0.5) * 1.1
    garbage = torch.where(invalid, torch.full_like(target, 9.0), prediction)
    assert scale_invariant_log_loss(garbage, target) == pytest.approx(
        float(scale_invariant_log_loss(prediction, target))
    )
    assert depth_metrics(garbage[0].numpy(), target[0].numpy()) == depth_metrics(
        prediction[0].numpy(), target[0].numpy()
    )
    # the collator pads smaller items with invalid depth, never with made-up values
    small = {"pixel_values": torch.ones(3, 4, 5), "labels": torch.full((4, 5), 2.0)}
    large = {"pixel_values": torch.ones(3, 6, 7), "labels": torch.full((6, 7), 3.0)}
    batch = collate_depth([small, large])
    assert batch["pixel_values"].shape == (2, 3, 6, 7) and batch["labels"].shape == (2, 6, 7)
    assert (batch["labels"][0, 4:] == 0).all() and (batch["labels"][0, :, 5:] == 0).all()
    assert (batch["labels"][0, :4, :5] == 2.0).all()


# --- loss and metrics ----------------------------------------------------------------------------------------------


def test_loss_is_zero_for_a_perfect_prediction_and_its_scale_term_behaves_as_stated():
    torch.manual_seed(0)
    target = torch.rand(2, 8, 9) * 5 + 0.5
    target[0, :3] = 0.0  # invalid rows
    assert float(scale_invariant_log_loss(target.clamp_min(0.1), target, 0.5)) == pytest.approx(0.0, abs=1e-7)
    scaled = target.clamp_min(0.1) * 3.0
    log_scale = math.log(3.0)
    # L = Var(d) + (1 - lambda) mean(d)^2 with d = log 3 everywhere
    assert float(scale_invariant_log_loss(scaled, target, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(scale_invariant_log_loss(scaled, target, 0.5)) == pytest.approx(0.5 * log_scale**2, rel=1e-5)
    assert float(scale_invariant_log_loss(scaled, target, 0.0)) == pytest.approx(log_scale**2, rel=1e-5)
    # per image, then averaged: a noisy image is not outweighed by a larger clean one
    noisy = target.clamp_min(0.1).clone()
    noisy[1] = noisy[1] * torch.exp(torch.randn(8, 9))
    d = torch.log(noisy[1]) - torch.log(target[1])
    expected = (d.pow(2).mean() - d.mean().pow(2)) / 2  # image 0 is perfect
    assert float(scale_invariant_log_loss(noisy, target, 1.0)) == pytest.approx(float(expected), rel=1e-5)


def test_metrics_on_hand_computable_cases():
    target = np.array([[1.0, 1.0, 4.0, 0.0]])
    prediction = np.array([[1.0, 2.0, 4.0, 123.0]])  # the last pixel has no depth: ignored
    metrics = depth_metrics(prediction, target)
    assert metrics["abs_rel"] == pytest.approx(1.0 / 3.0)
    assert metrics["rmse"] == pytest.approx(math.sqrt(1.0 / 3.0))
    assert metrics["delta1"] == pytest.approx(2.0 / 3.0)
    assert depth_metrics(target[:, :3], target[:, :3]) == {"abs_rel": 0.0, "rmse": 0.0, "delta1": 1.0}
    # Trainer pads differently sized images with -100; per-image means are averaged over images
    labels = np.stack([np.pad(target, ((0, 0), (0, 2)), constant_values=-100), np.full((1, 6), 2.0)])
    predictions = np.stack([np.pad(prediction, ((0, 0), (0, 2)), constant_values=-100), np.full((1, 6), 2.4)])
    averaged = compute_depth_metrics(EvalPrediction(predictions=predictions, label_ids=labels))
    assert averaged["abs_rel"] == pytest.approx((1.0 / 3.0 + 0.2) / 2)
    assert averaged["rmse"] == pytest.approx((math.sqrt(1.0 / 3.0) + 0.4) / 2)
    assert averaged["delta1"] == pytest.approx((2.0 / 3.0 + 1.0) / 2)


# --- model ---------------------------------------------------------------------------------------------------------


def test_forward_backward_shapes_at_any_input_size():
    torch.manual_seed(0)
    model = tiny_depth_model(min_depth=0.2, max_depth=8.0)
    pixel_values = torch.randn(2, 3, 50, 70)  # not a multiple of the backbone stride (32): padded inside
    labels = torch.rand(2, 50, 70) * 5
    labels[:, :10] = 0.0
    outputs = model(pixel_values, labels=labels, output_hidden_states=True)
    assert outputs.predicted_depth.shape == (2, 50, 70)
    assert ((outputs.predicted_depth > 0.2) & (outputs.predicted_depth < 8.0)).all()
    assert outputs.loss.ndim == 0 and torch.isfinite(outputs.loss)
    assert [tuple(h.shape[-2:]) for h in outputs.hidden_states] == [(16, 24), (16, 24), (8, 12), (4, 6), (2, 3)]
    outputs.loss.backward()
    for name in (
        "backbone.embeddings.patch_embeddings.weight",
        "decoder.lateral_convs.3.weight",
        "head.predictor.weight",
    ):
        gradient = model.get_parameter(name).grad
        assert gradient is not None and gradient.abs().sum() > 0, name
    assert model(pixel_values).loss is None


def test_save_and_load_through_auto_model_for_depth_estimation(tmp_path):
    torch.manual_seed(0)
    model = tiny_depth_model(silog_lambda=0.85).eval()
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is evonets.EvoNetDepthConfig and config.silog_lambda == 0.85
    assert type(config.backbone_config) is evonets.EvoNetConfig and config.backbone_config.out_features == ALL_STAGES
    loaded = AutoModelForDepthEstimation.from_pretrained(tmp_path).eval()
    assert type(loaded) is evonets.EvoNetForDepthEstimation
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).predicted_depth, model(pixel_values).predicted_depth)


LOAD_WITH_REMOTE_CODE = textwrap.dedent(
    """
    import sys

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForDepthEstimation

    folder, tensors = sys.argv[1], load_file(sys.argv[2])
    model = AutoModelForDepthEstimation.from_pretrained(folder, trust_remote_code=True).eval()
    assert not type(model).__module__.startswith("evonets"), type(model).__module__
    with torch.no_grad():
        depth = model(tensors["pixel_values"]).predicted_depth
    print("max abs diff", (depth - tensors["predicted_depth"]).abs().max().item())
    """
)


def test_saved_folder_loads_with_remote_code_without_evonets(tmp_path, without_evonets):
    torch.manual_seed(0)
    model = tiny_depth_model().eval()
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "modeling_evonet_depth.py").exists()
    pixel_values = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        expected = model(pixel_values).predicted_depth
    save_file({"pixel_values": pixel_values, "predicted_depth": expected}, tmp_path / "expected.safetensors")
    result = without_evonets(LOAD_WITH_REMOTE_CODE, tmp_path / "model", tmp_path / "expected.safetensors")
    assert float(result.stdout.split("max abs diff")[1]) <= 1e-5, result.stdout


def test_backbone_from_a_saved_evonet_folder_carries_its_weights(tmp_path):
    torch.manual_seed(0)
    classifier = evonets.EvoNetForImageClassification(tiny_backbone(num_labels=3))
    classifier.save_pretrained(tmp_path / "models" / "abc123")
    model = evonets.EvoNetForDepthEstimation.from_backbone(tmp_path / "models" / "abc123", max_depth=12.0)
    assert model.config.max_depth == 12.0
    assert model.config.backbone_config.out_features == ALL_STAGES
    assert model.config.backbone_config.block_types == classifier.config.block_types
    backbone_state = model.backbone.state_dict()
    copied = 0
    for key, tensor in classifier.evonet.state_dict().items():
        if key in backbone_state:
            torch.testing.assert_close(backbone_state[key], tensor, rtol=0, atol=0)
            copied += 1
    assert copied == len([key for key in backbone_state if not key.startswith("hidden_states_norms.")])
    # from a config: the same architecture, new weights
    fresh = evonets.EvoNetForDepthEstimation.from_backbone(classifier.config, out_features=["stage2", "stage4"])
    assert fresh.config.backbone_config.out_features == ["stage2", "stage4"]
    assert not torch.equal(
        fresh.backbone.embeddings.patch_embeddings.weight, classifier.evonet.embeddings.patch_embeddings.weight
    )


# --- errors --------------------------------------------------------------------------------------------------------


def test_clear_errors_for_bad_inputs(rgbd_folder, tmp_path):
    color = rgbd_folder / "TUM_color.png"
    with pytest.raises(ValueError, match="has no depth map"):
        load_rgbd_frame(color, None, "tum")
    with pytest.raises(ValueError, match="has no depth map"):
        load_rgbd_frame(color, tmp_path / "missing.png", "tum")
    with pytest.raises(
        ValueError, match=r"depth_format = 'kinect' is unknown: expected one of \['nyu', 'sun', 'tum'\]"
    ):
        load_rgbd_frame(color, rgbd_folder / "TUM_depth.png", "kinect")
    with pytest.raises(ValueError, match="unknown"):
        decode_depth(np.zeros((2, 2), np.uint16), "kitti")

    raw = np.array(Image.open(rgbd_folder / "TUM_depth.png"))
    Image.fromarray(raw[::2, ::2]).save(tmp_path / "half.png")
    with pytest.raises(ValueError, match="320x240 but its image .* is 640x480"):
        load_rgbd_frame(color, tmp_path / "half.png", "tum")
    Image.fromarray(np.zeros_like(raw)).save(tmp_path / "empty.png")
    with pytest.raises(ValueError, match="no valid pixel"):
        load_rgbd_frame(color, tmp_path / "empty.png", "tum")
    Image.open(color).convert("L").save(tmp_path / "eight_bit.png")
    with pytest.raises(ValueError, match="16-bit"):
        load_rgbd_frame(color, tmp_path / "eight_bit.png", "tum")

    with pytest.raises(ValueError, match="no valid pixel"):
        scale_invariant_log_loss(torch.ones(2, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="no valid pixel"):
        depth_metrics(np.ones((4, 4)), np.zeros((4, 4)))
    model = tiny_depth_model()
    with pytest.raises(ValueError, match=r"labels of shape \(1, 32, 16\) is invalid"):
        model(torch.randn(1, 3, 32, 32), labels=torch.ones(1, 32, 16))
    with pytest.raises(ValueError, match="labels of shape .* do not match pixel_values"):
        collate_depth([{"pixel_values": torch.zeros(3, 8, 8), "labels": torch.zeros(8, 4)}])
    with pytest.raises(ValueError, match="min_depth"):
        evonets.EvoNetDepthConfig(min_depth=5.0, max_depth=1.0)
    with pytest.raises(ValueError, match="silog_lambda"):
        evonets.EvoNetDepthConfig(silog_lambda=1.5)
    with pytest.raises(ValueError, match="not a saved EvoNet folder"):
        evonets.EvoNetForDepthEstimation.from_backbone(tmp_path / "nothing_here")


def test_dataset_keeps_training_and_evaluation_columns_apart(frames):
    small = [resize_frame(frame, 60, 80) for frame in frames]
    train = DepthFramesDataset(small, columns=(0.0, 0.75), crop_size=(32, 32), num_samples=30, horizontal_flip=True)
    held_out = DepthFramesDataset(small, columns=(0.75, 1.0))
    assert len(train) == 30 and len(held_out) == 3
    for train_depth, eval_depth, frame in zip(train.depths, held_out.depths, small):
        assert (train_depth[:, 60:] == 0).all() and (eval_depth[:, :60] == 0).all()
        full = torch.from_numpy(frame.depth)
        assert torch.equal(train_depth[:, :60], full[:, :60]) and torch.equal(eval_depth[:, 60:], full[:, 60:])
    for index in range(len(train)):
        item = train[index]
        assert item["pixel_values"].shape == (3, 32, 32) and item["labels"].shape == (32, 32)
        assert (item["labels"] > 0).float().mean() >= 0.2
    item = held_out[0]
    assert item["pixel_values"].shape == (3, 60, 80) and item["labels"].shape == (60, 80)
    # a crop as large as the training region is the whole region, as is or mirrored; jitter is an affine change
    # of each channel of the image and leaves the labels alone
    regions = [depth[:, :60] for depth in train.depths]
    images = [pixels[:, :, :60] for pixels in train.pixel_values]

    def matching_region(labels):
        found = [
            (frame, flip)
            for frame, region in enumerate(regions)
            for flip in (False, True)
            if torch.equal(labels, region.flip(-1) if flip else region)
        ]
        assert len(found) == 1
        return found[0]

    whole = DepthFramesDataset(small, columns=(0.0, 0.75), crop_size=(60, 60), num_samples=20, horizontal_flip=True)
    flips = []
    for item in whole:
        frame, flip = matching_region(item["labels"])
        assert torch.equal(item["pixel_values"], images[frame].flip(-1) if flip else images[frame])
        flips.append(flip)
    assert any(flips) and not all(flips)
    jittered = DepthFramesDataset(
        small, columns=(0.0, 0.75), crop_size=(60, 60), num_samples=20, horizontal_flip=True, color_jitter=0.2
    )
    for item in jittered:
        frame, flip = matching_region(item["labels"])
        image = images[frame].flip(-1) if flip else images[frame]
        assert not torch.allclose(item["pixel_values"], image)
        for channel in range(3):
            correlation = torch.corrcoef(
                torch.stack([item["pixel_values"][channel].flatten(), image[channel].flatten()])
            )
            assert correlation[0, 1] > 0.999


# --- a short real Trainer run ----------------------------------------------------------------------------------------


def test_trainer_fine_tunes_on_the_real_frames_and_the_loss_falls(frames, tmp_path):
    torch.manual_seed(0)
    small = [resize_frame(frame, 60, 80) for frame in frames]
    steps = 60
    train = DepthFramesDataset(
        small, columns=(0.0, 0.75), crop_size=(48, 48), num_samples=steps * 4, horizontal_flip=True, seed=0
    )
    held_out = DepthFramesDataset(small, columns=(0.75, 1.0))
    model = tiny_depth_model()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        learning_rate=3e-3,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=3,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        data_collator=collate_depth,
        compute_metrics=compute_depth_metrics,
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == steps // 5
    assert np.mean(losses[-2:]) < 0.5 * np.mean(losses[:2]), losses
    metrics = trainer.evaluate()
    for name in ("eval_loss", "eval_abs_rel", "eval_rmse", "eval_delta1"):
        assert np.isfinite(metrics[name]), metrics
    assert 0.0 <= metrics["eval_delta1"] <= 1.0


def test_zoom_crops_keep_depth_values_and_stay_in_the_training_columns(frames):
    small = [resize_frame(frame, 60, 80) for frame in frames]
    zoomed = DepthFramesDataset(
        small, columns=(0.0, 0.75), crop_size=(32, 32), num_samples=12, scale_range=(0.5, 0.5), seed=0
    )
    for item in zoomed:
        assert item["pixel_values"].shape == (3, 32, 32) and item["labels"].shape == (32, 32)
        labels = item["labels"][item["labels"] > 0]
        # nearest resizing only repeats depths: every label is a depth of some training column of some frame
        training_depths = torch.cat([torch.from_numpy(frame.depth[:, :60]).flatten() for frame in small])
        assert torch.isin(labels, training_depths).all()
        # a 16x16 crop (scale 0.5) brought to 32x32 by nearest resizing: every depth fills a 2x2 block
        assert torch.equal(item["labels"][0::2, 0::2], item["labels"][1::2, 1::2])
    with pytest.raises(ValueError, match="scale_range"):
        DepthFramesDataset(small, columns=(0.0, 0.75), crop_size=(32, 32), num_samples=4, scale_range=(0.5, 1.5))
    with pytest.raises(ValueError, match="scale_range"):
        DepthFramesDataset(small, columns=(0.0, 0.75), scale_range=(0.5, 1.0))


def test_random_crops_are_the_same_in_any_number_of_loader_workers(frames):
    """The item's own generator decides its crop (evonets.data.augmentation): with a generator on the dataset, each
    worker process drew from its own copy and the crops depended on `num_workers`."""
    small = [resize_frame(frame, 60, 80) for frame in frames]
    train = DepthFramesDataset(small, columns=(0.0, 0.75), crop_size=(16, 16), num_samples=8, horizontal_flip=True,
                               color_jitter=0.1, seed=3)  # fmt: skip

    def crops(num_workers: int) -> torch.Tensor:
        loader = torch.utils.data.DataLoader(train, batch_size=4, num_workers=num_workers, collate_fn=collate_depth)
        return torch.cat([batch["pixel_values"] for batch in loader])

    in_process = crops(0)
    assert len({item.numpy().tobytes() for item in in_process}) == 8  # every item its own crop
    torch.testing.assert_close(crops(2), in_process, rtol=0, atol=0)
    train.set_epoch(1)
    assert not torch.equal(crops(0), in_process)  # a new epoch draws new crops
