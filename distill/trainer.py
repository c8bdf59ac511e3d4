"""The distillation run that builds a supernet by CA-DDKD with sandwich sampling, on the shared training loop.

`train(config)` is the whole run (`distill/train.py` is its command line; `build_supernet(config)` reuses a finished
one). `DistillRun` does it in five jobs:

1. **setup**: one `Accelerator` (mixed precision, gradient accumulation, trackers, `ProjectConfiguration` with
   logging under `<output_dir>/logs`); data (`evonets.data.classification`),
   teacher (`distill.teachers`; trained first by `distill.train_teacher` when `teacher.train_if_missing`), supernet
   and projectors (`distill.student`), all checked before the first step; one `accelerator.prepare(model, optimizer,
   train_loader, val_loader, scheduler)`; a `CheckpointManager` over them, the sandwich sampler and the loop's step
   counter;
2. **resume** from the latest complete checkpoint (`trainer.resume`; `evonets.engine.checkpoints`), or **start**
   (the run's `config.yaml` and a `start` row); then the teacher's accuracy on the test split, printed and logged as a
   check of the loaded weights (`teacher.check_test_images`; nothing is selected on it);
3. **steps** (`evonets.engine.training.TrainingLoop`, resuming inside the epoch with `skip_first_batches`): per
   optimizer step the sampler's subnets (largest first), each forward + backward on the same batch (gradients
   accumulate; the largest's detached logits and projected features supervise the others:
   `distill.student.train_micro_step`), then one synchronised optimizer step;
4. **log, evaluate, checkpoint** (`DistillCallback`): `train_log.jsonl` rows (an `evonets.engine.archive.JsonlArchive`,
   keys sorted), trackers, progress bar, validation of fixed subnets, a checkpoint every N steps (safetensors and
   JSON only, `<output_dir>/checkpoints/checkpoint_<i>`: `evonets.engine.checkpoints`);
5. **finish**: the supernet folder `<output_dir>/supernet` (`save_pretrained`, config = search space, plus the image
   processor and `distill_summary.json`).

Multi-process: every process draws the same subnets (same sampler seed), so the model is prepared once (DDP under
`accelerate launch --multi_gpu`), every subnet's backward runs under `no_sync`, and the accumulated gradients are
averaged across processes in one all-reduce before the optimizer step (several forwards per step with different
unused parameters is what plain DDP hooks do not support).

Reproducibility: data order is a pure function of (seed, epoch) (`EpochShuffleSampler`), subnets come from the
checkpointed sampler, and a checkpoint restores model, optimizer, scheduler and RNG states: on CPU a resumed run
logs the same losses as an uninterrupted one. Resuming never unpickles anything (a crafted checkpoint cannot run
code).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from evonets.data.classification import collate, load_data, training_loader
from evonets.engine.archive import JsonlArchive
from evonets.engine.checkpoints import CheckpointManager, resolve_resume
from evonets.engine.evaluation import eval_mode, evaluate
from evonets.engine.timer import Stopwatch
from evonets.engine.training import Callback, TrainingLoop, TrainState, parameter_groups, torch_threads
from evonets.models.supernet import EvoNetSupernet

from .config import DistillConfig, TrainerConfig
from .losses import DistillationLoss
from .sampling import SandwichSampler
from .student import DistillModule, build_space_config, stage_channels, sync_gradients, train_micro_step


@dataclass
class DistillResult:
    """Where the run wrote its outputs, and its final validation accuracies."""

    output_dir: Path
    supernet_dir: Path
    log_path: Path
    steps: int
    val_accuracy: dict[str, float]
    seconds: float


def build_supernet(config: DistillConfig, log=print) -> DistillResult:
    """The supernet of `config`: the finished one in `trainer.output_dir` when it was distilled with this very config
    (its `config.yaml` equal to `config`), else trained, or resumed from its latest checkpoint (`train`)."""
    output_dir = Path(config.trainer.output_dir)
    supernet_dir = output_dir / "supernet"
    summary_path = supernet_dir / "distill_summary.json"
    if summary_path.is_file() and not config_changes(output_dir / "config.yaml", config):
        log(f"distill: reusing the finished supernet {supernet_dir}")
        summary = json.loads(summary_path.read_text())
        log_path = output_dir / "train_log.jsonl"
        return DistillResult(output_dir, supernet_dir, log_path, summary["steps"], summary["val_accuracy"], 0.0)
    return train(config)


def train(config: DistillConfig) -> DistillResult:
    """Run (or resume) a distillation; see the module docstring."""
    config.validate()
    with torch_threads(config.trainer.num_threads):
        return DistillRun(config).run()


# The run ------------------------------------------------------------------------------------------------------


class RunLog:
    """The run's `train_log.jsonl` rows and console messages, on the main process only."""

    def __init__(self, path: Path, main: bool):
        from tqdm.auto import tqdm

        self.archive = JsonlArchive(path) if main else None
        self.say = tqdm.write if main else (lambda *_: None)

    def write(self, row: dict) -> None:
        if self.archive is not None:
            self.archive.append(row)


class DistillRun:
    """One distillation run: `run()` = setup, resume or start, the steps, finish (see the module docstring)."""

    def __init__(self, config: DistillConfig):
        self.config, self.settings = config, config.trainer
        self.output_dir = Path(self.settings.output_dir).expanduser().resolve()
        self.accelerator = make_accelerator(self.settings, self.output_dir)
        self.resume_from = resolve_resume(self.settings, self.output_dir)
        self.main = self.accelerator.is_main_process
        if self.main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.log = RunLog(self.output_dir / "train_log.jsonl", self.main)
        self.state = TrainState()

    def run(self) -> DistillResult:
        self.setup()
        if self.resume_from is not None:
            self.resume()
        else:
            self.start()
        self.check_teacher()
        self.accelerator.init_trackers("distill", config=flat_config(self.config))
        self.sandwich = SandwichStep(self)
        callback = DistillCallback(self)
        run_watch = Stopwatch()
        TrainingLoop(
            self.model,
            self.optimizer,
            self.scheduler,
            self.train_loader,
            self.sandwich,
            self.settings.max_steps,
            accelerator=self.accelerator,
            accumulation_steps=self.settings.gradient_accumulation_steps,
            max_grad_norm=self.settings.max_grad_norm,
            state=self.state,
            callbacks=[callback],
        ).run()
        callback.close()
        return self.finish(callback.eval_archs, callback.val_accuracy, run_watch.seconds)

    # Setup ----------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Data, teacher, student, optimizer, scheduler and loaders, prepared; the sampler; the checkpoints of the
        model, optimizer, scheduler, sampler and step counter."""
        config = self.config
        space_config = build_space_config(config.supernet, num_labels=2)
        self.image_size = config.data.image_size or max(space_config.resolution_choices)
        self.ensure_teacher()
        self.data = load_data(config.data, self.image_size, num_channels=space_config.num_channels)
        space_config = build_space_config(config.supernet, self.data.num_labels, self.data.id2label)
        self.teacher = self.load_teacher()
        model = self.build_student(space_config)
        optimizer, scheduler, train_loader, val_loader = self.optimization(model)
        self.model, self.optimizer, self.train_loader, self.val_loader, self.scheduler = self.accelerator.prepare(
            model, optimizer, train_loader, val_loader, scheduler
        )
        self.unwrapped: DistillModule = self.accelerator.unwrap_model(self.model)
        self.space = self.unwrapped.supernet.search_space
        sampling = config.sampling
        self.sampler = SandwichSampler(
            self.space,
            sampling.num_random,
            sampling.block_types,
            sampling.seed,
            sampling.shrink_schedule,
            self.settings.max_steps,
        )
        self.checkpoints = CheckpointManager(
            self.accelerator,
            self.output_dir,
            self.model,
            self.optimizer,
            self.scheduler,
            {"sampler": self.sampler, "train_state": self.state},
            total_limit=self.settings.total_limit,
        )

    def ensure_teacher(self) -> None:
        """Train the teacher first (main process) when `teacher.train_if_missing` and its folder does not exist."""
        teacher = self.config.teacher
        if not (teacher.path and teacher.train_if_missing and not Path(teacher.path).exists()):
            return
        if self.main:
            from .train_teacher import train_teacher

            self.log.say(f"teacher.path {teacher.path} does not exist: training a {teacher.train.family} teacher")
            train_teacher(self.config, log=self.log.say)
        self.accelerator.wait_for_everyone()

    def load_teacher(self):
        """The frozen teacher on the device, or None when the loss uses none."""
        config = self.config
        if not config.uses_teacher:
            return None
        from .teachers import load_teacher

        return load_teacher(
            config.teacher.path,
            config.teacher.stages if config.uses_features else [],
            self.data.num_labels,
            self.data.label_names,
            self.image_size,
            config.data.image_mean,
            config.data.image_std,
            config.teacher.image_size,
            require_labels=config.loss.kd_weight > 0,
            family=config.teacher.family,
        ).to(self.accelerator.device)

    def check_teacher(self) -> None:
        """Print and log the teacher's accuracy on the test split (`teacher.check_test_images`), on the main process:
        a check that the right weights and preprocessing were loaded. Nothing is selected on it. Skipped without a
        teacher whose classes are the data's, or without a test split."""
        config = self.config
        count = config.teacher.check_test_images
        if not (self.main and self.teacher is not None and config.loss.kd_weight > 0 and count != 0):
            return
        from evonets.data.classification import load_test_data

        from .teachers import teacher_accuracy

        test = load_test_data(config.data, self.data, max_samples=count)
        if test is None:
            self.log.say(f"teacher check skipped: the data has no test split {config.data.test_split!r}")
            return
        accuracy = teacher_accuracy(self.teacher, test)
        self.log.say(
            f"teacher {config.teacher.path}: test accuracy {accuracy:.4f} on {len(test)} images (a check of the "
            "loaded weights; nothing is selected on it)"
        )
        self.log.write(
            {
                "event": "teacher_check",
                "teacher": config.teacher.path,
                "test_accuracy": accuracy,
                "test_images": len(test),
            }
        )

    def build_student(self, space_config) -> DistillModule:
        """The supernet (seeded with `trainer.seed`) and the loss's projectors to the teacher's feature widths."""
        from accelerate.utils import set_seed

        config, device = self.config, self.accelerator.device
        stage_indices, student_channels = stage_channels(space_config, config.loss.student_stages)
        teacher_channels = None
        if self.teacher is not None and config.uses_features:
            size = self.image_size
            probe = self.teacher(torch.zeros(1, space_config.num_channels, size, size, device=device))
            teacher_channels = [feature.shape[1] for feature in probe.features]
        set_seed(self.settings.seed)
        if config.supernet.init_from:
            supernet = EvoNetSupernet.from_pretrained(config.supernet.init_from)
        else:
            supernet = EvoNetSupernet(space_config)
        loss_fn = DistillationLoss(config.loss, student_channels, teacher_channels)
        model = DistillModule(supernet, loss_fn, stage_indices).to(device)
        model.train()
        return model

    def optimization(self, model: nn.Module) -> tuple:
        """(AdamW, warm-up + cosine schedule, train loader, validation loader), not yet prepared."""
        from transformers import get_cosine_schedule_with_warmup

        settings, data, workers = self.settings, self.data, self.config.data.num_workers
        optimizer = torch.optim.AdamW(parameter_groups(model, settings.weight_decay), lr=settings.lr)
        scheduler = get_cosine_schedule_with_warmup(optimizer, settings.warmup_steps, settings.max_steps)
        train_loader = training_loader(data.train, settings.batch_size, settings.seed, num_workers=workers)
        val_loader = torch.utils.data.DataLoader(
            data.validation, batch_size=max(settings.batch_size, 128), collate_fn=collate, num_workers=workers
        )
        if len(train_loader) == 0:
            raise ValueError(
                f"trainer.batch_size = {settings.batch_size} is larger than the {len(data.train)} training examples."
            )
        return optimizer, scheduler, train_loader, val_loader

    # Resume or start ------------------------------------------------------------------------------------------

    def resume(self) -> None:
        """Load the checkpoint (weights, optimizer, scheduler, RNG, sampler, step counter) and say so in the log."""
        self.checkpoints.restore(self.resume_from)
        changed = config_changes(self.output_dir / "config.yaml", self.config)
        if changed:
            self.log.say(f"warning: resuming with a config that differs from the run's config.yaml in {changed}")
        self.log.say(f"resumed from {self.resume_from} at step {self.state.step}")
        self.log.write(
            {
                "event": "resume",
                "step": self.state.step,
                "checkpoint": str(self.resume_from),
                "time": time.time(),
                "config_changes": changed,
            }
        )

    def start(self) -> None:
        """Write the run's `config.yaml` and the `start` row (after deleting checkpoints left half-written)."""
        self.checkpoints.start()
        if self.main:
            (self.output_dir / "config.yaml").write_text(to_yaml(self.config))
        self.log.write(
            {
                "event": "start",
                "time": time.time(),
                "processes": self.accelerator.num_processes,
                "device": str(self.accelerator.device),
                "train_examples": len(self.data.train),
                "validation_examples": len(self.data.validation),
                "supernet_parameters": sum(p.numel() for p in self.unwrapped.supernet.parameters()),
                "projector_parameters": sum(p.numel() for p in self.unwrapped.loss.parameters()),
                "teacher": self.teacher_path,
            }
        )

    @property
    def teacher_path(self) -> str | None:
        return self.config.teacher.path if self.teacher is not None else None

    # Finish ---------------------------------------------------------------------------------------------------

    def validate(self, archs: dict[str, dict]) -> dict[str, float]:
        """Validation accuracy of each subnet (gathered over processes, duplicates of the last batch dropped)."""
        with eval_mode(self.model):
            return {name: self.subnet_accuracy(arch) for name, arch in archs.items()}

    def subnet_accuracy(self, arch: dict) -> float:
        def logits(pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values, arch, False)[0]

        scores = evaluate(logits, self.val_loader, arch["resolution"], gather=self.accelerator.gather_for_metrics)
        return scores["accuracy"]

    def finish(self, eval_archs: dict[str, dict], val_accuracy: dict[str, float], seconds: float) -> DistillResult:
        """Save the supernet folder, write the `end` row, close the trackers."""
        if not val_accuracy:  # resumed a finished run
            val_accuracy = self.validate(eval_archs)
        in_sync = ranks_in_sync(self.accelerator, self.unwrapped)
        supernet_dir = self.output_dir / "supernet"
        self.accelerator.wait_for_everyone()
        self.unwrapped.supernet.save_pretrained(
            supernet_dir, is_main_process=self.main, save_function=self.accelerator.save
        )
        if self.main:
            self.data.processor.save_pretrained(supernet_dir)
            self.write_summary(supernet_dir, eval_archs, val_accuracy)
        self.log.write(
            {
                "event": "end",
                "step": self.state.step,
                "supernet": str(supernet_dir),
                "seconds": round(seconds, 2),
                "ranks_in_sync": in_sync,
            }
        )
        self.log.say(f"supernet saved to {supernet_dir}")
        self.accelerator.end_training()
        log_path = self.output_dir / "train_log.jsonl"
        return DistillResult(self.output_dir, supernet_dir, log_path, self.state.step, val_accuracy, seconds)

    def write_summary(self, supernet_dir: Path, eval_archs: dict[str, dict], val_accuracy: dict[str, float]) -> None:
        summary = {
            "steps": self.state.step,
            "val_accuracy": val_accuracy,
            "evaluated_architectures": {name: self.space.encode(arch) for name, arch in eval_archs.items()},
            "teacher": self.teacher_path,
            "config": asdict(self.config),
        }
        (supernet_dir / "distill_summary.json").write_text(json.dumps(summary, indent=2) + "\n")


class SandwichStep:
    """The loop's step function: at each optimizer step's first micro-batch the sampler's subnets for that step, then
    forward + backward of each of them on the micro-batch (`train_micro_step`)."""

    def __init__(self, run: DistillRun):
        self.run = run
        self.subnets: list[tuple[str, dict]] = []

    def __call__(self, batch: dict) -> dict[str, float]:
        run = self.run
        if run.state.micro_step % run.settings.gradient_accumulation_steps == 0:
            self.subnets = run.sampler.sample(run.state.step)
        return train_micro_step(run.accelerator, run.model, run.unwrapped, run.teacher, batch, self.subnets, run.config)


class DistillCallback(Callback):
    """The gradient all-reduce before each optimizer step; after it the progress bar, the log rows (window means of
    the loss terms, throughput), the validation of fixed subnets and the checkpoints."""

    def __init__(self, run: DistillRun):
        from tqdm.auto import tqdm

        self.run, settings = run, run.settings
        self.eval_archs = evaluation_archs(run.space)
        self.val_accuracy: dict[str, float] = {}
        self.global_batch = settings.batch_size * run.accelerator.num_processes * settings.gradient_accumulation_steps
        self.progress = tqdm(
            total=settings.max_steps,
            initial=run.state.step,
            disable=not (run.main and settings.progress_bar),
            desc="distill",
            dynamic_ncols=True,
        )
        self.window: dict[str, list[float]] = defaultdict(list)
        self.window_watch, self.window_steps = Stopwatch(), 0

    def before_optimizer_step(self, loop: TrainingLoop, values: dict[str, float]) -> None:
        sync_gradients(loop.model, self.run.accelerator.num_processes)

    def on_micro_step_end(self, loop: TrainingLoop, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.window[name].append(value)

    def on_step_end(self, loop: TrainingLoop, values: dict[str, float]) -> None:
        settings, step = self.run.settings, loop.state.step
        self.window_steps += 1
        self.progress.update(1)
        last = step == settings.max_steps
        if step % settings.log_every == 0 or last:
            self.log_window(loop)
        if (settings.eval_every and step % settings.eval_every == 0) or last:
            self.evaluate(step)
        if settings.save_every and step % settings.save_every == 0:
            path = self.run.checkpoints.save()
            self.run.log.write({"event": "checkpoint", "step": step, "path": str(path)})
            self.window_watch.restart()

    def log_window(self, loop: TrainingLoop) -> None:
        """One row of the window's means (averaged over processes), then a fresh window."""
        accelerator = self.run.accelerator
        names = sorted(self.window)
        means = torch.tensor(
            [sum(self.window[n]) / len(self.window[n]) for n in names], dtype=torch.float64, device=accelerator.device
        )
        if accelerator.num_processes > 1:
            means = accelerator.reduce(means, reduction="mean")
        elapsed = max(self.window_watch.seconds, 1e-9)
        row = {"step": loop.state.step, "epoch": loop.epoch, "lr": float(loop.scheduler.get_last_lr()[0])}
        row.update({name: float(value) for name, value in zip(names, means.tolist())})
        row["images_per_s"] = float(self.window_steps * self.global_batch / elapsed)
        row["subnet_images_per_s"] = row["images_per_s"] * len(self.run.sandwich.subnets)
        self.run.log.write(row)
        accelerator.log({k: v for k, v in row.items() if isinstance(v, float)}, step=loop.state.step)
        self.progress.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{row['images_per_s']:.0f}")
        self.window.clear()
        self.window_watch.restart()
        self.window_steps = 0

    def evaluate(self, step: int) -> None:
        self.val_accuracy = self.run.validate(self.eval_archs)
        self.run.log.write({"event": "eval", "step": step, "val_accuracy": self.val_accuracy})
        self.run.accelerator.log({f"val_accuracy/{k}": v for k, v in self.val_accuracy.items()}, step=step)
        self.run.log.say(
            f"step {step}: val accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in self.val_accuracy.items())
        )
        self.window_watch.restart()  # evaluation time is not training throughput

    def close(self) -> None:
        self.progress.close()


# Building blocks ----------------------------------------------------------------------------------------------


def make_accelerator(settings: TrainerConfig, output_dir: Path):
    """The run's `Accelerator`: gradient accumulation counted by the loop's micro-batches, the scheduler stepped by
    hand, trackers logging under `<output_dir>/logs`. (Checkpoints are `CheckpointManager`'s, not `save_state`'s:
    those unpickle on load.)"""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration

    return Accelerator(
        cpu=use_cpu(settings.cpu),
        mixed_precision=settings.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=settings.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        step_scheduler_with_optimizer=False,
        log_with=resolve_trackers(settings.log_with),
        project_dir=str(output_dir),
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )


def use_cpu(requested: bool) -> bool:
    """True when asked, or when several processes were launched on a machine without an accelerator: accelerate only
    builds a gloo process group on CPU when told `cpu=True` (`accelerate launch --multi_gpu` on a CPU machine starts the
    processes, but each would otherwise run alone)."""
    if requested:
        return True
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return not has_accelerator and int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_trackers(log_with: str) -> list[str] | None:
    if log_with == "none":
        return None
    if log_with == "auto":
        return (
            ["tensorboard"]
            if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
            else None
        )
    return [log_with]


def flat_config(config: DistillConfig) -> dict:
    """Scalars only (what trackers accept): nested keys joined by '/', lists and dicts as strings."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}" if prefix else str(key), item)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[prefix] = value if value is not None else "null"
        else:
            flat[prefix] = json.dumps(value)

    as_dict = asdict(config)
    as_dict["supernet"]["overrides"] = json.dumps(config.supernet.overrides)
    walk("", as_dict)
    return flat


def evaluation_archs(space, seed: int = 12345, num_random: int = 2) -> dict[str, dict]:
    """Fixed subnets validated during training: the space's largest and smallest, and a few seeded random ones."""
    rng = random.Random(seed)
    archs = {"largest": space.largest(), "smallest": space.smallest()}
    for index in range(num_random):
        archs[f"random{index}"] = space.sample(rng)
    return archs


def ranks_in_sync(accelerator, module: nn.Module) -> bool:
    """Whether every process holds the same weights (a checksum per process, gathered): the manual gradient
    all-reduce must keep them identical."""
    with torch.no_grad():
        checksum = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum().view(1)
        weighted = torch.stack([p.detach().double().abs().sum() for p in module.parameters()]).sum().view(1)
    gathered = accelerator.gather(torch.cat([checksum, weighted]).to(accelerator.device)).view(-1, 2)
    return bool(torch.all(gathered == gathered[0]))


def config_changes(saved_path: Path, config: DistillConfig) -> list[str]:
    """Dotted keys whose value differs between the run's saved config.yaml and `config` (empty if none or unsaved)."""
    import yaml

    if not saved_path.is_file():
        return []
    saved = yaml.safe_load(saved_path.read_text()) or {}
    current = yaml.safe_load(to_yaml(config))

    def flatten(value, prefix=""):
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): value}

    old, new = flatten(saved), flatten(current)
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def to_yaml(config: DistillConfig) -> str:
    """The config as the run's `config.yaml` holds it."""
    import yaml

    return yaml.safe_dump(asdict(config), sort_keys=False)


__all__ = ["DistillCallback", "DistillResult", "DistillRun", "build_supernet", "config_changes", "train"]
