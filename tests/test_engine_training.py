"""evonets.engine.training: the one training loop (plain PyTorch path; the accelerate path runs in
tests/test_distill_train.py), its hooks, accumulation and resume, and the AdamW parameter groups."""

import pytest
import torch
import torch.nn.functional as F

from evonets.data.classification import EpochShuffleSampler
from evonets.engine.training import Callback, TrainingLoop, TrainState, parameter_groups, torch_threads

STEPS = 7  # 2.33 epochs of 3 batches


def _dataset():
    generator = torch.Generator().manual_seed(0)
    features, labels = torch.randn(13, 5, generator=generator), torch.randint(0, 3, (13,), generator=generator)
    return [{"x": features[i], "y": labels[i]} for i in range(13)]


def _setup(accumulation: int = 1):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.05), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    loader = torch.utils.data.DataLoader(
        _dataset(), batch_size=4 // accumulation, sampler=EpochShuffleSampler(13, seed=3), drop_last=True
    )
    return model, optimizer, scheduler, loader


def _step_fn(model, accumulation: int = 1):
    def step(batch):
        loss = F.cross_entropy(model(batch["x"]), batch["y"]) / accumulation
        loss.backward()
        return {"loss": loss.item()}

    return step


def test_the_loop_is_the_hand_written_loop():
    model, optimizer, scheduler, loader = _setup()
    step, epoch, losses = 0, 0, []
    while step < STEPS:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            loss = F.cross_entropy(model(batch["x"]), batch["y"])
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            if step == STEPS:
                break
        epoch += 1
    expected = [p.detach().clone() for p in model.parameters()]

    model, optimizer, scheduler, loader = _setup()

    class Record(Callback):
        def __init__(self):
            self.events = []

        def on_micro_step_end(self, loop, values):
            self.events.append(("micro", loop.state.micro_step, values["loss"]))

        def before_optimizer_step(self, loop, values):
            self.events.append(("before", loop.state.step))

        def on_step_end(self, loop, values):
            self.events.append(("end", loop.state.step, loop.epoch))

    record = Record()
    state = TrainingLoop(model, optimizer, scheduler, loader, _step_fn(model), STEPS, callbacks=[record]).run()
    assert (state.step, state.micro_step) == (STEPS, STEPS)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), expected))
    assert [event[2] for event in record.events if event[0] == "micro"] == losses
    assert record.events[:4] == [("before", 0), ("micro", 1, losses[0]), ("end", 1, 0), ("before", 1)]
    assert [event[2] for event in record.events if event[0] == "end"] == [0, 0, 0, 1, 1, 1, 2]


def test_gradient_accumulation_steps_once_per_group_of_micro_batches():
    model, optimizer, scheduler, loader = _setup(accumulation=2)
    steps = []

    class Count(Callback):
        def on_step_end(self, loop, values):
            steps.append(loop.state.micro_step)

    loop = TrainingLoop(
        model, optimizer, scheduler, loader, _step_fn(model, 2), 4, accumulation_steps=2, callbacks=[Count()]
    )
    loop.run()
    assert steps == [2, 4, 6, 8] and scheduler.last_epoch == 4


def test_clipping_logs_the_norm():
    model, optimizer, scheduler, loader = _setup()
    values = []

    class Keep(Callback):
        def on_step_end(self, loop, step_values):
            values.append(step_values)

    TrainingLoop(model, optimizer, scheduler, loader, _step_fn(model), 2, max_grad_norm=1e-3, callbacks=[Keep()]).run()
    assert all(row["grad_norm"] > 1e-3 for row in values)


def test_a_loop_resumed_from_its_state_ends_with_the_same_weights():
    model, optimizer, scheduler, loader = _setup()
    TrainingLoop(model, optimizer, scheduler, loader, _step_fn(model), STEPS).run()
    straight = [p.detach().clone() for p in model.parameters()]

    model, optimizer, scheduler, loader = _setup()
    first = TrainingLoop(model, optimizer, scheduler, loader, _step_fn(model), 4).run()  # stops inside epoch 1
    saved = ({k: v.clone() for k, v in model.state_dict().items()}, optimizer.state_dict(), scheduler.state_dict())
    saved_state = first.state_dict()

    model, optimizer, scheduler, loader = _setup()
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    scheduler.load_state_dict(saved[2])
    state = TrainState()
    state.load_state_dict(saved_state)
    TrainingLoop(model, optimizer, scheduler, loader, _step_fn(model), STEPS, state=state).run()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), straight))


def test_an_empty_loader_is_an_error():
    model, optimizer, scheduler, _ = _setup()
    loader = torch.utils.data.DataLoader(_dataset()[:2], batch_size=4, drop_last=True)
    with pytest.raises(ValueError, match="no batches"):
        TrainingLoop(model, optimizer, scheduler, loader, _step_fn(model), 1)


def test_parameter_groups():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)
            self.A_log = torch.nn.Parameter(torch.zeros(4, 2))
            self.grn_bias = torch.nn.Parameter(torch.zeros(1, 1, 4))
            self.frozen = torch.nn.Parameter(torch.zeros(4, 4), requires_grad=False)

    block = Block()
    decay, no_decay = parameter_groups(block, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p is block.proj.weight for p in decay["params"]] == [True]
    assert len(no_decay["params"]) == 5  # proj.bias, norm.weight, norm.bias, A_log, grn_bias
    by_shape = parameter_groups(block, 0.1, exempt_by_name=False)
    assert {id(p) for p in by_shape[0]["params"]} == {id(block.proj.weight), id(block.A_log), id(block.grn_bias)}


def test_torch_threads_restores_the_count():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    with torch_threads(None):
        assert torch.get_num_threads() == before
    assert torch.get_num_threads() == before
