"""gRPC end to end on loopback: ranking requests of 200 candidates against `lt4rec serve`.

Trains S-Weight on generated logs (`exported_models.trained_model`), exports the CTR, CVR
and joint rank models as the pipeline pushes them (`<base>/{ctr,cvr,rank}/1`), starts
`lt4rec serve` on them in its own process, and sends ranking requests from client threads
through `serving/client.py` (the tensorflow-serving-api stubs). A request is one user's:
200 candidates of the test day with the first one's context features (user, source video)
on all of them. Four ways of asking, measured side by side at each concurrency:
- two models, whole examples (before the joint model): one Predict to `ctr` and one to
  `cvr`, concurrently, each with 200 whole serialized raw tf.Examples (`serving_default`);
- two models, context once: the same two Predicts to `serving_context`;
- rank model, whole examples: one Predict to `rank` (`ctr`, `cvr`, `rankscore`);
- rank model, context once: one Predict to `rank`'s `serving_context`.
Each runs for --seconds per concurrency and prints p50/p99 latency, requests/s and errors;
the ratios are against the first. On a 2-core machine the client threads share the cores
with the server, so these are figures of the whole loop, not of the server alone. Finally
it stops the server with SIGTERM and prints its exit code.

    .venv/bin/python benchmarks/grpc_latency.py --seconds 20
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time

import grpc
import tensorflow as tf

from exported_models import raw_requests, trained_model, trained_transform
from lt4rec import features
from lt4rec.models import export, masks
from lt4rec.serving import client
from lt4rec.testing.trainer_cluster import free_ports
from ranking_load import MODES, load_test


def wait_until_serving(
    target: str,
    models: tuple[str, ...] = ("ctr", "cvr", export.RANK_MODEL),
    deadline_s: float = 120.0,
    poll_s: float = 0.5,
) -> None:
    """Returns once the server at `target` answers for every one of `models` (asked every `poll_s`)."""
    start = time.perf_counter()
    with client.RankingClient(target, timeout=2.0) as probe:
        while True:
            try:
                for model in models:
                    probe.metadata(model)
                return
            except grpc.RpcError:
                if time.perf_counter() - start > deadline_s:
                    raise
                time.sleep(poll_s)


def ranking_requests(
    records: list[list[bytes]],
) -> list[tuple[tf.train.Example, list[tf.train.Example], list[tf.train.Example]]]:
    """(context, candidates without it, whole candidates) per request: the first row's context on all rows."""
    requests = []
    for request in records:
        examples = [tf.train.Example.FromString(record) for record in request]
        for example in examples[1:]:
            for name in features.CONTEXT_FEATURE_NAMES:
                example.features.feature[name].CopyFrom(examples[0].features.feature[name])
        context, stripped = client.split_context(examples)
        requests.append((context, stripped, examples))
    return requests


def pushed_models(rows: int, min_sparsity: float, seed: int, base: str) -> dict[str, export.TaskNetwork]:
    """S-Weight trained on generated logs and pushed as the pipeline pushes it: version 1 of the
    CTR, CVR and rank models under `base`. Returns the task models' exports."""
    model, _ = trained_model(rows, masks.CONNECTION, min_sparsity, seed)
    transform_output = trained_transform(rows, seed)
    exported = {
        task: export.export_task_model(model, task, transform_output, os.path.join(base, task, "1"))
        for task in masks.TASKS
    }
    export.export_rank_model(model, transform_output, os.path.join(base, export.RANK_MODEL, "1"))
    return exported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="Generated impressions (2 of 4 days train).")
    parser.add_argument("--min-sparsity", type=float, default=0.8)
    parser.add_argument("--seconds", type=float, default=30.0, help="Per concurrency level.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    base = tempfile.mkdtemp(prefix="lt4rec-grpc-")
    for task, exported in pushed_models(args.rows, args.min_sparsity, args.seed, base).items():
        print(
            f"{task}: compacted widths {exported.layer_widths}, "
            f"{100 * exported.kept_weights / exported.dense_weights:.1f}% of MLP weights, "
            f"paths {[p.path for p in exported.layer_paths]}"
        )
    requests = ranking_requests(raw_requests(args.rows, args.seed))

    (port,) = free_ports(1)
    target = f"localhost:{port}"
    lt4rec = os.path.join(os.path.dirname(sys.executable), "lt4rec")
    server_log = open(os.path.join(base, "serve.log"), "w")
    server = subprocess.Popen(
        [lt4rec, "serve", "--model-base-path", base, "--port", str(port)], stdout=server_log, stderr=server_log
    )
    try:
        wait_until_serving(target)
        print(
            f"lt4rec serve on {target}; {len(requests)} distinct requests of {len(requests[0][2])} candidates; "
            f"{args.seconds:.0f} s per way and concurrency"
        )
        for mode in MODES:
            load_test(target, requests, mode, 1, 2.0)  # warm up every model, signature and the channel
        print(
            f"{'way of asking':<28} {'concurrency':>11} {'requests':>9} {'req/s':>7} {'x first':>7} "
            f"{'p50 ms':>8} {'p99 ms':>8} "
            f"{'x first':>7} {'errors':>7}"
        )
        for concurrency in args.concurrency:
            results = {mode: load_test(target, requests, mode, concurrency, args.seconds) for mode in MODES}
            first = results[next(iter(MODES))]
            for mode, result in results.items():
                print(
                    f"{mode:<28} {concurrency:>11} {result['requests']:>9} {result['rps']:7.1f} "
                    f"{result['rps'] / first['rps']:7.2f} "
                    f"{result['p50']:8.1f} {result['p99']:8.1f} {first['p99'] / result['p99']:7.2f} "
                    f"{len(result['errors']):>7}"
                )
                for error in sorted(set(result["errors"]))[:5]:
                    print(f"    {error}")
    finally:
        server.send_signal(signal.SIGTERM)
        start = time.perf_counter()
        code = server.wait(timeout=60)
        print(
            f"server stopped by SIGTERM: exit code {code} after {time.perf_counter() - start:.1f} s "
            f"(its log: {server_log.name})"
        )


if __name__ == "__main__":
    main()
