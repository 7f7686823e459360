"""Compiles the pipeline for Kubeflow Pipelines (or Vertex AI Pipelines), without a cluster.

`lt4rec pipeline compile` calls `compile_pipeline(settings, out_file, image)`. Run as a
file (by `python`, or by the tfx CLI: `tfx pipeline compile --engine vertex
--pipeline_path pipeline/kubeflow_runner.py`), it takes its settings from LT4REC_*
environment variables (see `configs.PipelineSettings.from_env`), the image from
LT4REC_IMAGE and the output file from LT4REC_SPEC_FILE.

The pipeline is `pipeline.create_pipeline`'s, unchanged, with no metadata connection
(Kubeflow brings its own store). Compiling reads nothing under the data root, pipeline
root or serving dir, so these may be `gs://` paths this machine cannot reach; unlike the
local runner it does not list the day partitions. Every executor runs in `image` (built
from the repository's Dockerfile, which keeps the repository at `IMAGE_ROOT`); the
curated schema is the image's copy unless the settings name another one (e.g. on GCS).
Beam options come from `settings.beam_pipeline_args`, as for the local runner.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import lt4rec  # noqa: F401  (Keras 2 before TensorFlow, also when run as a file)
from tfx import v1 as tfx

from lt4rec.pipeline import configs
from lt4rec.pipeline import pipeline as pipeline_lib

DEFAULT_IMAGE = "lt4rec:latest"
IMAGE_ROOT = "/pipeline"  # where the Dockerfile puts the repository (and installs it from)
IMAGE_SCHEMA_FILE = f"{IMAGE_ROOT}/pipeline/schema/schema.pbtxt"


def build(settings: configs.PipelineSettings, image: str = DEFAULT_IMAGE) -> tfx.dsl.Pipeline:
    """The pipeline as it runs on Kubeflow: no SQLite metadata, the schema inside the image.

    A Vertex AI training job (`settings.vertex_training`) runs in the same image.
    """
    if settings.schema_file == configs.SCHEMA_PATH:  # this checkout's file: use the image's copy
        settings = dataclasses.replace(settings, schema_file=IMAGE_SCHEMA_FILE)
    if settings.vertex_training and not settings.vertex_training.image:
        settings = dataclasses.replace(settings, vertex_training=dataclasses.replace(settings.vertex_training, image=image))
    return pipeline_lib.create_pipeline(settings, metadata_connection_config=None)


def runner(out_file: str, image: str) -> tfx.orchestration.experimental.KubeflowV2DagRunner:
    config = tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image)
    return tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=config,
        output_dir=os.path.dirname(os.path.abspath(out_file)),
        output_filename=os.path.basename(out_file),
    )


def compile_pipeline(settings: configs.PipelineSettings, out_file: str, image: str = DEFAULT_IMAGE) -> str:
    """Writes the pipeline's Kubeflow V2 spec (JSON) to `out_file`; returns its path."""
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    runner(out_file, image).run(build(settings, image), write_out=True)
    logging.info("Pipeline %s compiled for image %s: %s", settings.pipeline_name, image, out_file)
    return os.path.abspath(out_file)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    _settings = configs.PipelineSettings.from_env()
    compile_pipeline(
        _settings,
        os.environ.get("LT4REC_SPEC_FILE") or f"{_settings.pipeline_name}_pipeline.json",
        os.environ.get("LT4REC_IMAGE") or DEFAULT_IMAGE,
    )
