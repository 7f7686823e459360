"""The cluster a Trainer process is part of, and data-parallel training on replica slices."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import lt4rec  # noqa: F401  (Keras 2, before TensorFlow: this module also runs in a fresh process)

# isort: split

import tensorflow as tf

from lt4rec.models import distribution, training
from lt4rec.models.config import NEURON, NetworkConfig, TrainConfig
from tests.helpers import run_in_fresh_process


def _replica(monkeypatch, cluster: dict, task_type: str, index: int) -> distribution.Replica:
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}}))
    return distribution.Replica.from_env()


def test_without_tf_config_the_process_is_a_local_chief(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    replica = distribution.Replica.from_env()
    assert (replica.is_chief, replica.distributed, replica.name) == (True, False, "local")
    assert distribution.training_strategy(replica) is tf.distribute.get_strategy()


def test_worker_0_is_chief_unless_the_cluster_names_one(monkeypatch):
    workers = {"worker": ["localhost:1", "localhost:2"]}
    first, second = (_replica(monkeypatch, workers, "worker", index) for index in (0, 1))
    assert (first.is_chief, second.is_chief, first.workers, first.distributed) == (True, False, 2, True)
    with_chief = {"chief": ["localhost:0"], **workers, "ps": ["localhost:3"]}
    chief = _replica(monkeypatch, with_chief, "chief", 0)
    worker = _replica(monkeypatch, with_chief, "worker", 0)
    assert (chief.is_chief, worker.is_chief, chief.workers, worker.name) == (True, False, 3, "worker-0")


def test_a_task_outside_the_cluster_is_named(monkeypatch):
    with pytest.raises(ValueError, match="TF_CONFIG.*evaluator"):
        _replica(monkeypatch, {"worker": ["localhost:1"]}, "evaluator", 0)


def test_only_the_chief_writes_where_asked(tmp_path):
    chief, worker = distribution.Replica("worker", 0, 2), distribution.Replica("worker", 1, 2)
    with distribution.output_folder(str(tmp_path / "model"), chief) as folder:
        assert folder == str(tmp_path / "model")
    with distribution.output_folder(str(tmp_path / "model"), worker) as folder:
        assert not folder.startswith(str(tmp_path)) and folder.endswith("model")
        os.makedirs(folder)
    assert not os.path.exists(folder)


def _rows_seen(columns: dict, pipelines: int, replicas: int) -> list[list[list[int]]]:
    """Per input pipeline, per element: the row numbers of a pass of replica-sliced batches."""
    seen = []
    for pipeline in range(pipelines):
        context = tf.distribute.InputContext(pipelines, pipeline, replicas)
        batches = training.task_batches(columns, "ctr", 40, seed=5, input_context=context)
        seen.append([[int(row) for row in batch["row"]] for batch in batches])
    return seen


@pytest.mark.parametrize("pipelines, replicas", [(2, 2), (2, 4), (1, 2)])
def test_replica_slices_cut_the_same_global_batches_into_disjoint_slices(pipelines, replicas):
    columns = {"row": np.arange(130), training.CLICK: np.zeros(130, np.int64)}
    seen = _rows_seen(columns, pipelines, replicas)
    local = replicas // pipelines
    global_batches = [list(batch["row"].numpy()) for batch in training.task_batches(columns, "ctr", 40, seed=5)][:3]
    for step, global_batch in enumerate(global_batches):  # 130 rows: 3 whole batches of 40, 10 dropped
        slices = [seen[pipeline][step * local + replica] for pipeline in range(pipelines) for replica in range(local)]
        assert [len(s) for s in slices] == [40 // replicas] * replicas
        assert sum(slices, []) == global_batch
    assert all(len(elements) == 3 * local for elements in seen)


def test_replica_slices_need_a_batch_the_replicas_divide():
    columns = {"row": np.arange(10), training.CLICK: np.zeros(10, np.int64)}
    with pytest.raises(ValueError, match="divisible"):
        training.task_batches(columns, "ctr", 5, seed=0, input_context=tf.distribute.InputContext(1, 0, 2))


def mirrored_against_one_device(optimizer: str) -> None:
    """Run in a fresh process: train the masked network on 2 CPU replicas and on 1, print the gap."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from lt4rec import features
    from lt4rec.models import masks, network
    from tests.helpers import random_transformed

    columns = random_transformed(600, seed=4)
    config = TrainConfig(batch_size=64, learning_rate=0.01, optimizer=optimizer)

    def trained(strategy: tf.distribute.Strategy, initial: list | None, task_masks: dict | None):
        tf.keras.utils.set_random_seed(0)
        with strategy.scope():
            model = network.RankingNetwork(
                features.scaled_config(0.001), NetworkConfig(embedding_dim=4, hidden_units=(16, 8))
            )
            model.build_for({name: values[:2] for name, values in columns.items()})
            if initial is not None:
                training.restore(model, initial)
            initial = training.snapshot(model)
            if task_masks is None:
                task_masks = {
                    task: masks.prune_by_magnitude(
                        masks.get_kernels(model), model.initial_masks(task), 1, rate, granularity=granularity
                    )
                    for task, rate, granularity in (("ctr", 0.5, NEURON), ("cvr", 0.6, masks.CONNECTION))
                }
            masks.set_task_masks(model, task_masks)
            trainer = training.MultiTaskTrainer(model, config, strategy)
        batches = {
            task: training.distributed_task_batches(columns, task, config.batch_size, 1, strategy)
            if strategy.num_replicas_in_sync > 1
            else training.task_batches(columns, task, config.batch_size, 1)  # one device: the same whole batches
            for task in ("ctr", "cvr")
        }
        clicked = int(np.count_nonzero(np.asarray(columns[training.CLICK]) == 1))
        steps = {"ctr": 600 // config.batch_size, "cvr": clicked // config.batch_size}  # whole global batches only
        stats = [trainer.train(batches, f"pass {epoch}", seed=2 + epoch, steps=steps) for epoch in range(2)]
        moments = [v.numpy() for v in trainer.optimizer.variables()]
        return model, initial, task_masks, stats, moments

    one, initial, task_masks, one_stats, one_moments = trained(tf.distribute.get_strategy(), None, None)
    mirrored, _, _, mirrored_stats, mirrored_moments = trained(
        tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), initial, task_masks
    )
    print(
        json.dumps(
            {
                "replicas": 2,
                "examples": [[s.examples for s in one_stats], [s.examples for s in mirrored_stats]],
                "max_gap": max(
                    float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(one.variables, mirrored.variables)
                ),
                # Adam's moments see the gradients' scale (its updates do not): a wrongly
                # scaled loss per replica shows here.
                "max_moment_gap": max(
                    float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12))
                    for a, b in zip(one_moments, mirrored_moments)
                ),
                "max_moved": max(
                    float(np.max(np.abs(a.numpy() - b))) for a, b in zip(one.trainable_variables, initial)
                ),
                "masks_equal": all(
                    np.array_equal(masks.get_masks(one, task)[name], masks.get_masks(mirrored, task)[name])
                    for task in task_masks
                    for name in task_masks[task]
                ),
            }
        )
    )


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "lazy_adam"])
def test_two_replicas_train_as_one_device_on_the_same_global_batches(optimizer):
    """Replica slices, all-reduce, loss scaling and masked optimizers, checked end to end."""
    stdout = run_in_fresh_process("tests.test_distribution", "mirrored_against_one_device", optimizer)
    report = json.loads(stdout.strip().splitlines()[-1])
    one_examples, mirrored_examples = report["examples"]
    assert one_examples == mirrored_examples and one_examples[0]["ctr"] == 9 * 64
    assert report["masks_equal"]
    assert report["max_moved"] > 1e-3  # it trained
    assert report["max_gap"] < 1e-4, report
    assert report["max_moment_gap"] < 1e-3, report
