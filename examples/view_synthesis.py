"""Fine-tune an EvoNet-conditioned radiance field (pixelNeRF-style) on the real LLFF "fern" scene with `Trainer`.

    python examples/view_synthesis.py                                   # a few CPU minutes
    python examples/view_synthesis.py --backbone runs/quickstart/search/models/<hash>   # a searched backbone
    python examples/view_synthesis.py --max-steps 50 --output-dir /tmp/fern

Training draws random batches of rays from the 17 training views, each rendered from 3 of its nearest other training
views; the 3 held-out views (0, 8, 16) are then rendered whole from their 3 nearest training views. Prints PSNR /
SSIM on the held-out views beside the trivial baseline (the training images' mean colour as a constant image), writes
`heldout_view.png` (rendered | ground truth | depth), `results.json` and the model (`from_pretrained`-able).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image
from transformers import Trainer, TrainingArguments

import evonets
from evonets.data.llff import (
    LLFFTestViews,
    LLFFTrainingRays,
    ViewSynthesisCollator,
    ViewSynthesisMetrics,
    image_metrics,
    load_llff_scene,
    mean_colour_baseline,
)
from evonets.data.paths import shared_data_dir


def small_backbone() -> evonets.EvoNetConfig:
    """A small hybrid EvoNet (conv, SS2D, SSD and attention blocks), from scratch."""
    return evonets.EvoNetConfig(
        patch_size=4,
        depths=[1, 1, 2, 1],
        hidden_sizes=[32, 48, 96, 128],
        block_types=["conv", "ss2d", ["ssd", "attention"], "attention"],
        mlp_ratios=2.0,
        d_states=8,
    )


def depth_to_colour(depth: np.ndarray) -> np.ndarray:
    """(H, W) depths -> (H, W, 3) turbo colours of the inverse depth (near = warm), scaled to the image's range."""
    inverse = 1.0 / np.maximum(depth, 1e-6)
    low, high = np.percentile(inverse, [1, 99])
    return matplotlib.colormaps["turbo"](np.clip((inverse - low) / max(high - low, 1e-6), 0, 1))[..., :3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(shared_data_dir() / "llff_fern"))
    parser.add_argument("--output-dir", default="outputs/fern-view-synthesis")
    parser.add_argument("--backbone", default=None, help="a saved EvoNet folder (e.g. a search run's models/<hash>/)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--rays-per-step", type=int, default=512)
    parser.add_argument("--source-views", type=int, default=3)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    start = time.time()

    scene = load_llff_scene(args.data_dir, image_size=(args.width, args.height))
    print(
        f"{len(scene.images)} views at {scene.width}x{scene.height}: train {scene.train_views}, "
        f"held out {scene.test_views}; sampling depth {scene.near_far[0]:.2f} .. {scene.near_far[1]:.2f}"
    )
    train_rays = LLFFTrainingRays(
        scene,
        num_source_views=args.source_views,
        rays_per_item=args.rays_per_step,
        num_items=args.max_steps,
        seed=args.seed,
    )
    test_views = LLFFTestViews(scene, num_source_views=args.source_views)

    model = evonets.EvoNetForNovelViewSynthesis.from_backbone(
        args.backbone if args.backbone else small_backbone(),
        hidden_size=args.hidden_size,
        num_view_layers=1,
        num_pooled_layers=1,
        num_samples=args.samples,
    )
    print(
        f"EvoNetForNovelViewSynthesis: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"backbone blocks {model.config.backbone_config.block_types}"
    )

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=1,
        per_device_eval_batch_size=1,
        learning_rate=args.learning_rate,
        warmup_steps=20,
        lr_scheduler_type="cosine",
        weight_decay=0.0,
        logging_steps=20,
        eval_strategy="no",
        save_strategy="no",
        remove_unused_columns=False,
        report_to="none",
        seed=args.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_rays,
        data_collator=ViewSynthesisCollator(),
        compute_metrics=ViewSynthesisMetrics(scene.height, scene.width),
    )
    trainer.train()

    prediction = trainer.predict(test_views, metric_key_prefix="test")
    rgb, depth = prediction.predictions
    baseline = mean_colour_baseline(scene)
    elapsed = time.time() - start

    output_dir = Path(args.output_dir)
    trainer.save_model(output_dir)
    shape = (scene.height, scene.width)
    first = scene.test_views[0]
    rendered = np.clip(rgb[0].reshape(*shape, 3), 0, 1)
    panel = np.concatenate([rendered, scene.images[first], depth_to_colour(depth[0].reshape(shape))], axis=1)
    Image.fromarray((panel * 255).round().astype(np.uint8)).save(output_dir / "heldout_view.png")

    per_view = {
        str(view): image_metrics(rgb[index].reshape(*shape, 3), scene.images[view])
        for index, view in enumerate(scene.test_views)
    }
    results = {
        "psnr": prediction.metrics["test_psnr"],
        "ssim": prediction.metrics["test_ssim"],
        "per_view": per_view,
        "mean_colour_baseline": baseline,
        "resolution": f"{scene.width}x{scene.height}",
        "max_steps": args.max_steps,
        "wall_time_s": elapsed,
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(
        f"\nheld-out views {scene.test_views} at {scene.width}x{scene.height}, {args.max_steps} steps, "
        f"{elapsed / 60:.1f} min"
    )
    print(f"  EvoNet radiance field   PSNR {results['psnr']:.2f} dB   SSIM {results['ssim']:.3f}")
    print(f"  mean-colour baseline    PSNR {baseline['psnr']:.2f} dB   SSIM {baseline['ssim']:.3f}")
    print(f"wrote {output_dir / 'heldout_view.png'} (view {first}: rendered | ground truth | depth) and the model")


if __name__ == "__main__":
    main()
