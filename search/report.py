"""The run folder's outputs, and the table printed at the end of a search.

- `pareto.json`: the run settings (objectives, constraints, reference point, latency fingerprint), the hypervolume,
  and every front member (encoding, hash, objectives, metrics, measured latency with its IQR, model folder);
- `pareto.csv`: the front as a table; `pareto.png`: every evaluation, the front highlighted, the constraint lines;
- `models/<hash>/`: each front member as a standalone `EvoNetForImageClassification` (`supernet.extract(arch)
  .save_pretrained`, with the image processor and `search_result.json`: encoding, metrics, latency + fingerprint);
  the hash is checked first (`run_folder.model_folder`), so a damaged archive cannot name a folder elsewhere;
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

from .run_folder import (
    ARCHIVE,
    MODELS,
    PARETO,
    PARETO_CSV,
    PLOT,
    SEARCH_RESULT,
    STANDALONE_CHECK,
    SUMMARY,
    model_folder,
    plot_front,
)

_UNITS = {"error": "{:.4f}", "latency_ms": "{:.3f}", "macs": "{:,.0f}", "params": "{:,.0f}"}


def front_rows(front: list[dict], objectives: list[str]) -> list[dict]:
    rows = []
    for record in front:
        row = {"hash": record["hash"], "accuracy": record["metrics"]["accuracy"]}
        row.update({name: record["objectives"][name] for name in objectives})
        row["latency_iqr_ms"] = record["latency"].get("iqr_ms")
        row["latency_spread"] = record["latency"].get("spread")
        row["latency_stable"] = record["latency"].get("stable")
        row["encoding"] = record["encoding"]
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], objectives: list[str], accuracies: tuple[str, ...] = ("accuracy",)) -> str:
    """The front as a markdown table; `accuracies`: the accuracy columns of `rows` to show (e.g. a report column's)."""
    header = ["hash", *accuracies, *objectives, "encoding"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["hash"], *(f"{row[name]:.4f}" for name in accuracies)]
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
    (folder / SEARCH_RESULT).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return folder


def standalone_check(folder: Path, data_config, space, expected_accuracy: float) -> dict:
    """Reload `folder` with `from_pretrained` and score it on validation (and test, when there is one), with the
    fitness's preprocessing: images loaded at the largest resolution of the search space `space`, resized to the
    model's (its architecture's, as `space.decode` reads it from the saved config's encoding)."""
    from evonets import EvoNetForImageClassification
    from evonets.data.classification import load_data, load_test_data
    from evonets.engine.evaluation import evaluate, tensor_batches
    from search.ranking import validation_tensors

    model = EvoNetForImageClassification.from_pretrained(folder).eval()
    resolution = space.decode(model.config.arch_encoding)["resolution"]
    data = load_data(data_config, max(space.config.resolution_choices), model.config.num_channels)
    pixel_values, labels = validation_tensors(data)
    validation = evaluate(lambda x: model(x).logits, tensor_batches(pixel_values, labels), resolution)
    check = {
        "folder": str(folder),
        "validation_accuracy": validation["accuracy"],
        "search_validation_accuracy": expected_accuracy,
        "matches_search": abs(validation["accuracy"] - expected_accuracy) < 1e-9,
    }
    test = load_test_data(data_config, data)
    if test is not None:
        test_batch = test[:]
        test_pixels, test_labels = test_batch["pixel_values"], test_batch["labels"]
        test_batches = tensor_batches(test_pixels, test_labels)
        check["test_accuracy"] = evaluate(lambda x: model(x).logits, test_batches, resolution)["accuracy"]
        train_labels = torch.tensor(data.train.labels)
        majority = int(torch.bincount(train_labels).argmax())
        check["test_majority_baseline"] = float((test_labels == majority).float().mean())
    return check


def write_outputs(result, config, supernet, supernet_dir: Path, info: dict, oracle, timing: dict) -> None:
    """Write the run folder's outputs (see the module docstring) for `result`, and print the front."""
    output_dir = Path(result.output_dir)
    objectives = list(config.search.objectives)
    for record in result.front:  # a hash read back from the archive becomes a folder name only once checked
        model_folder(output_dir, record["hash"], f"{output_dir / ARCHIVE}: result {record['index']} field 'hash'")
    for record in result.front:
        record["model_dir"] = f"{MODELS}/{record['hash']}"
        if config.export_front:
            export_model(supernet, Path(supernet_dir), record, output_dir / record["model_dir"], info)
    rows = front_rows(result.front, objectives)
    write_front(output_dir, result, info, timing, rows)
    plot_run(output_dir / PLOT, result, objectives, config.constraints, info["latency_mode"])
    check = None
    if result.front and config.export_front:
        best = _most_accurate(result.front)
        check = standalone_check(
            output_dir / best["model_dir"], config.fitness_data, supernet.search_space, best["metrics"]["accuracy"]
        )
        (output_dir / STANDALONE_CHECK).write_text(json.dumps(check, indent=2) + "\n")
    table = markdown_table(rows, objectives)
    lines = summary_lines(result, config, info, oracle, timing) + [
        "",
        f"## Pareto front ({len(result.front)} members, latency measured)",
        "",
        table,
        "",
        f"![Pareto front]({PLOT})",
    ]
    if check is not None:
        lines += ["", "## Stand-alone check", "", "```json", json.dumps(check, indent=2), "```"]
    (output_dir / SUMMARY).write_text("\n".join(lines) + "\n")
    _print_front(result, table, check)


def write_benchmark_outputs(result, config, info: dict, table, timing: dict) -> None:
    """The outputs of a benchmark run (`search.benchmark`): `pareto.json` / `.csv` / `.png` and `summary.md`, with the
    front chosen on the fitness column and scored with the report column (`table.report`); no model folders."""
    output_dir = Path(result.output_dir)
    objectives = list(config.search.objectives)
    report = table.report(result.front, objectives, info["reference_point"])
    rows = front_rows(result.front, objectives)
    accuracies = ("accuracy",)
    if report is not None:
        accuracies += ("report_accuracy",)
        for row in rows:
            row["report_accuracy"] = report["accuracy"][row["hash"]]
    write_front(output_dir, result, info, timing, rows, report)
    plot_run(output_dir / PLOT, result, objectives, config.constraints, info["latency_mode"])
    benchmark, seconds = config.benchmark, timing["search_seconds"]
    constraints = [str(constraint) for constraint in config.constraints]
    lines = [
        f"# Benchmark run `{result.output_dir}`",
        "",
        (
            f"- table `{benchmark.table}`: fitness `{benchmark.fitness_column}`, latency `{benchmark.latency_column}` "
            f"(the table's values; nothing is timed), report `{benchmark.report_column}`"
        ),
        (
            f"- optimizer `{info['optimizer']}`, seed {info['seed']}, {len(result.records)} results "
            f"({result.evaluations} looked up this session, the rest repeated cells or resumed)"
        ),
        f"- objectives {objectives}; constraints {constraints or 'none'}; reference point {info['reference_point']}",
        f"- hypervolume on the fitness column (what the search optimised): {result.hypervolume:.4f}",
    ]
    if report is not None:
        lines.append(
            f"- **hypervolume scored with the report column `{report['column']}`: {report['hypervolume']:.4f}** (the "
            f"front chosen on `{benchmark.fitness_column}`, each member's error taken from `{report['column']}`, "
            "which the search never sees)"
        )
    lines += [
        (
            f"- search loop {seconds:.1f} s ({timing['evaluated'] / max(seconds, 1e-9):.1f} look-ups/s; ask/tell and "
            f"bookkeeping {1000 * timing['ask_tell_seconds'] / max(1, timing['evaluated']):.2f} ms per look-up); "
            f"whole run {result.seconds:.1f} s"
        ),
        "",
        f"## Pareto front ({len(result.front)} members, chosen on `{benchmark.fitness_column}`)",
        "",
        markdown_table(rows, objectives, accuracies),
        "",
        f"![Pareto front]({PLOT})",
    ]
    (output_dir / SUMMARY).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:-2]))  # the summary but its plot link
    print(f"run folder: {result.output_dir} ({SUMMARY}, pareto.json/.csv/.png)")


def write_front(
    output_dir: Path, result, info: dict, timing: dict, rows: list[dict], report: dict | None = None
) -> None:
    """`pareto.json` (the run settings, hypervolume, counts, timing, front members and, for a benchmark run, the
    report column's scores) and `pareto.csv` (`rows`)."""
    pareto = {
        **info,
        "hypervolume": result.hypervolume,
        "evaluations": result.evaluations,
        "results": len(result.records),
        "timing": {**timing, "run_seconds": result.seconds},
        "front": result.front,
    }
    if report is not None:
        pareto["report"] = report
    (output_dir / PARETO).write_text(json.dumps(pareto, indent=2, sort_keys=True) + "\n")
    with open(output_dir / PARETO_CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["hash"])
        writer.writeheader()
        writer.writerows(rows)


def plot_run(path: Path, result, objectives: list[str], constraints, latency_mode: str) -> Path:
    """`pareto.png`: every result, the front highlighted, the constraint lines."""
    index_of = {id(record): i for i, record in enumerate(result.records)}
    source = "predicted by the look-up table, measured on the front" if latency_mode == "lut" else "measured"
    return plot_front(
        path,
        result.records,
        [index_of[id(record)] for record in result.front],
        objectives,
        constraints=constraints,
        title=f"{len(result.records)} results, hypervolume {result.hypervolume:.4f}; latency {source}",
    )


def summary_lines(result, config, info: dict, oracle, timing: dict) -> list[str]:
    """The head of `summary.md`: what was searched, with which latency, and how long it took."""
    objectives = list(config.search.objectives)
    constraints = [str(constraint) for constraint in config.constraints]
    seconds = timing["search_seconds"]
    evaluated = max(1, timing["evaluated"])
    return [
        f"# Search run `{result.output_dir}`",
        "",
        (
            f"- supernet: `{info['supernet']}`; optimizer `{info['optimizer']}`, seed {info['seed']}, "
            f"{len(result.records)} results ({result.evaluations} evaluated this session, the rest cached or resumed)"
        ),
        f"- objectives {objectives}; constraints {constraints or 'none'}; reference point {info['reference_point']}",
        (
            f"- latency: {info['latency_mode']} ({oracle.settings.backend}, batch {oracle.settings.batch_size}); "
            f"device `{info['latency_fingerprint'].get('cpu', '?')}`, fingerprint `{oracle.key}`"
        ),
        (
            f"- hypervolume {result.hypervolume:.4f}; search loop {seconds:.1f} s "
            f"({timing['evaluated'] / max(seconds, 1e-9):.2f} evaluations/s; ask/tell and bookkeeping "
            f"{1000 * timing['ask_tell_seconds'] / evaluated:.1f} ms per evaluation); whole run {result.seconds:.1f} s"
        ),
    ]


def _most_accurate(front: list[dict]) -> dict:
    return max(front, key=lambda record: record["metrics"]["accuracy"])


def _print_front(result, table: str, check: dict | None) -> None:
    """The front, its most accurate member and the stand-alone check, on the terminal."""
    front, records = result.front, result.records
    print(f"\nPareto front ({len(front)} of {len(records)} results; hypervolume {result.hypervolume:.4f}):")
    print(table)
    if front:
        best = _most_accurate(front)
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
    print(f"run folder: {result.output_dir} ({SUMMARY}, pareto.json/.csv/.png, {MODELS}/)")


__all__ = [
    "export_model",
    "front_rows",
    "markdown_table",
    "plot_run",
    "standalone_check",
    "summary_lines",
    "write_benchmark_outputs",
    "write_front",
    "write_outputs",
]
