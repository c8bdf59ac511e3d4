"""End-to-end distillation on the real digits data (CPU): learning, the supernet folder, kill + resume, two processes.

A small space (widths 8-32, 8/16 px) and a ConvNeXtV2 teacher trained for two epochs keep every run to seconds.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "distill" / "train.py"

CONFIG = """
distill:
  data: {{source: digits, image_size: 16}}
  teacher:
    path: {teacher}
    stages: [-2, -1]
  supernet:
    preset: tiny
    overrides:
      resolution_choices: [8, 16]
      width_choices: [[8, 16], [16, 24], [24, 32]]
      d_state_choices: [2, 4]
      num_heads_choices: [1, 2]
  sampling: {{num_random: 1, seed: 0}}
  trainer:
    max_steps: 30
    batch_size: 32
    lr: 0.003
    warmup_steps: 3
    log_every: 5
    eval_every: 0
    save_every: 0
    progress_bar: false
    num_threads: 1
"""


@pytest.fixture(scope="module")
def digits_setup(tmp_path_factory):
    """(config path, teacher path): a ConvNeXtV2 teacher trained for 2 epochs on digits at 16 px."""
    from distill import parse_config
    from distill.train_teacher import train_teacher

    root = tmp_path_factory.mktemp("distill")
    teacher = root / "teacher"
    path = root / "config.yaml"
    path.write_text(CONFIG.format(teacher=teacher))
    config = parse_config(
        [
            "--config",
            str(path),
            "--teacher.train.epochs",
            "2",
            "--teacher.train.hidden_sizes",
            "[16, 32, 48]",
            "--teacher.train.depths",
            "[1, 1, 1]",
        ]
    )
    metrics = train_teacher(config, log=lambda *_: None)
    assert metrics["best_val_accuracy"] > 0.5  # a real teacher, well above the 0.1 of chance
    return path, teacher


def _rows(log_path: Path) -> list[dict]:
    return [json.loads(line) for line in log_path.read_text().splitlines()]


def _losses(log_path: Path) -> dict[int, dict]:
    """The last logged row of every step (a resumed run logs the steps after its checkpoint again)."""
    return {row["step"]: row for row in _rows(log_path) if "loss" in row}


def _env() -> dict:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def _run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], check=False, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_short_run_on_digits_learns_and_writes_a_loadable_supernet(digits_setup, tmp_path):
    from distill import build_supernet, parse_config
    from evonets.models.supernet import EvoNetSupernet

    config_path, _ = digits_setup
    config = parse_config(["--config", str(config_path), "--trainer.output_dir", str(tmp_path / "run")])
    result = build_supernet(config)

    losses = _losses(result.log_path)
    assert sorted(losses) == [5, 10, 15, 20, 25, 30]
    assert {"ce", "kd", "inplace_kd", "spatial", "freq", "freq_low", "freq_high", "images_per_s"} <= set(losses[30])
    assert losses[30]["loss"] < 0.8 * losses[5]["loss"]
    assert losses[30]["ce_largest"] < losses[5]["ce_largest"] - 0.3
    assert losses[30]["freq"] < losses[5]["freq"] and losses[30]["spatial"] < losses[5]["spatial"]
    assert result.val_accuracy["largest"] > 0.4 and result.val_accuracy["smallest"] > 0.3  # chance is 0.1

    supernet = EvoNetSupernet.from_pretrained(result.supernet_dir).eval()
    space = supernet.search_space
    assert space.config.resolution_choices == [8, 16] and supernet.config.id2label[3] == "3"
    assert (result.supernet_dir / "preprocessor_config.json").is_file()
    summary = json.loads((result.supernet_dir / "distill_summary.json").read_text())
    assert summary["val_accuracy"] == result.val_accuracy
    # The saved supernet reproduces the accuracy measured at the end of training.
    from evonets.data.classification import load_data

    data = load_data(config.data, 16)
    batch = data.validation[:]
    arch = space.decode(summary["evaluated_architectures"]["largest"])
    with torch.no_grad():
        pixel_values = torch.nn.functional.interpolate(batch["pixel_values"], size=arch["resolution"], mode="bilinear")
        accuracy = (supernet(pixel_values, arch=arch).logits.argmax(-1) == batch["labels"]).float().mean().item()
    assert abs(accuracy - result.val_accuracy["largest"]) < 1e-6
    events = [row.get("event") for row in _rows(result.log_path)]
    assert events[0] == "start" and events[-1] == "end"


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_later_losses(digits_setup, tmp_path):
    config_path, _ = digits_setup
    common = [
        "--config",
        str(config_path),
        "--trainer.max_steps",
        "8",
        "--trainer.log_every",
        "1",
        "--trainer.save_every",
        "3",
    ]
    straight = tmp_path / "straight"
    _run([*common, "--trainer.output_dir", str(straight)])

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *common, "--trainer.output_dir", str(killed)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log_path, deadline = killed / "train_log.jsonl", time.time() + 600
    try:
        while time.time() < deadline and process.poll() is None:
            if log_path.is_file() and any(row.get("event") == "checkpoint" for row in _rows(log_path)):
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run finished before it could be killed: " + process.stderr.read()[-2000:]
        os.kill(process.pid, signal.SIGKILL)  # no chance to clean up, as after an OOM kill or a power cut
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "supernet").exists()

    _run([*common, "--trainer.output_dir", str(killed)])  # the same command again: resumes automatically
    resumed_at = next(row["step"] for row in _rows(log_path) if row.get("event") == "resume")
    assert resumed_at in (3, 6)
    expected, got = _losses(straight / "train_log.jsonl"), _losses(log_path)
    assert sorted(got) == sorted(expected) == list(range(1, 9))
    for step in range(resumed_at + 1, 9):
        for name in ("loss", "ce", "kd", "inplace_kd", "spatial", "freq", "lr", "grad_norm"):
            assert got[step][name] == expected[step][name], (step, name)  # bit-identical on CPU

    from safetensors.torch import load_file

    final_straight = load_file(straight / "supernet" / "model.safetensors")
    final_resumed = load_file(killed / "supernet" / "model.safetensors")
    assert all(torch.equal(final_straight[name], final_resumed[name]) for name in final_straight)


@pytest.mark.slow
def test_two_process_run_on_cpu_with_gloo(digits_setup, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU: two gloo ranks of batch 16 see the same global batch
    of 32 as one process (and as two accumulated micro-batches of 16), so they log the same losses; weights stay
    identical across ranks; one supernet folder."""
    config_path, _ = digits_setup
    common = [
        "--config",
        str(config_path),
        "--trainer.max_steps",
        "4",
        "--trainer.log_every",
        "1",
        "--trainer.save_every",
        "2",
    ]
    output = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(SCRIPT),
        *common,
        "--trainer.batch_size",
        "16",
        "--trainer.output_dir",
        str(output),
    ]
    result = subprocess.run(command, check=False, env=_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(output / "train_log.jsonl")
    assert rows[0]["processes"] == 2
    assert [row.get("event") for row in rows].count("end") == 1  # one writer
    assert rows[-1]["ranks_in_sync"] is True
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["checkpoint_0", "checkpoint_1"]
    written = {p.name for p in (output / "checkpoints" / "checkpoint_1").iterdir()}
    assert {"rng_state_0.json", "rng_state_1.json", "model.safetensors", "distill_state.json"} <= written
    assert all(name.endswith((".json", ".safetensors")) for name in written)

    single = tmp_path / "single"
    _run([*common, "--trainer.batch_size", "32", "--trainer.output_dir", str(single)])
    two, one = _losses(output / "train_log.jsonl"), _losses(single / "train_log.jsonl")
    assert sorted(two) == sorted(one) == [1, 2, 3, 4]
    for step in range(1, 5):
        for name in ("loss", "ce", "kd", "spatial", "freq", "grad_norm"):
            assert two[step][name] == pytest.approx(one[step][name], rel=1e-4), (step, name)

    # Gradient accumulation over two micro-batches of 16 is the same global batch again.
    from distill import build_supernet, parse_config

    accumulated = build_supernet(
        parse_config(
            [
                *common,
                "--trainer.batch_size",
                "16",
                "--trainer.gradient_accumulation_steps",
                "2",
                "--trainer.output_dir",
                str(tmp_path / "accumulated"),
            ]
        )
    )
    acc = _losses(accumulated.log_path)
    assert sorted(acc) == [1, 2, 3, 4]
    for step in range(1, 5):
        for name in ("loss", "ce", "kd", "spatial", "freq", "grad_norm"):
            assert acc[step][name] == pytest.approx(one[step][name], rel=1e-4), (step, name)
    from evonets.models.supernet import EvoNetSupernet

    supernet = EvoNetSupernet.from_pretrained(output / "supernet")
    assert supernet.config.num_labels == 10

    # Both ranks resume from the checkpoint the main process wrote (each its own random state): two more steps.
    result = subprocess.run(
        [*command, "--trainer.max_steps", "6"], check=False, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(output / "train_log.jsonl")
    assert [row["step"] for row in rows if row.get("event") == "resume"] == [4]
    assert sorted(_losses(output / "train_log.jsonl")) == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["event"] == "end" and rows[-1]["step"] == 6 and rows[-1]["ranks_in_sync"] is True


def test_resume_picks_the_latest_complete_checkpoint(tmp_path):
    from distill.config import TrainerConfig
    from evonets.engine.checkpoints import CHECKPOINT_MARKER, FORMAT, VERSION, find_checkpoints, resolve_resume

    folder = tmp_path / "checkpoints"
    for index in (0, 1, 2, 10):
        (folder / f"checkpoint_{index}").mkdir(parents=True)
    for index in (0, 2):  # 1 and 10 were interrupted while being written
        manifest = {"format": FORMAT, "version": VERSION, "files": []}
        (folder / f"checkpoint_{index}" / CHECKPOINT_MARKER).write_text(json.dumps(manifest))
    complete, incomplete = find_checkpoints(tmp_path)
    assert [p.name for p in complete] == ["checkpoint_0", "checkpoint_2"]
    assert [p.name for p in incomplete] == ["checkpoint_1", "checkpoint_10"]
    assert resolve_resume(TrainerConfig(resume="auto"), tmp_path).name == "checkpoint_2"
    assert resolve_resume(TrainerConfig(resume=str(folder / "checkpoint_0")), tmp_path).name == "checkpoint_0"
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_resume(TrainerConfig(resume=str(folder / "checkpoint_1")), tmp_path)
    with pytest.raises(ValueError, match="trainer.resume = 'never' but"):
        resolve_resume(TrainerConfig(resume="never"), tmp_path)
    assert resolve_resume(TrainerConfig(resume="auto"), tmp_path / "fresh") is None


def test_build_supernet_reuses_a_finished_run_of_the_same_config(tmp_path, monkeypatch):
    import distill.trainer
    from distill import DistillConfig, build_supernet

    config = DistillConfig()
    config.trainer.output_dir = str(tmp_path / "run")
    supernet_dir = tmp_path / "run" / "supernet"
    supernet_dir.mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text(distill.trainer.to_yaml(config))
    summary = {"steps": 7, "val_accuracy": {"largest": 0.5}}
    (supernet_dir / "distill_summary.json").write_text(json.dumps(summary))
    trained, said = [], []
    monkeypatch.setattr(distill.trainer, "train", lambda config: trained.append(config) or "trained")

    result = build_supernet(config, log=said.append)
    assert not trained and said == [f"distill: reusing the finished supernet {supernet_dir}"]
    assert (result.supernet_dir, result.steps, result.val_accuracy) == (supernet_dir, 7, {"largest": 0.5})

    config.trainer.max_steps += 1  # another config: trained (resumed from its checkpoints)
    assert build_supernet(config, log=said.append) == "trained" and trained == [config]
