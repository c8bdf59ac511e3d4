"""Optimizers on NAS-Bench-201: the report-scored hypervolume of what each finds, against random search and anchors.

    python bench/bench_optimizers.py                       # every optimizer x 10 seeds x budgets 50 ... 1000
    python bench/bench_optimizers.py --quick               # 2 seeds, budgets 50 and 100: a smoke test
    pip install -e ".[bench]"                              # the anchors: pymoo's NSGA-II, Optuna's NSGA-II and MO-TPE

**Problem.** The search's own tabular benchmark (`search/benchmark.py`, `configs/nb201.yaml`): the 15,625 cells of
NAS-Bench-201 (`search.cell_space.CellSearchSpace`), minimising (error on `cifar10_val_accuracy`, an independent
training; `pi5_onnx_latency_ms`), objectives told divided by the reference point (15 % error, 5 ms), as the search
tells them.

**Optimizers.** `DiscreteSMSEMOA` (ours, `search/pareto_evolution.py`: steady-state SMS-EMOA with categorical-aware
mutation and no repeated architecture), nevergrad's that `search.optimizer` offers, `random`, and the anchors.

**Driving.** Each optimizer proposes cells through ask / tell, one at a time (ask, look up, tell). The nevergrad
optimizers run through `search.evolution.Evolution`, the class a search run uses (parametrization from the space's
genes, the reference-point normalisation, the multi-objective reference tell), with `num_workers=1` and without the
pool and the run folder, which change nothing the optimizer sees. A repeated cell counts against the budget and is
told again without a new look-up, as `SearchLoop` does; the budget is candidates asked, as `search.budget` counts.
The anchors (optional `bench` dependencies) are driven by their own ask / tell interfaces over the same genes: Optuna
with one categorical parameter per edge; pymoo's NSGA-II with one integer per edge and the integer operators of
pymoo's documentation (SBX and polynomial mutation with rounding), population 50 as Optuna's default.

**Score.** Per run and budget, the front is chosen on the fitness column among the cells the run asked for, then each
member's error is taken from the report column (`cifar10_test_accuracy`, NATS-Bench's training, never shown to the
optimizer), and the hypervolume of those points inside the reference box is divided by the box (15 x 5):
`search.benchmark.report_hypervolume`, the score a search run's `summary.md` reports. For scale: the whole table's
fitness front scored the same way, and the front chosen on the report column itself (the ceiling).

**Budgets.** Optimizers that take the budget (nevergrad's) run once per budget. The others (Optuna, pymoo, and
`random`, which ignores it) run once to the largest budget and are scored on each prefix, which equals separate runs.

**Check.** The same optimizers, settings unchanged, on a second objective pair of the table: INT8 post-training-
quantised accuracy and Pi 5 energy (`--check-optimizers`; `none` skips it), so that nothing is tuned to one pair.

**Resume.** Every finished (optimizer, seed, budget) score is appended to `<work-dir>/<problem>.jsonl` and skipped on
a re-run, so an interrupted benchmark continues where it stopped, and a finished one only rewrites its section.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from _report import DOC_PATH, machine_description, write_section

from evonets.data.paths import shared_data_dir
from evonets.engine.archive import JsonlArchive
from evonets.engine.timer import Stopwatch
from search.benchmark import BenchmarkTable, accuracies, read_columns, report_hypervolume
from search.cell_space import CellSearchSpace
from search.evolution import COMMON_OPTIMIZERS, Evolution
from search.pareto import add_to_front

TABLE = shared_data_dir() / "nasbench201" / "nb201_cifar10_pi5.parquet"
OBJECTIVES = ["error", "latency_ms"]  # the cost column takes the latency's place in the check pair


@dataclass(frozen=True)
class Problem:
    """An objective pair of the table: the accuracy searched on, the cost, the accuracy reported, the reference."""

    name: str
    title: str
    fitness: str
    cost: str
    report: str
    reference_cost: float | None
    """The cost of the reference point; None: the cost column's quantile at the share of cells under 5 ms of
    latency, so that the reference box holds as much of the table as the main problem's."""


MAIN = Problem("nb201", "CIFAR-10 error x Pi 5 latency", "cifar10_val_accuracy", "pi5_onnx_latency_ms",
               "cifar10_test_accuracy", 5.0)  # fmt: skip
CHECK = Problem("int8-energy", "INT8 PTQ error x Pi 5 energy", "cifar10_int8_ptq_accuracy", "pi5_onnx_energy_mj",
                "cifar10_test_accuracy", None)  # fmt: skip
CHECK_OPTIMIZERS = ("DiscreteSMSEMOA", "DiscreteLenglerOnePlusOne", "random", "pymoo-NSGA2", "optuna-NSGA2")
BUDGETS = (50, 100, 200, 500, 1000)
NEVERGRAD = COMMON_OPTIMIZERS
HIGHLIGHT = "DiscreteSMSEMOA"
RANDOM_AT_1000 = 0.3106  # random search's median at 1,000 evaluations over 2,001 seeds (../shared/data/README.md)
GOAL_AT_1000 = 0.322  # the whole table's fitness front scores 0.3226
ANCHORS = ("pymoo-NSGA2", "optuna-NSGA2", "optuna-MOTPE")
PLOT_PATH = REPO / "docs" / "bench_optimizers.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", nargs="+", default=[*NEVERGRAD, *ANCHORS])
    parser.add_argument(
        "--check-optimizers",
        nargs="+",
        default=list(CHECK_OPTIMIZERS),
        help=f"Optimizers run on the second objective pair ({CHECK.title}), with unchanged settings; none: skip it.",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)), help="Seeds of every optimizer.")
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument(
        "--work-dir", type=Path, default=REPO / "bench" / "results" / "optimizers"
    )  # committed: a rerun resumes
    parser.add_argument("--quick", action="store_true", help="2 seeds, budgets 50 and 100.")
    parser.add_argument("--output", type=Path, default=DOC_PATH)
    parser.add_argument("--plot", type=Path, default=PLOT_PATH)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.budgets = [0, 1], [50, 100]
    if args.check_optimizers == ["none"]:
        args.check_optimizers = []
    args.measured = args.cached = 0  # (optimizer, seed, budget) scores measured by this call, and read back
    return args


@dataclass
class Tables:
    """One problem's columns by cell: fitness and report accuracies (fractions) and cost; its reference point."""

    space: CellSearchSpace
    fitness: dict[str, float]
    report: dict[str, float]
    latency: dict[str, float]
    reference: dict[str, float]

    @classmethod
    def load(cls, path: Path, problem: Problem) -> Tables:
        space = CellSearchSpace()
        benchmark = BenchmarkTable(space, str(path), problem.cost, problem.report)
        columns = {"benchmark.fitness_column": problem.fitness, "benchmark.latency_column": MAIN.cost}
        values = read_columns(path, columns, space)
        fitness = accuracies(values[problem.fitness], "benchmark.fitness_column", problem.fitness, 100.0)
        cost = problem.reference_cost
        if cost is None:
            inside = statistics.mean(value < MAIN.reference_cost for value in values[MAIN.cost].values())
            costs = sorted(benchmark.latency.values())
            cost = costs[round(inside * (len(costs) - 1))]
        return cls(space, fitness, benchmark.report_accuracy, benchmark.latency, {"error": 0.15, "latency_ms": cost})

    def told(self, cell: str) -> list[float]:
        """The objectives of a cell as the search tells them: (error, cost) divided by the reference point."""
        return [(1.0 - self.fitness[cell]) / self.reference["error"], self.latency[cell] / self.reference["latency_ms"]]

    def fitness_front(self, cells: list[str]) -> list[str]:
        """The distinct cells among `cells` that no other dominates on (fitness error, latency)."""
        distinct = list(dict.fromkeys(cells))
        points = [[1.0 - self.fitness[cell], self.latency[cell]] for cell in distinct]
        front: list[int] = []
        for index in range(len(distinct)):
            front = add_to_front(front, points, index)
        return [distinct[index] for index in front]

    def scores(self, cells: list[str]) -> dict:
        """The run's front chosen on the fitness column, scored with the report column (the benchmark's score) and
        with the fitness column (what the optimizer saw)."""
        front = self.fitness_front(cells)
        return {
            "report_hv": report_hypervolume(front, self.report, self.latency, OBJECTIVES, self.reference),
            "fitness_hv": report_hypervolume(front, self.fitness, self.latency, OBJECTIVES, self.reference),
            "distinct": len(set(cells)),
        }


# The optimizers: ask a cell (an architecture of the space), tell its objectives ---------------------------------


class SearchOptimizer:
    """A nevergrad optimizer through `search.evolution.Evolution`, as a search run drives it."""

    budget_aware = True

    def __init__(self, name: str, space: CellSearchSpace, budget: int, seed: int):
        self.evolution = Evolution(space, name, budget, seed, num_workers=1, num_objectives=len(OBJECTIVES))

    def ask(self) -> dict:
        self.candidate, arch = self.evolution.ask()
        return arch

    def tell(self, told: list[float]) -> None:
        self.evolution.tell(self.candidate, told, [])


class RandomSearch(SearchOptimizer):
    """nevergrad's `RandomSearch` (`search.optimizer: random`): it ignores the budget, so prefixes of one run count."""

    budget_aware = False


class OptunaOptimizer:
    """Optuna's NSGA-II or multi-objective TPE sampler, default settings, one categorical parameter per gene."""

    budget_aware = False

    def __init__(self, name: str, space: CellSearchSpace, budget: int, seed: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        samplers = {"optuna-NSGA2": optuna.samplers.NSGAIISampler, "optuna-MOTPE": optuna.samplers.TPESampler}
        self.genes = space.genes
        self.study = optuna.create_study(directions=["minimize"] * len(OBJECTIVES), sampler=samplers[name](seed=seed))

    def ask(self) -> dict:
        self.trial = self.study.ask()
        return {gene.name: self.trial.suggest_categorical(gene.name, list(gene.choices)) for gene in self.genes}

    def tell(self, told: list[float]) -> None:
        self.study.tell(self.trial, told)


class PymooNSGA2:
    """pymoo's NSGA-II over one integer per gene (the choice's index), with pymoo's integer operators, population 50;
    its generations are asked whole and handed out one cell at a time."""

    budget_aware = False

    def __init__(self, name: str, space: CellSearchSpace, budget: int, seed: int):
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.problem import Problem
        from pymoo.core.termination import NoTermination
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.mutation.pm import PM
        from pymoo.operators.repair.rounding import RoundingRepair
        from pymoo.operators.sampling.rnd import IntegerRandomSampling

        self.genes = space.genes
        upper = [len(gene.choices) - 1 for gene in self.genes]
        self.problem = Problem(n_var=len(self.genes), n_obj=len(OBJECTIVES), xl=0, xu=upper, vtype=int)
        self.algorithm = NSGA2(
            pop_size=50,
            sampling=IntegerRandomSampling(),
            crossover=SBX(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
            mutation=PM(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=True,
        )
        self.algorithm.setup(self.problem, termination=NoTermination(), seed=seed)  # the caller counts the budget
        self.population, self.values = None, []

    def ask(self) -> dict:
        if self.population is None:
            self.population, self.values = self.algorithm.ask(), []
        row = self.population.get("X")[len(self.values)]
        return {gene.name: gene.choices[round(index)] for gene, index in zip(self.genes, row)}

    def tell(self, told: list[float]) -> None:
        import numpy as np
        from pymoo.core.evaluator import Evaluator
        from pymoo.problems.static import StaticProblem

        self.values.append(told)
        if len(self.values) == len(self.population):
            Evaluator().eval(StaticProblem(self.problem, F=np.asarray(self.values)), self.population)
            self.algorithm.tell(infills=self.population)
            self.population = None


def make_optimizer(name: str) -> Callable:
    if name == "random":
        return RandomSearch
    if name.startswith("optuna-"):
        return OptunaOptimizer
    if name == "pymoo-NSGA2":
        return PymooNSGA2
    return SearchOptimizer


def run_cells(name: str, tables: Tables, budget: int, seed: int) -> tuple[list[str], float]:
    """The cells one run of `name` asks for, in order (repeats included), and its seconds of ask / tell."""
    optimizer = make_optimizer(name)(name, tables.space, budget, seed)
    watch, cells, told = Stopwatch(), [], {}
    for _ in range(budget):
        cell = tables.space.encode(optimizer.ask())
        told.setdefault(cell, tables.told(cell))  # a repeated cell is told again without a new look-up
        optimizer.tell(told[cell])
        cells.append(cell)
    return cells, watch.seconds


def measure(args, optimizers: list[str], tables: Tables, scores: JsonlArchive) -> list[dict]:
    """Every (optimizer, seed, budget) score: the ones in `scores`, then the missing ones, appended as they finish."""
    done = {(r["optimizer"], r["seed"], r["budget"]): r for r in scores.records()}
    args.cached += len(done)
    for seed in args.seeds:  # seed-major, so machine load drifts over every optimizer alike
        for name in optimizers:
            missing = [budget for budget in args.budgets if (name, seed, budget) not in done]
            if not missing:
                continue
            if make_optimizer(name).budget_aware:
                runs = {budget: run_cells(name, tables, budget, seed) for budget in missing}
            else:  # prefixes of one run to the largest budget
                cells, seconds = run_cells(name, tables, max(missing), seed)
                runs = {budget: (cells[:budget], seconds * budget / max(missing)) for budget in missing}
            for budget, (cells, seconds) in runs.items():
                args.measured += 1
                record = {"optimizer": name, "seed": seed, "budget": budget, "seconds": seconds}
                record.update(tables.scores(cells))
                scores.append(record)
                done[(name, seed, budget)] = record
            best = runs[max(runs)]
            print(f"{name} seed {seed}: report hypervolume {tables.scores(best[0])['report_hv']:.4f} at "
                  f"{max(runs)} ({best[1]:.1f} s)", flush=True)  # fmt: skip
    return [done[(name, seed, budget)] for name in optimizers for seed in args.seeds for budget in args.budgets]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    low, median, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, median, high


def summarise(records: list[dict], key: str) -> dict[tuple[str, int], tuple[float, float, float]]:
    groups: dict[tuple[str, int], list[float]] = {}
    for record in records:
        groups.setdefault((record["optimizer"], record["budget"]), []).append(record[key])
    return {group: quartiles(values) for group, values in groups.items()}


def plot(path: Path, args, report: dict, table_scores: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    palette = plt.get_cmap("tab20").colors  # dark shades first: more optimizers than the default cycle's 10 colours
    for index, name in enumerate(args.optimizers):
        low, median, high = zip(*(report[(name, budget)] for budget in args.budgets))
        style = {"lw": 2.4, "zorder": 3} if name == HIGHLIGHT else {"lw": 1.2, "ls": "--" if name in ANCHORS else "-"}
        color = palette[(2 * index) % 20 + (2 * index) // 20]
        line = axes.plot(args.budgets, median, marker="o", ms=3, label=name, color=color, **style)[0]
        axes.fill_between(args.budgets, low, high, color=line.get_color(), alpha=0.12)
    axes.axhline(table_scores["fitness_front"], c="black", lw=1, ls=":", label="whole table's fitness front")
    axes.axhline(table_scores["report_front"], c="grey", lw=1, ls="-.", label="ceiling (front on the report column)")
    axes.set_xscale("log")
    axes.set_xticks(args.budgets, [str(budget) for budget in args.budgets])
    axes.minorticks_off()
    axes.set_xlabel("evaluations (candidates asked)")
    axes.set_ylabel("report-scored hypervolume (normalised)")
    axes.set_title(f"NAS-Bench-201, {MAIN.title}: median and IQR of {len(args.seeds)} seeds", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def table_scores(tables: Tables) -> dict:
    """For scale: the whole table's fitness front scored on the report column, and the front chosen on the report
    column itself (the ceiling)."""
    report_front = Tables(tables.space, tables.report, tables.report, tables.latency, tables.reference)
    fronts = {"fitness_front": tables.fitness_front(list(tables.fitness)), "report_front": report_front.fitness_front(
        list(tables.report))}  # fmt: skip
    scores = {
        name: report_hypervolume(front, tables.report, tables.latency, OBJECTIVES, tables.reference)
        for name, front in fronts.items()
    }
    return {**scores, "fitness_front_size": len(fronts["fitness_front"])}


def main_table(args, report: dict, distinct: dict, seconds: dict, scale: dict) -> list[str]:
    budgets = args.budgets
    lines = [
        "| optimizer | " + " | ".join(str(budget) for budget in budgets) + " | distinct cells at "
        f"{budgets[-1]} (median) | ask/tell s per run at {budgets[-1]} (median) |",
        "|---|" + "---|" * (len(budgets) + 2),
    ]
    for name in args.optimizers:
        cells = [
            f"**{median:.4f}** [{low:.4f}, {high:.4f}]" for low, median, high in (report[(name, b)] for b in budgets)
        ]
        last = (name, budgets[-1])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {distinct[last][1]:.0f} | {seconds[last][1]:.1f} |")
    return lines + [
        (
            f"| *whole table's fitness front* | {scale['fitness_front']:.4f} (all 15,625 cells, "
            f"{scale['fitness_front_size']} on the front) |"
        ),
        f"| *ceiling: front chosen on the report column* | {scale['report_front']:.4f} |",
    ]


def median_table(optimizers: list[str], budgets: list[int], *columns: tuple[str, dict]) -> list[str]:
    """Medians per optimizer and budget, one group of budget columns per (label, summary) of `columns`."""
    header = [f"{label} {budget}".strip() for label, _ in columns for budget in budgets]
    lines = ["| optimizer | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for name in optimizers:
        cells = [f"{summary[(name, budget)][1]:.4f}" for _, summary in columns for budget in budgets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def goal_lines(args, report: dict) -> list[str]:
    """The issue's goals for `HIGHLIGHT`, checked on this run's medians (a goal whose optimizers or budgets were not
    run is left out)."""
    ours, budgets = HIGHLIGHT, args.budgets

    def median(name: str, budget: int) -> float:
        return report[(name, budget)][1]

    def iqr(name: str, budget: int) -> float:
        return report[(name, budget)][2] - report[(name, budget)][0]

    def verdict(met: bool) -> str:
        return "met" if met else "**not met**"

    if ours not in args.optimizers:
        return []
    lines = [f"Goals of `{ours}` (medians of this run):", ""]
    if 200 in budgets:
        value = median(ours, 200)
        lines.append(
            f"- random search's 1,000-evaluation hypervolume ({RANDOM_AT_1000}, median of 2,001 seeds) within 200 "
            f"evaluations: {value:.4f}, {verdict(value >= RANDOM_AT_1000)}"
        )
    if 1000 in budgets:
        value = median(ours, 1000)
        lines.append(f"- >= {GOAL_AT_1000} at 1,000 evaluations: {value:.4f}, {verdict(value >= GOAL_AT_1000)}")
    if "optuna-NSGA2" in args.optimizers:
        for budget in (budget for budget in (100, 200) if budget in budgets):
            gap = median(ours, budget) - median("optuna-NSGA2", budget)
            spread = max(iqr(ours, budget), iqr("optuna-NSGA2", budget))
            lines.append(
                f"- beats Optuna's NSGA-II at {budget} by more than their IQR: +{gap:.4f} against an IQR of up to "
                f"{spread:.4f}, {verdict(gap > spread)}"
            )
        below = [budget for budget in budgets if median(ours, budget) < median("optuna-NSGA2", budget)]
        lines.append(f"- never below Optuna's NSGA-II: below at {below or 'no budget'}, {verdict(not below)}")
    for anchor in ("pymoo-NSGA2", "optuna-MOTPE"):
        if anchor in args.optimizers:
            behind = [budget for budget in budgets if median(ours, budget) <= median(anchor, budget)]
            lines.append(
                f"- beats {anchor} at every budget: not above it at {behind or 'no budget'}, {verdict(not behind)}"
            )
    return lines


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    machine, watch = machine_description(), Stopwatch()
    tables = Tables.load(args.table, MAIN)
    scale = table_scores(tables)
    records = measure(args, args.optimizers, tables, JsonlArchive(args.work_dir / f"{MAIN.name}.jsonl"))
    report, fitness = summarise(records, "report_hv"), summarise(records, "fitness_hv")
    distinct, seconds = summarise(records, "distinct"), summarise(records, "seconds")
    plot(args.plot, args, report, scale)
    lines = [
        (
            f"Machine: {machine}. `python bench/bench_optimizers.py`: {args.measured} scores measured by this call "
            f"({watch.seconds / 60:.1f} min), {args.cached} read back from earlier calls on this machine "
            f"(`{os.path.relpath(args.work_dir, REPO)}`); table `{args.table.name}`; seeds {args.seeds}."
        ),
        "",
        (
            f"**{MAIN.title}**, reference point (15 % error, {MAIN.reference_cost:g} ms). Report-scored hypervolume, "
            f"normalised (front chosen on `{MAIN.fitness}` among the cells a run asked for, scored with "
            f"`{MAIN.report}`): **median** [IQR] over seeds, by budget (candidates asked)."
        ),
        "",
        *main_table(args, report, distinct, seconds, scale),
        "",
        *goal_lines(args, report),
        "",
        "What the optimizers saw (the same fronts scored on the fitness column they were told), median:",
        "",
        *median_table(args.optimizers, args.budgets, ("", fitness)),
        "",
        f"![hypervolume vs evaluations]({os.path.relpath(args.plot, args.output.parent)})",
    ]
    if args.check_optimizers:
        check = Tables.load(args.table, CHECK)
        check_scale = table_scores(check)
        front = check.fitness_front(list(check.fitness))
        seen_scale = report_hypervolume(front, check.fitness, check.latency, OBJECTIVES, check.reference)
        records = measure(args, args.check_optimizers, check, JsonlArchive(args.work_dir / f"{CHECK.name}.jsonl"))
        lines += [
            "",
            (
                f"**Check: a second objective pair, {CHECK.title}**, with every optimizer's settings unchanged: search "
                f"on `{CHECK.fitness}` and `{CHECK.cost}`, reference (15 % error, {check.reference['latency_ms']:.3f} "
                f"mJ: the energy quantile at the share of cells under {MAIN.reference_cost:g} ms). Medians of the "
                f"fitness-scored hypervolume (what the optimizer saw; whole table's front "
                f"{seen_scale:.4f}) "
                f"and of the front scored with `{CHECK.report}` (whole table's fitness front "
                f"{check_scale['fitness_front']:.4f}):"
            ),
            "",
            *median_table(
                args.check_optimizers,
                args.budgets,
                ("fitness", summarise(records, "fitness_hv")),
                ("report", summarise(records, "report_hv")),
            ),
        ]
    markdown = "\n".join(lines)
    print(markdown)
    write_section("bench_optimizers", "Optimizers on NAS-Bench-201", markdown, args.output)
    return markdown


if __name__ == "__main__":
    main()
