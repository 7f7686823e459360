"""Generated logs, through the project's Transform, held in memory: the training benchmarks' data.

The analysis (vocabularies) runs as in the pipeline's Transform component, over the
training days (`models/offline_transform.py`); the resulting Transform graph then maps
every day's raw examples to ids in-process, as the serving signature does. Results are cached
under `--cache` by their settings, so the benchmarks can share one preparation.

Days: all but the last two train, the second-to-last is validation (the mask search's
round choice), the last is test. Each split comes with the generator's ground truth (true
click probability and E[watch ratio | click]), for the best achievable metrics.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import tempfile

import numpy as np

from lt4rec.logs import generator
from lt4rec.models import features, offline_transform

SPLITS = ("train", "validation", "test")
TRUTH_COLUMNS = ("p_click", "expected_watch_ratio")


@dataclasses.dataclass
class Split:
    examples: dict[str, np.ndarray]  # transformed: FEA_* ids, label, cvrlabel
    truth: dict[str, np.ndarray]  # p_click, expected_watch_ratio

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


def data_folder(rows: int, days: int = 4, seed: int = 0, table_scale: float = 0.1, task_relatedness: float = 0.5, cache: str | None = None) -> str:
    """Where `load` keeps one setting's logs, Transform graph (`transform/`) and splits."""
    cache = cache or os.path.join(tempfile.gettempdir(), "lt4rec-benchmark-data")
    return os.path.join(cache, f"rows{rows}-days{days}-seed{seed}-scale{table_scale}-rel{task_relatedness}")


def load(rows: int, days: int = 4, seed: int = 0, table_scale: float = 0.1, task_relatedness: float = 0.5, cache: str | None = None) -> dict[str, Split]:
    """Train, validation and test splits of `rows` generated impressions over `days` days."""
    if days < 3:
        raise ValueError("need at least 3 days: train, validation, test")
    folder = data_folder(rows, days, seed, table_scale, task_relatedness, cache)
    done = os.path.join(folder, "splits.npz")
    if not os.path.exists(done):
        logs = os.path.join(folder, "logs")
        generator.generate(logs, rows=rows, days=days, seed=seed, task_relatedness=task_relatedness)
        day_files = [sorted(glob.glob(os.path.join(logs, day, "part-*.gz"))) for day in sorted(os.listdir(logs)) if day.isdigit()]
        by_split = {"train": sum(day_files[:-2], []), "validation": day_files[-2], "test": day_files[-1]}
        transform_dir = os.path.join(folder, "transform")
        offline_transform.analyze(by_split["train"], features.scaled_config(table_scale), transform_dir)
        arrays = {}
        for split, files in by_split.items():
            for name, values in offline_transform.transform(files, transform_dir).items():
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
