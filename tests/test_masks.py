"""Per-task masks: magnitude pruning, the TF-MOT wrapper's forward pass and bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from lt4rec.models import masks
from lt4rec.models.config import NEURON, rate_for


def _kernels(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a": rng.normal(size=(40, 30)), "b": rng.normal(size=(30, 20)), "c": rng.normal(size=(20, 10))}


def assert_whole_units(layer_masks: list[np.ndarray]) -> None:
    """Neuron masks: a unit keeps every input from the units still there below it, or nothing."""
    inputs = np.ones(layer_masks[0].shape[0], bool)
    for mask in layer_masks:
        kept = mask.max(axis=0) > 0
        np.testing.assert_array_equal(mask > 0, inputs[:, None] & kept[None, :])
        inputs = kept


def _wrapper(units_in: int = 6, units_out: int = 4) -> masks.TaskMaskedPruneLowMagnitude:
    layer = masks.TaskMaskedPruneLowMagnitude(tf.keras.layers.Dense(units_out, activation="relu", name="dense"))
    layer.build((None, units_in))
    layer.layer.bias.assign(np.linspace(0.1, 0.4, units_out))
    return layer


@pytest.mark.parametrize("scope", masks.SCOPES)
def test_round_r_keeps_the_top_share_of_magnitudes_less_the_weights_of_dead_units(scope):
    kernels = _kernels()
    rate = rate_for(0.2, 4)
    current = {name: np.ones_like(kernel, dtype=np.float32) for name, kernel in kernels.items()}
    for round_index in range(1, 5):
        # By hand: the round(size * (1-q)^r) largest |w| still kept (per scope), then the live ones.
        groups = [[name] for name in kernels] if scope == masks.PER_LAYER else [list(kernels)]
        top = {}
        for names in groups:
            magnitude = np.concatenate([np.where(current[n] > 0, np.abs(kernels[n]), -1.0).ravel() for n in names])
            count = round(sum(kernels[n].size for n in names) * (1 - rate) ** round_index)
            chosen = np.zeros(magnitude.size, bool)
            chosen[np.argsort(-magnitude, kind="stable")[:count]] = True
            for n, part in zip(names, np.split(chosen, np.cumsum([kernels[n].size for n in names])[:-1])):
                top[n] = part.reshape(kernels[n].shape)
        expected = _live_by_reachability([top[name].astype(np.float32) for name in kernels])
        current = masks.prune_by_magnitude(kernels, current, round_index, rate, scope=scope)
        for (name, mask), live in zip(current.items(), expected):
            np.testing.assert_array_equal(mask > 0, live, err_msg=f"round {round_index} {name}")
    assert masks.remaining_fraction(current) == pytest.approx(0.2, abs=1e-2)


def test_pruning_keeps_the_largest_magnitudes_and_only_shrinks():
    kernels = _kernels()
    full = {name: np.ones_like(kernel, dtype=np.float32) for name, kernel in kernels.items()}
    first = masks.prune_by_magnitude(kernels, full, 1, 0.5)
    second = masks.prune_by_magnitude(kernels, first, 2, 0.5)
    values = np.concatenate([np.abs(kernels[n]).ravel() for n in kernels])
    kept = np.concatenate([first[n].ravel() for n in kernels]) > 0
    assert values[kept].min() >= values[~kept].max()  # global threshold
    for name in kernels:
        assert np.all(second[name] <= first[name])  # a dropped weight never comes back
    # Even when the round's count is more than the masks still keep (masks of round 3 asked
    # for round 2's share, or dead units removed beyond the round's share), it only shrinks.
    third = masks.prune_by_magnitude(kernels, second, 3, 0.5)
    again = masks.prune_by_magnitude(kernels, third, 2, 0.5)
    for name in kernels:
        np.testing.assert_array_equal(again[name], third[name])


def test_per_layer_scope_prunes_every_layer_alike():
    kernels = _kernels()
    kernels["a"] = kernels["a"] * 100  # globally, layer a would keep everything
    full = {name: np.ones_like(kernel, dtype=np.float32) for name, kernel in kernels.items()}
    per_layer = masks.prune_by_magnitude(kernels, full, 1, 0.5, scope=masks.PER_LAYER)
    assert [mask.mean() for mask in per_layer.values()] == pytest.approx([0.5, 0.5, 0.5], abs=0.01)
    global_ = masks.prune_by_magnitude(kernels, full, 1, 0.3, scope=masks.GLOBAL)  # 1400 of 2000 weights
    assert global_["a"].mean() > 0.95 and global_["b"].mean() < 0.3 and global_["c"].mean() < 0.3


def test_neuron_masks_remove_whole_units():
    kernels = _kernels()
    full = {name: np.ones_like(kernel, dtype=np.float32) for name, kernel in kernels.items()}
    neuron = masks.prune_by_magnitude(kernels, full, 2, 0.3, granularity=NEURON)
    assert_whole_units(list(neuron.values()))
    units = sum(mask.shape[1] for mask in neuron.values())
    kept_units = sum(len(masks.units_kept(mask)) for mask in neuron.values())
    assert abs(kept_units - units * 0.7**2) <= 1.0


def test_global_neuron_pruning_ranks_units_within_their_layer_scale():
    rng = np.random.default_rng(1)
    # A wide first layer has smaller weights (as after Glorot init): raw means would empty it.
    kernels = {"wide": rng.normal(0, 0.05, (800, 64)), "narrow": rng.normal(0, 0.2, (64, 32))}
    full = {name: np.ones_like(kernel) for name, kernel in kernels.items()}
    neuron = masks.prune_by_magnitude(kernels, full, 3, 0.4, granularity=NEURON)
    kept = {name: len(masks.units_kept(mask)) for name, mask in neuron.items()}
    assert abs(sum(kept.values()) - 96 * 0.6**3) <= 1.0
    assert kept["wide"] >= 5 and kept["narrow"] >= 5  # neither layer is emptied


def test_wrapper_applies_each_tasks_mask_in_the_forward_pass_and_leaves_the_kernel():
    layer = _wrapper()
    tfmot_wrapper = tfmot.sparsity.keras.prune_low_magnitude(tf.keras.layers.Dense(1))
    assert isinstance(layer, type(tfmot_wrapper))  # TF-MOT's machinery underneath
    rng = np.random.default_rng(1)
    ctr_mask = (rng.random((6, 4)) < 0.5).astype(np.float32)
    ctr_mask[:, 3] = 0  # unit 3 is off for CTR: its bias must not leak through
    cvr_mask = np.ones((6, 4), np.float32)
    layer.set_task_masks({"ctr": ctr_mask, "cvr": cvr_mask})
    kernel, bias = layer.layer.kernel.numpy(), layer.layer.bias.numpy()
    inputs = rng.normal(size=(5, 6)).astype(np.float32)

    by_hand = np.maximum(inputs @ (kernel * ctr_mask) + bias * ctr_mask.max(axis=0), 0)
    np.testing.assert_allclose(layer(inputs, task="ctr").numpy(), by_hand, rtol=1e-5, atol=1e-6)
    assert np.all(layer(inputs, task="ctr").numpy()[:, 3] == 0)
    np.testing.assert_allclose(
        layer(inputs, task="cvr").numpy(), np.maximum(inputs @ kernel + bias, 0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(layer.layer.kernel.numpy(), kernel)  # calls changed nothing


def test_union_mask_is_tf_mots_mask_and_zeroes_only_weights_no_task_keeps():
    layer = _wrapper()
    ctr_mask = np.zeros((6, 4), np.float32)
    ctr_mask[:3] = 1
    cvr_mask = np.zeros((6, 4), np.float32)
    cvr_mask[2:4] = 1
    layer.set_task_masks({"ctr": ctr_mask, "cvr": cvr_mask})
    union = np.maximum(ctr_mask, cvr_mask)
    np.testing.assert_array_equal(layer.pruning_vars[0][1].numpy(), union)
    kernel = layer.layer.kernel.numpy()
    assert np.all(kernel[union == 0] == 0)
    assert np.all(kernel[union == 1] != 0)


def test_folded_kernel_reproduces_the_task():
    layer = _wrapper()
    mask = np.zeros((6, 4), np.float32)
    mask[:, :2] = 1
    layer.set_task_masks({"ctr": np.ones_like(mask), "cvr": mask})
    kernel, bias = layer.folded("cvr")
    inputs = np.random.default_rng(2).normal(size=(3, 6)).astype(np.float32)
    np.testing.assert_allclose(
        layer(inputs, task="cvr").numpy(), np.maximum(inputs @ kernel + bias, 0), rtol=1e-5, atol=1e-6
    )
    assert list(masks.units_kept(mask)) == [0, 1]


def test_overlap_counts_every_weight_once():
    ctr = {"x": np.array([[1, 1], [0, 0]], np.float32)}
    cvr = {"x": np.array([[1, 0], [1, 0]], np.float32)}
    (layer,) = masks.overlap(ctr, cvr)
    assert (layer.shared, layer.ctr_only, layer.cvr_only, layer.unused) == (1, 1, 1, 1)
    assert sum(layer.fractions().values()) == pytest.approx(1.0)


def test_masks_round_trip_through_a_file(tmp_path):
    kernels = _kernels()
    saved = {
        task: masks.prune_by_magnitude(kernels, {n: np.ones_like(k, np.float32) for n, k in kernels.items()}, 1, rate)
        for task, rate in (("ctr", 0.5), ("cvr", 0.3))
    }
    path = str(tmp_path / "masks.npz")
    masks.save_masks(path, saved)
    loaded = masks.load_masks(path)
    for task in saved:
        for name in saved[task]:
            np.testing.assert_array_equal(loaded[task][name], saved[task][name])


def test_bad_shapes_and_settings_are_refused():
    layer = _wrapper()
    with pytest.raises(ValueError, match="mask of shape"):
        layer.set_task_masks({"ctr": np.ones((3, 3)), "cvr": np.ones((6, 4))})
    with pytest.raises(ValueError, match="masks for tasks"):
        layer.set_task_masks({"ctr": np.ones((6, 4))})  # every task at once, or none
    with pytest.raises(ValueError):
        rate_for(0.0, 4)
    with pytest.raises(ValueError):
        masks.prune_by_magnitude(_kernels(), {}, 1, 0.5, scope="everywhere")


def _live_by_reachability(task_masks: list[np.ndarray]) -> list[np.ndarray]:
    """Kept weights on some path from an input to the head (every last-layer unit feeds the head)."""
    reached = np.ones(task_masks[0].shape[0], bool)  # every input is there
    forward = []
    for mask in task_masks:
        forward.append(reached.copy())
        reached = (reached.astype(float) @ mask) > 0
    reaching = np.ones(task_masks[-1].shape[1], bool)
    live = [None] * len(task_masks)
    for index in reversed(range(len(task_masks))):
        mask = task_masks[index] > 0
        live[index] = mask & forward[index][:, None] & reaching[None, :]
        reaching = (mask.astype(float) @ reaching.astype(float)) > 0
    return live


@pytest.mark.parametrize("granularity", masks.GRANULARITIES)
def test_pruned_masks_keep_no_weight_of_a_dead_unit(granularity):
    """A weight out of a unit no kept weight feeds (or into one that feeds nothing) does nothing."""
    kernels = _kernels(3)
    kernels["b"][:, :8] *= 0.01  # some units of b lose all their inputs...
    kernels["c"][20:, :] = 0  # (c has 20 rows: none cut here)
    kernels["c"][:6, :] *= 0.01  # ...and some of b's units feed nothing in c
    full = {name: np.ones_like(kernel, dtype=np.float32) for name, kernel in kernels.items()}
    pruned = masks.prune_by_magnitude(kernels, full, 2, 0.5, granularity=granularity)
    live = _live_by_reachability(list(pruned.values()))
    for (name, mask), live_weights in zip(pruned.items(), live):
        np.testing.assert_array_equal(mask > 0, live_weights, err_msg=name)
    total = sum(mask.size for mask in pruned.values())
    assert masks.remaining_fraction(pruned) == sum(int(w.sum()) for w in live) / total


def test_the_schedule_never_prunes_even_if_tf_mot_asks_at_step_0():
    layer = _wrapper()
    rng = np.random.default_rng(4)
    layer.set_task_masks({task: (rng.random((6, 4)) < 0.5).astype(np.float32) for task in masks.TASKS})
    union, kernel = layer.union_mask.numpy(), layer.layer.kernel.numpy()
    layer.pruning_step.assign(0)
    layer.pruning_obj.conditional_mask_update()
    np.testing.assert_array_equal(layer.union_mask.numpy(), union)
    np.testing.assert_array_equal(layer.layer.kernel.numpy(), kernel)
