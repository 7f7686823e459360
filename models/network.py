"""The shared CTR/CVR network (sNET) and the baselines, all from one class.

    ids ─> FieldEmbeddings ─> FeatureCross ─> MLP (512-256-128) ─┬─> ctr head (sigmoid): P(click)
                                                                └─> cvr head (sigmoid): E[watch ratio]

The variants differ only in the MLP:
- sparse sharing (S-Weight, S-Neuron): one MLP whose kernels carry one mask per task
  (`masks.TaskMaskedPruneLowMagnitude`); the task's mask is applied on its forward pass.
  Connection- or neuron-level is a property of the masks the search finds, not of the net.
- hard sharing: embeddings and cross layer shared, one plain MLP tower per task.
- shared bottom: one plain MLP for both tasks (the dense reference of the speed benchmark).
- single task: one task, one plain MLP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import tensorflow as tf

from lt4rec.models import features, layers, masks

SPARSE_SHARING = "sparse_sharing"
HARD_SHARING = "hard_sharing"
SHARED_BOTTOM = "shared_bottom"
SINGLE_TASK = "single_task"
VARIANTS = (SPARSE_SHARING, HARD_SHARING, SHARED_BOTTOM, SINGLE_TASK)
OUTPUT_NAMES = {"ctr": "ctr", "cvr": "cvr"}  # what each head predicts, as exported


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """The shape of the network; recorded with every trained model."""

    variant: str = SPARSE_SHARING
    tasks: tuple[str, ...] = masks.TASKS
    embedding_dim: int = 32
    hidden_units: tuple[int, ...] = (512, 256, 128)
    # Multi-view: this many extra embedding dimensions per field that only CVR sees.
    multi_view_dim: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown network variant {self.variant!r}; one of {VARIANTS}")
        unknown = set(self.tasks) - set(masks.TASKS)
        if unknown or not self.tasks:
            raise ValueError(f"tasks {self.tasks} must be some of {masks.TASKS}")
        if self.variant == SINGLE_TASK and len(self.tasks) != 1:
            raise ValueError("a single-task network has exactly one task")
        if self.multi_view_dim and "cvr" not in self.tasks:
            raise ValueError("multi-view adds CVR-only embeddings: the network needs the cvr task")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: Mapping) -> "NetworkConfig":
        config = dict(config)
        config["tasks"] = tuple(config["tasks"])
        config["hidden_units"] = tuple(config["hidden_units"])
        return cls(**config)


def _mlp(units: tuple[int, ...], name: str, masked: bool) -> list[tf.keras.layers.Layer]:
    mlp = []
    for index, width in enumerate(units):
        dense = tf.keras.layers.Dense(width, activation="relu", name=f"{name}_{index}")
        mlp.append(masks.TaskMaskedPruneLowMagnitude(dense) if masked else dense)
    return mlp


class RankingNetwork(tf.keras.Model):
    """sNET and its baselines: `network(features)` -> {task: prediction of shape [batch]}."""

    def __init__(self, feature_config: features.FeatureConfig, config: NetworkConfig = NetworkConfig(), **kwargs):
        super().__init__(**kwargs)
        self.feature_config = feature_config
        self.config = config
        self.embeddings = layers.FieldEmbeddings(feature_config, config.embedding_dim, name="field_embeddings")
        self.cross = layers.FeatureCross(name="feature_cross")
        self.cvr_view = (
            layers.FieldEmbeddings(feature_config, config.multi_view_dim, name="cvr_view_embeddings")
            if config.multi_view_dim
            else None
        )
        if config.variant == HARD_SHARING:
            self.towers = {task: _mlp(config.hidden_units, f"{task}_tower", masked=False) for task in config.tasks}
        else:
            shared = _mlp(config.hidden_units, "mlp", masked=config.variant == SPARSE_SHARING)
            self.towers = {task: shared for task in config.tasks}
        self.heads = {task: tf.keras.layers.Dense(1, activation="sigmoid", name=f"{task}_head") for task in config.tasks}

    @property
    def masked(self) -> bool:
        return self.config.variant == SPARSE_SHARING

    @property
    def shared_input_width(self) -> int:
        return layers.FeatureCross.output_width(len(features.FEATURE_NAMES), self.config.embedding_dim)

    def call(self, inputs: Mapping[str, tf.Tensor], task: str | None = None, training=None) -> dict[str, tf.Tensor]:
        """Predictions of `task`, or of every task (each through its own mask or tower)."""
        shared = self.cross(self.embeddings(inputs))
        view = None
        if self.cvr_view is not None:
            fields = self.cvr_view(inputs)
            view = tf.reshape(fields, [-1, fields.shape[1] * fields.shape[2]])
        outputs = {}
        for name in self.config.tasks if task is None else (task,):
            hidden = shared
            if view is not None:  # CVR's own view; zeros for any other task
                hidden = tf.concat([shared, view if name == "cvr" else tf.zeros_like(view)], axis=1)
            for layer in self.towers[name]:
                hidden = layer(hidden, task=name) if self.masked else layer(hidden)
            outputs[name] = tf.squeeze(self.heads[name](hidden), axis=1)
        return outputs

    def initial_masks(self, task: str) -> masks.Masks:
        """Round 0 of the mask search: every weight, except inputs that `task` never sees."""
        result = masks.full_masks(self)
        if self.cvr_view is not None and task != "cvr":
            first = masks.masked_layers(self)[0].name
            result[first][self.shared_input_width :, :] = 0.0
        return result

    def build_for(self, example_batch: Mapping[str, tf.Tensor]) -> None:
        """Create every variable by one call per task."""
        for task in self.config.tasks:
            self(example_batch, task=task)
