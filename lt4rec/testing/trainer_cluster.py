"""The Trainer (or MaskSearch) as the workers of a training cluster on one machine (loopback).

On Kubeflow and Vertex every replica of a distributed Trainer or MaskSearch runs the same
executor (`python -m tfx.scripts.run_executor ...`) with `TF_CONFIG` naming the cluster
and its own task. This starts those processes here, on the inputs and properties of an
execution that ML Metadata recorded, so that multi-worker training and search can be
tested and measured without a cluster.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.types import artifact_utils, standard_artifacts

from lt4rec.components.artifacts import Masks
from lt4rec.components.mask_search import executor as mask_search_executor
from lt4rec.components.sparse_sharing_trainer import executor as trainer_executor

logger = logging.getLogger(__name__)

TRAINER_NODE = "SparseSharingTrainer"
MASK_SEARCH_NODE = "MaskSearch"
# Per node: the executor every replica runs, and its outputs (artifact types by key).
EXECUTORS = {
    TRAINER_NODE: (
        trainer_executor.Executor,
        {"model": standard_artifacts.Model, "model_run": standard_artifacts.ModelRun},
    ),
    MASK_SEARCH_NODE: (mask_search_executor.Executor, {mask_search_executor.MASKS: Masks}),
}


@dataclasses.dataclass
class RecordedExecution:
    """What an execution (of the Trainer or MaskSearch) read: its input artifacts and execution properties."""

    inputs: dict[str, list]
    exec_properties: dict[str, str]
    node_id: str = TRAINER_NODE

    @classmethod
    def recorded(cls, metadata_sqlite: str, node_id: str = TRAINER_NODE) -> "RecordedExecution":
        """The latest completed (not cached) execution of `node_id` in a local pipeline's store."""
        if not os.path.exists(metadata_sqlite):
            raise FileNotFoundError(f"no ML Metadata store at {metadata_sqlite}: run the pipeline first")
        config = metadata_store_pb2.ConnectionConfig()
        config.sqlite.filename_uri = metadata_sqlite
        config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
        store = metadata_store.MetadataStore(config)
        executions = [
            execution
            for execution in store.get_executions()
            if store.get_execution_types_by_id([execution.type_id])[0].name.endswith(f".{node_id}")
            and execution.last_known_state == metadata_store_pb2.Execution.COMPLETE
        ]
        if not executions:
            raise ValueError(f"{metadata_sqlite} records no completed {node_id} execution")
        execution = max(executions, key=lambda e: e.create_time_since_epoch)
        inputs: dict[str, list] = {}
        for event in store.get_events_by_execution_ids([execution.id]):
            if event.type not in (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT):
                continue
            (artifact,) = store.get_artifacts_by_id([event.artifact_id])
            (artifact_type,) = store.get_artifact_types_by_id([artifact.type_id])
            inputs.setdefault(event.path.steps[0].key, []).append(
                artifact_utils.deserialize_artifact(artifact_type, artifact)
            )
        properties = {
            name: value.string_value
            for name, value in execution.custom_properties.items()
            if value.HasField("string_value")
        }
        return cls(inputs, properties, node_id)

    def with_custom_config(self, **overrides) -> "RecordedExecution":
        """The same execution with some `custom_config` entries replaced (e.g. more epochs)."""
        config = json.loads(self.exec_properties["custom_config"])
        for key, value in overrides.items():
            config[key] = {**config[key], **value} if isinstance(value, Mapping) else value
        return RecordedExecution(
            self.inputs, {**self.exec_properties, "custom_config": json.dumps(config)}, self.node_id
        )


@dataclasses.dataclass(frozen=True)
class Worker:
    name: str
    log: str
    seconds: float


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that are free on localhost now (all bound at once, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("localhost", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_configs(workers: int, chief: bool = False, parameter_servers: int = 0) -> list[dict]:
    """One TF_CONFIG per replica of a loopback cluster of `workers` replicas (and `parameter_servers`).

    Without `chief`, all are workers and worker 0 is the chief (TF's rule); with it, the
    first is a `chief` and the others workers 0..n-2, as Vertex AI's training jobs set it.
    Parameter servers (`ps` 0..) come last; with them the chief is the coordinator.
    """
    if parameter_servers and not chief:
        raise ValueError("a cluster with parameter servers needs a chief (the coordinator)")
    addresses = [f"localhost:{port}" for port in free_ports(workers + parameter_servers)]
    ps = {"ps": addresses[workers:]} if parameter_servers else {}
    if not chief:
        return [
            {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}} for index in range(workers)
        ]
    cluster = {"chief": addresses[:1], "worker": addresses[1:workers], **ps}
    return (
        [{"cluster": cluster, "task": {"type": "chief", "index": 0}}]
        + [{"cluster": cluster, "task": {"type": "worker", "index": index}} for index in range(workers - 1)]
        + [{"cluster": cluster, "task": {"type": "ps", "index": index}} for index in range(parameter_servers)]
    )


def run_workers(
    execution: RecordedExecution,
    out_uri: str,
    workers: int,
    log_dir: str,
    timeout: float = 900,
    env: Mapping[str, str] | None = None,
    chief: bool = False,
    parameter_servers: int = 0,
) -> list[Worker]:
    """Run the execution's executor as `workers` processes (plain, without TF_CONFIG, for 1).

    Writes its outputs under `out_uri`, one folder per output key (the Trainer's `model`
    and `model_run`, MaskSearch's `masks`); raises naming the worker and its log if any
    worker fails. `env` adds to every worker's environment; `chief`: Vertex AI's topology
    (a chief and workers, `tf_configs`). With `parameter_servers`, the workers and
    parameter servers serve until the chief is done, and are then stopped.
    """
    executor_class, output_types = EXECUTORS[execution.node_id]
    outputs = {}
    for key, artifact_type in output_types.items():
        outputs[key] = [artifact_type()]
        outputs[key][0].uri = os.path.join(out_uri, key)
    arguments = [
        sys.executable, "-m", "tfx.scripts.run_executor",
        "--executor_class_path", f"{executor_class.__module__}.{executor_class.__name__}",
        "--inputs", artifact_utils.jsonify_artifact_dict(execution.inputs),
        "--outputs", artifact_utils.jsonify_artifact_dict(outputs),
        "--exec-properties", json.dumps(execution.exec_properties),
    ]  # fmt: skip
    os.makedirs(log_dir, exist_ok=True)
    configs = tf_configs(workers, chief, parameter_servers) if workers > 1 else [None]
    processes = []
    start = time.perf_counter()
    for index, tf_config in enumerate(configs):
        worker_env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"} | dict(env or {})
        if tf_config:
            worker_env["TF_CONFIG"] = json.dumps(tf_config)
        name = f"{tf_config['task']['type']}-{tf_config['task']['index']}" if tf_config else "local"
        log = os.path.join(log_dir, f"{name}.log")
        with open(log, "w") as out:
            processes.append(
                (name, log, subprocess.Popen(arguments, env=worker_env, stdout=out, stderr=subprocess.STDOUT))
            )
    logger.info("Started %d %s worker(s), logs in %s", len(processes), execution.node_id, log_dir)
    finished: dict[str, Worker] = {}
    awaited = [processes[0]] if parameter_servers else processes  # servers run until stopped
    while len(finished) < len(awaited):
        for name, log, process in awaited:
            if name in finished or process.poll() is None:
                continue
            finished[name] = Worker(name, log, time.perf_counter() - start)
            if process.returncode != 0:  # the others would wait for it in their collectives
                _kill(processes)
                raise RuntimeError(f"{execution.node_id} {name} exited with {process.returncode}; see {log}")
        if time.perf_counter() - start > timeout:
            _kill(processes)
            raise TimeoutError(f"{execution.node_id} workers did not finish in {timeout:.0f} s; logs in {log_dir}")
        if parameter_servers and any(process.poll() not in (None, 0) for _, _, process in processes[1:]):
            _kill(processes)
            raise RuntimeError(f"a server of the cluster exited; logs in {log_dir}")
        time.sleep(0.2)
    _kill(processes)  # the servers of a parameter-server cluster (the rest have exited)
    return [finished[name] for name, _, _ in awaited]


def _kill(processes: list[tuple[str, str, subprocess.Popen]]) -> None:
    for _, _, process in processes:
        process.kill()
