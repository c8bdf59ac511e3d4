"""Train a weight-sharing EvoNet supernet by CA-DDKD with sandwich sampling.

    python distill/train.py --config configs/quickstart.yaml
    accelerate launch distill/train.py --config configs/quickstart.yaml --trainer.max_steps 100
    accelerate launch --multi_gpu --num_processes 2 distill/train.py --config configs/quickstart.yaml   # 2 gloo ranks on CPU
    python distill/train.py --config configs/quickstart.yaml --print_config      # the merged config, then exit

Every field of the config can be overridden with a dotted flag (`--trainer.lr 1e-3`, `--loss.frequency_weight 0`);
`--help` lists them all with their documentation, and a misspelled key is an error. A config file may hold the
fields at its top level or under a `distill:` section (the search pipeline's config shares that section; its other
sections are ignored here). Kill it at any time: running the same command again resumes from the last checkpoint.

Outputs in `trainer.output_dir`: `supernet/` (loads with `EvoNetSupernet.from_pretrained`), `train_log.jsonl`,
`config.yaml`, `checkpoints/`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: drop distill/ from the path, make the repository importable
    _here = Path(__file__).resolve().parent
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.append(str(_here.parent))

from distill.config import DistillConfig

SECTION = "distill"


def parse_config(
    argv: list[str] | None = None, prog: str = "distill/train.py", description: str = __doc__
) -> DistillConfig:
    """The `DistillConfig` of a command line (YAML + dotted overrides), validated."""
    from evonets.engine.cli import parse_config as parse

    return parse(DistillConfig, argv, prog, description, section=SECTION)


def main(argv: list[str] | None = None):
    config = parse_config(argv)
    from distill.trainer import train

    return train(config)


if __name__ == "__main__":
    main()
