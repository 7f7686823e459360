"""The Trainer as two replicas on loopback, each one the TFX executor under TF_CONFIG, in the
topology Vertex AI's training job gives them (a `chief` and a `worker`), streaming the
train split (each worker its own share of the records) as it would at scale."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lt4rec import features
from lt4rec.models import distribution, masks, network, trainer
from lt4rec.testing import trainer_cluster

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_workers(finished_run, tmp_path_factory):
    """The tiny run's Trainer execution, rerun as chief 0 and worker 0, streaming its input."""
    root = tmp_path_factory.mktemp("two_workers")
    execution = trainer_cluster.RecordedExecution.recorded(finished_run.metadata_sqlite).with_custom_config(
        train={"input_mode": "streaming", "shuffle_buffer": 1000}
    )
    workers = trainer_cluster.run_workers(execution, str(root / "out"), 2, str(root / "logs"), chief=True)
    return execution, str(root / "out" / "model"), workers


def test_both_workers_hold_the_same_weights_and_masks(two_workers):
    _, model_uri, workers = two_workers
    replicas = os.path.join(model_uri, trainer.TRAINING_FOLDER, trainer.REPLICAS_FOLDER)
    digests = {name: json.load(open(os.path.join(replicas, name))) for name in sorted(os.listdir(replicas))}
    assert list(digests) == ["chief-0.json", "chief-0.start.json", "worker-0.json", "worker-0.start.json"]
    assert digests["chief-0.json"] == digests["worker-0.json"]
    assert any("ctr_mask" in name for name in digests["chief-0.json"])  # the masks are in the digest
    for worker in workers:
        log = open(worker.log).read()
        assert f"Training as {worker.name} of 2 workers (MultiWorkerMirroredStrategy, 2 replicas in sync)" in log
        assert "held out for validation; streamed" in log


def test_the_chief_saved_what_the_workers_held_trained_from_snet_init_with_the_searched_masks(two_workers):
    execution, model_uri, _ = two_workers
    model, settings = trainer.load_trained(model_uri)
    assert settings[trainer.WORKERS] == 2
    digests = json.load(
        open(os.path.join(model_uri, trainer.TRAINING_FOLDER, trainer.REPLICAS_FOLDER, "worker-0.json"))
    )
    assert list(distribution.fingerprint(model).values()) == list(digests.values())

    (masks_artifact,) = execution.inputs["masks"]
    searched = masks.read_artifact_masks(masks_artifact.uri)
    for task in masks.TASKS:
        assert all(np.array_equal(masks.get_masks(model, task)[name], searched[task][name]) for name in searched[task])

    snet_init = network.RankingNetwork(model.feature_config, model.config)
    snet_init.build_for({spec.name: np.zeros([1, spec.max_values], np.int64) for spec in features.FEATURES})
    masks.set_task_masks(snet_init, masks.load_artifact(masks_artifact.uri, snet_init))
    expected_start = list(distribution.fingerprint(snet_init).values())  # sNET_init under the searched masks
    replicas = os.path.join(model_uri, trainer.TRAINING_FOLDER, trainer.REPLICAS_FOLDER)
    for worker in ("chief-0", "worker-0"):
        assert list(json.load(open(os.path.join(replicas, worker + trainer.START_SUFFIX))).values()) == expected_start
    initial_kernels = masks.get_kernels(snet_init)
    for name, kernel in masks.get_kernels(model).items():
        init = initial_kernels[name]
        kept = np.maximum(searched["ctr"][name], searched["cvr"][name]) == 1
        assert np.abs(kernel[kept] - init[kept]).max() > 1e-4  # trained from sNET_init
        assert not kernel[~kept].any()  # what no task keeps stays pruned


def test_every_replica_took_the_same_whole_slices_of_each_pass(two_workers, finished_run):
    _, model_uri, _ = two_workers
    (shared,) = json.load(open(os.path.join(model_uri, trainer.TRAINING_FOLDER, trainer.PHASES_FILE)))
    batch = finished_run.train.batch_size
    assert shared["phase"] == "shared training epoch 1"
    assert all(count > 0 and count % batch == 0 for count in shared["examples"].values())
    assert os.path.exists(os.path.join(model_uri, "Format-Serving", "saved_model.pb"))


@pytest.fixture(scope="module")
def two_worker_search(finished_run, tmp_path_factory):
    """The tiny run's MaskSearch, rerun as chief 0 and worker 0; and the masks its one process found."""
    root = tmp_path_factory.mktemp("two_worker_search")
    execution = trainer_cluster.RecordedExecution.recorded(
        finished_run.metadata_sqlite, trainer_cluster.MASK_SEARCH_NODE
    )
    workers = trainer_cluster.run_workers(execution, str(root / "out"), 2, str(root / "logs"), chief=True)
    (one_worker,) = trainer_cluster.RecordedExecution.recorded(finished_run.metadata_sqlite).inputs["masks"]
    return one_worker.uri, str(root / "out" / "masks"), workers


def test_two_workers_search_the_masks_one_worker_finds(two_worker_search):
    one_worker, two_workers, workers = two_worker_search
    for worker in workers:
        assert f"Training as {worker.name} of 2 workers (MultiWorkerMirroredStrategy" in open(worker.log).read()
    one, two = masks.read_report(one_worker), masks.read_report(two_workers)
    assert two["workers"] == 2
    one_masks = masks.read_artifact_masks(one_worker)
    two_masks = masks.read_artifact_masks(two_workers)
    for task in masks.TASKS:
        # The same global batches, gradients summed over two replicas instead of one: equal
        # up to the order of floating-point sums, so the same rounds score alike and win.
        assert two["tasks"][task]["best_round"] == one["tasks"][task]["best_round"]
        for one_round, two_round in zip(one["tasks"][task]["rounds"], two["tasks"][task]["rounds"], strict=True):
            assert two_round["remaining"] == pytest.approx(one_round["remaining"], abs=1e-3)
            assert two_round["value"] == pytest.approx(one_round["value"], rel=1e-3)
        for name, mask in one_masks[task].items():
            assert np.mean(two_masks[task][name] == mask) > 0.999, (task, name)
    assert 0.0 < masks.remaining_fraction(two_masks["ctr"]) < 1.0  # a real search: masks pruned, not all ones
    assert os.path.exists(os.path.join(two_workers, masks.SNET_INIT_CHECKPOINT + ".index"))
