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
`<out>/truth/YYYYMMDD/part-NNNNN.csv.gz`. The world's settings (its catalogue's shape
included) and calibration go to `<out>/_generator.json`.

Training logs are written without a per-row `tf.train.Example`: `ExampleEncoder` joins the
protobuf encoding of each user's, video's and value's part, made once, into the same bytes
(tested equal to `records.to_example` of `records.log_records`), and the TFRecord framing
(length, masked CRC-32C) and GZIP stream are written in bulk; about 30 s per million rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import logging
import os
import struct
from typing import Iterator, Mapping

import google_crc32c
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

    def write_rows(self, day: str, payloads: list) -> None:
        """Writes many rows of one day at once (each file handle gets one joined write)."""
        start = 0
        while start < len(payloads):
            handle, part, count = self._files.get(day, (None, 0, 0))
            if handle is None or count >= self._rows_per_file:
                self.write(day, payloads[start])  # opens the next file
                start += 1
                continue
            end = min(len(payloads), start + self._rows_per_file - count)
            handle.write(payloads[start][:0].join(payloads[start:end]))
            self._files[day] = (handle, part, count + end - start)
            start = end

    def close(self) -> None:
        for handle, _, _ in self._files.values():
            handle.close()
        self._files.clear()


def _truth_writer(out_dir: str, rows_per_file: int, raw: bool) -> _PartitionWriter:
    def open_truth(path: str):
        return gzip.open(path, "wt", compresslevel=1, encoding="utf-8", newline="")

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
    catalogue: str = "sample",
    world_settings: Mapping | None = None,
) -> dict:
    """Writes the logs (or raw events) and the truth; returns the manifest it writes.

    `catalogue` names the shape of the catalogues (`world.CATALOGUES`: "sample", the real
    sample's, or "paper", Table 1's); `world_settings` overrides other `WorldConfig` fields.
    """
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be at least 1, got {rows_per_file}")
    if raw_format not in raw_events.FORMATS:
        raise ValueError(f"raw_format must be one of {raw_events.FORMATS}, got {raw_format!r}")
    config = world_lib.world_config(
        catalogue,
        **{**(world_settings or {}), "rows": rows, "days": days, "seed": seed, "task_relatedness": task_relatedness, "start_day": start_day},
    )
    logging.info(
        "Building the world: %d rows over %d days, seed %d, task relatedness %.2f, %s catalogue",
        rows, days, seed, task_relatedness, catalogue,
    )
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
        "catalogue": catalogue,
        "world_settings": config.settings(),
        "world": {
            "users": world.n_users,
            "videos": world.n_videos,
            "content_providers": world.n_providers,
            "ctr_bias": world.ctr_bias,
            "cvr_bias": world.cvr_bias,
            "production_bias": world.production_bias,
            "full_watch_gamma": world.full_watch_gamma,
        },
        "counts": counts,
    }
    with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
    return manifest


def _write_tfrecords(out_dir: str, world: world_lib.World, rows: int, rows_per_file: int, truth: _PartitionWriter) -> dict:
    encoder = ExampleEncoder(world)
    logs = _PartitionWriter(out_dir, ".gz", rows_per_file, _GzipTFRecordFile)
    per_day: dict[str, int] = {}
    written = 0
    try:
        for impressions in _chunks(world, rows):
            examples, truth_lines = encoder.encode(impressions)
            # Rows come in time order: each day is one run of rows.
            day_index = impressions.time_ms // _DAY_MS
            bounds = np.flatnonzero(np.diff(day_index)) + 1
            for start, end in zip(np.r_[0, bounds], np.r_[bounds, len(impressions)]):
                day = records.day_folder(int(impressions.time_ms[start]))
                logs.write_rows(day, [_tfrecord(example) for example in examples[start:end]])
                truth.write_rows(day, truth_lines[start:end])
                per_day[day] = per_day.get(day, 0) + int(end - start)
            written += len(impressions)
            logging.info("Wrote %d of %d examples", written, rows)
    finally:
        logs.close()
    return {"examples": written, "examples_per_day": dict(sorted(per_day.items()))}


_DAY_MS = 86_400_000
_MAX_CACHED = 250_000  # encoded users and videos kept across chunks (under 1 KB each)


class _GzipTFRecordFile:
    """A GZIP TFRecord file (what `tf.io.TFRecordWriter` with GZIP writes), written in bulk."""

    def __init__(self, path: str) -> None:
        self._raw = open(path, "wb")
        self._gzip = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=1, mtime=0)

    def write(self, framed: bytes) -> None:
        self._gzip.write(framed)

    def close(self) -> None:
        self._gzip.close()
        self._raw.close()


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _tfrecord(payload: bytes) -> bytes:
    """One TFRecord: length, its masked CRC-32C, the payload, its masked CRC-32C."""
    length = struct.pack("<Q", len(payload))
    return length + _masked_crc(length) + payload + _masked_crc(payload)


def _varint(value: int) -> bytes:
    if value < len(_VARINTS):
        return _VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_VARINTS: list[bytes] = []
_VARINTS.extend(_varint(n) for n in range(1 << 14))  # every length of a field in an example


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _TAGS[number] + _varint(len(payload)) + payload


_TAGS = {number: bytes(((number << 3) | 2,)) for number in (1, 2, 3)}


def _bytes_value(value: str) -> bytes:
    """One element of a BytesList: its `value` field."""
    return _field(1, value.encode("utf-8"))


def _entry(key: str, feature: bytes) -> bytes:
    """One entry of `Features.feature` (a map<string, Feature>), as the Features field."""
    entry = _field(1, key.encode("utf-8")) + b"\x12" + _varint(len(feature)) + feature
    return b"\n" + _varint(len(entry)) + entry


def _bytes_entry(key: str, values: bytes) -> bytes:
    """A bytes_list feature from its encoded elements (`_bytes_value`s, joined)."""
    return _entry(key, b"\n" + _varint(len(values)) + values)


def _entry_maker(key: str, kind: int = 1):
    """A fast `_bytes_entry(key, values)` (kind 1; 2: float_list, 3: int64_list, from the
    list's encoded payload) for the short entries every row has."""
    prefix = _field(1, key.encode("utf-8")) + b"\x12"
    tag = _TAGS[kind]
    varints = _VARINTS

    def make(values: bytes) -> bytes:
        feature = tag + varints[len(values)] + values
        entry = prefix + varints[len(feature)] + feature
        return b"\n" + varints[len(entry)] + entry

    return make


class ExampleEncoder:
    """Serialized `tf.train.Example`s of impressions, as `records.to_example(record)` makes
    them from `records.log_records` (the same features and values; tested so), many times
    faster: the encoded bytes of every user's, video's and vocabulary's part are made once
    per chunk and joined per row."""

    def __init__(self, world: world_lib.World) -> None:
        self._world = world
        self._keywords = [_bytes_value(records.keyword(k)) for k in range(world_lib.N_KEYWORDS)]
        self._tags = [_bytes_value(records.tag(t)) for t in range(world_lib.N_TAGS)]
        self._category1 = [_bytes_value(records.category1(c)) for c in range(world_lib.N_CATEGORY1)]
        n_category2 = world_lib.N_CATEGORY1 * world_lib.CATEGORY2_PER_CATEGORY1
        self._category2 = [_bytes_value(records.category2(c)) for c in range(n_category2)]
        missing = _bytes_value(features.MISSING_VALUE)
        self._missing = {name: _bytes_entry(name, missing) for name in features.FEATURE_NAMES}
        self._labels = [_entry(features.CLICK_LABEL, _field(3, _field(1, _varint(click)))) for click in (0, 1)]
        self._algorithms = [_bytes_entry("FEA_ALGID", _bytes_value(str(a + 1))) for a in range(world_lib.N_RECALL_ALGORITHMS)]
        self._positions: dict[int, bytes] = {}
        # The encoded parts of users and videos seen, while few enough to keep.
        self._cache: dict[tuple[str, int], tuple] = {}
        self._no_source = b"".join(
            [
                self._missing["FEA_SVID"],
                _bytes_entry("FEA_SCP", _bytes_value("N")),
                self._missing["FEA_SICAT1"],
                self._missing["FEA_SICAT2"],
                self._missing["FEA_SIKEYWORD"],
                self._missing["FEA_STAG"],
            ]
        )

    def _user(self, user: int) -> tuple[bytes, bytes, str]:
        """(UID, UGROUP and AGE entries; the UCAT entry; the user id)."""
        world = self._world
        uid = records.user_id(user)
        fixed = (
            _bytes_entry("FEA_UID", _bytes_value(uid))
            + _bytes_entry("FEA_UGROUP", _bytes_value(str(world.user_group[user])))
            + _bytes_entry("FEA_AGE", _bytes_value(str(world.user_age[user])))
        )
        categories = b"".join(self._category1[c] for c in world.user_categories[user, : world.user_category_count[user]])
        return fixed, _bytes_entry("FEA_UCAT", categories), uid

    def _video(self, video: int) -> tuple[bytes, bytes, str]:
        """(the impressed video's entries but cover quality; the cover quality entry; the video id)."""
        world = self._world
        vid = records.video_id(video)
        fixed = b"".join(
            [
                _bytes_entry("FEA_VID", _bytes_value(vid)),
                _bytes_entry("FEA_CP", _bytes_value(records.provider_id(int(world.video_provider[video])))),
                _bytes_entry("FEA_ICAT1", self._category1[world.video_category1[video]]),
                _bytes_entry("FEA_ICAT2", self._category2[world.video_category2[video]]),
                _bytes_entry("FEA_IKEYWORD", b"".join(self._keywords[k] for k in world.video_keywords[video, : world.video_keyword_count[video]])),
                _bytes_entry("FEA_IXFTAG", b"".join(self._tags[t] for t in world.video_tags[video, : world.video_tag_count[video]])),
                _bytes_entry("FEA_DURATION", _bytes_value(str(int(world_lib.duration_bucket(world.video_seconds[video]))))),
            ]
        )
        return fixed, _bytes_entry("FEA_COVERQUALITY", _bytes_value(str(world.video_cover_quality[video]))), vid

    def _source(self, video: int) -> tuple[bytes, bytes, bytes, list[bytes], list[bytes]]:
        """The source video's (SVID and SCP entries; SICAT1 entry; SICAT2 entry; its encoded
        keywords; its encoded tags): a row logs the first few keywords and tags."""
        world = self._world
        fixed = _bytes_entry("FEA_SVID", _bytes_value(records.video_id(video))) + _bytes_entry(
            "FEA_SCP", _bytes_value(records.provider_id(int(world.video_provider[video])))
        )
        return (
            fixed,
            _bytes_entry("FEA_SICAT1", self._category1[world.video_category1[video]]),
            _bytes_entry("FEA_SICAT2", self._category2[world.video_category2[video]]),
            [self._keywords[k] for k in world.video_keywords[video].tolist()],
            [self._tags[t] for t in world.video_tags[video].tolist()],
        )

    def _cached(self, kind: str, index: int, make) -> tuple:
        key = (kind, index)
        parts = self._cache.get(key)
        if parts is None:
            parts = self._cache[key] = make(index)
        return parts

    def _position(self, position: int) -> bytes:
        if position not in self._positions:
            self._positions[position] = _bytes_entry("FEA_ORDER", _bytes_value(str(position)))
        return self._positions[position]

    def encode(self, impressions: world_lib.Impressions) -> tuple[list[bytes], list[str]]:
        """The serialized examples of `impressions`, and their truth lines (`_truth_line`'s)."""
        if len(self._cache) > _MAX_CACHED:
            self._cache.clear()
        users, user_row = np.unique(impressions.user, return_inverse=True)
        user_parts = [self._cached("user", u, self._user) for u in users.tolist()]
        videos, video_row = np.unique(impressions.video, return_inverse=True)
        video_parts = [self._cached("video", v, self._video) for v in videos.tolist()]
        sources, source_row = np.unique(impressions.source_video, return_inverse=True)
        source_parts = [self._cached("source", v, self._source) if v >= 0 else None for v in sources.tolist()]
        missing = {name: flags.tolist() for name, flags in impressions.missing.items()}
        ucat_missing, cover_missing, order_missing = missing["FEA_UCAT"], missing["FEA_COVERQUALITY"], missing["FEA_ORDER"]
        sicat1_missing, sicat2_missing, stag_missing = missing["FEA_SICAT1"], missing["FEA_SICAT2"], missing["FEA_STAG"]
        ratios = impressions.watch_ratio.astype(np.float32)
        watch_ratio_entry = _entry_maker(features.WATCH_RATIO_LABEL, kind=2)
        request_entry = _entry_maker(features.REQUEST_ID)
        pctr_entry = _entry_maker(features.PRODUCTION_PCTR)
        source_keywords_entry = _entry_maker("FEA_SIKEYWORD")
        source_tags_entry = _entry_maker("FEA_STAG")
        missing_entry = self._missing
        varints = _VARINTS
        examples, truth_lines = [], []
        columns = zip(
            user_row.tolist(), video_row.tolist(), source_row.tolist(), impressions.source_video.tolist(),
            impressions.click.tolist(), ratios.tolist(), impressions.time_ms.tolist(), impressions.request_no.tolist(),
            impressions.production_pctr.tolist(), impressions.algorithm.tolist(), impressions.position.tolist(),
            impressions.source_keyword_count.tolist(), impressions.source_tag_count.tolist(),
            impressions.p_click.tolist(), impressions.expected_watch_ratio.tolist(),
        )
        for i, (u, v, s, source, click, ratio, time_ms, request_no, pctr, algorithm, position, keywords, tags, p, m) in enumerate(columns):
            user_fixed, user_categories, uid = user_parts[u]
            video_fixed, cover, vid = video_parts[v]
            seqnum = records.request_id(uid, time_ms, request_no)
            encoded_seqnum = seqnum.encode()
            encoded_pctr = f"{pctr:.6f}".encode()
            parts = [
                self._labels[click],
                watch_ratio_entry(b"\n\x04" + struct.pack("<f", ratio)),
                request_entry(b"\n" + varints[len(encoded_seqnum)] + encoded_seqnum),
                pctr_entry(b"\n" + varints[len(encoded_pctr)] + encoded_pctr),
                user_fixed,
                missing_entry["FEA_UCAT"] if ucat_missing[i] else user_categories,
                video_fixed,
                missing_entry["FEA_COVERQUALITY"] if cover_missing[i] else cover,
                self._algorithms[algorithm],
                missing_entry["FEA_ORDER"] if order_missing[i] else self._position(position),
            ]
            if source < 0:
                parts.append(self._no_source)
            else:
                source_fixed, sicat1, sicat2, source_keywords, source_tags = source_parts[s]
                parts += [
                    source_fixed,
                    missing_entry["FEA_SICAT1"] if sicat1_missing[i] else sicat1,
                    missing_entry["FEA_SICAT2"] if sicat2_missing[i] else sicat2,
                    source_keywords_entry(b"".join(source_keywords[:keywords])),
                    missing_entry["FEA_STAG"] if stag_missing[i] else source_tags_entry(b"".join(source_tags[:tags])),
                ]
            example = b"".join(parts)
            examples.append(b"\n" + _varint(len(example)) + example)
            truth_lines.append(f"{seqnum},{vid},{p!r},{m!r}\n")
        return examples, truth_lines


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
