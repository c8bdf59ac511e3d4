"""The one evaluation of the pipelines: accuracy and mean cross-entropy of a classifier over labelled batches.

Every caller scores the same way: the teacher after each epoch, the supernet's fixed subnets during distillation
(batches of an accelerate-prepared loader, gathered over processes), a stand-alone network after its training, and
a candidate of the search (its validation tensors in slices). On a small validation set accuracy moves in steps of
1 / n and ties are common; the loss is continuous, so it ranks too.

>>> import torch
>>> pixel_values, labels = torch.zeros(5, 3, 4, 4), torch.tensor([0, 1, 0, 1, 0])
>>> always_zero = lambda x: torch.tensor([[1.0, 0.0]]).expand(len(x), 2)
>>> evaluate(always_zero, tensor_batches(pixel_values, labels, batch_size=2))["accuracy"]
0.6
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from evonets.data.classification import resize_batch


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """`model.eval()` inside the block, the model's previous mode restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def tensor_batches(pixel_values: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> Iterator[dict]:
    """Consecutive `{"pixel_values", "labels"}` slices of at most `batch_size` (the batches of an in-memory split)."""
    for start in range(0, len(labels), batch_size):
        yield {"pixel_values": pixel_values[start : start + batch_size], "labels": labels[start : start + batch_size]}


@torch.no_grad()
def evaluate(
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[dict],
    resolution: int | None = None,
    gather: Callable | None = None,
) -> dict[str, float]:
    """`accuracy` and mean cross-entropy `loss` of `model_fn(pixel_values) -> logits` over `batches` (dicts with
    `pixel_values` and `labels`).

    `resolution`: resize every batch to that size first (`resize_batch`; None: as they come). `gather`: applied to
    each batch's `(logits, labels)` before counting, e.g. `accelerator.gather_for_metrics` (every process's batch, the
    duplicates that pad the last one dropped). The model's train / eval mode is the caller's (see `eval_mode`)."""
    correct, loss, count = 0, 0.0, 0
    for batch in batches:
        pixel_values, labels = batch["pixel_values"], batch["labels"]
        if resolution is not None:
            pixel_values = resize_batch(pixel_values, resolution)
        logits = model_fn(pixel_values).float()
        if gather is not None:
            logits, labels = gather((logits, labels))
        correct += int((logits.argmax(-1) == labels).sum())
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        count += labels.numel()
    return {"accuracy": correct / max(1, count), "loss": loss / max(1, count)}


__all__ = ["eval_mode", "evaluate", "tensor_batches"]
