"""The frontier a user chooses masks from: quality against whole-request latency.

For each mask structure, S-Weight (connections) and S-Neuron (whole units), Algorithm 1 runs
once on generated logs in the paper's shape (warmup, then each task's search with --rounds
rounds down to --remaining of the MLP), and step 3 (shared training from sNET_init) runs
once per sparsity level, every task taking its search's mask of that round. Each point is
scored on the test day (CTR AUC, CVR MSE) and exported as the pipeline pushes it (each
task's model compacted, and the joint rank model); the dense single-task model of the same
shape (the unpruned network, every mask full) is timed beside them, and a single-task model
trained on the same batches gives the quality to beat. Latency, of a loaded SavedModel, every
point timed side by side in interleaved rounds in a fresh process on lt4rec serve's threads
per op (median ms), on two requests of 200 candidates: the general one (the whole
`serving_default` call on the test day's first 200 rows, rows of many users, so every row's
context is computed) and a ranking request (one user's candidates, the context sent and
computed once: `serving_context`, as `lt4rec score` asks). Writes OUT.json and OUT.png: CTR
AUC against the CTR model's latency, CVR MSE against the CVR model's.

    .venv/bin/python benchmarks/frontier.py                  # 200k impressions, seed 0
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import tempfile
import time

import tensorflow as tf
import tensorflow_transform as tft

import comparison
from exported_models import add_intra_op_threads, folder_bytes, raw_requests, time_side_by_side
from grpc_latency import ranking_requests
from lt4rec import features
from lt4rec.models import export, masks, sparse_sharing, training
from lt4rec.pipeline import configs

STRUCTURES = {configs.S_WEIGHT: "S-Weight (connections)", configs.S_NEURON: "S-Neuron (units)"}
DENSE = "dense single-task"
REQUESTS = {"request": "many users' rows, serving_default", "ranking": "one user's ranking, context once"}


def _quality(model, test) -> dict[str, float]:
    scores = training.predict(model, training.ordered_batches(test.examples, 4096))
    return comparison._metrics(test, scores["ctr"], scores["cvr"])


def structure_points(name: str, train: dict, test, args, build_batch: dict, transform_output, out: str) -> list[dict]:
    """One search for `name`'s structure, then one shared training and export per chosen round."""
    model, data, train_config, search_config = comparison.prepare(name, train, args, args.seed, build_batch)
    algorithm = sparse_sharing.SparseSharing(model, data, train_config, search_config)
    start = time.perf_counter()
    algorithm.warmup()
    searches = {task: algorithm.search(task) for task in masks.TASKS}
    print(f"{STRUCTURES[name]}: warmup and search in {time.perf_counter() - start:.0f} s", flush=True)
    points = []
    searched = min(len(search.round_masks) for search in searches.values())
    if any(level >= searched for level in args.levels):
        print(f"{STRUCTURES[name]}: the search stopped after round {searched - 1} (no path left beyond it)")
    for round_index in [level for level in args.levels if level < searched]:
        start = time.perf_counter()
        chosen = {task: searches[task].round_masks[round_index] for task in masks.TASKS}
        algorithm.train_shared(chosen)
        folder = os.path.join(out, name, f"round{round_index}")
        networks = {task: export.TaskNetwork(model, task, compact=True) for task in masks.TASKS}
        paths = {task: os.path.join(folder, task) for task in masks.TASKS}
        for task, task_network in networks.items():
            export.save_task_network(task_network, transform_output, paths[task])
        paths["rank"] = os.path.join(folder, "rank")
        export.export_rank_model(model, transform_output, paths["rank"])
        point = {
            "structure": name,
            "round": round_index,
            **_quality(model, test),
            "remaining": {task: masks.remaining_fraction(chosen[task]) for task in masks.TASKS},
            "widths": {task: networks[task].layer_widths for task in masks.TASKS},
            "paths": paths,
            "train_seconds": time.perf_counter() - start,
        }
        points.append(point)
        print(
            f"  round {round_index}: ctr {100 * point['remaining']['ctr']:.1f}% / "
            f"cvr {100 * point['remaining']['cvr']:.1f}% of MLP "
            f"weights, widths ctr {point['widths']['ctr']} cvr {point['widths']['cvr']}; "
            f"test CTR AUC {point['ctr_auc']:.4f}, "
            f"CVR MSE {point['cvr_mse']:.5f} ({point['train_seconds']:.0f} s)",
            flush=True,
        )
        if round_index == args.levels[0] and name == args.structures[0]:
            masks.set_task_masks(model, {task: model.initial_masks(task) for task in masks.TASKS})
            for task in masks.TASKS:
                unpruned = export.TaskNetwork(model, task, compact=False, matmul=export.DENSE)
                export.save_task_network(unpruned, transform_output, os.path.join(out, "dense", task))
    return points


def time_exports(
    paths: dict[tuple[int, str], str],
    request: list[bytes],
    ranking: tuple[bytes, list[bytes]],
    intra_op_threads: int,
    rounds: int,
    calls: int,
) -> dict[tuple[int, str, str], float]:
    """Median ms of each export on `request` (`serving_default`) and on `ranking` (its
    context and candidates, `serving_context`), every call timed side by side.

    Runs in a fresh process: TensorFlow fixes its threads per op when it starts, and the
    training before it wants every core, while `lt4rec serve` runs each op on one thread.
    """
    tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    examples = tf.constant(request)
    context, candidates = tf.constant(ranking[0]), tf.constant(ranking[1])
    weights = tf.constant([1.0, 1.0, 1.0])
    functions = {}
    for key, path in paths.items():
        signatures = tf.saved_model.load(path).signatures
        extra = {"rank_weights": weights} if key[1] == "rank" else {}
        whole, in_context = signatures["serving_default"], signatures[export.CONTEXT_SIGNATURE]
        functions[(*key, "request")] = lambda s=whole, e=extra: s(examples=examples, **e)
        functions[(*key, "ranking")] = lambda s=in_context, e=extra: s(context=context, examples=candidates, **e)
    return time_side_by_side(functions, rounds, calls)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    dense = result["dense"]
    for axis, task, key, label in (
        (axes[0], "ctr", "ctr_auc", "CTR AUC (higher is better)"),
        (axes[1], "cvr", "cvr_mse", "CVR MSE (lower is better)"),
    ):
        for color, (name, title) in enumerate(STRUCTURES.items()):
            points = [p for p in result["points"] if p["structure"] == name]
            if not points:
                continue
            for request, style in (("request", "o-"), ("ranking", "o--")):
                axis.plot(
                    [p["ms"][request][task] for p in points],
                    [p[key] for p in points],
                    style,
                    label=f"{title}, {REQUESTS[request]}",
                    color=f"C{color}",
                    alpha=1.0 if request == "request" else 0.6,
                )
            for p in points:
                axis.annotate(
                    f"{100 * p['remaining'][task]:.0f}%",
                    (p["ms"]["request"][task], p[key]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                )
        for request, marker in (("request", "s"), ("ranking", "D")):
            axis.plot(
                [dense["ms"][request][task]], [dense[key]], marker, color="black", label=f"{DENSE}, {REQUESTS[request]}"
            )
        axis.set_xlabel(f"{task.upper()} model, one call on 200 raw candidates (ms)")
        axis.set_title(label)
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    figure.suptitle(
        f"Frontier: {result['settings']['rows']} impressions, seed {result['settings']['seed']}; "
        "labels: share of MLP weights the task keeps"
    )
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    figure.savefig(path, dpi=110)
    print(f"plot: {path}")


def print_table(dense: dict, points: list[dict], request: str, title: str) -> None:
    """Quality, and latency on `request` against the dense single-task model's."""
    dense_ms = dense["ms"][request]
    print(
        f"\n{title}\n{'model':<26} {'MLP kept ctr/cvr':>17} {'CTR AUC':>8} {'CVR MSE':>8} "
        f"{'CTR ms':>7} {'x dense':>7} {'CVR ms':>7} "
        f"{'x dense':>7} {'rank ms':>8} {'x 2 dense':>9} {'rank MB':>8}"
    )
    print(
        f"{DENSE:<26} {'100%/100%':>17} {dense['ctr_auc']:8.4f} {dense['cvr_mse']:8.5f} "
        f"{dense_ms['ctr']:7.2f} {1:7.2f} "
        f"{dense_ms['cvr']:7.2f} {1:7.2f} {'':>8} {'':>9} {'':>8}"
    )
    for point in points:
        kept = f"{100 * point['remaining']['ctr']:.0f}%/{100 * point['remaining']['cvr']:.0f}%"
        ms = point["ms"][request]
        print(
            f"{point['structure'] + ' round ' + str(point['round']):<26} {kept:>17} "
            f"{point['ctr_auc']:8.4f} {point['cvr_mse']:8.5f} "
            f"{ms['ctr']:7.2f} {dense_ms['ctr'] / ms['ctr']:7.2f} {ms['cvr']:7.2f} "
            f"{dense_ms['cvr'] / ms['cvr']:7.2f} {ms['rank']:8.2f} "
            f"{(dense_ms['ctr'] + dense_ms['cvr']) / ms['rank']:9.2f} "
            f"{point['disk_mb']['rank']:8.2f}"
        )


def main() -> None:
    parser = comparison.build_parser()
    parser.description = __doc__.splitlines()[0]
    parser.set_defaults(rows=200_000, epochs=2, rounds=6, remaining=0.05, min_sparsity=0.0, out="frontier")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--structures", nargs="+", choices=list(STRUCTURES), default=list(STRUCTURES))
    parser.add_argument(
        "--levels", type=int, nargs="+", default=[2, 3, 4, 5, 6], help="Search rounds to train and export."
    )
    parser.add_argument("--timing-rounds", type=int, default=7, help="Interleaved timing rounds.")
    parser.add_argument("--calls", type=int, default=20, help="Calls per model per timing round.")
    add_intra_op_threads(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    start = time.perf_counter()
    train, test, folder = comparison.load_transformed(args)
    transform_output = tft.TFTransformOutput(os.path.join(folder, "transform"))
    request = raw_requests(args.rows, args.seed, folder=folder)[0]
    context, candidates, _ = ranking_requests([request])[0]
    ranking = (context.SerializeToString(), [candidate.SerializeToString() for candidate in candidates])
    build_batch = {name: tf.constant(test.examples[name][:2]) for name in features.FEATURE_NAMES}
    out = tempfile.mkdtemp(prefix="lt4rec-frontier-")
    print(
        f"{args.rows} impressions ({args.catalogue} catalogue, {args.days} days), "
        f"ready in {time.perf_counter() - start:.0f} s; "
        f"exports under {out}",
        flush=True,
    )

    start = time.perf_counter()
    single_task, _ = comparison.train_model(comparison.BASELINE, train, args, args.seed, build_batch)
    dense = {
        "structure": DENSE,
        **_quality(single_task, test),
        "paths": {task: os.path.join(out, "dense", task) for task in masks.TASKS},
    }
    print(
        f"single-task: test CTR AUC {dense['ctr_auc']:.4f}, CVR MSE {dense['cvr_mse']:.5f} "
        f"({time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    points = [
        point
        for name in args.structures
        for point in structure_points(name, train, test, args, build_batch, transform_output, out)
    ]

    paths = {
        (index, kind): path for index, point in enumerate([dense, *points]) for kind, path in point["paths"].items()
    }
    with multiprocessing.get_context("spawn").Pool(1) as child:
        ms = child.apply(time_exports, (paths, request, ranking, args.intra_op_threads, args.timing_rounds, args.calls))
    for index, point in enumerate([dense, *points]):
        point["ms"] = {asked: {kind: ms[(index, kind, asked)] for kind in point["paths"]} for asked in REQUESTS}
        point["disk_mb"] = {kind: folder_bytes(path) / 1e6 for kind, path in point["paths"].items()}

    for asked, title in REQUESTS.items():
        print_table(dense, points, asked, f"{title}: ms per call (x the dense single-task model)")
    print(
        f"dense single-task model on disk: {dense['disk_mb']['ctr']:.2f} MB each. "
        "Quality: the dense row's is a single-task model "
        "trained on the same batches; its latency is the unpruned network's (same shape)."
    )
    result = {"settings": {k: v for k, v in vars(args).items()}, "dense": dense, "points": points}
    with open(f"{args.out}.json", "w") as f:
        json.dump(result, f, indent=2, default=float)
    print(f"figures: {args.out}.json")
    plot(result, f"{args.out}.png")


if __name__ == "__main__":
    main()
