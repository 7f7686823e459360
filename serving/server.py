"""TF Serving's gRPC PredictionService in Python, for machines without `tensorflow_model_server`.

`lt4rec serve` answers the real `tensorflow.serving.PredictionService` protocol (the stubs of
tensorflow-serving-api), so a client works unchanged against it and against TF Serving. This
module is the process: it starts the gRPC server (and the optional REST API) over the
servicers, and drains and stops it on SIGTERM. What is served is `registry.py`'s; the answers
are `servicer.py`'s.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from concurrent import futures

import grpc
import tensorflow as tf
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from lt4rec import errors
from lt4rec.serving.registry import SAVED_MODEL_FILE, ModelRegistry
from lt4rec.serving.servicer import ModelStatusServicer, PredictionServicer
from lt4rec.serving.settings import ServerSettings

logger = logging.getLogger(__name__)

DRAIN_QUIET_SECONDS = 0.2  # a drain ends once no RPC has been in flight for this long
MAX_RESPONSE_BYTES = 2**31 - 1


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


class ModelServer:
    """The registry, its poller, the gRPC server and the optional REST API, started and stopped together."""

    def __init__(self, settings: ServerSettings, host: str = "[::]"):
        self.settings = settings
        self.base_path = settings.model_base_path
        self.requested_port = settings.port
        self.host = host
        self.poll_seconds = settings.poll_seconds
        self.max_request_bytes = settings.max_request_bytes
        self.registry = ModelRegistry(self.base_path, settings.num_versions)
        self.servicer = PredictionServicer(self.registry, settings.max_batch_size, settings.max_values_per_feature)
        self.draining = threading.Event()
        self.status_servicer = ModelStatusServicer(self.registry, self.draining)
        self.workers = settings.workers
        self.requested_rest_port = settings.rest_api_port
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

    def stop(self, grace: float | None = ServerSettings.grace_seconds, quiet: float = DRAIN_QUIET_SECONDS) -> None:
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


def start_server(base_path: str, port: int = 0, **settings) -> tuple[ModelServer, int]:
    """Starts a server in this process (for tests and benchmarks); returns it and its port.
    `settings`: other `ServerSettings` fields."""
    server = ModelServer(ServerSettings(model_base_path=base_path, port=port, **settings))
    return server, server.start()


def set_tensorflow_threads(settings: ServerSettings) -> None:
    """TensorFlow's thread pools as the settings say: only possible before TensorFlow first runs."""
    tf.config.threading.set_intra_op_parallelism_threads(settings.tensorflow_intra_op_parallelism)
    tf.config.threading.set_inter_op_parallelism_threads(settings.tensorflow_inter_op_parallelism)
    logger.info(
        "TensorFlow threads: %d per op, %d ops at once (0: one per core)",
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )


def freeze_startup_objects() -> None:
    """Puts what the process holds before any model loads out of the garbage collector's walks.

    The interpreter's, TensorFlow's and gRPC's objects (some 340k) live as long as the server,
    yet every full collection walks them, holding the interpreter: the one that frees a
    replaced version (`ModelRegistry.poll`) and those that loading a new one sets off. Frozen
    (`gc.freeze`), they are skipped. Call it before the first model loads: a frozen model
    would never be freed.
    """
    gc.collect()
    gc.freeze()
    logger.info("%d objects of the process's start frozen out of garbage collection", gc.get_freeze_count())


def serve(settings: ServerSettings) -> None:
    """Serves in the foreground until SIGTERM or SIGINT, then shuts down cleanly and returns."""
    set_tensorflow_threads(settings)
    freeze_startup_objects()
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    # Installed before the models load, so that a SIGTERM during the load also ends cleanly.
    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    server = ModelServer(settings)
    grace = settings.grace_seconds
    try:
        server.start()
        while not stop.wait(1.0):
            pass
        logger.info("%s received: finishing the RPCs in flight (up to %g s), then stopping", received[0], grace)
    finally:
        server.stop(grace)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
