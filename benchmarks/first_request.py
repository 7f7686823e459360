"""The first requests after `lt4rec serve` starts: what each revision's warm-up leaves to them.

A server answers its first requests slower than the rest if loading a version did not build
everything a real batch needs (oneDNN's kernels for the matmul shapes, which TensorFlow then
keeps for the process). For each git revision (deployments.unpack; "." is this tree), its own
code trains S-Weight and pushes the ctr, cvr and rank models (deployments.export_with_own_code).
Then, in alternated rounds, it starts that revision's `lt4rec serve` on them, waits until every
model answers (its metadata, asked every 50 ms), and sends --requests ranking requests one at a time, each twice:
the rank model with the context once (`serving_context`), then the CTR model on the whole
examples (`serving_default`), timing every gRPC round trip on a channel connected before the
first (the same requests, this tree's stub). Prints per revision the median seconds from the
server's start to answering, and the median ms of each model's first, second and third
request and of the rest.

    .venv/bin/python benchmarks/first_request.py --revision 8c32581
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import grpc
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from deployments import export_with_own_code, unpack
from exported_models import raw_requests
from grpc_latency import ranking_requests, wait_until_serving
from lt4rec.models import export
from lt4rec.serving import client
from lt4rec.testing.trainer_cluster import free_ports

SHOWN = ("1st", "2nd", "3rd", "rest")


def predict_requests(rows: int, seed: int, count: int) -> dict[str, list[predict_pb2.PredictRequest]]:
    """`count` ranking requests of the test day, as the rank model's and the CTR model's Predicts."""
    asked = {"rank, context once": [], "ctr, whole examples": []}
    weights = client.RankWeights(ctr=1.0, cvr=1.0, length=0.5)
    for context, stripped, whole in ranking_requests(raw_requests(rows, seed))[:count]:
        candidates = [example.SerializeToString() for example in stripped]
        asked["rank, context once"].append(
            client.RankingClient.predict_request(
                export.RANK_MODEL, candidates, context=context.SerializeToString(), weights=weights
            )
        )
        asked["ctr, whole examples"].append(
            client.RankingClient.predict_request("ctr", [example.SerializeToString() for example in whole])
        )
    return asked


def started_and_asked(
    lt4rec: str, models: str, env: dict[str, str], port: int, asked: dict[str, list]
) -> tuple[float, dict[str, list[float]]]:
    """Starts a server, waits until it answers; (its seconds to answer, ms of each request per way)."""
    start = time.perf_counter()
    server = subprocess.Popen(
        [lt4rec, "serve", "--model-base-path", models, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_serving(f"localhost:{port}", poll_s=0.05)
        ready = time.perf_counter() - start
        times = {way: [] for way in asked}
        with grpc.insecure_channel(f"localhost:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)  # connected: the requests time the server
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for way, requests in asked.items():
                for request in requests:
                    sent = time.perf_counter()
                    stub.Predict(request, timeout=30)
                    times[way].append(1e3 * (time.perf_counter() - sent))
        return ready, times
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revision", nargs="+", default=["8c32581"], help="Earlier revisions, each a deployment.")
    parser.add_argument("--rows", type=int, default=50_000, help="Generated impressions (2 of 4 days train).")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=10, help="Ranking requests per model after each start.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="lt4rec-first-request-")
    revisions = [*args.revision, "."]
    deployments = {}
    for revision in revisions:
        folder = os.path.join(work, revision.replace("/", "_") if revision != "." else "this_tree")
        source, env = unpack(revision, folder)
        models = os.path.join(folder, "models")
        export_with_own_code(revision, source, env, args.rows, args.seed, models)
        deployments[revision] = (models, env)
    asked = predict_requests(args.rows, args.seed, args.requests)
    lt4rec = os.path.join(os.path.dirname(sys.executable), "lt4rec")
    (port,) = free_ports(1)
    ready = {revision: [] for revision in revisions}
    times = {(revision, way): [] for revision in revisions for way in asked}
    for _ in range(args.rounds):
        for revision, (models, env) in deployments.items():
            seconds, asked_times = started_and_asked(lt4rec, models, env, port, asked)
            ready[revision].append(seconds)
            for way, ms in asked_times.items():
                times[revision, way].append(ms)

    print(
        f"\n{args.rounds} alternated starts per revision, each revision's own server and exports; "
        f"{args.requests} ranking requests of 200 candidates per model after each start, one at a time; "
        "median ms of the nth request over the starts (rest: of every later request)"
    )
    print(f"{'revision':<10} {'start s':>7}  {'model, way of asking':<22}" + "".join(f"{name:>8}" for name in SHOWN))
    for (revision, way), rounds in times.items():
        nth = [statistics.median(round_[n] for round_ in rounds) for n in range(3)]
        rest = statistics.median(ms for round_ in rounds for ms in round_[3:])
        print(
            f"{revision:<10} {statistics.median(ready[revision]):7.2f}  {way:<22}"
            + "".join(f"{ms:8.1f}" for ms in (*nth, rest))
        )


if __name__ == "__main__":
    main()
