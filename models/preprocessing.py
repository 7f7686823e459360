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


def _padded_strings(value: tf.Tensor | tf.SparseTensor | tf.RaggedTensor, width: int) -> tf.Tensor:
    """A string feature as a dense [batch, width] tensor, `-1` where nothing is."""
    if isinstance(value, tf.SparseTensor):
        dense = tf.sparse.to_dense(value, default_value=features.MISSING_VALUE)
    elif isinstance(value, tf.RaggedTensor):
        dense = value.to_tensor(default_value=features.MISSING_VALUE)
    else:
        dense = tf.reshape(value, [tf.shape(value)[0], -1])
    dense = dense[:, :width]
    dense = tf.pad(dense, [[0, 0], [0, width - tf.shape(dense)[1]]], constant_values=features.MISSING_VALUE)
    return tf.reshape(dense, [-1, width])


def _is_missing(strings: tf.Tensor) -> tf.Tensor:
    return tf.logical_or(tf.equal(strings, features.MISSING_VALUE), tf.equal(strings, ""))


def encode_table(strings: Mapping[str, tf.Tensor], table: features.TableSpec) -> dict[str, tf.Tensor]:
    """Ids of every feature of one table, from its [batch, width] strings."""
    if table.encoding == features.Encoding.HASH:
        encoded = {name: tf.strings.to_hash_bucket_fast(value, table.size - 1) + 1 for name, value in strings.items()}
    else:
        present = [tf.boolean_mask(value, tf.logical_not(_is_missing(value))) for value in strings.values()]
        vocabulary = tft.vocabulary(
            tf.concat(present, axis=0), top_k=table.vocabulary_top_k, vocab_filename=f"vocabulary_{table.name}"
        )
        encoded = {
            name: tft.apply_vocabulary(value, vocabulary, default_value=-1) + FIRST_VOCABULARY_ID
            for name, value in strings.items()
        }
        encoded = {
            name: tf.where(ids < FIRST_VOCABULARY_ID, tf.constant(OOV_ID, tf.int64), ids)
            for name, ids in encoded.items()
        }
    return {
        name: tf.where(_is_missing(strings[name]), tf.constant(features.MISSING_ID, tf.int64), ids)
        for name, ids in encoded.items()
    }


def preprocessing_fn(inputs: Mapping[str, tf.Tensor], custom_config: Mapping | None = None) -> dict[str, tf.Tensor]:
    """Transform's entry point (see the module docstring)."""
    config = feature_config_from(custom_config)
    outputs: dict[str, tf.Tensor] = {}
    for table in config.tables:
        strings = {
            name: _padded_strings(inputs[name], features.FEATURES_BY_NAME[name].max_values) for name in table.features
        }
        outputs.update(encode_table(strings, table))
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
