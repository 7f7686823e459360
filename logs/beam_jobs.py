"""What the data side's Beam jobs share: counters, rejected rows, output checks, TFRecords.

`lt4rec preprocess`, LogExampleGen and `lt4rec batch-score` all promise the same thing:
nothing is lost silently. Every rejected row is counted where it is rejected and kept
aside as a JSON line with its file and reason, a job never writes into a folder that
already holds output, and GZIP TFRecord files are read strictly (a damaged file fails
loudly instead of ending early).
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Iterable, Iterator, Mapping

import apache_beam as beam
import tensorflow as tf
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from lt4rec.errors import DataError
from lt4rec.logs import tfrecord

REJECTED = "rejected"  # the tagged output of rejected rows, and the prefix of their counters
REJECTED_PREFIX = "_rejected"  # OUT/_rejected-*.jsonl
COUNTERS_FILE = "_counters.json"


@functools.lru_cache(maxsize=None)
def _counter(namespace: str, name: str) -> beam.metrics.metric.Metrics.DelegatingCounter:
    """Cached: making a counter costs more than incrementing it, and a counter finds the
    running step's metrics when incremented, so one object serves every step and bundle."""
    return beam.metrics.Metrics.counter(namespace, name)


def count(namespace: str, name: str, value: int = 1) -> None:
    _counter(namespace, name).inc(value)


def query_counters(
    result: beam.runners.runner.PipelineResult, namespace: str, always: Iterable[str] = ()
) -> dict[str, int]:
    """The job's counters by name, summed over steps; those named in `always` present even when 0."""
    counters = dict.fromkeys(always, 0)
    for counter in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + int(value)
    return dict(sorted(counters.items()))


def write_counters(out_dir: str, counters: Mapping[str, int]) -> None:
    with FileSystems.create(FileSystems.join(out_dir, COUNTERS_FILE)) as handle:
        handle.write(json.dumps(counters, indent=2, sort_keys=True).encode("utf-8") + b"\n")


def reject(
    path: str, index: int, reason: str, field: str, detail: str, record: bytes, namespace: str = ""
) -> beam.pvalue.TaggedOutput:
    """A rejected TFRecord row, for a DoFn's REJECTED output: where it was, why, and its bytes
    (hex). With a counter `namespace`, it is counted as `rejected/<reason>` where it is made,
    so that no rejection goes uncounted."""
    if namespace:
        count(namespace, f"{REJECTED}/{reason}")
    return beam.pvalue.TaggedOutput(
        REJECTED,
        {
            "file": path,
            "record": index,
            "reason": reason,
            "field": field,
            "detail": detail,
            "serialized_example_hex": record.hex(),
        },
    )


def format_reasons(total: str, used: str, counters: Mapping[str, int], prefix: str) -> str:
    """`<total> = <used> + N rejected (reason n, ...)` from the counters named `<prefix><reason>`."""
    reasons = {name[len(prefix) :]: value for name, value in counters.items() if name.startswith(prefix)}
    line = f"{total} = {used} + {sum(reasons.values())} rejected"
    if reasons:
        line += " (" + ", ".join(f"{reason} {value}" for reason, value in sorted(reasons.items())) + ")"
    return line


class WriteRejections(beam.PTransform):
    """Rejected rows (dicts) as JSON lines in OUT/_rejected-*.jsonl."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self._out_dir = out_dir

    def expand(self, rejections):
        return (
            rejections
            | "To JSON" >> beam.Map(lambda record: json.dumps(record, ensure_ascii=False))
            | "Write"
            >> beam.io.WriteToText(FileSystems.join(self._out_dir, REJECTED_PREFIX), file_name_suffix=".jsonl")
        )


def read_rejections(out_dir: str) -> Iterator[dict]:
    """What WriteRejections wrote."""
    for metadata in FileSystems.match([FileSystems.join(out_dir, f"{REJECTED_PREFIX}-*")])[0].metadata_list:
        with FileSystems.open(metadata.path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            yield from (json.loads(text) for text in handle if text.strip())


def check_output_empty(out_dir: str) -> None:
    """Output of an earlier run would be mixed with this one's."""
    leftovers = FileSystems.match([FileSystems.join(out_dir, "**")])[0].metadata_list  # files at any depth
    if leftovers:
        raise DataError(f"output folder {out_dir} is not empty (it holds {leftovers[0].path}); choose a new one")


def read_tfrecords(path: str) -> Iterator[bytes]:
    """The records of a GZIP TFRecord file, checking every byte (`tfrecord.read`).

    TensorFlow's own reader ends quietly when a GZIP file is cut at a record boundary
    (or has lost its trailer), losing the rest without a word; Python's gzip module
    notices the missing end-of-stream marker, and the TFRecord checksums catch the rest.
    """
    with tf.io.gfile.GFile(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as stream:
        yield from tfrecord.read(stream)
