"""Transform's output as the data the search and the trainer train on: streamed, or in memory.

Streaming reads the GZIP TFRecord files with `tf.data` (files shuffled each pass, parallel
reads, a shuffle buffer, prefetch), so memory is bounded by the buffers, not by the rows;
under a multi-worker strategy each worker reads its own share of the files (of the records,
when files are fewer than workers). Small splits can instead be held as columns in memory,
which every pass of the search gathers from without parsing again (`choose_mode`).

Which rows are held out for validation is decided by each example's content (`held_out`),
not by its position, so the same rows are held out by either path, in any file order and on
any number of workers.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from lt4rec import features
from lt4rec.models.config import AUTO, INPUT_MODES, MEMORY, STREAMING

logger = logging.getLogger(__name__)

READ_BATCH = 1024  # records parsed per call
_HASH_SCALE = 2.0**32


@dataclasses.dataclass(frozen=True)
class TransformedSplit:
    """One split of Transform's output: its files and the transformed features read from them."""

    files: tuple[str, ...]
    feature_spec: Mapping[str, tf.io.FixedLenFeature]

    @classmethod
    def from_patterns(
        cls, file_patterns: str | Sequence[str], transform_output: tft.TFTransformOutput
    ) -> "TransformedSplit":
        patterns = [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)
        files = sorted(path for pattern in patterns for path in tf.io.gfile.glob(pattern))
        if not files:
            raise FileNotFoundError(f"no transformed examples match {patterns}")
        spec = transform_output.transformed_feature_spec()
        wanted = (*features.FEATURE_NAMES, features.CLICK_LABEL, features.WATCH_RATIO_LABEL)
        return cls(tuple(files), {name: spec[name] for name in wanted})

    @property
    def row_bytes(self) -> int:
        """Bytes one example takes as in-memory columns."""
        return sum(int(np.prod(spec.shape or [1])) * spec.dtype.size for spec in self.feature_spec.values())

    def batches(
        self,
        input_context: tf.distribute.InputContext | None = None,
        shuffle: bool = False,
        seed: int | None = None,
        repeat: bool = False,
    ) -> tf.data.Dataset:
        """Parsed examples in batches of up to READ_BATCH: in file order, file after file, or
        (`shuffle`) from several files at once, in an order of files reshuffled each pass.

        Given the `input_context` of a multi-worker strategy, only this worker's share: every
        `num_input_pipelines`-th file from its own, or, with fewer files than workers, every
        `num_input_pipelines`-th record of the files read alike by all.
        """
        files = list(self.files)
        pipelines = input_context.num_input_pipelines if input_context else 1
        pipeline = input_context.input_pipeline_id if input_context else 0
        shard_records = pipelines > 1 and len(files) < pipelines
        if pipelines > 1 and not shard_records:
            files = files[pipeline::pipelines]
        names = tf.data.Dataset.from_tensor_slices(files)
        if shuffle:
            names = names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            names = names.repeat()

        def read(
            name: tf.Tensor,
        ) -> tf.data.Dataset:  # batches of one file's records: no per-record hand-off between threads
            records = tf.data.TFRecordDataset(name, compression_type="GZIP")
            return (records.shard(pipelines, pipeline) if shard_records else records).batch(READ_BATCH)

        spec = dict(self.feature_spec)
        return names.interleave(
            read, cycle_length=min(len(files), 4) if shuffle else 1, num_parallel_calls=tf.data.AUTOTUNE
        ).map(lambda serialized: tf.io.parse_example(serialized, spec), num_parallel_calls=tf.data.AUTOTUNE)


def in_memory(batches: tf.data.Dataset) -> dict[str, tf.Tensor]:
    """Batches of examples (e.g. `TransformedSplit.batches`) as columns in memory."""
    columns: dict[str, list] = {}
    for batch in batches:
        for name, value in batch.items():
            columns.setdefault(name, []).append(value)
    return {name: tf.concat(values, axis=0) for name, values in columns.items()}


def held_out(batch: Mapping[str, tf.Tensor], fraction: float, seed: int) -> tf.Tensor:
    """Whether each example is in the held-out share: a seeded hash of its feature ids below `fraction`.

    By content, so an example is held out or not wherever it is read: in memory or streamed,
    in any order, by any worker. Identical examples land on the same side.
    """
    ids = [
        tf.reshape(tf.cast(batch[name], tf.int64), [tf.shape(batch[name])[0], -1]) for name in features.FEATURE_NAMES
    ]
    seeded = tf.concat([tf.fill([tf.shape(ids[0])[0], 1], tf.constant(seed, tf.int64)), *ids], axis=1)
    digest = tf.bitcast(tf.fingerprint(seeded)[:, :4], tf.uint32)
    return tf.cast(digest, tf.float64) < fraction * _HASH_SCALE


@dataclasses.dataclass(frozen=True)
class SplitCounts:
    """What one streaming pass over a split found, outside and inside the held-out share."""

    rows: int
    clicks: int
    clicked_watch_ratio: float  # the sum over clicked examples
    held_rows: int

    @property
    def base_rates(self) -> dict[str, float]:
        """Each task's no-skill prediction: the click rate, the mean watch ratio of clicks."""
        return {
            "ctr": self.clicks / self.rows if self.rows else 0.5,
            "cvr": self.clicked_watch_ratio / self.clicks if self.clicks else 0.5,
        }

    def task_rows(self, task: str) -> int:
        return self.clicks if task == "cvr" else self.rows


def count(split: TransformedSplit, fraction: float, seed: int) -> SplitCounts:
    """Rows, clicks and the watch ratio of clicks outside the held-out share, in one pass."""

    def add(totals, batch):
        kept = tf.logical_not(held_out(batch, fraction, seed))
        click = tf.equal(tf.reshape(batch[features.CLICK_LABEL], [-1]), 1) & kept
        ratio = tf.cast(tf.reshape(batch[features.WATCH_RATIO_LABEL], [-1]), tf.float64)
        return (
            totals[0] + tf.reduce_sum(tf.cast(kept, tf.int64)),
            totals[1] + tf.reduce_sum(tf.cast(click, tf.int64)),
            totals[2] + tf.reduce_sum(tf.where(click, ratio, 0.0)),
            totals[3] + tf.reduce_sum(tf.cast(tf.logical_not(kept), tf.int64)),
        )

    zero = tf.constant(0, tf.int64)
    rows, clicks, ratio, held = split.batches().reduce((zero, zero, tf.constant(0.0, tf.float64), zero), add)
    return SplitCounts(int(rows), int(clicks), float(ratio), int(held))


def choose_mode(mode: str, counts: SplitCounts, split: TransformedSplit, memory_limit_bytes: int) -> str:
    """`mode`, or for AUTO: in memory when the split's columns fit under the limit, else streaming."""
    if mode not in INPUT_MODES:
        raise ValueError(f"input mode must be one of {INPUT_MODES}, not {mode!r}")
    if mode != AUTO:
        return mode
    size = (counts.rows + counts.held_rows) * split.row_bytes
    return MEMORY if size <= memory_limit_bytes else STREAMING


def task_examples(batch: Mapping[str, tf.Tensor], task: str) -> tf.Tensor:
    """Which examples of a batch a task trains on: CTR all impressions, CVR the clicked ones only."""
    rows = tf.shape(batch[features.CLICK_LABEL])[0]
    if task == "cvr":
        return tf.equal(tf.reshape(batch[features.CLICK_LABEL], [-1]), 1)
    return tf.ones([rows], tf.bool)


def _select(batch: Mapping[str, tf.Tensor], rows: tf.Tensor) -> dict[str, tf.Tensor]:
    return {name: tf.boolean_mask(values, rows) for name, values in batch.items()}


def task_stream(
    split: TransformedSplit,
    task: str,
    batch_size: int,
    seed: int | None,
    holdout: tuple[float, int],
    shuffle_buffer: int,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Endless shuffled batches of one task's examples outside the held-out share (`holdout`: fraction, seed).

    Shuffled in two stages that never touch examples one by one: the files, in an order
    reshuffled each pass, are read several at a time, and each block of `shuffle_buffer`
    consecutive task examples is permuted as columns before it is cut into batches. A
    pass is the trainer's step count (`SplitCounts`), not the end of the files: the files
    repeat. Given the `input_context` of a multi-worker strategy, this worker's share of
    the files, in batches of its replicas' share of the global `batch_size` (the global
    batch, and so the task mix, is the same for any number of workers). `seed` None: an
    order of its own on every read (the workers of a ParameterServerStrategy).
    """
    fraction, holdout_seed = holdout
    per_replica = input_context.get_per_replica_batch_size(batch_size) if input_context else batch_size
    worker_seed = None if seed is None else seed + 7919 * (input_context.input_pipeline_id if input_context else 0)

    def train_rows(batch):
        return _select(batch, tf.logical_not(held_out(batch, fraction, holdout_seed)) & task_examples(batch, task))

    def permuted(block, block_seed):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(block[features.CLICK_LABEL])[0]), seed=block_seed
        )
        return {name: tf.gather(values, order) for name, values in block.items()}

    blocks = (
        split.batches(input_context, shuffle=True, seed=seed, repeat=True)  # files alike on every worker
        .map(train_rows, num_parallel_calls=tf.data.AUTOTUNE)
        .rebatch(shuffle_buffer)
    )
    block_seeds = tf.data.Dataset.random(seed=worker_seed, rerandomize_each_iteration=True).batch(2)
    return (
        tf.data.Dataset.zip(blocks, block_seeds)
        .map(permuted)  # one block at a time: memory is a few blocks, whatever the rows
        .prefetch(1)  # the next block is gathered while the trainer takes this one
        .rebatch(per_replica, drop_remainder=input_context is not None)
        .prefetch(tf.data.AUTOTUNE)
    )


def held_out_stream(split: TransformedSplit, batch_size: int, holdout: tuple[float, int]) -> tf.data.Dataset:
    """The held-out share, in order, in batches of `batch_size` (every worker reads all of it)."""
    fraction, holdout_seed = holdout
    return (
        split.batches()
        .map(lambda batch: _select(batch, held_out(batch, fraction, holdout_seed)), num_parallel_calls=tf.data.AUTOTUNE)
        .rebatch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def ordered_stream(split: TransformedSplit, batch_size: int) -> tf.data.Dataset:
    """All examples of a split in order, for scoring."""
    return split.batches().rebatch(batch_size).prefetch(tf.data.AUTOTUNE)
