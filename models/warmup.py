"""TF Serving's warm-up requests: written into every export, replayed before a version serves.

A process's first call on a real batch builds what later calls reuse (most likely oneDNN's
kernels for the matmul shapes): 26 ms against 4 for the calls after it, measured on a task
model even after a call on an empty batch or on one row, while one call on 8 rows made the
next on 137 or 200 rows as fast as any. TF Serving replays the `PredictionLog`s of
`assets.extra/tf_serving_warmup_requests` before it makes a version available
(`--enable_model_warmup`, on by default), and fails the version if one of them fails;
`lt4rec serve` replays the same file in the same way. The requests hold synthetic rows
(`synthetic_examples`), not logged traffic, so that no user's data ships with a model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from lt4rec import features

ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"  # the name TF Serving looks for in assets.extra/
WARMUP_ROWS = 16  # enough rows for the batch kernels: 8 warmed 137 and 200 rows, 1 did not


def warmup_path(saved_model_path: str) -> str:
    return os.path.join(saved_model_path, ASSETS_EXTRA, WARMUP_FILE)


def _values(feature: features.FeatureSpec, row: int, shared_context: bool) -> list[bytes]:
    """A feature's values on one row: its full width, numbers as text (a valid duration bucket
    among them); the context features the same on every row of a ranking request."""
    if shared_context and feature.name in features.CONTEXT_FEATURE_NAMES:
        row = 0
    return [str((row + value) % 10).encode() for value in range(feature.max_values)]


def synthetic_raw(rows: int = WARMUP_ROWS, shared_context: bool = False) -> dict[str, list[list[bytes]]]:
    """Every `FEA_*` feature's values, [rows][max_values]: rows of many users, or of one request."""
    return {
        feature.name: [_values(feature, row, shared_context) for row in range(rows)] for feature in features.FEATURES
    }


def synthetic_examples(rows: int = WARMUP_ROWS, shared_context: bool = False) -> list[bytes]:
    """`synthetic_raw` as serialized tf.Examples, one per row."""
    raw = synthetic_raw(rows, shared_context)
    return [
        tf.train.Example(
            features=tf.train.Features(
                feature={
                    name: tf.train.Feature(bytes_list=tf.train.BytesList(value=values[row]))
                    for name, values in raw.items()
                }
            )
        ).SerializeToString()
        for row in range(rows)
    ]


def write(saved_model_path: str, requests: Iterable[predict_pb2.PredictRequest]) -> None:
    """The requests as TF Serving reads them: a TFRecord of PredictionLogs in assets.extra/."""
    tf.io.gfile.makedirs(os.path.dirname(warmup_path(saved_model_path)))
    with tf.io.TFRecordWriter(warmup_path(saved_model_path)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def read(saved_model_path: str) -> Sequence[predict_pb2.PredictRequest]:
    """The Predict requests of a SavedModel's warm-up file; none if it has no file."""
    path = warmup_path(saved_model_path)
    if not tf.io.gfile.exists(path):
        return []
    requests = []
    for number, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
        log = prediction_log_pb2.PredictionLog.FromString(record)
        if not log.HasField("predict_log"):
            raise ValueError(f"{path}: record {number} is not a Predict request ({log.WhichOneof('log_type')})")
        requests.append(log.predict_log.request)
    return requests
