"""The per-task exports: layout, metadata, compaction, matmul paths and exactness."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import tensorflow as tf

from lt4rec import features
from lt4rec.models import export, masks, network
from lt4rec.models.config import PLE, SHARED_BOTTOM, SINGLE_TASK, NetworkConfig
from tests.helpers import push_blessed

pytestmark = pytest.mark.slow


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
    task_network = export.export_task_model(
        served_models.model, "cvr", served_models.transform_output, path, matmul=matmul
    )
    assert [layer.path for layer in task_network.layer_paths] == [matmul, matmul]
    loaded = tf.saved_model.load(path)
    variables = {v.name for v in loaded.signatures["serving_default"].variables}
    assert any("indices" in name for name in variables) == (matmul == export.SPARSE)
    scores = loaded.signatures["serving_default"](examples=tf.constant(raw))["cvr"].numpy()
    np.testing.assert_allclose(scores, served_models.expected("cvr", raw), atol=1e-5)


@pytest.mark.parametrize("matmul", [export.DENSE, export.SPARSE])
def test_task_pusher_multiplies_every_hidden_layer_as_it_is_told(served_models, tmp_path, matmul):
    """The pipeline's serving_matmul, forced (for servers on another CPU): every pushed model's layers, same scores."""
    serving_dir = str(tmp_path / "serving")
    pushed = push_blessed(
        served_models.model, served_models.transform_output, str(tmp_path), serving_dir, matmul=matmul
    )
    raw = served_models.raw_examples[:64]
    for name in ("ctr", "cvr", export.RANK_MODEL):
        path = os.path.join(serving_dir, name, "1")
        metadata = export.read_metadata(path)
        towers = list(metadata["tasks"].values()) if name == export.RANK_MODEL else [metadata]
        paths = [layer["path"] for tower in towers for layer in tower["layers"]]
        assert len(paths) == 2 * len(towers) and set(paths) == {matmul}
        signature = export.SCORES_SIGNATURE if name == export.RANK_MODEL else "serving_default"
        scores = tf.saved_model.load(path).signatures[signature](examples=tf.constant(raw))
        for task in ("ctr", "cvr") if name == export.RANK_MODEL else (name,):
            np.testing.assert_allclose(scores[task].numpy(), served_models.expected(task, raw), atol=1e-5)
    assert pushed.get_string_custom_property("matmul") == matmul


def _mlp_scores(kernels: list[np.ndarray], biases: list[np.ndarray], hidden: np.ndarray) -> np.ndarray:
    for kernel, bias in zip(kernels[:-1], biases[:-1]):
        hidden = np.maximum(hidden @ kernel + bias, 0)
    return hidden @ kernels[-1] + biases[-1]


def test_compaction_keeps_only_units_that_reach_the_score(served_models):
    """Checked by behaviour: the compact MLP scores as the folded one, and removing any unit it
    kept changes the score."""
    model = served_models.model
    folded = [layer.folded("ctr") for layer in masks.masked_layers(model)]
    head = (model.heads["ctr"].kernel.numpy(), model.heads["ctr"].bias.numpy())
    task_network = export.TaskNetwork(model, "ctr", compact=True, matmul=export.DENSE)
    compact_kernels = task_network.folded_kernels()
    compact_biases = [bias.numpy() for bias in task_network.biases]
    inputs = np.random.default_rng(0).normal(size=(256, folded[0][0].shape[0])).astype(np.float32)
    full = _mlp_scores([k for k, _ in folded] + [head[0]], [b for _, b in folded] + [head[1]], inputs)
    np.testing.assert_allclose(_mlp_scores(compact_kernels, compact_biases, inputs), full, rtol=1e-5, atol=1e-5)
    for index, width in enumerate(task_network.layer_widths):
        for unit in range(width):
            kernels, biases = list(compact_kernels), list(compact_biases)
            kernels[index] = kernels[index].copy()
            kernels[index][:, unit] = 0
            biases[index] = biases[index].copy()
            biases[index][unit] = 0
            assert (
                np.abs(_mlp_scores(kernels, biases, inputs) - full).max() > 1e-6
            ), f"layer {index} unit {unit} does nothing"
    assert task_network.layer_widths[0] < model.config.hidden_units[0]  # the fixture's CTR mask drops whole units
    held = sum(int(np.count_nonzero(kernel)) for kernel in task_network.folded_kernels()[:-1])
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


def test_matmul_paths_are_timed_in_cpu_time_not_wall_time():
    """`lt4rec serve` runs an op on one thread and is bound by its cores under load: what a
    path costs is its CPU time over every thread, and time spent waiting costs nothing. (By
    the wall clock, a dense matmul split over the exporting process's cores looked cheaper
    than the sparse one that costs less CPU.)"""
    waiting = tf.function(lambda: tf.py_function(lambda: time.sleep(0.02) or 0.0, [], tf.float32))
    assert export._best_time(waiting, repeats=3) < 10_000  # microseconds; the wall clock says at least 20,000


SMALL = dict(embedding_dim=8, hidden_units=(32, 16), ctr_tower_units=(16, 8), expert_units=(16, 8), tower_units=(8,))
BOTH = ("ctr", "cvr")


def _transformed(transform_output, raw: list[bytes]) -> dict[str, tf.Tensor]:
    parsed = tf.io.parse_example(raw, export.raw_input_spec(transform_output))
    ids = transform_output.transform_features_layer()(parsed)
    return {name: ids[name] for name in features.FEATURE_NAMES}


def _read_by(model: network.RankingNetwork, inputs: dict, task: str) -> set[str]:
    """The names of the variables `task`'s forward pass has a gradient for."""
    with tf.GradientTape() as tape:
        score = tf.reduce_sum(model(inputs, task=task)[task])
    gradients = tape.gradient(score, model.trainable_variables)
    return {v.name for v, g in zip(model.trainable_variables, gradients) if g is not None}


@pytest.mark.parametrize(
    "variant, tasks",
    [
        (network.LAYER_SHARING, BOTH),
        (network.MMOE, BOTH),
        (PLE, BOTH),
        (network.ESMM, BOTH),
        (SINGLE_TASK, BOTH),
        (SHARED_BOTTOM, BOTH),
    ],
)
def test_dense_variants_export_each_task_exactly_and_only_what_it_reads(tiny_transform, tmp_path, variant, tasks):
    tf.keras.utils.set_random_seed(11)
    model = network.RankingNetwork(features.scaled_config(0.001), NetworkConfig(variant=variant, tasks=tasks, **SMALL))
    transform_output = tiny_transform.transform_output
    raw = tiny_transform.raw_examples[:64]
    inputs = _transformed(transform_output, raw)
    model.build_for(inputs)
    for variable in model.trainable_variables:  # away from the initialisation (zero biases)
        variable.assign(
            variable + tf.random.stateless_normal(variable.shape, seed=[len(variable.name), 1], stddev=0.05)
        )
    everything = {v.name for v in model.trainable_variables}

    for task in tasks:
        expected = model(inputs, task=task)[task].numpy()
        path = str(tmp_path / task)
        exported = export.export_task_model(model, task, transform_output, path)
        loaded = tf.saved_model.load(path)
        scores = loaded.signatures["serving_default"](examples=tf.constant(raw))
        assert set(scores) == {task}
        np.testing.assert_allclose(scores[task].numpy(), expected, atol=1e-5)
        saved = {v.name for v in loaded.signatures["serving_default"].variables if v.name in everything}
        assert saved == _read_by(model, inputs, task)  # what the task reads, nothing else
        metadata = export.read_metadata(path)
        assert metadata["task"] == task and metadata["variant"] == variant
        context, stripped, whole = _request(raw)
        in_context = loaded.signatures[export.CONTEXT_SIGNATURE](
            context=tf.constant(context), examples=tf.constant(stripped)
        )
        np.testing.assert_allclose(
            in_context[task].numpy(), model(_transformed(transform_output, whole), task=task)[task].numpy(), atol=1e-5
        )
        assert metadata["parameters"] == sum(
            int(v.shape.num_elements()) for v in model.trainable_variables if v.name in saved
        )
        assert all(layer["path"] == export.DENSE for layer in metadata["layers"]) and exported.layer_widths

        other = {"ctr": "cvr", "cvr": "ctr"}[task]
        if variant == PLE:  # below the last level the shared gate mixes the other task's experts
            assert {name for name in saved if other in name} == {
                n for n in everything if n.split("/")[1:3] == ["extraction_0", f"{other}_experts"]
            }
        elif variant != SHARED_BOTTOM and len(tasks) > 1:
            assert not [name for name in saved if other in name]
        if variant == network.MMOE:  # embeddings, experts, the task's gate, tower and head
            assert {name.split("/")[1] for name in saved} == {
                "field_embeddings",
                "experts",
                f"{task}_gate",
                f"{task}_tower_0",
                f"{task}_head",
            }

    if variant not in (network.MMOE, PLE, SINGLE_TASK, network.LAYER_SHARING):
        return  # (each export takes seconds: the rest are like these)
    # The multi-task model the Evaluator scores: every head, as the network.
    path = str(tmp_path / "serving")
    export.export_serving_model(model, transform_output, path)
    scores = tf.saved_model.load(path).signatures["serving_default"](examples=tf.constant(raw))
    outputs = model(inputs)
    assert set(scores) == set(tasks)
    for task in tasks:
        np.testing.assert_allclose(scores[task].numpy(), outputs[task].numpy(), atol=1e-5)


def _request(raw_examples: list[bytes], candidates: int = 30) -> tuple[bytes, list[bytes], list[bytes]]:
    """A ranking request from log rows: the first row's context, the next rows' candidate features.

    Returns (context tf.Example, candidate-only tf.Examples, whole tf.Examples with the
    request's context on every candidate: what the network must score the same).
    """
    first = tf.train.Example.FromString(raw_examples[0])
    context = tf.train.Example()
    for name in features.CONTEXT_FEATURE_NAMES:
        context.features.feature[name].CopyFrom(first.features.feature[name])
    stripped, whole = [], []
    for record in raw_examples[1 : 1 + candidates]:
        example = tf.train.Example.FromString(record)
        for name in features.CONTEXT_FEATURE_NAMES:
            del example.features.feature[name]
        stripped.append(example.SerializeToString())
        example.MergeFrom(context)
        whole.append(example.SerializeToString())
    return context.SerializeToString(), stripped, whole


def test_context_signature_scores_each_candidate_as_if_it_carried_the_context(served_models):
    context, stripped, whole = _request(served_models.raw_examples)
    assert len({record for record in whole}) == len(whole)  # different candidates, one context
    for task in ("ctr", "cvr"):
        loaded = tf.saved_model.load(os.path.join(served_models.base_path, task, "1"))
        scores = loaded.signatures[export.CONTEXT_SIGNATURE](
            context=tf.constant(context), examples=tf.constant(stripped)
        )
        np.testing.assert_allclose(scores[task].numpy(), served_models.expected(task, whole), atol=1e-5)
        # Context features on the candidates are ignored: the request's are scored.
        unstripped = loaded.signatures[export.CONTEXT_SIGNATURE](
            context=tf.constant(context), examples=tf.constant(served_models.raw_examples[1:31])
        )
        np.testing.assert_allclose(unstripped[task].numpy(), scores[task].numpy(), atol=1e-6)


def _with_values(record: bytes, name: str, values: list[bytes]) -> bytes:
    example = tf.train.Example.FromString(record)
    example.features.feature[name].bytes_list.value[:] = values
    return example.SerializeToString()


def test_whole_examples_of_one_request_compute_its_context_once(served_models):
    """A request sent whole (its context on every candidate) has its context's part of the cross
    and of the first layer computed once by serving_default; a candidate whose context differs
    (another user; one more preferred category) makes every row its own, and the scores are
    the trained network's either way."""
    _, _, whole = _request(served_models.raw_examples)
    other_user = [*whole[:-1], _with_values(whole[-1], "FEA_UID", [b"someone-else"])]
    first = tf.train.Example.FromString(whole[0]).features.feature["FEA_UCAT"].bytes_list.value
    more_categories = [*whole[:5], _with_values(whole[5], "FEA_UCAT", [*first, b"another"]), *whole[6:]]
    task_network = export.TaskNetwork(served_models.model, "cvr", compact=True, matmul=export.DENSE)
    for records, request_rows in ((whole, 1), (other_user, len(whole)), (more_categories, len(whole))):
        front = task_network.front(_transformed(served_models.transform_output, records))
        assert front.request_cross.shape[0] == request_rows
        assert front.candidate_cross.shape[0] == len(whole)
        for task in ("ctr", "cvr"):
            loaded = tf.saved_model.load(os.path.join(served_models.base_path, task, "1"))
            scores = loaded.signatures["serving_default"](examples=tf.constant(records))[task].numpy()
            np.testing.assert_allclose(scores, served_models.expected(task, records), atol=1e-5)


def test_sparse_sharing_with_cvr_view_exports_exactly(tiny_transform, tmp_path):
    """CVR's own view of the fields goes into its tower's first layer in the request's and the
    candidates' parts too: task and rank models score as the trained network, with the context
    apart, sent whole on every candidate, or not shared at all."""
    tf.keras.utils.set_random_seed(5)
    config = NetworkConfig(hidden_units=(32, 16), embedding_dim=8, multi_view_dim=2)
    model = network.RankingNetwork(features.scaled_config(0.001), config)
    transform_output = tiny_transform.transform_output
    raw = tiny_transform.raw_examples[:64]
    inputs = _transformed(transform_output, raw)
    model.build_for(inputs)
    for variable in model.trainable_variables:
        variable.assign(
            variable + tf.random.stateless_normal(variable.shape, seed=[len(variable.name), 2], stddev=0.05)
        )
    kernels = masks.get_kernels(model)
    masks.set_task_masks(
        model,
        {
            task: masks.prune_by_magnitude(
                kernels, model.initial_masks(task), 2, 0.5, initial=model.initial_masks(task)
            )
            for task in BOTH
        },
    )
    context, stripped, whole = _request(raw)
    export.export_rank_model(model, transform_output, str(tmp_path / "rank"))
    for task in BOTH:
        export.export_task_model(model, task, transform_output, str(tmp_path / task))
        for name in (task, "rank"):
            signatures = tf.saved_model.load(str(tmp_path / name)).signatures
            weights = {"rank_weights": tf.constant([1.0, 1.0, 0.0])} if name == "rank" else {}
            for records in (raw, whole):
                scores = signatures["serving_default"](examples=tf.constant(records), **weights)[task].numpy()
                expected = model(_transformed(transform_output, records), task=task)[task].numpy()
                np.testing.assert_allclose(scores, expected, atol=1e-5)
            in_context = signatures[export.CONTEXT_SIGNATURE](
                context=tf.constant(context), examples=tf.constant(stripped), **weights
            )[task].numpy()
            np.testing.assert_allclose(in_context, expected, atol=1e-5)


def test_rank_model_scores_both_tasks_and_rankscore_in_one_call(served_models, tmp_path):
    from lt4rec.serving import client

    raw = served_models.raw_examples[:64]
    rank_network = export.export_rank_model(served_models.model, served_models.transform_output, str(tmp_path / "rank"))
    for task in ("ctr", "cvr"):  # the towers are the task models' own
        assert (
            rank_network.towers[task].layer_widths
            == export.read_metadata(os.path.join(served_models.base_path, task, "1"))["layer_widths"]
        )
    loaded = tf.saved_model.load(str(tmp_path / "rank"))
    weights = client.RankWeights(ctr=1.0, cvr=2.0, length=0.5)
    weights_input = tf.constant([weights.ctr, weights.cvr, weights.length], tf.float32)
    outputs = loaded.signatures["serving_default"](examples=tf.constant(raw), rank_weights=weights_input)
    assert set(outputs) == {"ctr", "cvr", export.RANKSCORE_OUTPUT}
    pctr, pcvr = (served_models.expected(task, raw) for task in ("ctr", "cvr"))
    np.testing.assert_allclose(outputs["ctr"].numpy(), pctr, atol=1e-5)
    np.testing.assert_allclose(outputs["cvr"].numpy(), pcvr, atol=1e-5)
    lengths = np.array([client.video_length_seconds(tf.train.Example.FromString(record)) for record in raw])
    np.testing.assert_allclose(
        outputs[export.RANKSCORE_OUTPUT].numpy(), client.rankscore(pctr, pcvr, lengths, weights), rtol=1e-4
    )
    scores = loaded.signatures[export.SCORES_SIGNATURE](examples=tf.constant(raw))  # batch scoring's: examples only
    assert set(scores) == {"ctr", "cvr"}
    np.testing.assert_allclose(scores["ctr"].numpy(), pctr, atol=1e-5)
    np.testing.assert_allclose(scores["cvr"].numpy(), pcvr, atol=1e-5)

    context, stripped, whole = _request(served_models.raw_examples)
    in_context = loaded.signatures[export.CONTEXT_SIGNATURE](
        context=tf.constant(context), examples=tf.constant(stripped), rank_weights=weights_input
    )
    for task in ("ctr", "cvr"):
        np.testing.assert_allclose(in_context[task].numpy(), served_models.expected(task, whole), atol=1e-5)
    assert export.read_metadata(str(tmp_path / "rank"))["tasks"]["ctr"]["task"] == "ctr"
    assert _functions_that_multiply(str(tmp_path / "rank")) == ["_serve_context", "score_rows"]


def _functions_that_multiply(path: str) -> list[str]:
    """The graphs of a SavedModel's function library that hold a matmul (a tower's layer), by traced name."""
    from lt4rec.serving import registry

    return sorted(
        function.signature.name.removeprefix("__inference_").rsplit("_", 1)[0]
        for function in registry.read_saved_model(path).meta_graphs[0].graph_def.library.function
        if any(node.op in ("MatMul", "SparseTensorDenseMatMul") for node in function.node_def)
    )


def test_video_length_in_the_graph_is_the_clients():
    buckets = [[str(b)] for b in range(len(features.DURATION_BUCKET_EDGES_SECONDS) + 1)]
    rows = [*buckets, ["-1"], [], ["abc"], ["11"], ["007"], ["3", "4"]]
    sparse = tf.ragged.constant(rows, dtype=tf.string).to_sparse()
    lengths = export.video_length_seconds(sparse).numpy()
    np.testing.assert_allclose(
        lengths[: len(buckets)], [features.bucket_seconds(b) for b in range(len(buckets))], rtol=1e-6
    )
    tail = lengths[len(buckets) :]
    assert np.isnan(tail[:4]).all()  # missing, none, not a number, past the last bucket
    assert tail[4] == pytest.approx(features.bucket_seconds(7))  # leading zeros, as int() reads them
    assert np.isnan(tail[5])  # two values: no one length (the client refuses it)


def test_every_signature_gets_warm_up_requests_that_tf_serving_can_replay(served_models, tmp_path):
    """assets.extra/tf_serving_warmup_requests, read as TF Serving reads it: a TFRecord of
    PredictionLogs whose requests name each signature and match its inputs, and run on it."""
    from tensorflow_serving.apis import prediction_log_pb2

    from lt4rec.serving import registry

    export.export_rank_model(served_models.model, served_models.transform_output, str(tmp_path / "rank"))
    paths = [os.path.join(served_models.base_path, task, "1") for task in ("ctr", "cvr")] + [str(tmp_path / "rank")]
    for path in paths:
        records = tf.data.TFRecordDataset(os.path.join(path, "assets.extra", "tf_serving_warmup_requests"))
        requests = [
            prediction_log_pb2.PredictionLog.FromString(r).predict_log.request for r in records.as_numpy_iterator()
        ]
        signature_defs = registry.read_saved_model(path).meta_graphs[0].signature_def
        asked = [request.model_spec.signature_name for request in requests]
        assert sorted(set(asked)) == sorted(name for name in signature_defs if not name.startswith("__"))
        assert all(asked.count(name) == 2 for name in asked)  # rows of many users, then of one request
        loaded = tf.saved_model.load(path)
        for request in requests:
            signature_def = signature_defs[request.model_spec.signature_name]
            assert set(request.inputs) == set(signature_def.inputs)
            for alias, proto in request.inputs.items():
                assert proto.dtype == signature_def.inputs[alias].dtype
                if alias == "examples":
                    assert proto.tensor_shape.dim[0].size == 16
            inputs = {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()}
            outputs = loaded.signatures[request.model_spec.signature_name](
                **{alias: tf.constant(value) for alias, value in inputs.items()}
            )
            for name in ("ctr", "cvr"):
                if name in outputs:
                    scores = outputs[name].numpy()
                    assert scores.shape == (16,) and np.all((scores >= 0) & (scores <= 1))
