"""Impressions of the synthetic world as log records, and log records as `tf.train.Example`.

A log record is one impression in the form of docs/LOG_SCHEMA.md: a dict from the log's keys to
a string (single-valued `FEA_*`, `seqnum`, `pctr`), a list of strings (multi-valued
`FEA_*`), an int (`label`) or a float (`cvrlabel`). The generator writes records as
TFRecord examples or as raw events; the Beam join turns raw events back into records; the
example codec here is the one both use, so the two paths cannot drift apart.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence, Union

import numpy as np

from lt4rec import features
from lt4rec.logs import world as world_lib

Value = Union[str, Sequence[str], int, float]
Record = Mapping[str, Value]

_CJK_FIRST, _CJK_COUNT = 0x4E00, 20902


def user_id(index: int) -> str:
    """An opaque, injective decimal id (an odd multiplier coprime to 10 permutes mod 10^9)."""
    return str(1_000_000_000 + (index * 2_654_435_761) % 1_000_000_000)


def video_id(index: int) -> str:
    """An 11-character id in the style of Tencent Video's (a letter, then base 36)."""
    value = (index * 1_000_003 + 7_777_777) % 36**10
    digits = []
    for _ in range(10):
        value, digit = divmod(value, 36)
        digits.append("0123456789abcdefghijklmnopqrstuvwxyz"[digit])
    return "abcdefghijklmnopqrstuvwxyz"[index % 26] + "".join(reversed(digits))


def provider_id(index: int) -> str:
    return str(200_000 + (index * 7_919) % 10_000_000)


def keyword(index: int) -> str:
    """Keywords are a mix of UTF-8 Chinese text and ASCII, as in the real logs."""
    if index % 3 == 0:
        length = 2 + index % 3
        return "".join(chr(_CJK_FIRST + (index * 7_919 + j * 104_729) % _CJK_COUNT) for j in range(length))
    return f"kw{index:05d}"


def tag(index: int) -> str:
    return str(50_000 + index)


def category1(index: int) -> str:
    return str(100 + index)


def category2(index: int) -> str:
    return str(10_000 + index)


def request_id(user: str, time_ms: int, request_no: int) -> str:
    return f"{user}@{time_ms}@{request_no}"


def day_folder(time_ms: int) -> str:
    """The day partition (UTC) of a unix-ms timestamp: YYYYMMDD."""
    return np.datetime64(int(time_ms), "ms").astype("datetime64[D]").astype(str).replace("-", "")


def log_records(world: world_lib.World, impressions: world_lib.Impressions) -> Iterator[dict]:
    """One log record per impression, in docs/LOG_SCHEMA.md's format (labels included)."""
    missing = impressions.missing
    for i in range(len(impressions)):
        user = int(impressions.user[i])
        video = int(impressions.video[i])
        source = int(impressions.source_video[i])
        uid = user_id(user)
        record: dict[str, Value] = {
            features.CLICK_LABEL: int(impressions.click[i]),
            features.WATCH_RATIO_LABEL: float(impressions.watch_ratio[i]),
            features.REQUEST_ID: request_id(uid, int(impressions.time_ms[i]), int(impressions.request_no[i])),
            features.PRODUCTION_PCTR: f"{impressions.production_pctr[i]:.6f}",
            "FEA_UID": uid,
            "FEA_UGROUP": str(world.user_group[user]),
            "FEA_AGE": str(world.user_age[user]),
            "FEA_UCAT": [category1(c) for c in world.user_categories[user, : world.user_category_count[user]]],
            "FEA_VID": video_id(video),
            "FEA_CP": provider_id(int(world.video_provider[video])),
            "FEA_ICAT1": category1(int(world.video_category1[video])),
            "FEA_ICAT2": category2(int(world.video_category2[video])),
            "FEA_IKEYWORD": [keyword(k) for k in world.video_keywords(video)[: world.video_keyword_count[video]]],
            "FEA_IXFTAG": [tag(t) for t in world.video_tags(video)[: world.video_tag_count[video]]],
            "FEA_DURATION": str(int(world_lib.duration_bucket(world.video_seconds[video]))),
            "FEA_COVERQUALITY": str(world.video_cover_quality[video]),
            "FEA_ALGID": str(int(impressions.algorithm[i]) + 1),
            "FEA_ORDER": str(int(impressions.position[i])),
        }
        if source >= 0:
            keyword_count = int(impressions.source_keyword_count[i])
            tag_count = int(impressions.source_tag_count[i])
            record.update(
                {
                    "FEA_SVID": video_id(source),
                    "FEA_SCP": provider_id(int(world.video_provider[source])),
                    "FEA_SICAT1": category1(int(world.video_category1[source])),
                    "FEA_SICAT2": category2(int(world.video_category2[source])),
                    "FEA_SIKEYWORD": [keyword(k) for k in world.video_keywords(source)[:keyword_count]],
                    "FEA_STAG": [tag(t) for t in world.video_tags(source)[:tag_count]],
                }
            )
        else:
            record.update(
                {
                    "FEA_SVID": features.MISSING_VALUE,
                    "FEA_SCP": "N",
                    "FEA_SICAT1": features.MISSING_VALUE,
                    "FEA_SICAT2": features.MISSING_VALUE,
                    "FEA_SIKEYWORD": [features.MISSING_VALUE],
                    "FEA_STAG": [features.MISSING_VALUE],
                }
            )
        for name, flags in missing.items():
            if flags[i]:
                record[name] = (
                    [features.MISSING_VALUE] if features.FEATURES_BY_NAME[name].multivalued else features.MISSING_VALUE
                )
        yield record


def to_example(record: Record):
    """A log record as a `tf.train.Example` (the exact key types of docs/LOG_SCHEMA.md)."""
    from tensorflow.core.example import example_pb2  # TensorFlow only where examples are made

    example = example_pb2.Example()
    feature = example.features.feature
    for key, value in record.items():
        if key == features.CLICK_LABEL:
            feature[key].int64_list.value.append(int(value))
        elif key == features.WATCH_RATIO_LABEL:
            feature[key].float_list.value.append(float(value))
        elif isinstance(value, str):
            feature[key].bytes_list.value.append(value.encode("utf-8"))
        else:
            feature[key].bytes_list.value.extend(v.encode("utf-8") for v in value)
    return example


def from_example(example) -> dict:
    """A `tf.train.Example` as a log record: the inverse of `to_example`."""
    record: dict[str, Value] = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "int64_list":
            values: list = list(feature.int64_list.value)
        elif kind == "float_list":
            values = list(feature.float_list.value)
        elif kind == "bytes_list":
            values = [v.decode("utf-8") for v in feature.bytes_list.value]
        else:
            values = []
        spec = features.FEATURES_BY_NAME.get(key)
        record[key] = values if spec is not None and spec.multivalued else (values[0] if len(values) == 1 else values)
    return record
