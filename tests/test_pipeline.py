"""The pipeline end to end on tiny data, and what its command line says about bad input."""

import dataclasses
import glob
import json
import os
import subprocess

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
import tensorflow_transform as tft

from lt4rec import errors, features
from lt4rec.models import export, masks, network, trainer
from lt4rec.models.config import NEURON
from lt4rec.pipeline import configs, local_runner
from lt4rec.pipeline import pipeline as pipeline_lib
from tests.helpers import LT4REC, TABLE_SCALE, read_examples

pytestmark = pytest.mark.e2e


def _latest(settings, component: str, output: str) -> str:
    return sorted(glob.glob(os.path.join(settings.pipeline_root, component, output, "*")), key=os.path.getmtime)[-1]


def test_components_are_wired_once_in_order(tiny_logs):
    settings = configs.PipelineSettings(data_root=tiny_logs, pipeline_root="/tmp/x", serving_dir="/tmp/y")
    ids = [component.id for component in pipeline_lib.create_components(settings)]
    front = [
        "LogExampleGen",
        "StatisticsGen",
        "InferredSchemaGen",
        "CuratedSchemaGen",
        "ExampleValidator",
        "AnomalyCheck",
        "Transform",
    ]
    assert ids == front + ["MaskSearch", "LatestBlessedModel", "SparseSharingTrainer", "Evaluator", "TaskPusher"]
    reuse = configs.PipelineSettings(
        data_root=tiny_logs, pipeline_root="/tmp/x", serving_dir="/tmp/y", masks=configs.REUSE_MASKS
    )
    ids = [component.id for component in pipeline_lib.create_components(reuse)]
    assert ids == front + ["LatestBlessedModel", "SparseSharingTrainer", "Evaluator", "TaskPusher"]


def test_mask_search_writes_every_round_masks_plots_and_summary(finished_run):
    folder = _latest(finished_run, "MaskSearch", "masks")
    report = masks.read_report(folder)
    found = masks.read_artifact_masks(folder)
    for task in ("ctr", "cvr"):
        rounds = report["tasks"][task]["rounds"]
        assert [r["round"] for r in rounds] == [0, 1, 2]
        assert [r["remaining"] for r in rounds] == pytest.approx([1.0, 0.5, 0.25], abs=1e-3)
        best = report["tasks"][task]["best_round"]
        assert masks.remaining_fraction(found[task]) == pytest.approx(rounds[best]["remaining"])
    for name in ("pruning_curve.png", "mask_overlap.png"):
        with open(os.path.join(folder, name), "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(folder, "summary.txt")) as handle:
        assert "all layers" in handle.read()


def test_trained_model_keeps_the_masks_and_scores_raw_logs(finished_run, tiny_logs):
    model_dir = _latest(finished_run, "SparseSharingTrainer", "model")
    searched = masks.read_artifact_masks(_latest(finished_run, "MaskSearch", "masks"))
    trained = masks.get_task_masks(trainer.load_trained(model_dir)[0])  # the masks the checkpoint holds
    for task in searched:
        for layer in searched[task]:
            np.testing.assert_array_equal(trained[task][layer], searched[task][layer])

    serving = tf.saved_model.load(os.path.join(model_dir, "Format-Serving"))
    raw = read_examples(os.path.join(tiny_logs, "20201013", "part-00000.gz"))[:20]
    for example in raw:  # requests carry no labels
        for key in (features.CLICK_LABEL, features.WATCH_RATIO_LABEL):
            del example.features.feature[key]
    scores = serving.signatures["serving_default"](examples=tf.constant([e.SerializeToString() for e in raw]))
    for output in ("ctr", "cvr"):
        assert scores[output].shape == (20,)
        assert np.all((scores[output].numpy() > 0) & (scores[output].numpy() < 1))


def test_evaluator_reports_each_task_and_blesses(finished_run):
    evaluation = _latest(finished_run, "Evaluator", "evaluation")
    result = tfma.load_eval_result(evaluation)
    ((_, by_output),) = result.slicing_metrics
    ctr = {name: value["doubleValue"] for name, value in by_output["ctr"][""].items()}
    cvr = {name: value["doubleValue"] for name, value in by_output["cvr"][""].items()}
    assert {"auc", "gauc", "log_loss", "calibration"} <= set(ctr)
    assert {"mse", "clicked_examples"} <= set(cvr)
    eval_day = read_examples(os.path.join(finished_run.data_root, "20201013", "part-00000.gz"))
    clicks = sum(e.features.feature[features.CLICK_LABEL].int64_list.value[0] for e in eval_day)
    assert ctr["example_count"] == len(eval_day)
    assert cvr["clicked_examples"] == clicks  # CVR counts clicked impressions only
    assert tfma.load_validation_result(evaluation).validation_ok
    assert os.path.exists(os.path.join(_latest(finished_run, "Evaluator", "blessing"), "BLESSED"))
    with open(
        os.path.join(
            _latest(finished_run, "SparseSharingTrainer", "model"), trainer.TRAINING_FOLDER, trainer.METRICS_FILE
        )
    ) as handle:
        in_process = json.load(handle)
    assert ctr["auc"] == pytest.approx(in_process["ctr_auc"], abs=2e-3)  # TFMA's AUC is bucketed
    assert cvr["mse"] == pytest.approx(in_process["cvr_mse"], rel=1e-4)


def test_transform_gives_every_feature_as_fixed_width_ids(finished_run):
    transform_output = tft.TFTransformOutput(_latest(finished_run, "Transform", "transform_graph"))
    spec = transform_output.transformed_feature_spec()
    for feature in features.FEATURES:
        assert spec[feature.name] == tf.io.FixedLenFeature([feature.max_values], tf.int64), feature.name
    assert spec[features.CLICK_LABEL] == tf.io.FixedLenFeature([], tf.int64)
    assert spec[features.WATCH_RATIO_LABEL] == tf.io.FixedLenFeature([], tf.float32)


def test_transformed_splits_hold_every_row_of_their_days(finished_run, tiny_logs):
    transformed = _latest(finished_run, "Transform", "transformed_examples")
    counts = {
        split: sum(len(read_examples(f)) for f in glob.glob(os.path.join(transformed, f"Split-{split}", "*")))
        for split in ("train", "eval")
    }
    per_day = {
        day: len(read_examples(os.path.join(tiny_logs, day, "part-00000.gz")))
        for day in ("20201011", "20201012", "20201013")
    }
    assert counts == {"train": per_day["20201011"] + per_day["20201012"], "eval": per_day["20201013"]}


def test_transform_graph_hashes_ids_as_computed_by_hand(finished_run, tiny_logs):
    transform_output = tft.TFTransformOutput(_latest(finished_run, "Transform", "transform_graph"))
    raw = read_examples(os.path.join(tiny_logs, "20201013", "part-00000.gz"))[:50]
    parsed = tf.io.parse_example([e.SerializeToString() for e in raw], transform_output.raw_feature_spec())
    ids = transform_output.transform_features_layer()(parsed)
    user_table = finished_run.feature_config.table_of["FEA_UID"]
    for row, example in enumerate(raw):
        user = example.features.feature["FEA_UID"].bytes_list.value[0]
        expected = tf.strings.to_hash_bucket_fast([user], user_table.size - 1).numpy()[0] + 1
        assert int(ids["FEA_UID"][row, 0]) == expected
        keywords = example.features.feature["FEA_IKEYWORD"].bytes_list.value
        present = int(tf.math.count_nonzero(ids["FEA_IKEYWORD"][row]))
        assert present == (0 if list(keywords) == [b"-1"] else len(keywords))


def test_the_curated_schema_is_the_one_transform_used(finished_run):
    imported = glob.glob(os.path.join(_latest(finished_run, "CuratedSchemaGen", "schema"), "*.pbtxt"))
    assert len(imported) == 1
    with open(imported[0]) as handle, open(configs.SCHEMA_PATH) as curated:
        assert handle.read().strip().splitlines()[-5:] == curated.read().strip().splitlines()[-5:]


def test_a_missing_or_empty_data_root_is_named(tmp_path):
    with pytest.raises(errors.DataError, match="does not exist"):
        local_runner.discover_days(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "20201011").mkdir(parents=True)
    (tmp_path / "empty" / "20201011" / "_SUCCESS").write_text("")
    with pytest.raises(errors.DataError, match="no day partitions"):
        local_runner.discover_days(str(tmp_path / "empty"))


def _run_cli(data_root: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            LT4REC,
            "pipeline",
            "run",
            "--data-root",
            data_root,
            "--pipeline-root",
            str(tmp_path / "pipeline"),
            "--serving-dir",
            str(tmp_path / "serving"),
            "--table-scale",
            str(TABLE_SCALE),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("case", ["missing root", "empty root"])
def test_cli_names_a_bad_data_root_without_a_traceback(tmp_path, case):
    root = tmp_path / "logs"
    if case == "empty root":
        root.mkdir()
    done = _run_cli(str(root), tmp_path)
    assert done.returncode == 1
    assert f"lt4rec: error: data root {root}" in done.stderr
    assert "Traceback" not in done.stderr


def _cut(path: str) -> None:
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])


def _drop_label(examples):
    del examples[5].features.feature[features.CLICK_LABEL]
    return examples


def _watch_ratio_above_one(examples):
    examples[9].features.feature[features.WATCH_RATIO_LABEL].float_list.value[0] = 1.25
    return examples


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("corrupt", r"part-00000.gz: not a valid GZIP TFRecord file"),
        (_drop_label, r"part-00000.gz record 5: field 'label' is missing"),
        (_watch_ratio_above_one, r"part-00000.gz record 9: field 'cvrlabel' = \[1.25\] is outside \[0, 1\]"),
    ],
)
def test_cli_names_the_file_and_field_of_bad_logs(tmp_path, damaged_copy, damage, expected):
    import re

    root = damaged_copy(lambda examples: examples) if damage == "corrupt" else damaged_copy(damage)
    if damage == "corrupt":
        _cut(os.path.join(root, "20201012", "part-00000.gz"))
    done = _run_cli(root, tmp_path)
    assert done.returncode == 1
    assert re.search(expected, done.stderr), done.stderr[-2000:]
    assert os.path.join(root, "20201012") in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def trained_network(finished_run):
    """The Trainer's network, restored from its checkpoint, with real transformed inputs."""
    model_dir = _latest(finished_run, "SparseSharingTrainer", "model")
    transform_output = tft.TFTransformOutput(_latest(finished_run, "Transform", "transform_graph"))
    raw = [
        e.SerializeToString()
        for e in read_examples(os.path.join(finished_run.data_root, "20201013", "part-00000.gz"))[:100]
    ]
    ids = transform_output.transform_features_layer()(tf.io.parse_example(raw, export.raw_input_spec(transform_output)))
    inputs = {name: ids[name] for name in features.FEATURE_NAMES}
    model = network.RankingNetwork(finished_run.feature_config, finished_run.network)
    model.build_for(inputs)
    tf.train.Checkpoint(network=model).read(
        os.path.join(model_dir, trainer.TRAINING_FOLDER, trainer.CHECKPOINT)
    ).assert_existing_objects_matched()
    return model, transform_output, raw, inputs


@pytest.mark.parametrize("task", ["ctr", "cvr"])
@pytest.mark.parametrize("compact", [False, True])
def test_task_export_folds_the_mask_and_scores_as_the_trained_network(trained_network, tmp_path, task, compact):
    model, transform_output, raw, inputs = trained_network
    # Prune whole units further, so that compaction has units to drop.
    pruned = masks.prune_by_magnitude(
        masks.get_kernels(model), masks.get_masks(model, task), 1, 0.5, granularity=NEURON
    )
    masks.set_task_masks(model, {**masks.get_task_masks(model), task: pruned})
    expected = model(inputs, task=task)[task].numpy()

    path = str(tmp_path / task)
    task_network = export.export_task_model(model, task, transform_output, path, compact=compact)
    loaded = tf.saved_model.load(path)
    scores = loaded.signatures["serving_default"](examples=tf.constant(raw))
    assert set(scores) == {task}
    np.testing.assert_allclose(scores[task].numpy(), expected, atol=1e-5)

    variables = [v.name for v in loaded.signatures["serving_default"].variables]
    assert not [name for name in variables if "mask" in name or "pruning" in name or "threshold" in name]
    other = "cvr" if task == "ctr" else "ctr"
    assert not [name for name in variables if other in name]
    assert len(task_network.folded_kernels()) == len(model.config.hidden_units) + 1  # MLP + the task's head only
    if compact:  # no unit the mask switched off (units that feed nothing go too: see test_export)
        live = [len(masks.units_kept(mask)) for mask in pruned.values()]
        assert all(width <= kept for width, kept in zip(task_network.layer_widths, live))
    else:
        assert task_network.layer_widths == list(model.config.hidden_units)

    # The raw-tensor signature gives the same scores as the serialized-example one.
    parsed = tf.io.parse_example(raw, export.raw_input_spec(transform_output))
    named = {
        spec.name: tf.sparse.to_dense(parsed[spec.name], default_value="")[:, : spec.max_values]
        for spec in features.FEATURES
    }
    named = {
        name: tf.pad(value, [[0, 0], [0, spec.max_values - tf.shape(value)[1]]])
        for (name, value), spec in zip(named.items(), features.FEATURES)
    }
    by_name = loaded.signatures["serving_raw"](**named)
    np.testing.assert_allclose(by_name[task].numpy(), expected, atol=1e-5)


def test_pusher_writes_one_compacted_model_per_task_and_the_rank_model_in_serving_layout(finished_run, trained_network):
    _, _, raw, _ = trained_network
    model_dir = _latest(finished_run, "SparseSharingTrainer", "model")
    reference, _ = trainer.load_trained(model_dir)  # as trained, before any test pruned it further
    for task in ("ctr", "cvr"):
        versions = os.listdir(os.path.join(finished_run.serving_dir, task))
        assert versions == ["1"]
        path = os.path.join(finished_run.serving_dir, task, "1")
        assert os.path.exists(os.path.join(path, "saved_model.pb")) and os.path.isdir(os.path.join(path, "variables"))
        scores = tf.saved_model.load(path).signatures["serving_default"](examples=tf.constant(raw))[task].numpy()
        transform_output = tft.TFTransformOutput(_latest(finished_run, "Transform", "transform_graph"))
        ids = transform_output.transform_features_layer()(
            tf.io.parse_example(raw, export.raw_input_spec(transform_output))
        )
        expected = reference({name: ids[name] for name in features.FEATURE_NAMES}, task=task)[task].numpy()
        np.testing.assert_allclose(scores, expected, atol=1e-5)
        # The joint rank model of the same push scores both tasks as the network does.
        assert os.listdir(os.path.join(finished_run.serving_dir, export.RANK_MODEL)) == ["1"]
        rank = tf.saved_model.load(os.path.join(finished_run.serving_dir, export.RANK_MODEL, "1"))
        joint = rank.signatures["serving_default"](examples=tf.constant(raw), rank_weights=tf.constant([1.0, 1.0, 1.0]))
        np.testing.assert_allclose(joint[task].numpy(), expected, atol=1e-5)


def test_a_model_under_the_bounds_is_not_blessed_and_not_pushed(finished_run):
    """Runs last: a rerun with a CTR AUC bound no model meets reuses the cached components."""
    strict = dataclasses.replace(finished_run, min_ctr_auc=0.99)
    local_runner.run(strict)
    steps = {step.component: step.state for step in local_runner.last_run_steps(strict)}
    assert steps["MaskSearch"] == steps["SparseSharingTrainer"] == "CACHED"
    assert os.path.exists(os.path.join(_latest(strict, "Evaluator", "blessing"), "NOT_BLESSED"))
    assert steps["TaskPusher"] == "COMPLETE"
    for task in ("ctr", "cvr"):
        assert os.listdir(os.path.join(strict.serving_dir, task)) == ["1"]  # nothing new pushed
