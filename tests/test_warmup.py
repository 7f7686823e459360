"""TF Serving's warm-up requests: the synthetic rows, and the file as TF Serving reads it."""

from __future__ import annotations

import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from lt4rec import features
from lt4rec.models import warmup


def _parsed(serialized: list[bytes]) -> dict[str, list[list[bytes]]]:
    spec = {feature.name: tf.io.VarLenFeature(tf.string) for feature in features.FEATURES}
    parsed = tf.io.parse_example(serialized, spec)
    return {name: tf.sparse.to_dense(value).numpy().tolist() for name, value in parsed.items()}


@pytest.mark.parametrize("shared_context", [False, True])
def test_synthetic_rows_fill_every_feature_and_share_the_context_only_in_one_request(shared_context):
    parsed = _parsed(warmup.synthetic_examples(8, shared_context))
    for feature in features.FEATURES:
        rows = parsed[feature.name]
        assert len(rows) == 8 and all(len(row) == feature.max_values and all(row) for row in rows)
        distinct = len({tuple(row) for row in rows})
        if shared_context and feature.name in features.CONTEXT_FEATURE_NAMES:
            assert distinct == 1
        else:
            assert distinct > 1
    raw = warmup.synthetic_raw(8, shared_context)
    assert {name: [list(row) for row in rows] for name, rows in raw.items()} == parsed


def test_requests_round_trip_as_prediction_logs(tmp_path):
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = "serving_context"
    request.inputs["context"].CopyFrom(tf.make_tensor_proto(b"an example"))
    warmup.write(str(tmp_path), [request, predict_pb2.PredictRequest()])
    records = list(tf.data.TFRecordDataset(str(tmp_path / "assets.extra" / "tf_serving_warmup_requests")))
    assert prediction_log_pb2.PredictionLog.FromString(records[0].numpy()).predict_log.request == request
    assert warmup.read(str(tmp_path)) == [request, predict_pb2.PredictRequest()]
    assert warmup.read(str(tmp_path / "no model")) == []


def test_a_record_that_is_not_a_predict_request_is_named(tmp_path):
    path = tmp_path / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir()
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog()).SerializeToString())
        writer.write(
            prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog()).SerializeToString()
        )
    with pytest.raises(ValueError, match=r"warmup_requests: record 1 is not a Predict request \(classify_log\)"):
        warmup.read(str(tmp_path))
