"""How the methods compare: every model of `lt4rec pipeline run --model` on the same logs.

Per seed: generated logs in the paper's shape (`--catalogue paper`: 1M impressions over 9
days, 8 train and 1 test), the project's Transform, then every model trained the way the
pipeline trains it (`MultiTaskTrainer.fit` with early stopping on a held-out share of the
train days; sparse sharing through Algorithm 1: warmup, mask search per task, shared
training from sNET_init) on the same embeddings, feature cross and batches, and scored on
the test day. Beside them the generator's truth (its true click probability and
E[watch ratio | click], the best achievable) and no skill (the train mean), from which
"gap closed" is the share of the way from no skill to the truth a model goes.

Prints mean ± std over seeds, the paired difference to single-task per seed (mean ± std of
the per-seed differences), the mask overlap per layer, Algorithm 1's time per phase, and
writes the table as JSON and as a plot (metric per model, error bars = std over seeds).

    .venv/bin/python benchmarks/comparison.py                 # the full run: 3 seeds, all models
    .venv/bin/python benchmarks/comparison.py --quick         # a few minutes: 200k rows, 1 seed
    .venv/bin/python benchmarks/comparison.py --seeds 1 --out s1  # a piece (one per machine, say), then
    .venv/bin/python benchmarks/comparison.py --report s0.json s1.json s2.json --out comparison
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time

import numpy as np
import tensorflow as tf

from lt4rec import features
from lt4rec.models import export, masks, metrics, network, sparse_sharing, training
from lt4rec.models.config import NetworkConfig, SearchConfig, TrainConfig
from lt4rec.pipeline import configs
from transformed_logs import data_folder, load

TRUTH = "truth"
NO_SKILL = "no skill"
BASELINE = "single_task"
DEFAULT_MODELS = [*list(configs.MODELS)[2:], *list(configs.MODELS)[:2]]  # the baseline first, sparse sharing last
LABELS = {
    TRUTH: "best achievable (truth)",
    NO_SKILL: "no skill (train mean)",
    "single_task": "single-task",
    "hard_sharing": "hard sharing",
    "shared_bottom": "shared bottom",
    "layer_sharing": "layer sharing (paper)",
    "mmoe": "MMoE",
    "ple": "PLE",
    "esmm": "ESMM",
    "s_weight": "S-Weight (sparse sharing)",
    "s_neuron": "S-Neuron (sparse sharing)",
}
COLUMNS = {  # key: (header, format, larger is better)
    "cvr_mse": ("CVR MSE", "{:.5f}", False),
    "ctr_auc": ("CTR AUC", "{:.4f}", True),
    "ctr_gauc": ("GAUC", "{:.4f}", True),
    "ctr_log_loss": ("log loss", "{:.4f}", False),
    "cvr_closed": ("CVR gap", "{:.1%}", True),
    "ctr_closed": ("AUC gap", "{:.1%}", True),
}


def _merged(splits) -> dict[str, np.ndarray]:
    """The 8 train days: the prepared train and validation splits together."""
    train, validation = splits["train"].examples, splits["validation"].examples
    return {name: np.concatenate([train[name], validation[name]]) for name in train}


def load_transformed(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], object, str]:
    """The data `build_parser`'s arguments and a `--seed` name (generated and transformed once, cached):
    the merged train days, the test split, and the cache folder (its `transform/` is the graph)."""
    splits = load(
        args.rows,
        days=args.days,
        seed=args.seed,
        table_scale=args.table_scale,
        catalogue=args.catalogue,
        task_relatedness=args.task_relatedness,
    )
    folder = data_folder(
        args.rows, args.days, args.seed, args.table_scale, args.task_relatedness, catalogue=args.catalogue
    )
    return _merged(splits), splits["test"], folder


def _metrics(test, ctr: np.ndarray, cvr: np.ndarray) -> dict[str, float]:
    examples = test.examples
    values = metrics.compute(
        examples[features.CLICK_LABEL], examples[features.WATCH_RATIO_LABEL], examples[features.USER_ID][:, 0], ctr, cvr
    ).to_dict()
    return {key: values[key] for key in ("ctr_auc", "ctr_gauc", "ctr_log_loss", "cvr_mse")}


def _task_weights(model: network.RankingNetwork, task: str) -> int:
    """The hidden layers' weights a task's exported model keeps (masks folded, dead units dropped)."""
    if model.masked:
        return export.TaskNetwork(model, task, compact=True, matmul=export.DENSE).kept_weights
    return export.DenseTaskModel(model, task).kept_weights


def prepare(name: str, train: dict, args, seed: int, build_batch: dict):
    """A model, its batches and its settings, untrained, as the pipeline's Trainer sets them up.

    Returns (model, data, train_config, search_config).
    """
    chosen = configs.select_model(
        name,
        NetworkConfig(),
        SearchConfig(
            rounds=args.rounds,
            remaining=args.remaining,
            epochs_per_round=args.epochs_per_round,
            warmup_epochs=args.warmup_epochs,
            scope=args.scope,
            min_sparsity=args.min_sparsity,
        ),
    )
    network_config, search_config = chosen["network"], chosen["search"]
    train_config = TrainConfig(
        seed=seed,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        epochs=args.epochs,
        patience=args.patience,
        validation_fraction=args.validation_fraction,
        loss_weights=(("ctr", args.ctr_loss_weight), ("cvr", args.cvr_loss_weight)),
        conflict_weight=args.conflict_weight,
        optimizer=args.optimizer,
    )
    tf.keras.utils.set_random_seed(seed)
    fit_columns, validation = training.hold_out(train, train_config.validation_fraction, seed)
    data = sparse_sharing.Datasets.from_columns(
        fit_columns, validation, train_config.batch_size, seed, training.batch_streams(network_config)
    )
    model = network.RankingNetwork(features.scaled_config(args.table_scale), network_config)
    model.build_for(build_batch)
    model.start_at_base_rates(training.base_rates(fit_columns))
    return model, data, train_config, search_config


def train_model(name: str, train: dict, args, seed: int, build_batch: dict) -> tuple[network.RankingNetwork, dict]:
    """One model, trained as the pipeline trains it; returns it and what its training did."""
    model, data, train_config, search_config = prepare(name, train, args, seed, build_batch)
    info: dict = {"phases": {}}
    if not model.masked:
        start = time.perf_counter()
        phases = training.MultiTaskTrainer(model, train_config).fit(
            data.train, data.validation, name, train_config.epochs, seed, data.steps
        )
        info["phases"]["training"] = time.perf_counter() - start
        info["epochs"] = len(phases)
        return model, info
    algorithm = sparse_sharing.SparseSharing(model, data, train_config, search_config)
    start = time.perf_counter()
    info["epochs"] = len(algorithm.warmup())
    info["phases"]["warmup"] = time.perf_counter() - start
    found = {}
    for task in masks.TASKS:
        start = time.perf_counter()
        found[task] = algorithm.search(task)
        info["phases"][f"{task} search"] = time.perf_counter() - start
        info[f"{task}_round"] = found[task].best_round
    start = time.perf_counter()
    info["epochs"] += len(algorithm.train_shared({task: search.masks for task, search in found.items()}))
    info["phases"]["shared training"] = time.perf_counter() - start
    info["overlap"] = [dataclasses.asdict(layer) for layer in masks.overlap(found["ctr"].masks, found["cvr"].masks)]
    return model, info


def run_seed(seed: int, args) -> dict:
    start = time.perf_counter()
    splits = load(
        args.rows,
        days=args.days,
        seed=seed,
        table_scale=args.table_scale,
        catalogue=args.catalogue,
        task_relatedness=args.task_relatedness,
    )
    train, test = _merged(splits), splits["test"]
    print(
        f"seed {seed}: {len(train[features.CLICK_LABEL])} train / {test.rows} test impressions ready in "
        f"{time.perf_counter() - start:.0f} s",
        flush=True,
    )
    no_skill = training.base_rates(train)
    results = {
        TRUTH: _metrics(test, test.truth["p_click"], test.truth["expected_watch_ratio"]),
        NO_SKILL: _metrics(test, np.full(test.rows, no_skill["ctr"]), np.full(test.rows, no_skill["cvr"])),
    }
    info = {}
    build_batch = {name: tf.constant(test.examples[name][:2]) for name in features.FEATURE_NAMES}
    for name in args.models:
        start = time.perf_counter()
        model, info[name] = train_model(name, train, args, seed, build_batch)
        scores = training.predict(model, training.ordered_batches(test.examples, 4 * args.batch_size))
        results[name] = _metrics(test, scores["ctr"], scores["cvr"])
        info[name]["weights"] = {task: _task_weights(model, task) for task in masks.TASKS}
        info[name]["seconds"] = time.perf_counter() - start
        print(
            f"  {LABELS[name]}: {info[name]['seconds']:.0f} s, {info[name]['epochs']} epochs; test "
            + ", ".join(f"{k} {v:.5f}" for k, v in results[name].items()),
            flush=True,
        )
    for values in results.values():
        values["ctr_closed"] = (values["ctr_auc"] - 0.5) / (results[TRUTH]["ctr_auc"] - 0.5)
        values["cvr_closed"] = (results[NO_SKILL]["cvr_mse"] - values["cvr_mse"]) / (
            results[NO_SKILL]["cvr_mse"] - results[TRUTH]["cvr_mse"]
        )
    return {"seed": seed, "results": results, "info": info}


def _mean_std(values: list[float], fmt: str) -> str:
    return f"{fmt.format(np.mean(values))} ±{fmt.format(np.std(values))}"


def report(runs: list[dict], args) -> None:
    names = [TRUTH, NO_SKILL, *args.models]
    seeds = [run["seed"] for run in runs]
    for name in args.models:
        if "overlap" in runs[0]["info"][name]:
            print(
                f"\n{LABELS[name]}: masks per layer (seed {seeds[0]}), share of the layer's weights; chosen rounds "
                f"ctr {[r['info'][name]['ctr_round'] for r in runs]}, "
                f"cvr {[r['info'][name]['cvr_round'] for r in runs]}"
            )
            name_width = max(len(layer["layer"]) for layer in runs[0]["info"][name]["overlap"]) + 2
            print(
                f"  {'layer':<{name_width}}{'size':>9}{'shared':>9}{'CTR only':>10}"
                f"{'CVR only':>10}{'unused':>9}{'Jaccard':>9}"
            )
            for layer in runs[0]["info"][name]["overlap"]:
                used = layer["shared"] + layer["ctr_only"] + layer["cvr_only"]
                print(
                    f"  {layer['layer']:<{name_width}}{layer['size']:>9}"
                    + "".join(
                        f"{layer[key] / layer['size']:>{width}.1%}"
                        for key, width in (("shared", 9), ("ctr_only", 10), ("cvr_only", 10), ("unused", 9))
                    )
                    + f"{layer['shared'] / max(used, 1):>9.2f}"
                )
            print(
                "  seconds per phase: "
                + ", ".join(
                    f"{phase} {np.mean([r['info'][name]['phases'][phase] for r in runs]):.0f}"
                    for phase in runs[0]["info"][name]["phases"]
                )
            )

    print(
        f"\nTest day, mean ± std over seeds {seeds} "
        f"({args.rows} impressions, {args.catalogue} catalogue, {args.days} days):"
    )
    header = (
        f"{'model':<27}" + "".join(f"{COLUMNS[key][0]:>18}" for key in COLUMNS) + f"{'MLP weights ctr/cvr':>22}{'s':>6}"
    )
    print(header)
    print("-" * len(header))
    for name in names:
        cells = "".join(
            f"{_mean_std([r['results'][name][key] for r in runs], fmt):>18}" for key, (_, fmt, _) in COLUMNS.items()
        )
        weights = seconds = ""
        if name in args.models:
            info = runs[0]["info"][name]
            weights = f"{info['weights']['ctr'] / 1000:.0f}k/{info['weights']['cvr'] / 1000:.0f}k"
            seconds = f"{np.mean([r['info'][name]['seconds'] for r in runs]):.0f}"
        print(f"{LABELS[name]:<27}{cells}{weights:>22}{seconds:>6}")
    if BASELINE in args.models:
        print("\nPaired difference to single-task (mean ± std of the per-seed differences; CVR MSE relative):")
        print(f"{'model':<27}{'CVR MSE':>18}{'CTR AUC':>18}{'GAUC':>18}{'log loss':>18}")
        for name in args.models:
            if name == BASELINE:
                continue

            def paired(key: str, relative: bool = False) -> list[float]:
                return [
                    r["results"][name][key] / r["results"][BASELINE][key] - 1
                    if relative
                    else r["results"][name][key] - r["results"][BASELINE][key]
                    for r in runs
                ]

            print(
                f"{LABELS[name]:<27}{_mean_std(paired('cvr_mse', True), '{:+.2%}'):>18}"
                f"{_mean_std(paired('ctr_auc'), '{:+.4f}'):>18}"
                f"{_mean_std(paired('ctr_gauc'), '{:+.4f}'):>18}{_mean_std(paired('ctr_log_loss'), '{:+.4f}'):>18}"
            )
    print(
        "MLP weights: the hidden layers' weights each task's exported model keeps "
        "(experts, gates and towers for MMoE/PLE). "
        "Gap: share of the way from no skill to the truth. "
        "Paper (Tencent data): S-Weight -3.4% CVR MSE, +0.003 CTR AUC."
    )


def plot(runs: list[dict], args, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [name for name in [*args.models, TRUTH, NO_SKILL]]
    keys = ["cvr_mse", "ctr_auc", "ctr_gauc", "ctr_log_loss"]
    figure, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4.5))
    for axis, key in zip(axes, keys):
        values = np.array([[r["results"][name][key] for r in runs] for name in shown])
        models = [name for name in shown if name not in (TRUTH, NO_SKILL)]
        axis.errorbar(
            values[: len(models)].mean(axis=1),
            range(len(models)),
            xerr=values[: len(models)].std(axis=1),
            fmt="o",
            capsize=3,
        )
        for reference, style in ((TRUTH, "--"), (NO_SKILL, ":")):
            if key in ("ctr_auc", "ctr_gauc") and reference == NO_SKILL:
                continue
            axis.axvline(
                np.mean([r["results"][reference][key] for r in runs]),
                linestyle=style,
                color="gray",
                label=LABELS[reference],
            )
        axis.set_yticks(range(len(models)), [LABELS[name] for name in models])
        axis.invert_yaxis()
        axis.set_title(f"{COLUMNS[key][0]} ({'higher' if COLUMNS[key][2] else 'lower'} is better)")
        axis.grid(axis="x", alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    for axis in axes[1:]:
        axis.set_yticklabels([])
    figure.suptitle(
        f"Test day, {args.rows} impressions ({args.catalogue} catalogue), "
        f"mean ± std over seeds {[r['seed'] for r in runs]}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"plot: {path}")


PER_RUN_SETTINGS = {"seeds", "models", "out", "quick", "report"}  # may differ between merged runs
# Settings only sparse sharing reads: they must agree only between pieces that hold it.
SEARCH_SETTINGS = {"warmup_epochs", "rounds", "remaining", "scope", "min_sparsity", "epochs_per_round"}
SPARSE_SHARING = {"s_weight", "s_neuron"}


def _piece(argument: str) -> tuple[str, set[str] | None]:
    """`FILE.json`, or `FILE.json:model,model` for only those models of it."""
    path, _, models = argument.partition(".json:")
    if not models:
        return argument, None
    return path + ".json", set(models.split(","))


def merge_saved(pieces: list[str], out: str) -> tuple[list[dict], argparse.Namespace]:
    """The runs of several saved JSON files as one: per seed, every model's results."""
    by_seed: dict[int, dict] = {}
    first = {}
    for piece in pieces:
        path, chosen = _piece(piece)
        with open(path) as f:
            saved = json.load(f)
        saved["settings"].setdefault("task_relatedness", 0.5)  # runs from before the option: the generator's default
        shared = {
            key: value for key, value in saved["settings"].items() if key not in PER_RUN_SETTINGS | SEARCH_SETTINGS
        }
        taken = [name for name in saved["settings"]["models"] if chosen is None or name in chosen]
        if chosen and chosen - set(taken):
            raise SystemExit(f"{path} has no runs of {sorted(chosen - set(taken))}")
        checks = [("settings", shared)]
        if SPARSE_SHARING & set(taken):
            checks.append(("search", {key: saved["settings"].get(key) for key in SEARCH_SETTINGS}))
        for kind, values in checks:
            if kind not in first:
                first[kind] = (path, values)
                continue
            reference_path, reference = first[kind]
            differing = sorted(key for key in reference.keys() | values.keys() if reference.get(key) != values.get(key))
            if differing:
                raise SystemExit(
                    f"{path}: settings differ from {reference_path}'s in {differing}: those runs do not compare"
                )
        for run in saved["runs"]:
            merged = by_seed.setdefault(run["seed"], {"seed": run["seed"], "results": {}, "info": {}})
            for name, values in run["results"].items():
                if name not in (TRUTH, NO_SKILL) and name not in taken:
                    continue
                if name in merged["results"] and name not in (TRUTH, NO_SKILL):
                    raise SystemExit(f"{path}: seed {run['seed']} of {name} is in two files")
                merged["results"][name] = values
            merged["info"].update({name: info for name, info in run["info"].items() if name in taken})
    settings = {**first["settings"][1], **(first["search"][1] if "search" in first else {})}
    models = [name for name in DEFAULT_MODELS if any(name in run["results"] for run in by_seed.values())]
    for seed, run in sorted(by_seed.items()):
        missing = [name for name in models if name not in run["results"]]
        if missing:
            raise SystemExit(f"seed {seed} has no runs of {missing}: every seed needs every model")
    args = argparse.Namespace(**settings, seeds=sorted(by_seed), models=models, out=out, quick=False, report=pieces)
    return [by_seed[seed] for seed in sorted(by_seed)], args


TABLE_SCALE = 0.25  # hashed table sizes, times DEFAULT_TABLES'


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options (also the settings other benchmarks train with: `parse_args([])`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="A few minutes: 200k impressions, seed 0, at most 2 epochs."
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="Generated impressions per seed.")
    parser.add_argument("--days", type=int, default=9, help="Days: the last one is the test day, the others train.")
    parser.add_argument(
        "--catalogue", default="paper", help="The generator's catalogue shape (logs/world.py CATALOGUES)."
    )
    parser.add_argument(
        "--task-relatedness",
        type=float,
        default=0.5,
        help="The generator's rho: the share of the click and watch-ratio interaction the tasks share.",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", choices=list(configs.MODELS), default=DEFAULT_MODELS)
    parser.add_argument(
        "--table-scale", type=float, default=TABLE_SCALE, help="Hashed table sizes, times DEFAULT_TABLES'."
    )
    parser.add_argument("--epochs", type=int, default=3, help="At most this many epochs per phase (early stopping).")
    parser.add_argument("--warmup-epochs", type=float, default=SearchConfig.warmup_epochs)
    parser.add_argument("--patience", type=int, default=TrainConfig.patience)
    parser.add_argument("--validation-fraction", type=float, default=TrainConfig.validation_fraction)
    parser.add_argument("--rounds", type=int, default=SearchConfig.rounds)
    parser.add_argument("--remaining", type=float, default=SearchConfig.remaining)
    parser.add_argument("--scope", default=SearchConfig.scope, choices=masks.SCOPES)
    parser.add_argument(
        "--min-sparsity",
        type=float,
        default=0.7,
        help="Sparse sharing: only rounds this sparse may be chosen (the target: at most 30%% of the MLP per task).",
    )
    parser.add_argument("--epochs-per-round", type=int, default=SearchConfig.epochs_per_round)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--optimizer", default="lazy_adam", choices=sorted(training.OPTIMIZERS))
    parser.add_argument("--ctr-loss-weight", type=float, default=dict(TrainConfig.loss_weights)["ctr"])
    parser.add_argument("--cvr-loss-weight", type=float, default=dict(TrainConfig.loss_weights)["cvr"])
    parser.add_argument("--conflict-weight", type=float, default=TrainConfig.conflict_weight)
    parser.add_argument("--out", default="comparison", help="Writes OUT.json (every figure) and OUT.png (the plot).")
    parser.add_argument(
        "--report",
        nargs="+",
        metavar="JSON",
        help="Train nothing: the table and plot of runs saved by earlier "
        "runs (e.g. one per seed or per machine), merged; their settings must agree (the mask search's "
        "only between pieces with sparse sharing). FILE.json:m1,m2 takes only those models of a file.",
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.report:
        runs, args = merge_saved(args.report, args.out)
        with open(f"{args.out}.json", "w") as f:
            json.dump({"settings": vars(args), "runs": runs}, f, indent=1)
        report(runs, args)
        plot(runs, args, f"{args.out}.png")
        return
    if args.quick:
        args.rows, args.seeds, args.epochs, args.warmup_epochs = 200_000, args.seeds[:1], 2, min(args.warmup_epochs, 1)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("lt4rec").setLevel(logging.INFO if os.environ.get("LT4REC_VERBOSE") else logging.WARNING)

    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, args))
        with open(f"{args.out}.json", "w") as f:
            json.dump({"settings": vars(args), "runs": runs}, f, indent=1)
    report(runs, args)
    plot(runs, args, f"{args.out}.png")


if __name__ == "__main__":
    main()
