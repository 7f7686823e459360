"""Shared fixtures: small generated logs, and tools to damage a copy of them."""

from __future__ import annotations

import os
import shutil
import sys
from typing import Callable

import pytest

import lt4rec  # noqa: F401  (selects Keras 2 before TensorFlow is imported)

LT4REC = os.path.join(os.path.dirname(sys.executable), "lt4rec")


@pytest.fixture(scope="session")
def tiny_logs(tmp_path_factory) -> str:
    """1,500 generated impressions over 3 days (seed 7): DIR/YYYYMMDD/part-00000.gz."""
    from lt4rec.logs import generator

    out = str(tmp_path_factory.mktemp("tiny_logs"))
    generator.generate(out, rows=1500, days=3, seed=7)
    return out


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


@pytest.fixture
def damaged_copy(tiny_logs, tmp_path) -> Callable[[Callable[[list], list]], str]:
    """Copies the tiny logs and rewrites the 2nd day's file through `damage(examples)`."""

    def make(damage: Callable[[list], list]) -> str:
        root = str(tmp_path / "logs")
        shutil.copytree(tiny_logs, root)
        path = os.path.join(root, "20201012", "part-00000.gz")
        write_examples(path, damage(read_examples(path)))
        return root

    return make


def random_transformed(rows: int, seed: int = 0) -> dict:
    """Transformed examples (ids in [0, 16), 0 = missing) whose labels depend on a few ids.

    Small enough for every table of `features.scaled_config(0.001)`; stands in for
    Transform's output in the unit tests of the models.
    """
    import numpy as np

    from lt4rec.models import features

    rng = np.random.default_rng(seed)
    examples = {spec.name: rng.integers(0, 16, size=(rows, spec.max_values)).astype(np.int64) for spec in features.FEATURES}
    logit = (examples["FEA_UID"][:, 0] % 5 - 2) * 0.8 + (examples["FEA_VID"][:, 0] % 3 - 1)
    click = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    ratio = np.clip(0.5 + 0.1 * (examples["FEA_CP"][:, 0] % 4) + rng.normal(0, 0.1, rows), 0, 1)
    examples[features.CLICK_LABEL] = click
    examples[features.WATCH_RATIO_LABEL] = np.where(click == 1, ratio, 0).astype(np.float32)
    return examples
