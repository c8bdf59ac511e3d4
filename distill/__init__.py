"""Supernet training by cross-architecture dual-domain knowledge distillation (CA-DDKD); see issue 4.

    python distill/train.py --config configs/quickstart.yaml            # or: accelerate launch distill/train.py ...

Modules: `config` (the dataclass tree of the YAML / command line), `data` (sources, splits, checks), `teachers`
(any transformers image classifier as a frozen teacher), `train_teacher` (a from-scratch teacher of another family),
`losses` (CA-DDKD terms and projectors), `sampling` (sandwich rule, progressive shrinking), `trainer` (the accelerate
loop, checkpoints, resume), `ranking` (the rank-check harness), `train` (the command line).

From Python (what `search/` does to build a supernet first):

```python
from distill import parse_config, train_supernet
result = train_supernet(parse_config(["--config", "configs/quickstart.yaml"]))   # DistillResult
result.supernet_dir                                                      # EvoNetSupernet.from_pretrained(...)
```
"""

from .config import DistillConfig


def train_supernet(config: DistillConfig):
    """Run (or resume) a distillation; see `distill.trainer.train`. (Not named `train`: that is the script module.)"""
    from .trainer import train

    return train(config)


def parse_config(argv: list[str] | None = None) -> DistillConfig:
    """A validated `DistillConfig` from command-line arguments (see `distill/train.py --help`)."""
    from .train import parse_config as _parse_config

    return _parse_config(argv)


__all__ = ["DistillConfig", "parse_config", "train_supernet"]
