"""The Trainer's `run_fn`: Algorithm 1's last step on Transform's output, then export.

For the sparse-sharing network it restores sNET_init and the masks that MaskSearch found
(the masks artifact's folder comes in `custom_config[MASKS_URI]`) and trains on mixed task
batches; given a `base_model` (daily runs: the latest blessed model), it starts from that
model's trained weights instead of sNET_init; the baselines (single task, hard sharing,
shared bottom) train from scratch on the same batches. When `TF_CONFIG` names several
workers, every worker runs this under MultiWorkerMirroredStrategy (`distribution.py`).
It writes:
- the serving model (`fn_args.serving_model_dir`): raw serialized examples in, `ctr` and
  `cvr` out, which the Evaluator scores;
- `<model>/training/`: the trained weights as a checkpoint, the masks, the settings, the
  training passes' figures and the eval metrics, from which the per-task exports are
  made; after a multi-worker run, `replicas/<task>-<index>.json` holds each replica's
  digest of its weights and masks.
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx

from lt4rec.models import distribution, export, features, inputs, masks, network, sparse_sharing, training

logger = logging.getLogger(__name__)

FEATURES = "features"
NETWORK = "network"
TRAIN = "train"
MASKS_URI = "masks_uri"
WARM_START = "warm_start_from"  # the base model's artifact folder, in settings.json
TRAINING_FOLDER = "training"
CHECKPOINT = "checkpoint/checkpoint"
SETTINGS_FILE = "settings.json"
METRICS_FILE = "eval_metrics.json"
PHASES_FILE = "phases.json"  # what each training pass did: examples, seconds, mean loss
WORKERS = "workers"  # how many workers trained it, in settings.json
REPLICAS_FOLDER = "replicas"  # multi-worker runs: each replica's variable digests


def training_folder(serving_model_dir: str) -> str:
    """Where the trained checkpoint and masks live, beside the serving model."""
    return os.path.join(os.path.dirname(serving_model_dir.rstrip("/")), TRAINING_FOLDER)


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    replica = distribution.Replica.from_env()
    strategy = distribution.training_strategy(replica)  # first: before any TensorFlow op runs
    config = fn_args.custom_config or {}
    feature_config = features.FeatureConfig.from_dict(config[FEATURES])
    network_config = network.NetworkConfig.from_dict(config[NETWORK])
    train_config = training.TrainConfig.from_dict(config[TRAIN])
    transform_output = tft.TFTransformOutput(fn_args.transform_output)

    train = inputs.in_memory(inputs.transformed_examples(fn_args.train_files, transform_output))
    evaluation = inputs.in_memory(inputs.transformed_examples(fn_args.eval_files, transform_output))
    tf.keras.utils.set_random_seed(train_config.seed)
    data = sparse_sharing.Datasets.from_columns(
        train, evaluation, train_config.batch_size, train_config.seed, network_config.tasks, strategy
    )
    with strategy.scope():
        model = network.RankingNetwork(feature_config, network_config)
        model.build_for(next(iter(data.validation)))
        if model.masked:
            phases = _train_sparse_sharing(model, data, train_config, config, fn_args.base_model, strategy)
        else:
            trainer = training.MultiTaskTrainer(model, train_config, strategy)
            phases = [
                trainer.train(data.train, f"{network_config.variant} epoch {epoch + 1}", seed=train_config.seed + epoch)
                for epoch in range(train_config.epochs)
            ]

    result = training.evaluate(model, data.validation)
    logger.info("Eval split: %s", ", ".join(f"{k} {v:.5f}" for k, v in result.to_dict().items()))

    # Every replica writes (saving may need all of them); only the chief's outputs are kept.
    with distribution.output_folder(fn_args.serving_model_dir, replica) as serving_model_dir:
        folder = training_folder(serving_model_dir)
        tf.io.gfile.makedirs(folder)
        tf.train.Checkpoint(network=model).write(os.path.join(folder, CHECKPOINT))
        if model.masked:
            masks.save_masks(os.path.join(folder, sparse_sharing.MASKS_FILE), {t: masks.get_masks(model, t) for t in network_config.tasks})
        _write_json(
            os.path.join(folder, SETTINGS_FILE),
            {
                FEATURES: feature_config.to_dict(),
                NETWORK: network_config.to_dict(),
                TRAIN: train_config.to_dict(),
                WARM_START: os.path.dirname(training_folder(fn_args.base_model)) if fn_args.base_model else None,
                MASKS_URI: config.get(MASKS_URI),
                WORKERS: replica.workers,
            },
        )
        _write_json(os.path.join(folder, METRICS_FILE), result.to_dict())
        _write_json(os.path.join(folder, PHASES_FILE), [phase.to_dict() for phase in phases])
        export.export_serving_model(model, transform_output, serving_model_dir)
    if replica.distributed:
        write_replica_fingerprint(fn_args.serving_model_dir, replica, model)
        distribution.barrier(strategy)  # the chief's model exists when any replica returns


def _train_sparse_sharing(
    model: network.RankingNetwork,
    data: sparse_sharing.Datasets,
    train_config: training.TrainConfig,
    config: dict,
    base_model: str | None,
    strategy: tf.distribute.Strategy,
) -> list[training.PhaseStats]:
    """Algorithm 1, step 3: from sNET_init (or the base model's weights) with the searched masks."""
    if not config.get(MASKS_URI):
        raise ValueError("the sparse-sharing network needs the masks of a MaskSearch (no masks input)")
    task_masks = sparse_sharing.load_search(config[MASKS_URI], model)
    start = "sNET_init"
    if base_model:  # a daily run: warm-start from the last blessed (pushed) model
        base_folder = training_folder(base_model)
        tf.train.Checkpoint(network=model).read(os.path.join(base_folder, CHECKPOINT)).assert_existing_objects_matched()
        start = f"the weights of {os.path.dirname(base_folder)}"
    algorithm = sparse_sharing.SparseSharing(model, data, train_config, sparse_sharing.SearchConfig(), strategy)
    algorithm.snet_init = training.snapshot(model)
    logger.info(
        "Training the shared network from %s with the masks of %s (%s)",
        start,
        config[MASKS_URI],
        ", ".join(f"{task} {100 * masks.remaining_fraction(m):.1f}% of MLP weights" for task, m in task_masks.items()),
    )
    return algorithm.train_shared(task_masks)


def write_replica_fingerprint(serving_model_dir: str, replica: distribution.Replica, model: network.RankingNetwork) -> None:
    """Each replica's digest of its weights and masks, beside the chief's checkpoint."""
    folder = os.path.join(training_folder(serving_model_dir), REPLICAS_FOLDER)
    tf.io.gfile.makedirs(folder)
    _write_json(os.path.join(folder, f"{replica.name}.json"), distribution.fingerprint(model))


def _write_json(path: str, value: object) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(value, f, indent=2)


def load_trained(model_uri: str) -> tuple[network.RankingNetwork, dict]:
    """The trained network of a Trainer's `model` artifact, with its masks, and its settings."""
    folder = os.path.join(model_uri, TRAINING_FOLDER)
    with tf.io.gfile.GFile(os.path.join(folder, SETTINGS_FILE)) as f:
        settings = json.load(f)
    model = network.RankingNetwork(
        features.FeatureConfig.from_dict(settings[FEATURES]), network.NetworkConfig.from_dict(settings[NETWORK])
    )
    model.build_for({spec.name: tf.zeros([1, spec.max_values], tf.int64) for spec in features.FEATURES})
    tf.train.Checkpoint(network=model).read(os.path.join(folder, CHECKPOINT)).assert_existing_objects_matched()
    return model, settings
