"""Soak: `lt4rec serve` under mixed good and bad requests, hot swaps, and a SIGTERM at the end.

Exports the CTR and CVR models of a small trained network (`exported_models.trained_model`)
as version 1, starts `lt4rec serve` in its own process, and sends from --concurrency client
threads for --seconds: mostly ranking requests of 200 candidates (a Predict to ctr and one to
cvr), and, a --bad-share of the time, one bad request of a random kind (unknown model or
version, wrong dtype, negative dimension, corrupt example, a feature over
--max-values-per-feature, a message over --max-request-bytes, unknown signature), each of
which must get its TF Serving status code. Every --swap-seconds a new version of both models
appears (copied, then renamed into place) and the oldest is removed. At the end SIGTERM
arrives while the clients are still sending. Prints requests per kind, good requests that
failed, bad ones answered with an unexpected code, the server's resident memory after
warm-up, at the end and at its peak, the drain and the exit code.

    .venv/bin/python benchmarks/serving_soak.py --seconds 180
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from exported_models import raw_requests, trained_model, trained_transform
from grpc_latency import wait_until_serving
from lt4rec.models import export, masks
from lt4rec.testing.trainer_cluster import free_ports

MAX_REQUEST_BYTES = 8 << 20
MAX_VALUES = 1000


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith(field)).split()[1]) / 1024


def predict(
    model: str, examples: list[bytes], version: int | None = None, signature: str = ""
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model, signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(examples, dtype=tf.string))
    return request


def bad_requests(good: list[bytes]) -> dict[str, tuple[predict_pb2.PredictRequest, set[str]]]:
    """Each kind of bad request, and the status codes TF Serving answers it with."""
    wide = tf.train.Example.FromString(good[0])
    wide.features.feature["FEA_IKEYWORD"].bytes_list.value.extend([b"k"] * MAX_VALUES)
    negative = predict("ctr", good[:4])
    negative.inputs["examples"].tensor_shape.dim[0].size = -7
    wrong_dtype = predict("ctr", good[:4])
    wrong_dtype.inputs["examples"].CopyFrom(tf.make_tensor_proto([0.5, 0.7]))
    return {
        "unknown model": (predict("nope", good), {"NOT_FOUND"}),
        "unknown version": (predict("ctr", good, version=99), {"NOT_FOUND"}),
        "unknown signature": (predict("cvr", good, signature="nope"), {"FAILED_PRECONDITION"}),
        "wrong dtype": (wrong_dtype, {"INVALID_ARGUMENT"}),
        "negative dimension": (negative, {"INVALID_ARGUMENT"}),
        "corrupt example": (predict("ctr", good[:10] + [b"\xff\xfe not an example"]), {"INVALID_ARGUMENT"}),
        "too many values": (predict("cvr", good[:10] + [wide.SerializeToString()] * 10), {"INVALID_ARGUMENT"}),
        "too many bytes": (predict("ctr", [good[0] * (MAX_REQUEST_BYTES // len(good[0]) + 1)]), {"RESOURCE_EXHAUSTED"}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bad-share", type=float, default=0.3)
    parser.add_argument("--swap-seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model, _ = trained_model(args.rows, masks.CONNECTION, 0.5, args.seed)
    transform_output = trained_transform(args.rows, args.seed)
    base = tempfile.mkdtemp(prefix="lt4rec-soak-")
    for task in masks.TASKS:
        export.export_task_model(model, task, transform_output, os.path.join(base, task, "1"))
    goods = raw_requests(args.rows, args.seed)
    bad = bad_requests(goods[0])

    (port,) = free_ports(1)
    target = f"localhost:{port}"
    log = open(os.path.join(base, "serve.log"), "w")
    command = [os.path.join(os.path.dirname(sys.executable), "lt4rec"), "serve",
               "--model-base-path", base, "--port", str(port), "--poll-seconds", "1",
               "--max-request-bytes", str(MAX_REQUEST_BYTES), "--max-values-per-feature", str(MAX_VALUES)]  # fmt: skip
    server = subprocess.Popen(command, stdout=log, stderr=log)
    wait_until_serving(target, masks.TASKS)
    outcomes: collections.Counter = collections.Counter()  # (kind, code)
    unexpected: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    signalled_at: list[float] = []

    def client(index: int) -> None:
        rng = random.Random(args.seed * 1000 + index)
        with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not stop.is_set():
                sent = time.monotonic()
                if rng.random() < args.bad_share:
                    kind = rng.choice(sorted(bad))
                    calls, expected = [bad[kind][0]], bad[kind][1]
                else:
                    kind, expected = "ranking (ctr + cvr)", {"OK"}
                    candidates = goods[rng.randrange(len(goods))]
                    calls = [predict(task, candidates) for task in masks.TASKS]
                for request in calls:
                    try:
                        stub.Predict(request, timeout=30)
                        code = "OK"
                    except grpc.RpcError as error:
                        code = error.code().name
                    counted = not signalled_at or sent < signalled_at[0]  # sent before the SIGTERM
                    with lock:
                        if counted:
                            outcomes[kind, code] += 1
                            if code not in expected:
                                unexpected.append(f"{kind}: {code}")
                    if signalled_at and code == "UNAVAILABLE":  # the server has stopped listening
                        return

    def swap() -> int:
        versions = sorted(int(v) for v in os.listdir(os.path.join(base, "ctr")))
        new = versions[-1] + 1
        for task in masks.TASKS:
            staging = os.path.join(base, f".staging-{task}")
            shutil.copytree(os.path.join(base, task, str(versions[-1])), staging)
            os.rename(staging, os.path.join(base, task, str(new)))
            if len(versions) > 1:
                shutil.rmtree(os.path.join(base, task, str(versions[0])))
        return new

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.concurrency)]
    time.sleep(2.0)
    rss_start = rss_mb(server.pid)
    start = time.monotonic()
    for thread in threads:
        thread.start()
    swaps, samples = 0, []  # (seconds, resident MB) every 10 s
    next_swap = start + args.swap_seconds
    while time.monotonic() - start < args.seconds:
        time.sleep(10.0)
        samples.append((time.monotonic() - start, rss_mb(server.pid)))
        if time.monotonic() >= next_swap and time.monotonic() - start < args.seconds - 5:
            swap()
            swaps += 1
            next_swap += args.swap_seconds
    rss_end, rss_peak = rss_mb(server.pid), rss_mb(server.pid, "VmHWM")
    signalled_at.append(time.monotonic())
    server.send_signal(signal.SIGTERM)
    code = server.wait(timeout=60)
    drain = time.monotonic() - signalled_at[0]
    stop.set()
    for thread in threads:
        thread.join()

    print(f"lt4rec serve, {args.seconds:.0f} s at concurrency {args.concurrency}, {args.bad_share:.0%} bad requests, "
          f"{swaps} hot swaps of both models, SIGTERM at the end under load")  # fmt: skip
    print(f"{'kind':<22} {'code':<20} {'requests':>9}")
    for (kind, answer), count in sorted(outcomes.items()):
        print(f"{kind:<22} {answer:<20} {count:>9}")
    good = sum(count for (kind, _), count in outcomes.items() if kind.startswith("ranking"))
    failed = sum(count for (kind, answer), count in outcomes.items() if kind.startswith("ranking") and answer != "OK")
    print(
        f"sent before the signal: {sum(outcomes.values())} requests, {good} good ({failed} failed), "
        f"{len(unexpected)} answered with an unexpected code {sorted(set(unexpected))[:5]}"
    )
    print(f"server resident memory: {rss_start:.0f} MB after warm-up, {rss_end:.0f} MB at the end, "
          f"peak {rss_peak:.0f} MB; "
          "every 10 s: " + " ".join(f"{mb:.0f}" for _, mb in samples))  # fmt: skip
    print(f"SIGTERM: exit code {code} after {drain:.2f} s (server log: {log.name})")


if __name__ == "__main__":
    main()
