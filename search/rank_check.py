"""Rank check: does a supernet rank its subnets the way stand-alone training does?

    python search/rank_check.py --supernet runs/quickstart/distill/supernet --n 20
    python search/rank_check.py --config configs/rank_check.yaml      # the digits protocol of docs/rank_check.md
    python search/rank_check.py --supernet PATH --n 20 --standalone.steps 300 --workers 2
    python search/rank_check.py --help                                # every field, documented

`n` architectures are sampled from the supernet's search space (distinct, seeded). Each gets

- its **supernet fitness**, computed by the search's own evaluator (`search.evaluators.SupernetEvaluator`): validation
  accuracy with the supernet's inherited weights (the search's error is 1 - accuracy), ties broken by the lower
  validation cross-entropy (EvoNet has no BatchNorm; a space with BatchNorm would get the evaluator's
  recalibration), plus the subnet's parameters and MACs;
- its **stand-alone score**: the same validation accuracy and loss of `EvoNetForImageClassification` built from the
  architecture and trained from scratch on the train split with one fixed recipe (`--standalone.*`), averaged over
  `standalone_seeds` seeds.

The report ranks the architectures three ways, by fitness (accuracy, then loss), by accuracy alone and by loss
alone, and gives per ranking Kendall's tau-b, Spearman's rho, the top-k overlap and the seed ceiling (how well single
stand-alone seeds rank each other), plus the same figures for parameter and MAC counts as size-only baselines.

The data config is the one the supernet was distilled with (read from `<supernet>/distill_summary.json`), so the
validation images are the ones the supernet never trained on; `--data.*` may restate it (a different split is an
error) or must give it for a supernet without that file. Only the train and validation splits are loaded: the test
split is never read. Stand-alone results are cached in `cache_dir` (one JSON file per data config and search space,
keyed by recipe, seed and architecture), so a second run with another supernet of the same space trains nothing.

Outputs in `output_dir`: `rank_check.json` (everything, per architecture too), `rank_check.md` (the tables) and
`rank_check.png` (scatter plots of supernet against stand-alone accuracy and loss).
"""

from __future__ import annotations

import functools
import json
import logging
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from evonets.data.classification import ClassificationData, load_data
from evonets.data.config import DataConfig
from evonets.engine.identity import digest
from evonets.engine.timer import Stopwatch
from search.ranking import (
    RANKINGS,
    StandaloneRecipe,
    rank_correlations,
    ranking_scores,
    sample_architectures,
    seed_ceiling,
    standalone_scores,
    train_standalone,
)

logger = logging.getLogger(__name__)

SECTION = "rank_check"
# DataConfig fields that decide which images are in the train and validation splits.
SPLIT_FIELDS = (
    "source",
    "path",
    "name",
    "train_split",
    "validation_split",
    "validation_fraction",
    "seed",
    "max_train_samples",
)


@dataclass
class RankCheckConfig:
    """What to rank, against which stand-alone recipe, and where the report goes."""

    supernet: str | None = None
    """Folder of a saved `EvoNetSupernet` (e.g. `<distill output_dir>/supernet`)."""

    n: int = 20
    """Architectures sampled from the supernet's search space (distinct; at least 3)."""

    sample_seed: int = 1234
    """Seed of the architecture sample (`random.Random(sample_seed)`)."""

    top_k: int = 5
    """Size of the top sets compared by the top-k overlap (at most n are compared)."""

    data: DataConfig | None = None
    """The data (same fields as the distillation's `data:`). Default: the config the supernet was distilled with,
    from its `distill_summary.json`; when given, its split must match that one."""

    standalone: StandaloneRecipe = field(default_factory=StandaloneRecipe)
    """The fixed stand-alone training recipe; `standalone.seed` is the first seed."""

    standalone_seeds: int = 3
    """Stand-alone trainings per architecture, with seeds `standalone.seed`, `standalone.seed + 1`, ...: the
    stand-alone score is their mean; two or more also give the seed ceiling."""

    output_dir: str = "runs/rank_check"
    """Folder for `rank_check.json`, `rank_check.md` and `rank_check.png`."""

    cache_dir: str | None = None
    """Folder of the stand-alone result cache. Default: `output_dir`."""

    workers: int = 1
    """Processes training stand-alone networks in parallel (each with `num_threads` threads)."""

    num_threads: int = 1
    """Torch threads per process. Small networks on a shared CPU run fastest with one."""

    progress_bar: bool = True
    """Show a tqdm progress bar over the stand-alone trainings."""

    def validate(self) -> RankCheckConfig:
        """Check what the types cannot; `ValueError` naming the field and the allowed values."""
        if not self.supernet:
            raise ValueError("Config field supernet is missing: expected the folder of a saved EvoNetSupernet.")
        if self.n < 3:
            raise ValueError(
                f"Config field n = {self.n} is invalid: expected an integer >= 3 (a ranking needs at least 3 "
                "architectures)."
            )
        for name in ("top_k", "standalone_seeds", "workers", "num_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"Config field {name} = {getattr(self, name)} is invalid: expected an integer >= 1.")
        recipe = self.standalone
        for name in ("steps", "batch_size"):
            if getattr(recipe, name) < 1:
                raise ValueError(
                    f"Config field standalone.{name} = {getattr(recipe, name)} is invalid: expected an integer >= 1."
                )
        if not 0 <= recipe.warmup_steps < recipe.steps:
            raise ValueError(
                f"Config field standalone.warmup_steps = {recipe.warmup_steps} is invalid: expected an integer in "
                f"[0, standalone.steps = {recipe.steps})."
            )
        if not recipe.lr > 0 or recipe.weight_decay < 0:
            raise ValueError(
                f"Config fields standalone.lr = {recipe.lr} and standalone.weight_decay = {recipe.weight_decay} are "
                "invalid: expected lr > 0 and weight_decay >= 0."
            )
        return self

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(range(self.standalone.seed, self.standalone.seed + self.standalone_seeds))


# Scores and rankings ------------------------------------------------------------------------------------------


# Loading ------------------------------------------------------------------------------------------------------


def load_space_config(path: str):
    """The search space (`EvoNetSupernetConfig`) of the supernet saved in folder `path`."""
    from evonets.models.search_space import EvoNetSupernetConfig

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"Config field supernet = {path!r} is invalid: expected a folder written by EvoNetSupernet.save_pretrained "
            f"(config.json + model.safetensors, e.g. <distill output_dir>/supernet); "
            f"{'it has no config.json' if folder.is_dir() else 'no such folder'}."
        )
    return EvoNetSupernetConfig.from_pretrained(folder)


def resolve_data_config(config: RankCheckConfig) -> DataConfig:
    """The data config of the check: the supernet's own (`distill_summary.json`) unless `config.data` restates it."""
    summary_path = Path(config.supernet).expanduser() / "distill_summary.json"
    distilled_with = None
    if summary_path.is_file():
        saved = json.loads(summary_path.read_text())["config"]["data"]
        distilled_with = DataConfig(
            **{key: value for key, value in saved.items() if key in DataConfig.__dataclass_fields__}
        )
    if config.data is None:
        if distilled_with is None:
            raise ValueError(
                f"Config field data is missing: the supernet {config.supernet!r} has no distill_summary.json to read its "
                "data config from; give it (e.g. --data.source digits), with the split the supernet was trained on."
            )
        return distilled_with
    if distilled_with is not None:
        changed = [name for name in SPLIT_FIELDS if getattr(config.data, name) != getattr(distilled_with, name)]
        if changed:
            raise ValueError(
                "Config field data is invalid: "
                + ", ".join(f"data.{name} = {getattr(config.data, name)!r}" for name in changed)
                + f" differ from the supernet's distillation ({', '.join(repr(getattr(distilled_with, n)) for n in changed)})"
                ": its validation images could be ones the supernet trained on. Leave data unset to use the supernet's."
            )
    return config.data


def cache_path(config: RankCheckConfig, data_config: DataConfig, space_config) -> Path:
    """The stand-alone cache file for this data config and the space's fixed network fields and labels, the inputs
    of a stand-alone result besides recipe and architecture (which key the entries inside the file). Spaces that
    share architectures share their results."""
    network = {name: getattr(space_config, name) for name in space_config.network_fields()}
    identity = {"data": asdict(data_config), "network": network, "num_labels": space_config.num_labels}
    return Path(config.cache_dir or config.output_dir).expanduser() / f"standalone_{digest(identity, length=10)}.json"


@functools.lru_cache(maxsize=1)
def _worker_data(data_config_json: str, image_size: int, num_channels: int) -> ClassificationData:
    """The data of a stand-alone worker process, loaded on its first training and kept for the next ones."""
    return load_data(DataConfig(**json.loads(data_config_json)), image_size, num_channels)


def _train_in_worker(space, arch: dict, recipe: StandaloneRecipe, data_config_json: str, image_size: int) -> dict:
    data = _worker_data(data_config_json, image_size, space.config.num_channels)
    return train_standalone(space, arch, data, recipe)


# The run ------------------------------------------------------------------------------------------------------


def run(config: RankCheckConfig) -> dict:
    """Score, train, correlate and write the report (see the module docstring); the report dict is returned."""
    from evonets.engine.training import torch_threads

    config.validate()
    with torch_threads(config.num_threads):
        return _run(config)


def _run(config: RankCheckConfig) -> dict:
    from search.evaluators import FitnessSpec, SupernetEvaluator

    space = load_space_config(config.supernet).search_space
    if config.n > space.cardinality():
        raise ValueError(
            f"Config field n = {config.n} is invalid: the supernet's space has only {space.cardinality()} distinct "
            "architectures."
        )
    data_config = resolve_data_config(config)
    evaluator = SupernetEvaluator(FitnessSpec(supernet=str(config.supernet), data=asdict(data_config)))
    data = evaluator.data  # the evaluator's validation split, and the train split for the stand-alone trainings
    logger.info(
        f"data: {data_config.source}, {len(data.train)} train / {len(data.validation)} validation images "
        f"(the test split is not read); {config.n} architectures, sample seed {config.sample_seed}"
    )
    archs = sample_architectures(space, config.n, config.sample_seed)

    watch = Stopwatch()
    with torch.no_grad():
        fitness = [evaluator({"encoding": space.encode(arch)}) for arch in archs]
    supernet_results = [{"accuracy": entry["accuracy"], "loss": entry["loss"]} for entry in fitness]
    sizes = [{"params": entry["params"], "macs": entry["macs"]} for entry in fitness]
    supernet_seconds = watch.seconds
    logger.info(f"supernet fitness of {len(archs)} architectures: {supernet_seconds:.1f} s")

    watch = Stopwatch(children=True)  # CPU time of this process and of its finished workers, all cores
    standalone = _standalone(config, space, archs, data, data_config)
    standalone_seconds, standalone_cpu_seconds = watch.seconds, watch.cpu_seconds

    report = build_report(config, space, archs, data, data_config, supernet_results, standalone, sizes)
    report["seconds"] = {
        "supernet": round(supernet_seconds, 2),
        "standalone": round(standalone_seconds, 2),
        "standalone_cpu": round(standalone_cpu_seconds, 2),  # this process and its finished workers, all cores
    }
    write_report(report, Path(config.output_dir).expanduser())
    return report


def _standalone(config, space, archs, data, data_config) -> list[dict]:
    """Stand-alone scores, from the cache or trained here (workers = 1) or in a process pool."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    path = cache_path(config, data_config, space.config)
    progress = tqdm(
        total=len(archs) * len(config.seeds), desc="stand-alone", unit="run", disable=not config.progress_bar
    )

    def log(message: str) -> None:
        progress.update(1)
        logger.info(message)

    with progress:
        if config.workers == 1:
            return standalone_scores(space, archs, data, config.standalone, config.seeds, path, log=log)
        data_config_json = json.dumps(asdict(data_config))
        with ProcessPoolExecutor(
            config.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=torch.set_num_threads,
            initargs=(config.num_threads,),
        ) as pool:

            def submit(arch: dict, recipe: StandaloneRecipe):
                return pool.submit(_train_in_worker, space, arch, recipe, data_config_json, data.image_size)

            return standalone_scores(space, archs, data, config.standalone, config.seeds, path, log=log, submit=submit)


def build_report(config, space, archs, data, data_config, supernet_results, standalone, sizes) -> dict:
    """The JSON-able report: settings, correlations per ranking, ceilings, baselines and every architecture."""
    correlations, baselines = {}, {}
    for ranking in RANKINGS:
        reference = ranking_scores(standalone, ranking)
        correlations[ranking] = {
            **rank_correlations(ranking_scores(supernet_results, ranking), reference, config.top_k),
            "seed_ceiling": seed_ceiling(standalone, ranking),
        }
        baselines[ranking] = {
            size: rank_correlations([entry[size] for entry in sizes], reference, config.top_k)
            for size in ("params", "macs")
        }
    by_resolution = {}
    for resolution in sorted({arch["resolution"] for arch in archs}):
        group = [i for i, arch in enumerate(archs) if arch["resolution"] == resolution]
        if len(group) >= 3:  # fewer: no ranking worth the name
            by_resolution[resolution] = {
                "n": len(group),
                **{
                    ranking: rank_correlations(
                        ranking_scores([supernet_results[i] for i in group], ranking),
                        ranking_scores([standalone[i] for i in group], ranking),
                        config.top_k,
                    )["kendall_tau"]
                    for ranking in RANKINGS
                },
            }
    # How far the supernet's accuracy sits from stand-alone training for architectures using each block type: a
    # type the shared weights serve badly shows as a larger gap than the others.
    types_used = [{block["type"] for stage in arch["stages"] for block in stage["blocks"]} for arch in archs]
    gap_by_block_type = {}
    for block_type in sorted(set().union(*types_used)):
        group = [i for i, types in enumerate(types_used) if block_type in types]
        if group:
            gaps = [supernet_results[i]["accuracy"] - standalone[i]["accuracy"] for i in group]
            gap_by_block_type[block_type] = {"n": len(group), "mean_accuracy_gap": statistics.mean(gaps)}
    return {
        "supernet": str(config.supernet),
        "n": config.n,
        "sample_seed": config.sample_seed,
        "top_k": config.top_k,
        "fitness": "validation accuracy with inherited supernet weights, ties broken by the lower validation loss",
        "data": {**asdict(data_config), "train_examples": len(data.train), "validation_examples": len(data.validation)},
        "standalone_recipe": asdict(config.standalone),
        "standalone_seeds": list(config.seeds),
        "correlations": correlations,
        "size_baselines": baselines,
        "kendall_tau_by_resolution": by_resolution,
        "accuracy_gap_by_block_type": gap_by_block_type,
        "architectures": [
            {
                "encoding": space.encode(arch),
                "hash": space.hash(arch),
                "resolution": arch["resolution"],
                **size,
                "supernet": supernet_result,
                "standalone": standalone_result,
            }
            for arch, supernet_result, standalone_result, size in zip(archs, supernet_results, standalone, sizes)
        ],
        "versions": {"torch": torch.__version__},
    }


# Report files -------------------------------------------------------------------------------------------------


def write_report(report: dict, output_dir: Path) -> None:
    """`rank_check.json`, `rank_check.md` and `rank_check.png` in `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "rank_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (output_dir / "rank_check.md").write_text(render_markdown(report))
    plot_scatter(report, output_dir / "rank_check.png")
    logger.info(f"report written to {output_dir}/rank_check.{{json,md,png}}")


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def render_markdown(report: dict) -> str:
    """The correlation table, the size baselines and the per-architecture table, as markdown."""
    lines = _summary_lines(report) + _correlation_lines(report) + _size_baseline_lines(report)
    if report.get("kendall_tau_by_resolution"):
        lines += _resolution_lines(report["kendall_tau_by_resolution"])
    if report.get("accuracy_gap_by_block_type"):
        lines += _block_type_gap_lines(report["accuracy_gap_by_block_type"])
    if "seconds" in report:
        lines += _time_lines(report["seconds"])
    lines += _architecture_lines(report["architectures"])
    lines.append("")
    return "\n".join(lines)


def _summary_lines(report: dict) -> list[str]:
    recipe, data = report["standalone_recipe"], report["data"]
    return [
        "# Rank check",
        "",
        (
            f"Supernet `{report['supernet']}`, {report['n']} architectures (sample seed {report['sample_seed']}). "
            f"Supernet fitness: {report['fitness']}. Stand-alone: trained from scratch ({recipe['steps']} steps, batch "
            f"{recipe['batch_size']}, AdamW lr {recipe['lr']}, weight decay {recipe['weight_decay']}, "
            f"{recipe['warmup_steps']} warm-up steps, cosine), mean of seeds {report['standalone_seeds']}. Data: "
            f"{data['source']}, {data['train_examples']} train / {data['validation_examples']} validation images "
            "(validation split only; the test split is not read)."
        ),
    ]


def _correlation_lines(report: dict) -> list[str]:
    lines = [
        "",
        f"| ranking by | Kendall tau | Spearman rho | top-{report['top_k']} overlap | seed ceiling (tau) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for ranking, values in report["correlations"].items():
        lines.append(
            f"| {ranking} | {values['kendall_tau']:.2f} | {values['spearman_rho']:.2f} | "
            f"{values['top_k_overlap']:.2f} | {_number(values['seed_ceiling'])} |"
        )
    return lines


def _size_baseline_lines(report: dict) -> list[str]:
    lines = [
        "",
        "Size-only baselines (Kendall tau of the count against the stand-alone ranking):",
        "",
        "| ranking by | parameters | MACs |",
        "| --- | ---: | ---: |",
    ]
    for ranking, values in report["size_baselines"].items():
        lines.append(f"| {ranking} | {values['params']['kendall_tau']:.2f} | {values['macs']['kendall_tau']:.2f} |")
    return lines


def _resolution_lines(by_resolution: dict) -> list[str]:
    lines = [
        "",
        "Kendall tau within one input resolution (groups of at least 3 architectures):",
        "",
        "| resolution | architectures | " + " | ".join(RANKINGS) + " |",
        "| ---: | ---: | " + " | ".join("---:" for _ in RANKINGS) + " |",
    ]
    for resolution, values in by_resolution.items():
        taus = " | ".join(f"{values[ranking]:.2f}" for ranking in RANKINGS)
        lines.append(f"| {resolution} | {values['n']} | {taus} |")
    return lines


def _block_type_gap_lines(gap_by_block_type: dict) -> list[str]:
    lines = [
        "",
        "Supernet minus stand-alone validation accuracy, mean over the architectures that use each block type:",
        "",
        "| block type | architectures | mean accuracy gap |",
        "| --- | ---: | ---: |",
    ]
    for block_type, values in gap_by_block_type.items():
        lines.append(f"| {block_type} | {values['n']} | {values['mean_accuracy_gap']:+.3f} |")
    return lines


def _time_lines(seconds: dict) -> list[str]:
    return [
        "",
        (
            f"Time: supernet fitness {seconds['supernet']:.0f} s; stand-alone trainings {seconds['standalone']:.0f} s "
            f"wall clock, {seconds['standalone_cpu']:.0f} s CPU (cached results cost nothing)."
        ),
    ]


def _architecture_lines(architectures: list[dict]) -> list[str]:
    """One row per architecture, best supernet fitness first."""
    lines = [
        "",
        "| # | architecture | params | MACs | supernet acc. | supernet loss | stand-alone acc. | stand-alone loss |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    fitness = ranking_scores([entry["supernet"] for entry in architectures], "fitness")
    order = sorted(range(len(fitness)), key=lambda index: -fitness[index])
    for position, index in enumerate(order, start=1):
        entry = architectures[index]
        per_seed = [r["accuracy"] for r in entry["standalone"]["per_seed"]]
        spread = f" ± {statistics.stdev(per_seed):.3f}" if len(per_seed) > 1 else ""
        lines.append(
            f"| {position} | `{entry['encoding']}` | {entry['params']:,} | {entry['macs']:,} | "
            f"{entry['supernet']['accuracy']:.3f} | {entry['supernet']['loss']:.3f} | "
            f"{entry['standalone']['accuracy']:.3f}{spread} | {entry['standalone']['loss']:.3f} |"
        )
    return lines


def plot_scatter(report: dict, path: Path) -> None:
    """Supernet against stand-alone accuracy and loss, one point per architecture (coloured by resolution, with
    the stand-alone seeds' standard deviation as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = report["architectures"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for axis, metric in zip(axes, ("accuracy", "loss")):
        for resolution in sorted({entry["resolution"] for entry in archs}):
            chosen = [entry for entry in archs if entry["resolution"] == resolution]
            spread = [
                statistics.stdev(r[metric] for r in entry["standalone"]["per_seed"])
                if len(entry["standalone"]["per_seed"]) > 1
                else 0.0
                for entry in chosen
            ]
            axis.errorbar(
                [entry["supernet"][metric] for entry in chosen],
                [entry["standalone"][metric] for entry in chosen],
                yerr=spread,
                fmt="o",
                capsize=2,
                label=f"{resolution} px",
            )
        values = report["correlations"][metric]
        axis.set_title(f"{metric}: Kendall tau {values['kendall_tau']:.2f}, Spearman rho {values['spearman_rho']:.2f}")
        axis.set_xlabel(f"supernet validation {metric} (inherited weights)")
        axis.set_ylabel(f"stand-alone validation {metric} (mean of seeds)")
        axis.legend(title="resolution")
        axis.grid(alpha=0.3)
    fitness = report["correlations"]["fitness"]
    figure.suptitle(
        f"Rank check, {report['n']} architectures: fitness tau {fitness['kendall_tau']:.2f} "
        f"(seed ceiling {_number(fitness['seed_ceiling']) or 'n/a'})"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# Command line -------------------------------------------------------------------------------------------------


def parse_config(argv: list[str] | None = None) -> RankCheckConfig:
    """The `RankCheckConfig` of a command line (YAML + dotted overrides; a file's `rank_check:` section when it has
    one), validated (errors exit with a message)."""
    from evonets.engine.cli import parse_config as parse

    return parse(RankCheckConfig, argv, "search/rank_check.py", __doc__, section=SECTION)


def main(argv: list[str] | None = None) -> dict:
    """The command line: parse, run, print the markdown report. Invalid input (a bad field, a supernet folder that
    is not one, a data split that differs from the supernet's) exits with the message, before any training."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = parse_config(argv)
    with logging_redirect_tqdm():
        try:
            report = run(config)
        except ValueError as error:
            raise SystemExit(f"error: {error}") from error
    print(render_markdown(report))
    return report


__all__ = [
    "RankCheckConfig",
    "build_report",
    "cache_path",
    "load_space_config",
    "main",
    "parse_config",
    "plot_scatter",
    "render_markdown",
    "resolve_data_config",
    "run",
    "write_report",
]


def cli() -> None:
    """The console script's entry: `main`, exiting with status 0 once it succeeds (the object `main` returns is for
    Python callers; returned to the script's `sys.exit` it would print and exit 1)."""
    main()


if __name__ == "__main__":
    cli()
