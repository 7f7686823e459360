"""Two consecutive days: a mask search on day 1, then a daily run that reuses it and warm-starts."""

from __future__ import annotations

import json
import os

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from lt4rec.models import trainer
from lt4rec.pipeline import configs, local_runner
from tests.conftest import TABLE_SCALE, tiny_model


def _settings(tiny_logs: str, root: str, day: str, masks: str) -> configs.PipelineSettings:
    return configs.PipelineSettings(
        data_root=tiny_logs,
        pipeline_root=os.path.join(root, "pipeline"),
        serving_dir=os.path.join(root, "serving"),
        span=day,
        masks=masks,
        table_scale=TABLE_SCALE,
        min_ctr_auc=0.0,  # 450 training rows a day teach little: the lineage is what is tested
        max_cvr_mse=1.0,
        max_ctr_auc_drop=1.0,
        max_cvr_mse_rise=1.0,
        **tiny_model(),
    )


def _artifacts(settings: configs.PipelineSettings, node_id: str = "SparseSharingTrainer") -> dict[str, list]:
    """The artifacts a component read and wrote in the latest run, by input or output name."""
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = settings.metadata_sqlite
    store = metadata_store.MetadataStore(config)
    run = max(store.get_contexts_by_type("pipeline_run"), key=lambda context: context.create_time_since_epoch)
    node = store.get_context_by_type_and_name("node", f"{settings.pipeline_name}.{node_id}")
    in_run = {execution.id for execution in store.get_executions_by_context(run.id)}
    (execution,) = [e for e in store.get_executions_by_context(node.id) if e.id in in_run]
    artifacts: dict[str, list] = {}
    for event in store.get_events_by_execution_ids([execution.id]):
        (artifact,) = store.get_artifacts_by_id([event.artifact_id])
        artifacts.setdefault(event.path.steps[0].key, []).append(artifact)
    return artifacts


def test_second_day_reuses_masks_warm_starts_and_pushes_version_2(tiny_logs, tmp_path):
    first = _settings(tiny_logs, str(tmp_path), "20201011", configs.SEARCH_MASKS)
    local_runner.run(first)
    first_run = _artifacts(first)
    assert "base_model" not in first_run  # a search run starts from its own sNET_init
    (masks,) = first_run["masks"]
    (first_model,) = first_run["model"]
    assert os.listdir(os.path.join(first.serving_dir, "ctr")) == ["1"]

    second = _settings(tiny_logs, str(tmp_path), "20201012", configs.REUSE_MASKS)
    local_runner.run(second)
    steps = {step.component: step.state for step in local_runner.last_run_steps(second)}
    assert "MaskSearch" not in steps and steps["SparseSharingTrainer"] == "COMPLETE"
    second_run = _artifacts(second)
    assert [a.id for a in second_run["masks"]] == [masks.id]  # day 1's search, through ML Metadata
    assert [a.id for a in second_run["base_model"]] == [first_model.id]  # warm start from day 1's model
    (examples,) = _artifacts(second, "LogExampleGen")["examples"]
    assert json.loads(examples.custom_properties["split_days"].string_value) == {"train": ["20201012"], "eval": ["20201012"]}
    (second_model,) = second_run["model"]
    with open(os.path.join(second_model.uri, trainer.TRAINING_FOLDER, trainer.SETTINGS_FILE)) as f:
        recorded = json.load(f)
    assert recorded[trainer.WARM_START] == first_model.uri and recorded[trainer.MASKS_URI] == masks.uri
    for task in ("ctr", "cvr"):
        assert sorted(os.listdir(os.path.join(second.serving_dir, task))) == ["1", "2"]
