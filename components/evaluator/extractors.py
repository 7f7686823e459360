"""The Evaluator's TFMA extractors: TFMA's defaults, with the features cut down to those the
evaluation reads before TFMA splits its batches into examples.

TFMA decodes every feature of the examples and then splits each batch of them, feature by
feature, into one extract per example; besides the labels, the metrics of the pipeline
read two of the two dozen features (GAUC's user id, the incumbent's `pctr`), so most of
that splitting was for nothing. The model still gets the serialized examples and every decoded feature: the cut
comes after the predictions, right before TFMA's unbatching.

TFX's Evaluator takes the `custom_extractors` function of this module from its execution
properties (`executor.Executor` names it there when the pipeline gives no module of its
own); it returns TFMA's default extractors when it cannot tell which features are read.
"""

from __future__ import annotations

import copy
from typing import Optional

import apache_beam as beam
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.extractors import unbatch_extractor
from tensorflow_model_analysis.metrics import metric_specs, metric_types
from tfx_bsl.tfxio import tensor_adapter

KEEP_FEATURES_STAGE_NAME = "KeepFeaturesTheEvaluationReads"


def _slicing_features(spec: tfma.SlicingSpec) -> Optional[set[str]]:
    """The features a slicing spec slices by; None for a SQL slice (any feature)."""
    if spec.slice_keys_sql:
        return None
    return set(spec.feature_keys) | set(spec.feature_values)


def features_read(eval_config: tfma.EvalConfig) -> Optional[set[str]]:
    """The features that the slicing and the metrics of `eval_config` read from each example
    (and the label, weight and prediction keys of its models); None when a preprocessor or
    a SQL slice may read any feature."""
    names: set[str] = set()
    slicing_specs = list(eval_config.slicing_specs)
    for cross in eval_config.cross_slicing_specs:
        slicing_specs += [cross.baseline_spec, *cross.slicing_specs]
    for spec in slicing_specs:
        sliced_by = _slicing_features(spec)
        if sliced_by is None:
            return None
        names |= sliced_by
    for model in eval_config.model_specs:
        for key in (model.label_key, model.example_weight_key, model.prediction_key):
            names.add(key)
        for keys in (model.label_keys, model.example_weight_keys, model.prediction_keys):
            names |= set(keys.values())
    for spec in eval_config.metrics_specs:
        if spec.query_key:
            names.add(spec.query_key)
    for computation in metric_specs.to_computations(list(eval_config.metrics_specs), eval_config=eval_config):
        if not isinstance(computation, metric_types.MetricComputation):
            continue  # derived from other computations' results, not from examples
        for preprocessor in computation.preprocessors:
            if not isinstance(preprocessor, metric_types.StandardMetricInputsPreprocessor):
                return None  # it may read anything
            features = preprocessor.include_filter.get(tfma.constants.FEATURES_KEY)
            if features == {}:  # TFMA's wildcard: every feature
                return None
            names |= set(features or ())
    names.discard("")
    return names


def _keep_features(names: set[str]) -> tfma.extractors.Extractor:
    def keep(extracts: tfma.Extracts) -> tfma.Extracts:
        kept = copy.copy(extracts)
        features = extracts.get(tfma.constants.FEATURES_KEY)
        if features is not None:
            kept[tfma.constants.FEATURES_KEY] = {name: value for name, value in features.items() if name in names}
        return kept

    return tfma.extractors.Extractor(stage_name=KEEP_FEATURES_STAGE_NAME, ptransform=beam.Map(keep))


def custom_extractors(
    eval_shared_model: tfma.types.MaybeMultipleEvalSharedModels,
    eval_config: Optional[tfma.EvalConfig],
    tensor_adapter_config: Optional[tensor_adapter.TensorAdapterConfig] = None,
) -> list[tfma.extractors.Extractor]:
    """TFMA's default extractors (as TFMA builds them without this hook), with only the
    features the evaluation reads kept from the predictions on, before the unbatching."""
    extractors = tfma.default_extractors(
        eval_shared_model=eval_shared_model, eval_config=eval_config, tensor_adapter_config=tensor_adapter_config
    )
    names = features_read(eval_config) if eval_config is not None else None
    stages = [extractor.stage_name for extractor in extractors]
    if names is None or unbatch_extractor.UNBATCH_EXTRACTOR_STAGE_NAME not in stages:
        return extractors
    index = stages.index(unbatch_extractor.UNBATCH_EXTRACTOR_STAGE_NAME)
    return extractors[:index] + [_keep_features(names)] + extractors[index:]
