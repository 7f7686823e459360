"""Algorithm 1 on tiny data: warmup, rewinding, the rounds of the search, their choice."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lt4rec import features
from lt4rec.models import masks, network, sparse_sharing, trainer, training
from lt4rec.models.config import NEURON, REWIND_TARGETS, NetworkConfig, SearchConfig, TrainConfig
from tests.helpers import random_transformed
from tests.test_masks import assert_whole_units


def _algorithm(search: SearchConfig, seed: int = 0, multi_view_dim: int = 0) -> sparse_sharing.SparseSharing:
    tf.keras.utils.set_random_seed(seed)
    examples = random_transformed(1200, seed)
    train = {k: v[:1000] for k, v in examples.items()}
    validation = {k: v[1000:] for k, v in examples.items()}
    data = sparse_sharing.Datasets.from_columns(train, validation, 128, seed, masks.TASKS)
    model = network.RankingNetwork(
        features.scaled_config(0.001),
        NetworkConfig(embedding_dim=4, hidden_units=(16, 8), multi_view_dim=multi_view_dim),
    )
    model.build_for(next(iter(data.validation)))
    return sparse_sharing.SparseSharing(model, data, TrainConfig(batch_size=128, learning_rate=0.01, seed=seed), search)


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


@pytest.mark.slow
def test_search_rounds_are_scored_and_rewind_restores_the_targets():
    algorithm = _algorithm(SearchConfig(rounds=2, remaining=0.25))
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
    config = SearchConfig(rounds=1, remaining=0.5, scope=masks.PER_LAYER, granularity=NEURON, min_sparsity=0.5)
    algorithm = _algorithm(config, seed=1)
    algorithm.warmup()
    found = {task: algorithm.search(task) for task in masks.TASKS}
    for search in found.values():
        assert search.best_round == 1  # the only round 50% sparse
        assert_whole_units(list(search.masks.values()))
    algorithm.train_shared({task: search.masks for task, search in found.items()})
    for task, search in found.items():
        for name, mask in masks.get_masks(algorithm.model, task).items():
            np.testing.assert_array_equal(mask, search.masks[name])
    unused = [
        (layer, (layer.task_mask("ctr") + layer.task_mask("cvr")) == 0)
        for layer in masks.masked_layers(algorithm.model)
    ]
    assert all(np.all(layer.layer.kernel.numpy()[off] == 0) for layer, off in unused)


def _search_recording_rounds(algorithm: sparse_sharing.SparseSharing, task: str):
    """`algorithm.search(task)`, with the mask each round trained under."""
    round_masks = []
    found = algorithm.search(task, on_round=lambda result: round_masks.append(masks.get_masks(algorithm.model, task)))
    return found, round_masks


@pytest.fixture(scope="module")
def _after_search(tmp_path_factory):
    algorithm = _algorithm(SearchConfig(rounds=2, remaining=0.25), seed=2)
    algorithm.warmup()
    ctr, ctr_rounds = _search_recording_rounds(algorithm, "ctr")
    cvr, cvr_rounds = _search_recording_rounds(algorithm, "cvr")
    chosen = {"ctr": ctr_rounds[2], "cvr": cvr_rounds[1]}
    searches = {
        "ctr": sparse_sharing.TaskSearch("ctr", ctr.rounds, 2, chosen["ctr"]),
        "cvr": sparse_sharing.TaskSearch("cvr", cvr.rounds, 1, chosen["cvr"]),
    }
    state = str(tmp_path_factory.mktemp("after_search") / "state")
    tf.train.Checkpoint(network=algorithm.model).write(state)
    return algorithm, chosen, searches, state


@pytest.fixture
def searched(_after_search):
    """Warmup and a real search of both tasks; CTR keeps its last round, CVR an earlier one.

    This is the state the paper's step 3 starts from when CVR's best round is not its last:
    the model (and the sNET_init checkpoint) still hold CVR's last-round mask. Each test
    gets the network as the search left it (weights and every mask variable).
    """
    algorithm, chosen, searches, state = _after_search
    tf.train.Checkpoint(network=algorithm.model).read(state).assert_existing_objects_matched()
    return algorithm, chosen, searches


def _first_step_kernels(monkeypatch, trainer: training.MultiTaskTrainer) -> dict:
    """Records the masked kernels when the trainer starts its first pass, then lets it run."""
    seen = {}
    original = trainer.train

    def train(*args, **kwargs):
        if not seen:
            seen.update(masks.get_kernels(trainer.model))
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "train", train)
    return seen


def _assert_every_kept_weight_starts_at_snet_init(start: dict, snet_init: dict, chosen: dict) -> None:
    for task, task_masks in chosen.items():
        for name, mask in task_masks.items():
            kept = mask > 0
            np.testing.assert_array_equal(start[name][kept], snet_init[name][kept], err_msg=f"{task} {name}")


@pytest.mark.parametrize("order", [("ctr", "cvr"), ("cvr", "ctr")])
def test_shared_training_starts_every_kept_weight_at_snet_init(searched, monkeypatch, order):
    algorithm, chosen, _ = searched
    algorithm.rewind(sparse_sharing.REWIND_WARMUP)
    snet_init = masks.get_kernels(algorithm.model)
    in_order = {task: chosen[task] for task in order}
    # CVR keeps weights CTR drops
    assert any(np.any((in_order["cvr"][n] > 0) & (in_order["ctr"][n] == 0)) for n in snet_init)
    start = _first_step_kernels(monkeypatch, algorithm.trainer)
    algorithm.train_shared(in_order)
    _assert_every_kept_weight_starts_at_snet_init(start, snet_init, chosen)
    for task in masks.TASKS:  # and it trained under exactly the chosen masks
        for name, mask in masks.get_masks(algorithm.model, task).items():
            np.testing.assert_array_equal(mask, chosen[task][name])


def test_the_trainers_path_starts_every_kept_weight_at_snet_init(searched, monkeypatch, tmp_path):
    """MaskSearch writes its result; run_fn's sparse-sharing path reads it (masks file: ctr, cvr)."""
    algorithm, chosen, searches = searched
    folder = str(tmp_path / "masks")
    algorithm.write(folder, searches)
    algorithm.rewind(sparse_sharing.REWIND_WARMUP)
    snet_init = masks.get_kernels(algorithm.model)

    model = network.RankingNetwork(algorithm.model.feature_config, algorithm.model.config)
    model.build_for(next(iter(algorithm.data.validation)))
    shared_trainer = training.MultiTaskTrainer(model, algorithm.trainer.config)
    start = _first_step_kernels(monkeypatch, shared_trainer)
    trainer._train_sparse_sharing(shared_trainer, algorithm.data, {trainer.MASKS_URI: folder}, None)
    _assert_every_kept_weight_starts_at_snet_init(start, snet_init, chosen)


def test_with_multi_view_each_round_keeps_its_share_of_the_tasks_own_weights():
    """CTR never sees CVR's view rows: its rounds keep (1-q)^r of the weights CTR starts with."""
    algorithm = _algorithm(SearchConfig(rounds=2, remaining=0.25), seed=3, multi_view_dim=2)
    algorithm.warmup()
    initial = algorithm.model.initial_masks("ctr")
    initial_count = sum(int(mask.sum()) for mask in initial.values())
    assert initial_count < sum(mask.size for mask in initial.values())  # the view rows are out
    found, rounds = _search_recording_rounds(algorithm, "ctr")
    previous = initial
    for index, round_masks in enumerate(rounds):
        kept = sum(int(mask.sum()) for mask in round_masks.values())
        exact = round(initial_count * 0.5**index)
        assert exact - 0.05 * initial_count <= kept <= exact  # dead units' weights may go too
        for name, mask in round_masks.items():
            assert np.all(mask <= previous[name])  # nested, never a view row
        previous = round_masks


@pytest.mark.parametrize("rewind_to", REWIND_TARGETS)
def test_every_round_starts_from_the_rewinding_target_with_a_fresh_optimizer(monkeypatch, rewind_to):
    algorithm = _algorithm(SearchConfig(rounds=2, remaining=0.25, rewind_to=rewind_to), seed=4)
    random_init = training.snapshot(algorithm.model)
    algorithm.warmup()
    target = algorithm.snet_init if rewind_to == sparse_sharing.REWIND_WARMUP else random_init
    starts = []
    original = algorithm.trainer.fit

    def fit(*args, **kwargs):
        optimizer = algorithm.trainer.optimizer
        starts.append(
            (
                training.snapshot(algorithm.model),
                int(optimizer.iterations),
                all(not np.any(v.numpy()) for v in optimizer.variables()),
                masks.get_task_masks(algorithm.model),
            )
        )
        return original(*args, **kwargs)

    monkeypatch.setattr(algorithm.trainer, "fit", fit)
    found = algorithm.search("cvr")
    assert len(starts) == 3
    for (weights, iterations, zero_state, task_masks), round_masks in zip(starts, found.round_masks):
        for value, expected in zip(weights, target):
            np.testing.assert_array_equal(value, expected)
        assert iterations == 0 and zero_state
        for name in round_masks:  # the round's mask for the task, round 0's for the other
            np.testing.assert_array_equal(task_masks["cvr"][name], round_masks[name])
            np.testing.assert_array_equal(task_masks["ctr"][name], algorithm.model.initial_masks("ctr")[name])
    # each round prunes
    assert len({float(sum(mask.sum() for mask in masks_.values())) for masks_ in found.round_masks}) == 3


def test_a_short_warmup_takes_that_share_of_each_tasks_batches(monkeypatch):
    algorithm = _algorithm(SearchConfig(rounds=1, warmup_epochs=0.25), seed=5)
    steps = []
    original = algorithm.trainer.train_step
    monkeypatch.setattr(
        algorithm.trainer, "train_step", lambda task, batch: steps.append(task) or original(task, batch)
    )
    history = algorithm.warmup()
    assert len(history) == 1
    for task, whole_pass in algorithm.data.steps.items():
        assert steps.count(task) == int(np.ceil(0.25 * whole_pass)), (task, whole_pass)
    for bad in (0.0, 1.5, -1.0):
        with pytest.raises(ValueError, match="warmup_epochs"):
            SearchConfig(warmup_epochs=bad)


def test_a_search_stops_before_a_round_that_would_leave_no_path_through_the_mlp(caplog):
    # Global unit pruning down to 2% of a (16, 8) MLP: the third round would drop every
    # unit of a layer, and with it every weight (a constant model that cannot be exported).
    config = SearchConfig(rounds=3, remaining=0.02, granularity=NEURON)
    algorithm = _algorithm(config, seed=2)
    algorithm.warmup()
    with caplog.at_level("WARNING", logger="lt4rec.models.sparse_sharing"):
        found = algorithm.search("ctr")
    assert 1 < len(found.rounds) < config.rounds + 1
    assert len(found.round_masks) == len(found.rounds)
    for round_masks in found.round_masks:
        assert masks.remaining_fraction(round_masks) > 0
        assert all(mask.max() == 1 for mask in round_masks.values())  # every layer keeps a unit
    assert f"round {len(found.rounds)} would leave no path" in caplog.text
