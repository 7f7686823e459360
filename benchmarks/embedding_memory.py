"""What one Trainer worker holds for production-sized id tables, measured.

Under MultiWorkerMirroredStrategy every worker holds a whole replica: the embedding
tables, the MLP with its masks, and both task optimizers' Adam moments (two slots per
weight per optimizer, so each table is held five times). For each --rows, a fresh
process builds the production network (32-dim embeddings, 512-256-128 MLP) with every
hashed id table (user, video, content provider, tag) at that many rows, builds the two
optimizers, and trains --steps CTR steps of 512 random impressions; once with Adam, once
with lazy Adam (which updates only the rows of the batch), side by side. It reports the
variables' bytes by kind, the process's resident memory after building and its peak while
training, and the time of a step. --production-table then builds one table at full
production size (the others small), the largest that fits here, and trains it with lazy
Adam (Adam's whole-table temporaries would not fit). The last lines scale the measured
figures per row to docs/LOG_SCHEMA.md's production sizes (10-15M rows per id table).

    .venv/bin/python benchmarks/embedding_memory.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

ID_TABLES = ("user", "video", "content_provider", "tag")
OPTIMIZERS = ("adam", "lazy_adam")  # TrainConfig.optimizer  # the hashed, open-ended id spaces
GB = 1 << 30

_WORKER = """
import json, sys, time
import lt4rec
import numpy as np
import tensorflow as tf
from lt4rec import features
from lt4rec.models import network, training
from lt4rec.models.config import NetworkConfig, TrainConfig

def rss(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) * 1024

sizes, steps, optimizer = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
before = rss("VmRSS")
config = features.feature_config(overrides={table: {"size": rows} for table, rows in sizes.items()})
model = network.RankingNetwork(config, NetworkConfig())
rng = np.random.default_rng(0)
table_of = config.table_of
batch = {
    spec.name: tf.constant(rng.integers(1, table_of[spec.name].size, size=(512, spec.max_values)))
    for spec in features.FEATURES
}
batch[training.CLICK] = tf.constant(rng.integers(0, 2, 512))
batch[training.WATCH_RATIO] = tf.constant(rng.random(512, dtype=np.float32))
model.build_for({name: batch[name][:2] for name in features.FEATURE_NAMES})
trainer = training.MultiTaskTrainer(model, TrainConfig(optimizer=optimizer))
built = rss("VmRSS")
seconds = []
for _ in range(steps + 1 if steps else 0):
    start = time.perf_counter()
    float(trainer.train_step("ctr", batch))
    seconds.append(time.perf_counter() - start)

def nbytes(variables):
    return sum(int(np.prod(v.shape)) * v.dtype.size for v in variables)

embedding_ids = {id(v) for v in model.embeddings.variables}
slots = [v for v in trainer.optimizer.variables() if len(v.shape)]
print(json.dumps({
    "rows": sizes,
    "embedding_bytes": nbytes(model.embeddings.variables),
    "other_weight_bytes": nbytes([v for v in model.variables if id(v) not in embedding_ids]),
    "optimizer_bytes": nbytes(slots),
    "rss_built": built - before,
    "peak_rss": rss("VmHWM"),
    "step_seconds": float(np.median(seconds[1:])) if steps else None,
}))
"""


def measure(sizes: dict[str, int], steps: int, optimizer: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, json.dumps(sizes), str(steps), optimizer], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring tables {sizes} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(optimizer: str, runs: list[dict], all_table_runs: int) -> dict:
    print(f"\n{optimizer}:")
    print(
        f"{'id table rows':>28} {'embeddings':>11} {'Adam slots':>11} {'MLP+masks':>10} "
        f"{'RSS built':>10} {'peak RSS':>9} {'step':>8}"
    )
    for run in runs:
        rows = "/".join(f"{run['rows'][t] / 1e6:g}M" for t in ID_TABLES)
        print(
            f"{rows:>28} {run['embedding_bytes'] / GB:>9.2f}GB {run['optimizer_bytes'] / GB:>9.2f}GB "
            f"{run['other_weight_bytes'] / GB:>8.3f}GB {run['rss_built'] / GB:>8.2f}GB {run['peak_rss'] / GB:>7.2f}GB "
            + (f"{run['step_seconds'] * 1000:>6.0f}ms" if run["step_seconds"] is not None else f"{'(built only)':>8}")
        )
    # Bytes and step time per id-table row, from the two largest all-table runs (the slope).
    small, large = runs[all_table_runs - 2], runs[all_table_runs - 1]
    added_rows = sum(large["rows"].values()) - sum(small["rows"].values())
    rss_per_row = (large["rss_built"] - small["rss_built"]) / added_rows
    peak_per_row = (large["peak_rss"] - small["peak_rss"]) / added_rows
    step_per_row = (large["step_seconds"] - small["step_seconds"]) / added_rows
    held_per_row = (
        large["embedding_bytes"] + large["optimizer_bytes"] - small["embedding_bytes"] - small["optimizer_bytes"]
    ) / added_rows
    print(f"per id-table row: {held_per_row:.0f} B of variables, {rss_per_row:.0f} B resident after building, "
          f"{peak_per_row:.0f} B at peak while training, {step_per_row * 1e9:.1f} ns of step time")  # fmt: skip
    per_row = {
        "variable_bytes": held_per_row,
        "rss_built_bytes": rss_per_row,
        "peak_rss_bytes": peak_per_row,
        "step_seconds": step_per_row,
    }
    for rows in (10_000_000, 15_000_000):
        total = rows * len(ID_TABLES)
        # A slope within noise of zero (lazy Adam) extrapolates to no growth, not to a shorter step.
        step = large["step_seconds"] + max(step_per_row, 0.0) * (total - sum(large["rows"].values()))
        print(
            f"production, {len(ID_TABLES)} id tables of {rows / 1e6:g}M rows: one worker holds "
            f"{total * held_per_row / GB:.1f} GB of variables, ~{total * peak_per_row / GB:.1f} GB peak RSS, "
            f"~{step * 1000:,.0f} ms per step (extrapolated from the slope)"
        )
    return {"runs": runs, "per_row": per_row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[250_000, 1_000_000, 2_000_000], help="Rows of every id table, per run."
    )
    parser.add_argument(
        "--production-table", type=int, default=15_000_000, help="Rows of the one production-size table (0: skip)."
    )
    parser.add_argument("--steps", type=int, default=3, help="Timed steps per run (the median is reported).")
    parser.add_argument("--optimizers", nargs="+", choices=sorted(OPTIMIZERS), default=list(OPTIMIZERS),
                        help="The task optimizers to compare (TrainConfig.optimizer).")  # fmt: skip
    parser.add_argument("--out", default=None, help="Write every run and the per-row figures as JSON here too.")
    args = parser.parse_args()
    if len(args.rows) < 2:
        parser.error("--rows needs at least two sizes (the per-row figures are a slope)")

    figures = {}
    for optimizer in args.optimizers:
        runs = [measure({table: rows for table in ID_TABLES}, args.steps, optimizer) for rows in args.rows]
        if args.production_table:
            # Adam's whole-table temporaries would need more memory than this machine has:
            # with it the production table is built only.
            steps = args.steps if optimizer == "lazy_adam" else 0
            runs.append(
                measure({"user": args.production_table, **{t: 250_000 for t in ID_TABLES[1:]}}, steps, optimizer)
            )
        figures[optimizer] = report(optimizer, runs, len(args.rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
