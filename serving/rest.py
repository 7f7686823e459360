"""TF Serving's REST API (what its `--rest_api_port` opens) over the gRPC servicers.

Each request becomes the gRPC request it stands for and is answered by the same servicer
code, so REST and gRPC answers agree number for number:

    GET  /v1/models/<name>[/versions/<v>]            GetModelStatus
    GET  /v1/models/<name>[/versions/<v>]/metadata   GetModelMetadata (signature_def)
    POST /v1/models/<name>[/versions/<v>]:predict    Predict

A predict body names the signature (`signature_name`, default serving_default) and gives
the inputs in TF Serving's row format (`"instances": [...]`, answered with
`"predictions"`) or columnar format (`"inputs": ...`, answered with `"outputs"`). As in TF
Serving, bytes are written `{"b64": "<base64>"}` (a plain JSON string is its UTF-8 bytes),
and a string output is base64-encoded only when its name ends in `_bytes`. Errors are
`{"error": "<message>"}` with the HTTP status of the gRPC code. Classify and Regress are
not offered over REST here (the project's clients use Predict).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2

from lt4rec.serving.registry import RpcError
from lt4rec.serving.servicer import (
    DEFAULT_SIGNATURE,
    SIGNATURE_DEF_FIELD,
    ModelStatusServicer,
    PredictionServicer,
)

logger = logging.getLogger(__name__)

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<suffix>/metadata|:predict)?$")
# The HTTP status of each gRPC code (google.rpc.Code's documented mapping).
HTTP_STATUS = {
    grpc.StatusCode.OK: HTTPStatus.OK,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: HTTPStatus.INTERNAL_SERVER_ERROR,
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: HTTPStatus.CONFLICT,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.ABORTED: HTTPStatus.CONFLICT,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    grpc.StatusCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS: HTTPStatus.INTERNAL_SERVER_ERROR,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
}


def _invalid(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _is_named(value: Any) -> bool:
    """An object of inputs by name, not a {"b64": ...} value."""
    return isinstance(value, dict) and set(value) != {"b64"}


def _decode_bytes(value: Any) -> Any:
    """{"b64": ...} objects (at any depth) as bytes; plain strings as their UTF-8 bytes."""
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise _invalid(
                f'a JSON object where a value was expected (bytes are written {{"b64": ...}}): {str(value)[:100]}'
            )
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError as error:
            raise _invalid(f"not base64: {value['b64'][:100]!r}: {error}") from None
    if isinstance(value, list):
        return [_decode_bytes(item) for item in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def _tensor(alias: str, value: Any, spec: tf.TensorSpec) -> Any:
    """A JSON value (batch first) as the TensorProto of the signature's dtype."""
    if spec.dtype == tf.string:
        value = _decode_bytes(value)
        array = np.array(value, dtype=object)
        flat = array.ravel() if array.dtype == object else None
        if flat is None or not all(isinstance(item, bytes) for item in flat):
            raise _invalid(f'input {alias!r}: expected strings or {{"b64": ...}} in equal-length lists')
    else:
        try:
            array = np.array(value, dtype=spec.dtype.as_numpy_dtype)
        except (TypeError, ValueError, OverflowError) as error:
            raise _invalid(f"input {alias!r}: not {spec.dtype.name} values in equal-length lists: {error}") from None
    return tf.make_tensor_proto(array, dtype=spec.dtype, shape=array.shape)


def _json_value(array: np.ndarray, alias: str) -> Any:
    if array.dtype == object:  # DT_STRING
        if alias.endswith("_bytes"):
            return np.vectorize(lambda item: {"b64": base64.b64encode(item).decode("ascii")}, otypes=[object])(
                array
            ).tolist()
        return np.vectorize(lambda item: item.decode("utf-8", errors="replace"), otypes=[object])(array).tolist()
    return array.tolist()


class RestApi:
    """The HTTP server; requests run on its threads, through the servicers' own methods."""

    def __init__(
        self,
        prediction: PredictionServicer,
        status: ModelStatusServicer,
        port: int,
        max_request_bytes: int,
        host: str = "",
    ):
        self.prediction = prediction
        self.status = status
        self.max_request_bytes = max_request_bytes
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                api.handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                api.handle(self, "POST")

            def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
                logger.debug("%s " + format, self.address_string(), *args)

        self._http = ThreadingHTTPServer((host, port), Handler)
        self._http.daemon_threads = True
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        self._thread = threading.Thread(target=self._http.serve_forever, name="rest-api", daemon=True)
        self._thread.start()
        return self._http.server_address[1]

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    # --- one request ----------------------------------------------------------------------

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        try:
            status, body = HTTPStatus.OK, self._answer(request, method)
        except RpcError as error:
            status, body = HTTP_STATUS.get(error.code, HTTPStatus.INTERNAL_SERVER_ERROR), {"error": error.message}
        except Exception as error:  # noqa: BLE001 - the server must answer and keep serving
            logger.exception("REST %s %s failed unexpectedly", method, request.path)
            status, body = (
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"error": f"internal error: {type(error).__name__}: {error}"},
            )
        payload = json.dumps(body).encode("utf-8")
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)

    def _answer(self, request: BaseHTTPRequestHandler, method: str) -> dict:
        found = _PATH.match(request.path.split("?", 1)[0])
        length = int(request.headers.get("Content-Length") or 0)
        if length > self.max_request_bytes:
            request.close_connection = True  # the body is not read
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"the request has {length} bytes, over this server's "
                           f"limit of {self.max_request_bytes} (--max-request-bytes)")  # fmt: skip
        body = request.rfile.read(length) if length else b""
        if found is None:
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} {request.path}")
        spec = model_pb2.ModelSpec(name=found["name"])
        if found["version"] is not None:
            spec.version.value = int(found["version"])
        suffix = found["suffix"]
        if method == "GET" and suffix is None:
            answer = self._call(
                self.status, "GetModelStatus", get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
            )
            return json_format.MessageToDict(
                answer, preserving_proto_field_name=True, including_default_value_fields=True
            )
        if method == "GET" and suffix == "/metadata":
            request_proto = get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=spec, metadata_field=[SIGNATURE_DEF_FIELD]
            )
            answer = self._call(self.prediction, "GetModelMetadata", request_proto)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            answer.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
            return {
                "model_spec": json_format.MessageToDict(answer.model_spec, preserving_proto_field_name=True),
                "metadata": {
                    SIGNATURE_DEF_FIELD: json_format.MessageToDict(signature_map, preserving_proto_field_name=True)
                },
            }
        if method == "POST" and suffix == ":predict":
            return self._predict(spec, body)
        raise RpcError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} {request.path}")

    @staticmethod
    def _call(servicer, name: str, request_proto):
        """The servicer's method without its gRPC wrapper: RpcError or the response."""
        return getattr(type(servicer), name).__wrapped__(servicer, request_proto)

    def _predict(self, spec: model_pb2.ModelSpec, body: bytes) -> dict:
        try:
            document = json.loads(body)
        except ValueError as error:
            raise _invalid(f"the body is not JSON: {error}") from None
        if not isinstance(document, dict) or ("instances" in document) == ("inputs" in document):
            raise _invalid(
                'a predict request is a JSON object with one of "instances" (row format) or "inputs" (columnar format)'
            )
        spec.signature_name = document.get("signature_name", "")
        signature = self.prediction.registry.get(spec).signature(
            spec.signature_name or DEFAULT_SIGNATURE, grpc.StatusCode.FAILED_PRECONDITION,
            f'Serving signature key "{spec.signature_name or DEFAULT_SIGNATURE}" not found.',
        )  # fmt: skip
        aliases = sorted(signature.inputs)
        rows = "instances" in document
        if rows:
            instances = document["instances"]
            if not isinstance(instances, list):
                raise _invalid('"instances" must be a list')
            if all(_is_named(item) for item in instances):
                for item in instances:
                    if set(item) != set(aliases):
                        raise _invalid(f"every instance must have the inputs {aliases}, got {sorted(item)}")
                values = {alias: [item[alias] for item in instances] for alias in aliases}
            elif len(aliases) == 1:
                values = {aliases[0]: instances}
            else:
                raise _invalid(f"every instance must be an object with the inputs {aliases}")
        else:
            inputs = document["inputs"]
            if _is_named(inputs):
                values = inputs
            elif len(aliases) == 1:
                values = {aliases[0]: inputs}
            else:
                raise _invalid(f'"inputs" must be an object with the inputs {aliases}')
        request_proto = predict_pb2.PredictRequest(model_spec=spec)
        for alias, value in values.items():
            if alias not in signature.inputs:
                raise _invalid(f"unknown input {alias!r}; signature {signature.name} takes {aliases}")
            request_proto.inputs[alias].CopyFrom(_tensor(alias, value, signature.inputs[alias]))
        answer = self._call(self.prediction, "Predict", request_proto)
        outputs = {alias: tf.make_ndarray(proto) for alias, proto in answer.outputs.items()}
        if not rows:
            columns = {alias: _json_value(array, alias) for alias, array in outputs.items()}
            return {"outputs": next(iter(columns.values())) if len(columns) == 1 else columns}
        if len(outputs) == 1:
            ((alias, array),) = outputs.items()
            return {"predictions": _json_value(array, alias)}
        columns = {alias: _json_value(array, alias) for alias, array in outputs.items()}
        return {
            "predictions": [
                {alias: column[i] for alias, column in columns.items()}
                for i in range(len(next(iter(columns.values()))))
            ]
        }
