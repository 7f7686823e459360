"""The one definition of the LT4REC pipeline: every component, wired once.

    LogExampleGen ─> StatisticsGen ─┬─> SchemaGen (inferred, to compare with the curated one)
                                    └─> ExampleValidator <─ ImportSchemaGen (curated schema)
                                              │
                                        AnomalyCheck (stops the run on anomalies)
                                              │
    LogExampleGen ───────────────────────> Transform <─ curated schema

Runners (`local_runner.py`, and later Kubeflow's) only choose where it runs.
"""

from __future__ import annotations

from tfx import v1 as tfx
from tfx.proto import range_config_pb2

from lt4rec.components.anomaly_check import AnomalyCheck
from lt4rec.components.log_example_gen import LogExampleGen, day_span
from lt4rec.models import preprocessing
from lt4rec.pipeline import configs


def _range_config(span: str | None) -> range_config_pb2.RangeConfig | None:
    if span is None:
        return None
    if span == "latest":
        return tfx.proto.RangeConfig(rolling_range=tfx.proto.RollingRange(num_spans=1))
    number = day_span(span)
    return tfx.proto.RangeConfig(static_range=tfx.proto.StaticRange(start_span_number=number, end_span_number=number))


def create_components(settings: configs.PipelineSettings) -> list:
    """The pipeline's components, in order, for `settings`."""
    example_gen = LogExampleGen(
        input_base=settings.data_root,
        eval_days=settings.eval_days,
        first_day=settings.first_day,
        last_day=settings.last_day,
        daily=settings.span is not None,
        range_config=_range_config(settings.span),
        max_rejected_fraction=settings.max_rejected_fraction,
    )
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    inferred_schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"]).with_id(
        "InferredSchemaGen"
    )
    curated_schema_gen = tfx.components.ImportSchemaGen(schema_file=configs.SCHEMA_PATH).with_id("CuratedSchemaGen")
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=curated_schema_gen.outputs["schema"]
    )
    anomaly_check = AnomalyCheck(anomalies=example_validator.outputs["anomalies"])
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=curated_schema_gen.outputs["schema"],
        preprocessing_fn=configs.PREPROCESSING_FN,
        custom_config={preprocessing.FEATURES_CONFIG_KEY: settings.feature_config.to_dict()},
        disable_statistics=True,
    )
    transform.add_upstream_node(anomaly_check)
    return [
        example_gen,
        statistics_gen,
        inferred_schema_gen,
        curated_schema_gen,
        example_validator,
        anomaly_check,
        transform,
    ]


def create_pipeline(
    settings: configs.PipelineSettings,
    metadata_connection_config=None,
) -> tfx.dsl.Pipeline:
    """The pipeline for `settings`; `metadata_connection_config` is None on Kubeflow."""
    return tfx.dsl.Pipeline(
        pipeline_name=settings.pipeline_name,
        pipeline_root=settings.pipeline_root,
        components=create_components(settings),
        enable_cache=True,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(settings.beam_pipeline_args),
    )
