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
            tfma.MetricsSpec(metrics=[GAUC_CONFIG], output_names=["ctr"]),
            tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="MeanSquaredError")], output_names=["cvr"]),
        ],
        slicing_specs=[tfma.SlicingSpec()],
    )
    values = _overall_metrics(eval_config, logged["path"], str(tmp_path))

    expected = sklearn_gauc(logged["clicks"], logged["ctr"], logged["users"])
    assert values["ctr"][""]["gauc"]["doubleValue"] == pytest.approx(expected, abs=1e-6)
    assert metrics.gauc(logged["clicks"], logged["ctr"], logged["users"]) == pytest.approx(expected, abs=1e-12)
    assert "gauc" not in values["cvr"][""]
    # The data does exercise the skipping: dropping the one-class users changes nothing.
    two_class = ~np.isin(logged["users"], [0, 1, 11])
    assert metrics.gauc(logged["clicks"][two_class], logged["ctr"][two_class], logged["users"][two_class]) == pytest.approx(expected)
    assert expected != pytest.approx(metrics.auc(logged["clicks"], logged["ctr"]), abs=1e-3)


def test_gauc_of_a_single_output_model(logged, tmp_path):
    eval_config = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(label_key="label", prediction_key="ctr_pred")],
        metrics_specs=[tfma.MetricsSpec(metrics=[GAUC_CONFIG])],
    )
    values = _overall_metrics(eval_config, logged["path"], str(tmp_path))

    expected = sklearn_gauc(logged["clicks"], logged["ctr"], logged["users"])
    assert values[""][""]["gauc"]["doubleValue"] == pytest.approx(expected, abs=1e-6)


def test_gauc_groups_by_its_feature_not_a_query_key():
    with pytest.raises(ValueError, match="remove query_key 'FEA_UID'"):
        tfma_metrics.GAUC().computations(output_names=["ctr"], query_key="FEA_UID")


def sklearn_gauc(clicks: np.ndarray, scores: np.ndarray, users: np.ndarray) -> float:
    """GAUC by scikit-learn's AUC per user with both classes, weighted by impressions."""
    total = weight = 0.0
    for user in np.unique(users):
        member = users == user
        if 0 < clicks[member].sum() < member.sum():
            total += sk.roc_auc_score(clicks[member], scores[member]) * member.sum()
            weight += member.sum()
    return total / weight


# --- The baselines a model must beat: no skill (a constant) and the incumbent (`pctr`) ---

from sklearn import metrics as sk  # noqa: E402

BASELINE_METRICS = "lt4rec.models.tfma_metrics"


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict:
    """600 impressions with a model's CTR and CVR scores and a logged `pctr` string that is
    sometimes missing, empty, `-1` or garbage (those rows are not the incumbent's)."""
    rng = np.random.default_rng(11)
    rows = 600
    clicks = (rng.random(rows) < 0.4).astype(np.int64)
    ratio = np.where(clicks == 1, np.clip(rng.beta(4, 1.5, rows), 0, 1), 0.0).astype(np.float32)
    ctr = np.clip(0.4 + 0.2 * clicks + rng.normal(0, 0.2, rows), 0.01, 0.99).astype(np.float32)
    cvr = np.clip(0.5 + 0.4 * ratio + rng.normal(0, 0.1, rows), 0.01, 0.99).astype(np.float32)
    pctr = np.clip(0.35 + 0.3 * clicks + rng.normal(0, 0.2, rows), 0.001, 0.999)
    logged = [f"{p:.6f}".encode() for p in pctr]
    for index, bad in zip(range(0, 40, 4), [None, b"", b"-1", b"abc", b"1.5"] * 2):
        logged[index] = bad  # None: no `pctr` key at all
    path = str(tmp_path_factory.mktemp("baselines") / "examples.tfrecord.gz")
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for i in range(rows):
            feature = {
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[clicks[i]])),
                "cvrlabel": tf.train.Feature(float_list=tf.train.FloatList(value=[ratio[i]])),
                "ctr_pred": tf.train.Feature(float_list=tf.train.FloatList(value=[ctr[i]])),
                "cvr_pred": tf.train.Feature(float_list=tf.train.FloatList(value=[cvr[i]])),
            }
            if logged[i] is not None:
                feature["pctr"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[logged[i]]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    valid = np.array([value not in (None, b"", b"-1", b"abc", b"1.5") for value in logged])
    return {"path": path, "clicks": clicks, "ratio": ratio, "ctr": ctr, "cvr": cvr, "pctr": pctr, "valid": valid}


def _two_output_config(ctr_metrics: list, cvr_metrics: list) -> tfma.EvalConfig:
    """The pipeline's ModelSpec, with the model's scores read from features."""
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                label_keys={"ctr": "label", "cvr": "cvrlabel"},
                prediction_keys={"ctr": "ctr_pred", "cvr": "cvr_pred"},
                example_weight_keys={"cvr": "label"},
            )
        ],
        metrics_specs=[
            tfma.MetricsSpec(output_names=["ctr"], metrics=ctr_metrics),
            tfma.MetricsSpec(output_names=["cvr"], metrics=cvr_metrics),
        ],
        slicing_specs=[tfma.SlicingSpec()],
    )


def _values(result: dict, output: str) -> dict:
    return {name: value["doubleValue"] for name, value in result[output][""].items()}


def test_no_skill_baseline_matches_numpy(scored, tmp_path):
    click_rate, watch_ratio = 0.37, 0.74  # stand-ins for the train split's means
    eval_config = _two_output_config(
        [tfma.MetricConfig(class_name="NoSkillBaseline", module=BASELINE_METRICS,
                           config=f'{{"loss": "log_loss", "constant": {click_rate}}}')],
        [tfma.MetricConfig(class_name="NoSkillBaseline", module=BASELINE_METRICS, config=f'{{"constant": {watch_ratio}}}'),
         tfma.MetricConfig(class_name="MeanSquaredError", config='{"name": "mse"}')],
    )  # fmt: skip
    values = _overall_metrics(eval_config, scored["path"], str(tmp_path))
    ctr, cvr = _values(values, "ctr"), _values(values, "cvr")

    clicks = scored["clicks"].astype(bool)
    no_skill_mse = np.mean((scored["ratio"][clicks] - watch_ratio) ** 2)  # clicked impressions only
    model_mse = np.mean((scored["ratio"][clicks] - scored["cvr"][clicks]) ** 2)
    assert cvr["no_skill_mse"] == pytest.approx(no_skill_mse, rel=1e-6)
    assert cvr["mse_below_no_skill"] == pytest.approx(no_skill_mse - model_mse, rel=1e-5)
    assert cvr["mse"] == pytest.approx(model_mse, rel=1e-5)  # the model's side is TFMA's own MSE
    assert cvr["no_skill_prediction"] == watch_ratio
    no_skill_log_loss = sk.log_loss(scored["clicks"], np.full(clicks.size, click_rate))
    assert ctr["no_skill_log_loss"] == pytest.approx(no_skill_log_loss, rel=1e-6)
    assert ctr["log_loss_below_no_skill"] == pytest.approx(
        no_skill_log_loss - sk.log_loss(scored["clicks"], scored["ctr"].astype(np.float64)), rel=1e-5
    )
    assert ctr["no_skill_prediction"] == click_rate


def test_incumbent_baseline_matches_scikit_learn_on_the_rows_with_a_score(scored, tmp_path):
    eval_config = _two_output_config(
        [tfma.MetricConfig(class_name="IncumbentBaseline", module=BASELINE_METRICS),
         tfma.MetricConfig(class_name="AUC")], [],
    )  # fmt: skip
    ctr = _values(_overall_metrics(eval_config, scored["path"], str(tmp_path)), "ctr")

    valid = scored["valid"]
    assert ctr["incumbent_examples"] == valid.sum() == len(valid) - 10
    labels, pctr = scored["clicks"][valid], scored["pctr"][valid]
    incumbent_auc = sk.roc_auc_score(labels, pctr)
    model_auc = sk.roc_auc_score(labels, scored["ctr"][valid])
    assert ctr["incumbent_auc"] == pytest.approx(incumbent_auc, abs=2e-4)  # 10,000 score buckets
    assert ctr["auc_on_incumbent_examples"] == pytest.approx(model_auc, abs=2e-4)
    assert ctr["auc_above_incumbent"] == pytest.approx(model_auc - incumbent_auc, abs=4e-4)
    assert ctr["incumbent_log_loss"] == pytest.approx(sk.log_loss(labels, np.round(pctr, 6)), rel=1e-6)
    assert ctr["auc"] == pytest.approx(sk.roc_auc_score(scored["clicks"], scored["ctr"]), abs=2e-3)  # every row
    assert ctr["incumbent_auc"] > ctr["auc_on_incumbent_examples"]  # the data's incumbent is the better ranker


def test_incumbent_baseline_without_any_score_is_nan(logged, tmp_path):
    eval_config = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(label_key="label", prediction_key="ctr_pred")],
        metrics_specs=[tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="IncumbentBaseline", module=BASELINE_METRICS)])],
    )
    values = _values(_overall_metrics(eval_config, logged["path"], str(tmp_path)), "")  # `logged` has no pctr
    assert values["incumbent_examples"] == 0
    assert np.isnan(float(values["incumbent_auc"])) and np.isnan(float(values["auc_above_incumbent"]))  # "NaN" in JSON


def test_no_skill_baseline_needs_its_constant():
    with pytest.raises(ValueError, match="train split's mean label"):
        tfma_metrics.NoSkillBaseline(loss="mse").computations(output_names=["cvr"])
    with pytest.raises(ValueError, match="loss must be one of"):
        tfma_metrics.NoSkillBaseline(loss="mae", constant=0.5)


def test_histogram_auc_and_score_parsing_by_hand():
    # 3 positives at buckets 2, 2, 5; 2 negatives at buckets 1, 2: pairs won 2*1 + 0.5*2*1 + 2 = 5 of 6.
    positives, negatives = np.zeros(6), np.zeros(6)
    positives[[2, 5]] = [2, 1]
    negatives[[1, 2]] = [1, 1]
    assert tfma_metrics.histogram_auc(positives, negatives) == pytest.approx(5 / 6)
    assert np.isnan(tfma_metrics.histogram_auc(positives, np.zeros(6)))
    parsed = tfma_metrics.parse_scores([b"0.25", "1", 0.5, b"", b"-1", b"nan", b"x", None, b"\xff"])
    np.testing.assert_array_equal(parsed[:3], [0.25, 1.0, 0.5])
    assert np.isnan(parsed[3:]).all()
