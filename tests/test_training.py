"""Task batches touch only their task's weights and optimizer state; pruned weights stay zero."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf

from lt4rec import features
from lt4rec.models import masks, network, training
from lt4rec.models.config import NetworkConfig, TrainConfig
from tests.helpers import random_transformed


def _setup(seed: int = 0):
    tf.keras.utils.set_random_seed(seed)
    examples = random_transformed(600, seed)
    model = network.RankingNetwork(features.scaled_config(0.001), NetworkConfig(embedding_dim=4, hidden_units=(16, 8)))
    model.build_for({name: values[:2] for name, values in examples.items()})
    trainer = training.MultiTaskTrainer(model, TrainConfig(batch_size=64, learning_rate=0.01))
    kernels = masks.get_kernels(model)
    task_masks = {}
    for task, rate in (("ctr", 0.5), ("cvr", 0.6)):
        noisy = {
            name: kernel + np.random.default_rng(len(task) + int(rate * 10)).normal(0, 0.3, kernel.shape)
            for name, kernel in kernels.items()
        }
        task_masks[task] = masks.prune_by_magnitude(noisy, model.initial_masks(task), 1, rate)
    masks.set_task_masks(model, task_masks)
    batches = {task: training.task_batches(examples, task, 64, seed) for task in ("ctr", "cvr")}
    trainer.train(batches, "mixed", seed)  # both tasks' gradients are now in Adam's moments
    return model, trainer, batches


def _moments(trainer: training.MultiTaskTrainer, variable: tf.Variable) -> tuple[np.ndarray, np.ndarray]:
    """Adam's first and second moments of a variable (tf_keras Adam's slots)."""
    optimizer = trainer.optimizer
    index = optimizer._index_dict[optimizer._var_key(variable)]
    return optimizer._momentums[index].numpy().copy(), optimizer._velocities[index].numpy().copy()


def _state(model, trainer):
    return {
        variable.name: (variable.numpy().copy(), *_moments(trainer, variable)) for variable in model.trainable_variables
    }


@pytest.mark.parametrize("task, other", [("ctr", "cvr"), ("cvr", "ctr")])
def test_a_batch_of_one_task_changes_only_what_its_mask_keeps(task, other):
    """Weights and Adam moments outside mask k stay bit for bit, though the other task filled them."""
    model, trainer, batches = _setup()
    before = _state(model, trainer)
    trainer.train_step(task, next(iter(batches[task])))
    after = _state(model, trainer)

    changed_inside = 0
    for layer in masks.masked_layers(model):
        kept = layer.task_mask(task) > 0
        for variable, outside in ((layer.layer.kernel, ~kept), (layer.layer.bias, ~kept.max(axis=0))):
            for was, now in zip(before[variable.name], after[variable.name]):  # the weight, m, v
                np.testing.assert_array_equal(now[outside], was[outside])  # bit for bit
        kernel_before, kernel_after = before[layer.layer.kernel.name][0], after[layer.layer.kernel.name][0]
        changed_inside += int(np.sum(kernel_after[kept] != kernel_before[kept]))
        other_only = (layer.task_mask(other) > 0) & ~kept
        assert np.any(before[layer.layer.kernel.name][1][other_only] != 0)  # the other task's moments are there
    assert changed_inside > 0
    for variable in model.heads[other].variables:
        for was, now in zip(before[variable.name], after[variable.name]):
            np.testing.assert_array_equal(now, was)  # the other task's head and its moments


def test_weights_no_task_keeps_are_zero_and_stay_zero():
    model, trainer, batches = _setup(1)
    unused = {
        layer.name: (layer.task_mask("ctr") == 0) & (layer.task_mask("cvr") == 0)
        for layer in masks.masked_layers(model)
    }
    assert any(u.any() for u in unused.values())
    for _ in range(2):
        trainer.train(batches, "mixed", 3)
    for layer in masks.masked_layers(model):
        assert np.all(layer.layer.kernel.numpy()[unused[layer.name]] == 0)


def test_reset_optimizer_clears_moments_and_step_count():
    model, trainer, _ = _setup(2)
    assert int(trainer.optimizer.iterations) > 0
    trainer.reset_optimizer()
    assert all(np.all(v.numpy() == 0) for v in trainer.optimizer.variables())
    assert float(trainer.optimizer.learning_rate.numpy()) == pytest.approx(0.01)


def test_cvr_loss_counts_clicks_and_weighs_conflicts():
    labels = {features.CLICK_LABEL: tf.constant([1, 1]), features.WATCH_RATIO_LABEL: tf.constant([0.1, 0.9])}
    predictions = tf.constant([0.5, 0.5])
    plain = training.task_loss("cvr", labels, predictions, TrainConfig())
    assert float(plain) == pytest.approx((0.16 + 0.16) / 2)
    weighted = training.task_loss("cvr", labels, tf.constant([0.1, 0.5]), TrainConfig(conflict_weight=3.0))
    assert float(weighted) == pytest.approx((4 * 0.0 + 1 * 0.16) / 5)


def test_cvr_batches_hold_clicked_impressions_only():
    examples = random_transformed(300, 4)
    batches = list(training.task_batches(examples, "cvr", 50, 0))
    clicked = int(examples[features.CLICK_LABEL].sum())
    clicks = [int(c) for batch in batches for c in batch[features.CLICK_LABEL]]
    assert set(clicks) == {1} and len(clicks) == clicked // 50 * 50  # whole batches: the partial last one is dropped
    assert len(batches) == training.task_steps(examples, "cvr", 50)
    users = collections.Counter(int(u) for batch in batches for u in batch["FEA_UID"][:, 0])
    assert not users - collections.Counter(int(u) for u in examples["FEA_UID"][examples[features.CLICK_LABEL] == 1, 0])
    first, second = (
        [int(u) for u in next(iter(pass_))["FEA_UID"][:, 0]]
        for pass_ in (batches, training.task_batches(examples, "cvr", 50, 0))
    )
    assert first == second  # reproducible from the seed


def test_hold_out_splits_rows_disjointly_and_reproducibly_by_content():
    examples = random_transformed(2000, 5)
    examples["row"] = np.arange(2000)
    kept, held = training.hold_out(examples, 0.1, seed=3)
    kept_rows, held_rows = kept["row"].numpy(), held["row"].numpy()
    assert 150 <= len(held_rows) <= 250  # 10% of 2,000 (binomial: 200 +- 13)
    assert sorted(np.concatenate([kept_rows, held_rows]).tolist()) == list(range(2000))
    np.testing.assert_array_equal(held["FEA_UID"].numpy(), examples["FEA_UID"][held_rows])
    assert held_rows.tolist() == training.hold_out(examples, 0.1, seed=3)[1]["row"].numpy().tolist()
    assert held_rows.tolist() != training.hold_out(examples, 0.1, seed=4)[1]["row"].numpy().tolist()
    # The rows held out are chosen by what they hold, not where they are: the order a
    # sharded or shuffled read yields them in does not change which are held out.
    order = np.random.default_rng(0).permutation(2000)
    shuffled = {name: values[order] for name, values in examples.items()}
    assert sorted(training.hold_out(shuffled, 0.1, seed=3)[1]["row"].numpy().tolist()) == held_rows.tolist()


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
            loss = tf.reduce_sum(
                tf.square(tf.gather(table, ids)) * np.arange(1, len(ids) + 1, dtype=np.float32)[:, None]
            )
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
    model = network.RankingNetwork(features.scaled_config(0.001), NetworkConfig(embedding_dim=4, hidden_units=(16, 8)))
    model.build_for({name: values[:2] for name, values in examples.items()})
    trainer = training.MultiTaskTrainer(model, TrainConfig(batch_size=64, optimizer="lazy_adam"))
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
        TrainConfig(optimizer="sgd")


def _shared_weight_displacement(loss_weights, schedule, seed: int = 0) -> np.ndarray:
    """How the kernel entries both masks keep move over `schedule` (a list of tasks), from one start.

    The embeddings start at the scale a trained network's have (std 0.5, not Keras' initial
    +-0.05), so that the kernels' gradients are far above Adam's epsilon, which alone would
    make the loss weights matter (a little) to an optimizer that is otherwise blind to them.
    """
    tf.keras.utils.set_random_seed(seed)
    examples = random_transformed(2000, seed)
    model = network.RankingNetwork(features.scaled_config(0.001), NetworkConfig(embedding_dim=4, hidden_units=(16, 8)))
    model.build_for({name: values[:2] for name, values in examples.items()})
    for table in model.embeddings.tables.values():
        table.embeddings.assign(np.random.default_rng(seed).normal(0, 0.5, table.embeddings.shape))
    config = TrainConfig(batch_size=128, learning_rate=1e-3, loss_weights=tuple(loss_weights.items()))
    trainer = training.MultiTaskTrainer(model, config)
    kernels = masks.get_kernels(model)
    task_masks = {
        task: masks.prune_by_magnitude(
            {
                name: kernel + np.random.default_rng(len(task)).normal(0, 0.3, kernel.shape)
                for name, kernel in kernels.items()
            },
            model.initial_masks(task),
            1,
            0.4,
        )
        for task in masks.TASKS
    }
    masks.set_task_masks(model, task_masks)
    start = masks.get_kernels(model)
    iterators = {task: iter(training.task_batches(examples, task, 128, seed)) for task in masks.TASKS}
    for task in schedule:
        trainer.train_step(task, next(iterators[task]))
    end = masks.get_kernels(model)
    shared = [(task_masks["ctr"][name] * task_masks["cvr"][name]) > 0 for name in start]
    return np.concatenate([(end[name] - start[name])[keep] for name, keep in zip(start, shared)])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.slow
def test_loss_weights_set_how_hard_each_task_pulls_on_the_shared_weights():
    """Eq. 2: w_ctr * L_ctr + w_cvr * L_cvr. Swapping the weights must swap whose direction wins."""
    mixed = ["ctr", "cvr"] * 6
    ctr_only = _shared_weight_displacement({"ctr": 0.5, "cvr": 0.5}, ["ctr"] * 6)
    cvr_only = _shared_weight_displacement({"ctr": 0.5, "cvr": 0.5}, ["cvr"] * 6)
    ctr_heavy = _shared_weight_displacement({"ctr": 0.7, "cvr": 0.3}, mixed)
    cvr_heavy = _shared_weight_displacement({"ctr": 0.3, "cvr": 0.7}, mixed)
    assert _cosine(ctr_heavy, ctr_only) > _cosine(cvr_heavy, ctr_only) + 0.05
    assert _cosine(cvr_heavy, cvr_only) > _cosine(ctr_heavy, cvr_only) + 0.05


@pytest.mark.slow
def test_mixed_training_keeps_the_task_shares_in_every_tenth_of_a_pass(monkeypatch):
    tf.keras.utils.set_random_seed(0)
    examples = random_transformed(6000, 6)
    model = network.RankingNetwork(features.scaled_config(0.001), NetworkConfig(embedding_dim=4, hidden_units=(8,)))
    model.build_for({name: values[:2] for name, values in examples.items()})
    trainer = training.MultiTaskTrainer(model, TrainConfig(batch_size=8))
    steps = []
    original = trainer.train_step
    monkeypatch.setattr(trainer, "train_step", lambda task, batch: steps.append(task) or original(task, batch))
    batches = {task: training.task_batches(examples, task, 8, 0) for task in masks.TASKS}
    trainer.train(batches, "mixed", seed=1)
    n_ctr = 6000 // 8
    n_cvr = int(examples[features.CLICK_LABEL].sum()) // 8
    assert steps.count("ctr") == n_ctr and steps.count("cvr") == n_cvr  # every whole batch, once
    expected = n_cvr / (n_ctr + n_cvr)
    for tenth in np.array_split(np.array(steps) == "cvr", 10):
        assert (
            abs(tenth.mean() - expected) < 0.02
        ), f"CVR share {tenth.mean():.3f} in a tenth of the pass, expected {expected:.3f}"
