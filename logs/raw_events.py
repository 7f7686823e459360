"""The raw event logs a video platform collects before any join, and how to read them.

Three event streams, each a folder of day partitions of text files:

    <root>/impressions/YYYYMMDD/part-*.jsonl   (or .csv; .gz compressed files work too)
    <root>/clicks/YYYYMMDD/part-*.jsonl
    <root>/plays/YYYYMMDD/part-*.jsonl

An impression carries the request id, user, video, position, time and every other log
feature; a click names the impression it belongs to by (request id, video id); a play adds
the seconds watched and the video's length. In CSV files the first line is the header and
multi-valued features are joined by `|`. The parsers here turn one line into a typed dict
or raise `RawEventError` with a reason code, so that the Beam job can keep every rejected
line aside with that reason.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Mapping

from lt4rec import features

IMPRESSIONS, CLICKS, PLAYS = "impressions", "clicks", "plays"
SOURCES = (IMPRESSIONS, CLICKS, PLAYS)
FORMATS = ("json", "csv")
MULTI_VALUE_SEPARATOR = "|"

# Log features that an impression carries under names of its own.
_TOP_LEVEL_FEATURES = {"FEA_UID": "user_id", "FEA_VID": "video_id", "FEA_ORDER": "position"}
OTHER_FEATURES = tuple(name for name in features.FEATURE_NAMES if name not in _TOP_LEVEL_FEATURES)

FIELDS = {
    IMPRESSIONS: ("request_id", "user_id", "video_id", "position", "time_ms", "pctr") + OTHER_FEATURES,
    CLICKS: ("request_id", "video_id", "time_ms"),
    PLAYS: ("request_id", "video_id", "time_ms", "watched_seconds", "video_seconds"),
}
_REQUIRED = {
    IMPRESSIONS: ("request_id", "user_id", "video_id", "time_ms"),
    CLICKS: ("request_id", "video_id", "time_ms"),
    PLAYS: ("request_id", "video_id", "time_ms", "watched_seconds", "video_seconds"),
}

# Reasons a line is rejected at parse time.
MALFORMED = "malformed"
MISSING_FIELD = "missing_field"
BAD_VALUE = "bad_value"


class RawEventError(ValueError):
    """A line that cannot be used; `reason` is a short code for the dead-letter counters."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def csv_header(source: str) -> str:
    return ",".join(FIELDS[source])


def format_event(source: str, event: Mapping[str, Any], file_format: str) -> str:
    """One event as a line of the given format (no trailing newline)."""
    if file_format == "json":
        if source != IMPRESSIONS:
            return json.dumps(event, ensure_ascii=False)
        top = {key: event[key] for key in FIELDS[IMPRESSIONS][:6] if key in event}
        top["features"] = {name: event[name] for name in OTHER_FEATURES if name in event}
        return json.dumps(top, ensure_ascii=False)
    buffer = io.StringIO()
    row = []
    for key in FIELDS[source]:
        value = event.get(key, "")
        if isinstance(value, list):
            value = MULTI_VALUE_SEPARATOR.join(value)
        row.append(repr(value) if isinstance(value, float) else str(value))
    csv.writer(buffer, lineterminator="").writerow(row)
    return buffer.getvalue()


def parse_event(source: str, line: bytes | str, file_format: str) -> dict[str, Any]:
    """One line as a typed event dict, or `RawEventError`.

    Impressions come back flat: `FEA_*` keys beside the top-level fields, multi-valued
    features as lists. Missing optional features become the log's `-1` placeholder.
    """
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise RawEventError(MALFORMED, f"not UTF-8 text: {error}") from None
    line = line.strip("\r\n")
    if not line.strip():
        raise RawEventError(MALFORMED, "empty line")
    raw = _parse_json(source, line) if file_format == "json" else _parse_csv(source, line)
    for key in _REQUIRED[source]:
        if raw.get(key) in (None, ""):
            raise RawEventError(MISSING_FIELD, f"{source} event has no {key!r}")
    event = _typed(source, raw)
    if "\\u" in line or not line.isascii():  # a JSON \u escape, or the text itself, may hold a lone surrogate
        _check_utf8(event)
    return event


def _check_utf8(event: Mapping[str, Any]) -> None:
    """Every text UTF-8 can hold: JSON's \\ud800-\\udfff escapes decode to lone surrogates,
    which it cannot, and one would crash the job where it shuffles or writes the event."""
    for key, value in event.items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise RawEventError(
                        BAD_VALUE, f"{key} is not UTF-8 text (it has a lone surrogate): {text!r}"
                    ) from None


def _parse_json(source: str, line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, a 4300+ digit number, deep nesting
        raise RawEventError(MALFORMED, f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise RawEventError(MALFORMED, f"a JSON {type(value).__name__}, not an object")
    if source == IMPRESSIONS:
        nested = value.pop("features", {})
        if not isinstance(nested, dict):
            raise RawEventError(MALFORMED, "'features' is not an object")
        value.update(nested)
    return value


def _parse_csv(source: str, line: str) -> dict[str, Any]:
    try:
        rows = list(csv.reader([line], strict=True))
    except csv.Error as error:
        raise RawEventError(MALFORMED, f"not CSV: {error}") from None
    row = rows[0] if rows else []
    fields = FIELDS[source]
    if row == list(fields):
        raise RawEventError(MALFORMED, "a header line in the middle of a file")
    if len(row) != len(fields):
        raise RawEventError(MALFORMED, f"{len(row)} columns where {source} have {len(fields)}")
    event: dict[str, Any] = dict(zip(fields, row))
    for name in OTHER_FEATURES:
        if source == IMPRESSIONS and features.FEATURES_BY_NAME[name].multivalued and event[name]:
            event[name] = event[name].split(MULTI_VALUE_SEPARATOR)
    return event


def _typed(source: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    event = {
        "request_id": _text(raw, "request_id"),
        "video_id": _text(raw, "video_id"),
        "time_ms": _integer(raw, "time_ms"),
    }
    if source == IMPRESSIONS:
        event["user_id"] = _text(raw, "user_id")
        event["position"] = _text(raw, "position", default=features.MISSING_VALUE)
        event["pctr"] = _text(raw, "pctr", default="")
        for name in OTHER_FEATURES:
            spec = features.FEATURES_BY_NAME[name]
            value = raw.get(name)
            if value in (None, "", []):
                value = [features.MISSING_VALUE] if spec.multivalued else features.MISSING_VALUE
            if spec.multivalued:
                if isinstance(value, str):
                    value = [value]
                if not isinstance(value, list) or not all(_is_id(v) for v in value):
                    raise RawEventError(BAD_VALUE, f"{name} is not a list of strings: {value!r}")
                event[name] = [str(v) for v in value]
            else:
                if not _is_id(value):
                    raise RawEventError(BAD_VALUE, f"{name} is not a string: {value!r}")
                event[name] = str(value)
    elif source == PLAYS:
        watched = _number(raw, "watched_seconds")
        length = _number(raw, "video_seconds")
        if watched < 0:
            raise RawEventError(BAD_VALUE, f"watched_seconds is negative: {watched}")
        if length <= 0:
            raise RawEventError(BAD_VALUE, f"video_seconds is not positive: {length}")
        event["watched_seconds"] = watched
        event["video_seconds"] = length
    return event


def _is_id(value: Any) -> bool:
    """A feature value: a string, or an integer id (JSON's true and false are not ids)."""
    return isinstance(value, str) or isinstance(value, int) and not isinstance(value, bool)


def _text(raw: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = raw.get(key)
    if value in (None, ""):
        if default is None:
            raise RawEventError(MISSING_FIELD, f"no {key!r}")
        return default
    if not _is_id(value):
        raise RawEventError(BAD_VALUE, f"{key} is not a string: {value!r}")
    return str(value)


def _integer(raw: Mapping[str, Any], key: str) -> int:
    value = raw.get(key)
    try:
        result = int(value)
        if isinstance(value, float) or isinstance(value, bool) or str(result) != str(value).strip():
            raise ValueError
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's Infinity
        raise RawEventError(BAD_VALUE, f"{key} is not an integer: {value!r}") from None
    return result


def _number(raw: Mapping[str, Any], key: str) -> float:
    value = raw.get(key)
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float range
        raise RawEventError(BAD_VALUE, f"{key} is not a number: {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(result):
        raise RawEventError(BAD_VALUE, f"{key} is not a finite number: {value!r}")
    return result


def impression_record(impression: Mapping[str, Any], clicked: bool, watch_ratio: float) -> dict:
    """The log record (docs/LOG_SCHEMA.md) of a joined impression."""
    record = {
        features.CLICK_LABEL: int(clicked),
        features.WATCH_RATIO_LABEL: float(watch_ratio),
        features.REQUEST_ID: impression["request_id"],
        features.PRODUCTION_PCTR: impression["pctr"],
    }
    for name in features.FEATURE_NAMES:
        record[name] = impression[_TOP_LEVEL_FEATURES[name]] if name in _TOP_LEVEL_FEATURES else impression[name]
    return record


def impression_event(record: Mapping[str, Any], time_ms: int) -> dict:
    """The impression event behind a log record: the inverse of `impression_record`."""
    event = {
        "request_id": record[features.REQUEST_ID],
        "user_id": record["FEA_UID"],
        "video_id": record["FEA_VID"],
        "position": record["FEA_ORDER"],
        "time_ms": int(time_ms),
        "pctr": record[features.PRODUCTION_PCTR],
    }
    event.update({name: record[name] for name in OTHER_FEATURES})
    return event
