"""Id tables sharded over parameter servers (the README's placement for production tables).

In a fresh process, an in-process cluster (one worker, two parameter servers) builds the
network under ParameterServerStrategy with a size partitioner, and a ClusterCoordinator
schedules the trainer's own CTR step on the worker. Then, here: every hashed id table was
split by rows over both parameter servers, the masked update rule held, and the
checkpoint restores into the plain network that export and serving use, scoring the same.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import lt4rec  # noqa: F401  (Keras 2, before TensorFlow: this module also runs in a fresh process)
import tensorflow as tf

from lt4rec.models import features, masks, network, training
from tests.conftest import run_in_fresh_process

HASHED_TABLES = ("user", "video", "content_provider", "tag")
FEATURE_CONFIG_SCALE = 0.01
NETWORK = network.NetworkConfig(embedding_dim=8, hidden_units=(32, 16))
STEPS = 5


def train_on_parameter_servers(out: str) -> None:
    """Run in a fresh process: build, mask and train on a loopback PS cluster; write what happened."""
    from lt4rec.pipeline.trainer_cluster import free_ports
    from tests.conftest import random_transformed

    worker, *ps = (f"localhost:{port}" for port in free_ports(3))
    cluster = tf.train.ClusterSpec({"worker": [worker], "ps": ps})
    servers = [tf.distribute.Server(cluster, job_name="worker", task_index=0, protocol="grpc")]
    servers += [tf.distribute.Server(cluster, job_name="ps", task_index=index, protocol="grpc") for index in range(len(ps))]
    strategy = tf.distribute.ParameterServerStrategy(
        tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, rpc_layer="grpc"),
        variable_partitioner=tf.distribute.experimental.partitioners.MinSizePartitioner(min_shard_bytes=16 << 10, max_shards=len(ps)),
    )
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    columns = random_transformed(512, seed=1)
    with strategy.scope():
        model = network.RankingNetwork(features.scaled_config(FEATURE_CONFIG_SCALE), NETWORK)
        model.build_for({name: values[:2] for name, values in columns.items()})
        masks.set_task_masks(
            model,
            {
                task: masks.prune_by_magnitude(masks.get_kernels(model), model.initial_masks(task), 1, 0.5, granularity=granularity)
                for task, granularity in (("ctr", masks.NEURON), ("cvr", masks.CONNECTION))
            },
        )
        trainer = training.MultiTaskTrainer(model, training.TrainConfig(batch_size=64, learning_rate=0.01), strategy)
    before = masks.get_kernels(model)

    step = trainer.replica_step("ctr")
    batches = iter(coordinator.create_per_worker_dataset(lambda: training.task_batches(columns, "ctr", 64, 0).repeat()))
    scheduled = tf.function(lambda iterator: strategy.run(step, args=(next(iterator),)))
    losses = [coordinator.schedule(scheduled, args=(batches,)) for _ in range(STEPS)]
    coordinator.join()

    sample = {name: tf.constant(columns[name][:50]) for name in features.FEATURE_NAMES}
    scores = coordinator.schedule(tf.function(lambda inputs: model(inputs)), args=(sample,)).fetch()
    tf.train.Checkpoint(network=model).write(os.path.join(out, "checkpoint"))
    np.savez(
        os.path.join(out, "arrays.npz"),
        **{f"before/{name}": kernel for name, kernel in before.items()},
        **{f"after/{name}": kernel for name, kernel in masks.get_kernels(model).items()},
        **{f"ctr_mask/{name}": mask for name, mask in masks.get_masks(model, "ctr").items()},
        **{f"scores/{task}": values for task, values in scores.items()},
        **{f"sample/{name}": values.numpy() for name, values in sample.items()},
    )
    placement = {
        table: [(shard.shape.as_list(), shard.device) for shard in model.embeddings.tables[table].variables]
        for table in model.embeddings.tables
    }
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"placement": placement, "losses": [float(loss.fetch()) for loss in losses], "ps": ps}, f)


@pytest.fixture(scope="module")
def ps_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("parameter_servers"))
    run_in_fresh_process("tests.test_parameter_server", "train_on_parameter_servers", out)
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    return out, report, dict(np.load(os.path.join(out, "arrays.npz")))


def test_hashed_id_tables_are_split_by_rows_over_both_parameter_servers(ps_run):
    _, report, _ = ps_run
    sizes = {table.name: table.size for table in features.scaled_config(FEATURE_CONFIG_SCALE).tables}
    for table in HASHED_TABLES:
        shards = report["placement"][table]
        assert len(shards) == 2, table
        assert sum(shape[0] for shape, _ in shards) == sizes[table] and {shape[1] for shape, _ in shards} == {8}
        assert sorted(device.split("/device")[0] for _, device in shards) == ["/job:ps/replica:0/task:0", "/job:ps/replica:0/task:1"]
    assert all(np.isfinite(report["losses"])) and len(report["losses"]) == STEPS


def test_ctr_steps_scheduled_on_the_worker_change_only_what_the_ctr_mask_keeps(ps_run):
    _, _, arrays = ps_run
    names = [key.split("/", 1)[1] for key in arrays if key.startswith("before/")]
    for name in names:
        kept = arrays[f"ctr_mask/{name}"] == 1
        moved = np.abs(arrays[f"after/{name}"] - arrays[f"before/{name}"])
        assert moved[kept].max() > 1e-3 and not moved[~kept].any(), name


def test_the_checkpoint_restores_into_the_plain_network_and_scores_the_same(ps_run):
    out, _, arrays = ps_run
    model = network.RankingNetwork(features.scaled_config(FEATURE_CONFIG_SCALE), NETWORK)
    sample = {name: tf.constant(arrays[f"sample/{name}"]) for name in features.FEATURE_NAMES}
    model.build_for(sample)
    tf.train.Checkpoint(network=model).read(os.path.join(out, "checkpoint")).assert_existing_objects_matched()
    for task, scores in model(sample).items():
        np.testing.assert_allclose(scores.numpy(), arrays[f"scores/{task}"], rtol=1e-5, atol=1e-6)
    for name, mask in masks.get_masks(model, "ctr").items():
        assert np.array_equal(mask, arrays[f"ctr_mask/{name}"])
