"""The feature spec of the Tencent-style video log: the one place that names its columns.

Everything that touches the log format reads it from here: the generator and the Beam join
(which keys to write), the curated schema's test, Transform's `preprocessing_fn` (how each
feature becomes integer ids), the network (one embedding table per `TableSpec`) and the
serving signatures. It sits at the package root, beside `errors`, because all of them share
it: `logs/` reads it without depending on `models/`. Nothing here imports TensorFlow, so
the data-side code and the scoring client can use it cheaply.

Id convention, for every feature and table: id 0 means "missing" (the log's `-1`
placeholder, or padding of a multi-valued feature); real values get ids in [1, size).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Iterable, Mapping

# Labels and bookkeeping columns of the log. None of them is ever a model input.
CLICK_LABEL = "label"  # int64: 1 if the impression was clicked
WATCH_RATIO_LABEL = "cvrlabel"  # float: seconds watched / video length, in [0, 1]
REQUEST_ID = "seqnum"  # bytes: opaque request id; groups the impressions of one request
PRODUCTION_PCTR = "pctr"  # bytes: the production model's pCTR as a decimal string
USER_ID = "FEA_UID"  # the feature to group by for per-user metrics (GAUC)

MISSING_VALUE = "-1"  # the log's placeholder for a missing value
MISSING_ID = 0


class Encoding(str, enum.Enum):
    """How a table turns strings into ids."""

    HASH = "hash"  # fingerprint into `size - 1` buckets: no analysis pass, any cardinality
    VOCABULARY = "vocabulary"  # the `size - 2` most frequent values, plus one OOV id


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One `FEA_*` column of the log."""

    name: str
    max_values: int  # 1 for a single-valued feature; the cap for a multi-valued one
    default_table: str  # the embedding table the feature uses when tables are shared
    description: str

    @property
    def multivalued(self) -> bool:
        return self.max_values > 1


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """An id space and its embedding table; features that share it share ids and rows."""

    name: str
    encoding: Encoding
    size: int  # ids are in [0, size); 0 is the missing id
    features: tuple[str, ...]

    def __post_init__(self) -> None:
        minimum = 3 if self.encoding == Encoding.VOCABULARY else 2
        if self.size < minimum:
            raise ValueError(
                f"table {self.name!r}: size {self.size} is too small for {self.encoding.value} "
                f"encoding (ids 0 = missing{', 1 = out of vocabulary' if minimum == 3 else ''})"
            )

    @property
    def vocabulary_top_k(self) -> int:
        """How many distinct values a vocabulary table keeps (the rest share one OOV id)."""
        return self.size - 2


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("FEA_UID", 1, "user", "user id"),
    FeatureSpec("FEA_UGROUP", 1, "user_group", "user group"),
    FeatureSpec("FEA_AGE", 1, "age", "age bucket"),
    FeatureSpec("FEA_UCAT", 6, "category", "user's preferred categories"),
    FeatureSpec("FEA_VID", 1, "video", "impressed video id"),
    FeatureSpec("FEA_CP", 1, "content_provider", "content provider of the video"),
    FeatureSpec("FEA_ICAT1", 1, "category", "first level category of the video"),
    FeatureSpec("FEA_ICAT2", 1, "category", "second level category of the video"),
    FeatureSpec("FEA_IKEYWORD", 8, "tag", "video keywords"),
    FeatureSpec("FEA_IXFTAG", 6, "tag", "video tags"),
    FeatureSpec("FEA_DURATION", 1, "duration", "video length bucket"),
    FeatureSpec("FEA_COVERQUALITY", 1, "cover_quality", "cover image quality class"),
    FeatureSpec("FEA_SVID", 1, "video", "source video the user was watching"),
    FeatureSpec("FEA_SCP", 1, "content_provider", "source video's content provider"),
    FeatureSpec("FEA_SICAT1", 1, "category", "source video's first level category"),
    FeatureSpec("FEA_SICAT2", 1, "category", "source video's second level category"),
    FeatureSpec("FEA_SIKEYWORD", 8, "tag", "source video's keywords"),
    FeatureSpec("FEA_STAG", 6, "tag", "source video's tags"),
    FeatureSpec("FEA_ALGID", 1, "recall_algorithm", "recall algorithm that proposed it"),
    FeatureSpec("FEA_ORDER", 1, "position", "position in the result list"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
# The request's features: the user's and the source video's, the same for every candidate
# of one ranking request, so a request can carry (and a model compute) them once. The log
# repeats them on every impression (and drops values of them now and then, independently).
CONTEXT_FEATURE_NAMES: tuple[str, ...] = (
    "FEA_UID", "FEA_UGROUP", "FEA_AGE", "FEA_UCAT",
    "FEA_SVID", "FEA_SCP", "FEA_SICAT1", "FEA_SICAT2", "FEA_SIKEYWORD", "FEA_STAG",
)  # fmt: skip
CANDIDATE_FEATURE_NAMES: tuple[str, ...] = tuple(name for name in FEATURE_NAMES if name not in CONTEXT_FEATURE_NAMES)
FEATURES_BY_NAME: Mapping[str, FeatureSpec] = {f.name: f for f in FEATURES}

# The shared tables follow the LT4REC reference configuration: a source video's id,
# provider, categories and tags share the tables of the impressed video's; all category
# levels and the user's preferred categories share one table, and keywords share the tags'.
#
# Default encoding and size per table. Id-like, open-ended columns are hashed (the
# production tables hold 10-15M rows; these defaults suit a single machine and are
# overridden per run); small closed sets get a vocabulary.
DEFAULT_TABLES: Mapping[str, tuple[Encoding, int]] = {
    "user": (Encoding.HASH, 1 << 18),
    "user_group": (Encoding.VOCABULARY, 64),
    "age": (Encoding.VOCABULARY, 32),
    "video": (Encoding.HASH, 1 << 18),
    "content_provider": (Encoding.HASH, 1 << 16),
    "category": (Encoding.VOCABULARY, 2048),
    "tag": (Encoding.HASH, 1 << 17),
    "duration": (Encoding.VOCABULARY, 64),
    "cover_quality": (Encoding.VOCABULARY, 16),
    "recall_algorithm": (Encoding.VOCABULARY, 128),
    "position": (Encoding.VOCABULARY, 256),
}


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """The effective id spaces of one run: which table each feature uses, and its encoding.

    Built from `DEFAULT_TABLES` plus overrides, by `feature_config()`; Transform and the
    trainer must be given the same one (the pipeline passes one dict to both).
    """

    tables: tuple[TableSpec, ...]

    @property
    def table_of(self) -> Mapping[str, TableSpec]:
        return {name: table for table in self.tables for name in table.features}

    def to_dict(self) -> dict:
        """A JSON-able form, for TFX `custom_config` and for writing into artifacts."""
        return {
            "tables": [
                {"name": t.name, "encoding": t.encoding.value, "size": t.size, "features": list(t.features)}
                for t in self.tables
            ]
        }

    @classmethod
    def from_dict(cls, config: Mapping) -> "FeatureConfig":
        tables = tuple(
            TableSpec(t["name"], Encoding(t["encoding"]), int(t["size"]), tuple(t["features"]))
            for t in config["tables"]
        )
        _check_covers_every_feature(tables)
        return cls(tables)


def feature_config(
    share_tables: bool = True,
    overrides: Mapping[str, Mapping] | None = None,
) -> FeatureConfig:
    """The id spaces of a run.

    Args:
      share_tables: if True, related features share one table (see DEFAULT_TABLES); if
        False every feature has a table of its own, named after the feature.
      overrides: per table name (or, for a feature's own table, per feature name), a
        mapping with `encoding` ("hash" or "vocabulary") and/or `size`.
    """
    overrides = dict(overrides or {})
    members: dict[str, list[str]] = {}
    for spec in FEATURES:
        members.setdefault(spec.default_table if share_tables else spec.name, []).append(spec.name)

    tables = []
    for table_name, names in members.items():
        default_encoding, default_size = DEFAULT_TABLES[FEATURES_BY_NAME[names[0]].default_table]
        override = dict(overrides.pop(table_name, {}))
        for name in names:  # a feature name may stand for its table
            if name != table_name and name in overrides:
                override.update(overrides.pop(name))
        unknown = set(override) - {"encoding", "size"}
        if unknown:
            raise ValueError(f"table {table_name!r}: unknown setting(s) {sorted(unknown)}")
        tables.append(
            TableSpec(
                name=table_name,
                encoding=Encoding(override.get("encoding", default_encoding)),
                size=int(override.get("size", default_size)),
                features=tuple(names),
            )
        )
    if overrides:
        raise ValueError(f"overrides name no table or feature: {sorted(overrides)}; tables are " f"{sorted(members)}")
    return FeatureConfig(tuple(tables))


def scaled_config(scale: float, share_tables: bool = True) -> FeatureConfig:
    """`DEFAULT_TABLES` with every hashed table's size multiplied by `scale` (min 64).

    For tiny test runs (scale << 1) and production-sized tables (scale >> 1).
    """
    overrides = {}
    for spec in FEATURES:
        table = spec.default_table if share_tables else spec.name
        encoding, size = DEFAULT_TABLES[spec.default_table]
        if encoding == Encoding.HASH:
            overrides[table] = {"size": max(64, int(size * scale))}
    return feature_config(share_tables, overrides)


def _check_covers_every_feature(tables: Iterable[TableSpec]) -> None:
    seen: dict[str, str] = {}
    for table in tables:
        for name in table.features:
            if name not in FEATURES_BY_NAME:
                raise ValueError(f"table {table.name!r} names unknown feature {name!r}")
            if name in seen:
                raise ValueError(f"feature {name!r} is in tables {seen[name]!r} and {table.name!r}")
            seen[name] = table.name
    missing = set(FEATURE_NAMES) - set(seen)
    if missing:
        raise ValueError(f"no table for feature(s) {sorted(missing)}")


# FEA_DURATION is the index of the video's length bucket: bucket b holds lengths in
# [edge b-1, edge b) seconds, bucket 0 those under the first edge, the last bucket the rest.
DURATION_FEATURE = "FEA_DURATION"
VIDEO_FEATURE = "FEA_VID"  # the impressed video's id
DURATION_BUCKET_EDGES_SECONDS = (15, 30, 60, 120, 180, 300, 600, 1200, 1800, 3600)


def bucket_seconds(bucket: int) -> float:
    """A length that stands for a duration bucket: its geometric midpoint (open ends: half
    the first edge, 1.5 times the last)."""
    edges = DURATION_BUCKET_EDGES_SECONDS
    if not 0 <= bucket <= len(edges):
        raise ValueError(f"{DURATION_FEATURE} bucket {bucket} is not in [0, {len(edges)}]")
    if bucket == 0:
        return edges[0] / 2
    if bucket == len(edges):
        return edges[-1] * 1.5
    return float((edges[bucket - 1] * edges[bucket]) ** 0.5)
