"""How much of the generator's signal a learned model gets: single-task nets vs the truth.

For each size and seed: generates logs (`transformed_logs.load`, cached), trains a
single-task CTR net and a single-task CVR net (the project's `RankingNetwork`,
`MultiTaskTrainer`, `task_batches`) on every day but the last, and scores them on the last
day beside:
- the truth: the generator's true click probability and E[watch ratio | click], the best
  achievable;
- no skill: a constant (the training mean), CTR AUC 0.5 and CVR MSE the variance;
- the production pCTR of the log (`pctr`), the incumbent a model must beat (CTR only).
"gap closed" is the share of the way from no skill to the truth that the model goes:
(AUC - 0.5) / (AUC_truth - 0.5) for CTR, (MSE_const - MSE) / (MSE_const - MSE_truth) for CVR.

    # the benchmark's data: paper catalogue, 9 days (8 train, the last test)
    .venv/bin/python benchmarks/learnability.py --rows 200000 1000000 --seeds 0 1
    # `make demo`'s data and model size (default catalogue, 4 days, table scale 0.05, one epoch)
    .venv/bin/python benchmarks/learnability.py --catalogue sample --rows 20000 --days 4 \\
        --table-scale 0.05 --epochs 1 --batch-size 512 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np
import tensorflow as tf

from lt4rec import features
from lt4rec.models import metrics, network, training
from lt4rec.models.config import SINGLE_TASK, NetworkConfig, TrainConfig
from transformed_logs import data_folder, load, preparation_seconds


def _train_examples(splits) -> dict[str, np.ndarray]:
    """Every day but the last: the train and validation splits together."""
    train, validation = splits["train"].examples, splits["validation"].examples
    return {name: np.concatenate([train[name], validation[name]]) for name in train}


def _scores(model: network.RankingNetwork, examples: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    return training.predict(model, training.ordered_batches(examples, 4 * batch_size))


def _single_task(task: str, train: dict[str, np.ndarray], test, args, seed: int) -> tuple[list[np.ndarray], float]:
    """Trains a single-task net; returns its test predictions after each epoch, and seconds."""
    tf.keras.utils.set_random_seed(seed)
    config = NetworkConfig(
        variant=SINGLE_TASK,
        tasks=(task,),
        embedding_dim=args.embedding_dim,
        hidden_units=tuple(args.hidden_units),
    )
    model = network.RankingNetwork(features.scaled_config(args.table_scale), config)
    model.build_for({name: tf.constant(test.examples[name][:2]) for name in features.FEATURE_NAMES})
    model.start_at_base_rates(training.base_rates(train))
    train_config = TrainConfig(seed=seed, batch_size=args.batch_size, learning_rate=args.learning_rate)
    trainer = training.MultiTaskTrainer(model, train_config)
    batches = {task: training.task_batches(train, task, args.batch_size, seed)}
    predictions = []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        trainer.train(batches, f"single-task {task} epoch {epoch + 1}", seed + epoch)
        predictions.append(_scores(model, test.examples, args.batch_size)[task])
    return predictions, time.perf_counter() - start


def run(rows: int, seed: int, args) -> dict:
    start = time.perf_counter()
    splits = load(
        rows,
        days=args.days,
        seed=seed,
        table_scale=args.table_scale,
        catalogue=args.catalogue,
        world_settings=args.world_settings,
    )
    folder = data_folder(rows, args.days, seed, args.table_scale, 0.5, None, args.catalogue, args.world_settings)
    with open(os.path.join(folder, "logs", "_generator.json")) as f:
        world = json.load(f)["world"]
    train, test = _train_examples(splits), splits["test"]
    click, ratio = test.examples[features.CLICK_LABEL], test.examples[features.WATCH_RATIO_LABEL]
    user = test.examples[features.USER_ID][:, 0]
    clicked = click == 1
    const_ctr = float(train[features.CLICK_LABEL].mean())
    const_cvr = float(train[features.WATCH_RATIO_LABEL][train[features.CLICK_LABEL] == 1].mean())
    truth = metrics.compute(click, ratio, user, test.truth["p_click"], test.truth["expected_watch_ratio"])
    const = metrics.compute(click, ratio, user, np.full(len(click), const_ctr), np.full(len(click), const_cvr))
    result = {
        "rows": rows,
        "seed": seed,
        "train": len(train[features.CLICK_LABEL]),
        "test": len(click),
        "users": world["users"],
        "videos": world["videos"],
        "prepare_s": time.perf_counter() - start,
        "prepare": preparation_seconds(folder),
        "truth_auc": truth.ctr_auc,
        "truth_mse": truth.cvr_mse,
        "const_mse": const.cvr_mse,
        "truth_log_loss": truth.ctr_log_loss,
        "const_log_loss": const.ctr_log_loss,
        "pctr_auc": metrics.auc(clicked, test.production_pctr),
        "pctr_mean": float(test.production_pctr.mean()),
        "ctr": float(clicked.mean()),
        "epochs": [],
    }
    ctr_by_epoch, result["ctr_s"] = _single_task("ctr", train, test, args, seed)
    cvr_by_epoch, result["cvr_s"] = _single_task("cvr", train, test, args, seed)
    for epoch, (ctr, cvr) in enumerate(zip(ctr_by_epoch, cvr_by_epoch)):
        model = metrics.compute(click, ratio, user, ctr, cvr)
        result["epochs"].append(
            {
                "auc": model.ctr_auc,
                "log_loss": model.ctr_log_loss,
                "calibration": model.ctr_calibration,
                "mse": model.cvr_mse,
            }
        )
    result.update(result["epochs"][-1])
    print(
        f"rows {rows} seed {seed}: " + json.dumps({k: v for k, v in result.items() if k != "epochs"}, default=float),
        flush=True,
    )
    for epoch, values in enumerate(result["epochs"]):
        print(
            f"  epoch {epoch + 1}: CTR AUC {values['auc']:.4f}, log loss {values['log_loss']:.4f}, "
            f"CVR MSE {values['mse']:.5f}",
            flush=True,
        )
    return result


def _closed(model: float, none: float, best: float) -> float:
    return (model - none) / (best - none)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[200_000, 1_000_000], help="Generated impressions (sizes to try)."
    )
    parser.add_argument("--days", type=int, default=9, help="Days: the last one is the test day, the others train.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--catalogue", default="paper", help="The generator's catalogue shape (logs/world.py CATALOGUES)."
    )
    parser.add_argument("--world", default="{}", help="Further WorldConfig settings as JSON, e.g. '{\"signal\": 1.5}'.")
    parser.add_argument("--table-scale", type=float, default=0.25, help="Hashed table sizes, times DEFAULT_TABLES'.")
    parser.add_argument("--embedding-dim", type=int, default=32)
    parser.add_argument("--hidden-units", type=int, nargs="+", default=[512, 256, 128])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args()
    args.world_settings = json.loads(args.world) or None
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("lt4rec").setLevel(logging.INFO)

    results = [run(rows, seed, args) for rows in args.rows for seed in args.seeds]

    print(
        f"\n{args.catalogue} catalogue, {args.days} days (last = test), {args.world_settings or 'default world'}; "
        f"single-task nets, {args.epochs} epoch(s) of batch {args.batch_size}, table scale {args.table_scale}"
    )
    header = (
        f"{'rows':>8}{'seed':>5}{'users':>8}{'videos':>8} | {'AUC model':>9}{'truth':>7}{'pctr':>7}{'closed':>7} | "
        f"{'MSE model':>9}{'truth':>8}{'const':>8}{'closed':>7} | {'prep s':>6}{'train s':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['rows']:>8}{r['seed']:>5}{r['users']:>8}{r['videos']:>8} | "
            f"{r['auc']:>9.4f}{r['truth_auc']:>7.4f}{r['pctr_auc']:>7.4f}"
            f"{100 * _closed(r['auc'], 0.5, r['truth_auc']):>6.0f}% | "
            f"{r['mse']:>9.5f}{r['truth_mse']:>8.5f}{r['const_mse']:>8.5f}"
            f"{100 * _closed(r['mse'], r['const_mse'], r['truth_mse']):>6.0f}% | {sum(r['prepare'].values()):>6.0f}"
            f"{r['ctr_s'] + r['cvr_s']:>8.0f}"
        )
    print(
        "closed: share of the gap from no skill (AUC 0.5; CVR: the training mean) to the truth that the model closes. "
        "pctr: the log's production pCTR. prep s: generation + Transform (when prepared now; "
        + "; ".join(
            f"{r['rows']}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["prepare"].items())
            for r in results[:: len(args.seeds)]
        )
        + ")"
    )


if __name__ == "__main__":
    main()
