"""Loading a pushed version: its graph's size and what `lt4rec serve` pays to load it, side by side.

A hot swap or a server's start loads every model while requests run (swap_pause.py), so the
cost of a load is serving time taken from the requests. For each git revision (deployments.unpack;
"." is this tree), that revision's own code trains S-Weight and pushes the ctr, cvr and rank
models (deployments.export_with_own_code). Then, in one process and in interleaved rounds, `lt4rec serve`'s
own load of each (`registry.load_servable`: tf.saved_model.load, the signatures described and
warmed up) and steady calls of the rank model's `serving_context` and `serving_default` on
one ranking request, on `lt4rec serve`'s threads (--intra-op-threads), wall and CPU time. Prints per revision and
model the saved_model.pb bytes, the functions and nodes of its library, and the median wall
and CPU seconds of a load; then the median wall and CPU ms of a steady call.

    .venv/bin/python benchmarks/model_load.py --revision 9f6b731
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import tensorflow as tf

from deployments import export_with_own_code, unpack
from exported_models import add_intra_op_threads, raw_requests
from grpc_latency import ranking_requests
from lt4rec.models import export, masks
from lt4rec.serving import registry

MODELS = (*masks.TASKS, export.RANK_MODEL)


def library_size(path: str) -> tuple[int, int, int]:
    """(saved_model.pb bytes, functions in its library, nodes in them)."""
    functions = registry.read_saved_model(path).meta_graphs[0].graph_def.library.function
    return (
        os.path.getsize(os.path.join(path, registry.SAVED_MODEL_FILE)),
        len(functions),
        sum(len(f.node_def) for f in functions),
    )


def timed_load(path: str) -> tuple[float, float, registry.Servable]:
    """Wall and CPU seconds of `lt4rec serve`'s load of one version, and the loaded version."""
    wall, cpu = time.perf_counter(), time.process_time()
    servable = registry.load_servable("model", 1, path)
    return time.perf_counter() - wall, time.process_time() - cpu, servable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revision", nargs="+", default=["9f6b731"], help="Earlier revisions whose exports to load.")
    parser.add_argument("--rows", type=int, default=50_000, help="Generated impressions (2 of 4 days train).")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=30, help="Steady calls per round and revision.")
    parser.add_argument("--seed", type=int, default=0)
    add_intra_op_threads(parser)
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)

    work = tempfile.mkdtemp(prefix="lt4rec-model-load-")
    revisions = [*args.revision, "."]
    folders = {}
    for revision in revisions:
        folder = os.path.join(work, revision.replace("/", "_") if revision != "." else "this_tree")
        folders[revision] = os.path.join(folder, "models")
        export_with_own_code(revision, *unpack(revision, folder), args.rows, args.seed, folders[revision])

    context, stripped, whole = ranking_requests(raw_requests(args.rows, args.seed))[0]
    weights = tf.constant([1.0, 1.0, 0.5])
    requests = {  # per signature
        export.CONTEXT_SIGNATURE: {
            export.CONTEXT_INPUT: tf.constant(context.SerializeToString()),
            export.EXAMPLES_INPUT: tf.constant([example.SerializeToString() for example in stripped]),
            export.RANK_WEIGHTS_INPUT: weights,
        },
        "serving_default": {
            export.EXAMPLES_INPUT: tf.constant([example.SerializeToString() for example in whole]),
            export.RANK_WEIGHTS_INPUT: weights,
        },
    }
    paths = {
        (revision, model): os.path.join(folders[revision], model, "1") for revision in revisions for model in MODELS
    }
    for path in paths.values():
        timed_load(path)  # the process's own first-load costs, outside the rounds
    loads = {key: [] for key in paths}
    calls = {(revision, signature): [] for revision in revisions for signature in requests}
    for _ in range(args.rounds):
        for key, path in paths.items():
            wall, cpu, servable = timed_load(path)
            loads[key].append((wall, cpu))
            for signature, request in requests.items() if key[1] == export.RANK_MODEL else ():
                function = servable.signatures[signature].function
                function(**request)
                for _ in range(args.calls):
                    wall, cpu = time.perf_counter(), time.process_time()
                    function(**request)
                    calls[key[0], signature].append((time.perf_counter() - wall, time.process_time() - cpu))
            del servable

    print(
        f"\n{args.rounds} interleaved rounds; S-Weight on {args.rows} generated impressions, "
        f"each revision's own export; loads as lt4rec serve loads (load, describe, warm up)"
    )
    print(f"{'revision':<10} {'model':<5} {'pb kB':>7} {'functions':>9} {'nodes':>6} {'load s':>7} {'CPU s':>6}")
    for (revision, model), rounds in loads.items():
        size, functions, nodes = library_size(paths[revision, model])
        wall = statistics.median(w for w, _ in rounds)
        cpu = statistics.median(c for _, c in rounds)
        print(f"{revision:<10} {model:<5} {size / 1e3:7.0f} {functions:9d} {nodes:6d} {wall:7.2f} {cpu:6.2f}")
    print(
        f"\nrank model on one ranking request of 200 candidates, {args.intra_op_threads} thread(s) per op "
        "(0: one per core): median ms per call, wall and CPU"
    )
    for (revision, signature), times in calls.items():
        wall = statistics.median(w for w, _ in times)
        cpu = statistics.median(c for _, c in times)
        print(f"{revision:<10} {signature:<16} {1e3 * wall:.2f} {1e3 * cpu:.2f}")


if __name__ == "__main__":
    main()
