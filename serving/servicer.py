"""The RPCs of `lt4rec serve` over a `ModelRegistry`, shared by its gRPC server and its REST API.

They follow TF Serving where TF Serving has a rule:

- Predict: signature_name "" means "serving_default"; an unknown signature is
  FAILED_PRECONDITION ("Serving signature key ... not found.", as in TF Serving's
  predict_util.cc); output_filter selects outputs; the response's model_spec names the model,
  the version that answered and the signature. Outputs are written as typed proto fields
  (`float_val`, ...), as TF Serving does by default.
- GetModelMetadata: metadata_field must be ["signature_def"]; the answer is a SignatureDefMap
  packed in `google.protobuf.Any` under "signature_def". The SignatureDefs are built from the
  loaded concrete functions (method_name "tensorflow/serving/predict"); the tensor names are
  the SavedModel's own where it records them. Unlike TF Serving it leaves out the
  `__saved_model_init_op` entry, which no client can call.
- Errors: unknown model or version NOT_FOUND ("Servable not found for request: ..."),
  version_label INVALID_ARGUMENT (no labels are configured here), bad inputs
  INVALID_ARGUMENT, a batch over `max_batch_size` RESOURCE_EXHAUSTED, anything unexpected
  INTERNAL (logged with its traceback). Messages say what was wrong and what was expected.

Classify and Regress: a real TF Serving answers them only for signatures exported with the
method names "tensorflow/serving/classify" or ".../regress", which `tf.saved_model.save`
(TF2) never writes, so against TF Serving these models answer only Predict, and the clients
of this project use Predict. This server answers Classify and Regress wherever they fit: a
signature whose one input is serialized tf.Examples (DT_STRING [batch]) and whose one output
is DT_FLOAT [batch] (or [batch, 1]). Regress gives one value per example; Classify gives
classes "0" and "1" with scores (1 - p, p), for an output that is a probability.
`example_list_with_context` merges the context into every example as TF Serving does (the
serialized context followed by the serialized example). MultiInference is UNIMPLEMENTED.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
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

from lt4rec.serving.registry import ModelRegistry, RpcError, Servable, Signature, error_text, tensor_from_proto

logger = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
SIGNATURE_DEF_FIELD = "signature_def"

_STATUS_BY_CODE = {status.value[0]: status for status in grpc.StatusCode}
# Output dtypes and the TensorProto field TF Serving writes them to (Tensor::AsProtoField).
_PROTO_FIELDS = {
    tf.float32: "float_val",
    tf.float64: "double_val",
    tf.int8: "int_val",
    tf.int16: "int_val",
    tf.int32: "int_val",
    tf.uint8: "int_val",
    tf.int64: "int64_val",
    tf.bool: "bool_val",
    tf.string: "string_val",
}


def _shape_text(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("-1" if size is None else str(size) for size in shape) + "]"


def _names(names: Sequence[str]) -> str:
    return "{" + ",".join(sorted(names)) + "}"


def as_proto_field(array: np.ndarray, dtype: tf.DType) -> tensor_pb2.TensorProto:
    """A tensor written to its typed repeated field (`float_val`, ...), as TF Serving answers.

    Clients that read `outputs[...].float_val` directly then work as they do with TF Serving;
    `tf.make_ndarray` reads either form.
    """
    field = _PROTO_FIELDS.get(dtype)
    if field is None:
        return tf.make_tensor_proto(array, dtype=dtype)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum, tensor_shape=tf.TensorShape(array.shape).as_proto())
    getattr(proto, field).extend(array.ravel().tolist())
    return proto


def _rpc(method: Callable) -> Callable:
    """Runs one RPC: an RpcError becomes its status; anything unexpected INTERNAL, logged with its traceback."""

    @functools.wraps(method)
    def wrapper(self, request, context: grpc.ServicerContext):
        try:
            return method(self, request)
        except RpcError as error:
            context.abort(error.code, error.message)
        except Exception as error:  # noqa: BLE001 - the server must answer and keep serving
            logger.exception("%s failed unexpectedly", method.__name__)
            context.abort(
                grpc.StatusCode.INTERNAL, f"{method.__name__}: internal error: {type(error).__name__}: {error}"
            )

    return wrapper


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, GetModelMetadata, Classify and Regress over a `ModelRegistry`."""

    def __init__(
        self,
        registry: ModelRegistry,
        max_batch_size: int,
        max_values_per_feature: int,
    ):
        """The limits are `ServerSettings`'."""
        self.registry = registry
        self.max_batch_size = max_batch_size
        self.max_values_per_feature = max_values_per_feature

    # --- shared steps ---------------------------------------------------------------------

    def _servable(self, request) -> Servable:
        if not request.HasField("model_spec"):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        return self.registry.get(request.model_spec)

    def _check_batch(self, rows: int, what: str) -> None:
        """An empty batch is fine (its outputs are empty, as TF Serving answers); a large one is not."""
        if rows > self.max_batch_size:
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{what} has {rows} rows, over this server's max batch size of {self.max_batch_size} "
                "(--max-batch-size): split the request",
            )

    @staticmethod
    def _run(servable: Servable, signature: Signature, inputs: Mapping[str, object]) -> dict[str, tf.Tensor]:
        """Calls the signature; TensorFlow's own errors (e.g. an unparsable tf.Example) keep their code."""
        try:
            return signature.function(**inputs)
        except tf.errors.OpError as error:
            code = _STATUS_BY_CODE.get(error.error_code, grpc.StatusCode.UNKNOWN)
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                logger.exception("%s version %d signature %s failed", servable.model, servable.version, signature.name)
            raise RpcError(
                code,
                f"{servable.model} version {servable.version} signature {signature.name} failed on the request: "
                f"{error_text(error)}",
            ) from error
        except UnicodeDecodeError as error:
            # TensorFlow quotes the bad input in its message; binary garbage makes that message
            # undecodable, and this is what Python raises instead of InvalidArgumentError.
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{servable.model} version {servable.version} signature {signature.name} failed on the request: "
                "TensorFlow rejected an input (its error message quotes undecodable bytes: "
                "is a serialized tf.Example corrupt?)",
            ) from error

    def _input_tensors(
        self, signature: Signature, inputs: Mapping[str, tensor_pb2.TensorProto]
    ) -> dict[str, tf.Tensor]:
        """Checks names, dtypes, shapes and batch size against the signature, then converts."""
        where = f"signature {signature.name}"
        sent, expected = set(inputs), set(signature.inputs)
        if sent != expected:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input size does not match signature: {len(sent)}!={len(expected)} len({_names(sent)}) != "
                f"len({_names(expected)}). Sent extra: {_names(sent - expected)}. "
                f"Missing but required: {_names(expected - sent)}.",
            )
        batch_sizes = {}
        for alias in sorted(inputs):
            proto, spec = inputs[alias], signature.inputs[alias]
            if proto.dtype != spec.dtype.as_datatype_enum:
                raise RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {alias!r} of {where} must be {_dtype_name(spec.dtype.as_datatype_enum)}, "
                    f"got {_dtype_name(proto.dtype)}",
                )
            shape = [dim.size for dim in proto.tensor_shape.dim]
            if any(size < 0 for size in shape):
                raise RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {alias!r} of {where} has a negative dimension: {_shape_text(shape)}",
                )
            if spec.shape.rank is not None and (
                len(shape) != spec.shape.rank
                or any(want is not None and want != got for want, got in zip(spec.shape, shape))
            ):
                raise RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {alias!r} of {where} must have shape {_shape_text(spec.shape.as_list())}, "
                    f"got {_shape_text(shape)}",
                )
            if shape and spec.shape.rank and spec.shape[0] is None:  # a batch dimension, not a fixed size
                batch_sizes[alias] = shape[0]
        if len(set(batch_sizes.values())) > 1:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT, f"inputs of {where} differ in batch size (dimension 0): {batch_sizes}"
            )
        if batch_sizes:
            self._check_batch(next(iter(batch_sizes.values())), f"the request to {where}")
        for alias in signature.serialized_inputs:
            self._check_examples(inputs[alias].string_val, f"input {alias!r} of {where}")
        tensors = {}
        for alias, proto in inputs.items():
            try:
                tensors[alias] = tensor_from_proto(proto, signature.inputs[alias].dtype)
            except Exception as error:  # noqa: BLE001 - any malformed TensorProto is the client's error
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}: {error}") from error
        return tensors

    def _check_examples(self, serialized: Sequence[bytes], what: str) -> None:
        """No feature of a serialized tf.Example over `max_values_per_feature` values.

        Every value takes at least a byte, so only an example longer than the limit in bytes
        can break it: those alone are parsed here (the model parses all of them anyway).
        Named tensors are bounded by the signature's shapes.
        """
        for index, example in enumerate(serialized):
            if len(example) <= self.max_values_per_feature:
                continue
            try:
                parsed = example_pb2.Example.FromString(example)
            except Exception:  # noqa: BLE001 - the model's parser says what is wrong with it
                continue
            for name, feature in parsed.features.feature.items():
                kind = feature.WhichOneof("kind")
                count = len(getattr(feature, kind).value) if kind else 0
                if count > self.max_values_per_feature:
                    raise RpcError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"example {index} of {what} has {count} values in feature {name!r}, "
                        "over this server's limit of "
                        f"{self.max_values_per_feature} (--max-values-per-feature)",
                    )

    # --- the RPCs -------------------------------------------------------------------------

    @_rpc
    def Predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        servable = self._servable(request)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        # FAILED_PRECONDITION, with TF Serving's message (predict_util.cc).
        signature = servable.signature(
            signature_name, grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.'
        )
        tensors = self._input_tensors(signature, request.inputs)
        selected = list(request.output_filter) or sorted(signature.outputs)
        for alias in selected:
            if alias not in signature.outputs:
                raise RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                    f"{_names(signature.outputs)}.",
                )
        if len(set(selected)) != len(selected):
            duplicate = next(alias for alias in selected if selected.count(alias) > 1)
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {duplicate}")
        outputs = self._run(servable, signature, tensors)
        response = predict_pb2.PredictResponse()
        _fill_model_spec(response.model_spec, servable, signature_name)
        for alias in selected:
            response.outputs[alias].CopyFrom(as_proto_field(outputs[alias].numpy(), outputs[alias].dtype))
        return response

    @_rpc
    def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        if not request.metadata_field:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT, "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Metadata field {field} is not supported (only {SIGNATURE_DEF_FIELD})",
                )
        servable = self.registry.get(request.model_spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in servable.signatures.items():
            signature_map.signature_def[name].CopyFrom(signature.signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_model_spec(response.model_spec, servable, None)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response

    def _score_examples(self, request, method: str) -> tuple[Servable, str, np.ndarray]:
        """The shared part of Classify and Regress: (servable, signature name, one float per example)."""
        servable = self._servable(request)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        # INVALID_ARGUMENT here, as TF Serving's classifier and regressor answer.
        signature = servable.signature(
            signature_name, grpc.StatusCode.INVALID_ARGUMENT, f"No signature was found with the name: {signature_name}"
        )
        examples_input, score_output = signature.examples_input, signature.score_output
        if examples_input is None or score_output is None:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{method} needs a signature with one DT_STRING [batch] input of serialized tf.Examples and one "
                f"DT_FLOAT [batch] output; signature {signature_name} of {servable.model} has inputs "
                f"{_names(signature.inputs)} and outputs {_names(signature.outputs)}: use Predict",
            )
        serialized = _serialized_examples(request.input)
        if not serialized:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
        self._check_batch(len(serialized), f"the {method} request")
        self._check_examples(serialized, f"the {method} request")
        outputs = self._run(servable, signature, {examples_input: tf.constant(serialized, dtype=tf.string)})
        scores = np.reshape(outputs[score_output].numpy(), [-1])
        if scores.shape[0] != len(serialized):
            raise RpcError(
                grpc.StatusCode.INTERNAL,
                f"Input batch size did not match output batch size: {len(serialized)} vs. {scores.shape[0]}",
            )
        return servable, signature_name, scores

    @_rpc
    def Regress(self, request: regression_pb2.RegressionRequest) -> regression_pb2.RegressionResponse:
        servable, signature_name, scores = self._score_examples(request, "Regress")
        response = regression_pb2.RegressionResponse()
        _fill_model_spec(response.model_spec, servable, signature_name)
        for score in scores.tolist():
            response.result.regressions.add(value=score)
        return response

    @_rpc
    def Classify(self, request: classification_pb2.ClassificationRequest) -> classification_pb2.ClassificationResponse:
        servable, signature_name, scores = self._score_examples(request, "Classify")
        if scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
            raise RpcError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Classify needs a probability in [0, 1] from signature {signature_name} of {servable.model}, "
                f"got values in [{scores.min():g}, {scores.max():g}]: use Regress or Predict",
            )
        response = classification_pb2.ClassificationResponse()
        _fill_model_spec(response.model_spec, servable, signature_name)
        for score in scores.tolist():
            classifications = response.result.classifications.add()
            classifications.classes.add(label="0", score=1.0 - score)
            classifications.classes.add(label="1", score=score)
        return response

    def MultiInference(self, request, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not implemented by lt4rec serve: use Predict")


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
    """`tensorflow.serving.ModelService/GetModelStatus`, which readiness checks call.

    Every loaded version is AVAILABLE, or UNLOADING once the server drains (after SIGTERM);
    a model or version that is not loaded is NOT_FOUND, with TF Serving's messages.
    HandleReloadConfigRequest stays UNIMPLEMENTED: versions follow the folders.
    """

    def __init__(self, registry: ModelRegistry, draining: threading.Event):
        self.registry = registry
        self.draining = draining

    @_rpc
    def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        spec = request.model_spec
        if spec.WhichOneof("version_choice") == "version_label":
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {spec.version_label}"
            )
        versions = self.registry.loaded().get(spec.name)
        if not versions:
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        if spec.HasField("version"):
            if spec.version.value not in versions:
                raise RpcError(
                    grpc.StatusCode.NOT_FOUND, f"Could not find version {spec.version.value} of model {spec.name}"
                )
            versions = [spec.version.value]
        state = (
            get_model_status_pb2.ModelVersionStatus.UNLOADING
            if self.draining.is_set()
            else get_model_status_pb2.ModelVersionStatus.AVAILABLE
        )
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in sorted(versions, reverse=True):
            response.model_version_status.add(
                version=version, state=state
            ).status.SetInParent()  # error_code OK, as TF Serving sets it
        return response


def _dtype_name(enum: int) -> str:
    try:
        return types_pb2.DataType.Name(enum)
    except ValueError:
        return f"unknown dtype {enum}"


def _fill_model_spec(spec: model_pb2.ModelSpec, servable: Servable, signature_name: str | None) -> None:
    spec.name = servable.model
    spec.version.value = servable.version
    if signature_name is not None:
        spec.signature_name = signature_name


def _serialized_examples(request_input) -> list[bytes]:
    """Serialized tf.Examples of an `Input`; with context, the context's bytes come first.

    Parsing concatenated serializations merges them, the example's values winning: exactly
    how TF Serving merges `example_list_with_context`.
    """
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return [example.SerializeToString() for example in request_input.example_list.examples]
    if kind == "example_list_with_context":
        context = request_input.example_list_with_context.context.SerializeToString()
        return [context + example.SerializeToString() for example in request_input.example_list_with_context.examples]
    return []
