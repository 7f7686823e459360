"""The network's building blocks, as small Keras layers (in the manner of tensorflow/recommenders)."""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from lt4rec.models import features


class FieldEmbeddings(tf.keras.layers.Layer):
    """One embedding per `FEA_*` field, from tables that related features may share.

    Input: the transformed features, int64 ids of shape [batch, max_values] (0 = missing).
    Output: [batch, fields, dim], fields in `features.FEATURE_NAMES` order. A field's
    embedding is the mean of the embeddings of its present ids; missing ids (the log's
    `-1`, padding) never contribute, and a field with no present id embeds to zeros.
    """

    def __init__(self, feature_config: features.FeatureConfig, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.feature_config = feature_config
        self.dim = dim
        self.tables = {
            table.name: tf.keras.layers.Embedding(table.size, dim, name=f"{table.name}_embedding")
            for table in feature_config.tables
        }

    def call(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        table_of = self.feature_config.table_of
        fields = []
        for name in features.FEATURE_NAMES:
            ids = tf.cast(inputs[name], tf.int64)
            vectors = self.tables[table_of[name].name](ids)  # [batch, max_values, dim]
            present = tf.cast(ids != features.MISSING_ID, vectors.dtype)[..., tf.newaxis]
            count = tf.maximum(tf.reduce_sum(present, axis=1), 1.0)
            fields.append(tf.reduce_sum(vectors * present, axis=1) / count)
        return tf.stack(fields, axis=1)

    def get_config(self):
        return {**super().get_config(), "feature_config": self.feature_config.to_dict(), "dim": self.dim}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["feature_config"] = features.FeatureConfig.from_dict(config["feature_config"])
        return cls(**config)


class FeatureCross(tf.keras.layers.Layer):
    """DLRM's interaction: every pairwise dot product of the field embeddings, with them.

    Input [batch, fields, dim]; output [batch, fields * dim + fields * (fields - 1) / 2].
    """

    def call(self, field_embeddings: tf.Tensor) -> tf.Tensor:
        fields = field_embeddings.shape[1]
        dots = tf.matmul(field_embeddings, field_embeddings, transpose_b=True)  # [batch, f, f]
        upper = [i * fields + j for i in range(fields) for j in range(i + 1, fields)]
        pairs = tf.gather(tf.reshape(dots, [-1, fields * fields]), upper, axis=1)
        flat = tf.reshape(field_embeddings, [-1, fields * field_embeddings.shape[2]])
        return tf.concat([flat, pairs], axis=1)

    @staticmethod
    def output_width(fields: int, dim: int) -> int:
        return fields * dim + fields * (fields - 1) // 2
