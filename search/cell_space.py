"""The NAS-Bench-201 cell as a search space: genes as data, architectures in the benchmark's own string.

A NAS-Bench-201 cell is a small DAG of `nodes` nodes (4 in the benchmark): every node `i > 0` sums one operation
applied to each earlier node `j < i`, so a cell has `nodes * (nodes - 1) / 2` edges (6), each one of the
`operations` (5: 15,625 cells). An **architecture** is one operation per edge, as a JSON-able dict keyed by gene name:

    {"node1.from0": "nor_conv_3x3", "node2.from0": "skip_connect", "node2.from1": "nor_conv_1x1", ...}

and its encoding is the benchmark's `arch` string, node by node, `~j` naming the input node of each edge:

    |nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|

so an archive record's `encoding` is the key of the benchmark table, and no cell is described a second way. The space
offers the interface the search relies on, as `evonets.models.search_space.SearchSpace` does for the supernet: `genes`
(one unordered `Gene` per edge, a nevergrad `Choice`), `from_genes` / `to_genes`, `validate`, `encode` / `decode`,
`hash`, `sample`, `smallest` / `largest`, `cardinality` and `identity` (what the run folder pins).
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from typing import Any

from evonets.models.search_space import Gene

NB201_OPERATIONS = ("none", "skip_connect", "avg_pool_3x3", "nor_conv_1x1", "nor_conv_3x3")
"""NAS-Bench-201's operations, cheapest first (so `smallest` and `largest` are the cheapest and costliest cells)."""

_EDGE = re.compile(r"([A-Za-z0-9_]+)~(\d+)")


class CellSearchSpace:
    """Cells of `nodes` nodes with one of `operations` on every edge (see the module docstring)."""

    def __init__(self, operations: tuple[str, ...] = NB201_OPERATIONS, nodes: int = 4):
        if len(operations) < 1 or len(set(operations)) != len(operations):
            raise ValueError(f"operations = {operations!r} is invalid: expected distinct operation names.")
        for name in operations:
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                raise ValueError(f"operation {name!r} is invalid: expected letters, digits and '_' (no '|', '~', '+').")
        if not isinstance(nodes, int) or nodes < 2:
            raise ValueError(f"nodes = {nodes!r} is invalid: expected an int >= 2.")
        self.operations = tuple(operations)
        self.nodes = nodes
        # (node, input node) of every edge, in the order of the encoding
        self.edges = [(node, source) for node in range(1, nodes) for source in range(node)]
        self._genes = tuple(Gene(self.gene_name(node, source), self.operations, False) for node, source in self.edges)
        self._names = tuple(gene.name for gene in self._genes)

    def __repr__(self) -> str:
        return f"CellSearchSpace({len(self.edges)} edges x {len(self.operations)} operations)"

    @staticmethod
    def gene_name(node: int, source: int) -> str:
        return f"node{node}.from{source}"

    @property
    def genes(self) -> list[Gene]:
        """One unordered gene per edge, in encoding order: operations have no order a mutation should follow."""
        return list(self._genes)

    def identity(self) -> dict:
        """What the cells of this space are: pinned in a run's `run.json`."""
        return {"kind": "cell", "nodes": self.nodes, "operations": list(self.operations)}

    def cardinality(self) -> int:
        return len(self.operations) ** len(self.edges)

    # Architectures ------------------------------------------------------------------------------------------

    def validate(self, arch: dict) -> dict:
        """The canonical architecture (a new dict in gene order); `ValueError` naming the gene, the bad value and the
        allowed values."""
        names = self._names
        if not isinstance(arch, dict) or arch.keys() != set(names):
            shown = sorted(arch) if isinstance(arch, dict) else arch
            raise ValueError(f"Architecture {shown!r} is invalid: expected one operation for each of {list(names)}.")
        for name in names:
            if arch[name] not in self.operations:
                raise ValueError(
                    f"Architecture gene {name} = {arch[name]!r} is invalid: expected one of {list(self.operations)}."
                )
        return {name: arch[name] for name in names}

    def from_genes(self, values: dict[str, Any]) -> dict:
        """The architecture of one value per gene (a nevergrad `Dict` parameter's `.value`)."""
        return self.validate(dict(values))

    def to_genes(self, arch: dict) -> dict[str, Any]:
        """One value per gene (e.g. to `suggest` a known cell): the architecture itself."""
        return self.validate(arch)

    def encode(self, arch: dict) -> str:
        """The benchmark's string of a cell, e.g. `|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|...|`."""
        arch = self.validate(arch)
        return "+".join(
            "|" + "|".join(f"{arch[self.gene_name(node, source)]}~{source}" for source in range(node)) + "|"
            for node in range(1, self.nodes)
        )

    def decode(self, encoding: str) -> dict:
        """The architecture of a benchmark string; `ValueError` for a string that is not a cell of this space."""
        expected = (
            f"a cell string of {self.nodes - 1} '+'-joined nodes, node i listing '|<operation>~<j>|' for j = 0..i-1, "
            f"with operations among {list(self.operations)}"
        )
        if not isinstance(encoding, str):
            raise TypeError(f"Cell {encoding!r} is invalid: expected {expected}.")
        parts = encoding.split("+")
        arch = {}
        if len(parts) == self.nodes - 1:
            for node, part in enumerate(parts, start=1):
                inputs = part.split("|")
                if len(inputs) != node + 2 or inputs[0] or inputs[-1]:
                    break
                for source, text in enumerate(inputs[1:-1]):
                    match = _EDGE.fullmatch(text)
                    if match is None or int(match.group(2)) != source:
                        break
                    arch[self.gene_name(node, source)] = match.group(1)
        if len(arch) != len(self.edges):
            raise ValueError(f"Cell {encoding!r} is invalid: expected {expected}.")
        return self.validate(arch)

    def hash(self, arch: dict) -> str:
        """A short stable hex id of the cell (12 hex digits of the SHA-256 of its encoding, as `SearchSpace.hash`)."""
        return hashlib.sha256(self.encode(arch).encode("utf-8")).hexdigest()[:12]

    def sample(self, rng: random.Random) -> dict:
        """A random cell: every edge uniform among the operations, drawn from `rng` only."""
        return {name: rng.choice(self.operations) for name in self._names}

    def smallest(self) -> dict:
        """Every edge the cheapest operation (the first)."""
        return dict.fromkeys(self._names, self.operations[0])

    def largest(self) -> dict:
        """Every edge the costliest operation (the last)."""
        return dict.fromkeys(self._names, self.operations[-1])

    def encodings(self) -> set[str]:
        """The encoding of every cell of the space (`cardinality()` strings: for spaces of table size)."""
        return {
            self.encode(dict(zip(self._names, operations)))
            for operations in itertools.product(self.operations, repeat=len(self._names))
        }


__all__ = ["NB201_OPERATIONS", "CellSearchSpace"]
