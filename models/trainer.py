"""The Trainer's `run_fn`: the network trained on Transform's output, then exported.

For the sparse-sharing network it restores sNET_init and the masks that MaskSearch found
(the masks artifact's folder comes in `custom_config[MASKS_URI]`) and trains on mixed task
batches (Algorithm 1's step 3); given a `base_model` (daily runs: the latest blessed
model), it continues that model's trained weights under the masks that model was trained
with (its checkpoint holds them), so weights and masks always come from one lineage. The
other variants train from scratch (or from the base model) on the same batches. Every
phase stops early on a seeded held-out share of the train split; the eval split is only
scored at the end. When `TF_CONFIG` names several workers, every worker runs this under
MultiWorkerMirroredStrategy (`distribution.py`).
It writes:
- the serving model (`fn_args.serving_model_dir`): raw serialized examples in, `ctr` and
  `cvr` out, which the Evaluator scores, its id tables stored as `custom_config[EMBEDDING_STORAGE_KEY]`
  says (the pushed models' storage; float32 without it);
- `<model>/training/`: the trained weights (with the masks) as a checkpoint, the settings, the
  training passes' figures and the eval metrics, from which the per-task exports are
  made; `replicas/<task>-<index>.json` (and `.start.json`) hold each replica's digest of
  its weights and masks at the end (and at the first step) of training.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable

import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx

from lt4rec import errors, features
from lt4rec.models import distribution, export, inputs, masks, network, sparse_sharing, training
from lt4rec.models.config import ModelSettings, NetworkConfig

logger = logging.getLogger(__name__)

FEATURES = "features"
NETWORK = "network"
TRAIN = "train"
MASKS_URI = "masks_uri"
# custom_config: how the serving model stores its id tables (`export.EMBEDDING_STORAGES`), as
# TaskPusher stores the pushed models' (the pipeline gives both its `embedding_storage`), so
# that the Evaluator scores what is pushed.
EMBEDDING_STORAGE_KEY = "embedding_storage"
WARM_START = "warm_start_from"  # the base model's artifact folder, in settings.json
TRAINING_FOLDER = "training"
CHECKPOINT = "checkpoint/checkpoint"
SETTINGS_FILE = "settings.json"
METRICS_FILE = "eval_metrics.json"
PHASES_FILE = "phases.json"  # what each training pass did: examples, seconds, mean loss
WORKERS = "workers"  # how many workers trained it, in settings.json
REPLICAS_FOLDER = "replicas"  # multi-worker runs: each replica's variable digests
START_SUFFIX = ".start.json"  # ... and their digests when training started


def training_folder(serving_model_dir: str) -> str:
    """Where the trained checkpoint and masks live, beside the serving model."""
    return os.path.join(os.path.dirname(serving_model_dir.rstrip("/")), TRAINING_FOLDER)


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    replica = distribution.Replica.from_env()
    if replica.serves:  # a worker or parameter server: the chief schedules the training
        distribution.serve(replica)
    config = fn_args.custom_config or {}
    settings = ModelSettings.from_dict(config)  # as MaskSearch reads them
    feature_config, network_config, train_config = settings.features, settings.network, settings.train
    # Before any TensorFlow op runs: collectives are configured when the runtime starts.
    strategy = distribution.training_strategy(replica, network.id_table_shapes(feature_config, network_config))
    coordinator = distribution.coordinator(strategy)
    transform_output = tft.TFTransformOutput(fn_args.transform_output)

    tf.keras.utils.set_random_seed(train_config.seed)
    data = sparse_sharing.Datasets.from_split(
        inputs.TransformedSplit.from_patterns(fn_args.train_files, transform_output),
        train_config,
        training.batch_streams(network_config),
        strategy,
    )
    start: dict[str, str] = {}
    with strategy.scope():
        model = network.RankingNetwork(feature_config, network_config)
        model.build_for(next(iter(data.validation)))
        model.start_at_base_rates(data.base_rates)  # a restored start overwrites it
        trainer = training.MultiTaskTrainer(model, train_config, strategy)
        base = _restore_base_model(model, fn_args.base_model) if fn_args.base_model else None
        if model.masked:
            phases, masks_uri = _train_sparse_sharing(
                trainer, data, config, base, on_start=lambda: start.update(distribution.fingerprint(model))
            )
        else:
            start.update(distribution.fingerprint(model))
            masks_uri = None
            phases = trainer.fit(
                data.train, data.validation, network_config.variant, train_config.epochs, train_config.seed, data.steps
            )

    evaluation = inputs.TransformedSplit.from_patterns(fn_args.eval_files, transform_output)
    if coordinator is not None:  # the weights are on the parameter servers: export and score a plain copy
        model = plain_copy(model, next(iter(data.validation)))
    result = training.evaluate(model, inputs.ordered_stream(evaluation, 4 * train_config.batch_size))
    logger.info("Eval split: %s", ", ".join(f"{k} {v:.5f}" for k, v in result.to_dict().items()))

    # Every replica writes (saving may need all of them); only the chief's outputs are kept.
    with distribution.output_folder(fn_args.serving_model_dir, replica) as serving_model_dir:
        folder = training_folder(serving_model_dir)
        tf.io.gfile.makedirs(folder)
        tf.train.Checkpoint(network=model).write(os.path.join(folder, CHECKPOINT))
        _write_json(
            os.path.join(folder, SETTINGS_FILE),
            {
                FEATURES: feature_config.to_dict(),
                NETWORK: network_config.to_dict(),
                TRAIN: train_config.to_dict(),
                WARM_START: os.path.dirname(training_folder(fn_args.base_model)) if fn_args.base_model else None,
                MASKS_URI: masks_uri,
                WORKERS: replica.workers,
            },
        )
        _write_json(os.path.join(folder, METRICS_FILE), result.to_dict())
        _write_json(os.path.join(folder, PHASES_FILE), [phase.to_dict() for phase in phases])
        export.export_serving_model(
            model,
            transform_output,
            serving_model_dir,
            embedding_storage=config.get(EMBEDDING_STORAGE_KEY, export.EMBEDDING_STORAGE),
        )
    if replica.distributed and coordinator is None:
        write_replica_fingerprint(fn_args.serving_model_dir, replica, model, start)
        distribution.barrier(strategy)  # the chief's model exists when any replica returns


def plain_copy(model: network.RankingNetwork, sample: dict) -> network.RankingNetwork:
    """The network, weights and masks, outside any strategy: restored from its checkpoint,
    as export and serving restore it (the id tables' shards join into whole tables)."""
    folder = tempfile.mkdtemp(prefix="lt4rec-plain-")
    try:
        path = tf.train.Checkpoint(network=model).write(os.path.join(folder, "checkpoint"))
        plain = network.RankingNetwork(model.feature_config, model.config)
        plain.build_for({name: sample[name] for name in features.FEATURE_NAMES})
        tf.train.Checkpoint(network=plain).read(path).assert_existing_objects_matched()
        return plain
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _restore_base_model(model: network.RankingNetwork, base_model: str) -> dict:
    """Daily runs: the base model's weights (and masks) into `model`; the base model's settings."""
    folder = training_folder(base_model)
    with tf.io.gfile.GFile(os.path.join(folder, SETTINGS_FILE)) as f:
        settings = json.load(f)
    trained_on = NetworkConfig.from_dict(settings[NETWORK])
    if trained_on != model.config:
        raise errors.UserFacingError(
            f"the base model {os.path.dirname(folder)} is a {trained_on} network, not {model.config}: "
            "daily runs continue the latest blessed model, so they need its settings (or run a search first)"
        )
    tf.train.Checkpoint(network=model).read(os.path.join(folder, CHECKPOINT)).assert_existing_objects_matched()
    return settings


def _train_sparse_sharing(
    trainer: training.MultiTaskTrainer,
    data: sparse_sharing.Datasets,
    config: dict,
    base: dict | None,
    on_start: Callable[[], None] | None = None,
) -> tuple[list[training.PhaseStats], str]:
    """Algorithm 1, step 3: from sNET_init with the searched masks, or from the base model under its own masks.

    Returns the phases and the masks artifact the masks come from (for a base model, the
    one it was trained with).
    """
    model = trainer.model
    if base is not None:  # a daily run: continue the last blessed model under the masks it was trained with
        task_masks = {task: masks.get_masks(model, task) for task in model.config.tasks}
        masks_uri, start = base[MASKS_URI], "the weights and masks of the base model"
    elif config.get(MASKS_URI):
        task_masks = masks.load_artifact(config[MASKS_URI], model)
        masks_uri, start = config[MASKS_URI], "sNET_init"
    else:
        raise errors.UserFacingError(
            "the sparse-sharing network needs the masks of a MaskSearch, or a blessed model to continue: a daily run "
            "(--masks reuse) continues the latest blessed model under its masks, and no model is blessed yet; "
            "run with --masks search first"
        )
    logger.info(
        "Training the shared network from %s with the masks of %s (%s)",
        start,
        masks_uri,
        ", ".join(f"{task} {100 * masks.remaining_fraction(m):.1f}% of MLP weights" for task, m in task_masks.items()),
    )
    phases = sparse_sharing.train_shared(
        trainer, data, task_masks, trainer.config.epochs, trainer.config.seed + 10_000, on_start
    )
    return phases, masks_uri


def write_replica_fingerprint(
    serving_model_dir: str, replica: distribution.Replica, model: network.RankingNetwork, start: dict[str, str]
) -> None:
    """Each replica's digest of its weights and masks, at the end and at the first step,
    beside the chief's checkpoint."""
    folder = os.path.join(training_folder(serving_model_dir), REPLICAS_FOLDER)
    tf.io.gfile.makedirs(folder)
    _write_json(os.path.join(folder, f"{replica.name}.json"), distribution.fingerprint(model))
    _write_json(os.path.join(folder, f"{replica.name}{START_SUFFIX}"), start)


def _write_json(path: str, value: object) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(value, f, indent=2)


def load_trained(model_uri: str) -> tuple[network.RankingNetwork, dict]:
    """The trained network of a Trainer's `model` artifact, with its masks, and its settings."""
    folder = os.path.join(model_uri, TRAINING_FOLDER)
    with tf.io.gfile.GFile(os.path.join(folder, SETTINGS_FILE)) as f:
        settings = json.load(f)
    model = network.RankingNetwork(
        features.FeatureConfig.from_dict(settings[FEATURES]), NetworkConfig.from_dict(settings[NETWORK])
    )
    model.build_for({spec.name: tf.zeros([1, spec.max_values], tf.int64) for spec in features.FEATURES})
    tf.train.Checkpoint(network=model).read(os.path.join(folder, CHECKPOINT)).assert_existing_objects_matched()
    return model, settings
