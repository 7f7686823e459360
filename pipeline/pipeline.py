"""The one definition of the LT4REC pipeline: every component, wired once.

    LogExampleGen ─> StatisticsGen ─┬─> InferredSchemaGen (SchemaGen, to compare with the curated one)
                                    └─> ExampleValidator <─ CuratedSchemaGen (ImportSchemaGen)
                                              │
                                        AnomalyCheck (stops the run on anomalies)
                                              │
    LogExampleGen ───────────────────────> Transform <─ curated schema
                                              │
      MaskSearch (sparse sharing, history runs) ─> SparseSharingTrainer <─ latest blessed model
                                                  (daily runs: its weights and masks) │
                                 latest blessed model ─> Evaluator (TFMA, per task)
                                                                │ blessing
                                  TaskPusher: <serving_dir>/ctr/<v>/, <serving_dir>/cvr/<v>/
                                              and <serving_dir>/rank/<v>/ (sparse sharing)

The latest blessed model comes from a resolver over ML Metadata, or, on Kubeflow Pipelines
2.x (`settings.import_base_model`), from an importer of the last pushed model.
Runners (`local_runner.py`, `kubeflow_runner.py`) only choose where it runs.
"""

from __future__ import annotations

import json

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.proto import range_config_pb2

from lt4rec import features
from lt4rec.components import artifacts, task_pusher
from lt4rec.components.anomaly_check import AnomalyCheck
from lt4rec.components.evaluator import Evaluator
from lt4rec.components.log_example_gen import LogExampleGen, day_span
from lt4rec.components.mask_search import MaskSearch
from lt4rec.components.sparse_sharing_trainer import SparseSharingTrainer
from lt4rec.components.task_pusher import TaskPusher
from lt4rec.models import preprocessing, tfma_metrics
from lt4rec.models import trainer as model_trainer
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
    curated_schema_gen = tfx.components.ImportSchemaGen(schema_file=settings.schema_file).with_id("CuratedSchemaGen")
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

    # Only a sparse-sharing run that searches has masks of its own; a daily run (reused
    # masks) continues the latest blessed model under the masks that model was trained
    # with (its checkpoint holds them), so weights and masks come from one lineage.
    masks_source, masks = None, None
    if settings.network.masked and settings.masks == configs.SEARCH_MASKS:
        search_class, search_config = MaskSearch, None
        if settings.vertex_training:  # on the same training job launcher as the Trainer
            from lt4rec.components.mask_search.vertex import VertexMaskSearch as search_class

            search_config = settings.vertex_training.custom_config()
        masks_source = search_class(
            examples=transform.outputs["transformed_examples"],
            transform_graph=transform.outputs["transform_graph"],
            settings=settings.model_settings.to_dict(),
            custom_config=search_config,
        ).with_id("MaskSearch")  # one id wherever it runs
        masks = masks_source.outputs["masks"]
    latest_blessed_model, base_model, baseline_model = None, None, None
    if not settings.import_base_model:
        latest_blessed_model = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id("LatestBlessedModel")
        baseline_model = latest_blessed_model.outputs["model"]
        # Daily runs (reused masks) continue the last blessed, so pushed, model.
        base_model = baseline_model if settings.masks == configs.REUSE_MASKS else None
    elif settings.masks == configs.REUSE_MASKS:  # the last pushed model, where TaskPusher publishes it
        latest_blessed_model = tfx.dsl.Importer(
            source_uri=task_pusher.base_model_uri(settings.serving_dir),
            artifact_type=tfx.types.standard_artifacts.Model,
            reimport=True,
        ).with_id("LatestBlessedModel")
        base_model = baseline_model = latest_blessed_model.outputs["result"]
    trainer_class = SparseSharingTrainer
    if settings.vertex_training:  # imported only then: it brings in the Vertex AI client
        from lt4rec.components.sparse_sharing_trainer.vertex import VertexSparseSharingTrainer as trainer_class
    trainer = trainer_class(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        masks=masks,
        base_model=base_model,
        run_fn=configs.RUN_FN,
        custom_config={  # the model's settings, the pipeline that marks the model, where it trains
            **settings.model_settings.to_dict(),
            artifacts.PIPELINE_NAME_KEY: settings.pipeline_name,
            # The serving model the Evaluator scores stores its tables as the pushed models do.
            model_trainer.EMBEDDING_STORAGE_KEY: settings.embedding_storage,
            **(settings.vertex_training.custom_config() if settings.vertex_training else {}),
        },
    ).with_id("SparseSharingTrainer")  # one id wherever it trains: ML Metadata lineage, caching
    evaluator = Evaluator(  # TFX's, with the no-skill and incumbent baselines (components/evaluator)
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=baseline_model,
        eval_config=eval_config(settings),
    )
    pusher = TaskPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        transform_graph=transform.outputs["transform_graph"],
        serving_dir=settings.serving_dir,
        embedding_storage=settings.embedding_storage,
        matmul=settings.serving_matmul,
    )
    return [
        example_gen,
        statistics_gen,
        inferred_schema_gen,
        curated_schema_gen,
        example_validator,
        anomaly_check,
        transform,
        *([masks_source] if masks_source is not None else []),
        *([latest_blessed_model] if latest_blessed_model is not None else []),
        trainer,
        evaluator,
        pusher,
    ]


def eval_config(settings: configs.PipelineSettings) -> tfma.EvalConfig:
    """Per task: CTR AUC, GAUC by user, log loss, calibration; CVR MSE on clicks only.

    The serving model scores the raw eval split. CVR's metrics weigh each example by its
    click label, so non-clicked impressions count for nothing. Blessing: value bounds
    always, and no worse than the latest blessed model (when there is one) by more than
    the settings allow.

    Baselines, reported always: no skill (the train split's mean label as a constant:
    CTR log loss, CVR MSE on clicks) and the incumbent (the logged production pCTR's AUC
    and log loss); lt4rec's Evaluator fills in the train means. With `beat_no_skill` the
    CVR MSE must be below the no-skill MSE, with `beat_incumbent` the CTR AUC above the
    incumbent's (skipped when the eval split has no pctr): thresholds on the margins.
    """
    higher = tfma.MetricDirection.HIGHER_IS_BETTER
    lower = tfma.MetricDirection.LOWER_IS_BETTER
    ctr_auc_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": settings.min_ctr_auc}),
        change_threshold=tfma.GenericChangeThreshold(direction=higher, absolute={"value": -settings.max_ctr_auc_drop}),
    )
    cvr_mse_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(upper_bound={"value": settings.max_cvr_mse}),
        change_threshold=tfma.GenericChangeThreshold(direction=lower, absolute={"value": settings.max_cvr_mse_rise}),
    )
    beats = tfma.MetricThreshold(  # a margin over a baseline strictly above 0
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": tfma_metrics.ABOVE_ZERO})
    )

    def baseline(class_name: str, check: bool, **config) -> tfma.MetricConfig:
        return tfma.MetricConfig(
            class_name=class_name,
            module=tfma_metrics.__name__,
            config=json.dumps(config),
            threshold=beats if check else None,
        )

    def batched(
        class_name: str, name: str | None = None, threshold: tfma.MetricThreshold | None = None
    ) -> tfma.MetricConfig:
        """TFMA's (Keras's for BinaryCrossentropy) `class_name` metric, the same key and value,
        from one combiner per output (`tfma_metrics.Batched*`): a fraction of TFMA's time."""
        config = json.dumps({"name": name}) if name else ""
        return tfma.MetricConfig(
            class_name=f"Batched{class_name}", module=tfma_metrics.__name__, config=config, threshold=threshold
        )

    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name="serving_default",
                label_keys={"ctr": features.CLICK_LABEL, "cvr": features.WATCH_RATIO_LABEL},
                example_weight_keys={"cvr": features.CLICK_LABEL},
            )
        ],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[
            tfma.MetricsSpec(
                output_names=["ctr"],
                metrics=[
                    batched("ExampleCount"),
                    batched("AUC", threshold=ctr_auc_threshold),
                    batched("BinaryCrossentropy", "log_loss"),
                    batched("Calibration"),
                    batched("MeanLabel"),
                    batched("MeanPrediction"),
                    baseline("NoSkillBaseline", False, loss=tfma_metrics.LOG_LOSS),
                    baseline("IncumbentBaseline", settings.beat_incumbent, feature=features.PRODUCTION_PCTR),
                ],
            ),
            tfma.MetricsSpec(  # per-user AUC, users by FEA_UID
                output_names=["ctr"],
                metrics=[tfma.MetricConfig(class_name="GAUC", module="lt4rec.models.tfma_metrics")],
                example_weights=tfma.ExampleWeightOptions(unweighted=True),
            ),
            tfma.MetricsSpec(
                output_names=["cvr"],
                metrics=[
                    batched("WeightedExampleCount", "clicked_examples"),
                    batched("MeanSquaredError", "mse", cvr_mse_threshold),
                    batched("MeanLabel"),
                    batched("MeanPrediction"),
                    baseline("NoSkillBaseline", settings.beat_no_skill, loss=tfma_metrics.MSE),
                ],
            ),
        ],
    )


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
