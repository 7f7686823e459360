"""The Trainer as the workers of a training cluster on one machine (loopback).

On Kubeflow and Vertex every replica of a distributed Trainer runs the same executor
(`python -m tfx.scripts.run_executor ...`) with `TF_CONFIG` naming the cluster and its own
task. This starts those processes here, on the inputs and properties of a Trainer
execution that ML Metadata recorded, so that multi-worker training can be tested and
measured without a cluster.
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

from lt4rec.components.sparse_sharing_trainer import executor as trainer_executor

EXECUTOR = f"{trainer_executor.Executor.__module__}.{trainer_executor.Executor.__name__}"
TRAINER_NODE = "SparseSharingTrainer"


@dataclasses.dataclass
class TrainerExecution:
    """What a Trainer execution read: its input artifacts and execution properties."""

    inputs: dict[str, list]
    exec_properties: dict[str, str]

    @classmethod
    def recorded(cls, metadata_sqlite: str, node_id: str = TRAINER_NODE) -> "TrainerExecution":
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
            inputs.setdefault(event.path.steps[0].key, []).append(artifact_utils.deserialize_artifact(artifact_type, artifact))
        properties = {name: value.string_value for name, value in execution.custom_properties.items() if value.HasField("string_value")}
        return cls(inputs, properties)

    def with_custom_config(self, **overrides) -> "TrainerExecution":
        """The same execution with some `custom_config` entries replaced (e.g. more epochs)."""
        config = json.loads(self.exec_properties["custom_config"])
        for key, value in overrides.items():
            config[key] = {**config[key], **value} if isinstance(value, Mapping) else value
        return TrainerExecution(self.inputs, {**self.exec_properties, "custom_config": json.dumps(config)})


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


def tf_configs(workers: int, chief: bool = False) -> list[dict]:
    """One TF_CONFIG per replica of a loopback cluster of `workers` replicas.

    Without `chief`, all are workers and worker 0 is the chief (TF's rule); with it, the
    first is a `chief` and the others workers 0..n-2, as Vertex AI's training jobs set it.
    """
    addresses = [f"localhost:{port}" for port in free_ports(workers)]
    if not chief:
        return [{"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}} for index in range(workers)]
    cluster = {"chief": addresses[:1], "worker": addresses[1:]}
    return [{"cluster": cluster, "task": {"type": "chief", "index": 0}}] + [
        {"cluster": cluster, "task": {"type": "worker", "index": index}} for index in range(workers - 1)
    ]


def run_workers(
    execution: TrainerExecution,
    model_uri: str,
    workers: int,
    log_dir: str,
    timeout: float = 900,
    env: Mapping[str, str] | None = None,
    chief: bool = False,
) -> list[Worker]:
    """Run the Trainer executor as `workers` processes (plain, without TF_CONFIG, for 1).

    Writes the `model` and `model_run` outputs under `model_uri`; raises naming the worker
    and its log if any worker fails. `env` adds to every worker's environment; `chief`:
    Vertex AI's topology (a chief and workers, `tf_configs`).
    """
    model = standard_artifacts.Model()
    model.uri = os.path.join(model_uri, "model")
    model_run = standard_artifacts.ModelRun()
    model_run.uri = os.path.join(model_uri, "model_run")
    arguments = [
        sys.executable, "-m", "tfx.scripts.run_executor",
        "--executor_class_path", EXECUTOR,
        "--inputs", artifact_utils.jsonify_artifact_dict(execution.inputs),
        "--outputs", artifact_utils.jsonify_artifact_dict({"model": [model], "model_run": [model_run]}),
        "--exec-properties", json.dumps(execution.exec_properties),
    ]  # fmt: skip
    os.makedirs(log_dir, exist_ok=True)
    configs = tf_configs(workers, chief) if workers > 1 else [None]
    processes = []
    start = time.perf_counter()
    for index, tf_config in enumerate(configs):
        worker_env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"} | dict(env or {})
        if tf_config:
            worker_env["TF_CONFIG"] = json.dumps(tf_config)
        name = f"{tf_config['task']['type']}-{tf_config['task']['index']}" if tf_config else "local"
        log = os.path.join(log_dir, f"{name}.log")
        with open(log, "w") as out:
            processes.append((name, log, subprocess.Popen(arguments, env=worker_env, stdout=out, stderr=subprocess.STDOUT)))
    logging.info("Started %d Trainer worker(s), logs in %s", len(processes), log_dir)
    finished: dict[str, Worker] = {}
    while len(finished) < len(processes):
        for name, log, process in processes:
            if name in finished or process.poll() is None:
                continue
            finished[name] = Worker(name, log, time.perf_counter() - start)
            if process.returncode != 0:  # the others would wait for it in their collectives
                _kill(processes)
                raise RuntimeError(f"Trainer {name} exited with {process.returncode}; see {log}")
        if time.perf_counter() - start > timeout:
            _kill(processes)
            raise TimeoutError(f"Trainer workers did not finish in {timeout:.0f} s; logs in {log_dir}")
        time.sleep(0.2)
    return [finished[name] for name, _, _ in processes]


def _kill(processes: list[tuple[str, str, subprocess.Popen]]) -> None:
    for _, _, process in processes:
        process.kill()
