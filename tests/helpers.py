"""Helpers shared by the tests (the fixtures are in conftest.py): paths, small settings,
example files, fresh processes."""

from __future__ import annotations

import os
import subprocess
import sys

import lt4rec  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from lt4rec.models.config import NetworkConfig, SearchConfig, TrainConfig

LT4REC = os.path.join(os.path.dirname(sys.executable), "lt4rec")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE_SCALE = 0.01  # the pipeline tests' id tables, scaled to the tiny logs


def run_in_fresh_process(module: str, function: str, *args: object, timeout: float = 300) -> str:
    """Call `module.function(*args)` in a new Python process; its stdout, or fail with its stderr.

    For tests that must configure TensorFlow's runtime (devices, servers) before it starts.
    """
    call = f"from {module} import {function} as f; f({', '.join(map(repr, args))})"
    done = subprocess.run([sys.executable, "-c", call], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def tiny_model() -> dict:
    """The pipeline tests' network, training and search settings: small and quick."""
    return dict(
        network=NetworkConfig(embedding_dim=8, hidden_units=(32, 16)),
        train=TrainConfig(batch_size=128),
        search=SearchConfig(rounds=2, remaining=0.25),
    )


def read_examples(path: str) -> list:
    import tensorflow as tf

    return [
        tf.train.Example.FromString(record)
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator()
    ]


def write_examples(path: str, examples: list) -> None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for example in examples:
            writer.write(example.SerializeToString())


def random_transformed(rows: int, seed: int = 0) -> dict:
    """Transformed examples (ids in [0, 16), 0 = missing) whose labels depend on a few ids.

    Small enough for every table of `features.scaled_config(0.001)`; stands in for
    Transform's output in the unit tests of the models.
    """
    import numpy as np

    from lt4rec import features

    rng = np.random.default_rng(seed)
    examples = {
        spec.name: rng.integers(0, 16, size=(rows, spec.max_values)).astype(np.int64) for spec in features.FEATURES
    }
    logit = (examples["FEA_UID"][:, 0] % 5 - 2) * 0.8 + (examples["FEA_VID"][:, 0] % 3 - 1)
    click = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    ratio = np.clip(0.5 + 0.1 * (examples["FEA_CP"][:, 0] % 4) + rng.normal(0, 0.1, rows), 0, 1)
    examples[features.CLICK_LABEL] = click
    examples[features.WATCH_RATIO_LABEL] = np.where(click == 1, ratio, 0).astype(np.float32)
    return examples


def push_blessed(model, transform_output, folder: str, serving_dir: str, **exec_properties):
    """TaskPusher's executor, as the pipeline runs it, on `model` blessed: returns its PushedModel artifact.

    The Trainer's model artifact holds what `trainer.load_trained` reads (checkpoint, settings).
    """
    import json

    import tensorflow as tf
    from tfx.types import standard_artifacts

    from lt4rec.components import task_pusher
    from lt4rec.models import trainer

    training = os.path.join(folder, "model", trainer.TRAINING_FOLDER)
    tf.train.Checkpoint(network=model).write(os.path.join(training, trainer.CHECKPOINT))
    with open(os.path.join(training, trainer.SETTINGS_FILE), "w") as handle:
        json.dump({trainer.FEATURES: model.feature_config.to_dict(), trainer.NETWORK: model.config.to_dict()}, handle)
    trained = standard_artifacts.Model()
    trained.uri = os.path.join(folder, "model")
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = os.path.join(folder, "blessing")
    blessing.set_int_custom_property("blessed", 1)
    transform_graph = standard_artifacts.TransformGraph()
    transform_graph.uri = os.path.dirname(transform_output.transform_savedmodel_dir)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = os.path.join(folder, "pushed")
    task_pusher.TaskPusher_Executor().Do(
        {"model": [trained], "model_blessing": [blessing], "transform_graph": [transform_graph]},
        {"pushed_model": [pushed]},
        {"serving_dir": serving_dir, **exec_properties},
    )
    return pushed
