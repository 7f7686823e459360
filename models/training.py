"""Training of the network on task batches: one Adam, updating only inside the task's mask.

Every batch belongs to one task: CTR batches hold impressions, CVR batches clicked
impressions only (ESMM, which learns CVR over all impressions, trains on impression batches
only). A batch of task k runs the network through mask k, and its loss w_k * L_k (Eq. 2 of
the paper) is applied by one Adam for the whole network (`MaskedAdam`), which on a task-k
step updates the moments and the weights of the masked kernels only where mask k keeps
them (and the biases of the units it keeps): a batch of task k leaves every weight outside
mask k, and its optimizer state, bit for bit as they were. Because the tasks share Adam's
moments inside the overlap of their masks, the loss weights set how hard each task pulls
on the shared weights (one Adam per task would cancel them: Adam ignores a gradient's
scale).

Mixed passes interleave the tasks' batches evenly in proportion to their counts (every
stretch of a pass has each task's share of steps), and every training phase stops early
on a held-out validation share, keeping its best epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import tensorflow as tf

from lt4rec import features
from lt4rec.models import distribution, inputs, masks, metrics, network
from lt4rec.models.config import ADAM, LAZY_ADAM, NetworkConfig, TrainConfig

logger = logging.getLogger(__name__)

CLICK = features.CLICK_LABEL
WATCH_RATIO = features.WATCH_RATIO_LABEL
LABEL_KEYS = (CLICK, WATCH_RATIO)
ESMM = "esmm"  # `NetworkConfig.variant` of the model trained with the CTCVR loss


def _adam_state(optimizer: tf.keras.optimizers.Adam, variable: tf.Variable) -> tuple:
    """This step's bias-corrected step size, beta_1, beta_2 and the variable's two moment slots."""
    dtype = variable.dtype
    step = tf.cast(optimizer.iterations + 1, dtype)
    beta_1, beta_2 = tf.cast(optimizer.beta_1, dtype), tf.cast(optimizer.beta_2, dtype)
    alpha = tf.cast(optimizer.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
    index = optimizer._index_dict[optimizer._var_key(variable)]
    return alpha, beta_1, beta_2, optimizer._momentums[index], optimizer._velocities[index]


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
        alpha, beta_1, beta_2, m, v = _adam_state(self, variable)
        rows, position = tf.unique(gradient.indices)  # a row may appear more than once in a batch
        values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))


class _TaskMasked:
    """Adam's update, made only where the current step's mask of a variable is 1.

    `apply_masked` takes, beside the gradients, a mask (a callable giving a 0/1 tensor of
    the variable's shape) for the variables a task may move only in part; outside it the
    moments and the weight keep their values exactly (`tf.where`, not a multiplication).
    Variables without a mask get the plain update.
    """

    _step_masks: dict = {}

    @tf.__internal__.tracking.no_automatic_dependency_tracking  # the masks are not optimizer state
    def apply_masked(self, grads_and_vars, step_masks: Iterable[tuple[tf.Variable, Callable[[], tf.Tensor]]]):
        self._step_masks = {self._var_key(variable): mask for variable, mask in step_masks}
        try:
            return self.apply_gradients(grads_and_vars)
        finally:
            self._step_masks = {}

    def update_step(self, gradient, variable):
        mask = self._step_masks.get(self._var_key(variable))
        if mask is None:
            return super().update_step(gradient, variable)
        alpha, beta_1, beta_2, m, v = _adam_state(self, variable)
        gradient = tf.convert_to_tensor(gradient)
        keep = tf.cast(mask(), tf.bool)
        new_m = m + (gradient - m) * (1 - beta_1)
        new_v = v + (tf.square(gradient) - v) * (1 - beta_2)
        m.assign(tf.where(keep, new_m, m))
        v.assign(tf.where(keep, new_v, v))
        variable.assign(tf.where(keep, variable - alpha * new_m / (tf.sqrt(new_v) + self.epsilon), variable))


class MaskedAdam(_TaskMasked, tf.keras.optimizers.Adam):
    """Adam with per-step masks (`_TaskMasked`)."""


class MaskedLazyAdam(_TaskMasked, LazyAdam):
    """Lazy Adam (embedding rows) with per-step masks (`_TaskMasked`)."""


OPTIMIZERS = {ADAM: MaskedAdam, LAZY_ADAM: MaskedLazyAdam}


Columns = Mapping[str, "np.ndarray | tf.Tensor"]  # transformed examples in memory: name -> [rows, ...]


def task_columns(columns: Columns, task: str) -> dict[str, tf.Tensor]:
    """The examples of a task: CTR all impressions, CVR the clicked ones only."""
    columns = {name: tf.convert_to_tensor(values) for name, values in columns.items()}
    if task != "cvr":
        return columns  # as they are: no copy
    rows = inputs.task_examples(columns, task)
    return {name: tf.boolean_mask(values, rows) for name, values in columns.items()}


def task_batches(
    columns: Columns, task: str, batch_size: int, seed: int, input_context: tf.distribute.InputContext | None = None
) -> tf.data.Dataset:
    """Shuffled whole batches of one task, reshuffled each pass (reproducibly from the seed).

    Shuffles row indices and gathers whole batches, which is many times faster than
    shuffling examples one by one. The last, partial batch of a pass is dropped (unless it
    is the only one), so that one worker and several train on the same global batches:
    given the `input_context` of a multi-worker strategy, the batches are this worker's
    replicas' slices of each global batch of `batch_size`.
    """
    columns = task_columns(columns, task)
    rows = int(columns[CLICK].shape[0])
    order = tf.data.Dataset.range(rows).shuffle(rows, seed=seed, reshuffle_each_iteration=True)
    if input_context is None or input_context.num_replicas_in_sync == 1:
        indices = order.batch(batch_size, drop_remainder=rows >= batch_size)
    else:
        indices = replica_slices(order, batch_size, input_context)
    return indices.map(lambda indices: {name: tf.gather(values, indices) for name, values in columns.items()}).prefetch(
        tf.data.AUTOTUNE
    )


def replica_slices(
    order: tf.data.Dataset, batch_size: int, input_context: tf.distribute.InputContext
) -> tf.data.Dataset:
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


def task_steps(columns: Columns, task: str, batch_size: int, strategy: tf.distribute.Strategy | None = None) -> int:
    """How many steps a pass of `distributed_task_batches` takes."""
    click = np.reshape(np.asarray(columns[CLICK]), [-1])
    rows = int(click.size if task != "cvr" else np.count_nonzero(click == 1))
    return steps_per_pass(rows, batch_size, strategy)


def steps_per_pass(rows: int, batch_size: int, strategy: tf.distribute.Strategy | None = None) -> int:
    """Whole batches of `batch_size` in `rows` examples (one partial batch for fewer rows, unless distributed)."""
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        return rows // batch_size
    return max(rows // batch_size, min(rows, 1))


def batch_streams(config: NetworkConfig) -> tuple[str, ...]:
    """The tasks whose batches a network trains on: ESMM learns both from impressions alone."""
    return ("ctr",) if config.variant == ESMM else config.tasks


def interleave(steps: Mapping[str, int], seed: int) -> list[str]:
    """A pass's order of task steps: each task's batches evenly spread, at random offsets.

    Task k's j-th batch goes at (j + u_k) / n_k of the pass (u_k uniform in [0, 1)), so any
    stretch of the pass holds each task's share of steps to within one batch, and the CVR
    batches do not run out before the CTR ones.
    """
    rng = np.random.default_rng(seed)
    positions = [
        (float((j + offset) / count), float(tiebreak), task)
        for task, count in steps.items()
        if count > 0
        for offset in [rng.random()]
        for j, tiebreak in zip(range(count), rng.random(count))
    ]
    return [task for _, _, task in sorted(positions)]


def base_rates(columns: Columns) -> dict[str, float]:
    """Each task's no-skill prediction on `columns` (`inputs.SplitCounts.base_rates`)."""
    click = np.reshape(np.asarray(columns[CLICK]), [-1]) == 1
    ratio = np.reshape(np.asarray(columns[WATCH_RATIO]), [-1])
    return inputs.SplitCounts(
        rows=click.size, clicks=int(click.sum()), clicked_watch_ratio=float(ratio[click].sum()), held_rows=0
    ).base_rates


def hold_out(columns: Columns, fraction: float, seed: int) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """(kept, held out): the rows `inputs.held_out` sets aside (a seeded `fraction`, by content), in order."""
    columns = {name: tf.convert_to_tensor(values) for name, values in columns.items()}
    held = inputs.held_out(columns, fraction, seed)
    return (
        {name: tf.boolean_mask(values, tf.logical_not(held)) for name, values in columns.items()},
        {name: tf.boolean_mask(values, held) for name, values in columns.items()},
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


def ctcvr_loss(labels: Mapping[str, tf.Tensor], outputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """ESMM's CVR loss over all impressions: MSE of click x watch ratio against pCTR x pCVR."""
    click = tf.cast(tf.reshape(labels[CLICK], [-1]), tf.float32)
    ctcvr = click * tf.reshape(labels[WATCH_RATIO], [-1])
    return tf.reduce_mean(tf.square(ctcvr - outputs["ctr"] * outputs["cvr"]))


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
    validation_loss: float | None = None

    @property
    def examples_per_second(self) -> float:
        return sum(self.examples.values()) / self.seconds if self.seconds else float("nan")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "examples_per_second": self.examples_per_second}


class MultiTaskTrainer:
    """Trains a `RankingNetwork` on task batches with one masked Adam (`MaskedAdam`).

    A task-k step minimises w_k * L_k through mask k; the optimizer moves the masked
    kernels (and biases) only inside mask k. Under a multi-worker `strategy` (the model
    built in its scope, batches from `distributed_task_batches`) each step runs on every
    replica and the optimizer applies the all-reduced gradients; a batch's loss is its
    replica's share of the global mean. Under ParameterServerStrategy (batches: per-worker
    datasets) the coordinator schedules each step on a worker (`scheduled_step`).
    """

    def __init__(
        self, model: network.RankingNetwork, config: TrainConfig, strategy: tf.distribute.Strategy | None = None
    ):
        self.model = model
        self.config = config
        self.strategy = strategy or tf.distribute.get_strategy()
        self.coordinator = distribution.coordinator(self.strategy)  # ParameterServerStrategy: steps are scheduled
        with self.strategy.scope():
            self.optimizer = OPTIMIZERS[config.optimizer](config.learning_rate)
            self.optimizer.build(model.trainable_variables)
        self._steps: dict[str, Callable] = {}

    @property
    def distributed(self) -> bool:
        return self.strategy.num_replicas_in_sync > 1

    @property
    def streams(self) -> tuple[str, ...]:
        return batch_streams(self.model.config)

    def reset_optimizer(self) -> None:
        """Fresh optimizer state (moments and step count), as after construction."""
        for variable in self.optimizer.variables():
            variable.assign(tf.zeros_like(variable))

    def _loss(self, task: str, inputs: Mapping[str, tf.Tensor], labels: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Eq. 2's term of a task-k batch: w_k * L_k (ESMM: both tasks' terms, over impressions)."""
        multi_task = len(self.model.config.tasks) > 1
        weight = self.config.loss_weight if multi_task else {task: 1.0}
        if self.model.config.variant == ESMM:
            outputs = self.model(inputs, training=True)
            return weight["ctr"] * task_loss("ctr", labels, outputs["ctr"], self.config) + weight["cvr"] * ctcvr_loss(
                labels, outputs
            )
        predictions = self.model(inputs, task=task, training=True)[task]
        return weight[task] * task_loss(task, labels, predictions, self.config)

    def replica_step(self, task: str) -> Callable[[Mapping[str, tf.Tensor]], tf.Tensor]:
        """One step of `task` on one replica's batch: masked forward, w_k * L_k, the masked update.

        `train_step` runs it (under `strategy.run` when distributed); a
        ParameterServerStrategy's `ClusterCoordinator` would schedule it on its workers.
        """
        replicas = self.strategy.num_replicas_in_sync  # the gradients are summed over replicas
        step_masks = masks.update_masks(self.model, task) if self.model.masked else []

        def step(batch):
            inputs, labels = split(batch)
            with tf.GradientTape() as tape:
                loss = self._loss(task, inputs, labels)
                scaled = loss / replicas
            variables = self.model.trainable_variables
            gradients = tape.gradient(scaled, variables)
            self.optimizer.apply_masked(
                [(gradient, variable) for gradient, variable in zip(gradients, variables) if gradient is not None],
                step_masks,
            )
            return loss

        return step

    def scheduled_step(self, task: str, iterator) -> "tf.distribute.experimental.coordinator.RemoteValue":
        """ParameterServerStrategy: one step of `task` scheduled on a worker, on its next batch."""
        key = ("scheduled", task)
        if key not in self._steps:
            step = self.replica_step(task)
            self._steps[key] = tf.function(
                lambda worker_iterator: self.strategy.run(step, args=(next(worker_iterator),))
            )
        return self.coordinator.schedule(self._steps[key], args=(iterator,))

    def train_step(self, task: str, batch: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """One step on one task's batch; the loss (per replica, under a multi-worker strategy)."""
        if task not in self._steps:
            step = self.replica_step(task)
            if self.distributed:
                # Every replica's slice has the same, fixed size: one trace per task.
                self._steps[task] = tf.function(lambda replica_batch: self.strategy.run(step, args=(replica_batch,)))
            else:
                # Traced once per task, for any batch size (the last batch of a pass is smaller).
                signature = {
                    key: tf.TensorSpec([None, *tensor.shape[1:]], tensor.dtype) for key, tensor in batch.items()
                }
                self._steps[task] = tf.function(step, input_signature=[signature])
        return self._steps[task](batch)

    def train(
        self, batches: Mapping[str, Iterable], phase: str, seed: int, steps: Mapping[str, int] | None = None
    ) -> PhaseStats:
        """One pass over every task's batches, interleaved in proportion (`interleave`).

        `steps`: the batches each task's iterable yields in a pass (default: the datasets'
        cardinality). With one task this is plain training on that task; with both it is
        the mixed training of Algorithm 1 (warmup and final phase).
        """
        steps = dict(steps) if steps is not None else {task: _cardinality(dataset) for task, dataset in batches.items()}
        iterators = {task: iter(task_batches) for task, task_batches in batches.items()}
        examples = {task: 0 for task in batches}
        losses: dict[str, list[float]] = {task: [] for task in batches}
        start = time.perf_counter()
        if self.coordinator is not None:  # the steps run on the workers, asynchronously, on whole batches
            scheduled = [(task, self.scheduled_step(task, iterators[task])) for task in interleave(steps, seed)]
            self.coordinator.join()
            for task, loss in scheduled:
                losses[task].append(float(loss.fetch()))
                examples[task] += self.config.batch_size
        else:
            for task in interleave(steps, seed):
                batch = next(iterators[task])
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
            "%s: %s examples in %.1f s (%.0f examples/s), mean training loss %s",
            phase,
            ", ".join(f"{count} {task}" for task, count in examples.items()),
            stats.seconds,
            stats.examples_per_second,
            ", ".join(f"{task} {loss:.4f}" for task, loss in stats.mean_loss.items()),
        )
        return stats

    def validation_loss(self, validation: Iterable, tasks: Iterable[str]) -> float:
        """Eq. 2 on held-out data, for the tasks given: w_k x (CTR log loss | CVR MSE on clicks)."""
        result = evaluate(self.model, validation, gauc=False)
        values = {"ctr": result.ctr_log_loss, "cvr": result.cvr_mse}
        weight = self.config.loss_weight if len(self.model.config.tasks) > 1 else {}
        return float(sum(weight.get(task, 1.0) * values[task] for task in tasks))

    def fit(
        self,
        batches: Mapping[str, Iterable],
        validation: Iterable,
        phase: str,
        max_epochs: int,
        seed: int,
        steps: Mapping[str, int] | None = None,
        tasks: Iterable[str] | None = None,
    ) -> list[PhaseStats]:
        """Passes of `train` until the validation loss has not improved for `patience` passes.

        The weights of the best pass are kept. `tasks`: whose validation loss counts (default:
        the tasks of the batches; ESMM's impression batches train both).
        """
        tasks = list(tasks or (self.model.config.tasks if self.model.config.variant == ESMM else batches))
        history: list[PhaseStats] = []
        best_loss, best_epoch, best_weights = float("inf"), 0, None
        for epoch in range(1, max_epochs + 1):
            stats = self.train(batches, f"{phase} epoch {epoch}", seed + epoch - 1, steps)
            loss = self.validation_loss(validation, tasks)
            history.append(dataclasses.replace(stats, validation_loss=loss))
            logger.info(
                "%s epoch %d: validation loss %.5f%s", phase, epoch, loss, " (best so far)" if loss < best_loss else ""
            )
            if loss < best_loss:
                best_loss, best_epoch = loss, epoch
                best_weights = snapshot(self.model) if epoch < max_epochs else None
            elif epoch - best_epoch >= self.config.patience:
                break
        if best_epoch != len(history):
            restore(self.model, best_weights)
            logger.info(
                "%s: stopped after epoch %d, keeping epoch %d (validation loss %.5f)",
                phase,
                len(history),
                best_epoch,
                best_loss,
            )
        return history


def _cardinality(batches) -> int:
    count = int(batches.cardinality()) if hasattr(batches, "cardinality") else -1
    if count < 0:
        raise ValueError("the number of batches of a distributed or unbounded dataset must be given (steps)")
    return count


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


def evaluate(model: network.RankingNetwork, batches: Iterable, gauc: bool = True) -> metrics.TaskMetrics:
    scored = predict(model, batches)
    return metrics.compute(
        click=scored[CLICK],
        watch_ratio=scored[WATCH_RATIO],
        user=scored[features.USER_ID] if gauc else None,
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
