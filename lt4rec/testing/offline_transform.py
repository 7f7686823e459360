"""The project's Transform outside a pipeline: analysis on Beam, then the graph in-process.

The same `preprocessing_fn` and curated schema as the Transform component, for the places
that need a Transform graph without running the pipeline: benchmarks, and the test
fixtures that export and serve small models.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from lt4rec import features
from lt4rec.models import preprocessing
from lt4rec.pipeline import configs


def analyze(train_files: list[str], feature_config: features.FeatureConfig, transform_dir: str) -> None:
    """Runs tf.Transform's analysis over `train_files` and writes the graph to `transform_dir`."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io
    from tfx.utils import io_utils
    from tfx_bsl.public import tfxio

    schema = io_utils.parse_pbtxt_file(configs.SCHEMA_PATH, schema_pb2.Schema())
    source = tfxio.TFExampleRecord(file_pattern=train_files, schema=schema)
    preprocessing_fn = functools.partial(
        preprocessing.preprocessing_fn, custom_config={preprocessing.FEATURES_CONFIG_KEY: feature_config.to_dict()}
    )
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=os.path.join(transform_dir, "tmp")):
        transform_fn = (
            pipeline | source.BeamSource(),
            source.TensorAdapterConfig(),
        ) | tft_beam.AnalyzeDataset(preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)
    # The raw schema beside the graph, as TFX's Transform leaves it (for raw_feature_spec).
    metadata_io.write_metadata(
        dataset_metadata.DatasetMetadata(schema), os.path.join(transform_dir, tft.TFTransformOutput.RAW_METADATA_DIR)
    )


def transformed_batches(
    files: list[str], transform_dir: str, batch_size: int = 4096
) -> Iterator[dict[str, np.ndarray]]:
    """The transformed examples (feature ids and labels) of GZIP log files, batch by batch, in order."""
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(transform_dir)
    layer = output.transform_features_layer()
    spec = output.raw_feature_spec()
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch_size):
        transformed = layer(tf.io.parse_example(batch, spec))
        yield {
            name: transformed[name].numpy()
            for name in (*features.FEATURE_NAMES, features.CLICK_LABEL, features.WATCH_RATIO_LABEL)
        }


def transform(files: list[str], transform_dir: str) -> dict[str, np.ndarray]:
    """The transformed examples of GZIP log files, as columns."""
    columns: dict[str, list[np.ndarray]] = {}
    for batch in transformed_batches(files, transform_dir):
        for name, values in batch.items():
            columns.setdefault(name, []).append(values)
    return {name: np.concatenate(values) for name, values in columns.items()}
