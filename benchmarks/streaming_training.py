"""Trainer memory and speed with the train split streamed from files against held in memory.

For each size, a fresh process per input mode reads Transform's output of generated logs
(`transformed_logs.transformed_files`), builds the trainer's data as the Trainer does
(`Datasets.from_split`: a counting pass, then in-memory columns or `tf.data` streams),
and trains the sparse-sharing network (masks keeping --remaining of the MLP) for --steps
mixed CTR/CVR steps after --warmup-steps untimed ones. Printed side by side: the peak
resident memory of the process, the seconds to get the data ready (counting, loading),
and training examples/s; with --repeats, the modes alternate and the medians are printed.
In-memory runs are skipped above --memory-up-to rows.

    .venv/bin/python benchmarks/streaming_training.py --rows 1000000 5000000 20000000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time

MODES = ("memory", "streaming")


def peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not carried over from the parent across exec)."""
    with open("/proc/self/status") as f:
        (line,) = [line for line in f if line.startswith("VmHWM:")]
    return int(line.split()[1]) / 2**20


def measure(
    transform_dir: str, files: list[str], mode: str, steps: int, warmup_steps: int, remaining: float, seed: int
) -> dict:
    """In this process: the data as the Trainer builds it, then timed training steps."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_transform as tft

    from lt4rec import features
    from lt4rec.models import inputs, masks, network, sparse_sharing, training
    from lt4rec.models.config import NetworkConfig, TrainConfig

    config = TrainConfig(seed=seed, input_mode=mode)
    start = time.perf_counter()
    split = inputs.TransformedSplit.from_patterns(files, tft.TFTransformOutput(transform_dir))
    data = sparse_sharing.Datasets.from_split(split, config, masks.TASKS)
    ready = time.perf_counter() - start
    rss_ready = peak_rss_gb()
    tf.keras.utils.set_random_seed(seed)
    model = network.RankingNetwork(features.scaled_config(0.1), NetworkConfig())
    model.build_for(next(iter(data.validation)))
    rng = np.random.default_rng(seed)
    kernels = masks.get_kernels(model)
    task_masks = {}
    for task in masks.TASKS:  # magnitude masks of perturbed kernels: overlapping, as a search leaves them
        noisy = {name: np.abs(kernel) + rng.normal(0, kernel.std(), kernel.shape) for name, kernel in kernels.items()}
        task_masks[task] = masks.prune_by_magnitude(noisy, masks.full_masks(model), 1, 1 - remaining)
    masks.set_task_masks(model, task_masks)
    trainer = training.MultiTaskTrainer(model, config)
    share = {task: count / sum(data.steps.values()) for task, count in data.steps.items()}

    def steps_of(total: int) -> dict[str, int]:
        return {task: max(1, round(total * value)) for task, value in share.items()}

    trainer.train(data.train, "warmup", seed, steps_of(warmup_steps))
    stats = trainer.train(data.train, "timed", seed + 1, steps_of(steps))
    return {
        "mode": data.mode,
        "ready_seconds": ready,
        "examples_per_second": stats.examples_per_second,
        "peak_rss_gb_ready": rss_ready,
        "peak_rss_gb": peak_rss_gb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[1_000_000], help="Generated impressions (3 of 4 days train)."
    )
    parser.add_argument("--steps", type=int, default=400, help="Timed training steps per run.")
    parser.add_argument("--warmup-steps", type=int, default=50, help="Untimed steps first (tracing, buffers filling).")
    parser.add_argument(
        "--memory-up-to", type=int, default=5_000_000, help="Skip the in-memory path above this many rows."
    )
    parser.add_argument("--repeats", type=int, default=1, help="Runs of each mode, alternating (medians reported).")
    parser.add_argument("--remaining", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=None, help="Where generated data is kept (default: the benchmarks' cache).")
    parser.add_argument("--measure", nargs=3, metavar=("TRANSFORM_DIR", "FILES_JSON", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.measure:  # the child process
        transform_dir, files, mode = args.measure
        print(
            "RESULT "
            + json.dumps(
                measure(
                    transform_dir, json.loads(files), mode, args.steps, args.warmup_steps, args.remaining, args.seed
                )
            )
        )
        return

    sys.path.insert(0, os.path.dirname(__file__))
    from transformed_logs import transformed_files

    results = []
    for rows in args.rows:
        transform_dir, files = transformed_files(rows, seed=args.seed, cache=args.cache)
        modes = [mode for mode in MODES if mode == "streaming" or rows <= args.memory_up_to]
        runs: dict[str, list[dict]] = {mode: [] for mode in modes}
        for _ in range(args.repeats):
            for mode in modes:
                command = [
                    sys.executable,
                    __file__,
                    "--steps",
                    str(args.steps),
                    "--warmup-steps",
                    str(args.warmup_steps),
                    "--remaining",
                    str(args.remaining),
                    "--seed",
                    str(args.seed),
                    "--measure",
                    transform_dir,
                    json.dumps(files),
                    mode,
                ]
                finished = subprocess.run(command, capture_output=True, text=True)
                if finished.returncode != 0:
                    raise RuntimeError(f"{mode} at {rows} rows failed:\n{finished.stderr[-3000:]}")
                (line,) = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
                run = json.loads(line.removeprefix("RESULT "))
                runs[mode].append(run)
                print(
                    f"{rows:>10,} rows {mode:<10} ready in {run['ready_seconds']:6.1f} s, "
                    f"{run['examples_per_second']:8,.0f} examples/s, "
                    f"peak RSS {run['peak_rss_gb']:.2f} GB",
                    flush=True,
                )
        for mode, mode_runs in runs.items():
            results.append(
                {
                    "rows": rows,
                    "mode": mode,
                    **{key: statistics.median(run[key] for run in mode_runs) for key in mode_runs[0] if key != "mode"},
                }
            )

    print(
        f"\nTrainer input, {os.cpu_count()} cores, {args.steps} timed mixed steps of batch 512 "
        "(sparse-sharing network), "
        f"median of {args.repeats}:"
    )
    print(
        f"{'impressions':>12} {'input':<10} {'data ready s':>13} "
        f"{'RSS ready GB':>13} {'examples/s':>11} {'peak RSS GB':>12}"
    )
    for r in results:
        print(
            f"{r['rows']:>12,} {r['mode']:<10} {r['ready_seconds']:>13.1f} {r['peak_rss_gb_ready']:>13.2f} "
            f"{r['examples_per_second']:>11,.0f} {r['peak_rss_gb']:>12.2f}"
        )
    for rows in args.rows:
        by_mode = {r["mode"]: r for r in results if r["rows"] == rows}
        if len(by_mode) == 2:
            ratio = by_mode["streaming"]["examples_per_second"] / by_mode["memory"]["examples_per_second"]
            print(f"{rows:,} rows: streaming / in-memory examples/s = {ratio:.2f}")


if __name__ == "__main__":
    main()
