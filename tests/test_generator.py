"""`lt4rec generate`: logs in exactly docs/LOG_SCHEMA.md's format, truth beside them, raw events."""

import csv
import gzip
import json
import os
import subprocess

import numpy as np
import pytest

from lt4rec import features
from lt4rec.logs import generator, raw_events, records
from tests.helpers import LT4REC, read_examples

ROWS = 4000


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("logs"))
    manifest = generator.generate(out, rows=ROWS, days=2, seed=2, rows_per_file=1500)
    return out, manifest


def _all_examples(out):
    found = {}
    for day in sorted(d for d in os.listdir(out) if d.isdigit()):
        for name in sorted(os.listdir(os.path.join(out, day))):
            if name.startswith(generator.TRUTH_PREFIX):
                continue
            found[(day, name)] = read_examples(os.path.join(out, day, name))
    return found


def test_layout_is_day_folders_of_gzip_parts(logs):
    out, manifest = logs
    files = _all_examples(out)
    assert {day for day, _ in files} == {"20201011", "20201012"}
    assert all(name.startswith("part-") and name.endswith(".gz") for _, name in files)
    assert max(len(examples) for examples in files.values()) <= 1500
    assert sum(len(examples) for examples in files.values()) == ROWS == manifest["counts"]["examples"]
    with open(os.path.join(out, generator.MANIFEST)) as handle:
        assert json.load(handle)["seed"] == 2


def test_every_example_has_the_schema_keys_and_types(logs):
    out, _ = logs
    kinds = {features.CLICK_LABEL: "int64_list", features.WATCH_RATIO_LABEL: "float_list"}
    expected_keys = set(features.FEATURE_NAMES) | {
        features.CLICK_LABEL,
        features.WATCH_RATIO_LABEL,
        features.REQUEST_ID,
        features.PRODUCTION_PCTR,
    }
    for examples in _all_examples(out).values():
        for example in examples:
            feature_map = example.features.feature
            assert set(feature_map) == expected_keys
            for key, feature in feature_map.items():
                assert feature.WhichOneof("kind") == kinds.get(key, "bytes_list"), key
                values = getattr(feature, feature.WhichOneof("kind")).value
                spec = features.FEATURES_BY_NAME.get(key)
                if spec is not None and spec.multivalued:
                    assert 1 <= len(values) <= spec.max_values, key
                else:
                    assert len(values) == 1, key


def test_statistics_resemble_the_real_sample(logs):
    out, _ = logs
    rows = [records.from_example(e) for examples in _all_examples(out).values() for e in examples]
    clicks = np.array([r["label"] for r in rows])
    ratios = np.array([r["cvrlabel"] for r in rows])
    assert 0.34 < clicks.mean() < 0.44
    assert np.all((ratios > 0) == (clicks == 1))
    assert 0.75 < ratios[clicks == 1].mean() < 0.88
    assert 0.42 < (ratios[clicks == 1] == 1.0).mean() < 0.60

    def missing(name):
        value = [features.MISSING_VALUE] if features.FEATURES_BY_NAME[name].multivalued else features.MISSING_VALUE
        return np.mean([r[name] == value for r in rows])

    for name, rate in {
        "FEA_SICAT1": 0.10,
        "FEA_STAG": 0.05,
        "FEA_UCAT": 0.05,
        "FEA_COVERQUALITY": 0.04,
        "FEA_ORDER": 0.03,
    }.items():
        assert abs(missing(name) - rate) < 0.025, name
    for name, mean_length in {
        "FEA_IKEYWORD": 7.6,
        "FEA_SIKEYWORD": 7.3,
        "FEA_IXFTAG": 5.6,
        "FEA_STAG": 4.3,
        "FEA_UCAT": 3.7,
    }.items():
        lengths = [len(r[name]) for r in rows if r[name] != [features.MISSING_VALUE]]
        assert abs(np.mean(lengths) - mean_length) < 0.4, name
    assert any(any(ord(ch) > 0x4E00 for word in r["FEA_IKEYWORD"] for ch in word) for r in rows)  # UTF-8 Chinese


def test_request_ids_and_production_pctr(logs):
    out, _ = logs
    rows = [records.from_example(e) for examples in _all_examples(out).values() for e in examples]
    for row in rows:
        user, millis, number = row["seqnum"].split("@")
        assert user == row["FEA_UID"] and millis.isdigit() and number.isdigit()
        assert 0.0 < float(row["pctr"]) < 1.0
    requests = {}
    for row in rows:
        requests.setdefault(row["seqnum"], []).append(row["FEA_VID"])
    assert max(len(v) for v in requests.values()) > 1  # requests group impressions
    assert all(len(set(v)) == len(v) for v in requests.values())


def test_truth_is_aligned_row_by_row(logs):
    out, _ = logs
    for (day, name), examples in _all_examples(out).items():
        truth_path = os.path.join(out, day, generator.TRUTH_PREFIX + name.replace(".gz", ".csv.gz"))
        with gzip.open(truth_path, "rt", encoding="utf-8") as handle:
            truth = list(csv.DictReader(handle))
        assert len(truth) == len(examples)
        for example, row in zip(examples, truth):
            record = records.from_example(example)
            assert (row["seqnum"], row["FEA_VID"]) == (record["seqnum"], record["FEA_VID"])
            assert 0.0 < float(row["p_click"]) < 1.0 and 0.0 < float(row["expected_watch_ratio"]) < 1.0


def test_generation_is_deterministic(tmp_path):
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    generator.generate(first, rows=300, days=1, seed=9)
    generator.generate(second, rows=300, days=1, seed=9)
    for day in ("20201011",):
        a = read_examples(os.path.join(first, day, "part-00000.gz"))
        b = read_examples(os.path.join(second, day, "part-00000.gz"))
        assert a == b


@pytest.mark.parametrize("file_format", ["json", "csv"])
def test_raw_events_hold_every_impression_and_the_injected_faults(tmp_path, file_format):
    out = str(tmp_path / "raw")
    manifest = generator.generate(out, rows=3000, days=2, seed=4, raw=True, raw_format=file_format)
    counts = manifest["counts"]
    suffix = ".jsonl" if file_format == "json" else ".csv"
    parsed = {source: 0 for source in raw_events.SOURCES}
    rejected = {source: 0 for source in raw_events.SOURCES}
    for source in raw_events.SOURCES:
        lines = 0
        for day in sorted(os.listdir(os.path.join(out, source))):
            path = os.path.join(out, source, day, "part-00000" + suffix)
            with open(path, encoding="utf-8") as handle:
                content = handle.read().splitlines()
            if file_format == "csv":
                assert content[0] == raw_events.csv_header(source)
                content = content[1:]
            lines += len(content)
            for line in content:
                try:
                    raw_events.parse_event(source, line, file_format)
                    parsed[source] += 1
                except raw_events.RawEventError:
                    rejected[source] += 1
        assert lines == counts[f"{source}_lines"]
    assert sum(rejected.values()) == counts["injected_malformed"] + counts["injected_missing_field"]
    assert counts["impressions"] == 3000
    for fault in (
        "duplicate",
        "click_without_impression",
        "play_longer_than_video",
        "split_play",
        "malformed",
        "missing_field",
    ):
        assert counts[f"injected_{fault}"] > 0, fault


def test_cli_generate_and_bad_start_day(tmp_path):
    out = str(tmp_path / "cli")
    done = subprocess.run(
        [LT4REC, "generate", "--out", out, "--rows", "200", "--days", "2", "--seed", "1"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(d for d in os.listdir(out) if d.isdigit()) == ["20201011", "20201012"]
    bad = subprocess.run(
        [LT4REC, "generate", "--out", out, "--start-day", "2020-10-11"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "YYYYMMDD" in bad.stderr


@pytest.mark.parametrize("catalogue", ["sample", "paper"])
def test_fast_examples_are_the_records_codecs(catalogue, tmp_path):
    # The TFRecord writer encodes examples itself; they must be exactly what
    # records.to_example makes of records.log_records (missing values and rows without a
    # source video included), and the truth lines exactly _truth_line's.
    from lt4rec.logs import world as world_lib

    world = world_lib.World(world_lib.world_config(catalogue, rows=3000, days=2, seed=6))
    impressions = world.sample(3000)
    assert (impressions.source_video < 0).any() and all(flags.any() for flags in impressions.missing.values())
    rows = generator.ExampleEncoder(world).encode(impressions)
    path = str(tmp_path / "examples.tfrecord")
    with open(path, "wb") as handle:
        handle.write(rows.tfrecords(0, 3000).tobytes())
    examples = _read_uncompressed(path)  # TensorFlow checks the framing and the CRCs
    truth_lines = rows.truth(0, 3000).decode().splitlines(keepends=True)
    assert len(examples) == len(truth_lines) == 3000
    for i, record in enumerate(records.log_records(world, impressions)):
        assert examples[i] == records.to_example(record), i
        assert truth_lines[i] == generator._truth_line(
            record, impressions.p_click[i], impressions.expected_watch_ratio[i]
        )
    assert rows.tfrecords(0, 1000).tobytes() + rows.tfrecords(1000, 3000).tobytes() == rows.tfrecords(0, 3000).tobytes()
    assert rows.truth(0, 1000) + rows.truth(1000, 3000) == rows.truth(0, 3000)


def _read_uncompressed(path: str) -> list:
    import tensorflow as tf

    return [tf.train.Example.FromString(record) for record in tf.data.TFRecordDataset(path).as_numpy_iterator()]


def test_chunks_in_parallel_make_the_records_of_the_chunks(tmp_path, monkeypatch):
    # Many chunks (each cut at day and file boundaries, compressed apart in worker processes
    # and appended in order) give the files that one process gives, and in them exactly the
    # examples of records.log_records, chunk by chunk, day by day.
    from lt4rec.logs import world as world_lib

    monkeypatch.setattr(generator, "CHUNK_ROWS", 700)
    rows, rows_per_file = 3000, 600
    outputs = [str(tmp_path / f"workers-{workers}") for workers in (1, 2)]
    for out, workers in zip(outputs, (1, 2)):
        manifest = generator.generate(out, rows=rows, days=2, seed=5, rows_per_file=rows_per_file, workers=workers)
    files = sorted(
        os.path.relpath(os.path.join(d, f), outputs[0]) for d, _, names in os.walk(outputs[0]) for f in names
    )
    for name in files:
        with open(os.path.join(outputs[0], name), "rb") as one, open(os.path.join(outputs[1], name), "rb") as two:
            assert one.read() == two.read(), name

    world = world_lib.World(world_lib.world_config("sample", rows=rows, days=2, seed=5))
    expected: dict[str, list] = {}
    for impressions in generator._chunks(world, rows):
        for i, record in enumerate(records.log_records(world, impressions)):
            expected.setdefault(records.day_folder(int(impressions.time_ms[i])), []).append(record)
    assert manifest["counts"]["examples_per_day"] == {day: len(day_records) for day, day_records in expected.items()}
    for day, day_records in expected.items():
        parts = [day_records[start : start + rows_per_file] for start in range(0, len(day_records), rows_per_file)]
        assert sorted(name for name in files if name.startswith(day + os.sep + "part-")) == [
            os.path.join(day, f"part-{part:05d}.gz") for part in range(len(parts))
        ]
        for part, part_records in enumerate(parts):
            examples = read_examples(os.path.join(outputs[0], day, f"part-{part:05d}.gz"))
            assert examples == [records.to_example(record) for record in part_records], (day, part)


def test_manifest_records_the_catalogue(tmp_path):
    manifest = generator.generate(str(tmp_path), rows=600, days=1, seed=3, catalogue="paper")
    with open(os.path.join(str(tmp_path), generator.MANIFEST)) as handle:
        assert json.load(handle) == manifest
    assert manifest["catalogue"] == "paper"
    settings = manifest["world_settings"]
    assert settings["catalogue"] == "paper" and settings["impressions_per_user"] == pytest.approx(29.7)
    assert manifest["world"]["users"] == round(600 / 29.7) or manifest["world"]["users"] == 20  # at least 20 users
    assert (
        generator.generate(str(tmp_path / "s"), rows=600, days=1, seed=3)["world_settings"]["impressions_per_user"]
        == 6.5
    )


def test_cli_catalogue_choices_are_the_worlds():
    from lt4rec import cli
    from lt4rec.logs import world as world_lib

    option = next(param for param in cli.generate.params if param.name == "catalogue")
    assert set(option.type.choices) == set(world_lib.CATALOGUES) and option.default == "sample"
