"""Property: whatever a client sends, `lt4rec serve` answers with one of TF Serving's client
error codes (never INTERNAL or UNKNOWN, never a crash), and the next good request succeeds."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from lt4rec.serving import server as serving_server

pytestmark = pytest.mark.e2e


# What TF Serving answers a request it cannot serve with; the rest would be a server fault.
CLIENT_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def stub(served_models):
    server, port = serving_server.start_server(served_models.base_path, max_batch_size=64, max_values_per_feature=64)
    with grpc.insecure_channel(f"localhost:{port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    server.stop(grace=1.0)


@st.composite
def tensor_protos(draw, examples: list[bytes]) -> tensor_pb2.TensorProto:
    """Any TensorProto: any dtype enum, any dims (negative and mismatched too), any values."""
    # Near-valid often (a string vector, as the signature wants), so that the checks past the
    # first ones are reached too.
    string = st.just(types_pb2.DT_STRING)
    dtype = string | string | string | st.sampled_from(sorted(types_pb2.DataType.values())) | st.integers(-5, 500)
    proto = tensor_pb2.TensorProto(dtype=draw(dtype))
    if not draw(st.integers(0, 9)):
        proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(unknown_rank=True))
    else:
        size = st.integers(-2, 12) | st.integers(-10, 70)
        sizes = st.lists(size, min_size=1, max_size=1) | st.lists(size, max_size=3)
        for size in draw(sizes):
            proto.tensor_shape.dim.add(size=size)
    content = draw(st.sampled_from(["strings", "examples", "floats", "ints", "bytes", "none"]))
    count = st.integers(0, 12) | st.integers(0, 70)  # about as many values as the shape says, or not
    if content == "strings":
        proto.string_val.extend(draw(st.lists(st.binary(max_size=40), min_size=draw(count), max_size=70)))
    elif content == "examples":
        proto.string_val.extend([draw(st.sampled_from(examples) | st.binary(max_size=20)) for _ in range(draw(count))])
    elif content == "floats":
        proto.float_val.extend(draw(st.lists(st.floats(width=32), max_size=70)))
    elif content == "ints":
        proto.int64_val.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=70)))
    elif content == "bytes":
        proto.tensor_content = draw(st.binary(max_size=300))
    return proto


@st.composite
def requests(draw, examples: list[bytes]) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    if draw(st.integers(0, 9)):  # mostly with a model spec
        request.model_spec.name = draw(st.sampled_from(["ctr", "cvr", "ctr", "cvr", "nope", ""]))
        request.model_spec.signature_name = draw(st.sampled_from(["", "", "serving_default", "serving_raw", "nope"]))
        version = draw(st.none() | st.integers(-3, 3))
        if version is not None:
            request.model_spec.version.value = version
    aliases = st.just(["examples"]) | st.lists(
        st.sampled_from(["examples", "FEA_UID", "FEA_IKEYWORD", "other"]), max_size=3, unique=True
    )
    for alias in draw(aliases):
        request.inputs[alias].CopyFrom(draw(tensor_protos(examples)))
    request.output_filter.extend(draw(st.lists(st.sampled_from(["ctr", "cvr", "x"]), max_size=2)))
    return request


def test_any_request_gets_a_client_error_code_and_serving_goes_on(stub, served_models):
    examples = served_models.raw_examples[:8]
    good = predict_pb2.PredictRequest()
    good.model_spec.name = "ctr"
    good.inputs["examples"].CopyFrom(tf.make_tensor_proto(examples, dtype=tf.string))
    expected = served_models.expected("ctr", examples)

    @settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(requests(examples))
    def check(request: predict_pb2.PredictRequest) -> None:
        details = ""
        try:
            stub.Predict(request, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            details = error.details()
        assert code in CLIENT_CODES, (code, details, request)
        np.testing.assert_allclose(tf.make_ndarray(stub.Predict(good, timeout=30).outputs["ctr"]), expected, atol=1e-5)

    check()
