"""`lt4rec serve`: TF Serving's PredictionService over the exported models, through the real stubs."""

from __future__ import annotations

import base64
import collections
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import weakref

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from lt4rec import errors
from lt4rec.serving import server as serving_server
from lt4rec.serving import servicer
from lt4rec.serving.registry import ModelRegistry
from tests.helpers import LT4REC

pytestmark = pytest.mark.e2e


TASKS = ("ctr", "cvr")
BATCH = 64


@pytest.fixture(scope="module")
def running(served_models):
    """A server in this process on the fixture's models (read only), with its REST API: (server, gRPC port)."""
    server, port = serving_server.start_server(served_models.base_path, max_batch_size=500, rest_api_port=0)
    yield server, port
    server.stop(grace=1.0)


@pytest.fixture(scope="module")
def stub(running):
    channel = grpc.insecure_channel(f"localhost:{running[1]}")
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def predict_request(
    model: str, examples: list[bytes], version: int | None = None, signature: str = ""
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(examples, dtype=tf.string))
    return request


def metadata(
    stub, model: str
) -> tuple[get_model_metadata_pb2.GetModelMetadataResponse, get_model_metadata_pb2.SignatureDefMap]:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model
    response = stub.GetModelMetadata(request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    return response, signatures


def test_predict_serving_default_scores_as_the_trained_network(stub, served_models):
    raw = served_models.raw_examples[:BATCH]
    for task in TASKS:
        response = stub.Predict(predict_request(task, raw), timeout=10)
        assert (response.model_spec.name, response.model_spec.version.value) == (task, 1)
        assert response.model_spec.signature_name == "serving_default"  # "" resolves to the default, as in TF Serving
        assert list(response.outputs) == [task]
        assert len(response.outputs[task].float_val) == BATCH  # typed field, as TF Serving writes it
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs[task]), served_models.expected(task, raw), atol=1e-5
        )


def test_predict_serving_raw_takes_named_string_tensors(stub, served_models):
    raw = served_models.raw_examples[:BATCH]
    examples = [tf.train.Example.FromString(record) for record in raw]
    _, signatures = metadata(stub, "ctr")
    for task in TASKS:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = task
        request.model_spec.signature_name = "serving_raw"
        for name, info in signatures.signature_def["serving_raw"].inputs.items():
            width = info.tensor_shape.dim[1].size
            rows = []
            for example in examples:
                values = list(example.features.feature[name].bytes_list.value)
                assert len(values) <= width
                rows.append(values + [b""] * (width - len(values)))  # "" pads, as serving_raw expects
            request.inputs[name].CopyFrom(tf.make_tensor_proto(rows, dtype=tf.string))
        response = stub.Predict(request, timeout=10)
        assert response.model_spec.signature_name == "serving_raw"
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs[task]), served_models.expected(task, raw), atol=1e-5
        )


def test_metadata_describes_every_signature(stub):
    for task in TASKS:
        response, signatures = metadata(stub, task)
        assert (response.model_spec.name, response.model_spec.version.value) == (task, 1)
        assert set(signatures.signature_def) == {"serving_default", "serving_raw", "serving_context"}
        context = signatures.signature_def["serving_context"]
        assert {name: [dim.size for dim in info.tensor_shape.dim] for name, info in context.inputs.items()} == {
            "context": [],
            "examples": [-1],
        }
        default = signatures.signature_def["serving_default"]
        assert default.method_name == "tensorflow/serving/predict"
        assert list(default.inputs) == ["examples"] and list(default.outputs) == [task]
        assert default.inputs["examples"].dtype == tf.string.as_datatype_enum
        assert [dim.size for dim in default.inputs["examples"].tensor_shape.dim] == [-1]
        assert default.outputs[task].dtype == tf.float32.as_datatype_enum
        assert [dim.size for dim in default.outputs[task].tensor_shape.dim] == [-1]
        assert default.inputs["examples"].name == "serving_default_examples:0"  # the SavedModel's own tensor name
        raw = signatures.signature_def["serving_raw"]
        assert raw.inputs and all(name.startswith("FEA_") for name in raw.inputs) and list(raw.outputs) == [task]
        assert all(
            info.dtype == tf.string.as_datatype_enum
            and len(info.tensor_shape.dim) == 2
            and info.tensor_shape.dim[0].size == -1
            for info in raw.inputs.values()
        )


def test_regress_and_classify_agree_with_predict(stub, served_models):
    raw = served_models.raw_examples[:BATCH]
    examples = [tf.train.Example.FromString(record) for record in raw]
    for task in TASKS:
        predicted = tf.make_ndarray(stub.Predict(predict_request(task, raw), timeout=10).outputs[task])

        regression = regression_pb2.RegressionRequest()
        regression.model_spec.name = task
        regression.input.example_list.examples.extend(examples)
        response = stub.Regress(regression, timeout=10)
        assert (response.model_spec.name, response.model_spec.version.value, response.model_spec.signature_name) == (
            task,
            1,
            "serving_default",
        )
        np.testing.assert_allclose([r.value for r in response.result.regressions], predicted, atol=1e-6)

        classification = classification_pb2.ClassificationRequest()
        classification.model_spec.name = task
        classification.input.example_list.examples.extend(examples)
        result = stub.Classify(classification, timeout=10).result
        assert [[c.label for c in classes.classes] for classes in result.classifications] == [["0", "1"]] * BATCH
        np.testing.assert_allclose(
            [classes.classes[1].score for classes in result.classifications], predicted, atol=1e-6
        )
        np.testing.assert_allclose(
            [classes.classes[0].score for classes in result.classifications], 1 - predicted, atol=1e-6
        )


def test_regress_merges_the_context_into_every_example(stub, served_models):
    raw = served_models.raw_examples[:BATCH]
    examples = [tf.train.Example.FromString(record) for record in raw]
    shared = examples[0].features.feature["FEA_AGE"]
    with_age = []  # what the merge must give: every example with the context's FEA_AGE
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "ctr"
    context = request.input.example_list_with_context.context
    context.features.feature["FEA_AGE"].CopyFrom(shared)
    context.features.feature["FEA_VID"].bytes_list.value.append(b"from-the-context")  # the example's own value wins
    for example in examples:
        without = tf.train.Example()
        without.CopyFrom(example)
        del without.features.feature["FEA_AGE"]
        request.input.example_list_with_context.examples.append(without)
        merged = tf.train.Example()
        merged.CopyFrom(example)
        merged.features.feature["FEA_AGE"].CopyFrom(shared)
        with_age.append(merged.SerializeToString())
    response = stub.Regress(request, timeout=10)
    np.testing.assert_allclose(
        [r.value for r in response.result.regressions], served_models.expected("ctr", with_age), atol=1e-5
    )


def test_bad_requests_get_telling_errors_and_serving_goes_on(stub, served_models):
    raw = served_models.raw_examples[:4]
    good = predict_request("ctr", raw)

    def with_input(tensor: tf.Tensor | None = None, **extra) -> predict_pb2.PredictRequest:
        request = predict_request("ctr", raw)
        if tensor is not None:
            request.inputs["examples"].CopyFrom(tf.make_tensor_proto(tensor))
        for name, value in extra.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        return request

    def negative_dimension() -> predict_pb2.PredictRequest:
        request = predict_request("ctr", raw)
        request.inputs["examples"].tensor_shape.dim[0].size = -7
        return request

    missing = predict_request("ctr", raw)
    del missing.inputs["examples"]
    corrupt = list(raw[:2]) + [b"not a tf.Example"]
    cases = [
        (
            predict_request("nope", raw),
            grpc.StatusCode.NOT_FOUND,
            r"Servable not found for request: Latest\(nope\).*loaded models: ctr, cvr",
        ),
        (
            predict_request("ctr", raw, version=9),
            grpc.StatusCode.NOT_FOUND,
            r"Specific\(ctr, 9\).*version 9 .*loaded versions: \[1\]",
        ),
        (
            predict_request("ctr", raw, signature="nope"),
            grpc.StatusCode.FAILED_PRECONDITION,
            r'Serving signature key "nope" not found.*serving_default, serving_raw',
        ),
        (missing, grpc.StatusCode.INVALID_ARGUMENT, r"Missing but required: \{examples\}"),
        (with_input(extra=tf.constant([b"x"])), grpc.StatusCode.INVALID_ARGUMENT, r"Sent extra: \{extra\}"),
        (
            with_input(tf.constant([0.5, 0.7])),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"'examples' .* must be DT_STRING, got DT_FLOAT",
        ),
        (
            with_input(tf.constant([[b"a"], [b"b"]])),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"must have shape \[-1\], got \[2, 1\]",
        ),
        (negative_dimension(), grpc.StatusCode.INVALID_ARGUMENT, r"'examples' .* negative dimension: \[-7\]"),
        (
            with_input(tf.constant([raw[0]] * 501)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            r"501 rows, over .* max batch size of 500",
        ),
        (
            with_input(tf.constant(corrupt)),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"Could not parse example input, value: 'not a tf.Example'",
        ),
        (with_input(tf.constant([b"\xff\xfe\x00garbage"])), grpc.StatusCode.INVALID_ARGUMENT, r"corrupt"),
    ]
    label = predict_request("ctr", raw)
    label.model_spec.version_label = "stable"
    cases.append((label, grpc.StatusCode.INVALID_ARGUMENT, r"Unrecognized servable version label: stable"))
    filtered = predict_request("ctr", raw)
    filtered.output_filter.append("cvr")
    cases.append(
        (filtered, grpc.StatusCode.INVALID_ARGUMENT, r"output tensor alias not found in signature: cvr.*\{ctr\}")
    )
    expected = served_models.expected("ctr", raw)
    for request, code, message in cases:
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, timeout=10)
        assert raised.value.code() == code, raised.value.details()
        assert re.search(message, raised.value.details()), raised.value.details()
        np.testing.assert_allclose(tf.make_ndarray(stub.Predict(good, timeout=10).outputs["ctr"]), expected, atol=1e-5)

    empty = regression_pb2.RegressionRequest()
    empty.model_spec.name = "cvr"
    raw_signature = regression_pb2.RegressionRequest()
    raw_signature.model_spec.name = "cvr"
    raw_signature.model_spec.signature_name = "serving_raw"
    raw_signature.input.example_list.examples.add()
    for request, code, message in [
        (empty, grpc.StatusCode.INVALID_ARGUMENT, r"Input is empty"),
        (raw_signature, grpc.StatusCode.INVALID_ARGUMENT, r"Regress needs a signature with one DT_STRING.*serving_raw"),
    ]:
        with pytest.raises(grpc.RpcError) as raised:
            stub.Regress(request, timeout=10)
        assert raised.value.code() == code and re.search(message, raised.value.details()), raised.value.details()
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetModelMetadata(
            get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "ctr"}, metadata_field=["nope"])
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nope is not supported" in raised.value.details()


def test_an_empty_batch_gets_empty_outputs_as_from_tf_serving(stub):
    for task in TASKS:
        response = stub.Predict(predict_request(task, []), timeout=10)
        assert tf.make_ndarray(response.outputs[task]).shape == (0,)
        assert response.model_spec.version.value == 1


def test_get_model_status_answers_as_tf_serving(running):
    with grpc.insecure_channel(f"localhost:{running[1]}") as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        status = models.GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "ctr"}), timeout=10
        )
        (version,) = status.model_version_status
        assert (version.version, version.state, version.status.error_code) == (
            1,
            get_model_status_pb2.ModelVersionStatus.AVAILABLE,
            0,
        )
        for spec, message in [
            ({"name": "nope"}, "Could not find any versions of model nope"),
            ({"name": "ctr", "version": {"value": 9}}, "Could not find version 9 of model ctr"),
        ]:
            with pytest.raises(grpc.RpcError) as raised:
                models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec=spec), timeout=10)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND and raised.value.details() == message


def rest(running, method: str, path: str, body=None) -> tuple[int, dict]:
    """One call of the server's REST API: (HTTP status, JSON body)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(f"http://localhost:{running[0].rest_api_port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def raw_feature_rows(stub, served_models, raw: list[bytes]) -> dict[str, list[list[bytes]]]:
    """serving_raw's inputs for `raw`: each feature's values per example, padded with "" to the input's width."""
    _, signatures = metadata(stub, "ctr")
    examples = [tf.train.Example.FromString(record) for record in raw]
    rows = {}
    for name, info in signatures.signature_def["serving_raw"].inputs.items():
        width = info.tensor_shape.dim[1].size
        rows[name] = [
            list(e.features.feature[name].bytes_list.value)
            + [b""] * (width - len(e.features.feature[name].bytes_list.value))
            for e in examples
        ]
    return rows


def test_rest_api_answers_as_grpc_number_for_number(running, stub, served_models):
    raw = served_models.raw_examples[:16]
    b64 = [{"b64": base64.b64encode(record).decode("ascii")} for record in raw]
    rows = raw_feature_rows(stub, served_models, raw)
    for task in TASKS:
        scores = list(stub.Predict(predict_request(task, raw), timeout=10).outputs[task].float_val)
        assert rest(running, "POST", f"/v1/models/{task}:predict", {"instances": b64}) == (200, {"predictions": scores})
        columnar = {"signature_name": "serving_default", "inputs": {"examples": b64}}
        assert rest(running, "POST", f"/v1/models/{task}/versions/1:predict", columnar) == (200, {"outputs": scores})
        raw_request = predict_pb2.PredictRequest()
        raw_request.model_spec.name, raw_request.model_spec.signature_name = task, "serving_raw"
        for name, values in rows.items():
            raw_request.inputs[name].CopyFrom(tf.make_tensor_proto(values, dtype=tf.string))
        raw_scores = list(stub.Predict(raw_request, timeout=10).outputs[task].float_val)
        instances = [
            {name: [value.decode("utf-8") for value in values[i]] for name, values in rows.items()}
            for i in range(len(raw))
        ]
        assert rest(running, "POST", f"/v1/models/{task}:predict",
                    {"signature_name": "serving_raw", "instances": instances}) == (
            200, {"predictions": raw_scores})  # fmt: skip
        np.testing.assert_allclose(raw_scores, served_models.expected(task, raw), atol=1e-5)

    ok = {"error_code": "OK", "error_message": ""}
    assert rest(running, "GET", "/v1/models/ctr") == (
        200,
        {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": ok}]},
    )
    assert rest(running, "GET", "/v1/models/ctr/versions/1")[1] == rest(running, "GET", "/v1/models/ctr")[1]
    status, body = rest(running, "GET", "/v1/models/cvr/metadata")
    assert status == 200 and body["model_spec"] == {"name": "cvr", "version": "1"}
    assert set(body["metadata"]["signature_def"]["signature_def"]) == {
        "serving_default",
        "serving_raw",
        "serving_context",
    }
    assert rest(running, "POST", "/v1/models/ctr:predict", {"instances": []}) == (200, {"predictions": []})
    for method, path, body, code, message in [
        ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        ("POST", "/v1/models/nope:predict", {"instances": b64}, 404, "Servable not found for request: Latest(nope)"),
        ("POST", "/v1/models/ctr:predict", b"{not json", 400, "not JSON"),
        ("POST", "/v1/models/ctr:predict", {"instances": [0.5]}, 400, "expected strings"),
        ("POST", "/v1/models/ctr:predict", {"instances": [{"b64": "!!"}]}, 400, "not base64"),
        ("POST", "/v1/models/ctr:predict", {"instances": ["not a tf.Example"]}, 400, "Could not parse example input"),
        (
            "POST",
            "/v1/models/ctr:predict",
            {"signature_name": "nope", "instances": b64},
            400,
            'Serving signature key "nope" not found',
        ),
        ("GET", "/v2/elsewhere", None, 404, "Malformed request"),
    ]:
        answered = rest(running, method, path, body)
        assert answered[0] == code and message in answered[1]["error"], (path, answered)


def test_version_folders_with_leading_zeros_load_as_their_number(served_models, tmp_path):
    shutil.copytree(os.path.join(served_models.base_path, "ctr", "1"), tmp_path / "ctr" / "007")
    server, port = serving_server.start_server(str(tmp_path))
    try:
        assert server.registry.loaded() == {"ctr": [7]}
        with grpc.insecure_channel(f"localhost:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            raw = served_models.raw_examples[:4]
            response = stub.Predict(predict_request("ctr", raw, version=7), timeout=10)
        assert response.model_spec.version.value == 7
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs["ctr"]), served_models.expected("ctr", raw), atol=1e-5
        )
    finally:
        server.stop(grace=1.0)


def test_what_one_request_may_cost_is_bounded(served_models):
    server, port = serving_server.start_server(
        served_models.base_path, max_request_bytes=64 << 10, max_values_per_feature=100
    )
    raw = served_models.raw_examples[:4]
    example = tf.train.Example.FromString(raw[0])
    keywords = example.features.feature["FEA_IKEYWORD"].bytes_list.value
    keywords.extend([b"k"] * (101 - len(keywords)))
    try:
        with grpc.insecure_channel(f"localhost:{port}", options=[("grpc.max_send_message_length", 1 << 30)]) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            too_large = predict_request("ctr", [*raw, b"x" * (64 << 10)])
            cases = [
                (too_large, grpc.StatusCode.RESOURCE_EXHAUSTED, r"larger than max"),
                (predict_request("ctr", [raw[0], example.SerializeToString()]), grpc.StatusCode.INVALID_ARGUMENT,
                 r"example 1 of input 'examples' .* 101 values in feature 'FEA_IKEYWORD', over .* limit of 100"),
            ]  # fmt: skip
            for request, code, message in cases:
                with pytest.raises(grpc.RpcError) as raised:
                    stub.Predict(request, timeout=10)
                assert raised.value.code() == code and re.search(
                    message, raised.value.details()
                ), raised.value.details()
                assert stub.Predict(predict_request("ctr", raw), timeout=10).outputs["ctr"].float_val
    finally:
        server.stop(grace=1.0)


def test_unexpected_errors_are_internal_and_logged(stub, served_models, monkeypatch, caplog):
    def broken(*_args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(servicer, "as_proto_field", broken)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(predict_request("ctr", served_models.raw_examples[:2]), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details() == "Predict: internal error: RuntimeError: a bug"
    assert any(record.exc_info and "Predict failed unexpectedly" in record.getMessage() for record in caplog.records)
    monkeypatch.undo()
    assert stub.Predict(predict_request("ctr", served_models.raw_examples[:2]), timeout=10).outputs["ctr"].float_val


def send_until(
    stop: threading.Event, port: int, task: str, raw: list[bytes], expected, outcomes: list, pause: float = 0.0
) -> None:
    """Predicts `task` on `raw` until `stop`, appending each answer's version to `outcomes`, or
    what went wrong: the status code of a failed RPC, or any other error (a wrong score)."""
    with grpc.insecure_channel(f"localhost:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        while not stop.is_set():
            try:
                response = stub.Predict(predict_request(task, raw), timeout=30)
                np.testing.assert_allclose(tf.make_ndarray(response.outputs[task]), expected, atol=1e-5)
                outcomes.append(response.model_spec.version.value)
            except grpc.RpcError as error:
                outcomes.append(error.code().name)
            except Exception as error:  # noqa: BLE001 - a wrong score, or anything else: recorded, and fails the test
                outcomes.append(repr(error))
            time.sleep(pause)


def test_new_versions_load_without_failing_requests(served_models, tmp_path):
    base = str(tmp_path / "models")
    shutil.copytree(os.path.join(served_models.base_path, "ctr"), os.path.join(base, "ctr"))
    raw = served_models.raw_examples[:BATCH]
    expected = served_models.expected("ctr", raw)
    server, port = serving_server.start_server(base, poll_seconds=0.2)
    outcomes: list = []
    stop = threading.Event()

    def wait_until(condition, what: str, deadline_s: float = 60.0) -> None:
        start = time.monotonic()
        while not condition():
            assert time.monotonic() - start < deadline_s, f"{what} did not happen within {deadline_s} s"
            time.sleep(0.1)

    def wait_for_version(stub, version: int) -> None:
        wait_until(
            lambda: metadata(stub, "ctr")[0].model_spec.version.value == version, f"serving ctr version {version}"
        )

    # Continuous, but leaving the loads some of the 2 cores.
    sender = threading.Thread(target=send_until, args=(stop, port, "ctr", raw, expected, outcomes, 0.01))
    try:
        with grpc.insecure_channel(f"localhost:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            sender.start()
            one, two = os.path.join(base, "ctr", "1"), os.path.join(base, "ctr", "2")
            # Version 2 arrives in pieces: first without saved_model.pb (not loadable yet) ...
            shutil.copytree(one, two, ignore=shutil.ignore_patterns("saved_model.pb", "assets"))
            time.sleep(1.0)
            assert metadata(stub, "ctr")[0].model_spec.version.value == 1
            # ... then with saved_model.pb but without its vocabularies (the load fails) ...
            shutil.copy(os.path.join(one, "saved_model.pb"), two)
            wait_until(
                lambda: any("could not load ctr version 2" in problem for problem in server.registry.problems()),
                "the failed load of version 2",
            )
            assert metadata(stub, "ctr")[0].model_spec.version.value == 1
            # ... and complete (the vocabularies appear at once, by a rename): it loads, and replaces version 1.
            shutil.copytree(os.path.join(one, "assets"), str(tmp_path / "assets.tmp"))
            os.rename(str(tmp_path / "assets.tmp"), os.path.join(two, "assets"))
            wait_for_version(stub, 2)
            assert not server.registry.problems()
            assert stub.Predict(predict_request("ctr", raw, version=2), timeout=10).model_spec.version.value == 2
            with pytest.raises(grpc.RpcError) as raised:  # the policy keeps 1 version: version 1 is unloaded
                stub.Predict(predict_request("ctr", raw, version=1), timeout=10)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
            # A version removed from disk is unloaded once the remaining one is loaded again.
            shutil.rmtree(os.path.join(base, "ctr", "2"))
            wait_for_version(stub, 1)
            time.sleep(0.3)
    finally:
        stop.set()
        sender.join()
        server.stop(grace=1.0)
    answered = [outcome for outcome in outcomes if isinstance(outcome, int)]
    failures = [outcome for outcome in outcomes if not isinstance(outcome, int)]
    assert not failures, failures[:3]
    assert 1 in answered and 2 in answered and answered[-1] == 1
    assert server.registry.loaded() == {"ctr": [1]}


def test_replaced_versions_are_freed_by_the_poll_that_unloads_them(served_models, tmp_path):
    """A loaded SavedModel sits in reference cycles: without a full collection its memory
    stays until Python happens to run one (it may never, on an idle server)."""
    base = tmp_path / "models"
    for task in TASKS:
        shutil.copytree(os.path.join(served_models.base_path, task, "1"), base / task / "1")
    registry = ModelRegistry(str(base))
    registry.poll()
    # A function graph of each loaded version: in the cycles (the loaded object itself is not).
    first = {
        task: weakref.ref(
            registry.get(model_pb2.ModelSpec(name=task)).signatures[servicer.DEFAULT_SIGNATURE].function.graph
        )
        for task in TASKS
    }
    for task in TASKS:
        shutil.copytree(base / task / "1", base / task / "2")
    gc.disable()  # no automatic collection to count on: the poll's own must free them
    try:
        registry.poll()
    finally:
        gc.enable()
    assert registry.loaded() == {task: [2] for task in TASKS}
    assert [task for task, graph in first.items() if graph() is not None] == []


def test_start_fails_clearly_without_loadable_models(tmp_path):
    with pytest.raises(errors.DataError, match="does not exist"):
        serving_server.start_server(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "base" / "ctr" / "1")
    with pytest.raises(errors.DataError, match=r"no loadable model under .*ctr version 1: no saved_model.pb"):
        serving_server.start_server(str(tmp_path / "base"))


def test_lt4rec_serve_drains_on_sigterm_under_load(served_models):
    process = subprocess.Popen(
        [
            LT4REC,
            "serve",
            "--model-base-path",
            served_models.base_path,
            "--port",
            "0",
            "--poll-seconds",
            "1",
            "--workers",
            "2",
            "--tensorflow-intra-op-parallelism",
            "2",
            "--tensorflow-inter-op-parallelism",
            "3",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines: list[str] = []
        port = None
        for line in process.stderr:  # the log says which port port 0 became
            lines.append(line)
            found = re.search(r"serving PredictionService on port (\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "".join(lines)
        assert any("TensorFlow threads: 2 per op, 3 ops at once" in line for line in lines), "".join(lines)
        # What the process's start made is frozen out of garbage collection before any model
        # loads: a frozen model could never be freed when a new version replaces it.
        frozen = next(i for i, line in enumerate(lines) if "of the process's start frozen" in line)
        assert frozen < next(i for i, line in enumerate(lines) if re.search(r"loaded \w+ version", line))
        raw = served_models.raw_examples[:BATCH]
        expected = served_models.expected("cvr", raw)
        signalled = threading.Event()
        sent_before: list = []  # the outcome of every request sent before the signal

        # 16 clients on 2 worker threads: most requests wait in gRPC's queue at the signal.
        senders = [
            threading.Thread(target=send_until, args=(signalled, port, "cvr", raw, expected, sent_before))
            for _ in range(16)
        ]
        for sender in senders:
            sender.start()
        time.sleep(3.0)
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        signalled.set()  # what a sender sends after this is not counted (the loop ends)
        for sender in senders:
            sender.join()
        _, log = process.communicate(timeout=20)
        assert process.returncode == 0, log
        assert time.monotonic() - start < 5.0 + 2.0  # the grace, and the process's exit
        # all answered by version 1
        assert len(sent_before) > 16 and set(sent_before) == {1}, collections.Counter(sent_before)
        assert "SIGTERM received" in log and "drained in" in log and "stopped serving" in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_version_whose_warm_up_request_fails_does_not_load(served_models, tmp_path):
    """As in TF Serving: a warm-up request that fails fails the version, named with the file and
    request; a version without the file still loads (warmed up on empty batches)."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from lt4rec.serving import registry

    broken = tmp_path / "broken"
    shutil.copytree(os.path.join(served_models.base_path, "ctr", "1"), broken)
    warmup_file = broken / "assets.extra" / "tf_serving_warmup_requests"

    def write_warmup(alias: str, examples: list[bytes]) -> None:
        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = "serving_default"
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(examples))
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        with tf.io.TFRecordWriter(str(warmup_file)) as writer:
            writer.write(log.SerializeToString())

    write_warmup("examples", [*served_models.raw_examples[:3], b"not a tf.Example"])
    with pytest.raises(ValueError, match=r"warmup_requests: request 0 to signature 'serving_default' failed"):
        registry.load_servable("ctr", 1, str(broken))
    write_warmup("rows", served_models.raw_examples[:3])
    with pytest.raises(ValueError, match=r"request 0 does not match a signature: 'serving_default' with inputs"):
        registry.load_servable("ctr", 1, str(broken))

    os.remove(warmup_file)
    servable = registry.load_servable("ctr", 1, str(broken))
    raw = served_models.raw_examples[:4]
    scores = servable.signatures["serving_default"].function(examples=tf.constant(raw))["ctr"].numpy()
    np.testing.assert_allclose(scores, served_models.expected("ctr", raw), atol=1e-5)
