"""Rank-check harness: does a supernet rank its subnets like stand-alone training does?

For a set of architectures (sampled with a fixed seed), compare

- the **supernet accuracy**: validation accuracy with inherited weights (`supernet(pixel_values, arch=arch)`), and
- the **stand-alone accuracy**: validation accuracy of `EvoNetForImageClassification(space.to_config(arch))` trained
  from scratch with one fixed recipe (`StandaloneRecipe`: AdamW, cosine, cross-entropy, fixed steps and seed),

by Kendall's tau-b, Spearman's rho and top-k overlap. Only the validation split is used; the test split stays unread.
Stand-alone results are cached in a JSON file keyed by architecture encoding and recipe, so several supernets (e.g.
the loss ablation of `bench/bench_distill.py`) share one set of stand-alone runs, and `search/rank_check.py` can
reuse both the harness and its cache.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import warnings
from collections.abc import Callable
from concurrent.futures import Future, as_completed
from dataclasses import asdict, dataclass, replace
from itertools import combinations
from pathlib import Path

import torch
import torch.nn.functional as F

from evonets.data.classification import ClassificationData, collate, resize_batch, training_loader
from evonets.engine.evaluation import evaluate, tensor_batches
from evonets.engine.identity import digest
from evonets.engine.training import TrainingLoop, parameter_groups

# The orders in which architectures can be ranked (see `ranking_scores`).
RANKINGS = ("fitness", "accuracy", "loss")


@dataclass
class StandaloneRecipe:
    """The fixed stand-alone training recipe: AdamW, linear warm-up then cosine decay, cross-entropy, the train split."""

    steps: int = 150
    """Optimizer steps (the train split is reshuffled every epoch)."""

    batch_size: int = 64
    """Batch size."""

    lr: float = 3e-3
    """Peak AdamW learning rate."""

    weight_decay: float = 0.05
    """AdamW weight decay (not on norms and biases)."""

    warmup_steps: int = 15
    """Linear warm-up steps before the cosine decay."""

    seed: int = 0
    """Seed of initialisation and data order."""

    def key(self) -> str:
        return digest(asdict(self), length=10)


def sample_architectures(space, count: int, seed: int = 0) -> list[dict]:
    """`count` distinct architectures from `space`, drawn with `random.Random(seed)`."""
    rng, archs, seen = random.Random(seed), [], set()
    for _ in range(100 * count):
        arch = space.sample(rng)
        encoding = space.encode(arch)
        if encoding not in seen:
            seen.add(encoding)
            archs.append(arch)
        if len(archs) == count:
            break
    return archs


def validation_tensors(data: ClassificationData) -> tuple[torch.Tensor, torch.Tensor]:
    batch = collate([data.validation[i] for i in range(len(data.validation))])
    return batch["pixel_values"], batch["labels"]


def supernet_scores(supernet, data: ClassificationData, archs: list[dict]) -> list[dict[str, float]]:
    """Validation accuracy and loss of each architecture with the supernet's inherited weights."""
    supernet.eval()
    pixel_values, labels = validation_tensors(data)
    return [
        evaluate(
            lambda x, arch=arch: supernet(x, arch=arch).logits, tensor_batches(pixel_values, labels), arch["resolution"]
        )
        for arch in archs
    ]


def train_standalone(space, arch: dict, data: ClassificationData, recipe: StandaloneRecipe) -> dict[str, float]:
    """Train `arch` from scratch with `recipe` on the train split; its validation accuracy and loss."""
    from transformers import get_cosine_schedule_with_warmup

    from evonets import EvoNetForImageClassification

    torch.manual_seed(recipe.seed)
    model = EvoNetForImageClassification(space.to_config(arch)).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, recipe.weight_decay), lr=recipe.lr)
    scheduler = get_cosine_schedule_with_warmup(optimizer, recipe.warmup_steps, recipe.steps)
    loader = training_loader(data.train, recipe.batch_size, recipe.seed)

    def step(batch: dict) -> dict[str, float]:
        logits = model(resize_batch(batch["pixel_values"], arch["resolution"])).logits
        F.cross_entropy(logits, batch["labels"]).backward()
        return {}

    TrainingLoop(model, optimizer, scheduler, loader, step, recipe.steps).run()
    model.eval()
    pixel_values, labels = validation_tensors(data)
    return evaluate(lambda x: model(x).logits, tensor_batches(pixel_values, labels), arch["resolution"])


def standalone_scores(
    space,
    archs: list[dict],
    data: ClassificationData,
    recipe: StandaloneRecipe,
    seeds: tuple[int, ...] = (0,),
    cache_path: str | Path | None = None,
    log=print,
    submit: Callable[[dict, StandaloneRecipe], Future] | None = None,
) -> list[dict]:
    """Per architecture, the stand-alone validation `accuracy` and `loss` averaged over `seeds` (each a full
    training with `recipe` and that seed), plus `per_seed` results. Read from / added to the JSON cache at
    `cache_path`, keyed by recipe (with seed) and architecture encoding; the cache is rewritten after every training,
    so an interrupted run keeps what it finished. `log(message)` is called once per training run (not for cached
    results).

    `submit(arch, recipe)`, when given, schedules one training elsewhere and returns a `concurrent.futures.Future` of
    its result, e.g. the `submit` of a process pool whose workers load their own copy of the data: every missing
    training is submitted at once and cached as it finishes. Default: train here, one after another."""
    cache = {}
    if cache_path and Path(cache_path).is_file():
        cache = json.loads(Path(cache_path).read_text())
    missing = {}  # cache key -> (architecture index, architecture, recipe with the seed), architecture-major
    for index, arch in enumerate(archs):
        for seed in seeds:
            seeded = replace(recipe, seed=seed)
            key = _cache_key(space, arch, seeded)
            if key not in cache:
                missing.setdefault(key, (index, arch, seeded))

    def store(key: str, result: dict[str, float]) -> None:
        index, arch, seeded = missing[key]
        cache[key] = result
        log(
            f"stand-alone {index + 1}/{len(archs)} seed {seeded.seed}: {space.encode(arch)} -> accuracy "
            f"{result['accuracy']:.3f}, loss {result['loss']:.4f}"
        )
        if cache_path:
            Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
            Path(cache_path).write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")

    if submit is None:
        for key, (_, arch, seeded) in missing.items():
            store(key, train_standalone(space, arch, data, seeded))
    else:
        futures = {submit(arch, seeded): key for key, (_, arch, seeded) in missing.items()}
        for future in as_completed(futures):
            store(futures[future], future.result())
    results = []
    for arch in archs:
        per_seed = [cache[_cache_key(space, arch, replace(recipe, seed=seed))] for seed in seeds]
        results.append(
            {
                "accuracy": sum(r["accuracy"] for r in per_seed) / len(per_seed),
                "loss": sum(r["loss"] for r in per_seed) / len(per_seed),
                "per_seed": per_seed,
            }
        )
    return results


def _cache_key(space, arch: dict, recipe: StandaloneRecipe) -> str:
    return f"{recipe.key()}:{space.encode(arch)}"


def ranking_scores(results: list[dict], ranking: str) -> list[float]:
    """One score per architecture, higher is better, whose order is `ranking` of the `{"accuracy", "loss"}` results:
    `accuracy`; `loss` (negated); `fitness`, the search's order: accuracy, ties broken by the lower loss (as the rank
    of the (accuracy, -loss) pair; equal pairs share a rank)."""
    if ranking == "accuracy":
        return [r["accuracy"] for r in results]
    if ranking == "loss":
        return [-r["loss"] for r in results]
    if ranking == "fitness":
        keys = [(r["accuracy"], -r["loss"]) for r in results]
        rank_of = {key: float(rank) for rank, key in enumerate(sorted(set(keys)))}
        return [rank_of[key] for key in keys]
    raise ValueError(f"ranking = {ranking!r} is invalid: expected one of {list(RANKINGS)}.")


def seed_ceiling(standalone: list[dict], ranking: str) -> float | None:
    """Mean Kendall tau between the rankings of single stand-alone seeds, over all pairs of seeds: how well the
    stand-alone reference agrees with itself. None with one seed."""
    seeds = len(standalone[0]["per_seed"])
    if seeds < 2:
        return None
    per_seed = [ranking_scores([entry["per_seed"][seed] for entry in standalone], ranking) for seed in range(seeds)]
    taus = [rank_correlations(per_seed[a], per_seed[b])["kendall_tau"] for a, b in combinations(range(seeds), 2)]
    return statistics.mean(taus)


def rank_correlations(supernet_scores: list[float], standalone_scores: list[float], top_k: int = 5) -> dict[str, float]:
    """Kendall's tau-b, Spearman's rho and the overlap of the top-k sets (as a fraction of k; k = min(top_k, n)) of
    two score lists."""
    from scipy.stats import kendalltau, spearmanr

    with warnings.catch_warnings():  # constant scores: no ranking, reported as 0 below
        warnings.simplefilter("ignore")
        tau = kendalltau(supernet_scores, standalone_scores).statistic
        rho = spearmanr(supernet_scores, standalone_scores).statistic
    k = min(top_k, len(supernet_scores))
    top_supernet = set(sorted(range(len(supernet_scores)), key=lambda i: -supernet_scores[i])[:k])
    top_standalone = set(sorted(range(len(standalone_scores)), key=lambda i: -standalone_scores[i])[:k])
    return {
        "kendall_tau": float(tau) if not math.isnan(tau) else 0.0,
        "spearman_rho": float(rho) if not math.isnan(rho) else 0.0,
        "top_k": k,
        "top_k_overlap": len(top_supernet & top_standalone) / k,
    }


__all__ = [
    "RANKINGS",
    "StandaloneRecipe",
    "rank_correlations",
    "ranking_scores",
    "sample_architectures",
    "seed_ceiling",
    "standalone_scores",
    "supernet_scores",
    "train_standalone",
]
