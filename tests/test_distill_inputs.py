"""Data sources, teachers and the config: good inputs work, bad ones fail before training with a clear message."""

import numpy as np
import pytest
import torch

from distill.config import DataConfig, DistillConfig, LossConfig, parse_config
from distill.teachers import load_teacher, tokens_to_grid
from evonets.data.classification import EpochShuffleSampler, load_data

NAMES = [str(i) for i in range(10)]


# Data ----------------------------------------------------------------------------------------------------------


def _image_folder(root, modes=("RGB",), classes=("cat", "dog"), per_class=10):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            mode = modes[index % len(modes)]
            array = rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)
            Image.fromarray(array).convert(mode).save(root / name / f"{index}.png")
    return root


def test_digits_source_gives_train_and_validation_only():
    data = load_data(DataConfig(source="digits"), image_size=16)
    assert data.label_names == NAMES and (len(data.train), len(data.validation)) == (1257, 180)
    example = data.train[0]
    assert example["pixel_values"].shape == (3, 16, 16) and example["labels"].dtype == torch.long
    assert data.processor.size == {"height": 16, "width": 16}


def test_image_folder_with_mixed_modes_and_held_out_validation(tmp_path):
    root = _image_folder(tmp_path / "images", modes=("RGB", "L", "P", "RGBA"))
    data = load_data(DataConfig(source="imagefolder", path=str(root), validation_fraction=0.2), image_size=8)
    assert data.label_names == ["cat", "dog"]
    assert len(data.train) + len(data.validation) == 20 and len(data.validation) == 4
    assert sorted(int(label) for label in data.validation[:]["labels"]) == [0, 0, 1, 1]  # stratified
    assert data.train[:5]["pixel_values"].shape == (5, 3, 8, 8)


def test_load_from_disk_arrays(tmp_path):
    import datasets

    images = [np.full((8, 8), 10 * i, dtype=np.uint8) for i in range(20)]
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(20)]}),
            "validation": datasets.Dataset.from_dict({"image": images[:4], "label": [0, 1, 0, 1]}),
        }
    ).save_to_disk(tmp_path / "saved")
    data = load_data(DataConfig(source="load_from_disk", path=str(tmp_path / "saved")), image_size=8)
    assert len(data.train) == 20 and len(data.validation) == 4 and data.label_names == ["0", "1"]


@pytest.mark.parametrize("source", ["imagefolder", "load_from_disk"])
def test_missing_path_is_named(source):
    with pytest.raises(ValueError, match=r"data.path = '/no/such/folder' is invalid: no such folder"):
        load_data(DataConfig(source=source, path="/no/such/folder"), image_size=8)


def test_wrong_image_mode_names_the_file(tmp_path):
    from PIL import Image

    root = _image_folder(tmp_path / "images")
    Image.fromarray(np.random.default_rng(0).random((10, 12)).astype(np.float32), mode="F").save(
        root / "cat" / "bad.tiff"
    )
    with pytest.raises(ValueError, match=r"bad\.tiff\) has mode 'F'"):
        load_data(DataConfig(source="imagefolder", path=str(root), check_samples=0), image_size=8)


def test_wrong_image_shape_and_bad_labels(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"image": [np.zeros((8, 8, 5), dtype=np.uint8)] * 10, "label": [0, 1] * 5}).save_to_disk(
        tmp_path / "five_channels"
    )
    with pytest.raises(ValueError, match=r"has shape \(8, 8, 5\): expected \(H, W\) or \(H, W, C\)"):
        load_data(DataConfig(source="load_from_disk", path=str(tmp_path / "five_channels")), image_size=8)

    label = datasets.ClassLabel(names=["a", "b"])
    features = datasets.Features({"image": datasets.Image(), "label": label})
    from PIL import Image

    image = Image.new("L", (8, 8))
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"image": [image] * 4, "label": [0, 1, 0, 1]}, features=features),
            "validation": datasets.Dataset.from_dict(
                {"image": [image] * 2, "label": [0, 1]},
                features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["b", "a"])}),
            ),
        }
    ).save_to_disk(tmp_path / "swapped")
    with pytest.raises(ValueError, match="Label mismatch"):
        load_data(DataConfig(source="load_from_disk", path=str(tmp_path / "swapped")), image_size=8)
    with pytest.raises(ValueError, match=r"data.label_column = 'target' is invalid: split 'train' has columns"):
        load_data(
            DataConfig(source="load_from_disk", path=str(tmp_path / "swapped"), label_column="target"), image_size=8
        )


def test_a_one_class_dataset_names_the_class(tmp_path):
    """Integer labels all 5: the old check counted classes 0..5 and trained a 6-way classifier on one class."""
    import datasets
    from PIL import Image

    rows = {"image": [Image.new("L", (8, 8))] * 6, "label": [5] * 6}
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "one_class")
    with pytest.raises(
        ValueError, match=r"data.label_column = 'label' is invalid: .*every one of the \d+ training rows has class '5'"
    ):
        load_data(DataConfig(source="load_from_disk", path=str(tmp_path / "one_class")), image_size=8)


def test_epoch_sampler_is_a_pure_function_of_seed_and_epoch():
    sampler = EpochShuffleSampler(50, seed=3)
    sampler.set_epoch(2)
    first = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) != first
    other = EpochShuffleSampler(50, seed=3)
    other.set_epoch(2)
    assert list(other) == first and sorted(first) == list(range(50))


# Teachers ------------------------------------------------------------------------------------------------------


def _save(model, path):
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    from transformers import ConvNextV2Config, ConvNextV2ForImageClassification, ViTConfig, ViTForImageClassification

    import evonets

    root = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(0)
    return {
        "convnextv2": _save(
            ConvNextV2ForImageClassification(
                ConvNextV2Config(patch_size=2, num_stages=3, hidden_sizes=[8, 16, 32], depths=[1, 1, 1], num_labels=10)
            ),
            root / "convnextv2",
        ),
        "vit": _save(
            ViTForImageClassification(
                ViTConfig(
                    image_size=16,
                    patch_size=4,
                    hidden_size=32,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    intermediate_size=64,
                    num_labels=10,
                )
            ),
            root / "vit",
        ),
        "evonet": _save(
            evonets.EvoNetForImageClassification(
                evonets.EvoNetConfig(
                    patch_size=2, depths=[1, 1], hidden_sizes=[8, 16], block_types=["conv", "attention"], num_labels=10
                )
            ),
            root / "evonet",
        ),
        "vit5": _save(
            ViTForImageClassification(
                ViTConfig(
                    image_size=16,
                    patch_size=4,
                    hidden_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    intermediate_size=64,
                    num_labels=5,
                )
            ),
            root / "vit5",
        ),
    }


@pytest.mark.parametrize(
    "family, shapes",
    [
        ("convnextv2", [(2, 16, 4, 4), (2, 32, 2, 2)]),  # stem 8x8 -> stage2 4x4 -> stage3 2x2
        ("vit", [(2, 32, 4, 4), (2, 32, 4, 4)]),  # 16 tokens + CLS -> 4x4 grid
        ("evonet", [(2, 8, 8, 8), (2, 16, 4, 4)]),
    ],
)
def test_teachers_of_every_family_give_4d_stage_maps(teachers, family, shapes):
    teacher = load_teacher(teachers[family], [-2, -1], 10, NAMES, 16, [0.5] * 3, [0.5] * 3)
    targets = teacher(torch.randn(2, 3, 16, 16))
    assert targets.logits.shape == (2, 10)
    assert [tuple(f.shape) for f in targets.features] == shapes
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.train().training


def test_vit_tokens_reshape_to_the_patch_grid_without_prefix_tokens():
    grid = torch.arange(2 * 16 * 3, dtype=torch.float32).view(2, 16, 3)
    tokens = torch.cat([torch.full((2, 2, 3), -1.0), grid], dim=1)  # CLS + distillation token first
    out = tokens_to_grid(tokens, (16, 16), 4)
    assert out.shape == (2, 3, 4, 4)
    assert torch.equal(out[:, :, 1, 2], grid[:, 1 * 4 + 2])
    assert torch.equal(tokens_to_grid(tokens, (16, 16), None), out)  # no patch size: the square tail


def test_teacher_label_mismatch_and_bad_stage_are_clear_errors(teachers):
    with pytest.raises(ValueError, match=r"num_labels = 5, but the data has 10 classes"):
        load_teacher(teachers["vit5"], [-1], 10, NAMES, 16, [0.5] * 3, [0.5] * 3)
    # Features only (no logit KD): any head will do.
    load_teacher(teachers["vit5"], [-1], 10, NAMES, 16, [0.5] * 3, [0.5] * 3, require_labels=False)
    with pytest.raises(ValueError, match=r"teacher.stages has index 9, but the teacher returns 4 hidden states"):
        load_teacher(teachers["convnextv2"], [9], 10, NAMES, 16, [0.5] * 3, [0.5] * 3)
    with pytest.raises(ValueError, match=r"teacher.path = '/no/such/teacher' is invalid: no such folder"):
        load_teacher("/no/such/teacher", [-1], 10, NAMES, 16, [0.5] * 3, [0.5] * 3)


def test_teacher_renormalises_the_student_batch(teachers, tmp_path):
    import json
    import shutil

    path = tmp_path / "vit_imagenet_norm"
    shutil.copytree(teachers["vit"], path)
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
                "size": {"height": 16, "width": 16},
            }
        )
    )
    teacher = load_teacher(str(path), [-1], 10, NAMES, 8, [0.5] * 3, [0.5] * 3)
    assert teacher.image_size == 16  # from its preprocessor, not the data's 8
    pixels = torch.rand(1, 3, 16, 16)
    student_batch = (pixels - 0.5) / 0.5
    expected = (pixels - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    assert torch.allclose(student_batch * teacher.scale + teacher.shift, expected, atol=1e-5)


# Config and command line ---------------------------------------------------------------------------------------


def test_config_file_with_a_distill_section_and_dotted_overrides(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "distill:\n  trainer: {max_steps: 7, lr: 0.01}\n  loss: {frequency_transform: fft}\nsearch: {budget: 3}\n"
    )
    config = parse_config(["--config", str(path), "--trainer.lr", "1e-3", "--loss.low_band_weight", "2"])
    assert isinstance(config, DistillConfig)
    assert config.trainer.max_steps == 7 and config.trainer.lr == 1e-3
    assert config.loss.frequency_transform == "fft" and config.loss.low_band_weight == 2.0
    flat = tmp_path / "flat.yaml"
    flat.write_text("trainer: {max_steps: 9}\n")
    assert parse_config(["--config", str(flat)]).trainer.max_steps == 9


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--trainer.lrr", "1"], "trainer.lrr"),
        (["--loss.frequency_transform", "wavelet"], "frequency_transform"),
        (["--trainer.max_steps", "0"], "trainer.max_steps = 0 is invalid"),
        (["--loss.student_stages", "[1]", "--teacher.path", "x"], "one stage per teacher stage"),
        (["--data.source", "imagefolder"], "data.path = None is invalid"),
        (["--sampling.block_types", "mamba"], "sampling.block_types = 'mamba' is invalid"),
        (["--data.validation_split", "test"], "the test split is for the final report only"),
    ],
)
def test_bad_command_lines_exit_with_the_field_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_config(argv)
    assert message in capsys.readouterr().err


def test_unknown_key_in_a_config_file_is_an_error(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text("distill:\n  trainer: {max_stpes: 7}\n")
    with pytest.raises(SystemExit):
        parse_config(["--config", str(path)])
    assert "max_stpes" in capsys.readouterr().err


def test_every_field_is_documented_in_help(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    text = capsys.readouterr().out
    assert "Temperature T of the teacher logit KD" in text and "Random subnets per step" in text
    import dataclasses

    from distill import config as config_module

    for cls in (
        config_module.DataConfig,
        config_module.TeacherConfig,
        config_module.LossConfig,
        config_module.SamplingConfig,
        config_module.TrainerConfig,
        config_module.SupernetSettings,
    ):
        for field in dataclasses.fields(cls):
            assert f".{field.name} " in text or f".{field.name}\n" in text, field.name


def test_loss_config_defaults_are_the_full_method():
    loss = LossConfig()
    assert min(loss.ce_weight, loss.kd_weight, loss.inplace_kd_weight, loss.spatial_weight, loss.frequency_weight) > 0
