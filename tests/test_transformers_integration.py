"""EvoNet inside the transformers ecosystem: Trainer on real digits, pipeline, UperNet, remote code."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    AutoModelForImageClassification,
    Trainer,
    TrainingArguments,
    UperNetConfig,
    UperNetForSemanticSegmentation,
    pipeline,
)

import evonets
from evonets.data.digits import load_digits_dataset

IMAGE_SIZE = 16


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset(seed=0)


def digits_processor() -> evonets.EvoNetImageProcessor:
    return evonets.EvoNetImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )


def small_classifier(num_labels: int = 10) -> evonets.EvoNetForImageClassification:
    config = evonets.EvoNetConfig(
        image_size=IMAGE_SIZE,
        patch_size=2,
        depths=[1, 2, 1],
        hidden_sizes=[16, 32, 64],
        block_types=["ss2d", ["ssd", "conv"], "attention"],
        mlp_ratios=2.0,
        d_states=4,
        num_labels=num_labels,
        id2label={i: str(i) for i in range(num_labels)},
        label2id={str(i): i for i in range(num_labels)},
    )
    return evonets.EvoNetForImageClassification(config)


def test_digits_splits_are_fixed_disjoint_and_stratified(digits):
    assert {name: len(split) for name, split in digits.items()} == {"train": 1257, "validation": 180, "test": 360}
    again = load_digits_dataset(seed=0)
    assert digits["test"]["label"] == again["test"]["label"]
    for split in digits.values():
        counts = np.bincount(split["label"], minlength=10)
        assert counts.min() > 0.7 * counts.mean()
    pixels = {name: {np.asarray(img).tobytes() for img in split["image"]} for name, split in digits.items()}
    # the bundled digits have a few exact duplicates across classes; splits must not share many
    assert len(pixels["train"] & pixels["test"]) <= 3


def test_trainer_learns_digits_and_pipeline_serves_the_model(digits, tmp_path):
    torch.manual_seed(0)
    processor = digits_processor()

    def preprocess(batch):
        return {
            "pixel_values": processor(batch["image"], return_tensors="pt")["pixel_values"],
            "labels": batch["label"],
        }

    encoded = digits.with_transform(preprocess)
    model = small_classifier()

    def accuracy(prediction):
        logits, labels = prediction
        return {"accuracy": float((logits.argmax(-1) == labels).mean())}

    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        num_train_epochs=3,
        learning_rate=3e-3,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=256,
        warmup_steps=10,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        compute_metrics=accuracy,
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    majority = np.bincount(digits["train"]["label"]).max() / len(digits["train"])
    assert after["eval_loss"] < 0.5 * before["eval_loss"]
    assert after["eval_accuracy"] > 0.6 > 3 * majority  # majority-class baseline is ~0.10

    trainer.save_model(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    classifier = pipeline("image-classification", model=str(tmp_path / "model"), device="cpu")
    images = digits["validation"]["image"][:8]
    predictions = classifier([image.convert("RGB") for image in images], top_k=1)
    model.eval()
    with torch.no_grad():
        expected = model(processor(images, return_tensors="pt")["pixel_values"]).logits.argmax(-1)
    assert [p[0]["label"] for p in predictions] == [str(int(i)) for i in expected]


def test_upernet_accepts_evonet_backbone(tmp_path):
    torch.manual_seed(0)
    backbone_config = evonets.EvoNetConfig(
        patch_size=4,
        depths=[1, 1, 1, 1],
        hidden_sizes=[16, 32, 48, 64],
        block_types=["conv", "ss2d", "ssd", "attention"],
        d_states=4,
        num_heads=[1, 2, 2, 2],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = UperNetConfig(backbone_config=backbone_config, num_labels=5, hidden_size=32, use_auxiliary_head=False)
    model = UperNetForSemanticSegmentation(config)
    assert isinstance(model.backbone, evonets.EvoNetBackbone)
    pixel_values, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    out = model(pixel_values, labels=labels)
    assert out.logits.shape == (2, 5, 64, 64)
    out.loss.backward()
    assert model.backbone.encoder.stages[0].blocks[0].mixer.dwconv.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    loaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path).eval()
    model.eval()
    with torch.no_grad():  # not bit-exact: oneDNN may pick other kernels for differently aligned copies of weights
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits, rtol=1e-5, atol=1e-6)


LOAD_WITH_REMOTE_CODE = textwrap.dedent(
    """
    import sys

    import torch
    from safetensors.torch import load_file
    from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification

    folder, tensors = sys.argv[1], load_file(sys.argv[2])
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__name__ == "EvoNetForImageClassification", type(model)
    assert not type(model).__module__.startswith("evonets"), type(model).__module__
    assert not any(name.startswith("evonets") for name in sys.modules)
    with torch.no_grad():
        logits = model(tensors["pixel_values"]).logits
    diff = (logits - tensors["logits"]).abs().max().item()
    print("max abs diff", diff)
    assert diff <= 1e-5, diff
    # the folder's code defines every EvoNet model, and its auto_map lists them
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    # (AutoBackbone.from_pretrained of a local folder asks the Hub first in transformers 5.23, hence from_config)
    backbone_config = AutoConfig.from_pretrained(folder, trust_remote_code=True, out_features=["stage2"])
    backbone = AutoBackbone.from_config(backbone_config, trust_remote_code=True)
    assert (type(base).__name__, type(backbone).__name__) == ("EvoNetModel", "EvoNetBackbone")
    reference = model.evonet.state_dict()
    assert all(torch.equal(tensor, reference[name]) for name, tensor in base.state_dict().items())
    with torch.no_grad():
        assert backbone(tensors["pixel_values"]).feature_maps[0].shape[1] == config.hidden_sizes[1]
    """
)


def test_saved_folder_loads_with_remote_code_without_evonets(tmp_path, without_evonets):
    torch.manual_seed(0)
    model = small_classifier().eval()
    model.save_pretrained(tmp_path / "model")
    for name in ("modeling_evonet.py", "configuration_evonet.py", "mixer_ss2d.py", "selective_scan.py"):
        assert (tmp_path / "model" / name).exists(), name
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        save_file(
            {"pixel_values": pixel_values, "logits": model(pixel_values).logits}, tmp_path / "expected.safetensors"
        )
    result = without_evonets(LOAD_WITH_REMOTE_CODE, tmp_path / "model", tmp_path / "expected.safetensors")
    assert "max abs diff" in result.stdout
    # with evonets installed, the Auto classes use the package's own class
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "model")
    assert type(loaded) is evonets.EvoNetForImageClassification
