"""Shared fixtures (small generated logs, a finished run, served models) and the order of tests
for parallel runs; shared helpers are in tests/helpers.py."""

from __future__ import annotations

import os
import shutil
from typing import Callable

import pytest

import lt4rec  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from lt4rec.models.config import NEURON, NetworkConfig, TrainConfig
from tests.helpers import TABLE_SCALE, read_examples, tiny_model, write_examples


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with e2e tests (minutes each) first, for `pytest -n N --dist loadfile` (`make test`):
    each module runs on one worker (its module fixtures are computed once), and the workers
    end together when the unit tests fill in at the end. (Not `loadgroup`: pytest-xdist
    3.8 renames a grouped test's node id through an attribute pytest 9 no longer reads.)"""
    e2e_modules = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("e2e")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in e2e_modules)  # a stable sort


@pytest.fixture(scope="session")
def tiny_logs(tmp_path_factory) -> str:
    """1,500 generated impressions over 3 days (seed 7): DIR/YYYYMMDD/part-00000.gz."""
    from lt4rec.logs import generator

    out = str(tmp_path_factory.mktemp("tiny_logs"))
    generator.generate(out, rows=1500, days=3, seed=7)
    return out


@pytest.fixture(scope="session")
def finished_run(tiny_logs, tmp_path_factory):
    """The whole pipeline, once, on the tiny logs; returns its `PipelineSettings`."""
    from lt4rec.pipeline import configs, local_runner

    root = tmp_path_factory.mktemp("run")
    settings = configs.PipelineSettings(
        data_root=tiny_logs,
        pipeline_root=str(root / "pipeline"),
        serving_dir=str(root / "serving"),
        table_scale=TABLE_SCALE,
        min_ctr_auc=0.3,  # 1,000 training rows teach little: the bound is what is tested here
        beat_no_skill=False,  # nor enough to beat the baselines (tests/test_baselines.py checks those)
        beat_incumbent=False,
        **tiny_model(),
    )
    local_runner.run(settings)
    return settings


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


@pytest.fixture(scope="session")
def served_models(tiny_logs, tmp_path_factory):
    """A small trained sparse-sharing network exported as TF Serving models, version 1.

    Transform's analysis runs on the tiny logs' first two days; the network trains one
    pass, then the CTR mask drops half of the units and the CVR mask half of the
    connections, so that the exports have something to fold and compact. Returns a
    `ServedModels`; the serving layout is `base_path/{ctr,cvr}/1/`.
    """
    import glob

    import tensorflow as tf
    import tensorflow_transform as tft

    from lt4rec import features
    from lt4rec.models import export, masks, network, training
    from lt4rec.testing import offline_transform

    root = tmp_path_factory.mktemp("served")
    days = sorted(glob.glob(os.path.join(tiny_logs, "2*", "part-*.gz")))
    feature_config = features.scaled_config(0.001)
    transform_dir = str(root / "transform")
    offline_transform.analyze(days[:-1], feature_config, transform_dir)
    transform_output = tft.TFTransformOutput(transform_dir)
    columns = offline_transform.transform(days[:-1], transform_dir)

    tf.keras.utils.set_random_seed(3)
    model = network.RankingNetwork(feature_config, NetworkConfig(embedding_dim=8, hidden_units=(32, 16)))
    model.build_for({name: values[:2] for name, values in columns.items()})
    trainer = training.MultiTaskTrainer(model, TrainConfig(batch_size=128))
    trainer.train({task: training.task_batches(columns, task, 128, 3) for task in ("ctr", "cvr")}, "fixture", 3)
    masks.set_task_masks(
        model,
        {
            task: masks.prune_by_magnitude(
                masks.get_kernels(model), model.initial_masks(task), 1, 0.5, granularity=granularity
            )
            for task, granularity in (("ctr", NEURON), ("cvr", masks.CONNECTION))
        },
    )

    base_path = str(root / "models")
    for task in ("ctr", "cvr"):
        export.export_task_model(model, task, transform_output, os.path.join(base_path, task, "1"))
    raw = [example.SerializeToString() for example in read_examples(days[-1])]
    return ServedModels(base_path, model, transform_output, raw)


class ServedModels:
    """What `served_models` made: the serving base path, the network, its Transform, raw requests."""

    def __init__(self, base_path: str, model, transform_output, raw_examples: list[bytes]):
        self.base_path = base_path
        self.model = model
        self.transform_output = transform_output
        self.raw_examples = raw_examples  # serialized tf.Examples of the last day, in the log format

    def expected(self, task: str, raw_examples: list[bytes]):
        """The trained network's scores of `raw_examples` under `task`'s mask (numpy [batch])."""
        import tensorflow as tf

        from lt4rec import features
        from lt4rec.models import export

        parsed = tf.io.parse_example(raw_examples, export.raw_input_spec(self.transform_output))
        ids = self.transform_output.transform_features_layer()(parsed)
        return self.model({name: ids[name] for name in features.FEATURE_NAMES}, task=task)[task].numpy()


@pytest.fixture(scope="session")
def tiny_transform(tiny_logs, tmp_path_factory):
    """Transform's graph fitted on the tiny logs' first two days, for exports of any network.

    Returns a `ServedModels` without a model (`model` is None, nothing under `base_path`):
    the Transform output and the last day's raw serialized examples, to build and export
    networks of every variant on (feature tables of `features.scaled_config(0.001)`).
    """
    import glob

    import tensorflow_transform as tft

    from lt4rec import features
    from lt4rec.testing import offline_transform

    root = tmp_path_factory.mktemp("tiny_transform")
    days = sorted(glob.glob(os.path.join(tiny_logs, "2*", "part-*.gz")))
    transform_dir = str(root / "transform")
    offline_transform.analyze(days[:-1], features.scaled_config(0.001), transform_dir)
    raw = [example.SerializeToString() for example in read_examples(days[-1])]
    return ServedModels(str(root / "models"), None, tft.TFTransformOutput(transform_dir), raw)
