"""CIFAR-10 through the pipelines' one data path (`evonets.data.classification`, `source: parquet`) and
`configs/cifar10.yaml` end to end on a few hundred images: the plumbing, not the figures (docs/rank_check.md has
those). The splits are disjoint, seeded and class-stratified; augmentation is a pure function of (seed, epoch, index);
the test split is read only through `load_test_data`; and distill -> search -> front -> stand-alone check completes."""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml

from distill import parse_config
from evonets.data.classification import (
    crop_flip,
    load_data,
    load_test_data,
    read_splits,
    stratified_split,
    training_loader,
)
from evonets.data.config import DataConfig
from evonets.engine.training import TrainingLoop

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "cifar10.yaml")


@pytest.fixture(scope="module")
def cifar(shared_data):
    """The data section of configs/cifar10.yaml, pointed at this machine's shared data."""
    section = yaml.safe_load(Path(CONFIG).read_text())["distill"]["data"]
    section["path"] = str(shared_data / "cifar10")
    return section


def data_config(cifar, **changes) -> DataConfig:
    return DataConfig(**{**cifar, "check_samples": 16, **changes})


def test_validation_is_a_seeded_stratified_hold_out_of_train(cifar):
    data = load_data(data_config(cifar), 32)
    assert (len(data.train), len(data.validation)) == (45_000, 5_000)
    assert np.bincount(data.validation.labels).tolist() == [500] * 10
    assert data.label_names[:3] == ["airplane", "automobile", "bird"]
    # The hold-out is `stratified_split` of the train split's labels: disjoint, complete, the same for the same seed.
    train_rows = read_splits(data_config(cifar))["train"]
    kept, held = stratified_split(train_rows["label"], 0.1, seed=0)
    assert not set(kept) & set(held) and len(kept) + len(held) == 50_000
    assert stratified_split(train_rows["label"], 0.1, seed=0) == (kept, held)
    assert stratified_split(train_rows["label"], 0.1, seed=1)[1] != held
    undecoded = train_rows.cast_column("img", datasets.Image(decode=False))
    validation = data.validation.rows.cast_column("img", datasets.Image(decode=False))
    for position in (0, 2_500, 4_999):
        assert validation[position]["img"]["bytes"] == undecoded[held[position]]["img"]["bytes"]


def test_max_train_samples_is_a_seeded_class_stratified_subset(cifar):
    first = load_data(data_config(cifar, max_train_samples=300), 32)
    again = load_data(data_config(cifar, max_train_samples=300), 32)
    other = load_data(data_config(cifar, max_train_samples=300, seed=1), 32)
    assert (
        len(first.train) == 300 and np.bincount(first.train.labels).tolist() == [30] * 10
    )  # the split is class-sorted
    assert torch.equal(first.train[:8]["pixel_values"], again.train[:8]["pixel_values"])
    assert not torch.equal(first.train[:8]["pixel_values"], other.train[:8]["pixel_values"])
    assert len(first.validation) == 5_000  # the subset never shrinks the validation split


def test_augmentation_is_a_pure_function_of_seed_epoch_and_index(cifar):
    data = load_data(data_config(cifar, max_train_samples=64), 32)
    plain = load_data(data_config(cifar, max_train_samples=64, augmentation="none"), 32)
    item = data.train[5]["pixel_values"]
    assert torch.equal(data.train[5]["pixel_values"], item)  # read twice: the same draw
    assert torch.equal(data.train[3:6]["pixel_values"][2], item)  # in a batch: the same draw
    assert not torch.equal(plain.train[5]["pixel_values"], item)
    reseeded = data.train.with_seed(7)
    assert not torch.equal(reseeded[5]["pixel_values"], item) and data.train.seed == 0  # a copy, not a change
    reseeded.set_epoch(1)
    assert not torch.equal(reseeded[5]["pixel_values"], data.train.with_seed(7)[5]["pixel_values"])
    validation = data.validation[0]["pixel_values"]
    data.validation.set_epoch(3)
    assert torch.equal(data.validation[0]["pixel_values"], validation)  # validation images never change
    assert torch.equal(plain.validation[0]["pixel_values"], validation)


def test_crop_flip_is_a_padded_shift_and_a_flip():
    from PIL import Image

    image = Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3) | 1)  # no black pixel
    for seed in range(20):
        out = np.asarray(crop_flip(image, np.random.default_rng(seed)))
        rng = np.random.default_rng(seed)
        top, left, flip = int(rng.integers(0, 9)), int(rng.integers(0, 9)), rng.random() < 0.5
        padded = np.pad(np.asarray(image), ((4, 4), (4, 4), (0, 0)))
        expected = padded[top : top + 32, left : left + 32]
        assert np.array_equal(out, expected[:, ::-1] if flip else expected)


def test_the_training_loop_gives_an_augmented_split_its_epoch(cifar):
    data = load_data(data_config(cifar, max_train_samples=32), 32)
    loader = training_loader(data.train, batch_size=16, seed=3)
    assert loader.dataset.seed == 3 and data.train.seed == 0
    seen = []

    def step(batch):
        seen.append(loader.dataset.epoch)
        return {}

    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    TrainingLoop(model, optimizer, scheduler, loader, step, max_steps=6).run()
    assert seen == [0, 0, 1, 1, 2, 2]


def test_the_test_split_is_read_only_for_the_final_report(cifar, tmp_path, capsys):
    data = load_data(data_config(cifar), 32)
    assert len(data.train) + len(data.validation) == 50_000  # load_data hands out no test image
    test = load_test_data(data_config(cifar), data, max_samples=200)
    assert len(test) == 200 and np.bincount(test.labels).tolist() == [20] * 10
    assert torch.equal(test[0]["pixel_values"], test[0]["pixel_values"])  # never augmented
    assert load_test_data(data_config(cifar, test_split=None), data) is None
    argv = ["--config", CONFIG, "--data.path", cifar["path"], "--trainer.output_dir", str(tmp_path)]
    with pytest.raises(SystemExit):
        parse_config([*argv, "--data.train_split", "test"])
    assert "data.train_split = 'test' is invalid: expected not ['test']" in capsys.readouterr().err


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"image_column": "image"},
            r"data.image_column = 'image' is invalid: split 'train' has columns \['img', 'label'\]",
        ),
        ({"path": "/no/such/cifar"}, r"data.path = '/no/such/cifar' is invalid: no such folder"),
        ({"augmentation": "mixup"}, r"data.augmentation = 'mixup' is invalid: expected one of \['none', 'crop_flip'\]"),
    ],
)
def test_bad_cifar_settings_name_the_field(cifar, changes, message):
    with pytest.raises(ValueError, match=message):
        load_data(data_config(cifar, **changes), 32)


def test_a_folder_without_parquet_files_names_the_field(cifar, tmp_path):
    (tmp_path / "train.csv").write_text("img,label\n")
    with pytest.raises(ValueError, match=r"data.path = .* is invalid: no <split>-\*.parquet or <split>.parquet files"):
        load_data(data_config(cifar, path=str(tmp_path)), 32)


def test_cifar10_config_runs_distill_search_and_the_test_check_end_to_end(cifar, shared_data, tmp_path):
    """configs/cifar10.yaml with a few hundred images, 2 distillation steps and 2 candidates: every stage runs and
    writes what the next reads; a rerun reuses the finished supernet and resumes the search. 27 s on 2 idle cores
    (2 min at load 3-6)."""
    from search.run import main

    teacher = str(shared_data / "teachers" / "resnet20_cifar10.safetensors")  # the 20-layer one: faster, same plumbing
    argv = [
        "--config", CONFIG,
        "--distill.data.path", cifar["path"],
        "--distill.data.max_train_samples", "256",
        "--distill.data.validation_fraction", "0.01",  # 500 validation images
        "--distill.data.check_samples", "16",
        "--distill.teacher.path", teacher,
        "--distill.teacher.check_test_images", "100",
        "--distill.trainer.output_dir", str(tmp_path / "distill"),
        "--distill.trainer.max_steps", "2",
        "--distill.trainer.batch_size", "32",
        "--distill.trainer.warmup_steps", "1",
        "--distill.trainer.save_every", "1",
        "--distill.trainer.log_with", "none",
        "--distill.trainer.progress_bar", "false",
        "--search.budget", "2",
        "--search.objectives", "[error, macs]",
        "--pool.workers", "1",
        "--fitness.cache_dir", str(tmp_path / "fitness"),
        "--output_dir", str(tmp_path / "search"),
        "--progress_bar", "false",
    ]  # fmt: skip
    result = main(argv)
    log = [json.loads(line) for line in (tmp_path / "distill" / "train_log.jsonl").read_text().splitlines()]
    check = next(row for row in log if row.get("event") == "teacher_check")
    assert check["test_images"] == 100 and 0.6 < check["test_accuracy"] < 0.95  # ResNet-20: 0.81 on all 10,000
    start = next(row for row in log if row.get("event") == "start")
    assert (start["train_examples"], start["validation_examples"]) == (256, 500)
    assert (tmp_path / "distill" / "supernet" / "model.safetensors").is_file()
    assert len(result.records) == 2
    standalone = json.loads((tmp_path / "search" / "standalone_check.json").read_text())
    assert 0.0 <= standalone["test_accuracy"] <= 1.0 and standalone["matches_search"]
    again = main(argv)  # the finished supernet is reused and the search resumed: nothing is recomputed
    assert [r["hash"] for r in again.records] == [r["hash"] for r in result.records]
