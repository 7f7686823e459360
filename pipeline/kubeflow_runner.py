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
Beam options come from `settings.beam_pipeline_args`, as for the local runner; on Dataflow
the workers run in `image` too (`beam_args_for_image`). The spec is schema 2.1, which
both Vertex AI and Kubeflow Pipelines 2.x run; resolver queries are limited to this
pipeline's artifacts (`limit_resolvers_to_pipeline`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import yaml

import lt4rec  # noqa: F401  (Keras 2 before TensorFlow, also when run as a file)

# isort: split

from apache_beam.options.pipeline_options import PipelineOptions
from tfx import v1 as tfx

from lt4rec import errors, options
from lt4rec.components import artifacts
from lt4rec.pipeline import configs
from lt4rec.pipeline import pipeline as pipeline_lib

logger = logging.getLogger(__name__)

DEFAULT_IMAGE = "lt4rec:latest"
IMAGE_ROOT = "/pipeline"  # where the Dockerfile puts the repository (and installs it from)
IMAGE_SCHEMA_FILE = f"{IMAGE_ROOT}/pipeline/schema/schema.pbtxt"


def set_resources(spec: dict, resources: configs.Resources) -> None:
    """Every container task of a compiled spec asks for its resources.

    (Done on the spec, since TFX's compiler drops a platform config on ExampleGen.)
    """
    for task in spec["root"]["dag"]["tasks"].values():
        component = spec["components"][task["componentRef"]["name"]]
        container = spec["deploymentSpec"]["executors"][component["executorLabel"]].get("container")
        if container is not None:
            training = task["taskInfo"]["name"] in TRAINING_COMPONENTS
            container["resources"] = {
                "cpuLimit": resources.training_cpus if training else resources.default_cpus,
                "memoryLimit": resources.training_memory_gb if training else resources.default_memory_gb,
            }


TRAINING_COMPONENTS = ("MaskSearch", "SparseSharingTrainer")


def build(settings: configs.PipelineSettings, image: str = DEFAULT_IMAGE) -> tfx.dsl.Pipeline:
    """The pipeline as it runs on Kubeflow: no SQLite metadata, the schema inside the image.

    A Vertex AI training job (`settings.vertex_training`) runs in the same image.
    """
    if settings.schema_file == configs.SCHEMA_PATH:  # this checkout's file: use the image's copy
        settings = dataclasses.replace(settings, schema_file=IMAGE_SCHEMA_FILE)
    settings = dataclasses.replace(settings, beam_pipeline_args=beam_args_for_image(settings.beam_pipeline_args, image))
    if settings.vertex_training and not settings.vertex_training.image:
        settings = dataclasses.replace(
            settings, vertex_training=dataclasses.replace(settings.vertex_training, image=image)
        )
    return pipeline_lib.create_pipeline(settings, metadata_connection_config=None)


def beam_args_for_image(beam_args: tuple[str, ...], image: str) -> tuple[str, ...]:
    """Dataflow's workers run in the pipeline image (a Beam SDK image with the project installed).

    `--setup_file` cannot work there: each worker would pip-install this project, whose
    pins (tfx 1.16, ml-pipelines-sdk 1.16) declare Requires-Python <3.11.
    """
    options = PipelineOptions(list(beam_args)).get_all_options()
    if options.get("runner") not in ("DataflowRunner", "dataflow"):
        return beam_args
    if options.get("setup_file"):
        raise errors.UserFacingError(
            "--setup_file cannot ship this project to Dataflow's Python 3.11 workers (tfx 1.16 declares "
            f"Requires-Python <3.11): leave it out, and the workers run in the pipeline image {image}"
        )
    if options.get("sdk_container_image"):
        return beam_args
    return (*beam_args, f"--sdk_container_image={image}")


def runner(image: str) -> tfx.orchestration.experimental.KubeflowV2DagRunner:
    # Spec 2.1: parameters as `parameterValues`, which Kubeflow Pipelines 2.x requires and
    # through which ExampleGen's driver hands the resolved day (span) to its executor.
    config = tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image, use_pipeline_spec_2_1=True)
    return tfx.orchestration.experimental.KubeflowV2DagRunner(config=config)


def limit_resolvers_to_pipeline(spec: dict, pipeline_name: str) -> None:
    """Every resolver query of a compiled spec, limited to this pipeline's artifacts.

    TFX compiles LatestBlessedModel to queries over the whole metadata store (on Vertex AI,
    the project's), which would also match another pipeline's models and blessings; the
    Trainer and the Evaluator mark theirs (`artifacts.mark_pipeline`).
    """
    clause = artifacts.pipeline_filter(pipeline_name)
    for executor in spec["deploymentSpec"]["executors"].values():
        for query in executor.get("resolver", {}).get("outputArtifactQueries", {}).values():
            query["filter"] = f"{query['filter']} AND {clause}"


def compile_pipeline(
    settings: configs.PipelineSettings,
    out_file: str,
    image: str = DEFAULT_IMAGE,
    resources: configs.Resources = configs.Resources(),
) -> str:
    """Writes the pipeline's Kubeflow V2 spec to `out_file` and returns its path: a Vertex AI
    PipelineJob as JSON, or for a `.yaml` file the bare spec that Kubeflow Pipelines takes."""
    if "@sha256:" not in image:
        logger.warning(
            "Image %s is named by tag: Vertex AI's cache key holds the name, so after a re-push of the tag it "
            "reuses results of the old code; compile with IMAGE@sha256:<digest>",
            image,
        )
    kubeflow_pipelines = out_file.endswith((".yaml", ".yml"))
    if kubeflow_pipelines:  # whose backend runs no resolver tasks
        settings = dataclasses.replace(settings, import_base_model=True)
    job = runner(image).run(build(settings, image), write_out=False)
    limit_resolvers_to_pipeline(job["pipelineSpec"], settings.pipeline_name)
    set_resources(job["pipelineSpec"], resources)
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    with open(out_file, "w") as handle:
        if kubeflow_pipelines:
            yaml.safe_dump(job["pipelineSpec"], handle, sort_keys=True)
        else:
            json.dump(job, handle, sort_keys=True)
    logger.info("Pipeline %s compiled for image %s: %s", settings.pipeline_name, image, out_file)
    return os.path.abspath(out_file)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    _settings = configs.PipelineSettings.from_env()
    compile_pipeline(
        _settings,
        os.environ.get("LT4REC_SPEC_FILE") or f"{_settings.pipeline_name}_pipeline.json",
        os.environ.get("LT4REC_IMAGE") or DEFAULT_IMAGE,
        options.from_env(configs.Resources, os.environ),
    )
