"""Hot swaps under load: how long a request waits while `lt4rec serve` swaps in new versions.

Trains S-Weight and pushes the CTR, CVR and rank models once (grpc_latency.pushed_models), or
with --own-exports once per revision by its own code (deployments.export_with_own_code). Then,
for each server (a git revision's `lt4rec serve`, deployments.unpack; "." is this tree), on
a fresh copy of its exports, one client thread ranks (the rank model, the context once)
for --seconds while every --swap-seconds a new version of all three models appears (copied,
then renamed into place): the server loads them, swaps them in and frees the old ones. The
servers alternate --rounds times. Prints per server the p50/p99 latency of every request,
the slowest request of each swap's interval (from the new folders' appearance to the next
swap), and errors.

    .venv/bin/python benchmarks/swap_pause.py --revision 19d453e
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np

from deployments import export_with_own_code, unpack
from exported_models import raw_requests
from grpc_latency import pushed_models, ranking_requests, wait_until_serving
from lt4rec.models import export, masks
from lt4rec.serving import client
from lt4rec.testing.trainer_cluster import free_ports

MODELS = (*masks.TASKS, export.RANK_MODEL)
LT4REC = os.path.join(os.path.dirname(sys.executable), "lt4rec")  # imports the lt4rec that `env` puts first


def ranked_while_swapping(target: str, base: str, requests: list, seconds: float, swap_seconds: float) -> dict:
    """One client thread ranking for `seconds`; a new version of every model every `swap_seconds`."""
    finished: list[tuple[float, float]] = []  # (start, latency s) per request
    errors: list[str] = []
    stop = threading.Event()

    def rank() -> None:
        with client.RankingClient(target, timeout=30.0, rank_model=export.RANK_MODEL) as ranking:
            index = 0
            while not stop.is_set():
                context, stripped, _ = requests[index % len(requests)]
                start = time.perf_counter()
                try:
                    ranking.rank(stripped, context=context)
                    finished.append((start, time.perf_counter() - start))
                except grpc.RpcError as error:
                    errors.append(f"{error.code().name}: {error.details()}")
                index += 1

    thread = threading.Thread(target=rank)
    start = time.perf_counter()
    thread.start()
    swaps = []
    version = 1
    while time.perf_counter() - start + swap_seconds <= seconds:
        time.sleep(swap_seconds - (time.perf_counter() - start) % swap_seconds)
        version += 1
        for model in MODELS:  # as a pusher writes: copied aside, then renamed into place
            staging = os.path.join(base, model, f".staging-{version}")
            shutil.copytree(os.path.join(base, model, "1"), staging)
            os.rename(staging, os.path.join(base, model, str(version)))
        swaps.append(time.perf_counter())
    time.sleep(max(0.0, seconds - (time.perf_counter() - start)))
    stop.set()
    thread.join()
    bounds = [*swaps, float("inf")]
    slowest = [
        1000 * max((latency for begun, latency in finished if bounds[i] <= begun < bounds[i + 1]), default=0.0)
        for i in range(len(swaps))
    ]
    milliseconds = 1000 * np.asarray([latency for _, latency in finished])
    return {
        "requests": len(finished),
        "p50": float(np.percentile(milliseconds, 50)),
        "p99": float(np.percentile(milliseconds, 99)),
        "slowest": slowest,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revision", action="append", default=[], help="Earlier revisions' servers to compare.")
    parser.add_argument("--rows", type=int, default=50_000, help="Generated impressions (2 of 4 days train).")
    parser.add_argument("--seconds", type=float, default=60.0, help="Per server and round.")
    parser.add_argument("--swap-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--own-exports", action="store_true", help="Each server swaps in its own revision's exports, not this tree's."
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    work = tempfile.mkdtemp(prefix="lt4rec-swap-")
    servers = {revision: unpack(revision, os.path.join(work, revision)) for revision in [*args.revision, "."]}
    exports = {revision: os.path.join(work, "exports") for revision in servers}
    if args.own_exports:
        for revision, (source, env) in servers.items():
            exports[revision] = os.path.join(work, f"exports-{revision}")
            export_with_own_code(revision, source, env, args.rows, args.seed, exports[revision])
    else:
        pushed_models(args.rows, 0.8, args.seed, exports["."])
    requests = ranking_requests(raw_requests(args.rows, args.seed))
    print(
        f"{len(requests)} distinct requests of {len(requests[0][2])} candidates; one client thread; "
        f"{args.rounds} rounds of {args.seconds:.0f} s per server, a new version of {', '.join(MODELS)} "
        f"every {args.swap_seconds:.0f} s; exports {'of each revision' if args.own_exports else 'of this tree'}; "
        f"exports and logs under {work}",
        flush=True,
    )
    results: dict[str, list[dict]] = {revision: [] for revision in servers}
    for round_index in range(args.rounds):
        for revision, (_, env) in servers.items():
            base = os.path.join(work, f"base-{revision}-{round_index}")
            shutil.copytree(exports[revision], base)
            (port,) = free_ports(1)
            log = open(os.path.join(work, f"serve-{revision}-{round_index}.log"), "w")
            server = subprocess.Popen(
                [LT4REC, "serve", "--model-base-path", base, "--port", str(port), "--poll-seconds", "1"],
                stdout=log,
                stderr=log,
                env=env,
            )
            try:
                wait_until_serving(f"localhost:{port}")
                result = ranked_while_swapping(f"localhost:{port}", base, requests, args.seconds, args.swap_seconds)
            finally:
                server.terminate()
                server.wait(timeout=60)
            results[revision].append(result)
            print(
                f"round {round_index + 1}, {revision}: {result['requests']} requests, "
                f"p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms, slowest per swap "
                f"{' '.join(f'{ms:.0f}' for ms in result['slowest'])} ms, {len(result['errors'])} errors",
                flush=True,
            )
    print(
        f"\n{'server':<12} {'requests':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'slowest per swap, median ms':>28} {'errors':>7}"
    )
    for revision, rounds in results.items():
        slowest = [ms for result in rounds for ms in result["slowest"]]
        print(
            f"{'this tree' if revision == '.' else revision:<12} {sum(r['requests'] for r in rounds):>9} "
            f"{np.median([r['p50'] for r in rounds]):7.1f} {np.median([r['p99'] for r in rounds]):7.1f} "
            f"{np.median(slowest):28.0f} {sum(len(r['errors']) for r in rounds):>7}"
        )
        for error in sorted({e for r in rounds for e in r["errors"]})[:3]:
            print(f"    {error}")


if __name__ == "__main__":
    main()
