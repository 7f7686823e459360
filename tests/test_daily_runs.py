"""Consecutive days: a mask search on day 1, then daily runs that continue the latest blessed model under its masks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from lt4rec import errors
from lt4rec.models import masks as masks_lib
from lt4rec.models import trainer
from lt4rec.pipeline import configs, local_runner
from tests.helpers import TABLE_SCALE, tiny_model

pytestmark = pytest.mark.e2e


def _settings(tiny_logs: str, root: str, day: str, masks: str, **bounds) -> configs.PipelineSettings:
    settings = dict(
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
        beat_no_skill=False,
        beat_incumbent=False,
        **tiny_model(),
    )
    return configs.PipelineSettings(**{**settings, **bounds})


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


def _trained_masks(model_artifact) -> dict:
    model, _ = trainer.load_trained(model_artifact.uri)
    return masks_lib.get_task_masks(model)


def test_daily_runs_continue_the_blessed_model_under_its_own_masks(tiny_logs, tmp_path):
    """Day 1 searches and is blessed; day 2 searches anew but is not blessed; day 3 reuses.

    Day 3 must continue day 1's model under day 1's masks: the newest masks (day 2's) were
    never trained into a blessed model.
    """
    first = _settings(tiny_logs, str(tmp_path), "20201011", configs.SEARCH_MASKS)
    local_runner.run(first)
    first_run = _artifacts(first)
    assert "base_model" not in first_run  # a search run starts from its own sNET_init
    (first_masks,) = first_run["masks"]
    (first_model,) = first_run["model"]
    assert os.listdir(os.path.join(first.serving_dir, "ctr")) == ["1"]

    # no model reaches it
    unblessed = _settings(tiny_logs, str(tmp_path), "20201012", configs.SEARCH_MASKS, min_ctr_auc=1.1)
    local_runner.run(unblessed)
    (newer_masks,) = _artifacts(unblessed)["masks"]
    assert os.listdir(os.path.join(first.serving_dir, "ctr")) == ["1"]  # nothing pushed
    newer = masks_lib.read_artifact_masks(newer_masks.uri)
    day_1 = _trained_masks(first_model)
    assert any(not np.array_equal(newer[task][name], day_1[task][name]) for task in day_1 for name in day_1[task])

    third = _settings(tiny_logs, str(tmp_path), "20201013", configs.REUSE_MASKS)
    local_runner.run(third)
    steps = {step.component: step.state for step in local_runner.last_run_steps(third)}
    assert "MaskSearch" not in steps and steps["SparseSharingTrainer"] == "COMPLETE"
    third_run = _artifacts(third)
    assert "masks" not in third_run  # no masks of their own: the base model's
    assert [a.id for a in third_run["base_model"]] == [first_model.id]  # the latest blessed model: day 1's
    (examples,) = _artifacts(third, "LogExampleGen")["examples"]
    assert json.loads(examples.custom_properties["split_days"].string_value) == {
        "train": ["20201013"],
        "eval": ["20201013"],
    }
    (third_model,) = third_run["model"]
    for task, task_masks in _trained_masks(third_model).items():
        for name, mask in task_masks.items():
            np.testing.assert_array_equal(mask, day_1[task][name])
    with open(os.path.join(third_model.uri, trainer.TRAINING_FOLDER, trainer.SETTINGS_FILE)) as f:
        recorded = json.load(f)
    assert recorded[trainer.WARM_START] == first_model.uri and recorded[trainer.MASKS_URI] == first_masks.uri
    for task in ("ctr", "cvr"):
        assert sorted(os.listdir(os.path.join(third.serving_dir, task))) == ["1", "2"]


def test_a_daily_run_without_a_blessed_model_says_what_to_do(tiny_logs, tmp_path):
    with pytest.raises(errors.UserFacingError, match="no model is blessed yet; run with --masks search first"):
        local_runner.run(_settings(tiny_logs, str(tmp_path), "20201011", configs.REUSE_MASKS))
