"""Exported CTR and CVR models: latency per request of 200 candidates, and size, against dense.

Runs Algorithm 1 (`comparison.train_model`, its settings) on generated logs for S-Weight
(connection masks) and S-Neuron (unit masks), choosing only rounds at least
--min-sparsity sparse, then exports each task three ways, from the same weights:
- dense: the unpruned network (full masks), i.e. a single-task model of the same shape;
- folded: the task's mask multiplied into the kernels, same shapes (zeros alone);
- compacted: what the pipeline pushes: dead units removed, per-layer dense or sparse
  matmul chosen by measurement (recorded in `assets.extra/lt4rec_model.json`).
Latency is timed side by side in one run, interleaved over --rounds, two ways: the MLP
alone (what the masks change) on a [200, inputs] batch, and the whole `serving_default`
signature on 200 serialized raw tf.Examples (parse, Transform, embeddings, cross, MLP).
Size: each task's SavedModel on disk and its variables' bytes, and the resident memory a
fresh process gains by loading the CTR and CVR models and scoring once, for the sparse
pair against the two dense models. TensorFlow runs each op on --intra-op-threads threads,
by default as `lt4rec serve` does (one).

    .venv/bin/python benchmarks/exported_models.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

import comparison
from comparison import TABLE_SCALE
from lt4rec import features
from lt4rec.models import export, masks
from lt4rec.models.config import NEURON
from lt4rec.pipeline import configs
from lt4rec.serving.settings import ServerSettings
from transformed_logs import data_folder, load

KINDS = ("dense", "folded", "compacted")
# How many threads `lt4rec serve` gives one op unless told (a dataclass keeps a field's
# default as its class attribute): the serving benchmarks time under it.
SERVE_INTRA_OP = ServerSettings.tensorflow_intra_op_parallelism
CANDIDATES = 200


def raw_requests(rows: int, seed: int, size: int = CANDIDATES, folder: str | None = None) -> list[list[bytes]]:
    """Serialized raw examples of the test day, `size` per request (of `folder`, a `load` cache)."""
    logs = os.path.join(folder or data_folder(rows, seed=seed, table_scale=TABLE_SCALE), "logs")
    last_day = sorted(day for day in os.listdir(logs) if day.isdigit())[-1]
    files = sorted(tf.io.gfile.glob(os.path.join(logs, last_day, "part-*.gz")))
    records = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
    return [records[start : start + size] for start in range(0, len(records) - size + 1, size)]


def trained_model(rows: int, granularity: str, min_sparsity: float, seed: int):
    """S-Weight (connection masks) or S-Neuron (unit masks), trained as comparison.py trains it."""
    args = comparison.build_parser().parse_args(["--min-sparsity", str(min_sparsity)])
    splits = load(rows, seed=seed, table_scale=TABLE_SCALE)
    train, test = comparison._merged(splits), splits["test"]
    build_batch = {name: tf.constant(test.examples[name][:2]) for name in features.FEATURE_NAMES}
    name = configs.S_WEIGHT if granularity == masks.CONNECTION else configs.S_NEURON
    return comparison.train_model(name, train, args, seed, build_batch)


def trained_transform(rows: int, seed: int) -> tft.TFTransformOutput:
    """The Transform graph that `trained_model(rows, ..., seed)` trained through (its `load` cache)."""
    return tft.TFTransformOutput(os.path.join(data_folder(rows, seed=seed, table_scale=TABLE_SCALE), "transform"))


def task_networks(model, task: str) -> dict[str, export.TaskNetwork]:
    """The three exports of one task, built from the model as trained."""
    chosen = masks.get_task_masks(model)
    masks.set_task_masks(model, {**chosen, task: model.initial_masks(task)})
    dense = export.TaskNetwork(model, task, compact=False, matmul=export.DENSE)
    masks.set_task_masks(model, chosen)
    return {
        "dense": dense,
        "folded": export.TaskNetwork(model, task, compact=False, matmul=export.DENSE),
        "compacted": export.TaskNetwork(model, task, compact=True),
    }


def mlp_function(task_network: export.TaskNetwork):
    """The task's tower alone on one request's input: its context part one row, the candidates' 200."""
    request_width, candidate_width = task_network.tower.input_widths
    inputs = export.TowerInputs(
        tf.random.stateless_normal([1, request_width], seed=[1, 1]),
        tf.random.stateless_normal([CANDIDATES, candidate_width], seed=[1, 2]),
        None,
        None,
    )
    return tf.function(lambda: task_network.tower(inputs))


def time_side_by_side(functions: dict[str, callable], rounds: int, calls: int) -> dict[str, float]:
    """Median milliseconds per call of each function, timed in interleaved rounds."""
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(calls):
                function()
            times[name].append(1000 * (time.perf_counter() - start) / calls)
    return {name: statistics.median(values) for name, values in times.items()}


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def variable_bytes(task_network: export.TaskNetwork) -> int:
    return sum(int(np.prod(v.shape)) * v.dtype.size for v in task_network.variables)


_RSS_SCRIPT = """
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
def rss():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1]) * 1024
requests = [open(sys.argv[1], "rb").read().split(b"\\0SPLIT\\0")]
before = rss()
models = [tf.saved_model.load(path) for path in sys.argv[2:]]
for model in models:
    model.signatures["serving_default"](examples=tf.constant(requests[0]))
print(rss() - before)
"""


def resident_bytes(paths: list[str], request_file: str) -> int:
    """Resident memory a fresh process gains by loading `paths` and scoring one request each."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, request_file, *paths], capture_output=True, text=True, env=env, check=True
    )
    return int(done.stdout.strip().splitlines()[-1])


def add_intra_op_threads(parser: argparse.ArgumentParser) -> None:
    """--intra-op-threads: TensorFlow's threads per op while timing, by default `lt4rec serve`'s."""
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=SERVE_INTRA_OP,
        help="Threads per TensorFlow op, as lt4rec serve's --tensorflow-intra-op-parallelism (0: one per core).",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="Generated impressions (2 of 4 days train).")
    parser.add_argument(
        "--min-sparsity",
        type=float,
        default=0.75,
        help="Only rounds at least this sparse are chosen (the last round is ~80%%).",
    )
    parser.add_argument("--granularities", nargs="+", default=[masks.CONNECTION, NEURON])
    parser.add_argument("--rounds", type=int, default=7, help="Interleaved timing rounds.")
    parser.add_argument("--calls", type=int, default=30, help="Calls per variant per round.")
    parser.add_argument("--seed", type=int, default=0)
    add_intra_op_threads(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)

    requests = raw_requests(args.rows, args.seed)
    request = tf.constant(requests[0])
    transform_output = trained_transform(args.rows, args.seed)
    out = tempfile.mkdtemp(prefix="lt4rec-exported-")
    request_file = os.path.join(out, "request.bin")
    with open(request_file, "wb") as f:
        f.write(b"\0SPLIT\0".join(requests[0]))
    print(
        f"{args.rows} generated impressions; {CANDIDATES} candidates per request; "
        f"{args.intra_op_threads} thread(s) per op (0: one per core); exports under {out}"
    )

    for granularity in args.granularities:
        start = time.perf_counter()
        model, _ = trained_model(args.rows, granularity, args.min_sparsity, args.seed)
        name = "S-Weight" if granularity == masks.CONNECTION else "S-Neuron"
        print(f"\n== {name} (masks by {granularity}), trained in {time.perf_counter() - start:.0f} s ==")
        paths: dict[str, dict[str, str]] = {}
        for task in masks.TASKS:
            networks = task_networks(model, task)
            paths[task] = {}
            for kind, task_network in networks.items():
                path = os.path.join(out, granularity, task, kind)
                export.save_task_network(task_network, transform_output, path)
                paths[task][kind] = path
            loaded = {kind: tf.saved_model.load(path) for kind, path in paths[task].items()}
            signatures = {kind: model_.signatures["serving_default"] for kind, model_ in loaded.items()}
            mlp_ms = time_side_by_side(
                {kind: mlp_function(net) for kind, net in networks.items()}, args.rounds, args.calls
            )
            request_ms = time_side_by_side(
                {kind: (lambda s=signature: s(examples=request)) for kind, signature in signatures.items()},
                args.rounds,
                args.calls,
            )
            compacted = networks["compacted"]
            print(
                f"{task}: MLP weights kept {compacted.kept_weights:,} of {compacted.dense_weights:,} "
                f"({100 * compacted.kept_weights / compacted.dense_weights:.1f}%); "
                f"compacted widths {compacted.layer_widths} "
                f"(dense {networks['dense'].layer_widths}); paths "
                + ", ".join(
                    f"{p.path} (density {p.density:.2f}"
                    + (f", CPU dense {p.dense_us:.0f} us vs sparse {p.sparse_us:.0f} us)" if p.dense_us else ")")
                    for p in compacted.layer_paths
                )
            )
            print(
                f"  {'':10} {'MLP ms':>8} {'x dense':>8} {'request ms':>11} "
                f"{'x dense':>8} {'disk MB':>8} {'vars MB':>8}"
            )
            for kind in KINDS:
                print(
                    f"  {kind:10} {mlp_ms[kind]:8.3f} {mlp_ms['dense'] / mlp_ms[kind]:8.2f} {request_ms[kind]:11.2f} "
                    f"{request_ms['dense'] / request_ms[kind]:8.2f} {folder_bytes(paths[task][kind]) / 1e6:8.2f} "
                    f"{variable_bytes(networks[kind]) / 1e6:8.2f}"
                )
        pair = {kind: [paths[task][kind] for task in masks.TASKS] for kind in ("dense", "compacted")}
        disk = {kind: sum(folder_bytes(p) for p in pair[kind]) for kind in pair}
        resident = {kind: resident_bytes(pair[kind], request_file) for kind in pair}
        print(
            f"CTR + CVR together: on disk {disk['compacted'] / 1e6:.2f} MB vs two dense single-task-shaped models "
            f"{disk['dense'] / 1e6:.2f} MB ({disk['compacted'] / disk['dense']:.3f}); "
            "resident memory after loading and one "
            f"request {resident['compacted'] / 1e6:.1f} MB vs {resident['dense'] / 1e6:.1f} MB "
            f"({resident['compacted'] / resident['dense']:.3f})"
        )
        print("  (the embedding tables, which every model carries whole, dominate both)")
        json.dump({"granularity": granularity, "paths": paths}, open(os.path.join(out, f"{granularity}.json"), "w"))


if __name__ == "__main__":
    main()
