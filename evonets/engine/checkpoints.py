"""Checkpoints of an accelerate training that survive `kill -9`, and the choice of the one to resume from.

`save_checkpoint` is `accelerator.save_state()` into the next `<output_dir>/checkpoints/checkpoint_<i>` (automatic
naming, `total_limit` kept), then a small marker file written last: a folder without it was interrupted while being
written and is never resumed from (`restore_checkpoint` deletes it). What is saved is what the accelerator holds:
the prepared model, optimizer, scheduler, the RNG states, and every object registered with
`register_for_checkpointing` (the loop's `TrainState`, a sampler).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

# Written last into a checkpoint folder: the checkpoint is complete. (The name is the one the distillation has
# always written, so that older run folders still resume.)
CHECKPOINT_MARKER = "distill_state.json"
_CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")


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
    (none; an error when there are some) or the path of one checkpoint folder."""
    mode = trainer_config.resume
    complete, _ = find_checkpoints(output_dir)
    if mode == "auto":
        return complete[-1] if complete else None
    if mode == "never":
        if complete:
            raise ValueError(
                f"trainer.resume = 'never' but {output_dir}/checkpoints holds checkpoints ({complete[-1].name}): use "
                "another trainer.output_dir, delete them, or resume ('auto')."
            )
        return None
    path = Path(mode).expanduser()
    if not (path / CHECKPOINT_MARKER).is_file():
        raise ValueError(f"Config field trainer.resume = {mode!r} is invalid: not a complete checkpoint folder.")
    return path


def save_checkpoint(accelerator, state) -> Path:
    """`save_state` into the next `checkpoint_<i>`, then the completeness marker (holding `state.state_dict()`)."""
    path = Path(accelerator.save_state())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (path / CHECKPOINT_MARKER).write_text(json.dumps(state.state_dict()) + "\n")
    accelerator.wait_for_everyone()
    return path


def restore_checkpoint(accelerator, path: Path, output_dir: Path) -> None:
    """`load_state(path)`; delete the checkpoints interrupted while being written; number the next one after the
    existing ones (else the next `save_state` fails with "checkpoint_0 already exists")."""
    accelerator.load_state(str(path))
    if accelerator.is_main_process:
        for incomplete in find_checkpoints(output_dir)[1]:
            shutil.rmtree(incomplete, ignore_errors=True)
    accelerator.wait_for_everyone()
    indices = [int(_CHECKPOINT_NAME.fullmatch(p.name).group(1)) for p in find_checkpoints(output_dir)[0]]
    accelerator.project_configuration.iteration = max(indices, default=-1) + 1


__all__ = ["CHECKPOINT_MARKER", "find_checkpoints", "resolve_resume", "restore_checkpoint", "save_checkpoint"]
