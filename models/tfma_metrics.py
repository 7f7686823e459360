"""The pipeline's own TFMA metrics: GAUC, and the baselines a model must beat.

`NoSkillBaseline` and `IncumbentBaseline` (below) report the loss of a constant
prediction and the AUC of a score the logs carry (`pctr`), beside the model's, and the
model's margin over them; see their docstrings and `components/evaluator/`.

GAUC, so that the pipeline's Evaluator reports what `metrics.gauc` computes:

It is a query-based metric, built like TFMA's own `NDCG` and `MinLabelPosition`: the
MetricsSpec's `query_key` (the user id, `FEA_UID`) makes TFMA group the examples by user
before the combiner sees them, so each `add_input` receives one whole user. The combiner
then only needs two running sums (sum of AUC x impressions, and impressions) instead of
keeping every (user, label, prediction) triple until the end. The per-user arithmetic is
`metrics.gauc` itself, applied to one group, so the two can never drift apart.

    tfma.MetricsSpec(
        metrics=[tfma.MetricConfig(class_name="GAUC", module="lt4rec.models.tfma_metrics")],
        query_key="FEA_UID",
        output_names=["ctr"],
    )

TFMA caveats: it keys each example by `str()` of its query value (bytes `b"u1"` ->
`"b'u1'"`, int64 works too), and fails the run if an example's query feature does not hold
exactly one value. Slicing happens after the grouping, so a user lands whole in every slice
any of its impressions is in: slice GAUC only by user-level features. Example weights must
be constant within a user (else TFMA raises); GAUC weights by impressions, so give its
MetricsSpec `example_weights=tfma.ExampleWeightOptions(unweighted=True)` if the ModelSpec
has an `example_weight_key`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2

from lt4rec.models import metrics

GAUC_NAME = "gauc"


class GAUC(metric_types.Metric):
    """Impression-weighted mean of per-query AUC; queries with one class only are skipped.

    Needs `query_key` in its MetricsSpec (TFMA passes it to the computations).
    """

    def __init__(self, name: str = GAUC_NAME):
        super().__init__(_gauc_computations, name=name)


metric_types.register_metric(GAUC)


def _gauc_computations(
    name: str = GAUC_NAME,
    eval_config: Optional[config_pb2.EvalConfig] = None,
    model_names: Optional[list[str]] = None,
    output_names: Optional[list[str]] = None,
    example_weighted: bool = False,
    query_key: str = "",
) -> metric_types.MetricComputations:
    """One computation per (model, output): each output has its own labels and predictions."""
    if not query_key:
        raise ValueError("GAUC needs a query_key (the user id feature) in its MetricsSpec")
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            key = metric_types.MetricKey(
                name=name, model_name=model_name, output_name=output_name, example_weighted=example_weighted
            )
            computations.append(
                metric_types.MetricComputation(
                    keys=[key], preprocessors=None, combiner=_GAUCCombiner(key, eval_config, example_weighted)
                )
            )
    return computations


class _GAUCAccumulator:
    """Running sums, so that merging partial results is exact and order-free."""

    __slots__ = ["weighted_auc", "weight"]

    def __init__(self) -> None:
        self.weighted_auc = 0.0
        self.weight = 0.0


class _GAUCCombiner(beam.CombineFn):
    """Adds one query (all impressions of one user) per input."""

    def __init__(
        self, key: metric_types.MetricKey, eval_config: Optional[config_pb2.EvalConfig], example_weighted: bool
    ) -> None:
        self._key = key
        self._eval_config = eval_config
        self._example_weighted = example_weighted

    def create_accumulator(self) -> _GAUCAccumulator:
        return _GAUCAccumulator()

    def add_input(self, accumulator: _GAUCAccumulator, element: metric_types.StandardMetricInputs) -> _GAUCAccumulator:
        labels, predictions, example_weight = next(
            metric_util.to_label_prediction_example_weight(
                element,
                eval_config=self._eval_config,
                model_name=self._key.model_name,
                output_name=self._key.output_name,
                example_weighted=self._example_weighted,
                flatten=False,
                require_single_example_weight=True,  # one weight per query
            )
        )
        labels, predictions = np.asarray(labels).reshape(-1), np.asarray(predictions).reshape(-1)
        if labels.size != predictions.size:
            raise ValueError(f"{self._key}: {labels.size} labels but {predictions.size} predictions in one query")
        # `gauc` of a single group: that group's AUC, or NaN when the user has one class only.
        value = metrics.gauc(labels, predictions, np.zeros(labels.size))
        if not np.isnan(value):
            weight = labels.size * np.asarray(example_weight, dtype=np.float64).item()
            accumulator.weighted_auc += value * weight
            accumulator.weight += weight
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_GAUCAccumulator]) -> _GAUCAccumulator:
        accumulators = iter(accumulators)
        result = next(accumulators)
        for accumulator in accumulators:
            result.weighted_auc += accumulator.weighted_auc
            result.weight += accumulator.weight
        return result

    def extract_output(self, accumulator: _GAUCAccumulator) -> dict[metric_types.MetricKey, Any]:
        value = accumulator.weighted_auc / accumulator.weight if accumulator.weight else float("nan")
        return {self._key: value}


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


def _loss(loss: str, labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    labels, predictions = np.asarray(labels, np.float64), np.asarray(predictions, np.float64)
    if loss == MSE:
        return (labels - predictions) ** 2
    p = np.clip(predictions, EPSILON, 1 - EPSILON)
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def parse_scores(values: Any) -> np.ndarray:
    """Logged scores (decimal strings, bytes or numbers) as float64; NaN where a value is
    not a number in [0, 1] (missing, empty, `-1`, garbage)."""
    values = np.asarray(values, dtype=object).reshape(-1)
    scores = np.full(values.size, np.nan)
    for i, value in enumerate(values):
        try:
            scores[i] = float(value.decode() if isinstance(value, bytes) else value)
        except (TypeError, ValueError, UnicodeDecodeError):
            continue
    scores[~((scores >= 0.0) & (scores <= 1.0))] = np.nan  # also NaN and inf
    return scores


def histogram_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """ROC AUC from (weighted) counts of positives and negatives per score bucket, buckets in
    ascending score order; a positive and a negative in one bucket count as a tie (1/2)."""
    total_pos, total_neg = float(np.sum(positives)), float(np.sum(negatives))
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    below = np.cumsum(negatives) - negatives
    return float(np.sum(positives * (below + 0.5 * negatives)) / (total_pos * total_neg))


def _bucket(scores: np.ndarray) -> np.ndarray:
    return np.minimum((np.asarray(scores, np.float64) * NUM_BUCKETS).astype(np.int64), NUM_BUCKETS - 1)


def _keys(name: str, model_name: str, output_name: str, example_weighted: bool, *extra: str) -> list[metric_types.MetricKey]:
    return [
        metric_types.MetricKey(name=n, model_name=model_name, output_name=output_name, example_weighted=example_weighted)
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


class _NoSkillCombiner(beam.CombineFn):
    """Sums of weights, of the constant's losses and of the model's losses."""

    def __init__(self, keys, eval_config, example_weighted: bool, loss: str, constant: float) -> None:
        self._keys = keys
        self._eval_config = eval_config
        self._example_weighted = example_weighted
        self._loss = loss
        self._constant = constant

    def create_accumulator(self) -> np.ndarray:
        return np.zeros(3)  # weight, weighted no-skill loss, weighted model loss

    def add_input(self, accumulator: np.ndarray, element: metric_types.StandardMetricInputs) -> np.ndarray:
        key = self._keys[0]
        for labels, predictions, weights in metric_util.to_label_prediction_example_weight(
            element,
            eval_config=self._eval_config,
            model_name=key.model_name,
            output_name=key.output_name,
            example_weighted=self._example_weighted,
            flatten=False,
        ):
            labels = np.asarray(labels, np.float64).reshape(-1)
            predictions = np.asarray(predictions, np.float64).reshape(-1)
            weights = np.broadcast_to(np.asarray(weights, np.float64).reshape(-1), labels.shape)
            accumulator[0] += weights.sum()
            accumulator[1] += np.sum(weights * _loss(self._loss, labels, np.full(labels.shape, self._constant)))
            accumulator[2] += np.sum(weights * _loss(self._loss, labels, predictions))
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[np.ndarray]) -> np.ndarray:
        return np.sum(list(accumulators), axis=0)

    def extract_output(self, accumulator: np.ndarray) -> dict[metric_types.MetricKey, Any]:
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
            preprocessor = metric_types.FeaturePreprocessor(
                feature_keys=[feature], model_names=[model_name], output_names=[output_name]
            )
            combiner = _IncumbentCombiner(keys, eval_config, example_weighted, feature)
            computations.append(metric_types.MetricComputation(keys=keys, preprocessors=[preprocessor], combiner=combiner))
    return computations


class _IncumbentAccumulator:
    __slots__ = ["histograms", "weight", "log_loss", "examples"]

    def __init__(self) -> None:
        # Rows: incumbent positives, incumbent negatives, model positives, model negatives.
        self.histograms = np.zeros((4, NUM_BUCKETS))
        self.weight = 0.0
        self.log_loss = 0.0  # weighted sum of the incumbent's log losses
        self.examples = 0


class _IncumbentCombiner(beam.CombineFn):
    def __init__(self, keys, eval_config, example_weighted: bool, feature: str) -> None:
        self._keys = keys
        self._eval_config = eval_config
        self._example_weighted = example_weighted
        self._feature = feature

    def create_accumulator(self) -> _IncumbentAccumulator:
        return _IncumbentAccumulator()

    def add_input(self, accumulator: _IncumbentAccumulator, element: metric_types.StandardMetricInputs) -> _IncumbentAccumulator:
        features = element.features or {}
        value = features.get(self._feature) if hasattr(features, "get") else None
        if value is None:
            return accumulator
        scores = parse_scores(value)
        if scores.size != 1 or np.isnan(scores[0]):
            return accumulator  # no single valid score: not an example of the incumbent's
        key = self._keys[0]
        label, prediction, weight = next(
            metric_util.to_label_prediction_example_weight(
                element,
                eval_config=self._eval_config,
                model_name=key.model_name,
                output_name=key.output_name,
                example_weighted=self._example_weighted,
                flatten=False,
            )
        )
        label = float(np.asarray(label, np.float64).reshape(-1)[0])
        prediction = float(np.asarray(prediction, np.float64).reshape(-1)[0])
        weight = float(np.asarray(weight, np.float64).reshape(-1)[0])
        score = scores[0]
        incumbent_bucket, model_bucket = _bucket([score, prediction])
        accumulator.histograms[0, incumbent_bucket] += weight * label
        accumulator.histograms[1, incumbent_bucket] += weight * (1 - label)
        accumulator.histograms[2, model_bucket] += weight * label
        accumulator.histograms[3, model_bucket] += weight * (1 - label)
        accumulator.weight += weight
        accumulator.log_loss += weight * float(_loss(LOG_LOSS, [label], [score])[0])
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
