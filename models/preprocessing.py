"""Transform's `preprocessing_fn`: every `FEA_*` feature to a fixed-width row of integer ids.

Built from `features.py`, and configured by the `FeatureConfig` that the pipeline passes in
Transform's `custom_config` (the trainer gets the same one):
- every feature, single or multi-valued, becomes int64 [batch, max_values]: single-valued
  features have width 1, multi-valued ones are cut to their cap and padded;
- id 0 is missing: the log's `-1` placeholder, an empty value and padding all map to it;
- a hashed table maps a value to 1 + fingerprint mod (size - 1); a vocabulary table keeps
  its `size - 2` most frequent values (computed over all features that share the table,
  so shared tables share ids) as ids 2.., and every other value to the OOV id 1;
- the labels pass through: `label` as int64 [batch], `cvrlabel` as float32 [batch].
A fixed width and fixed id ranges make the model's inputs and the serving signatures
static, and the same for every run with the same config.

The graph encodes table by table, not feature by feature: the values of all a table's
features are hashed or looked up, and checked for missing, in one pass over their flat
concatenation; only the int64 ids are then split back, padded and cut per feature. Serving
runs this graph on every request of a few hundred rows, where its cost is mostly per op
and per string copied, so it keeps both few: no string is padded, cut or copied per feature.
"""

from __future__ import annotations

from typing import Mapping

import tensorflow as tf
import tensorflow_transform as tft

from lt4rec import features

FEATURES_CONFIG_KEY = "features"  # where the FeatureConfig dict sits in custom_config
OOV_ID = 1
FIRST_VOCABULARY_ID = 2


def feature_config_from(custom_config: Mapping | None) -> features.FeatureConfig:
    """The FeatureConfig that the pipeline put into a component's custom_config."""
    if not custom_config or FEATURES_CONFIG_KEY not in custom_config:
        return features.feature_config()
    return features.FeatureConfig.from_dict(custom_config[FEATURES_CONFIG_KEY])


def _rows(value: tf.Tensor | tf.SparseTensor | tf.RaggedTensor) -> tf.SparseTensor | tf.RaggedTensor:
    """A feature's values by row: sparse and ragged ones as they come, a dense one as ragged."""
    if isinstance(value, tf.Tensor):
        return tf.RaggedTensor.from_tensor(tf.reshape(value, [tf.shape(value)[0], -1]))
    return value


def _first_values(rows: tf.SparseTensor | tf.RaggedTensor, width: int) -> tf.Tensor:
    """The values among each row's first `width`, flat."""
    if isinstance(rows, tf.SparseTensor):
        return tf.boolean_mask(rows.values, rows.indices[:, 1] < width)
    return rows[:, :width].values


def _padded_ids(rows: tf.SparseTensor | tf.RaggedTensor, ids: tf.Tensor, width: int) -> tf.Tensor:
    """`ids`, one per value of `rows`, as [batch, width]: each row's first `width`, then the missing id."""
    if isinstance(rows, tf.SparseTensor):
        # at least `width` wide, so that the rows over the cap fit before the cut
        shape = tf.maximum(rows.dense_shape, [0, width])
        dense = tf.sparse.to_dense(tf.SparseTensor(rows.indices, ids, shape), features.MISSING_ID)
        return tf.slice(dense, [0, 0], [-1, width])
    return rows.with_values(ids).to_tensor(features.MISSING_ID, shape=[None, width])


def _is_missing(strings: tf.Tensor) -> tf.Tensor:
    return tf.logical_or(tf.equal(strings, features.MISSING_VALUE), tf.equal(strings, ""))


def encode_table(inputs: Mapping[str, tf.Tensor], table: features.TableSpec) -> dict[str, tf.Tensor]:
    """Ids of every feature of one table, [batch, max_values] each, from one pass over all their values.

    Values past a row's cap are encoded too, and their ids cut: cheaper than cutting strings.
    """
    rows = {name: _rows(inputs[name]) for name in table.features}
    widths = {name: features.FEATURES_BY_NAME[name].max_values for name in table.features}
    values = tf.concat([value.values for value in rows.values()], axis=0)
    missing = _is_missing(values)
    if table.encoding == features.Encoding.HASH:
        ids = tf.strings.to_hash_bucket_fast(values, table.size - 1) + 1
    else:
        kept = tf.concat([_first_values(rows[name], width) for name, width in widths.items()], axis=0)
        vocabulary = tft.vocabulary(
            tf.boolean_mask(kept, tf.logical_not(_is_missing(kept))),
            top_k=table.vocabulary_top_k,
            vocab_filename=f"vocabulary_{table.name}",
        )
        # a value out of the vocabulary looks up as OOV_ID - FIRST_VOCABULARY_ID: the shift makes it OOV_ID
        ids = tft.apply_vocabulary(values, vocabulary, default_value=OOV_ID - FIRST_VOCABULARY_ID)
        ids += FIRST_VOCABULARY_ID
    ids = tf.where(missing, tf.constant(features.MISSING_ID, tf.int64), ids)
    parts = tf.split(ids, [tf.size(value.values) for value in rows.values()]) if len(rows) > 1 else [ids]
    return {name: _padded_ids(rows[name], part, width) for (name, width), part in zip(widths.items(), parts)}


def preprocessing_fn(inputs: Mapping[str, tf.Tensor], custom_config: Mapping | None = None) -> dict[str, tf.Tensor]:
    """Transform's entry point (see the module docstring)."""
    config = feature_config_from(custom_config)
    outputs: dict[str, tf.Tensor] = {}
    for table in config.tables:
        outputs.update(encode_table(inputs, table))
    outputs[features.CLICK_LABEL] = tf.reshape(tf.cast(_dense(inputs[features.CLICK_LABEL]), tf.int64), [-1])
    outputs[features.WATCH_RATIO_LABEL] = tf.reshape(
        tf.cast(_dense(inputs[features.WATCH_RATIO_LABEL]), tf.float32), [-1]
    )
    return outputs


def _dense(value: tf.Tensor | tf.SparseTensor) -> tf.Tensor:
    """A label as [batch, 1]; LogExampleGen has checked that every row has exactly one."""
    if isinstance(value, tf.SparseTensor):
        return tf.sparse.to_dense(value)[:, :1]
    return value
