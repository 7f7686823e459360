"""gRPC end to end on loopback: ranking requests of 200 candidates against `lt4rec serve`.

Trains S-Weight on generated logs (`exported_models.trained_model`), exports the CTR and
CVR models as the pipeline pushes them (`<base>/ctr/1`, `<base>/cvr/1`), starts
`lt4rec serve` on them in its own process, and sends ranking requests from client threads
through `serving/client.py` (the tensorflow-serving-api stubs): each request is one
Predict to `ctr` and one to `cvr`, concurrently, of 200 serialized raw tf.Examples. At
each concurrency it runs for --seconds and prints p50/p99 latency, requests/s and errors.
On a 2-core machine the client threads share the cores with the server, so these are
figures of the whole loop, not of the server alone. Finally it stops the server with
SIGTERM and prints its exit code.

    .venv/bin/python benchmarks/grpc_latency.py --seconds 30
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np
import tensorflow as tf

from comparison import TABLE_SCALE
from exported_models import raw_requests, trained_model
from lt4rec.models import export, masks
from lt4rec.pipeline.trainer_cluster import free_ports
from lt4rec.serving import client
from transformed_logs import data_folder


def wait_until_serving(target: str, deadline_s: float = 120.0) -> None:
    start = time.perf_counter()
    with client.RankingClient(target, timeout=2.0) as probe:
        while True:
            try:
                probe.metadata("ctr")
                probe.metadata("cvr")
                return
            except grpc.RpcError:
                if time.perf_counter() - start > deadline_s:
                    raise
                time.sleep(0.5)


def load_test(target: str, requests: list[list[tf.train.Example]], concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(offset: int) -> None:
        with client.RankingClient(target, timeout=30.0) as ranking:
            index = offset
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                try:
                    ranking.rank(requests[index % len(requests)])
                    elapsed = time.perf_counter() - start
                    with lock:
                        latencies.append(elapsed)
                except grpc.RpcError as error:
                    with lock:
                        errors.append(f"{error.code().name}: {error.details()}")
                index += concurrency

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    milliseconds = 1000 * np.asarray(latencies)
    return {
        "requests": len(latencies),
        "p50": float(np.percentile(milliseconds, 50)) if latencies else float("nan"),
        "p99": float(np.percentile(milliseconds, 99)) if latencies else float("nan"),
        "rps": len(latencies) / wall,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="Generated impressions (2 of 4 days train).")
    parser.add_argument("--min-sparsity", type=float, default=0.8)
    parser.add_argument("--seconds", type=float, default=30.0, help="Per concurrency level.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    import tensorflow_transform as tft

    model, _ = trained_model(args.rows, masks.CONNECTION, args.min_sparsity, args.seed)
    transform_output = tft.TFTransformOutput(os.path.join(data_folder(args.rows, seed=args.seed, table_scale=TABLE_SCALE), "transform"))
    base = tempfile.mkdtemp(prefix="lt4rec-grpc-")
    for task in masks.TASKS:
        exported = export.export_task_model(model, task, transform_output, os.path.join(base, task, "1"))
        print(f"{task}: compacted widths {exported.layer_widths}, "
              f"{100 * exported.kept_weights / exported.dense_weights:.1f}% of MLP weights, paths {[p.path for p in exported.layer_paths]}")
    requests = [[tf.train.Example.FromString(record) for record in request] for request in raw_requests(args.rows, args.seed)]

    (port,) = free_ports(1)
    target = f"localhost:{port}"
    lt4rec = os.path.join(os.path.dirname(sys.executable), "lt4rec")
    server_log = open(os.path.join(base, "serve.log"), "w")
    server = subprocess.Popen([lt4rec, "serve", "--model-base-path", base, "--port", str(port)], stdout=server_log, stderr=server_log)
    try:
        wait_until_serving(target)
        print(f"lt4rec serve on {target}; {len(requests)} distinct requests of {len(requests[0])} candidates; "
              f"{args.seconds:.0f} s per concurrency level")
        load_test(target, requests, 1, 3.0)  # warm up both models and the channel
        print(f"{'concurrency':>11} {'requests':>9} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for concurrency in args.concurrency:
            result = load_test(target, requests, concurrency, args.seconds)
            print(f"{concurrency:>11} {result['requests']:>9} {result['rps']:7.1f} {result['p50']:8.1f} {result['p99']:8.1f} "
                  f"{len(result['errors']):>7}")
            for error in sorted(set(result["errors"]))[:5]:
                print(f"    {error}")
    finally:
        server.send_signal(signal.SIGTERM)
        start = time.perf_counter()
        code = server.wait(timeout=60)
        print(f"server stopped by SIGTERM: exit code {code} after {time.perf_counter() - start:.1f} s (its log: {server_log.name})")


if __name__ == "__main__":
    main()
