"""Property-based tests (hypothesis) of `lt4rec preprocess` and of its raw-line parser.

A Beam run costs about a second, so one hypothesis example of the join is a whole raw folder:
several independent scenarios, each under a request id of its own, their lines shuffled over
a few files (day folders, loose files, nested folders, GZIP files, byte order marks, marker
files), and the job runs once per example. The expected outcome is worked out line by line
from how each line was made (`expected_outcome`), independently of the job.

Every `@settings` here is derandomized and keeps no example database, so a run tests the
same examples each time (until hypothesis, Python or a strategy changes). The Beam
properties do not shrink a failing example: each step would be a Beam run, and minutes of
them barely shrink a folder; the example is printed line by line instead.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import sys
import tempfile
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import numpy as np
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from lt4rec import features
from lt4rec.errors import DataError
from lt4rec.logs import preprocess, raw_events, records
from tests.test_preprocess import (
    CLICKS,
    DAY1_MS,
    DAY2_MS,
    IMPRESSIONS,
    PLAYS,
    assert_accounting,
    assert_outputs_match_counters,
    expected_record,
    impression,
    line,
    read_examples,
    read_rejected,
    rejected_counts,
    write_lines,
)

SOURCES = raw_events.SOURCES
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last time with a day folder
MULTIVALUED = frozenset(name for name in raw_events.OTHER_FEATURES if features.FEATURES_BY_NAME[name].multivalued)
# Spelled out here (docs/LOG_SCHEMA.md / raw_events' docstring), not taken from the module under test.
REQUIRED = {
    IMPRESSIONS: ("request_id", "user_id", "video_id", "time_ms"),
    CLICKS: ("request_id", "video_id", "time_ms"),
    PLAYS: ("request_id", "video_id", "time_ms", "watched_seconds", "video_seconds"),
}
TEXT_FIELDS = {
    IMPRESSIONS: ("request_id", "user_id", "video_id", "position", "pctr"),
    CLICKS: ("request_id", "video_id"),
    PLAYS: ("request_id", "video_id"),
}
REASONS = (raw_events.MALFORMED, raw_events.MISSING_FIELD, raw_events.BAD_VALUE)
BOM = "\ufeff".encode("utf-8")
GZIP_MAGIC = b"\x1f\x8b"
CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")

# One Beam run per example: few examples, the same ones every run.
BEAM_SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


# --- strategies: typed events ----------------------------------------------------------

# Text as ids and feature values: quotes, backslashes, separators, non-ASCII, control
# characters; no lone surrogates (a valid event never has one, see `bad_lines`).
CHARS = st.one_of(st.sampled_from('ab7-é "\\|,\t\x00\u2028'), st.characters())
TEXT = st.text(CHARS, min_size=1, max_size=4)
TIMES = st.sampled_from([0, DAY1_MS, DAY1_MS + 1_000, DAY1_MS + 5_000, DAY2_MS, MAX_TIME_MS])
FLOAT_MAX = sys.float_info.max
WATCHED = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 25.0, 150.0, 1e308, 5e-324]),
    st.floats(min_value=0.0, max_value=FLOAT_MAX),
)
LENGTHS = st.one_of(
    st.sampled_from([100.0, 80.0, 1.0, 1e-300, 5e-324, 1e308]),
    st.floats(min_value=0.0, max_value=FLOAT_MAX, exclude_min=True),
)


@st.composite
def typed_impressions(draw, request_id: str, video_id: str) -> dict:
    """An impression as `raw_events.parse_event` returns it."""
    event = impression(
        request_id,
        draw(TIMES),
        video_id=video_id,
        user_id=draw(st.sampled_from(["user-1", "7", "-1"]) | TEXT),
        position=draw(st.sampled_from(["-1", "0", "3"])),
        pctr=draw(st.sampled_from(["", "0.250000", "1"])),
    )
    for name in draw(st.lists(st.sampled_from(raw_events.OTHER_FEATURES), max_size=3, unique=True)):
        if name in MULTIVALUED:
            event[name] = draw(
                st.just(["-1"]) | st.lists(st.sampled_from(["", "7", "k"]) | TEXT, min_size=1, max_size=3)
            )
        else:
            event[name] = draw(st.sampled_from(["-1", "7", "0"]) | TEXT)
    return event


@st.composite
def typed_clicks(draw, request_id: str, video_id: str) -> dict:
    return {"request_id": request_id, "video_id": video_id, "time_ms": draw(TIMES)}


@st.composite
def typed_plays(draw, request_id: str, video_id: str) -> dict:
    return {
        "request_id": request_id,
        "video_id": video_id,
        "time_ms": draw(TIMES),
        "watched_seconds": draw(WATCHED),
        "video_seconds": draw(LENGTHS),
    }


TYPED = {IMPRESSIONS: typed_impressions, CLICKS: typed_clicks, PLAYS: typed_plays}


# --- strategies: one typed event in many spellings ---------------------------------------

_OMIT = object()


def _encode_time(draw, time_ms: int) -> Any:
    return draw(st.sampled_from([time_ms, str(time_ms), f" {time_ms} "]))


def _encode_number(draw, value: float) -> Any:
    """The JSON float, the integer it equals, or its text: all parse to the same float."""
    spellings: list[Any] = [value, repr(value)]
    if value.is_integer() and math.copysign(1.0, value) > 0:
        spellings.append(int(value))
    return draw(st.sampled_from(spellings))


def encode_fields(draw, source: str, event: dict) -> dict:
    """A JSON object that `parse_event` types as `event`, in one of its many spellings:
    ids as integers, placeholders spelled out or left out, features nested or flat."""
    ints = draw(st.booleans())  # ids that spell an integer written as one
    bare = draw(st.booleans())  # a one-value list feature as a bare string
    missing = draw(st.sampled_from(["explicit", "omit", "null", "empty"]))  # the -1 placeholders

    def ident(text: str) -> Any:
        return int(text) if ints and CANONICAL_INT.fullmatch(text) else text

    fields: dict[str, Any] = {
        "request_id": event["request_id"],
        "video_id": ident(event["video_id"]),
        "time_ms": _encode_time(draw, event["time_ms"]),
    }
    if source == PLAYS:
        fields["watched_seconds"] = _encode_number(draw, event["watched_seconds"])
        fields["video_seconds"] = _encode_number(draw, event["video_seconds"])
    if source != IMPRESSIONS:
        return fields

    fields["user_id"] = ident(event["user_id"])
    placeholder_single = {"explicit": _OMIT, "omit": _OMIT, "null": None, "empty": ""}[missing]  # "explicit": unused
    if event["position"] != features.MISSING_VALUE or missing == "explicit":
        fields["position"] = ident(event["position"])
    elif placeholder_single is not _OMIT:
        fields["position"] = placeholder_single
    if event["pctr"] != "" or missing == "explicit":
        fields["pctr"] = ident(event["pctr"])
    elif placeholder_single is not _OMIT:
        fields["pctr"] = placeholder_single
    feature_values = {}
    for name in raw_events.OTHER_FEATURES:
        value = event[name]
        if name in MULTIVALUED:
            if value == [features.MISSING_VALUE] and missing != "explicit":
                encoded = {"omit": _OMIT, "null": None, "empty": draw(st.sampled_from(["", []]))}[missing]
            elif len(value) == 1 and bare and value[0] != "":
                encoded = value[0]
            else:
                encoded = [ident(item) for item in value]
        elif value == features.MISSING_VALUE and missing != "explicit":
            encoded = placeholder_single
        else:
            encoded = ident(value)
        if encoded is not _OMIT:
            feature_values[name] = encoded
    if draw(st.booleans()):
        fields["features"] = feature_values
    else:
        fields.update(feature_values)
    return fields


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= char <= "\udfff" for char in value)
    if isinstance(value, list):
        return any(_has_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(_has_surrogate(key) or _has_surrogate(item) for key, item in value.items())
    return False


def dump(draw, fields: dict) -> str:
    """JSON text of the fields in one of several key orders, separators and escapings."""
    order = draw(st.sampled_from(["as-is", "sorted", "reversed"]))
    separators = draw(st.sampled_from([(", ", ": "), (",", ":"), (" ,  ", " : ")]))
    ensure_ascii = draw(st.booleans()) or _has_surrogate(fields)  # a lone surrogate only as a \u escape
    if order == "reversed":
        fields = dict(reversed(list(fields.items())))
    return json.dumps(fields, separators=separators, ensure_ascii=ensure_ascii, sort_keys=order == "sorted")


@st.composite
def encoded_lines(draw, source: str, event: dict) -> bytes:
    data = dump(draw, encode_fields(draw, source, event)).encode("utf-8")
    return data + b"\r" if draw(st.booleans()) else data  # a CRLF line end


# --- strategies: bad lines ---------------------------------------------------------------

NOT_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82"]
BAD_TIMES = [-1, MAX_TIME_MS + 1, 10**17, -(10**30), 10**400, 1.5, 1000.0, True, False, "abc", "1.0", "+5", "1_000",
             "\u0663", "-1", [1], {}, math.nan, math.inf]  # fmt: skip
BAD_TEXTS = [True, False, 1.5, 0.0, [], ["a"], {}, {"a": "b"}, math.nan]
BAD_SINGLE_FEATURES = [True, False, 1.5, 0.0, ["a"], {}]
BAD_MULTI_FEATURES = [True, 1.5, 7, [True], [1.5], [["a"]], [None], {"a": 1}, ["a", {}]]
BAD_WATCHED = [-1, -1e-300, -5e-324, math.nan, math.inf, -math.inf, True, False, "abc", "nan", "inf", "-1", 10**400,
               [1], {}, "1e999"]  # fmt: skip
BAD_LENGTHS = [0, 0.0, -0.0, -1, -1e-300, math.nan, math.inf, True, False, "0", "x", "-0.0", 10**400, [1]]

MALFORMED_KINDS = ["truncated", "not-utf8", "not-object", "blank", "extra-data", "too-many-digits"]
BAD_KINDS = {
    IMPRESSIONS: MALFORMED_KINDS
    + ["features-not-object", "missing", "bad-time", "bad-text", "surrogate", "bad-feature"],
    CLICKS: MALFORMED_KINDS + ["missing", "bad-time", "bad-text", "surrogate"],
    PLAYS: MALFORMED_KINDS + ["missing", "bad-time", "bad-text", "surrogate", "bad-watched", "bad-length"],
}


def _set_feature(fields: dict, name: str, value: Any) -> None:
    """Sets a feature where `parse_event` reads it: a nested value wins over a flat one."""
    if isinstance(fields.get("features"), dict):
        fields["features"][name] = value
    else:
        fields[name] = value


@st.composite
def bad_lines(draw, source: str, request_id: str, video_id: str) -> tuple[bytes, str]:
    """A line the job must reject at parse time, and the reason it must give."""
    fields = encode_fields(draw, source, draw(TYPED[source](request_id, video_id)))
    kind = draw(st.sampled_from(BAD_KINDS[source]))
    if kind == "truncated":  # a proper prefix of a JSON object is never JSON
        text = json.dumps(fields).encode("utf-8")
        return text[: draw(st.integers(1, len(text) - 1))], raw_events.MALFORMED
    if kind == "not-utf8":  # these bytes never become valid UTF-8 wherever they go
        text = dump(draw, fields).encode("utf-8")
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.sampled_from(NOT_UTF8)) + text[at:], raw_events.MALFORMED
    if kind == "not-object":
        return draw(st.sampled_from([b"[]", b"null", b'"x"', b"1", b"true", b"[{}]", b"1e999"])), raw_events.MALFORMED
    if kind == "blank":
        return draw(st.sampled_from([b"", b" ", b"\t", b" \t "])), raw_events.MALFORMED
    if kind == "extra-data":
        return dump(draw, fields).encode("utf-8") + draw(
            st.sampled_from([b" x", b"{}", b",", b"\x00"])
        ), raw_events.MALFORMED
    if kind == "too-many-digits":  # beyond Python's 4300-digit limit of int(): not JSON to json.loads
        fields["time_ms"] = "@big@"
        return json.dumps(fields).replace('"@big@"', "1" * 5000).encode("utf-8"), raw_events.MALFORMED
    if kind == "features-not-object":
        fields["features"] = draw(st.sampled_from(["x", [1], 7, True, None]))
        return dump(draw, fields).encode("utf-8"), raw_events.MALFORMED
    if kind == "missing":
        key = draw(st.sampled_from(REQUIRED[source]))
        how = draw(st.sampled_from(["drop", "null", "empty"]))
        if how == "drop":
            del fields[key]
        else:
            fields[key] = None if how == "null" else ""
        return dump(draw, fields).encode("utf-8"), raw_events.MISSING_FIELD
    if kind == "bad-time":
        fields["time_ms"] = draw(st.sampled_from(BAD_TIMES))
    elif kind == "bad-text":
        fields[draw(st.sampled_from(TEXT_FIELDS[source]))] = draw(st.sampled_from(BAD_TEXTS))
    elif kind == "surrogate":  # a JSON \uD800-\uDFFF escape: valid JSON, but no text UTF-8 can hold
        text = (
            draw(st.text(CHARS, max_size=2)) + chr(draw(st.integers(0xD800, 0xDFFF))) + draw(st.text(CHARS, max_size=2))
        )
        names = TEXT_FIELDS[source] + (raw_events.OTHER_FEATURES if source == IMPRESSIONS else ())
        name = draw(st.sampled_from(names))
        if name in raw_events.OTHER_FEATURES:
            _set_feature(fields, name, [text] if name in MULTIVALUED else text)
        else:
            fields[name] = text
    elif kind == "bad-feature":
        name = draw(st.sampled_from(raw_events.OTHER_FEATURES))
        _set_feature(
            fields, name, draw(st.sampled_from(BAD_MULTI_FEATURES if name in MULTIVALUED else BAD_SINGLE_FEATURES))
        )
    elif kind == "bad-watched":
        fields["watched_seconds"] = draw(st.sampled_from(BAD_WATCHED))
    elif kind == "bad-length":
        fields["video_seconds"] = draw(st.sampled_from(BAD_LENGTHS))
    return dump(draw, fields).encode("utf-8"), raw_events.BAD_VALUE


# --- strategies: a raw folder -------------------------------------------------------------


@dataclass(frozen=True)
class RawLine:
    source: str
    data: bytes  # as written, before any byte order mark; may end in \r
    event: dict | None  # the typed event of a valid line
    reason: str | None  # the parse-time rejection reason of a bad line

    def __repr__(self) -> str:
        return f"{'valid' if self.event is not None else self.reason}: {self.data!r}"

    def _repr_pretty_(self, printer, cycle) -> None:  # how hypothesis prints a failing example
        printer.text(repr(self))


# Paths under RAW/<source>/: day folders, a loose file, a nested folder, GZIP files.
FILE_NAMES = [
    "20201011/part-0.jsonl",
    "20201012/part-1.json",
    "loose.jsonl",
    "a/b/20201011/part-2.jsonl.gz",
    "20201011/part-3.json.gz",
]
MARKER_NAMES = ["_SUCCESS", "20201011/.part-0.jsonl.crc", "_temporary/0/part-9.jsonl.gz"]


@dataclass
class RawFolder:
    """What to write under RAW: (source, file name) -> lines; the files whose first line
    starts with a byte order mark; marker files (with junk in them) the job must skip."""

    files: dict[tuple[str, str], list[RawLine]]
    bom: set[tuple[str, str]] = field(default_factory=set)
    markers: list[tuple[str, str]] = field(default_factory=list)

    def _repr_pretty_(self, printer, cycle) -> None:  # one line per raw line
        text = [f"{source}/{name}{' (byte order mark)' if (source, name) in self.bom else ''}:" + "".join(
            f"\n    {item!r}" for item in lines) for (source, name), lines in self.files.items()]  # fmt: skip
        printer.text("RawFolder(\n  " + "\n  ".join(text) + f"\n  markers: {self.markers})")

    def write(self, raw_dir: Path) -> dict[tuple[str, str], Path]:
        paths = {}
        for (source, name), lines in self.files.items():
            content = b"".join(item.data + b"\n" for item in lines)
            if (source, name) in self.bom:
                content = BOM + content
            path = raw_dir / source / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(gzip.compress(content, mtime=0) if name.endswith(".gz") else content)
            paths[source, name] = path
        for source, name in self.markers:
            (raw_dir / source / name).parent.mkdir(parents=True, exist_ok=True)
            (raw_dir / source / name).write_bytes(b"not json\n\xff\xfe\n")
        return paths


@st.composite
def scenario_lines(draw, index: int) -> list[RawLine]:
    """The lines of one request: per video up to two impressions, two clicks and three plays
    (none, conflicting or equal), each once or twice (the copy in the same or other bytes),
    and up to two bad lines."""
    request_id = f"s{index}:" + draw(st.text(CHARS, max_size=3))  # unique: the first ':' ends the index
    videos = draw(st.lists(st.sampled_from(["video-1", "7", "é"]) | TEXT, min_size=1, max_size=2, unique=True))
    lines = []
    for video_id in videos:
        for source, max_events in ((IMPRESSIONS, 2), (CLICKS, 2), (PLAYS, 3)):
            for event in draw(st.lists(TYPED[source](request_id, video_id), max_size=max_events)):
                data = draw(encoded_lines(source, event))
                lines.append(RawLine(source, data, event, None))
                if draw(st.booleans()):  # an exact duplicate
                    copy = data if draw(st.booleans()) else draw(encoded_lines(source, event))
                    lines.append(RawLine(source, copy, event, None))
        for source in draw(st.lists(st.sampled_from(SOURCES), max_size=2)):
            data, reason = draw(bad_lines(source, request_id, video_id))
            lines.append(RawLine(source, data, None, reason))
    return lines


@st.composite
def raw_folders(draw) -> RawFolder:
    lines = [item for index in range(draw(st.integers(1, 10))) for item in draw(scenario_lines(index))]
    random = draw(st.randoms(use_true_random=False))
    random.shuffle(lines)
    names = {
        source: draw(st.lists(st.sampled_from(FILE_NAMES), min_size=1, max_size=3, unique=True)) for source in SOURCES
    }
    files: dict[tuple[str, str], list[RawLine]] = {(source, name): [] for source in SOURCES for name in names[source]}
    for item in lines:
        files[item.source, random.choice(names[item.source])].append(item)
    bom = {key for key in files if draw(st.booleans())}
    markers = draw(
        st.lists(st.tuples(st.sampled_from(SOURCES), st.sampled_from(MARKER_NAMES)), max_size=2, unique=True)
    )
    return RawFolder(files, bom, markers)


# --- the expected outcome, line by line ---------------------------------------------------


def _identity(event: dict) -> str:
    """Equal exactly when the typed events are (the job's "same typed fields")."""
    return json.dumps(event, sort_keys=True, ensure_ascii=False)


def _watch_ratio(plays: list[dict]) -> tuple[float, bool]:
    """Watched over the longest length, clipped to 1 (and whether it was)."""
    try:
        watched = math.fsum(play["watched_seconds"] for play in plays)
    except OverflowError:  # a sum beyond the float range is above any length
        watched = math.inf
    ratio = watched / max(play["video_seconds"] for play in plays)
    return (1.0, True) if ratio > 1.0 else (ratio, False)


def expected_outcome(folder: RawFolder, paths: dict[tuple[str, str], Path]) -> tuple[dict, Counter, dict]:
    """The counters, the rejections (source, reason, file, line) and the examples
    ((request_id, video_id) -> (day, record)) the job must produce."""
    counters: Counter = Counter()
    rejections: Counter = Counter()

    def reject(source: str, reason: str, path: str, stored: bytes) -> None:
        counters[f"rejected/{source}/{reason}"] += 1
        rejections[source, reason, path, stored.decode("utf-8", errors="backslashreplace")] += 1

    groups: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: {source: [] for source in SOURCES})
    for (source, name), lines in folder.files.items():
        counters[f"files_read/{source}"] += 1
        counters[f"lines_read/{source}"] += len(lines)
        for item in lines:
            stored = item.data.rstrip(b"\r\n")  # the reader drops the line end (and a byte order mark)
            if item.event is None:
                reject(source, item.reason, str(paths[source, name]), stored)
            else:
                groups[item.event["request_id"], item.event["video_id"]][source].append(
                    (str(paths[source, name]), stored, item.event)
                )
    for source, _ in folder.markers:
        counters[f"files_skipped/{source}/marker_file"] += 1

    examples = {}
    for key, grouped in groups.items():
        kept = {}
        for source in SOURCES:  # one line per distinct event, the first in (file, bytes) order
            distinct: dict[str, tuple] = {}
            for path, stored, event in sorted(grouped[source], key=lambda item: (item[0], item[1])):
                if _identity(event) in distinct:
                    reject(source, "duplicate", path, stored)
                else:
                    distinct[_identity(event)] = (path, stored, event)
            kept[source] = [
                distinct[identity] for identity in sorted(distinct, key=lambda i: (distinct[i][2]["time_ms"], i))
            ]
        impressions, clicks, plays = kept[IMPRESSIONS], kept[CLICKS], kept[PLAYS]
        if not impressions:
            for path, stored, _ in clicks:
                reject(CLICKS, "click_without_impression", path, stored)
            for path, stored, _ in plays:
                reject(PLAYS, "play_without_impression", path, stored)
            continue
        for path, stored, _ in impressions[1:]:
            reject(IMPRESSIONS, "conflicting_impression", path, stored)
        for path, stored, _ in clicks[1:]:
            reject(CLICKS, "duplicate_click", path, stored)
        ratio = 0.0
        if not clicks:
            for path, stored, _ in plays:
                reject(PLAYS, "play_without_click", path, stored)
        else:
            counters["clicks_joined"] += 1
            if plays:
                counters["plays_joined"] += len(plays)
                ratio, clipped = _watch_ratio([event for _, _, event in plays])
                counters["watch_ratios_clipped"] += clipped
            else:
                counters["clicks_without_play"] += 1
        event = impressions[0][2]
        day = records.day_folder(event["time_ms"])
        counters["examples_written"] += 1
        counters[f"examples_written/{day}"] += 1
        examples[key] = (day, expected_record(event, int(bool(clicks)), float(np.float32(ratio))))
    return dict(counters), rejections, examples


def nonzero(counters: dict[str, int]) -> dict[str, int]:
    return {name: value for name, value in counters.items() if value}


# --- property 1: the join accounts for every line ----------------------------------------


@settings(max_examples=6, **BEAM_SETTINGS)
@given(folder=raw_folders())
def test_the_join_accounts_for_every_line_and_writes_sound_labels(folder: RawFolder) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "raw", Path(tmp) / "out"
        paths = folder.write(raw)
        counters = preprocess.run(str(raw), str(out))

        assert_accounting(counters)
        assert_outputs_match_counters(out, counters)
        written = [record for day_records in read_examples(out).values() for record in day_records]
        for record in written:
            assert record["label"] in (0, 1), record
            ratio = record["cvrlabel"]
            assert math.isfinite(ratio) and 0.0 <= ratio <= 1.0, record
            assert record["label"] == 1 or ratio == 0.0, record  # no click, no watch ratio
        valid_keys = {
            (item.event["request_id"], item.event["video_id"])
            for (source, _), lines in folder.files.items()
            for item in lines
            if source == IMPRESSIONS and item.event is not None
        }
        assert len(written) == len(valid_keys) == counters["examples_written"]
        assert {(record["seqnum"], record["FEA_VID"]) for record in written} == valid_keys

        # Line by line: every counter, every dead-letter record, every example.
        expected_counters, expected_rejections, expected_examples = expected_outcome(folder, paths)
        assert nonzero(counters) == nonzero(expected_counters)
        assert (
            Counter((r["source"], r["reason"], r["file"], r["line"]) for r in read_rejected(out)) == expected_rejections
        )
        assert {
            (record["seqnum"], record["FEA_VID"]): (day, record)
            for day, day_records in read_examples(out).items()
            for record in day_records
        } == expected_examples


# --- property 2: damaged GZIP files --------------------------------------------------------


def gzip_reading(data: bytes) -> tuple[str, list[bytes]]:
    """How a `.gz` file reads with Python's gzip module: "not-gzip" (it does not start as
    GZIP does), "damaged" or "intact", and the lines it gives before any damage."""
    if data and data[:2] != GZIP_MAGIC:
        return "not-gzip", []
    lines = []
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as handle:
            for number, text in enumerate(handle, 1):
                lines.append((text.removeprefix(BOM) if number == 1 else text).rstrip(b"\r\n"))
    except (EOFError, OSError, zlib.error):
        return "damaged", lines
    return "intact", lines


def check_damaged_files(contents: list[bytes], whole_lines: list[list[bytes]] | None = None) -> None:
    """Writes each content as a `.jsonl.gz` impressions file beside an intact one and runs the
    job without and with `allow_damaged_files`: it raises DataError naming the damaged files
    (only them), or succeeds with every line accounted for; nothing else."""
    readings = [gzip_reading(data) for data in contents]
    hypothesis.event("files: " + ", ".join(sorted(kind for kind, _ in readings)))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        intact = raw / IMPRESSIONS / "20201011" / "intact.jsonl"
        write_lines(intact, [line(IMPRESSIONS, impression("intact"))])
        paths = [raw / IMPRESSIONS / "20201011" / f"damaged-{i}.jsonl.gz" for i in range(len(contents))]
        for path, data in zip(paths, contents):
            path.write_bytes(data)
        not_gzip = {str(path) for path, (kind, _) in zip(paths, readings) if kind == "not-gzip"}
        damaged = {str(path) for path, (kind, _) in zip(paths, readings) if kind == "damaged"}

        for allow in (False, True):
            out = Path(tmp) / f"out-{allow}"
            try:
                counters = preprocess.run(str(raw), str(out), allow_damaged_files=allow)
            except DataError as error:
                named = {str(path) for path in [intact, *paths] if str(path) in str(error)}
                if not_gzip:  # refused before the job, by the first such file's name
                    assert len(named) == 1 and named <= not_gzip, (allow, str(error))
                else:  # after the job, naming every damaged file
                    assert not allow and damaged and named == damaged, (allow, str(error))
                assert not out.exists() or not list(out.rglob("*")), list(out.rglob("*"))
                continue
            assert not not_gzip and (allow or not damaged), (allow, readings)
            assert_accounting(counters)
            assert_outputs_match_counters(out, counters)
            read_lines = [text for _, lines in readings for text in lines]
            assert counters["lines_read/impressions"] == 1 + len(read_lines) + len(damaged)
            assert rejected_counts(counters)[IMPRESSIONS, preprocess.UNREADABLE] == len(damaged)
            unreadable = [r for r in read_rejected(out) if r["reason"] == preprocess.UNREADABLE]
            assert sorted(r["file"] for r in unreadable) == sorted(damaged)
            if whole_lines is not None:  # a prefix of valid, distinct impressions: each line it gives is used
                assert set(read_lines) <= {text for lines in whole_lines for text in lines}
                assert counters["examples_written"] == 1 + len(read_lines)


def _impression_lines(count: int, tag: str, seed: int) -> list[bytes]:
    # Distinct, random-looking ids, so that GZIP cannot shrink the lines to nothing.
    salt = [int(value) for value in np.random.default_rng(seed).integers(0, 2**62, size=count)]
    return [line(IMPRESSIONS, impression(f"{tag}-{i}-{salt[i]:x}", user_id=f"u{salt[i] % 997}")) for i in range(count)]


@st.composite
def truncated_gzip_files(draw, index: int) -> tuple[bytes, list[bytes]]:
    """A valid GZIP raw file of impressions cut at any byte (0 and its whole length included)."""
    lines = _impression_lines(draw(st.integers(1, 30)), f"cut{index}", draw(st.integers(0, 2**32 - 1)))
    whole = gzip.compress(
        b"".join(text + b"\n" for text in lines), compresslevel=draw(st.sampled_from([1, 6, 9])), mtime=0
    )
    return whole[: draw(st.integers(0, len(whole)))], lines


_LINES = _impression_lines(3, "example", 0)
_WHOLE = gzip.compress(b"".join(text + b"\n" for text in _LINES), mtime=0)


@settings(max_examples=5, **BEAM_SETTINGS)
@given(files=st.integers(1, 3).flatmap(lambda n: st.tuples(*[truncated_gzip_files(i) for i in range(n)])))
@example(files=((_WHOLE[:1], _LINES), (_WHOLE, _LINES)))  # one byte is not GZIP: refused before the job
def test_a_truncated_gzip_file_is_named_or_its_lines_are_accounted_for(files: tuple) -> None:
    check_damaged_files([data for data, _ in files], [lines for _, lines in files])


@st.composite
def gzip_like_bytes(draw) -> bytes:
    """Arbitrary bytes, GZIP's magic and then arbitrary bytes, a valid GZIP file with bytes
    flipped, or one with trailing bytes after its stream."""
    kind = draw(st.sampled_from(["any", "magic", "flipped", "trailing"]))
    if kind == "any":
        return draw(st.binary(max_size=64))
    if kind == "magic":
        return GZIP_MAGIC + draw(st.binary(max_size=64))
    lines = _impression_lines(draw(st.integers(1, 10)), "bytes", draw(st.integers(0, 2**32 - 1)))
    whole = bytearray(gzip.compress(b"".join(text + b"\n" for text in lines), mtime=0))
    if kind == "trailing":
        return bytes(whole) + draw(st.binary(min_size=1, max_size=16))
    for _ in range(draw(st.integers(1, 3))):
        whole[draw(st.integers(0, len(whole) - 1))] ^= draw(st.integers(1, 255))
    return bytes(whole)


@settings(max_examples=5, **BEAM_SETTINGS)
@given(contents=st.lists(gzip_like_bytes(), min_size=1, max_size=2))
def test_arbitrary_bytes_as_a_gzip_file_are_named_or_accounted_for(contents: list[bytes]) -> None:
    check_damaged_files(contents)


# --- property 3: the parser refuses with a reason, or types ----------------------------------

ANY_CHARS = st.one_of(st.characters(), st.characters(categories=["Cs"]), st.sampled_from('"\\,|\r\n\t \ufeff0'))
ANY_TEXT = st.text(ANY_CHARS, max_size=12)
INTERESTING = [None, "", "-1", "7", " 12 ", "abc", "nan", "inf", "1e999", "-0.0", "1602410400000", "a|b", "\ud800",
               True, False, 0, -1, 1.5, -0.0, 1e308, 5e-324, math.nan, math.inf, 10**400,
               [], [""], ["a"], [1], [True], {}, {"a": 1}]  # fmt: skip
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), ANY_TEXT, st.sampled_from(INTERESTING)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(ANY_TEXT, children, max_size=3),
    max_leaves=8,
)
# Text with one lone surrogate: what a JSON \uD800-\uDFFF escape decodes to, but not UTF-8 text.
LONE_SURROGATE_TEXT = st.builds(
    lambda before, code, after: before + chr(code) + after,
    st.text(CHARS, max_size=2),
    st.integers(0xD800, 0xDFFF),
    st.text(CHARS, max_size=2),
)
FIELD_VALUES = st.one_of(st.sampled_from(INTERESTING), ANY_TEXT, LONE_SURROGATE_TEXT, JSON_VALUES)
# Numbers for time_ms and the seconds: any float, integers far beyond the float range, their texts.
NUMBER_VALUES = st.one_of(
    st.floats(),
    st.integers(-(10**400), 10**400),
    st.floats().map(repr),
    st.integers(-(10**400), 10**400).map(str),
    FIELD_VALUES,
)


@st.composite
def json_objects(draw, source: str) -> dict:
    """A valid event's JSON object (see `encode_fields`) with up to three of its fields (or,
    for impressions, features, or the nested object of features) replaced by any JSON value
    or removed: most such objects reach the typing of the fields, where the bugs would be."""
    event = draw(TYPED[source]("r", draw(st.sampled_from(["v", "7"]))))
    fields = encode_fields(draw, source, event)
    names = list(raw_events.FIELDS[source]) + (["features"] if source == IMPRESSIONS else [])
    for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
        if draw(st.integers(0, 4)) == 0:
            fields.pop(name, None)
            if isinstance(fields.get("features"), dict):
                fields["features"].pop(name, None)
        elif name in raw_events.OTHER_FEATURES:
            _set_feature(fields, name, draw(FIELD_VALUES))
        else:
            fields[name] = draw(
                NUMBER_VALUES if name in ("time_ms", "watched_seconds", "video_seconds") else FIELD_VALUES
            )
    return fields


def assert_typed(source: str, event: Any) -> None:
    """What `parse_event` returns: the source's fields, typed, every text writable as UTF-8."""
    assert isinstance(event, dict) and set(event) == set(raw_events.FIELDS[source]), event
    for name, value in event.items():
        if name == "time_ms":
            assert type(value) is int
        elif name in ("watched_seconds", "video_seconds"):
            assert type(value) is float and math.isfinite(value) and value >= 0.0, (name, value)
            assert name == "watched_seconds" or value > 0.0, (name, value)
        elif name in MULTIVALUED:
            assert isinstance(value, list) and value and all(type(item) is str for item in value), (name, value)
        else:
            assert type(value) is str, (name, value)
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                text.encode("utf-8")  # what the job writes must be UTF-8 text
    for name in REQUIRED[source]:
        assert event[name] not in ("", None), (name, event)


def check_parse(source: str, line: bytes | str, file_format: str) -> None:
    try:
        event = raw_events.parse_event(source, line, file_format)
    except raw_events.RawEventError as error:
        assert error.reason in REASONS, error.reason
        assert str(error)
        hypothesis.event(f"refused: {error.reason}")
        return
    assert_typed(source, event)
    hypothesis.event("typed")


PARSE_SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=300, **PARSE_SETTINGS)
@given(
    source=st.sampled_from(SOURCES),
    file_format=st.sampled_from(raw_events.FORMATS),
    text=st.one_of(st.binary(max_size=200), ANY_TEXT, ANY_TEXT.map(lambda text: text.encode("utf-8", "surrogatepass"))),
)
def test_parse_event_of_any_bytes_or_text(source: str, file_format: str, text: bytes | str) -> None:
    check_parse(source, text, file_format)


@settings(max_examples=300, **PARSE_SETTINGS)
@given(data=st.data(), source=st.sampled_from(SOURCES), as_bytes=st.booleans(), ensure_ascii=st.booleans())
def test_parse_event_of_any_json_value(data: st.DataObject, source: str, as_bytes: bool, ensure_ascii: bool) -> None:
    value = data.draw(st.one_of(json_objects(source), JSON_VALUES), label="value")
    text = json.dumps(value, ensure_ascii=ensure_ascii)
    check_parse(source, text.encode("utf-8", "surrogatepass") if as_bytes else text, "json")


CSV_CELLS = st.sampled_from(["", "-1", "7", "abc", "1602410400000", " 12 ", "1e308", "nan", "inf", "-0.0", "0",
                             "a|b", "|", "request_id", "\ud800"]) | ANY_TEXT | LONE_SURROGATE_TEXT  # fmt: skip


@st.composite
def csv_rows(draw, source: str) -> list[str]:
    """A valid event's CSV cells with up to three replaced by any text, a cell more or less,
    or the header."""
    event = draw(TYPED[source]("r", draw(st.sampled_from(["v", "7"]))))
    row = [
        "|".join(value) if isinstance(value, list) else repr(value) if isinstance(value, float) else str(value)
        for value in (event[name] for name in raw_events.FIELDS[source])
    ]
    kind = draw(st.sampled_from(["replaced", "replaced", "wider", "narrower", "header"]))
    if kind == "header":
        return list(raw_events.FIELDS[source])
    for index in draw(st.lists(st.integers(0, len(row) - 1), max_size=3, unique=True)):
        row[index] = draw(CSV_CELLS)
    if kind == "wider":
        row.insert(draw(st.integers(0, len(row))), draw(CSV_CELLS))
    elif kind == "narrower":
        del row[draw(st.integers(0, len(row) - 1))]
    return row


@settings(max_examples=300, **PARSE_SETTINGS)
@given(data=st.data(), source=st.sampled_from(SOURCES), as_bytes=st.booleans(), quote_all=st.booleans())
def test_parse_event_of_any_csv_row(data: st.DataObject, source: str, as_bytes: bool, quote_all: bool) -> None:
    row = data.draw(csv_rows(source), label="row")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="", quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL).writerow(row)
    text = buffer.getvalue()
    check_parse(source, text.encode("utf-8", "surrogatepass") if as_bytes else text, "csv")
