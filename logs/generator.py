"""`lt4rec generate`: synthetic Tencent-style logs with known ground truth.

Two outputs from one world (see `world.py`):
- training logs: `<out>/YYYYMMDD/part-NNNNN.gz`, GZIP TFRecord files of `tf.train.Example`
  in exactly docs/LOG_SCHEMA.md's format, the form production logs arrive in;
- raw events (`raw=True`): `<out>/{impressions,clicks,plays}/YYYYMMDD/part-NNNNN.{jsonl,csv}`,
  the streams before any join, with the faults real logs have, for `lt4rec preprocess`.

Either way the ground truth (request id, video id, true click probability, true expected
watch ratio) goes beside the logs, in files that no reader takes for logs: for training
logs `<out>/YYYYMMDD/_truth-part-NNNNN.csv.gz`, in the row order of `part-NNNNN.gz` (like
Hadoop's `_SUCCESS`, names starting with `_` are not data); for raw events
`<out>/truth/YYYYMMDD/part-NNNNN.csv.gz`. The world's settings (its catalogue's shape
included) and calibration go to `<out>/_generator.json`.

Training logs are made without a Python step per row: `ExampleEncoder` builds the protobuf
bytes of a whole chunk of impressions with numpy, from tables of entries made once (tested
equal to `records.to_example` of `records.log_records`), TFRecord framing and CRC-32Cs
included. Chunks are drawn, encoded and compressed (ISA-L's DEFLATE) in worker processes and
their pieces appended in order to one-member gzip files, the same for any number of workers:
about 105,000 rows/s on 2 cores (9.5 s per million rows, 3 s of it building the world; see
benchmarks/generator_throughput.py). Raw events are written by one process, ~10,000 rows/s.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import logging
import multiprocessing
import os
import struct
from typing import Iterator, Mapping

import google_crc32c
import numpy as np
from isal import isal_zlib

from lt4rec import features
from lt4rec.logs import raw_events, records, tfrecord
from lt4rec.logs import world as world_lib

logger = logging.getLogger(__name__)

TRUTH_PREFIX = "_truth-"  # truth files beside the training logs of their day
RAW_TRUTH_DIR = "truth"  # the truth folder of raw events
MANIFEST = "_generator.json"
TRUTH_HEADER = ",".join([features.REQUEST_ID, "FEA_VID", "p_click", "expected_watch_ratio"])
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

    def __init__(self, root: str, suffix: str, rows_per_file: int, open_file, header: str | None = None):
        self._root, self._suffix, self._rows_per_file = root, suffix, rows_per_file
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
            handle = self._open_file(os.path.join(folder, f"part-{part:05d}{self._suffix}"))
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


def _raw_truth_writer(out_dir: str, rows_per_file: int) -> _PartitionWriter:
    def open_truth(path: str):
        return gzip.open(path, "wt", compresslevel=1, encoding="utf-8", newline="")

    return _PartitionWriter(os.path.join(out_dir, RAW_TRUTH_DIR), ".csv.gz", rows_per_file, open_truth, TRUTH_HEADER)


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
    workers: int | None = None,
) -> dict:
    """Writes the logs (or raw events) and the truth; returns the manifest it writes.

    `catalogue` names the shape of the catalogues (`world.CATALOGUES`: "sample", the real
    sample's, or "paper", Table 1's); `world_settings` overrides other `WorldConfig` fields.
    Training logs are made by `workers` processes (default: one per CPU), raw events by one.
    """
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be at least 1, got {rows_per_file}")
    if raw_format not in raw_events.FORMATS:
        raise ValueError(f"raw_format must be one of {raw_events.FORMATS}, got {raw_format!r}")
    config = world_lib.world_config(
        catalogue,
        **{
            **(world_settings or {}),
            "rows": rows,
            "days": days,
            "seed": seed,
            "task_relatedness": task_relatedness,
            "start_day": start_day,
        },
    )
    logger.info(
        "Building the world: %d rows over %d days, seed %d, task relatedness %.2f, %s catalogue",
        rows,
        days,
        seed,
        task_relatedness,
        catalogue,
    )
    world = world_lib.World(config)
    os.makedirs(out_dir, exist_ok=True)
    if raw:
        truth = _raw_truth_writer(out_dir, rows_per_file)
        counts = _write_raw(out_dir, world, rows, rows_per_file, raw_format, faults or FaultRates(), truth)
        truth.close()
    else:
        counts = _write_tfrecords(out_dir, world, rows, rows_per_file, workers or os.cpu_count() or 1)
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


def _write_tfrecords(out_dir: str, world: world_lib.World, rows: int, rows_per_file: int, workers: int) -> dict:
    """Chunks are drawn, encoded and compressed in `workers` processes (forked: they share the
    world and the encoder) and their pieces appended here in order, so the files are the same
    whatever the number of workers."""
    encoder = ExampleEncoder(world)
    chunks = _plan(world, rows)  # placed while the workers draw the first ones
    n_chunks = -(-rows // CHUNK_ROWS)
    files = _PartFiles(out_dir)
    per_day: dict[str, int] = {}
    written = 0

    def keep(pieces: list[_Piece]) -> None:
        nonlocal written
        for piece in pieces:
            files.append(piece)
            per_day[piece.day] = per_day.get(piece.day, 0) + piece.rows
            written += piece.rows
        logger.info("Wrote %d of %d examples", written, rows)

    try:
        if workers > 1 and n_chunks > 1 and "fork" in multiprocessing.get_all_start_methods():
            context = multiprocessing.get_context("fork")
            with context.Pool(min(workers, n_chunks), _set_worker_state, (encoder, rows_per_file)) as pool:
                for pieces in pool.imap(_encode_in_worker, chunks):
                    keep(pieces)
        else:
            for chunk in chunks:
                keep(_encode_chunk(encoder, rows_per_file, chunk))
    finally:
        files.close()
    return {"examples": written, "examples_per_day": dict(sorted(per_day.items()))}


@dataclasses.dataclass(frozen=True)
class _Chunk:
    """One `world.sample` call and where its rows go."""

    index: int
    rows: int
    request_start: int
    day_rows_before: tuple[int, ...]  # rows of each day that earlier chunks hold


def _plan(world: world_lib.World, rows: int) -> Iterator[_Chunk]:
    """The chunks of `_chunks`, placed before any is drawn (from their request draws alone)."""
    request_start = 0
    day_rows = np.zeros(world.config.days, dtype=np.int64)
    for index, start in enumerate(range(0, rows, CHUNK_ROWS)):
        size = min(CHUNK_ROWS, rows - start)
        requests, per_day = world.chunk_layout(size, index)
        yield _Chunk(index, size, request_start, tuple(day_rows.tolist()))
        request_start += requests
        day_rows += per_day


@dataclasses.dataclass(frozen=True)
class _Deflated:
    """Raw DEFLATE blocks ending on a byte boundary (sync flush): any number of them, one after
    another, and a final empty block make one DEFLATE stream, so pieces of a file can be
    compressed apart and in parallel, as pigz does."""

    data: bytes
    crc: int  # CRC-32 of the uncompressed bytes
    size: int  # uncompressed bytes

    @classmethod
    def of(cls, data: bytes | np.ndarray) -> "_Deflated":
        compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
        return cls(
            compressor.compress(data) + compressor.flush(isal_zlib.Z_SYNC_FLUSH), isal_zlib.crc32(data), len(data)
        )


@dataclasses.dataclass(frozen=True)
class _Piece:
    """Consecutive rows of one chunk in one file part: their TFRecords and truth lines."""

    day: str
    part: int
    rows: int
    logs: _Deflated
    truth: _Deflated


_worker_state: tuple["ExampleEncoder", int] | None = None  # (encoder, rows per file) in a pool worker


def _set_worker_state(encoder: "ExampleEncoder", rows_per_file: int) -> None:
    global _worker_state
    _worker_state = (encoder, rows_per_file)


def _encode_in_worker(chunk: _Chunk) -> list[_Piece]:
    return _encode_chunk(*_worker_state, chunk)


def _encode_chunk(encoder: "ExampleEncoder", rows_per_file: int, chunk: _Chunk) -> list[_Piece]:
    """Draws a chunk and cuts it into pieces at day and file-part boundaries, compressed."""
    world = encoder.world
    impressions = world.sample(chunk.rows, chunk=chunk.index, request_start=chunk.request_start)
    rows = encoder.encode(impressions)
    day_index = world.day_of(impressions.time_ms)  # rows come in time order: a day is one run
    starts = np.searchsorted(day_index, np.arange(world.config.days + 1))
    pieces = []
    for day, (start, end) in enumerate(zip(starts[:-1].tolist(), starts[1:].tolist())):
        if start == end:
            continue
        folder = records.day_folder(int(impressions.time_ms[start]))
        before = chunk.day_rows_before[day]
        while start < end:
            part, in_part = divmod(before, rows_per_file)
            stop = min(end, start + rows_per_file - in_part)
            truth = rows.truth(start, stop)
            if in_part == 0:
                truth = f"{TRUTH_HEADER}\n".encode() + truth
            pieces.append(
                _Piece(folder, part, stop - start, _Deflated.of(rows.tfrecords(start, stop)), _Deflated.of(truth))
            )
            before += stop - start
            start = stop
    return pieces


# ISA-L's level 1: 780 MB/s of records on one core, 4.7x smaller (zlib's level 1: 170 MB/s, 4.5x;
# ISA-L's level 3: 350 MB/s, 4.9x).
GZIP_LEVEL = 1
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"  # DEFLATE, no name, mtime 0, fastest, unknown OS
_FINAL_BLOCK = b"\x03\x00"  # an empty final block: the end of the DEFLATE stream


class _GzipFile:
    """A gzip file (one member, as `gzip.GzipFile` writes) made of `_Deflated` pieces."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "wb")
        self._file.write(_GZIP_HEADER)
        self._crc, self._size = 0, 0

    def append(self, piece: _Deflated) -> None:
        self._file.write(piece.data)
        self._crc = isal_zlib.crc32_combine(self._crc, piece.crc, piece.size)
        self._size += piece.size

    def close(self) -> None:
        self._file.write(_FINAL_BLOCK + struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        self._file.close()


class _PartFiles:
    """The open `part-NNNNN.gz` and truth file of each day; a day's next part closes its last."""

    def __init__(self, out_dir: str) -> None:
        self._out_dir = out_dir
        self._open: dict[str, tuple[int, _GzipFile, _GzipFile]] = {}  # day -> (part, logs, truth)

    def append(self, piece: _Piece) -> None:
        part, logs, truth = self._open.get(piece.day, (None, None, None))
        if part != piece.part:
            if part is not None:
                logs.close()
                truth.close()
            folder = os.path.join(self._out_dir, piece.day)
            os.makedirs(folder, exist_ok=True)
            name = f"part-{piece.part:05d}"
            logs = _GzipFile(os.path.join(folder, f"{name}.gz"))
            truth = _GzipFile(os.path.join(folder, f"{TRUTH_PREFIX}{name}.csv.gz"))
            self._open[piece.day] = (piece.part, logs, truth)
        logs.append(piece.logs)
        truth.append(piece.truth)

    def close(self) -> None:
        for _, logs, truth in self._open.values():
            logs.close()
            truth.close()
        self._open.clear()


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return bytes(((number << 3) | 2,)) + _varint(len(payload)) + payload


def _bytes_value(value: str) -> bytes:
    """One element of a BytesList: its `value` field."""
    return _field(1, value.encode("utf-8"))


def _entry(key: str, feature: bytes) -> bytes:
    """One entry of `Features.feature` (a map<string, Feature>), as the Features field."""
    return _field(1, _field(1, key.encode("utf-8")) + _field(2, feature))


def _bytes_entry(key: str, values: bytes) -> bytes:
    """A bytes_list feature from its encoded elements (`_bytes_value`s, joined)."""
    return _entry(key, _field(1, values))


def _prefix(key: str, length: int) -> bytes:
    """What comes before `length` bytes of encoded elements in `key`'s bytes_list entry."""
    return _bytes_entry(key, bytes(length))[: -length or None]


def _single_prefix(key: str, length: int) -> bytes:
    """What comes before a `length`-byte value in `key`'s single-valued bytes_list entry."""
    return _bytes_entry(key, _field(1, bytes(length)))[: -length or None]


def _table(parts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Byte strings as an object array to gather from, and their lengths."""
    table = np.empty(len(parts), dtype=object)
    table[:] = parts
    return table, np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))


def _padded(parts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Byte strings as zero-padded rows of a uint8 matrix to gather from, and their lengths."""
    width = max(map(len, parts))
    matrix = np.frombuffer(b"".join(part.ljust(width, b"\0") for part in parts), dtype=np.uint8)
    return matrix.reshape(len(parts), width), np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))


def _matrix(parts: list[bytes]) -> np.ndarray:
    """Byte strings of one length as rows of a uint8 matrix."""
    return np.frombuffer(b"".join(parts), dtype=np.uint8).reshape(len(parts), -1)


def _rows(constant: bytes, n: int) -> np.ndarray:
    """[n, len(constant)]: the same bytes in every row."""
    return np.broadcast_to(np.frombuffer(constant, dtype=np.uint8), (n, len(constant)))


def _fixed(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A field whose rows are all `matrix.shape[1]` bytes long."""
    return matrix, np.full(len(matrix), matrix.shape[1], dtype=np.int64)


def _gathered(table: tuple[np.ndarray, np.ndarray], index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows `index` of a `_padded` table, as a field."""
    return table[0][index], table[1][index]


def _instead(where: np.ndarray, constant: bytes, field: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """`field` with `constant` in the rows where `where` holds."""
    matrix, lengths = field
    out = np.zeros((len(lengths), max(matrix.shape[1], len(constant))), dtype=np.uint8)
    out[:, : matrix.shape[1]] = matrix
    out[where] = np.frombuffer(constant.ljust(out.shape[1], b"\0"), dtype=np.uint8)
    return out, np.where(where, len(constant), lengths)


def _digits(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decimal digits of non-negative ints, left-aligned in zero-padded rows as wide as the
    longest, and their lengths (as `str` writes them)."""
    rest = np.array(values, dtype=np.int64)
    width = len(str(int(rest.max(initial=0))))
    lengths = np.ones(len(rest), dtype=np.int64)
    for power in range(1, width):
        lengths += rest >= 10**power
    digits = np.empty((width, len(rest)), dtype=np.uint8)  # right-aligned, with leading zeros
    for column in range(width - 1, -1, -1):
        rest, digit = np.divmod(rest, 10)
        np.add(digit, ord("0"), out=digits[column], casting="unsafe")
    digits = digits.T
    shift = width - lengths
    if not shift.any():
        return digits, lengths
    columns = np.arange(width)[None, :] + shift[:, None]
    return np.where(columns < width, np.take_along_axis(digits, np.minimum(columns, width - 1), axis=1), 0).astype(
        np.uint8
    ), lengths


def _pack(fields: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length fields ([n, width] rows, content first, zero padded; lengths) joined row
    by row into zero-padded rows, and their lengths. Rows share few offsets (fields take few
    lengths), so each field is written one offset group at a time; a field's padding is
    overwritten by the next field's content, so only the end of a row is padding."""
    n = len(fields[0][1])
    out = np.zeros((n, sum(matrix.shape[1] for matrix, _ in fields)), dtype=np.uint8)
    offset = np.zeros(n, dtype=np.int64)
    for matrix, lengths in fields:
        width = matrix.shape[1]
        for start in np.unique(offset).tolist():
            rows = offset == start
            out[rows, start : start + width] = matrix if rows.all() else matrix[rows]
        offset += lengths
    return out, offset


def _strings(field: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A field's rows as byte strings (an object array), and their lengths: numpy's `S` strings
    drop trailing zeros, which is only the padding as every field's content ends in a non-zero
    byte (a digit, a letter, a length, '-1')."""
    matrix, lengths = field
    return np.ascontiguousarray(matrix).view(f"S{matrix.shape[1]}").ravel().astype(object), lengths


class ExampleEncoder:
    """Serialized `tf.train.Example`s of impressions, as `records.to_example(record)` makes
    them from `records.log_records` (the same features and values; tested so), without a
    Python step per row: an example is 9 pieces, made with numpy for a whole chunk (ids,
    request ids, pCTRs, from tables of entries made once) or gathered from such tables (a
    video's keyword list, the context features, ...); the pieces of many rows are joined at once."""

    def __init__(self, world: world_lib.World) -> None:
        self.world = world
        missing = _bytes_value(features.MISSING_VALUE)
        self._missing = {name: _bytes_entry(name, missing) for name in features.FEATURE_NAMES}
        category1 = [_bytes_value(records.category1(c)) for c in range(world_lib.N_CATEGORY1)]
        n_category2 = world_lib.N_CATEGORY1 * world_lib.CATEGORY2_PER_CATEGORY1
        category2 = [_bytes_value(records.category2(c)) for c in range(n_category2)]
        parent = [c // world_lib.CATEGORY2_PER_CATEGORY1 for c in range(n_category2)]

        # Entries (or runs of entries) by what they depend on.
        self._user_context = _padded(  # by group * N_AGES + age
            [
                _bytes_entry("FEA_UGROUP", _bytes_value(str(group))) + _bytes_entry("FEA_AGE", _bytes_value(str(age)))
                for group in range(world_lib.N_USER_GROUPS)
                for age in range(world_lib.N_AGES)
            ]
        )
        self._categories = _padded(  # by category2
            [
                _bytes_entry("FEA_ICAT1", category1[parent[c]]) + _bytes_entry("FEA_ICAT2", category2[c])
                for c in range(n_category2)
            ]
        )
        self._source_categories = _padded(  # by category2 * 4 + SICAT1 missing * 2 + SICAT2 missing
            [
                (self._missing["FEA_SICAT1"] if missing1 else _bytes_entry("FEA_SICAT1", category1[parent[c]]))
                + (self._missing["FEA_SICAT2"] if missing2 else _bytes_entry("FEA_SICAT2", category2[c]))
                for c in range(n_category2)
                for missing1 in (False, True)
                for missing2 in (False, True)
            ]
        )
        keywords = [_bytes_value(records.keyword(k)) for k in range(world_lib.N_KEYWORDS)]
        tags = [_bytes_value(records.tag(t)) for t in range(world_lib.N_TAGS)]
        # By walk * (width + 1) + count (`_walk_index`); after them, for a source video's lists:
        # nothing (no source video; its entries are in `_no_source`), then the missing value.
        self._keywords = _table(_walk_lists("FEA_IKEYWORD", keywords, world.keyword_walks))
        self._tags = _table(_walk_lists("FEA_IXFTAG", tags, world.tag_walks))
        self._source_keywords = _table(_walk_lists("FEA_SIKEYWORD", keywords, world.keyword_walks) + [b""])
        self._source_tags = _table(_walk_lists("FEA_STAG", tags, world.tag_walks) + [b"", self._missing["FEA_STAG"]])
        # DURATION, COVERQUALITY, ALGID and ORDER by (bucket, quality + 1, algorithm, position + 1); 0 is missing.
        self._context = _table(
            [
                _bytes_entry("FEA_DURATION", _bytes_value(str(bucket)))
                + (
                    _bytes_entry("FEA_COVERQUALITY", _bytes_value(str(quality - 1)))
                    if quality
                    else self._missing["FEA_COVERQUALITY"]
                )
                + _bytes_entry("FEA_ALGID", _bytes_value(str(algorithm + 1)))
                + (
                    _bytes_entry("FEA_ORDER", _bytes_value(str(position - 1)))
                    if position
                    else self._missing["FEA_ORDER"]
                )
                for bucket in range(len(features.DURATION_BUCKET_EDGES_SECONDS) + 1)
                for quality in range(world_lib.N_COVER_QUALITIES + 1)
                for algorithm in range(world_lib.N_RECALL_ALGORITHMS)
                for position in range(world_lib.MAX_REQUEST_SIZE + 1)
            ]
        )
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

        # Fixed-width parts (prefixes by the length of what follows), as rows to gather.
        self._labels = _matrix([_entry(features.CLICK_LABEL, _field(3, _field(1, _varint(click)))) for click in (0, 1)])
        self._ratio_prefix = _entry(features.WATCH_RATIO_LABEL, _field(2, b"\n\x04" + bytes(4)))[:-4]
        self._seqnum_prefixes = _matrix([_single_prefix(features.REQUEST_ID, n) for n in range(_MAX_SEQNUM)])
        self._pctr_prefix = _single_prefix(features.PRODUCTION_PCTR, 8)
        self._uid_prefix = _single_prefix("FEA_UID", 10)
        self._category1 = _matrix(category1)
        self._user_category_prefixes = _matrix(
            [_prefix("FEA_UCAT", len(category1[0]) * n) for n in range(world_lib.USER_CATEGORY_LENGTH[0] + 1)]
        )
        self._video_prefixes = {
            prefix: (
                _single_prefix(f"FEA_{prefix}VID", 11),
                _matrix([_single_prefix(f"FEA_{prefix}CP", n) for n in range(9)]),
            )
            for prefix in ("", "S")
        }

    def encode(self, impressions: world_lib.Impressions) -> "EncodedRows":
        """The TFRecords of `impressions`' examples and their truth lines (`_truth_line`'s)."""
        world, n = self.world, len(impressions)
        user, video, missing = impressions.user, impressions.video, impressions.missing
        has_source = impressions.source_video >= 0
        source = np.maximum(impressions.source_video, 0)
        uid = _digits(1_000_000_000 + user * 2_654_435_761 % 1_000_000_000)[0]  # records.user_id
        vid = _video_ids(video)

        # After the head: UID to UCAT; VID to ICAT2; IKEYWORD; IXFTAG; DURATION to ORDER; SVID
        # to SICAT2; SIKEYWORD; STAG (byte strings, lengths).
        categories, count = world.user_categories[user], world.user_category_count[user]
        listed = self._category1[categories] * (np.arange(categories.shape[1]) < count[:, None])[:, :, None]
        user_categories = _pack(
            [_fixed(self._user_category_prefixes[count]), (listed.reshape(n, -1), count * self._category1.shape[1])]
        )
        duration = world_lib.duration_bucket(world.video_seconds[video])
        quality = np.where(missing["FEA_COVERQUALITY"], 0, world.video_cover_quality[video] + 1)
        position = np.where(missing["FEA_ORDER"], 0, impressions.position + 1)
        context = (
            duration * (world_lib.N_COVER_QUALITIES + 1) + quality
        ) * world_lib.N_RECALL_ALGORITHMS + impressions.algorithm
        source_categories = world.video_category2[source] * 4 + missing["FEA_SICAT1"] * 2 + missing["FEA_SICAT2"]
        source_keywords = _walk_index(
            world.video_keyword_walk[source], impressions.source_keyword_count, world.keyword_walks
        )
        source_tags = _walk_index(world.video_tag_walk[source], impressions.source_tag_count, world.tag_walks)
        no_source_keywords, no_source_tags = len(self._source_keywords[0]) - 1, len(self._source_tags[0]) - 2
        pieces = [
            _strings(
                _pack(
                    [
                        _fixed(np.hstack([_rows(self._uid_prefix, n), uid])),
                        _gathered(self._user_context, world.user_group[user] * world_lib.N_AGES + world.user_age[user]),
                        _instead(missing["FEA_UCAT"], self._missing["FEA_UCAT"], user_categories),
                    ]
                )
            ),
            _strings(
                _pack([self._video_entries("", vid, video), _gathered(self._categories, world.video_category2[video])])
            ),
            _taken(
                self._keywords,
                _walk_index(world.video_keyword_walk[video], world.video_keyword_count[video], world.keyword_walks),
            ),
            _taken(self._tags, _walk_index(world.video_tag_walk[video], world.video_tag_count[video], world.tag_walks)),
            _taken(self._context, context * (world_lib.MAX_REQUEST_SIZE + 1) + position),
            _strings(
                _instead(
                    ~has_source,
                    self._no_source,
                    _pack(
                        [
                            self._video_entries("S", _video_ids(source), source),
                            _gathered(self._source_categories, source_categories),
                        ]
                    ),
                )
            ),
            _taken(self._source_keywords, np.where(has_source, source_keywords, no_source_keywords)),
            _taken(
                self._source_tags,
                np.where(has_source, np.where(missing["FEA_STAG"], no_source_tags + 1, source_tags), no_source_tags),
            ),
        ]
        pieces_length = sum(lengths for _, lengths in pieces)

        # The head: framing, label, watch ratio, request id and pCTR, with the example's length.
        at = _fixed(_rows(b"@", n))
        # records.request_id
        seqnum = _pack([_fixed(uid), at, _digits(impressions.time_ms), at, _digits(impressions.request_no)])
        if seqnum[1].max() >= _MAX_SEQNUM:
            raise ValueError("a request id past the encoder's length")
        pctr = _fixed(np.hstack([_rows(self._pctr_prefix, n), _pctr_digits(impressions.production_pctr)]))
        example_length = (
            self._labels.shape[1]
            + len(self._ratio_prefix)
            + 4
            + self._seqnum_prefixes.shape[1]
            + seqnum[1]
            + pctr[0].shape[1]
            + pieces_length
        )
        if example_length.min() < 1 << 7 or example_length.max() >= 1 << 14:
            raise ValueError("an example outside the lengths of a two-byte varint")
        # an Example: its features field (1 byte), its length (2 bytes), the features
        record_length = 3 + example_length
        head = _pack(
            [
                _fixed(
                    np.hstack(
                        [
                            record_length.astype("<u8").view(np.uint8).reshape(n, 8),
                            _masked_crcs_of_lengths(record_length),
                            _rows(b"\n", n),
                            (example_length & 0x7F | 0x80).astype(np.uint8)[:, None],
                            (example_length >> 7).astype(np.uint8)[:, None],
                            self._labels[impressions.click],
                            _rows(self._ratio_prefix, n),
                            impressions.watch_ratio.astype("<f4").view(np.uint8).reshape(n, 4),
                            self._seqnum_prefixes[seqnum[1]],
                        ]
                    )
                ),
                seqnum,
                pctr,
            ]
        )
        crc_places = np.empty(n, dtype=object)
        crc_places.fill(bytes(4))  # (np.full would make it b"": numpy's bytes drop trailing zeros)
        comma = _fixed(_rows(b",", n))
        truth_values = np.empty(n, dtype=object)
        truth_values[:] = list(
            map(b"%r,%r\n".__mod__, zip(impressions.p_click.tolist(), impressions.expected_watch_ratio.tolist()))
        )
        return EncodedRows(
            np.stack([_strings(head)[0]] + [strings for strings, _ in pieces] + [crc_places], axis=1),
            np.concatenate([[0], np.cumsum(head[1] + pieces_length + 4)]),
            np.stack([_strings(_pack([seqnum, comma, _fixed(vid), comma]))[0], truth_values], axis=1),
        )

    def _video_entries(self, prefix: str, vid: np.ndarray, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The VID and CP entries (SVID and SCP with prefix "S") of videos, as a field."""
        vid_prefix, cp_prefixes = self._video_prefixes[prefix]
        cp, cp_length = _digits(200_000 + self.world.video_provider[video] * 7_919 % 10_000_000)  # records.provider_id
        fixed = np.hstack([_rows(vid_prefix, len(video)), vid, cp_prefixes[cp_length]])
        return np.hstack([fixed, cp]), fixed.shape[1] + cp_length


def _taken(table: tuple[np.ndarray, np.ndarray], index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The byte strings `index` of a `_table`, and their lengths."""
    return table[0].take(index), table[1].take(index)


_MAX_SEQNUM = 64  # bytes of a request id: its entry's lengths then take one byte each


class EncodedRows:
    """The encoded rows of a chunk: TFRecords and truth lines of any run of rows."""

    def __init__(self, record_pieces: np.ndarray, record_offsets: np.ndarray, truth_pieces: np.ndarray) -> None:
        self._record_pieces, self._record_offsets, self._truth_pieces = record_pieces, record_offsets, truth_pieces

    def tfrecords(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop as TFRecords (length, its masked CRC-32C, the serialized example, its
        masked CRC-32C), one uint8 array: joined, then each row's CRC written in its last 4 bytes."""
        joined = bytearray().join(self._record_pieces[start:stop].ravel().tolist())
        offsets = self._record_offsets[start : stop + 1] - self._record_offsets[start]
        if len(joined) != offsets[-1]:
            raise RuntimeError("the pieces of the rows are not the lengths their headers say")
        value = google_crc32c.value
        with memoryview(joined) as view:
            crcs = np.fromiter(
                (
                    value(bytes(view[begin:end]))
                    for begin, end in zip((offsets[:-1] + 12).tolist(), (offsets[1:] - 4).tolist())
                ),
                dtype=np.uint64,
                count=stop - start,
            )
        out = np.frombuffer(joined, dtype=np.uint8)
        out[(offsets[1:] - 4)[:, None] + np.arange(4)] = (
            tfrecord.mask_crc(crcs).astype("<u4").view(np.uint8).reshape(-1, 4)
        )
        return out

    def truth(self, start: int, stop: int) -> bytes:
        """Rows start..stop as truth lines (`_truth_line`'s), UTF-8."""
        return b"".join(self._truth_pieces[start:stop].ravel().tolist())


def _masked_crcs_of_lengths(lengths: np.ndarray) -> np.ndarray:
    """[n, 4]: the masked CRC-32C of each length's 8 little-endian bytes (few distinct lengths)."""
    distinct, index = np.unique(lengths, return_inverse=True)
    crcs = np.array([google_crc32c.value(struct.pack("<Q", length)) for length in distinct.tolist()], dtype=np.uint64)
    return tfrecord.mask_crc(crcs).astype("<u4").view(np.uint8).reshape(-1, 4)[index]


def _walk_lists(key: str, values: list[bytes], walks: np.ndarray) -> list[bytes]:
    """`key`'s entry of the first c members of every walk, c = 0..width, at walk * (width + 1) + c."""
    prefixes = [_prefix(key, length) for length in range(walks.shape[1] * max(map(len, values)) + 1)]
    entries = []
    for walk in walks.tolist():
        joined = b""
        entries.append(prefixes[0])
        for member in walk:
            joined += values[member]
            entries.append(prefixes[len(joined)] + joined)
    return entries


def _walk_index(walk: np.ndarray, count: np.ndarray, walks: np.ndarray) -> np.ndarray:
    """Where the first `count` members of `walk` are in a `_walk_lists` table."""
    return walk * (walks.shape[1] + 1) + count


def _video_ids(video: np.ndarray) -> np.ndarray:
    """[n, 11] `records.video_id`s: a letter, then 10 base-36 digits."""
    value = (video * 1_000_003 + 7_777_777) % 36**10
    digits = value[:, None] // 36 ** np.arange(9, -1, -1, dtype=np.int64) % 36
    return np.hstack([_LETTERS[video % 26][:, None], _BASE36[digits]])


_BASE36 = np.frombuffer(b"0123456789abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
_LETTERS = _BASE36[10:]


def _pctr_digits(pctr: np.ndarray) -> np.ndarray:
    """[n, 8]: f"{p:.6f}" of probabilities. Rounding p * 1e6 is exact unless it is within
    1e-6 of a half (its error is under 1e-9); those few rows are formatted by Python."""
    scaled = pctr * 1e6
    micros = np.rint(scaled).astype(np.int64)
    near_half = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6
    for row in np.flatnonzero(near_half).tolist():
        micros[row] = int(f"{pctr[row]:.6f}".replace(".", ""))
    if micros.min() < 0 or micros.max() >= 10_000_000:
        raise ValueError("a pCTR outside [0, 10)")
    digits = micros[:, None] // 10 ** np.arange(6, -1, -1) % 10 + ord("0")
    return np.hstack([digits[:, :1], np.full((len(pctr), 1), ord("."), dtype=np.int64), digits[:, 1:]]).astype(np.uint8)


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
                        play = {
                            **key,
                            "time_ms": click_ms + 1_000 * (k + 1),
                            "watched_seconds": part,
                            "video_seconds": length,
                        }
                        emit(raw_events.PLAYS, play)
            for _ in range(int(rng.binomial(len(impressions), faults.click_without_impression))):
                orphan = {
                    "request_id": f"{records.user_id(int(rng.integers(0, world.n_users)))}@"
                    f"{int(rng.integers(0, 2**40))}@orphan",
                    "video_id": records.video_id(int(rng.integers(0, world.n_videos))),
                    "time_ms": int(impressions.time_ms[int(rng.integers(0, len(impressions)))]),
                }
                emit(raw_events.CLICKS, orphan)
                counts["injected_click_without_impression"] += 1
            written += len(impressions)
            logger.info("Wrote the events of %d of %d impressions", written, rows)
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
