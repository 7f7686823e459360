"""The Evaluator's TFMA extractors: only the features the evaluation reads split into examples,
and the same metrics as with TFMA's own extractors."""

from __future__ import annotations

import lt4rec  # noqa: F401  (selects Keras 2 before TensorFlow is imported)

# isort: split

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from apache_beam.testing.util import assert_that
from tensorflow_model_analysis.extractors import unbatch_extractor
from tensorflow_model_analysis.metrics import metric_types

from lt4rec.components.evaluator import executor, extractors
from lt4rec.pipeline import configs
from lt4rec.pipeline import pipeline as pipeline_lib


def _pipeline_eval_config() -> tfma.EvalConfig:
    """The pipeline's EvalConfig with the no-skill constants filled in, as the executor does,
    and no thresholds (without a blessed model TFMA refuses its change thresholds)."""
    eval_config = pipeline_lib.eval_config(configs.PipelineSettings(data_root="d", pipeline_root="p", serving_dir="s"))
    for spec in eval_config.metrics_specs:
        for metric in spec.metrics:
            metric.ClearField("threshold")
            if metric.class_name == executor.NO_SKILL:
                metric.config = metric.config[:-1] + ', "constant": 0.5}'
    return eval_config


def test_the_pipeline_reads_its_labels_and_the_features_of_gauc_and_the_incumbent():
    assert extractors.features_read(_pipeline_eval_config()) == {"label", "cvrlabel", "FEA_UID", "pctr"}


def test_slices_and_feature_wildcards_are_read_too():
    eval_config = _pipeline_eval_config()
    eval_config.slicing_specs.append(tfma.SlicingSpec(feature_keys=["FEA_AGE"], feature_values={"FEA_UGROUP": "3"}))
    assert {"FEA_AGE", "FEA_UGROUP"} <= extractors.features_read(eval_config)
    eval_config.slicing_specs.append(tfma.SlicingSpec(slice_keys_sql="SELECT STRUCT(FEA_VID) FROM example"))
    assert extractors.features_read(eval_config) is None  # SQL may read any feature: nothing is cut
    every_feature = _pipeline_eval_config()
    every_feature.metrics_specs[0].metrics.append(tfma.MetricConfig(class_name="EveryFeature", module=__name__))
    assert extractors.features_read(every_feature) is None


class EveryFeature(metric_types.Metric):
    """A metric that asks for every feature (TFMA's empty feature list): nothing may be cut."""

    def __init__(self, name: str = "every_feature") -> None:
        super().__init__(_count_with_every_feature, name=name)


def _count_with_every_feature(name: str) -> metric_types.MetricComputations:
    every_feature = metric_types.FeaturePreprocessor(feature_keys=[])
    return [
        metric_types.MetricComputation([metric_types.MetricKey(name)], [every_feature], beam.combiners.CountCombineFn())
    ]


def test_the_cut_comes_right_before_tfmas_unbatching_and_keeps_only_those_features():
    eval_config = _pipeline_eval_config()
    stages = [extractor.stage_name for extractor in extractors.custom_extractors(None, eval_config)]
    index = stages.index(extractors.KEEP_FEATURES_STAGE_NAME)
    assert stages[index + 1] == unbatch_extractor.UNBATCH_EXTRACTOR_STAGE_NAME
    assert [s for s in stages if s != extractors.KEEP_FEATURES_STAGE_NAME] == [
        extractor.stage_name for extractor in tfma.default_extractors(eval_config=eval_config)
    ]

    (keep,) = [
        e
        for e in extractors.custom_extractors(None, eval_config)
        if e.stage_name == extractors.KEEP_FEATURES_STAGE_NAME
    ]
    batch = {
        "features": {"label": np.array([[1]]), "FEA_UID": np.array([[b"u"]]), "FEA_AGE": np.array([[3]])},
        "labels": np.array([[1]]),
    }
    with beam.Pipeline() as pipeline:
        kept = pipeline | beam.Create([batch]) | keep.ptransform
        assert_that(kept, lambda outputs: _assert_kept(outputs, {"label", "FEA_UID"}))


def _assert_kept(outputs: list, names: set[str]) -> None:
    (output,) = outputs
    assert set(output["features"]) == names and "labels" in output


def test_tfma_reports_the_same_metrics_with_the_cut(tmp_path):
    """GAUC, the baselines and the Batched metrics on examples with features nobody reads."""
    rng = np.random.default_rng(2)
    path = str(tmp_path / "examples.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(300):
            click = int(rng.random() < 0.4)
            feature = {
                "FEA_UID": _bytes(f"u{i % 17}".encode()),
                "pctr": _bytes(f"{np.clip(0.3 + 0.3 * click + rng.normal(0, 0.2), 0, 1):.6f}".encode()),
                "FEA_VID": _bytes(*(f"v{j}".encode() for j in range(i % 4))),  # read by nothing
                "FEA_AGE": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 9])),  # read by nothing
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[click])),
                "cvrlabel": _float(click * rng.random()),
                "ctr_pred": _float(np.clip(0.4 + 0.2 * click + rng.normal(0, 0.2), 0.01, 0.99)),
                "cvr_pred": _float(rng.random()),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    eval_config = _pipeline_eval_config()
    # no model: scores are features
    eval_config.model_specs[0].prediction_keys.update({"ctr": "ctr_pred", "cvr": "cvr_pred"})

    def metrics(extractor_list) -> dict:
        result = tfma.run_model_analysis(
            eval_config=eval_config,
            data_location=path,
            output_path=str(tmp_path / str(len(extractor_list or []))),
            extractors=extractor_list,
        )
        ((_, values),) = result.slicing_metrics
        return {(output, name): value["doubleValue"] for output in values for name, value in values[output][""].items()}

    cut = metrics(extractors.custom_extractors(None, eval_config))
    assert cut == pytest.approx(metrics(None), rel=1e-12)
    assert len(cut) == 22 and cut["ctr", "incumbent_examples"] == 300


def _bytes(*values: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _float(value: float) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))


def test_a_pipeline_module_of_its_own_keeps_its_extractors():
    assert (
        executor._with_extractors({})[executor.CUSTOM_EXTRACTORS_KEY]
        == "lt4rec.components.evaluator.extractors.custom_extractors"
    )
    for own in ({"module_file": "m.py"}, {"module_path": "m"}, {executor.CUSTOM_EXTRACTORS_KEY: "m.f"}):
        assert executor._with_extractors(own) == own
