"""Transform's output as the datasets the search and the trainer train on."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from lt4rec.models import features


def transformed_examples(file_patterns: str | list[str], transform_output: tft.TFTransformOutput) -> tf.data.Dataset:
    """Unbatched transformed examples (feature ids and both labels) from GZIP TFRecords."""
    patterns = [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)
    files = [path for pattern in patterns for path in tf.io.gfile.glob(pattern)]
    if not files:
        raise FileNotFoundError(f"no transformed examples match {patterns}")
    spec = transform_output.transformed_feature_spec()
    wanted = {name: spec[name] for name in (*features.FEATURE_NAMES, features.CLICK_LABEL, features.WATCH_RATIO_LABEL)}
    return (
        tf.data.TFRecordDataset(sorted(files), compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE)
        .batch(1024)
        .map(lambda records: tf.io.parse_example(records, wanted), num_parallel_calls=tf.data.AUTOTUNE)
        .unbatch()
    )


def in_memory(examples: tf.data.Dataset) -> dict[str, tf.Tensor]:
    """The examples as columns in memory: every round of the search passes over them again."""
    columns: dict[str, list] = {}
    for batch in examples.batch(65_536):
        for name, value in batch.items():
            columns.setdefault(name, []).append(value)
    return {name: tf.concat(values, axis=0) for name, values in columns.items()}

