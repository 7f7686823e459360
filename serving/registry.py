"""The models of `lt4rec serve`: their versions on disk, loaded, warmed up and swapped in by a poller.

Layout and versions follow TF Serving: `<base>/<model>/<version>/saved_model.pb` (+
`variables/`); every subfolder of the base path is a model, every numeric subfolder a version.
Each model serves its latest `num_versions` versions (TF Serving's default policy `latest
{num_versions: 1}`). A poller (TF Serving's `--file_system_poll_wait_seconds`) loads a new
version *before* it swaps it in, so no request is dropped; versions gone from disk or beyond
the policy are unloaded after the swap (requests still running on them finish first). A version
that cannot be loaded yet (no saved_model.pb, or a load error) is logged and retried; the
versions already loaded keep serving. Each version replays its warm-up requests
(`assets.extra/tf_serving_warmup_requests`, as TF Serving does) before it is swapped in. If
no loadable version of a model is left on disk, the loaded ones keep serving (logged as a
warning) rather than the model going away.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import model_pb2

from lt4rec.models import warmup

logger = logging.getLogger(__name__)

PREDICT_METHOD_NAME = "tensorflow/serving/predict"
SAVED_MODEL_FILE = "saved_model.pb"


class RpcError(Exception):
    """An error to answer with: a gRPC status code and a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def error_text(error: Exception) -> str:
    """What an error says is wrong; for TensorFlow's, without the graph and node noise."""
    message = error.message if isinstance(error, tf.errors.OpError) else str(error)
    noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[")
    useful = [line.strip() for line in message.splitlines() if line.strip() and not line.strip().startswith(noise)]
    text = (" ".join(useful) or message.strip() or type(error).__name__).split(" [[")[0].strip()
    return text if len(text) <= 500 else text[:500] + "..."


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


def read_saved_model(path: str) -> saved_model_pb2.SavedModel:
    """The SavedModel proto of the version folder `path` (local or on an object store)."""
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(path, SAVED_MODEL_FILE), "rb") as f:
        saved_model.ParseFromString(f.read())
    return saved_model


def _saved_tensor_names(path: str) -> dict[str, dict[tuple[str, str], str]]:
    """{signature: {(inputs|outputs, key): tensor name}} as the SavedModel records them."""
    names: dict[str, dict[tuple[str, str], str]] = {}
    for meta_graph in read_saved_model(path).meta_graphs:
        if tf.saved_model.SERVING in meta_graph.meta_info_def.tags:
            for key, signature_def in meta_graph.signature_def.items():
                names[key] = {
                    **{("inputs", alias): info.name for alias, info in signature_def.inputs.items()},
                    **{("outputs", alias): info.name for alias, info in signature_def.outputs.items()},
                }
    return names


def tensor_from_proto(proto: tensor_pb2.TensorProto, dtype: tf.DType) -> tf.Tensor:
    """A request's TensorProto as a tensor (a Predict's, or a warm-up request's). Strings with
    one value per element (a request's serialized examples, its context) skip `tf.make_ndarray`'s
    object array and, for a list or a scalar, an eager reshape: 0.04 against 0.13 ms for 200
    examples, 0.01 against 0.12 for one."""
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if proto.dtype == types_pb2.DT_STRING and len(proto.string_val) == int(np.prod(shape)):
        values = list(proto.string_val)
        return tf.constant(values if shape else values[0], dtype=tf.string, shape=shape)
    return tf.constant(tf.make_ndarray(proto), dtype=dtype)


def _warm_up(path: str, signatures: Mapping[str, Signature]) -> None:
    """Replays the version's warm-up requests (`models.warmup`), as TF Serving does, before it is swapped in.

    A request that fails fails the version, as in TF Serving: it would fail real requests
    too. A model exported without the file gets each signature called on an empty batch,
    which builds each function's runtime (about 0.3 s) but not its kernels for real batches.
    """
    requests = warmup.read(path)
    for number, request in enumerate(requests):
        name = request.model_spec.signature_name or tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
        if name not in signatures or set(request.inputs) != set(signatures[name].inputs):
            raise ValueError(
                f"{warmup.warmup_path(path)}: request {number} does not match a signature: {name!r} with inputs "
                f"{sorted(request.inputs)}; the model has {({n: sorted(s.inputs) for n, s in signatures.items()})}"
            )
        specs = signatures[name].inputs
        inputs = {alias: tensor_from_proto(proto, specs[alias].dtype) for alias, proto in request.inputs.items()}
        try:
            signatures[name].function(**inputs)
        except (tf.errors.OpError, TypeError) as error:
            raise ValueError(
                f"{warmup.warmup_path(path)}: request {number} to signature {name!r} failed: {error_text(error)}"
            ) from error
    if not requests:
        for signature in signatures.values():
            _warm_up_on_empty_batch(signature)


def _warm_up_on_empty_batch(signature: Signature) -> None:
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
    _warm_up(path, signatures)
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
                f"could not load {model} version {version} from {path}: {error_text(error)}; "
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
                # A loaded SavedModel sits in reference cycles (its functions' graphs, some 50k
                # Python objects): only a full collection frees its memory (some 60 MB per
                # swapped pair of models here). `lt4rec serve` freezes its start's objects
                # (`server.freeze_startup_objects`), so the collection walks little else.
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

    def start_polling(self, poll_seconds: float) -> None:
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
