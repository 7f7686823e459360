"""Reduced-precision embedding tables in the exports: float16, and int8 with a per-row scale.

The exported scores are checked against an independent computation: the trained network's
copy whose tables were rounded by hand here (numpy), run as trained; and the stored bytes
against the tables' shapes. So are the pipeline's: the models TaskPusher pushes, and the
Trainer's serving model that the Evaluator scores, with the pipeline's `embedding_storage`.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from lt4rec import features
from lt4rec.models import export, layers, network, trainer
from lt4rec.models.config import MMOE, SINGLE_TASK, SPARSE_SHARING, TASKS, NetworkConfig
from lt4rec.pipeline import configs
from lt4rec.pipeline import pipeline as pipeline_lib
from tests.helpers import push_blessed

REDUCED = (export.FLOAT16, export.INT8)
STORED_DTYPES = {export.FLOAT16: {tf.float16}, export.INT8: {tf.int8, tf.float32}}  # int8: values and row scales


def _by_hand(table: np.ndarray, storage: str) -> np.ndarray:
    """The float32 table the lookup must read: rounded to half precision, or int8 per row and back."""
    table = np.asarray(table, np.float32)
    if storage == export.FLOAT32:
        return table
    if storage == export.FLOAT16:
        return table.astype(np.float16).astype(np.float32)
    scale = np.max(np.abs(table), axis=1, keepdims=True) / np.float32(127)
    levels = np.round(table / np.where(scale == 0, np.float32(1), scale))
    assert np.abs(levels).max() <= 127
    return levels.astype(np.int8).astype(np.float32) * scale


def test_unknown_storage_is_refused():
    with pytest.raises(ValueError, match="embedding_storage"):
        export.quantize_table(np.zeros((2, 2), np.float32), "int4")
    assert export.EMBEDDING_STORAGE == export.FLOAT32  # the default keeps the trained tables


def test_quantized_tables_read_back_as_rounded_by_hand():
    rng = np.random.default_rng(0)
    table = rng.normal(0, 0.05, size=(300, 16)).astype(np.float32)
    table[7] = 0.0  # a row of zeros: scale 0, reads back as zeros
    table[8, 3] = 5.0  # one large entry: its row's scale, not the table's
    for storage in export.EMBEDDING_STORAGES:
        values, scales = export.quantize_table(table, storage)
        read = export.dequantize_table(values, scales)
        np.testing.assert_array_equal(read, _by_hand(table, storage))
        assert read.dtype == np.float32 and read.shape == table.shape
    values, scales = export.quantize_table(table, export.INT8)
    assert values.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (300,)
    assert np.abs(values).max(axis=1)[np.arange(300) != 7].min() == 127  # every row uses its whole range
    assert scales[7] == 0 and not values[7].any()
    error = np.abs(export.dequantize_table(values, scales) - table)
    assert (error <= scales[:, np.newaxis] / 2 + 1e-9).all()  # at most half a step, per row


def test_stored_table_looks_up_as_the_dequantized_table():
    rng = np.random.default_rng(1)
    table = rng.normal(0, 0.1, size=(50, 4)).astype(np.float32)
    ids = tf.constant(rng.integers(0, 50, size=(6, 3)), tf.int64)
    for storage in export.EMBEDDING_STORAGES:
        stored = export.StoredTable(table, storage)
        rows = stored(ids).numpy()
        assert rows.dtype == np.float32 and rows.shape == (6, 3, 4)
        np.testing.assert_array_equal(rows, _by_hand(table, storage)[ids.numpy()])
        assert {v.dtype for v in stored.variables} <= STORED_DTYPES.get(storage, {tf.float32})
        assert not stored.trainable_variables


def _transformed(transform_output, raw: list[bytes]) -> dict[str, tf.Tensor]:
    parsed = tf.io.parse_example(raw, export.raw_input_spec(transform_output))
    ids = transform_output.transform_features_layer()(parsed)
    return {name: ids[name] for name in features.FEATURE_NAMES}


def _id_tables(model: network.RankingNetwork) -> list[tf.keras.layers.Embedding]:
    return [table for m in model.submodules if isinstance(m, layers.FieldEmbeddings) for table in m.tables.values()]


def _rounded_copy(model: network.RankingNetwork, inputs: dict, storage: str) -> network.RankingNetwork:
    """A copy of the trained network (masks included) with every id table rounded by hand."""
    copy = network.RankingNetwork(model.feature_config, model.config)
    copy.build_for({name: values[:2] for name, values in inputs.items()})
    copy.set_weights(model.get_weights())
    for table in _id_tables(copy):
        table.set_weights([_by_hand(table.get_weights()[0], storage)])
    return copy


def _spread_tables(model: network.RankingNetwork) -> None:
    """Spreads the tables wider than one pass of training leaves them (noise, seeded), so that
    rounding them moves the scores well beyond the tolerance."""
    rng = np.random.default_rng(0)
    for table in _id_tables(model):
        weights = table.get_weights()[0]
        table.set_weights([weights + rng.normal(0, 0.3, weights.shape).astype(np.float32)])


def _embedding_variables(signature, storage: str) -> list[tf.Variable]:
    """The variables of a loaded signature that hold id tables (and int8's scales)."""
    if storage == export.FLOAT32:
        return [v for v in signature.variables if v.name.endswith("embeddings:0")]
    return [v for v in signature.variables if v.name.endswith(("_values:0", "_scales:0"))]


@pytest.mark.slow
@pytest.mark.parametrize("storage", REDUCED)
def test_task_and_rank_models_score_as_the_network_on_rounded_tables(served_models, tmp_path, storage):
    transform_output = served_models.transform_output
    raw = served_models.raw_examples[:200]
    inputs = _transformed(transform_output, raw)
    # The fixture's network (its masks fold and compact), tables spread wider than one pass of
    # training leaves them, so that rounding them moves the scores well beyond the tolerance.
    model = _rounded_copy(served_models.model, inputs, export.FLOAT32)
    for task in ("ctr", "cvr"):  # the copy is the trained network
        np.testing.assert_allclose(model(inputs, task=task)[task], served_models.expected(task, raw), atol=1e-6)
    _spread_tables(model)
    unrounded = {task: model(inputs, task=task)[task].numpy() for task in ("ctr", "cvr")}
    copy = _rounded_copy(model, inputs, storage)
    expected = {task: copy(inputs, task=task)[task].numpy() for task in ("ctr", "cvr")}

    rank = export.export_rank_model(model, transform_output, str(tmp_path / "rank"), embedding_storage=storage)
    loaded_rank = tf.saved_model.load(str(tmp_path / "rank"))
    ranked = loaded_rank.signatures[export.SCORES_SIGNATURE](examples=tf.constant(raw))
    for task in ("ctr", "cvr"):
        path = str(tmp_path / task)
        task_network = export.export_task_model(model, task, transform_output, path, embedding_storage=storage)
        loaded = tf.saved_model.load(path)
        scores = loaded.signatures["serving_default"](examples=tf.constant(raw))[task].numpy()
        np.testing.assert_allclose(scores, expected[task], atol=1e-5)
        np.testing.assert_allclose(ranked[task].numpy(), expected[task], atol=1e-5)
        moved = np.abs(scores - unrounded[task]).max()  # not vacuous: the rounding moves the scores
        assert moved > (1e-4 if storage == export.INT8 else 1e-6), moved
        metadata = export.read_metadata(path)
        assert metadata["embedding_storage"] == storage and metadata["embedding_bytes"] == task_network.embedding_bytes
        stored = _embedding_variables(loaded.signatures["serving_default"], storage)
        assert stored and {v.dtype for v in stored} == STORED_DTYPES[storage]
        assert not [v for v in loaded.signatures["serving_default"].variables if v.name.endswith("embeddings:0")]
    metadata = export.read_metadata(str(tmp_path / "rank"))
    assert metadata["embedding_storage"] == storage and metadata["embedding_bytes"] == rank.embedding_bytes

    # A ranking request's context goes through the same stored tables.
    first = tf.train.Example.FromString(raw[0])
    context = tf.train.Example()
    for name in features.CONTEXT_FEATURE_NAMES:
        context.features.feature[name].CopyFrom(first.features.feature[name])
    whole = []
    for record in raw[1:31]:
        example = tf.train.Example.FromString(record)
        example.MergeFrom(context)
        whole.append(example.SerializeToString())
    in_context = loaded_rank.signatures[export.CONTEXT_SIGNATURE](
        context=tf.constant(context.SerializeToString()),
        examples=tf.constant(raw[1:31]),
        rank_weights=tf.constant([1.0, 1.0, 0.0]),
    )
    whole_inputs = _transformed(transform_output, whole)
    for task in ("ctr", "cvr"):
        np.testing.assert_allclose(in_context[task].numpy(), copy(whole_inputs, task=task)[task].numpy(), atol=1e-5)


@pytest.mark.slow
def test_stored_tables_shrink_and_float32_stays_as_trained(served_models, tmp_path):
    model, transform_output = served_models.model, served_models.transform_output
    raw = served_models.raw_examples[:50]
    tables = {name: table.embeddings.numpy() for name, table in model.embeddings.tables.items()}
    cells = sum(table.size for table in tables.values())
    rows = sum(table.shape[0] for table in tables.values())
    expected_bytes = {export.FLOAT32: 4 * cells, export.FLOAT16: 2 * cells, export.INT8: cells + 4 * rows}
    variables_bytes = {}
    for storage in export.EMBEDDING_STORAGES:
        path = str(tmp_path / storage)
        task_network = export.export_task_model(
            model, "ctr", transform_output, path, matmul=export.DENSE, embedding_storage=storage
        )  # (dense matmuls: the same kernels for every storage, whatever a timing would choose)
        assert task_network.embedding_bytes == expected_bytes[storage]
        assert export.read_metadata(path)["embedding_bytes"] == expected_bytes[storage]
        loaded = tf.saved_model.load(path)  # (kept: a signature does not keep its variables alive)
        signature = loaded.signatures["serving_default"]
        stored = _embedding_variables(signature, storage)
        assert sum(int(v.shape.num_elements()) * v.dtype.size for v in stored) == expected_bytes[storage]
        variables_bytes[storage] = _checkpoint_bytes(os.path.join(path, "variables"))
        if storage == export.FLOAT32:  # the trained tables, bit for bit, but for zeros at the missing id
            served = {name: table.copy() for name, table in tables.items()}
            for table in served.values():
                table[features.MISSING_ID] = 0.0
            assert sorted(v.numpy().tobytes() for v in stored) == sorted(t.tobytes() for t in served.values())
            np.testing.assert_allclose(
                signature(examples=tf.constant(raw))["ctr"].numpy(), served_models.expected("ctr", raw), atol=1e-5
            )
    default = export.read_metadata(os.path.join(served_models.base_path, "ctr", "1"))
    assert default["embedding_storage"] == export.FLOAT32 and default["embedding_bytes"] == expected_bytes["float32"]
    # On disk the checkpoint's tensors shrink by exactly what the tables save, its files by about as much.
    for storage in REDUCED:
        saved = {
            kind: variables_bytes[export.FLOAT32][kind] - variables_bytes[storage][kind]
            for kind in ("tensors", "files")
        }
        assert saved["tensors"] == expected_bytes[export.FLOAT32] - expected_bytes[storage]
        assert saved["files"] == pytest.approx(saved["tensors"], rel=0.1)


def _checkpoint_bytes(folder: str) -> dict[str, int]:
    """A SavedModel's `variables/`: the bytes of its numeric tensors, and of its files."""
    reader = tf.train.load_checkpoint(os.path.join(folder, "variables"))
    dtypes, shapes = reader.get_variable_to_dtype_map(), reader.get_variable_to_shape_map()
    tensors = sum(int(np.prod(shapes[name])) * dtype.size for name, dtype in dtypes.items() if dtype != tf.string)
    return {
        "tensors": tensors,
        "files": sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)),
    }


SMALL = dict(embedding_dim=8, hidden_units=(32, 16), expert_units=(16, 8), tower_units=(8,))


def _dense_network(variant: str, inputs: dict) -> network.RankingNetwork:
    """A small unmasked network of `variant`, its weights moved away from the initialisation (seeded)."""
    tf.keras.utils.set_random_seed(5)
    model = network.RankingNetwork(features.scaled_config(0.001), NetworkConfig(variant=variant, **SMALL))
    model.build_for(inputs)
    for variable in model.trainable_variables:
        variable.assign(
            variable + tf.random.stateless_normal(variable.shape, seed=[len(variable.name), 2], stddev=0.05)
        )
    return model


@pytest.mark.slow
@pytest.mark.parametrize("variant", [MMOE, SINGLE_TASK])
def test_dense_variants_store_their_tables_too(tiny_transform, tmp_path, variant):
    transform_output = tiny_transform.transform_output
    raw = tiny_transform.raw_examples[:64]
    inputs = _transformed(transform_output, raw)
    model = _dense_network(variant, inputs)
    copy = _rounded_copy(model, inputs, export.INT8)
    for task in ("ctr", "cvr"):
        path = str(tmp_path / task)
        float32 = export.DenseTaskModel(model, task)
        exported = export.export_task_model(model, task, transform_output, path, embedding_storage=export.INT8)
        loaded = tf.saved_model.load(path)
        signature = loaded.signatures["serving_default"]
        np.testing.assert_allclose(
            signature(examples=tf.constant(raw))[task].numpy(), copy(inputs, task=task)[task].numpy(), atol=1e-5
        )
        metadata = export.read_metadata(path)
        assert metadata["embedding_storage"] == export.INT8
        # The trained parameters and the MLP are as the float32 export has them; only the tables' bytes shrink.
        assert (metadata["parameters"], metadata["embedding_parameters"]) == (
            float32.parameters,
            float32.embedding_parameters,
        )
        assert metadata["layer_widths"] == float32.layer_widths
        stored = _embedding_variables(signature, export.INT8)
        assert {v.dtype for v in stored} == {tf.int8, tf.float32}
        assert not [v for v in signature.variables if v.name.endswith("embeddings:0")]
        assert exported.embedding_bytes == sum(int(v.shape.num_elements()) * v.dtype.size for v in stored)
        rows = sum(int(v.shape[0]) for v in stored if v.dtype == tf.int8)
        assert exported.embedding_bytes == float32.embedding_parameters + 4 * rows  # a byte a weight, 4 a row
        assert float32.embedding_bytes == 4 * float32.embedding_parameters
        if variant == SINGLE_TASK:  # each task its own tables: the other task's are not saved
            assert rows == sum(int(v.shape[0]) for v in float32.kept if v.name.endswith("embeddings:0"))


def test_the_pipeline_gives_its_storage_to_the_trainer_and_the_pusher(tiny_logs):
    """One setting for both: the Trainer's serving model (what the Evaluator scores) and the pushed models."""
    settings = configs.PipelineSettings(
        data_root=tiny_logs, pipeline_root="/tmp/x", serving_dir="/tmp/y", embedding_storage=export.INT8
    )
    components = {component.id: component for component in pipeline_lib.create_components(settings)}
    trainer_config = json.loads(components["SparseSharingTrainer"].exec_properties["custom_config"])
    assert trainer_config[trainer.EMBEDDING_STORAGE_KEY] == export.INT8
    assert components["TaskPusher"].exec_properties["embedding_storage"] == export.INT8


@pytest.mark.slow
def test_task_pusher_pushes_models_with_the_storage_it_is_given(served_models, tmp_path):
    """TaskPusher's executor, as the pipeline runs it, on a blessed model: every pushed model stores int8."""
    transform_output = served_models.transform_output
    raw = served_models.raw_examples[:200]
    inputs = _transformed(transform_output, raw)
    model = _rounded_copy(served_models.model, inputs, export.FLOAT32)
    _spread_tables(model)
    unrounded = {task: model(inputs, task=task)[task].numpy() for task in TASKS}
    copy = _rounded_copy(model, inputs, export.INT8)
    expected = {task: copy(inputs, task=task)[task].numpy() for task in TASKS}

    serving_dir = str(tmp_path / "serving")
    pushed = push_blessed(model, transform_output, str(tmp_path), serving_dir, embedding_storage=export.INT8)
    assert pushed.get_int_custom_property("pushed") == 1
    for name in (*TASKS, export.RANK_MODEL):
        path = os.path.join(serving_dir, name, "1")
        assert export.read_metadata(path)["embedding_storage"] == export.INT8
        loaded = tf.saved_model.load(path)  # (kept: a signature does not keep its variables alive)
        signature = loaded.signatures[export.SCORES_SIGNATURE if name == export.RANK_MODEL else "serving_default"]
        scores = signature(examples=tf.constant(raw))
        for task in TASKS if name == export.RANK_MODEL else (name,):
            np.testing.assert_allclose(scores[task].numpy(), expected[task], atol=1e-5)
            assert np.abs(scores[task].numpy() - unrounded[task]).max() > 1e-4  # not the float32 tables
        assert {v.dtype for v in _embedding_variables(signature, export.INT8)} == {tf.int8, tf.float32}
    assert pushed.get_string_custom_property("embedding_storage") == export.INT8  # in ML Metadata too


@pytest.mark.slow
@pytest.mark.parametrize("variant", [SPARSE_SHARING, MMOE])
def test_the_evaluators_model_scores_the_stored_tables(served_models, tiny_transform, tmp_path, variant):
    """The Trainer's serving model, which the Evaluator scores: both heads, over the tables as pushed."""
    if variant == SPARSE_SHARING:  # masks folded and compacted, as TaskPusher pushes them
        transform_output, raw = served_models.transform_output, served_models.raw_examples[:200]
        inputs = _transformed(transform_output, raw)
        model = _rounded_copy(served_models.model, inputs, export.FLOAT32)
    else:
        transform_output, raw = tiny_transform.transform_output, tiny_transform.raw_examples[:200]
        inputs = _transformed(transform_output, raw)
        model = _dense_network(variant, inputs)
    _spread_tables(model)
    copy = _rounded_copy(model, inputs, export.INT8)
    path = str(tmp_path / "serving")
    export.export_serving_model(model, transform_output, path, embedding_storage=export.INT8)
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["serving_default"]
    scores = signature(examples=tf.constant(raw))
    assert set(scores) == set(TASKS)
    for task in TASKS:
        np.testing.assert_allclose(scores[task].numpy(), copy(inputs, task=task)[task].numpy(), atol=1e-5)
        assert np.abs(scores[task].numpy() - model(inputs, task=task)[task].numpy()).max() > 1e-4
    assert {v.dtype for v in _embedding_variables(signature, export.INT8)} == {tf.int8, tf.float32}
    assert not [v for v in signature.variables if v.name.endswith("embeddings:0")]
