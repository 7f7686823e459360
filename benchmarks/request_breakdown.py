"""Where a ranking request's time goes in the model, and what sharing the front saves.

Trains S-Weight on generated logs (`exported_models.trained_model`, as grpc_latency.py
does) and exports, as the pipeline pushes them, the CTR and CVR models and the joint rank
model, plus a dense single-task CTR model of the same shape (the unpruned network). A
request is one user's 200 candidates (grpc_latency.ranking_requests). In one process,
timed side by side in interleaved rounds (median ms per call):
- the stages of the pushed CTR model's `serving_default` on 200 whole raw examples:
  parse, Transform, embedding lookups with the feature cross (the context's part once),
  MLP (each its own tf.function, so their sum exceeds the fused call, whose ops overlap);
- whole signature calls of the loaded SavedModels: the dense single-task model, the CTR
  model (whole examples; context once; and without its MLP, the bound on what pruning the
  MLP can gain), both task models called one after the other (what
  ranking needs), and the rank model (whole examples; context once).
Sizes on disk of each, and of the pair against two dense models, close the report.
TensorFlow runs each op on --intra-op-threads threads, by default as `lt4rec serve` does
(one), under which the exports also choose their layers' paths by CPU time.

    .venv/bin/python benchmarks/request_breakdown.py
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile

import tensorflow as tf
import tensorflow_transform as tft

from exported_models import (
    add_intra_op_threads,
    folder_bytes,
    raw_requests,
    task_networks,
    time_side_by_side,
    trained_model,
    trained_transform,
)
from grpc_latency import ranking_requests
from lt4rec import features
from lt4rec.models import export, masks


def stage_functions(
    task_network: export.TaskNetwork, transform_output: tft.TFTransformOutput, request: tf.Tensor
) -> dict:
    """Each stage of a task model's serving_default, on the previous stage's output for `request`."""
    spec = export.raw_input_spec(transform_output)
    transform_layer = transform_output.transform_features_layer()
    parse = tf.function(lambda serialized: tf.io.parse_example(serialized, spec))
    transform = tf.function(lambda raw: {name: transform_layer(dict(raw))[name] for name in features.FEATURE_NAMES})
    front = tf.function(lambda inputs: vars(task_network.front(inputs)))
    raw = parse(request)
    inputs = transform(raw)
    tower_inputs = export.TowerInputs(**front(inputs))
    mlp = tf.function(lambda: task_network.tower(tower_inputs))
    return {
        "parse": lambda: parse(request),
        "Transform": lambda: transform(raw),
        "embed+cross": lambda: front(inputs),
        "MLP": mlp,
    }


def front_function(task_network: export.TaskNetwork, transform_output: tft.TFTransformOutput) -> tf.function:
    """A task model's call without its MLP (parse, Transform, embeddings, cross, in one graph):
    what no mask can speed up, so dense / this bounds any pruned model's speed-up."""
    spec = export.raw_input_spec(transform_output)
    transform_layer = transform_output.transform_features_layer()

    @tf.function
    def front(serialized: tf.Tensor) -> dict[str, tf.Tensor | None]:
        transformed = transform_layer(dict(tf.io.parse_example(serialized, spec)))
        return vars(task_network.front({name: transformed[name] for name in features.FEATURE_NAMES}))

    return front


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="Generated impressions (2 of 4 days train).")
    parser.add_argument("--min-sparsity", type=float, default=0.8)
    parser.add_argument("--rounds", type=int, default=7, help="Interleaved timing rounds.")
    parser.add_argument("--calls", type=int, default=30, help="Calls per variant per round.")
    parser.add_argument("--seed", type=int, default=0)
    add_intra_op_threads(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)

    model, _ = trained_model(args.rows, masks.CONNECTION, args.min_sparsity, args.seed)
    transform_output = trained_transform(args.rows, args.seed)
    out = tempfile.mkdtemp(prefix="lt4rec-breakdown-")
    paths = {name: os.path.join(out, name) for name in ("dense", "ctr", "cvr", "rank", "dense_cvr")}
    networks = {task: task_networks(model, task) for task in masks.TASKS}
    for task in masks.TASKS:
        export.save_task_network(networks[task]["compacted"], transform_output, paths[task])
    export.save_task_network(networks["ctr"]["dense"], transform_output, paths["dense"])
    export.save_task_network(networks["cvr"]["dense"], transform_output, paths["dense_cvr"])
    export.export_rank_model(model, transform_output, paths["rank"])
    loaded = {name: tf.saved_model.load(path) for name, path in paths.items()}

    context, stripped, whole = ranking_requests(raw_requests(args.rows, args.seed))[0]
    examples = tf.constant([example.SerializeToString() for example in whole])
    candidates = tf.constant([example.SerializeToString() for example in stripped])
    context_bytes = tf.constant(context.SerializeToString())
    weights = tf.constant([1.0, 1.0, 1.0])
    print(
        f"S-Weight, {args.rows} generated impressions; {args.intra_op_threads} thread(s) per op (0: one per core); "
        f"one request: {len(whole)} candidates, "
        f"{sum(len(e) for e in examples.numpy()) / 1e3:.0f} kB whole, "
        f"{(sum(len(e) for e in candidates.numpy()) + len(context_bytes.numpy())) / 1e3:.0f} kB with the context once"
    )
    compacted = networks["ctr"]["compacted"]
    print(
        f"CTR model: widths {compacted.layer_widths}, "
        f"{100 * compacted.kept_weights / compacted.dense_weights:.1f}% of MLP weights, "
        f"paths {[p.path for p in compacted.layer_paths]}"
    )

    front = front_function(compacted, transform_output)
    stages = time_side_by_side(stage_functions(compacted, transform_output, examples), args.rounds, args.calls)
    default, in_context = "serving_default", export.CONTEXT_SIGNATURE
    signature = {name: model_.signatures for name, model_ in loaded.items()}
    calls = {
        "dense single-task CTR": lambda: signature["dense"][default](examples=examples),
        "CTR model": lambda: signature["ctr"][default](examples=examples),
        "CTR model, context once": lambda: signature["ctr"][in_context](context=context_bytes, examples=candidates),
        "CTR model without its MLP": lambda: front(examples),
        "CTR + CVR models (two calls)": lambda: (
            signature["ctr"][default](examples=examples),
            signature["cvr"][default](examples=examples),
        ),
        "dense CTR + CVR (two calls)": lambda: (
            signature["dense"][default](examples=examples),
            signature["dense_cvr"][default](examples=examples),
        ),
        "rank model (one call)": lambda: signature["rank"][default](examples=examples, rank_weights=weights),
        "rank model, context once": lambda: signature["rank"][in_context](
            context=context_bytes, examples=candidates, rank_weights=weights
        ),
    }
    whole_ms = time_side_by_side(calls, args.rounds, args.calls)

    print(f"\nstages of the CTR model's serving_default on {len(whole)} whole examples (each alone):")
    for name, ms in stages.items():
        print(f"  {name:<12} {ms:7.2f} ms  {100 * ms / sum(stages.values()):5.1f}%")
    print(f"\n{'whole call':<30} {'ms':>7} {'x dense':>8} {'x two calls':>12} {'disk MB':>8}")
    sizes = {"dense single-task CTR": "dense", "CTR model": "ctr", "rank model (one call)": "rank"}
    for name, ms in whole_ms.items():
        size = f"{folder_bytes(paths[sizes[name]]) / 1e6:8.2f}" if name in sizes else ""
        print(
            f"{name:<30} {ms:7.2f} {whole_ms['dense single-task CTR'] / ms:8.2f} "
            f"{whole_ms['CTR + CVR models (two calls)'] / ms:12.2f} {size}"
        )
    print(
        f"  (with an MLP that cost nothing a task model would be at most "
        f"{whole_ms['dense single-task CTR'] / whole_ms['CTR model without its MLP']:.2f}x as fast as dense)"
    )
    dense_pair = folder_bytes(paths["dense"]) + folder_bytes(paths["dense_cvr"])
    pair = folder_bytes(paths["ctr"]) + folder_bytes(paths["cvr"])
    print(
        f"\non disk: CTR + CVR {pair / 1e6:.2f} MB, rank {folder_bytes(paths['rank']) / 1e6:.2f} MB, "
        f"two dense single-task models {dense_pair / 1e6:.2f} MB (pair {pair / dense_pair:.3f}, "
        f"rank alone {folder_bytes(paths['rank']) / dense_pair:.3f})"
    )


if __name__ == "__main__":
    main()
