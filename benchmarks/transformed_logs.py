"""Generated logs, through the project's Transform, held in memory: the training benchmarks' data.

The analysis (vocabularies) runs as in the pipeline's Transform component, over the
training days (`models/offline_transform.py`); the resulting Transform graph then maps
every day's raw examples to ids in-process, as the serving signature does. Results are cached
under `--cache` by their settings, so the benchmarks can share one preparation.

Days: all but the last two train, the second-to-last is validation (the mask search's
round choice), the last is test. Each split comes with the generator's ground truth (true
click probability and E[watch ratio | click]), for the best achievable metrics, and with the
log's production pCTR, the incumbent a model has to beat.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Mapping

import numpy as np

from lt4rec import features
from lt4rec.logs import generator
from lt4rec.testing import offline_transform

logger = logging.getLogger("lt4rec.benchmarks")

# of the cached folders: 2 added the catalogue and the production pCTR, 3 the Transform graph
# that encodes table by table (the same ids; the serving benchmarks time the graph)
FORMAT_VERSION = 3
SPLITS = ("train", "validation", "test")
TRUTH_COLUMNS = ("p_click", "expected_watch_ratio")


@dataclasses.dataclass
class Split:
    examples: dict[str, np.ndarray]  # transformed: FEA_* ids, label, cvrlabel
    truth: dict[str, np.ndarray]  # p_click, expected_watch_ratio
    production_pctr: np.ndarray | None = None  # the log's `pctr`: the incumbent model's score

    @property
    def rows(self) -> int:
        return len(self.examples[features.CLICK_LABEL])


def _truth(files: list[str]) -> dict[str, np.ndarray]:
    import pandas as pd

    def truth_file(path: str) -> str:  # DAY/part-00000.gz -> DAY/_truth-part-00000.csv.gz
        folder, name = os.path.split(path)
        return os.path.join(folder, generator.TRUTH_PREFIX + name.removesuffix(".gz") + ".csv.gz")

    frame = pd.concat([pd.read_csv(truth_file(path)) for path in files], ignore_index=True)
    return {column: frame[column].to_numpy() for column in TRUTH_COLUMNS}


def _production_pctr(files: list[str]) -> np.ndarray:
    """The log's `pctr` column (a decimal string) of GZIP log files, in row order."""
    import tensorflow as tf

    spec = {features.PRODUCTION_PCTR: tf.io.FixedLenFeature([], tf.string)}
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096)
    values = [
        tf.strings.to_number(tf.io.parse_example(batch, spec)[features.PRODUCTION_PCTR], tf.float64).numpy()
        for batch in records
    ]
    return np.concatenate(values)


def data_folder(
    rows: int,
    days: int = 4,
    seed: int = 0,
    table_scale: float = 0.1,
    task_relatedness: float = 0.5,
    cache: str | None = None,
    catalogue: str = "sample",
    world_settings: Mapping | None = None,
) -> str:
    """Where `load` keeps one setting's logs, Transform graph (`transform/`) and splits."""
    cache = cache or os.path.join(tempfile.gettempdir(), "lt4rec-benchmark-data")
    name = f"rows{rows}-days{days}-seed{seed}-scale{table_scale}-rel{task_relatedness}-{catalogue}"
    if world_settings:
        name += "-" + hashlib.sha256(json.dumps(dict(world_settings), sort_keys=True).encode()).hexdigest()[:10]
    return os.path.join(cache, f"v{FORMAT_VERSION}", name)


def load(
    rows: int,
    days: int = 4,
    seed: int = 0,
    table_scale: float = 0.1,
    task_relatedness: float = 0.5,
    cache: str | None = None,
    catalogue: str = "sample",
    world_settings: Mapping | None = None,
) -> dict[str, Split]:
    """Train, validation and test splits of `rows` generated impressions over `days` days.

    `catalogue` is the generator's catalogue shape ("sample" or "paper", see
    `logs/world.py`'s CATALOGUES), `world_settings` overrides further `WorldConfig` fields;
    both are part of the cache key. The seconds each preparation step took are logged and
    kept in the folder's `settings.json`.
    """
    if days < 3:
        raise ValueError("need at least 3 days: train, validation, test")
    folder = data_folder(rows, days, seed, table_scale, task_relatedness, cache, catalogue, world_settings)
    done = os.path.join(folder, "splits.npz")
    if not os.path.exists(done):
        seconds = {}
        start = time.perf_counter()
        logs = os.path.join(folder, "logs")
        generator.generate(
            logs,
            rows=rows,
            days=days,
            seed=seed,
            task_relatedness=task_relatedness,
            catalogue=catalogue,
            world_settings=world_settings,
        )
        seconds["generate"] = time.perf_counter() - start
        day_files = [
            sorted(glob.glob(os.path.join(logs, day, "part-*.gz"))) for day in sorted(os.listdir(logs)) if day.isdigit()
        ]
        by_split = {"train": sum(day_files[:-2], []), "validation": day_files[-2], "test": day_files[-1]}
        transform_dir = os.path.join(folder, "transform")
        start = time.perf_counter()
        offline_transform.analyze(by_split["train"], features.scaled_config(table_scale), transform_dir)
        seconds["analyze"] = time.perf_counter() - start
        arrays = {}
        seconds["transform"] = seconds["truth and pctr"] = 0.0
        for split, files in by_split.items():
            start = time.perf_counter()
            for name, values in offline_transform.transform(files, transform_dir).items():
                arrays[f"{split}/examples/{name}"] = values
            seconds["transform"] += time.perf_counter() - start
            start = time.perf_counter()
            for name, values in _truth(files).items():
                arrays[f"{split}/truth/{name}"] = values
            arrays[f"{split}/production_pctr"] = _production_pctr(files)
            seconds["truth and pctr"] += time.perf_counter() - start
        start = time.perf_counter()
        np.savez(done + ".tmp.npz", **arrays)
        os.replace(done + ".tmp.npz", done)
        seconds["save"] = time.perf_counter() - start
        logger.info("Prepared %s in %s", folder, ", ".join(f"{step} {value:.0f} s" for step, value in seconds.items()))
        settings = {
            "rows": rows,
            "days": days,
            "seed": seed,
            "table_scale": table_scale,
            "task_relatedness": task_relatedness,
            "catalogue": catalogue,
            "world_settings": dict(world_settings or {}),
            "seconds": seconds,
        }
        with open(os.path.join(folder, "settings.json"), "w") as f:
            json.dump(settings, f, indent=2)
    stored = np.load(done)
    splits = {}
    for split in SPLITS:
        examples = {key.split("/", 2)[2]: stored[key] for key in stored.files if key.startswith(f"{split}/examples/")}
        truth = {key.split("/", 2)[2]: stored[key] for key in stored.files if key.startswith(f"{split}/truth/")}
        splits[split] = Split(examples, truth, stored[f"{split}/production_pctr"])
    return splits


def preparation_seconds(folder: str) -> dict[str, float]:
    """The seconds each step of a `load` preparation took (what `settings.json` recorded)."""
    with open(os.path.join(folder, "settings.json")) as f:
        return json.load(f)["seconds"]


def transformed_files(
    rows: int,
    days: int = 4,
    seed: int = 0,
    table_scale: float = 0.1,
    cache: str | None = None,
    catalogue: str = "sample",
) -> tuple[str, list[str]]:
    """Generated logs through the project's Transform, written as Transform writes its output.

    Returns the Transform graph's folder and the train split's files: GZIP TFRecord files
    of transformed `tf.train.Example`s of every day but the last. Made batch by batch
    (memory does not grow with `rows`) and cached like `load`; the Transform
    graph is analysed on a tenth of the train files (the analysis is not what is measured).
    """
    folder = data_folder(rows, days, seed, table_scale, 0.5, cache, catalogue) + "-files"
    train_dir = os.path.join(folder, "transformed", "train")
    done = os.path.join(folder, "transformed", "DONE")
    if not os.path.exists(done):
        start = time.perf_counter()
        logs = os.path.join(folder, "logs")
        if not os.path.exists(os.path.join(logs, generator.MANIFEST)):
            generator.generate(logs, rows=rows, days=days, seed=seed, catalogue=catalogue)
        generated = time.perf_counter() - start
        day_files = [
            sorted(glob.glob(os.path.join(logs, day, "part-*.gz"))) for day in sorted(os.listdir(logs)) if day.isdigit()
        ]
        train_logs = sum(day_files[:-1], [])
        transform_dir = os.path.join(folder, "transform")
        for unfinished in (transform_dir, train_dir):  # of an interrupted preparation
            shutil.rmtree(unfinished, ignore_errors=True)
        offline_transform.analyze(
            train_logs[: max(1, len(train_logs) // 10)], features.scaled_config(table_scale), transform_dir
        )
        _write_transformed(train_logs, transform_dir, train_dir)
        with open(done, "w") as f:
            json.dump({"rows": rows, "generate_seconds": generated, "seconds": time.perf_counter() - start}, f)
        logger.info("Prepared %s in %.0f s", folder, time.perf_counter() - start)
    return os.path.join(folder, "transform"), sorted(glob.glob(os.path.join(train_dir, "*.gz")))


def transformed_eval_files(
    rows: int,
    days: int = 4,
    seed: int = 0,
    table_scale: float = 0.1,
    cache: str | None = None,
    catalogue: str = "sample",
) -> list[str]:
    """The last day of `transformed_files`' logs through the same Transform graph: the eval split."""
    transform_dir, _ = transformed_files(rows, days, seed, table_scale, cache, catalogue)
    folder = os.path.dirname(transform_dir)
    eval_dir = os.path.join(folder, "transformed", "eval")
    done = os.path.join(eval_dir, "DONE")
    if not os.path.exists(done):
        logs = os.path.join(folder, "logs")
        last_day = sorted(day for day in os.listdir(logs) if day.isdigit())[-1]
        shutil.rmtree(eval_dir, ignore_errors=True)
        _write_transformed(sorted(glob.glob(os.path.join(logs, last_day, "part-*.gz"))), transform_dir, eval_dir)
        open(done, "w").close()
    return sorted(glob.glob(os.path.join(eval_dir, "*.gz")))


def _write_transformed(log_files: list[str], transform_dir: str, out_dir: str, rows_per_file: int = 100_000) -> None:
    """The log files' transformed tf.Examples as GZIP TFRecord files of about `rows_per_file` rows each, in order."""
    import pyarrow as pa
    import tensorflow as tf
    from tfx_bsl.coders import example_coder

    os.makedirs(out_dir, exist_ok=True)
    writer, written = None, 0
    for batch in offline_transform.transformed_batches(log_files, transform_dir, batch_size=8192):
        if writer is None or written >= rows_per_file:
            if writer is not None:
                writer.close()
            writer = tf.io.TFRecordWriter(
                os.path.join(out_dir, f"transformed_examples-{len(os.listdir(out_dir)):05d}.gz"), options="GZIP"
            )
            written = 0
        arrays = []
        for values in batch.values():
            values = np.reshape(values, [len(values), -1])
            offsets = np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)
            arrays.append(pa.ListArray.from_arrays(offsets, values.ravel()))
        for record in example_coder.RecordBatchToExamples(pa.RecordBatch.from_arrays(arrays, list(batch))):
            writer.write(record)
        written += len(arrays[0])
    if writer is not None:
        writer.close()
