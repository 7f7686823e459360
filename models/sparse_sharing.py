"""Algorithm 1 of LT4REC: warmup, per-task mask search, masked mixed training.

1. Warmup: train the whole net on mixed CTR/CVR batches; keep the weights as sNET_init.
2. Per task, iterative magnitude pruning: round r rewinds to the rewinding target (and a
   fresh optimizer), trains with mask m_r on the task's samples, is scored on validation,
   and prunes to m_{r+1} ((1-q)^(r+1) of the weights the task starts with). The best
   round (within an optional minimum sparsity) gives the task's mask.
3. Rewind to sNET_init, set both masks at once, and train on mixed batches; a batch of
   task k updates only what mask k keeps (see `training.py`).

Every training phase stops early on the held-out validation share and keeps its best pass.
The TFX components call `warmup`/`search` (MaskSearch) and `train_shared` (Trainer), the
benchmarks call all three.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import tensorflow as tf

from lt4rec.models import distribution, inputs, masks, metrics, network, training
from lt4rec.models.config import REWIND_RANDOM, REWIND_WARMUP, SearchConfig, TrainConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RoundResult:
    """One round of one task's search: its mask's share of weights and validation score."""

    task: str
    round: int
    remaining: float
    metric: str
    value: float
    seconds: float


@dataclasses.dataclass
class TaskSearch:
    task: str
    rounds: list[RoundResult]
    best_round: int
    masks: masks.Masks
    round_masks: list[masks.Masks] = dataclasses.field(default_factory=list)  # every round's, in order

    @property
    def best(self) -> RoundResult:
        return self.rounds[self.best_round]


def select_round(rounds: list[RoundResult], min_sparsity: float) -> int:
    """The best-scoring round among those at least `min_sparsity` sparse (ties: sparser)."""
    metric, larger_is_better = metrics.SELECTION_METRIC[rounds[0].task]
    eligible = [r for r in rounds if 1.0 - r.remaining >= min_sparsity - 1e-9 and not math.isnan(r.value)]
    if not eligible:
        raise ValueError(f"no round of the {rounds[0].task} search is {min_sparsity:.0%} sparse and scored")
    sign = 1.0 if larger_is_better else -1.0
    return max(eligible, key=lambda r: (sign * r.value, -r.remaining)).round


@dataclasses.dataclass
class Datasets:
    """Batched task datasets: train per task (with its steps per pass), one validation set of all impressions.

    `base_rates`: each task's mean label on the train share (the heads start there).
    `mode`: whether the train share is held in memory or streamed (`inputs.py`).
    """

    train: Mapping[str, "tf.data.Dataset | tf.distribute.DistributedDataset"]
    validation: tf.data.Dataset
    steps: Mapping[str, int]
    base_rates: Mapping[str, float]
    mode: str = inputs.MEMORY

    @classmethod
    def from_columns(
        cls,
        train: training.Columns,
        validation: training.Columns,
        batch_size: int,
        seed: int,
        tasks: Iterable[str],
        strategy: tf.distribute.Strategy | None = None,
    ):
        """From transformed examples in memory; the train batches distributed by `strategy`."""
        strategy = strategy or tf.distribute.get_strategy()
        return cls(
            train={task: training.distributed_task_batches(train, task, batch_size, seed, strategy) for task in tasks},
            validation=training.ordered_batches(validation, 4 * batch_size),
            steps={task: training.task_steps(train, task, batch_size, strategy) for task in tasks},
            base_rates=training.base_rates(train),
        )

    @classmethod
    def from_split(
        cls,
        split: inputs.TransformedSplit,
        config: TrainConfig,
        tasks: Iterable[str],
        strategy: tf.distribute.Strategy | None = None,
    ):
        """Transform's train split, less its held-out share: in memory or streamed (`TrainConfig.input_mode`).

        Under ParameterServerStrategy it is always streamed, every worker reading the whole
        split in its own random order (its steps are scheduled, the workers cannot tell
        themselves apart).
        """
        strategy = strategy or tf.distribute.get_strategy()
        coordinator = distribution.coordinator(strategy)
        counts = inputs.count(split, *config.holdout)
        mode = (
            inputs.STREAMING
            if coordinator
            else inputs.choose_mode(config.input_mode, counts, split, int(config.in_memory_limit_gb * 2**30))
        )
        logger.info(
            "Train split: %d files, %d examples (%d clicked), %d held out for validation; %s (%.2f GB as columns)",
            len(split.files),
            counts.rows,
            counts.clicks,
            counts.held_rows,
            "in memory" if mode == inputs.MEMORY else "streamed",
            (counts.rows + counts.held_rows) * split.row_bytes / 2**30,
        )
        if mode == inputs.MEMORY:
            train, validation = training.hold_out(inputs.in_memory(split.batches()), *config.holdout)
            return cls.from_columns(train, validation, config.batch_size, config.seed, tasks, strategy)

        def stream(
            task: str, input_context: tf.distribute.InputContext | None = None, seed: int | None = config.seed
        ) -> tf.data.Dataset:
            return inputs.task_stream(
                split, task, config.batch_size, seed, config.holdout, config.shuffle_buffer, input_context
            )

        def train(task: str):
            if coordinator:
                return coordinator.create_per_worker_dataset(
                    lambda: strategy.distribute_datasets_from_function(lambda context: stream(task, context, seed=None))
                )
            if strategy.num_replicas_in_sync > 1:
                return strategy.distribute_datasets_from_function(lambda context: stream(task, context))
            return stream(task)

        return cls(
            train={task: train(task) for task in tasks},
            validation=inputs.held_out_stream(split, 4 * config.batch_size, config.holdout),
            steps={
                task: training.steps_per_pass(counts.task_rows(task), config.batch_size, strategy) for task in tasks
            },
            base_rates=counts.base_rates,
            mode=inputs.STREAMING,
        )

    def only(self, task: str) -> tuple[dict, dict]:
        """One task's batches and steps."""
        return {task: self.train[task]}, {task: self.steps[task]}


def train_shared(
    trainer: training.MultiTaskTrainer,
    data: Datasets,
    task_masks: Mapping[str, masks.Masks],
    epochs: int,
    seed: int,
    on_start: Callable[[], None] | None = None,
) -> list[training.PhaseStats]:
    """Step 3 from the network's current weights: every task's mask set at once, a fresh
    optimizer, mixed batches (stopping early on validation). `on_start` sees the network
    as its first step will."""
    masks.set_task_masks(trainer.model, task_masks)
    trainer.reset_optimizer()
    if on_start:
        on_start()
    return trainer.fit(data.train, data.validation, "shared training", epochs, seed, data.steps)


class SparseSharing:
    """Algorithm 1 on one network, step by step."""

    def __init__(
        self,
        model: network.RankingNetwork,
        data: Datasets,
        train_config: TrainConfig,
        search_config: SearchConfig,
        strategy: tf.distribute.Strategy | None = None,
    ):
        if not model.masked:
            raise ValueError("sparse sharing needs the sparse_sharing network variant")
        self.model = model
        self.data = data
        self.search_config = search_config
        self.trainer = training.MultiTaskTrainer(model, train_config, strategy)
        self.seed = train_config.seed
        self.random_init = training.snapshot(model)
        self.snet_init: list[np.ndarray] | None = None

    def _initial_masks(self, **overrides: masks.Masks) -> None:
        """Every task's round-0 mask, except those given."""
        masks.set_task_masks(
            self.model, {task: overrides.get(task, self.model.initial_masks(task)) for task in self.model.config.tasks}
        )

    def warmup(self) -> list[training.PhaseStats]:
        """Step 1: the whole net on mixed batches; its weights become sNET_init."""
        self._initial_masks()
        epochs, steps = self.search_config.warmup_epochs, self.data.steps
        if epochs < 1:  # the first share of one mixed pass, every task in proportion
            steps, epochs = {task: max(1, math.ceil(epochs * count)) for task, count in steps.items()}, 1
        history = self.trainer.fit(self.data.train, self.data.validation, "warmup", int(epochs), self.seed, steps)
        self.snet_init = training.snapshot(self.model)
        return history

    def rewind(self, target: str = REWIND_WARMUP) -> None:
        """The weights of `target` and a fresh optimizer (masks are left as they are)."""
        weights = self.random_init if target == REWIND_RANDOM else self.snet_init
        if weights is None:
            raise RuntimeError("rewind to sNET_init before the warmup")
        training.restore(self.model, weights)
        self.trainer.reset_optimizer()

    def search(self, task: str, on_round: Callable[[RoundResult], None] | None = None) -> TaskSearch:
        """Step 2 for one task: rounds of rewind, train, score, prune."""
        config = self.search_config
        metric_name, _ = metrics.SELECTION_METRIC[task]
        initial = self.model.initial_masks(task)
        current = initial
        round_masks, results = [], []
        batches, steps = self.data.only(task)
        for round_index in range(config.rounds + 1):
            start = time.perf_counter()
            self.rewind(config.rewind_to)
            self._initial_masks(**{task: current})
            self.trainer.fit(
                batches,
                self.data.validation,
                f"{task} search round {round_index}",
                config.epochs_per_round,
                self.seed + 1000 * (round_index + 1),
                steps,
            )
            score = getattr(training.evaluate(self.model, self.data.validation), metric_name)
            result = RoundResult(
                task, round_index, masks.remaining_fraction(current), metric_name, score, time.perf_counter() - start
            )
            logger.info(
                "%s search round %d: %.1f%% of MLP weights left, validation %s %.5f",
                task,
                round_index,
                100 * result.remaining,
                metric_name,
                score,
            )
            results.append(result)
            round_masks.append(current)
            if on_round:
                on_round(result)
            if round_index < config.rounds:
                pruned = masks.prune_by_magnitude(
                    masks.get_kernels(self.model),
                    current,
                    round_index + 1,
                    config.rate,
                    config.scope,
                    config.granularity,
                    initial,
                )
                if masks.remaining_fraction(pruned) == 0:
                    # A layer lost every unit (or weight), and with it every path: the task
                    # would score a constant, and a model with no MLP cannot be served.
                    logger.warning(
                        "%s search round %d would leave no path through the MLP (a layer would lose every "
                        "weight): the search stops at round %d; prune to a larger remainder, or each layer "
                        "alike (--prune-scope layer)",
                        task,
                        round_index + 1,
                        round_index,
                    )
                    break
                current = pruned
        best = select_round(results, config.min_sparsity)
        logger.info(
            "%s: chose round %d (%.1f%% of weights, %s %.5f)",
            task,
            best,
            100 * results[best].remaining,
            metric_name,
            results[best].value,
        )
        return TaskSearch(task, results, best, round_masks[best], round_masks)

    def train_shared(self, task_masks: Mapping[str, masks.Masks]) -> list[training.PhaseStats]:
        """Step 3: from sNET_init with the chosen masks, mixed batches."""
        self.rewind(REWIND_WARMUP)
        return train_shared(self.trainer, self.data, task_masks, self.trainer.config.epochs, self.seed + 10_000)

    def write(self, folder: str, searches: Mapping[str, TaskSearch], extra: Mapping | None = None) -> None:
        """The search's result as the Masks artifact (`masks.write_artifact`): the chosen masks,
        sNET_init (with round-0 masks), and a report of every round."""
        self.rewind(REWIND_WARMUP)
        self._initial_masks()
        report = {
            "network": self.model.config.to_dict(),
            "train": self.trainer.config.to_dict(),
            "search": self.search_config.to_dict(),
            "rate": self.search_config.rate,
            "tasks": {
                task: {
                    "best_round": search.best_round,
                    "remaining": search.best.remaining,
                    "per_layer_remaining": {name: float(mask.mean()) for name, mask in search.masks.items()},
                    "rounds": [dataclasses.asdict(r) for r in search.rounds],
                }
                for task, search in searches.items()
            },
            **(extra or {}),
        }
        masks.write_artifact(folder, self.model, {task: search.masks for task, search in searches.items()}, report)
