"""LLFF scenes for novel view synthesis: loading, camera conversion, rays, `Trainer` datasets, collator and metrics.

An LLFF scene folder holds `poses_bounds.npy` and an image folder (`images_8`: the photos downscaled 8x). Each row
of `poses_bounds.npy` is 17 numbers: a 3x5 matrix, row-major, whose first four columns are the camera-to-world
rotation and the camera centre and whose last column is (height, width, focal) of the *full-resolution* photo, then
the near and far depth bounds of the scene points that view sees. LLFF's rotation columns are the camera's
(down, right, back) axes in world coordinates; we convert them to the OpenCV camera convention used everywhere in
EvoNets' view synthesis, x = right, y = down, z = forward (the viewing direction):

    R_opencv = [ r_right | r_down | -r_back ] = [ R_llff[:, 1] | R_llff[:, 0] | -R_llff[:, 2] ]

(a column swap and a sign flip: both bases are right-handed, det = +1). A pixel (row i, column j) covers
[j, j + 1) x [i, i + 1) in continuous image coordinates, so its centre is (j + 0.5, i + 0.5), and the intrinsics
are fx = fy = focal * width / full_width, cx = width / 2, cy = height / 2.

The scene is rescaled so that the smallest near bound is 1 (camera centres and bounds alike): the radiance field
sees coordinates of order 1 whatever units the structure-from-motion run picked. Views 0, 8, 16, ... (every
`holdout_every`-th view) are held out for testing, as in the NeRF papers; the others are training views.

Rays through pixels come from `camera_rays`, which lives with the model (`modeling_evonet_view_synthesis`: a saved
model folder needs it and no data loader). scikit-image is imported only by the metrics.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evonets.data.augmentation import SeededAugmentation
from evonets.models.modeling_evonet_view_synthesis import camera_rays

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass
class LLFFScene:
    """One LLFF scene in memory.

    Attributes:
        images: (N, H, W, 3) float32 RGB in [0, 1].
        poses: (N, 4, 4) float32 camera-to-world matrices, OpenCV axes (x right, y down, z forward), scene units.
        intrinsics: (N, 3, 3) float32 pinhole matrices [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] for the H x W images.
        bounds: (N, 2) float32 near / far depth of the scene points each view sees, scene units.
        image_names: the N image file names, in `poses_bounds.npy` row order.
        holdout_every: every `holdout_every`-th view (0, k, 2k, ...) is a test view.
    """

    images: np.ndarray
    poses: np.ndarray
    intrinsics: np.ndarray
    bounds: np.ndarray
    image_names: list[str]
    holdout_every: int = 8

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]

    @property
    def test_views(self) -> list[int]:
        return list(range(0, len(self.images), self.holdout_every))

    @property
    def train_views(self) -> list[int]:
        return [view for view in range(len(self.images)) if view % self.holdout_every != 0]

    @property
    def near_far(self) -> tuple[float, float]:
        """Sampling range for every ray: 0.9 x the smallest near bound to the largest far bound (NeRF's choice for
        LLFF scenes rendered without NDC)."""
        return 0.9 * float(self.bounds[:, 0].min()), float(self.bounds[:, 1].max())

    def nearest_views(self, view: int, candidates: list[int], count: int) -> list[int]:
        """The `count` views of `candidates` (other than `view`) whose camera centres are nearest to `view`'s."""
        others = [candidate for candidate in candidates if candidate != view]
        if count < 1 or count > len(others):
            raise ValueError(
                f"count = {count} is invalid: expected 1 .. {len(others)} (the candidate views other than {view})."
            )
        distances = np.linalg.norm(self.poses[others, :3, 3] - self.poses[view, :3, 3], axis=-1)
        return [others[index] for index in np.argsort(distances, kind="stable")[:count]]


def llff_to_opencv_poses(poses_llff: np.ndarray) -> np.ndarray:
    """(N, 3, 4) LLFF camera-to-world matrices (rotation columns down, right, back) -> (N, 4, 4) OpenCV ones
    (columns right, down, forward; bottom row 0 0 0 1)."""
    rotation = np.stack([poses_llff[:, :, 1], poses_llff[:, :, 0], -poses_llff[:, :, 2]], axis=-1)
    poses = np.zeros((len(poses_llff), 4, 4), dtype=np.float64)
    poses[:, :3, :3] = rotation
    poses[:, :3, 3] = poses_llff[:, :, 3]
    poses[:, 3, 3] = 1.0
    return poses


def load_llff_scene(
    folder: str | Path,
    images_folder: str = "images_8",
    image_size: tuple[int, int] | None = None,
    holdout_every: int = 8,
) -> LLFFScene:
    """Load an LLFF scene (`poses_bounds.npy` + `images_folder`), converted to OpenCV cameras and rescaled so that
    the smallest near bound is 1.

    Args:
        folder: the scene folder (e.g. `shared_data_dir() / "llff_fern"`).
        images_folder: the sub-folder of images, one per row of `poses_bounds.npy`, in sorted file-name order.
        image_size: (width, height) to resize the images to (with antialiasing; intrinsics follow), or None to keep
            the stored size. Keep the aspect ratio: fern's 504 x 378 is 4:3, e.g. (128, 96) or (64, 48).
        holdout_every: every `holdout_every`-th view (0, k, 2k, ...) is held out for testing.
    """
    folder = Path(folder)
    poses_file, image_dir = folder / "poses_bounds.npy", folder / images_folder
    _check_scene_layout(poses_file, image_dir, images_folder, holdout_every)
    poses_bounds = _read_poses_bounds(poses_file)
    names = _image_names(image_dir, poses_file, len(poses_bounds), holdout_every)
    poses, bounds, hwf = _llff_cameras(poses_bounds, poses_file)
    images = _read_images(image_dir, names, image_size)
    intrinsics = _intrinsics(len(images), *images.shape[1:3], hwf)

    scale = 1.0 / bounds[:, 0].min()
    poses[:, :3, 3] *= scale
    return LLFFScene(
        images=images,
        poses=poses.astype(np.float32),
        intrinsics=intrinsics.astype(np.float32),
        bounds=(bounds * scale).astype(np.float32),
        image_names=names,
        holdout_every=holdout_every,
    )


def _check_scene_layout(poses_file: Path, image_dir: Path, images_folder: str, holdout_every: int) -> None:
    """The scene's pose file and image folder exist, and `holdout_every` is an int >= 2."""
    if not poses_file.is_file():
        raise FileNotFoundError(f"{poses_file} does not exist: an LLFF scene folder holds poses_bounds.npy.")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} does not exist (images_folder = {images_folder!r}).")
    if not (isinstance(holdout_every, int) and holdout_every >= 2):
        raise ValueError(f"holdout_every = {holdout_every!r} is invalid: expected an int >= 2.")


def _read_poses_bounds(poses_file: Path) -> np.ndarray:
    """The (N, 17) float array of `poses_bounds.npy`, checked for shape and finite values."""
    poses_bounds = np.load(poses_file, allow_pickle=False)
    if poses_bounds.ndim != 2 or poses_bounds.shape[1] != 17 or not np.issubdtype(poses_bounds.dtype, np.floating):
        raise ValueError(
            f"{poses_file} holds a {poses_bounds.dtype} array of shape {poses_bounds.shape}: expected a float array "
            "of shape (N, 17), per view a row-major 3x5 pose-hwf matrix and the near / far bounds."
        )
    if not np.isfinite(poses_bounds).all():
        raise ValueError(f"{poses_file} holds non-finite values (NaN or inf).")
    return poses_bounds


def _image_names(image_dir: Path, poses_file: Path, num_views: int, holdout_every: int) -> list[str]:
    """The sorted image file names, one per view, and more views than `holdout_every`."""
    names = sorted(path.name for path in image_dir.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if len(names) != num_views:
        raise ValueError(
            f"{poses_file} has {num_views} views but {image_dir} has {len(names)} images "
            f"({', '.join(IMAGE_SUFFIXES)}): expected one image per row."
        )
    if len(names) <= holdout_every:
        raise ValueError(
            f"the scene has {len(names)} views; holdout_every = {holdout_every} leaves too few: expected more views "
            "than holdout_every."
        )
    return names


def _llff_cameras(poses_bounds: np.ndarray, poses_file: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV camera-to-world poses (N, 4, 4), near / far bounds (N, 2) and the stored (height, width, focal)."""
    pose_hwf = poses_bounds[:, :15].reshape(-1, 3, 5)
    bounds = poses_bounds[:, 15:17].astype(np.float64)
    if not ((bounds[:, 0] > 0).all() and (bounds[:, 1] > bounds[:, 0]).all()):
        raise ValueError(f"{poses_file} bounds are invalid: expected 0 < near < far for every view.")
    poses = llff_to_opencv_poses(pose_hwf[:, :, :4])
    if (
        not np.allclose(poses[:, :3, :3] @ poses[:, :3, :3].transpose(0, 2, 1), np.eye(3), atol=1e-3)
        or not (np.linalg.det(poses[:, :3, :3]) > 0).all()
    ):
        raise ValueError(f"{poses_file} holds camera rotations that are not orthonormal right-handed matrices.")
    return poses, bounds, pose_hwf[0, :, 4]


def _read_images(image_dir: Path, names: list[str], image_size: tuple[int, int] | None) -> np.ndarray:
    """The (N, H, W, 3) float32 RGB images in [0, 1], resized to `image_size` (width, height) if given."""
    from PIL import Image

    images = []
    for name in names:
        with Image.open(image_dir / name) as image:
            image = image.convert("RGB")
            if image_size is not None and image.size != tuple(image_size):
                image = image.resize(tuple(image_size), Image.Resampling.LANCZOS)
            images.append(np.asarray(image, dtype=np.float32) / 255.0)
    if len({image.shape for image in images}) != 1:
        raise ValueError(f"the images in {image_dir} have different sizes: expected one size for the whole scene.")
    return np.stack(images)


def _intrinsics(num_views: int, height: int, width: int, hwf: np.ndarray) -> np.ndarray:
    """(N, 3, 3) pinhole intrinsics at `height` x `width`, the stored focal length scaled from the stored size."""
    full_height, full_width, full_focal = hwf
    if abs(width / height - full_width / full_height) > 0.02 * full_width / full_height:
        raise ValueError(
            f"images of {width}x{height} do not have the aspect ratio of the poses' {full_width:.0f}x"
            f"{full_height:.0f} (hwf column of poses_bounds.npy): keep the aspect ratio when resizing."
        )
    intrinsics = np.zeros((num_views, 3, 3), dtype=np.float64)
    intrinsics[:, 0, 0] = full_focal * width / full_width
    intrinsics[:, 1, 1] = full_focal * height / full_height
    intrinsics[:, 0, 2] = width / 2.0
    intrinsics[:, 1, 2] = height / 2.0
    intrinsics[:, 2, 2] = 1.0
    return intrinsics


def view_synthesis_example(
    scene: LLFFScene, target: int, sources: list[int], pixels: np.ndarray | None = None
) -> dict[str, Any]:
    """One model input: the `sources` views (images + cameras) and rays of view `target` (all pixels, or `pixels`)
    with their colours as `labels`. Tensors: source_images (S, 3, H, W), source_poses (S, 4, 4), source_intrinsics
    (S, 3, 3), ray_origins / ray_directions / labels (R, 3), near / far () from the scene's bounds."""
    import torch

    if len(sources) == 0:
        raise ValueError(f"target view {target} has no source views: a rendered ray needs at least one source view.")
    if target in sources:
        raise ValueError(f"target view {target} is among its own source views {sources}: it would see its answer.")
    origins, directions = camera_rays(
        scene.poses[target], scene.intrinsics[target], scene.height, scene.width, pixels=pixels
    )
    colours = scene.images[target].reshape(-1, 3)
    near, far = scene.near_far
    return {
        "source_images": torch.from_numpy(np.ascontiguousarray(scene.images[sources].transpose(0, 3, 1, 2))),
        "source_poses": torch.from_numpy(scene.poses[sources]),
        "source_intrinsics": torch.from_numpy(scene.intrinsics[sources]),
        "ray_origins": torch.from_numpy(origins),
        "ray_directions": torch.from_numpy(directions),
        "near": torch.tensor(near),
        "far": torch.tensor(far),
        "labels": torch.from_numpy(colours if pixels is None else colours[pixels]),
    }


class LLFFTrainingRays(SeededAugmentation):
    """Random ray batches from the training views, a `torch` map-style dataset for `Trainer`.

    Item `index` draws (from its own generator, `evonets.data.augmentation`: seeded by `(seed, epoch, index)`) a training view as
    target, `num_source_views` sources among the `num_source_views + extra_source_candidates` training views
    nearest to it (nearby, as at test time, but varied), and `rays_per_item` of its pixels without replacement.
    `num_items` is the epoch length; choose it at least `max_steps * batch_size`.
    """

    def __init__(
        self,
        scene: LLFFScene,
        num_source_views: int = 3,
        rays_per_item: int = 512,
        num_items: int = 100_000,
        extra_source_candidates: int = 2,
        seed: int = 0,
    ):
        candidates = num_source_views + extra_source_candidates
        if not 1 <= num_source_views or candidates > len(scene.train_views) - 1:
            raise ValueError(
                f"num_source_views = {num_source_views}, extra_source_candidates = {extra_source_candidates} are "
                f"invalid: expected num_source_views >= 1 and their sum <= {len(scene.train_views) - 1} (the other "
                "training views)."
            )
        if not 1 <= rays_per_item <= scene.height * scene.width:
            raise ValueError(
                f"rays_per_item = {rays_per_item} is invalid: expected 1 .. {scene.height * scene.width} (pixels)."
            )
        self.scene = scene
        self.num_source_views = num_source_views
        self.rays_per_item = rays_per_item
        self.num_items = num_items
        self.seed = seed
        self.source_candidates = {
            view: scene.nearest_views(view, scene.train_views, candidates) for view in scene.train_views
        }

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = self.item_rng(index)
        target = int(rng.choice(self.scene.train_views))
        sources = rng.choice(self.source_candidates[target], size=self.num_source_views, replace=False).tolist()
        pixels = rng.choice(self.scene.height * self.scene.width, size=self.rays_per_item, replace=False)
        return view_synthesis_example(self.scene, target, sources, pixels=pixels)


class LLFFTestViews:
    """Whole held-out views (all H x W rays each, row-major), each rendered from its `num_source_views` nearest
    training views: the evaluation dataset. `views` defaults to the scene's test views."""

    def __init__(self, scene: LLFFScene, num_source_views: int = 3, views: list[int] | None = None):
        self.scene = scene
        self.views = list(scene.test_views if views is None else views)
        self.sources = [scene.nearest_views(view, scene.train_views, num_source_views) for view in self.views]

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return view_synthesis_example(self.scene, self.views[index], self.sources[index])


class ViewSynthesisCollator:
    """Stack examples of `view_synthesis_example` into a batch: source_images (B, S, 3, H, W), source_poses
    (B, S, 4, 4), source_intrinsics (B, S, 3, 3), ray_origins / ray_directions / labels (B, R, 3), near / far (B,).

    Every example of a batch needs the same number of source views S >= 1, the same source image size and the same
    number of rays R."""

    keys = ("source_images", "source_poses", "source_intrinsics", "ray_origins", "ray_directions", "near", "far")

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        if not examples:
            raise ValueError("cannot collate an empty list of examples.")
        keys = self.keys + (("labels",) if "labels" in examples[0] else ())
        for position, example in enumerate(examples):
            missing = [key for key in keys if key not in example]
            if missing:
                raise ValueError(f"example {position} lacks {missing}: expected the keys {list(keys)}.")
            if example["source_images"].ndim != 4 or len(example["source_images"]) == 0:
                raise ValueError(
                    f"example {position} has source_images of shape {tuple(example['source_images'].shape)}: "
                    "expected (S, 3, H, W) with S >= 1 (target rays need at least one source view)."
                )
        for key in keys:
            shapes = {tuple(example[key].shape) for example in examples}
            if len(shapes) != 1:
                raise ValueError(
                    f"examples have {key} of different shapes {sorted(shapes)}: a batch needs one number of source "
                    "views, one source image size and one number of rays."
                )
        return {key: torch.stack([example[key] for example in examples]) for key in keys}


def image_metrics(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM of one (H, W, 3) image in [0, 1] against its ground truth (scikit-image, data range 1)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    prediction = np.clip(prediction, 0.0, 1.0).astype(np.float64)
    target = target.astype(np.float64)
    return {
        "psnr": float(peak_signal_noise_ratio(target, prediction, data_range=1.0)),
        "ssim": float(structural_similarity(target, prediction, data_range=1.0, channel_axis=-1)),
    }


class ViewSynthesisMetrics:
    """`compute_metrics` for `Trainer` on `LLFFTestViews`: mean PSNR and SSIM over the rendered views.

    The predictions are the model's (rgb (V, H * W, 3), depth (V, H * W)) and the label ids the (V, H * W, 3)
    ground-truth colours, rows in row-major pixel order; `height` x `width` is the rendered image size."""

    def __init__(self, height: int, width: int):
        self.height = height
        self.width = width

    def __call__(self, eval_prediction) -> dict[str, float]:
        predictions = eval_prediction.predictions
        rgb = predictions[0] if isinstance(predictions, (tuple, list)) else predictions
        shape = (-1, self.height, self.width, 3)
        per_view = [
            image_metrics(prediction, target)
            for prediction, target in zip(rgb.reshape(shape), eval_prediction.label_ids.reshape(shape))
        ]
        return {name: float(np.mean([metrics[name] for metrics in per_view])) for name in ("psnr", "ssim")}


def mean_colour_baseline(scene: LLFFScene, views: list[int] | None = None) -> dict[str, float]:
    """The trivial baseline: the mean colour of the training images as a constant image, scored (mean PSNR / SSIM)
    against the `views` (default: the test views)."""
    mean_colour = scene.images[scene.train_views].reshape(-1, 3).mean(axis=0)
    constant = np.broadcast_to(mean_colour, scene.images.shape[1:])
    per_view = [image_metrics(constant, scene.images[view]) for view in (scene.test_views if views is None else views)]
    return {name: float(np.mean([metrics[name] for metrics in per_view])) for name in ("psnr", "ssim")}


__all__ = [
    "LLFFScene",
    "LLFFTestViews",
    "LLFFTrainingRays",
    "ViewSynthesisCollator",
    "ViewSynthesisMetrics",
    "image_metrics",
    "llff_to_opencv_poses",
    "load_llff_scene",
    "mean_colour_baseline",
    "view_synthesis_example",
]
