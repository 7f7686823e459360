"""`lt4rec preprocess`: the Apache Beam job that joins raw events into training logs.

Input: `RAW/{impressions,clicks,plays}/YYYYMMDD/<files>` (files at any depth under a
source's folder are read: an event's day is its `time_ms`, not its folder), newline-delimited
JSON (`.jsonl`, `.json`) or CSV (`.csv`, whose first line is a header that is skipped and
checked), any of them possibly GZIP compressed (`.gz`); a UTF-8 byte order mark is skipped.
Marker files (names starting with `_` or `.`, like Hadoop's `_SUCCESS`) are skipped, counted
and named, as the pipeline skips them. `file_format="auto"` decides by extension; a mix of
formats, an unknown extension or a `.gz` file that is not GZIP is a `DataError` naming the
file, raised before Beam starts, as is a folder without impression files or a non-empty
output folder. A `.gz` file that ends before its GZIP stream does (truncated) or is damaged
inside fails the job with a `DataError` naming it (after the job, naming every such file);
with `allow_damaged_files` its lines up to the damage are used and its unreadable rest
counts as one rejected line (`unreadable`).
A failed job removes what it wrote, so the output folder can be used again.

Output:
- `OUT/YYYYMMDD/part-NNNNN-of-MMMMM.gz`: GZIP TFRecord files of `tf.train.Example` in the
  format of docs/LOG_SCHEMA.md (`records.to_example(raw_events.impression_record(...))`), one
  example per impression, in the day folder (UTC) of the impression's time;
- `OUT/_rejected-NNNNN-of-MMMMM.jsonl`: one JSON object per rejected input line: `source`,
  `reason`, `detail`, `file` and the `line` itself (undecodable bytes backslash-escaped);
- `OUT/_counters.json`: the job's Beam counters (see `format_counters`).

Only day folders are folders in OUT (the rest are `_` files, which readers skip), so OUT is
a data root for the pipeline in history and daily mode alike.

The contract, line by line:
- Every line is read as bytes, so that a line that is not UTF-8 is rejected (`malformed`)
  instead of crashing the job. `raw_events.parse_event` parses it; a failure is rejected
  with the error's reason (`malformed`, `missing_field`, `bad_value`); so is a `time_ms`
  outside [0, 9999-12-31] (`bad_value`), which has no day folder.
- Events are grouped by their impression key (request_id, video_id). Within a key, an
  event identical to another of its source (same typed fields, whatever the bytes) is
  rejected as `duplicate`, one copy kept. Of several different impressions with one key
  the earliest (then the smallest by content) is kept, the others are rejected as
  `conflicting_impression`. Clicks and plays without an impression are rejected as
  `click_without_impression` and `play_without_impression`. Of several different clicks
  the earliest is kept, the others are rejected as `duplicate_click`. Plays of an
  impression without a click are rejected as `play_without_click`.
- Labels: `label` is 1 when a click joined, else 0. `cvrlabel` is the sum of the joined
  plays' watched_seconds over their video_seconds (the largest, should they differ),
  clipped to [0, 1]; 0 without a click or without a play. Clipped ratios and clicks
  without a play are counted, not rejected. Each play's seconds are finite, watched >= 0
  and length > 0 (else `bad_value`); a sum beyond the float range is above any length, so
  clipped to 1.
- Accounting: for each source, lines read = lines used + lines rejected, where an
  impression line is used when it becomes an example, a click line when it joins as the
  click of an impression, a play line when it joins into a watch ratio. CSV headers are
  not lines read. Nothing is dropped without a counter and a dead-letter record.

Beam options: `beam_args` go unchanged into `PipelineOptions` (runner, multi-processing,
Dataflow, Flink or Spark options); the default runner is the DirectRunner. The DoFns are
module-level classes, so they pickle for multi-process and remote workers.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import uuid
import zlib
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
from apache_beam.options.value_provider import StaticValueProvider

from lt4rec.errors import DataError
from lt4rec.logs import beam_jobs, raw_events, records, tfrecord
from lt4rec.logs.beam_jobs import COUNTERS_FILE, REJECTED, REJECTED_PREFIX

logger = logging.getLogger(__name__)

# Rejection reasons: the parse-time ones of raw_events, then those of the join.
MALFORMED = raw_events.MALFORMED
MISSING_FIELD = raw_events.MISSING_FIELD
BAD_VALUE = raw_events.BAD_VALUE
DUPLICATE = "duplicate"
CONFLICTING_IMPRESSION = "conflicting_impression"
DUPLICATE_CLICK = "duplicate_click"
CLICK_WITHOUT_IMPRESSION = "click_without_impression"
PLAY_WITHOUT_IMPRESSION = "play_without_impression"
PLAY_WITHOUT_CLICK = "play_without_click"
UNREADABLE = "unreadable"  # the rest of a damaged file, with allow_damaged_files

# Counter names (Beam metrics of namespace COUNTER_NAMESPACE). Per-source and per-day
# counters append "/<source>" or "/<YYYYMMDD>"; rejections are "rejected/<source>/<reason>".
COUNTER_NAMESPACE = "lt4rec.preprocess"
FILES_READ = "files_read"
FILES_SKIPPED = "files_skipped"  # "/<source>/<reason>": counted before the job starts
LINES_READ = "lines_read"
EXAMPLES_WRITTEN = "examples_written"
CLICKS_JOINED = "clicks_joined"
PLAYS_JOINED = "plays_joined"
WATCH_RATIOS_CLIPPED = "watch_ratios_clipped"
CLICKS_WITHOUT_PLAY = "clicks_without_play"

FILE_FORMATS = ("auto",) + raw_events.FORMATS
SKIPPED_FILES_FILE = "_skipped_files.json"  # [{"source", "file", "reason"}], when files were skipped
EXAMPLE_FILE_PREFIX = "part"

_EXTENSION_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv"}
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = "\ufeff".encode("utf-8")
MARKER_FILE = "marker_file"  # the reason a `_` or `.` file is skipped
_MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the last day with a YYYYMMDD folder


class ParsedLine(NamedTuple):
    """A parsed input line, kept with its origin so that the join can still reject it.

    Between the steps it travels as a plain tuple: Beam's fast coder pickles NamedTuples,
    which makes the shuffle several times slower per element.
    """

    file_name: str
    line: bytes
    event: dict[str, Any]


def _count(name: str, value: int = 1) -> None:
    beam_jobs.count(COUNTER_NAMESPACE, name, value)


def _rejection(source: str, reason: str, detail: str, file_name: str, line: bytes) -> beam.pvalue.TaggedOutput:
    """A dead-letter record, counted where it is made so that no rejection goes uncounted."""
    _count(f"{REJECTED}/{source}/{reason}")
    record = {
        "source": source,
        "reason": reason,
        "detail": detail,
        "file": file_name,
        "line": line.decode("utf-8", errors="backslashreplace"),
    }
    return beam.pvalue.TaggedOutput(REJECTED, record)


def _reject_parsed(source: str, reason: str, detail: str, parsed: ParsedLine) -> beam.pvalue.TaggedOutput:
    return _rejection(source, reason, detail, parsed.file_name, parsed.line)


def _open_raw(path: str):
    """The file's bytes, decompressed when its name ends in `.gz`.

    Python's gzip reader, not Beam's: Beam's stops quietly where a truncated stream ends,
    gzip raises EOFError, so a damaged file cannot pass for a short one.
    """
    handle = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return gzip.GzipFile(fileobj=handle, mode="rb") if path.lower().endswith(".gz") else handle


class ReadLinesFn(beam.DoFn):
    """A raw file's path -> (path, line bytes) per line, without the line end.

    Skips a CSV file's header and a byte order mark. Of a damaged file, yields its lines up
    to the damage and one rejection (`unreadable`) naming the line it broke after.
    """

    def __init__(self, source: str, skip_header: bool) -> None:
        self._source = source
        self._skip_header = skip_header

    def process(self, path: str) -> Iterator[Any]:
        _count(f"{FILES_READ}/{self._source}")
        number = 0
        try:
            with _open_raw(path) as handle:
                for number, line in enumerate(handle, 1):
                    if number == 1:
                        line = line.removeprefix(_BOM)
                        if self._skip_header:
                            continue
                    yield path, line.rstrip(b"\r\n")
        except (EOFError, OSError, zlib.error) as error:  # truncated, not GZIP, or corrupt inside
            # Not raised here: a worker's traceback would bury the file's name; `run` fails
            # the job after it, naming every damaged file, unless they are allowed.
            _count(f"{LINES_READ}/{self._source}")
            yield _rejection(self._source, UNREADABLE, f"{path} is damaged after line {number}: {error}", path, b"")


class ParseLineFn(beam.DoFn):
    """(file name, line bytes) -> ((request_id, video_id), ParsedLine as a tuple), or a rejection."""

    def __init__(self, source: str, file_format: str) -> None:
        self._source = source
        self._file_format = file_format

    def process(self, element: tuple[str, bytes]) -> Iterator[Any]:
        file_name, line = element
        _count(f"{LINES_READ}/{self._source}")
        try:
            event = raw_events.parse_event(self._source, line, self._file_format)
        except raw_events.RawEventError as error:
            yield _rejection(self._source, error.reason, str(error), file_name, line)
            return
        if not 0 <= event["time_ms"] <= _MAX_TIME_MS:
            yield _rejection(self._source, BAD_VALUE, f"time_ms out of range: {event['time_ms']}", file_name, line)
            return
        yield (event["request_id"], event["video_id"]), (file_name, line, event)


def _identity(event: Mapping[str, Any]) -> str:
    """A canonical text of an event: equal exactly when the typed events are equal."""
    return json.dumps(event, sort_keys=True, ensure_ascii=False)


def _distinct(source: str, lines: Iterable[tuple]) -> tuple[list[ParsedLine], list[beam.pvalue.TaggedOutput]]:
    """Keeps one line per distinct event, ordered by (time_ms, identity); rejects the copies.

    Lines are visited in (file, bytes) order, so the copy kept does not depend on the order
    the runner delivered them in.
    """
    kept: dict[str, ParsedLine] = {}
    rejected = []
    for parsed in sorted((ParsedLine(*fields) for fields in lines), key=lambda parsed: (parsed.file_name, parsed.line)):
        identity = _identity(parsed.event)
        if identity in kept:
            detail = f"an identical {source} event is kept, from {kept[identity].file_name}"
            rejected.append(_reject_parsed(source, DUPLICATE, detail, parsed))
        else:
            kept[identity] = parsed
    ordered = sorted(kept.items(), key=lambda item: (item[1].event["time_ms"], item[0]))
    return [parsed for _, parsed in ordered], rejected


class JoinFn(beam.DoFn):
    """One impression key's co-grouped events -> (day, serialized example) and rejections."""

    def process(self, element: tuple[tuple[str, str], Mapping[str, Iterable[tuple]]]) -> Iterator[Any]:
        (request_id, video_id), grouped = element
        impressions, rejected = _distinct(raw_events.IMPRESSIONS, grouped[raw_events.IMPRESSIONS])
        yield from rejected
        clicks, rejected = _distinct(raw_events.CLICKS, grouped[raw_events.CLICKS])
        yield from rejected
        plays, rejected = _distinct(raw_events.PLAYS, grouped[raw_events.PLAYS])
        yield from rejected
        key_text = f"request_id {request_id!r}, video_id {video_id!r}"

        if not impressions:
            for click in clicks:
                yield _reject_parsed(
                    raw_events.CLICKS, CLICK_WITHOUT_IMPRESSION, f"no impression with {key_text}", click
                )
            for play in plays:
                yield _reject_parsed(raw_events.PLAYS, PLAY_WITHOUT_IMPRESSION, f"no impression with {key_text}", play)
            return
        impression, conflicting = impressions[0], impressions[1:]
        for other in conflicting:
            detail = (
                f"another impression with {key_text} is kept, from {impression.file_name} "
                f"(time_ms {impression.event['time_ms']})"
            )
            yield _reject_parsed(raw_events.IMPRESSIONS, CONFLICTING_IMPRESSION, detail, other)

        clicked = bool(clicks)
        if clicked:
            first_click = clicks[0]
            for other in clicks[1:]:
                detail = f"the impression's click at time_ms {first_click.event['time_ms']} is kept"
                yield _reject_parsed(raw_events.CLICKS, DUPLICATE_CLICK, detail, other)
            _count(CLICKS_JOINED)
        else:
            for play in plays:
                yield _reject_parsed(
                    raw_events.PLAYS, PLAY_WITHOUT_CLICK, f"the impression with {key_text} has no click", play
                )
            plays = []

        watch_ratio = self._watch_ratio(plays) if plays else 0.0
        if clicked and not plays:
            _count(CLICKS_WITHOUT_PLAY)
        _count(PLAYS_JOINED, len(plays))

        day = records.day_folder(impression.event["time_ms"])
        example = records.to_example(raw_events.impression_record(impression.event, clicked, watch_ratio))
        _count(EXAMPLES_WRITTEN)
        _count(f"{EXAMPLES_WRITTEN}/{day}")
        yield day, example.SerializeToString(deterministic=True)

    @staticmethod
    def _watch_ratio(plays: Sequence[ParsedLine]) -> float:
        """Watched seconds over the video's length, clipped to 1 (counted): logs overshoot."""
        try:
            watched = math.fsum(play.event["watched_seconds"] for play in plays)  # fsum: order-independent
        except OverflowError:  # beyond the float range, so beyond any length: clipped below
            watched = math.inf
        length = max(play.event["video_seconds"] for play in plays)
        ratio = watched / length  # finite / positive: inf at worst, never NaN
        if ratio > 1.0:
            _count(WATCH_RATIOS_CLIPPED)
            return 1.0
        return ratio


class GzipTFRecordSink(fileio.FileSink):
    """Writes the examples of (day, serialized example) pairs as GZIP TFRecords.

    fileio has no TFRecord sink; the framing is Beam's own (`tfrecordio`), the compression
    that of `FileSystems.create`, so the files are exactly what `WriteToTFRecord` writes.
    """

    def create_metadata(self, destination: str, full_file_name: str) -> fileio.FileMetadata:
        return fileio.FileMetadata(mime_type="application/octet-stream", compression_type=CompressionTypes.GZIP)

    def open(self, fh) -> None:
        self._handle = fh

    def write(self, record: tuple[str, bytes]) -> None:
        tfrecord.write(self._handle, record[1])

    def flush(self) -> None:
        """Nothing is buffered here, and flushing a compressed handle would end its gzip
        stream before WriteToFiles closes it (which ends it once more, and fails)."""


def example_day(element: tuple[str, bytes]) -> str:
    """WriteToFiles' destination of an example: its day folder."""
    return element[0]


class DayPartFileNaming:
    """Names a day's files `YYYYMMDD/part-NNNNN-of-MMMMM.gz` under the output folder.

    It creates the day folder too: WriteToFiles only creates the output folder itself, and
    it ignores a failed move of a file into a folder that is missing.
    """

    def __init__(self, out_dir: str) -> None:
        self._out_dir = out_dir

    def __call__(self, window, pane, shard_index: int, total_shards: int, compression, destination: str) -> str:
        try:
            FileSystems.mkdirs(FileSystems.join(self._out_dir, destination))
        except IOError:  # the folder exists (or, on object stores, there are no folders)
            pass
        return f"{destination}/{EXAMPLE_FILE_PREFIX}-{shard_index:05d}-of-{total_shards:05d}.gz"


class CheckWrittenFn(beam.DoFn):
    """Fails the job if a file WriteToFiles reports is not where it says (see DayPartFileNaming)."""

    def __init__(self, out_dir: str) -> None:
        self._out_dir = out_dir

    def process(self, file_result: fileio.FileResult) -> None:
        path = FileSystems.join(self._out_dir, file_result.file_name)
        if not FileSystems.exists(path):
            raise IOError(f"WriteToFiles reported {path}, but it was not moved there from the temporary folder")
        logger.info("Wrote %s", path)


def _raw_file_pattern(raw_dir: str, source: str) -> str:
    return FileSystems.join(raw_dir, source, "**")


def _raw_files(raw_dir: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Each source's files to read, and its skipped marker files; a DataError when there are no impressions."""
    files, markers = {}, {}
    for source in raw_events.SOURCES:
        match = FileSystems.match([_raw_file_pattern(raw_dir, source)])[0]
        paths = sorted(metadata.path for metadata in match.metadata_list)
        # Hadoop's `_SUCCESS`, `.crc` files, and whatever is in a `_temporary/` folder.
        root = FileSystems.join(raw_dir, source)
        is_marker = {
            path: any(part.startswith(("_", ".")) for part in os.path.relpath(path, root).split(os.sep))
            for path in paths
        }
        markers[source] = [path for path in paths if is_marker[path]]
        files[source] = [path for path in paths if not is_marker[path]]
    if not files[raw_events.IMPRESSIONS]:
        where = raw_dir if FileSystems.exists(raw_dir) else f"{raw_dir} (which does not exist)"
        raise DataError(
            f"no raw impression files in {where}: "
            f"expected {FileSystems.join(raw_dir, raw_events.IMPRESSIONS, 'YYYYMMDD', '<files>')}"
        )
    return files, markers


def _check_gzip(files: Mapping[str, Sequence[str]]) -> None:
    """A `.gz` file that does not start as GZIP does is named now, not deep in the job."""
    for path in (path for paths in files.values() for path in paths if path.lower().endswith(".gz")):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            start = handle.read(2)
        if start and start != _GZIP_MAGIC:
            raise DataError(f"{path}: named .gz but not a GZIP file (it starts with {start!r})")


def _format_of(path: str) -> str:
    name = path.lower()
    if name.endswith(".gz"):
        name = name[: -len(".gz")]
    extension = os.path.splitext(name)[1]
    if extension not in _EXTENSION_FORMATS:
        raise DataError(
            f"{path}: unknown raw file extension {extension or '(none)'!r}; expected .jsonl, .json or .csv "
            "(optionally .gz), or pass the format explicitly"
        )
    return _EXTENSION_FORMATS[extension]


def resolve_format(files: Mapping[str, Sequence[str]], file_format: str) -> str:
    """The one format of all raw files: the given one, or by extension for "auto"."""
    if file_format not in FILE_FORMATS:
        raise ValueError(f"file_format must be one of {FILE_FORMATS}, got {file_format!r}")
    if file_format != "auto":
        return file_format
    example_file_by_format: dict[str, str] = {}
    for path in (path for source in raw_events.SOURCES for path in files[source]):
        example_file_by_format.setdefault(_format_of(path), path)
    if len(example_file_by_format) > 1:
        raise DataError(
            "raw files mix formats: "
            + " but ".join(f"{path} is {found.upper()}" for found, path in sorted(example_file_by_format.items()))
        )
    return next(iter(example_file_by_format))


def _check_csv_headers(files: Mapping[str, Sequence[str]]) -> None:
    """Columns are read by position, so a file whose header differs would be misread."""
    for source in raw_events.SOURCES:
        expected = raw_events.csv_header(source)
        for path in files[source]:
            with FileSystems.open(path) as handle:  # decompresses by extension
                header = handle.readline().decode("utf-8-sig", errors="backslashreplace").rstrip("\r\n")
            if header and header != expected:
                raise DataError(f"{path}: CSV header {header!r} is not the {source} header {expected!r}")


def build_pipeline(
    pipeline: beam.Pipeline,
    files: Mapping[str, Sequence[str]],
    out_dir: str,
    file_format: str,
    temp_dir: str,
) -> None:
    """Adds the read, parse, join and write steps to `pipeline`."""
    parsed_by_source = {}
    rejections = []
    for source in raw_events.SOURCES:
        read = (
            pipeline
            | f"List {source}" >> beam.Create(files[source])
            | f"Spread {source} files" >> beam.Reshuffle()  # one file per worker at a time, not one bundle
            | f"Read {source}"
            >> beam.ParDo(ReadLinesFn(source, skip_header=file_format == "csv")).with_outputs(REJECTED, main="lines")
        )
        rejections.append(read[REJECTED])
        parsed = read.lines | f"Parse {source}" >> beam.ParDo(ParseLineFn(source, file_format)).with_outputs(
            REJECTED, main="parsed"
        )
        parsed_by_source[source] = parsed.parsed
        rejections.append(parsed[REJECTED])

    joined = parsed_by_source | "Group by impression" >> beam.CoGroupByKey()
    outputs = joined | "Join" >> beam.ParDo(JoinFn()).with_outputs(REJECTED, main="examples")
    rejections.append(outputs[REJECTED])

    (
        outputs.examples
        | "Write examples"
        >> fileio.WriteToFiles(
            path=out_dir,
            destination=example_day,
            sink=GzipTFRecordSink,
            file_naming=DayPartFileNaming(out_dir),
            temp_directory=StaticValueProvider(str, temp_dir),
        )
        | "Check written" >> beam.ParDo(CheckWrittenFn(out_dir))
    )
    (rejections | "All rejections" >> beam.Flatten() | "Write rejections" >> beam_jobs.WriteRejections(out_dir))


def _query_counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """The job's counters by name, summed over steps; the fixed ones present even when 0."""
    always = [f"{name}/{source}" for name in (FILES_READ, LINES_READ) for source in raw_events.SOURCES]
    always += [EXAMPLES_WRITTEN, CLICKS_JOINED, PLAYS_JOINED, WATCH_RATIOS_CLIPPED, CLICKS_WITHOUT_PLAY]
    return beam_jobs.query_counters(result, COUNTER_NAMESPACE, always)


def run(
    raw_dir: str,
    out_dir: str,
    file_format: str = "auto",
    beam_args: Sequence[str] | None = None,
    allow_damaged_files: bool = False,
) -> dict[str, int]:
    """Runs the job to the end; returns its counters (also written to OUT/_counters.json).

    A job that fails removes what it wrote to `out_dir` (empty when it started) and its
    temporary folder; so does one that found damaged files (unless `allow_damaged_files`),
    which ends with a `DataError` naming each.
    """
    files, markers = _raw_files(raw_dir)
    file_format = resolve_format(files, file_format)
    _check_gzip(files)
    if file_format == "csv":
        _check_csv_headers(files)
    beam_jobs.check_output_empty(out_dir)
    for source in raw_events.SOURCES:
        logger.info(
            "Reading %d %s %s files from %s", len(files[source]), file_format, source, FileSystems.join(raw_dir, source)
        )
        for path in markers[source]:
            logger.warning("Skipping %s: a marker file (its name or folder starts with _ or .)", path)
    logger.info(
        "Writing day partitions of examples to %s, rejected lines to %s-*.jsonl",
        out_dir,
        FileSystems.join(out_dir, REJECTED_PREFIX),
    )

    options = PipelineOptions(list(beam_args or []))
    # WriteToFiles' temporary files go to a folder of this run, removed once it ends.
    temp_root = options.view_as(GoogleCloudOptions).temp_location or out_dir
    temp_dir = FileSystems.join(temp_root, f"_preprocess-tmp-{uuid.uuid4().hex}")
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, files, out_dir, file_format, temp_dir)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception:
        _remove_output(out_dir, temp_dir)
        raise
    if FileSystems.exists(temp_dir):
        FileSystems.delete([temp_dir])

    counters = _query_counters(result)
    if not allow_damaged_files and any(name.endswith(f"/{UNREADABLE}") for name in counters):
        damaged = [record["detail"] for record in beam_jobs.read_rejections(out_dir) if record["reason"] == UNREADABLE]
        _remove_output(out_dir, temp_dir)
        raise DataError(
            f"{len(damaged)} damaged raw file(s): "
            + "; ".join(sorted(damaged))
            + " (pass --allow-damaged-files to use their lines before the damage)"
        )
    for source in raw_events.SOURCES:
        if markers[source]:
            counters[f"{FILES_SKIPPED}/{source}/{MARKER_FILE}"] = len(markers[source])
    counters = dict(sorted(counters.items()))
    beam_jobs.write_counters(out_dir, counters)
    skipped = [
        {"source": source, "file": path, "reason": MARKER_FILE}
        for source in raw_events.SOURCES
        for path in markers[source]
    ]
    if skipped:
        with FileSystems.create(FileSystems.join(out_dir, SKIPPED_FILES_FILE)) as handle:
            handle.write(json.dumps(skipped, indent=2).encode("utf-8") + b"\n")
    logger.info("Counters written to %s", FileSystems.join(out_dir, COUNTERS_FILE))
    return counters


def _remove_output(out_dir: str, temp_dir: str) -> None:
    """Everything a failed run wrote: `out_dir` was empty (or missing) when it started."""
    written = [metadata.path for metadata in FileSystems.match([FileSystems.join(out_dir, "**")])[0].metadata_list]
    for path in [temp_dir, *written]:
        if FileSystems.exists(path):
            FileSystems.delete([path])
    for path in sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []:  # empty day folders, locally
        if os.path.isdir(os.path.join(out_dir, path)) and not os.listdir(os.path.join(out_dir, path)):
            os.rmdir(os.path.join(out_dir, path))
    logger.warning("The job failed; removed what it wrote to %s", out_dir)


def format_counters(counters: Mapping[str, int]) -> str:
    """The counters as a short report: per source, lines read = used + rejected."""
    used = {
        raw_events.IMPRESSIONS: ("examples written", counters.get(EXAMPLES_WRITTEN, 0)),
        raw_events.CLICKS: ("clicks joined", counters.get(CLICKS_JOINED, 0)),
        raw_events.PLAYS: ("plays joined", counters.get(PLAYS_JOINED, 0)),
    }
    lines = []
    for source in raw_events.SOURCES:
        used_name, used_count = used[source]
        total = f"{source:<12} {counters.get(f'{LINES_READ}/{source}', 0):>10} lines read"
        lines.append(beam_jobs.format_reasons(total, f"{used_count} {used_name}", counters, f"{REJECTED}/{source}/"))
    files = ", ".join(f"{source} {counters.get(f'{FILES_READ}/{source}', 0)}" for source in raw_events.SOURCES)
    skipped = {
        name[len(FILES_SKIPPED) + 1 :]: value
        for name, value in counters.items()
        if name.startswith(f"{FILES_SKIPPED}/")
    }
    lines.append(f"files read: {files}" + (
        "; skipped: " + ", ".join(f"{name} {value}" for name, value in sorted(skipped.items()))
        + f" (named in {SKIPPED_FILES_FILE})"
        if skipped else ""))  # fmt: skip
    day_prefix = f"{EXAMPLES_WRITTEN}/"
    days = {name[len(day_prefix) :]: value for name, value in counters.items() if name.startswith(day_prefix)}
    lines.append("examples per day: " + (", ".join(f"{day} {value}" for day, value in sorted(days.items())) or "none"))
    lines.append(f"watch ratios clipped to 1: {counters.get(WATCH_RATIOS_CLIPPED, 0)}")
    lines.append(f"clicks without a play: {counters.get(CLICKS_WITHOUT_PLAY, 0)}")
    return "\n".join(lines)
