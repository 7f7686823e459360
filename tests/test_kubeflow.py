"""The Kubeflow V2 spec of the pipeline, compiled without a cluster for gs:// roots."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from lt4rec import errors
from lt4rec.components import task_pusher
from lt4rec.models.config import TrainConfig
from lt4rec.pipeline import configs, kubeflow_runner, local_runner
from lt4rec.pipeline import pipeline as pipeline_lib
from tests.helpers import LT4REC

IMAGE = "europe-docker.pkg.dev/p/lt4rec/lt4rec:1.0"
BEAM_ARGS = ("--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/tmp")
# What each Beam component gets: the options as given, then Dataflow's workers in the image.
DATAFLOW_ARGS = (*BEAM_ARGS, f"--sdk_container_image={IMAGE}")
ROOTS = dict(data_root="gs://b/logs", pipeline_root="gs://b/pipeline", serving_dir="gs://b/serving")
ROOT_ARGS = [
    arg for name, root in ROOTS.items() for arg in ("--" + name.replace("_", "-"), root)
]  # on the command line
# Components whose executors run Beam; TFX hands every container the Beam args anyway.
BEAM_COMPONENTS = ("LogExampleGen", "StatisticsGen", "InferredSchemaGen", "ExampleValidator", "Transform", "Evaluator")
# Each task's upstream tasks in history mode (masks searched in the run).
DEPENDENCIES = {
    "LogExampleGen": set(),
    "StatisticsGen": {"LogExampleGen"},
    "InferredSchemaGen": {"StatisticsGen"},
    "CuratedSchemaGen": set(),
    "ExampleValidator": {"StatisticsGen", "CuratedSchemaGen"},
    "AnomalyCheck": {"ExampleValidator"},
    "Transform": {"LogExampleGen", "CuratedSchemaGen", "AnomalyCheck"},
    "MaskSearch": {"Transform"},
    "SparseSharingTrainer": {"MaskSearch", "Transform"},
    "LatestBlessedModel-model-blessing-resolver": set(),
    "LatestBlessedModel-model-resolver": set(),  # takes the blessing resolver's output as an input
    "Evaluator": {"LogExampleGen", "SparseSharingTrainer", "LatestBlessedModel-model-resolver"},
    "TaskPusher": {"SparseSharingTrainer", "Evaluator", "Transform"},
}


def _load(path: str) -> tuple[dict, pipeline_spec_pb2.PipelineSpec]:
    """A .json file holds a PipelineJob (Vertex AI's format), a .yaml one the bare spec (KFP's)."""
    with open(path) as handle:
        if path.endswith(".yaml"):
            (document,) = yaml.safe_load_all(handle)  # what kfp.Client reads
            job = {"pipelineSpec": document}
        else:
            job = json.load(handle)
    spec = json_format.ParseDict(job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    return job, spec


def _task_ids(component_ids: list[str]) -> list[str]:
    """Pipeline component ids as KFP tasks: a Resolver of two channels is two resolver tasks."""
    tasks = []
    for name in component_ids:
        if name == "LatestBlessedModel":
            tasks += ["LatestBlessedModel-model-blessing-resolver", "LatestBlessedModel-model-resolver"]
        else:
            tasks.append(name)
    return tasks


def _parameter(spec: pipeline_spec_pb2.PipelineSpec, task: str, name: str):
    value = spec.root.dag.tasks[task].inputs.parameters[name].runtime_value.constant  # spec 2.1
    return getattr(value, value.WhichOneof("kind"))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[str, dict, pipeline_spec_pb2.PipelineSpec]:
    settings = configs.PipelineSettings(**ROOTS, beam_pipeline_args=BEAM_ARGS)
    out = str(tmp_path_factory.mktemp("kubeflow") / "lt4rec.json")
    original = local_runner.discover_days
    local_runner.discover_days = _fail  # the data root is the cluster's: compiling must not list it
    try:
        path = kubeflow_runner.compile_pipeline(settings, out, IMAGE)
    finally:
        local_runner.discover_days = original
    assert path == out
    return (out, *_load(out))


def _fail(*args, **kwargs):
    raise AssertionError("compiling listed the data root")


def test_tasks_are_the_pipelines_components_wired_in_order(compiled):
    _, job, spec = compiled
    components = [c.id for c in pipeline_lib.create_components(configs.PipelineSettings(**ROOTS))]
    order = _task_ids(components)
    tasks = spec.root.dag.tasks
    assert sorted(tasks) == sorted(order) == sorted(DEPENDENCIES)
    for name, expected in DEPENDENCIES.items():
        assert set(tasks[name].dependent_tasks) == expected, name
        assert all(order.index(upstream) < order.index(name) for upstream in expected), name
    blessing = tasks["LatestBlessedModel-model-resolver"].inputs.artifacts["input"].task_output_artifact
    assert blessing.producer_task == "LatestBlessedModel-model-blessing-resolver"
    assert spec.pipeline_info.name == job["displayName"] == "lt4rec"
    assert job["runtimeConfig"]["gcsOutputDirectory"] == ROOTS["pipeline_root"]


def test_every_executor_runs_in_the_image_with_the_beam_args(compiled):
    _, _, spec = compiled
    containers = {}
    for label, executor in spec.deployment_spec.fields["executors"].struct_value.fields.items():
        executor = json_format.MessageToDict(executor)
        if "resolver" in executor:
            assert label.startswith("LatestBlessedModel-")
            continue
        containers[label.removesuffix("_executor")] = executor["container"]
    assert set(containers) == set(DEPENDENCIES) - {t for t in DEPENDENCIES if t.startswith("LatestBlessedModel-")}
    for name, container in containers.items():
        assert container["image"] == IMAGE, name
        assert container["command"] == [
            "python",
            "-m",
            "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor",
        ]
    for name in BEAM_COMPONENTS:
        args = containers[name]["args"]
        start = args.index(BEAM_ARGS[0])
        assert tuple(args[start:]) == DATAFLOW_ARGS, name  # unchanged, in order, then the workers' image
    driver = containers["LogExampleGen"]["lifecycle"]["preCacheCheck"]["args"]  # resolves the spans
    assert tuple(driver[driver.index(BEAM_ARGS[0]) :]) == DATAFLOW_ARGS
    executor_class = {name: c["args"][c["args"].index("--executor_class_path") + 1] for name, c in containers.items()}
    assert executor_class["LogExampleGen"] == "lt4rec.components.log_example_gen.executor.Executor"
    assert executor_class["MaskSearch"] == "lt4rec.components.mask_search.executor.Executor"
    assert executor_class["SparseSharingTrainer"] == "lt4rec.components.sparse_sharing_trainer.executor.Executor"
    assert executor_class["AnomalyCheck"] == "lt4rec.components.anomaly_check.AnomalyCheck_Executor"
    assert executor_class["TaskPusher"] == "lt4rec.components.task_pusher.TaskPusher_Executor"


def test_code_is_named_by_dotted_path_and_paths_are_the_clusters(compiled):
    path, _, spec = compiled
    assert _parameter(spec, "SparseSharingTrainer", "run_fn") == configs.RUN_FN == "lt4rec.models.trainer.run_fn"
    assert _parameter(spec, "Transform", "preprocessing_fn") == configs.PREPROCESSING_FN
    names = {name for task in spec.root.dag.tasks.values() for name in task.inputs.parameters}
    assert "module_file" not in names and "module_path" not in names
    assert _parameter(spec, "LogExampleGen", "input_base") == ROOTS["data_root"]
    assert _parameter(spec, "TaskPusher", "serving_dir") == ROOTS["serving_dir"]
    assert _parameter(spec, "CuratedSchemaGen", "schema_file") == kubeflow_runner.IMAGE_SCHEMA_FILE
    with open(path) as handle:
        text = handle.read()
    repository = os.path.dirname(os.path.dirname(os.path.abspath(configs.__file__)))
    for local in (repository, os.path.dirname(path), os.getcwd(), os.path.expanduser("~"), sys.prefix):
        assert local not in text
    absolute = set(re.findall(r"(?<![\w.:/-])(/[\w.-]+(?:/[\w.{}*-]+)+)", text))
    assert absolute == {kubeflow_runner.IMAGE_SCHEMA_FILE}


@pytest.mark.parametrize("masks", [configs.SEARCH_MASKS, configs.REUSE_MASKS])
def test_a_kubeflow_pipelines_spec_has_only_tasks_its_backend_runs(tmp_path, masks):
    """KFP 2.x: no resolver tasks (daily runs import the last pushed model), spec 2.1 parameters."""
    settings = configs.PipelineSettings(**ROOTS, masks=masks, span="latest", schema_file="gs://b/schema.pbtxt")
    path = kubeflow_runner.compile_pipeline(settings, str(tmp_path / "spec.yaml"), IMAGE)
    _, spec = _load(path)
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    assert {kind for executor in executors.values() for kind in executor} <= {"container", "importer"}
    with open(path) as handle:
        text = handle.read()
    assert "constantValue" not in text and spec.schema_version == "2.1.0"
    tasks = spec.root.dag.tasks
    if masks == configs.SEARCH_MASKS:
        assert "LatestBlessedModel" not in tasks and "baseline_model" not in tasks["Evaluator"].inputs.artifacts
        return
    assert "MaskSearch" not in tasks
    importer = executors["LatestBlessedModel_executor"]["importer"]
    assert (
        importer["artifactUri"]["constant"]
        == task_pusher.base_model_uri(ROOTS["serving_dir"])
        == "gs://b/serving/.base_model"
    )
    assert importer["reimport"] is True
    for task, key in (("SparseSharingTrainer", "base_model"), ("Evaluator", "baseline_model")):
        source = tasks[task].inputs.artifacts[key].task_output_artifact
        assert (source.producer_task, source.output_artifact_key) == ("LatestBlessedModel", "result")
    assert _parameter(spec, "CuratedSchemaGen", "schema_file") == "gs://b/schema.pbtxt"
    args = executors["Transform_executor"]["container"]["args"]
    assert args[-2] == "--json_serialized_inputs_spec_args"  # no Beam args: the DirectRunner by default


def test_vertex_resolvers_ask_for_this_pipelines_models_only(compiled):
    _, _, spec = compiled
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    queries = [
        q["filter"] for e in executors.values() for q in e.get("resolver", {}).get("outputArtifactQueries", {}).values()
    ]
    assert len(queries) == 2
    for query in queries:
        assert query.endswith(' AND metadata.lt4rec_pipeline.string_value="lt4rec"')


@pytest.mark.slow
def test_every_container_asks_for_its_resources(tmp_path):
    out = tmp_path / "spec.json"
    result = subprocess.run(
        [LT4REC, "pipeline", "compile", "--out", str(out), *ROOT_ARGS, "--training-memory-gb", "96", "--cpus", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _, spec = _load(str(out))
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    resources = {
        label.removesuffix("_executor"): e["container"]["resources"]
        for label, e in executors.items()
        if "container" in e
    }
    assert resources["MaskSearch"] == resources["SparseSharingTrainer"] == {"cpuLimit": 8.0, "memoryLimit": 96.0}
    others = {name: r for name, r in resources.items() if name not in ("MaskSearch", "SparseSharingTrainer")}
    assert "LogExampleGen" in others and all(r == {"cpuLimit": 2.0, "memoryLimit": 16.0} for r in others.values())


def test_dataflow_workers_run_the_pipeline_image(tmp_path):
    settings = configs.PipelineSettings(**ROOTS, beam_pipeline_args=(*BEAM_ARGS, "--sdk_container_image=other:1"))
    _, spec = _load(kubeflow_runner.compile_pipeline(settings, str(tmp_path / "own.json"), IMAGE))
    args = json_format.MessageToDict(spec.deployment_spec)["executors"]["Transform_executor"]["container"]["args"]
    assert args[-len(BEAM_ARGS) - 1 :] == [*BEAM_ARGS, "--sdk_container_image=other:1"]  # the user's choice stays
    local = configs.PipelineSettings(**ROOTS, beam_pipeline_args=("--direct_num_workers=2",))
    _, spec = _load(kubeflow_runner.compile_pipeline(local, str(tmp_path / "direct.json"), IMAGE))
    args = json_format.MessageToDict(spec.deployment_spec)["executors"]["Transform_executor"]["container"]["args"]
    assert args[-1] == "--direct_num_workers=2"
    staged = configs.PipelineSettings(**ROOTS, beam_pipeline_args=(*BEAM_ARGS, "--setup_file=/pipeline/setup.py"))
    with pytest.raises(errors.UserFacingError, match="--setup_file cannot ship this project"):
        kubeflow_runner.compile_pipeline(staged, str(tmp_path / "staged.json"), IMAGE)


@pytest.mark.slow
def test_lt4rec_pipeline_compile(tmp_path):
    out = tmp_path / "spec" / "lt4rec.json"
    result = subprocess.run(
        [
            LT4REC,
            "pipeline",
            "compile",
            "--out",
            str(out),
            "--image",
            IMAGE,
            "--pipeline-name",
            "daily",
            "--data-root",
            "gs://b/logs",
            "--pipeline-root",
            "gs://b/pipeline",
            "--serving-dir",
            "gs://b/serving",
            "--span",
            "latest",
            "--masks",
            "reuse",
            "--table-scale",
            "2",
            "--optimizer",
            "adam",
            *BEAM_ARGS,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out)
    job, spec = _load(str(out))
    assert spec.pipeline_info.name == "daily"
    args = json_format.MessageToDict(spec.deployment_spec)["executors"]["Transform_executor"]["container"]["args"]
    assert tuple(args[-len(DATAFLOW_ARGS) :]) == DATAFLOW_ARGS
    scaled = configs.PipelineSettings(**ROOTS, table_scale=2.0).feature_config.to_dict()
    trainer_config = json.loads(_parameter(spec, "SparseSharingTrainer", "custom_config"))
    assert trainer_config["features"] == scaled and trainer_config["train"]["optimizer"] == "adam"
    assert "range_config" in spec.root.dag.tasks["LogExampleGen"].inputs.parameters  # daily mode: the latest span


@pytest.mark.slow
def test_tfx_cli_compiles_the_runner_file(tmp_path):
    """`tfx pipeline compile --engine vertex` runs the runner file with LT4REC_* settings."""
    out = tmp_path / "tfx.json"
    bin_dir = os.path.dirname(sys.executable)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),  # the tfx CLI runs `pip freeze`
        "LT4REC_DATA_ROOT": ROOTS["data_root"],
        "LT4REC_PIPELINE_ROOT": ROOTS["pipeline_root"],
        "LT4REC_SERVING_DIR": ROOTS["serving_dir"],
        "LT4REC_BEAM_ARGS": " ".join(BEAM_ARGS),
        "LT4REC_IMAGE": IMAGE,
        "LT4REC_SPEC_FILE": str(out),
    }
    runner_file = os.path.abspath(kubeflow_runner.__file__)
    result = subprocess.run(
        [os.path.join(bin_dir, "tfx"), "pipeline", "compile", "--engine", "vertex", "--pipeline_path", runner_file],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0 and "compiled successfully" in result.stdout, result.stdout + result.stderr
    _, spec = _load(str(out))
    assert sorted(spec.root.dag.tasks) == sorted(DEPENDENCIES)
    args = json_format.MessageToDict(spec.deployment_spec)["executors"]["Evaluator_executor"]["container"]
    assert args["image"] == IMAGE and tuple(args["args"][-len(DATAFLOW_ARGS) :]) == DATAFLOW_ARGS


@pytest.mark.slow
def test_multi_worker_training_compiles_to_a_vertex_training_job(tmp_path):
    """--training-workers: the Trainer and MaskSearch launch Vertex AI CustomJobs; Vertex sets TF_CONFIG."""
    out = tmp_path / "vertex.json"
    result = subprocess.run(
        [LT4REC, "pipeline", "compile", "--out", str(out), "--image", IMAGE, *ROOT_ARGS,
         "--training-workers", "3", "--gcp-project", "p", "--gcp-region", "europe-west4", *BEAM_ARGS],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _, spec = _load(str(out))
    container = json_format.MessageToDict(spec.deployment_spec)["executors"]["SparseSharingTrainer_executor"][
        "container"
    ]
    launcher = container["args"][container["args"].index("--executor_class_path") + 1]
    assert launcher == "lt4rec.components.sparse_sharing_trainer.vertex.VertexExecutor"
    config = json.loads(_parameter(spec, "SparseSharingTrainer", "custom_config"))
    assert config["ai_platform_enable_vertex"] is True and config["ai_platform_vertex_region"] == "europe-west4"
    job = config["ai_platform_training_args"]
    assert job["project"] == "p"
    assert [pool["replica_count"] for pool in job["worker_pool_specs"]] == [1, 2]  # a chief and two workers
    assert {pool["container_spec"]["image_uri"] for pool in job["worker_pool_specs"]} == {IMAGE}
    # run_fn still gets it
    assert TrainConfig.from_dict(config["train"]) == configs.PipelineSettings(**ROOTS).train
    # MaskSearch runs on the same launcher, the same job (its replicas run the search executor).
    search = json_format.MessageToDict(spec.deployment_spec)["executors"]["MaskSearch_executor"]["container"]
    assert (
        search["args"][search["args"].index("--executor_class_path") + 1]
        == "lt4rec.components.mask_search.vertex.VertexExecutor"
    )
    search_config = json.loads(_parameter(spec, "MaskSearch", "custom_config"))
    assert search_config["ai_platform_training_args"] == job and search_config["ai_platform_enable_vertex"] is True

    with_ps = subprocess.run(
        [LT4REC, "pipeline", "compile", "--out", str(out), "--image", IMAGE, *ROOT_ARGS, "--training-workers", "3",
         "--parameter-servers", "2", "--gcp-project", "p", "--gcp-region", "europe-west4", *BEAM_ARGS],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert with_ps.returncode == 0, with_ps.stderr
    _, spec = _load(str(out))
    for node in ("SparseSharingTrainer", "MaskSearch"):  # Vertex's pools: chief, workers, parameter servers
        pools = json.loads(_parameter(spec, node, "custom_config"))["ai_platform_training_args"]["worker_pool_specs"]
        assert [pool["replica_count"] for pool in pools] == [1, 2, 2]

    missing = subprocess.run(
        [LT4REC, "pipeline", "compile", "--out", str(out), *ROOT_ARGS,
         "--training-workers", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert missing.returncode != 0 and "needs a GCP project and region" in missing.stderr
    assert "Traceback" not in missing.stderr
