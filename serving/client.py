"""A client of TF Serving's gRPC PredictionService that ranks one request's candidates.

It sends the candidates as serialized `tf.Example`s in the raw log format to the `ctr`
and `cvr` models' `serving_default` signatures (both at once), and ranks them by

    rankscore = pCTR^a * pCVR^b * video_length^c

Only Predict and GetModelMetadata are used, so it works the same against
`tensorflow_model_server` and against `lt4rec serve`. The video length comes from the
candidate's `FEA_DURATION` bucket (`features.bucket_seconds`), since the logs carry no
seconds.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterable, Iterator, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from lt4rec.models import export, features

DEFAULT_SIGNATURE = "serving_default"
MAX_MESSAGE_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class RankWeights:
    """The exponents a, b, c of rankscore = pCTR^a * pCVR^b * video_length^c."""

    ctr: float = 1.0
    cvr: float = 1.0
    length: float = 1.0


@dataclasses.dataclass(frozen=True)
class ScoredCandidate:
    video: str
    pctr: float
    pcvr: float
    video_length: float  # seconds
    rankscore: float


def rankscore(pctr: np.ndarray, pcvr: np.ndarray, video_length: np.ndarray, weights: RankWeights) -> np.ndarray:
    return np.power(pctr, weights.ctr) * np.power(pcvr, weights.cvr) * np.power(video_length, weights.length)


def _single_value(example: tf.train.Example, name: str) -> bytes:
    values = example.features.feature[name].bytes_list.value
    if len(values) != 1:
        raise ValueError(f"candidate has {len(values)} values of {name}, not 1")
    return values[0]


def video_length_seconds(example: tf.train.Example) -> float:
    bucket = _single_value(example, features.DURATION_FEATURE).decode()
    if bucket == features.MISSING_VALUE:
        raise ValueError(f"candidate {_single_value(example, 'FEA_VID').decode()!r} has no {features.DURATION_FEATURE}")
    return features.bucket_seconds(int(bucket))


class RankingClient:
    """Scores with the CTR and CVR models of one TF Serving endpoint (`host:port`)."""

    def __init__(self, target: str, timeout: float = 10.0, ctr_model: str = "ctr", cvr_model: str = "cvr"):
        self.target = target
        self.timeout = timeout
        self.models = {"ctr": ctr_model, "cvr": cvr_model}
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        self.channel = grpc.insecure_channel(target, options=options)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RankingClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @staticmethod
    def predict_request(model: str, examples: Sequence[bytes], version: int | None = None) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = DEFAULT_SIGNATURE
        if version is not None:
            request.model_spec.version.value = version
        request.inputs[export.EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto(list(examples), dtype=tf.string))
        return request

    @staticmethod
    def scores(response: predict_pb2.PredictResponse) -> np.ndarray:
        """The response's one output (the model's score), as float [batch]."""
        if len(response.outputs) != 1:
            raise ValueError(f"expected one output from {response.model_spec.name}, got {sorted(response.outputs)}")
        (output,) = response.outputs.values()
        return tf.make_ndarray(output)

    def predict(self, model: str, examples: Sequence[bytes], version: int | None = None) -> tuple[np.ndarray, int]:
        """Scores of `examples` by one model, and the version that scored them."""
        response = self.stub.Predict(self.predict_request(model, examples, version), timeout=self.timeout)
        return self.scores(response), response.model_spec.version.value

    def metadata(self, model: str, version: int | None = None) -> get_model_metadata_pb2.SignatureDefMap:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        response = self.stub.GetModelMetadata(request, timeout=self.timeout)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return signatures

    def rank(self, candidates: Sequence[tf.train.Example], weights: RankWeights = RankWeights()) -> list[ScoredCandidate]:
        """The candidates of one request, best first; both models score them concurrently."""
        if not candidates:
            raise ValueError("no candidates to rank")
        serialized = [candidate.SerializeToString() for candidate in candidates]
        futures = {
            task: self.stub.Predict.future(self.predict_request(model, serialized), timeout=self.timeout)
            for task, model in self.models.items()
        }
        pctr, pcvr = (self.scores(futures[task].result()) for task in ("ctr", "cvr"))
        lengths = np.array([video_length_seconds(candidate) for candidate in candidates])
        scores = rankscore(pctr, pcvr, lengths, weights)
        ranked = [
            ScoredCandidate(_single_value(candidate, "FEA_VID").decode(), float(ctr), float(cvr), float(length), float(score))
            for candidate, ctr, cvr, length, score in zip(candidates, pctr, pcvr, lengths, scores)
        ]
        return sorted(ranked, key=lambda candidate: -candidate.rankscore)


def read_requests(pattern: str) -> Iterator[tuple[str, list[tf.train.Example]]]:
    """(request id, its impressions) from GZIP TFRecord logs, in order of first appearance.

    Files whose names start with `_` or `.` are not logs (truth files, markers), as in the pipeline.
    """
    files = sorted(path for path in glob.glob(pattern) if not os.path.basename(path).startswith(("_", ".")))
    if not files:
        raise FileNotFoundError(f"no log files match {pattern}")
    requests: dict[str, list[tf.train.Example]] = {}
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        example = tf.train.Example.FromString(record)
        requests.setdefault(_single_value(example, features.REQUEST_ID).decode(), []).append(example)
    yield from requests.items()


def find_request(requests: Iterable[tuple[str, list[tf.train.Example]]], request_id: str | None) -> tuple[str, list[tf.train.Example]]:
    """The request with `request_id`, or the first one."""
    for found_id, examples in requests:
        if request_id is None or found_id == request_id:
            return found_id, examples
    raise KeyError(f"no request {request_id!r} in the logs" if request_id else "the logs hold no request")
