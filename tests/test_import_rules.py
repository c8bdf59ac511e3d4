"""The layering of docs/architecture.md, checked on every module's imports (lazy ones inside functions included).

Layers, bottom up; a layer imports only the layers below it:

1. `evonets.models`: the remote-code zone, copied into every saved model folder: nothing of this repository
   outside itself (relative imports between its files only).
2. the rest of `evonets` (`data`, `deploy`, `engine`): the models and one another.
3. `distill`, then `search`, then `hub_cards`: each imports the packages below it, and another pipeline only through
   its one public entry point: `search` uses `distill` (the package's `__init__`), `hub_cards` uses
   `search.run_folder` (the reader of a run folder) and nothing else of `search`.

Also checked: no import cycle between modules, no private name (`_x`) imported from another package, no `sys.path`
edits anywhere, and no module of a script folder (`python search/run.py` puts `search/` first on `sys.path`) that
would shadow a standard-library or installed module. The `[tool.importlinter]` contracts in `pyproject.toml` state
the layers a second time for `lint-imports`, which this file runs too.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("evonets", "distill", "search", "hub_cards")
SCRIPT_FOLDERS = ("distill", "search", "hub_cards", "bench", "examples")
# The pipelines and what each may import of the others (None: anything of that package; a set: only those modules).
PIPELINE_ENTRY_POINTS = {
    "distill": {"evonets": None},
    "search": {"evonets": None, "distill": {"distill"}},
    "hub_cards": {"evonets": None, "search": {"search.run_folder"}},
}
# The lower layers inside evonets: each may import the models and the ones listed.
EVONETS_LAYERS = {
    "evonets.models": set(),
    "evonets.data": {"evonets.models"},
    "evonets.deploy": {"evonets.models", "evonets.engine"},
    "evonets.engine": {"evonets.models", "evonets.data"},
}
# Names an ML user often has installed, so a script folder's module must not take them even where they are absent.
COMMON_TOP_LEVEL_NAMES = {"evaluate", "datasets", "transformers", "accelerate", "timm", "onnx", "optuna", "pymoo"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import statement of the module, relative ones
    resolved; `from package import submodule` counts as importing the submodule."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                found.append(
                    (submodule, None, node.lineno) if submodule in MODULES else (module, alias.name, node.lineno)
                )
    return [item for item in found if item[0].split(".")[0] in PACKAGES]


def _area(module: str) -> str:
    """The part of the layering a module belongs to: a pipeline package, or an evonets layer."""
    top = module.split(".")[0]
    if top != "evonets":
        return top
    for layer in EVONETS_LAYERS:
        if module == layer or module.startswith(layer + "."):
            return layer
    return "evonets"  # the package root: registers the Auto classes


def _violation(importer: str, imported: str) -> str | None:
    source, target = _area(importer), _area(imported)
    if source == target:
        return None
    if source in PIPELINE_ENTRY_POINTS:
        allowed = PIPELINE_ENTRY_POINTS[source].get(imported.split(".")[0], ...)
        if allowed is None or (allowed is not ... and imported in allowed):
            return None
        if allowed is ...:
            return f"{source} may not import {imported.split('.')[0]} (upward or sideways)"
        return f"{source} may import only {sorted(allowed)} of {imported.split('.')[0]}, not {imported}"
    if source == "evonets":
        return (
            None if target == "evonets.models" else f"the evonets package root imports only the models, not {imported}"
        )
    if target in PIPELINE_ENTRY_POINTS:
        return f"{source} is below the pipelines and may not import {imported}"
    if target == "evonets" or target not in EVONETS_LAYERS[source]:
        return f"{source} may import only {sorted(EVONETS_LAYERS[source]) or 'itself'}, not {imported}"
    return None


def test_every_import_follows_the_layers():
    problems = [
        f"{path.relative_to(REPO)}:{line}: {message}"
        for name, path in MODULES.items()
        for imported, _, line in _imports(name, path)
        if (message := _violation(name, imported))
    ]
    assert not problems, "\n".join(problems)


def test_the_models_import_each_other_relatively():
    """A saved model folder holds the models' files side by side: an absolute `evonets...` import would not resolve."""
    problems = []
    for name, path in MODULES.items():
        if _area(name) != "evonets.models":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            absolute = isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("evonets")
            absolute |= isinstance(node, ast.Import) and any(a.name.split(".")[0] in PACKAGES for a in node.names)
            if absolute:
                problems.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not problems, "absolute imports of this repository in the models: " + ", ".join(problems)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], [0]

    def visit(root: str) -> None:
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return components


def test_no_import_cycles():
    graph = {
        name: {imported for imported, _, _ in _imports(name, path) if imported in MODULES and imported != name}
        for name, path in MODULES.items()
    }
    assert not _cycles(graph)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_names_across_packages():
    problems = []
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for imported, attribute, line in _imports(name, path):
            private = [part for part in [*imported.split("."), attribute or ""] if part.startswith("_")]
            private = [part for part in private if not part.startswith("__")]
            home = imported.rpartition(".")[0] if attribute is None else imported
            if private and not (home == package or home.startswith(package + ".")):
                problems.append(f"{path.relative_to(REPO)}:{line}: {imported}{'.' + attribute if attribute else ''}")
    assert not problems, "private names imported from another package:\n" + "\n".join(problems)


def test_no_sys_path_edits():
    offenders = []
    for path in sorted(REPO.rglob("*.py")):
        if {".venv", ".git", "build"} & set(path.relative_to(REPO).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            target = node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
            if isinstance(node, ast.Assign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                target = next((item for item in targets if isinstance(item, ast.Attribute)), None)
            if isinstance(target, ast.Attribute) and target.attr == "path" and getattr(target.value, "id", "") == "sys":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, "sys.path edited in " + ", ".join(offenders)


@pytest.mark.parametrize("folder", SCRIPT_FOLDERS)
def test_script_folders_shadow_no_module(folder):
    """`python search/run.py` puts `search/` first on `sys.path`: its `evaluate.py` would become the HF `evaluate`
    library for every import in that process."""
    shadowing = []
    for path in sorted((REPO / folder).glob("*.py")):
        name = path.stem
        if name.startswith("__"):
            continue
        spec = importlib.util.find_spec(name) if name not in sys.modules else sys.modules[name].__spec__
        if name in sys.stdlib_module_names or name in COMMON_TOP_LEVEL_NAMES or spec is not None:
            shadowing.append(f"{name} ({getattr(spec, 'origin', 'standard library or a common ML package')})")
    assert not shadowing, f"modules of {folder}/ that shadow another module when run as a script: {shadowing}"


def test_lint_imports_contracts():
    """The layers again, as import-linter contracts (pyproject.toml), for those who run `lint-imports` themselves."""
    result = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
