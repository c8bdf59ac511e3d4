"""The distillation config: one dataclass tree, read from YAML and the command line by jsonargparse.

`DistillConfig` is the root (`data`, `teacher`, `supernet`, `loss`, `sampling`, `trainer`). Every field carries a
docstring, which is what `python distill/train.py --help` prints. `search/` embeds the same tree as its `distill:`
section, so one YAML file (e.g. `configs/quickstart.yaml`) drives both.

`DistillConfig.validate()` checks what the types cannot (ranges, cross-field rules) and raises `ValueError` naming
the field; it runs before any data or model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from evonets.data.config import DataConfig
from evonets.engine.cli import check_field, check_writable_folder, field_error

BLOCK_TYPE_POLICIES = ("random", "first", "ss2d", "ssd", "attention", "conv")
ELASTIC_GENES = ("resolution", "depth", "width", "block_type", "mlp_ratio", "d_state", "ssm_ratio", "num_heads")


@dataclass
class TeacherTrainConfig:
    """A from-scratch teacher of another family (used when no pretrained teacher exists, as in the CPU quickstart)."""

    family: Literal["convnextv2", "vit"] = "convnextv2"
    """Model family: `convnextv2` (ConvNextV2ForImageClassification) or `vit` (ViTForImageClassification)."""

    hidden_sizes: list[int] = field(default_factory=lambda: [32, 64, 128])
    """ConvNeXtV2: channels per stage. ViT: only the first entry is used (hidden size)."""

    depths: list[int] = field(default_factory=lambda: [2, 2, 2])
    """ConvNeXtV2: blocks per stage. ViT: the sum is the number of layers."""

    patch_size: int = 2
    """Stem stride (ConvNeXtV2) or patch size (ViT)."""

    epochs: int = 30
    """Training epochs over the train split."""

    batch_size: int = 64
    """Batch size."""

    lr: float = 3e-3
    """Peak AdamW learning rate (cosine schedule with 5 % warm-up)."""

    weight_decay: float = 0.05
    """AdamW weight decay."""

    label_smoothing: float = 0.1
    """Label smoothing of the cross-entropy."""

    seed: int = 0
    """Seed of initialisation and shuffling."""


@dataclass
class TeacherConfig:
    """The teacher of cross-architecture distillation."""

    family: Literal["transformers", "cifar_resnet"] = "transformers"
    """`transformers`: any transformers image-classification model (ConvNeXt(V2), ViT, DeiT, DINOv2 classifier,
    ResNet, Swin, an EvoNet, ...), `path` a local folder or Hub id. `cifar_resnet`: a CIFAR ResNet of He et al.
    (ResNet-20 / 56, `distill/cifar_resnet.py`), `path` its `.safetensors` file (`../shared/data/teachers`); it sees
    32 px images normalised with the ImageNet mean / std, whatever the data's."""

    path: str | None = None
    """The teacher: a model folder or Hub id (`family: transformers`) or a `.safetensors` file (`cifar_resnet`).
    None: no teacher (teacher KD and feature terms are off)."""

    train_if_missing: bool = False
    """When `path` is a local folder that does not exist yet, train a teacher from scratch (see `train`) on the same
    data and save it there first. Off: a missing path is an error."""

    stages: list[int] = field(default_factory=lambda: [-2, -1])
    """Indices into the teacher's `hidden_states` (0 = embeddings / stem, negatives count from the end) aligned
    with `loss.student_stages`, pair by pair. ViT-style tokens are reshaped to their (H, W) grid. A CIFAR ResNet's are
    (stem, layer1, layer2, layer3): 16x32x32, 16x32x32, 32x16x16, 64x8x8 at 32 px."""

    check_test_images: int | None = None
    """When a distillation loads the teacher, its accuracy on the data's test split (`data.test_split`) is printed and
    logged (`teacher_check` row of train_log.jsonl): a check that the right weights and preprocessing were loaded.
    Nothing is selected on it. None: the whole test split; N: a seeded class-stratified subset of N images; 0: no
    check. Only for a teacher whose classes are the data's (`loss.kd_weight` > 0)."""

    image_size: int | None = None
    """Resolution the teacher sees. Default: the `size` of the teacher's preprocessor_config.json if it has one,
    else the data's `image_size`."""

    train: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    """How `train_if_missing` and `distill/train_teacher.py` train a teacher."""


@dataclass
class SupernetSettings:
    """The supernet to train: its search space, or a saved supernet to continue from."""

    preset: Literal["tiny", "default"] = "tiny"
    """`tiny`: `EvoNetSupernetConfig.tiny()` (3 stages, 24-32 px; the digits quickstart). `default`: the
    ImageNet-scale space of `EvoNetSupernetConfig()`."""

    overrides: dict[str, Any] = field(default_factory=dict)
    """Fields of `EvoNetSupernetConfig` to override, e.g. `{width_choices: [[16, 24], [32, 48], [48, 64]]}`.
    `num_labels` / `id2label` come from the data."""

    init_from: str | None = None
    """Folder of a saved `EvoNetSupernet` to start from (its search space is used; `preset`/`overrides` ignored)."""


@dataclass
class LossConfig:
    """CA-DDKD: task cross-entropy + logit KD + dual-domain feature alignment, and in-place distillation.
    Every term has a weight; 0 switches it off (and skips its computation)."""

    ce_weight: float = 1.0
    """Weight of the cross-entropy with the labels."""

    ce_for: Literal["all", "largest"] = "all"
    """Which sampled subnets get the cross-entropy: all, or only the largest (Once-for-All style: the others learn
    from in-place distillation alone)."""

    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy."""

    kd_weight: float = 1.0
    """Weight of logit KD from the teacher: T^2 * KL(softmax(teacher / T) || softmax(student / T))."""

    kd_temperature: float = 4.0
    """Temperature T of the teacher logit KD."""

    inplace_kd_weight: float = 1.0
    """Weight of in-place KD: the largest subnet's detached logits supervise every other sampled subnet."""

    inplace_kd_temperature: float = 1.0
    """Temperature of in-place KD."""

    inplace_feature_weight: float = 0.0
    """Weight of in-place feature distillation: the largest subnet's detached projected features supervise the
    other subnets' projected features (normalised regression, teacher space)."""

    teacher_terms_for: Literal["all", "largest"] = "all"
    """Which sampled subnets get the teacher terms (logit KD and feature alignment)."""

    student_stages: list[int] = field(default_factory=lambda: [-2, -1])
    """Indices into the supernet's `hidden_states` (0 = stem, 1 = stage1, ...; negatives from the end), paired
    with `teacher.stages`."""

    spatial_weight: float = 1.0
    """Weight of the spatial term: MSE of the projected student and teacher maps, each normalised over channels
    at every position (parameter-free LayerNorm)."""

    frequency_weight: float = 1.0
    """Weight of the frequency term: the normalised maps' 2-D spectra compared in a low and a high band."""

    frequency_transform: Literal["dct", "fft"] = "dct"
    """2-D orthonormal DCT-II (as two matrix products) or orthonormal real FFT."""

    frequency_cutoff: float = 0.5
    """Band split: a coefficient is low-frequency when its radial frequency sqrt(fy^2 + fx^2) < cutoff, with each
    axis frequency normalised to [0, 1) (1 = Nyquist). DC is always low."""

    low_band_weight: float = 1.0
    """Weight of the low band inside the frequency term."""

    high_band_weight: float = 1.0
    """Weight of the high band inside the frequency term."""

    band_normalization: Literal["energy", "none"] = "energy"
    """`energy`: each band's squared error is divided by the teacher's energy in that band, so the weak high band
    counts as much as the strong low band. `none`: plain mean squared error per band."""


@dataclass
class ShrinkPhase:
    """One phase of progressive shrinking."""

    until: float = 1.0
    """The phase lasts until this fraction of `trainer.max_steps` (phases in increasing order, the last = 1.0)."""

    elastic: list[str] = field(default_factory=lambda: list(ELASTIC_GENES))
    """Genes that vary in this phase (others stay at the largest subnet's value): any of resolution, depth, width,
    block_type, mlp_ratio, d_state, ssm_ratio, num_heads."""


@dataclass
class SamplingConfig:
    """Which subnets every step trains: the sandwich rule."""

    num_random: int = 2
    """Random subnets per step, besides the largest and the smallest."""

    block_types: str = "random"
    """Block types of the largest and smallest subnets (block types are unordered, so "largest" fixes only the
    ordered genes): `random` (drawn every step, so every mixer is trained at its extremes), `first` (the first
    allowed type at each position, i.e. `SearchSpace.largest()`), or one block type where allowed."""

    seed: int = 0
    """Seed of the architecture generator; identical on every process, saved with checkpoints."""

    shrink_schedule: list[ShrinkPhase] = field(default_factory=list)
    """Progressive shrinking (optional): e.g. `[{until: 0.2, elastic: []}, {until: 0.5, elastic: [width,
    resolution]}, {until: 1.0}]`. Empty: every gene elastic from the start."""


@dataclass
class TrainerConfig:
    """The accelerate loop: optimisation, logging, checkpoints, resume."""

    output_dir: str = "runs/distill"
    """Run folder: `supernet/` (the result), `checkpoints/`, `train_log.jsonl`, `config.yaml`."""

    max_steps: int = 300
    """Optimizer steps."""

    batch_size: int = 64
    """Batch size per process (global batch = batch_size x processes x gradient_accumulation_steps)."""

    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""

    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, then cosine to 0)."""

    weight_decay: float = 0.05
    """AdamW weight decay (matrices and conv kernels only; not norms, biases or SSM decay rates)."""

    warmup_steps: int = 20
    """Linear warm-up steps."""

    max_grad_norm: float = 1.0
    """Gradient clipping by global norm; 0 disables."""

    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Mixed precision (GPU). `no` on CPU for exact reproducibility."""

    seed: int = 0
    """Seed of initialisation, data order and everything else random."""

    log_every: int = 10
    """Log the window mean of each loss term and images/s every N steps (and at the last step)."""

    eval_every: int = 100
    """Evaluate the largest and smallest subnets on the validation split every N steps (0: only at the end)."""

    save_every: int = 100
    """A checkpoint every N steps (0: no intermediate checkpoints)."""

    total_limit: int = 2
    """Checkpoints kept (older ones are deleted)."""

    resume: str = "auto"
    """`auto`: continue from the latest complete checkpoint in `output_dir/checkpoints` if there is one; `never`:
    start fresh (fails if checkpoints exist, to avoid mixing runs); or the path of one checkpoint folder."""

    log_with: str = "auto"
    """Accelerate trackers: `auto` (TensorBoard when installed, else none), `none`, or a tracker name
    (`tensorboard`, `wandb`, ...)."""

    progress_bar: bool = True
    """tqdm progress bar on the main process."""

    cpu: bool = False
    """Train on CPU even when a GPU is available. (Without any GPU, processes started by `accelerate launch
    --multi_gpu` join a gloo group on CPU automatically.)"""

    num_threads: int | None = None
    """torch intra-op threads per process (`torch.set_num_threads`). None: torch's default. Small models on a busy
    CPU run far faster with 1 (idle OpenMP threads spin while others are descheduled). Resume with the same value
    for bit-identical losses."""


@dataclass
class DistillConfig:
    """Train a weight-sharing EvoNet supernet by CA-DDKD with sandwich sampling."""

    data: DataConfig = field(default_factory=DataConfig)
    """Dataset source, splits and preprocessing."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """Teacher model."""

    supernet: SupernetSettings = field(default_factory=SupernetSettings)
    """Search space of the supernet."""

    loss: LossConfig = field(default_factory=LossConfig)
    """Loss terms and weights."""

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Sandwich sampling."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Optimisation, logging, checkpoints."""

    def validate(self) -> DistillConfig:
        """Raise `ValueError` naming the first invalid field; return self."""
        self._validate_data()
        self._validate_teacher()
        self._validate_loss()
        self._validate_sampling()
        self._validate_trainer()
        return self

    def _validate_data(self) -> None:
        data = self.data
        if data.source in ("imagefolder", "parquet", "load_from_disk", "hub") and not data.path:
            raise field_error("data.path", data.path, f"a folder or dataset id (data.source = {data.source!r})")
        test_splits = {"test", data.test_split} - {None}
        for name in ("train_split", "validation_split"):
            check_field(
                getattr(data, name) not in test_splits,
                f"data.{name}",
                getattr(data, name),
                f"not {sorted(test_splits)} (the test split is for the final report only; training and search never "
                "read it)",
            )
        check_field(
            data.max_train_samples is None or data.max_train_samples >= 1,
            "data.max_train_samples",
            data.max_train_samples,
            "None (all) or >= 1",
        )
        check_field(
            0.0 < data.validation_fraction < 1.0, "data.validation_fraction", data.validation_fraction, "in (0, 1)"
        )
        check_field(
            data.image_size is None or data.image_size >= 1, "data.image_size", data.image_size, "a positive int"
        )
        check_field(
            len(data.image_mean) == len(data.image_std),
            "data.image_std",
            data.image_std,
            "as many entries as image_mean",
        )
        check_field(all(s > 0 for s in data.image_std), "data.image_std", data.image_std, "positive numbers")
        check_field(data.check_samples >= 0, "data.check_samples", data.check_samples, ">= 0")

    def _validate_teacher(self) -> None:
        teacher = self.teacher
        check_field(
            not (teacher.family == "cifar_resnet" and teacher.train_if_missing),
            "teacher.train_if_missing",
            teacher.train_if_missing,
            "false with teacher.family cifar_resnet (a CIFAR ResNet is loaded from its .safetensors file, not trained)",
        )
        check_field(
            teacher.check_test_images is None or teacher.check_test_images >= 0,
            "teacher.check_test_images",
            teacher.check_test_images,
            "None (the whole test split), 0 (no check) or a positive number of images",
        )
        tt = teacher.train
        check_field(
            len(tt.hidden_sizes) >= 1 and len(tt.depths) == len(tt.hidden_sizes),
            "teacher.train.depths",
            tt.depths,
            f"one entry per hidden size ({tt.hidden_sizes})",
        )

    def _validate_loss(self) -> None:
        loss = self.loss
        for name in (
            "ce_weight",
            "kd_weight",
            "inplace_kd_weight",
            "inplace_feature_weight",
            "spatial_weight",
            "frequency_weight",
            "low_band_weight",
            "high_band_weight",
            "label_smoothing",
        ):
            check_field(getattr(loss, name) >= 0, f"loss.{name}", getattr(loss, name), ">= 0")
        for name in ("kd_temperature", "inplace_kd_temperature"):
            check_field(getattr(loss, name) > 0, f"loss.{name}", getattr(loss, name), "> 0")
        check_field(0.0 < loss.frequency_cutoff <= 1.5, "loss.frequency_cutoff", loss.frequency_cutoff, "in (0, 1.5]")
        if self.teacher.path is not None and self.uses_features:
            check_field(
                len(loss.student_stages) == len(self.teacher.stages),
                "loss.student_stages",
                loss.student_stages,
                f"one stage per teacher stage (teacher.stages = {self.teacher.stages})",
            )

    def _validate_sampling(self) -> None:
        sampling = self.sampling
        check_field(sampling.num_random >= 0, "sampling.num_random", sampling.num_random, ">= 0")
        check_field(
            sampling.block_types in BLOCK_TYPE_POLICIES,
            "sampling.block_types",
            sampling.block_types,
            f"one of {list(BLOCK_TYPE_POLICIES)}",
        )
        previous = 0.0
        for index, phase in enumerate(sampling.shrink_schedule):
            where = f"sampling.shrink_schedule[{index}]"
            check_field(
                previous < phase.until <= 1.0, f"{where}.until", phase.until, f"in ({previous}, 1] and increasing"
            )
            previous = phase.until
            for gene in phase.elastic:
                check_field(
                    gene in ELASTIC_GENES, f"{where}.elastic", phase.elastic, f"genes among {list(ELASTIC_GENES)}"
                )
        if sampling.shrink_schedule:
            check_field(
                previous == 1.0, "sampling.shrink_schedule[-1].until", previous, "1.0 (the last phase ends the run)"
            )

    def _validate_trainer(self) -> None:
        trainer = self.trainer
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every"):
            check_field(getattr(trainer, name) >= 1, f"trainer.{name}", getattr(trainer, name), ">= 1")
        for name in ("warmup_steps", "eval_every", "save_every", "max_grad_norm", "weight_decay"):
            check_field(getattr(trainer, name) >= 0, f"trainer.{name}", getattr(trainer, name), ">= 0")
        check_field(trainer.lr > 0, "trainer.lr", trainer.lr, "> 0")
        check_field(
            trainer.num_threads is None or trainer.num_threads >= 1, "trainer.num_threads", trainer.num_threads, ">= 1"
        )
        check_field(trainer.total_limit >= 1, "trainer.total_limit", trainer.total_limit, ">= 1")
        check_writable_folder("trainer.output_dir", trainer.output_dir)

    @property
    def uses_teacher(self) -> bool:
        return self.teacher.path is not None and (self.loss.kd_weight > 0 or self.uses_features)

    @property
    def uses_features(self) -> bool:
        return self.loss.spatial_weight > 0 or self.loss.frequency_weight > 0


SECTION = "distill"
"""The section of a shared YAML file (`configs/quickstart.yaml`) that holds the distillation config."""


def parse_config(
    argv: list[str] | None = None, prog: str = "distill/train.py", description: str | None = None
) -> DistillConfig:
    """The validated `DistillConfig` of a command line (`--config` YAML, at its top level or under `distill:`, plus
    dotted overrides; `sys.argv[1:]` when `argv` is None)."""
    from evonets.engine.cli import parse_config as parse

    return parse(DistillConfig, argv, prog, description or DistillConfig.__doc__, section=SECTION)


__all__ = [
    "DataConfig",
    "DistillConfig",
    "LossConfig",
    "SamplingConfig",
    "ShrinkPhase",
    "SupernetSettings",
    "TeacherConfig",
    "TeacherTrainConfig",
    "TrainerConfig",
    "parse_config",
]
