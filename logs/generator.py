"""`lt4rec generate`: synthetic Tencent-style logs with known ground truth.

Two outputs from one world (see `world.py`):
- training logs: `<out>/YYYYMMDD/part-NNNNN.gz`, GZIP TFRecord files of `tf.train.Example`
  in exactly LOG_SCHEMA.md's format, the form production logs arrive in;
- raw events (`raw=True`): `<out>/{impressions,clicks,plays}/YYYYMMDD/part-NNNNN.{jsonl,csv}`,
  the streams before any join, with the faults real logs have, for `lt4rec preprocess`.

Either way the ground truth (request id, video id, true click probability, true expected
watch ratio) goes beside the logs, in files that no reader takes for logs: for training
logs `<out>/YYYYMMDD/_truth-part-NNNNN.csv.gz`, in the row order of `part-NNNNN.gz` (like
Hadoop's `_SUCCESS`, names starting with `_` are not data); for raw events
`<out>/truth/YYYYMMDD/part-NNNNN.csv.gz`. The world's settings and calibration go to
`<out>/_generator.json`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import logging
import os
from typing import Iterator

import numpy as np

from lt4rec.logs import raw_events, records
from lt4rec.logs import world as world_lib
from lt4rec.models import features

TRUTH_PREFIX = "_truth-"  # truth files beside the training logs of their day
RAW_TRUTH_DIR = "truth"  # the truth folder of raw events
MANIFEST = "_generator.json"
CHUNK_ROWS = 100_000


@dataclasses.dataclass(frozen=True)
class FaultRates:
    """How often each fault of real event logs is injected, per event."""

    duplicate: float = 0.01  # an event written twice
    click_without_impression: float = 0.005  # a click whose impression was never logged
    play_longer_than_video: float = 0.2  # share of full watches logged past the video's end
    split_play: float = 0.05  # one viewing logged as two play events (they add up)
    malformed: float = 0.003  # a truncated or garbled line
    missing_field: float = 0.003  # a required field left out

    @classmethod
    def none(cls) -> "FaultRates":
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _chunks(world: world_lib.World, rows: int) -> Iterator[world_lib.Impressions]:
    request_start = 0
    for chunk, start in enumerate(range(0, rows, CHUNK_ROWS)):
        impressions = world.sample(min(CHUNK_ROWS, rows - start), chunk=chunk, request_start=request_start)
        request_start = int(impressions.request_no.max()) + 1
        yield impressions


class _PartitionWriter:
    """Rolls files of one kind per day: part-00000, part-00001, ... of `rows_per_file` rows."""

    def __init__(
        self, root: str, suffix: str, rows_per_file: int, open_file, header: str | None = None, prefix: str = ""
    ):
        self._root, self._suffix, self._rows_per_file, self._prefix = root, suffix, rows_per_file, prefix
        self._open_file, self._header = open_file, header
        self._files: dict[str, tuple[object, int, int]] = {}  # day -> (handle, part, rows)

    def write(self, day: str, payload) -> str:
        """Writes one row; returns the partition file's name relative to the day folder."""
        handle, part, count = self._files.get(day, (None, 0, 0))
        if handle is None or count >= self._rows_per_file:
            if handle is not None:
                handle.close()
                part += 1
            folder = os.path.join(self._root, day)
            os.makedirs(folder, exist_ok=True)
            handle = self._open_file(os.path.join(folder, f"{self._prefix}part-{part:05d}{self._suffix}"))
            if self._header is not None:
                handle.write(self._header + "\n")
            count = 0
        handle.write(payload)
        self._files[day] = (handle, part, count + 1)
        return f"part-{part:05d}"

    def close(self) -> None:
        for handle, _, _ in self._files.values():
            handle.close()
        self._files.clear()


def _truth_writer(out_dir: str, rows_per_file: int, raw: bool) -> _PartitionWriter:
    def open_truth(path: str):
        return gzip.open(path, "wt", encoding="utf-8", newline="")

    header = ",".join([features.REQUEST_ID, "FEA_VID", "p_click", "expected_watch_ratio"])
    if raw:
        return _PartitionWriter(os.path.join(out_dir, RAW_TRUTH_DIR), ".csv.gz", rows_per_file, open_truth, header)
    return _PartitionWriter(out_dir, ".csv.gz", rows_per_file, open_truth, header, prefix=TRUTH_PREFIX)


def _truth_line(record: dict, p_click: float, expected: float) -> str:
    # The generator's request and video ids never hold a comma or a quote.
    return f"{record[features.REQUEST_ID]},{record['FEA_VID']},{float(p_click)!r},{float(expected)!r}\n"


def generate(
    out_dir: str,
    rows: int,
    days: int,
    seed: int = 0,
    task_relatedness: float = 0.5,
    start_day: dt.date = dt.date(2020, 10, 11),
    rows_per_file: int = 200_000,
    raw: bool = False,
    raw_format: str = "json",
    faults: FaultRates | None = None,
) -> dict:
    """Writes the logs (or raw events) and the truth; returns the manifest it writes."""
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be at least 1, got {rows_per_file}")
    if raw_format not in raw_events.FORMATS:
        raise ValueError(f"raw_format must be one of {raw_events.FORMATS}, got {raw_format!r}")
    config = world_lib.WorldConfig(rows=rows, days=days, seed=seed, task_relatedness=task_relatedness, start_day=start_day)
    logging.info("Building the world: %d rows over %d days, seed %d, task relatedness %.2f", rows, days, seed, task_relatedness)
    world = world_lib.World(config)
    os.makedirs(out_dir, exist_ok=True)
    truth = _truth_writer(out_dir, rows_per_file, raw)
    if raw:
        counts = _write_raw(out_dir, world, rows, rows_per_file, raw_format, faults or FaultRates(), truth)
    else:
        counts = _write_tfrecords(out_dir, world, rows, rows_per_file, truth)
    truth.close()
    manifest = {
        "rows": rows,
        "days": days,
        "seed": seed,
        "task_relatedness": task_relatedness,
        "start_day": start_day.isoformat(),
        "raw": raw,
        "raw_format": raw_format if raw else None,
        "faults": dataclasses.asdict(faults or FaultRates()) if raw else None,
        "world": {
            "users": world.n_users,
            "videos": world.n_videos,
            "content_providers": world.n_providers,
            "ctr_bias": world.ctr_bias,
            "cvr_bias": world.cvr_bias,
            "full_watch_gamma": world.full_watch_gamma,
        },
        "counts": counts,
    }
    with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
    return manifest


def _write_tfrecords(out_dir: str, world: world_lib.World, rows: int, rows_per_file: int, truth: _PartitionWriter) -> dict:
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type="GZIP")

    class _Writer:
        def __init__(self, path: str) -> None:
            self._writer = tf.io.TFRecordWriter(path, options)

        def write(self, payload: bytes) -> None:
            self._writer.write(payload)

        def close(self) -> None:
            self._writer.close()

    logs = _PartitionWriter(out_dir, ".gz", rows_per_file, _Writer)
    per_day: dict[str, int] = {}
    written = 0
    try:
        for impressions in _chunks(world, rows):
            for i, record in enumerate(records.log_records(world, impressions)):
                day = records.day_folder(int(impressions.time_ms[i]))
                logs.write(day, records.to_example(record).SerializeToString())
                truth.write(day, _truth_line(record, impressions.p_click[i], impressions.expected_watch_ratio[i]))
                per_day[day] = per_day.get(day, 0) + 1
            written += len(impressions)
            logging.info("Wrote %d of %d examples", written, rows)
    finally:
        logs.close()
    return {"examples": written, "examples_per_day": dict(sorted(per_day.items()))}


def _write_raw(
    out_dir: str,
    world: world_lib.World,
    rows: int,
    rows_per_file: int,
    file_format: str,
    faults: FaultRates,
    truth: _PartitionWriter,
) -> dict:
    """Explodes each impression into its events, and injects the faults of `faults`."""
    suffix = ".jsonl" if file_format == "json" else ".csv"

    def open_text(path: str):
        return open(path, "w", encoding="utf-8", newline="")

    writers = {
        source: _PartitionWriter(
            os.path.join(out_dir, source),
            suffix,
            rows_per_file,
            open_text,
            raw_events.csv_header(source) if file_format == "csv" else None,
        )
        for source in raw_events.SOURCES
    }
    counts = {f"{source}_lines": 0 for source in raw_events.SOURCES}
    counts.update({f"injected_{name}": 0 for name in dataclasses.asdict(faults)})
    rng = np.random.default_rng(np.random.SeedSequence(world.config.seed, spawn_key=(3,)))

    def emit(source: str, event: dict) -> None:
        line = raw_events.format_event(source, event, file_format)
        if rng.random() < faults.missing_field:
            line = _drop_required_field(source, event, file_format)
            counts["injected_missing_field"] += 1
        elif rng.random() < faults.malformed:
            line = line[: int(rng.integers(1, max(2, len(line) // 2)))]  # cut before the end: never valid
            counts["injected_malformed"] += 1
        copies = 2 if rng.random() < faults.duplicate else 1
        counts["injected_duplicate"] += copies - 1
        day = records.day_folder(int(event["time_ms"]))
        for _ in range(copies):
            writers[source].write(day, line + "\n")
            counts[f"{source}_lines"] += 1

    try:
        written = 0
        for impressions in _chunks(world, rows):
            for i, record in enumerate(records.log_records(world, impressions)):
                time_ms = int(impressions.time_ms[i])
                emit(raw_events.IMPRESSIONS, raw_events.impression_event(record, time_ms))
                truth.write(
                    records.day_folder(time_ms),
                    _truth_line(record, impressions.p_click[i], impressions.expected_watch_ratio[i]),
                )
                key = {"request_id": record[features.REQUEST_ID], "video_id": record["FEA_VID"]}
                if record[features.CLICK_LABEL]:
                    click_ms = time_ms + int(rng.integers(500, 30_000))
                    emit(raw_events.CLICKS, {**key, "time_ms": click_ms})
                    length = float(world.video_seconds[impressions.video[i]])
                    watched = float(record[features.WATCH_RATIO_LABEL]) * length
                    if watched >= length and rng.random() < faults.play_longer_than_video:
                        watched = length * float(1.0 + rng.uniform(0.01, 0.5))
                        counts["injected_play_longer_than_video"] += 1
                    parts = [watched]
                    if rng.random() < faults.split_play:
                        first = watched * float(rng.uniform(0.2, 0.8))
                        parts = [first, watched - first]
                        counts["injected_split_play"] += 1
                    for k, part in enumerate(parts):
                        play = {**key, "time_ms": click_ms + 1_000 * (k + 1), "watched_seconds": part, "video_seconds": length}
                        emit(raw_events.PLAYS, play)
            for _ in range(int(rng.binomial(len(impressions), faults.click_without_impression))):
                orphan = {
                    "request_id": f"{records.user_id(int(rng.integers(0, world.n_users)))}@{int(rng.integers(0, 2**40))}@orphan",
                    "video_id": records.video_id(int(rng.integers(0, world.n_videos))),
                    "time_ms": int(impressions.time_ms[int(rng.integers(0, len(impressions)))]),
                }
                emit(raw_events.CLICKS, orphan)
                counts["injected_click_without_impression"] += 1
            written += len(impressions)
            logging.info("Wrote the events of %d of %d impressions", written, rows)
    finally:
        for writer in writers.values():
            writer.close()
    counts["impressions"] = written
    return counts


def _drop_required_field(source: str, event: dict, file_format: str) -> str:
    required = {
        raw_events.IMPRESSIONS: "user_id",
        raw_events.CLICKS: "video_id",
        raw_events.PLAYS: "watched_seconds",
    }[source]
    if file_format == "json":
        return raw_events.format_event(source, {k: v for k, v in event.items() if k != required}, file_format)
    return raw_events.format_event(source, {**event, required: ""}, file_format)
