"""Train a weight-sharing EvoNet supernet by CA-DDKD with sandwich sampling.

    python distill/train.py --config configs/quickstart.yaml
    accelerate launch distill/train.py --config configs/quickstart.yaml --trainer.max_steps 100
    accelerate launch --multi_gpu --num_processes 2 distill/train.py --config configs/quickstart.yaml   # 2 gloo ranks on CPU
    python distill/train.py --config configs/quickstart.yaml --print_config      # the merged config, then exit
    evonets-distill --config configs/quickstart.yaml                             # the console script: the same

Every field of the config can be overridden with a dotted flag (`--trainer.lr 1e-3`, `--loss.frequency_weight 0`);
`--help` lists them all with their documentation, and a misspelled key is an error. A config file may hold the
fields at its top level or under a `distill:` section (the search pipeline's config shares that section; its other
sections are ignored here). Kill it at any time: running the same command again resumes from the last checkpoint.

Outputs in `trainer.output_dir`: `supernet/` (loads with `EvoNetSupernet.from_pretrained`), `train_log.jsonl`,
`config.yaml`, `checkpoints/`.
"""

from __future__ import annotations

from distill.config import parse_config


def main(argv: list[str] | None = None):
    """Parse the command line, then train (or resume); returns the `DistillResult`."""
    config = parse_config(argv, prog="distill/train.py", description=__doc__)
    from distill.trainer import train  # after parsing: `--help` needs no torch

    return train(config)


def cli() -> None:
    """The console script's entry: `main`, exiting with status 0 once it succeeds (the object `main` returns is for
    Python callers; returned to the script's `sys.exit` it would print and exit 1)."""
    main()


if __name__ == "__main__":
    cli()
