"""Algorithm 1 end to end in one process at scale: warmup, both searches, shared training, eval.

What MaskSearch and the Trainer do in the pipeline, with the pipeline's default settings,
on Transform's output of --rows generated impressions (`transformed_logs.transformed_files`,
3 days train, the last day eval), read as the Trainer reads it (--input-mode, streamed by
default). Prints each phase's wall seconds and examples/s, the chosen rounds, the eval
metrics, the whole wall time and the process's peak resident memory.

    .venv/bin/python benchmarks/full_search.py --rows 5000000
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from streaming_training import peak_rss_gb
from transformed_logs import transformed_eval_files, transformed_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="Generated impressions (3 of 4 days train).")
    parser.add_argument("--input-mode", choices=["auto", "memory", "streaming"], default="streaming")
    parser.add_argument("--table-scale", type=float, default=0.1, help="Id tables at this share of production size.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="Write the figures as JSON here too.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    transform_dir, train_files = transformed_files(args.rows, seed=args.seed, table_scale=args.table_scale)
    eval_files = transformed_eval_files(args.rows, seed=args.seed, table_scale=args.table_scale)

    import tensorflow as tf
    import tensorflow_transform as tft

    from lt4rec import features
    from lt4rec.models import inputs, masks, network, sparse_sharing, training
    from lt4rec.models.config import NetworkConfig, SearchConfig, TrainConfig

    started = time.perf_counter()
    transform_output = tft.TFTransformOutput(transform_dir)
    train_config = TrainConfig(seed=args.seed, input_mode=args.input_mode)
    search_config = SearchConfig()
    tf.keras.utils.set_random_seed(args.seed)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    data = sparse_sharing.Datasets.from_split(
        inputs.TransformedSplit.from_patterns(train_files, transform_output), train_config, masks.TASKS
    )
    seconds["data ready"] = time.perf_counter() - start
    model = network.RankingNetwork(features.scaled_config(args.table_scale), NetworkConfig())
    model.build_for(next(iter(data.validation)))
    model.start_at_base_rates(data.base_rates)
    algorithm = sparse_sharing.SparseSharing(model, data, train_config, search_config)
    phases: dict[str, list] = {}
    start = time.perf_counter()
    phases["warmup"] = algorithm.warmup()
    seconds["warmup"] = time.perf_counter() - start
    searches = {}
    for task in masks.TASKS:
        start = time.perf_counter()
        searches[task] = algorithm.search(task)
        seconds[f"{task} search"] = time.perf_counter() - start
    start = time.perf_counter()
    phases["shared training"] = algorithm.train_shared({task: search.masks for task, search in searches.items()})
    seconds["shared training"] = time.perf_counter() - start
    start = time.perf_counter()
    evaluation = inputs.TransformedSplit.from_patterns(eval_files, transform_output)
    result = training.evaluate(model, inputs.ordered_stream(evaluation, 4 * train_config.batch_size))
    seconds["eval"] = time.perf_counter() - start
    wall = time.perf_counter() - started

    figures = {
        "rows": args.rows,
        "input": data.mode,
        "train": train_config.to_dict(),
        "search": search_config.to_dict(),
        "examples_per_pass": {task: steps * train_config.batch_size for task, steps in data.steps.items()},
        "seconds": seconds,
        "wall_seconds": wall,
        "peak_rss_gb": peak_rss_gb(),
        "chosen": {task: {"round": s.best_round, "remaining": s.best.remaining} for task, s in searches.items()},
        "eval": result.to_dict(),
        "shared_training_examples_per_second": [p.examples_per_second for p in phases["shared training"]],
    }
    print(
        f"\nAlgorithm 1 on {args.rows:,} impressions ({data.mode}), one process, "
        f"{train_config.batch_size}-example batches:"
    )
    for phase, value in seconds.items():
        print(f"  {phase:<18} {value:8.0f} s")
    print(f"  {'whole':<18} {wall:8.0f} s ({wall / 3600:.2f} h), peak RSS {figures['peak_rss_gb']:.2f} GB")
    print(
        "  chosen: "
        + ", ".join(
            f"{task} round {c['round']} ({c['remaining']:.1%} of MLP weights)" for task, c in figures["chosen"].items()
        )
    )
    print("  eval: " + ", ".join(f"{key} {value:.4f}" for key, value in figures["eval"].items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
