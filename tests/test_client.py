"""The ranking client: requests it builds, rankscore, video lengths, requests from logs."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from lt4rec.models import features
from lt4rec.serving import client


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


def test_predict_request_carries_serialized_examples_for_serving_default():
    request = client.RankingClient.predict_request("ctr", [b"a", b"bc"], version=3)
    assert (request.model_spec.name, request.model_spec.signature_name, request.model_spec.version.value) == ("ctr", "serving_default", 3)
    assert tf.make_ndarray(request.inputs["examples"]).tolist() == [b"a", b"bc"]
    assert not client.RankingClient.predict_request("cvr", [b"a"]).model_spec.HasField("version")


def test_requests_from_logs_group_impressions_by_seqnum(tiny_logs):
    pattern = os.path.join(tiny_logs, "20201013", "*.gz")
    requests = dict(client.read_requests(pattern))
    rows = sum(1 for path in glob.glob(pattern) if "/part-" in path for _ in tf.data.TFRecordDataset(path, compression_type="GZIP"))
    assert sum(len(examples) for examples in requests.values()) == rows
    request_id, examples = client.find_request(client.read_requests(pattern), None)
    assert all(e.features.feature[features.REQUEST_ID].bytes_list.value[0].decode() == request_id for e in examples)
    assert all(client.video_length_seconds(e) > 0 for e in examples)
    with pytest.raises(KeyError, match="no request 'nope'"):
        client.find_request(client.read_requests(pattern), "nope")
    with pytest.raises(FileNotFoundError, match="no log files match"):
        list(client.read_requests(os.path.join(tiny_logs, "19990101", "*.gz")))
