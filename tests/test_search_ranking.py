"""The rank-check harness: architecture sampling, correlations, the seed ceiling, evaluation, the cache."""

import json

import pytest
import torch

from evonets.engine.evaluation import evaluate, tensor_batches
from evonets.models.search_space import EvoNetSupernetConfig
from search.ranking import (
    StandaloneRecipe,
    rank_correlations,
    sample_architectures,
    seed_ceiling,
    standalone_scores,
)


def test_sampled_architectures_are_distinct_and_reproducible():
    space = EvoNetSupernetConfig.tiny(num_labels=10).search_space
    archs = sample_architectures(space, 12, seed=5)
    assert len({space.encode(a) for a in archs}) == 12
    assert archs == sample_architectures(space, 12, seed=5)


def test_rank_correlations_known_values():
    perfect = rank_correlations([1, 2, 3, 4, 5, 6], [10, 20, 30, 40, 50, 60], top_k=3)
    assert perfect["kendall_tau"] == pytest.approx(1.0) and perfect["spearman_rho"] == pytest.approx(1.0)
    assert perfect["top_k"] == 3 and perfect["top_k_overlap"] == 1.0
    reversed_ = rank_correlations([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], top_k=3)
    assert reversed_["kendall_tau"] == pytest.approx(-1.0) and reversed_["top_k_overlap"] == 0.0
    one_swap = rank_correlations([1, 2, 3, 4], [1, 2, 4, 3])
    assert one_swap["kendall_tau"] == pytest.approx(4 / 6)  # 5 concordant, 1 discordant pair of 6
    assert rank_correlations([1, 1, 1], [1, 2, 3])["kendall_tau"] == 0.0  # constant scores: no ranking (nan -> 0)


def test_seed_ceiling_of_two_seeds_is_their_tau():
    entries = [
        {"per_seed": [{"accuracy": a, "loss": -a}, {"accuracy": b, "loss": -b}]}
        for a, b in [(0.1, 0.2), (0.2, 0.1), (0.3, 0.4), (0.4, 0.3)]
    ]
    assert seed_ceiling(entries, "accuracy") == pytest.approx(1 / 3)
    assert seed_ceiling(entries, "loss") == pytest.approx(1 / 3)  # loss = -accuracy here: the same order
    assert seed_ceiling([{"per_seed": [{"accuracy": 1.0}]}], "accuracy") is None


def test_evaluate_reports_accuracy_and_loss():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    result = evaluate(lambda x: logits[: len(x)], tensor_batches(torch.zeros(3, 3, 4, 4), labels), resolution=4)
    assert result["accuracy"] == pytest.approx(2 / 3)
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert result["loss"] == pytest.approx(expected, rel=1e-5)


def test_evaluate_over_batches_resized_and_gathered():
    """Slices of any size give the same scores; `resolution` resizes each batch; `gather` sees (logits, labels)."""
    torch.manual_seed(0)
    pixel_values, labels = torch.randn(7, 3, 8, 8), torch.randint(0, 3, (7,))
    weights = torch.randn(3 * 4 * 4, 3)
    seen = []

    def model_fn(x):
        seen.append(tuple(x.shape[-2:]))
        return x.flatten(1) @ weights

    def gather(pair):
        seen.append("gathered")
        return pair

    whole = evaluate(model_fn, tensor_batches(pixel_values, labels, 7), resolution=4)
    sliced = evaluate(model_fn, tensor_batches(pixel_values, labels, 3), resolution=4, gather=gather)
    assert sliced["accuracy"] == whole["accuracy"] and sliced["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert seen == [(4, 4)] + [(4, 4), "gathered"] * 3


def test_standalone_scores_average_seeds_and_use_the_cache(tmp_path, monkeypatch):
    from search import ranking

    space = EvoNetSupernetConfig.tiny(num_labels=10).search_space
    archs = sample_architectures(space, 2, seed=0)
    calls = []

    def fake_train(space, arch, data, recipe):
        calls.append(recipe.seed)
        return {"accuracy": 0.5 + 0.1 * recipe.seed, "loss": 1.0 - 0.1 * recipe.seed}

    monkeypatch.setattr(ranking, "train_standalone", fake_train)
    cache = tmp_path / "cache.json"
    scores = standalone_scores(space, archs, None, StandaloneRecipe(steps=5), (0, 1), cache, log=lambda *_: None)
    assert calls == [0, 1, 0, 1] and scores[0]["accuracy"] == pytest.approx(0.55)
    assert len(json.loads(cache.read_text())) == 4
    again = standalone_scores(space, archs, None, StandaloneRecipe(steps=5), (0, 1), cache, log=lambda *_: None)
    assert again == scores and calls == [0, 1, 0, 1]  # all from the cache
    standalone_scores(space, archs, None, StandaloneRecipe(steps=6), (0,), cache, log=lambda *_: None)
    assert calls == [0, 1, 0, 1, 0, 0]  # another recipe is another key
