"""The TFMA GAUC metric against `metrics.gauc`, run by real TFMA on the DirectRunner.

No model: the predictions are features of the examples, which TFMA reads through
`ModelSpec.prediction_key(s)`. The examples are raw tf.Examples with a bytes `FEA_UID`,
as the pipeline's Evaluator reads them.
"""

from __future__ import annotations

import lt4rec  # noqa: F401  (selects Keras 2 before TensorFlow is imported)

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma

from lt4rec.models import metrics, tfma_metrics

GAUC_CONFIG = tfma.MetricConfig(class_name="GAUC", module="lt4rec.models.tfma_metrics")


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> dict:
    """400 impressions of 12 users: one never clicks, one always clicks, one has a single
    impression, one has all scores tied; scores are rounded to 0.1, so ties abound."""
    rng = np.random.default_rng(3)
    rows = 400
    users = rng.integers(0, 11, rows)
    users[0] = 11  # the only impression of user 11
    clicks = (rng.random(rows) < 0.35).astype(np.int64)
    clicks[users == 0], clicks[users == 1] = 0, 1
    ctr = np.round(np.clip(0.3 + 0.3 * clicks + rng.normal(0, 0.25, rows), 0, 1), 1)
    ctr[users == 2] = 0.5
    ctr = ctr.astype(np.float32)  # what a float_list holds
    path = str(tmp_path_factory.mktemp("tfma") / "examples.tfrecord.gz")
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for user, click, score in zip(users, clicks, ctr):
            feature = {
                "FEA_UID": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"u{user}".encode()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[click])),
                "cvrlabel": tf.train.Feature(float_list=tf.train.FloatList(value=[0.6 * click])),
                "ctr_pred": tf.train.Feature(float_list=tf.train.FloatList(value=[score])),
                "cvr_pred": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return {"path": path, "users": users, "clicks": clicks, "ctr": ctr}


def _overall_metrics(eval_config: tfma.EvalConfig, data: str, output: str) -> dict:
    result = tfma.run_model_analysis(eval_config=eval_config, data_location=data, output_path=output)
    (slice_key, values), = result.slicing_metrics
    assert slice_key == ()
    return values


def test_gauc_matches_numpy_under_the_ctr_output_of_a_two_output_model(logged, tmp_path):
    eval_config = tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                label_keys={"ctr": "label", "cvr": "cvrlabel"},
                prediction_keys={"ctr": "ctr_pred", "cvr": "cvr_pred"},
            )
        ],
        metrics_specs=[
            tfma.MetricsSpec(metrics=[GAUC_CONFIG], query_key="FEA_UID", output_names=["ctr"]),
            tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="MeanSquaredError")], output_names=["cvr"]),
        ],
        slicing_specs=[tfma.SlicingSpec()],
    )
    values = _overall_metrics(eval_config, logged["path"], str(tmp_path))

    expected = metrics.gauc(logged["clicks"], logged["ctr"], logged["users"])
    assert values["ctr"][""]["gauc"]["doubleValue"] == pytest.approx(expected, abs=1e-6)
    assert "gauc" not in values["cvr"][""]
    # The data does exercise the skipping: dropping the one-class users changes nothing.
    two_class = ~np.isin(logged["users"], [0, 1, 11])
    assert metrics.gauc(logged["clicks"][two_class], logged["ctr"][two_class], logged["users"][two_class]) == expected
    assert expected != pytest.approx(metrics.auc(logged["clicks"], logged["ctr"]), abs=1e-3)


def test_gauc_of_a_single_output_model(logged, tmp_path):
    eval_config = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(label_key="label", prediction_key="ctr_pred")],
        metrics_specs=[tfma.MetricsSpec(metrics=[GAUC_CONFIG], query_key="FEA_UID")],
    )
    values = _overall_metrics(eval_config, logged["path"], str(tmp_path))

    expected = metrics.gauc(logged["clicks"], logged["ctr"], logged["users"])
    assert values[""][""]["gauc"]["doubleValue"] == pytest.approx(expected, abs=1e-6)


def test_gauc_needs_a_query_key():
    with pytest.raises(ValueError, match="query_key"):
        tfma_metrics.GAUC().computations(output_names=["ctr"])
