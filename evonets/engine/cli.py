"""Command lines built from config dataclasses with jsonargparse, shared by `distill/train.py`, `search/run.py` and
`search/rank_check.py`.

Every tool gets `--config FILE` (YAML), a dotted flag per field (`--trainer.lr 1e-3`), `--help` from the fields'
docstrings, `--print_config`, and an error for a misspelled key. A tool that owns one *section* of a shared YAML file
(`distill:` in `configs/quickstart.yaml`) reads that section when the file has it, and the file's top level
otherwise. After parsing, the dataclass's `validate()` runs and its `ValueError` is reported like a parse error.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import types
import typing
from pathlib import Path


def section_argv(argv: list[str], section: str) -> list[str]:
    """Replace `--config FILE` whose YAML has a top-level `section:` by that section (as a YAML string)."""
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
            if isinstance(loaded, dict) and section in loaded:
                content = loaded[section] or {}
                if not isinstance(content, dict):
                    raise SystemExit(f"error: the '{section}:' section of {value} is not a mapping.")
                value = yaml.safe_dump(content)
            result.extend(["--config", value])
        else:
            result.extend(argv[index : index + consumed])
        index += consumed
    return result


def build_parser(config_class: type, prog: str, description: str, section: str | None = None):
    """A jsonargparse parser with `--config` and one flag per field of `config_class` (nested dataclasses dotted)."""
    from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter, set_parsing_settings

    class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
        """Keeps the command examples of a description on their own lines."""

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter, exit_on_error=True)
    where = f" (fields at top level or under '{section}:')" if section else ""
    parser.add_argument("--config", action=ActionConfigFile, help=f"YAML config file{where}.")
    parser.add_class_arguments(config_class, as_group=False)
    return parser


def parse_config(config_class: type, argv: list[str] | None, prog: str, description: str, section: str | None = None):
    """The validated `config_class` instance of a command line (`sys.argv[1:]` when `argv` is None)."""
    parser = build_parser(config_class, prog, description, section)
    argv = list(sys.argv[1:] if argv is None else argv)
    if section:
        argv = section_argv(argv, section)
    namespace = parser.parse_args(argv)
    namespace.pop("config", None)
    for name in _null_sections(config_class, namespace):
        parser.error(f"Config section {name} is null (e.g. `{name.split('.')[-1]}:` with nothing under it): give its "
                     "fields, or leave the section out to use its defaults.")  # fmt: skip
    instantiated = parser.instantiate(namespace)
    config = config_class(**{name: instantiated[name] for name in config_class.__dataclass_fields__})
    try:
        return config.validate()
    except ValueError as error:
        parser.error(str(error))


def _null_sections(config_class: type, namespace, prefix: str = "") -> list[str]:
    """Dotted names of the nested config dataclasses that the YAML set to null (jsonargparse would fail on them with
    a bare TypeError), at any depth: also inside an optional section that is given (`distill: {trainer: null}`),
    while an optional section itself may be null."""
    found = []
    hints = typing.get_type_hints(config_class)
    for name in config_class.__dataclass_fields__:
        kind, optional = _section_type(hints.get(name))
        if kind is None:
            continue
        value = namespace.get(name) if hasattr(namespace, "get") else getattr(namespace, name, None)
        if value is None:
            if not optional:
                found.append(prefix + name)
        elif not dataclasses.is_dataclass(value):  # a jsonargparse Namespace of the section's fields
            found += _null_sections(kind, value, f"{prefix}{name}.")
    return found


def _section_type(annotation) -> tuple[type | None, bool]:
    """(the config dataclass a field holds, whether it may be None); (None, False) for a plain field."""
    arguments = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    classes = [argument for argument in arguments if dataclasses.is_dataclass(argument)]
    if len(classes) == 1 and type(None) in arguments:
        return classes[0], True
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return annotation, False
    return None, False


def field_error(name: str, value, expected: str) -> ValueError:
    """The one wording of a bad config value, naming the field, the value and what is allowed."""
    return ValueError(f"Config field {name} = {value!r} is invalid: expected {expected}.")


def check_writable_folder(name: str, path) -> None:
    """A config's output folder must be creatable and writable by this user: checked before any work starts (nothing
    is created here), so a typo or a read-only mount is an error naming the field, not an OSError an hour in."""
    import os
    from pathlib import Path

    folder = Path(path).expanduser().absolute()
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir():
        raise field_error(name, str(path), f"a folder, but {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise field_error(name, str(path), f"a folder this user can write ({existing} is not writable)")


def is_int(value) -> bool:
    """An int that is not a bool (`True` would pass `isinstance(value, int)`)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A finite int or float that is not a bool (nor a string, nor NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_field(condition: bool, name: str, value, expected: str) -> None:
    """Raise `field_error(name, value, expected)` unless `condition`."""
    if not condition:
        raise field_error(name, value, expected)


__all__ = [
    "build_parser",
    "check_field",
    "check_writable_folder",
    "field_error",
    "is_int",
    "is_real",
    "parse_config",
    "section_argv",
]
