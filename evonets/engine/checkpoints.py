"""Checkpoints of an accelerate training that survive `kill -9`, hold no pickles, and the choice of the one to resume.

A checkpoint is a folder `<output_dir>/checkpoints/checkpoint_<i>` (numbered on from the last complete one, the
`total_limit` newest kept) of safetensors and JSON files only:

| file | what |
| --- | --- |
| `model.safetensors` | the (unwrapped) model's `state_dict` |
| `optimizer.json` + `optimizer.safetensors` | the optimizer's `state_dict`: its tensors, and the rest as JSON |
| `scheduler.json` (+ `.safetensors` if it holds tensors) | the learning-rate scheduler's `state_dict` |
| `scaler.json` | the fp16 `GradScaler`'s `state_dict` (only with one) |
| `<name>.json` | each named object's `state_dict` (the loop's `train_state`, the `sampler`) |
| `rng_state_<rank>.json` + `.safetensors` | per process: Python's `random`, NumPy's and torch's generators (CPU, and the accelerator's when there is one) |
| `distill_state.json` | the manifest, written last: format, version, files, the accelerator's step counter |

A `*.json` file that holds tensors names them (`{"__tensor__": key}`) in the `.safetensors` file of the same stem;
tuples and dicts with non-string keys are tagged (`__tuple__`, `__items__`), so every `state_dict` comes back with its
own types. Nothing else is ever read: loading uses `json` and `safetensors` only, never `pickle` or `torch.load`, so a
crafted checkpoint folder cannot run code; a folder in accelerate's pickle format (`optimizer.bin`,
`random_states_*.pkl`, `custom_checkpoint_*.pkl`) or with a missing file is refused with an error that names it.

The main process writes the shared files, every process its own RNG state; the manifest comes after a barrier, so a
folder without it was interrupted while being written and is never resumed from (`CheckpointManager.restore` and
`start` delete such folders). Every process reads the checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# Written last into a checkpoint folder: the checkpoint is complete. It holds the manifest (`FORMAT`).
CHECKPOINT_MARKER = "distill_state.json"
FORMAT, VERSION = "evonets-checkpoint", 1
MODEL_FILE = "model.safetensors"
_CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")
_PICKLE_FILES = re.compile(r".*\.(bin|pkl|pt|pth)")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be resumed from: incomplete, damaged, or in a format that is not read."""


def find_checkpoints(output_dir: Path) -> tuple[list[Path], list[Path]]:
    """(complete, incomplete) checkpoint folders under `output_dir/checkpoints`, by index."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return [], []
    found = sorted(
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if (match := _CHECKPOINT_NAME.fullmatch(path.name)) and path.is_dir()
    )
    complete = [path for _, path in found if (path / CHECKPOINT_MARKER).is_file()]
    incomplete = [path for _, path in found if not (path / CHECKPOINT_MARKER).is_file()]
    return complete, incomplete


def resolve_resume(trainer_config, output_dir: Path) -> Path | None:
    """The checkpoint to resume from, per `trainer_config.resume`: `auto` (the latest complete one, if any), `never`
    (none; an error when there are some) or the path of one checkpoint folder. A chosen folder is checked
    (`read_manifest`) before anything is built."""
    mode = trainer_config.resume
    complete, _ = find_checkpoints(output_dir)
    if mode == "auto":
        if not complete:
            return None
        read_manifest(complete[-1])
        return complete[-1]
    if mode == "never":
        if complete:
            raise ValueError(
                f"trainer.resume = 'never' but {output_dir}/checkpoints holds checkpoints ({complete[-1].name}): use "
                "another trainer.output_dir, delete them, or resume ('auto')."
            )
        return None
    path = Path(mode).expanduser()
    if not (path / CHECKPOINT_MARKER).is_file():
        raise ValueError(
            f"Config field trainer.resume = {mode!r} is invalid: not a complete checkpoint folder ({CHECKPOINT_MARKER} "
            "is missing)."
        )
    read_manifest(path)
    return path


def read_manifest(path: Path) -> dict:
    """The manifest of the checkpoint folder `path`, checked: our format and version, every listed file present.
    Raises `CheckpointError` naming the file otherwise (an accelerate pickle checkpoint included)."""
    marker = path / CHECKPOINT_MARKER
    if not marker.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint folder: {CHECKPOINT_MARKER} is missing.")
    try:
        manifest = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{marker} is not valid JSON ({error}): the checkpoint is damaged.") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        pickles = sorted(p.name for p in path.iterdir() if _PICKLE_FILES.fullmatch(p.name))
        found = f" (it holds {', '.join(pickles)})" if pickles else ""
        raise CheckpointError(
            f"{path} is not an EvoNets safetensors checkpoint: {marker.name} does not say format {FORMAT!r}{found}. "
            "Checkpoints in accelerate's pickle format are not loaded, since unpickling a file can run any code; "
            "start again with another trainer.output_dir (or delete its checkpoints folder)."
        )
    if manifest.get("version") != VERSION:
        raise CheckpointError(
            f"{marker} has checkpoint format version {manifest.get('version')!r}; this EvoNets reads version {VERSION}."
        )
    files = manifest.get("files")
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        raise CheckpointError(f"{marker} is damaged: 'files' is not a list of file names.")
    for name in files:
        if Path(name).name != name or not name.endswith((".json", ".safetensors")):
            raise CheckpointError(f"{marker} lists {name!r}: only .json and .safetensors files inside the folder.")
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name} is missing: the checkpoint is incomplete.")
    return manifest


# A state_dict as JSON + safetensors ---------------------------------------------------------------------------


def save_tree(folder: Path, stem: str, value: Any) -> list[str]:
    """Write `value` (a `state_dict`: dicts, lists, tuples, tensors, str / int / float / bool / None) as
    `<stem>.json`, its tensors in `<stem>.safetensors` (only when there are some); the names of the files written."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(value, tensors, stem)
    names = [f"{stem}.json"]
    if tensors:
        names.append(f"{stem}.safetensors")
        save_file(tensors, str(folder / names[1]), metadata={"format": "pt"})
    (folder / names[0]).write_text(json.dumps({"tensors": bool(tensors), "value": encoded}) + "\n")
    return names


def load_tree(folder: Path, stem: str) -> Any:
    """What `save_tree(folder, stem, value)` wrote, read with `json` and `safetensors` only."""
    from safetensors.torch import load_file

    path = folder / f"{stem}.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete.")
    try:
        document = json.loads(path.read_text())
        tensors = load_file(str(folder / f"{stem}.safetensors")) if document["tensors"] else {}
        return _decode(document["value"], tensors)
    except CheckpointError:
        raise
    except Exception as error:  # any damage in the files, reported with their name
        raise CheckpointError(f"{path} (or its .safetensors) is damaged: {type(error).__name__}: {error}") from error


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(value, torch.Tensor):
        key = where if where not in tensors else f"{where}#{len(tensors)}"
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_encode(item, tensors, f"{where}.{index}") for index, item in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(item, tensors, f"{where}.{index}") for index, item in enumerate(value)]}
    if isinstance(value, Mapping):
        if all(isinstance(key, str) and not key.startswith("__") for key in value):
            return {key: _encode(item, tensors, f"{where}.{key}") for key, item in value.items()}
        return {
            "__items__": [
                [_encode(key, tensors, f"{where}.key"), _encode(item, tensors, f"{where}.{key}")]
                for key, item in value.items()
            ]
        }
    raise TypeError(
        f"Cannot checkpoint {where} of type {type(value).__name__} without pickle: make it JSON or tensors."
    )


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__tuple__" in value:
        return tuple(_decode(item, tensors) for item in value["__tuple__"])
    if "__items__" in value:
        return {_decode(key, tensors): _decode(item, tensors) for key, item in value["__items__"]}
    return {key: _decode(item, tensors) for key, item in value.items()}


# Random number generators -------------------------------------------------------------------------------------


def rng_state() -> dict:
    """This process's generators: Python's `random`, NumPy's legacy global one, torch's CPU one and the
    accelerator's (every device), as JSON-able values and tensors."""
    name, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    kind, module = _device_rng_module()
    if module is not None:
        states = module.get_rng_state_all() if hasattr(module, "get_rng_state_all") else [module.get_rng_state()]
        state["device"] = {"type": kind, "states": list(states)}
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state()` returned (the accelerator's generators only on the same kind of device)."""
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    kind, module = _device_rng_module()
    saved = state.get("device")
    if module is not None and saved and saved["type"] == kind:
        if hasattr(module, "set_rng_state_all"):
            module.set_rng_state_all(saved["states"][: module.device_count()])
        else:
            module.set_rng_state(saved["states"][0])


def _device_rng_module():
    if hasattr(torch, "accelerator") and torch.accelerator.is_available():
        kind = torch.accelerator.current_accelerator().type
        return kind, torch.get_device_module(kind)
    return None, None


# Saving and restoring a run -----------------------------------------------------------------------------------


class CheckpointManager:
    """Saves and restores the training state of one run folder (see the module docstring).

    Args:
        accelerator: the run's `Accelerator` (processes, barriers, device, step counter, scaler).
        output_dir: the run folder; checkpoints go to `output_dir/checkpoints/checkpoint_<i>`.
        model, optimizer, scheduler: the prepared ones (the model is unwrapped to save and load).
        objects: named objects with a JSON-able `state_dict()` / `load_state_dict()` (a sampler, the loop's
            `TrainState`); the name is the file's stem.
        total_limit: complete checkpoints kept (the oldest are deleted after a new one is complete); None keeps all.
    """

    def __init__(
        self,
        accelerator,
        output_dir: Path,
        model: nn.Module,
        optimizer,
        scheduler,
        objects: Mapping[str, Any],
        total_limit: int | None = None,
    ):
        reserved = {"model", "optimizer", "scheduler", "scaler", CHECKPOINT_MARKER.removesuffix(".json")}
        clashes = sorted(name for name in objects if name in reserved or name.startswith("rng_state"))
        if clashes:
            raise ValueError(f"Checkpointed object names {clashes} clash with the checkpoint's own files.")
        self.accelerator, self.output_dir = accelerator, Path(output_dir)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.objects, self.total_limit = dict(objects), total_limit
        complete, _ = find_checkpoints(self.output_dir)
        self.next_index = max((_index(path) for path in complete), default=-1) + 1

    @property
    def folder(self) -> Path:
        return self.output_dir / "checkpoints"

    def save(self) -> Path:
        """Write `checkpoint_<next index>` (see the module docstring), the manifest last; then delete the oldest
        complete checkpoints beyond `total_limit`. Every process calls it."""
        accelerator = self.accelerator
        path = self.folder / f"checkpoint_{self.next_index}"
        if accelerator.is_main_process:
            if path.exists():  # left by a run killed while writing it
                shutil.rmtree(path)
            path.mkdir(parents=True)
        accelerator.wait_for_everyone()
        files = []
        if accelerator.is_main_process:
            files = self._save_shared(path)
        save_tree(path, f"rng_state_{accelerator.process_index}", rng_state())
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            ranks = [f"rng_state_{rank}.{ext}" for rank in range(accelerator.num_processes) for ext in EXTENSIONS]
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "processes": accelerator.num_processes,
                "accelerator_step": int(accelerator.step),
                "objects": sorted(self.objects),
                "files": sorted(files + [name for name in ranks if (path / name).is_file()]),
            }
            _write_atomically(path / CHECKPOINT_MARKER, json.dumps(manifest, indent=1) + "\n")
            self._rotate()
        accelerator.wait_for_everyone()
        self.next_index += 1
        return path

    def _save_shared(self, path: Path) -> list[str]:
        from safetensors.torch import save_model

        save_model(self.accelerator.unwrap_model(self.model), str(path / MODEL_FILE), metadata={"format": "pt"})
        files = [MODEL_FILE]
        files += save_tree(path, "optimizer", self.optimizer.state_dict())
        files += save_tree(path, "scheduler", self.scheduler.state_dict())
        if self.accelerator.scaler is not None:
            files += save_tree(path, "scaler", self.accelerator.scaler.state_dict())
        for name, obj in self.objects.items():
            files += save_tree(path, name, obj.state_dict())
        return files

    def _rotate(self) -> None:
        complete, _ = find_checkpoints(self.output_dir)
        if self.total_limit is not None and self.total_limit > 0:
            for old in complete[: max(len(complete) - self.total_limit, 0)]:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, path: Path) -> dict:
        """Load the checkpoint folder `path` into the model, optimizer, scheduler, scaler, objects and this process's
        generators (`json` and `safetensors` only); delete the checkpoints interrupted while being written; number
        the next one after the existing ones. Every process calls it. Returns the manifest."""
        from safetensors.torch import load_model

        accelerator, path = self.accelerator, Path(path)
        manifest = read_manifest(path)
        try:
            missing, unexpected = load_model(
                accelerator.unwrap_model(self.model),
                str(path / MODEL_FILE),
                strict=False,
                device=_safetensors_device(accelerator.device),
            )
        except Exception as error:  # a damaged file, reported with its name
            raise CheckpointError(f"{path / MODEL_FILE} is damaged: {type(error).__name__}: {error}") from error
        if missing or unexpected:
            raise CheckpointError(
                f"{path / MODEL_FILE} does not fit the model (missing {sorted(missing)[:5]}, unexpected "
                f"{sorted(unexpected)[:5]}): resume with the config that wrote it."
            )
        self.optimizer.load_state_dict(load_tree(path, "optimizer"))
        self.scheduler.load_state_dict(load_tree(path, "scheduler"))
        if accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(load_tree(path, "scaler"))
        for name, obj in self.objects.items():
            obj.load_state_dict(load_tree(path, name))
        rank = accelerator.process_index
        if (path / f"rng_state_{rank}.json").is_file():
            set_rng_state(load_tree(path, f"rng_state_{rank}"))
        else:  # written by fewer processes: this one keeps its seeded generators
            warnings.warn(f"{path} holds no rng_state_{rank}.json: process {rank} keeps its own random state.")
        accelerator.step = int(manifest.get("accelerator_step", 0))
        self.start()
        complete, _ = find_checkpoints(self.output_dir)
        self.next_index = max((_index(p) for p in complete), default=-1) + 1
        return manifest

    def start(self) -> None:
        """Delete the checkpoint folders interrupted while being written (main process), then wait for all."""
        if self.accelerator.is_main_process:
            for incomplete in find_checkpoints(self.output_dir)[1]:
                shutil.rmtree(incomplete, ignore_errors=True)
        self.accelerator.wait_for_everyone()


EXTENSIONS = ("json", "safetensors")


def _safetensors_device(device: torch.device) -> str:
    """Where safetensors should put the tensors: it refuses "cpu:0", which a CPU process group's device is."""
    return "cpu" if device.type == "cpu" else str(device)


def _index(path: Path) -> int:
    return int(_CHECKPOINT_NAME.fullmatch(path.name).group(1))


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


__all__ = [
    "CHECKPOINT_MARKER",
    "CheckpointError",
    "CheckpointManager",
    "find_checkpoints",
    "load_tree",
    "read_manifest",
    "resolve_resume",
    "rng_state",
    "save_tree",
    "set_rng_state",
]
