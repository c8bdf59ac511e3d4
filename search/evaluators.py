"""Fitness of a candidate: validation accuracy with inherited supernet weights, MACs and parameters.

`make_evaluator(spec)` runs once inside each evaluation worker (a process of the DMMPE pool, or a rank): it loads
the supernet and the **validation** split (the test split is never read by the search) and returns
`evaluate({"encoding": ...}) -> {"accuracy", "loss", "macs", "params"}`. The candidate is extracted as a standalone
model (`supernet.extract`, exact: its logits equal the supernet's), so accuracy, MACs (`evonets.deploy.profiling`, the one
definition, including the SS2D scan) and parameters are those of the network that would be shipped.

BatchNorm: EvoNet blocks have none (LayerNorm only), so inherited weights need no recalibration. Should a space ever
contain BatchNorm, `recalibrate_batchnorm` re-estimates its running statistics on training batches before scoring,
as Once-for-All does. The evaluator decides once, when it loads the supernet, whether its subnets have BatchNorm; a
supernet without any (every EvoNet space today) never builds, reads or resizes a recalibration batch.

`FitnessSpec.key()` identifies what a fitness value depends on (supernet weights, validation data, preprocessing),
so results are cached across runs per key.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from evonets.engine.identity import files_digest


@dataclass
class FitnessSpec:
    """Everything a worker needs to score candidates (JSON-able, so it crosses process and rank boundaries)."""

    supernet: str
    data: dict = field(default_factory=dict)  # distill.config.DataConfig fields
    batch_size: int = 256
    recalibration_batches: int = 20

    def key(self) -> str:
        """Hash of the supernet weights and the data settings: equal keys give equal fitness."""
        return files_digest(sorted(Path(self.supernet).glob("*.safetensors")), {"data": self.data})


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of `model` (of any dimension), in module order."""
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average) from `batches` in
    training mode; returns the number of BatchNorm layers (0: nothing done, model untouched, `batches` not read)."""
    norms = batchnorm_layers(model)
    if not norms:
        return 0
    momenta = [norm.momentum for norm in norms]
    was_training = model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average over the recalibration batches
    model.train()
    try:
        with torch.no_grad():
            for pixel_values in batches:
                model(pixel_values)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.train(was_training)
    return len(norms)


class SupernetEvaluator:
    """Scores architectures of one supernet on the validation split (see the module docstring)."""

    def __init__(self, spec: FitnessSpec):
        from evonets.data.classification import load_data
        from evonets.data.config import DataConfig
        from evonets.models.supernet import EvoNetSupernet
        from search.ranking import validation_tensors

        self.spec = spec
        self.supernet = EvoNetSupernet.from_pretrained(spec.supernet).eval()
        self.space = self.supernet.search_space
        config = self.supernet.config
        data_config = DataConfig(**spec.data)
        self.data = load_data(data_config, max(config.resolution_choices), config.num_channels)
        if self.data.num_labels != config.num_labels:
            raise ValueError(
                f"The data has {self.data.num_labels} classes but the supernet {spec.supernet} has num_labels = "
                f"{config.num_labels}: expected the data the supernet was trained on (config field data)."
            )
        self.pixel_values, self.labels = validation_tensors(self.data)
        # Extracted subnets copy the supernet's layers, so they have BatchNorm only if the supernet has.
        self.recalibrate = bool(spec.recalibration_batches) and bool(batchnorm_layers(self.supernet))

    def __call__(self, payload: dict) -> dict:
        from evonets.deploy.profiling import count_macs, count_parameters
        from evonets.engine.evaluation import evaluate, tensor_batches

        arch = self.space.decode(payload["encoding"])
        resolution = arch["resolution"]
        model = self.supernet.extract(arch)
        if self.recalibrate:
            recalibrate_batchnorm(model, self._train_batches(resolution))
        model.eval()
        batches = tensor_batches(self.pixel_values, self.labels, self.spec.batch_size)
        scores = evaluate(lambda x: model(x).logits, batches, resolution)
        single = torch.zeros(1, self.supernet.config.num_channels, resolution, resolution)
        return {
            "accuracy": scores["accuracy"],
            "loss": scores["loss"],
            "macs": int(count_macs(model, single)),
            "params": count_parameters(model),
        }

    def _train_batches(self, resolution: int) -> Iterator[torch.Tensor]:
        from evonets.data.classification import collate, resize_batch

        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(len(self.data.train), generator=generator).tolist()
        size = self.spec.batch_size
        for start in range(0, min(len(order), size * self.spec.recalibration_batches), size):
            batch = collate([self.data.train[i] for i in order[start : start + size]])
            yield resize_batch(batch["pixel_values"], resolution)


def make_evaluator(spec: dict) -> SupernetEvaluator:
    """Entry point for pool workers: `functools.partial(make_evaluator, asdict(spec))` pickles cheaply."""
    return SupernetEvaluator(FitnessSpec(**spec))


@dataclass
class TableSpec:
    """What a worker needs to look cells up in a benchmark table (`search.benchmark`): the table and its fitness
    column only, so the report column cannot reach the search through a worker."""

    table: str
    fitness_column: str
    accuracy_scale: float = 100.0

    def key(self) -> str:
        """Hash of the table and the column read: equal keys give equal fitness."""
        from search.benchmark import table_key

        return table_key(self.table, {"fitness_column": self.fitness_column, "accuracy_scale": self.accuracy_scale})


class TableEvaluator:
    """Scores cells by looking them up in a benchmark table: `{"accuracy"}` (the fitness column as a fraction); a
    table has no MACs or parameters to count, and its latency is the coordinator's (`BenchmarkTable.estimate`)."""

    def __init__(self, spec: TableSpec):
        from search.benchmark import accuracies, read_columns
        from search.cell_space import CellSearchSpace

        self.space = CellSearchSpace()
        field = "benchmark.fitness_column"
        values = read_columns(spec.table, {field: spec.fitness_column}, self.space)[spec.fitness_column]
        self.accuracy = accuracies(values, field, spec.fitness_column, spec.accuracy_scale)

    def __call__(self, payload: dict) -> dict:
        return {"accuracy": self.accuracy[self.space.encode(self.space.decode(payload["encoding"]))]}


def make_table_evaluator(spec: dict) -> TableEvaluator:
    """Entry point for pool workers of a benchmark run (as `make_evaluator` for a supernet)."""
    return TableEvaluator(TableSpec(**spec))


__all__ = [
    "FitnessSpec",
    "SupernetEvaluator",
    "TableEvaluator",
    "TableSpec",
    "batchnorm_layers",
    "make_evaluator",
    "make_table_evaluator",
    "recalibrate_batchnorm",
]
