"""Transform's output read as the trainer reads it: streamed or in memory, whole or by worker."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lt4rec import features
from lt4rec.models import inputs, sparse_sharing, training
from lt4rec.models.config import TrainConfig
from tests.helpers import random_transformed

SPEC = {
    **{spec.name: tf.io.FixedLenFeature([spec.max_values], tf.int64) for spec in features.FEATURES},
    features.CLICK_LABEL: tf.io.FixedLenFeature([], tf.int64),
    features.WATCH_RATIO_LABEL: tf.io.FixedLenFeature([], tf.float32),
}
HOLDOUT = (0.1, 3)


def write_split(folder, columns: dict, files: int) -> inputs.TransformedSplit:
    """`columns` as `files` GZIP TFRecord files of tf.train.Example, in row order, as Transform writes them."""
    rows = len(columns[features.CLICK_LABEL])
    paths = []
    for index, part in enumerate(np.array_split(np.arange(rows), files)):
        path = str(folder / f"transformed_examples-{index:05d}-of-{files:05d}.gz")
        with tf.io.TFRecordWriter(path, options="GZIP") as writer:
            for row in part:
                feature = {}
                for name, values in columns.items():
                    value = np.reshape(values[row], [-1])
                    if value.dtype.kind == "f":
                        feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value))
                    else:
                        feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=value))
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
        paths.append(path)
    return inputs.TransformedSplit(tuple(paths), SPEC)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """2,000 random transformed examples, each with its row number (a column of its own), in 6 files."""
    columns = random_transformed(2000, seed=7)
    columns["row"] = np.arange(2000, dtype=np.int64)
    split = write_split(tmp_path_factory.mktemp("split"), columns, files=6)
    return columns, inputs.TransformedSplit(split.files, {**SPEC, "row": tf.io.FixedLenFeature([], tf.int64)})


def rows_of(dataset, limit: int | None = None) -> list[int]:
    rows = []
    for batch in dataset:
        rows.extend(int(row) for row in batch["row"].numpy())
        if limit is not None and len(rows) >= limit:
            break
    return rows


def test_streaming_holds_out_the_rows_memory_holds_out_and_counts_the_rest(examples):
    columns, split = examples
    kept, held = training.hold_out(columns, *HOLDOUT)
    streamed_held = rows_of(inputs.held_out_stream(split, 256, HOLDOUT))
    assert streamed_held == sorted(held["row"].numpy().tolist())  # files are read in order
    counts = inputs.count(split, *HOLDOUT)
    click = kept[features.CLICK_LABEL].numpy() == 1
    assert (counts.rows, counts.clicks, counts.held_rows) == (len(click), int(click.sum()), len(streamed_held))
    assert counts.base_rates["cvr"] == pytest.approx(
        float(kept[features.WATCH_RATIO_LABEL].numpy()[click].mean()), rel=1e-6
    )
    assert counts.base_rates == pytest.approx(training.base_rates(kept), rel=1e-6)


@pytest.mark.parametrize("task", ["ctr", "cvr"])
def test_a_task_stream_yields_the_task_s_train_rows_shuffled_across_files_never_held_out_ones(examples, task):
    columns, split = examples
    kept, held = training.hold_out(columns, *HOLDOUT)
    task_rows = set(training.task_columns(kept, task)["row"].numpy().tolist())
    stream = inputs.task_stream(split, task, 64, seed=1, holdout=HOLDOUT, shuffle_buffer=500)
    two_passes = rows_of(stream, limit=2 * len(task_rows))
    assert set(two_passes) <= task_rows  # no held-out row, and CVR only clicked ones
    assert len(set(two_passes)) > 0.95 * len(task_rows)  # the files repeat: every row comes round
    first = two_passes[:64]
    assert len({row // (2000 // 6 + 1) for row in first}) > 1  # a batch mixes files
    assert first != sorted(first)
    assert rows_of(inputs.task_stream(split, task, 64, seed=1, holdout=HOLDOUT, shuffle_buffer=500), limit=64) == first


@pytest.mark.parametrize("files", [6, 2])
def test_workers_read_disjoint_shares_that_cover_the_split(examples, tmp_path, files):
    """Six files over three workers: two files each. Two files: every third record each."""
    columns, split = examples
    if files != len(split.files):
        split = write_split(tmp_path, columns, files)
        split = inputs.TransformedSplit(split.files, examples[1].feature_spec)
    shares = [rows_of(split.batches(tf.distribute.InputContext(3, worker, 3))) for worker in range(3)]
    assert sorted(sum(shares, [])) == list(range(2000))
    assert all(500 < len(share) < 850 for share in shares)


def test_every_worker_batches_its_replicas_share_of_the_global_batch(examples):
    _, split = examples
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=4)
    batch = next(
        iter(inputs.task_stream(split, "ctr", 64, seed=1, holdout=HOLDOUT, shuffle_buffer=100, input_context=context))
    )
    assert batch["row"].shape == [16]


@pytest.mark.parametrize("mode", [inputs.MEMORY, inputs.STREAMING])
def test_datasets_from_a_split_memory_or_streamed_agree_on_steps_rates_and_validation(examples, mode):
    columns, split = examples
    config = TrainConfig(batch_size=64, seed=HOLDOUT[1], validation_fraction=HOLDOUT[0], input_mode=mode)
    data = sparse_sharing.Datasets.from_split(split, config, ("ctr", "cvr"))
    kept, held = training.hold_out(columns, *HOLDOUT)
    assert data.mode == mode
    assert data.steps == {
        task: len(training.task_columns(kept, task)["row"]) // 64 for task in ("ctr", "cvr")
    }  # whole batches
    assert data.base_rates == pytest.approx(training.base_rates(kept), rel=1e-6)
    assert rows_of(data.validation) == held["row"].numpy().tolist()
    trained = [row for task in ("ctr", "cvr") for row in rows_of(data.train[task], limit=data.steps[task] * 64)]
    assert set(trained) <= set(kept["row"].numpy().tolist())


def test_auto_keeps_columns_in_memory_only_under_the_limit(examples):
    _, split = examples
    counts = inputs.count(split, *HOLDOUT)
    size = 2000 * split.row_bytes
    assert inputs.choose_mode(inputs.AUTO, counts, split, size) == inputs.MEMORY
    assert inputs.choose_mode(inputs.AUTO, counts, split, size - 1) == inputs.STREAMING
    assert inputs.choose_mode(inputs.STREAMING, counts, split, 10 * size) == inputs.STREAMING
    with pytest.raises(ValueError, match="input mode"):
        inputs.choose_mode("disk", counts, split, size)
