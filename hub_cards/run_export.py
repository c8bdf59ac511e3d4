"""ONNX export of a search run's front members, then their cards rebuilt to show it.

`export_run(run_dir)` times each member in onnxruntime with the run's own latency settings (`run_latency_settings`),
writes `model.onnx` and `onnx_export.json` into its model folder (`hub_cards.export.export_folder`), and rebuilds its
card (`hub_cards.cards.build_cards`), which then shows the ONNX Runtime latency beside the search's PyTorch latency.
It sits above both modules, so that the export knows nothing of cards and the cards only read what the export wrote.
"""

from __future__ import annotations

from pathlib import Path

from search.run_folder import load_run

from .cards import build_cards
from .export import export_folder, run_latency_settings


def export_run(
    run_dir: str | Path, *, model: str | None = None, atol: float = 1e-4, latency=None, **card_options
) -> list[dict]:
    """Export the front members of a search run (or the one `model` names), then rebuild their cards.

    `latency` defaults to the run's settings with the onnxruntime backend (`run_latency_settings`); `card_options` go
    to `hub_cards.cards.build_cards` (`supernet_dir`, `rank_check`, `supernet_repo_id`, `license`)."""
    from tqdm.auto import tqdm

    run = load_run(run_dir, card_options.get("supernet_dir"))
    members = [run.member(model)] if model is not None else run.front
    settings = latency if latency is not None else run_latency_settings(run)
    results = []
    for member in tqdm(members, desc="ONNX export", disable=len(members) < 2):
        result = export_folder(run.model_dir(member), latency=settings, atol=atol)
        results.append({"hash": member["hash"], "torch_latency_ms": member["latency"]["ms"], **result})
        build_cards(run_dir, model=member["hash"], with_supernet_card=False, **card_options)
    return results


__all__ = ["export_run"]
