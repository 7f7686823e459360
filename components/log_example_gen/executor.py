"""LogExampleGen's executor: reads day partitions of logs, checks every row, splits by day.

Why not the stock ImportExampleGen executor: production logs come as they are, and a bad
row or a corrupt file must end the run with a message that names the file, the record and
the field, not a traceback from inside Beam, and must never vanish silently. So each file
is read by one DoFn that knows its name; a row that fails the label checks, or the unread
rest of a corrupt file, goes to a dead-letter output with its reason; the rows, kept aside
under `<examples artifact>/rejected/`, are counted, and the run fails when their share
exceeds `max_rejected_fraction` (0 by default).

Splits: in history mode the last `eval_days` day partitions present when the run starts
are `eval` and the earlier ones `train` (train on the past, evaluate on the next day, as
the paper does); in daily mode the one day the driver resolved is split by a hash of the
request id, so that the impressions of one request stay together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from typing import Any, Iterator

import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen import driver as example_gen_driver
from tfx.components.example_gen import input_processor
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from lt4rec import errors, features
from lt4rec.logs import beam_jobs, tfrecord

logger = logging.getLogger(__name__)

EVAL_DAYS = "eval_days"
FIRST_DAY = "first_day"
LAST_DAY = "last_day"
MAX_REJECTED_FRACTION = "max_rejected_fraction"

DAY_FOLDER = re.compile(r"^\d{8}$")
REJECTED_DIR = "rejected"
COUNTS_FILE = "counts.json"
ROWS_READ = "rows_read"

# Reasons a row is rejected.
NOT_AN_EXAMPLE = "not_a_tf_example"
MISSING_LABEL = "missing_label"
WRONG_TYPE = "wrong_type"
LABEL_OUT_OF_DOMAIN = "label_out_of_domain"
CORRUPT_FILE = "corrupt_file"

_KIND = {"int64_list": "int64", "float_list": "float", "bytes_list": "bytes"}
_EXPECTED_KIND = {
    features.CLICK_LABEL: "int64_list",
    features.WATCH_RATIO_LABEL: "float_list",
    features.REQUEST_ID: "bytes_list",
    features.PRODUCTION_PCTR: "bytes_list",
    **{name: "bytes_list" for name in features.FEATURE_NAMES},
}


def check_row(example: tf.train.Example) -> tuple[str, str, str] | None:
    """(reason, field, detail) if a row breaks docs/LOG_SCHEMA.md in a way no later step may see.

    The labels must be there and in their domain, and every known key must have its
    type: one row of another type breaks the batch decoding of StatisticsGen and
    Transform. Everything else (missing features, value counts, new keys) is a matter
    of statistics, for ExampleValidator.
    """
    feature_map = example.features.feature
    for name in (features.CLICK_LABEL, features.WATCH_RATIO_LABEL):
        if name not in feature_map or not _values(feature_map[name]):
            return MISSING_LABEL, name, "is missing"
    for name, feature in feature_map.items():
        kind = feature.WhichOneof("kind")
        expected = _EXPECTED_KIND.get(name)
        if expected and kind and kind != expected and _values(feature):
            return WRONG_TYPE, name, f"has {_KIND[kind]} values where {_KIND[expected]} belong"
    clicks = list(feature_map[features.CLICK_LABEL].int64_list.value)
    if len(clicks) != 1 or clicks[0] not in (0, 1):
        return LABEL_OUT_OF_DOMAIN, features.CLICK_LABEL, f"= {clicks} is not one value in {{0, 1}}"
    ratios = list(feature_map[features.WATCH_RATIO_LABEL].float_list.value)
    if len(ratios) != 1 or not (0.0 <= ratios[0] <= 1.0) or math.isnan(ratios[0]):
        return LABEL_OUT_OF_DOMAIN, features.WATCH_RATIO_LABEL, f"= {ratios} is outside [0, 1]"
    return None


def _values(feature: tf.train.Feature) -> list:
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


class _ReadLogFile(beam.DoFn):
    """Reads one GZIP TFRecord file; yields (day, serialized example) or a rejection."""

    def process(self, path: str) -> Iterator[Any]:
        day = os.path.basename(os.path.dirname(path))
        index = -1
        try:
            for index, record in enumerate(beam_jobs.read_tfrecords(path)):
                try:
                    example = tf.train.Example.FromString(record)
                except Exception as error:  # a protobuf DecodeError
                    yield beam_jobs.reject(path, index, NOT_AN_EXAMPLE, "", str(error), record)
                    continue
                problem = check_row(example)
                if problem is None:
                    yield day, record
                else:
                    reason, field, detail = problem
                    yield beam_jobs.reject(path, index, reason, field, detail, record)
        except tfrecord.CorruptFileError as error:
            detail = f"not a valid GZIP TFRecord file: it breaks off after {index + 1} records ({error})"
            yield beam_jobs.reject(path, index + 1, CORRUPT_FILE, "", detail, b"")


def describe_rejection(rejection: dict) -> str:
    if rejection["reason"] == CORRUPT_FILE:
        return f"{rejection['file']}: {rejection['detail']}"
    field = f"field {rejection['field']!r} " if rejection["field"] else ""
    return f"{rejection['file']} record {rejection['record']}: {field}{rejection['detail']}"


def _request_bucket(record: bytes, buckets: int) -> int:
    example = tf.train.Example.FromString(record)
    request = example.features.feature[features.REQUEST_ID].bytes_list.value
    key = request[0] if request else record
    return int(hashlib.sha256(key).hexdigest(), 16) % buckets


_SPAN_SPECS = (
    example_gen_utils.SPAN_SPEC,
    example_gen_utils.VERSION_SPEC,
    example_gen_utils.YEAR_SPEC,
    example_gen_utils.MONTH_SPEC,
    example_gen_utils.DAY_SPEC,
)


def resolve_span(exec_properties: dict[str, Any], examples) -> dict[str, Any]:
    """Daily mode's day, when no driver has resolved it: what TFX's ExampleGen driver does.

    LocalDagRunner and Vertex AI (its pre-cache step) run that driver before the executor,
    and it replaces `{YYYY}{MM}{DD}` in the pattern by the day `range_config` selects.
    Kubeflow Pipelines 2.x runs no such step, so the pattern arrives as compiled.
    """
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
    if not any(spec in split.pattern for split in input_config.splits for spec in _SPAN_SPECS):
        return exec_properties
    range_config = None
    if exec_properties.get(standard_component_specs.RANGE_CONFIG_KEY):
        range_config = range_config_pb2.RangeConfig()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.RANGE_CONFIG_KEY], range_config)
    processor = input_processor.FileBasedInputProcessor(
        exec_properties[standard_component_specs.INPUT_BASE_KEY], input_config.splits, range_config
    )
    span, version = processor.resolve_span_and_version()
    for split in input_config.splits:
        split.pattern = processor.get_pattern_for_span_version(split.pattern, span, version)
    resolved = {
        **exec_properties,
        standard_component_specs.INPUT_CONFIG_KEY: proto_utils.proto_to_json(input_config),
        example_gen_utils.SPAN_PROPERTY_NAME: span,
        example_gen_utils.VERSION_PROPERTY_NAME: version,
        example_gen_utils.FINGERPRINT_PROPERTY_NAME: processor.get_input_fingerprint(span, version),
    }
    example_gen_driver.update_output_artifact(resolved, examples.mlmd_artifact)
    logger.info("LogExampleGen: no driver resolved the day; span %d: %s", span, input_config.splits[0].pattern)
    return resolved


class Executor(BaseExampleGenExecutor):
    """Reads, checks and splits the log partitions (see the module docstring)."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        raise NotImplementedError("LogExampleGen reads and splits in GenerateExamplesByBeam")

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        self._rejected_dir = os.path.join(examples.uri, REJECTED_DIR)
        exec_properties = resolve_span(exec_properties, examples)
        super().Do(input_dict, output_dict, exec_properties)
        with tf.io.gfile.GFile(os.path.join(self._rejected_dir, COUNTS_FILE)) as handle:
            counts = json.load(handle)
        corrupt_files = counts["rejected"].get(CORRUPT_FILE, 0)
        rejected = sum(counts["rejected"].values()) - corrupt_files
        examples.set_int_custom_property("rows_read", counts[ROWS_READ])
        examples.set_int_custom_property("rejected_rows", rejected)
        examples.set_string_custom_property("rejected_by_reason", json.dumps(counts["rejected"], sort_keys=True))
        examples.set_string_custom_property("split_days", json.dumps(counts["split_days"], sort_keys=True))
        logger.info(
            "LogExampleGen: %d rows read, %d rejected, %d corrupt files %s; days per split %s",
            counts[ROWS_READ],
            rejected,
            corrupt_files,
            counts["rejected"],
            counts["split_days"],
        )
        limit = float(exec_properties.get(MAX_REJECTED_FRACTION) or 0.0)
        if corrupt_files:
            raise errors.DataError(
                f"{corrupt_files} log file(s) could not be read to the end:\n  "
                + self._first_rejections(corrupt_only=True)
            )
        if rejected > limit * counts[ROWS_READ]:
            raise errors.DataError(
                f"{rejected} of {counts[ROWS_READ]} log rows failed the checks (at most {limit:.2%} may): "
                f"{counts['rejected']}. All are kept in {self._rejected_dir}. The first:\n  " + self._first_rejections()
            )

    def _first_rejections(self, corrupt_only: bool = False, count: int = 5) -> str:
        """The first few dead-letter rows (for corrupt files: all of them), one per line."""
        found = [
            r for r in beam_jobs.read_rejections(self._rejected_dir) if not corrupt_only or r["reason"] == CORRUPT_FILE
        ]
        found.sort(key=lambda r: (r["file"], r["record"]))
        return "\n  ".join(describe_rejection(r) for r in found[:count])

    def GenerateExamplesByBeam(
        self, pipeline: beam.Pipeline, exec_properties: dict[str, Any]
    ) -> dict[str, beam.PCollection]:
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
        output_config = example_gen_pb2.Output()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config)
        split_names = example_gen_utils.generate_output_split_names(input_config, output_config)
        if len(input_config.splits) != 1 or split_names != ["train", "eval"]:
            raise ValueError(f"LogExampleGen reads one input split into train and eval; got {input_config}")

        pattern = os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY], input_config.splits[0].pattern)
        eval_days = int(exec_properties.get(EVAL_DAYS) or 0)
        files = _day_files(pattern, exec_properties.get(FIRST_DAY) or "", exec_properties.get(LAST_DAY) or "")
        days = sorted({os.path.basename(os.path.dirname(f)) for f in files})
        if eval_days:
            if len(days) <= eval_days:
                raise errors.DataError(
                    f"{pattern} has {len(days)} day partition(s) {days}; holding out the last {eval_days} for "
                    f"evaluation needs at least {eval_days + 1}"
                )
            split_days = {"train": days[:-eval_days], "eval": days[-eval_days:]}
        else:
            split_days = {"train": days, "eval": days}
        logger.info("LogExampleGen: %d files in %d day partitions; %s", len(files), len(days), split_days)

        read = (
            pipeline
            | "ListFiles" >> beam.Create(files)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadAndCheck" >> beam.ParDo(_ReadLogFile()).with_outputs(beam_jobs.REJECTED, main="rows")
        )
        if eval_days:
            eval_set = frozenset(split_days["eval"])
            parts = read.rows | "SplitByDay" >> beam.Partition(lambda row, _: int(row[0] in eval_set), 2)
        else:
            buckets = [split.hash_buckets for split in output_config.split_config.splits]
            total = sum(buckets)
            parts = read.rows | "SplitByRequest" >> beam.Partition(
                lambda row, _: int(_request_bucket(row[1], total) >= buckets[0]), 2
            )
        result = {name: part | f"Records[{name}]" >> beam.Values() for name, part in zip(split_names, parts)}

        rejected = read[beam_jobs.REJECTED]
        _ = rejected | "WriteRejected" >> beam_jobs.WriteRejections(self._rejected_dir)
        counts = (
            (
                read.rows | "RowKeys" >> beam.Map(lambda row: ROWS_READ),
                rejected | "RejectedKeys" >> beam.Map(lambda r: f"rejected:{r['reason']}"),
                rejected
                | "ReadRejectedKeys" >> beam.FlatMap(lambda r: [ROWS_READ] if r["reason"] != CORRUPT_FILE else []),
            )
            | "AllKeys" >> beam.Flatten()
            | "Count" >> beam.combiners.Count.PerElement()
            | "ToDict" >> beam.combiners.ToDict()
            | "Summary" >> beam.Map(_summary, split_days)
        )
        _ = counts | "WriteCounts" >> beam.io.WriteToText(
            os.path.join(self._rejected_dir, COUNTS_FILE), shard_name_template=""
        )
        return result


def _summary(counts: dict[str, int], split_days: dict[str, list[str]]) -> str:
    rejected = {key.split(":", 1)[1]: n for key, n in counts.items() if key.startswith("rejected:")}
    return json.dumps({ROWS_READ: counts.get(ROWS_READ, 0), "rejected": rejected, "split_days": split_days})


def _day_files(pattern: str, first_day: str, last_day: str) -> list[str]:
    """The files of the day partitions that `pattern` matches, within [first_day, last_day].

    As in Hadoop and Spark output, names that start with `_` or `.` (`_SUCCESS`, `.crc`
    files, the generator's `_truth-*`) are not data.
    """
    files = []
    for path in sorted(tf.io.gfile.glob(pattern)):
        day = os.path.basename(os.path.dirname(path))
        hidden = os.path.basename(path).startswith(("_", "."))
        if hidden or not DAY_FOLDER.match(day) or tf.io.gfile.isdir(path):
            continue
        if (first_day and day < first_day) or (last_day and day > last_day):
            continue
        files.append(path)
    if not files:
        window = f" from {first_day or 'the first'} to {last_day or 'the last'} day" if first_day or last_day else ""
        raise errors.DataError(f"no log files match {pattern}{window}: expected DATA_ROOT/YYYYMMDD/<files>")
    return files
