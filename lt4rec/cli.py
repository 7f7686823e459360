"""The `lt4rec` command: thin wrappers over the packages that do the work."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import warnings

import click

from lt4rec import errors, options
from lt4rec.pipeline import configs
from lt4rec.serving.settings import ServerSettings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
warnings.filterwarnings("ignore", message="You are using a Python version", category=FutureWarning)

# Messages of TFX, TFT and Beam that say nothing a user can act on.
_NOISE = (
    "Tables initialized inside a tf.function",
    "ArtifactQuery.property_predicate is not supported",
    "BatchElements statistics",
    "python-snappy",
    "Missing pipeline option (runner)",
)


class _UserFacingLogs(logging.Filter):
    """Progress and results: our own loggers, TFX's component start and finish, and errors.

    Everything else (TFX, TFMA, Beam and Keras warnings a user cannot act on, Python
    warnings) shows only with --verbose.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(noise in message for noise in _NOISE):
            return False
        if record.name == "lt4rec" or record.name.startswith("lt4rec."):
            return True
        if record.levelno >= logging.ERROR:
            return True
        return record.name == "absl" and message.startswith("Component ")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.captureWarnings(True)  # Python warnings go through logging, so the filter decides
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_UserFacingLogs())
        for noisy in ("apache_beam", "tensorflow", "urllib3", "google"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", is_flag=True, help="Log everything, including Beam and TFX internals.")
def cli(verbose: bool) -> None:
    """LT4REC: CTR and CVR models by sparse sharing, from video logs to TF Serving.

    Typical use: `lt4rec generate` some logs (or `lt4rec preprocess` raw events into logs),
    then `lt4rec pipeline run` the TFX pipeline on them.
    """
    _configure_logging(verbose)


@cli.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write into.")
@click.option("--rows", default=20_000, show_default=True, type=click.IntRange(min=1), help="Impressions to generate.")
@click.option(
    "--days", default=3, show_default=True, type=click.IntRange(min=1), help="Day partitions to spread them over."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the synthetic world (fixes everything).")
@click.option(
    "--task-relatedness",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="How much CTR and CVR share their latent drivers: 0 independent, 1 identical.",
)
@click.option(
    "--start-day",
    default="20201011",
    show_default=True,
    help="First day partition, YYYYMMDD.",
)
@click.option(
    "--rows-per-file", default=200_000, show_default=True, type=click.IntRange(min=1), help="Rows per partition file."
)
@click.option(
    "--raw", is_flag=True, help="Write raw impression/click/play event logs (with faults) instead of joined logs."
)
@click.option(
    "--raw-format",
    default="json",
    show_default=True,
    type=click.Choice(["json", "csv"]),
    help="Format of --raw event files: newline-delimited JSON or CSV.",
)
@click.option("--no-faults", is_flag=True, help="With --raw: write clean events, without injected faults.")
@click.option(
    "--catalogue",
    default="sample",
    show_default=True,
    type=click.Choice(["sample", "paper"]),  # logs/world.py CATALOGUES (tested to agree)
    help="Shape of the catalogues: 'sample' like docs/LOG_SCHEMA.md's real sample (~6.5 impressions per user, "
    "8 videos per impression); 'paper' like the paper's Table 1 (~30 impressions per user, ~27 per video).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Processes that make training logs (default: one per CPU; the output is the same for any number).",
)
def generate(
    out_dir: str,
    rows: int,
    days: int,
    seed: int,
    task_relatedness: float,
    start_day: str,
    rows_per_file: int,
    raw: bool,
    raw_format: str,
    no_faults: bool,
    catalogue: str,
    workers: int | None,
) -> None:
    """Write synthetic Tencent-style logs with known ground truth.

    By default: GZIP TFRecord files of tf.Example, OUT/YYYYMMDD/part-NNNNN.gz, in the log
    format the pipeline reads. With --raw: impression, click and play event logs under
    OUT/{impressions,clicks,plays}/YYYYMMDD/, the input of `lt4rec preprocess`. Either way
    the true click probability and expected watch ratio of every impression go to
    OUT/YYYYMMDD/_truth-part-NNNNN.csv.gz (OUT/truth/ with --raw), never into a feature,
    and the settings to OUT/_generator.json.
    """
    from lt4rec.logs import generator

    try:
        first_day = dt.datetime.strptime(start_day, "%Y%m%d").date()
    except ValueError:
        raise click.BadParameter(f"{start_day!r} is not a date of the form YYYYMMDD", param_hint="--start-day")
    manifest = generator.generate(
        out_dir,
        rows=rows,
        days=days,
        seed=seed,
        task_relatedness=task_relatedness,
        start_day=first_day,
        rows_per_file=rows_per_file,
        raw=raw,
        raw_format=raw_format,
        faults=generator.FaultRates.none() if no_faults else None,
        catalogue=catalogue,
        workers=workers,
    )
    click.echo(f"Wrote {rows} impressions over {days} days to {out_dir}: {manifest['counts']}")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--raw", "raw_dir", required=True, type=click.Path(file_okay=False), help="Root of the raw event logs.")
@click.option("--out", "out_dir", required=True, help="Where to write the day partitions of joined logs.")
@click.option(
    "--format",
    "file_format",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "json", "csv"]),
    help="Format of the raw files; auto goes by their extension.",
)
@click.option("--allow-damaged-files", is_flag=True,
              help="Use a damaged (e.g. truncated) .gz file's lines up to the damage and count its unreadable rest "
                   "as one rejected line, instead of failing.")  # fmt: skip
@click.pass_context
def preprocess(ctx: click.Context, raw_dir: str, out_dir: str, file_format: str, allow_damaged_files: bool) -> None:
    """Join raw impression, click and play events into training logs (an Apache Beam job).

    Writes OUT/YYYYMMDD/part-*.gz (GZIP TFRecord, tf.Example, the log format of the
    pipeline), every rejected input line with its reason to OUT/_rejected-*.jsonl, and the
    counters to OUT/_counters.json. Any further arguments are Beam pipeline options, passed
    on unchanged: e.g. --runner=DirectRunner --direct_num_workers=2
    --direct_running_mode=multi_processing, or the options of Dataflow, Flink or Spark.
    """
    from lt4rec.logs import preprocess as preprocess_lib

    counters = preprocess_lib.run(
        raw_dir, out_dir, file_format=file_format, beam_args=list(ctx.args), allow_damaged_files=allow_damaged_files
    )
    click.echo(preprocess_lib.format_counters(counters))


def rankscore_options(command):
    """The exponents a, b, c of rankscore = pCTR^a * pCVR^b * video_length^c (`serving.client.RankWeights`)."""
    for name, letter, task in reversed(
        (("--ctr-exponent", "a", "pCTR"), ("--cvr-exponent", "b", "pCVR"), ("--length-exponent", "c", "length"))
    ):
        command = click.option(
            name,
            letter,
            default=1.0,
            show_default=True,
            type=float,
            help=f"{letter} in pCTR^a * pCVR^b * length^c (the exponent of {task}).",
        )(command)
    return command


@cli.command(name="batch-score", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--examples",
    "examples_pattern",
    required=True,
    help="GZIP TFRecord logs to score (a glob; _* and .* files skipped).",
)
@click.option(
    "--serving-dir", required=True, help="Folder of the pushed models: SERVING_DIR/{rank,ctr,cvr}/<version>/."
)
@click.option("--out", "out_dir", required=True, help="Where to write the scores (a new or empty folder).")
@click.option(
    "--rank-version",
    default=None,
    type=click.IntRange(min=0),
    help="Joint rank model version (default: the latest, if pushed).",
)
@click.option("--task-models", is_flag=True, help="Score with the CTR and CVR models even when a rank model is pushed.")
@click.option(
    "--ctr-version",
    default=None,
    type=click.IntRange(min=0),
    help="CTR model version (default: the latest; implies --task-models).",
)
@click.option(
    "--cvr-version",
    default=None,
    type=click.IntRange(min=0),
    help="CVR model version (default: the latest; implies --task-models).",
)
@rankscore_options
@click.pass_context
def batch_score(
    ctx: click.Context,
    examples_pattern: str,
    serving_dir: str,
    out_dir: str,
    rank_version: int | None,
    task_models: bool,
    ctr_version: int | None,
    cvr_version: int | None,
    a: float,
    b: float,
    c: float,
) -> None:
    """Score logged impressions with the pushed models (an Apache Beam job).

    The joint rank model scores both tasks in one pass when it is pushed; else (or with
    --task-models) the CTR and CVR models.

    Writes OUT/scores-*.jsonl (per impression: request_id, video_id, pctr, pcvr,
    video_length, rankscore = pCTR^a * pCVR^b * video_length^c, label, cvrlabel, file,
    record), every row that cannot be scored with its reason to OUT/_rejected-*.jsonl, and
    the counters to OUT/_counters.json. Further arguments are Beam pipeline options, passed
    on unchanged (e.g. --direct_num_workers=2 --direct_running_mode=multi_processing).
    """
    from lt4rec.serving import batch_scoring, client

    counters = batch_scoring.run(
        examples_pattern,
        serving_dir,
        out_dir,
        weights=client.RankWeights(a, b, c),
        ctr_version=ctr_version,
        cvr_version=cvr_version,
        beam_args=list(ctx.args),
        rank_version=rank_version,
        task_models=task_models,
    )
    click.echo(batch_scoring.format_counters(counters))


MODEL_CHOICES = tuple(configs.MODELS)
_SPARSE_MODELS = {granularity: model for model, (_, granularity) in configs.MODELS.items() if granularity}


def run_options(command):
    """The options of a pipeline run: every `setting` of `PipelineSettings` (data, days, tables,
    the network, its training and mask search, the Evaluator's bounds), and the model."""
    command = click.option(
        "--granularity",
        type=click.Choice(sorted(_SPARSE_MODELS)),
        default=None,
        help="Prune single weights (S-Weight) or whole units (S-Neuron): the same as --model s_weight or "
        "--model s_neuron, which is the way to choose it (kept for older scripts).",
    )(command)
    command = click.option(
        "--model",
        type=click.Choice(MODEL_CHOICES),
        default=None,
        show_default=configs.S_WEIGHT,
        help="s_weight / s_neuron: sparse sharing with connection / neuron masks (MaskSearch, then the "
        "Trainer under its masks); the others train from scratch without MaskSearch: single_task (two "
        "separate networks), hard_sharing, shared_bottom, layer_sharing (the paper's Layer_Share), "
        "mmoe, ple, esmm. Every model pushes a CTR and a CVR model.",
    )(command)
    return options.click_options(configs.PipelineSettings)(command)


def _model_name(values: dict) -> str:
    """--model, or the sparse-sharing model --granularity names (s_weight when neither is given)."""
    model, granularity = values["model"], values["granularity"]
    if model is None:
        return _SPARSE_MODELS[granularity or configs.MODELS[configs.S_WEIGHT][1]]
    if granularity is not None and _SPARSE_MODELS[granularity] != model:
        raise click.BadParameter(
            f"--granularity {granularity} contradicts --model {model} "
            "(--model s_weight or s_neuron sets the granularity)",
            param_hint="--granularity",
        )
    return model


def _pipeline_settings(ctx: click.Context, values: dict, **fields: object) -> configs.PipelineSettings:
    """PipelineSettings from the options of `run_options`; further arguments are Beam options."""
    settings = options.from_options(
        configs.PipelineSettings,
        values,
        beam_pipeline_args=tuple(ctx.args) or configs.DEFAULT_BEAM_PIPELINE_ARGS,
        **fields,
    )
    try:
        return configs.with_model(settings, _model_name(values))
    except errors.UserFacingError as error:  # e.g. multi-view with experts
        raise click.BadParameter(str(error), param_hint="--model") from None


@cli.group()
def pipeline() -> None:
    """Run the TFX pipeline locally (LocalDagRunner), or compile it for Kubeflow."""


@pipeline.command(name="run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@run_options
@click.pass_context
def pipeline_run(ctx: click.Context, **values: object) -> None:
    """Run the pipeline on day partitions of logs, locally.

    History mode (the default) reads every day partition (or those from --first-day to
    --last-day), holds out the last --eval-days for evaluation and trains on the rest.
    Daily mode (--span) reads one day. Then MaskSearch finds one mask per task on the MLP
    (warmup, then --rounds of magnitude pruning per task), the Trainer trains the shared
    network under them, and the Evaluator scores each task and blesses the model. With a
    --model other than s_weight or s_neuron there is no MaskSearch: the Trainer trains that
    model from scratch. Either way TaskPusher pushes a CTR and a CVR model. Further
    arguments are Beam pipeline options for the Beam-based components (default: the
    DirectRunner, in memory).
    """
    from lt4rec.pipeline import local_runner

    settings = _pipeline_settings(ctx, values)
    local_runner.run(settings)
    click.echo(f"Pipeline {settings.pipeline_name} finished; artifacts under {settings.pipeline_root}")


@pipeline.command(name="compile", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--out", "out_file", required=True, type=click.Path(dir_okay=False), help="The pipeline spec (JSON) to write."
)
@click.option(
    "--image",
    default="lt4rec:latest",
    show_default=True,
    help="Container image every component runs in (built from the Dockerfile and pushed).",
)
@options.click_options(configs.VertexTraining)
@options.click_options(configs.Resources)
@run_options
@click.pass_context
def pipeline_compile(
    ctx: click.Context,
    out_file: str,
    image: str,
    **values: object,
) -> None:
    """Compile the pipeline for Kubeflow Pipelines or Vertex AI Pipelines (no cluster needed).

    Writes the Kubeflow V2 pipeline spec (JSON) of the same pipeline `pipeline run` runs,
    every component in --image, and prints its path. Nothing under the data root, pipeline
    root or serving dir is read (they are the cluster's paths, e.g. gs://b/logs). Further
    arguments are Beam pipeline options for the Beam-based components, written into the
    spec: e.g. --runner=DataflowRunner --project=P --region=R --temp_location=gs://b/tmp
    (Dataflow's workers then run in --image, which has the project installed: it is added
    as --sdk_container_image; --setup_file is refused). With --training-workers N
    MaskSearch and the Trainer run as Vertex AI training jobs of N replicas (a chief and
    N-1 workers, in --image), which train together under MultiWorkerMirroredStrategy, or,
    with --parameter-servers M, under ParameterServerStrategy with M parameter servers.
    """
    from lt4rec.pipeline import kubeflow_runner

    vertex_training = options.from_options(configs.VertexTraining, values).asked()
    settings = _pipeline_settings(ctx, values, vertex_training=vertex_training)
    resources = options.from_options(configs.Resources, values)
    click.echo(kubeflow_runner.compile_pipeline(settings, out_file, image, resources))


@cli.command()
@click.option("--target", required=True, help="HOST:PORT of a TF Serving (or `lt4rec serve`) gRPC endpoint.")
@click.option(
    "--logs", "logs_pattern", required=True, help="GZIP TFRecord logs (a glob) holding the request's candidates."
)
@click.option(
    "--request-id", default=None, help="The request (`seqnum`) whose candidates to rank (default: the first)."
)
@rankscore_options
@click.option(
    "--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.0, min_open=True), help="Seconds per RPC."
)
@click.option("--as-json", is_flag=True, help="Print the ranking as JSON lines instead of a table.")
def score(
    target: str, logs_pattern: str, request_id: str | None, a: float, b: float, c: float, timeout: float, as_json: bool
) -> None:
    """Rank one request's candidate videos with the served CTR and CVR models.

    Sends the request's impressions from the logs, as serialized tf.Examples, to the `ctr`
    and `cvr` models over TF Serving's gRPC Predict, and prints them best first by
    rankscore = pCTR^a * pCVR^b * video_length^c (video length from FEA_DURATION's bucket).
    """
    import dataclasses
    import json

    import grpc

    from lt4rec.serving import client

    try:
        found_id, candidates = client.find_request(client.read_requests(logs_pattern), request_id)
        with client.RankingClient(target, timeout=timeout) as ranking:
            ranked = ranking.rank(candidates, client.RankWeights(a, b, c))
    except (FileNotFoundError, KeyError, ValueError) as error:
        raise errors.UserFacingError(str(error).strip("'\"")) from error
    except grpc.RpcError as error:
        raise errors.UserFacingError(f"{target}: {error.code().name}: {error.details()}") from error
    if as_json:
        for rank, candidate in enumerate(ranked, start=1):
            click.echo(json.dumps({"request_id": found_id, "rank": rank, **dataclasses.asdict(candidate)}))
        return
    click.echo(f"request {found_id}: {len(ranked)} candidates, rankscore = pCTR^{a:g} * pCVR^{b:g} * length^{c:g}")
    click.echo(f"{'rank':>4}  {'video':<24} {'pCTR':>7} {'pCVR':>7} {'length s':>9} {'rankscore':>10}")
    for rank, candidate in enumerate(ranked, start=1):
        click.echo(
            f"{rank:>4}  {candidate.video:<24} {candidate.pctr:7.4f} {candidate.pcvr:7.4f} "
            f"{candidate.video_length:9.1f} {candidate.rankscore:10.4f}"
        )


@cli.command(name="serve")
@options.click_options(ServerSettings)
def serve_command(**values: object) -> None:
    """Serve the models over TF Serving's gRPC APIs (and optionally its REST API), in the foreground.

    For machines without `tensorflow_model_server`: Predict, GetModelMetadata, Classify,
    Regress and GetModelStatus, on the latest --num-versions of every model under
    --model-base-path; new versions are loaded as they appear, without failing requests.
    SIGTERM or Ctrl-C drains (every request received is answered) and stops.
    """
    settings = options.from_options(ServerSettings, values)
    if not os.path.isdir(settings.model_base_path):  # before TensorFlow's slow import
        raise errors.DataError(f"model base path {settings.model_base_path} does not exist or is not a folder")
    from lt4rec.serving import server

    server.serve(settings)


def main() -> None:
    """Entry point: user errors end with their message and exit code 1, not a traceback."""
    try:
        cli(standalone_mode=True)
    except errors.UserFacingError as error:
        click.echo(f"lt4rec: error: {error}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
