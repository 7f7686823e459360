"""Id tables sharded over parameter servers (docs/OPERATIONS.md: placement for production tables).

In a fresh process, an in-process cluster (one worker, two parameter servers) builds the
network under ParameterServerStrategy with the Trainer's id-table partitioner, and a ClusterCoordinator
schedules the trainer's own CTR step on the worker. Then, here: every hashed id table was
split by rows over both parameter servers, the masked update rule held, and the
checkpoint restores into the plain network that export and serving use, scoring the same.

And the Trainer's own `run_fn` on a loopback cluster as Vertex AI would start it (a chief,
two workers, two parameter servers, each the TFX executor under its TF_CONFIG): the chief
coordinates, the workers train the searched masks from sNET_init, and the exported model
scores as the trained network.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import lt4rec  # noqa: F401  (Keras 2, before TensorFlow: this module also runs in a fresh process)

# isort: split

import tensorflow as tf

from lt4rec import features
from lt4rec.models import distribution, masks, network, trainer, training
from lt4rec.models.config import NEURON, NetworkConfig, TrainConfig
from lt4rec.testing import trainer_cluster
from tests.helpers import read_examples, run_in_fresh_process

pytestmark = pytest.mark.e2e

HASHED_TABLES = ("user", "video", "content_provider", "tag")
FEATURE_CONFIG_SCALE = 0.01
NETWORK = NetworkConfig(embedding_dim=8, hidden_units=(32, 16))
STEPS = 5


def train_on_parameter_servers(out: str) -> None:
    """Run in a fresh process: build, mask and train on a loopback PS cluster; write what happened."""
    from lt4rec.testing.trainer_cluster import free_ports
    from tests.helpers import random_transformed

    worker, *ps = (f"localhost:{port}" for port in free_ports(3))
    cluster = tf.train.ClusterSpec({"worker": [worker], "ps": ps})
    servers = [tf.distribute.Server(cluster, job_name="worker", task_index=0, protocol="grpc")]
    servers += [
        tf.distribute.Server(cluster, job_name="ps", task_index=index, protocol="grpc") for index in range(len(ps))
    ]
    strategy = tf.distribute.ParameterServerStrategy(
        tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, rpc_layer="grpc"),
        variable_partitioner=distribution.id_table_partitioner(
            network.id_table_shapes(features.scaled_config(FEATURE_CONFIG_SCALE), NETWORK), len(ps)
        ),
    )
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    columns = random_transformed(512, seed=1)
    with strategy.scope():
        model = network.RankingNetwork(features.scaled_config(FEATURE_CONFIG_SCALE), NETWORK)
        model.build_for({name: values[:2] for name, values in columns.items()})
        masks.set_task_masks(
            model,
            {
                task: masks.prune_by_magnitude(
                    masks.get_kernels(model), model.initial_masks(task), 1, 0.5, granularity=granularity
                )
                for task, granularity in (("ctr", NEURON), ("cvr", masks.CONNECTION))
            },
        )
        trainer = training.MultiTaskTrainer(model, TrainConfig(batch_size=64, learning_rate=0.01), strategy)
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
    placement["masked kernels"] = [
        [list(layer.layer.kernel.shape), layer.layer.kernel.device] for layer in masks.masked_layers(model)
    ]
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
        assert sorted(device.split("/device")[0] for _, device in shards) == [
            "/job:ps/replica:0/task:0",
            "/job:ps/replica:0/task:1",
        ]
    kernels = report["placement"]["masked kernels"]  # whole, each on one parameter server: masked updates need them so
    assert len(kernels) == len(NETWORK.hidden_units) and all(device.startswith("/job:ps/") for _, device in kernels)
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


@pytest.fixture(scope="module")
def ps_trainer(finished_run, tmp_path_factory):
    """The tiny run's Trainer execution, rerun on a chief, two workers and two parameter servers."""
    root = tmp_path_factory.mktemp("ps_trainer")
    execution = trainer_cluster.RecordedExecution.recorded(finished_run.metadata_sqlite).with_custom_config(
        train={"shuffle_buffer": 1000}
    )
    workers = trainer_cluster.run_workers(
        execution, str(root / "out"), 3, str(root / "logs"), chief=True, parameter_servers=2
    )
    return execution, str(root / "out" / "model"), workers


def test_the_chief_coordinates_while_workers_and_parameter_servers_serve(ps_trainer):
    _, model_uri, (chief,) = ps_trainer
    assert "coordinator of 2 workers and 2 parameter servers (ParameterServerStrategy" in open(chief.log).read()
    logs = os.path.dirname(chief.log)
    for server in ("worker-0", "worker-1", "ps-0", "ps-1"):
        assert (
            f"Serving as {server} of a cluster of 2 parameter servers"
            in open(os.path.join(logs, f"{server}.log")).read()
        )
    with open(os.path.join(model_uri, trainer.TRAINING_FOLDER, trainer.PHASES_FILE)) as f:
        phases = json.load(f)
    assert all(count > 0 for phase in phases for count in phase["examples"].values())


def test_parameter_server_training_moves_only_what_the_searched_masks_keep_from_snet_init(ps_trainer):
    execution, model_uri, _ = ps_trainer
    model, _ = trainer.load_trained(model_uri)
    (masks_artifact,) = execution.inputs["masks"]
    snet_init = network.RankingNetwork(model.feature_config, model.config)
    snet_init.build_for({spec.name: np.zeros([1, spec.max_values], np.int64) for spec in features.FEATURES})
    searched = masks.load_artifact(masks_artifact.uri, snet_init)
    assert 0.0 < masks.remaining_fraction(searched["ctr"]) < 1.0  # the masks of a real search
    initial_kernels = masks.get_kernels(snet_init)
    for task in masks.TASKS:
        assert all(np.array_equal(masks.get_masks(model, task)[name], searched[task][name]) for name in searched[task])
    for name, kernel in masks.get_kernels(model).items():
        kept = np.maximum(searched["ctr"][name], searched["cvr"][name]) == 1
        assert np.abs(kernel[kept] - initial_kernels[name][kept]).max() > 1e-4  # trained from sNET_init
        assert not kernel[~kept].any()  # what no task keeps stays pruned


def test_the_exported_model_scores_as_the_trained_network(ps_trainer, tiny_logs):
    import glob

    import tensorflow_transform as tft

    execution, model_uri, _ = ps_trainer
    model, _ = trainer.load_trained(model_uri)
    raw = [
        example.SerializeToString()
        for example in read_examples(sorted(glob.glob(os.path.join(tiny_logs, "2*", "part-*.gz")))[-1])
    ][:200]
    (transform_graph,) = execution.inputs["transform_graph"]
    transform_output = tft.TFTransformOutput(transform_graph.uri)
    transformed = transform_output.transform_features_layer()(
        tf.io.parse_example(tf.constant(raw), transform_output.raw_feature_spec())
    )
    expected = model({name: transformed[name] for name in features.FEATURE_NAMES})
    served = tf.saved_model.load(os.path.join(model_uri, "Format-Serving")).signatures["serving_default"](
        examples=tf.constant(raw)
    )
    for task in masks.TASKS:
        np.testing.assert_allclose(
            served[task].numpy().reshape(-1), expected[task].numpy().reshape(-1), rtol=1e-5, atol=1e-6
        )


def test_mask_search_runs_on_parameter_servers_too(finished_run, tmp_path):
    """MaskSearch under the same strategy: the chief coordinates the warmup and every round."""
    execution = trainer_cluster.RecordedExecution.recorded(
        finished_run.metadata_sqlite, trainer_cluster.MASK_SEARCH_NODE
    )
    (chief,) = trainer_cluster.run_workers(
        execution, str(tmp_path / "out"), 3, str(tmp_path / "logs"), chief=True, parameter_servers=2
    )
    log = open(chief.log).read()
    assert "coordinator of 2 workers and 2 parameter servers" in log and "ctr search round 1" in log
    report = masks.read_report(str(tmp_path / "out" / "masks"))
    searched = masks.read_artifact_masks(str(tmp_path / "out" / "masks"))
    for task in masks.TASKS:
        rounds = report["tasks"][task]["rounds"]
        assert [r["remaining"] for r in rounds] == sorted((r["remaining"] for r in rounds), reverse=True)
        assert masks.remaining_fraction(searched[task]) == pytest.approx(
            rounds[report["tasks"][task]["best_round"]]["remaining"]
        )
