"""The accelerate training loop that builds a supernet by CA-DDKD with sandwich sampling.

`train(config)` is the whole run (`distill/train.py` is its command line):

1. one `Accelerator` (mixed precision, gradient accumulation, trackers, `ProjectConfiguration` with automatic
   checkpoint naming under `<output_dir>/checkpoints/checkpoint_<i>`);
2. data (`evonets.data.classification`), teacher (`distill.teachers`; trained first by `distill.train_teacher` when
   `teacher.train_if_missing`), supernet (`EvoNetSupernet`), projectors (`distill.losses`), all checked before the
   first step;
3. one `accelerator.prepare(model, optimizer, train_loader, val_loader, scheduler)`; the sandwich sampler and a step
   counter are registered for checkpointing;
4. resume from the latest complete checkpoint (`trainer.resume`), with `skip_first_batches` inside the epoch;
5. per optimizer step: the sampler's subnets (largest first), each forward + backward on the same batch (gradients
   accumulate; the largest's detached logits and projected features supervise the others), then one synchronised
   optimizer step;
6. logs (`train_log.jsonl`, trackers, progress bar), validation of fixed subnets, `save_state` every N steps;
7. the supernet folder: `<output_dir>/supernet` (`save_pretrained`, config = search space, plus the image processor).

Multi-process: every process draws the same subnets (same sampler seed), so the model is prepared once (DDP under
`accelerate launch --multi_gpu`), every subnet's backward runs under `no_sync`, and the accumulated gradients are
averaged across processes in one all-reduce before the optimizer step (several forwards per step with different
unused parameters is what plain DDP hooks do not support).

Reproducibility: data order is a pure function of (seed, epoch) (`EpochShuffleSampler`), subnets come from the
checkpointed sampler, and `load_state` restores model, optimizer, scheduler and RNG states: on CPU a resumed run
logs the same losses as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import re
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from evonets.data.classification import EpochShuffleSampler, collate, load_data, resize_batch
from evonets.models.search_space import EvoNetSupernetConfig
from evonets.models.supernet import EvoNetSupernet

from .config import DistillConfig, SupernetSettings
from .losses import DistillationLoss, TeacherTargets
from .sampling import SandwichSampler

CHECKPOINT_MARKER = "distill_state.json"  # written last into a checkpoint folder: the checkpoint is complete
_CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")


# Building blocks ----------------------------------------------------------------------------------------------


def build_space_config(
    settings: SupernetSettings, num_labels: int, id2label: dict[int, str] | None = None
) -> EvoNetSupernetConfig:
    """The supernet's search space: the preset with the overrides, or a saved supernet's, with the data's labels."""
    labels = {"num_labels": num_labels}
    if id2label is not None:
        labels = {"id2label": dict(id2label), "label2id": {name: index for index, name in id2label.items()}}
    if settings.init_from:
        config = EvoNetSupernetConfig.from_pretrained(settings.init_from)
        if id2label is not None and config.num_labels != len(id2label):
            raise ValueError(
                f"supernet.init_from = {settings.init_from!r} has num_labels = {config.num_labels}, but the data has "
                f"{len(id2label)} classes."
            )
        return config
    unknown = sorted(
        set(settings.overrides) - set(EvoNetSupernetConfig().to_dict()) - {"num_labels", "id2label", "label2id"}
    )
    if unknown:
        raise ValueError(
            f"Config field supernet.overrides has unknown keys {unknown}: expected fields of EvoNetSupernetConfig."
        )
    overrides = {**settings.overrides, **labels}
    if settings.preset == "tiny":
        return EvoNetSupernetConfig.tiny(**overrides)
    return EvoNetSupernetConfig(**overrides)


def stage_channels(space_config: EvoNetSupernetConfig, indices: list[int]) -> tuple[list[int], list[int]]:
    """Resolve student stage indices (into hidden_states: 0 = stem, i = stage i) to non-negative ones, and give each
    the largest width it can have."""
    count = space_config.num_stages + 1
    resolved, channels = [], []
    for index in indices:
        if not -count <= index < count:
            raise ValueError(
                f"Config field loss.student_stages has index {index}, but the supernet has {count} hidden states "
                f"(stem + {space_config.num_stages} stages; valid: {-count} .. {count - 1})."
            )
        index %= count
        resolved.append(index)
        channels.append(max(space_config.width_choices[max(0, index - 1)]))
    return resolved, channels


class DistillModule(nn.Module):
    """The trainable parts in one module (one `prepare`, one checkpoint): the supernet and the loss's projectors."""

    def __init__(self, supernet: EvoNetSupernet, loss: DistillationLoss, stage_indices: list[int]):
        super().__init__()
        self.supernet = supernet
        self.loss = loss
        self.stage_indices = stage_indices

    def forward(self, pixel_values: torch.Tensor, arch: dict, with_features: bool = True):
        """(logits, [chosen stage maps (B, C, H, W)]) of subnet `arch`."""
        with_features = with_features and self.loss.uses_features
        outputs = self.supernet(pixel_values, arch=arch, output_hidden_states=with_features, return_dict=True)
        features = [outputs.hidden_states[index] for index in self.stage_indices] if with_features else []
        return outputs.logits, features


class TrainState:
    """The step counters, registered for checkpointing."""

    def __init__(self):
        self.step = 0  # optimizer steps done
        self.micro_step = 0  # micro-batches done (step * gradient_accumulation_steps at checkpoints)

    def state_dict(self) -> dict:
        return {"step": self.step, "micro_step": self.micro_step}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.micro_step = int(state["step"]), int(state["micro_step"])


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices / kernels; none on norms, biases, SSM decay rates and skips."""
    decay, no_decay = [], []
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if parameter.ndim < 2 or leaf.endswith("bias") or leaf in ("A_log", "D"):
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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
    """The checkpoint to resume from, per `trainer.resume` (see its docstring)."""
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


class JsonlLog:
    """Append-only JSON-lines log, flushed and fsynced per row (main process only)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def sync_gradients(module: nn.Module, num_processes: int) -> None:
    """Average every trainable parameter's gradient over processes in one flat all-reduce. Every process ran the same
    subnets, so the same parameters have gradients; missing ones count as zero and stay None when zero everywhere."""
    if num_processes == 1:
        return
    parameters = [p for p in module.parameters() if p.requires_grad]
    missing = [p.grad is None for p in parameters]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters])
    torch.distributed.all_reduce(flat)
    flat /= num_processes
    offset = 0
    for parameter, was_missing in zip(parameters, missing):
        chunk = flat[offset : offset + parameter.numel()].view_as(parameter)
        offset += parameter.numel()
        if was_missing and not bool(chunk.any()):
            continue
        if parameter.grad is None:
            parameter.grad = chunk.clone()
        else:
            parameter.grad.copy_(chunk)


def evaluation_archs(space, seed: int = 12345, num_random: int = 2) -> dict[str, dict]:
    """Fixed subnets validated during training: the space's largest and smallest, and a few seeded random ones."""
    rng = random.Random(seed)
    archs = {"largest": space.largest(), "smallest": space.smallest()}
    for index in range(num_random):
        archs[f"random{index}"] = space.sample(rng)
    return archs


@torch.no_grad()
def evaluate(accelerator, model, loader, archs: dict[str, dict]) -> dict[str, float]:
    """Validation accuracy of each subnet (gathered over processes, duplicates of the last batch dropped)."""
    was_training = model.training
    model.eval()
    results = {}
    for name, arch in archs.items():
        correct = count = 0
        for batch in loader:
            logits, _ = model(resize_batch(batch["pixel_values"], arch["resolution"]), arch, False)
            predictions, labels = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"]))
            correct += int((predictions == labels).sum())
            count += labels.numel()
        results[name] = correct / max(1, count)
    model.train(was_training)
    return results


@dataclass
class DistillResult:
    """Where the run wrote its outputs, and its final validation accuracies."""

    output_dir: Path
    supernet_dir: Path
    log_path: Path
    steps: int
    val_accuracy: dict[str, float]
    seconds: float


# The run ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(count: int | None):
    """`torch.set_num_threads(count)` inside the block (nothing when None), restored after it."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train(config: DistillConfig) -> DistillResult:
    """Run (or resume) a distillation; see the module docstring."""
    config.validate()
    with torch_threads(config.trainer.num_threads):
        return _train(config)


def _train(config: DistillConfig) -> DistillResult:
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    run = config.trainer
    output_dir = Path(run.output_dir).expanduser().resolve()
    accelerator = Accelerator(
        cpu=use_cpu(run.cpu),
        mixed_precision=run.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=run.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        step_scheduler_with_optimizer=False,
        log_with=resolve_trackers(run.log_with),
        project_dir=str(output_dir),
        project_config=ProjectConfiguration(
            project_dir=str(output_dir),
            logging_dir=str(output_dir / "logs"),
            automatic_checkpoint_naming=True,
            total_limit=run.total_limit,
        ),
    )
    resume_from = resolve_resume(run, output_dir)
    main = accelerator.is_main_process
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    log = JsonlLog(output_dir / "train_log.jsonl", main)
    say = tqdm.write if main else (lambda *_: None)

    # Data, teacher, supernet: everything checked before the first step.
    space_config = build_space_config(config.supernet, num_labels=2)
    image_size = config.data.image_size or max(space_config.resolution_choices)
    if config.teacher.path and config.teacher.train_if_missing and not Path(config.teacher.path).exists():
        if main:
            from .train_teacher import train_teacher

            say(f"teacher.path {config.teacher.path} does not exist: training a {config.teacher.train.family} teacher")
            train_teacher(config, log=say)
        accelerator.wait_for_everyone()
    data = load_data(config.data, image_size, num_channels=space_config.num_channels)
    space_config = build_space_config(config.supernet, data.num_labels, data.id2label)
    teacher = None
    if config.uses_teacher:
        from .teachers import load_teacher

        teacher = load_teacher(
            config.teacher.path,
            config.teacher.stages if config.uses_features else [],
            data.num_labels,
            data.label_names,
            image_size,
            config.data.image_mean,
            config.data.image_std,
            config.teacher.image_size,
            require_labels=config.loss.kd_weight > 0,
        ).to(accelerator.device)
    stage_indices, student_channels = stage_channels(space_config, config.loss.student_stages)
    teacher_channels = None
    if teacher is not None and config.uses_features:
        probe = teacher(torch.zeros(1, space_config.num_channels, image_size, image_size, device=accelerator.device))
        teacher_channels = [feature.shape[1] for feature in probe.features]

    set_seed(run.seed)
    if config.supernet.init_from:
        supernet = EvoNetSupernet.from_pretrained(config.supernet.init_from)
    else:
        supernet = EvoNetSupernet(space_config)
    loss_fn = DistillationLoss(config.loss, student_channels, teacher_channels)
    model = DistillModule(supernet, loss_fn, stage_indices).to(accelerator.device)
    model.train()
    space = supernet.search_space

    optimizer = torch.optim.AdamW(parameter_groups(model, run.weight_decay), lr=run.lr)
    scheduler = get_cosine_schedule_with_warmup(optimizer, run.warmup_steps, run.max_steps)
    train_sampler = EpochShuffleSampler(len(data.train), run.seed)
    train_loader = torch.utils.data.DataLoader(
        data.train,
        batch_size=run.batch_size,
        sampler=train_sampler,
        collate_fn=collate,
        drop_last=True,
        num_workers=config.data.num_workers,
    )
    val_loader = torch.utils.data.DataLoader(
        data.validation, batch_size=max(run.batch_size, 128), collate_fn=collate, num_workers=config.data.num_workers
    )
    if len(train_loader) == 0:
        raise ValueError(
            f"trainer.batch_size = {run.batch_size} is larger than the {len(data.train)} training examples."
        )
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )
    sampler = SandwichSampler(
        space,
        config.sampling.num_random,
        config.sampling.block_types,
        config.sampling.seed,
        config.sampling.shrink_schedule,
        run.max_steps,
    )
    state = TrainState()
    accelerator.register_for_checkpointing(sampler, state)
    unwrapped: DistillModule = accelerator.unwrap_model(model)

    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        if main:  # a checkpoint interrupted while being written is garbage
            for path in find_checkpoints(output_dir)[1]:
                shutil.rmtree(path, ignore_errors=True)
        accelerator.wait_for_everyone()
        indices = [int(_CHECKPOINT_NAME.fullmatch(p.name).group(1)) for p in find_checkpoints(output_dir)[0]]
        accelerator.project_configuration.iteration = max(indices) + 1
        changed = config_changes(output_dir / "config.yaml", config)
        if changed:
            say(f"warning: resuming with a config that differs from the run's config.yaml in {changed}")
        say(f"resumed from {resume_from} at step {state.step}")
        log.write(
            {
                "event": "resume",
                "step": state.step,
                "checkpoint": str(resume_from),
                "time": time.time(),
                "config_changes": changed,
            }
        )
    else:
        if main:
            (output_dir / "config.yaml").write_text(_to_yaml(config))
        log.write(
            {
                "event": "start",
                "time": time.time(),
                "processes": accelerator.num_processes,
                "device": str(accelerator.device),
                "train_examples": len(data.train),
                "validation_examples": len(data.validation),
                "supernet_parameters": sum(p.numel() for p in unwrapped.supernet.parameters()),
                "projector_parameters": sum(p.numel() for p in unwrapped.loss.parameters()),
                "teacher": config.teacher.path if teacher is not None else None,
            }
        )
    accelerator.init_trackers("distill", config=flat_config(config))

    eval_archs = evaluation_archs(space)
    accumulation = run.gradient_accumulation_steps
    global_batch = run.batch_size * accelerator.num_processes * accumulation
    progress = tqdm(
        total=run.max_steps,
        initial=state.step,
        disable=not (main and run.progress_bar),
        desc="distill",
        dynamic_ncols=True,
    )
    window: dict[str, list[float]] = defaultdict(list)
    window_start, window_steps = time.perf_counter(), 0
    run_start = time.perf_counter()
    subnets: list[tuple[str, dict]] = []
    val_accuracy: dict[str, float] = {}

    while state.step < run.max_steps:
        epoch, skip = divmod(state.micro_step, len(train_loader))
        train_loader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        for batch in loader:
            if state.micro_step % accumulation == 0:
                subnets = sampler.sample(state.step)
            with accelerator.accumulate(model):
                terms = train_micro_step(accelerator, model, unwrapped, teacher, batch, subnets, config)
                state.micro_step += 1
                if accelerator.sync_gradients:
                    sync_gradients(model, accelerator.num_processes)
                    if run.max_grad_norm > 0:
                        terms["grad_norm"] = float(accelerator.clip_grad_norm_(model.parameters(), run.max_grad_norm))
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            for name, value in terms.items():
                window[name].append(value)
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            window_steps += 1
            progress.update(1)
            last = state.step == run.max_steps
            if state.step % run.log_every == 0 or last:
                row = _log_row(
                    accelerator, window, state, epoch, scheduler, global_batch, len(subnets), window_steps, window_start
                )
                log.write(row)
                accelerator.log({k: v for k, v in row.items() if isinstance(v, float)}, step=state.step)
                progress.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{row['images_per_s']:.0f}")
                window.clear()
                window_start, window_steps = time.perf_counter(), 0
            if (run.eval_every and state.step % run.eval_every == 0) or last:
                val_accuracy = evaluate(accelerator, model, val_loader, eval_archs)
                log.write({"event": "eval", "step": state.step, "val_accuracy": val_accuracy})
                accelerator.log({f"val_accuracy/{k}": v for k, v in val_accuracy.items()}, step=state.step)
                say(f"step {state.step}: val accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in val_accuracy.items()))
                window_start = time.perf_counter()  # evaluation time is not training throughput
            if run.save_every and state.step % run.save_every == 0:
                save_checkpoint(accelerator, state, log)
                window_start = time.perf_counter()
            if last:
                break
    progress.close()

    if not val_accuracy:  # resumed a finished run
        val_accuracy = evaluate(accelerator, model, val_loader, eval_archs)
    in_sync = ranks_in_sync(accelerator, unwrapped)
    supernet_dir = output_dir / "supernet"
    accelerator.wait_for_everyone()
    unwrapped.supernet.save_pretrained(supernet_dir, is_main_process=main, save_function=accelerator.save)
    if main:
        data.processor.save_pretrained(supernet_dir)
        summary = {
            "steps": state.step,
            "val_accuracy": val_accuracy,
            "evaluated_architectures": {name: space.encode(arch) for name, arch in eval_archs.items()},
            "teacher": config.teacher.path if teacher is not None else None,
            "config": asdict(config),
        }
        (supernet_dir / "distill_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    seconds = time.perf_counter() - run_start
    log.write(
        {
            "event": "end",
            "step": state.step,
            "supernet": str(supernet_dir),
            "seconds": round(seconds, 2),
            "ranks_in_sync": in_sync,
        }
    )
    say(f"supernet saved to {supernet_dir}")
    accelerator.end_training()
    return DistillResult(output_dir, supernet_dir, output_dir / "train_log.jsonl", state.step, val_accuracy, seconds)


def train_micro_step(
    accelerator, model, unwrapped: DistillModule, teacher, batch, subnets, config: DistillConfig
) -> dict[str, float]:
    """Forward + backward of every subnet on one micro-batch; returns the logged values (unweighted terms, summed
    weighted loss, per-role CE)."""
    pixel_values, labels = batch["pixel_values"], batch["labels"]
    teacher_targets = None
    if teacher is not None:
        with accelerator.autocast():
            teacher_targets = teacher(pixel_values, with_features=unwrapped.loss.uses_features)
    inplace: TeacherTargets | None = None
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    total = 0.0
    for role, arch in subnets:
        with accelerator.no_sync(model):
            logits, features = model(resize_batch(pixel_values, arch["resolution"]), arch, True)
            result = unwrapped.loss(logits, features, labels, role, teacher=teacher_targets, inplace=inplace)
            accelerator.backward(result.total)  # accelerate divides by gradient_accumulation_steps
        if role == "largest":
            inplace = TeacherTargets(logits=logits.detach().float(), features=[p.detach() for p in result.projected])
        total += float(result.total.detach())
        for name, value in result.terms.items():
            sums[name] += value
            counts[name] += 1
        if "ce" in result.terms and role in ("largest", "smallest"):
            sums[f"ce_{role}"] += result.terms["ce"]
            counts[f"ce_{role}"] += 1
    logged = {name: sums[name] / counts[name] for name in sums}
    logged["loss"] = total
    return logged


def _log_row(accelerator, window, state, epoch, scheduler, global_batch, num_subnets, steps, start) -> dict:
    names = sorted(window)
    means = torch.tensor(
        [sum(window[n]) / len(window[n]) for n in names], dtype=torch.float64, device=accelerator.device
    )
    if accelerator.num_processes > 1:
        means = accelerator.reduce(means, reduction="mean")
    elapsed = max(time.perf_counter() - start, 1e-9)
    row = {"step": state.step, "epoch": epoch, "lr": float(scheduler.get_last_lr()[0])}
    row.update({name: float(value) for name, value in zip(names, means.tolist())})
    row["images_per_s"] = float(steps * global_batch / elapsed)
    row["subnet_images_per_s"] = row["images_per_s"] * num_subnets
    return row


def ranks_in_sync(accelerator, module: nn.Module) -> bool:
    """Whether every process holds the same weights (a checksum per process, gathered): the manual gradient
    all-reduce must keep them identical."""
    with torch.no_grad():
        checksum = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum().view(1)
        weighted = torch.stack([p.detach().double().abs().sum() for p in module.parameters()]).sum().view(1)
    gathered = accelerator.gather(torch.cat([checksum, weighted]).to(accelerator.device)).view(-1, 2)
    return bool(torch.all(gathered == gathered[0]))


def save_checkpoint(accelerator, state: TrainState, log: JsonlLog) -> Path:
    """`save_state` into the next `checkpoint_<i>`, then the completeness marker."""
    path = Path(accelerator.save_state())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (path / CHECKPOINT_MARKER).write_text(json.dumps(state.state_dict()) + "\n")
    accelerator.wait_for_everyone()
    log.write({"event": "checkpoint", "step": state.step, "path": str(path)})
    return path


def config_changes(saved_path: Path, config: DistillConfig) -> list[str]:
    """Dotted keys whose value differs between the run's saved config.yaml and `config` (empty if none or unsaved)."""
    import yaml

    if not saved_path.is_file():
        return []
    saved = yaml.safe_load(saved_path.read_text()) or {}
    current = yaml.safe_load(_to_yaml(config))

    def flatten(value, prefix=""):
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): value}

    old, new = flatten(saved), flatten(current)
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def _to_yaml(config: DistillConfig) -> str:
    import yaml

    return yaml.safe_dump(asdict(config), sort_keys=False)


__all__ = [
    "DistillModule",
    "DistillResult",
    "TrainState",
    "build_space_config",
    "evaluate",
    "find_checkpoints",
    "parameter_groups",
    "stage_channels",
    "sync_gradients",
    "train",
]
