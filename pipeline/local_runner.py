"""Runs the pipeline locally: LocalDagRunner with an embedded SQLite metadata store.

`lt4rec pipeline run` calls `run(settings)`. Run as a file (by `python` or by the tfx CLI:
`tfx pipeline create --engine local --pipeline_path pipeline/local_runner.py`), it takes
its settings from LT4REC_* environment variables (see `configs.PipelineSettings.from_env`).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from lt4rec import errors
from lt4rec.pipeline import configs
from lt4rec.pipeline import pipeline as pipeline_lib

logger = logging.getLogger(__name__)


def discover_days(data_root: str) -> list[str]:
    """The day partitions (YYYYMMDD folders with files) under a data root, or a DataError."""
    if not tf.io.gfile.exists(data_root):
        raise errors.DataError(f"data root {data_root} does not exist")
    if not tf.io.gfile.isdir(data_root):
        raise errors.DataError(f"data root {data_root} is not a folder")
    days = []
    for entry in sorted(tf.io.gfile.listdir(data_root)):
        name = entry.rstrip("/")
        folder = os.path.join(data_root, name)
        if configs.DAY.match(name) and tf.io.gfile.isdir(folder):
            names = [f for f in tf.io.gfile.listdir(folder) if not f.startswith(("_", "."))]
            if any(not tf.io.gfile.isdir(os.path.join(folder, f)) for f in names):
                days.append(name)
    if not days:
        raise errors.DataError(
            f"data root {data_root} has no day partitions: expected {data_root}/YYYYMMDD/<files> "
            "(e.g. from `lt4rec generate` or `lt4rec preprocess`)"
        )
    return days


def build(settings: configs.PipelineSettings) -> tfx.dsl.Pipeline:
    """The local pipeline, after checking that the data root holds day partitions."""
    days = discover_days(settings.data_root)
    logger.info("Data root %s: %d day partitions, %s to %s", settings.data_root, len(days), days[0], days[-1])
    return pipeline_lib.create_pipeline(
        settings,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            settings.metadata_sqlite
        ),
    )


def run(settings: configs.PipelineSettings) -> None:
    tfx.orchestration.LocalDagRunner().run(build(settings))
    for step in last_run_steps(settings):
        logger.info("%-18s %-8s %7.1f s", step.component, step.state, step.seconds)


@dataclasses.dataclass(frozen=True)
class Step:
    """One component's execution in a pipeline run, as ML Metadata recorded it."""

    component: str
    state: str  # COMPLETE, CACHED, FAILED, ...
    seconds: float


def last_run_steps(settings: configs.PipelineSettings) -> list[Step]:
    """The components of the latest run of the pipeline, in the order they ran."""
    if not os.path.exists(settings.metadata_sqlite):  # e.g. `tfx pipeline create` only compiled it
        return []
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = settings.metadata_sqlite
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    runs = store.get_contexts_by_type("pipeline_run")
    if not runs:
        return []
    latest = max(runs, key=lambda context: context.create_time_since_epoch)
    in_run = {execution.id for execution in store.get_executions_by_context(latest.id)}
    steps = []
    for node in store.get_contexts_by_type("node"):
        for execution in store.get_executions_by_context(node.id):
            if execution.id in in_run:
                seconds = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000
                state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
                steps.append((execution.create_time_since_epoch, Step(node.name.split(".", 1)[-1], state, seconds)))
    return [step for _, step in sorted(steps, key=lambda item: item[0])]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run(configs.PipelineSettings.from_env())
