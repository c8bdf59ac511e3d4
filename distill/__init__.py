"""Supernet training by cross-architecture dual-domain knowledge distillation (CA-DDKD); see issue 4.

    python distill/train.py --config configs/quickstart.yaml     # or: evonets-distill ..., accelerate launch ...

The package's public entry point is this module: build or load a supernet from a config. From Python (what `search/`
does before it searches):

```python
from distill import build_supernet, parse_config
result = build_supernet(parse_config(["--config", "configs/quickstart.yaml"]))   # DistillResult
result.supernet_dir                                                     # EvoNetSupernet.from_pretrained(...)
```

`build_supernet` returns the finished supernet of the config's `trainer.output_dir` when it was distilled with the same
config, and otherwise trains it (resuming from the latest checkpoint).

Modules: `config` (the dataclass tree of the YAML / command line, `parse_config`), `teachers` (any transformers image
classifier as a frozen teacher), `train_teacher` (a from-scratch teacher of another family), `losses` (CA-DDKD terms
and projectors), `sampling` (sandwich rule, progressive shrinking), `student` (the supernet with its projectors and the
sandwich step), `trainer` (the run on `evonets.engine`'s training loop: checkpoints, resume, logs), `train` (the
command line).
"""

from .config import DistillConfig, parse_config
from .trainer import DistillResult, build_supernet

__all__ = ["DistillConfig", "DistillResult", "build_supernet", "parse_config"]
