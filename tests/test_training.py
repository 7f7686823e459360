"""Task batches touch only their task's weights and optimizer state; pruned weights stay zero."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lt4rec.models import features, masks, network, training
from tests.conftest import random_transformed


def _setup(seed: int = 0):
    tf.keras.utils.set_random_seed(seed)
    examples = random_transformed(600, seed)
    model = network.RankingNetwork(features.scaled_config(0.001), network.NetworkConfig(embedding_dim=4, hidden_units=(16, 8)))
    model.build_for({name: values[:2] for name, values in examples.items()})
    trainer = training.MultiTaskTrainer(model, training.TrainConfig(batch_size=64, learning_rate=0.01))
    kernels = masks.get_kernels(model)
    for task, rate in (("ctr", 0.5), ("cvr", 0.6)):
        noisy = {name: kernel + np.random.default_rng(len(task) + int(rate * 10)).normal(0, 0.3, kernel.shape) for name, kernel in kernels.items()}
        masks.set_masks(model, task, masks.prune_by_magnitude(noisy, model.initial_masks(task), 1, rate))
    batches = {task: training.task_batches(examples, task, 64, seed) for task in ("ctr", "cvr")}
    trainer.train(batches, "mixed", seed)  # both optimizers now hold state
    return model, trainer, batches


def _state(model, trainer):
    return (
        {variable.name: variable.numpy().copy() for variable in model.variables},
        {task: [v.numpy().copy() for v in optimizer.variables()] for task, optimizer in trainer.optimizers.items()},
    )


@pytest.mark.parametrize("task, other", [("ctr", "cvr"), ("cvr", "ctr")])
def test_a_batch_of_one_task_changes_only_what_its_mask_keeps(task, other):
    model, trainer, batches = _setup()
    weights_before, optimizers_before = _state(model, trainer)
    trainer.train_step(task, next(iter(batches[task])))
    weights_after, optimizers_after = _state(model, trainer)

    changed_inside = 0
    for layer in masks.masked_layers(model):
        mask = layer.task_mask(task) > 0
        name = layer.layer.kernel.name
        before, after = weights_before[name], weights_after[name]
        np.testing.assert_array_equal(after[~mask], before[~mask])  # bit for bit
        changed_inside += int(np.sum(after[mask] != before[mask]))
        bias_on = mask.max(axis=0)
        np.testing.assert_array_equal(weights_after[layer.layer.bias.name][~bias_on], weights_before[layer.layer.bias.name][~bias_on])
    assert changed_inside > 0
    for variable in model.heads[other].variables:
        np.testing.assert_array_equal(weights_after[variable.name], weights_before[variable.name])
    for before, after in zip(optimizers_before[other], optimizers_after[other]):
        np.testing.assert_array_equal(after, before)  # the other task's Adam state is untouched

    # This task's Adam moments never saw a gradient outside its mask.
    optimizer = trainer.optimizers[task]
    for layer in masks.masked_layers(model):
        outside = layer.task_mask(task) == 0
        index = optimizer._index_dict[optimizer._var_key(layer.layer.kernel)]  # tf_keras Adam's slots
        for moments in (optimizer._momentums, optimizer._velocities):
            assert np.all(moments[index].numpy()[outside] == 0)


def test_weights_no_task_keeps_are_zero_and_stay_zero():
    model, trainer, batches = _setup(1)
    unused = {layer.name: (layer.task_mask("ctr") == 0) & (layer.task_mask("cvr") == 0) for layer in masks.masked_layers(model)}
    assert any(u.any() for u in unused.values())
    for _ in range(2):
        trainer.train(batches, "mixed", 3)
    for layer in masks.masked_layers(model):
        assert np.all(layer.layer.kernel.numpy()[unused[layer.name]] == 0)


def test_reset_optimizers_clears_moments_and_step_counts():
    model, trainer, _ = _setup(2)
    trainer.reset_optimizers()
    for optimizer in trainer.optimizers.values():
        assert all(np.all(v.numpy() == 0) for v in optimizer.variables())
        assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.01)


def test_cvr_loss_counts_clicks_and_weighs_conflicts():
    labels = {features.CLICK_LABEL: tf.constant([1, 1]), features.WATCH_RATIO_LABEL: tf.constant([0.1, 0.9])}
    predictions = tf.constant([0.5, 0.5])
    plain = training.task_loss("cvr", labels, predictions, training.TrainConfig())
    assert float(plain) == pytest.approx((0.16 + 0.16) / 2)
    weighted = training.task_loss("cvr", labels, tf.constant([0.1, 0.5]), training.TrainConfig(conflict_weight=3.0))
    assert float(weighted) == pytest.approx((4 * 0.0 + 1 * 0.16) / 5)


def test_cvr_batches_hold_clicked_impressions_only():
    examples = random_transformed(300, 4)
    batches = list(training.task_batches(examples, "cvr", 50, 0))
    clicks = [int(c) for batch in batches for c in batch[features.CLICK_LABEL]]
    assert set(clicks) == {1} and len(clicks) == int(examples[features.CLICK_LABEL].sum())
    users = sorted(int(u) for batch in batches for u in batch["FEA_UID"][:, 0])
    assert users == sorted(int(u) for u in examples["FEA_UID"][examples[features.CLICK_LABEL] == 1, 0])
    first, second = ([int(u) for u in next(iter(pass_))["FEA_UID"][:, 0]] for pass_ in (batches, training.task_batches(examples, "cvr", 50, 0)))
    assert first == second  # reproducible from the seed


def test_hold_out_splits_rows_disjointly_and_reproducibly():
    examples = random_transformed(500, 5)
    examples["row"] = np.arange(500)
    kept, held = training.hold_out(examples, 0.1, seed=3)
    kept_rows, held_rows = kept["row"].numpy(), held["row"].numpy()
    assert len(held_rows) == 50 and len(kept_rows) == 450
    assert sorted(np.concatenate([kept_rows, held_rows]).tolist()) == list(range(500))
    np.testing.assert_array_equal(held["FEA_UID"].numpy(), examples["FEA_UID"][held_rows])
    assert held_rows.tolist() == training.hold_out(examples, 0.1, seed=3)[1]["row"].numpy().tolist()
    assert held_rows.tolist() != training.hold_out(examples, 0.1, seed=4)[1]["row"].numpy().tolist()


def _adam_rows(weights, gradients, steps_rows, lr=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Lazy Adam by hand: each step updates only its rows, with the step count of the optimizer."""
    weights, m, v = weights.copy(), np.zeros_like(weights), np.zeros_like(weights)
    for step, (gradient, rows) in enumerate(zip(gradients, steps_rows), start=1):
        alpha = lr * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
        m[rows] = beta_1 * m[rows] + (1 - beta_1) * gradient[rows]
        v[rows] = beta_2 * v[rows] + (1 - beta_2) * gradient[rows] ** 2
        weights[rows] -= alpha * m[rows] / (np.sqrt(v[rows]) + epsilon)
    return weights, m, v


def test_lazy_adam_updates_only_the_rows_of_the_batch_as_adam_would():
    table = tf.Variable(np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32))
    optimizer = training.LazyAdam(0.1)
    steps = [np.array([1, 4, 4, 7]), np.array([4, 9])]  # row 4 twice in the first batch: its gradients add
    gradients, steps_rows = [], []
    for ids in steps:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(tf.gather(table, ids)) * np.arange(1, len(ids) + 1, dtype=np.float32)[:, None])
        gradient = tape.gradient(loss, table)
        assert isinstance(gradient, tf.IndexedSlices)
        gradients.append(tf.convert_to_tensor(gradient).numpy())
        steps_rows.append(np.unique(ids))
        optimizer.apply_gradients([(gradient, table)])
    initial = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    expected, expected_m, expected_v = _adam_rows(initial, gradients, steps_rows)
    np.testing.assert_allclose(table.numpy(), expected, rtol=1e-5, atol=1e-6)
    untouched = [0, 2, 3, 5, 6, 8]
    assert np.array_equal(table.numpy()[untouched], initial[untouched])
    m, v = optimizer._momentums[0].numpy(), optimizer._velocities[0].numpy()
    np.testing.assert_allclose(m, expected_m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(v, expected_v, rtol=1e-4, atol=1e-9)  # float32 (1 - beta_2)


def test_lazy_adam_is_adam_for_dense_gradients():
    weights = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    trained = []
    for optimizer in (tf.keras.optimizers.Adam(0.1), training.LazyAdam(0.1)):
        variable = tf.Variable(weights)
        for _ in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(variable - 1.0))
            optimizer.apply_gradients([(tape.gradient(loss, variable), variable)])
        trained.append(variable.numpy())
    assert np.array_equal(*trained)


def test_trainer_with_lazy_adam_leaves_unused_embedding_rows_alone():
    tf.keras.utils.set_random_seed(0)
    examples = random_transformed(256, 0)
    model = network.RankingNetwork(features.scaled_config(0.001), network.NetworkConfig(embedding_dim=4, hidden_units=(16, 8)))
    model.build_for({name: values[:2] for name, values in examples.items()})
    trainer = training.MultiTaskTrainer(model, training.TrainConfig(batch_size=64, optimizer="lazy_adam"))
    user_table = model.embeddings.tables["user"].embeddings
    first, second = list(training.task_batches(examples, "ctr", 8, 0))[:2]
    trainer.train_step("ctr", first)  # the rows of the first batch now have momentum
    before = user_table.numpy()
    trainer.train_step("ctr", second)
    used = np.unique(second["FEA_UID"].numpy())
    unused = np.setdiff1d(np.arange(before.shape[0]), used)
    assert np.setdiff1d(np.unique(first["FEA_UID"].numpy()), used).size  # some rows only in the first batch
    moved = np.abs(user_table.numpy() - before).max(axis=1)
    assert (moved[used[used != features.MISSING_ID]] > 0).all() and not moved[unused].any()
    with pytest.raises(ValueError, match="optimizer must be one of"):
        training.TrainConfig(optimizer="sgd")
