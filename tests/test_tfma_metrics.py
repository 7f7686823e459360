"""The TFMA GAUC metric against `metrics.gauc`, run by real TFMA on the DirectRunner.

No model: the predictions are features of the examples, which TFMA reads through
`ModelSpec.prediction_key(s)`. The examples are raw tf.Examples with a bytes `FEA_UID`,
as the pipeline's Evaluator reads them.
"""

from __future__ import annotations

import lt4rec  # noqa: F401  (selects Keras 2 before TensorFlow is imported)

# isort: split

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
    ((slice_key, values),) = result.slicing_metrics
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
    assert metrics.gauc(
        logged["clicks"][two_class], logged["ctr"][two_class], logged["users"][two_class]
    ) == pytest.approx(expected)
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
        [tfma.MetricConfig(class_name="NoSkillBaseline", module=BASELINE_METRICS,
                           config=f'{{"constant": {watch_ratio}}}'),
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
        metrics_specs=[
            tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="IncumbentBaseline", module=BASELINE_METRICS)])
        ],
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


# --- The Batched metrics: TFMA's standard metrics from one combiner per output ---

import tf_keras  # noqa: E402
from tensorflow_model_analysis.metrics import metric_specs, metric_types  # noqa: E402

from lt4rec.pipeline import configs  # noqa: E402
from lt4rec.pipeline import pipeline as pipeline_lib  # noqa: E402

# Each Batched metric and the metric it stands in for: TFMA's, or Keras's BinaryCrossentropy
# (the pipeline's `log_loss`: TFMA runs it through its TF-metric wrapper).
REPLACED_BY_BATCHED = {
    "BatchedExampleCount": "ExampleCount",
    "BatchedWeightedExampleCount": "WeightedExampleCount",
    "BatchedAUC": "AUC",
    "BatchedBinaryCrossentropy": "BinaryCrossentropy",
    "BatchedCalibration": "Calibration",
    "BatchedMeanLabel": "MeanLabel",
    "BatchedMeanPrediction": "MeanPrediction",
    "BatchedMeanSquaredError": "MeanSquaredError",
}


def _run_computations(metric: metric_types.Metric, inputs: list, example_weighted: bool) -> dict[str, float]:
    """A TFMA metric's values on StandardMetricInputs, its computations run as TFMA runs them
    (equal computations once, combiners over every input, then the derived ones in order)."""
    results: dict = {}
    for computation in metric.computations(example_weighted=example_weighted):
        if isinstance(computation, metric_types.MetricComputation):
            if all(key in results for key in computation.keys):
                continue
            combiner = computation.combiner
            accumulators = [combiner.create_accumulator(), combiner.create_accumulator()]
            for index, element in enumerate(inputs):  # two accumulators, merged: as Beam may
                accumulators[index % 2] = combiner.add_input(accumulators[index % 2], element)
            # An iterator: TFMA's MeanSquaredError counts the first of a list twice.
            results.update(combiner.extract_output(combiner.merge_accumulators(iter(accumulators))))
        else:
            results.update(computation.result(results))
    return {key.name: float(value) for key, value in results.items() if not key.name.startswith("_")}


def _replaced_value(batched_name: str, labels, predictions, weights, example_weighted: bool) -> dict[str, float]:
    """The replaced metric's value, by TFMA's (or Keras's, in float64) own code."""
    if batched_name == "BatchedBinaryCrossentropy":
        keras = tf_keras.metrics.BinaryCrossentropy(dtype="float64")
        keras.update_state(labels[:, None], predictions[:, None], sample_weight=weights if example_weighted else None)
        return {keras.name: float(keras.result())}
    inputs = _inputs(labels, predictions, weights)
    return _run_computations(getattr(tfma.metrics, REPLACED_BY_BATCHED[batched_name])(), inputs, example_weighted)


def _inputs(labels, predictions, weights) -> list[metric_types.StandardMetricInputs]:
    return [
        metric_types.StandardMetricInputs(
            labels=np.array([y]), predictions=np.array([p]), example_weights=np.array([w])
        )
        for y, p, w in zip(labels, predictions, weights)
    ]


@pytest.fixture(scope="module")
def awkward() -> dict:
    """3,000 examples whose predictions often sit on TFMA's histogram bucket edges (k/10,000),
    at 0 and 1 and beyond, with binary labels and weights of 0 to 3."""
    rng = np.random.default_rng(5)
    rows = 3000
    predictions = rng.random(rows)
    predictions[::7] = rng.integers(0, 10_001, predictions[::7].size) / 10_000  # on bucket edges
    predictions[::50], predictions[1::50], predictions[2::100], predictions[3::100] = 0.0, 1.0, -0.25, 1.5
    labels = (rng.random(rows) < np.clip(predictions, 0.1, 0.9)).astype(np.int64)
    weights = rng.integers(0, 4, rows).astype(np.float64)
    return {"labels": labels, "predictions": predictions, "weights": weights}


@pytest.mark.parametrize("example_weighted", [False, True])
@pytest.mark.parametrize("batched_name", sorted(REPLACED_BY_BATCHED))
def test_each_batched_metric_equals_the_one_it_replaces(awkward, batched_name, example_weighted):
    labels, predictions, weights = awkward["labels"], awkward["predictions"], awkward["weights"]
    batched = _run_computations(
        getattr(tfma_metrics, batched_name)(), _inputs(labels, predictions, weights), example_weighted
    )
    replaced = _replaced_value(batched_name, labels, predictions, weights, example_weighted)
    assert list(batched) == list(replaced)  # the same default name
    (name,) = replaced
    assert batched[name] == pytest.approx(replaced[name], rel=1e-12), name


def test_the_batched_auc_takes_tfmas_options(awkward):
    inputs = _inputs(awkward["labels"], awkward["predictions"], awkward["weights"])
    for options in ({"num_thresholds": 50}, {"curve": "PR"}, {"summation_method": "minoring"}):
        batched = _run_computations(tfma_metrics.BatchedAUC(**options), inputs, True)["auc"]
        assert batched == pytest.approx(
            _run_computations(tfma.metrics.AUC(**options), inputs, True)["auc"], rel=1e-12
        ), options


def test_a_nan_prediction_fails_the_batched_auc_as_tfmas_and_is_skipped_by_the_mse():
    labels, predictions = np.array([1, 0, 1, 0]), np.array([0.9, np.nan, 0.4, 0.2])
    inputs = _inputs(labels, predictions, np.ones(4))
    with pytest.raises(ValueError):
        _run_computations(tfma.metrics.AUC(), inputs, False)
    with pytest.raises(ValueError, match="1 NaN predictions"):
        _run_computations(tfma_metrics.BatchedAUC(), inputs, False)
    batched = _run_computations(tfma_metrics.BatchedMeanSquaredError(), inputs, False)["mean_squared_error"]
    assert (
        batched
        == _run_computations(tfma.metrics.MeanSquaredError(), inputs, False)["mean_squared_error"]
        == pytest.approx((0.01 + 0.36 + 0.04) / 3)
    )


def test_batched_metrics_match_scikit_learn_and_numpy(awkward):
    """Not TFMA's code, the definitions: the same figures from scikit-learn and NumPy."""
    labels, weights = awkward["labels"], awkward["weights"]
    predictions = np.clip(awkward["predictions"], 0.01, 0.99)
    inputs = _inputs(labels, predictions, weights)
    values = {}
    for name in REPLACED_BY_BATCHED:
        values.update(_run_computations(getattr(tfma_metrics, name)(), inputs, True))
    assert values["example_count"] == values["weighted_example_count"] == weights.sum()
    assert values["mean_label"] == pytest.approx(np.average(labels, weights=weights), rel=1e-12)
    assert values["mean_prediction"] == pytest.approx(np.average(predictions, weights=weights), rel=1e-12)
    assert values["calibration"] == pytest.approx(np.sum(weights * predictions) / np.sum(weights * labels), rel=1e-12)
    # Keras adds 1e-7 inside the logs: within 1e-5 of the log loss for p in [0.01, 0.99].
    assert values["binary_crossentropy"] == pytest.approx(
        sk.log_loss(labels, predictions, sample_weight=weights), rel=1e-5
    )
    assert values["mean_squared_error"] == pytest.approx(
        sk.mean_squared_error(labels, predictions, sample_weight=weights), rel=1e-12
    )
    # 10,000 thresholds: a positive and a negative within 1/10,000 of each other count as a tie.
    assert values["auc"] == pytest.approx(sk.roc_auc_score(labels, predictions, sample_weight=weights), abs=2e-4)


def test_batched_metrics_in_tfma_equal_the_ones_they_replace_on_a_two_output_model(scored, tmp_path):
    """A real TFMA run (the DirectRunner), the CVR output weighted by clicks as in the pipeline."""

    def both(names: list[str]) -> list[tfma.MetricConfig]:
        return [tfma.MetricConfig(class_name=name) for name in names] + [
            tfma.MetricConfig(
                class_name=f"Batched{name}", module=BASELINE_METRICS, config=f'{{"name": "batched_{name}"}}'
            )
            for name in names
        ]

    ctr_names = ["ExampleCount", "AUC", "BinaryCrossentropy", "Calibration", "MeanLabel", "MeanPrediction"]
    cvr_names = ["WeightedExampleCount", "MeanSquaredError", "MeanLabel", "MeanPrediction"]
    values = _overall_metrics(_two_output_config(both(ctr_names), both(cvr_names)), scored["path"], str(tmp_path))
    ctr, cvr = _values(values, "ctr"), _values(values, "cvr")
    for output, names in ((ctr, ctr_names), (cvr, cvr_names)):
        for name in names:
            default_name = getattr(tfma_metrics, f"Batched{name}")().name
            # TFMA's and Keras's own sums are of float32 values, in float32 for Keras.
            assert output[f"batched_{name}"] == pytest.approx(output[default_name], rel=1e-6), name

    clicks = scored["clicks"].astype(bool)
    assert ctr["example_count"] == len(clicks) and cvr["weighted_example_count"] == clicks.sum()
    assert ctr["batched_AUC"] == pytest.approx(sk.roc_auc_score(scored["clicks"], scored["ctr"]), abs=2e-3)
    assert ctr["batched_BinaryCrossentropy"] == pytest.approx(
        sk.log_loss(scored["clicks"], scored["ctr"].astype(np.float64)), rel=1e-5
    )
    model_mse = np.mean((scored["ratio"][clicks].astype(np.float64) - scored["cvr"][clicks]) ** 2)
    assert cvr["batched_MeanSquaredError"] == pytest.approx(model_mse, rel=1e-9)


def test_the_pipelines_eval_config_reports_the_replaced_metrics_names():
    """The Batched metrics in the pipeline's EvalConfig give the keys the replaced ones gave:
    thresholds, diffs against the blessed model and readers of the results are unchanged."""
    eval_config = pipeline_lib.eval_config(configs.PipelineSettings(data_root="d", pipeline_root="p", serving_dir="s"))
    replaced = tfma.EvalConfig()
    replaced.CopyFrom(eval_config)
    count = 0
    for spec in replaced.metrics_specs:
        for metric in spec.metrics:
            if metric.class_name in REPLACED_BY_BATCHED:
                metric.class_name, metric.module = REPLACED_BY_BATCHED[metric.class_name], ""
                count += 1
    assert count == 10  # CTR: 6, CVR: 4

    def public_keys(config: tfma.EvalConfig) -> set[metric_types.MetricKey]:
        specs = []
        for spec in config.metrics_specs:  # NoSkillBaseline needs the Evaluator's train means: left out
            kept = tfma.MetricsSpec()
            kept.CopyFrom(spec)
            del kept.metrics[:]
            kept.metrics.extend(metric for metric in spec.metrics if metric.class_name != "NoSkillBaseline")
            specs.append(kept)
        computations = metric_specs.to_computations(specs, eval_config=config)
        return {key for c in computations for key in c.keys if not key.name.startswith("_")}

    keys = public_keys(eval_config)
    assert keys == public_keys(replaced)
    assert {"auc", "log_loss", "example_count", "calibration", "mse", "clicked_examples"} <= {key.name for key in keys}
