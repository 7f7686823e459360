"""The raw event format: lines out and back, and the reason every bad line is refused."""

import pytest

from lt4rec import features
from lt4rec.logs import raw_events

IMPRESSION = {
    "request_id": "42@1602374994951@7",
    "user_id": "42",
    "video_id": "v1",
    "position": "3",
    "time_ms": 1602374994951,
    "pctr": "0.25",
    **{name: ["a", "b"] if features.FEATURES_BY_NAME[name].multivalued else "x" for name in raw_events.OTHER_FEATURES},
}
PLAY = {"request_id": "r", "video_id": "v", "time_ms": 5, "watched_seconds": 12.5, "video_seconds": 30.0}


@pytest.mark.parametrize("file_format", raw_events.FORMATS)
def test_events_round_trip(file_format):
    for source, event in [(raw_events.IMPRESSIONS, IMPRESSION), (raw_events.PLAYS, PLAY)]:
        line = raw_events.format_event(source, event, file_format)
        assert raw_events.parse_event(source, line, file_format) == event
        assert raw_events.parse_event(source, line.encode("utf-8"), file_format) == event


def test_impression_record_and_event_are_inverses():
    record = raw_events.impression_record(IMPRESSION, clicked=True, watch_ratio=0.5)
    assert record["label"] == 1 and record["cvrlabel"] == 0.5 and record["FEA_ORDER"] == "3"
    assert raw_events.impression_event(record, IMPRESSION["time_ms"]) == IMPRESSION


def test_missing_optional_features_become_the_placeholder():
    event = dict(IMPRESSION)
    del event["FEA_STAG"], event["FEA_AGE"], event["position"]
    parsed = raw_events.parse_event(
        raw_events.IMPRESSIONS, raw_events.format_event(raw_events.IMPRESSIONS, event, "json"), "json"
    )
    assert parsed["FEA_STAG"] == ["-1"] and parsed["FEA_AGE"] == "-1" and parsed["position"] == "-1"


@pytest.mark.parametrize(
    "source, line, file_format, reason",
    [
        (raw_events.CLICKS, b"\xff\xfe{", "json", raw_events.MALFORMED),
        (raw_events.CLICKS, "", "json", raw_events.MALFORMED),
        (raw_events.CLICKS, '{"request_id": "r", "video_id": ', "json", raw_events.MALFORMED),
        (raw_events.CLICKS, "[1, 2]", "json", raw_events.MALFORMED),
        (raw_events.CLICKS, '{"request_id": "r", "time_ms": 5}', "json", raw_events.MISSING_FIELD),
        (raw_events.CLICKS, '{"request_id": "r", "video_id": "v", "time_ms": "soon"}', "json", raw_events.BAD_VALUE),
        (raw_events.CLICKS, '{"request_id": "r", "video_id": "v", "time_ms": 5.5}', "json", raw_events.BAD_VALUE),
        (
            raw_events.PLAYS,
            '{"request_id": "r", "video_id": "v", "time_ms": 5, "watched_seconds": -1, "video_seconds": 9}',
            "json",
            raw_events.BAD_VALUE,
        ),
        (
            raw_events.PLAYS,
            '{"request_id": "r", "video_id": "v", "time_ms": 5, "watched_seconds": 1, "video_seconds": 0}',
            "json",
            raw_events.BAD_VALUE,
        ),
        (
            raw_events.PLAYS,
            '{"request_id": "r", "video_id": "v", "time_ms": 5, "watched_seconds": NaN, "video_seconds": 9}',
            "json",
            raw_events.BAD_VALUE,
        ),
        (raw_events.CLICKS, "r,v", "csv", raw_events.MALFORMED),
        (raw_events.CLICKS, "request_id,video_id,time_ms", "csv", raw_events.MALFORMED),
        (raw_events.CLICKS, "r,,5", "csv", raw_events.MISSING_FIELD),
        (
            raw_events.IMPRESSIONS,
            '{"request_id": "r", "user_id": "u", "video_id": "v", "time_ms": 5, "features": {"FEA_AGE": [1, 2]}}',
            "json",
            raw_events.BAD_VALUE,
        ),
    ],
)
def test_bad_lines_are_refused_with_their_reason(source, line, file_format, reason):
    with pytest.raises(raw_events.RawEventError) as refused:
        raw_events.parse_event(source, line, file_format)
    assert refused.value.reason == reason
    assert str(refused.value)
