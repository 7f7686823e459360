"""The ranking client: requests it builds, rankscore, video lengths, requests from logs."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from lt4rec import features
from lt4rec.serving import client

pytestmark = pytest.mark.e2e


def test_rankscore_is_the_weighted_product():
    pctr, pcvr, length = np.array([0.5, 0.2]), np.array([0.8, 0.9]), np.array([60.0, 600.0])
    np.testing.assert_allclose(client.rankscore(pctr, pcvr, length, client.RankWeights()), pctr * pcvr * length)
    weights = client.RankWeights(ctr=2.0, cvr=0.5, length=0.0)
    np.testing.assert_allclose(client.rankscore(pctr, pcvr, length, weights), pctr**2 * np.sqrt(pcvr))


def test_duration_buckets_stand_for_lengths_inside_them():
    edges = features.DURATION_BUCKET_EDGES_SECONDS
    assert features.bucket_seconds(0) < edges[0] <= features.bucket_seconds(1) < edges[1]
    assert features.bucket_seconds(len(edges)) > edges[-1]
    with pytest.raises(ValueError, match="FEA_DURATION bucket 11"):
        features.bucket_seconds(len(edges) + 1)


def _candidate(video: str | None, duration: list[str]) -> tf.train.Example:
    example = tf.train.Example()
    if video is not None:
        example.features.feature["FEA_VID"].bytes_list.value.append(video.encode())
    example.features.feature["FEA_DURATION"].bytes_list.value.extend(value.encode() for value in duration)
    return example


def test_videos_and_lengths_read_each_candidates_id_and_bucket_midpoint():
    # Buckets 0, 3 and 10 of edges (15, 30, 60, 120, ..., 3600): 15 / 2, sqrt(60 * 120), 3600 * 1.5.
    videos, lengths = client.videos_and_lengths(
        [_candidate("v0", ["0"]), _candidate("v3", ["3"]), _candidate("v10", ["10"])]
    )
    assert videos == ["v0", "v3", "v10"]
    np.testing.assert_allclose(lengths, [7.5, np.sqrt(7200.0), 5400.0])


@pytest.mark.parametrize(
    "candidate, message",
    [
        (_candidate("v1", ["-1"]), "candidate 'v1' has no FEA_DURATION"),
        (_candidate("v1", ["11"]), "FEA_DURATION bucket 11 is not in"),
        (_candidate("v1", ["2", "3"]), "candidate has 2 values of FEA_DURATION"),
        (_candidate(None, ["2"]), "candidate has 0 values of FEA_VID"),
    ],
)
def test_videos_and_lengths_name_a_bad_candidates_field(candidate, message):
    with pytest.raises(ValueError, match=message):
        client.videos_and_lengths([_candidate("v0", ["0"]), candidate])


def test_predict_request_carries_serialized_examples_for_serving_default():
    request = client.RankingClient.predict_request("ctr", [b"a", b"bc"], version=3)
    assert (request.model_spec.name, request.model_spec.signature_name, request.model_spec.version.value) == (
        "ctr",
        "serving_default",
        3,
    )
    assert tf.make_ndarray(request.inputs["examples"]).tolist() == [b"a", b"bc"]
    assert not client.RankingClient.predict_request("cvr", [b"a"]).model_spec.HasField("version")


@pytest.mark.parametrize("values", [[b"\x00a" * 300, b"", b"\xff"], b"one context", []])
def test_string_tensors_are_tensorflows(values):
    assert client.string_tensor(values).SerializeToString() == (
        tf.make_tensor_proto(values, dtype=tf.string).SerializeToString()
    )
    assert tf.make_ndarray(client.string_tensor(values)).tolist() == values


def test_requests_from_logs_group_impressions_by_seqnum(tiny_logs):
    pattern = os.path.join(tiny_logs, "20201013", "*.gz")
    requests = dict(client.read_requests(pattern))
    rows = sum(
        1
        for path in glob.glob(pattern)
        if "/part-" in path
        for _ in tf.data.TFRecordDataset(path, compression_type="GZIP")
    )
    assert sum(len(examples) for examples in requests.values()) == rows
    request_id, examples = client.find_request(client.read_requests(pattern), None)
    assert all(e.features.feature[features.REQUEST_ID].bytes_list.value[0].decode() == request_id for e in examples)
    assert all(client.video_length_seconds(e) > 0 for e in examples)
    with pytest.raises(KeyError, match="no request 'nope'"):
        client.find_request(client.read_requests(pattern), "nope")
    with pytest.raises(FileNotFoundError, match="no log files match"):
        list(client.read_requests(os.path.join(tiny_logs, "19990101", "*.gz")))


@pytest.fixture(scope="module")
def served(served_models):
    from lt4rec.serving import server

    model_server, port = server.start_server(served_models.base_path, port=0, poll_seconds=60)
    yield served_models, f"localhost:{port}"
    model_server.stop(grace=1.0)


def test_ranking_through_the_server_scores_as_the_trained_network(served):
    served_models, target = served
    examples = [tf.train.Example.FromString(record) for record in served_models.raw_examples[:40]]
    with client.RankingClient(target) as ranking:
        ranked = ranking.rank(examples, client.RankWeights(ctr=1.0, cvr=2.0, length=0.5))
        ctr_scores, version = ranking.predict("ctr", served_models.raw_examples[:40])
        signatures = ranking.metadata("cvr").signature_def
    assert version == 1 and {"serving_default", "serving_raw"} <= set(signatures)
    np.testing.assert_allclose(ctr_scores, served_models.expected("ctr", served_models.raw_examples[:40]), atol=1e-5)
    pctr = served_models.expected("ctr", served_models.raw_examples[:40])
    pcvr = served_models.expected("cvr", served_models.raw_examples[:40])
    lengths = np.array([client.video_length_seconds(e) for e in examples])
    expected = pctr * pcvr**2 * np.sqrt(lengths)
    assert [c.rankscore for c in ranked] == pytest.approx(sorted(expected, reverse=True), rel=1e-4)
    assert [c.video for c in ranked] == [
        examples[i].features.feature["FEA_VID"].bytes_list.value[0].decode()
        for i in np.argsort(-expected, kind="stable")
    ]


def test_lt4rec_score_prints_the_ranking_and_names_grpc_errors(served, tiny_logs):
    import json
    import subprocess

    from tests.helpers import LT4REC

    _, target = served
    logs = os.path.join(tiny_logs, "20201013", "part-*.gz")
    done = subprocess.run(
        [LT4REC, "score", "--target", target, "--logs", logs, "--as-json"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    request_id, examples = client.find_request(client.read_requests(logs), None)
    assert len(rows) == len(examples) and all(row["request_id"] == request_id for row in rows)
    assert [row["rank"] for row in rows] == list(range(1, len(rows) + 1))
    assert all(a["rankscore"] >= b["rankscore"] for a, b in zip(rows, rows[1:]))
    for row in rows:
        assert row["rankscore"] == pytest.approx(row["pctr"] * row["pcvr"] * row["video_length"], rel=1e-5)

    missing = subprocess.run(
        [LT4REC, "score", "--target", target, "--logs", logs, "--request-id", "nope"], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "lt4rec: error: no request 'nope' in the logs" in missing.stderr
    unserved = subprocess.run(
        [LT4REC, "score", "--target", "localhost:1", "--logs", logs, "--timeout", "2"], capture_output=True, text=True
    )
    assert unserved.returncode == 1 and "lt4rec: error: localhost:1: UNAVAILABLE" in unserved.stderr, unserved.stderr[
        -500:
    ]


def _one_context(raw_examples: list[bytes], candidates: int) -> list[tf.train.Example]:
    """Log rows made one ranking request: the first row's context features on every candidate."""
    first = tf.train.Example.FromString(raw_examples[0])
    request = []
    for record in raw_examples[1 : 1 + candidates]:
        example = tf.train.Example.FromString(record)
        for name in features.CONTEXT_FEATURE_NAMES:
            example.features.feature[name].CopyFrom(first.features.feature[name])
        request.append(example)
    return request


def test_context_is_split_off_only_when_every_candidate_shares_it(served_models):
    request = _one_context(served_models.raw_examples, 5)
    context, stripped = client.split_context(request)
    assert set(context.features.feature) == set(features.CONTEXT_FEATURE_NAMES)
    for whole, candidate in zip(request, stripped):
        assert set(candidate.features.feature) == set(whole.features.feature) - set(features.CONTEXT_FEATURE_NAMES)
        assert all(
            candidate.features.feature[name] == whole.features.feature[name] for name in candidate.features.feature
        )
    request[3].features.feature["FEA_UCAT"].bytes_list.value.append(b"7")  # one candidate's user differs
    assert client.split_context(request) is None
    del request[3].features.feature["FEA_UCAT"]
    assert client.split_context(request) is None
    request = _one_context(served_models.raw_examples, 5)
    del request[0].features.feature["FEA_UCAT"]  # only the first lacks it
    assert client.split_context(request) is None
    assert all("FEA_UCAT" in candidate.features.feature for candidate in request[1:])  # nothing changed


class _Recorded:
    """A stub method that keeps each request it sends, called or as a future."""

    def __init__(self, method, sent: list):
        self.method, self.sent = method, sent

    def __call__(self, request, **kwargs):
        self.sent.append(request)
        return self.method(request, **kwargs)

    def future(self, request, **kwargs):
        self.sent.append(request)
        return self.method.future(request, **kwargs)


@pytest.fixture(scope="module")
def served_with_rank(served_models, tmp_path_factory):
    """The fixture's CTR and CVR models and the joint rank model, under one server."""
    import shutil

    from lt4rec.models import export
    from lt4rec.serving import server

    base = tmp_path_factory.mktemp("with_rank")
    for task in ("ctr", "cvr"):
        shutil.copytree(os.path.join(served_models.base_path, task), base / task)
    export.export_rank_model(served_models.model, served_models.transform_output, str(base / export.RANK_MODEL / "1"))
    model_server, port = server.start_server(str(base), port=0, poll_seconds=60)
    yield f"localhost:{port}"
    model_server.stop(grace=1.0)


@pytest.mark.parametrize("shared_context", [False, True])
def test_ranking_by_the_rank_model_in_one_call_scores_as_the_trained_network(
    served_models, served_with_rank, shared_context
):
    """One Predict to `rank` (with the context once when shared); the same ranking as the task models give."""
    raw = served_models.raw_examples
    examples = _one_context(raw, 40) if shared_context else [tf.train.Example.FromString(record) for record in raw[:40]]
    whole = [example.SerializeToString() for example in examples]
    weights = client.RankWeights(ctr=1.0, cvr=2.0, length=0.5)
    sent = []
    with client.RankingClient(served_with_rank) as ranking:
        ranking.stub.Predict = _Recorded(ranking.stub.Predict, sent)
        ranked = ranking.rank(examples, weights)
    assert [(request.model_spec.name, request.model_spec.signature_name) for request in sent] == [
        ("rank", "serving_context" if shared_context else "serving_default")
    ]
    pctr, pcvr = served_models.expected("ctr", whole), served_models.expected("cvr", whole)
    lengths = np.array([client.video_length_seconds(e) for e in examples])
    expected = client.rankscore(pctr, pcvr, lengths, weights)
    order = np.argsort(-expected, kind="stable")
    assert [c.rankscore for c in ranked] == pytest.approx(expected[order], rel=1e-4)
    assert [c.pctr for c in ranked] == pytest.approx(pctr[order], abs=1e-5)
    assert [c.pcvr for c in ranked] == pytest.approx(pcvr[order], abs=1e-5)
