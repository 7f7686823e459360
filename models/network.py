"""The shared CTR/CVR network (sNET) and the baselines, all from one class.

    ids ─> FieldEmbeddings ─> FeatureCross ─> MLP (512-256-128) ─┬─> ctr head (sigmoid): P(click)
                                                                └─> cvr head (sigmoid): E[watch ratio]

The variants differ only in what sits between the feature cross and the heads (widths
below are the defaults; "MLP" is the sparse-sharing MLP, 830x512x256x128 with 20 fields
of dimension 32: 589,696 weights and biases):
- sparse sharing (S-Weight, S-Neuron): one MLP whose kernels carry one mask per task
  (`masks.TaskMaskedPruneLowMagnitude`); the task's mask is applied on its forward pass.
  Connection- or neuron-level is a property of the masks the search finds, not of the net.
- hard sharing: embeddings and cross layer shared, one plain MLP tower per task (2x MLP).
- shared bottom: one plain MLP for both tasks (the dense reference of the speed benchmark).
- single task: one task, one plain MLP; with both tasks, two entirely separate networks
  (each its own embeddings and MLP: 2x MLP and 2x embeddings), trained in one run.
- layer sharing (the journal paper's Layer_Share baseline, "Hyper-Parameter Setting"): the
  MLP shared by both tasks, CVR's head on top of it, and an extra CTR tower
  (`ctr_tower_units`, 512-256-128: 230,272 more) between the MLP and CTR's head (1.39x MLP).
  This is the paper's setting read literally ("1680*512*256*128 for all competitors except
  the layer level-sharing model, which adds a 512*256*128 tower for the CTR task"; Fig. 1:
  "an extra upper tower for the CTR task"). Its section 2.1 also says only the embedding
  layer is shared ("the remaining layers are not shared"): that reading is `hard_sharing`.
- MMoE (Ma et al. 2018): `num_experts` expert MLPs on the cross output, one softmax gate
  per task over them, a task tower (`tower_units`) and head. Default: 4 experts of 128-64
  (together as wide as the MLP's first layer, which holds 72% of its weights), towers of
  32: 469,370 weights with the heads (0.80x MLP); a task reads 463,933 of them.
- PLE (Tang et al. 2020): `extraction_layers` levels (`layers.ExtractionLayer`), each with
  `shared_experts` shared and `task_experts` own experts per task of `expert_units`, task
  gates over own + shared experts and, below the last level, a shared gate over all of
  them; task towers and heads. Default: 2 levels of 2 shared + 1 per task experts of
  128-64 (4 experts per level, like MMoE's), towers of 32: 537,726 weights (0.91x MLP),
  516,349 of them read by a task.
- ESMM (Ma et al. 2018, Entire Space Multi-task Model): a CTR and a CVR tower (each
  `hidden_units`, 2x MLP) on the shared embeddings; ctr = pCTR, cvr = pCVR, and the
  trainer learns pCVR through pCTCVR = pCTR * pCVR on all impressions
  (`NetworkConfig.esmm`); the network itself is hard sharing's.
With `task=k` the network computes only what task k reads (for PLE that includes the other
task's experts below the last level, which the shared gates mix).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from lt4rec import features
from lt4rec.models import layers, masks
from lt4rec.models.config import (
    ESMM,
    EXPERT_VARIANTS,
    HARD_SHARING,
    LAYER_SHARING,
    MMOE,
    SPARSE_SHARING,
    NetworkConfig,
)

OUTPUT_NAMES = {"ctr": "ctr", "cvr": "cvr"}  # what each head predicts, as exported


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
        dim = config.embedding_dim
        if config.separate_networks:  # each task its own embeddings (the cross has no weights)
            self.embeddings = None
            self.task_embeddings = {
                task: layers.FieldEmbeddings(feature_config, dim, name=f"{task}_field_embeddings")
                for task in config.tasks
            }
        else:
            self.embeddings = layers.FieldEmbeddings(feature_config, dim, name="field_embeddings")
            self.task_embeddings = None
        self.cross = layers.FeatureCross(name="feature_cross")
        self.cvr_view = (
            layers.FieldEmbeddings(feature_config, config.multi_view_dim, name="cvr_view_embeddings")
            if config.multi_view_dim
            else None
        )
        # `towers[task]`: the Dense layers from the task's tower input to its head, in order;
        # one layer object in two towers is shared (and computed once per call).
        self.experts = self.gates = self.extraction = None
        if config.variant in (HARD_SHARING, ESMM):
            self.towers = {task: _mlp(config.hidden_units, f"{task}_tower", masked=False) for task in config.tasks}
        elif config.separate_networks:
            self.towers = {task: _mlp(config.hidden_units, f"{task}_mlp", masked=False) for task in config.tasks}
        elif config.variant == LAYER_SHARING:
            shared = _mlp(config.hidden_units, "mlp", masked=False)
            ctr_tower = _mlp(config.ctr_tower_units, "ctr_tower", masked=False)
            self.towers = {task: shared + ctr_tower if task == "ctr" else list(shared) for task in config.tasks}
        elif config.variant in EXPERT_VARIANTS:
            if config.variant == MMOE:
                self.experts = layers.Experts(config.num_experts, config.expert_units, name="experts")
                self.gates = {task: layers.Gate(config.num_experts, name=f"{task}_gate") for task in config.tasks}
            else:
                self.extraction = [
                    layers.ExtractionLayer(
                        config.tasks,
                        config.shared_experts,
                        config.task_experts,
                        config.expert_units,
                        last=level == config.extraction_layers - 1,
                        name=f"extraction_{level}",
                    )
                    for level in range(config.extraction_layers)
                ]
            self.towers = {task: _mlp(config.tower_units, f"{task}_tower", masked=False) for task in config.tasks}
        else:
            shared = _mlp(config.hidden_units, "mlp", masked=config.variant == SPARSE_SHARING)
            self.towers = {task: shared for task in config.tasks}
        self.heads = {
            task: tf.keras.layers.Dense(1, activation="sigmoid", name=f"{task}_head") for task in config.tasks
        }

    def start_at_base_rates(self, rates: Mapping[str, float]) -> None:
        """Set each head's bias to logit(base rate), so an untrained model predicts what no skill does.

        Without it a fresh model starts at 0.5 for every task; with few rows and early stopping
        it can stop before it has even learned the mean, and then scores worse than the no-skill
        baseline the Evaluator gates on. Call it on a built model, before any training.
        """
        for task, head in self.heads.items():
            rate = min(max(float(rates[task]), 1e-4), 1 - 1e-4)
            head.bias.assign([np.log(rate / (1 - rate))])

    @property
    def masked(self) -> bool:
        return self.config.variant == SPARSE_SHARING

    @property
    def shared_input_width(self) -> int:
        return layers.FeatureCross.output_width(len(features.FEATURE_NAMES), self.config.embedding_dim)

    @property
    def esmm(self) -> bool:
        return self.config.esmm

    def call(self, inputs: Mapping[str, tf.Tensor], task: str | None = None, training=None) -> dict[str, tf.Tensor]:
        """Predictions of `task`, or of every task (each through its own mask or tower)."""
        tasks = self.config.tasks if task is None else (task,)
        tower_inputs = self._tower_inputs(inputs, tasks)
        outputs, computed = {}, {}
        for name in tasks:
            hidden = tower_inputs[name]
            # A layer shared by two towers on the same input runs once (masked layers: once per task).
            key = (id(hidden), name if self.masked else None)
            for layer in self.towers[name]:
                key = (*key, id(layer))
                if key not in computed:
                    computed[key] = layer(hidden, task=name) if self.masked else layer(hidden)
                hidden = computed[key]
            outputs[name] = tf.squeeze(self.heads[name](hidden), axis=1)
        return outputs

    def _tower_inputs(self, inputs: Mapping[str, tf.Tensor], tasks: tuple[str, ...]) -> dict[str, tf.Tensor]:
        """Each task's input to its tower: the cross output (with CVR's view), or the experts' mixture."""
        view = None
        if self.cvr_view is not None:
            fields = self.cvr_view(inputs)
            view = tf.reshape(fields, [-1, fields.shape[1] * fields.shape[2]])
        if self.task_embeddings is not None:  # separate networks: no zeros for the other task's view
            crossed = {name: self.cross(self.task_embeddings[name](inputs)) for name in tasks}
            return {
                name: tf.concat([crossed[name], view], axis=1) if view is not None and name == "cvr" else crossed[name]
                for name in tasks
            }
        shared = self.cross(self.embeddings(inputs))
        if self.experts is not None:  # MMoE: every task's gate mixes the same experts
            experts = self.experts(shared)
            return {name: self.gates[name](shared, experts) for name in tasks}
        if self.extraction is not None:  # PLE: only the branches the wanted outputs depend on
            wanted = [tuple(tasks)]
            for level in reversed(self.extraction[1:]):
                wanted.insert(0, level.inputs_needed(wanted[0]))
            branches = {name: shared for name in self.extraction[0].inputs_needed(wanted[0])}
            for level, outputs in zip(self.extraction, wanted):
                branches = level(branches, outputs=outputs)
            return {name: branches[name] for name in tasks}
        if view is None:
            return {name: shared for name in tasks}
        # CVR's own view; zeros for any other task.
        return {name: tf.concat([shared, view if name == "cvr" else tf.zeros_like(view)], axis=1) for name in tasks}

    def parameter_counts(self) -> dict[str, int]:
        """Weights and biases of the built network: embedding tables, and everything else."""
        embedding_ids = {
            id(variable)
            for layer in self.submodules
            if isinstance(layer, layers.FieldEmbeddings)
            for variable in layer.trainable_variables
        }
        counts = {"embeddings": 0, "network": 0}
        for variable in self.trainable_variables:
            counts["embeddings" if id(variable) in embedding_ids else "network"] += int(variable.shape.num_elements())
        return counts

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


def id_table_shapes(feature_config: features.FeatureConfig, config: NetworkConfig) -> set[tuple[int, int]]:
    """The shapes of the network's id tables (`layers.FieldEmbeddings`), e.g. to split them over parameter servers."""
    dims = [config.embedding_dim] + ([config.multi_view_dim] if config.multi_view_dim else [])
    return {(table.size, dim) for table in feature_config.tables for dim in dims}
