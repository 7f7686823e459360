"""SavedModels with serving signatures over raw logs: Transform's graph, then the network.

Two kinds of model come from one trained network:
- the multi-task model the Trainer writes for the Evaluator (`export_serving_model`): both
  heads, each through its own mask;
- one model per task for TF Serving (`export_task_model`): the task's mask folded into
  plain kernels (`TaskNetwork`: no mask or pruning variables, no other task's head, no
  training state), and with `compact=True` the units the mask switched off removed, so
  that the dense layers are physically smaller.

Signatures: `serving_default` takes serialized `tf.Example`s in the raw log format and
applies the Transform graph before the network, so that clients (and TFMA, which feeds it
the eval split as it is logged) never see ids; `serving_raw` takes the raw features as
named string tensors, [batch, max_values] each, padded with "". Labels and bookkeeping
columns are not inputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from lt4rec.models import features, layers, masks, network

NOT_INPUTS = (features.CLICK_LABEL, features.WATCH_RATIO_LABEL, features.REQUEST_ID, features.PRODUCTION_PCTR)
EXAMPLES_INPUT = "examples"


def raw_input_spec(transform_output: tft.TFTransformOutput) -> dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]:
    """The raw features a request carries: the Transform schema's, less labels and bookkeeping."""
    spec = dict(transform_output.raw_feature_spec())
    for name in NOT_INPUTS:
        spec.pop(name, None)
    return spec


class TaskNetwork(tf.Module):
    """One task's network with its mask folded in: embeddings, cross, plain dense layers, head.

    `compact`: drop the units the task's mask switched off (no kept incoming weight, so
    their output is exactly zero) from their layer and their rows from the next one.
    """

    def __init__(self, model: network.RankingNetwork, task: str, compact: bool = False):
        super().__init__(name=f"{task}_network")
        self.task = task
        self.embeddings = _copy_embeddings(model.embeddings)
        self.cross = layers.FeatureCross()
        self.view = _copy_embeddings(model.cvr_view) if model.cvr_view is not None and task == "cvr" else None
        kernels, biases, kept = _folded_tower(model, task)
        if model.cvr_view is not None and task != "cvr":
            kernels[0] = kernels[0][: model.shared_input_width]  # inputs this task never sees
        head = model.heads[task]
        kernels.append(head.kernel.numpy())
        biases.append(head.bias.numpy())
        if compact:
            for index, units in enumerate(kept):
                kernels[index], biases[index] = kernels[index][:, units], biases[index][units]
                kernels[index + 1] = kernels[index + 1][units, :]
        self.kernels = [tf.Variable(k, trainable=False, name=f"kernel_{i}") for i, k in enumerate(kernels)]
        self.biases = [tf.Variable(b, trainable=False, name=f"bias_{i}") for i, b in enumerate(biases)]

    @property
    def layer_widths(self) -> list[int]:
        return [int(kernel.shape[1]) for kernel in self.kernels[:-1]]

    def __call__(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        hidden = self.cross(self.embeddings(inputs))
        if self.view is not None:
            fields = self.view(inputs)
            hidden = tf.concat([hidden, tf.reshape(fields, [-1, fields.shape[1] * fields.shape[2]])], axis=1)
        for kernel, bias in zip(self.kernels[:-1], self.biases[:-1]):
            hidden = tf.nn.relu(tf.matmul(hidden, kernel) + bias)
        return tf.sigmoid(tf.squeeze(tf.matmul(hidden, self.kernels[-1]) + self.biases[-1], axis=1))


def _copy_embeddings(source: layers.FieldEmbeddings) -> layers.FieldEmbeddings:
    copy = layers.FieldEmbeddings(source.feature_config, source.dim, name=source.name)
    copy.build(None)
    for name, table in source.tables.items():
        copy.tables[name].build(None)
        copy.tables[name].set_weights(table.get_weights())
    return copy


def _folded_tower(model: network.RankingNetwork, task: str) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Kernels and biases of the task's MLP with its mask folded in, and each layer's live units."""
    kernels, biases, kept = [], [], []
    for layer in model.towers[task]:
        if isinstance(layer, masks.TaskMaskedPruneLowMagnitude):
            kernel, bias = layer.folded(task)
            units = masks.units_kept(layer.task_mask(task))
        else:
            kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
            units = np.arange(kernel.shape[1])
        kernels.append(kernel)
        biases.append(bias)
        kept.append(units)
    return kernels, biases, kept


class ServingModule(tf.Module):
    """Scoring behind Transform's graph, with the signatures TF Serving calls."""

    def __init__(self, scorers: Mapping[str, Callable], transform_output: tft.TFTransformOutput):
        super().__init__()
        self.scorers = dict(scorers)  # output name -> callable(transformed inputs) -> [batch]
        self.transform_layer = transform_output.transform_features_layer()
        self.raw_spec = raw_input_spec(transform_output)

    def _score(self, raw: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        transformed = self.transform_layer(dict(raw))
        inputs = {name: transformed[name] for name in features.FEATURE_NAMES}
        return {output: score(inputs) for output, score in self.scorers.items()}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_examples(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._score(tf.io.parse_example(serialized, self.raw_spec))

    @tf.function(
        input_signature=[
            {spec.name: tf.TensorSpec([None, spec.max_values], tf.string, name=spec.name) for spec in features.FEATURES}
        ]
    )
    def serve_raw(self, raw: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Raw features as named tensors, "" for padding (and for a missing value, as `-1` is)."""
        return self._score({name: tf.sparse.from_dense(values) for name, values in raw.items()})

    def save(self, path: str) -> None:
        signatures = {
            "serving_default": self.serve_examples.get_concrete_function(),
            "serving_raw": self.serve_raw.get_concrete_function(),
        }
        tf.saved_model.save(self, path, signatures=signatures)


def export_serving_model(model: network.RankingNetwork, transform_output: tft.TFTransformOutput, path: str) -> None:
    """The multi-task model (each head through its own mask), for the Evaluator."""
    scorers = {network.OUTPUT_NAMES[task]: functools.partial(_task_output, model, task) for task in model.config.tasks}
    module = ServingModule(scorers, transform_output)
    module.model = model  # tracked, so that its variables are saved
    module.save(path)


def _task_output(model: network.RankingNetwork, task: str, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
    return model(inputs, task=task)[task]


def export_task_model(
    model: network.RankingNetwork, task: str, transform_output: tft.TFTransformOutput, path: str, compact: bool = True
) -> TaskNetwork:
    """One task's SavedModel for TF Serving, with the mask folded in (and compacted)."""
    task_network = TaskNetwork(model, task, compact=compact)
    ServingModule({network.OUTPUT_NAMES[task]: task_network}, transform_output).save(path)
    return task_network
