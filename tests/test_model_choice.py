"""`--model`: every model builds settings and a pipeline; a baseline runs without MaskSearch and pushes both tasks."""

from __future__ import annotations

import dataclasses
import glob
import os

import click
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from lt4rec import cli, errors, features
from lt4rec.models import export, masks, network, trainer
from lt4rec.models.config import NEURON, VARIANTS
from lt4rec.pipeline import configs, kubeflow_runner, local_runner
from lt4rec.pipeline import pipeline as pipeline_lib
from tests.helpers import TABLE_SCALE, read_examples, tiny_model

pytestmark = pytest.mark.e2e

ROOTS = dict(data_root="gs://b/logs", pipeline_root="gs://b/pipeline", serving_dir="gs://b/serving")
SPARSE = {configs.S_WEIGHT: masks.CONNECTION, configs.S_NEURON: NEURON}


def test_the_command_line_offers_exactly_the_models_of_the_settings():
    assert cli.MODEL_CHOICES == tuple(configs.MODELS)
    assert {granularity for _, granularity in configs.MODELS.values() if granularity} == set(masks.GRANULARITIES)
    assert {variant for variant, _ in configs.MODELS.values()} == set(VARIANTS)


@pytest.mark.parametrize("model", list(configs.MODELS))
def test_every_model_builds_settings_and_a_pipeline(model, monkeypatch):
    settings = configs.PipelineSettings(**ROOTS, **configs.select_model(model))
    assert settings.model == model
    assert settings.network.variant == configs.MODELS[model][0] and settings.network.tasks == ("ctr", "cvr")
    if model in SPARSE:
        assert settings.search.granularity == SPARSE[model]

    # The same from the environment (runner files) and from the command line.
    for name, value in {
        "LT4REC_DATA_ROOT": ROOTS["data_root"],
        "LT4REC_PIPELINE_ROOT": ROOTS["pipeline_root"],
        "LT4REC_SERVING_DIR": ROOTS["serving_dir"],
        "LT4REC_MODEL": model,
    }.items():
        monkeypatch.setenv(name, value)
    from_env = configs.PipelineSettings.from_env()
    assert (from_env.network, from_env.search, from_env.model) == (settings.network, settings.search, model)
    assert _from_command_line("--model", model) == (settings.network, settings.search)

    components = pipeline_lib.create_components(settings)
    ids = [component.id for component in components]
    trainer_component = components[ids.index("SparseSharingTrainer")]
    assert "LatestMasks" not in ids and ids[-3:] == ["SparseSharingTrainer", "Evaluator", "TaskPusher"]
    if model in SPARSE:
        assert "MaskSearch" in ids and "masks" in trainer_component.inputs
    else:
        assert "MaskSearch" not in ids and "masks" not in trainer_component.inputs
    assert trainer_component.exec_properties["custom_config"]  # the network variant reaches run_fn
    assert f'"variant": "{settings.network.variant}"' in trainer_component.exec_properties["custom_config"]


def _from_command_line(*args: str):
    context = cli.pipeline_run.make_context(
        "run", [f"--{k.replace('_', '-')}={v}" for k, v in ROOTS.items()] + list(args)
    )
    settings = cli._pipeline_settings(context, dict(context.params))
    return settings.network, settings.search


def test_granularity_still_picks_the_sparse_sharing_model():
    default_network, default_search = _from_command_line()
    assert default_network.variant == network.SPARSE_SHARING and default_search.granularity == masks.CONNECTION
    assert _from_command_line("--granularity", "neuron") == _from_command_line("--model", "s_neuron")
    assert _from_command_line("--model", "s_neuron", "--granularity", "neuron")[1].granularity == NEURON
    with pytest.raises(click.BadParameter, match="contradicts"):
        _from_command_line("--model", "s_weight", "--granularity", "neuron")
    with pytest.raises(click.BadParameter, match="contradicts"):
        _from_command_line("--model", "mmoe", "--granularity", "connection")
    hidden = _from_command_line("--model", "layer_sharing", "--hidden-units", "64,32")[0]
    assert hidden.variant == network.LAYER_SHARING and hidden.hidden_units == (64, 32)  # the sizes are kept
    with pytest.raises(click.BadParameter, match="multi-view"):
        _from_command_line("--model", "mmoe", "--multi-view-dim", "4")


def test_a_daily_run_of_a_baseline_continues_the_latest_blessed_model_without_masks():
    settings = configs.PipelineSettings(**ROOTS, masks=configs.REUSE_MASKS, **configs.select_model("mmoe"))
    components = pipeline_lib.create_components(settings)
    trainer_component = components[[c.id for c in components].index("SparseSharingTrainer")]
    assert "masks" not in trainer_component.inputs and "base_model" in trainer_component.inputs
    with pytest.raises(errors.UserFacingError, match="model must be one of"):
        configs.select_model("cross_stitch")


def test_a_baseline_compiles_for_kubeflow_without_mask_search(tmp_path, monkeypatch):
    from tests.test_kubeflow import _fail, _load

    monkeypatch.setattr(local_runner, "discover_days", _fail)  # the data root is the cluster's
    settings = configs.PipelineSettings(**ROOTS, **configs.select_model("ple"))
    _, spec = _load(kubeflow_runner.compile_pipeline(settings, str(tmp_path / "ple.json")))
    tasks = spec.root.dag.tasks
    assert "MaskSearch" not in tasks and "LatestMasks" not in tasks
    assert set(tasks["SparseSharingTrainer"].dependent_tasks) == {"Transform"}
    assert "masks" not in tasks["SparseSharingTrainer"].inputs.artifacts


@pytest.fixture(scope="module")
def mmoe_run(tiny_logs, tmp_path_factory):
    """The whole pipeline on the tiny logs with `--model mmoe` (a small one)."""
    root = tmp_path_factory.mktemp("mmoe_run")
    model = tiny_model()
    small = dataclasses.replace(model.pop("network"), expert_units=(16, 8), tower_units=(8,))
    settings = configs.PipelineSettings(
        data_root=tiny_logs,
        pipeline_root=str(root / "pipeline"),
        serving_dir=str(root / "serving"),
        table_scale=TABLE_SCALE,
        min_ctr_auc=0.3,  # 1,000 training rows teach little: pushing is what is tested here
        beat_no_skill=False,
        beat_incumbent=False,
        **{**model, **configs.select_model("mmoe", small, model["search"])},
    )
    local_runner.run(settings)
    return settings


def _latest(settings, component: str, output: str) -> str:
    return sorted(glob.glob(os.path.join(settings.pipeline_root, component, output, "*")), key=os.path.getmtime)[-1]


def test_mmoe_runs_without_mask_search_and_pushes_both_tasks_that_score(mmoe_run):
    steps = {step.component: step.state for step in local_runner.last_run_steps(mmoe_run)}
    assert "MaskSearch" not in steps and "LatestMasks" not in steps
    assert steps["SparseSharingTrainer"] == steps["Evaluator"] == steps["TaskPusher"] == "COMPLETE"
    assert not glob.glob(os.path.join(mmoe_run.pipeline_root, "MaskSearch"))

    model_dir = _latest(mmoe_run, "SparseSharingTrainer", "model")
    trained, saved = trainer.load_trained(model_dir)
    assert trained.config == mmoe_run.network and saved[trainer.NETWORK]["variant"] == network.MMOE
    assert os.path.exists(os.path.join(_latest(mmoe_run, "Evaluator", "blessing"), "BLESSED"))

    transform_output = tft.TFTransformOutput(_latest(mmoe_run, "Transform", "transform_graph"))
    raw = [
        e.SerializeToString()
        for e in read_examples(os.path.join(mmoe_run.data_root, "20201013", "part-00000.gz"))[:100]
    ]
    ids = transform_output.transform_features_layer()(tf.io.parse_example(raw, export.raw_input_spec(transform_output)))
    inputs = {name: ids[name] for name in features.FEATURE_NAMES}
    for task in ("ctr", "cvr"):
        assert os.listdir(os.path.join(mmoe_run.serving_dir, task)) == ["1"]
        path = os.path.join(mmoe_run.serving_dir, task, "1")
        loaded = tf.saved_model.load(path)
        scores = loaded.signatures["serving_default"](examples=tf.constant(raw))[task].numpy()
        assert np.all((scores > 0) & (scores < 1)) and scores.std() > 0
        np.testing.assert_allclose(scores, trained(inputs, task=task)[task].numpy(), atol=1e-5)
        other = "cvr" if task == "ctr" else "ctr"
        assert not [v.name for v in loaded.signatures["serving_default"].variables if other in v.name]
        assert export.read_metadata(path)["variant"] == network.MMOE
