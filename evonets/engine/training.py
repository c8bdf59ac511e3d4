"""The one training loop of the pipelines: the teacher, the supernet's distillation and a stand-alone network all
train through `TrainingLoop`.

The loop owns what every training shares: epochs of a seeded sampler and augmentation (`set_epoch`), optimizer steps counted in a
checkpointable `TrainState`, gradient accumulation, gradient clipping, and resuming inside an epoch by skipping the
batches already seen. What differs is passed in: a *step function* (forward + backward of one micro-batch, returning
the values to log) and *callbacks* (hooks around the optimizer step, in the shape of transformers' `TrainerCallback`),
which log, evaluate and save.

```python
def step(batch):
    loss = F.cross_entropy(model(batch["pixel_values"]).logits, batch["labels"])
    loss.backward()                                   # or accelerator.backward(loss)
    return {"loss": loss.item()}

TrainingLoop(model, optimizer, scheduler, loader, step, max_steps=100).run()
```

With an `accelerator` (its `prepare`d model, optimizer, scheduler and loader), every micro-batch runs inside
`accelerator.accumulate(model)`, the optimizer steps when `accelerator.sync_gradients` says so, clipping is
`accelerator.clip_grad_norm_`, and a resumed epoch starts with `accelerator.skip_first_batches`. Without one, the
same loop runs plain PyTorch: an optimizer step every `accumulation_steps` micro-batches.

Reproducibility: the loop draws nothing random itself; it opens one iterator of the loader per epoch (a torch
`DataLoader` draws its base seed there) and calls the step function, the optimizer and the scheduler in a fixed order,
so a step function that is a pure function of the seed gives the same weights on every run.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

# Leaves of parameter names that AdamW does not decay besides vectors: the SSM decay rates and skips.
_NO_DECAY_LEAVES = ("A_log", "D")


class TrainState:
    """The step counters, saved in checkpoints (`evonets.engine.checkpoints.CheckpointManager`, as JSON)."""

    def __init__(self):
        self.step = 0  # optimizer steps done
        self.micro_step = 0  # micro-batches done (step * accumulation steps at checkpoints)

    def state_dict(self) -> dict:
        return {"step": self.step, "micro_step": self.micro_step}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.micro_step = int(state["step"]), int(state["micro_step"])


class Callback:
    """Hooks of `TrainingLoop.run`; each does nothing unless overridden. `values` is the dict the step function
    returned for the micro-batch (plus `grad_norm` after clipping); hooks may add to it."""

    def on_micro_step_end(self, loop: TrainingLoop, values: dict[str, float]) -> None:
        """After every micro-batch (after the optimizer step, when one was due)."""

    def before_optimizer_step(self, loop: TrainingLoop, values: dict[str, float]) -> None:
        """When the gradients of a step are complete, before clipping and the optimizer step."""

    def on_step_end(self, loop: TrainingLoop, values: dict[str, float]) -> None:
        """After an optimizer step, `loop.state.step` counted: log, evaluate, save."""


class TrainingLoop:
    """Optimizer steps up to `max_steps` over epochs of `train_loader` (see the module docstring).

    `step_fn(batch) -> dict[str, float]` runs forward and backward of one micro-batch. `state` (default: a new
    `TrainState`) is where the loop counts; pass the one registered for checkpointing, loaded before `run()`, to
    resume. `epoch` is the epoch of the batch being trained on."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        train_loader: Iterable,
        step_fn: Callable[[dict], dict[str, float]],
        max_steps: int,
        *,
        accelerator=None,
        accumulation_steps: int = 1,
        max_grad_norm: float = 0.0,
        state: TrainState | None = None,
        callbacks: Sequence[Callback] = (),
    ):
        if len(train_loader) == 0:
            raise ValueError("The training loader has no batches: a batch is larger than the training split.")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_loader, self.step_fn, self.max_steps = train_loader, step_fn, max_steps
        self.accelerator, self.accumulation_steps, self.max_grad_norm = accelerator, accumulation_steps, max_grad_norm
        self.state = state if state is not None else TrainState()
        self.callbacks = list(callbacks)
        self.epoch = 0
        self.synced = False  # whether the last micro-batch ended with an optimizer step

    def run(self) -> TrainState:
        """Train until `state.step == max_steps` (nothing when a resumed state is already there)."""
        while self.state.step < self.max_steps:
            for batch in self._epoch_batches():
                values = self._micro_step(batch)
                self._call("on_micro_step_end", values)
                if not self.synced:
                    continue
                self.state.step += 1
                self._call("on_step_end", values)
                if self.state.step == self.max_steps:
                    break
        return self.state

    def _epoch_batches(self) -> Iterable:
        """The current epoch's batches, without those a resumed state has already trained on."""
        self.epoch, skip = divmod(self.state.micro_step, len(self.train_loader))
        if hasattr(self.train_loader, "set_epoch"):  # accelerate's prepared loaders pass it on to the sampler
            self.train_loader.set_epoch(self.epoch)
        else:
            self.train_loader.sampler.set_epoch(self.epoch)
        if hasattr(self.train_loader.dataset, "set_epoch"):  # seeded augmentation (accelerate may not pass it on)
            self.train_loader.dataset.set_epoch(self.epoch)
        if not skip:
            return self.train_loader
        if self.accelerator is not None:
            return self.accelerator.skip_first_batches(self.train_loader, skip)
        return itertools.islice(self.train_loader, skip, None)

    def _micro_step(self, batch) -> dict[str, float]:
        with self._accumulate():
            values = self.step_fn(batch)
            self.state.micro_step += 1
            self.synced = self._gradients_complete()
            if self.synced:
                self._optimizer_step(values)
        return values

    def _accumulate(self):
        if self.accelerator is None:
            return contextlib.nullcontext()
        return self.accelerator.accumulate(self.model)

    def _gradients_complete(self) -> bool:
        if self.accelerator is None:
            return self.state.micro_step % self.accumulation_steps == 0
        return self.accelerator.sync_gradients

    def _optimizer_step(self, values: dict[str, float]) -> None:
        self._call("before_optimizer_step", values)
        if self.max_grad_norm > 0:
            clip = torch.nn.utils.clip_grad_norm_ if self.accelerator is None else self.accelerator.clip_grad_norm_
            values["grad_norm"] = float(clip(self.model.parameters(), self.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _call(self, hook: str, values: dict[str, float]) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, values)


def parameter_groups(module: nn.Module, weight_decay: float, exempt_by_name: bool = True) -> list[dict]:
    """AdamW groups: decay on weight matrices and kernels (ndim >= 2), none on vectors (norms, biases). With
    `exempt_by_name`, no decay either on any `*bias` (whatever its shape) and on the SSM decay rates and skips
    (`A_log`, `D`). Frozen parameters are left out."""
    decay, no_decay = [], []
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        exempt = exempt_by_name and (leaf.endswith("bias") or leaf in _NO_DECAY_LEAVES)
        if parameter.ndim < 2 or exempt:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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


__all__ = ["Callback", "TrainState", "TrainingLoop", "parameter_groups", "torch_threads"]
