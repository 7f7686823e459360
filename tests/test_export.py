"""The per-task exports: layout, metadata, compaction, matmul paths and exactness."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from lt4rec.models import export, masks


def test_served_models_score_as_the_trained_network(served_models):
    raw = served_models.raw_examples[:50]
    for task in ("ctr", "cvr"):
        path = os.path.join(served_models.base_path, task, "1")
        loaded = tf.saved_model.load(path)
        scores = loaded.signatures["serving_default"](examples=tf.constant(raw))[task].numpy()
        np.testing.assert_allclose(scores, served_models.expected(task, raw), atol=1e-5)
        metadata = export.read_metadata(path)
        assert metadata["task"] == task and metadata["output"] == task
        assert [layer["path"] for layer in metadata["layers"]] and all(
            layer["path"] in (export.DENSE, export.SPARSE) for layer in metadata["layers"]
        )


@pytest.mark.parametrize("matmul", [export.DENSE, export.SPARSE])
def test_both_matmul_paths_score_the_same(served_models, tmp_path, matmul):
    raw = served_models.raw_examples[:64]
    path = str(tmp_path / matmul)
    task_network = export.export_task_model(served_models.model, "cvr", served_models.transform_output, path, matmul=matmul)
    assert [layer.path for layer in task_network.layer_paths] == [matmul, matmul]
    loaded = tf.saved_model.load(path)
    variables = {v.name for v in loaded.signatures["serving_default"].variables}
    assert any("indices" in name for name in variables) == (matmul == export.SPARSE)
    scores = loaded.signatures["serving_default"](examples=tf.constant(raw))["cvr"].numpy()
    np.testing.assert_allclose(scores, served_models.expected("cvr", raw), atol=1e-5)


def test_compaction_keeps_only_units_that_reach_the_score(served_models):
    model = served_models.model
    folded = [layer.folded("ctr") for layer in masks.masked_layers(model)]
    task_network = export.TaskNetwork(model, "ctr", compact=True, matmul=export.DENSE)
    # By hand: a unit lives if it has a kept input (or bias) and a kept output, back to front.
    kernels = [kernel for kernel, _ in folded] + [model.heads["ctr"].kernel.numpy()]
    widths = []
    live_next = np.ones(kernels[-1].shape[1], dtype=bool)
    for index in reversed(range(len(folded))):
        kernel, bias = folded[index]
        fed = np.any(kernel != 0, axis=0) | (bias != 0)
        feeds = np.any(kernels[index + 1][:, live_next] != 0, axis=1)
        live_next = fed & feeds
        widths.insert(0, int(live_next.sum()))
    assert task_network.layer_widths == widths
    assert widths[0] < model.config.hidden_units[0]  # the fixture's CTR mask drops whole units
    held = sum(int(np.count_nonzero(kernel.numpy())) for kernel in task_network.kernels[:-1])
    assert task_network.kept_weights == held <= sum(int(np.count_nonzero(kernel)) for kernel, _ in folded)


def test_dead_units_are_removed_in_both_directions():
    kernels = [np.array([[1.0, 0.0, 2.0], [1.0, 0.0, 0.0]]), np.array([[1.0], [1.0], [0.0]])]
    biases = [np.zeros(3), np.zeros(1)]
    compact, _ = export._drop_dead_units(kernels, biases)
    # unit 1 has no input, unit 2 no output: only unit 0 is left.
    assert compact[0].tolist() == [[1.0], [1.0]] and compact[1].tolist() == [[1.0]]


def test_measured_choice_is_recorded_with_its_timings():
    rng = np.random.default_rng(0)
    very_sparse = rng.normal(size=(256, 128)) * (rng.random((256, 128)) < 0.02)
    choice = export.choose_matmul_path(very_sparse.astype(np.float32), batch=200, repeats=5)
    assert choice.dense_us > 0 and choice.sparse_us > 0 and choice.path in (export.DENSE, export.SPARSE)
    assert choice.density == pytest.approx(np.count_nonzero(very_sparse) / very_sparse.size)
    dense = export.choose_matmul_path(rng.normal(size=(64, 32)).astype(np.float32), batch=200)
    assert dense.path == export.DENSE and dense.dense_us is None  # too dense to try
