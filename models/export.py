"""SavedModels with serving signatures over raw logs: Transform's graph, then the network.

Three kinds of model come from one trained network:
- the multi-task model the Trainer writes for the Evaluator (`export_serving_model`): both
  heads, each through its own mask, the tables stored as the pushed models store theirs;
- one model per task for TF Serving (`export_task_model`): for sparse sharing, the task's
  mask folded into plain kernels (`TaskNetwork` = `SharedFront` + `FoldedTower`: no mask
  or pruning variables, no other task's head, no training state), and with `compact=True`
  the units the mask switched off removed, so that the dense layers are physically
  smaller; for every other variant (`DenseTaskModel`), the task's forward pass over
  exactly the trained variables it reads (an MMoE CTR model: embeddings, experts, CTR
  gate, tower and head; no CVR gate or tower);
- for sparse sharing, the joint `rank` model (`export_rank_model`, `RankNetwork`): one
  shared front under both folded towers, `ctr`, `cvr` and `rankscore` from one pass.

Signatures: `serving_default` takes serialized `tf.Example`s in the raw log format and
applies the Transform graph before the network, so that clients (and TFMA, which feeds it
the eval split as it is logged) never see ids; `serving_context` takes one ranking
request as its context features (`features.CONTEXT_FEATURE_NAMES`, one tf.Example) and
its candidates' (tf.Examples), and scores every candidate as if it carried the context
(which the network computes once: its embeddings, its part of the cross and of each
tower's first layer; `serving_default` does the same when every row carries one context);
`serving_raw` takes the raw features as named string tensors, [batch, max_values] each,
padded with "". The rank model's signatures also take `rank_weights`, but for
`serving_scores` (serialized examples in, `ctr` and `cvr` out), which batch scoring calls.
Labels and bookkeeping columns are not inputs.

Embedding storage (`embedding_storage` of the task and rank exports, `EMBEDDING_STORAGE`
by default): the id tables, ~80% of a model's bytes, are stored as trained (float32), as
float16, or as int8 with one float32 scale per row (symmetric per-row quantization:
`quantize_table`). The graph gathers the rows a batch reads, then dequantizes them to
float32: only the stored tables shrink, everything after the lookup computes in float32.
The metadata records the storage and the tables' bytes.
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
from tensorflow_serving.apis import predict_pb2

from lt4rec import features
from lt4rec.models import layers, masks, network, warmup
from lt4rec.models.config import DENSE, EMBEDDING_STORAGES, FLOAT16, FLOAT32, MATMUL_CHOICES, MEASURE, SPARSE
from lt4rec.models.config import INT8 as INT8  # (re-exported: export.INT8 names a storage, as the others)

NOT_INPUTS = (features.CLICK_LABEL, features.WATCH_RATIO_LABEL, features.REQUEST_ID, features.PRODUCTION_PCTR)
EXAMPLES_INPUT = "examples"
CONTEXT_INPUT = "context"  # serving_context: the request's context features, one serialized tf.Example
RANK_WEIGHTS_INPUT = "rank_weights"  # the rank model's: the exponents (a, b, c) of rankscore
RANKSCORE_OUTPUT = "rankscore"
CONTEXT_SIGNATURE = "serving_context"
# The rank model's one-input signature (serialized examples -> ctr, cvr): for batch scoring
# through tfx_bsl's RunInference, which feeds a signature nothing but the examples.
SCORES_SIGNATURE = "serving_scores"
RANK_MODEL = "rank"  # the joint model's name in TF Serving's layout, beside the task models
ASSETS_EXTRA = warmup.ASSETS_EXTRA
METADATA_FILE = "lt4rec_model.json"
SPARSE_CANDIDATE_DENSITY = 0.5  # denser layers are never timed as sparse
SPARSE_MARGIN = 0.9  # the sparse path must take at most this share of the dense path's CPU time
# How every export stores the embedding tables unless told (one place: the export functions'
# defaults read it). float32 keeps the trained tables bit for bit.
EMBEDDING_STORAGE = FLOAT32
INT8_LEVELS = 127  # int8 storage: a row's values are multiples of its scale, max|row| / 127, in [-127, 127]


def raw_input_spec(transform_output: tft.TFTransformOutput) -> dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]:
    """The raw features a request carries: the Transform schema's, less labels and bookkeeping."""
    spec = dict(transform_output.raw_feature_spec())
    for name in NOT_INPUTS:
        spec.pop(name, None)
    return spec


@dataclasses.dataclass(frozen=True)
class TowerInputs:
    """A tower's input columns in two parts: those that read only the request's context fields
    (`features.CONTEXT_FEATURE_NAMES`), [1 or batch, width] each, and the candidates' (the
    rest, [batch, width]); `*_view` is CVR's view of the same fields, or None."""

    request_cross: tf.Tensor
    candidate_cross: tf.Tensor
    request_view: tf.Tensor | None
    candidate_view: tf.Tensor | None


# Each part's fields by their index in `features.FEATURE_NAMES` (the trained network's order).
_REQUEST_FIELDS = [features.FEATURE_NAMES.index(name) for name in features.CONTEXT_FEATURE_NAMES]
_CANDIDATE_FIELDS = [features.FEATURE_NAMES.index(name) for name in features.CANDIDATE_FEATURE_NAMES]


class SharedFront(tf.Module):
    """What both tasks read below their towers: the embeddings, the feature cross, CVR's view.

    `front(inputs, context)` -> `TowerInputs`. A ranking request's context is computed once:
    given apart (`context`, batch 1, as `serving_context` passes it; `inputs` then holds only
    the candidates' features), or found in `inputs` when every row carries the same context
    ids (a request sent as whole examples). Then the context fields are embedded once and the
    request's part of the cross, and of each tower's first layer, is one row for all the
    candidates: the same numbers as computing them on every row.
    """

    def __init__(self, model: network.RankingNetwork, view: bool, embedding_storage: str = EMBEDDING_STORAGE):
        super().__init__(name="shared_front")
        self.embedding_storage = check_storage(embedding_storage)
        self.embeddings = _copy_embeddings(model.embeddings, embedding_storage)
        self.view = _copy_embeddings(model.cvr_view, embedding_storage) if view and model.cvr_view is not None else None

    @property
    def embedding_bytes(self) -> int:
        """The bytes of the stored id tables (and int8's scales)."""
        return sum(_bytes(variable) for variable in self.variables if variable.ref() in _embedding_variables(self))

    def __call__(self, inputs: Mapping[str, tf.Tensor], context: Mapping[str, tf.Tensor] | None = None) -> TowerInputs:
        if context is None:
            rows = {name: inputs[name] for name in features.CONTEXT_FEATURE_NAMES}
            context = tf.cond(_one_context(rows), lambda: {n: ids[:1] for n, ids in rows.items()}, lambda: rows)
        request_cross, candidate_cross = layers.FeatureCross.split(
            self.embeddings(context, names=features.CONTEXT_FEATURE_NAMES),
            self.embeddings(inputs, names=features.CANDIDATE_FEATURE_NAMES),
        )
        if self.view is None:
            return TowerInputs(request_cross, candidate_cross, None, None)
        return TowerInputs(
            request_cross,
            candidate_cross,
            _flat(self.view(context, names=features.CONTEXT_FEATURE_NAMES)),
            _flat(self.view(inputs, names=features.CANDIDATE_FEATURE_NAMES)),
        )


def _one_context(context: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """True if every row has the first row's ids in every context feature (or there are no rows)."""
    return tf.reduce_all([tf.reduce_all(ids == ids[:1]) for ids in context.values()])


def _flat(fields: tf.Tensor) -> tf.Tensor:
    return tf.reshape(fields, [-1, fields.shape[1] * fields.shape[2]])


def _tower_rows(model: network.RankingNetwork, reads_view: bool) -> tuple[np.ndarray, np.ndarray]:
    """The rows of a tower's first kernel (the trained input order) for the request's and the candidates' columns."""
    request, candidates = layers.FeatureCross.split_columns(
        _REQUEST_FIELDS, _CANDIDATE_FIELDS, model.config.embedding_dim
    )
    if reads_view:
        start, dim = model.shared_input_width, model.config.multi_view_dim
        request += [start + index * dim + k for index in _REQUEST_FIELDS for k in range(dim)]
        candidates += [start + index * dim + k for index in _CANDIDATE_FIELDS for k in range(dim)]
    return np.asarray(request), np.asarray(candidates)


class FoldedTower(tf.Module):
    """One task's MLP and head with its mask folded in: plain (or sparse) kernels, no mask variables.

    The first layer is kept as two kernels, its rows for the request's columns and for the
    candidates' (`TowerInputs`), so that the request's product is computed once per request.
    `compact`: remove the hidden units that cannot affect the score (no kept incoming
    weight and no bias, so always 0 after ReLU; or no kept outgoing weight), their
    columns from their layer and their rows from the next, so the layers are physically
    smaller. `matmul`: MEASURE times each hidden layer that is still sparse enough both
    ways at `batch` rows, as a dense matmul and as a sparse-dense matmul over its
    nonzeros, and keeps the one that costs less CPU (`layer_paths` records the choice and
    the times); DENSE or SPARSE forces one path for every hidden layer.
    """

    def __init__(self, model: network.RankingNetwork, task: str, compact: bool, matmul: str, batch: int):
        if matmul not in MATMUL_CHOICES:
            raise ValueError(f"matmul must be one of {MATMUL_CHOICES}, not {matmul!r}")
        super().__init__(name=f"{task}_tower")
        self.task = task
        self.reads_view = model.cvr_view is not None and task == "cvr"
        kernels, biases = _folded_tower(model, task)
        if model.cvr_view is not None and not self.reads_view:
            kernels[0] = kernels[0][: model.shared_input_width]  # inputs this task never sees
        head = model.heads[task]
        kernels.append(head.kernel.numpy())
        biases.append(head.bias.numpy())
        self.dense_weights = sum(int(kernel.size) for kernel in kernels[:-1])  # the unpruned MLP's
        if compact:
            kernels, biases = _drop_dead_units(kernels, biases)
        self.layer_paths = [choose_matmul_path(kernel, batch, matmul) for kernel in kernels[:-1]]
        self.kept_weights = sum(int(np.count_nonzero(kernel)) for kernel in kernels[:-1])
        self._request_rows, self._candidate_rows = _tower_rows(model, self.reads_view)
        first = self.layer_paths[0].path
        self.request_kernel = _stored_kernel(kernels[0][self._request_rows], first, "request_kernel_0")
        self.candidate_kernel = _stored_kernel(kernels[0][self._candidate_rows], first, "candidate_kernel_0")
        paths = [path.path for path in self.layer_paths[1:]] + [DENSE]
        self.kernels = [
            _stored_kernel(kernel, path, f"kernel_{index}")
            for index, (kernel, path) in enumerate(zip(kernels[1:], paths), 1)
        ]  # the layers above the first, then the head
        self.biases = [tf.Variable(b, trainable=False, name=f"bias_{i}") for i, b in enumerate(biases)]

    @property
    def layer_widths(self) -> list[int]:
        return [int(path.shape[1]) for path in self.layer_paths]

    @property
    def input_widths(self) -> tuple[int, int]:
        """The columns of the request's part of its input and of the candidates' (views included)."""
        return len(self._request_rows), len(self._candidate_rows)

    def folded_kernels(self) -> list[np.ndarray]:
        """Every kernel as the dense array it multiplies by, the first in the trained input order."""
        first = np.zeros((len(self._request_rows) + len(self._candidate_rows), self.layer_widths[0]), np.float32)
        first[self._request_rows] = _dense_array(self.request_kernel)
        first[self._candidate_rows] = _dense_array(self.candidate_kernel)
        return [first, *(_dense_array(kernel) for kernel in self.kernels)]

    def metadata(self) -> dict:
        return {
            "task": self.task,
            "output": network.OUTPUT_NAMES[self.task],
            "layer_widths": self.layer_widths,
            "mlp_weights_kept": self.kept_weights,
            "mlp_weights_dense": self.dense_weights,
            "mlp_share_kept": self.kept_weights / self.dense_weights,
            "layers": [dataclasses.asdict(path) for path in self.layer_paths],
        }

    def __call__(self, inputs: TowerInputs) -> tf.Tensor:
        request, candidates = inputs.request_cross, inputs.candidate_cross
        if self.reads_view:
            request = tf.concat([request, inputs.request_view], axis=1)
            candidates = tf.concat([candidates, inputs.candidate_view], axis=1)
        # The request's product is [1, width] when its context was computed once: added to every row.
        hidden = tf.nn.relu(
            _matmul(candidates, self.candidate_kernel) + _matmul(request, self.request_kernel) + self.biases[0]
        )
        for kernel, bias in zip(self.kernels[:-1], self.biases[1:-1]):
            hidden = tf.nn.relu(_matmul(hidden, kernel) + bias)
        return tf.sigmoid(tf.squeeze(tf.matmul(hidden, self.kernels[-1]) + self.biases[-1], axis=1))


def _stored_kernel(kernel: np.ndarray, path: str, name: str) -> "tf.Variable | SparseKernel":
    if path == SPARSE:
        return SparseKernel.from_dense(kernel, name=name)
    return tf.Variable(kernel, trainable=False, name=name)


def _dense_array(kernel: "tf.Variable | SparseKernel") -> np.ndarray:
    return tf.sparse.to_dense(kernel.tensor()).numpy() if isinstance(kernel, SparseKernel) else kernel.numpy()


class TaskNetwork(tf.Module):
    """One task's network with its mask folded in: the shared front and the task's folded tower.

    `compact`, `matmul`, `batch`: as `FoldedTower` takes them; `embedding_storage`: how the
    front stores the id tables (one of `EMBEDDING_STORAGES`).
    """

    def __init__(
        self,
        model: network.RankingNetwork,
        task: str,
        compact: bool = False,
        matmul: str = MEASURE,
        batch: int = 200,
        embedding_storage: str = EMBEDDING_STORAGE,
    ):
        super().__init__(name=f"{task}_network")
        self.task = task
        self.front = SharedFront(model, view=task == "cvr", embedding_storage=embedding_storage)
        self.tower = FoldedTower(model, task, compact, matmul, batch)

    layer_paths = property(lambda self: self.tower.layer_paths)
    layer_widths = property(lambda self: self.tower.layer_widths)
    kept_weights = property(lambda self: self.tower.kept_weights)
    dense_weights = property(lambda self: self.tower.dense_weights)
    folded_kernels = property(lambda self: self.tower.folded_kernels)
    biases = property(lambda self: self.tower.biases)

    embedding_storage = property(lambda self: self.front.embedding_storage)
    embedding_bytes = property(lambda self: self.front.embedding_bytes)

    def metadata(self) -> dict:
        """What the model is, for `assets.extra/` beside it: task, widths, paths, weights kept, table storage."""
        return {**self.tower.metadata(), **_storage_metadata(self)}

    def __call__(self, inputs: Mapping[str, tf.Tensor], context: Mapping[str, tf.Tensor] | None = None) -> tf.Tensor:
        return self.tower(self.front(inputs, context))


class RankNetwork(tf.Module):
    """Both tasks over one shared front: the embeddings and cross computed once for CTR and CVR.

    For the joint `rank` model (`export_rank_model`): each task's folded tower as its own
    model has it (the same kernels, paths and scores), one copy of the embeddings, stored as
    `embedding_storage` says.
    """

    def __init__(
        self,
        model: network.RankingNetwork,
        compact: bool = True,
        matmul: str = MEASURE,
        batch: int = 200,
        embedding_storage: str = EMBEDDING_STORAGE,
    ):
        if not model.masked:
            raise ValueError("a joint rank model folds the masks of a sparse-sharing network")
        super().__init__(name="rank_network")
        self.front = SharedFront(model, view=True, embedding_storage=embedding_storage)
        self.towers = {task: FoldedTower(model, task, compact, matmul, batch) for task in model.config.tasks}

    embedding_storage = property(lambda self: self.front.embedding_storage)
    embedding_bytes = property(lambda self: self.front.embedding_bytes)

    def metadata(self) -> dict:
        return {
            "tasks": {network.OUTPUT_NAMES[task]: tower.metadata() for task, tower in self.towers.items()},
            **_storage_metadata(self),
        }

    def __call__(
        self, inputs: Mapping[str, tf.Tensor], context: Mapping[str, tf.Tensor] | None = None
    ) -> dict[str, tf.Tensor]:
        front = self.front(inputs, context)
        return {network.OUTPUT_NAMES[task]: tower(front) for task, tower in self.towers.items()}


@dataclasses.dataclass(frozen=True)
class LayerPath:
    """How one hidden layer multiplies, and the CPU times (microseconds per batch) that chose it."""

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
    """Dense or sparse for one layer: forced, or by the CPU time of each on this machine (best of `repeats`).

    CPU time, not wall time: `lt4rec serve` runs each op on one thread (its default, as TF
    Serving tuned for throughput), and under load the cores are the limit. A wall clock in
    the exporting process, whose ops may use every core, favours the dense matmul, which
    splits over the cores where the sparse one does not: for the first layer of S-Weight's
    default masks (465x512, 13% kept, 200 rows) it chose dense at 644-674 against 751-805
    us, while the CPU times are 1133-1150 against 863-871 us, and one thread per op gives
    dense 1021-1033 against sparse 719-744 us.
    """
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
    """The least CPU time of one call, over every thread of the process, in microseconds."""
    function().numpy()  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function().numpy()
        times.append(time.process_time() - start)
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


def check_storage(embedding_storage: str) -> str:
    if embedding_storage not in EMBEDDING_STORAGES:
        raise ValueError(f"embedding_storage must be one of {EMBEDDING_STORAGES}, not {embedding_storage!r}")
    return embedding_storage


def quantize_table(table: np.ndarray, embedding_storage: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A float32 table [rows, dim] as stored: (values, per-row float32 scales, or None).

    float32: the table itself; float16: rounded to the nearest half-precision value; int8:
    symmetric per row, scale = max|row| / `INT8_LEVELS` and values = round(row / scale) (0
    for a row of zeros, whose scale is 0), so that a row reads back as values * scale.
    """
    table = np.asarray(table, np.float32)
    if check_storage(embedding_storage) == FLOAT32:
        return table, None
    if embedding_storage == FLOAT16:
        return table.astype(np.float16), None
    scales = (np.abs(table).max(axis=1) / np.float32(INT8_LEVELS)).astype(np.float32)
    divisors = np.where(scales > 0, scales, np.float32(1))[:, np.newaxis]
    values = np.clip(np.rint(table / divisors), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return values, scales


def dequantize_table(values: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """What a stored table reads back as, in float32 (the lookup's arithmetic, on the whole table)."""
    table = np.asarray(values).astype(np.float32)
    return table if scales is None else table * np.asarray(scales, np.float32)[:, np.newaxis]


class StoredTable(tf.keras.layers.Layer):
    """One id table as `quantize_table` stores it: `table(ids)` gathers rows, then dequantizes to float32.

    Stands in for a `tf.keras.layers.Embedding` (the same [..., dim] rows for ids of any
    shape); its variables (`values`, and `scales` for int8) are not trainable.
    """

    def __init__(self, table: np.ndarray, embedding_storage: str, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.embedding_storage = check_storage(embedding_storage)
        values, scales = quantize_table(table, embedding_storage)
        self.values = tf.Variable(values, trainable=False, name=f"{self.name}_values")
        # Scales as [rows, 1]: a gathered scale broadcasts over its row with no reshape (fewer graph nodes per lookup).
        self.scales = (
            None if scales is None else tf.Variable(scales[:, np.newaxis], trainable=False, name=f"{self.name}_scales")
        )

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        rows = tf.cast(tf.gather(self.values, ids), tf.float32)
        return rows if self.scales is None else rows * tf.gather(self.scales, ids)


class StoredFieldEmbeddings(layers.FieldEmbeddings):
    """A `FieldEmbeddings` whose tables are `StoredTable`s of the source's: the same fields and pooling."""

    def __init__(self, source: layers.FieldEmbeddings, embedding_storage: str, zero_missing_rows: bool = False):
        super().__init__(source.feature_config, source.dim, zero_missing_rows=zero_missing_rows, name=source.name)
        self.embedding_storage = check_storage(embedding_storage)
        # In place of the (unbuilt, weightless) Embedding layers the parent made.
        self.tables = {
            name: StoredTable(_table(table, zero_missing_rows), embedding_storage, name=f"{name}_embedding")
            for name, table in source.tables.items()
        }


def _table(embedding: tf.keras.layers.Embedding, zero_missing_row: bool) -> np.ndarray:
    """A trained table, with zeros at the missing id if asked (a row the trained pooling never reads)."""
    table = embedding.embeddings.numpy()
    if zero_missing_row:
        table[features.MISSING_ID] = 0.0
    return table


def _copy_embeddings(source: layers.FieldEmbeddings, embedding_storage: str = FLOAT32) -> layers.FieldEmbeddings:
    """The source's tables as an export serves them: stored as `embedding_storage` says (float32:
    as trained), with zeros at the missing id so that the pooling needs no masks (the same numbers)."""
    if check_storage(embedding_storage) != FLOAT32:
        return StoredFieldEmbeddings(source, embedding_storage, zero_missing_rows=True)
    copy = layers.FieldEmbeddings(source.feature_config, source.dim, zero_missing_rows=True, name=source.name)
    copy.build(None)
    for name, table in source.tables.items():
        copy.tables[name].build(None)
        copy.tables[name].set_weights([_table(table, zero_missing_row=True)])
    return copy


def _embedding_variables(module: tf.Module) -> set:
    """The refs of the variables of every `FieldEmbeddings` (stored or not) in `module`."""
    return {
        variable.ref()
        for layer in module.submodules
        if isinstance(layer, layers.FieldEmbeddings)
        for variable in layer.variables
    }


def _bytes(variable: tf.Variable) -> int:
    return int(variable.shape.num_elements()) * variable.dtype.size


def _storage_metadata(exported: "TaskNetwork | RankNetwork | DenseTaskModel") -> dict:
    return {"embedding_storage": exported.embedding_storage, "embedding_bytes": exported.embedding_bytes}


def stored_network(model: network.RankingNetwork, embedding_storage: str) -> network.RankingNetwork:
    """A copy of an unmasked network whose id tables are stored as `embedding_storage` says.

    The same config, name and (assigned) weights but for the tables, which are
    `StoredFieldEmbeddings`: its forward pass is the trained network's on dequantized tables.
    """
    if model.masked:
        raise ValueError("a sparse-sharing network's exports store their tables through SharedFront")
    copy = network.RankingNetwork(model.feature_config, model.config, name=model.name)
    if model.embeddings is not None:
        copy.embeddings = StoredFieldEmbeddings(model.embeddings, embedding_storage)
    if model.task_embeddings is not None:
        copy.task_embeddings = {
            task: StoredFieldEmbeddings(table, embedding_storage) for task, table in model.task_embeddings.items()
        }
    if model.cvr_view is not None:
        copy.cvr_view = StoredFieldEmbeddings(model.cvr_view, embedding_storage)
    copy.build_for({spec.name: tf.zeros([1, spec.max_values], tf.int64) for spec in features.FEATURES})
    trained = {
        variable.name: variable for variable in model.variables if variable.ref() not in _embedding_variables(model)
    }
    stored = _embedding_variables(copy)
    rest = [variable for variable in copy.variables if variable.ref() not in stored]
    if sorted(variable.name for variable in rest) != sorted(trained):
        raise ValueError(f"the copy of {model.name} does not have the trained network's variables")
    for variable in rest:
        variable.assign(trained[variable.name])
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
    parameter counts, so that exports of different variants compare. With an
    `embedding_storage` other than float32 the forward pass is that of `stored_network(model)`
    (the trained weights, the tables stored as told); the parameter counts stay the trained ones.
    """

    def __init__(self, model: network.RankingNetwork, task: str, embedding_storage: str = EMBEDDING_STORAGE):
        if model.masked:
            raise ValueError("a sparse-sharing network exports through TaskNetwork, which folds its masks")
        super().__init__(name=f"{task}_network")
        self.task = task
        self.variant = model.config.variant
        self.embedding_storage = check_storage(embedding_storage)
        trained = _read_variables(model, task)
        embedding = _embedding_variables(model)
        self.embedding_parameters = sum(int(v.shape.num_elements()) for v in trained if v.ref() in embedding)
        self.parameters = sum(int(v.shape.num_elements()) for v in trained)
        serving = model if embedding_storage == FLOAT32 else stored_network(model, embedding_storage)
        self._forward = functools.partial(_task_output, serving, task)  # not tracked: the model is not saved
        self.kept = trained if serving is model else _read_variables(serving, task)
        embedding = _embedding_variables(serving)
        head = {variable.ref() for variable in serving.heads[task].variables}
        self.embedding_bytes = sum(_bytes(v) for v in self.kept if v.ref() in embedding)
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
            "layers": [
                {"name": v.name, **dataclasses.asdict(path)} for v, path in zip(self._kernels, self.layer_paths)
            ],
            **_storage_metadata(self),
        }

    def __call__(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return self._forward(inputs)


Scorer = Callable[[Mapping[str, tf.Tensor], "Mapping[str, tf.Tensor] | None"], Mapping[str, tf.Tensor]]
RowScorer = Callable[[Mapping[str, tf.Tensor]], Mapping[str, tf.Tensor]]  # whole rows: their own context


def without_context(score: Callable[[Mapping[str, tf.Tensor]], Mapping[str, tf.Tensor]]) -> Scorer:
    """A scorer for a network that cannot take the context apart: its ids repeated on every row."""

    def scorer(inputs: Mapping[str, tf.Tensor], context: Mapping[str, tf.Tensor] | None) -> Mapping[str, tf.Tensor]:
        if context is not None:
            rows = tf.shape(next(iter(inputs.values())))[0]
            inputs = {**inputs, **{name: tf.repeat(ids, rows, axis=0) for name, ids in context.items()}}
        return score(inputs)

    return scorer


class ServingModule(tf.Module):
    """Scoring behind Transform's graph, with the signatures TF Serving calls.

    `score(inputs, context)` maps the transformed features (and, for `serving_context`, the
    request's context features at batch 1, else None) to named outputs, [batch] each.
    `context`: add `serving_context`. `rankscore`: add the `rankscore` output (needs `ctr`
    and `cvr`) and the `rank_weights` input it is computed with.
    """

    def __init__(
        self, score: Scorer, transform_output: tft.TFTransformOutput, context: bool = True, rankscore: bool = False
    ):
        super().__init__()
        self.score = score
        self.transform_layer = transform_output.transform_features_layer()
        self.raw_spec = raw_input_spec(transform_output)
        self.rankscore = rankscore
        self.context = context

    def _signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """TF Serving's signatures, traced when saving and not kept on the module.

        A tf.function kept as an attribute is also saved as one of the object's functions,
        traced a second time in the saving context: every signature's graph would be stored,
        and loaded, twice. The signatures of whole rows call one traced scoring function, so
        the network's graph is stored once for them.
        """

        @tf.function
        def score_rows(inputs: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
            return self.score(inputs, None)

        def traced(serve: Callable, *specs) -> tf.types.experimental.ConcreteFunction:
            with_scorer = functools.partial(serve, score_rows)
            with_scorer.__name__ = serve.__name__  # the graph's function name
            return tf.function(with_scorer).get_concrete_function(*specs)

        weights = [tf.TensorSpec([3], tf.float32, name=RANK_WEIGHTS_INPUT)] if self.rankscore else []
        examples = tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)
        raw = {
            spec.name: tf.TensorSpec([None, spec.max_values], tf.string, name=spec.name) for spec in features.FEATURES
        }
        signatures = {
            "serving_default": traced(self._serve_examples, examples, *weights),
            "serving_raw": traced(self._serve_raw, raw, *weights),
        }
        if self.context:
            context = tf.TensorSpec([], tf.string, name=CONTEXT_INPUT)
            signatures[CONTEXT_SIGNATURE] = tf.function(self._serve_context).get_concrete_function(
                context, examples, *weights
            )
        if self.rankscore:
            signatures[SCORES_SIGNATURE] = traced(self._serve_scores, examples)
        return signatures

    def _transform(self, raw: Mapping[str, tf.SparseTensor]) -> dict[str, tf.Tensor]:
        transformed = self.transform_layer(dict(raw))
        return {name: transformed[name] for name in features.FEATURE_NAMES}

    def _outputs(
        self,
        raw: Mapping[str, tf.SparseTensor],
        scores: Mapping[str, tf.Tensor],
        weights: tf.Tensor | None,
        rows: tf.Tensor | None = None,
    ) -> dict[str, tf.Tensor]:
        """The scores, and the rankscore of the first `rows` rows of `raw` (all by default) if asked for."""
        scores = dict(scores)
        if self.rankscore:
            length = video_length_seconds(raw[features.DURATION_FEATURE])[:rows]
            scores[RANKSCORE_OUTPUT] = (
                tf.pow(scores["ctr"], weights[0]) * tf.pow(scores["cvr"], weights[1]) * tf.pow(length, weights[2])
            )
        return scores

    def _serve_examples(
        self, score_rows: RowScorer, serialized: tf.Tensor, weights: tf.Tensor | None = None
    ) -> dict[str, tf.Tensor]:
        raw = tf.io.parse_example(serialized, self.raw_spec)
        return self._outputs(raw, score_rows(self._transform(raw)), weights)

    def _serve_scores(self, score_rows: RowScorer, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        raw = tf.io.parse_example(serialized, self.raw_spec)
        return dict(score_rows(self._transform(raw)))

    def _serve_raw(
        self, score_rows: RowScorer, raw: Mapping[str, tf.Tensor], weights: tf.Tensor | None = None
    ) -> dict[str, tf.Tensor]:
        """Raw features as named tensors, "" for padding (and for a missing value, as `-1` is)."""
        sparse = {name: tf.sparse.from_dense(values) for name, values in raw.items()}
        return self._outputs(sparse, score_rows(self._transform(sparse)), weights)

    def _serve_context(
        self, context: tf.Tensor, serialized: tf.Tensor, weights: tf.Tensor | None = None
    ) -> dict[str, tf.Tensor]:
        """One request: its context features once (a tf.Example), its candidates' features (tf.Examples).

        The context goes through parsing and Transform as one more row after the candidates
        (Transform's cost at a few hundred rows is its op count, not its rows: one call, not
        two); the network embeds its fields once. A candidate's own context features are ignored.
        """
        rows = tf.shape(serialized)[0]
        raw = tf.io.parse_example(tf.concat([serialized, tf.reshape(context, [1])], axis=0), self.raw_spec)
        ids = self._transform(raw)
        candidates = {name: ids[name][:rows] for name in features.CANDIDATE_FEATURE_NAMES}
        request = {name: ids[name][rows:] for name in features.CONTEXT_FEATURE_NAMES}
        return self._outputs(raw, self.score(candidates, request), weights, rows)

    def save(self, path: str) -> None:
        """The SavedModel, and TF Serving's warm-up requests for each of its signatures."""
        signatures = self._signatures()
        tf.saved_model.save(self, path, signatures=signatures)
        warmup.write(path, self._warmup_requests(signatures))

    def _warmup_requests(
        self, signatures: Mapping[str, tf.types.experimental.ConcreteFunction]
    ) -> list[predict_pb2.PredictRequest]:
        """Each signature on `warmup.WARMUP_ROWS` synthetic rows of many users, then of one request."""
        requests = []
        for shared_context in (False, True):
            examples = warmup.synthetic_examples(shared_context=shared_context)
            raw = warmup.synthetic_raw(shared_context=shared_context)
            values = {
                EXAMPLES_INPUT: examples,
                CONTEXT_INPUT: examples[0],
                RANK_WEIGHTS_INPUT: [1.0, 1.0, 1.0],
                **raw,
            }
            for name, function in signatures.items():
                request = predict_pb2.PredictRequest()
                request.model_spec.signature_name = name
                specs = [spec for spec in tf.nest.flatten(function.structured_input_signature) if spec is not None]
                for spec in specs:  # named as the signature's inputs
                    request.inputs[spec.name].CopyFrom(tf.make_tensor_proto(values[spec.name], dtype=spec.dtype))
                requests.append(request)
        return requests


_BUCKET_SECONDS = [features.bucket_seconds(bucket) for bucket in range(len(features.DURATION_BUCKET_EDGES_SECONDS) + 1)]


def video_length_seconds(duration: tf.SparseTensor) -> tf.Tensor:
    """Each row's length in seconds from its raw `FEA_DURATION` bucket (`features.bucket_seconds`); NaN without one."""
    rows = duration.dense_shape[0]
    first = tf.sparse.to_dense(
        tf.sparse.reset_shape(duration, tf.stack([rows, tf.maximum(duration.dense_shape[1], 1)]))
    )[:, 0]
    values = tf.math.bincount(tf.cast(duration.indices[:, 0], tf.int32), minlength=tf.cast(rows, tf.int32))
    valid = tf.strings.regex_full_match(first, "0*[0-9]{1,2}") & tf.equal(values, 1)
    bucket = tf.strings.to_number(tf.where(valid, first, "-1"), tf.int32)
    known = valid & (bucket < len(_BUCKET_SECONDS))
    seconds = tf.gather(tf.constant(_BUCKET_SECONDS, tf.float32), tf.where(known, bucket, 0))
    return tf.where(known, seconds, float("nan"))


def export_serving_model(
    model: network.RankingNetwork,
    transform_output: tft.TFTransformOutput,
    path: str,
    embedding_storage: str = EMBEDDING_STORAGE,
) -> None:
    """The multi-task model (each head through its own mask), for the Evaluator.

    Its tables are stored as the pushed models store theirs (`embedding_storage`), so that
    the Evaluator blesses the scores TaskPusher pushes. float32: the trained network itself;
    otherwise an unmasked network's `stored_network`, and for sparse sharing a `RankNetwork`
    (the pushed towers, masks folded; dense matmuls, as timing would not change a score),
    since a masked network's tables are stored only through its folded exports.
    """
    if check_storage(embedding_storage) != FLOAT32 and model.masked:
        scorer = score = RankNetwork(model, compact=True, matmul=DENSE, embedding_storage=embedding_storage)
    else:
        scorer = model if embedding_storage == FLOAT32 else stored_network(model, embedding_storage)
        outputs = {network.OUTPUT_NAMES[task]: task for task in model.config.tasks}
        score = without_context(
            lambda inputs: {output: scorer(inputs, task=task)[task] for output, task in outputs.items()}
        )
    module = ServingModule(score, transform_output, context=False)
    module.model = scorer  # tracked, so that its variables are saved
    module.save(path)


def _task_output(model: network.RankingNetwork, task: str, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
    return model(inputs, task=task)[task]


def _read_variables(model: network.RankingNetwork, task: str) -> list[tf.Variable]:
    """The variables `task`'s forward pass reads (found by tracing it), in the model's order."""
    spec = {feature.name: tf.TensorSpec([None, feature.max_values], tf.int64) for feature in features.FEATURES}
    forward = tf.function(functools.partial(_task_output, model, task))
    read = {variable.ref() for variable in forward.get_concrete_function(spec).variables}
    return [variable for variable in model.variables if variable.ref() in read]


def _write_metadata(path: str, metadata: dict) -> None:
    tf.io.gfile.makedirs(os.path.join(path, ASSETS_EXTRA))
    with tf.io.gfile.GFile(os.path.join(path, ASSETS_EXTRA, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)


def export_task_model(
    model: network.RankingNetwork,
    task: str,
    transform_output: tft.TFTransformOutput,
    path: str,
    compact: bool = True,
    matmul: str = MEASURE,
    embedding_storage: str = EMBEDDING_STORAGE,
) -> "TaskNetwork | DenseTaskModel":
    """One task's SavedModel for TF Serving, with the mask folded in (and compacted).

    Sparse sharing goes through `TaskNetwork` (`compact` and `matmul` apply); every other
    variant through `DenseTaskModel` (nothing to fold or compact). `embedding_storage`: how
    the id tables are stored (one of `EMBEDDING_STORAGES`, see the module's docstring).
    `assets.extra/` (which TF Serving leaves alone) gets `METADATA_FILE`: the task, the
    layer widths, the share of MLP weights kept, each layer's matmul path and the tables'
    storage and bytes.
    """
    task_network = (
        TaskNetwork(model, task, compact=compact, matmul=matmul, embedding_storage=embedding_storage)
        if model.masked
        else DenseTaskModel(model, task, embedding_storage=embedding_storage)
    )
    save_task_network(task_network, transform_output, path)
    return task_network


def save_task_network(
    task_network: "TaskNetwork | DenseTaskModel", transform_output: tft.TFTransformOutput, path: str
) -> None:
    """A built task network as its SavedModel, with its metadata in `assets.extra/`."""
    output = network.OUTPUT_NAMES[task_network.task]
    if isinstance(task_network, TaskNetwork):
        score = lambda inputs, context: {output: task_network(inputs, context)}  # noqa: E731
    else:
        score = without_context(lambda inputs: {output: task_network(inputs)})
    module = ServingModule(score, transform_output)
    module.network = task_network  # tracked: the variables the signatures read
    module.save(path)
    _write_metadata(path, task_network.metadata())


def export_rank_model(
    model: network.RankingNetwork,
    transform_output: tft.TFTransformOutput,
    path: str,
    matmul: str = MEASURE,
    embedding_storage: str = EMBEDDING_STORAGE,
) -> RankNetwork:
    """The joint `rank` model: `ctr`, `cvr` and `rankscore` from one pass over the shared front.

    Beside the per-task models (TF Serving deployments keep them): one call scores a ranking
    request for both tasks. Its towers are the per-task models' (compacted), so its scores
    are theirs (for the same `embedding_storage`); `rankscore` = ctr^a * cvr^b *
    video_length^c with (a, b, c) the request's `rank_weights` input
    (`serving.client.rankscore` defines it), NaN without a length.
    """
    rank_network = RankNetwork(model, compact=True, matmul=matmul, embedding_storage=embedding_storage)
    module = ServingModule(rank_network, transform_output, rankscore=True)
    module.network = rank_network
    module.save(path)
    _write_metadata(path, rank_network.metadata())
    return rank_network


def read_metadata(path: str) -> dict:
    """The metadata `export_task_model` (or `export_rank_model`) wrote beside a SavedModel.

    Models exported before the storage was recorded stored their tables as float32.
    """
    with tf.io.gfile.GFile(os.path.join(path, ASSETS_EXTRA, METADATA_FILE)) as f:
        metadata = json.load(f)
    metadata.setdefault("embedding_storage", FLOAT32)
    return metadata
