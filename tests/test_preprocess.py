"""Tests of `lt4rec preprocess`, the Beam job that joins raw events into training logs.

Each Beam run costs seconds, so the crafted cases share two runs (one JSON, one CSV), each
case under request ids of its own, and every test checks its own keys in the outputs.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lt4rec import features
from lt4rec.errors import DataError
from lt4rec.logs import generator, preprocess, raw_events, records
from lt4rec.logs import world as world_lib

IMPRESSIONS, CLICKS, PLAYS = raw_events.IMPRESSIONS, raw_events.CLICKS, raw_events.PLAYS
DAY1_MS = 1_602_410_400_000  # 2020-10-11T10:00:00Z
DAY2_MS = DAY1_MS + 86_400_000  # 2020-10-12T10:00:00Z
LT4REC = "/work/main/.venv/bin/lt4rec"


# --- helpers ---------------------------------------------------------------------------


def read_examples(out_dir: Path) -> dict[str, list[dict]]:
    """The examples of every day folder, as log records, read back the way training reads them."""
    import tensorflow as tf

    examples: dict[str, list[dict]] = {}
    for path in sorted(glob.glob(str(out_dir / "[0-9]*" / "part-*.gz"))):
        day = os.path.basename(os.path.dirname(path))
        for payload in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            example = tf.train.Example.FromString(payload.numpy())
            examples.setdefault(day, []).append(records.from_example(example))
    return examples


def examples_by_request(out_dir: Path) -> dict[str, tuple[str, dict]]:
    """request id -> (day, record); the crafted cases have one video per request."""
    found = {}
    for day, day_records in read_examples(out_dir).items():
        for record in day_records:
            assert record[features.REQUEST_ID] not in found, record[features.REQUEST_ID]
            found[record[features.REQUEST_ID]] = (day, record)
    return found


def read_rejected(out_dir: Path) -> list[dict]:
    rejected = []
    for path in sorted(glob.glob(str(out_dir / (preprocess.REJECTED_PREFIX + "-*")))):
        with open(path, encoding="utf-8") as handle:
            rejected.extend(json.loads(line) for line in handle if line.strip())
    return rejected


def rejected_counts(counters: dict[str, int]) -> Counter:
    """(source, reason) -> count, from the counters."""
    counts: Counter = Counter()
    for name, value in counters.items():
        if name.startswith(f"{preprocess.REJECTED}/"):
            _, source, reason = name.split("/")
            counts[source, reason] += value
    return counts


def assert_accounting(counters: dict[str, int]) -> None:
    """Per source: lines read = lines used + lines rejected."""
    rejected = rejected_counts(counters)
    used = {
        IMPRESSIONS: counters[preprocess.EXAMPLES_WRITTEN],
        CLICKS: counters[preprocess.CLICKS_JOINED],
        PLAYS: counters[preprocess.PLAYS_JOINED],
    }
    for source in raw_events.SOURCES:
        rejected_lines = sum(value for (rejected_source, _), value in rejected.items() if rejected_source == source)
        assert counters[f"{preprocess.LINES_READ}/{source}"] == used[source] + rejected_lines, (source, counters)


def assert_outputs_match_counters(out_dir: Path, counters: dict[str, int]) -> None:
    """The files hold what the counters say: examples per day, and one record per rejection."""
    examples = read_examples(out_dir)
    assert {day: len(day_records) for day, day_records in examples.items()} == {
        name.split("/")[1]: value
        for name, value in counters.items()
        if name.startswith(f"{preprocess.EXAMPLES_WRITTEN}/")
    }
    assert sum(len(day_records) for day_records in examples.values()) == counters[preprocess.EXAMPLES_WRITTEN]
    assert Counter((record["source"], record["reason"]) for record in read_rejected(out_dir)) == rejected_counts(
        counters
    )
    with open(out_dir / preprocess.COUNTERS_FILE, encoding="utf-8") as handle:
        assert json.load(handle) == counters


def world_records(rows: int, days: int, seed: int) -> dict[str, dict[tuple[str, str], dict]]:
    """What the generator's world logs for a seed: day -> (request id, video id) -> record."""
    world = world_lib.World(world_lib.WorldConfig(rows=rows, days=days, seed=seed))
    expected: dict[str, dict[tuple[str, str], dict]] = {}
    for impressions in generator._chunks(world, rows):
        for i, record in enumerate(records.log_records(world, impressions)):
            day = records.day_folder(int(impressions.time_ms[i]))
            expected.setdefault(day, {})[record[features.REQUEST_ID], record["FEA_VID"]] = record
    return expected


def gzip_files(root: Path) -> None:
    """Compresses every file under root in place (name.csv -> name.csv.gz)."""
    for path in [p for p in root.rglob("*") if p.is_file()]:
        with open(path, "rb") as source, gzip.open(f"{path}.gz", "wb") as target:
            shutil.copyfileobj(source, target)
        path.unlink()


def impression(request_id: str, time_ms: int = DAY1_MS, **overrides: Any) -> dict:
    """A typed impression event with every feature set (multi-valued ones to two values)."""
    event = {
        "request_id": request_id,
        "user_id": "user-1",
        "video_id": "video-1",
        "position": "0",
        "time_ms": time_ms,
        "pctr": "0.250000",
    }
    for name in raw_events.OTHER_FEATURES:
        event[name] = [f"{name}-a", f"{name}-b"] if features.FEATURES_BY_NAME[name].multivalued else f"{name}-x"
    event.update(overrides)
    return event


def click(request_id: str, time_ms: int = DAY1_MS + 5_000) -> dict:
    return {"request_id": request_id, "video_id": "video-1", "time_ms": time_ms}


def play(request_id: str, watched: float, length: float, time_ms: int = DAY1_MS + 6_000) -> dict:
    return {
        "request_id": request_id,
        "video_id": "video-1",
        "time_ms": time_ms,
        "watched_seconds": watched,
        "video_seconds": length,
    }


def expected_record(event: dict, label: int, watch_ratio: float) -> dict:
    """The log record of an impression, spelled out key by key (docs/LOG_SCHEMA.md)."""
    record = {
        "label": label,
        "cvrlabel": watch_ratio,
        "seqnum": event["request_id"],
        "pctr": event["pctr"],
        "FEA_UID": event["user_id"],
        "FEA_VID": event["video_id"],
        "FEA_ORDER": event["position"],
    }
    record.update({name: event[name] for name in raw_events.OTHER_FEATURES})
    return record


def line(source: str, event: dict, file_format: str = "json") -> bytes:
    return raw_events.format_event(source, event, file_format).encode("utf-8")


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(item + b"\n" for item in lines))


def rejections_of(rejected: list[dict], request_id: str) -> list[dict]:
    return [record for record in rejected if request_id in record["line"]]


# --- crafted JSON lines: one Beam run, one request id per case ---------------------------

CONFLICT_KEPT = impression("conflict", time_ms=DAY1_MS, position="1")
CONFLICT_OTHER = impression("conflict", time_ms=DAY1_MS + 1_000, position="2")
NON_UTF8_LINE = line(IMPRESSIONS, impression("non-utf8")).replace(b"user-1", b"user-\xff\xfe")
MALFORMED_LINE = line(IMPRESSIONS, impression("malformed"))[:-40]
MISSING_FIELD_LINE = json.dumps({k: v for k, v in impression("missing-field").items() if k != "user_id"}).encode()
BAD_TIME_LINE = line(IMPRESSIONS, impression("bad-time", time_ms=10**17))
BOOLEAN_FEATURE_LINE = line(IMPRESSIONS, impression("boolean-feature", FEA_CP=True))
UTF8_BOM = "\ufeff".encode("utf-8")

CRAFTED_JSON: dict[str, dict[str, list[bytes]]] = {
    # source -> file name (under day folder 20201011 unless it says otherwise) -> lines
    IMPRESSIONS: {
        "20201011/a.jsonl": [
            line(IMPRESSIONS, CONFLICT_OTHER),  # first in file order, but later in time
            line(IMPRESSIONS, impression("clean")),
            line(IMPRESSIONS, impression("duplicate-impression")),
            line(IMPRESSIONS, impression("duplicate-impression")),
            line(IMPRESSIONS, impression("duplicate-click")),
            line(IMPRESSIONS, impression("identical-click")),
            line(IMPRESSIONS, impression("play-without-click")),
            line(IMPRESSIONS, impression("long-play")),
            line(IMPRESSIONS, impression("split-play")),
            line(IMPRESSIONS, impression("lengths-differ")),
            line(IMPRESSIONS, impression("click-without-play")),
            MALFORMED_LINE,
            NON_UTF8_LINE,
            MISSING_FIELD_LINE,
            BAD_TIME_LINE,
            line(IMPRESSIONS, impression("huge-plays")),
            BOOLEAN_FEATURE_LINE,
        ],
        "20201011/b.json": [line(IMPRESSIONS, CONFLICT_KEPT)],
        "20201011/bom.jsonl": [UTF8_BOM + line(IMPRESSIONS, impression("byte-order-mark"))],
        "20201011/_SUCCESS": [],  # Hadoop's marker: skipped, as the pipeline skips it
        "loose.jsonl": [line(IMPRESSIONS, impression("outside-day-folder"))],  # the day comes from time_ms
        "20201012/c.jsonl": [line(IMPRESSIONS, impression("second-day", time_ms=DAY2_MS))],
    },
    CLICKS: {
        "20201011/a.jsonl": [
            line(CLICKS, click("clean")),
            line(CLICKS, click("duplicate-click", DAY1_MS + 2_000)),
            line(CLICKS, click("duplicate-click", DAY1_MS + 1_000)),
            line(CLICKS, click("identical-click")),
            line(CLICKS, click("identical-click")),
            line(CLICKS, click("click-without-impression")),
            line(CLICKS, click("long-play")),
            line(CLICKS, click("split-play")),
            line(CLICKS, click("lengths-differ")),
            line(CLICKS, click("click-without-play")),
            line(CLICKS, click("huge-plays")),
        ],
    },
    PLAYS: {
        "20201011/a.jsonl": [
            line(PLAYS, play("clean", 25.0, 100.0)),
            line(PLAYS, play("duplicate-click", 50.0, 100.0)),
            line(PLAYS, play("identical-click", 75.0, 100.0)),
            line(PLAYS, play("play-without-impression", 10.0, 100.0)),
            line(PLAYS, play("play-without-click", 10.0, 100.0)),
            line(PLAYS, play("long-play", 150.0, 100.0)),
            line(PLAYS, play("split-play", 30.0, 100.0, DAY1_MS + 6_000)),
            line(PLAYS, play("split-play", 20.0, 100.0, DAY1_MS + 7_000)),
            line(PLAYS, play("lengths-differ", 30.0, 100.0, DAY1_MS + 6_000)),
            line(PLAYS, play("lengths-differ", 20.0, 80.0, DAY1_MS + 7_000)),
            line(PLAYS, play("huge-plays", 1e308, 100.0, DAY1_MS + 6_000)),  # their sum is beyond the float range
            line(PLAYS, play("huge-plays", 1e308, 100.0, DAY1_MS + 7_000)),
        ],
    },
}
MARKER_FILES = {IMPRESSIONS: ["20201011/_SUCCESS"]}


def write_crafted(raw_dir: Path, crafted: dict[str, dict[str, list[bytes]]]) -> None:
    for source, files in crafted.items():
        for name, lines in files.items():
            write_lines(raw_dir / source / name, lines)


@pytest.fixture(scope="module")
def crafted_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("crafted_json")
    write_crafted(root / "raw", CRAFTED_JSON)
    counters = preprocess.run(str(root / "raw"), str(root / "out"))
    return {
        "out": root / "out",
        "counters": counters,
        "examples": examples_by_request(root / "out"),
        "rejected": read_rejected(root / "out"),
    }


def assert_case(
    run: dict[str, Any], request_id: str, record: dict | None, reasons: list[tuple[str, str, bytes]]
) -> None:
    """The case's example (or that there is none) and its exact dead-letter records."""
    if record is None:
        assert request_id not in run["examples"]
    else:
        day, written = run["examples"][request_id]
        assert day == records.day_folder(DAY2_MS if request_id == "second-day" else DAY1_MS)
        assert written == record
    found = sorted(
        (rejection["source"], rejection["reason"], rejection["line"])
        for rejection in rejections_of(run["rejected"], request_id)
    )
    assert found == sorted(
        (source, reason, text.decode("utf-8", errors="backslashreplace")) for source, reason, text in reasons
    )


def test_clean_case_joins_click_and_play(crafted_json: dict) -> None:
    assert_case(crafted_json, "clean", expected_record(impression("clean"), 1, 0.25), [])


def test_duplicate_impression_is_kept_once(crafted_json: dict) -> None:
    event = impression("duplicate-impression")
    assert_case(
        crafted_json,
        "duplicate-impression",
        expected_record(event, 0, 0.0),
        [(IMPRESSIONS, "duplicate", line(IMPRESSIONS, event))],
    )


def test_conflicting_impression_keeps_the_earliest(crafted_json: dict) -> None:
    assert_case(
        crafted_json,
        "conflict",
        expected_record(CONFLICT_KEPT, 0, 0.0),
        [(IMPRESSIONS, "conflicting_impression", line(IMPRESSIONS, CONFLICT_OTHER))],
    )


def test_second_distinct_click_is_a_duplicate_click(crafted_json: dict) -> None:
    assert_case(
        crafted_json,
        "duplicate-click",
        expected_record(impression("duplicate-click"), 1, 0.5),
        [(CLICKS, "duplicate_click", line(CLICKS, click("duplicate-click", DAY1_MS + 2_000)))],
    )


def test_identical_click_is_a_duplicate(crafted_json: dict) -> None:
    assert_case(
        crafted_json,
        "identical-click",
        expected_record(impression("identical-click"), 1, 0.75),
        [(CLICKS, "duplicate", line(CLICKS, click("identical-click")))],
    )


def test_click_without_impression(crafted_json: dict) -> None:
    assert_case(
        crafted_json,
        "click-without-impression",
        None,
        [(CLICKS, "click_without_impression", line(CLICKS, click("click-without-impression")))],
    )


def test_play_without_impression(crafted_json: dict) -> None:
    assert_case(
        crafted_json,
        "play-without-impression",
        None,
        [(PLAYS, "play_without_impression", line(PLAYS, play("play-without-impression", 10.0, 100.0)))],
    )


def test_play_without_click_is_rejected_and_ratio_is_zero(crafted_json: dict) -> None:
    assert_case(
        crafted_json,
        "play-without-click",
        expected_record(impression("play-without-click"), 0, 0.0),
        [(PLAYS, "play_without_click", line(PLAYS, play("play-without-click", 10.0, 100.0)))],
    )


def test_play_longer_than_video_is_clipped_and_counted(crafted_json: dict) -> None:
    assert_case(crafted_json, "long-play", expected_record(impression("long-play"), 1, 1.0), [])
    assert crafted_json["counters"][preprocess.WATCH_RATIOS_CLIPPED] == 2  # long-play and huge-plays


def test_watched_seconds_beyond_the_float_range_are_clipped_not_a_crash(crafted_json: dict) -> None:
    assert_case(crafted_json, "huge-plays", expected_record(impression("huge-plays"), 1, 1.0), [])


def test_boolean_feature_value_is_a_bad_value(crafted_json: dict) -> None:
    assert_case(crafted_json, "boolean-feature", None, [(IMPRESSIONS, "bad_value", BOOLEAN_FEATURE_LINE)])


def test_byte_order_mark_is_skipped(crafted_json: dict) -> None:
    assert_case(crafted_json, "byte-order-mark", expected_record(impression("byte-order-mark"), 0, 0.0), [])


def test_files_outside_day_folders_are_read_and_markers_skipped_by_name(crafted_json: dict) -> None:
    assert_case(crafted_json, "outside-day-folder", expected_record(impression("outside-day-folder"), 0, 0.0), [])
    counters = crafted_json["counters"]
    data_files = {
        source: [name for name in files if name not in MARKER_FILES.get(source, [])]
        for source, files in CRAFTED_JSON.items()
    }
    assert {source: counters[f"{preprocess.FILES_READ}/{source}"] for source in raw_events.SOURCES} == {
        source: len(data_files[source]) for source in raw_events.SOURCES
    }
    assert counters[f"{preprocess.FILES_SKIPPED}/{IMPRESSIONS}/{preprocess.MARKER_FILE}"] == 1
    with open(crafted_json["out"] / preprocess.SKIPPED_FILES_FILE, encoding="utf-8") as handle:
        skipped = json.load(handle)
    assert [
        (
            item["source"],
            Path(item["file"]).relative_to(crafted_json["out"].parent / "raw" / IMPRESSIONS).as_posix(),
            item["reason"],
        )
        for item in skipped
    ] == [(IMPRESSIONS, "20201011/_SUCCESS", preprocess.MARKER_FILE)]
    assert "skipped: impressions/marker_file 1" in preprocess.format_counters(counters)


def test_two_distinct_plays_add_up(crafted_json: dict) -> None:
    assert_case(crafted_json, "split-play", expected_record(impression("split-play"), 1, 0.5), [])


def test_plays_of_different_lengths_use_the_longest(crafted_json: dict) -> None:
    assert_case(crafted_json, "lengths-differ", expected_record(impression("lengths-differ"), 1, 0.5), [])


def test_click_without_play_has_ratio_zero_and_is_counted(crafted_json: dict) -> None:
    assert_case(crafted_json, "click-without-play", expected_record(impression("click-without-play"), 1, 0.0), [])
    assert crafted_json["counters"][preprocess.CLICKS_WITHOUT_PLAY] == 1


def test_malformed_json_is_rejected(crafted_json: dict) -> None:
    assert_case(crafted_json, "malformed", None, [(IMPRESSIONS, "malformed", MALFORMED_LINE)])


def test_non_utf8_line_is_rejected_with_escaped_bytes(crafted_json: dict) -> None:
    assert_case(crafted_json, "non-utf8", None, [(IMPRESSIONS, "malformed", NON_UTF8_LINE)])
    (rejection,) = rejections_of(crafted_json["rejected"], "non-utf8")
    assert "user-\\xff\\xfe" in rejection["line"]
    assert rejection["file"].endswith(os.path.join(IMPRESSIONS, "20201011", "a.jsonl"))
    assert "UTF-8" in rejection["detail"]


def test_missing_required_field_is_rejected(crafted_json: dict) -> None:
    assert_case(crafted_json, "missing-field", None, [(IMPRESSIONS, "missing_field", MISSING_FIELD_LINE)])
    (rejection,) = rejections_of(crafted_json["rejected"], "missing-field")
    assert "user_id" in rejection["detail"]


def test_time_without_a_day_is_a_bad_value(crafted_json: dict) -> None:
    assert_case(crafted_json, "bad-time", None, [(IMPRESSIONS, "bad_value", BAD_TIME_LINE)])


def test_examples_go_to_the_day_of_the_impression(crafted_json: dict) -> None:
    assert_case(crafted_json, "second-day", expected_record(impression("second-day", time_ms=DAY2_MS), 0, 0.0), [])
    assert crafted_json["examples"]["clean"][0] == "20201011"


def test_crafted_accounting(crafted_json: dict) -> None:
    counters = crafted_json["counters"]
    for source, files in CRAFTED_JSON.items():
        assert counters[f"{preprocess.LINES_READ}/{source}"] == sum(len(lines) for lines in files.values())
    assert counters[preprocess.EXAMPLES_WRITTEN] == 14
    assert counters[preprocess.CLICKS_JOINED] == 8
    assert counters[preprocess.PLAYS_JOINED] == 10
    assert_accounting(counters)
    assert_outputs_match_counters(crafted_json["out"], counters)


# --- crafted CSV lines --------------------------------------------------------------------

CSV_OK = impression("csv-ok")
CSV_SHORT_LINE = line(IMPRESSIONS, impression("csv-short"), "csv").rsplit(b",", 1)[0]


@pytest.fixture(scope="module")
def crafted_csv(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("crafted_csv")
    raw = root / "raw"

    def header(source: str) -> bytes:
        return raw_events.csv_header(source).encode("utf-8")

    write_lines(
        raw / IMPRESSIONS / "20201011" / "a.csv",
        [header(IMPRESSIONS), line(IMPRESSIONS, CSV_OK, "csv"), CSV_SHORT_LINE],
    )
    write_lines(
        raw / IMPRESSIONS / "20201012" / "b.csv",
        [header(IMPRESSIONS), line(IMPRESSIONS, impression("second-day", DAY2_MS), "csv")],
    )
    gzip_files(raw / IMPRESSIONS / "20201012")  # b.csv.gz: the header is skipped after decompression
    write_lines(raw / CLICKS / "20201011" / "a.csv", [header(CLICKS), line(CLICKS, click("csv-ok"), "csv")])
    write_lines(raw / PLAYS / "20201011" / "a.csv", [header(PLAYS), line(PLAYS, play("csv-ok", 40.0, 80.0), "csv")])
    counters = preprocess.run(str(raw), str(root / "out"))
    return {
        "out": root / "out",
        "counters": counters,
        "examples": examples_by_request(root / "out"),
        "rejected": read_rejected(root / "out"),
    }


def test_csv_header_is_skipped(crafted_csv: dict) -> None:
    assert_case(crafted_csv, "csv-ok", expected_record(CSV_OK, 1, 0.5), [])
    assert_case(crafted_csv, "second-day", expected_record(impression("second-day", DAY2_MS), 0, 0.0), [])
    assert not [record for record in crafted_csv["rejected"] if "request_id" in record["line"]]
    counters = crafted_csv["counters"]
    assert [counters[f"{preprocess.LINES_READ}/{source}"] for source in raw_events.SOURCES] == [3, 1, 1]
    assert_accounting(counters)
    assert_outputs_match_counters(crafted_csv["out"], counters)


def test_csv_wrong_column_count_is_malformed(crafted_csv: dict) -> None:
    assert_case(crafted_csv, "csv-short", None, [(IMPRESSIONS, "malformed", CSV_SHORT_LINE)])
    (rejection,) = rejections_of(crafted_csv["rejected"], "csv-short")
    assert "columns" in rejection["detail"]


# --- generated data -----------------------------------------------------------------------


@pytest.mark.parametrize("raw_format", ["json", "csv"])
def test_clean_generated_events_give_the_worlds_logs(tmp_path: Path, raw_format: str) -> None:
    rows, days, seed = 400, 2, 11
    generator.generate(
        str(tmp_path / "raw"),
        rows=rows,
        days=days,
        seed=seed,
        raw=True,
        raw_format=raw_format,
        faults=generator.FaultRates.none(),
    )
    if raw_format == "csv":
        for source in raw_events.SOURCES:
            gzip_files(tmp_path / "raw" / source)
    counters = preprocess.run(str(tmp_path / "raw"), str(tmp_path / "out"))

    expected = world_records(rows, days, seed)
    written = read_examples(tmp_path / "out")
    assert sorted(written) == sorted(expected) and len(expected) == days
    clicked = 0
    for day, day_records in written.items():
        by_key = {(record[features.REQUEST_ID], record["FEA_VID"]): record for record in day_records}
        assert len(by_key) == len(day_records) == len(expected[day])
        assert by_key.keys() == expected[day].keys()
        for key, record in by_key.items():
            want = expected[day][key]
            assert record[features.WATCH_RATIO_LABEL] == pytest.approx(want[features.WATCH_RATIO_LABEL], abs=1e-6), key
            assert {k: v for k, v in record.items() if k != features.WATCH_RATIO_LABEL} == {
                k: v for k, v in want.items() if k != features.WATCH_RATIO_LABEL
            }
            clicked += record[features.CLICK_LABEL]
    assert 0 < clicked < rows
    assert not rejected_counts(counters)
    assert counters[preprocess.CLICKS_JOINED] == clicked
    assert_accounting(counters)
    assert_outputs_match_counters(tmp_path / "out", counters)


# Rejection reasons the generator's faults cause directly.
FAULT_REASONS = {
    "duplicate": preprocess.DUPLICATE,
    "click_without_impression": preprocess.CLICK_WITHOUT_IMPRESSION,
    "malformed": preprocess.MALFORMED,
    "missing_field": preprocess.MISSING_FIELD,
}


def test_faulty_generated_events_are_accounted_for(tmp_path: Path) -> None:
    manifest = generator.generate(str(tmp_path / "raw"), rows=1000, days=2, seed=5, raw=True)
    counters = preprocess.run(str(tmp_path / "raw"), str(tmp_path / "out"))

    assert_accounting(counters)
    assert_outputs_match_counters(tmp_path / "out", counters)
    for source in raw_events.SOURCES:
        assert counters[f"{preprocess.LINES_READ}/{source}"] == manifest["counts"][f"{source}_lines"]
    reasons = {reason for _, reason in rejected_counts(counters)}
    for fault, reason in FAULT_REASONS.items():
        assert manifest["counts"][f"injected_{fault}"] > 0, fault  # else this check proves nothing
        assert reason in reasons, (fault, counters)
    assert manifest["counts"]["injected_play_longer_than_video"] > 0
    assert counters[preprocess.WATCH_RATIOS_CLIPPED] >= 1

    distinct_impressions = set()
    for path in (tmp_path / "raw" / IMPRESSIONS).rglob("*.jsonl"):
        for text in path.read_bytes().splitlines():
            try:
                event = raw_events.parse_event(IMPRESSIONS, text, "json")
            except raw_events.RawEventError:
                continue
            distinct_impressions.add((event["request_id"], event["video_id"]))
    written = [record for day_records in read_examples(tmp_path / "out").values() for record in day_records]
    assert len(written) == counters[preprocess.EXAMPLES_WRITTEN] == len(distinct_impressions)
    assert {(record[features.REQUEST_ID], record["FEA_VID"]) for record in written} == distinct_impressions
    assert len(distinct_impressions) < manifest["counts"]["impressions"]  # some were lost to the faults


# --- errors before Beam starts ------------------------------------------------------------


def test_missing_raw_dir_is_a_data_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        preprocess.run(str(missing), str(tmp_path / "out"))


def test_raw_dir_without_impression_files_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "raw" / IMPRESSIONS / "20201011").mkdir(parents=True)
    write_lines(tmp_path / "raw" / CLICKS / "20201011" / "a.jsonl", [line(CLICKS, click("x"))])
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "raw"))):
        preprocess.run(str(tmp_path / "raw"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_mixed_formats_are_a_data_error_naming_the_file(tmp_path: Path) -> None:
    write_lines(tmp_path / "raw" / IMPRESSIONS / "20201011" / "a.jsonl", [line(IMPRESSIONS, impression("x"))])
    write_lines(tmp_path / "raw" / CLICKS / "20201011" / "b.csv.gz", [])
    with pytest.raises(DataError, match="b.csv.gz"):
        preprocess.run(str(tmp_path / "raw"), str(tmp_path / "out"))


def test_unknown_extension_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    write_lines(tmp_path / "raw" / IMPRESSIONS / "20201011" / "a.jsonl", [line(IMPRESSIONS, impression("x"))])
    write_lines(tmp_path / "raw" / PLAYS / "20201011" / "notes.txt", [b"hello"])
    with pytest.raises(DataError, match="notes.txt"):
        preprocess.run(str(tmp_path / "raw"), str(tmp_path / "out"))


def test_csv_with_a_foreign_header_is_a_data_error(tmp_path: Path) -> None:
    write_lines(tmp_path / "raw" / IMPRESSIONS / "20201011" / "a.csv", [raw_events.csv_header(CLICKS).encode()])
    with pytest.raises(DataError, match="a.csv"):
        preprocess.run(str(tmp_path / "raw"), str(tmp_path / "out"))


def test_non_empty_output_dir_is_a_data_error(tmp_path: Path) -> None:
    write_lines(tmp_path / "raw" / IMPRESSIONS / "20201011" / "a.jsonl", [line(IMPRESSIONS, impression("x"))])
    write_lines(tmp_path / "out" / "20201011" / "part-00000-of-00001.gz", [b"old"])
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "out"))):
        preprocess.run(str(tmp_path / "raw"), str(tmp_path / "out"))


# --- damaged files and failed jobs ----------------------------------------------------------


def write_truncated_gzip(path: Path, lines: list[bytes]) -> int:
    """A GZIP file cut at half its bytes, as an interrupted copy leaves it; returns the lines before the cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    whole = gzip.compress(b"".join(item + b"\n" for item in lines), compresslevel=1, mtime=0)
    path.write_bytes(whole[: len(whole) // 2])
    readable = 0
    with gzip.open(path, "rb") as handle:
        try:
            for _ in handle:
                readable += 1
        except EOFError:
            pass
    return readable


def many_impressions(prefix: str, count: int) -> list[bytes]:
    # Distinct random-looking ids, so that GZIP cannot shrink the lines to nothing.
    return [line(IMPRESSIONS, impression(f"{prefix}-{i:04d}-{os.urandom(6).hex()}")) for i in range(count)]


def test_truncated_gzip_file_fails_the_job_by_name_and_leaves_the_output_reusable(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_lines(raw / IMPRESSIONS / "20201011" / "a.jsonl", [line(IMPRESSIONS, impression("intact"))])
    truncated = raw / IMPRESSIONS / "20201011" / "b.jsonl.gz"
    assert 0 < write_truncated_gzip(truncated, many_impressions("cut", 400)) < 400
    with pytest.raises(DataError, match=re.escape(str(truncated))):
        preprocess.run(str(raw), str(out))
    assert not out.exists() or not list(out.rglob("*")), list(out.rglob("*"))
    truncated.unlink()
    counters = preprocess.run(str(raw), str(out))  # the same output folder, after fixing the input
    assert counters[preprocess.EXAMPLES_WRITTEN] == 1


def test_allow_damaged_files_uses_the_lines_before_the_damage_and_rejects_the_rest(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    truncated = raw / IMPRESSIONS / "20201011" / "b.jsonl.gz"
    readable = write_truncated_gzip(truncated, many_impressions("cut", 400))
    counters = preprocess.run(str(raw), str(out), allow_damaged_files=True)
    assert counters[preprocess.EXAMPLES_WRITTEN] == readable
    assert rejected_counts(counters) == Counter({(IMPRESSIONS, preprocess.UNREADABLE): 1})
    assert_accounting(counters)
    assert_outputs_match_counters(out, counters)
    (rejection,) = read_rejected(out)
    assert rejection["file"] == str(truncated) and f"after line {readable}" in rejection["detail"]


def cli_error(args: list[str]) -> str:
    """The command's one error line; fails on a traceback or a zero exit."""
    completed = subprocess.run([LT4REC, *args], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1, (completed.stdout, completed.stderr[-3000:])
    assert "Traceback" not in completed.stderr, completed.stderr[-3000:]
    errors = [text for text in completed.stderr.splitlines() if text.startswith("lt4rec: error:")]
    assert len(errors) == 1, completed.stderr[-3000:]
    return errors[0]


def test_cli_names_a_gz_file_that_is_not_gzip(tmp_path: Path) -> None:
    fake = tmp_path / "raw" / IMPRESSIONS / "20201011" / "a.jsonl.gz"
    write_lines(fake, [line(IMPRESSIONS, impression("plain-text"))])
    assert str(fake) in cli_error(["preprocess", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out")])


@pytest.mark.e2e
def test_cli_names_a_truncated_file_found_by_a_worker_process(tmp_path: Path) -> None:
    truncated = tmp_path / "raw" / IMPRESSIONS / "20201011" / "b.jsonl.gz"
    write_truncated_gzip(truncated, many_impressions("cut", 400))
    error = cli_error(["preprocess", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"),
                       "--direct_num_workers=2", "--direct_running_mode=multi_processing"])  # fmt: skip
    assert str(truncated) in error and "--allow-damaged-files" in error


def test_format_counters_reports_the_accounting() -> None:
    counters = {
        "lines_read/impressions": 5,
        "lines_read/clicks": 2,
        "lines_read/plays": 0,
        "examples_written": 4,
        "examples_written/20201011": 4,
        "clicks_joined": 1,
        "plays_joined": 0,
        "rejected/impressions/duplicate": 1,
        "rejected/clicks/click_without_impression": 1,
        "watch_ratios_clipped": 0,
        "clicks_without_play": 1,
    }
    text = preprocess.format_counters(counters)
    assert "5 lines read = 4 examples written + 1 rejected (duplicate 1)" in text
    assert "2 lines read = 1 clicks joined + 1 rejected (click_without_impression 1)" in text
    assert "20201011 4" in text
    assert "clicks without a play: 1" in text


# --- the command line, with two worker processes -----------------------------------------


@pytest.mark.e2e
def test_cli_end_to_end_multi_processing(tmp_path: Path) -> None:
    manifest = generator.generate(str(tmp_path / "raw"), rows=300, days=2, seed=7, raw=True)
    completed = subprocess.run(
        [
            LT4REC,
            "preprocess",
            "--raw",
            str(tmp_path / "raw"),
            "--out",
            str(tmp_path / "out"),
            "--direct_num_workers=2",
            "--direct_running_mode=multi_processing",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (completed.stdout + completed.stderr).count("lines read =") == len(raw_events.SOURCES)  # the report, once
    entries = sorted(os.listdir(tmp_path / "out"))
    assert [e for e in entries if not e.startswith(preprocess.REJECTED_PREFIX)] == sorted(
        ["20201011", "20201012", preprocess.COUNTERS_FILE]
    )
    assert any(e.startswith(preprocess.REJECTED_PREFIX) and e.endswith(".jsonl") for e in entries)
    assert glob.glob(str(tmp_path / "out" / "20201011" / "part-*.gz"))
    with open(tmp_path / "out" / preprocess.COUNTERS_FILE, encoding="utf-8") as handle:
        counters = json.load(handle)
    for source in raw_events.SOURCES:
        assert counters[f"{preprocess.LINES_READ}/{source}"] == manifest["counts"][f"{source}_lines"]
    assert counters[preprocess.EXAMPLES_WRITTEN] > 0
    assert_accounting(counters)
    assert_outputs_match_counters(tmp_path / "out", counters)
