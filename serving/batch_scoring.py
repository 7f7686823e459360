"""`lt4rec batch-score`: the Apache Beam job that scores logged impressions with the served models.

Input: GZIP TFRecord files of `tf.Example` in the log format of docs/LOG_SCHEMA.md, given as a
glob (`logs/*/part-*.gz`, `gs://b/logs/2020*/*`); files whose names start with `_` or `.`
are not logs (truth files, markers, rejected rows), as everywhere in the project.

Models, in TF Serving's layout (the latest numeric version unless one is given;
dot-folders, which the pusher writes before renaming, are never taken): the joint
`SERVING_DIR/rank/<v>/` when it is there (sparse sharing pushes it), whose
`serving_scores` signature gives `ctr` and `cvr` from one pass over the shared front;
else, or when asked to (`task_models`, or a task model's version given), the per-task
`SERVING_DIR/ctr/<v>/` and `SERVING_DIR/cvr/<v>/` on `serving_default`. They run in-process
by `tfx_bsl.public.beam.RunInferencePerModel`, the keyed and vectorised form of tfx_bsl's
`RunInference` (serialized raw `tf.Example` in), the impression's key carried through
every model, so that its two scores come out together without a shuffle to join them.

Output, under OUT:
- `scores-NNNNN-of-MMMMM.jsonl`: one JSON object per scored impression: `request_id`
  (`seqnum`), `video_id` (`FEA_VID`), `pctr`, `pcvr`, `video_length` (seconds, from the
  `FEA_DURATION` bucket), `rankscore` (= pCTR^a * pCVR^b * video_length^c, the one
  definition in `serving.client.rankscore`), `label` and `cvrlabel` (null when the row has
  none), and `file` and `record` (0-based index in the file) of the impression;
- `_rejected-NNNNN-of-MMMMM.jsonl`: one JSON object per row that could not be scored:
  `file`, `record`, `reason`, `field`, `detail` and the record's bytes in hex;
- `_counters.json`: the job's Beam counters (see `format_counters`).

Rejection reasons: `not_a_tf_example` (the record does not parse), `wrong_type` (an
`FEA_*` feature or `seqnum` that is not a bytes list: it would break the model's parse of
its whole batch), `missing_id` (no single `seqnum` or `FEA_VID`), `missing_duration`
(`FEA_DURATION` absent or `-1`: no video length, so no rankscore), `bad_duration` (not one
known bucket), `corrupt_file` (a GZIP TFRecord file that breaks off: the unread rest of the
file is one rejected entry, so that records read = scored + rejected holds always).

Beam options go unchanged into `PipelineOptions`; the default runner is the DirectRunner.
The DoFns are module-level classes, so they pickle for multi-process and remote workers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any, Iterator, Mapping, Sequence

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from lt4rec import features
from lt4rec.errors import DataError
from lt4rec.logs import beam_jobs, tfrecord
from lt4rec.logs.beam_jobs import REJECTED
from lt4rec.models import export
from lt4rec.serving import client

logger = logging.getLogger(__name__)

TASKS = ("ctr", "cvr")
SIGNATURES = {"ctr": "serving_default", "cvr": "serving_default", export.RANK_MODEL: export.SCORES_SIGNATURE}
COUNTER_NAMESPACE = "lt4rec.batch_scoring"
RECORDS_READ = "records_read"
SCORED = "scored"

NOT_AN_EXAMPLE = "not_a_tf_example"
WRONG_TYPE = "wrong_type"
MISSING_ID = "missing_id"
MISSING_DURATION = "missing_duration"
BAD_DURATION = "bad_duration"
CORRUPT_FILE = "corrupt_file"

SCORES_PREFIX = "scores"
_VERSION = re.compile(r"^\d+$")


@dataclasses.dataclass(frozen=True)
class ScoringModels:
    """The models that score, by name (`rank`, or `ctr` and `cvr`): SavedModel folder and version."""

    paths: Mapping[str, str]
    versions: Mapping[str, int]

    def describe(self) -> str:
        return ", ".join(f"{name} version {self.versions[name]} ({path})" for name, path in self.paths.items())


def model_version_path(serving_dir: str, task: str, version: int | None = None) -> tuple[str, int]:
    """`SERVING_DIR/<task>/<version>/` (the latest numeric version when None), checked to hold a SavedModel."""
    task_dir = os.path.join(serving_dir, task)
    if version is None:
        names = [name.rstrip("/") for name in tf.io.gfile.listdir(task_dir)] if tf.io.gfile.isdir(task_dir) else []
        versions = [int(name) for name in names if _VERSION.match(name)]
        if not versions:
            raise DataError(f"no {task} model versions in {task_dir}: expected {task_dir}/<version>/saved_model.pb")
        version = max(versions)
    path = os.path.join(task_dir, str(version))
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        raise DataError(f"{path} holds no SavedModel (no saved_model.pb)")
    return path, version


def find_models(
    serving_dir: str,
    ctr_version: int | None = None,
    cvr_version: int | None = None,
    rank_version: int | None = None,
    task_models: bool = False,
) -> ScoringModels:
    """The rank model if asked for by version or pushed (and no task model's version is given), else the task models."""
    if rank_version is not None and (task_models or ctr_version is not None or cvr_version is not None):
        raise ValueError("score with the rank model or with the task models, not both")
    rank_dir = os.path.join(serving_dir, export.RANK_MODEL)
    pushed = tf.io.gfile.isdir(rank_dir) and any(
        _VERSION.match(name.rstrip("/")) for name in tf.io.gfile.listdir(rank_dir)
    )
    versions = {"ctr": ctr_version, "cvr": cvr_version}
    if rank_version is not None or (pushed and not task_models and versions == {"ctr": None, "cvr": None}):
        versions = {export.RANK_MODEL: rank_version}
    found = {name: model_version_path(serving_dir, name, version) for name, version in versions.items()}
    return ScoringModels(
        {name: path for name, (path, _) in found.items()}, {name: version for name, (_, version) in found.items()}
    )


def log_files(pattern: str) -> list[str]:
    """The files `pattern` matches, less those named `_*` or `.*`; a DataError when none."""
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # Beam raises when nothing matches on some file systems
        matched = []
    files = sorted(m.path for m in matched if not os.path.basename(m.path).startswith(("_", ".")))
    if not files:
        raise DataError(f"no log files match {pattern} (files named _* or .* are not logs)")
    return files


def _count(name: str, value: int = 1) -> None:
    beam_jobs.count(COUNTER_NAMESPACE, name, value)


def _bytes_value(feature_map, name: str) -> str | None:
    if name not in feature_map:
        return None
    values = feature_map[name].bytes_list.value
    return values[0].decode("utf-8", errors="backslashreplace") if len(values) == 1 else None


def _label(feature_map, name: str, kind: str) -> float | int | None:
    if name not in feature_map or feature_map[name].WhichOneof("kind") != kind:
        return None
    values = getattr(feature_map[name], kind).value
    return values[0] if len(values) == 1 else None


class ReadAndCheckFn(beam.DoFn):
    """A log file's path -> ((file, record, request id, video id, length s, label, cvrlabel), record), or rejections."""

    def process(self, path: str) -> Iterator[Any]:
        index = -1
        try:
            for index, record in enumerate(beam_jobs.read_tfrecords(path)):
                _count(RECORDS_READ)
                yield from self._check(path, index, record)
        except tfrecord.CorruptFileError as error:
            _count(RECORDS_READ)
            detail = f"not a valid GZIP TFRecord file: it breaks off after {index + 1} records ({error})"
            yield beam_jobs.reject(path, index + 1, CORRUPT_FILE, "", detail, b"", COUNTER_NAMESPACE)

    @staticmethod
    def _check(path: str, index: int, record: bytes) -> Iterator[Any]:
        try:
            example = tf.train.Example.FromString(record)
        except Exception as error:  # a protobuf DecodeError
            yield beam_jobs.reject(
                path, index, NOT_AN_EXAMPLE, "", str(error) or "does not parse", record, COUNTER_NAMESPACE
            )
            return
        feature_map = example.features.feature
        for name, feature in feature_map.items():
            kind = feature.WhichOneof("kind")
            if (name.startswith("FEA_") or name == features.REQUEST_ID) and kind not in (None, "bytes_list"):
                yield beam_jobs.reject(
                    path, index, WRONG_TYPE, name, f"has {kind} where a bytes_list belongs", record, COUNTER_NAMESPACE
                )
                return
        request_id, video_id = (
            _bytes_value(feature_map, features.REQUEST_ID),
            _bytes_value(feature_map, features.VIDEO_FEATURE),
        )
        for name, value in ((features.REQUEST_ID, request_id), (features.VIDEO_FEATURE, video_id)):
            if value is None:
                yield beam_jobs.reject(
                    path, index, MISSING_ID, name, "is missing or not one value", record, COUNTER_NAMESPACE
                )
                return
        duration = (
            feature_map[features.DURATION_FEATURE].bytes_list.value if features.DURATION_FEATURE in feature_map else []
        )
        if not duration or list(duration) == [features.MISSING_VALUE.encode()]:
            detail = "is missing: no video length for the rankscore"
            yield beam_jobs.reject(
                path, index, MISSING_DURATION, features.DURATION_FEATURE, detail, record, COUNTER_NAMESPACE
            )
            return
        try:
            length = client.video_length_seconds(example)
        except ValueError as error:
            yield beam_jobs.reject(
                path, index, BAD_DURATION, features.DURATION_FEATURE, str(error), record, COUNTER_NAMESPACE
            )
            return
        label = _label(feature_map, features.CLICK_LABEL, "int64_list")
        cvrlabel = _label(feature_map, features.WATCH_RATIO_LABEL, "float_list")
        yield (path, index, request_id, video_id, length, label, cvrlabel), record


def _scores(prediction_logs) -> dict[str, float]:
    """Every output of the models' Predict logs for one impression (`ctr`, `cvr`) as floats."""
    scores = {}
    for prediction_log in prediction_logs:
        for name, output in prediction_log.predict_log.response.outputs.items():
            if (
                output.dtype == tf.float32.as_datatype_enum and output.tensor_content
            ):  # how tfx_bsl writes a float score
                scores[name] = float(np.frombuffer(output.tensor_content, dtype=np.float32)[0])
            else:
                scores[name] = float(tf.make_ndarray(output).reshape(-1)[0])  # 10x slower; any other layout
    if set(scores) != set(TASKS):
        raise ValueError(f"expected the outputs {TASKS}, got {sorted(scores)}")
    return scores


class ToRowFn(beam.DoFn):
    """(key, (the models' prediction logs)) -> the output row as a JSON line."""

    def __init__(self, weights) -> None:
        self._weights = weights

    def process(self, element) -> Iterator[str]:
        (path, index, request_id, video_id, length, label, cvrlabel), prediction_logs = element
        scores = _scores(prediction_logs)
        pctr, pcvr = scores["ctr"], scores["cvr"]
        score = float(client.rankscore(np.float64(pctr), np.float64(pcvr), np.float64(length), self._weights))
        _count(SCORED)
        row = {
            "request_id": request_id,
            "video_id": video_id,
            "pctr": pctr,
            "pcvr": pcvr,
            "video_length": length,
            "rankscore": score,
            "label": label,
            "cvrlabel": cvrlabel,
            "file": path,
            "record": index,
        }
        yield json.dumps(row, ensure_ascii=False)


def inference_spec(model_path: str, signature: str):
    from tfx_bsl.public.proto import model_spec_pb2

    return model_spec_pb2.InferenceSpecType(
        saved_model_spec=model_spec_pb2.SavedModelSpec(model_path=model_path, signature_name=[signature])
    )


def build_pipeline(
    pipeline: beam.Pipeline,
    files: Sequence[str],
    models: ScoringModels,
    out_dir: str,
    weights,
    spread_records: bool = True,
) -> None:
    """Adds the read, check, score, join and write steps to `pipeline`.

    GZIP files cannot be split, so one worker reads each file; `spread_records` reshuffles
    the records before inference so that a few large files still keep every worker busy.
    """
    # The vectorised, key-forwarding form of RunInference; public, though not re-exported by the package.
    from tfx_bsl.public.beam.run_inference import RunInferencePerModel

    checked = (
        pipeline
        | "Log files" >> beam.Create(list(files))
        | "Spread files" >> beam.Reshuffle()
        | "Read and check" >> beam.ParDo(ReadAndCheckFn()).with_outputs(REJECTED, main="keyed")
    )
    keyed = checked.keyed | "Spread records" >> beam.Reshuffle() if spread_records else checked.keyed
    scored = (
        keyed
        # RunInferencePerModel forwards a key only when it sees a typed (key, example) pair.
        | "Keyed examples" >> beam.Map(lambda element: element).with_output_types(beam.typehints.Tuple[Any, bytes])
        | "Score with CTR and CVR"
        >> RunInferencePerModel([inference_spec(path, SIGNATURES[name]) for name, path in models.paths.items()])
    )
    (
        scored
        | "To rows" >> beam.ParDo(ToRowFn(weights))
        | "Write scores" >> beam.io.WriteToText(FileSystems.join(out_dir, SCORES_PREFIX), file_name_suffix=".jsonl")
    )
    (checked[REJECTED] | "Write rejections" >> beam_jobs.WriteRejections(out_dir))


def query_counters(result) -> dict[str, int]:
    """The job's counters by name, summed over steps; records_read and scored present even when 0."""
    return beam_jobs.query_counters(result, COUNTER_NAMESPACE, (RECORDS_READ, SCORED))


def run(
    examples: str,
    serving_dir: str,
    out_dir: str,
    weights=None,
    ctr_version: int | None = None,
    cvr_version: int | None = None,
    beam_args: Sequence[str] | None = None,
    rank_version: int | None = None,
    task_models: bool = False,
) -> dict[str, int]:
    """Runs the job to the end; returns its counters (also written to OUT/_counters.json)."""
    weights = weights or client.RankWeights()
    files = log_files(examples)
    models = find_models(serving_dir, ctr_version, cvr_version, rank_version, task_models)
    beam_jobs.check_output_empty(out_dir)
    logger.info(
        "Scoring %d log files with %s; rankscore = pCTR^%g * pCVR^%g * length^%g",
        len(files),
        models.describe(),
        weights.ctr,
        weights.cvr,
        weights.length,
    )
    pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args or [])))
    build_pipeline(pipeline, files, models, out_dir, weights)
    result = pipeline.run()
    result.wait_until_finish()

    counters = query_counters(result)
    beam_jobs.write_counters(out_dir, counters)
    return counters


def format_counters(counters: Mapping[str, int]) -> str:
    """records read = scored + rejected, with the rejections by reason."""
    return beam_jobs.format_reasons(
        f"{counters.get(RECORDS_READ, 0)} records read", f"{counters.get(SCORED, 0)} scored", counters, f"{REJECTED}/"
    )
