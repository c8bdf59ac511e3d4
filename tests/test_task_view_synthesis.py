"""Novel view synthesis: LLFF loading and cameras, projection, volume rendering, the pixelNeRF-style model on an
EvoNet backbone, save / load, backbones from folders, errors, and a real `Trainer` run on the fern scene."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, Trainer, TrainingArguments

import evonets
from evonets.data.llff import (
    LLFFTestViews,
    LLFFTrainingRays,
    ViewSynthesisCollator,
    ViewSynthesisMetrics,
    image_metrics,
    load_llff_scene,
    mean_colour_baseline,
    view_synthesis_example,
)
from evonets.models.modeling_evonet_view_synthesis import (
    EvoNetForNovelViewSynthesis,
    EvoNetViewSynthesisConfig,
    NovelViewSynthesisOutput,
    camera_rays,
    positional_encoding,
    project_points,
    sample_along_rays,
    volume_render,
)

WIDTH, HEIGHT = 64, 48  # fern's 4:3 at 1/7.875 of images_8


@pytest.fixture(scope="module")
def fern(shared_data):
    return shared_data / "llff_fern"


@pytest.fixture(scope="module")
def scene(fern):
    return load_llff_scene(fern, image_size=(WIDTH, HEIGHT))


def small_backbone(**overrides) -> evonets.EvoNetConfig:
    kwargs = {
        "patch_size": 4,
        "depths": [1, 1],
        "hidden_sizes": [16, 32],
        "block_types": ["conv", "attention"],
        "mlp_ratios": 2.0,
        "out_features": ["stage1", "stage2"],
    }
    kwargs.update(overrides)
    return evonets.EvoNetConfig(**kwargs)


def small_model(**overrides) -> EvoNetForNovelViewSynthesis:
    kwargs = {"backbone_config": small_backbone(), "hidden_size": 32, "num_view_layers": 1, "num_samples": 16}
    kwargs.update(overrides)
    torch.manual_seed(0)
    return EvoNetForNovelViewSynthesis(EvoNetViewSynthesisConfig(**kwargs))


def batch_of(scene, count: int = 2, rays: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    dataset = LLFFTrainingRays(scene, num_source_views=2, rays_per_item=rays, seed=seed)
    return ViewSynthesisCollator()([dataset[index] for index in range(count)])


# --- LLFF loading and cameras ---------------------------------------------------------------------------------------


def test_llff_loading_views_focal_split_and_rotations(fern):
    raw = np.load(fern / "poses_bounds.npy", allow_pickle=False)
    scene = load_llff_scene(fern)
    assert scene.images.shape == (20, 378, 504, 3)
    assert 0.0 <= scene.images.min() and scene.images.max() <= 1.0
    full_focal = raw[0, 14]
    np.testing.assert_allclose(scene.intrinsics[:, 0, 0], full_focal / 8, rtol=1e-6)  # hwf at 4032x3024: 1/8
    np.testing.assert_allclose(scene.intrinsics[:, :2, 2], np.tile([252.0, 189.0], (20, 1)))
    assert scene.test_views == [0, 8, 16]
    assert scene.train_views == [view for view in range(20) if view not in (0, 8, 16)]
    rotations = scene.poses[:, :3, :3].astype(np.float64)
    np.testing.assert_allclose(
        rotations @ rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (20, 3, 3)), atol=1e-5
    )
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-5)
    # OpenCV axes from LLFF's (down, right, back): x = right, y = down, z = -back.
    llff = raw[:, :15].reshape(-1, 3, 5)
    np.testing.assert_allclose(rotations[:, :, 0], llff[:, :, 1], atol=1e-6)
    np.testing.assert_allclose(rotations[:, :, 1], llff[:, :, 0], atol=1e-6)
    np.testing.assert_allclose(rotations[:, :, 2], -llff[:, :, 2], atol=1e-6)
    # Rescaled so that the nearest bound is 1; camera centres scale alike.
    scale = 1.0 / raw[:, 15].min()
    assert scene.bounds[:, 0].min() == pytest.approx(1.0)
    np.testing.assert_allclose(scene.poses[:, :3, 3], llff[:, :, 3] * scale, rtol=1e-5, atol=1e-6)
    # Resizing keeps the 4:3 aspect and scales the focal length with the width.
    small = load_llff_scene(fern, image_size=(WIDTH, HEIGHT))
    assert small.images.shape == (20, HEIGHT, WIDTH, 3)
    np.testing.assert_allclose(small.intrinsics[:, 0, 0], full_focal * WIDTH / 4032, rtol=1e-6)


def test_cameras_explain_the_photos(scene):
    """Plane sweep on real photos: warping a neighbour view into view 1 through fronto-parallel planes matches the
    photo far better at some depth inside the bounds than at the ends, and far better than with mirrored axes."""

    def sweep_errors(poses: np.ndarray) -> np.ndarray:
        target, source = 1, 2
        origins, directions = camera_rays(poses[target], scene.intrinsics[target], HEIGHT, WIDTH)
        image = torch.from_numpy(scene.images[source].transpose(2, 0, 1))[None]
        errors = []
        for depth in np.linspace(1.0, 4.5, 15, dtype=np.float32):
            points = torch.from_numpy(origins + depth * directions)[None]
            pixels, _ = project_points(
                points, torch.from_numpy(poses[[source]])[None], torch.from_numpy(scene.intrinsics[[source]])[None]
            )
            grid = 2 * pixels[0] / torch.tensor([WIDTH, HEIGHT]) - 1  # (1, P, 2)
            warped = F.grid_sample(image, grid[:, :, None], align_corners=False)[0, :, :, 0].T.numpy()
            inside = (grid[0].abs() <= 1).all(-1).numpy()
            errors.append(np.abs(warped - scene.images[target].reshape(-1, 3))[inside].mean())
        return np.array(errors)

    errors = sweep_errors(scene.poses)
    assert 0 < errors.argmin() < len(errors) - 1
    assert errors.min() < 0.8 * min(errors[0], errors[-1])
    mirrored = scene.poses.copy()
    mirrored[:, :3, 1:3] *= -1  # y up, z backward (OpenGL axes read as OpenCV ones)
    assert errors.min() < 0.7 * sweep_errors(mirrored).min()


def test_ray_points_project_back_to_their_pixels(scene):
    """A point at depth t on the ray through pixel (i, j) projects to (j + 0.5, i + 0.5) at camera depth t, in its
    own camera; projecting into S cameras at once equals projecting into each alone."""
    rng = np.random.default_rng(0)
    pixels = rng.choice(HEIGHT * WIDTH, size=50, replace=False)
    depths = rng.uniform(1.0, 4.5, size=50).astype(np.float32)
    views = [3, 5, 12]
    points = []
    for view in views:
        origins, directions = camera_rays(scene.poses[view], scene.intrinsics[view], HEIGHT, WIDTH, pixels=pixels)
        points.append(origins + depths[:, None] * directions)
    points = torch.from_numpy(np.stack(points))  # (3 views as batch, 50, 3)
    poses = torch.from_numpy(scene.poses[views])[:, None]  # (B, 1, 4, 4): each point set into its own camera
    intrinsics = torch.from_numpy(scene.intrinsics[views])[:, None]
    projected, camera_points = project_points(points, poses, intrinsics)
    rows, columns = np.divmod(pixels, WIDTH)
    expected = np.stack([columns + 0.5, rows + 0.5], axis=-1)
    for index in range(len(views)):
        np.testing.assert_allclose(projected[index, 0].numpy(), expected, atol=2e-3)
        np.testing.assert_allclose(camera_points[index, 0, :, 2].numpy(), depths, rtol=1e-4)

    all_cameras = torch.from_numpy(scene.poses[views])[None].expand(3, -1, -1, -1)
    all_intrinsics = torch.from_numpy(scene.intrinsics[views])[None].expand(3, -1, -1, -1)
    together, _ = project_points(points, all_cameras, all_intrinsics)  # (3, 3, 50, 2)
    for batch in range(3):
        for camera in range(3):
            alone, _ = project_points(
                points[batch : batch + 1], all_cameras[:1, camera : camera + 1], all_intrinsics[:1, camera : camera + 1]
            )
            torch.testing.assert_close(together[batch, camera], alone[0, 0])
    # The diagonal is the round trip above.
    torch.testing.assert_close(torch.stack([together[i, i] for i in range(3)]), projected[:, 0])


def test_points_of_a_target_ray_lie_on_the_epipolar_line_in_a_source_view(scene):
    """Samples along one target ray project into a source view on one straight line, ordered by depth."""
    target, source = 3, 4
    origins, directions = camera_rays(scene.poses[target], scene.intrinsics[target], HEIGHT, WIDTH, pixels=[1000])
    depths = np.linspace(1.0, 4.5, 8, dtype=np.float32)
    points = torch.from_numpy(origins + depths[:, None] * directions)[None]
    pixels, camera_points = project_points(
        points, torch.from_numpy(scene.poses[[source]])[None], torch.from_numpy(scene.intrinsics[[source]])[None]
    )
    uv = pixels[0, 0].double().numpy()
    centred = uv - uv.mean(axis=0)
    singular_values = np.linalg.svd(centred, compute_uv=False)
    assert singular_values[1] < 1e-4 * singular_values[0]  # collinear
    along = centred @ np.linalg.svd(centred)[2][0]
    assert np.all(np.diff(along) > 0) or np.all(np.diff(along) < 0)  # monotone in depth
    assert (camera_points[0, 0, :, 2] > 0).all()


# --- rendering math ----------------------------------------------------------------------------------------------


def test_volume_rendering_hand_computed_cases():
    depths = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    colors = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]]])
    norms = torch.ones(1)

    opaque = torch.tensor([[0.0, 0.0, 1e4, 0.0]])
    rgb, depth, weights = volume_render(opaque, colors, depths, norms)
    torch.testing.assert_close(weights, torch.tensor([[0.0, 0.0, 1.0, 0.0]]))
    torch.testing.assert_close(rgb, torch.tensor([[0.0, 0.0, 1.0]]))
    torch.testing.assert_close(depth, torch.tensor([3.0]))

    rgb, depth, weights = volume_render(torch.zeros(1, 4), colors, depths, norms)
    assert torch.equal(weights, torch.zeros(1, 4)) and torch.equal(rgb, torch.zeros(1, 3))
    assert torch.equal(depth, torch.zeros(1))

    # alpha_1 = 1 - exp(-ln 2 * 1) = 1/2; the last sample (delta = 1e10) takes the remaining half.
    half = torch.tensor([[math.log(2.0), 0.0, 0.0, 1.0]])
    rgb, depth, weights = volume_render(half, colors, depths, norms)
    torch.testing.assert_close(weights, torch.tensor([[0.5, 0.0, 0.0, 0.5]]))
    torch.testing.assert_close(rgb, torch.tensor([[1.0, 0.5, 0.5]]))
    torch.testing.assert_close(depth, torch.tensor([2.5]))
    # A direction of length 2 doubles every distance: alpha_1 = 1 - exp(-2 ln 2) = 3/4.
    _, _, weights = volume_render(half, colors, depths, 2 * norms)
    torch.testing.assert_close(weights, torch.tensor([[0.75, 0.0, 0.0, 0.25]]))


def test_samples_and_positional_encoding():
    near, far = torch.tensor([1.0, 2.0]), torch.tensor([4.0, 3.0])
    samples = sample_along_rays(near, far, 8, inverse_depth=True, perturb=False, num_rays=5)
    assert samples.shape == (2, 5, 8)
    assert (samples[0] > 1.0).all() and (samples[0] < 4.0).all() and (samples.diff(dim=-1) > 0).all()
    inverse_steps = (1 / samples[0, 0]).diff()
    torch.testing.assert_close(inverse_steps, torch.full_like(inverse_steps, (1 / 4 - 1) / 8))
    linear = sample_along_rays(near, far, 8, inverse_depth=False, perturb=False, num_rays=1)
    torch.testing.assert_close(linear[1, 0], 2.0 + (torch.arange(8) + 0.5) / 8)
    torch.manual_seed(0)
    jittered = sample_along_rays(near, far, 8, inverse_depth=False, perturb=True, num_rays=100)
    bins = torch.floor((jittered[0] - 1.0) / 3.0 * 8)
    assert torch.equal(bins, torch.arange(8.0).expand(100, -1))  # one sample per interval
    assert not torch.equal(jittered[0, 0], jittered[0, 1])

    encoded = positional_encoding(torch.tensor([[0.5, -1.0, 0.25]]), 2)
    assert encoded.shape == (1, 3 * 5)
    torch.testing.assert_close(encoded[0, :3], torch.tensor([0.5, -1.0, 0.25]))
    torch.testing.assert_close(encoded[0, 3], torch.tensor(math.sin(math.pi * 0.5)))  # sin(2^0 pi x_0)
    torch.testing.assert_close(encoded[0, 4], torch.tensor(math.sin(2 * math.pi * 0.5)), atol=1e-6, rtol=0)


# --- the model ---------------------------------------------------------------------------------------------------


def test_forward_backward_shapes_on_real_views(scene):
    model = small_model()
    batch = batch_of(scene, count=2, rays=64)
    output = model(**batch, output_weights=True)
    assert isinstance(output, NovelViewSynthesisOutput)
    assert output.rgb.shape == (2, 64, 3) and output.depth.shape == (2, 64)
    assert output.weights.shape == (2, 64, 16) and output.sample_depths.shape == (2, 64, 16)
    assert ((output.rgb >= 0) & (output.rgb <= 1)).all()
    assert (output.weights.sum(-1) <= 1 + 1e-5).all()
    near, far = scene.near_far
    assert (output.sample_depths >= near).all() and (output.sample_depths <= far).all()
    torch.testing.assert_close(output.loss, F.mse_loss(output.rgb, batch["labels"]))
    output.loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith(("encoder.backbone.", "radiance_field.input_projection")):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert model.encoder.projections[-1].weight.grad.abs().sum() > 0  # coarsest map reaches the loss
    assert model(**batch, return_dict=False)[0].shape == ()


def test_eval_is_deterministic_and_chunking_does_not_change_it(scene):
    model = small_model().eval()
    batch = batch_of(scene, count=1, rays=200)
    with torch.no_grad():
        whole = model(**batch).rgb
        model.config.ray_chunk_size = 37
        chunked = model(**batch).rgb
    torch.testing.assert_close(whole, chunked)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(**batch).rgb, model(**batch).rgb)  # stratified samples in training


def test_source_views_matter_and_unseen_points_are_ignored(scene):
    """Rendering depends on what the source views show; source views that see none of the points give the output
    of an empty mean, whatever their pixels."""
    model = small_model().eval()
    batch = batch_of(scene, count=1, rays=32)
    with torch.no_grad():
        reference = model(**batch).rgb
        darker = model(**{**batch, "source_images": batch["source_images"] * 0.5}).rgb
        assert not torch.allclose(reference, darker)
        turned = batch["source_poses"].clone()
        turned[..., :3, 1:3] *= -1  # turn every camera 180 degrees about its x axis: the scene is behind it
        blind = model(**{**batch, "source_poses": turned}).rgb
        blind_dark = model(**{**batch, "source_poses": turned, "source_images": batch["source_images"] * 0.5}).rgb
    torch.testing.assert_close(blind, blind_dark)


def test_save_and_load_through_auto_classes(tmp_path, scene):
    model = small_model().eval()
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, EvoNetViewSynthesisConfig)
    assert isinstance(config.backbone_config, evonets.EvoNetConfig)
    assert config.backbone_config.out_features == ["stage1", "stage2"]
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is EvoNetForNovelViewSynthesis
    batch = batch_of(scene, count=1, rays=32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).rgb, model(**batch).rgb)


LOAD_WITH_REMOTE_CODE = textwrap.dedent(
    """
    import sys

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    folder, tensors = sys.argv[1], load_file(sys.argv[2])
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__name__ == "EvoNetForNovelViewSynthesis", type(model)
    assert not any(name.startswith("evonets") for name in sys.modules)
    inputs = {key: value for key, value in tensors.items() if key != "rgb"}
    with torch.no_grad():
        rgb = model(**inputs).rgb
    assert (rgb - tensors["rgb"]).abs().max().item() <= 1e-5
    """
)


def test_saved_folder_loads_with_remote_code_without_evonets(tmp_path, scene, without_evonets):
    model = small_model().eval()
    model.save_pretrained(tmp_path / "model")
    batch = batch_of(scene, count=1, rays=32)
    with torch.no_grad():
        save_file({**batch, "rgb": model(**batch).rgb}, tmp_path / "expected.safetensors")
    without_evonets(LOAD_WITH_REMOTE_CODE, tmp_path / "model", tmp_path / "expected.safetensors")


def test_backbone_from_a_saved_classifier_folder(tmp_path):
    config = small_backbone(num_labels=3)
    classifier = evonets.EvoNetForImageClassification(config)
    classifier.save_pretrained(tmp_path)
    model = EvoNetForNovelViewSynthesis.from_backbone(tmp_path, hidden_size=16, num_samples=8)
    assert model.config.backbone_config.depths == [1, 1]
    assert model.config.backbone_config.out_features == ["stage1", "stage2"]
    source = classifier.evonet.state_dict()
    backbone = model.backbone.state_dict()
    shared = [key for key in backbone if not key.startswith("hidden_states_norms.")]
    assert shared and all(torch.equal(backbone[key], source[key]) for key in shared)
    scratch = EvoNetForNovelViewSynthesis.from_backbone(config, hidden_size=16, num_samples=8)
    assert not torch.equal(
        scratch.backbone.embeddings.patch_embeddings.weight, source["embeddings.patch_embeddings.weight"]
    )
    with pytest.raises(ValueError, match="not a saved EvoNet folder"):
        EvoNetForNovelViewSynthesis.from_backbone(tmp_path / "missing")


# --- errors ------------------------------------------------------------------------------------------------------


def scene_copy(tmp_path, fern, poses_bounds: np.ndarray | None = None, images: bool = True):
    folder = tmp_path / "scene"
    folder.mkdir(parents=True)
    np.save(folder / "poses_bounds.npy", np.load(fern / "poses_bounds.npy") if poses_bounds is None else poses_bounds)
    if images:
        (folder / "images_8").symlink_to(fern / "images_8", target_is_directory=True)
    return folder


def test_malformed_scenes_raise_clear_errors(tmp_path, fern):
    raw = np.load(fern / "poses_bounds.npy", allow_pickle=False)
    with pytest.raises(ValueError, match=r"shape \(20, 15\).*\(N, 17\)"):
        load_llff_scene(scene_copy(tmp_path / "a", fern, raw[:, :15]))
    with pytest.raises(ValueError, match="19 views but .* 20 images"):
        load_llff_scene(scene_copy(tmp_path / "b", fern, raw[:19]))
    with pytest.raises(FileNotFoundError, match="images_8"):
        load_llff_scene(scene_copy(tmp_path / "c", fern, images=False))
    with pytest.raises(FileNotFoundError, match="poses_bounds.npy"):
        load_llff_scene(tmp_path / "nowhere")
    bad_bounds = raw.copy()
    bad_bounds[3, 15:] = [5.0, 1.0]
    with pytest.raises(ValueError, match="0 < near < far"):
        load_llff_scene(scene_copy(tmp_path / "d", fern, bad_bounds))
    not_rotation = raw.copy()
    not_rotation[2, 0] *= 3.0
    with pytest.raises(ValueError, match="not orthonormal"):
        load_llff_scene(scene_copy(tmp_path / "e", fern, not_rotation))
    with pytest.raises(ValueError, match="aspect ratio"):
        load_llff_scene(fern, image_size=(64, 64))


def test_rays_without_source_views_and_bad_inputs_raise(scene):
    with pytest.raises(ValueError, match="no source views"):
        view_synthesis_example(scene, 1, [])
    with pytest.raises(ValueError, match="among its own source views"):
        view_synthesis_example(scene, 1, [1, 2])
    example = view_synthesis_example(scene, 1, [2], pixels=np.arange(8))
    empty = {**example, "source_images": example["source_images"][:0]}
    with pytest.raises(ValueError, match="at least one source view"):
        ViewSynthesisCollator()([example, empty])
    with pytest.raises(ValueError, match="different shapes"):
        ViewSynthesisCollator()([example, view_synthesis_example(scene, 1, [2, 3], pixels=np.arange(8))])

    model = small_model()
    batch = ViewSynthesisCollator()([example])
    with pytest.raises(ValueError, match="no source view"):
        model(**{**batch, "source_images": batch["source_images"][:, :0], "source_poses": batch["source_poses"][:, :0]})
    with pytest.raises(ValueError, match="source_poses of shape"):
        model(**{**batch, "source_poses": batch["source_poses"][..., :3, :]})
    with pytest.raises(ValueError, match="labels of shape"):
        model(**{**batch, "labels": batch["labels"][:, :4]})
    with pytest.raises(ValueError, match="near and far are required"):
        model(**{key: value for key, value in batch.items() if key not in ("near", "far")})
    fixed = small_model(near=1.0, far=4.0)
    assert fixed(**{key: value for key, value in batch.items() if key not in ("near", "far")}).rgb.shape == (1, 8, 3)
    with pytest.raises(ValueError, match="near = 4.0, far = 1.0"):
        EvoNetViewSynthesisConfig(backbone_config=small_backbone(), near=4.0, far=1.0)
    with pytest.raises(ValueError, match="num_samples = 1"):
        EvoNetViewSynthesisConfig(backbone_config=small_backbone(), num_samples=1)
    with pytest.raises(ValueError, match="num_source_views"):
        LLFFTrainingRays(scene, num_source_views=0)


def test_metrics_and_mean_colour_baseline(scene):
    from transformers import EvalPrediction

    images = scene.images[scene.test_views]  # (3, H, W, 3)
    noisy = np.clip(images + np.random.default_rng(0).normal(0, 0.1, images.shape), 0, 1).astype(np.float32)
    rows = (noisy.reshape(3, -1, 3), noisy[..., 0].reshape(3, -1))  # what Trainer gathers: rgb and depth, per ray
    metrics = ViewSynthesisMetrics(HEIGHT, WIDTH)(EvalPrediction(predictions=rows, label_ids=images.reshape(3, -1, 3)))
    assert 19 < metrics["psnr"] < 22 and 0 < metrics["ssim"] < 1  # about -10 log10(0.01) = 20 dB, less where clipped
    per_image = [image_metrics(noisy[index], images[index]) for index in range(3)]
    assert metrics["ssim"] == pytest.approx(np.mean([entry["ssim"] for entry in per_image]))  # rays back to images
    less_noisy = image_metrics(np.clip(images[0] + 0.02, 0, 1), images[0])
    assert less_noisy["psnr"] > per_image[0]["psnr"] and less_noisy["ssim"] > per_image[0]["ssim"]
    baseline = mean_colour_baseline(scene)
    assert 8 < baseline["psnr"] < 16 and baseline["ssim"] < 0.5


# --- Trainer on real data ----------------------------------------------------------------------------------------


def test_trainer_fine_tunes_on_fern_and_beats_the_mean_colour(tmp_path, scene):
    torch.manual_seed(0)
    model = EvoNetForNovelViewSynthesis.from_backbone(
        small_backbone(block_types=["ss2d", "attention"], d_states=4),
        hidden_size=32,
        num_view_layers=1,
        num_samples=16,
    )
    train_rays = LLFFTrainingRays(scene, num_source_views=2, rays_per_item=256, num_items=60, seed=0)
    test_views = LLFFTestViews(scene, num_source_views=2)
    held_out_rays = ViewSynthesisCollator()([test_views[0]])

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(model(**held_out_rays).loss)

    before = held_out_loss()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=60,
        per_device_train_batch_size=1,
        per_device_eval_batch_size=1,
        learning_rate=2e-3,
        warmup_steps=5,
        logging_steps=10,
        save_strategy="no",
        remove_unused_columns=False,
        report_to="none",
        dataloader_pin_memory=False,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_rays,
        eval_dataset=test_views,
        data_collator=ViewSynthesisCollator(),
        compute_metrics=ViewSynthesisMetrics(HEIGHT, WIDTH),
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
    assert held_out_loss() < 0.7 * before
    metrics = trainer.evaluate()
    baseline = mean_colour_baseline(scene)
    assert metrics["eval_psnr"] > baseline["psnr"] and metrics["eval_ssim"] > baseline["ssim"]
