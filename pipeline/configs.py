"""The settings of a pipeline run, with their defaults, in one place.

`PipelineSettings` is what `create_pipeline` takes; the runners fill it from the command
line (`lt4rec pipeline run`) or from `LT4REC_*` environment variables (the runner files
that the tfx CLI and Kubeflow execute). Beam options for every Beam-based component come
from `beam_pipeline_args` here and nowhere else: the DirectRunner by default, or the
options of Dataflow, Flink or Spark.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re

import tensorflow as tf

from lt4rec import errors
from lt4rec.components import artifacts
from lt4rec.models import features, inputs, network, sparse_sharing, training

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "schema", "schema.pbtxt")
# None: Beam's DirectRunner, in memory. (With any argument set, TFX also packages itself
# for remote workers before every Beam component, unless the arguments name the workers'
# software: on Dataflow `--sdk_container_image`, the pipeline image, which the Kubeflow
# runner adds; see pipeline/kubeflow_runner.py.)
DEFAULT_BEAM_PIPELINE_ARGS: tuple[str, ...] = ()
PREPROCESSING_FN = "lt4rec.models.preprocessing.preprocessing_fn"
RUN_FN = "lt4rec.models.trainer.run_fn"
SEARCH_MASKS = "search"  # run MaskSearch, then train under the masks it finds
REUSE_MASKS = "reuse"  # continue the latest blessed model under its own masks (daily runs)
MASK_MODES = (SEARCH_MASKS, REUSE_MASKS)
# The model of a run (`--model`, LT4REC_MODEL): the network variant and, for sparse sharing,
# the granularity of the mask search. Every model but sparse sharing trains from scratch in
# the Trainer, without MaskSearch; every model pushes a CTR and a CVR model.
S_WEIGHT = "s_weight"  # sparse sharing of connections (LT4REC's S-Weight): the default
S_NEURON = "s_neuron"  # sparse sharing of whole units (S-Neuron)
MODELS = {
    S_WEIGHT: (network.SPARSE_SHARING, "connection"),
    S_NEURON: (network.SPARSE_SHARING, "neuron"),
    **{
        variant: (variant, None)
        for variant in (
            network.SINGLE_TASK,
            network.HARD_SHARING,
            network.SHARED_BOTTOM,
            network.LAYER_SHARING,
            network.MMOE,
            network.PLE,
            network.ESMM,
        )
    },
}
_DAY = re.compile(r"^\d{8}$")


@dataclasses.dataclass(frozen=True)
class VertexTraining:
    """MaskSearch and the Trainer as Vertex AI CustomJobs of `workers` replicas, not in the pipeline's pod.

    One chief and `workers - 1` workers, all in the pipeline image; Vertex gives each
    replica a `TF_CONFIG`, under which they train with MultiWorkerMirroredStrategy, or,
    with `parameter_servers` (a third worker pool), with ParameterServerStrategy: the
    chief coordinates, the workers train, the id tables are split over the servers.
    """

    workers: int
    project: str
    region: str
    machine_type: str = "n1-highmem-16"
    image: str | None = None  # the pipeline image; the Kubeflow runner sets it
    parameter_servers: int = 0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise errors.UserFacingError(f"training workers must be at least 1, not {self.workers}")
        if not self.project or not self.region:
            raise errors.UserFacingError("training on Vertex AI needs a GCP project and region")
        if self.parameter_servers and self.workers < 2:
            raise errors.UserFacingError(
                "parameter servers need at least 2 training replicas: the chief coordinates, workers train"
            )

    def custom_config(self) -> dict:
        """The Trainer's custom_config entries that TFX's Vertex training executor reads."""
        from tfx.extensions.google_cloud_ai_platform import constants
        from tfx.extensions.google_cloud_ai_platform.trainer import executor as vertex_executor

        if not self.image:
            raise errors.UserFacingError("training on Vertex AI needs the pipeline image")
        pool = {"machine_spec": {"machine_type": self.machine_type}, "container_spec": {"image_uri": self.image}}
        pools = [{**pool, "replica_count": 1}]  # the chief
        if self.workers > 1:
            pools.append({**pool, "replica_count": self.workers - 1})
        if self.parameter_servers:  # Vertex names the third pool's replicas `ps` in TF_CONFIG
            pools.append({**pool, "replica_count": self.parameter_servers})
        return {
            constants.ENABLE_VERTEX_KEY: True,
            constants.VERTEX_REGION_KEY: self.region,
            vertex_executor.TRAINING_ARGS_KEY: {"project": self.project, "worker_pool_specs": pools},
        }


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """Everything a run of the pipeline depends on."""

    data_root: str
    pipeline_root: str
    serving_dir: str
    pipeline_name: str = "lt4rec"
    # History mode: the day partitions from first_day to last_day (all by default); the
    # last eval_days of them are held out for evaluation.
    eval_days: int = 1
    first_day: str | None = None
    last_day: str | None = None
    # Daily mode: one day (YYYYMMDD, or "latest"), split 9:1 by request.
    span: str | None = None
    # Id tables: shared between related features, hashed table sizes scaled.
    share_tables: bool = True
    table_scale: float = 1.0
    max_rejected_fraction: float = 0.0
    # The model: the network, its training, the mask search (Algorithm 1's settings).
    network: network.NetworkConfig = network.NetworkConfig()
    train: training.TrainConfig = training.TrainConfig()
    search: sparse_sharing.SearchConfig = sparse_sharing.SearchConfig()
    masks: str = SEARCH_MASKS
    # The Evaluator blesses a model whose CTR AUC and CVR MSE (clicks only) are within
    # these bounds, and, once a blessed model exists, no worse than it by more than these.
    min_ctr_auc: float = 0.5
    max_cvr_mse: float = 0.25
    max_ctr_auc_drop: float = 0.01
    max_cvr_mse_rise: float = 0.005
    # And only a model that beats its baselines on the eval split: CVR MSE below the no-skill
    # MSE (the train split's mean watch ratio of clicks, predicted for every click), CTR AUC
    # above the logged production pCTR's (skipped when the eval split carries no pctr).
    beat_no_skill: bool = True
    beat_incumbent: bool = True
    beam_pipeline_args: tuple[str, ...] = DEFAULT_BEAM_PIPELINE_ARGS
    # The curated schema CuratedSchemaGen imports: this repository's file by default; on
    # Kubeflow a path inside the image or on GCS (the Kubeflow runner sets the image's).
    schema_file: str = SCHEMA_PATH
    metadata_path: str | None = None  # SQLite file; default <pipeline_root>/metadata.sqlite
    # None: the Trainer runs in the pipeline's own container (or process), on one worker.
    vertex_training: VertexTraining | None = None
    # Kubeflow Pipelines 2.x runs no resolver tasks: daily runs there import the model they
    # continue from where TaskPusher publishes the last pushed one, and history runs have
    # no baseline model (the Kubeflow runner sets this for a `.yaml` spec).
    import_base_model: bool = False

    def __post_init__(self) -> None:
        for name in ("first_day", "last_day"):
            value = getattr(self, name)
            if value is not None:
                _check_day(value, name)
        if self.span is not None and self.span != "latest":
            _check_day(self.span, "span")
        if self.masks not in MASK_MODES:
            raise errors.UserFacingError(f"masks must be one of {MASK_MODES}, not {self.masks!r}")
        if self.span is not None and (self.first_day or self.last_day):
            raise errors.UserFacingError("span (daily mode) and first_day/last_day (history mode) exclude each other")

    @property
    def model(self) -> str:
        """The name of the model (a key of MODELS), from the network variant and the search granularity."""
        if self.network.masked:
            return S_NEURON if self.search.granularity == MODELS[S_NEURON][1] else S_WEIGHT
        return self.network.variant

    @property
    def feature_config(self) -> features.FeatureConfig:
        return features.scaled_config(self.table_scale, self.share_tables)

    @property
    def model_settings(self) -> dict:
        """What MaskSearch and the Trainer are given: one dict, so they cannot disagree."""
        return {
            "features": self.feature_config.to_dict(),
            "network": self.network.to_dict(),
            "train": self.train.to_dict(),
            "search": self.search.to_dict(),
        }

    @property
    def trainer_settings(self) -> dict:
        """The Trainer's custom_config: the model settings, and where it trains if elsewhere."""
        return {
            **self.model_settings,
            artifacts.PIPELINE_NAME_KEY: self.pipeline_name,  # marks the model (`artifacts.mark_pipeline`)
            **(self.vertex_training.custom_config() if self.vertex_training else {}),
        }

    @property
    def metadata_sqlite(self) -> str:
        return self.metadata_path or os.path.join(self.pipeline_root, "metadata.sqlite")

    @classmethod
    def from_env(cls) -> "PipelineSettings":
        """Settings from LT4REC_* environment variables, for runner files run by other tools."""
        env = os.environ
        try:
            return cls(
                data_root=env["LT4REC_DATA_ROOT"],
                pipeline_root=env["LT4REC_PIPELINE_ROOT"],
                serving_dir=env["LT4REC_SERVING_DIR"],
                pipeline_name=env.get("LT4REC_PIPELINE_NAME", "lt4rec"),
                eval_days=int(env.get("LT4REC_EVAL_DAYS", "1")),
                span=env.get("LT4REC_SPAN") or None,
                table_scale=float(env.get("LT4REC_TABLE_SCALE", "1.0")),
                beam_pipeline_args=tuple(env["LT4REC_BEAM_ARGS"].split())
                if env.get("LT4REC_BEAM_ARGS")
                else DEFAULT_BEAM_PIPELINE_ARGS,
                schema_file=env.get("LT4REC_SCHEMA_FILE") or SCHEMA_PATH,
                masks=env.get("LT4REC_MASKS") or SEARCH_MASKS,
                **select_model(env.get("LT4REC_MODEL") or S_WEIGHT),
                train=training.TrainConfig(input_mode=env.get("LT4REC_INPUT_MODE") or inputs.AUTO),
                beat_no_skill=_env_flag("LT4REC_BEAT_NO_SKILL", True),
                beat_incumbent=_env_flag("LT4REC_BEAT_INCUMBENT", True),
                vertex_training=VertexTraining(
                    workers=int(env["LT4REC_TRAINING_WORKERS"]),
                    project=env.get("LT4REC_GCP_PROJECT", ""),
                    region=env.get("LT4REC_GCP_REGION", ""),
                    machine_type=env.get("LT4REC_TRAINING_MACHINE_TYPE") or VertexTraining.machine_type,
                    parameter_servers=int(env.get("LT4REC_PARAMETER_SERVERS") or 0),
                )
                if env.get("LT4REC_TRAINING_WORKERS")
                else None,
            )
        except KeyError as missing:
            raise errors.UserFacingError(f"environment variable {missing.args[0]} is not set") from None
        except ValueError as error:
            raise errors.UserFacingError(f"LT4REC_* environment variables: {error}") from None


def select_model(
    model: str,
    network_config: network.NetworkConfig = network.NetworkConfig(),
    search: sparse_sharing.SearchConfig = sparse_sharing.SearchConfig(),
) -> dict:
    """PipelineSettings' `network` and `search` for a model of MODELS, from these (their sizes kept).

    Both tasks always: the single-task model is two separate networks, trained in one run.
    """
    if model not in MODELS:
        raise errors.UserFacingError(f"model must be one of {', '.join(MODELS)}, not {model!r}")
    variant, granularity = MODELS[model]
    network_config = dataclasses.replace(network_config, variant=variant, tasks=network.NetworkConfig.tasks)
    if granularity is not None:
        search = dataclasses.replace(search, granularity=granularity)
    return {"network": network_config, "search": search}


def _env_flag(name: str, default: bool) -> bool:
    """A boolean environment variable: 1/true/yes/on or 0/false/no/off (any case); unset or empty: `default`."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise errors.UserFacingError(f"environment variable {name}={os.environ[name]!r} is not a boolean (true/false, 1/0)")


def _check_day(value: str, name: str) -> None:
    try:
        if not _DAY.match(value):
            raise ValueError
        dt.datetime.strptime(value, "%Y%m%d")
    except ValueError:
        raise errors.UserFacingError(f"{name} {value!r} is not a day of the form YYYYMMDD") from None


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
        if _DAY.match(name) and tf.io.gfile.isdir(folder):
            names = [f for f in tf.io.gfile.listdir(folder) if not f.startswith(("_", "."))]
            if any(not tf.io.gfile.isdir(os.path.join(folder, f)) for f in names):
                days.append(name)
    if not days:
        raise errors.DataError(
            f"data root {data_root} has no day partitions: expected {data_root}/YYYYMMDD/<files> "
            "(e.g. from `lt4rec generate` or `lt4rec preprocess`)"
        )
    return days
