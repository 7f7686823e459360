"""The pipeline's own TFMA metrics: GAUC, and the baselines a model must beat.

`NoSkillBaseline` and `IncumbentBaseline` (below) report the loss of a constant
prediction and the AUC of a score the logs carry (`pctr`), beside the model's, and the
model's margin over them; see their docstrings and `components/evaluator/`.

GAUC, so that the pipeline's Evaluator reports what `metrics.gauc` computes: each example
brings its user id as a feature (`FEA_UID` by default), the combiner keeps the (user,
label, prediction) of every example compactly (a 64-bit hash of the user, a float label, a
double prediction: 20 bytes per example) and applies `metrics.gauc` itself at the end, so
the two can never drift apart.

    tfma.MetricsSpec(
        metrics=[tfma.MetricConfig(class_name="GAUC", module="lt4rec.models.tfma_metrics")],
        output_names=["ctr"],
    )

It does not use TFMA's `query_key`: grouping by query merges every example's whole extract
(features, labels, predictions) per user before the combiner sees it, which took most of
the Evaluator's time. GAUC weighs users by impressions, whatever the example weights.

The `Batched*` metrics at the end are TFMA's ExampleCount, WeightedExampleCount, AUC,
Calibration, MeanLabel, MeanPrediction and MeanSquaredError, and Keras's BinaryCrossentropy,
under the same names and with the same values, computed from one combiner per output.
"""

from __future__ import annotations

import array
import hashlib
import math
from typing import Any, Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis import constants
from tensorflow_model_analysis.metrics import (
    calibration,
    calibration_histogram,
    confusion_matrix_metrics,
    example_count,
    mean_regression_error,
    metric_types,
    metric_util,
    weighted_example_count,
)
from tensorflow_model_analysis.proto import config_pb2

from lt4rec import features
from lt4rec.models import metrics

GAUC_NAME = "gauc"


class GAUC(metric_types.Metric):
    """Impression-weighted mean of per-user AUC; users with one class only are skipped."""

    def __init__(self, name: str = GAUC_NAME, feature: str = features.USER_ID):
        super().__init__(_gauc_computations, name=name, feature=feature)


metric_types.register_metric(GAUC)


def _gauc_computations(
    name: str = GAUC_NAME,
    feature: str = features.USER_ID,
    eval_config: Optional[config_pb2.EvalConfig] = None,
    model_names: Optional[list[str]] = None,
    output_names: Optional[list[str]] = None,
    example_weighted: bool = False,
    query_key: str = "",
) -> metric_types.MetricComputations:
    """One computation per (model, output): each output has its own labels and predictions."""
    if query_key:
        raise ValueError(
            f"GAUC groups by its feature ({feature!r}) itself: remove query_key {query_key!r} from its MetricsSpec"
        )
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            key = metric_types.MetricKey(
                name=name, model_name=model_name, output_name=output_name, example_weighted=example_weighted
            )
            combiner = _GAUCCombiner(key, eval_config, feature)
            computations.append(
                metric_types.MetricComputation(
                    keys=[key], preprocessors=[_with_feature(feature, model_name, output_name)], combiner=combiner
                )
            )
    return computations


def _with_feature(feature: str, model_name: str, output_name: str) -> metric_types.StandardMetricInputsPreprocessor:
    """The metric inputs of one model output, with one feature of the example beside them
    ("" names the only model or output: no filter, which a name would be)."""
    return metric_types.FeaturePreprocessor(
        feature_keys=[feature],
        model_names=[model_name] if model_name else None,
        output_names=[output_name] if output_name else None,
    )


def _single_number(value: Any) -> Optional[float]:
    """The number in a one-element array (or a plain number); None for anything else."""
    if isinstance(value, np.ndarray):
        return float(value.item()) if value.size == 1 else None
    return float(np.ravel(value)[0]) if value is not None and np.size(value) == 1 else None


def _examples(
    element: metric_types.StandardMetricInputs,
    key: metric_types.MetricKey,
    eval_config: Optional[config_pb2.EvalConfig],
    example_weighted: bool,
) -> list[tuple[float, float, float]]:
    """(label, prediction, weight) of each value of `key`'s output in one example.

    One model with one value per output (the pipeline's models) is read directly from the
    extracts: TFMA's general `to_label_prediction_example_weight` (and even its properties
    of StandardMetricInputs) cost more than all the rest of these metrics' work per example,
    and each metric reads every example. Anything else goes through it.
    """
    name, extracts = key.output_name, element.extracts
    label, prediction = extracts.get(constants.LABELS_KEY), extracts.get(constants.PREDICTIONS_KEY)
    weight = extracts.get(constants.EXAMPLE_WEIGHTS_KEY) if example_weighted else None
    if not key.model_name and isinstance(label, dict) == bool(name) == isinstance(prediction, dict):
        if name:
            label, prediction = label.get(name), prediction.get(name)
            weight = weight.get(name) if isinstance(weight, dict) else weight
        label, prediction = _single_number(label), _single_number(prediction)
        weight = 1.0 if weight is None else _single_number(weight)
        if label is not None and prediction is not None and weight is not None:
            return [(label, prediction, weight)]
    examples = []
    for labels, predictions, weights in metric_util.to_label_prediction_example_weight(
        element,
        eval_config=eval_config,
        model_name=key.model_name,
        output_name=name,
        example_weighted=example_weighted,
        flatten=False,
    ):
        labels, predictions, weights = (
            np.ravel(labels).tolist(),
            np.ravel(predictions).tolist(),
            np.ravel(weights).tolist(),
        )
        examples.extend(zip(labels, predictions, weights * len(labels) if len(weights) == 1 else weights))
    return examples


class _ExamplesCombiner(beam.CombineFn):
    """A CombineFn over one output's (label, prediction, weight) examples (`_examples`).

    `keys`: the metric keys it outputs, the first naming the output it reads."""

    def __init__(
        self,
        keys: Sequence[metric_types.MetricKey],
        eval_config: Optional[config_pb2.EvalConfig],
        example_weighted: bool,
    ) -> None:
        self._keys = list(keys)
        self._eval_config = eval_config
        self._example_weighted = example_weighted

    def _examples(self, element: metric_types.StandardMetricInputs) -> list[tuple[float, float, float]]:
        return _examples(element, self._keys[0], self._eval_config, self._example_weighted)


def user_hash(value: Any) -> int:
    """A 64-bit id of a user id value (bytes, text or number): collisions are negligible
    (about 3e-6 for 10M users), and it takes 8 bytes whatever the id's length."""
    data = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


class _GAUCAccumulator:
    """Every example's (user, label, prediction), in compact arrays; merging concatenates."""

    __slots__ = ["users", "labels", "predictions"]

    def __init__(self) -> None:
        self.users = array.array("q")
        self.labels = array.array("f")
        self.predictions = array.array("d")


class _GAUCCombiner(_ExamplesCombiner):
    def __init__(self, key: metric_types.MetricKey, eval_config: Optional[config_pb2.EvalConfig], feature: str) -> None:
        super().__init__([key], eval_config, example_weighted=False)
        self._feature = feature

    def create_accumulator(self) -> _GAUCAccumulator:
        return _GAUCAccumulator()

    def add_input(self, accumulator: _GAUCAccumulator, element: metric_types.StandardMetricInputs) -> _GAUCAccumulator:
        value = (element.features or {}).get(self._feature)
        users = np.asarray(value, dtype=object).reshape(-1) if value is not None else np.empty(0, dtype=object)
        if users.size != 1:
            raise ValueError(f"{self._keys[0]}: GAUC needs exactly one {self._feature} per example, got {value!r}")
        ((label, prediction, _),) = self._examples(element)
        accumulator.users.append(user_hash(users[0]))
        accumulator.labels.append(label)
        accumulator.predictions.append(prediction)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_GAUCAccumulator]) -> _GAUCAccumulator:
        accumulators = iter(accumulators)
        result = next(accumulators)
        for accumulator in accumulators:
            result.users.extend(accumulator.users)
            result.labels.extend(accumulator.labels)
            result.predictions.extend(accumulator.predictions)
        return result

    def extract_output(self, accumulator: _GAUCAccumulator) -> dict[metric_types.MetricKey, Any]:
        users = np.frombuffer(accumulator.users, dtype=np.int64) if accumulator.users else np.empty(0, np.int64)
        labels = np.frombuffer(accumulator.labels, dtype=np.float32) if accumulator.labels else np.empty(0, np.float32)
        predictions = (
            np.frombuffer(accumulator.predictions, dtype=np.float64) if accumulator.predictions else np.empty(0)
        )
        return {self._keys[0]: metrics.gauc(labels, predictions, users)}


# --- Baselines a model must beat: no skill (a constant) and the incumbent (a logged score) ---
#
# Each metric below reports the baseline's figure beside the model's, computed in the same
# TFMA pass over the same examples and weights, and, under its own name, the model's margin
# over the baseline (positive: the model is better). The Evaluator's blessing thresholds
# sit on the margin (`pipeline/pipeline.py`, `components/evaluator/`).

MSE = "mse"
LOG_LOSS = "log_loss"
NO_SKILL_LOSSES = (MSE, LOG_LOSS)
NUM_BUCKETS = 10_000  # score histogram resolution of the incumbent's AUC (TFMA's AUC: 10,000 thresholds)
EPSILON = 1e-7  # probabilities clipped to [EPSILON, 1 - EPSILON] in log loss, as Keras does
# A margin threshold's lower bound: the smallest positive double, so that a margin of
# exactly 0 (a tie) fails TFMA's inclusive bound, and any real improvement passes.
ABOVE_ZERO = math.ulp(0.0)


def margin_name(loss: str) -> str:
    """The no-skill margin's metric name: the baseline's loss minus the model's."""
    return f"{loss}_below_no_skill"


INCUMBENT_MARGIN = "auc_above_incumbent"  # the model's AUC minus the incumbent's
NO_SKILL_PREDICTION = "no_skill_prediction"
INCUMBENT_AUC = "incumbent_auc"
INCUMBENT_LOG_LOSS = "incumbent_log_loss"
INCUMBENT_EXAMPLES = "incumbent_examples"
AUC_ON_INCUMBENT_EXAMPLES = "auc_on_incumbent_examples"


def _loss(loss: str, label: float, prediction: float) -> float:
    """One example's loss, in plain floats: metrics add one example at a time, and NumPy on
    one-element arrays costs more than the arithmetic (a third of the Evaluator's time)."""
    if loss == MSE:
        return (label - prediction) ** 2
    p = min(max(prediction, EPSILON), 1 - EPSILON)
    return -(label * math.log(p) + (1 - label) * math.log(1 - p))


def parse_score(value: Any) -> float:
    """A logged score (a decimal string, bytes or a number) as a float; NaN where it is not
    a number in [0, 1] (missing, empty, `-1`, garbage)."""
    try:
        score = float(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError, UnicodeDecodeError):
        return float("nan")
    return score if 0.0 <= score <= 1.0 else float("nan")  # also NaN for NaN and inf


def parse_scores(values: Any) -> np.ndarray:
    """`parse_score` of each of `values`, as float64."""
    return np.array([parse_score(value) for value in np.asarray(values, dtype=object).reshape(-1)], dtype=np.float64)


def histogram_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """ROC AUC from (weighted) counts of positives and negatives per score bucket, buckets in
    ascending score order; a positive and a negative in one bucket count as a tie (1/2)."""
    total_pos, total_neg = float(np.sum(positives)), float(np.sum(negatives))
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    below = np.cumsum(negatives) - negatives
    return float(np.sum(positives * (below + 0.5 * negatives)) / (total_pos * total_neg))


def _keys(
    name: str, model_name: str, output_name: str, example_weighted: bool, *extra: str
) -> list[metric_types.MetricKey]:
    return [
        metric_types.MetricKey(
            name=n, model_name=model_name, output_name=output_name, example_weighted=example_weighted
        )
        for n in (name, *extra)
    ]


class NoSkillBaseline(metric_types.Metric):
    """The loss of predicting one constant for every example, beside the model's loss.

    `constant` is the no-skill prediction: the mean label of the train split, weighted as
    this output's examples are (CTR: the click rate; CVR, weighted by clicks: the mean
    watch ratio of clicked impressions). lt4rec's Evaluator computes it from the train
    split and writes it into this metric's config before TFMA runs. `loss` is "mse" or
    "log_loss". Keys: `<loss>_below_no_skill` (no-skill loss minus the model's: positive
    when the model beats no skill), `no_skill_<loss>`, and `no_skill_prediction`.
    """

    def __init__(self, loss: str = MSE, constant: Optional[float] = None, name: Optional[str] = None):
        if loss not in NO_SKILL_LOSSES:
            raise ValueError(f"NoSkillBaseline: loss must be one of {NO_SKILL_LOSSES}, not {loss!r}")
        super().__init__(_no_skill_computations, name=name or margin_name(loss), loss=loss, constant=constant)


metric_types.register_metric(NoSkillBaseline)


def _no_skill_computations(
    name: str,
    loss: str,
    constant: Optional[float],
    eval_config: Optional[config_pb2.EvalConfig] = None,
    model_names: Optional[list[str]] = None,
    output_names: Optional[list[str]] = None,
    example_weighted: bool = False,
) -> metric_types.MetricComputations:
    if constant is None:
        raise ValueError(
            "NoSkillBaseline needs its constant (the train split's mean label) in its config; "
            "lt4rec's Evaluator (lt4rec.components.evaluator) fills it in"
        )
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            keys = _keys(name, model_name, output_name, example_weighted, f"no_skill_{loss}", NO_SKILL_PREDICTION)
            combiner = _NoSkillCombiner(keys, eval_config, example_weighted, loss, float(constant))
            computations.append(metric_types.MetricComputation(keys=keys, preprocessors=None, combiner=combiner))
    return computations


class _NoSkillCombiner(_ExamplesCombiner):
    """Sums of weights, of the constant's losses and of the model's losses."""

    def __init__(self, keys, eval_config, example_weighted: bool, loss: str, constant: float) -> None:
        super().__init__(keys, eval_config, example_weighted)
        self._loss = loss
        self._constant = constant

    def create_accumulator(self) -> list[float]:
        return [0.0, 0.0, 0.0]  # weight, weighted no-skill loss, weighted model loss

    def add_input(self, accumulator: list[float], element: metric_types.StandardMetricInputs) -> list[float]:
        for label, prediction, weight in self._examples(element):
            accumulator[0] += weight
            accumulator[1] += weight * _loss(self._loss, label, self._constant)
            accumulator[2] += weight * _loss(self._loss, label, prediction)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[list[float]]) -> list[float]:
        return [math.fsum(values) for values in zip(*accumulators)]

    def extract_output(self, accumulator: list[float]) -> dict[metric_types.MetricKey, Any]:
        weight, no_skill, model = accumulator
        no_skill = no_skill / weight if weight else float("nan")
        model = model / weight if weight else float("nan")
        margin, baseline, prediction = self._keys
        return {margin: no_skill - model, baseline: no_skill, prediction: self._constant}


class IncumbentBaseline(metric_types.Metric):
    """The AUC and log loss of a score logged with each example (the production model's
    `pctr`), beside the model's AUC on the same examples.

    `feature` names the logged score (a decimal string, as the logs carry `pctr`, or a
    number). Examples without a valid score (in [0, 1]) are left out of every figure here.
    Both AUCs come from histograms of NUM_BUCKETS score buckets, so they compare alike.
    Keys: `auc_above_incumbent` (the model's AUC minus the incumbent's, both on the
    examples with a score: positive when the model ranks better), `incumbent_auc`,
    `incumbent_log_loss`, `incumbent_examples` (how many had a score; with none, the
    figures are NaN) and `auc_on_incumbent_examples` (the model's).
    """

    def __init__(self, feature: str = "pctr", name: str = INCUMBENT_MARGIN):
        super().__init__(_incumbent_computations, name=name, feature=feature)


metric_types.register_metric(IncumbentBaseline)


def _incumbent_computations(
    name: str,
    feature: str,
    eval_config: Optional[config_pb2.EvalConfig] = None,
    model_names: Optional[list[str]] = None,
    output_names: Optional[list[str]] = None,
    example_weighted: bool = False,
) -> metric_types.MetricComputations:
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            keys = _keys(
                name, model_name, output_name, example_weighted,
                INCUMBENT_AUC, INCUMBENT_LOG_LOSS, INCUMBENT_EXAMPLES, AUC_ON_INCUMBENT_EXAMPLES,
            )  # fmt: skip
            combiner = _IncumbentCombiner(keys, eval_config, example_weighted, feature)
            computations.append(
                metric_types.MetricComputation(
                    keys=keys, preprocessors=[_with_feature(feature, model_name, output_name)], combiner=combiner
                )
            )
    return computations


class _IncumbentAccumulator:
    __slots__ = ["histograms", "weight", "log_loss", "examples"]

    def __init__(self) -> None:
        # Rows: incumbent positives, incumbent negatives, model positives, model negatives.
        self.histograms = np.zeros((4, NUM_BUCKETS))
        self.weight = 0.0
        self.log_loss = 0.0  # weighted sum of the incumbent's log losses
        self.examples = 0


class _IncumbentCombiner(_ExamplesCombiner):
    def __init__(self, keys, eval_config, example_weighted: bool, feature: str) -> None:
        super().__init__(keys, eval_config, example_weighted)
        self._feature = feature

    def create_accumulator(self) -> _IncumbentAccumulator:
        return _IncumbentAccumulator()

    def add_input(
        self, accumulator: _IncumbentAccumulator, element: metric_types.StandardMetricInputs
    ) -> _IncumbentAccumulator:
        features = element.features or {}
        value = features.get(self._feature) if hasattr(features, "get") else None
        if value is None:
            return accumulator
        score = parse_score(np.ravel(value)[0]) if np.size(value) == 1 else float("nan")
        if math.isnan(score):
            return accumulator  # no single valid score: not an example of the incumbent's
        ((label, prediction, weight),) = self._examples(element)
        incumbent_bucket, model_bucket = (
            min(int(value * NUM_BUCKETS), NUM_BUCKETS - 1) for value in (score, prediction)
        )
        accumulator.histograms[0, incumbent_bucket] += weight * label
        accumulator.histograms[1, incumbent_bucket] += weight * (1 - label)
        accumulator.histograms[2, model_bucket] += weight * label
        accumulator.histograms[3, model_bucket] += weight * (1 - label)
        accumulator.weight += weight
        accumulator.log_loss += weight * _loss(LOG_LOSS, label, float(score))
        accumulator.examples += 1
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_IncumbentAccumulator]) -> _IncumbentAccumulator:
        accumulators = iter(accumulators)
        result = next(accumulators)
        for accumulator in accumulators:
            result.histograms += accumulator.histograms
            result.weight += accumulator.weight
            result.log_loss += accumulator.log_loss
            result.examples += accumulator.examples
        return result

    def extract_output(self, accumulator: _IncumbentAccumulator) -> dict[metric_types.MetricKey, Any]:
        incumbent_auc = histogram_auc(accumulator.histograms[0], accumulator.histograms[1])
        model_auc = histogram_auc(accumulator.histograms[2], accumulator.histograms[3])
        log_loss = accumulator.log_loss / accumulator.weight if accumulator.weight else float("nan")
        margin, auc, loss, examples, on_examples = self._keys
        return {
            margin: model_auc - incumbent_auc,
            auc: incumbent_auc,
            loss: log_loss,
            examples: accumulator.examples,
            on_examples: model_auc,
        }


# --- TFMA's standard metrics of one-value outputs, from one batched combiner per output ---
#
# TFMA gives each of ExampleCount, AUC (through its calibration histogram),
# Calibration/MeanLabel/MeanPrediction, MeanSquaredError and Keras's BinaryCrossentropy (run
# by TFMA's TF-metric wrapper) a combiner of its own, and every one of them takes each
# example's label, prediction and weight through TFMA's general extraction and NumPy on
# one-element arrays: together, most of the Evaluator's time. The `Batched*` metrics
# report the same keys (name, output, weighting: so the same thresholds, diffs and
# blessing) with the same formulas, in float64, from one combiner per (model, output) that
# keeps each example's (label, prediction, weight) in compact arrays and folds them into
# `OutputSums` with NumPy, a batch at a time. BatchedAUC runs TFMA's own AUC code
# (thresholds, curve, summation) on the calibration histogram TFMA would build. They need
# one label and one prediction per example and output (binary or regression heads).

OUTPUT_SUMS_NAME = "_output_sums"  # private (a leading "_"): TFMA leaves it out of the results
FOLD_EVERY = 65_536  # examples kept in arrays before they are folded into the sums: bounded memory
HISTOGRAM_BUCKETS = calibration_histogram.DEFAULT_NUM_BUCKETS  # over [0, 1], plus one bucket each side
KERAS_EPSILON = 1e-7  # Keras's binary cross-entropy: p clipped to [eps, 1 - eps], eps added inside the logs


class OutputSums:
    """Sums over one output's examples (y label, p prediction, w weight), what TFMA's metrics
    of that output are computed from."""

    __slots__ = [
        "weight", "weighted_labels", "weighted_predictions", "weighted_log_loss",
        "squared_error", "squared_error_weight", "histogram", "nan_predictions",
    ]  # fmt: skip

    def __init__(self) -> None:
        self.weight = 0.0  # sum w
        self.weighted_labels = 0.0  # sum w*y
        self.weighted_predictions = 0.0  # sum w*p
        self.weighted_log_loss = 0.0  # sum w * Keras's binary cross-entropy
        self.squared_error = 0.0  # sum w*(y-p)^2 where that is a number (TFMA's MSE skips NaN)
        self.squared_error_weight = 0.0  # sum w of those
        # TFMA's calibration histogram: per bucket sum w*y, sum w*p, sum w. Bucket 0 holds
        # p < 0, bucket i in 1..HISTOGRAM_BUCKETS holds p in [(i-1)/B, i/B), the last p >= 1.
        self.histogram = np.zeros((3, HISTOGRAM_BUCKETS + 2))
        self.nan_predictions = 0  # not in the histogram: TFMA's has no bucket for them

    def add(self, labels: np.ndarray, predictions: np.ndarray, weights: np.ndarray) -> None:
        """Adds a batch of examples (float64 arrays of one length)."""
        self.weight += float(np.sum(weights))
        self.weighted_labels += float(np.sum(weights * labels))
        self.weighted_predictions += float(np.sum(weights * predictions))
        clipped = np.clip(predictions, KERAS_EPSILON, 1 - KERAS_EPSILON)
        log_loss = -(labels * np.log(clipped + KERAS_EPSILON) + (1 - labels) * np.log(1 - clipped + KERAS_EPSILON))
        self.weighted_log_loss += float(np.sum(weights * log_loss))
        squared_error = (labels - predictions) ** 2
        counted = ~np.isnan(squared_error)
        self.squared_error += float(np.sum(weights[counted] * squared_error[counted]))
        self.squared_error_weight += float(np.sum(weights[counted]))
        bucketed = ~np.isnan(predictions)
        self.nan_predictions += int(np.count_nonzero(~bucketed))
        buckets = np.clip(predictions[bucketed] * HISTOGRAM_BUCKETS + 1, 0, HISTOGRAM_BUCKETS + 1).astype(np.int64)
        for row, values in enumerate((weights * labels, weights * predictions, weights)):
            self.histogram[row] += np.bincount(buckets, values[bucketed], minlength=HISTOGRAM_BUCKETS + 2)

    def merge(self, other: "OutputSums") -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def tfma_histogram(self) -> calibration_histogram.Histogram:
        """The histogram as TFMA's calibration histogram combiner gives it: its buckets that
        hold anything, in order. With a NaN prediction it fails, as TFMA's does."""
        if self.nan_predictions:
            raise ValueError(
                f"{self.nan_predictions} NaN predictions: TFMA's calibration histogram (AUC) has no bucket for them"
            )
        return [
            calibration_histogram.Bucket(int(index), *(float(value) for value in self.histogram[:, index]))
            for index in np.flatnonzero(self.histogram.any(axis=0))
        ]


class _OutputAccumulator:
    """The examples not folded into `sums` yet, in compact arrays, and the sums."""

    __slots__ = ["labels", "predictions", "weights", "sums"]

    def __init__(self) -> None:
        self.labels, self.predictions, self.weights = array.array("d"), array.array("d"), array.array("d")
        self.sums = OutputSums()

    def fold(self) -> None:
        if self.labels:
            self.sums.add(np.frombuffer(self.labels), np.frombuffer(self.predictions), np.frombuffer(self.weights))
            self.labels, self.predictions, self.weights = array.array("d"), array.array("d"), array.array("d")


class _OutputSumsCombiner(_ExamplesCombiner):
    """An output's `OutputSums`, from each example's label, prediction and weight."""

    def create_accumulator(self) -> _OutputAccumulator:
        return _OutputAccumulator()

    def add_input(
        self, accumulator: _OutputAccumulator, element: metric_types.StandardMetricInputs
    ) -> _OutputAccumulator:
        examples = self._examples(element)
        if len(examples) != 1:
            raise ValueError(
                f"{self._keys[0]}: the Batched metrics need one label and one prediction per example, "
                f"got {len(examples)}"
            )
        ((label, prediction, weight),) = examples
        accumulator.labels.append(label)
        accumulator.predictions.append(prediction)
        accumulator.weights.append(weight)
        if len(accumulator.labels) >= FOLD_EVERY:
            accumulator.fold()
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_OutputAccumulator]) -> _OutputAccumulator:
        accumulators = iter(accumulators)
        result = next(accumulators)
        for accumulator in accumulators:
            accumulator.fold()
            result.sums.merge(accumulator.sums)
        return result

    def compact(self, accumulator: _OutputAccumulator) -> _OutputAccumulator:
        accumulator.fold()
        return accumulator

    def extract_output(self, accumulator: _OutputAccumulator) -> dict[metric_types.MetricKey, OutputSums]:
        accumulator.fold()
        return {self._keys[0]: accumulator.sums}


def _output_sums(
    eval_config: Optional[config_pb2.EvalConfig], model_name: str, output_name: str, example_weighted: bool
) -> metric_types.MetricComputation:
    """The one computation of an output's sums: TFMA keeps one of equal computations (same
    combiner class and key), whichever Batched metrics ask for it."""
    key = metric_types.MetricKey(
        name=OUTPUT_SUMS_NAME, model_name=model_name, output_name=output_name, example_weighted=example_weighted
    )
    return metric_types.MetricComputation(
        keys=[key], preprocessors=None, combiner=_OutputSumsCombiner([key], eval_config, example_weighted)
    )


def _single_values_only(name: str, sub_keys: Optional[list]) -> None:
    if any(sub_key is not None for sub_key in sub_keys or []):
        raise ValueError(
            f"{name}: the Batched metrics are for one-value outputs, not sub keys {sub_keys} (binarize, top_k)"
        )


class _OutputSumsMetric(metric_types.Metric):
    """A metric whose value is a function of its output's `OutputSums` (`value`), named
    `DEFAULT_NAME` (TFMA's name for the metric it stands for) unless given a name."""

    DEFAULT_NAME: str

    def __init__(self, name: Optional[str] = None) -> None:
        super().__init__(self._computations, name=name or self.DEFAULT_NAME)

    @staticmethod
    def value(sums: OutputSums) -> float:
        raise NotImplementedError

    def _computations(
        self,
        name: str,
        eval_config: Optional[config_pb2.EvalConfig] = None,
        model_names: Optional[list[str]] = None,
        output_names: Optional[list[str]] = None,
        sub_keys: Optional[list] = None,
        example_weighted: bool = False,
    ) -> metric_types.MetricComputations:
        _single_values_only(name, sub_keys)
        computations = []
        for model_name in model_names or [""]:
            for output_name in output_names or [""]:
                sums = _output_sums(eval_config, model_name, output_name, example_weighted)
                key = metric_types.MetricKey(
                    name=name, model_name=model_name, output_name=output_name, example_weighted=example_weighted
                )

                def result(
                    metrics, key=key, sums_key=sums.keys[0], value=self.value
                ) -> dict[metric_types.MetricKey, float]:
                    return {key: value(metrics[sums_key])}

                computations += [sums, metric_types.DerivedMetricComputation(keys=[key], result=result)]
        return computations


def _ratio(numerator: float, denominator: float) -> float:
    """As TFMA's calibration metrics: NaN when the denominator is about 0."""
    return float("nan") if np.isclose(denominator, 0.0) else numerator / denominator


class BatchedExampleCount(_OutputSumsMetric):
    """TFMA's ExampleCount: the examples, or with example weights the sum of their weights."""

    DEFAULT_NAME = example_count.EXAMPLE_COUNT_NAME

    @property
    def compute_confidence_interval(self) -> bool:
        return False  # as TFMA's: a count has no sampling uncertainty

    @staticmethod
    def value(sums: OutputSums) -> float:
        return sums.weight


metric_types.register_metric(BatchedExampleCount)


class BatchedWeightedExampleCount(BatchedExampleCount):
    """TFMA's WeightedExampleCount: ExampleCount under another default name."""

    DEFAULT_NAME = weighted_example_count.WEIGHTED_EXAMPLE_COUNT_NAME


metric_types.register_metric(BatchedWeightedExampleCount)


def _ratio_metric(class_name: str, default_name: str, numerator: str, denominator: str, doc: str) -> type:
    """A registered `_OutputSumsMetric` of `sums.<numerator> / sums.<denominator>` (`_ratio`).

    A module-level class, named as EvalConfigs name it (`class_name="BatchedMeanLabel"`)."""

    def value(sums: OutputSums) -> float:
        return _ratio(getattr(sums, numerator), getattr(sums, denominator))

    metric = type(
        class_name,
        (_OutputSumsMetric,),
        {"__doc__": doc, "__module__": __name__, "DEFAULT_NAME": default_name, "value": staticmethod(value)},
    )
    metric_types.register_metric(metric)
    return metric


BatchedMeanLabel = _ratio_metric(
    "BatchedMeanLabel",
    calibration.MEAN_LABEL_NAME,
    "weighted_labels",
    "weight",
    "TFMA's MeanLabel: sum w*y / sum w (NaN when sum w is about 0).",
)
BatchedMeanPrediction = _ratio_metric(
    "BatchedMeanPrediction",
    calibration.MEAN_PREDICTION_NAME,
    "weighted_predictions",
    "weight",
    "TFMA's MeanPrediction: sum w*p / sum w (NaN when sum w is about 0).",
)
BatchedCalibration = _ratio_metric(
    "BatchedCalibration",
    calibration.CALIBRATION_NAME,
    "weighted_predictions",
    "weighted_labels",
    "TFMA's Calibration: sum w*p / sum w*y (NaN when sum w*y is about 0).",
)


class BatchedBinaryCrossentropy(_OutputSumsMetric):
    """Keras's BinaryCrossentropy metric (`class_name="BinaryCrossentropy"`, of probabilities,
    no label smoothing), which TFMA runs through its TF-metric wrapper: the weighted mean of
    -(y log(p' + eps) + (1-y) log(1 - p' + eps)), p' = p clipped to [eps, 1 - eps], eps = 1e-7
    (Keras computes it in float32: values agree to about 1e-6)."""

    DEFAULT_NAME = "binary_crossentropy"

    @staticmethod
    def value(sums: OutputSums) -> float:
        return sums.weighted_log_loss / sums.weight if sums.weight != 0.0 else 0.0  # Keras's divide_no_nan


metric_types.register_metric(BatchedBinaryCrossentropy)


class BatchedMeanSquaredError(_OutputSumsMetric):
    """TFMA's MeanSquaredError: the weighted mean of (y-p)^2 over the examples where it is a
    number (NaN when their weights sum to 0)."""

    DEFAULT_NAME = mean_regression_error.MEAN_SQUARED_ERROR_NAME

    @staticmethod
    def value(sums: OutputSums) -> float:
        return sums.squared_error / sums.squared_error_weight if sums.squared_error_weight != 0.0 else float("nan")


metric_types.register_metric(BatchedMeanSquaredError)


class BatchedAUC(metric_types.Metric):
    """TFMA's AUC, by TFMA's own code (thresholds, curve, summation), on the calibration
    histogram of the output's sums: the histogram TFMA's AUC builds example by example."""

    def __init__(
        self,
        num_thresholds: Optional[int] = None,
        curve: str = "ROC",
        summation_method: str = "interpolation",
        name: str = confusion_matrix_metrics.AUC_NAME,
    ) -> None:
        super().__init__(
            _auc_computations, num_thresholds=num_thresholds, curve=curve, summation_method=summation_method, name=name
        )


metric_types.register_metric(BatchedAUC)


def _auc_computations(
    name: str,
    num_thresholds: Optional[int],
    curve: str,
    summation_method: str,
    eval_config: Optional[config_pb2.EvalConfig] = None,
    model_names: Optional[list[str]] = None,
    output_names: Optional[list[str]] = None,
    sub_keys: Optional[list] = None,
    example_weighted: bool = False,
) -> metric_types.MetricComputations:
    """TFMA's AUC computations with their one combiner, the calibration histogram's, replaced
    by the output's sums and a derived histogram under the same key."""
    _single_values_only(name, sub_keys)
    auc = confusion_matrix_metrics.AUC(
        num_thresholds=num_thresholds, curve=curve, summation_method=summation_method, name=name
    )
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            histogram, *derived = auc.computations(
                eval_config=eval_config,
                model_names=[model_name],
                output_names=[output_name],
                example_weighted=example_weighted,
            )
            (expected,) = calibration_histogram.calibration_histogram(
                eval_config=eval_config,
                model_name=model_name,
                output_name=output_name,
                example_weighted=example_weighted,
            )
            if histogram.keys != expected.keys or not all(
                isinstance(c, metric_types.DerivedMetricComputation) for c in derived
            ):
                raise ValueError(
                    f"{name}: TFMA's AUC no longer derives from its default calibration histogram alone: use AUC"
                )
            sums = _output_sums(eval_config, model_name, output_name, example_weighted)

            def result(metrics, histogram_key=histogram.keys[0], sums_key=sums.keys[0]) -> dict:
                return {histogram_key: metrics[sums_key].tfma_histogram()}

            computations += [sums, metric_types.DerivedMetricComputation(keys=histogram.keys, result=result), *derived]
    return computations
