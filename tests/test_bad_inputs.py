"""Bad inputs a careful user tried (issue 15), as one table: each must raise the named error type with a message that
names the field (or the image, or the section) and what is allowed, and must leave the working folder untouched.

Run-folder, checkpoint and kernel-build faults have their own files (`test_run_folder_safety.py`,
`test_checkpoint_safety.py`, `test_kernel_build.py`); this table holds the inputs that come through constructors,
the image processor and the command line.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import evonets

BASE = {"depths": [1, 1], "hidden_sizes": [16, 32], "block_types": [["ss2d"], ["attention"]], "num_labels": 10}


def evonet_config(**changes):
    return evonets.EvoNetConfig(**{**BASE, **changes})


def supernet_config(**changes):
    return evonets.EvoNetSupernetConfig.tiny(num_labels=10, **changes)


def process(image):
    return evonets.EvoNetImageProcessor(size={"height": 8, "width": 8})(image, return_tensors="pt")


def search_cli(*argv):
    from search.run import parse_config

    return parse_config(list(argv))


def distill_cli(*argv):
    from distill import parse_config

    return parse_config(list(argv))


# (id, call, error type, fragments the message must contain)
CASES = [
    # EvoNetConfig: values the old code accepted or failed on deep inside torch
    ("mlp_ratio_string", lambda: evonet_config(mlp_ratios="4"), ValueError, ["mlp_ratios", "finite positive number"]),
    ("mlp_ratio_inf", lambda: evonet_config(mlp_ratios=math.inf), ValueError, ["mlp_ratios", "finite"]),
    ("mlp_ratio_nan", lambda: evonet_config(mlp_ratios=math.nan), ValueError, ["mlp_ratios"]),
    ("hidden_act_unknown", lambda: evonet_config(hidden_act="nope"), ValueError, ["hidden_act", "gelu"]),
    ("ssm_ratio_too_small", lambda: evonet_config(ssm_ratios=0.01), ValueError, ["ssm_ratios", "inner channel"]),
    ("ssm_ratio_zero", lambda: evonet_config(ssm_ratios=0), ValueError, ["ssm_ratios", "positive"]),
    ("layer_norm_eps_negative", lambda: evonet_config(layer_norm_eps=-1e-6), ValueError, ["layer_norm_eps", "> 0"]),
    ("layer_norm_eps_zero", lambda: evonet_config(layer_norm_eps=0.0), ValueError, ["layer_norm_eps"]),
    (
        "image_smaller_than_patch",
        lambda: evonet_config(image_size=2, patch_size=4),
        ValueError,
        ["image_size", "patch_size = 4"],
    ),
    ("bool_depth", lambda: evonet_config(depths=[True, 1]), ValueError, ["depths", "positive ints"]),
    ("bool_width", lambda: evonet_config(hidden_sizes=[16, False]), ValueError, ["hidden_sizes"]),
    ("depth_zero", lambda: evonet_config(depths=[0, 1]), ValueError, ["depths"]),
    (
        "unknown_block_type",
        lambda: evonet_config(block_types=[["mamba"], ["attention"]]),
        ValueError,
        ["block_types[0][0]", "ss2d"],
    ),
    ("block_types_wrong_length", lambda: evonet_config(block_types=[["ss2d"]]), ValueError, ["block_types"]),
    ("d_state_float", lambda: evonet_config(d_states=1.5), ValueError, ["d_states", "positive int"]),
    ("num_heads_zero", lambda: evonet_config(num_heads=0), ValueError, ["num_heads"]),
    ("even_conv_kernel", lambda: evonet_config(conv_kernel_size=4), ValueError, ["conv_kernel_size", "odd"]),
    ("drop_path_rate_one", lambda: evonet_config(drop_path_rate=1.0), ValueError, ["drop_path_rate"]),
    ("drop_path_rate_nan", lambda: evonet_config(drop_path_rate=math.nan), ValueError, ["drop_path_rate"]),
    (
        "negative_layer_scale",
        lambda: evonet_config(layer_scale_init_value=-1.0),
        ValueError,
        ["layer_scale_init_value"],
    ),
    # The supernet's config (the search space)
    (
        "resolution_zero",
        lambda: supernet_config(resolution_choices=[0, 16]),
        ValueError,
        ["resolution_choices", "patch_size"],
    ),
    ("depth_choice_zero", lambda: supernet_config(depth_choices=[[0, 1], [1], [1]]), ValueError, ["depth_choices"]),
    (
        "width_choice_string",
        lambda: supernet_config(width_choices=[[16, "x"], [32], [48]]),
        ValueError,
        ["width_choices"],
    ),
    (
        "unknown_block_type_choice",
        lambda: supernet_config(block_type_choices=["nope"]),
        ValueError,
        ["block_type_choices", "ss2d"],
    ),
    ("mlp_ratio_choice_nan", lambda: supernet_config(mlp_ratio_choices=[math.nan]), ValueError, ["mlp_ratio_choices"]),
    ("d_state_choice_bool", lambda: supernet_config(d_state_choices=[True]), ValueError, ["d_state_choices"]),
    # Images into the processor
    ("image_two_channels", lambda: process(np.zeros((5, 5, 2), np.uint8)), ValueError, ["images", "(5, 5, 2)"]),
    ("image_five_channels", lambda: process(np.zeros((5, 5, 5), np.uint8)), ValueError, ["images", "RGB"]),
    ("image_empty_pil", lambda: process(Image.new("RGB", (0, 0))), ValueError, ["images", "empty"]),
    ("image_empty_array", lambda: process(np.zeros((0, 0, 3), np.uint8)), ValueError, ["images", "empty"]),
    (
        "image_in_list_bad",
        lambda: process([np.zeros((5, 5, 3), np.uint8), np.zeros((5, 5, 2), np.uint8)]),
        ValueError,
        ["images[1]"],
    ),
    ("batch_two_channels", lambda: process(torch.rand(2, 2, 5, 5)), ValueError, ["images[0]"]),
    # Heads built from the wrong config
    (
        "depth_head_from_plain_config",
        lambda: evonets.EvoNetForDepthEstimation(evonet_config()),
        TypeError,
        ["EvoNetDepthConfig", "from_backbone"],
    ),
    (
        "segmentation_head_from_plain_config",
        lambda: evonets.EvoNetForSemanticSegmentation(evonet_config()),
        TypeError,
        ["EvoNetSegmentationConfig", "from_backbone"],
    ),
    # Command lines (jsonargparse exits with status 2 and prints the message)
    ("search_budget_zero", lambda: search_cli("--search.budget", "0"), SystemExit, ["search.budget"]),
    ("search_misspelled_key", lambda: search_cli("--search.budgt", "3"), SystemExit, ["budgt"]),
    ("search_unknown_objective", lambda: search_cli("--search.objectives", "[foo]"), SystemExit, ["search.objectives"]),
    ("pool_workers_zero", lambda: search_cli("--pool.workers", "0"), SystemExit, ["pool.workers"]),
    ("latency_repeats_zero", lambda: search_cli("--latency.repeats", "0"), SystemExit, ["latency.repeats"]),
    ("distill_lr_negative", lambda: distill_cli("--trainer.lr", "-1"), SystemExit, ["trainer.lr"]),
    ("distill_unknown_source", lambda: distill_cli("--data.source", "mnist"), SystemExit, ["data.source"]),
    (
        "reference_point_nan",
        lambda: search_cli("--supernet", "sn", "--search.reference_point", "{error: .nan, latency_ms: 1, macs: 1}"),
        SystemExit,
        ["search.reference_point.error", "finite"],
    ),
    (
        "reference_point_negative",
        lambda: search_cli("--supernet", "sn", "--search.reference_point", "{error: 1, latency_ms: -1, macs: 1}"),
        SystemExit,
        ["search.reference_point.latency_ms"],
    ),
    # keep.txt is a file the test writes first: an output folder below it cannot be made
    (
        "search_output_dir_under_a_file",
        lambda: search_cli("--supernet", "sn", "--output_dir", "keep.txt/run"),
        SystemExit,
        ["output_dir", "is a file"],
    ),
    (
        "distill_output_dir_under_a_file",
        lambda: distill_cli("--trainer.output_dir", "keep.txt/run"),
        SystemExit,
        ["trainer.output_dir", "is a file"],
    ),
]


@pytest.mark.parametrize(("call", "error", "fragments"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_refused_clearly_and_changes_nothing(call, error, fragments, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("untouched")
    before = sorted(os.walk(tmp_path))
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value) + capsys.readouterr().err
    if error is SystemExit:
        assert raised.value.code == 2
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    assert sorted(os.walk(tmp_path)) == before and (tmp_path / "keep.txt").read_text() == "untouched"


def test_the_table_is_large():
    assert len(CASES) >= 40


@pytest.mark.parametrize(
    "yaml_text, name",
    [("search: null\n", "search"), ("distill:\n  trainer: null\n", "distill.trainer")],  # also inside an optional one
)
def test_a_null_section_in_the_yaml_is_named(tmp_path, capsys, yaml_text, name):
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text)
    with pytest.raises(SystemExit) as raised:
        search_cli("--config", str(config))
    assert raised.value.code == 2
    assert f"Config section {name} is null" in capsys.readouterr().err


def test_flop_counter_mode_works_under_no_grad_on_scan_networks():
    """Users count FLOPs with `FlopCounterMode` inside `torch.no_grad()`; torch's module tracker used to fail on a
    no-grad view of a scan parameter passed as a module input ("Expected gradient function to be set")."""
    from torch.utils.flop_counter import FlopCounterMode

    config = evonet_config(block_types=[["ss2d"], ["ssd"]], image_size=32)
    model = evonets.EvoNetForImageClassification(config).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pixel_values)
    with FlopCounterMode(display=False) as with_grad:
        model(pixel_values)
    assert counter.get_total_flops() == with_grad.get_total_flops() > 0


def test_greyscale_arrays_are_images():
    """(H, W) arrays are greyscale images, as the processor's docstring says, not a 'flat list' error."""
    processor = evonets.EvoNetImageProcessor(size={"height": 8, "width": 8})
    pixel_values = processor(np.full((5, 5), 128, np.uint8), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 8, 8)
    mean, std = torch.tensor(processor.image_mean), torch.tensor(processor.image_std)
    rgb = pixel_values[0] * std[:, None, None] + mean[:, None, None]
    torch.testing.assert_close(rgb, torch.full_like(rgb, 128 / 255), atol=1e-3, rtol=0)  # the same grey everywhere


def _saved_classifier(folder) -> evonets.EvoNetForImageClassification:
    model = evonets.EvoNetForImageClassification(evonet_config(block_types=[["conv"], ["attention"]], image_size=32))
    model.save_pretrained(folder)
    return model


def test_a_config_with_more_blocks_than_its_weights_is_refused(tmp_path):
    """An edited config.json used to load with random weights for the extra block and only a warning."""
    import json

    from transformers import AutoModelForImageClassification

    _saved_classifier(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(depths=[2, 1], block_types=[["conv", "conv"], ["attention"]])
    (tmp_path / "config.json").write_text(json.dumps(config))
    for load in (evonets.EvoNetForImageClassification.from_pretrained, AutoModelForImageClassification.from_pretrained):
        with pytest.raises(ValueError, match=r"no weights for \d+ tensors of the network's body .*blocks\.1"):
            load(tmp_path)
    model = evonets.EvoNetForImageClassification.from_pretrained(tmp_path, allow_missing_body_weights=True)
    assert model.config.depths == [2, 1]


def test_a_missing_head_still_loads_as_in_transformers(tmp_path):
    evonets.EvoNetModel(evonet_config(block_types=[["conv"], ["attention"]], image_size=32)).save_pretrained(tmp_path)
    _, info = evonets.EvoNetForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]


def test_truncated_weights_name_the_folder(tmp_path):
    _saved_classifier(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"safetensors weights of {tmp_path} are damaged or truncated"):
        evonets.EvoNetForImageClassification.from_pretrained(tmp_path)


def test_a_folder_without_config_json_is_named(tmp_path):
    _saved_classifier(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match=f"{tmp_path} has no config.json"):
        evonets.EvoNetForImageClassification.from_pretrained(tmp_path)
