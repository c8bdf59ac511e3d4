"""The EvoNet search space: the genes as data (`EvoNetSupernetConfig`) and the architectures they span (`SearchSpace`).

An **architecture** is one choice per gene, as a JSON-able dict:

```python
{
    "resolution": 224,
    "stages": [
        {"depth": 2, "width": 48, "blocks": [
            {"type": "ss2d", "mlp_ratio": 4.0, "d_state": 16, "ssm_ratio": 2.0},
            {"type": "conv", "mlp_ratio": 3.0},
        ]},
        ...
    ],
}
```

A stage keeps the first `depth` of its block positions, and a block carries only the sizes its type uses
(`BLOCK_TYPE_GENES`): genes of dropped blocks and sizes a block type ignores do not change the network, so the
canonical form (`SearchSpace.validate`) leaves them out and every distinct network has exactly one encoding:

    r224-s0:d2w48[ss2d.m4.n16.e2,conv.m3]-s1:d1w96[attention.m4.h2]-...

(`r` resolution; per stage `s<i>:` depth `d`, width `w`; per block its type, then `m` mlp_ratio, `n` d_state,
`e` ssm_ratio, `h` num_heads). The search, the archive, the model cards and the extracted checkpoints
(`EvoNetConfig.arch_encoding`) all carry this string or its short hash; `SearchSpace.to_config` turns an
architecture into the `EvoNetConfig` of the standalone network.

For an optimizer, `SearchSpace.genes` lists every gene in a fixed order with its choices and whether they are
ordered, so a nevergrad parametrization is one line, and `SearchSpace.from_genes` maps its value back:

```python
>>> parametrization = ng.p.Dict(
...     **{g.name: (ng.p.TransitionChoice if g.ordered else ng.p.Choice)(g.choices) for g in space.genes}
... )
>>> arch = space.from_genes(candidate.value)
```
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass
from typing import Any

from .configuration_evonet import BLOCK_TYPES, EvoNetConfig, EvoNetNetworkConfig

# The per-block sizes each block type uses (every block also has an MLP, hence mlp_ratio everywhere). A block's
# architecture entry holds exactly these; the other sizes would not change the network.
BLOCK_TYPE_GENES: dict[str, tuple[str, ...]] = {
    "ss2d": ("mlp_ratio", "d_state", "ssm_ratio"),
    "ssd": ("mlp_ratio", "d_state", "ssm_ratio", "num_heads"),
    "attention": ("mlp_ratio", "num_heads"),
    "conv": ("mlp_ratio",),
}
BLOCK_SIZE_GENES = ("mlp_ratio", "d_state", "ssm_ratio", "num_heads")

# One letter per size in the string encoding, in encoding order.
_LETTERS = {"mlp_ratio": "m", "d_state": "n", "ssm_ratio": "e", "num_heads": "h"}
_GENES_OF_LETTER = {letter: gene for gene, letter in _LETTERS.items()}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

# The fields an architecture does not choose: copied as they are into every `EvoNetConfig` of the space.


class EvoNetSupernetConfig(EvoNetNetworkConfig):
    r"""
    The search space of an [`EvoNetSupernet`]: per gene, its choices. `config.search_space` samples, validates,
    encodes and converts architectures (see [`SearchSpace`]).

    Per-stage fields accept one list for every stage (`mlp_ratio_choices=[2.0, 4.0]`) or one list per stage
    (`[[2.0], [2.0, 4.0], ...]`); `block_type_choices` also accepts one list per block position of a stage. They are
    stored expanded (per stage, and per position for block types), which is what `config.json` shows. Ordered
    choices are stored sorted, so the first is the smallest and the last the largest.

    Args:
        depth_choices (`list[list[int]]`): per stage, the allowed numbers of blocks; a stage of depth k keeps
            its first k block positions. The number of stages is `len(depth_choices)`.
        width_choices (`list[list[int]]`): per stage, the allowed channel counts.
        block_type_choices: allowed token mixers among `"ss2d"`, `"ssd"`, `"attention"`, `"conv"`: one list for
            every position, one list per stage, or per stage one list per position (`max(depth_choices[i])` of them).
        mlp_ratio_choices, d_state_choices, ssm_ratio_choices, num_heads_choices: per stage, the allowed per-block
            MLP expansion, SSM state size, SSM expansion and heads (attention and SSD blocks). Attention heads have
            `attention_head_dim` channels each, so any count suits any width; every heads choice must divide every
            SSD inner width `round(ssm_ratio * width)` of a stage that allows SSD.
        resolution_choices (`list[int]`): input resolutions; each divisible by `patch_size * 2 ** (stages - 1)`.
        num_channels, patch_size, dt_rank, ssm_conv_kernel, conv_kernel_size, attention_head_dim, hidden_act,
        drop_path_rate, layer_scale_init_value, layer_norm_eps, initializer_range: fixed, as in [`EvoNetConfig`].
        num_labels / id2label / label2id: the classification head of every subnet.

    The defaults are an ImageNet-scale space that mixes all four block types in every stage;
    [`EvoNetSupernetConfig.tiny`] is the space of the tests and the CPU quickstart (digits at 24-32 px).
    """

    model_type = "evonet_supernet"

    # Shorthands (one list for all stages, or per stage, or per position) that `_normalise_choices` expands and checks
    # with errors naming the field; typed `Any` so that transformers' strict field typing does not reject them first.
    resolution_choices: Any = (160, 192, 224)
    depth_choices: Any = ((1, 2), (1, 2), (2, 3, 4, 5, 6), (1, 2))
    width_choices: Any = ((32, 48, 64), (64, 96, 128), (128, 192, 256), (256, 384, 512))
    block_type_choices: Any = BLOCK_TYPES
    mlp_ratio_choices: Any = (2.0, 3.0, 4.0)
    d_state_choices: Any = (8, 16)
    ssm_ratio_choices: Any = (1.0, 2.0)
    num_heads_choices: Any = ((1, 2), (2, 4), (4, 8), (8, 16))

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._normalise_choices()
        self.validate_architecture()

    @classmethod
    def tiny(cls, **kwargs) -> EvoNetSupernetConfig:
        """Three stages of 16-64 channels at 24 or 32 px, all four block types everywhere: tests and the CPU
        quickstart (digits upsampled to 32 x 32). Keyword arguments override any field."""
        space = dict(
            patch_size=2,
            resolution_choices=[24, 32],
            depth_choices=[[1, 2], [1, 2], [1, 2]],
            width_choices=[[16, 24], [32, 48], [48, 64]],
            mlp_ratio_choices=[2.0, 3.0],
            d_state_choices=[4, 8],
            ssm_ratio_choices=[1.0, 2.0],
            num_heads_choices=[[1, 2], [1, 2], [2, 4]],
            attention_head_dim=16,  # q / k / v of 16-64 channels, as wide as the stages
        )
        space.update(kwargs)
        return cls(**space)

    @property
    def num_stages(self) -> int:
        return len(self.depth_choices)

    @property
    def search_space(self) -> SearchSpace:
        return SearchSpace(self)

    # Normalisation and validation --------------------------------------------------------------------------

    def _normalise_choices(self) -> None:
        """Expand the per-stage / per-position shorthands and sort ordered choices."""
        self.resolution_choices = _sorted_choices("resolution_choices", self.resolution_choices)
        _require(
            isinstance(self.depth_choices, (list, tuple)) and len(self.depth_choices) > 0,
            "depth_choices",
            self.depth_choices,
            "one non-empty list of block counts per stage",
        )
        self.depth_choices = [
            _sorted_choices(f"depth_choices[{stage}]", value) for stage, value in enumerate(self.depth_choices)
        ]
        for name in ("width_choices", "mlp_ratio_choices", "d_state_choices", "ssm_ratio_choices", "num_heads_choices"):
            value = getattr(self, name)
            _require(isinstance(value, (list, tuple)) and len(value) > 0, name, value, "a non-empty list")
            if not any(isinstance(entry, (list, tuple)) for entry in value):
                value = [value] * self.num_stages
            _require(
                len(value) == self.num_stages,
                name,
                value,
                f"one list for every stage, or one list per stage ({self.num_stages} stages, from depth_choices)",
            )
            setattr(self, name, [_sorted_choices(f"{name}[{stage}]", entry) for stage, entry in enumerate(value)])
        self.block_type_choices = self._expand_block_types(self.block_type_choices)

    def _expand_block_types(self, value: Any) -> list[list[list[str]]]:
        name = "block_type_choices"
        allowed = f"block types among {list(BLOCK_TYPES)}: one list, one list per stage, or per stage one per position"
        _require(isinstance(value, (list, tuple)) and len(value) > 0, name, value, allowed)
        if all(isinstance(entry, str) for entry in value):
            value = [value] * self.num_stages
        _require(len(value) == self.num_stages, name, value, f"{allowed} ({self.num_stages} stages)")
        expanded = []
        for stage, entry in enumerate(value):
            positions = max(self.depth_choices[stage])
            _require(isinstance(entry, (list, tuple)) and len(entry) > 0, f"{name}[{stage}]", entry, allowed)
            if all(isinstance(item, str) for item in entry):
                entry = [entry] * positions
            _require(
                len(entry) == positions,
                f"{name}[{stage}]",
                entry,
                f"one list of block types per position ({positions} = max(depth_choices[{stage}]))",
            )
            stage_types = []
            for index, types in enumerate(entry):
                where = f"{name}[{stage}][{index}]"
                _require(isinstance(types, (list, tuple)) and len(types) > 0, where, types, allowed)
                for block_type in types:
                    _require(block_type in BLOCK_TYPES, where, types, f"block types among {list(BLOCK_TYPES)}")
                _require(len(set(types)) == len(types), where, types, "no repeated block type")
                stage_types.append(list(types))
            expanded.append(stage_types)
        return expanded

    def validate_architecture(self):
        """Raise `ValueError` naming the field, the bad value and what is allowed, so that every combination of
        choices is a valid `EvoNetConfig`."""
        for stage in range(self.num_stages):
            for name in ("depth_choices", "width_choices", "d_state_choices", "num_heads_choices"):
                for value in getattr(self, name)[stage]:
                    _require(
                        _is_int(value) and value >= 1, f"{name}[{stage}]", getattr(self, name)[stage], "positive ints"
                    )
            for name in ("mlp_ratio_choices", "ssm_ratio_choices"):
                for value in getattr(self, name)[stage]:
                    _require(
                        _is_number(value) and value > 0,
                        f"{name}[{stage}]",
                        getattr(self, name)[stage],
                        "positive numbers",
                    )
            for name in ("mlp_ratio_choices", "ssm_ratio_choices", "d_state_choices", "num_heads_choices"):
                formatted = [format_number(value) for value in getattr(self, name)[stage]]
                _require(
                    all(_NUMBER.fullmatch(text) for text in formatted) and len(set(formatted)) == len(formatted),
                    f"{name}[{stage}]",
                    getattr(self, name)[stage],
                    "distinct numbers written without exponent (the architecture encoding spells them out)",
                )
            self._check_heads(stage)
        for name in ("num_channels", "patch_size", "ssm_conv_kernel", "conv_kernel_size"):
            value = getattr(self, name)
            _require(_is_int(value) and value >= 1, name, value, "a positive int")
        for value in self.resolution_choices:
            _require(
                _is_int(value) and value >= self.patch_size,
                "resolution_choices",
                self.resolution_choices,
                f"ints of at least patch_size = {self.patch_size} pixels",
            )
        for name in ("ssm_conv_kernel", "conv_kernel_size"):
            _require(getattr(self, name) % 2 == 1, name, getattr(self, name), "an odd int (same-size padding)")
        _require(
            self.dt_rank == "auto" or (_is_int(self.dt_rank) and self.dt_rank >= 1),
            "dt_rank",
            self.dt_rank,
            '"auto" or a positive int',
        )
        stride = self.patch_size * 2 ** (self.num_stages - 1)
        for value in self.resolution_choices:
            _require(
                _is_int(value) and value % stride == 0,
                "resolution_choices",
                self.resolution_choices,
                f"ints divisible by patch_size * 2 ** (stages - 1) = {stride}",
            )

    def _check_heads(self, stage: int) -> None:
        # Attention heads have a fixed size (`attention_head_dim`), so any count suits any width; SSD heads split the
        # inner width.
        types = {block_type for position in self.block_type_choices[stage] for block_type in position}
        name = f"num_heads_choices[{stage}]"
        for heads in self.num_heads_choices[stage]:
            for width in self.width_choices[stage]:
                if "ssd" in types:
                    for ratio in self.ssm_ratio_choices[stage]:
                        d_inner = round(ratio * width)
                        _require(
                            d_inner % heads == 0,
                            name,
                            self.num_heads_choices[stage],
                            f"divisors of every SSD inner width round(ssm_ratio * width) (stage {stage} allows ssd; "
                            f"{heads} does not divide {d_inner} = round({ratio} * {width}))",
                        )


@dataclass(frozen=True)
class Gene:
    """One decision of the search: `name` (e.g. `"s1.b0.type"`), its `choices`, and whether they are `ordered`
    (numbers: neighbours are similar, nevergrad's `TransitionChoice`) or not (block types: `Choice`)."""

    name: str
    choices: tuple
    ordered: bool


class SearchSpace:
    """Architectures of one `EvoNetSupernetConfig`: sample, validate, encode, hash, convert. Holds no state of its
    own; every method reads the config, so `config.search_space` and `supernet.search_space` agree."""

    def __init__(self, config: EvoNetSupernetConfig):
        self.config = config

    def __repr__(self) -> str:
        return f"SearchSpace({self.config.num_stages} stages, {self.cardinality():.3e} architectures)"

    # Choices ------------------------------------------------------------------------------------------------

    @property
    def num_stages(self) -> int:
        return self.config.num_stages

    def size_choices(self, stage: int, gene: str) -> list:
        """The choices of a per-block size gene (`"mlp_ratio"`, `"d_state"`, `"ssm_ratio"`, `"num_heads"`)."""
        return getattr(self.config, f"{gene}_choices")[stage]

    def block_type_choices(self, stage: int, index: int) -> list[str]:
        return self.config.block_type_choices[stage][index]

    def max_depth(self, stage: int) -> int:
        return self.config.depth_choices[stage][-1]

    @property
    def genes(self) -> list[Gene]:
        """Every gene in a fixed order: `resolution`, then per stage `s<i>.depth`, `s<i>.width` and per block
        position `s<i>.b<j>.type` and the sizes some allowed type of that position uses."""
        config = self.config
        genes = [Gene("resolution", tuple(config.resolution_choices), True)]
        for stage in range(self.num_stages):
            genes.append(Gene(f"s{stage}.depth", tuple(config.depth_choices[stage]), True))
            genes.append(Gene(f"s{stage}.width", tuple(config.width_choices[stage]), True))
            for index in range(self.max_depth(stage)):
                types = self.block_type_choices(stage, index)
                genes.append(Gene(f"s{stage}.b{index}.type", tuple(types), False))
                for gene in BLOCK_SIZE_GENES:
                    if any(gene in BLOCK_TYPE_GENES[block_type] for block_type in types):
                        genes.append(Gene(f"s{stage}.b{index}.{gene}", tuple(self.size_choices(stage, gene)), True))
        return genes

    def from_genes(self, values: dict[str, Any]) -> dict:
        """The canonical architecture of one value per gene (e.g. a nevergrad `Dict` parameter's `.value`)."""
        stages = []
        for stage in range(self.num_stages):
            depth = values[f"s{stage}.depth"]
            blocks = []
            for index in range(depth if _is_int(depth) else 0):
                prefix = f"s{stage}.b{index}."
                block = {"type": values.get(prefix + "type")}
                for gene in BLOCK_TYPE_GENES.get(block["type"], ()):
                    block[gene] = values.get(prefix + gene)
                blocks.append(block)
            stages.append({"depth": depth, "width": values[f"s{stage}.width"], "blocks": blocks})
        return self.validate({"resolution": values["resolution"], "stages": stages})

    def to_genes(self, arch: dict) -> dict[str, Any]:
        """One value per gene (inverse of `from_genes`): genes the architecture does not use take their first choice,
        e.g. to `suggest` a known architecture to an optimizer."""
        arch = self.validate(arch)
        values = {gene.name: gene.choices[0] for gene in self.genes}
        values["resolution"] = arch["resolution"]
        for stage, stage_arch in enumerate(arch["stages"]):
            values[f"s{stage}.depth"] = stage_arch["depth"]
            values[f"s{stage}.width"] = stage_arch["width"]
            for index, block in enumerate(stage_arch["blocks"]):
                for gene, value in block.items():
                    values[f"s{stage}.b{index}.{gene}"] = value
        return values

    # Architectures ------------------------------------------------------------------------------------------

    def sample(self, rng: random.Random) -> dict:
        """A random architecture: every gene uniform among its choices, drawn from `rng` only (no global state), so
        equal seeds give equal architectures on every rank."""
        config = self.config
        stages = []
        for stage in range(self.num_stages):
            depth = rng.choice(config.depth_choices[stage])
            width = rng.choice(config.width_choices[stage])
            blocks = []
            for index in range(depth):
                block_type = rng.choice(self.block_type_choices(stage, index))
                block = {"type": block_type}
                for gene in BLOCK_TYPE_GENES[block_type]:
                    block[gene] = rng.choice(self.size_choices(stage, gene))
                blocks.append(block)
            stages.append({"depth": depth, "width": width, "blocks": blocks})
        return {"resolution": rng.choice(config.resolution_choices), "stages": stages}

    def largest(self, block_type: str | None = None) -> dict:
        """Every ordered gene at its largest choice. Block types have no order: each position takes `block_type`
        where it is allowed, else its first allowed type. Over all block types, these architectures use every
        parameter of the supernet."""
        return self._extreme(-1, block_type)

    def smallest(self, block_type: str | None = None) -> dict:
        """Every ordered gene at its smallest choice; block types as in `largest`."""
        return self._extreme(0, block_type)

    def _extreme(self, end: int, block_type: str | None) -> dict:
        if block_type is not None and block_type not in BLOCK_TYPES:
            raise ValueError(f"block_type = {block_type!r} is invalid: expected None or one of {list(BLOCK_TYPES)}.")
        config = self.config
        stages = []
        for stage in range(self.num_stages):
            depth = config.depth_choices[stage][end]
            blocks = []
            for index in range(depth):
                types = self.block_type_choices(stage, index)
                chosen = block_type if block_type in types else types[0]
                block = {"type": chosen}
                for gene in BLOCK_TYPE_GENES[chosen]:
                    block[gene] = self.size_choices(stage, gene)[end]
                blocks.append(block)
            stages.append({"depth": depth, "width": config.width_choices[stage][end], "blocks": blocks})
        return {"resolution": config.resolution_choices[end], "stages": stages}

    def validate(self, arch: dict) -> dict:
        """Check every gene of `arch` and return its canonical form (a new dict): choices as the space spells them,
        blocks beyond a stage's depth dropped, sizes the block type ignores dropped. Raises `ValueError` naming the
        gene, the bad value and the allowed values."""
        config = self.config
        _check_gene(isinstance(arch, dict), "arch", arch, "a dict with 'resolution' and 'stages'")
        unknown = set(arch) - {"resolution", "stages"}
        _check_gene(not unknown, "arch", sorted(unknown), "only the keys 'resolution' and 'stages'")
        resolution = _pick("resolution", arch.get("resolution"), config.resolution_choices)
        stages_arch = arch.get("stages")
        _check_gene(
            isinstance(stages_arch, (list, tuple)) and len(stages_arch) == self.num_stages,
            "stages",
            stages_arch,
            f"a list of {self.num_stages} stage dicts",
        )
        stages = []
        for stage, stage_arch in enumerate(stages_arch):
            where = f"stages[{stage}]"
            _check_gene(isinstance(stage_arch, dict), where, stage_arch, "a dict with 'depth', 'width' and 'blocks'")
            unknown = set(stage_arch) - {"depth", "width", "blocks"}
            _check_gene(not unknown, where, sorted(unknown), "only the keys 'depth', 'width' and 'blocks'")
            depth = _pick(f"{where}.depth", stage_arch.get("depth"), config.depth_choices[stage])
            width = _pick(f"{where}.width", stage_arch.get("width"), config.width_choices[stage])
            blocks_arch = stage_arch.get("blocks")
            _check_gene(
                isinstance(blocks_arch, (list, tuple)) and len(blocks_arch) >= depth,
                f"{where}.blocks",
                blocks_arch,
                f"a list of at least depth = {depth} block dicts",
            )
            blocks = []
            for index, block_arch in enumerate(blocks_arch[:depth]):
                block_where = f"{where}.blocks[{index}]"
                _check_gene(isinstance(block_arch, dict), block_where, block_arch, "a dict with 'type' and sizes")
                unknown = set(block_arch) - {"type", *BLOCK_SIZE_GENES}
                _check_gene(
                    not unknown, block_where, sorted(unknown), f"only the keys 'type' and {list(BLOCK_SIZE_GENES)}"
                )
                block_type = _pick(f"{block_where}.type", block_arch.get("type"), self.block_type_choices(stage, index))
                block = {"type": block_type}
                for gene in BLOCK_TYPE_GENES[block_type]:
                    block[gene] = _pick(f"{block_where}.{gene}", block_arch.get(gene), self.size_choices(stage, gene))
                blocks.append(block)
            stages.append({"depth": depth, "width": width, "blocks": blocks})
        return {"resolution": resolution, "stages": stages}

    def encode(self, arch: dict) -> str:
        """The stable, human-readable string of an architecture, e.g. `r32-s0:d2w48[ss2d.m4.n16.e2,conv.m3]-...`."""
        arch = self.validate(arch)
        parts = [f"r{arch['resolution']}"]
        for stage, stage_arch in enumerate(arch["stages"]):
            blocks = ",".join(
                block["type"]
                + "".join(f".{_LETTERS[gene]}{format_number(block[gene])}" for gene in _encoding_order(block))
                for block in stage_arch["blocks"]
            )
            parts.append(f"s{stage}:d{stage_arch['depth']}w{stage_arch['width']}[{blocks}]")
        return "-".join(parts)

    def decode(self, encoding: str) -> dict:
        """The canonical architecture of an `encode` string. Raises `ValueError` for malformed strings, choices
        outside the space, and non-canonical spellings (so that one network has one string)."""
        if not isinstance(encoding, str):
            raise TypeError(f"encoding = {encoding!r} is invalid: expected a string from SearchSpace.encode.")
        parts = encoding.split("-")
        head = re.fullmatch(r"r(\d+)", parts[0])
        if head is None or len(parts) != self.num_stages + 1:
            raise ValueError(
                f"encoding = {encoding!r} is invalid: expected 'r<resolution>' then {self.num_stages} stages "
                "'s<i>:d<depth>w<width>[<blocks>]', joined by '-'."
            )
        stages = []
        for stage, part in enumerate(parts[1:]):
            match = re.fullmatch(rf"s{stage}:d(\d+)w(\d+)\[([^\[\]]*)\]", part)
            if match is None:
                raise ValueError(
                    f"encoding = {encoding!r} is invalid: stage part {part!r} is not "
                    f"'s{stage}:d<depth>w<width>[<blocks>]'."
                )
            blocks = (
                [self._decode_block(encoding, text) for text in match.group(3).split(",")] if match.group(3) else []
            )
            stages.append({"depth": int(match.group(1)), "width": int(match.group(2)), "blocks": blocks})
            if len(blocks) != stages[-1]["depth"]:
                raise ValueError(
                    f"encoding = {encoding!r} is invalid: stage {stage} has depth {stages[-1]['depth']} but "
                    f"{len(blocks)} blocks."
                )
        arch = self.validate({"resolution": int(head.group(1)), "stages": stages})
        canonical = self.encode(arch)
        if canonical != encoding:
            raise ValueError(f"encoding = {encoding!r} is not canonical: the same architecture is {canonical!r}.")
        return arch

    def _decode_block(self, encoding: str, text: str) -> dict:
        match = re.fullmatch(r"([a-z0-9]+)((?:\.[a-z]\d+(?:\.\d+)?)*)", text)
        if match is None:
            raise ValueError(
                f"encoding = {encoding!r} is invalid: block {text!r} is not '<type>.<letter><number>...' with letters "
                f"{_GENES_OF_LETTER}."
            )
        block = {"type": match.group(1)}
        for letter, number in re.findall(r"\.([a-z])(\d+(?:\.\d+)?)", match.group(2)):
            if letter not in _GENES_OF_LETTER:
                raise ValueError(
                    f"encoding = {encoding!r} is invalid: block {text!r} has unknown size letter {letter!r}; expected "
                    f"one of {_GENES_OF_LETTER}."
                )
            block[_GENES_OF_LETTER[letter]] = number  # a string: `validate` matches it against the spelled choices
        return block

    def hash(self, arch: dict) -> str:
        """A short stable hex id of the architecture (12 hex digits of the SHA-256 of its encoding)."""
        return hashlib.sha256(self.encode(arch).encode("utf-8")).hexdigest()[:12]

    def cardinality(self) -> int:
        """The number of distinct networks (canonical architectures) in the space."""
        config = self.config
        total = len(config.resolution_choices)
        for stage in range(self.num_stages):
            per_position = [
                sum(
                    math.prod(len(self.size_choices(stage, gene)) for gene in BLOCK_TYPE_GENES[block_type])
                    for block_type in self.block_type_choices(stage, index)
                )
                for index in range(self.max_depth(stage))
            ]
            blocks = sum(math.prod(per_position[:depth]) for depth in config.depth_choices[stage])
            total *= len(config.width_choices[stage]) * blocks
        return total

    # Conversion ---------------------------------------------------------------------------------------------

    def to_config(self, arch: dict, **kwargs) -> EvoNetConfig:
        """The `EvoNetConfig` of the standalone network (per-block lists), carrying `arch_encoding`. Keyword arguments
        are passed on to `EvoNetConfig` (e.g. `out_features` for a backbone)."""
        arch = self.validate(arch)
        kwargs.setdefault("arch_encoding", self.encode(arch))
        return self.evonet_config(arch, **kwargs)

    def evonet_config(self, arch: dict, **kwargs) -> EvoNetConfig:
        """`EvoNetConfig` of an architecture-shaped dict without checking it against the choices (the supernet uses
        it for its max-size blocks, which combine the largest sizes with every block type). Sizes a block type does
        not use are filled with the stage's smallest choice."""
        config = self.config
        per_block = {gene: [] for gene in ("block_types", "mlp_ratios", "d_states", "ssm_ratios", "num_heads")}
        for stage, stage_arch in enumerate(arch["stages"]):
            blocks = stage_arch["blocks"][: stage_arch["depth"]]
            per_block["block_types"].append([block["type"] for block in blocks])
            for gene, field in (
                ("mlp_ratio", "mlp_ratios"),
                ("d_state", "d_states"),
                ("ssm_ratio", "ssm_ratios"),
                ("num_heads", "num_heads"),
            ):
                per_block[field].append([block.get(gene, self.size_choices(stage, gene)[0]) for block in blocks])
        fields = {name: getattr(config, name) for name in EvoNetNetworkConfig.network_fields()}
        labels = {
            "id2label": dict(config.id2label),
            "label2id": dict(config.label2id),
            "problem_type": config.problem_type,
        }
        return EvoNetConfig(
            image_size=arch["resolution"],
            depths=[stage_arch["depth"] for stage_arch in arch["stages"]],
            hidden_sizes=[stage_arch["width"] for stage_arch in arch["stages"]],
            **per_block,
            **fields,
            **labels,
            **kwargs,
        )


def format_number(value: Any) -> str:
    """How the encoding spells a choice: integers without a decimal point (`4.0` -> `"4"`), others by `repr`."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def _encoding_order(block: dict) -> list[str]:
    return [gene for gene in _LETTERS if gene in block]


def _pick(gene: str, value: Any, choices: list) -> Any:
    """The choice equal to `value` (numbers compare by value, strings from `decode` by spelling), or a ValueError."""
    for choice in choices:
        if isinstance(value, str) and not isinstance(choice, str):
            if value == format_number(choice):
                return choice
        elif value == choice and isinstance(value, bool) == isinstance(choice, bool):
            return choice
    raise ValueError(f"Architecture gene {gene} = {value!r} is invalid: expected one of {list(choices)}.")


def _check_gene(condition: bool, gene: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ValueError(f"Architecture gene {gene} = {value!r} is invalid: expected {allowed}.")


def _sorted_choices(name: str, value: Any) -> list:
    _require(isinstance(value, (list, tuple)) and len(value) > 0, name, value, "a non-empty list of choices")
    for item in value:
        _require(_is_number(item), name, value, "numbers")
    _require(len(set(value)) == len(value), name, value, "distinct choices")
    return sorted(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(condition: bool, field: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ValueError(f"EvoNetSupernetConfig.{field} = {value!r} is invalid: expected {allowed}.")


__all__ = [
    "BLOCK_SIZE_GENES",
    "BLOCK_TYPE_GENES",
    "EvoNetSupernetConfig",
    "Gene",
    "SearchSpace",
    "format_number",
]
