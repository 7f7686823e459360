"""The model's settings: the network's shape, its training and the mask search.

Each field that a user may set is declared with `options.setting`, so its default, range
and help are defined here once and reach `lt4rec pipeline run/compile`, the `LT4REC_*`
variables of the runner files, and (through `ModelSettings`) MaskSearch and the Trainer
alike. No TensorFlow here: the command line and the pipeline's definition load it fast.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

from lt4rec.features import FeatureConfig
from lt4rec.options import setting

TASKS = ("ctr", "cvr")

# Network variants (see `network.py`).
SPARSE_SHARING = "sparse_sharing"
HARD_SHARING = "hard_sharing"
SHARED_BOTTOM = "shared_bottom"
SINGLE_TASK = "single_task"
LAYER_SHARING = "layer_sharing"
MMOE = "mmoe"
PLE = "ple"
ESMM = "esmm"
VARIANTS = (SPARSE_SHARING, HARD_SHARING, SHARED_BOTTOM, SINGLE_TASK, LAYER_SHARING, MMOE, PLE, ESMM)
EXPERT_VARIANTS = (MMOE, PLE)
BOTH_TASKS_VARIANTS = (LAYER_SHARING, MMOE, PLE, ESMM)  # defined on the CTR and CVR tasks together
_TUPLE_FIELDS = ("tasks", "hidden_units", "ctr_tower_units", "expert_units", "tower_units")

# Masks (see `masks.py`).
CONNECTION = "connection"  # S-Weight: each kernel entry is kept or dropped
NEURON = "neuron"  # S-Neuron: whole units (kernel columns) are kept or dropped
GRANULARITIES = (CONNECTION, NEURON)
GLOBAL = "global"  # one magnitude threshold over every masked kernel
PER_LAYER = "layer"  # each kernel drops the same share
SCOPES = (GLOBAL, PER_LAYER)
REWIND_WARMUP = "warmup"  # sNET_init, the weights after warmup (the paper's choice)
REWIND_RANDOM = "random"  # the random initialisation (the original lottery ticket)
REWIND_TARGETS = (REWIND_WARMUP, REWIND_RANDOM)

# Training (see `training.py` and `inputs.py`).
ADAM, LAZY_ADAM = "adam", "lazy_adam"
OPTIMIZER_NAMES = (ADAM, LAZY_ADAM)
MEMORY, STREAMING, AUTO = "memory", "streaming", "auto"
INPUT_MODES = (AUTO, MEMORY, STREAMING)

# How the exports store the id tables (see `export.py`): as trained, in half precision, or as
# int8 with one float32 scale per row. Here, without TensorFlow, for the pipeline's settings.
FLOAT32, FLOAT16, INT8 = "float32", "float16", "int8"
EMBEDDING_STORAGES = (FLOAT32, FLOAT16, INT8)
# How an export's sparse-enough hidden layers multiply (see `export.choose_matmul_path`): the
# cheaper of the two by CPU time on the exporting machine, or forced.
DENSE, SPARSE, MEASURE = "dense", "sparse", "measure"
MATMUL_CHOICES = (MEASURE, DENSE, SPARSE)


def rate_for(remaining: float, rounds: int) -> float:
    """The share q to drop per round so that `remaining` is left after `rounds` rounds."""
    if not 0 < remaining <= 1 or rounds < 1:
        raise ValueError(f"cannot leave {remaining} of the weights after {rounds} rounds")
    return 1.0 - remaining ** (1.0 / rounds)


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """The shape of the network; recorded with every trained model."""

    variant: str = SPARSE_SHARING
    tasks: tuple[str, ...] = TASKS
    embedding_dim: int = setting(32, "Embedding dimension per field.", low=1)
    hidden_units: tuple[int, ...] = setting(
        (512, 256, 128), "MLP widths, comma-separated (a bigger shared net: e.g. 1024,512,256)."
    )
    # Multi-view: this many extra embedding dimensions per field that only CVR sees.
    multi_view_dim: int = setting(
        0, "Multi-view: extra embedding dimensions per field that only CVR sees (0: off).", low=0
    )
    # Layer sharing: the CTR-only tower between the shared MLP and CTR's head.
    ctr_tower_units: tuple[int, ...] = (512, 256, 128)
    # MMoE and PLE: the experts (each an MLP of expert_units) and each task's tower.
    num_experts: int = 4  # MMoE
    expert_units: tuple[int, ...] = (128, 64)
    tower_units: tuple[int, ...] = (32,)
    shared_experts: int = 2  # PLE, per level
    task_experts: int = 1  # PLE, per task and level
    extraction_layers: int = 2  # PLE: levels

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown network variant {self.variant!r}; one of {VARIANTS}")
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks {self.tasks} must be some of {TASKS}, each once")
        if self.variant in BOTH_TASKS_VARIANTS and set(self.tasks) != set(TASKS):
            raise ValueError(f"a {self.variant} network has both tasks {TASKS}, not {self.tasks}")
        if self.multi_view_dim and "cvr" not in self.tasks:
            raise ValueError("multi-view adds CVR-only embeddings: the network needs the cvr task")
        if self.multi_view_dim and self.variant in EXPERT_VARIANTS:
            raise ValueError(
                f"multi-view is not supported by {self.variant}: its experts read one input for both tasks"
            )
        if self.variant in EXPERT_VARIANTS:
            counts = {"num_experts": self.num_experts, "extraction_layers": self.extraction_layers}
            if self.variant == PLE:
                counts = {
                    "shared_experts": self.shared_experts,
                    "task_experts": self.task_experts,
                    "extraction_layers": self.extraction_layers,
                }
            small = {name: value for name, value in counts.items() if value < 1}
            if small or not self.expert_units:
                raise ValueError(
                    f"{self.variant} needs experts of at least one layer and counts of at least 1, "
                    f"not {small or self.expert_units}"
                )
        widths = (*self.hidden_units, *self.ctr_tower_units, *self.expert_units, *self.tower_units)
        if any(width < 1 for width in widths):
            raise ValueError(f"layer widths must be positive: {widths}")

    @property
    def masked(self) -> bool:
        """Sparse sharing: the network needs the masks of a mask search."""
        return self.variant == SPARSE_SHARING

    @property
    def esmm(self) -> bool:
        """ESMM: the CVR head learns through pCTCVR = pCTR * pCVR on all impressions."""
        return self.variant == ESMM

    @property
    def separate_networks(self) -> bool:
        """Single task on both tasks: one whole network (embeddings included) per task."""
        return self.variant == SINGLE_TASK and len(self.tasks) > 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: Mapping) -> "NetworkConfig":
        """From `to_dict`'s output (or an older one, without the later fields: their defaults)."""
        config = dict(config)
        for name in _TUPLE_FIELDS:
            if name in config:
                config[name] = tuple(config[name])
        return cls(**config)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the network is trained; recorded with every trained model."""

    batch_size: int = setting(512, low=1)
    learning_rate: float = setting(1e-3, low=0.0, low_open=True)
    epochs: int = setting(1, "At most this many passes of the final training (any model).", low=1)
    loss_weights: tuple[tuple[str, float], ...] = setting(
        (("ctr", 0.7), ("cvr", 0.3)), "Task balance: w_{task}.", per_task="loss-weight", low=0.0
    )
    # Gradient conflict: clicked samples with a watch ratio under the threshold weigh
    # 1 + conflict_weight in the CVR loss (0 turns it off).
    conflict_weight: float = setting(
        0.0,
        "Gradient conflict: extra CVR loss weight of clicked samples with a watch ratio under "
        "--conflict-threshold (0: off).",
        low=0.0,
    )
    conflict_threshold: float = setting(0.2, low=0.0, high=1.0)
    seed: int = setting(0, "Seed of initialisation and batch order.")
    # "lazy_adam": Adam that updates only the embedding rows a batch used, so a step's cost
    # does not grow with the id tables (`LazyAdam`; needed at production table sizes, and
    # it learned better in benchmarks/comparison.py); or "adam", tf_keras' Adam.
    optimizer: str = setting(
        LAZY_ADAM,
        "lazy_adam updates only the embedding rows each batch uses (its step cost does not grow with "
        "the id tables); adam decays every row's moments on every step.",
        choices=OPTIMIZER_NAMES,
    )
    # Early stopping: a seeded share of the train split is held out, and every phase stops
    # after `patience` passes without a better validation loss, keeping its best pass.
    validation_fraction: float = setting(
        0.1,
        "Share of the train split held out to stop every training phase early and to choose the search's rounds.",
        low=0.0,
        high=1.0,
        low_open=True,
        high_open=True,
    )
    patience: int = setting(
        1,
        "Stop a training phase after this many passes without a better validation loss (the best pass is kept).",
        low=1,
    )
    # Where the train split is read from (`inputs.py`): "memory" (columns, gathered from on
    # every pass), "streaming" (the files through tf.data, memory bounded by the shuffle
    # buffer), or "auto": in memory when the columns take at most `in_memory_limit_gb`.
    input_mode: str = setting(
        AUTO,
        "Train from the train split held in memory as columns, or streamed from its files (memory bounded "
        "by --shuffle-buffer); auto: in memory when the columns fit in --in-memory-limit-gb.",
        choices=INPUT_MODES,
    )
    in_memory_limit_gb: float = setting(2.0, low=0.0)
    shuffle_buffer: int = setting(
        32_768, "Streaming: examples of a task permuted together (a block; memory holds a few per task).", low=1
    )

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZER_NAMES:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZER_NAMES)}, not {self.optimizer!r}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction {self.validation_fraction} is not in (0, 1)")
        if self.patience < 1 or self.epochs < 1:
            raise ValueError("epochs and patience must be at least 1")
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, not {self.input_mode!r}")
        if self.shuffle_buffer < 1 or self.in_memory_limit_gb < 0:
            raise ValueError("shuffle_buffer must be at least 1 and in_memory_limit_gb at least 0")

    @property
    def holdout(self) -> tuple[float, int]:
        """(fraction, seed) of the validation share `inputs.held_out` sets aside."""
        return self.validation_fraction, self.seed

    @property
    def loss_weight(self) -> dict[str, float]:
        return dict(self.loss_weights)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: Mapping) -> "TrainConfig":
        config = dict(config)
        config["loss_weights"] = tuple((task, float(w)) for task, w in config["loss_weights"])
        return cls(**config)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """How the masks are searched; recorded in the masks artifact."""

    rounds: int = setting(4, "Pruning rounds per task.", low=1)
    remaining: float = setting(
        0.2, "Share of MLP weights left after the last round (sets q).", low=0.0, high=1.0, low_open=True
    )
    scope: str = setting(
        GLOBAL,
        "One magnitude threshold over the whole MLP, or the same share per layer.",
        flag="prune-scope",
        choices=SCOPES,
    )
    granularity: str = CONNECTION  # chosen with the model (`pipeline.configs.MODELS`)
    rewind_to: str = setting(
        REWIND_WARMUP,
        "Rewind each round to sNET_init (after warmup) or to the random initialisation.",
        choices=REWIND_TARGETS,
    )
    min_sparsity: float = setting(
        0.0,
        "Only rounds with at least this share of MLP weights pruned may be chosen.",
        low=0.0,
        high=1.0,
        high_open=True,
    )
    # Whole passes at most (early stopping may end sooner); below 1, that share of one pass.
    # Short by default, as late rewinding in lottery-ticket work: after a whole pass the id
    # embeddings of sNET_init have seen every row, and the final training from there
    # overfits (benchmarks/comparison.py, 1M impressions: CTR AUC 0.693 after a whole
    # pass, 0.710 after a fifth; single-task 0.707).
    warmup_epochs: float = setting(
        0.2,
        "At most this many warmup passes; below 1, that share of one pass (a short warmup).",
        low=0.0,
        low_open=True,
    )
    epochs_per_round: int = setting(1, "At most this many passes per search round.", low=1)

    def __post_init__(self) -> None:
        if self.rewind_to not in REWIND_TARGETS:
            raise ValueError(f"rewind_to must be one of {REWIND_TARGETS}, not {self.rewind_to!r}")
        if not (0 < self.warmup_epochs < 1 or float(self.warmup_epochs).is_integer() and self.warmup_epochs >= 1):
            raise ValueError(
                f"warmup_epochs must be a share of one pass in (0, 1) or whole passes, not {self.warmup_epochs}"
            )
        rate_for(self.remaining, self.rounds)  # validates remaining and rounds
        if not 0 <= self.min_sparsity < 1:
            raise ValueError(f"min_sparsity {self.min_sparsity} is not in [0, 1)")

    @property
    def rate(self) -> float:
        """q: the share of the remaining weights each round drops."""
        return rate_for(self.remaining, self.rounds)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: Mapping) -> "SearchConfig":
        return cls(**config)


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """Everything MaskSearch and the Trainer need to build and train the model: one value,
    given to both components (as JSON), so that they cannot disagree."""

    features: FeatureConfig
    network: NetworkConfig
    train: TrainConfig
    search: SearchConfig

    def to_dict(self) -> dict:
        return {
            "features": self.features.to_dict(),
            "network": self.network.to_dict(),
            "train": self.train.to_dict(),
            "search": self.search.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, settings: Mapping) -> "ModelSettings":
        return cls(
            FeatureConfig.from_dict(settings["features"]),
            NetworkConfig.from_dict(settings["network"]),
            TrainConfig.from_dict(settings["train"]),
            SearchConfig.from_dict(settings["search"]),
        )
