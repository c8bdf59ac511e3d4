"""The run folder's outputs, and the table printed at the end of a search.

- `pareto.json`: the run settings (objectives, constraints, reference point, latency fingerprint), the hypervolume,
  and every front member (encoding, hash, objectives, metrics, measured latency with its IQR, model folder);
- `pareto.csv`: the front as a table; `pareto.png`: every evaluation, the front highlighted, the constraint lines;
- `models/<hash>/`: each front member as a standalone `EvoNetForImageClassification` (`supernet.extract(arch)
  .save_pretrained`, with the image processor and `search_result.json`: encoding, metrics, latency + fingerprint);
- `summary.md`: what was searched, how long it took, the front, the stand-alone check.

The stand-alone check reloads the most accurate front member from its folder with `from_pretrained` (no supernet),
re-scores it on the validation split (must equal the search's fitness) and, for the final report only, on the test
split when the data has one, beside the majority-class baseline.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from .pareto import plot_front

_UNITS = {"error": "{:.4f}", "latency_ms": "{:.3f}", "macs": "{:,.0f}", "params": "{:,.0f}"}


def front_rows(front: list[dict], objectives: list[str]) -> list[dict]:
    rows = []
    for record in front:
        row = {"hash": record["hash"], "accuracy": record["metrics"]["accuracy"]}
        row.update({name: record["objectives"][name] for name in objectives})
        row["latency_iqr_ms"] = record["latency"].get("iqr_ms")
        row["encoding"] = record["encoding"]
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], objectives: list[str]) -> str:
    header = ["hash", "accuracy", *objectives, "encoding"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["hash"], f"{row['accuracy']:.4f}"]
        cells += [_UNITS[name].format(row[name]) for name in objectives]
        cells.append(f"`{row['encoding']}`")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def export_model(supernet, supernet_dir: Path, record: dict, folder: Path, info: dict) -> Path:
    """Save a front member as a standalone model folder with its search results."""
    from evonets.models.image_processing_evonet import EvoNetImageProcessor

    arch = supernet.search_space.decode(record["encoding"])
    supernet.extract(arch).save_pretrained(folder)
    if (supernet_dir / "preprocessor_config.json").is_file():
        processor = EvoNetImageProcessor.from_pretrained(supernet_dir)
        processor.size = {"height": arch["resolution"], "width": arch["resolution"]}
        processor.save_pretrained(folder)
    result = {
        "encoding": record["encoding"],
        "hash": record["hash"],
        "metrics": record["metrics"],
        "objectives": record["objectives"],
        "latency": record["latency"],
        "latency_fingerprint": info["latency_fingerprint"],
        "supernet": info["supernet"],
        "fitness_split": "validation",
    }
    (folder / "search_result.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return folder


def standalone_check(folder: Path, data_config, image_size: int, expected_accuracy: float) -> dict:
    """Reload `folder` with `from_pretrained` and score it on validation (and test, when there is one), with the
    fitness's preprocessing: images loaded at `image_size` (the supernet's largest resolution), resized to the
    model's."""
    from evonets import EvoNetForImageClassification
    from evonets.data.classification import load_data
    from search.ranking import evaluate, validation_tensors

    model = EvoNetForImageClassification.from_pretrained(folder).eval()
    resolution = int(model.config.arch_encoding.split("-")[0][1:])  # the encoding starts with r<resolution>
    data = load_data(data_config, image_size, model.config.num_channels)
    pixel_values, labels = validation_tensors(data)
    validation = evaluate(lambda x: model(x).logits, pixel_values, labels, resolution)
    check = {
        "folder": str(folder),
        "validation_accuracy": validation["accuracy"],
        "search_validation_accuracy": expected_accuracy,
        "matches_search": abs(validation["accuracy"] - expected_accuracy) < 1e-9,
    }
    test = _test_split(data_config, data, model.config.num_channels)
    if test is not None:
        test_pixels, test_labels = test
        check["test_accuracy"] = evaluate(lambda x: model(x).logits, test_pixels, test_labels, resolution)["accuracy"]
        train_labels = torch.tensor(list(data.train.with_format(None)[data_config.label_column]))
        majority = int(torch.bincount(train_labels).argmax())
        check["test_majority_baseline"] = float((test_labels == majority).float().mean())
    return check


def _test_split(data_config, data, num_channels: int):
    """(pixel_values, labels) of the test split, for the final report; None when the data has none here."""
    if data_config.source != "digits":
        return None
    from evonets.data.classification import collate, make_transform
    from evonets.data.digits import load_digits_dataset

    test = load_digits_dataset(seed=data_config.seed)["test"]
    test = test.with_transform(make_transform(data.processor, data_config, num_channels))
    batch = collate([test[i] for i in range(len(test))])
    return batch["pixel_values"], batch["labels"]


def write_outputs(result, config, supernet, supernet_dir: Path, info: dict, oracle, timing: dict) -> None:
    output_dir = Path(result.output_dir)
    objectives = list(config.search.objectives)
    constraints = config.constraints
    front = result.front
    models_dir = output_dir / "models"
    for record in front:
        record["model_dir"] = f"models/{record['hash']}"
        if config.export_front:
            export_model(supernet, Path(supernet_dir), record, output_dir / record["model_dir"], info)

    pareto = {
        **info,
        "hypervolume": result.hypervolume,
        "evaluations": result.evaluations,
        "results": len(result.records),
        "timing": {**timing, "run_seconds": result.seconds},
        "front": front,
    }
    (output_dir / "pareto.json").write_text(json.dumps(pareto, indent=2, sort_keys=True) + "\n")
    rows = front_rows(front, objectives)
    with open(output_dir / "pareto.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["hash"])
        writer.writeheader()
        writer.writerows(rows)

    records = result.records
    points = [record["objectives"] for record in records]
    index_of = {id(record): i for i, record in enumerate(records)}
    x_axis = "latency_ms" if "latency_ms" in objectives else next(name for name in objectives if name != "error")
    plot_front(
        output_dir / "pareto.png",
        points,
        [index_of[id(record)] for record in front],
        [record["feasible"] for record in records],
        x=x_axis,
        y="error",
        constraints=constraints,
        title=(
            f"{len(records)} results, hypervolume {result.hypervolume:.4f}; latency "
            + ("predicted by the look-up table, measured on the front" if info["latency_mode"] == "lut" else "measured")
        ),
    )

    check = None
    if front and config.export_front:
        best = max(front, key=lambda record: record["metrics"]["accuracy"])
        check = standalone_check(
            output_dir / best["model_dir"],
            config.fitness_data,
            max(supernet.config.resolution_choices),
            best["metrics"]["accuracy"],
        )
        (output_dir / "standalone_check.json").write_text(json.dumps(check, indent=2) + "\n")

    table = markdown_table(rows, objectives)
    seconds = timing["search_seconds"]
    evaluated = max(1, timing["evaluated"])
    lines = [
        f"# Search run `{output_dir}`",
        "",
        (
            f"- supernet: `{info['supernet']}`; optimizer `{info['optimizer']}`, seed {info['seed']}, "
            f"{len(records)} results ({result.evaluations} evaluated this session, the rest cached or resumed)"
        ),
        (
            f"- objectives {objectives}; constraints {[str(c) for c in constraints] or 'none'}; "
            f"reference point {info['reference_point']}"
        ),
        (
            f"- latency: {info['latency_mode']} ({oracle.settings.backend}, batch {oracle.settings.batch_size}); "
            f"device `{info['latency_fingerprint'].get('cpu_model', '?')}`, fingerprint `{oracle.key}`"
        ),
        (
            f"- hypervolume {result.hypervolume:.4f}; search loop {seconds:.1f} s "
            f"({timing['evaluated'] / max(seconds, 1e-9):.2f} evaluations/s; ask/tell and bookkeeping "
            f"{1000 * timing['ask_tell_seconds'] / evaluated:.1f} ms per evaluation); whole run {result.seconds:.1f} s"
        ),
        "",
        f"## Pareto front ({len(front)} members, latency measured)",
        "",
        table,
        "",
        "![Pareto front](pareto.png)",
    ]
    if check is not None:
        lines += ["", "## Stand-alone check", "", "```json", json.dumps(check, indent=2), "```"]
    (output_dir / "summary.md").write_text("\n".join(lines) + "\n")

    print(f"\nPareto front ({len(front)} of {len(records)} results; hypervolume {result.hypervolume:.4f}):")
    print(table)
    if front:
        best = max(front, key=lambda record: record["metrics"]["accuracy"])
        print(f"best validation accuracy on the front: {best['metrics']['accuracy']:.4f} ({best['encoding']})")
    if check is not None:
        line = (
            f"stand-alone check of {check['folder']}: validation accuracy {check['validation_accuracy']:.4f} "
            f"(search said {check['search_validation_accuracy']:.4f})"
        )
        if "test_accuracy" in check:
            line += (
                f"; test accuracy {check['test_accuracy']:.4f} vs majority-class baseline "
                f"{check['test_majority_baseline']:.4f}"
            )
        print(line)
    print(f"run folder: {output_dir} (summary.md, pareto.json/.csv/.png, {models_dir.name}/)")


__all__ = ["export_model", "front_rows", "markdown_table", "standalone_check", "write_outputs"]
