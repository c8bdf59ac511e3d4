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


def build_parser(prog: str = "distill/train.py", description: str = __doc__):
    from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=True)
    parser.add_argument(
        "--config", action=ActionConfigFile, help="YAML config file (fields at top level or under 'distill:')."
    )
    parser.add_class_arguments(DistillConfig, as_group=False)
    return parser


def _section_configs(argv: list[str]) -> list[str]:
    """Replace `--config FILE` whose YAML has a top-level `distill:` section by that section (as a YAML string)."""
    import yaml

    result, index = [], 0
    while index < len(argv):
        item = argv[index]
        value, consumed = None, 1
        if item == "--config" and index + 1 < len(argv):
            value, consumed = argv[index + 1], 2
        elif item.startswith("--config="):
            value = item.split("=", 1)[1]
        if value is not None and Path(value).is_file():
            loaded = yaml.safe_load(Path(value).read_text())
            if isinstance(loaded, dict) and SECTION in loaded:
                section = loaded[SECTION] or {}
                if not isinstance(section, dict):
                    raise SystemExit(f"error: the '{SECTION}:' section of {value} is not a mapping.")
                value = yaml.safe_dump(section)
            result.extend(["--config", value])
        else:
            result.extend(argv[index : index + consumed])
        index += consumed
    return result


def parse_config(
    argv: list[str] | None = None, prog: str = "distill/train.py", description: str = __doc__
) -> DistillConfig:
    """The `DistillConfig` of a command line (YAML + dotted overrides), validated."""
    parser = build_parser(prog, description)
    argv = _section_configs(list(sys.argv[1:] if argv is None else argv))
    namespace = parser.parse_args(argv)
    namespace.pop("config", None)
    config = parser.instantiate(namespace)
    config = DistillConfig(**{field: config[field] for field in DistillConfig.__dataclass_fields__})
    try:
        return config.validate()
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None):
    config = parse_config(argv)
    from distill.trainer import train

    return train(config)


if __name__ == "__main__":
    main()
