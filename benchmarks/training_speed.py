"""Training speed of the masked mixed phase against the same network trained dense.

Side by side in one run, alternating: the sparse-sharing network with its two task masks
(each keeping --remaining of the MLP, overlapping as a search leaves them) against the
shared-bottom network (the same embeddings, cross layer and MLP, no masks), both trained
by the same trainer on the same mixed CTR/CVR batches. Each is timed over --repeats
passes after one untimed pass (tracing); the median examples/s is reported, and the ratio.

    .venv/bin/python benchmarks/training_speed.py --rows 50000
"""

from __future__ import annotations

import argparse
import logging
import statistics

import numpy as np
import tensorflow as tf

from lt4rec import features
from lt4rec.models import masks, network, training
from lt4rec.models.config import SHARED_BOTTOM, NetworkConfig, TrainConfig
from transformed_logs import load


def _trainer(variant: str, feature_config, sample, remaining: float, seed: int) -> training.MultiTaskTrainer:
    tf.keras.utils.set_random_seed(seed)
    model = network.RankingNetwork(feature_config, NetworkConfig(variant=variant))
    model.build_for(sample)
    if model.masked:
        rng = np.random.default_rng(seed)
        kernels = masks.get_kernels(model)
        task_masks = {}
        for task in model.config.tasks:  # magnitude masks of perturbed kernels: overlapping, not equal
            noisy = {
                name: np.abs(kernel) + rng.normal(0, kernel.std(), kernel.shape) for name, kernel in kernels.items()
            }
            task_masks[task] = masks.prune_by_magnitude(noisy, masks.full_masks(model), 1, 1 - remaining)
        masks.set_task_masks(model, task_masks)
    return training.MultiTaskTrainer(model, TrainConfig(seed=seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="Generated impressions (3 of 4 days train).")
    parser.add_argument("--remaining", type=float, default=0.2, help="Share of MLP weights each task's mask keeps.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    splits = load(args.rows, seed=args.seed)
    train = splits["train"].examples
    feature_config = features.scaled_config(0.1)
    sample = {name: tf.constant(splits["test"].examples[name][:2]) for name in features.FEATURE_NAMES}
    batches = {task: training.task_batches(train, task, TrainConfig().batch_size, args.seed) for task in masks.TASKS}
    trainers = {
        "masked (sparse sharing)": _trainer(network.SPARSE_SHARING, feature_config, sample, args.remaining, args.seed),
        "dense (shared bottom)": _trainer(SHARED_BOTTOM, feature_config, sample, args.remaining, args.seed),
    }
    speeds: dict[str, list[float]] = {name: [] for name in trainers}
    for name, trainer in trainers.items():
        trainer.train(batches, "tracing", args.seed)
    for repeat in range(args.repeats):
        for name, trainer in trainers.items():
            speeds[name].append(trainer.train(batches, name, args.seed + repeat).examples_per_second)

    print(
        f"{splits['train'].rows} training impressions per pass (+ their clicks as CVR batches), "
        "batch 512, MLP 512-256-128, "
        f"{args.repeats} timed passes each, alternating"
    )
    header = f"{'network':<26}{'MLP weights kept':>18}{'examples/s (median)':>21}{'all passes':>28}"
    print(header)
    print("-" * len(header))
    for name, trainer in trainers.items():
        kept = "/".join(f"{100 * training.mlp_weight_share(trainer.model, t):.0f}%" for t in masks.TASKS)
        passes = ", ".join(f"{speed:.0f}" for speed in speeds[name])
        print(f"{name:<26}{kept:>18}{statistics.median(speeds[name]):>21.0f}{passes:>28}")
    masked, dense = (statistics.median(speeds[name]) for name in trainers)
    print(f"masked / dense examples/s: {masked / dense:.2f} (target: at least 0.8)")


if __name__ == "__main__":
    main()
