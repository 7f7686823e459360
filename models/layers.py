"""The network's building blocks, as small Keras layers (in the manner of tensorflow/recommenders)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf

from lt4rec import features


class FieldEmbeddings(tf.keras.layers.Layer):
    """One embedding per `FEA_*` field, from tables that related features may share.

    Input: the transformed features, int64 ids of shape [batch, max_values] (0 = missing).
    Output: [batch, fields, dim], fields in `names` order (`features.FEATURE_NAMES` unless
    told: a request's context fields are embedded once, apart from its candidates'). A field's
    embedding is the mean of the embeddings of its present ids; missing ids (the log's
    `-1`, padding) never contribute, and a field with no present id embeds to zeros.

    `zero_missing_rows`: the tables hold zeros at the missing id (as the exports store them;
    training leaves that row as initialized), so nothing is masked: a single-valued field is
    its id's row, a multi-valued one the sum of its rows over the count of present ids. The
    same numbers, bit for bit, in fewer ops (200 candidates: 340 against 478 us of CPU).
    """

    def __init__(self, feature_config: features.FeatureConfig, dim: int, zero_missing_rows: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.feature_config = feature_config
        self.dim = dim
        self.zero_missing_rows = zero_missing_rows
        self.tables = {
            table.name: tf.keras.layers.Embedding(table.size, dim, name=f"{table.name}_embedding")
            for table in feature_config.tables
        }

    def call(self, inputs: Mapping[str, tf.Tensor], names: Sequence[str] = features.FEATURE_NAMES) -> tf.Tensor:
        table_of = self.feature_config.table_of
        fields = []
        for name in names:
            ids = tf.cast(inputs[name], tf.int64)
            table = self.tables[table_of[name].name]
            if self.zero_missing_rows and ids.shape[1] == 1:
                fields.append(table(ids[:, 0]))
                continue
            vectors = table(ids)  # [batch, max_values, dim]
            present = tf.cast(ids != features.MISSING_ID, vectors.dtype)
            count = tf.maximum(tf.reduce_sum(present, axis=1, keepdims=True), 1.0)
            if not self.zero_missing_rows:
                vectors *= present[..., tf.newaxis]
            fields.append(tf.reduce_sum(vectors, axis=1) / count)
        return tf.stack(fields, axis=1)

    def get_config(self):
        return {
            **super().get_config(),
            "feature_config": self.feature_config.to_dict(),
            "dim": self.dim,
            "zero_missing_rows": self.zero_missing_rows,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["feature_config"] = features.FeatureConfig.from_dict(config["feature_config"])
        return cls(**config)


class FeatureCross(tf.keras.layers.Layer):
    """DLRM's interaction: every pairwise dot product of the field embeddings, with them.

    Input [batch, fields, dim]; output [batch, fields * dim + fields * (fields - 1) / 2].
    The same products as tensorflow-recommenders' `DotInteraction` (in another order), which
    picks the pairs with a boolean mask: 1.2-1.4x slower than this gather on 200
    candidates of 21 fields, so the project does not depend on it.
    """

    def call(self, field_embeddings: tf.Tensor) -> tf.Tensor:
        fields = field_embeddings.shape[1]
        dots = tf.matmul(field_embeddings, field_embeddings, transpose_b=True)  # [batch, f, f]
        pairs = tf.gather(tf.reshape(dots, [-1, fields * fields]), _upper_pairs(fields), axis=1)
        flat = tf.reshape(field_embeddings, [-1, fields * field_embeddings.shape[2]])
        return tf.concat([flat, pairs], axis=1)

    @staticmethod
    def output_width(fields: int, dim: int) -> int:
        return fields * dim + fields * (fields - 1) // 2

    @staticmethod
    def split(request: tf.Tensor, candidates: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """`call`'s columns in two parts: those of the request's fields alone, and the rest.

        request [1 or batch, r, dim] (a ranking request's context fields, the same for every
        candidate), candidates [batch, c, dim] -> ([1 or batch, r * dim + r(r-1)/2], [batch,
        c * dim + c * r + c(c-1)/2]). With the request at batch 1 its part is computed once,
        and so can be everything that reads only it (a first layer's rows for those columns).
        The candidates' part is their embeddings, their dots with the request's fields (every
        one used: no gather, and the request is never copied to every row) and their pairs
        among themselves. `split_columns` says where each column is in `call` of the fields in
        another order.
        """
        fields, dim = request.shape[1], request.shape[2]
        candidate_fields = candidates.shape[1]
        request_dots = tf.matmul(request, request, transpose_b=True)  # [1 or batch, r, r]
        crossed = tf.matmul(candidates, request, transpose_b=True)  # [batch, c, r], the request broadcast
        candidate_dots = tf.matmul(candidates, candidates, transpose_b=True)  # [batch, c, c]
        request_pairs = tf.gather(tf.reshape(request_dots, [-1, fields * fields]), _upper_pairs(fields), axis=1)
        candidate_pairs = tf.gather(
            tf.reshape(candidate_dots, [-1, candidate_fields * candidate_fields]),
            _upper_pairs(candidate_fields),
            axis=1,
        )
        return (
            tf.concat([tf.reshape(request, [-1, fields * dim]), request_pairs], axis=1),
            tf.concat(
                [
                    tf.reshape(candidates, [-1, candidate_fields * dim]),
                    tf.reshape(crossed, [-1, candidate_fields * fields]),
                    candidate_pairs,
                ],
                axis=1,
            ),
        )

    @staticmethod
    def split_columns(request: Sequence[int], candidates: Sequence[int], dim: int) -> tuple[list[int], list[int]]:
        """Where `split`'s columns are in `call`'s output: fields given by their index there.

        `split(fields[:, request], fields[:, candidates])` equals `call(fields)[:, columns]` for
        each part's `columns`; together the parts cover every column once.
        """
        fields = len(request) + len(candidates)
        pair_column = {pair: fields * dim + k for k, pair in enumerate(_index_pairs(fields))}

        def flat(indices: Sequence[int]) -> list[int]:
            return [index * dim + k for index in indices for k in range(dim)]

        def pair(a: int, b: int) -> int:
            return pair_column[(min(a, b), max(a, b))]

        request_pairs = [pair(request[i], request[j]) for i, j in _index_pairs(len(request))]
        crossed = [pair(candidate, field) for candidate in candidates for field in request]
        candidate_pairs = [pair(candidates[i], candidates[j]) for i, j in _index_pairs(len(candidates))]
        return flat(request) + request_pairs, flat(candidates) + crossed + candidate_pairs


def _index_pairs(fields: int) -> list[tuple[int, int]]:
    """(i, j) with i < j, in the order of `FeatureCross`'s pair columns."""
    return [(i, j) for i in range(fields) for j in range(i + 1, fields)]


def _upper_pairs(fields: int) -> list[int]:
    """The pairs' positions in a flattened [fields, fields] matrix of dot products."""
    return [i * fields + j for i, j in _index_pairs(fields)]


class MLP(tf.keras.layers.Layer):
    """Dense ReLU layers of the given widths: [batch, width] -> [batch, units[-1]] (the input if no units)."""

    def __init__(self, units: tuple[int, ...], **kwargs):
        super().__init__(**kwargs)
        self.units = tuple(int(width) for width in units)
        self.dense_layers = [
            tf.keras.layers.Dense(width, activation="relu", name=f"dense_{i}") for i, width in enumerate(self.units)
        ]

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        hidden = inputs
        for layer in self.dense_layers:
            hidden = layer(hidden)
        return hidden

    def get_config(self):
        return {**super().get_config(), "units": list(self.units)}


class Experts(tf.keras.layers.Layer):
    """`num_experts` MLPs on one input: [batch, width] -> [batch, num_experts, units[-1]]."""

    def __init__(self, num_experts: int, units: tuple[int, ...], **kwargs):
        super().__init__(**kwargs)
        if num_experts < 1 or not units:
            raise ValueError(f"experts need at least one expert and one layer, not {num_experts} of {units}")
        self.num_experts = int(num_experts)
        self.units = tuple(int(width) for width in units)
        self.experts = [MLP(self.units, name=f"expert_{i}") for i in range(self.num_experts)]

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return tf.stack([expert(inputs) for expert in self.experts], axis=1)

    def get_config(self):
        return {**super().get_config(), "num_experts": self.num_experts, "units": list(self.units)}


class Gate(tf.keras.layers.Layer):
    """A gate over `num_experts` experts: a softmax from the gate's own input, then their weighted sum.

    `gate(inputs, experts)`: inputs [batch, width], experts [batch, num_experts, dim] ->
    [batch, dim]; `gate.probabilities(inputs)` is the softmax, [batch, num_experts], rows
    summing to 1 (MMoE's g^k(x) = softmax(W_k x); PLE's gates, over their level's experts).
    """

    def __init__(self, num_experts: int, **kwargs):
        super().__init__(**kwargs)
        self.num_experts = int(num_experts)
        self.logits = tf.keras.layers.Dense(self.num_experts, name="logits")

    def probabilities(self, inputs: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(self.logits(inputs), axis=-1)

    def call(self, inputs: tf.Tensor, experts: tf.Tensor) -> tf.Tensor:
        weights = self.probabilities(inputs)
        return tf.reduce_sum(weights[:, :, tf.newaxis] * experts, axis=1)

    def get_config(self):
        return {**super().get_config(), "num_experts": self.num_experts}


SHARED = "shared"  # the shared branch of a PLE level, beside the tasks' branches


class ExtractionLayer(tf.keras.layers.Layer):
    """One level of PLE (Tang et al. 2020): customized gate control over shared and task experts.

    Inputs and outputs are dicts {task: [batch, width], SHARED: [batch, width]}: each task's
    branch and the shared branch (on the first level all are the same tensor). Task t's
    output is its gate (on its own input) over its own experts and the shared experts; the
    shared output, which only levels below the last have, is the shared gate (on the shared
    input) over every expert of the level. `call(inputs, outputs=...)` computes only the
    named outputs and the experts they read (`inputs_needed` says which inputs those are).
    """

    def __init__(
        self,
        tasks: tuple[str, ...],
        shared_experts: int,
        task_experts: int,
        units: tuple[int, ...],
        last: bool,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.tasks = tuple(tasks)
        self.shared_experts, self.task_experts, self.units, self.last = (
            int(shared_experts),
            int(task_experts),
            tuple(units),
            bool(last),
        )
        self.shared = Experts(self.shared_experts, self.units, name="shared_experts")
        self.own = {task: Experts(self.task_experts, self.units, name=f"{task}_experts") for task in self.tasks}
        self.gates = {task: Gate(self.task_experts + self.shared_experts, name=f"{task}_gate") for task in self.tasks}
        self.shared_gate = (
            None if self.last else Gate(len(self.tasks) * self.task_experts + self.shared_experts, name="shared_gate")
        )

    def inputs_needed(self, outputs: tuple[str, ...]) -> tuple[str, ...]:
        """The branches whose inputs the `outputs` depend on (SHARED always: every gate mixes the shared experts)."""
        if SHARED in outputs:
            return (*self.tasks, SHARED)
        return (*[task for task in self.tasks if task in outputs], SHARED)

    def call(self, inputs: Mapping[str, tf.Tensor], outputs: tuple[str, ...] | None = None) -> dict[str, tf.Tensor]:
        outputs = tuple(outputs) if outputs is not None else (*self.tasks, *(() if self.last else (SHARED,)))
        if SHARED in outputs and self.last:
            raise ValueError(f"{self.name} is the last level: it has no shared output")
        shared = self.shared(inputs[SHARED])
        own = {task: self.own[task](inputs[task]) for task in self.inputs_needed(outputs) if task != SHARED}
        result = {}
        for name in outputs:
            if name == SHARED:
                result[name] = self.shared_gate(
                    inputs[SHARED], tf.concat([*[own[t] for t in self.tasks], shared], axis=1)
                )
            else:
                result[name] = self.gates[name](inputs[name], tf.concat([own[name], shared], axis=1))
        return result

    def get_config(self):
        return {
            **super().get_config(),
            "tasks": list(self.tasks),
            "shared_experts": self.shared_experts,
            "task_experts": self.task_experts,
            "units": list(self.units),
            "last": self.last,
        }
