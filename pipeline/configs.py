"""The settings of a pipeline run, with their defaults, in one place.

`PipelineSettings` is what `create_pipeline` takes. Its fields declared with
`options.setting` (and those of the network, training and search configs nested in it,
`models/config.py`) are the command line's options (`lt4rec pipeline run/compile`) and the
`LT4REC_*` environment variables of the runner files that the tfx CLI and Kubeflow
execute: both are generated from the fields (`lt4rec/options.py`), so an option is added
here, once. Beam options for every Beam-based component come from `beam_pipeline_args`
here and nowhere else: the DirectRunner by default, or the options of Dataflow, Flink or
Spark. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from collections.abc import Mapping

from lt4rec import errors, features, options
from lt4rec.models.config import (
    CONNECTION,
    EMBEDDING_STORAGES,
    ESMM,
    FLOAT32,
    HARD_SHARING,
    LAYER_SHARING,
    MATMUL_CHOICES,
    MEASURE,
    MMOE,
    NEURON,
    PLE,
    SHARED_BOTTOM,
    SINGLE_TASK,
    SPARSE_SHARING,
    ModelSettings,
    NetworkConfig,
    SearchConfig,
    TrainConfig,
)
from lt4rec.options import setting

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
    S_WEIGHT: (SPARSE_SHARING, CONNECTION),
    S_NEURON: (SPARSE_SHARING, NEURON),
    **{
        variant: (variant, None)
        for variant in (SINGLE_TASK, HARD_SHARING, SHARED_BOTTOM, LAYER_SHARING, MMOE, PLE, ESMM)
    },
}
MODEL_ENV = options.ENV_PREFIX + "MODEL"  # the runner files' --model
BEAM_ARGS_ENV = options.ENV_PREFIX + "BEAM_ARGS"  # Beam's options, separated by spaces
DAY = re.compile(r"^\d{8}$")  # a day partition's folder: YYYYMMDD


@dataclasses.dataclass(frozen=True)
class VertexTraining:
    """MaskSearch and the Trainer as Vertex AI CustomJobs of `workers` replicas, not in the pipeline's pod.

    One chief and `workers - 1` workers, all in the pipeline image; Vertex gives each
    replica a `TF_CONFIG`, under which they train with MultiWorkerMirroredStrategy, or,
    with `parameter_servers` (a third worker pool), with ParameterServerStrategy: the
    chief coordinates, the workers train, the id tables are split over the servers.
    The fields are `lt4rec pipeline compile`'s options (`--training-workers`...) and
    LT4REC_* variables (LT4REC_TRAINING_WORKERS...); without workers, no job (`asked`).
    """

    workers: int | None = setting(
        None,
        "Train as a Vertex AI job of this many replicas (MultiWorkerMirroredStrategy); "
        "default: in the pipeline's own container.",
        flag="training-workers",
        low=1,
    )
    project: str | None = setting(None, "The GCP project of the Vertex AI training job.", flag="gcp-project")
    region: str | None = setting(None, "The region of the Vertex AI training job.", flag="gcp-region")
    machine_type: str = setting(
        "n1-highmem-16", "Machine type of every training replica.", flag="training-machine-type"
    )
    parameter_servers: int = setting(
        0,
        "With --training-workers: this many parameter servers in the job besides them (ParameterServerStrategy, "
        "the id tables split by rows over them; the chief coordinates, so at least 2 training workers).",
        low=0,
    )
    image: str | None = None  # the pipeline image; the Kubeflow runner sets it

    def __post_init__(self) -> None:
        if self.workers is None:
            if self.parameter_servers:
                raise errors.UserFacingError(
                    "parameter servers train with --training-workers (LT4REC_TRAINING_WORKERS): a Vertex AI job"
                )
            return
        if self.workers < 1:
            raise errors.UserFacingError(f"training workers must be at least 1, not {self.workers}")
        if self.parameter_servers < 0:
            raise errors.UserFacingError(f"parameter servers must be at least 0, not {self.parameter_servers}")
        if not self.project or not self.region:
            raise errors.UserFacingError("training on Vertex AI needs a GCP project and region")
        if self.parameter_servers and self.workers < 2:
            raise errors.UserFacingError(
                "parameter servers need at least 2 training replicas: the chief coordinates, workers train"
            )

    def asked(self) -> "VertexTraining | None":
        """This job, or None when no training workers were asked for (train in the pipeline's pod)."""
        return self if self.workers is not None else None

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
class Resources:
    """vCPUs and memory (GB) each task's container asks for on Kubeflow or Vertex AI
    (`lt4rec pipeline compile`; Vertex AI's default is 4 and 16).

    MaskSearch and the Trainer hold the transformed train split in memory (about 420 bytes
    an impression) besides the model, so they get `training_*`; the others `default_*`.
    """

    default_cpus: float = setting(4, "vCPUs of every other component's container.", flag="cpus", low=0, low_open=True)
    default_memory_gb: float = setting(
        16, "Memory of every other component's container.", flag="memory-gb", low=0, low_open=True
    )
    training_cpus: float = setting(8, "vCPUs of MaskSearch's and the Trainer's containers.", low=0, low_open=True)
    training_memory_gb: float = setting(
        64,
        "Memory of MaskSearch's and the Trainer's containers (the train split is held in memory up to "
        "--in-memory-limit-gb, else streamed).",
        low=0,
        low_open=True,
    )


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """Everything a run of the pipeline depends on."""

    data_root: str = setting(help="Folder of day partitions: DATA_ROOT/YYYYMMDD/<files> (gs:// on a cluster).")
    pipeline_root: str = setting(help="Where TFX keeps artifacts (and, locally, its SQLite metadata store).")
    serving_dir: str = setting(help="Where the pushed CTR, CVR and rank models go.")
    pipeline_name: str = setting("lt4rec", "Name of the pipeline in ML Metadata.")
    # History mode: the day partitions from first_day to last_day (all by default); the
    # last eval_days of them are held out for evaluation.
    eval_days: int = setting(1, "Last days held out for evaluation.", low=1)
    first_day: str | None = setting(None, "Only days on or after YYYYMMDD (history mode).")
    last_day: str | None = setting(None, "Only days on or before YYYYMMDD (history mode).")
    # Daily mode: one day (YYYYMMDD, or "latest"), split 9:1 by request.
    span: str | None = setting(
        None, "Daily mode: take only this day (YYYYMMDD, or 'latest'), split 9:1 by request into train and eval."
    )
    # Id tables: shared between related features, hashed table sizes scaled.
    share_tables: bool = setting(True, "One id table for related features (e.g. a video's id wherever it appears).")
    table_scale: float = setting(
        1.0,
        "Multiply the size of every hashed id table (0.01 for tiny data, >1 for production).",
        low=0.0,
        low_open=True,
    )
    max_rejected_fraction: float = setting(
        0.0, "Share of log rows that may fail the label checks before the run stops.", low=0.0, high=1.0
    )
    # The model: the network, its training, the mask search (Algorithm 1's settings).
    network: NetworkConfig = NetworkConfig()
    train: TrainConfig = TrainConfig()
    search: SearchConfig = SearchConfig()
    masks: str = setting(
        SEARCH_MASKS,
        "search: run MaskSearch (Algorithm 1 steps 1-2) in this run; reuse: train under the latest masks "
        "in ML Metadata and retrain only the shared weights (daily runs).",
        choices=MASK_MODES,
    )
    # The Evaluator blesses a model whose CTR AUC and CVR MSE (clicks only) are within
    # these bounds, and, once a blessed model exists, no worse than it by more than these.
    min_ctr_auc: float = setting(0.5, "Bless only at or above this CTR AUC.")
    max_cvr_mse: float = setting(0.25, "Bless only at or below this CVR MSE.")
    max_ctr_auc_drop: float = setting(
        0.01, "Bless only if CTR AUC is at most this much below the latest blessed model's.", low=0.0
    )
    max_cvr_mse_rise: float = setting(
        0.005, "Bless only if CVR MSE is at most this much above the latest blessed model's.", low=0.0
    )
    # And only a model that beats its baselines on the eval split: CVR MSE below the no-skill
    # MSE (the train split's mean watch ratio of clicks, predicted for every click), CTR AUC
    # above the logged production pCTR's (skipped when the eval split carries no pctr).
    beat_no_skill: bool = setting(
        True,
        "Bless only if CVR MSE is below the no-skill MSE (the train split's mean watch ratio of clicks "
        "predicted for every eval click).",
    )
    beat_incumbent: bool = setting(
        True,
        "Bless only if CTR AUC is above the AUC of the logs' production pCTR (`pctr`) on the eval split "
        "(skipped, with a note, when the eval split has no pctr).",
    )
    # How the pushed models, and the Trainer's model that the Evaluator scores, store the id
    # tables (`models/export.py`): docs/RESULTS.md measures the bytes saved and the scores moved.
    embedding_storage: str = setting(
        FLOAT32,
        "How the pushed models store their id tables, ~80% of their bytes: float32 as trained; float16 in half "
        "the bytes (scores move up to ~1e-4); int8, one float32 scale per row, in about a quarter (scores move "
        "up to ~3e-3; the CTR + CVR pair 0.376x two dense models' bytes, CTR AUC +0.00002 in "
        "benchmarks/embedding_storage.py). The Evaluator scores, and blesses, the stored tables.",
        choices=EMBEDDING_STORAGES,
    )
    # How the pushed models' pruned layers multiply: what pays depends on the serving machine's
    # sparse kernels (docs/RESULTS.md, "The mask frontier"), so the pusher's own timing is right
    # only when it runs on the servers' kind of CPU.
    serving_matmul: str = setting(
        MEASURE,
        "How the pushed models' hidden layers that are at most half kept multiply: measure (time a dense and a "
        "sparse matmul on the machine that pushes, keep the cheaper by CPU time), dense, or sparse. Force it "
        "when TaskPusher runs on another kind of CPU than the servers (measure there with "
        "benchmarks/exported_models.py). Scores are the same either way.",
        choices=MATMUL_CHOICES,
    )
    beam_pipeline_args: tuple[str, ...] = DEFAULT_BEAM_PIPELINE_ARGS
    # The curated schema CuratedSchemaGen imports: this repository's file by default; on
    # Kubeflow a path inside the image or on GCS (the Kubeflow runner sets the image's).
    schema_file: str = setting(
        SCHEMA_PATH, "The curated schema as the pipeline's components see it (on a cluster: default the image's copy)."
    )
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
        for leaf in options.leaves(type(self)):  # this class's own choices (nested configs check theirs)
            if len(leaf.path) == 1 and leaf.option.choices:
                leaf.check(getattr(self, leaf.path[0]), leaf.path[0])
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
    def model_settings(self) -> ModelSettings:
        """What MaskSearch and the Trainer are given: one value, so they cannot disagree."""
        return ModelSettings(self.feature_config, self.network, self.train, self.search)

    @property
    def metadata_sqlite(self) -> str:
        return self.metadata_path or os.path.join(self.pipeline_root, "metadata.sqlite")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "PipelineSettings":
        """Settings from LT4REC_* environment variables, for runner files run by other tools:
        one per option of `lt4rec pipeline run` (LT4REC_TABLE_SCALE for --table-scale), and
        LT4REC_MODEL, LT4REC_BEAM_ARGS and the Vertex AI training job's (LT4REC_TRAINING_WORKERS...)."""
        settings = options.from_env(
            cls,
            environ,
            beam_pipeline_args=tuple(environ.get(BEAM_ARGS_ENV, "").split()) or DEFAULT_BEAM_PIPELINE_ARGS,
            vertex_training=options.from_env(VertexTraining, environ).asked(),
        )
        return with_model(settings, environ.get(MODEL_ENV) or S_WEIGHT)


def select_model(
    model: str, network_config: NetworkConfig = NetworkConfig(), search: SearchConfig = SearchConfig()
) -> dict:
    """PipelineSettings' `network` and `search` for a model of MODELS, from these (their sizes kept).

    Both tasks always: the single-task model is two separate networks, trained in one run.
    """
    if model not in MODELS:
        raise errors.UserFacingError(f"model must be one of {', '.join(MODELS)}, not {model!r}")
    variant, granularity = MODELS[model]
    network_config = dataclasses.replace(network_config, variant=variant, tasks=NetworkConfig.tasks)
    if granularity is not None:
        search = dataclasses.replace(search, granularity=granularity)
    return {"network": network_config, "search": search}


def with_model(settings: PipelineSettings, model: str) -> PipelineSettings:
    """`settings` training `model` (a key of MODELS), with the network's and search's other settings."""
    try:
        return dataclasses.replace(settings, **select_model(model, settings.network, settings.search))
    except ValueError as error:  # e.g. multi-view with experts
        raise errors.UserFacingError(str(error)) from None


def _check_day(value: str, name: str) -> None:
    try:
        if not DAY.match(value):
            raise ValueError
        dt.datetime.strptime(value, "%Y%m%d")
    except ValueError:
        raise errors.UserFacingError(f"{name} {value!r} is not a day of the form YYYYMMDD") from None
