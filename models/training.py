"""Training of the network on task batches: one optimizer per task.

Every batch belongs to one task: CTR batches hold impressions, CVR batches clicked
impressions only. A batch of task k runs the network through mask k and is applied by
task k's own optimizer. Gradients through `kernel * mask_k` are exactly zero outside mask
k, and an Adam whose moments only ever saw zeros there moves nothing there: a batch of
task k leaves every weight outside mask k, and the other task's optimizer state, bit for
bit as they were. (One shared Adam would not: its moments, filled by task j, would keep
moving j's private weights on k's batches.)
"""

from __future__ import annotations

import dataclasses
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import tensorflow as tf

from lt4rec.models import features, masks, metrics, network

logger = logging.getLogger(__name__)

CLICK = features.CLICK_LABEL
WATCH_RATIO = features.WATCH_RATIO_LABEL
LABEL_KEYS = (CLICK, WATCH_RATIO)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the network is trained; recorded with every trained model."""

    batch_size: int = 512
    learning_rate: float = 1e-3
    epochs: int = 1  # passes of the final (shared) training over the training split
    loss_weights: tuple[tuple[str, float], ...] = (("ctr", 0.7), ("cvr", 0.3))
    # Gradient conflict: clicked samples with a watch ratio under the threshold weigh
    # 1 + conflict_weight in the CVR loss (0 turns it off).
    conflict_weight: float = 0.0
    conflict_threshold: float = 0.2
    seed: int = 0
    # "adam", or "lazy_adam": Adam that updates only the embedding rows a batch used
    # (its step cost no longer grows with the tables; see `LazyAdam`).
    optimizer: str = "adam"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, not {self.optimizer!r}")

    @property
    def loss_weight(self) -> dict[str, float]:
        return dict(self.loss_weights)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: Mapping) -> "TrainConfig":
        config = dict(config)
        config["loss_weights"] = tuple((task, float(w)) for task, w in config["loss_weights"])
        return cls(**config)


class LazyAdam(tf.keras.optimizers.Adam):
    """Adam whose sparse (embedding) updates touch only the rows in the batch.

    tf_keras' Adam decays both moments of a whole table on every step, even for an
    IndexedSlices gradient, so a step costs time in proportion to the tables (about half a
    microsecond per row here: tens of seconds per step for production-sized tables). This
    one updates the moments and weights of the batch's rows alone, with Adam's formula and
    the optimizer's step count (as TF Addons' LazyAdam did); dense gradients are plain Adam.
    """

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        rows, position = tf.unique(gradient.indices)  # a row may appear more than once in a batch
        values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))


OPTIMIZERS = {"adam": tf.keras.optimizers.Adam, "lazy_adam": LazyAdam}


Columns = Mapping[str, "np.ndarray | tf.Tensor"]  # transformed examples in memory: name -> [rows, ...]


def task_columns(columns: Columns, task: str) -> dict[str, tf.Tensor]:
    """The examples of a task: CTR all impressions, CVR the clicked ones only."""
    columns = {name: tf.convert_to_tensor(values) for name, values in columns.items()}
    if task == "cvr":
        clicked = tf.equal(tf.reshape(columns[CLICK], [-1]), 1)
        return {name: tf.boolean_mask(values, clicked) for name, values in columns.items()}
    return columns


def task_batches(
    columns: Columns, task: str, batch_size: int, seed: int, input_context: tf.distribute.InputContext | None = None
) -> tf.data.Dataset:
    """Shuffled batches of one task, reshuffled each pass (reproducibly from the seed).

    Shuffles row indices and gathers whole batches, which is many times faster than
    shuffling examples one by one. Given the `input_context` of a multi-worker strategy,
    the batches are this worker's replicas' slices of each global batch of `batch_size`.
    """
    columns = task_columns(columns, task)
    rows = int(columns[CLICK].shape[0])
    order = tf.data.Dataset.range(rows).shuffle(rows, seed=seed, reshuffle_each_iteration=True)
    if input_context is None or input_context.num_replicas_in_sync == 1:
        indices = order.batch(batch_size)
    else:
        indices = replica_slices(order, batch_size, input_context)
    return indices.map(lambda indices: {name: tf.gather(values, indices) for name, values in columns.items()}).prefetch(
        tf.data.AUTOTUNE
    )


def replica_slices(order: tf.data.Dataset, batch_size: int, input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    """This worker's replicas' slices of every global batch of `order`, one slice per element.

    Every worker shuffles alike (same seed) and cuts the same global batches, so a pass
    gives each worker the same number of steps and each example to exactly one replica.
    The last, partial global batch is dropped: it would leave replicas uneven or empty.
    """
    replicas = input_context.num_replicas_in_sync
    per_replica = input_context.get_per_replica_batch_size(batch_size)  # raises unless it divides
    local = replicas // input_context.num_input_pipelines
    first = input_context.input_pipeline_id * local
    return (
        order.batch(batch_size, drop_remainder=True)
        .map(lambda indices: tf.reshape(indices, [replicas, per_replica])[first : first + local])
        .unbatch()
    )


def distributed_task_batches(
    columns: Columns, task: str, batch_size: int, seed: int, strategy: tf.distribute.Strategy
) -> "tf.data.Dataset | tf.distribute.DistributedDataset":
    """`task_batches` to train on under `strategy`: per step, each replica gets its slice."""
    if strategy.num_replicas_in_sync == 1:
        return task_batches(columns, task, batch_size, seed)
    return strategy.distribute_datasets_from_function(
        lambda input_context: task_batches(columns, task, batch_size, seed, input_context)
    )


def hold_out(columns: Columns, fraction: float, seed: int) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """(kept, held out): a seeded random `fraction` of the rows set aside, e.g. for validation."""
    rows = int(tf.shape(columns[CLICK])[0])
    held = max(1, round(rows * fraction))
    order = tf.random.experimental.stateless_shuffle(tf.range(rows), seed=[seed, 0])
    kept_rows, held_rows = tf.sort(order[held:]), tf.sort(order[:held])
    return (
        {name: tf.gather(values, kept_rows) for name, values in columns.items()},
        {name: tf.gather(values, held_rows) for name, values in columns.items()},
    )


def ordered_batches(columns: Columns, batch_size: int) -> tf.data.Dataset:
    """All examples in order, for scoring."""
    return tf.data.Dataset.from_tensor_slices(dict(columns)).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def task_loss(task: str, labels: Mapping[str, tf.Tensor], predictions: tf.Tensor, config: TrainConfig) -> tf.Tensor:
    """CTR: binary cross-entropy on the click. CVR: weighted MSE of the watch ratio."""
    if task == "ctr":
        click = tf.cast(tf.reshape(labels[CLICK], [-1]), tf.float32)
        return tf.reduce_mean(tf.keras.losses.binary_crossentropy(click[:, tf.newaxis], predictions[:, tf.newaxis]))
    ratio = tf.reshape(labels[WATCH_RATIO], [-1])
    weight = 1.0 + config.conflict_weight * tf.cast(ratio < config.conflict_threshold, tf.float32)
    return tf.reduce_sum(weight * tf.square(ratio - predictions)) / tf.reduce_sum(weight)


def split(batch: Mapping[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    inputs = {name: batch[name] for name in features.FEATURE_NAMES}
    return inputs, {key: batch[key] for key in LABEL_KEYS}


@dataclasses.dataclass(frozen=True)
class PhaseStats:
    """What one training pass did, for logs and benchmarks."""

    phase: str
    examples: dict[str, int]
    seconds: float
    mean_loss: dict[str, float]

    @property
    def examples_per_second(self) -> float:
        return sum(self.examples.values()) / self.seconds if self.seconds else float("nan")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "examples_per_second": self.examples_per_second}


class MultiTaskTrainer:
    """Trains a `RankingNetwork` on task batches, one Adam per task.

    Under a multi-worker `strategy` (the model built in its scope, batches from
    `distributed_task_batches`) each step runs on every replica and the optimizers apply
    the all-reduced gradients; a batch's loss is its replica's share of the global mean.
    """

    def __init__(self, model: network.RankingNetwork, config: TrainConfig, strategy: tf.distribute.Strategy | None = None):
        self.model = model
        self.config = config
        self.strategy = strategy or tf.distribute.get_strategy()
        with self.strategy.scope():
            self.optimizers = {task: OPTIMIZERS[config.optimizer](config.learning_rate) for task in model.config.tasks}
            for optimizer in self.optimizers.values():
                optimizer.build(model.trainable_variables)
        self._steps: dict[str, Callable] = {}

    @property
    def distributed(self) -> bool:
        return self.strategy.num_replicas_in_sync > 1

    def reset_optimizers(self) -> None:
        """Fresh optimizer state (moments and step counts), as after construction."""
        for optimizer in self.optimizers.values():
            for variable in optimizer.variables():
                variable.assign(tf.zeros_like(variable))

    def replica_step(self, task: str) -> Callable[[Mapping[str, tf.Tensor]], tf.Tensor]:
        """One step of `task` on one replica's batch: masked forward, task loss, its optimizer.

        `train_step` runs it (under `strategy.run` when distributed); a
        ParameterServerStrategy's `ClusterCoordinator` would schedule it on its workers.
        """
        weight = self.config.loss_weight.get(task, 1.0) if len(self.model.config.tasks) > 1 else 1.0
        replicas = self.strategy.num_replicas_in_sync  # the gradients are summed over replicas

        def step(batch):
            inputs, labels = split(batch)
            with tf.GradientTape() as tape:
                predictions = self.model(inputs, task=task, training=True)[task]
                loss = task_loss(task, labels, predictions, self.config)
                weighted = weight * loss / replicas
            variables = self.model.trainable_variables
            gradients = tape.gradient(weighted, variables)
            self.optimizers[task].apply_gradients(
                [(gradient, variable) for gradient, variable in zip(gradients, variables) if gradient is not None]
            )
            return loss

        return step

    def train_step(self, task: str, batch: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """One step on one task's batch; the loss (per replica, under a multi-worker strategy)."""
        if task not in self._steps:
            step = self.replica_step(task)
            if self.distributed:
                # Every replica's slice has the same, fixed size: one trace per task.
                self._steps[task] = tf.function(lambda replica_batch: self.strategy.run(step, args=(replica_batch,)))
            else:
                # Traced once per task, for any batch size (the last batch of a pass is smaller).
                signature = {key: tf.TensorSpec([None, *tensor.shape[1:]], tensor.dtype) for key, tensor in batch.items()}
                self._steps[task] = tf.function(step, input_signature=[signature])
        return self._steps[task](batch)

    def train(self, batches: Mapping[str, Iterable], phase: str, seed: int) -> PhaseStats:
        """One pass over every task's batches, interleaved at random in proportion.

        With one task this is plain training on that task; with both it is the mixed
        training of Algorithm 1 (warmup and final phase).
        """
        rng = np.random.default_rng(seed)
        iterators = {task: iter(task_batches) for task, task_batches in batches.items()}
        examples = {task: 0 for task in batches}
        losses: dict[str, list[float]] = {task: [] for task in batches}
        start = time.perf_counter()
        while iterators:
            tasks = list(iterators)
            task = tasks[rng.integers(len(tasks))] if len(tasks) > 1 else tasks[0]
            batch = next(iterators[task], None)
            if batch is None:
                del iterators[task]
                continue
            local_losses = self.strategy.experimental_local_results(self.train_step(task, batch))
            local_batches = self.strategy.experimental_local_results(batch[CLICK])
            losses[task].append(float(np.mean([float(loss) for loss in local_losses])))
            # All replicas' slices are equally long: the global batch is the local ones scaled up.
            replicas_per_local = self.strategy.num_replicas_in_sync // len(local_batches)
            examples[task] += replicas_per_local * sum(int(tf.shape(labels)[0]) for labels in local_batches)
        stats = PhaseStats(
            phase=phase,
            examples=examples,
            seconds=time.perf_counter() - start,
            mean_loss={task: float(np.mean(values)) if values else float("nan") for task, values in losses.items()},
        )
        logger.info(
            "%s: %s examples in %.1f s (%.0f examples/s), mean loss %s",
            phase,
            ", ".join(f"{count} {task}" for task, count in examples.items()),
            stats.seconds,
            stats.examples_per_second,
            ", ".join(f"{task} {loss:.4f}" for task, loss in stats.mean_loss.items()),
        )
        return stats


_PREDICT_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def predict(model: network.RankingNetwork, batches: Iterable) -> dict[str, np.ndarray]:
    """Every task's predictions over batches, with the labels and the user id beside them."""
    if model not in _PREDICT_FUNCTIONS:
        _PREDICT_FUNCTIONS[model] = tf.function(lambda inputs: model(inputs), reduce_retracing=True)
    call = _PREDICT_FUNCTIONS[model]
    collected: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        inputs, labels = split(batch)
        outputs = {**call(inputs), **labels, features.USER_ID: inputs[features.USER_ID][:, 0]}
        for key, value in outputs.items():
            collected.setdefault(key, []).append(np.reshape(value.numpy(), [-1]))
    return {key: np.concatenate(values) for key, values in collected.items()}


def evaluate(model: network.RankingNetwork, batches: Iterable) -> metrics.TaskMetrics:
    scored = predict(model, batches)
    return metrics.compute(
        click=scored[CLICK],
        watch_ratio=scored[WATCH_RATIO],
        user=scored[features.USER_ID],
        ctr=scored.get("ctr"),
        cvr=scored.get("cvr"),
    )


def snapshot(model: tf.keras.Model) -> list[np.ndarray]:
    """The trainable weights (not masks, not optimizer state), to rewind to."""
    return [variable.numpy() for variable in model.trainable_variables]


def restore(model: tf.keras.Model, weights: list[np.ndarray]) -> None:
    for variable, value in zip(model.trainable_variables, weights, strict=True):
        variable.assign(value)


def mlp_weight_share(model: network.RankingNetwork, task: str) -> float:
    """The share of the sparse-sharing MLP's weights `task` keeps (1 for dense variants)."""
    if not model.masked:
        return 1.0
    return masks.remaining_fraction(masks.get_masks(model, task))
