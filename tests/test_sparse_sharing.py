"""Algorithm 1 on tiny data: warmup, rewinding, the rounds of the search, their choice."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lt4rec.models import features, masks, network, sparse_sharing, training
from tests.conftest import random_transformed


def _algorithm(search: sparse_sharing.SearchConfig, seed: int = 0) -> sparse_sharing.SparseSharing:
    tf.keras.utils.set_random_seed(seed)
    examples = random_transformed(1200, seed)
    train = {k: v[:1000] for k, v in examples.items()}
    validation = {k: v[1000:] for k, v in examples.items()}
    data = sparse_sharing.Datasets.from_columns(train, validation, 128, seed, masks.TASKS)
    model = network.RankingNetwork(features.scaled_config(0.001), network.NetworkConfig(embedding_dim=4, hidden_units=(16, 8)))
    model.build_for(next(iter(data.validation)))
    return sparse_sharing.SparseSharing(model, data, training.TrainConfig(batch_size=128, learning_rate=0.01, seed=seed), search)


def _round(task: str, index: int, remaining: float, value: float) -> sparse_sharing.RoundResult:
    metric, _ = training.metrics.SELECTION_METRIC[task]
    return sparse_sharing.RoundResult(task, index, remaining, metric, value, 0.0)


def test_round_selection_picks_the_best_validation_round():
    ctr = [_round("ctr", 0, 1.0, 0.70), _round("ctr", 1, 0.5, 0.72), _round("ctr", 2, 0.25, 0.71)]
    assert sparse_sharing.select_round(ctr, 0.0) == 1
    assert sparse_sharing.select_round(ctr, 0.6) == 2  # at least 60% pruned
    cvr = [_round("cvr", 0, 1.0, 0.030), _round("cvr", 1, 0.5, 0.031), _round("cvr", 2, 0.25, 0.029)]
    assert sparse_sharing.select_round(cvr, 0.0) == 2  # smaller MSE is better
    with pytest.raises(ValueError, match="sparse"):
        sparse_sharing.select_round(cvr, 0.9)


def test_search_rounds_rewinds_and_final_training():
    algorithm = _algorithm(sparse_sharing.SearchConfig(rounds=2, remaining=0.25))
    initial = training.snapshot(algorithm.model)
    algorithm.warmup()
    snet_init = algorithm.snet_init
    assert any(not np.array_equal(a, b) for a, b in zip(initial, snet_init))

    found = algorithm.search("ctr")
    assert [r.round for r in found.rounds] == [0, 1, 2]
    total = sum(mask.size for mask in masks.full_masks(algorithm.model).values())
    for result in found.rounds:  # q = 0.5 for 25% after 2 rounds
        assert abs(result.remaining * total - total * 0.5**result.round) <= 1.0
        assert result.metric == "ctr_auc" and 0 <= result.value <= 1
    best = found.rounds[found.best_round]
    assert best.value == max(r.value for r in found.rounds)
    assert masks.remaining_fraction(found.masks) == best.remaining

    algorithm.rewind(sparse_sharing.REWIND_WARMUP)
    for restored, expected in zip(training.snapshot(algorithm.model), snet_init):
        np.testing.assert_array_equal(restored, expected)
    algorithm.rewind(sparse_sharing.REWIND_RANDOM)
    for restored, expected in zip(training.snapshot(algorithm.model), initial):
        np.testing.assert_array_equal(restored, expected)


def test_neuron_level_search_and_shared_training_keep_their_masks():
    # Per layer, half the units of every layer is exactly half the weights (globally, the
    # share of weights depends on which layers the dropped units are in).
    config = sparse_sharing.SearchConfig(rounds=1, remaining=0.5, scope=masks.PER_LAYER, granularity=masks.NEURON, min_sparsity=0.5)
    algorithm = _algorithm(config, seed=1)
    algorithm.warmup()
    found = {task: algorithm.search(task) for task in masks.TASKS}
    for search in found.values():
        assert search.best_round == 1  # the only round 50% sparse
        for mask in search.masks.values():
            assert set(np.unique(mask.sum(axis=0))) <= {0.0, float(mask.shape[0])}
    algorithm.train_shared({task: search.masks for task, search in found.items()})
    for task, search in found.items():
        for name, mask in masks.get_masks(algorithm.model, task).items():
            np.testing.assert_array_equal(mask, search.masks[name])
    unused = [(layer, (layer.task_mask("ctr") + layer.task_mask("cvr")) == 0) for layer in masks.masked_layers(algorithm.model)]
    assert all(np.all(layer.layer.kernel.numpy()[off] == 0) for layer, off in unused)
