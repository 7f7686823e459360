"""The paper's Table 2 on generated logs: single-task, hard sharing, S-Weight, S-Neuron.

Per seed, generates logs (a new synthetic world per seed, default task relatedness),
runs the project's Transform on them, trains every model on the training days and scores
it on the test day: CVR MSE (clicked impressions only), CTR AUC and GAUC (by user). The
mask search chooses its rounds on the validation day. Every model sees the same number of
passes over its data: the baselines train warmup + final epochs, the sparse-sharing
models warm up, search, rewind to sNET_init and train the final epochs. Beside them, the
generator's best achievable values: the metrics of its true click probability and true
E[watch ratio | click], which no model can reach (they include each video's and user's
idiosyncratic latent parts). Prints Algorithm 1's time per phase (including the first
pass's tf.function tracing in warmup), then mean and spread over seeds. About 8 minutes
per seed on 2 cores at the default 200k impressions (half of them train).

    .venv/bin/python benchmarks/comparison.py --seeds 0 1 2
    .venv/bin/python benchmarks/comparison.py --rows 50000 --seeds 0 --models s_weight   # quick
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import tensorflow as tf

from lt4rec.models import features, masks, metrics, network, sparse_sharing, training
from transformed_logs import load

MODELS = {
    "single_task": "single-task (CTR and CVR nets)",
    "hard_sharing": "hard sharing",
    "s_weight": "S-Weight (sparse sharing)",
    "s_neuron": "S-Neuron (sparse sharing)",
}
BEST = "best achievable (truth)"
TABLE_SCALE = 0.1


def _batches(split, batch_size: int) -> tf.data.Dataset:
    return training.ordered_batches(split.examples, 4 * batch_size)


def _scores(model: network.RankingNetwork, split, batch_size: int) -> dict[str, np.ndarray]:
    return training.predict(model, _batches(split, batch_size))


def _metrics(split, ctr: np.ndarray | None, cvr: np.ndarray | None) -> metrics.TaskMetrics:
    examples = split.examples
    return metrics.compute(examples[features.CLICK_LABEL], examples[features.WATCH_RATIO_LABEL], examples[features.USER_ID][:, 0], ctr, cvr)


def _new_model(config: network.NetworkConfig, splits, seed: int) -> network.RankingNetwork:
    tf.keras.utils.set_random_seed(seed)
    model = network.RankingNetwork(features.scaled_config(TABLE_SCALE), config)
    model.build_for({name: tf.constant(splits["test"].examples[name][:2]) for name in features.FEATURE_NAMES})
    return model


def _train_baseline(config: network.NetworkConfig, splits, train_config: training.TrainConfig, epochs: int) -> network.RankingNetwork:
    model = _new_model(config, splits, train_config.seed)
    trainer = training.MultiTaskTrainer(model, train_config)
    batches = {task: training.task_batches(splits["train"].examples, task, train_config.batch_size, train_config.seed) for task in config.tasks}
    for epoch in range(epochs):
        trainer.train(batches, f"{config.variant} {'/'.join(config.tasks)} epoch {epoch + 1}", train_config.seed + epoch)
    return model


def train_sparse_sharing(granularity: str, splits, train_config, search_config) -> tuple[network.RankingNetwork, dict[str, float]]:
    model = _new_model(network.NetworkConfig(), splits, train_config.seed)
    data = sparse_sharing.Datasets(
        train={task: training.task_batches(splits["train"].examples, task, train_config.batch_size, train_config.seed) for task in masks.TASKS},
        validation=_batches(splits["validation"], train_config.batch_size),
    )
    config = sparse_sharing.SearchConfig(**{**search_config.to_dict(), "granularity": granularity})
    algorithm = sparse_sharing.SparseSharing(model, data, train_config, config)
    phases = {}
    start = time.perf_counter()
    algorithm.warmup()
    phases["warmup"] = time.perf_counter() - start
    found = {}
    for task in masks.TASKS:
        start = time.perf_counter()
        found[task] = algorithm.search(task)
        phases[f"{task} mask search ({config.rounds + 1} trainings)"] = time.perf_counter() - start
    start = time.perf_counter()
    algorithm.train_shared({task: search.masks for task, search in found.items()})
    phases["shared training"] = time.perf_counter() - start
    return model, phases


def run_seed(seed: int, args) -> tuple[dict[str, metrics.TaskMetrics], dict[str, str], dict[str, dict[str, float]]]:
    start = time.perf_counter()
    splits = load(args.rows, days=args.days, seed=seed, table_scale=TABLE_SCALE)
    print(f"seed {seed}: {splits['train'].rows}/{splits['validation'].rows}/{splits['test'].rows} train/validation/test impressions "
          f"ready in {time.perf_counter() - start:.0f} s")
    train_config = training.TrainConfig(seed=seed, batch_size=args.batch_size, learning_rate=args.learning_rate, epochs=args.epochs)
    search_config = sparse_sharing.SearchConfig(
        rounds=args.rounds, remaining=args.remaining, epochs_per_round=args.epochs_per_round, min_sparsity=args.min_sparsity
    )
    test = splits["test"]
    results, kept, phases = {}, {}, {}
    results[BEST] = _metrics(test, test.truth["p_click"], test.truth["expected_watch_ratio"])
    kept[BEST] = "-"
    total_epochs = search_config.warmup_epochs + args.epochs
    for name in args.models:
        start = time.perf_counter()
        if name == "single_task":
            ctr = _train_baseline(network.NetworkConfig(variant=network.SINGLE_TASK, tasks=("ctr",)), splits, train_config, total_epochs)
            cvr = _train_baseline(network.NetworkConfig(variant=network.SINGLE_TASK, tasks=("cvr",)), splits, train_config, total_epochs)
            results[name] = _metrics(test, _scores(ctr, test, args.batch_size)["ctr"], _scores(cvr, test, args.batch_size)["cvr"])
            kept[name] = "100%/100%"
        elif name == "hard_sharing":
            model = _train_baseline(network.NetworkConfig(variant=network.HARD_SHARING), splits, train_config, total_epochs)
            scores = _scores(model, test, args.batch_size)
            results[name] = _metrics(test, scores["ctr"], scores["cvr"])
            kept[name] = "100%/100%"
        else:
            granularity = masks.CONNECTION if name == "s_weight" else masks.NEURON
            model, phases[name] = train_sparse_sharing(granularity, splits, train_config, search_config)
            scores = _scores(model, test, args.batch_size)
            results[name] = _metrics(test, scores["ctr"], scores["cvr"])
            kept[name] = "/".join(f"{100 * training.mlp_weight_share(model, task):.0f}%" for task in masks.TASKS)
        print(f"  {MODELS[name]}: {time.perf_counter() - start:.0f} s; test {results[name].to_dict()}")
    return results, kept, phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="Generated impressions per seed.")
    parser.add_argument("--days", type=int, default=4, help="Days: all but the last two train; validation; test.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--epochs", type=int, default=1, help="Final epochs (baselines: warmup + these).")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--remaining", type=float, default=0.2)
    parser.add_argument("--min-sparsity", type=float, default=0.0, help="Only rounds at least this sparse may be chosen.")
    parser.add_argument("--epochs-per-round", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("lt4rec").setLevel(logging.INFO)

    by_seed = [run_seed(seed, args) for seed in args.seeds]

    for name in args.models:
        if name in by_seed[0][2]:
            print(f"\nAlgorithm 1 ({MODELS[name]}), seconds per phase on {args.rows} generated impressions:")
            for phase in by_seed[0][2][name]:
                values = [phases[name][phase] for _, _, phases in by_seed]
                print(f"  {phase:<40}{np.mean(values):>8.1f}")

    rows = [BEST] + list(args.models)
    print(f"\nTest day, mean ± std over seeds {args.seeds} ({args.rows} impressions each, default task relatedness):")
    header = f"{'model':<32}{'CVR MSE':>18}{'CTR AUC':>18}{'GAUC':>18}{'CVR MSE vs ST':>15}{'AUC vs ST':>11}{'MLP kept ctr/cvr':>18}"
    print(header)
    print("-" * len(header))

    def column(name: str, key: str) -> np.ndarray:
        return np.array([getattr(results[name], key) for results, _, _ in by_seed])

    for name in rows:
        mse, auc, gauc = column(name, "cvr_mse"), column(name, "ctr_auc"), column(name, "ctr_gauc")
        gain_mse = gain_auc = ""
        if "single_task" in args.models and name != BEST:
            gain_mse = f"{100 * np.mean(column(name, 'cvr_mse') / column('single_task', 'cvr_mse') - 1):+.2f}%"
            gain_auc = f"{np.mean(column(name, 'ctr_auc') - column('single_task', 'ctr_auc')):+.4f}"
        label = MODELS.get(name, name)
        print(f"{label:<32}{mse.mean():>10.5f} ±{mse.std():.5f}{auc.mean():>10.4f} ±{auc.std():.4f}{gauc.mean():>10.4f} ±{gauc.std():.4f}"
              f"{gain_mse:>15}{gain_auc:>11}{by_seed[0][1][name]:>18}")
    print("MLP kept: share of the MLP's weights each task uses (seed 0). vs ST: mean relative change of CVR MSE and "
          "difference of CTR AUC against the single-task models (paper: S-Weight -3.4% MSE, +0.003 AUC).")


if __name__ == "__main__":
    main()
