"""Which replica of a training cluster this process is, and how it trains with the others.

TFX on Kubeflow and Vertex starts the same Trainer `run_fn` on every replica, with
`TF_CONFIG` naming the cluster and this replica's task. With more than one worker
(`chief` counted as a worker) the Trainer trains synchronously data-parallel under
`tf.distribute.MultiWorkerMirroredStrategy`: every worker holds the whole network, its
masks and both optimizers' state, trains on its own slice of every global batch, and the
gradients are all-reduced each step, so the replicas stay equal. Without `TF_CONFIG`, or
with one worker, it is the default (single process) strategy.

Outputs follow the TensorFlow multi-worker convention: every worker runs the same code
(collective ops need all of them), the chief writes to the real location, the others to a
scratch folder that is removed afterwards.

When `TF_CONFIG` names parameter servers (`ps`), training is asynchronous under
`tf.distribute.ParameterServerStrategy` instead: the id tables are split by rows over the
parameter servers (`id_table_partitioner`), everything else lives on one of them, the chief
is the coordinator that schedules steps on the workers (`coordinator`), and the workers and
parameter servers only serve (`serve`) until the job ends with the chief.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from typing import NoReturn

import tensorflow as tf

logger = logging.getLogger(__name__)

TF_CONFIG = "TF_CONFIG"
WORKER_TYPES = ("chief", "master", "worker")  # the task types that train ("master": legacy chief)


@dataclasses.dataclass(frozen=True)
class Replica:
    """This process's place in the training cluster (TF_CONFIG's `cluster` and `task`)."""

    task_type: str | None = None
    task_index: int = 0
    workers: int = 1  # chief and workers
    has_chief: bool = False  # whether the cluster names a chief (else worker 0 is chief)
    parameter_servers: int = 0

    @classmethod
    def from_env(cls) -> "Replica":
        config = json.loads(os.environ.get(TF_CONFIG) or "{}")
        cluster = config.get("cluster") or {}
        if not cluster:
            return cls()
        task = config.get("task") or {}
        if task.get("type") not in cluster:
            raise ValueError(f"{TF_CONFIG}: task {task} is not one of the cluster's jobs {sorted(cluster)}")
        workers = sum(len(cluster.get(job, [])) for job in WORKER_TYPES)
        return cls(
            task_type=task["type"],
            task_index=int(task.get("index", 0)),
            workers=workers,
            has_chief=any(cluster.get(job) for job in ("chief", "master")),
            parameter_servers=len(cluster.get("ps", [])),
        )

    @property
    def distributed(self) -> bool:
        return self.workers > 1

    @property
    def serves(self) -> bool:
        """A worker or parameter server of a parameter-server cluster: it runs what the chief schedules."""
        return self.parameter_servers > 0 and self.task_type in ("worker", "ps")

    @property
    def is_chief(self) -> bool:
        """The replica that writes the outputs: `chief` (or `master`), else worker 0 (TF's rule)."""
        if self.task_type is None:
            return True
        if self.task_type in ("chief", "master"):
            return self.task_index == 0
        return self.task_type == "worker" and self.task_index == 0 and not self.has_chief

    @property
    def name(self) -> str:
        return f"{self.task_type}-{self.task_index}" if self.task_type else "local"


def training_strategy(replica: Replica, id_table_shapes: Collection[tuple[int, int]] = ()) -> tf.distribute.Strategy:
    """ParameterServerStrategy for a cluster with parameter servers (`id_table_shapes`: the
    shapes of the id tables to split over them), MultiWorkerMirroredStrategy for several
    workers, else the default strategy.

    Must be called before the process runs any TensorFlow op (collectives are configured
    when the runtime starts).
    """
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver
    if replica.parameter_servers:
        if replica.serves:
            raise ValueError(
                f"{replica.name} serves the chief of a parameter-server cluster (`serve`), it does not train"
            )
        strategy = tf.distribute.ParameterServerStrategy(
            resolver(), variable_partitioner=id_table_partitioner(id_table_shapes, replica.parameter_servers)
        )
        logger.info(
            "Training as the coordinator of %d workers and %d parameter servers "
            "(ParameterServerStrategy, id tables split by rows)",
            replica.workers - 1,
            replica.parameter_servers,
        )
        return strategy
    if not replica.distributed:
        return tf.distribute.get_strategy()
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver())
    logger.info(
        "Training as %s of %d workers (MultiWorkerMirroredStrategy, %d replicas in sync)",
        replica.name,
        replica.workers,
        strategy.num_replicas_in_sync,
    )
    return strategy


def id_table_partitioner(table_shapes: Collection[tuple[int, int]], shards: int) -> Callable:
    """A variable partitioner that splits the id tables (variables of `table_shapes`) by rows
    into `shards`, and nothing else: the masked kernels and their masks stay whole, as the
    masked update needs them."""
    tables = {tuple(shape) for shape in table_shapes}

    def partition(shape: tf.TensorShape, dtype: tf.dtypes.DType) -> list[int]:
        dims = shape.as_list()
        if tuple(dims) in tables and dims[0] >= shards:
            return [shards] + [1] * (len(dims) - 1)
        return [1] * len(dims)

    return partition


def coordinator(strategy: tf.distribute.Strategy) -> "tf.distribute.coordinator.ClusterCoordinator | None":
    """The strategy's ClusterCoordinator (one per strategy) under ParameterServerStrategy, else None."""
    if isinstance(strategy, tf.distribute.ParameterServerStrategy):
        return tf.distribute.coordinator.ClusterCoordinator(strategy)
    return None


def serve(replica: Replica) -> NoReturn:
    """Run this worker or parameter server of a parameter-server cluster until the job ends."""
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    logger.info(
        "Serving as %s of a cluster of %d parameter servers: the chief schedules the training",
        replica.name,
        replica.parameter_servers,
    )
    server = tf.distribute.Server(
        resolver.cluster_spec(),
        job_name=replica.task_type,
        task_index=replica.task_index,
        protocol=resolver.rpc_layer or "grpc",
        start=True,
    )
    server.join()
    raise RuntimeError(f"the server of {replica.name} stopped")


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Wait until every worker gets here (an all-reduce of one number)."""
    if strategy.num_replicas_in_sync > 1:

        def one():
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.constant(1.0))

        tf.function(lambda: strategy.run(one))()


@contextlib.contextmanager
def output_folder(path: str, replica: Replica) -> Iterator[str]:
    """Where this replica writes what `path` is for: `path` on the chief, scratch elsewhere."""
    if replica.is_chief:
        yield path
        return
    scratch = tempfile.mkdtemp(prefix=f"lt4rec-{replica.name}-")
    try:
        yield os.path.join(scratch, os.path.basename(path.rstrip("/")))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fingerprint(model: tf.keras.Model) -> dict[str, str]:
    """A digest of every variable (weights and masks) by name: equal replicas, equal digests."""
    return {
        f"{index:03d} {variable.name}": hashlib.sha256(variable.numpy().tobytes()).hexdigest()[:16]
        for index, variable in enumerate(model.variables)
    }
