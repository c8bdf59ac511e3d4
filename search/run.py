"""Search a trained EvoNet supernet for the Pareto front of error, latency and MACs.

    python search/run.py --config configs/quickstart.yaml                  # distill (first run only), then search
    accelerate launch search/run.py --config configs/quickstart.yaml       # the same, under accelerate
    accelerate launch --multi_gpu --num_processes 2 search/run.py --config configs/quickstart.yaml   # 2 ranks (gloo on CPU)
    python search/run.py --supernet runs/quickstart/distill/supernet --search.budget 200 --pool.workers 2
    python search/run.py --config configs/quickstart.yaml --print_config   # the merged config, then exit

Every field can be overridden with a dotted flag (`--search.optimizer random`, `--latency.mode measure`,
`--search.constraints '[latency_ms <= 0.5]'`); `--help` documents them all and a misspelled key is an error. Kill it
at any time: running the same command again resumes the run in `output_dir` (finished evaluations are kept; only
the ones in flight run again).

Outputs in `output_dir`: `archive.jsonl`, `pareto.json`, `pareto.csv`, `pareto.png`, `models/<hash>/` (each front
member as an `EvoNetForImageClassification` folder), `summary.md`, `run.json`, `config.yaml`.
"""

from __future__ import annotations

from search.config import SearchConfig


def build_parser():
    from evonets.engine.cli import build_parser

    return build_parser(SearchConfig, "search/run.py", __doc__)


def parse_config(argv: list[str] | None = None) -> SearchConfig:
    """The `SearchConfig` of a command line (YAML + dotted overrides), validated."""
    from evonets.engine.cli import parse_config

    return parse_config(SearchConfig, argv, "search/run.py", __doc__)


def main(argv: list[str] | None = None):
    config = parse_config(argv)
    from search.runner import run

    return run(config)


def cli() -> None:
    """The console script's entry: `main`, exiting with status 0 once it succeeds (the object `main` returns is for
    Python callers; returned to the script's `sys.exit` it would print and exit 1)."""
    main()


if __name__ == "__main__":
    cli()
