"""Generated logs, through the project's Transform, held in memory: the training benchmarks' data.

The analysis (vocabularies) runs as in the pipeline's Transform component, with
tf.Transform on Beam's DirectRunner over the training days and the same
`preprocessing_fn` and curated schema; the resulting Transform graph then maps every
day's raw examples to ids in-process, as the serving signature does. Results are cached
under `--cache` by their settings, so the benchmarks can share one preparation.

Days: all but the last two train, the second-to-last is validation (the mask search's
round choice), the last is test. Each split comes with the generator's ground truth (true
click probability and E[watch ratio | click]), for the best achievable metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import tempfile

import numpy as np
import tensorflow as tf

from lt4rec.logs import generator
from lt4rec.models import features, preprocessing
from lt4rec.pipeline import configs

SPLITS = ("train", "validation", "test")
TRUTH_COLUMNS = ("p_click", "expected_watch_ratio")


@dataclasses.dataclass
class Split:
    examples: dict[str, np.ndarray]  # transformed: FEA_* ids, label, cvrlabel
    truth: dict[str, np.ndarray]  # p_click, expected_watch_ratio

    @property
    def rows(self) -> int:
        return len(self.examples[features.CLICK_LABEL])



def _analyze(train_files: list[str], feature_config: features.FeatureConfig, transform_dir: str) -> None:
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io
    from tfx.utils import io_utils
    from tfx_bsl.public import tfxio
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = io_utils.parse_pbtxt_file(configs.SCHEMA_PATH, schema_pb2.Schema())
    source = tfxio.TFExampleRecord(file_pattern=train_files, schema=schema)
    preprocessing_fn = functools.partial(
        preprocessing.preprocessing_fn, custom_config={preprocessing.FEATURES_CONFIG_KEY: feature_config.to_dict()}
    )
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=os.path.join(transform_dir, "tmp")):
        transform_fn = (
            pipeline | source.BeamSource(),
            source.TensorAdapterConfig(),
        ) | tft_beam.AnalyzeDataset(preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)
    # The raw schema beside the graph, as TFX's Transform leaves it (for raw_feature_spec).
    metadata_io.write_metadata(
        dataset_metadata.DatasetMetadata(schema), os.path.join(transform_dir, tft.TFTransformOutput.RAW_METADATA_DIR)
    )


def _transform(files: list[str], transform_dir: str) -> dict[str, np.ndarray]:
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(transform_dir)
    layer = output.transform_features_layer()
    spec = output.raw_feature_spec()
    columns: dict[str, list[np.ndarray]] = {}
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096)
    for batch in records:
        transformed = layer(tf.io.parse_example(batch, spec))
        for name in (*features.FEATURE_NAMES, features.CLICK_LABEL, features.WATCH_RATIO_LABEL):
            columns.setdefault(name, []).append(transformed[name].numpy())
    return {name: np.concatenate(values) for name, values in columns.items()}


def _truth(files: list[str]) -> dict[str, np.ndarray]:
    import pandas as pd

    def truth_file(path: str) -> str:  # DAY/part-00000.gz -> DAY/_truth-part-00000.csv.gz
        folder, name = os.path.split(path)
        return os.path.join(folder, generator.TRUTH_PREFIX + name.removesuffix(".gz") + ".csv.gz")

    frame = pd.concat([pd.read_csv(truth_file(path)) for path in files], ignore_index=True)
    return {column: frame[column].to_numpy() for column in TRUTH_COLUMNS}


def load(rows: int, days: int = 4, seed: int = 0, table_scale: float = 0.1, task_relatedness: float = 0.5, cache: str | None = None) -> dict[str, Split]:
    """Train, validation and test splits of `rows` generated impressions over `days` days."""
    if days < 3:
        raise ValueError("need at least 3 days: train, validation, test")
    cache = cache or os.path.join(tempfile.gettempdir(), "lt4rec-benchmark-data")
    folder = os.path.join(cache, f"rows{rows}-days{days}-seed{seed}-scale{table_scale}-rel{task_relatedness}")
    done = os.path.join(folder, "splits.npz")
    if not os.path.exists(done):
        logs = os.path.join(folder, "logs")
        generator.generate(logs, rows=rows, days=days, seed=seed, task_relatedness=task_relatedness)
        day_files = [sorted(glob.glob(os.path.join(logs, day, "part-*.gz"))) for day in sorted(os.listdir(logs)) if day.isdigit()]
        by_split = {"train": sum(day_files[:-2], []), "validation": day_files[-2], "test": day_files[-1]}
        transform_dir = os.path.join(folder, "transform")
        _analyze(by_split["train"], features.scaled_config(table_scale), transform_dir)
        arrays = {}
        for split, files in by_split.items():
            for name, values in _transform(files, transform_dir).items():
                arrays[f"{split}/examples/{name}"] = values
            for name, values in _truth(files).items():
                arrays[f"{split}/truth/{name}"] = values
        np.savez(done, **arrays)
        with open(os.path.join(folder, "settings.json"), "w") as f:
            json.dump({"rows": rows, "days": days, "seed": seed, "table_scale": table_scale, "task_relatedness": task_relatedness}, f)
    stored = np.load(done)
    splits = {}
    for split in SPLITS:
        examples = {key.split("/", 2)[2]: stored[key] for key in stored.files if key.startswith(f"{split}/examples/")}
        truth = {key.split("/", 2)[2]: stored[key] for key in stored.files if key.startswith(f"{split}/truth/")}
        splits[split] = Split(examples, truth)
    return splits
