"""GAUC as a TFMA metric, so the pipeline's Evaluator reports what `metrics.gauc` computes.

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
