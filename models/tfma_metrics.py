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
"""

from __future__ import annotations

import array
import hashlib
import math
from typing import Any, Iterable, Mapping, Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2

from lt4rec.models import features, metrics

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
        raise ValueError(f"GAUC groups by its feature ({feature!r}) itself: remove query_key {query_key!r} from its MetricsSpec")
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            key = metric_types.MetricKey(
                name=name, model_name=model_name, output_name=output_name, example_weighted=example_weighted
            )
            combiner = _GAUCCombiner(key, eval_config, feature)
            computations.append(
                metric_types.MetricComputation(keys=[key], preprocessors=[_with_feature(feature, model_name, output_name)], combiner=combiner)
            )
    return computations


def _with_feature(feature: str, model_name: str, output_name: str) -> metric_types.StandardMetricInputsPreprocessor:
    """The metric inputs of one model output, with one feature of the example beside them
    ("" names the only model or output: no filter, which a name would be)."""
    return metric_types.FeaturePreprocessor(
        feature_keys=[feature], model_names=[model_name] if model_name else None, output_names=[output_name] if output_name else None
    )


def _examples(
    element: metric_types.StandardMetricInputs,
    key: metric_types.MetricKey,
    eval_config: Optional[config_pb2.EvalConfig],
    example_weighted: bool,
) -> list[tuple[float, float, float]]:
    """(label, prediction, weight) of each value of `key`'s output in one example.

    One model with one value per output (the pipeline's models) is read directly: TFMA's
    general `to_label_prediction_example_weight` costs more than all the rest of these
    metrics' work per example. Anything else goes through it.
    """
    name, label, prediction, weight = key.output_name, element.label, element.prediction, element.example_weight
    if not key.model_name and isinstance(label, Mapping) == bool(name) == isinstance(prediction, Mapping):
        if name:
            label, prediction = label.get(name), prediction.get(name)
            weight = weight.get(name) if isinstance(weight, Mapping) else weight
        if label is not None and prediction is not None and np.size(label) == np.size(prediction) == 1:
            weight = 1.0 if not example_weighted or weight is None else float(np.ravel(weight)[0])
            return [(float(np.ravel(label)[0]), float(np.ravel(prediction)[0]), weight)]
    examples = []
    for labels, predictions, weights in metric_util.to_label_prediction_example_weight(
        element, eval_config=eval_config, model_name=key.model_name, output_name=name, example_weighted=example_weighted, flatten=False
    ):
        labels, predictions, weights = np.ravel(labels).tolist(), np.ravel(predictions).tolist(), np.ravel(weights).tolist()
        examples.extend(zip(labels, predictions, weights * len(labels) if len(weights) == 1 else weights))
    return examples


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


class _GAUCCombiner(beam.CombineFn):
    def __init__(self, key: metric_types.MetricKey, eval_config: Optional[config_pb2.EvalConfig], feature: str) -> None:
        self._key = key
        self._eval_config = eval_config
        self._feature = feature

    def create_accumulator(self) -> _GAUCAccumulator:
        return _GAUCAccumulator()

    def add_input(self, accumulator: _GAUCAccumulator, element: metric_types.StandardMetricInputs) -> _GAUCAccumulator:
        value = (element.features or {}).get(self._feature)
        users = np.asarray(value, dtype=object).reshape(-1) if value is not None else np.empty(0, dtype=object)
        if users.size != 1:
            raise ValueError(f"{self._key}: GAUC needs exactly one {self._feature} per example, got {value!r}")
        ((label, prediction, _),) = _examples(element, self._key, self._eval_config, False)
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
        predictions = np.frombuffer(accumulator.predictions, dtype=np.float64) if accumulator.predictions else np.empty(0)
        return {self._key: metrics.gauc(labels, predictions, users)}


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

    def create_accumulator(self) -> list[float]:
        return [0.0, 0.0, 0.0]  # weight, weighted no-skill loss, weighted model loss

    def add_input(self, accumulator: list[float], element: metric_types.StandardMetricInputs) -> list[float]:
        for label, prediction, weight in _examples(element, self._keys[0], self._eval_config, self._example_weighted):
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
                metric_types.MetricComputation(keys=keys, preprocessors=[_with_feature(feature, model_name, output_name)], combiner=combiner)
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
        ((label, prediction, weight),) = _examples(element, self._keys[0], self._eval_config, self._example_weighted)
        score = scores[0]
        incumbent_bucket, model_bucket = (min(int(value * NUM_BUCKETS), NUM_BUCKETS - 1) for value in (score, prediction))
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
