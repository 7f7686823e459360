"""The network's layers and variants, checked against numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from lt4rec import features
from lt4rec.models import layers, masks, network, training
from lt4rec.models.config import PLE, SHARED_BOTTOM, SINGLE_TASK, NetworkConfig
from tests.helpers import random_transformed

FEATURE_CONFIG = features.scaled_config(0.001)
SMALL = dict(embedding_dim=4, hidden_units=(16, 8), ctr_tower_units=(12, 6), expert_units=(8, 6), tower_units=(5,))


def _inputs(rows: int = 8, seed: int = 0) -> dict[str, tf.Tensor]:
    examples = random_transformed(rows, seed)
    return {name: tf.constant(examples[name]) for name in features.FEATURE_NAMES}


def test_field_embeddings_average_present_ids_and_ignore_missing():
    embeddings = layers.FieldEmbeddings(FEATURE_CONFIG, dim=4)
    inputs = _inputs()
    ids = inputs["FEA_IKEYWORD"].numpy().copy()
    ids[0] = [0] * ids.shape[1]  # no keyword at all
    ids[1, 1:] = 0  # one keyword, the rest padding
    inputs["FEA_IKEYWORD"] = tf.constant(ids)
    inputs["FEA_UID"] = tf.constant(np.where(np.arange(8)[:, None] == 2, 0, inputs["FEA_UID"].numpy()))
    output = embeddings(inputs).numpy()
    assert output.shape == (8, len(features.FEATURE_NAMES), 4)

    keyword_table = embeddings.tables[FEATURE_CONFIG.table_of["FEA_IKEYWORD"].name].embeddings.numpy()
    field = features.FEATURE_NAMES.index("FEA_IKEYWORD")
    for row in range(8):
        present = ids[row][ids[row] != 0]
        expected = keyword_table[present].mean(axis=0) if present.size else np.zeros(4)
        np.testing.assert_allclose(output[row, field], expected, rtol=1e-5, atol=1e-7)
    assert np.all(output[2, features.FEATURE_NAMES.index("FEA_UID")] == 0)  # missing single-valued id


def test_tables_with_zeros_at_the_missing_id_pool_without_masks_to_the_same_numbers():
    """The exports' pooling (`zero_missing_rows`) against the trained layer's, on missing and padded ids."""
    trained = layers.FieldEmbeddings(FEATURE_CONFIG, dim=4)
    inputs = _inputs(rows=32)
    ids = {name: values.numpy().copy() for name, values in inputs.items()}
    ids["FEA_IKEYWORD"][0] = 0  # no keyword at all
    ids["FEA_IKEYWORD"][1, 1:] = 0  # one keyword, the rest padding
    ids["FEA_UID"][2] = 0  # a missing single-valued id
    inputs = {name: tf.constant(values) for name, values in ids.items()}
    expected = trained(inputs).numpy()
    served = layers.FieldEmbeddings(FEATURE_CONFIG, dim=4, zero_missing_rows=True)
    served(inputs)
    tables = {name: table.embeddings.numpy() for name, table in trained.tables.items()}
    for name, table in tables.items():
        assert np.any(table[features.MISSING_ID] != 0)  # as trained: the row is noise the masks hide
        served.tables[name].set_weights([table])
    assert np.any(served(inputs).numpy() != expected)  # the row must be zero for the masks to go
    for name, table in tables.items():
        table[features.MISSING_ID] = 0.0
        served.tables[name].set_weights([table])
    np.testing.assert_array_equal(served(inputs).numpy(), expected)
    assert layers.FieldEmbeddings.from_config(served.get_config()).zero_missing_rows


def test_related_features_share_one_table():
    embeddings = layers.FieldEmbeddings(FEATURE_CONFIG, dim=4)
    embeddings(_inputs())
    assert FEATURE_CONFIG.table_of["FEA_VID"].name == FEATURE_CONFIG.table_of["FEA_SVID"].name
    assert len(embeddings.trainable_variables) == len(FEATURE_CONFIG.tables)


def test_feature_cross_is_every_pairwise_dot_product_with_the_embeddings():
    fields = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    output = layers.FeatureCross()(tf.constant(fields)).numpy()
    assert output.shape == (3, layers.FeatureCross.output_width(5, 4))
    pairs = [np.sum(fields[:, i] * fields[:, j], axis=1) for i in range(5) for j in range(i + 1, 5)]
    np.testing.assert_allclose(output[:, :20], fields.reshape(3, 20), rtol=1e-6)
    np.testing.assert_allclose(output[:, 20:], np.stack(pairs, axis=1), rtol=1e-5, atol=1e-6)


def test_split_feature_cross_is_the_cross_with_the_request_apart():
    """The serving cross in two parts (a request's context fields, the candidates') has the
    training cross's columns; with the context at batch 1 its part is one row for all."""
    request = [features.FEATURE_NAMES.index(name) for name in features.CONTEXT_FEATURE_NAMES]
    candidates = [features.FEATURE_NAMES.index(name) for name in features.CANDIDATE_FEATURE_NAMES]
    rng = np.random.default_rng(0)
    fields = rng.normal(size=(6, len(features.FEATURE_NAMES), 4)).astype(np.float32)
    fields[:, request] = fields[:1, request]  # one request: its context on every candidate
    crossed = layers.FeatureCross()(tf.constant(fields)).numpy()
    request_columns, candidate_columns = layers.FeatureCross.split_columns(request, candidates, dim=4)
    assert sorted(request_columns + candidate_columns) == list(range(crossed.shape[1]))
    for request_rows in (6, 1):
        request_part, candidate_part = layers.FeatureCross.split(
            tf.constant(fields[:request_rows, request]), tf.constant(fields[:, candidates])
        )
        assert request_part.shape[0] == request_rows
        np.testing.assert_allclose(request_part, crossed[:request_rows, request_columns], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(candidate_part, crossed[:, candidate_columns], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "variant, tasks, masked_layers, towers",
    [
        (network.SPARSE_SHARING, ("ctr", "cvr"), 2, 1),
        (network.HARD_SHARING, ("ctr", "cvr"), 0, 2),
        (SHARED_BOTTOM, ("ctr", "cvr"), 0, 1),
        (SINGLE_TASK, ("cvr",), 0, 1),
        (SINGLE_TASK, ("ctr", "cvr"), 0, 2),
        (network.LAYER_SHARING, ("ctr", "cvr"), 0, 1),
        (network.MMOE, ("ctr", "cvr"), 0, 2),
        (PLE, ("ctr", "cvr"), 0, 2),
        (network.ESMM, ("ctr", "cvr"), 0, 2),
    ],
)
def test_variants_predict_each_task_in_range(variant, tasks, masked_layers, towers):
    config = NetworkConfig(variant=variant, tasks=tasks, **SMALL)
    model = network.RankingNetwork(FEATURE_CONFIG, config)
    inputs = _inputs()
    model.build_for(inputs)
    outputs = model(inputs)
    assert set(outputs) == set(tasks)
    for prediction in outputs.values():
        assert prediction.shape == (8,)
        assert np.all((prediction.numpy() > 0) & (prediction.numpy() < 1))
    assert len(masks.masked_layers(model)) == masked_layers
    assert len({id(tower[0]) for tower in model.towers.values()}) == towers


def test_sparse_sharing_tasks_see_their_own_masks_of_one_kernel():
    model = network.RankingNetwork(FEATURE_CONFIG, NetworkConfig(embedding_dim=4, hidden_units=(16, 8)))
    inputs = _inputs()
    model.build_for(inputs)
    before = model(inputs)
    ctr_masks = masks.prune_by_magnitude(masks.get_kernels(model), model.initial_masks("ctr"), 1, 0.5)
    masks.set_task_masks(model, {"ctr": ctr_masks, "cvr": model.initial_masks("cvr")})
    after = model(inputs)
    assert not np.allclose(before["ctr"].numpy(), after["ctr"].numpy())
    np.testing.assert_array_equal(before["cvr"].numpy(), after["cvr"].numpy())  # CVR keeps everything
    assert training.mlp_weight_share(model, "ctr") == pytest.approx(0.5, abs=1e-3)
    assert training.mlp_weight_share(model, "cvr") == 1.0


def test_multi_view_inputs_reach_cvr_only():
    config = NetworkConfig(embedding_dim=4, hidden_units=(16, 8), multi_view_dim=2)
    model = network.RankingNetwork(FEATURE_CONFIG, config)
    inputs = _inputs()
    model.build_for(inputs)
    first = masks.masked_layers(model)[0]
    assert first.layer.kernel.shape[0] == model.shared_input_width + 2 * len(features.FEATURE_NAMES)
    ctr_mask = model.initial_masks("ctr")[first.name]
    assert np.all(ctr_mask[model.shared_input_width :] == 0) and np.all(ctr_mask[: model.shared_input_width] == 1)
    assert np.all(model.initial_masks("cvr")[first.name] == 1)
    # Changing the CVR view's embeddings moves CVR's predictions, never CTR's.
    before = model(inputs)
    for variable in model.cvr_view.trainable_variables:
        variable.assign(variable + 0.5)
    after = model(inputs)
    np.testing.assert_array_equal(before["ctr"].numpy(), after["ctr"].numpy())
    assert not np.allclose(before["cvr"].numpy(), after["cvr"].numpy())


def test_config_round_trips_and_refuses_nonsense():
    config = NetworkConfig(variant=network.HARD_SHARING, hidden_units=(8, 4))
    assert NetworkConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError):
        NetworkConfig(variant="cross_stitch")
    with pytest.raises(ValueError):
        NetworkConfig(variant=SINGLE_TASK, tasks=("ctr", "ctr"))


ALL_VARIANTS = [
    (network.SPARSE_SHARING, ("ctr", "cvr")),
    (network.HARD_SHARING, ("ctr", "cvr")),
    (SHARED_BOTTOM, ("ctr", "cvr")),
    (SINGLE_TASK, ("ctr", "cvr")),
    (network.LAYER_SHARING, ("ctr", "cvr")),
    (network.MMOE, ("ctr", "cvr")),
    (PLE, ("ctr", "cvr")),
    (network.ESMM, ("ctr", "cvr")),
]
OTHER = {"ctr": "cvr", "cvr": "ctr"}


def _other_task_only(model: network.RankingNetwork, task: str) -> set[str]:
    """Variables of the other task by name; PLE's first-level experts of it excepted (its shared gate mixes them)."""
    other = OTHER[task]
    return {
        v.name
        for v in model.trainable_variables
        if other in v.name and not (model.config.variant == PLE and f"extraction_0/{other}_experts/" in v.name)
    }


@pytest.mark.parametrize("variant, tasks", ALL_VARIANTS)
@pytest.mark.parametrize("task", ["ctr", "cvr"])
def test_a_task_forward_reads_every_variable_but_the_other_task_own(variant, tasks, task):
    model = network.RankingNetwork(FEATURE_CONFIG, NetworkConfig(variant=variant, tasks=tasks, **SMALL))
    inputs = _inputs()
    model(inputs, task=task)
    created = {v.name for v in model.trainable_variables}
    model.build_for(inputs)
    # A task's forward creates, and reads, everything but the other task's own variables.
    assert created == {v.name for v in model.trainable_variables} - _other_task_only(model, task)
    with tf.GradientTape() as tape:
        score = tf.reduce_sum(model(inputs, task=task)[task])
    gradients = tape.gradient(score, model.trainable_variables)
    unread = {v.name for v, g in zip(model.trainable_variables, gradients) if g is None}
    assert unread == _other_task_only(model, task)
    if variant in (network.HARD_SHARING, network.ESMM, SINGLE_TASK, network.MMOE):
        assert any("tower" in name or "mlp" in name for name in unread)  # the other task's own layers, untouched


def test_single_task_on_both_tasks_is_two_separate_networks():
    model = network.RankingNetwork(FEATURE_CONFIG, NetworkConfig(variant=SINGLE_TASK, **SMALL))
    inputs = _inputs()
    model.build_for(inputs)
    assert model.embeddings is None and set(model.task_embeddings) == {"ctr", "cvr"}
    assert (
        model.parameter_counts()["embeddings"]
        == 2 * sum(t.size for t in FEATURE_CONFIG.tables) * SMALL["embedding_dim"]
    )
    before = model(inputs)
    for variable in model.task_embeddings["cvr"].trainable_variables:
        variable.assign(variable + 0.5)
    after = model(inputs)
    np.testing.assert_array_equal(before["ctr"].numpy(), after["ctr"].numpy())
    assert not np.allclose(before["cvr"].numpy(), after["cvr"].numpy())
    one = network.RankingNetwork(FEATURE_CONFIG, NetworkConfig(variant=SINGLE_TASK, tasks=("ctr",), **SMALL))
    one.build_for(inputs)
    assert one.task_embeddings is None and set(one(inputs)) == {"ctr"}  # the one-task form as before


def test_layer_sharing_is_the_shared_mlp_with_a_ctr_tower_above_it():
    config = NetworkConfig(variant=network.LAYER_SHARING, **SMALL)
    model = network.RankingNetwork(FEATURE_CONFIG, config)
    model.build_for(_inputs())
    ctr, cvr = model.towers["ctr"], model.towers["cvr"]
    assert ctr[: len(cvr)] == cvr and len(cvr) == len(config.hidden_units)  # the same layer objects
    assert [layer.kernel.shape.as_list() for layer in ctr] == [
        [model.shared_input_width, 16],
        [16, 8],
        [8, 12],
        [12, 6],
    ]
    assert model.heads["cvr"].kernel.shape == (8, 1) and model.heads["ctr"].kernel.shape == (6, 1)
    assert NetworkConfig(variant=network.LAYER_SHARING).ctr_tower_units == (512, 256, 128)  # the paper's tower


def test_mmoe_mixes_its_experts_by_each_task_softmax_gate():
    model = network.RankingNetwork(FEATURE_CONFIG, NetworkConfig(variant=network.MMOE, num_experts=3, **SMALL))
    inputs = _inputs()
    model.build_for(inputs)
    shared = model.cross(model.embeddings(inputs))
    experts = np.stack([expert(shared).numpy() for expert in model.experts.experts], axis=1)  # [batch, 3, 6]
    assert experts.shape == (8, 3, 6)
    outputs = model(inputs)
    for task in ("ctr", "cvr"):
        gate = model.gates[task].probabilities(shared).numpy()
        assert gate.shape == (8, 3) and np.all(gate >= 0)
        np.testing.assert_allclose(gate.sum(axis=1), 1.0, rtol=1e-6)
        hidden = tf.constant(np.einsum("be,bed->bd", gate, experts))
        for layer in model.towers[task]:
            hidden = layer(hidden)
        np.testing.assert_allclose(outputs[task].numpy(), model.heads[task](hidden).numpy()[:, 0], rtol=1e-5, atol=1e-6)


def test_ple_levels_have_customized_gates_that_sum_to_one():
    config = NetworkConfig(variant=PLE, shared_experts=2, task_experts=2, extraction_layers=3, **SMALL)
    model = network.RankingNetwork(FEATURE_CONFIG, config)
    model.build_for(_inputs())
    assert len(model.extraction) == 3 and [level.shared_gate is None for level in model.extraction] == [
        False,
        False,
        True,
    ]
    gates = [layer for layer in model.submodules if isinstance(layer, layers.Gate)]
    assert len(gates) == 3 * 2 + 2  # a gate per task and level, a shared gate below the last level
    for gate in gates:
        experts = 2 * 2 + 2 if "shared_gate" in gate.name else 2 + 2
        assert gate.num_experts == experts
        width = gate.logits.kernel.shape[0]
        probabilities = gate.probabilities(tf.random.stateless_normal([5, width], seed=[1, 2], stddev=3.0)).numpy()
        assert probabilities.shape == (5, experts) and np.all(probabilities >= 0)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_esmm_predicts_pctr_and_pcvr_and_says_so():
    config = NetworkConfig(variant=network.ESMM, **SMALL)
    assert config.esmm and not NetworkConfig(variant=network.HARD_SHARING).esmm
    model = network.RankingNetwork(FEATURE_CONFIG, config)
    model.build_for(_inputs())
    assert model.esmm and not model.masked
    outputs = model(_inputs())
    ctcvr = (outputs["ctr"] * outputs["cvr"]).numpy()  # what the trainer's CTCVR loss sees
    assert np.all((ctcvr > 0) & (ctcvr < outputs["ctr"].numpy()))


@pytest.mark.parametrize("variant, tasks", [*ALL_VARIANTS, (SINGLE_TASK, ("cvr",))])
def test_every_variant_config_round_trips(variant, tasks):
    config = NetworkConfig(variant=variant, tasks=tasks, num_experts=6, shared_experts=3, extraction_layers=1, **SMALL)
    assert NetworkConfig.from_dict(config.to_dict()) == config
    assert NetworkConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # A config written before the later fields existed reads with their defaults.
    old = {
        key: value
        for key, value in NetworkConfig(variant=network.HARD_SHARING).to_dict().items()
        if key in ("variant", "tasks", "embedding_dim", "hidden_units", "multi_view_dim")
    }
    assert NetworkConfig.from_dict(old) == NetworkConfig(variant=network.HARD_SHARING)


@pytest.mark.parametrize(
    "settings",
    [
        dict(variant=network.MMOE, tasks=("ctr",)),
        dict(variant=network.ESMM, tasks=("cvr",)),
        dict(variant=network.LAYER_SHARING, tasks=("ctr",)),
        dict(variant=PLE, multi_view_dim=2),
        dict(variant=network.MMOE, num_experts=0),
        dict(variant=PLE, expert_units=()),
        dict(variant=network.LAYER_SHARING, ctr_tower_units=(8, 0)),
    ],
)
def test_configs_that_make_no_network_are_refused(settings):
    with pytest.raises(ValueError):
        NetworkConfig(**settings)


@pytest.mark.parametrize("variant", [network.SPARSE_SHARING, network.MMOE, network.ESMM])
def test_a_fresh_model_started_at_base_rates_predicts_them(variant):
    columns = random_transformed(400, seed=3)
    clicked = columns[features.CLICK_LABEL].reshape(-1) == 1
    rates = training.base_rates(columns)
    assert rates == pytest.approx(
        {"ctr": clicked.mean(), "cvr": columns[features.WATCH_RATIO_LABEL].reshape(-1)[clicked].mean()}
    )
    rates = {"ctr": 0.04, "cvr": 0.35}  # far from a fresh sigmoid's 0.5
    model = network.RankingNetwork(FEATURE_CONFIG, NetworkConfig(variant=variant, **SMALL))
    inputs = _inputs(rows=64)
    model.build_for(inputs)
    model.start_at_base_rates(rates)
    outputs = model(inputs)
    for task, rate in rates.items():
        assert float(tf.reduce_mean(outputs[task])) == pytest.approx(rate, abs=0.03)
