"""Model cards, Hub publishing and ONNX export of the models a search found.

A search run folder (`search/run.py`'s `output_dir`) holds every Pareto-front member as a `transformers` model
folder (`models/<hash>/`). This package turns them into models anyone can load from the Hub:

- `build_cards(run_dir)`: a `huggingface_hub.ModelCard` per front member (architecture, metrics as `model-index`,
  latency with its device fingerprint, the Pareto plot with the model starred, the supernet's rank check, the
  distillation recipe, how to load and fine-tune, limitations, licence), and one for the supernet;
- `push(run_dir, repo_id, model=HASH)` / `push(..., supernet=True)`: one commit through `huggingface_hub.HfApi`;
- `export_pretrained(model, path)`, `export_folder(folder)`, `export_run(run_dir)`: ONNX export checked against
  PyTorch in onnxruntime, with its onnxruntime latency (added to the card).

Command line: `python -m hub_cards build | export | push` (see `hub_cards/__main__.py`, `docs/hub_cards.md`).
Importing the package is light (no torch): the commands check for a token or offline mode before loading models.
"""

from .cards import build_cards, model_card, supernet_card
from .export import export_folder, export_pretrained
from .push import PushError, push
from .run_export import export_run

__all__ = [
    "PushError",
    "build_cards",
    "export_folder",
    "export_pretrained",
    "export_run",
    "model_card",
    "push",
    "supernet_card",
]
