"""`lt4rec batch-score`: the Beam job's scores equal the serving path's, and nothing is dropped silently."""

from __future__ import annotations

import glob
import gzip
import json
import os
import subprocess

import pytest

from tests.helpers import LT4REC, write_examples

pytestmark = pytest.mark.e2e


A, B, C = 1.0, 0.5, 0.2  # rankscore exponents, not all 1, so that each one is checked


def _read_jsonl(pattern: str) -> list[dict]:
    return [json.loads(line) for path in sorted(glob.glob(pattern)) for line in open(path, encoding="utf-8")]


def test_latest_version_skips_dot_folders(tmp_path):
    from lt4rec.errors import DataError
    from lt4rec.serving import batch_scoring

    for name in ("1", "2", "10", ".11", "notes"):
        os.makedirs(tmp_path / "ctr" / name)
        (tmp_path / "ctr" / name / "saved_model.pb").write_bytes(b"")
    path, version = batch_scoring.model_version_path(str(tmp_path), "ctr")
    assert (path, version) == (str(tmp_path / "ctr" / "10"), 10)
    assert batch_scoring.model_version_path(str(tmp_path), "ctr", 2)[1] == 2
    with pytest.raises(DataError, match="no cvr model versions"):
        batch_scoring.model_version_path(str(tmp_path), "cvr")


def test_batch_score_matches_serving(served_models, tmp_path):
    import numpy as np
    import tensorflow as tf

    from lt4rec import features

    raw = served_models.raw_examples
    assert len(raw) >= 300
    no_duration = tf.train.Example.FromString(raw[0])
    del no_duration.features.feature[features.DURATION_FEATURE]
    placeholder_duration = tf.train.Example.FromString(raw[1])
    placeholder_duration.features.feature[features.DURATION_FEATURE].bytes_list.value[:] = [b"-1"]
    good = [tf.train.Example.FromString(record) for record in raw[2:200]]

    day = tmp_path / "logs" / "20201013"
    day.mkdir(parents=True)
    write_examples(str(day / "part-00000.gz"), good[:100] + [no_duration] + good[100:] + [placeholder_duration])
    # A record that is not a tf.Example, in an otherwise valid file.
    with tf.io.TFRecordWriter(str(day / "part-00001.gz"), tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        writer.write(raw[200])
        writer.write(b"\x0a\x10not enough")  # a field longer than the record
        writer.write(raw[201])
    # A file cut short: the records before the cut are scored, the rest is one rejection.
    write_examples(str(day / "part-00002.gz"), [tf.train.Example.FromString(r) for r in raw[202:302]])
    whole = (day / "part-00002.gz").read_bytes()
    (day / "part-00002.gz").write_bytes(whole[: len(whole) // 2])
    # Not logs: skipped by name.
    (day / "_truth-part-00000.csv.gz").write_bytes(gzip.compress(b"not,a,log\n"))
    (day / ".part-00003.gz.crc").write_bytes(b"garbage")

    out = tmp_path / "scores"
    done = subprocess.run(
        [
            LT4REC,
            "batch-score",
            "--examples",
            str(tmp_path / "logs" / "*" / "*"),
            "--serving-dir",
            served_models.base_path,
            "--out",
            str(out),
            "--ctr-exponent",
            str(A),
            "--cvr-exponent",
            str(B),
            "--length-exponent",
            str(C),
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    assert "records read" in done.stdout

    rows = _read_jsonl(str(out / "scores-*.jsonl"))
    rejected = _read_jsonl(str(out / "_rejected-*.jsonl"))
    counters = json.loads((out / "_counters.json").read_text())

    # Accounting: read = scored + rejected, and the files say the same as the counters.
    rejected_counts = {name.split("/", 1)[1]: n for name, n in counters.items() if name.startswith("rejected/")}
    assert counters["records_read"] == counters["scored"] + sum(rejected_counts.values())
    assert counters["scored"] == len(rows)
    assert sum(rejected_counts.values()) == len(rejected)
    assert rejected_counts == {"missing_duration": 2, "not_a_tf_example": 1, "corrupt_file": 1}
    by_reason = {}
    for rejection in rejected:
        by_reason.setdefault(rejection["reason"], []).append(rejection)
    assert sorted((r["file"].endswith("part-00000.gz"), r["record"]) for r in by_reason["missing_duration"]) == [
        (True, 100),
        (True, 199),
    ]
    assert all(r["field"] == "FEA_DURATION" and r["detail"] for r in by_reason["missing_duration"])
    (not_example,) = by_reason["not_a_tf_example"]
    assert not_example["file"].endswith("part-00001.gz") and not_example["record"] == 1
    (corrupt,) = by_reason["corrupt_file"]
    assert corrupt["file"].endswith("part-00002.gz") and "breaks off" in corrupt["detail"]
    cut_records = corrupt["record"]  # records read from the cut file before the break
    assert 0 < cut_records < 100
    assert len(rows) == 198 + 2 + cut_records
    assert not any("_truth" in row["file"] or ".crc" in row["file"] for row in rows + rejected)

    # Scores: what the served models' serving_default gives for the same serialized examples.
    serialized = {
        ("part-00000.gz", i): example.SerializeToString()
        for i, example in enumerate(good[:100] + [no_duration] + good[100:] + [placeholder_duration])
    }
    serialized.update({("part-00001.gz", 0): raw[200], ("part-00001.gz", 2): raw[201]})
    serialized.update(
        {("part-00002.gz", i): tf.train.Example.FromString(raw[202 + i]).SerializeToString() for i in range(100)}
    )
    keys = [(os.path.basename(row["file"]), row["record"]) for row in rows]
    assert len(set(keys)) == len(keys)
    inputs = tf.constant([serialized[key] for key in keys])
    expected = {}
    for task in ("ctr", "cvr"):
        model = tf.saved_model.load(os.path.join(served_models.base_path, task, "1"))
        expected[task] = model.signatures["serving_default"](examples=inputs)[task].numpy()
    np.testing.assert_allclose([row["pctr"] for row in rows], expected["ctr"], atol=1e-5, rtol=0)
    np.testing.assert_allclose([row["pcvr"] for row in rows], expected["cvr"], atol=1e-5, rtol=0)

    # Identity, labels and rankscore by hand, from each row's own example.
    for row, key in zip(rows, keys):
        example = tf.train.Example.FromString(serialized[key])
        feature = example.features.feature
        assert row["request_id"] == feature["seqnum"].bytes_list.value[0].decode()
        assert row["video_id"] == feature["FEA_VID"].bytes_list.value[0].decode()
        assert row["label"] == feature["label"].int64_list.value[0]
        assert row["cvrlabel"] == pytest.approx(feature["cvrlabel"].float_list.value[0])
        length = features.bucket_seconds(int(feature["FEA_DURATION"].bytes_list.value[0]))
        assert row["video_length"] == pytest.approx(length)
        assert row["rankscore"] == pytest.approx(row["pctr"] ** A * row["pcvr"] ** B * length**C, rel=1e-9)


def test_batch_score_with_the_rank_model_scores_both_tasks_in_one_pass(served_models, tmp_path):
    import numpy as np
    import tensorflow as tf

    from lt4rec.models import export
    from lt4rec.serving import batch_scoring, client

    serving_dir = tmp_path / "serving"
    for task in ("ctr", "cvr"):
        os.makedirs(serving_dir / task)
        os.symlink(os.path.join(served_models.base_path, task, "1"), serving_dir / task / "1")
    export.export_rank_model(served_models.model, served_models.transform_output, str(serving_dir / "rank" / "3"))
    chosen = batch_scoring.find_models(str(serving_dir))
    assert dict(chosen.versions) == {"rank": 3}
    assert dict(batch_scoring.find_models(str(serving_dir), task_models=True).versions) == {"ctr": 1, "cvr": 1}
    assert dict(batch_scoring.find_models(str(serving_dir), cvr_version=1).versions) == {"ctr": 1, "cvr": 1}
    with pytest.raises(ValueError, match="not both"):
        batch_scoring.find_models(str(serving_dir), ctr_version=1, rank_version=3)

    raw = served_models.raw_examples[:150]
    day = tmp_path / "logs" / "20201013"
    day.mkdir(parents=True)
    write_examples(str(day / "part-00000.gz"), [tf.train.Example.FromString(record) for record in raw])
    counters = batch_scoring.run(
        str(day / "*"), str(serving_dir), str(tmp_path / "scores"), weights=client.RankWeights(A, B, C)
    )
    rows = sorted(_read_jsonl(str(tmp_path / "scores" / "scores-*.jsonl")), key=lambda row: row["record"])
    rejected = sum(n for name, n in counters.items() if name.startswith("rejected/"))
    assert counters["records_read"] == 150 == len(rows) + rejected
    kept = [raw[row["record"]] for row in rows]
    np.testing.assert_allclose([row["pctr"] for row in rows], served_models.expected("ctr", kept), atol=1e-5, rtol=0)
    np.testing.assert_allclose([row["pcvr"] for row in rows], served_models.expected("cvr", kept), atol=1e-5, rtol=0)
    for row in rows:
        assert row["rankscore"] == pytest.approx(
            row["pctr"] ** A * row["pcvr"] ** B * row["video_length"] ** C, rel=1e-9
        )
