"""Model cards of a search run: one per Pareto-front member, and one for the supernet.

`build_cards(run_dir)` writes

- for each front member, into its model folder `models/<hash>/` (which already holds what `from_pretrained` needs:
  config, safetensors, image processor, model code): `README.md`, a `huggingface_hub.ModelCard` rendered from
  `templates/model_card.md`, and `pareto.png`, the run's Pareto plot with this model starred;
- for the supernet, into `<run>/supernet_card/`: `README.md` (`templates/supernet_card.md`) and a copy of the run's
  `pareto.png` (the supernet's own folder belongs to the distillation and may serve several runs, so it is not
  written to).

Nothing is written outside the run folder: the model folders come from `RunFolder.model_dir` and the supernet card's
folder is checked the same way (`search.run_folder.inside`), so a `pareto.json` or a symlink pointing elsewhere is a
`ValueError` naming it.

Everything on a card is read from the run folder and what it points to, through the search's reader of run folders
(`search.run_folder`, the only part of `search` this package uses); what is missing is said to be missing. The
metrics go into the card's `model-index` metadata (`EvalResult`s), which the Hub shows and
`ModelCard.load(path).data.eval_results` parses back. Sections shared by both cards (the distillation recipe, the
rank check) are Jinja partials of `templates/` rendered first and passed in. The ONNX section reads what
`hub_cards.export` wrote (`onnx_export.json`); the export itself knows nothing of cards.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from search.run_folder import PLOT, RankCheck, RunFolder, find_rank_check, inside, load_run

from .export import ONNX_REPORT

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
DEFAULT_LICENSE = "apache-2.0"
SUPERNET_CARD_DIR = "supernet_card"
RUNTIMES = {"torch": "PyTorch eager", "onnxruntime": "ONNX Runtime"}
LOW_TAU = 0.5  # below this, the limitations say the front's order may not survive stand-alone training


# Formatting ---------------------------------------------------------------------------------------------------


def _count(value: float) -> str:
    return f"{round(value):,}"


def _ordinal(rank: int, superlative: str) -> str:
    """`the most accurate`, `the 2nd most accurate`, ... (`rank` counts from 1)."""
    if rank == 1:
        return f"the {superlative}"
    suffix = "th" if 10 <= rank % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(rank % 10, "th")
    return f"the {rank}{suffix} {superlative}"


def _choices(values) -> str:
    from evonets.models.search_space import format_number

    return ", ".join(format_number(value) for value in values)


# Facts from the run folder -------------------------------------------------------------------------------------


def describe_data(run: RunFolder) -> dict:
    """What the card says about the data: names for `model-index`, a sentence, sizes, licence."""
    config = run.data_config or {}
    source = config.get("source")
    sizes = None
    distilled_on = run.distill_summary["config"]["data"] if run.distill_summary else None
    if run.train_start and config == distilled_on:
        sizes = (run.train_start.get("train_examples"), run.train_start.get("validation_examples"))
    image_size = config.get("image_size")
    resized = f", resized to {image_size}×{image_size}" if image_size else ""
    if source == "digits":
        data = {
            "name": "scikit-learn digits",
            "type": "sklearn_digits",
            "config": None,
            "about": (
                "scikit-learn's bundled copy of the UCI handwritten digits (1,797 real 8×8 greyscale scans, 10 "
                f"classes), split into fixed stratified train / validation / test sets (seed {config.get('seed', 0)})"
                f"{resized}."
            ),
            "license": "CC BY 4.0 (UCI Machine Learning Repository, Optical Recognition of Handwritten Digits)",
            "scale_note": (
                "scikit-learn's digits are a development set: enough to show that the pipeline runs and learns, too "
                "small to compare with published accuracies."
            ),
        }
    elif source == "hub":
        data = {
            "name": config["path"] + (f" ({config['name']})" if config.get("name") else ""),
            "type": config["path"],
            "config": config.get("name"),
            "about": f"the Hub dataset `{config['path']}`{resized}.",
            "license": f"see the dataset card of `{config['path']}`",
            "scale_note": "Check that the validation split is large enough for the accuracy differences on the front.",
        }
    elif source:
        name = Path(config.get("path") or source).name
        data = {
            "name": name,
            "type": source,
            "config": None,
            "about": f"a local `{source}` dataset (`{name}`){resized}.",
            "license": "that of the local dataset",
            "scale_note": "Check that the validation split is large enough for the accuracy differences on the front.",
        }
    else:
        data = {
            "name": "the search's data",
            "type": "unknown",
            "config": None,
            "about": "not recorded in the run folder.",
            "license": "not recorded",
            "scale_note": "The data the fitness was measured on is not recorded in the run folder.",
        }
    if sizes and sizes[1]:
        data["about"] += f" The distillation trained on {sizes[0]:,} images; the search scored on {sizes[1]:,}."
    data["validation_size"] = f"{sizes[1]:,} validation images" if sizes and sizes[1] else "validation split"
    return data


def distillation_facts(run: RunFolder) -> dict | None:
    """The distillation recipe from `distill_summary.json`, its teacher and training log; None if not recorded."""
    summary = run.distill_summary
    if not summary:
        return None
    config = summary["config"]
    trainer, loss, sampling, data = config["trainer"], config["loss"], config["sampling"], config["data"]
    teacher = summary.get("teacher")
    if teacher is None:
        teacher_text = "none (cross-entropy and in-place distillation from the largest subnet only)"
    else:
        teacher_text = f"`{teacher}`"
        if run.teacher_config:
            architecture = (run.teacher_config.get("architectures") or [run.teacher_config.get("model_type")])[0]
            teacher_text = f"{architecture} (`{teacher}`)"
        if run.teacher_metrics:
            metrics = run.teacher_metrics
            teacher_text += (
                f", {metrics['parameters'] / 1e6:.2f} M parameters, validation accuracy "
                f"{metrics['best_val_accuracy']:.4f}"
            )
        teacher_text += (
            f"; its stages {config['teacher']['stages']} aligned with the student's {loss['student_stages']}"
        )
    terms = [f"cross-entropy ×{loss['ce_weight']:g}"]
    if teacher is not None:
        terms += [
            f"logit KD ×{loss['kd_weight']:g} (T = {loss['kd_temperature']:g})",
            f"spatial feature alignment ×{loss['spatial_weight']:g}",
            (
                f"frequency alignment ×{loss['frequency_weight']:g} ({loss['frequency_transform'].upper()}, cutoff "
                f"{loss['frequency_cutoff']:g}, low / high bands ×{loss['low_band_weight']:g} / "
                f"×{loss['high_band_weight']:g})"
            ),
        ]
    terms.append(f"in-place KD from the largest subnet ×{loss['inplace_kd_weight']:g}")
    start = run.train_start or {}
    return {
        "has_teacher": teacher is not None,
        "teacher": teacher_text,
        "data": f"`{data['source']}`" + (f" at {data['image_size']} px" if data.get("image_size") else ""),
        "steps": summary["steps"],
        "batch_size": trainer["batch_size"],
        "processes": start.get("processes"),
        "device": start.get("device", ""),
        "lr": f"{trainer['lr']:g}",
        "weight_decay": f"{trainer['weight_decay']:g}",
        "warmup_steps": trainer["warmup_steps"],
        "num_random": sampling["num_random"],
        "block_types": sampling["block_types"],
        "loss": terms,
        "parameters": _count(start["supernet_parameters"]) if start.get("supernet_parameters") else None,
        "val_accuracy": [f"{name} {value:.4f}" for name, value in summary.get("val_accuracy", {}).items()],
    }


def rank_check_facts(check: RankCheck | None) -> dict | None:
    """Kendall's tau and the rest of the fitness ranking of a `rank_check.json`; None if not measured."""
    if check is None:
        return None
    report = check.report
    fitness = report["correlations"]["fitness"]
    baselines = report.get("size_baselines", {}).get("fitness", {})

    def number(value) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    return {
        "file": check.path.name,
        "supernet": report.get("supernet"),
        "same_supernet": check.same_supernet,
        "n": report["n"],
        "steps": report["standalone_recipe"]["steps"],
        "seeds": len(report["standalone_seeds"]),
        "tau": number(fitness["kendall_tau"]),
        "tau_value": fitness["kendall_tau"],
        "low": fitness["kendall_tau"] < LOW_TAU,
        "rho": number(fitness["spearman_rho"]),
        "top_k": fitness["top_k"],
        "top_k_overlap": number(fitness["top_k_overlap"]),
        "seed_ceiling": number(fitness.get("seed_ceiling")),
        "macs_tau": number(baselines.get("macs", {}).get("kendall_tau")),
        "params_tau": number(baselines.get("params", {}).get("kendall_tau")),
    }


def search_facts(run: RunFolder) -> dict:
    from evonets.models.search_space import EvoNetSupernetConfig

    info, pareto = run.info, run.pareto
    fingerprint = info.get("latency_fingerprint", {})
    if info.get("latency_mode") == "lut":
        mode = (
            "predicted during the search by a per-block look-up table built on this device; every front member, "
            "this one included, was then timed for real and the front recomputed with the measured values."
        )
    else:
        mode = "every candidate was timed during the search, with the evaluations paused."
    space_size = None
    if run.supernet_dir is not None:
        space_size = _count(EvoNetSupernetConfig.from_pretrained(run.supernet_dir).search_space.cardinality())
    reference = info.get("reference_point", {})
    return {
        "run_name": run.name,
        "optimizer": info.get("optimizer"),
        "seed": info.get("seed"),
        "results": pareto.get("results"),
        "evaluated": pareto.get("evaluations"),
        "objectives": info.get("objectives", []),
        "constraints": info.get("constraints", []),
        "hypervolume": f"{pareto.get('hypervolume', 0.0):.4f}",
        "reference_point": ", ".join(f"{name} {value:.4g}" for name, value in reference.items()),
        "latency_mode": mode,
        "latency_note": "measured for every front member" if info.get("latency_mode") == "lut" else "measured",
        "front_size": len(run.front),
        "space_size": space_size,
        "device": f"{fingerprint.get('cpu', 'unknown CPU')}, {RUNTIMES.get(fingerprint.get('backend'), '?')}",
    }


def spread_text(latency: dict) -> str:
    """A measurement's spread for the card, with its stability flag: `4.2 %`, `31.0 % (unsteady)`, `n/a`."""
    if latency.get("spread") is None:
        return "n/a"
    return f"{100 * latency['spread']:.1f} %" + ("" if latency.get("stable", True) else " (unsteady)")


def latency_facts(run: RunFolder, member: dict, fingerprint: dict) -> dict:
    latency = member["latency"]
    settings = run.config.get("latency", {})
    backend = fingerprint.get("backend", "torch")
    runtime = RUNTIMES.get(backend, backend)
    if backend == "torch":
        runtime += f" (torch {fingerprint.get('torch')}, {fingerprint.get('scan_backend')} scan)"
    return {
        "ms": f"{latency['ms']:.3f}",
        "iqr_ms": f"{latency['iqr_ms']:.3f}" if latency.get("iqr_ms") is not None else "n/a",
        "spread": spread_text(latency),
        "runtime": runtime,
        "threads": fingerprint.get("num_threads"),
        "batch_size": fingerprint.get("batch_size"),
        "cpu": f"{fingerprint.get('cpu', 'unknown CPU')} ({fingerprint.get('cpu_capability', '?')})",
        "warmup": settings.get("warmup", "?"),
        "repeats": settings.get("repeats", "?"),
        "fingerprint": fingerprint,
        "fingerprint_key": latency.get("fingerprint", ""),
    }


def onnx_facts(model_dir: Path) -> dict | None:
    """What `hub_cards.export` wrote to `onnx_export.json`, formatted; None before an export."""
    path = model_dir / ONNX_REPORT
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    latency = report["latency"]
    return {
        "exporter": report["exporter"],
        "opset": report["opset"],
        "input_shape": "(batch, " + ", ".join(str(size) for size in report["input_shape"][1:]) + ")"
        if report["dynamic_batch"]
        else str(tuple(report["input_shape"])),
        "dynamic_batch": report["dynamic_batch"],
        "output_names": [f"`{name}`" for name in report["output_names"]],
        "checked_batch_sizes": report["checked_batch_sizes"],
        "max_abs_diff": f"{report['max_abs_diff']:.2g}",
        "atol": f"{report['atol']:g}",
        "ms": f"{latency['median_ms']:.3f}",
        "iqr_ms": f"{latency['iqr_ms']:.3f}",
        "spread": spread_text(latency),
        "runtime": f"ONNX Runtime {latency['fingerprint'].get('onnxruntime')}",
        "onnxruntime": latency["fingerprint"].get("onnxruntime"),
        "fingerprint_key": report["latency_fingerprint_key"],
    }


def stage_rows(config) -> list[dict]:
    """One row per stage of an `EvoNetConfig`: token grid, depth, width, and each block's mixer with the sizes its
    type uses (as `config.block_args` resolves them)."""
    from evonets.models.search_space import BLOCK_TYPE_GENES, format_number

    rows = []
    for stage in range(config.num_stages):
        grid = config.image_size // (config.patch_size * 2**stage)
        blocks = []
        for index in range(config.depths[stage]):
            args = config.block_args(stage, index)
            sizes = ", ".join(f"{gene} {format_number(args[gene])}" for gene in BLOCK_TYPE_GENES[args["block_type"]])
            blocks.append(f"{args['block_type']} ({sizes})")
        rows.append(
            {
                "index": config.stage_names[stage + 1],
                "tokens": f"{grid}×{grid}",
                "depth": config.depths[stage],
                "width": config.hidden_sizes[stage],
                "blocks": blocks,
            }
        )
    return rows


# Rendering ----------------------------------------------------------------------------------------------------


def _accuracy(data: dict, split: str, value: float, name: str) -> EvalResult:
    """An image-classification accuracy on `split` of the data `describe_data` names: one `model-index` result."""
    return EvalResult(
        task_type="image-classification",
        task_name="Image Classification",
        dataset_type=data["type"],
        dataset_name=data["name"],
        dataset_config=data["config"],
        dataset_split=split,
        metric_type="accuracy",
        metric_value=value,
        metric_name=name,
    )


def _partial(name: str, **context) -> str:
    """A shared section (`templates/_<name>.md`), rendered with Jinja like the cards themselves."""
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), keep_trailing_newline=True)
    return environment.get_template(f"_{name}.md").render(**context)


def _license_text(license: str) -> str:
    return "Apache-2.0, as the EvoNets code that produced them" if license == DEFAULT_LICENSE else license


def _shared_sections(run: RunFolder, rank: RankCheck | None) -> dict:
    return {
        "distillation_section": _partial(
            "distillation", recipe=distillation_facts(run), supernet=str(run.supernet_dir or "")
        ),
        "rank_check_section": _partial("rank_check", check=rank_check_facts(rank)),
    }


def model_card(
    run: RunFolder,
    member: dict,
    *,
    repo_id: str | None = None,
    supernet_repo_id: str | None = None,
    rank_check: RankCheck | None = None,
    license: str = DEFAULT_LICENSE,
) -> ModelCard:
    """The `ModelCard` of front member `member`; its snippets load `repo_id` (default: the model folder's path)."""
    from evonets import EvoNetConfig

    model_dir = run.model_dir(member)
    config = EvoNetConfig.from_pretrained(model_dir)
    saved = run.search_result(member) or {}
    fingerprint = saved.get("latency_fingerprint") or run.info.get("latency_fingerprint", {})
    data = describe_data(run)
    check = run.standalone_check_of(member)
    rank = rank_check_facts(rank_check)
    metrics = member["metrics"]
    title = repo_id.split("/")[-1] if repo_id else f"EvoNet {member['hash']}"

    block_types = sorted(
        {
            config.block_args(stage, index)["block_type"]
            for stage in range(config.num_stages)
            for index in range(config.depths[stage])
        }
    )
    card_data = _model_card_data(run, member, data, check, title, block_types, supernet_repo_id, license)
    by_accuracy = sorted(run.front, key=lambda other: -other["metrics"]["accuracy"])
    by_latency = sorted(run.front, key=lambda other: other["latency"]["ms"])
    supernet_ref = supernet_repo_id or (str(run.supernet_dir.resolve()) if run.supernet_dir else None)
    context = {
        "title": title,
        "hash": member["hash"],
        "encoding": member["encoding"],
        "repo": repo_id or str(model_dir.resolve()),
        "supernet_ref": supernet_ref,
        "resolution": config.image_size,
        "patch_size": config.patch_size,
        "size_multiple": config.patch_size * 2 ** (config.num_stages - 1),
        "num_labels": config.num_labels,
        "conv_kernel_size": config.conv_kernel_size,
        "stages": stage_rows(config),
        "backbone_features": json.dumps(config.stage_names[1:]),
        "accuracy": f"{metrics['accuracy']:.4f}",
        "loss": f"{metrics['loss']:.4f}" if metrics.get("loss") is not None else "n/a",
        "params": _count(metrics["params"]),
        "macs": _count(metrics["macs"]),
        "standalone": {key: f"{value:.4f}" for key, value in check.items() if isinstance(value, float)}
        if check and "test_accuracy" in check
        else None,
        "latency": latency_facts(run, member, fingerprint),
        "onnx": onnx_facts(model_dir),
        "search": search_facts(run),
        "position": {
            "by_accuracy": _ordinal(by_accuracy.index(member) + 1, "most accurate"),
            "by_latency": _ordinal(by_latency.index(member) + 1, "fastest"),
        },
        "data": data,
        "rank_check": rank,
        "has_ss2d": "ss2d" in block_types,
        "has_ssm": bool({"ss2d", "ssd"} & set(block_types)),
        "license_text": _license_text(license),
        **_shared_sections(run, rank_check),
    }
    return ModelCard.from_template(card_data, template_path=str(TEMPLATES / "model_card.md"), **context)


def _model_card_data(
    run: RunFolder,
    member: dict,
    data: dict,
    check: dict | None,
    title: str,
    block_types: list[str],
    supernet_repo_id: str | None,
    license: str,
) -> ModelCardData:
    """The model card's metadata: tags, licence, base model, and the accuracies as `model-index` results."""
    accuracy = member["metrics"]["accuracy"]
    eval_results = [_accuracy(data, "validation", accuracy, "Validation accuracy (supernet weights)")]
    if check is not None and "test_accuracy" in check:
        eval_results.append(_accuracy(data, "test", check["test_accuracy"], "Test accuracy"))
    return ModelCardData(
        model_name=title,
        license=license,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["evonets", "image-classification", "neural-architecture-search", "custom_code", *block_types],
        datasets=[data["type"]] if (run.data_config or {}).get("source") == "hub" else None,
        metrics=["accuracy"],
        base_model=supernet_repo_id,
        eval_results=eval_results,
    )


def supernet_card(
    run: RunFolder,
    *,
    repo_id: str | None = None,
    rank_check: RankCheck | None = None,
    license: str = DEFAULT_LICENSE,
) -> ModelCard:
    """The `ModelCard` of the run's supernet; its snippets load `repo_id` (default: the supernet folder's path)."""
    from safetensors import safe_open

    from evonets.models.search_space import EvoNetSupernetConfig

    if run.supernet_dir is None:
        raise ValueError(
            f"the supernet of {run.path} ({run.info.get('supernet')}) is not found: pass --supernet-dir PATH."
        )
    space_config = EvoNetSupernetConfig.from_pretrained(run.supernet_dir)
    space = space_config.search_space
    with safe_open(str(run.supernet_dir / "model.safetensors"), framework="pt") as weights:
        names = weights.keys()  # a safe_open handle is not iterable
        parameters = sum(math.prod(weights.get_slice(name).get_shape()) for name in names)
    data = describe_data(run)
    title = repo_id.split("/")[-1] if repo_id else "EvoNet supernet"
    eval_results = None
    if run.distill_summary and "largest" in run.distill_summary.get("val_accuracy", {}):
        eval_results = [
            _accuracy(
                data,
                "validation",
                run.distill_summary["val_accuracy"]["largest"],
                "Validation accuracy of the largest subnet (the supernet's default forward)",
            )
        ]
    card_data = ModelCardData(
        model_name=title,
        license=license,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["evonets", "supernet", "neural-architecture-search", "custom_code"],
        metrics=["accuracy"],
        eval_results=eval_results,
    )
    rank = rank_check_facts(rank_check)
    front = front_rows(run)
    context = {
        "title": title,
        "repo": repo_id or str(run.supernet_dir.resolve()),
        "space_size": _count(space.cardinality()),
        "resolutions": space_config.resolution_choices,
        "patch_size": space_config.patch_size,
        "num_labels": space_config.num_labels,
        "stages": space_rows(space_config),
        "parameters": _count(parameters),
        "front": front,
        "best": front[0] if front else {"encoding": space.encode(space.largest()), "hash": "largest"},
        "search": search_facts(run),
        "data": data,
        "rank_check": rank,
        "license_text": _license_text(license),
        **_shared_sections(run, rank_check),
    }
    return ModelCard.from_template(card_data, template_path=str(TEMPLATES / "supernet_card.md"), **context)


def space_rows(space_config) -> list[dict]:
    """One row per stage of a search space (an `EvoNetSupernetConfig`): the depth, width, block type and size
    choices."""
    from evonets import BLOCK_TYPES

    space = space_config.search_space
    rows = []
    for stage in range(space.num_stages):
        allowed = {kind for index in range(space.max_depth(stage)) for kind in space.block_type_choices(stage, index)}
        rows.append(
            {
                "index": f"stage{stage + 1}",
                "depth": _choices(space_config.depth_choices[stage]),
                "width": _choices(space_config.width_choices[stage]),
                "block_types": ", ".join(kind for kind in BLOCK_TYPES if kind in allowed),
                **{gene: _choices(space.size_choices(stage, gene)) for gene in ("mlp_ratio", "d_state", "ssm_ratio")},
                "num_heads": _choices(space.size_choices(stage, "num_heads")),
            }
        )
    return rows


def front_rows(run: RunFolder) -> list[dict]:
    """The run's front, most accurate first, formatted for the supernet card's table."""
    return [
        {
            "hash": member["hash"],
            "encoding": member["encoding"],
            "accuracy": f"{member['metrics']['accuracy']:.4f}",
            "latency_ms": f"{member['latency']['ms']:.3f}",
            "macs": _count(member["metrics"]["macs"]),
            "params": _count(member["metrics"]["params"]),
        }
        for member in sorted(run.front, key=lambda member: -member["metrics"]["accuracy"])
    ]


def plot_member(run: RunFolder, member: dict, path: str | Path) -> Path:
    """The run's Pareto plot (every result, the front, the constraints) with `member` starred, as PNG."""
    return run.plot(path, member)


def write_model_card(run: RunFolder, member: dict, **options) -> Path:
    """`README.md` and `pareto.png` into the member's model folder; returns the README's path."""
    model_dir = run.model_dir(member)
    plot_member(run, member, model_dir / PLOT)
    path = model_dir / "README.md"
    model_card(run, member, **options).save(path)
    return path


def write_supernet_card(run: RunFolder, **options) -> Path:
    """`README.md` and a copy of the run's `pareto.png` into `<run>/supernet_card/`; returns the README's path."""
    folder = inside(run.path, SUPERNET_CARD_DIR, f"the supernet card folder {SUPERNET_CARD_DIR!r}")
    folder.mkdir(exist_ok=True)
    if (run.path / PLOT).is_file():
        shutil.copyfile(run.path / PLOT, folder / PLOT)
    path = folder / "README.md"
    supernet_card(run, **options).save(path)
    return path


def build_cards(
    run_dir: str | Path,
    *,
    model: str | None = None,
    repo_id: str | None = None,
    supernet_dir: str | Path | None = None,
    supernet_repo_id: str | None = None,
    rank_check: str | Path | None = None,
    license: str = DEFAULT_LICENSE,
    with_supernet_card: bool = True,
) -> list[Path]:
    """Write the cards of run folder `run_dir` (see the module docstring) and return the README paths.

    Args:
        model: the hash of one front member (default: every member).
        repo_id: the Hub repository the card's snippets load (one model, so `model` must be given when the front has
            more than one member); default: the model folder's local path.
        supernet_dir: the supernet folder, when the one recorded in `run.json` has moved.
        supernet_repo_id: where the supernet is published: the cards' `base_model` and extraction snippet.
        rank_check: a `rank_check.json` (or its folder) to show; default: looked for beside the run and the supernet.
        license: the licence identifier of the weights on the Hub.
        with_supernet_card: also write `supernet_card/` (skipped with a warning when the supernet is not found).
    """
    run = load_run(run_dir, supernet_dir)
    if repo_id is not None and model is None and len(run.front) > 1:
        raise ValueError(
            f"--repo-id {repo_id!r} names one repository, but the front has {len(run.front)} members: give --model HASH "
            f"too (one of {[member['hash'] for member in run.front]})."
        )
    rank = find_rank_check(run, rank_check)
    members = [run.member(model)] if model is not None else run.front
    written = []
    for member in members:
        written.append(
            write_model_card(
                run, member, repo_id=repo_id, supernet_repo_id=supernet_repo_id, rank_check=rank, license=license
            )
        )
        logger.info("card of %s: %s", member["hash"], written[-1])
    if with_supernet_card:
        if run.supernet_dir is None:
            logger.warning(
                "no supernet card: the supernet %s is not found (--supernet-dir PATH)", run.info.get("supernet")
            )
        else:
            written.append(write_supernet_card(run, repo_id=supernet_repo_id, rank_check=rank, license=license))
    return written


__all__ = [
    "DEFAULT_LICENSE",
    "SUPERNET_CARD_DIR",
    "build_cards",
    "describe_data",
    "front_rows",
    "model_card",
    "plot_member",
    "space_rows",
    "stage_rows",
    "supernet_card",
    "write_model_card",
    "write_supernet_card",
]
