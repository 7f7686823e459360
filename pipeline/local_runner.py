"""Runs the pipeline locally: LocalDagRunner with an embedded SQLite metadata store.

`lt4rec pipeline run` calls `run(settings)`. Run as a file (by `python` or by the tfx CLI:
`tfx pipeline create --engine local --pipeline_path pipeline/local_runner.py`), it takes
its settings from LT4REC_* environment variables (see `configs.PipelineSettings.from_env`).
"""

from __future__ import annotations

import dataclasses
import logging
import os

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from lt4rec.pipeline import configs
from lt4rec.pipeline import pipeline as pipeline_lib

logger = logging.getLogger(__name__)


def build(settings: configs.PipelineSettings) -> tfx.dsl.Pipeline:
    """The local pipeline, after checking that the data root holds day partitions."""
    days = configs.discover_days(settings.data_root)
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
