"""Two-worker against one-worker training speed of the Trainer, on loopback.

Reruns a finished pipeline's Trainer execution (its Transform output and masks, from ML
Metadata) as the TFX executor, first as one plain process, then as two workers under
MultiWorkerMirroredStrategy (TF_CONFIG on localhost), with --epochs passes of the masked
mixed training; both train the same global batches. Each process gets an equal share of
the machine's cores (TF_NUM_INTRAOP_THREADS/TF_NUM_INTEROP_THREADS), so both runs
compute with the same cores. Reports examples/s of every pass (the first includes tracing
and, for two workers, setting up the collectives), the median of the later passes, and
the wall time of the whole Trainer. On one machine the workers share its cores: this
measures the cost of synchronous data parallelism (all-reduce every step), not speed-up.

    make demo && .venv/bin/python benchmarks/multi_worker_training.py --pipeline-root demo/pipeline
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile

from lt4rec.models import trainer
from lt4rec.testing import trainer_cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pipeline-root", default="demo/pipeline", help="A finished pipeline run (holds metadata.sqlite)."
    )
    parser.add_argument("--epochs", type=int, default=8, help="Passes of the shared training per Trainer run.")
    parser.add_argument(
        "--out", default=None, help="Where the Trainer outputs and worker logs go (default: a temp dir)."
    )
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first pass includes tracing)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    execution = trainer_cluster.RecordedExecution.recorded(os.path.join(args.pipeline_root, "metadata.sqlite"))
    execution = execution.with_custom_config(train={"epochs": args.epochs})
    out = args.out or tempfile.mkdtemp(prefix="lt4rec-multi-worker-")
    results = {}
    for workers in (1, 2):
        folder = os.path.join(out, f"{workers}-worker")
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        started = trainer_cluster.run_workers(
            execution, folder, workers, os.path.join(folder, "logs"),
            env={"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads},
        )  # fmt: skip
        with open(os.path.join(folder, "model", trainer.TRAINING_FOLDER, trainer.PHASES_FILE)) as f:
            results[workers] = (json.load(f), max(worker.seconds for worker in started))

    print(f"\nTrainer of {args.pipeline_root}, {args.epochs} passes of masked mixed training, "
          f"{os.cpu_count()} cores, global batch "
          f"{json.loads(execution.exec_properties['custom_config'])['train']['batch_size']}:")  # fmt: skip
    print(f"{'pass':<26} {'examples':>9} {'1 worker ex/s':>14} {'2 workers ex/s':>15} {'ratio':>6}")
    for one, two in zip(results[1][0], results[2][0]):
        ratio = two["examples_per_second"] / one["examples_per_second"]
        examples = f"{sum(one['examples'].values())}/{sum(two['examples'].values())}"
        print(
            f"{one['phase']:<26} {examples:>9} {one['examples_per_second']:>14,.0f} "
            f"{two['examples_per_second']:>15,.0f} {ratio:>6.2f}"
        )
    steady = [statistics.median(p["examples_per_second"] for p in phases[1:]) for phases, _ in (results[1], results[2])]
    print(
        f"{'median of passes 2..n':<26} {'':>9} {steady[0]:>14,.0f} {steady[1]:>15,.0f} {steady[1] / steady[0]:>6.2f}"
    )
    print(f"whole Trainer wall time: 1 worker {results[1][1]:.1f} s, 2 workers {results[2][1]:.1f} s")
    print("(2 workers on this machine's cores: the all-reduce's cost, not a speed-up)")


if __name__ == "__main__":
    main()
