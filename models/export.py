"""SavedModels with serving signatures over raw logs: Transform's graph, then the network.

Two kinds of model come from one trained network:
- the multi-task model the Trainer writes for the Evaluator (`export_serving_model`): both
  heads, each through its own mask;
- one model per task for TF Serving (`export_task_model`): for sparse sharing, the task's
  mask folded into plain kernels (`TaskNetwork`: no mask or pruning variables, no other
  task's head, no training state), and with `compact=True` the units the mask switched
  off removed, so that the dense layers are physically smaller; for every other variant
  (`DenseTaskModel`), the task's forward pass over exactly the trained variables it reads
  (an MMoE CTR model: embeddings, experts, CTR gate, tower and head; no CVR gate or tower).

Signatures: `serving_default` takes serialized `tf.Example`s in the raw log format and
applies the Transform graph before the network, so that clients (and TFMA, which feeds it
the eval split as it is logged) never see ids; `serving_raw` takes the raw features as
named string tensors, [batch, max_values] each, padded with "". Labels and bookkeeping
columns are not inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Mapping

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from lt4rec.models import features, layers, masks, network

NOT_INPUTS = (features.CLICK_LABEL, features.WATCH_RATIO_LABEL, features.REQUEST_ID, features.PRODUCTION_PCTR)
EXAMPLES_INPUT = "examples"
ASSETS_EXTRA = "assets.extra"
METADATA_FILE = "lt4rec_model.json"
DENSE, SPARSE, MEASURE = "dense", "sparse", "measure"
MATMUL_CHOICES = (MEASURE, DENSE, SPARSE)
SPARSE_CANDIDATE_DENSITY = 0.5  # denser layers are never timed as sparse
SPARSE_MARGIN = 0.9  # the sparse path must take at most this share of the dense time


def raw_input_spec(transform_output: tft.TFTransformOutput) -> dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]:
    """The raw features a request carries: the Transform schema's, less labels and bookkeeping."""
    spec = dict(transform_output.raw_feature_spec())
    for name in NOT_INPUTS:
        spec.pop(name, None)
    return spec


class TaskNetwork(tf.Module):
    """One task's network with its mask folded in: embeddings, cross, plain dense layers, head.

    `compact`: remove the hidden units that cannot affect the score (no kept incoming
    weight and no bias, so always 0 after ReLU; or no kept outgoing weight), their
    columns from their layer and their rows from the next, so the layers are physically
    smaller. `matmul`: MEASURE times each hidden layer that is still sparse enough both
    ways at `batch` rows, as a dense matmul and as a sparse-dense matmul over its
    nonzeros, and keeps the faster (`layer_paths` records the choice and the timings);
    DENSE or SPARSE forces one path for every hidden layer.
    """

    def __init__(
        self, model: network.RankingNetwork, task: str, compact: bool = False, matmul: str = MEASURE, batch: int = 200
    ):
        if matmul not in MATMUL_CHOICES:
            raise ValueError(f"matmul must be one of {MATMUL_CHOICES}, not {matmul!r}")
        super().__init__(name=f"{task}_network")
        self.task = task
        self.embeddings = _copy_embeddings(model.embeddings)
        self.cross = layers.FeatureCross()
        self.view = _copy_embeddings(model.cvr_view) if model.cvr_view is not None and task == "cvr" else None
        kernels, biases = _folded_tower(model, task)
        if model.cvr_view is not None and task != "cvr":
            kernels[0] = kernels[0][: model.shared_input_width]  # inputs this task never sees
        head = model.heads[task]
        kernels.append(head.kernel.numpy())
        biases.append(head.bias.numpy())
        self.dense_weights = sum(int(kernel.size) for kernel in kernels[:-1])  # the unpruned MLP's
        if compact:
            kernels, biases = _drop_dead_units(kernels, biases)
        self.layer_paths = [choose_matmul_path(kernel, batch, matmul) for kernel in kernels[:-1]]
        self.kernels = []
        for index, (kernel, path) in enumerate(zip(kernels, [*self.layer_paths, LayerPath.dense(kernels[-1])])):
            if path.path == SPARSE:
                self.kernels.append(SparseKernel.from_dense(kernel, name=f"kernel_{index}"))
            else:
                self.kernels.append(tf.Variable(kernel, trainable=False, name=f"kernel_{index}"))
        self.biases = [tf.Variable(b, trainable=False, name=f"bias_{i}") for i, b in enumerate(biases)]
        self.kept_weights = sum(int(np.count_nonzero(kernel)) for kernel in kernels[:-1])

    @property
    def layer_widths(self) -> list[int]:
        return [int(path.shape[1]) for path in self.layer_paths]

    def metadata(self) -> dict:
        """What the model is, for `assets.extra/` beside it: task, widths, paths, weights kept."""
        return {
            "task": self.task,
            "output": network.OUTPUT_NAMES[self.task],
            "layer_widths": self.layer_widths,
            "mlp_weights_kept": self.kept_weights,
            "mlp_weights_dense": self.dense_weights,
            "mlp_share_kept": self.kept_weights / self.dense_weights,
            "layers": [dataclasses.asdict(path) for path in self.layer_paths],
        }

    def __call__(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        hidden = self.cross(self.embeddings(inputs))
        if self.view is not None:
            fields = self.view(inputs)
            hidden = tf.concat([hidden, tf.reshape(fields, [-1, fields.shape[1] * fields.shape[2]])], axis=1)
        for kernel, bias in zip(self.kernels[:-1], self.biases[:-1]):
            hidden = tf.nn.relu(_matmul(hidden, kernel) + bias)
        return tf.sigmoid(tf.squeeze(tf.matmul(hidden, self.kernels[-1]) + self.biases[-1], axis=1))



@dataclasses.dataclass(frozen=True)
class LayerPath:
    """How one hidden layer multiplies, and the timings (microseconds per batch) that chose it."""

    shape: tuple[int, int]
    density: float
    path: str
    dense_us: float | None = None
    sparse_us: float | None = None

    @classmethod
    def dense(cls, kernel: np.ndarray) -> "LayerPath":
        return cls(tuple(kernel.shape), float(np.count_nonzero(kernel) / max(kernel.size, 1)), DENSE)


class SparseKernel(tf.Module):
    """A kernel kept as its nonzeros: indices [nnz, 2] and values [nnz]."""

    def __init__(self, indices: tf.Variable, values: tf.Variable, shape: tuple[int, int]):
        super().__init__()
        self.indices, self.values, self.shape = indices, values, tuple(int(d) for d in shape)

    @classmethod
    def from_dense(cls, kernel: np.ndarray, name: str | None = None) -> "SparseKernel":
        """The nonzeros of `kernel`: variables named `<name>_indices`/`_values`, or constants without a name."""
        rows, columns = np.nonzero(kernel)
        indices, values = np.stack([rows, columns], axis=1).astype(np.int64), kernel[rows, columns]
        if name is None:
            return cls(tf.constant(indices), tf.constant(values), kernel.shape)
        return cls(
            tf.Variable(indices, trainable=False, name=f"{name}_indices"),
            tf.Variable(values, trainable=False, name=f"{name}_values"),
            kernel.shape,
        )

    def tensor(self) -> tf.SparseTensor:
        return tf.SparseTensor(self.indices, self.values, self.shape)


def _matmul(hidden: tf.Tensor, kernel: tf.Variable | SparseKernel) -> tf.Tensor:
    if isinstance(kernel, SparseKernel):
        # hidden @ K as (K^T @ hidden^T)^T: TF's sparse matmul takes the sparse operand first.
        return tf.transpose(tf.sparse.sparse_dense_matmul(kernel.tensor(), hidden, adjoint_a=True, adjoint_b=True))
    return tf.matmul(hidden, kernel)


def choose_matmul_path(kernel: np.ndarray, batch: int, matmul: str = MEASURE, repeats: int = 50) -> LayerPath:
    """Dense or sparse for one layer: forced, or by timing both on this machine (best of `repeats`)."""
    layer = LayerPath.dense(kernel)
    if matmul != MEASURE:
        return dataclasses.replace(layer, path=matmul)
    if layer.density > SPARSE_CANDIDATE_DENSITY:
        return layer
    inputs = tf.random.stateless_normal([batch, kernel.shape[0]], seed=[0, 0])
    sparse = SparseKernel.from_dense(kernel)
    dense_us = _best_time(tf.function(lambda: tf.matmul(inputs, tf.constant(kernel))), repeats)
    sparse_us = _best_time(tf.function(lambda: _matmul(inputs, sparse)), repeats)
    path = SPARSE if sparse_us <= SPARSE_MARGIN * dense_us else DENSE
    return dataclasses.replace(layer, path=path, dense_us=round(dense_us, 1), sparse_us=round(sparse_us, 1))


def _best_time(function: Callable[[], tf.Tensor], repeats: int) -> float:
    function().numpy()  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function().numpy()
        times.append(time.perf_counter() - start)
    return 1e6 * min(times)


def _drop_dead_units(kernels: list[np.ndarray], biases: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Removes hidden units that are always 0 (no input, no bias) or feed nothing, back to front."""
    kernels, biases = list(kernels), list(biases)
    for index in reversed(range(len(kernels) - 1)):
        fed = np.any(kernels[index] != 0, axis=0) | (biases[index] != 0)
        feeds = np.any(kernels[index + 1] != 0, axis=1)
        live = np.flatnonzero(fed & feeds)
        kernels[index], biases[index] = kernels[index][:, live], biases[index][live]
        kernels[index + 1] = kernels[index + 1][live, :]
    return kernels, biases


def _copy_embeddings(source: layers.FieldEmbeddings) -> layers.FieldEmbeddings:
    copy = layers.FieldEmbeddings(source.feature_config, source.dim, name=source.name)
    copy.build(None)
    for name, table in source.tables.items():
        copy.tables[name].build(None)
        copy.tables[name].set_weights(table.get_weights())
    return copy


def _folded_tower(model: network.RankingNetwork, task: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Kernels and biases of the task's MLP with its mask folded in."""
    kernels, biases = [], []
    for layer in model.towers[task]:
        if isinstance(layer, masks.TaskMaskedPruneLowMagnitude):
            kernel, bias = layer.folded(task)
        else:
            kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
        kernels.append(kernel)
        biases.append(bias)
    return kernels, biases


class DenseTaskModel(tf.Module):
    """One task of an unmasked network (every variant but sparse sharing), as TF Serving gets it.

    Calls the trained network's forward pass for `task` and tracks only the variables that
    pass reads (found by tracing it), so that the SavedModel holds nothing of the other
    task's gates, towers, heads or, for single-task networks, embeddings. The metadata has
    the keys of `TaskNetwork.metadata` (every kernel dense and kept), the variant, and the
    parameter counts, so that exports of different variants compare.
    """

    def __init__(self, model: network.RankingNetwork, task: str):
        if model.masked:
            raise ValueError("a sparse-sharing network exports through TaskNetwork, which folds its masks")
        super().__init__(name=f"{task}_network")
        self.task = task
        self.variant = model.config.variant
        self._forward = functools.partial(_task_output, model, task)  # not tracked: the model is not saved
        spec = {feature.name: tf.TensorSpec([None, feature.max_values], tf.int64) for feature in features.FEATURES}
        read = {variable.ref() for variable in tf.function(self._forward).get_concrete_function(spec).variables}
        self.kept = [variable for variable in model.variables if variable.ref() in read]
        embedding = {
            variable.ref()
            for layer in model.submodules
            if isinstance(layer, layers.FieldEmbeddings)
            for variable in layer.variables
        }
        head = {variable.ref() for variable in model.heads[task].variables}
        self.embedding_parameters = sum(int(v.shape.num_elements()) for v in self.kept if v.ref() in embedding)
        self.parameters = sum(int(v.shape.num_elements()) for v in self.kept)
        self._kernels = [v for v in self.kept if len(v.shape) == 2 and v.ref() not in embedding | head]
        self.layer_paths = [LayerPath(tuple(int(d) for d in v.shape), 1.0, DENSE) for v in self._kernels]

    @property
    def layer_widths(self) -> list[int]:
        """The output widths of the task's kernels below its head (experts and gates included), in creation order."""
        return [int(path.shape[1]) for path in self.layer_paths]

    @property
    def kept_weights(self) -> int:
        return sum(int(v.shape.num_elements()) for v in self._kernels)

    def metadata(self) -> dict:
        return {
            "task": self.task,
            "output": network.OUTPUT_NAMES[self.task],
            "variant": self.variant,
            "layer_widths": self.layer_widths,
            "mlp_weights_kept": self.kept_weights,
            "mlp_weights_dense": self.kept_weights,
            "mlp_share_kept": 1.0,
            "parameters": self.parameters,
            "embedding_parameters": self.embedding_parameters,
            "layers": [{"name": v.name, **dataclasses.asdict(path)} for v, path in zip(self._kernels, self.layer_paths)],
        }

    def __call__(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return self._forward(inputs)


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
    model: network.RankingNetwork,
    task: str,
    transform_output: tft.TFTransformOutput,
    path: str,
    compact: bool = True,
    matmul: str = MEASURE,
) -> "TaskNetwork | DenseTaskModel":
    """One task's SavedModel for TF Serving, with the mask folded in (and compacted).

    Sparse sharing goes through `TaskNetwork` (`compact` and `matmul` apply); every other
    variant through `DenseTaskModel` (nothing to fold or compact). `assets.extra/` (which
    TF Serving leaves alone) gets `METADATA_FILE`: the task, the layer widths, the share
    of MLP weights kept and each layer's matmul path.
    """
    if model.masked:
        task_network = TaskNetwork(model, task, compact=compact, matmul=matmul)
    else:
        task_network = DenseTaskModel(model, task)
    ServingModule({network.OUTPUT_NAMES[task]: task_network}, transform_output).save(path)
    tf.io.gfile.makedirs(os.path.join(path, ASSETS_EXTRA))
    with tf.io.gfile.GFile(os.path.join(path, ASSETS_EXTRA, METADATA_FILE), "w") as f:
        json.dump(task_network.metadata(), f, indent=2)
    return task_network


def read_metadata(path: str) -> dict:
    """The metadata `export_task_model` wrote beside a SavedModel."""
    with tf.io.gfile.GFile(os.path.join(path, ASSETS_EXTRA, METADATA_FILE)) as f:
        return json.load(f)
