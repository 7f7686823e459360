"""The compiled Kubeflow / Vertex AI spec, run task by task as the cluster runs it (`kubeflow_local.py`).

Every task runs its container's command in a subprocess with the ExecutorInput the
orchestrator would give it; resolvers evaluate their compiled filters over the artifacts
already produced. A history run and then a daily run (reused masks: the latest blessed
model continued) must push the same models as LocalDagRunner runs of the same settings.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils

from lt4rec.models import masks as masks_lib
from lt4rec.models import trainer
from lt4rec.pipeline import configs, kubeflow_runner, local_runner
from tests import kubeflow_local
from tests.helpers import TABLE_SCALE, read_examples, tiny_model

pytestmark = pytest.mark.e2e

IMAGE = "lt4rec:test"
TASKS = ("ctr", "cvr")


def _settings(tiny_logs: str, root: str, schema_file: str, daily: bool) -> configs.PipelineSettings:
    return configs.PipelineSettings(
        data_root=tiny_logs,
        pipeline_root=os.path.join(root, "pipeline"),
        serving_dir=os.path.join(root, "serving"),
        schema_file=schema_file,  # as on the cluster, a path the settings name (e.g. on GCS)
        table_scale=TABLE_SCALE,
        min_ctr_auc=0.0,  # 1,500 rows teach little: pushing is what is tested
        max_cvr_mse=1.0,
        max_ctr_auc_drop=1.0,
        max_cvr_mse_rise=1.0,
        beat_no_skill=False,
        beat_incumbent=False,
        **(dict(span="latest", masks=configs.REUSE_MASKS) if daily else {}),
        **tiny_model(),
    )


@pytest.fixture(scope="module")
def runs(tiny_logs, tmp_path_factory) -> dict:
    """History then daily, once through LocalDagRunner and once through the compiled specs."""
    root = str(tmp_path_factory.mktemp("kubeflow_run"))
    schema_file = os.path.join(root, "schema.pbtxt")
    shutil.copy(configs.SCHEMA_PATH, schema_file)
    result = {}
    for mode in ("history", "daily"):
        local = _settings(tiny_logs, os.path.join(root, "local"), schema_file, daily=mode == "daily")
        local_runner.run(local)
        result[("local", mode)] = local
        if mode == "history":  # what a Kubeflow Pipelines daily run finds after this history run
            shutil.copytree(local.serving_dir, os.path.join(root, "kfp", "serving"))
    store = kubeflow_local.MetadataStore.open(os.path.join(root, "store.json"))
    for runner, mode, extension in (
        ("vertex", "history", "json"),
        ("vertex", "daily", "json"),
        ("kfp", "daily", "yaml"),
    ):
        settings = _settings(tiny_logs, os.path.join(root, runner), schema_file, daily=mode == "daily")
        spec = kubeflow_runner.compile_pipeline(settings, os.path.join(root, f"{runner}-{mode}.{extension}"), IMAGE)
        result[(runner, mode)] = settings
        run = kubeflow_local.SpecRun(
            spec, settings.pipeline_root, store, f"{runner}-{mode}", pre_cache_check=runner == "vertex"
        )
        result[(runner, mode, "outputs")] = run.run()
    return result


def _pushed(settings: configs.PipelineSettings, task: str, version: int) -> str:
    return os.path.join(settings.serving_dir, task, str(version))


def _eval_examples(outputs: dict) -> list[bytes]:
    (examples,) = outputs["LogExampleGen"]["examples"]
    (path,) = glob.glob(os.path.join(examples["uri"], "Split-eval", "*.gz"))
    return [example.SerializeToString() for example in read_examples(path)]


@pytest.mark.parametrize("runner,mode,version", [("vertex", "history", 1), ("vertex", "daily", 2), ("kfp", "daily", 2)])
def test_the_compiled_spec_pushes_what_local_runs_push(runs, runner, mode, version):
    """Vertex AI's spec (resolvers), and Kubeflow Pipelines' (importing the last pushed model)."""
    examples = tf.constant(_eval_examples(runs[(runner, mode, "outputs")]))
    for task in TASKS:
        scores = {}
        for name in ("local", runner):
            path = _pushed(runs[(name, mode)], task, version)
            assert os.path.isdir(path), f"{name} {mode} run pushed no {task} model version {version}"
            scores[name] = tf.saved_model.load(path).signatures["serving_default"](examples=examples)[task].numpy()
        np.testing.assert_allclose(scores[runner], scores["local"], atol=1e-5, err_msg=f"{runner} {mode} {task}")


def test_the_daily_spec_continues_the_blessed_model_of_this_pipeline(runs):
    """The resolvers' filters found the history run's blessed model, and its masks came with it."""
    history, daily = runs[("vertex", "history", "outputs")], runs[("vertex", "daily", "outputs")]
    (blessing,) = history["Evaluator"]["blessing"]
    assert blessing["metadata"]["blessed"] == 1
    (base_model,) = daily["LatestBlessedModel-model-resolver"]["model"]
    (trained,) = history["SparseSharingTrainer"]["model"]
    assert base_model["uri"] == trained["uri"]
    assert "MaskSearch" not in daily
    (continued,) = daily["SparseSharingTrainer"]["model"]
    history_model, _ = trainer.load_trained(trained["uri"])
    daily_model, _ = trainer.load_trained(continued["uri"])
    for task in TASKS:
        for layer, (kept_before, kept_after) in enumerate(
            zip(masks_lib.get_masks(history_model, task), masks_lib.get_masks(daily_model, task))
        ):
            np.testing.assert_array_equal(kept_after, kept_before, err_msg=f"{task} layer {layer}")


def test_resolvers_skip_another_pipelines_models(runs, tmp_path):
    """A newer blessed model of another pipeline in the same metadata store is not picked."""
    store = kubeflow_local.MetadataStore.open(
        os.path.join(os.path.dirname(os.path.dirname(runs[("vertex", "daily")].pipeline_root)), "store.json")
    )
    copy = kubeflow_local.MetadataStore(str(tmp_path / "store.json"), [dict(a) for a in store.artifacts])
    for artifact in [
        a for a in copy.artifacts if kubeflow_local.schema_title(a["type"]) in ("tfx.Model", "tfx.ModelBlessing")
    ]:
        other = json.loads(json.dumps(artifact))
        other["name"] = artifact["name"].replace("local/", "other/")
        other["metadata"]["lt4rec_pipeline"] = "another-pipeline"
        if "current_model_id" in other["metadata"]:
            other["metadata"]["current_model_id"] = other["metadata"]["current_model_id"].replace("local/", "other/")
        copy.add(other)
    spec = kubeflow_runner.compile_pipeline(runs[("vertex", "daily")], str(tmp_path / "daily.json"), IMAGE)
    run = kubeflow_local.SpecRun(spec, str(tmp_path), copy, "resolve-only")
    run.run(only=["LatestBlessedModel-model-blessing-resolver", "LatestBlessedModel-model-resolver"])
    (model,) = run.outputs["LatestBlessedModel-model-resolver"]["model"]
    assert model["metadata"]["lt4rec_pipeline"] == "lt4rec"


def test_every_artifact_type_of_the_spec_imports_in_the_container(tmp_path):
    """TFX's container entrypoint turns each type's schema title into a Python class."""
    settings = _settings("gs://b/logs", "gs://b", "gs://b/schema.pbtxt", daily=False)
    path = kubeflow_runner.compile_pipeline(settings, str(tmp_path / "spec.json"), IMAGE)
    with open(path) as handle:
        spec = json.load(handle)["pipelineSpec"]
    types = [
        artifact["artifactType"]
        for component in spec["components"].values()
        for side in ("inputDefinitions", "outputDefinitions")
        for artifact in component.get(side, {}).get("artifacts", {}).values()
    ]
    assert any(kubeflow_local.schema_title(t) == "lt4rec.Masks" for t in types)
    for artifact_type in types:
        runtime = pipeline_spec_pb2.ArtifactList()
        json_format.ParseDict({"artifacts": [{"name": "a", "uri": "/x", "type": artifact_type}]}, runtime)
        (artifact,) = kubeflow_v2_entrypoint_utils.parse_raw_artifact_dict({"key": runtime})["key"]
        assert type(artifact).__name__ == kubeflow_local.schema_title(artifact_type).split(".")[-1]
