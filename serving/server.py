"""TF Serving's gRPC PredictionService in Python, for machines without `tensorflow_model_server`.

`lt4rec serve` answers the real `tensorflow.serving.PredictionService` protocol (the stubs of
tensorflow-serving-api), so a client works unchanged against it and against TF Serving. It
follows TF Serving where TF Serving has a rule:

- Layout and versions: `<base>/<model>/<version>/saved_model.pb` (+ `variables/`); every
  subfolder of the base path is a model, every numeric subfolder a version. Each model serves
  its latest `num_versions` versions (TF Serving's default policy `latest {num_versions: 1}`).
  A poller (TF Serving's `--file_system_poll_wait_seconds`) loads a new version *before* it
  swaps it in, so no request is dropped; versions gone from disk or beyond the policy are
  unloaded after the swap (requests still running on them finish first). A version that
  cannot be loaded yet (no saved_model.pb, or a load error) is logged and retried; the
  versions already loaded keep serving. Each version runs its signatures once on an empty
  batch before it is swapped in (the job of TF Serving's warmup requests). If no loadable
  version of a model is left on disk, the loaded ones keep serving (logged as a warning)
  rather than the model going away.
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

import dataclasses
import functools
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
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

logger = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD_NAME = "tensorflow/serving/predict"
SIGNATURE_DEF_FIELD = "signature_def"
SAVED_MODEL_FILE = "saved_model.pb"
DEFAULT_POLL_SECONDS = 2.0
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_WORKERS = 8
DEFAULT_GRACE_SECONDS = 5.0
DRAIN_QUIET_SECONDS = 0.2  # a drain ends once no RPC has been in flight for this long
# What one request may cost: its bytes (gRPC answers RESOURCE_EXHAUSTED above them) and the
# values of one feature of one example (INVALID_ARGUMENT). TF Serving allows INT32_MAX bytes;
# a ranking request of 1,000 candidates of a few KB each is far below these.
DEFAULT_MAX_REQUEST_BYTES = 32 << 20
DEFAULT_MAX_VALUES_PER_FEATURE = 4096
MAX_RESPONSE_BYTES = 2**31 - 1

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


class RpcError(Exception):
    """An error to answer with: a gRPC status code and a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _shape_text(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("-1" if size is None else str(size) for size in shape) + "]"


def _names(names: Sequence[str]) -> str:
    return "{" + ",".join(sorted(names)) + "}"


@dataclasses.dataclass(frozen=True)
class Signature:
    """One callable signature of a loaded model, described by its concrete function."""

    name: str
    function: Callable[..., Mapping[str, tf.Tensor]]
    inputs: Mapping[str, tf.TensorSpec]
    outputs: Mapping[str, tf.TensorSpec]
    signature_def: meta_graph_pb2.SignatureDef

    @classmethod
    def from_function(cls, name: str, function, tensor_names: Mapping[tuple[str, str], str]) -> Signature:
        """`tensor_names[(kind, key)]`: the SavedModel's tensor names, for the SignatureDef only."""
        _, inputs = function.structured_input_signature
        outputs = function.structured_outputs
        if not isinstance(outputs, Mapping):
            raise ValueError(f"signature {name} returns {type(outputs).__name__}, not a dict of named outputs")
        signature_def = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD_NAME)
        for kind, specs in (("inputs", inputs), ("outputs", outputs)):
            for key, spec in specs.items():
                info = getattr(signature_def, kind)[key]
                info.name = tensor_names.get((kind, key), "")
                info.dtype = spec.dtype.as_datatype_enum
                info.tensor_shape.CopyFrom(spec.shape.as_proto())
        return cls(name, function, dict(inputs), dict(outputs), signature_def)

    @property
    def examples_input(self) -> str | None:
        """The name of the one input if it takes serialized tf.Examples (DT_STRING [batch])."""
        if len(self.inputs) != 1:
            return None
        ((name, spec),) = self.inputs.items()
        return name if spec.dtype == tf.string and spec.shape.rank == 1 else None

    @property
    def serialized_inputs(self) -> tuple[str, ...]:
        """The inputs that take serialized tf.Examples: DT_STRING of rank 0 (one) or 1 (a batch)."""
        return tuple(
            name for name, spec in self.inputs.items() if spec.dtype == tf.string and spec.shape.rank in (0, 1)
        )

    @property
    def score_output(self) -> str | None:
        """The name of the one output if it is one float per example ([batch] or [batch, 1])."""
        if len(self.outputs) != 1:
            return None
        ((name, spec),) = self.outputs.items()
        shape = spec.shape
        fits = shape.rank == 1 or (shape.rank == 2 and shape[1] == 1)
        return name if spec.dtype == tf.float32 and fits else None


@dataclasses.dataclass(frozen=True)
class Servable:
    """One loaded version of a model. Requests hold it while they run, so unloading is safe."""

    model: str
    version: int
    path: str
    signatures: Mapping[str, Signature]
    loaded: object  # the tf.saved_model.load object: keeps the functions' variables alive

    def signature(self, name: str, code: grpc.StatusCode, not_found: str) -> Signature:
        """The named signature, or an RpcError(`code`) that starts with `not_found` and lists them."""
        if name not in self.signatures:
            raise RpcError(
                code,
                f"{not_found} (signatures of {self.model} version {self.version}: "
                f"{', '.join(sorted(self.signatures))})",
            )
        return self.signatures[name]


def _saved_tensor_names(path: str) -> dict[str, dict[tuple[str, str], str]]:
    """{signature: {(inputs|outputs, key): tensor name}} as the SavedModel records them."""
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(path, SAVED_MODEL_FILE), "rb") as f:
        saved_model.ParseFromString(f.read())
    names: dict[str, dict[tuple[str, str], str]] = {}
    for meta_graph in saved_model.meta_graphs:
        if tf.saved_model.SERVING in meta_graph.meta_info_def.tags:
            for key, signature_def in meta_graph.signature_def.items():
                names[key] = {
                    **{("inputs", alias): info.name for alias, info in signature_def.inputs.items()},
                    **{("outputs", alias): info.name for alias, info in signature_def.outputs.items()},
                }
    return names


def _warm_up(signature: Signature) -> None:
    """Runs the signature once on an empty batch, so its first real request is not the slow one.

    The first call of a loaded function builds its runtime (about 0.3 s here); doing it before
    the version is swapped in is what TF Serving's warmup requests are for.
    """
    if any(spec.shape.rank is None for spec in signature.inputs.values()):
        return
    empty = {
        name: tf.zeros([0 if size is None else size for size in spec.shape.as_list()], spec.dtype)
        for name, spec in signature.inputs.items()
    }
    try:
        signature.function(**empty)
    except Exception as error:  # noqa: BLE001 - a model that rejects empty batches is still servable
        logger.debug("warm-up of signature %s skipped: %s", signature.name, error)


def load_servable(model: str, version: int, path: str) -> Servable:
    """Loads one version with tf.saved_model.load, describes its signatures and warms them up."""
    loaded = tf.saved_model.load(path, tags=[tf.saved_model.SERVING])
    tensor_names = _saved_tensor_names(path)
    signatures = {
        name: Signature.from_function(name, function, tensor_names.get(name, {}))
        for name, function in loaded.signatures.items()
    }
    if not signatures:
        raise ValueError(f"{path} has no signatures to serve")
    for signature in signatures.values():
        _warm_up(signature)
    return Servable(model, version, path, signatures, loaded)


def _folder_fingerprint(path: str) -> tuple:
    """Names, sizes and times of a folder's files: a failed load is retried once they change."""
    entries = []
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                stat = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            entries.append((os.path.relpath(os.path.join(folder, name), path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


class ModelRegistry:
    """The models under a base path and their loaded versions, kept current by a poller.

    The map of loaded versions is replaced as a whole under a lock (copy on write), so a
    request sees either the old or the new set, never a half-updated one.
    """

    def __init__(self, base_path: str, num_versions: int = 1):
        if num_versions < 1:
            raise ValueError(f"num_versions must be at least 1, got {num_versions}")
        self.base_path = base_path
        self.num_versions = num_versions
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()  # one poll at a time (the poller, or a caller)
        self._models: dict[str, dict[int, Servable]] = {}
        self._failed: dict[tuple[str, int], tuple] = {}  # (model, version) -> folder fingerprint at failure
        self._folders: dict[tuple[str, int], str] = {}  # (model, version) -> its folder's name, e.g. "007"; per scan
        self._reported: dict[tuple, str] = {}  # what was last logged per subject, to log changes only
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # --- requests -----------------------------------------------------------------------

    def get(self, model_spec: model_pb2.ModelSpec) -> Servable:
        """The version a request asks for (or the latest), else NOT_FOUND saying what is loaded."""
        name = model_spec.name
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version_label":
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Unrecognized servable version label: {model_spec.version_label} "
                "(this server has no version labels; ask for a version number, or none for the latest)",
            )
        with self._lock:
            models = self._models
        versions = models.get(name)
        if choice == "version":
            request = f"Specific({name}, {model_spec.version.value})"
        else:
            request = f"Latest({name})"
        if not versions:
            raise RpcError(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: {request}: no model {name!r} is loaded "
                f"(loaded models: {', '.join(sorted(models)) or 'none'})",
            )
        if choice != "version":
            return versions[max(versions)]
        version = model_spec.version.value
        if version not in versions:
            raise RpcError(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: {request}: version {version} of model {name!r} is not loaded "
                f"(loaded versions: {sorted(versions)})",
            )
        return versions[version]

    def problems(self) -> list[str]:
        """What keeps versions from loading now (as logged): missing files, load errors."""
        return list(self._reported.copy().values())  # copy(): atomic while the poller writes

    def loaded(self) -> dict[str, list[int]]:
        """{model: its loaded versions, ascending}."""
        with self._lock:
            return {name: sorted(versions) for name, versions in self._models.items()}

    # --- loading ------------------------------------------------------------------------

    def _report(self, subject: tuple, level: int, message: str | None, exc_info: bool = False) -> None:
        """Logs `message` about `subject` only when it differs from the last one (no log spam)."""
        if message is None:
            self._reported.pop(subject, None)
        elif self._reported.get(subject) != message:
            self._reported[subject] = message
            logger.log(level, message, exc_info=exc_info)

    def _scan(self) -> dict[str, list[int]]:
        """{model: versions on disk, newest first}, from the folder layout alone."""
        if not os.path.isdir(self.base_path):
            raise FileNotFoundError(f"model base path {self.base_path} does not exist or is not a folder")
        on_disk = {}
        self._folders = {}
        for model in sorted(os.listdir(self.base_path)):
            model_dir = os.path.join(self.base_path, model)
            if model.startswith(".") or not os.path.isdir(model_dir):
                continue
            # TF Serving reads a version folder's name as a number: `007` is version 7.
            folders = sorted(
                entry
                for entry in os.listdir(model_dir)
                if entry.isdigit() and os.path.isdir(os.path.join(model_dir, entry))
            )
            for entry in folders:
                self._folders.setdefault((model, int(entry)), entry)  # of `007` and `7`, the first by name
            versions = sorted({int(entry) for entry in folders})
            self._report(
                ("empty", model),
                logging.WARNING,
                None
                if versions
                else f"no versions of model {model!r} under {model_dir} (expected numeric folders like {model_dir}/1)",
            )
            on_disk[model] = sorted(versions, reverse=True)
        return on_disk

    def _try_load(self, model: str, version: int) -> Servable | None:
        """Loads a version, or logs why it cannot be loaded yet and returns None (retried next poll)."""
        path = os.path.join(self.base_path, model, self._folders.get((model, version), str(version)))
        subject = ("load", model, version)
        if not os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
            self._report(
                subject, logging.INFO, f"{model} version {version}: no {SAVED_MODEL_FILE} in {path} yet; will retry"
            )
            return None
        fingerprint = _folder_fingerprint(path)
        if self._failed.get((model, version)) == fingerprint:
            return None  # failed before and nothing changed since: do not spend a load on it
        start = time.perf_counter()
        try:
            servable = load_servable(model, version, path)
        except Exception as error:  # noqa: BLE001 - any load failure must leave serving intact
            self._failed[(model, version)] = fingerprint
            self._report(
                subject,
                logging.WARNING,
                f"could not load {model} version {version} from {path}: {_error_text(error)}; "
                "will retry when its files change",
            )
            return None
        self._failed.pop((model, version), None)
        self._report(subject, logging.INFO, None)
        logger.info(
            "loaded %s version %d from %s in %.1f s (signatures: %s)",
            model,
            version,
            path,
            time.perf_counter() - start,
            ", ".join(sorted(servable.signatures)),
        )
        return servable

    def poll(self) -> None:
        """One look at the disk: load what the policy wants, then swap, then unload the rest."""
        with self._poll_lock:
            on_disk = self._scan()
            with self._lock:
                current = self._models
            updated: dict[str, dict[int, Servable]] = {}
            wanted_everywhere = set()
            for model in sorted(set(on_disk) | set(current)):
                disk = on_disk.get(model, [])
                wanted = disk[: self.num_versions]
                wanted_everywhere.update((model, version) for version in wanted)
                candidates = dict(current.get(model, {}))
                for version in wanted:
                    if version not in candidates:
                        servable = self._try_load(model, version)
                        if servable is not None:
                            candidates[version] = servable
                # The wanted versions that loaded first; while some of them cannot load, keep
                # serving older versions that are still on disk (TF Serving preserves availability).
                ready = sorted((v for v in candidates if v in wanted), reverse=True)
                fallback = sorted((v for v in candidates if v not in wanted and v in disk), reverse=True)
                serving = (ready + fallback)[: self.num_versions]
                if not serving and current.get(model):
                    serving = sorted(current[model], reverse=True)
                    self._report(
                        ("stale", model),
                        logging.WARNING,
                        f"no loadable version of model {model!r} on disk; still serving versions {sorted(serving)}",
                    )
                else:
                    self._report(("stale", model), logging.WARNING, None)
                if serving:
                    updated[model] = {version: candidates[version] for version in serving}
            with self._lock:
                self._models = updated
            unloaded = 0
            for model in sorted(set(current) | set(updated)):
                before, after = set(current.get(model, {})), set(updated.get(model, {}))
                if before and before != after:
                    logger.info("%s now serves versions %s", model, sorted(after))
                for version in sorted(before - after):
                    logger.info("unloaded %s version %d", model, version)
                    unloaded += 1
            current = candidates = None  # noqa: F841 - the last references to unloaded versions here
            if unloaded:
                # A loaded SavedModel sits in reference cycles: without a collection its
                # memory stays (some 60 MB per swapped pair of models here).
                gc.collect()
            # Forget the problems of versions no longer wanted (removed, or superseded).
            for subject in [
                s
                for s in self._reported
                if (s[0] == "load" and (s[1], s[2]) not in wanted_everywhere)
                or (s[0] == "empty" and s[1] not in on_disk)
            ]:
                self._reported.pop(subject)
            for key in [key for key in self._failed if key not in wanted_everywhere]:
                self._failed.pop(key)

    def start_polling(self, poll_seconds: float = DEFAULT_POLL_SECONDS) -> None:
        """Polls the disk every `poll_seconds` in a daemon thread until `stop_polling`."""
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(poll_seconds):
                try:
                    self.poll()
                    self._report(("poll",), logging.ERROR, None)
                except Exception as error:  # noqa: BLE001 - the poller must survive, e.g. a base path being moved
                    message = f"polling {self.base_path} failed: {error}; still serving what is loaded, will retry"
                    self._report(("poll",), logging.ERROR, message, exc_info=not isinstance(error, OSError))

        self._poller = threading.Thread(target=run, name="model-poller", daemon=True)
        self._poller.start()

    def stop_polling(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout)
            self._poller = None


# --- tensors ------------------------------------------------------------------------------


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


def _error_text(error: Exception) -> str:
    """What an error says is wrong; for TensorFlow's, without the graph and node noise."""
    message = error.message if isinstance(error, tf.errors.OpError) else str(error)
    noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[")
    useful = [line.strip() for line in message.splitlines() if line.strip() and not line.strip().startswith(noise)]
    text = (" ".join(useful) or message.strip() or type(error).__name__).split(" [[")[0].strip()
    return text if len(text) <= 500 else text[:500] + "..."


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
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_values_per_feature: int = DEFAULT_MAX_VALUES_PER_FEATURE,
    ):
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
                f"{_error_text(error)}",
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
                tensors[alias] = tf.constant(tf.make_ndarray(proto), dtype=signature.inputs[alias].dtype)
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


class _RequestsInFlight(grpc.ServerInterceptor):
    """Counts the RPCs received and not yet answered, queued ones included.

    gRPC calls interceptors when an RPC arrives, before it waits for a worker thread, so a
    draining server knows what it has received but not begun.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.last_arrival = time.monotonic()

    def _done(self) -> None:
        with self._lock:
            self.count -= 1

    def intercept_service(self, continuation, handler_call_details):
        with self._lock:
            self.count += 1
            self.last_arrival = time.monotonic()
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            self._done()
            return handler
        behavior = handler.unary_unary

        def counted(request, context):
            try:
                return behavior(request, context)
            finally:
                self._done()

        return handler._replace(unary_unary=counted)


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


# --- the server ---------------------------------------------------------------------------


class ModelServer:
    """The registry, its poller, the gRPC server and the optional REST API, started and stopped together."""

    def __init__(
        self,
        base_path: str,
        port: int = 0,
        *,
        num_versions: int = 1,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_values_per_feature: int = DEFAULT_MAX_VALUES_PER_FEATURE,
        workers: int = DEFAULT_WORKERS,
        rest_api_port: int | None = None,
        host: str = "[::]",
    ):
        self.base_path = base_path
        self.requested_port = port
        self.host = host
        self.poll_seconds = poll_seconds
        self.max_request_bytes = max_request_bytes
        self.registry = ModelRegistry(base_path, num_versions)
        self.servicer = PredictionServicer(self.registry, max_batch_size, max_values_per_feature)
        self.draining = threading.Event()
        self.status_servicer = ModelStatusServicer(self.registry, self.draining)
        self.workers = workers
        self.requested_rest_port = rest_api_port
        self.port: int | None = None
        self.rest_api_port: int | None = None
        self._server: grpc.Server | None = None
        self._rest = None
        self._in_flight = _RequestsInFlight()

    def start(self) -> int:
        """Loads the models (DataError if none loads), listens, starts polling; returns the gRPC port."""
        if not os.path.isdir(self.base_path):
            raise errors.DataError(f"model base path {self.base_path} does not exist or is not a folder")
        self.registry.poll()
        loaded = self.registry.loaded()
        if not loaded:
            found = "; ".join(self.registry.problems()) or "it holds no model folders"
            raise errors.DataError(
                f"no loadable model under {self.base_path} (expected <model>/<version>/{SAVED_MODEL_FILE}): {found}"
            )
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="rpc"),
            interceptors=[self._in_flight],
            options=[
                ("grpc.max_receive_message_length", self.max_request_bytes),
                ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
                ("grpc.so_reuseport", 0),  # a port already in use is an error, not a shared port
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self.servicer, server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(self.status_servicer, server)
        # IPv4-only hosts
        port = self._bind(server, self.host) or (self.host == "[::]" and self._bind(server, "0.0.0.0"))
        if not port:
            raise errors.UserFacingError(f"cannot listen on port {self.requested_port} (is it in use?)")
        if self.requested_rest_port is not None:
            from lt4rec.serving import rest

            self._rest = rest.RestApi(
                self.servicer, self.status_servicer, self.requested_rest_port, self.max_request_bytes
            )
            self.rest_api_port = self._rest.start()
        server.start()
        self._server, self.port = server, port
        self.registry.start_polling(self.poll_seconds)
        logger.info(
            "serving PredictionService on port %d%s: %s (polling %s every %g s)",
            port, f" and the REST API on port {self.rest_api_port}" if self._rest else "",
            "; ".join(f"{model} versions {versions}" for model, versions in loaded.items()),
            self.base_path, self.poll_seconds,
        )  # fmt: skip
        return port

    def _bind(self, server: grpc.Server, host: str) -> int:
        """The port bound on `host`, or 0 (gRPC returns 0 or raises, depending on its version)."""
        try:
            return server.add_insecure_port(f"{host}:{self.requested_port}")
        except RuntimeError as error:
            logger.debug("cannot bind %s:%d: %s", host, self.requested_port, error)
            return 0

    def stop(self, grace: float | None = DEFAULT_GRACE_SECONDS, quiet: float = DRAIN_QUIET_SECONDS) -> None:
        """Drains, then stops: within `grace` seconds, every RPC received is answered.

        Draining: GetModelStatus says UNLOADING (readiness checks fail, load balancers turn
        away), and RPCs are still served until none has been in flight for `quiet` seconds
        (or half the grace is gone). Only then does gRPC stop taking RPCs (new ones get
        UNAVAILABLE) and give those in flight the rest of the grace. Stopping gRPC at once
        would cancel the RPCs it had received but not yet handed to a worker thread.
        """
        if self._server is None:
            return
        start = time.monotonic()
        self.draining.set()
        if grace:
            while time.monotonic() - start < grace / 2:
                idle = time.monotonic() - self._in_flight.last_arrival
                if self._in_flight.count == 0 and idle >= quiet:
                    break
                time.sleep(0.01)
        remaining = None if grace is None else max(grace - (time.monotonic() - start), 0.0)
        logger.info("drained in %.2f s; stopping (%s RPCs in flight)", time.monotonic() - start, self._in_flight.count)
        stopped = self._server.stop(remaining)
        if self._rest is not None:
            self._rest.stop()
        self.registry.stop_polling()
        stopped.wait()
        self._server = None
        logger.info("stopped serving on port %s", self.port)


def start_server(base_path: str, port: int = 0, **options) -> tuple[ModelServer, int]:
    """Starts a server in this process (for tests and benchmarks); returns it and its port."""
    server = ModelServer(base_path, port, **options)
    return server, server.start()


def serve(base_path: str, port: int, grace: float = DEFAULT_GRACE_SECONDS, **options) -> None:
    """Serves in the foreground until SIGTERM or SIGINT, then shuts down cleanly and returns."""
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    # Installed before the models load, so that a SIGTERM during the load also ends cleanly.
    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    server = ModelServer(base_path, port, **options)
    try:
        server.start()
        while not stop.wait(1.0):
            pass
        logger.info("%s received: finishing the RPCs in flight (up to %g s), then stopping", received[0], grace)
    finally:
        server.stop(grace)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
