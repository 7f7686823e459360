"""Runs the pipeline locally: LocalDagRunner with an embedded SQLite metadata store.

`lt4rec pipeline run` calls `run(settings)`. Run as a file (by `python` or by the tfx CLI:
`tfx pipeline create --engine local --pipeline_path pipeline/local_runner.py`), it takes
its settings from LT4REC_* environment variables (see `configs.PipelineSettings.from_env`).
"""

from __future__ import annotations

import logging

from tfx import v1 as tfx

from lt4rec.pipeline import configs
from lt4rec.pipeline import pipeline as pipeline_lib


def build(settings: configs.PipelineSettings) -> tfx.dsl.Pipeline:
    """The local pipeline, after checking that the data root holds day partitions."""
    days = configs.discover_days(settings.data_root)
    logging.info("Data root %s: %d day partitions, %s to %s", settings.data_root, len(days), days[0], days[-1])
    return pipeline_lib.create_pipeline(
        settings,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            settings.metadata_sqlite
        ),
    )


def run(settings: configs.PipelineSettings) -> None:
    tfx.orchestration.LocalDagRunner().run(build(settings))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run(configs.PipelineSettings.from_env())
