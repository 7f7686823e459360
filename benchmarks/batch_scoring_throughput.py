r"""Throughput of `lt4rec batch-score` on the DirectRunner: one worker, and two worker processes.

Generates logs into a temporary folder, fits Transform on them (`offline_transform`, as the
tests do), builds a RankingNetwork of the default shape (512-256-128 MLP, embeddings of 32;
untrained: the weights do not change the work) and exports its CTR and CVR models and the
joint rank model as the pusher does (dense matmuls), then runs the Beam job on all the logs
once per running mode and scorer (the two task models, or the rank model's one pass) and
prints the figures side by side. Wall seconds include the
pipeline's start-up (worker processes, TensorFlow import, model loading), which is what a
user of the command waits for; on small inputs it dominates.

    .venv/bin/python benchmarks/batch_scoring_throughput.py --rows 50000
    .venv/bin/python benchmarks/batch_scoring_throughput.py \
        --modes in_memory "multi_processing x1" "multi_processing x2"

Setup (generate, Transform analysis, export) takes about 1-2 minutes, each run about a minute.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import tempfile
import time

import tensorflow as tf
import tensorflow_transform as tft

from lt4rec import features
from lt4rec.logs import generator
from lt4rec.models import export, network
from lt4rec.models.config import NetworkConfig
from lt4rec.serving import batch_scoring
from lt4rec.testing import offline_transform

RUNNING_MODES = {
    "in_memory": ["--direct_running_mode=in_memory"],
    "multi_processing x1": ["--direct_num_workers=1", "--direct_running_mode=multi_processing"],
    "multi_processing x2": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
}
TABLE_SCALE = 0.01
SCORERS = {"task models": True, "rank model": False}  # the value: batch_scoring.run's task_models


def export_models(logs: str, serving_dir: str, workdir: str) -> None:
    """CTR and CVR models of a default-shaped network, version 1, Transform fitted on the first day."""
    days = sorted(glob.glob(os.path.join(logs, "2*", "part-*.gz")))
    transform_dir = os.path.join(workdir, "transform")
    feature_config = features.scaled_config(TABLE_SCALE)
    offline_transform.analyze(days[:1], feature_config, transform_dir)
    transform_output = tft.TFTransformOutput(transform_dir)
    first = tf.data.TFRecordDataset(days[:1], compression_type="GZIP").take(2).batch(2).get_single_element()
    parsed = tf.io.parse_example(first, export.raw_input_spec(transform_output))
    ids = transform_output.transform_features_layer()(parsed)
    tf.keras.utils.set_random_seed(0)
    model = network.RankingNetwork(feature_config, NetworkConfig())
    model.build_for({name: ids[name] for name in features.FEATURE_NAMES})
    for task in ("ctr", "cvr"):
        export.export_task_model(
            model, task, transform_output, os.path.join(serving_dir, task, "1"), matmul=export.DENSE
        )
    export.export_rank_model(
        model, transform_output, os.path.join(serving_dir, export.RANK_MODEL, "1"), matmul=export.DENSE
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="Impressions to generate and score.")
    parser.add_argument("--days", type=int, default=2, help="Day partitions to spread them over.")
    parser.add_argument("--rows-per-file", type=int, default=10_000, help="Impressions per log file.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["in_memory", "multi_processing x2"],
        choices=list(RUNNING_MODES),
        help="Running modes to time (one worker: in_memory or 'multi_processing x1').",
    )
    parser.add_argument("--scorers", nargs="+", default=list(SCORERS), choices=list(SCORERS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="batch-scoring-bench-") as workdir:
        logs = os.path.join(workdir, "logs")
        start = time.perf_counter()
        generator.generate(logs, rows=args.rows, days=args.days, seed=args.seed, rows_per_file=args.rows_per_file)
        serving_dir = os.path.join(workdir, "serving")
        export_models(logs, serving_dir, workdir)
        files = len(batch_scoring.log_files(os.path.join(logs, "*", "*")))
        print(
            f"generated {args.rows} impressions in {files} files and exported the models in "
            f"{time.perf_counter() - start:.1f} s"
        )

        results = {}
        for mode in args.modes:
            for scorer in args.scorers:
                out = os.path.join(workdir, f"{mode}_{scorer}".replace(" ", "_"))
                start = time.perf_counter()
                counters = batch_scoring.run(
                    os.path.join(logs, "*", "*"),
                    serving_dir,
                    out,
                    beam_args=RUNNING_MODES[mode],
                    task_models=SCORERS[scorer],
                )
                results[mode, scorer] = (time.perf_counter() - start, counters)

    header = (
        f"{'running mode':<22}{'scorer':<13}{'rows read':>10}{'scored':>9}{'rejected':>9}{'wall s':>9}{'rows/s':>9}"
    )
    print(header)
    print("-" * len(header))
    for (mode, scorer), (seconds, counters) in results.items():
        read, scored = counters[batch_scoring.RECORDS_READ], counters[batch_scoring.SCORED]
        print(f"{mode:<22}{scorer:<13}{read:>10}{scored:>9}{read - scored:>9}{seconds:>9.1f}{scored / seconds:>9.0f}")
    print("rows/s = impressions scored (both scores, joined, written) per wall second, start-up included")


if __name__ == "__main__":
    main()
