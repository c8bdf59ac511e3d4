"""Resuming reads safetensors and JSON only: a crafted checkpoint folder (pickles whose unpickling runs code) runs
nothing, a checkpoint in accelerate's pickle format or with a missing / damaged file is refused naming the file, and
what is saved comes back exactly (weights, optimizer, scheduler, objects, every random generator)."""

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evonets.engine import checkpoints
from evonets.engine.checkpoints import CHECKPOINT_MARKER

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "distill" / "train.py"
# The names of what accelerate's save_state writes with pickle (torch.save); load_state unpickled the custom ones with
# weights_only=False.
PICKLE_NAMES = (
    "custom_checkpoint_0.pkl",
    "custom_checkpoint_1.pkl",
    "random_states_0.pkl",
    "optimizer.bin",
    "scheduler.bin",
)


class _Payload:
    """Unpickling this writes `marker`: the stand-in for any code a crafted pickle could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def _plant(folder: Path, marker: Path, names=PICKLE_NAMES) -> None:
    for name in names:
        (folder / name).write_bytes(pickle.dumps(_Payload(marker)))


class _Counter:
    def __init__(self):
        self.count = 0
        self.history = (1, 2.5)

    def state_dict(self) -> dict:
        return {"count": self.count, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.history = state["count"], state["history"]


def _run_parts(seed: int):
    from accelerate import Accelerator

    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return accelerator, model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps: int) -> None:
    for _ in range(steps):
        model(torch.randn(3, 4)).square().mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_save_and_restore_round_trip_reads_no_pickle(tmp_path, monkeypatch):
    accelerator, model, optimizer, scheduler = _run_parts(0)
    counter = _Counter()
    manager = checkpoints.CheckpointManager(
        accelerator, tmp_path, model, optimizer, scheduler, {"counter": counter}, total_limit=2
    )
    _train(model, optimizer, scheduler, 3)
    counter.count, counter.history = 7, (3, 4.25)
    path = manager.save()
    assert path == tmp_path / "checkpoints" / "checkpoint_0"
    assert all(p.suffix in (".json", ".safetensors") for p in path.iterdir())
    expected_draws = _draws()
    _train(model, optimizer, scheduler, 2)  # what a resumed run repeats
    after = [p.detach().clone() for p in model.parameters()]

    marker = tmp_path / "code_ran"
    _plant(path, marker)
    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("resume unpickled something"))

    accelerator, model, optimizer, scheduler = _run_parts(1)  # other weights, a fresh optimizer and generators
    restored = _Counter()
    manager = checkpoints.CheckpointManager(
        accelerator, tmp_path, model, optimizer, scheduler, {"counter": restored}, total_limit=2
    )
    manager.restore(path)
    assert not marker.exists()
    assert (restored.count, restored.history) == (7, (3, 4.25))  # the tuple comes back a tuple
    assert scheduler.scheduler.last_epoch == 3
    assert _draws() == expected_draws  # Python, NumPy and torch generators
    _train(model, optimizer, scheduler, 2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), after))
    assert manager.next_index == 1


def test_numbering_total_limit_and_half_written_folders(tmp_path):
    accelerator, model, optimizer, scheduler = _run_parts(0)
    manager = checkpoints.CheckpointManager(accelerator, tmp_path, model, optimizer, scheduler, {}, total_limit=2)
    names = [manager.save().name for _ in range(3)]
    assert names == ["checkpoint_0", "checkpoint_1", "checkpoint_2"]
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint_1", "checkpoint_2"]
    (folder / "checkpoint_3").mkdir()  # killed while being written
    (folder / "checkpoint_3" / "model.safetensors").write_bytes(b"half")
    again = checkpoints.CheckpointManager(accelerator, tmp_path, model, optimizer, scheduler, {}, total_limit=2)
    again.restore(folder / "checkpoint_2")
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint_1", "checkpoint_2"]
    assert again.save().name == "checkpoint_3" and (folder / "checkpoint_3" / CHECKPOINT_MARKER).is_file()


def _accelerate_pickle_checkpoint(folder: Path, marker: Path) -> Path:
    """What an older EvoNets (accelerate's save_state) left, with its pickles replaced by crafted ones."""
    folder.mkdir(parents=True)
    (folder / CHECKPOINT_MARKER).write_text(json.dumps({"step": 3, "micro_step": 3}))
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(folder / "model.safetensors"))
    _plant(folder, marker)
    return folder


def test_a_checkpoint_of_pickles_is_refused_naming_its_files(tmp_path):
    from distill.config import TrainerConfig

    marker = tmp_path / "code_ran"
    crafted = _accelerate_pickle_checkpoint(tmp_path / "elsewhere" / "checkpoint_7", marker)
    with pytest.raises(ValueError, match="custom_checkpoint_0.pkl") as error:
        checkpoints.resolve_resume(TrainerConfig(resume=str(crafted)), tmp_path / "run")
    assert "pickle" in str(error.value) and isinstance(error.value, checkpoints.CheckpointError)
    # The same folder found by `resume: auto` in the run folder.
    shutil.copytree(crafted, tmp_path / "run" / "checkpoints" / "checkpoint_0")
    with pytest.raises(ValueError, match="not an EvoNets safetensors checkpoint"):
        checkpoints.resolve_resume(TrainerConfig(resume="auto"), tmp_path / "run")
    only_pickles = tmp_path / "only_pickles"
    only_pickles.mkdir()
    _plant(only_pickles, marker)
    with pytest.raises(ValueError, match=f"{CHECKPOINT_MARKER} is missing"):
        checkpoints.resolve_resume(TrainerConfig(resume=str(only_pickles)), tmp_path / "run")
    assert not marker.exists()


def test_incomplete_or_damaged_checkpoints_are_refused_naming_the_file(tmp_path):
    accelerator, model, optimizer, scheduler = _run_parts(0)
    manager = checkpoints.CheckpointManager(accelerator, tmp_path, model, optimizer, scheduler, {"counter": _Counter()})
    _train(model, optimizer, scheduler, 1)
    path = manager.save()
    checkpoints.read_manifest(path)

    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "optimizer.safetensors").unlink()
    with pytest.raises(checkpoints.CheckpointError, match="optimizer.safetensors is missing"):
        checkpoints.read_manifest(broken)

    shutil.rmtree(broken)
    shutil.copytree(path, broken)
    (broken / "counter.json").write_text("{not json")
    with pytest.raises(checkpoints.CheckpointError, match="counter.json"):
        manager.restore(broken)

    shutil.rmtree(broken)
    shutil.copytree(path, broken)
    manifest = json.loads((broken / CHECKPOINT_MARKER).read_text())
    manifest["files"].append("../../outside.json")
    (broken / CHECKPOINT_MARKER).write_text(json.dumps(manifest))
    with pytest.raises(checkpoints.CheckpointError, match="outside.json"):
        checkpoints.read_manifest(broken)

    (broken / CHECKPOINT_MARKER).write_text("[1, 2")
    with pytest.raises(checkpoints.CheckpointError, match=CHECKPOINT_MARKER):
        checkpoints.read_manifest(broken)

    with pytest.raises(checkpoints.CheckpointError, match="model.safetensors does not fit"):
        from accelerate import Accelerator

        other = torch.nn.Linear(4, 3)
        other_optimizer = torch.optim.AdamW(other.parameters())
        checkpoints.CheckpointManager(
            Accelerator(cpu=True),
            tmp_path / "other",
            other,
            other_optimizer,
            torch.optim.lr_scheduler.LambdaLR(other_optimizer, lambda step: 1.0),
            {"counter": _Counter()},
        ).restore(path)


def test_tree_format_keeps_types_and_refuses_what_needs_pickle(tmp_path):
    value = {
        "state": {0: {"step": torch.tensor(3.0), "exp": torch.arange(4, dtype=torch.bfloat16)}},
        "groups": [{"betas": (0.9, 0.999), "params": [0, 1], "flag": None, "inf": float("inf")}],
    }
    names = checkpoints.save_tree(tmp_path, "thing", value)
    assert names == ["thing.json", "thing.safetensors"]
    back = checkpoints.load_tree(tmp_path, "thing")
    assert list(back["state"]) == [0] and back["groups"][0]["betas"] == (0.9, 0.999)
    assert (
        torch.equal(back["state"][0]["exp"], value["state"][0]["exp"])
        and back["state"][0]["exp"].dtype == torch.bfloat16
    )
    assert back["groups"][0]["inf"] == float("inf") and back["groups"][0]["flag"] is None
    with pytest.raises(TypeError, match="thing.odd"):
        checkpoints.save_tree(tmp_path, "thing", {"odd": object()})


def _env() -> dict:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    env.pop("ACCELERATE_USE_CPU", None)
    return env


TEACHERLESS = """
data: {{source: digits, image_size: 8}}
teacher: {{path: null}}
supernet:
  preset: tiny
  overrides:
    resolution_choices: [8]
    width_choices: [[8], [8, 16], [16]]
    d_state_choices: [2]
    num_heads_choices: [1]
loss: {{kd_weight: 0.0, spatial_weight: 0.0, frequency_weight: 0.0}}
sampling: {{num_random: 1, seed: 0}}
trainer:
  output_dir: {output}
  max_steps: 2
  batch_size: 16
  warmup_steps: 1
  log_every: 1
  eval_every: 0
  save_every: 1
  progress_bar: false
  num_threads: 1
  log_with: none
"""


@pytest.mark.slow
def test_resuming_a_crafted_checkpoint_folder_runs_no_code(tmp_path):
    """The command line end to end: a real checkpoint whose pickles (the files accelerate's load_state unpickled) are
    replaced by crafted ones. Resuming from it must not run them."""
    config = tmp_path / "config.yaml"
    config.write_text(TEACHERLESS.format(output=tmp_path / "first"))

    def run(*args):
        return subprocess.run(
            [sys.executable, str(SCRIPT), "--config", str(config), *args],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    crafted = tmp_path / "crafted" / "checkpoint_0"
    shutil.copytree(tmp_path / "first" / "checkpoints" / "checkpoint_0", crafted)
    marker = tmp_path / "code_ran"
    _plant(crafted, marker, names=("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl"))

    resumed = run("--trainer.resume", str(crafted), "--trainer.output_dir", str(tmp_path / "second"))
    assert not marker.exists(), "resuming ran code from the checkpoint folder"
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "second" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if row.get("event") == "resume"] == [1]
    from safetensors.torch import load_file

    straight = load_file(tmp_path / "first" / "supernet" / "model.safetensors")
    again = load_file(tmp_path / "second" / "supernet" / "model.safetensors")
    assert all(torch.equal(straight[name], again[name]) for name in straight)
