"""The load loop of the gRPC benchmarks: client threads ranking requests for a while.

Kept apart from grpc_latency.py, with nothing but the client beneath it, so that
deployments.py can run it in a client process over an earlier revision's `serving/client.py`.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np

from lt4rec.models import export
from lt4rec.serving import client

MODES = {  # name: (rank model, context once)
    "two models, whole examples": (None, False),
    "two models, context once": (None, True),
    "rank model, whole examples": (export.RANK_MODEL, False),
    "rank model, context once": (export.RANK_MODEL, True),
}


def load_test(target: str, requests: list, mode: str, concurrency: int, seconds: float) -> dict:
    rank_model, context_once = MODES[mode]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(offset: int) -> None:
        with client.RankingClient(target, timeout=30.0, rank_model=rank_model) as ranking:
            index = offset
            while time.perf_counter() < stop_at:
                context, stripped, whole = requests[index % len(requests)]
                start = time.perf_counter()
                try:
                    if context_once:
                        ranking.rank(stripped, context=context)
                    else:
                        ranking.rank(whole, send_context_once=False)
                    elapsed = time.perf_counter() - start
                    with lock:
                        latencies.append(elapsed)
                except grpc.RpcError as error:
                    with lock:
                        errors.append(f"{error.code().name}: {error.details()}")
                index += concurrency
            if rank_model is not None and ranking.rank_model is None:
                with lock:
                    errors.append("the server has no rank model")

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
