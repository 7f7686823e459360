"""The network's layers and variants, checked against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lt4rec.models import features, layers, masks, network, training
from tests.conftest import random_transformed

FEATURE_CONFIG = features.scaled_config(0.001)


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


@pytest.mark.parametrize(
    "variant, tasks, masked_layers, towers",
    [
        (network.SPARSE_SHARING, ("ctr", "cvr"), 2, 1),
        (network.HARD_SHARING, ("ctr", "cvr"), 0, 2),
        (network.SHARED_BOTTOM, ("ctr", "cvr"), 0, 1),
        (network.SINGLE_TASK, ("cvr",), 0, 1),
    ],
)
def test_variants_predict_each_task_in_range(variant, tasks, masked_layers, towers):
    config = network.NetworkConfig(variant=variant, tasks=tasks, embedding_dim=4, hidden_units=(16, 8))
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
    model = network.RankingNetwork(FEATURE_CONFIG, network.NetworkConfig(embedding_dim=4, hidden_units=(16, 8)))
    inputs = _inputs()
    model.build_for(inputs)
    before = model(inputs)
    ctr_masks = masks.prune_by_magnitude(masks.get_kernels(model), model.initial_masks("ctr"), 1, 0.5)
    masks.set_masks(model, "ctr", ctr_masks)
    after = model(inputs)
    assert not np.allclose(before["ctr"].numpy(), after["ctr"].numpy())
    np.testing.assert_array_equal(before["cvr"].numpy(), after["cvr"].numpy())  # CVR keeps everything
    assert training.mlp_weight_share(model, "ctr") == pytest.approx(0.5, abs=1e-3)
    assert training.mlp_weight_share(model, "cvr") == 1.0


def test_multi_view_inputs_reach_cvr_only():
    config = network.NetworkConfig(embedding_dim=4, hidden_units=(16, 8), multi_view_dim=2)
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
    config = network.NetworkConfig(variant=network.HARD_SHARING, hidden_units=(8, 4))
    assert network.NetworkConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError):
        network.NetworkConfig(variant="mmoe")
    with pytest.raises(ValueError):
        network.NetworkConfig(variant=network.SINGLE_TASK, tasks=("ctr", "cvr"))
