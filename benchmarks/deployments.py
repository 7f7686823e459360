"""Deployments side by side through gRPC: an earlier revision's as it was, and this tree's.

The serving targets compare against a deployment as it was (its exports, its server, its
client), not against this tree's own ways of asking. For each deployment, a git revision
(`git archive`; "." is this tree): trains S-Weight with that revision's own code
(its `exported_models.trained_model`, on its own cached data), exports the ctr, cvr and
rank models as that revision pushes them, starts its `lt4rec serve`, and ranks through its
own `serving/client.py` in a client process of its own (this tree's load loop,
`ranking_load.py`, over it). Then it alternates --rounds
rounds of --seconds for every deployment and way of asking at each concurrency, so that
the machine's drift falls on all alike. A request is one user's 200 candidates of the test
day (grpc_latency.ranking_requests). Prints per row the requests/s of every round, their
median and its ratio to the first row's, p50/p99 latency per round, errors, and the CPU
time per ranking of the server process and of the client process (they share the cores).

    .venv/bin/python benchmarks/deployments.py --revision 7500e20
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile

from exported_models import raw_requests
from grpc_latency import ranking_requests, wait_until_serving
from lt4rec.testing.trainer_cluster import free_ports

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(BENCHMARKS)
WAYS = ("two models, whole examples", "rank model, context once")  # of ranking_load.MODES

EXPORT = """
import os, sys
sys.path.insert(0, os.path.join(sys.argv[1], "benchmarks"))
from exported_models import trained_model, trained_transform
from lt4rec.models import export, masks
rows, seed, out = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model, _ = trained_model(rows, masks.CONNECTION, 0.8, seed)
transform_output = trained_transform(rows, seed)
for task in masks.TASKS:
    export.export_task_model(model, task, transform_output, os.path.join(out, task, "1"))
export.export_rank_model(model, transform_output, os.path.join(out, export.RANK_MODEL, "1"))
"""

# A client process of one deployment: this tree's load loop over the revision's own client,
# commanded by JSON lines on stdin.
CLIENT = """
import json, pickle, resource, sys
sys.path.insert(0, sys.argv[3])
import tensorflow as tf
from ranking_load import load_test
parse = tf.train.Example.FromString
requests = [
    (parse(c), [parse(s) for s in st], [parse(w) for w in wh]) for c, st, wh in pickle.load(open(sys.argv[2], "rb"))
]
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    command = json.loads(line)
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = load_test(sys.argv[1], requests, command["way"], command["concurrency"], command["seconds"])
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(json.dumps({**result, "errors": len(result["errors"]), "cpu_seconds": cpu_seconds}), flush=True)
"""


def unpack(revision: str, folder: str) -> tuple[str, dict[str, str]]:
    """(the revision's source folder, the environment that imports lt4rec from it). "." is this tree."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    if revision == ".":
        return REPOSITORY, env
    source = os.path.join(folder, "source")
    os.makedirs(source)
    archive = subprocess.run(["git", "-C", REPOSITORY, "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", source], input=archive, check=True)
    # The package as setup.py lays it out, ahead of the editable install of this tree on sys.path.
    package = os.path.join(folder, "package", "lt4rec")
    os.makedirs(package)
    for name in os.listdir(os.path.join(source, "lt4rec")):
        os.symlink(os.path.join(source, "lt4rec", name), os.path.join(package, name))
    for name in subpackages(os.path.join(source, "setup.py")):
        os.symlink(os.path.join(source, name), os.path.join(package, name))
    return source, {**env, "PYTHONPATH": os.path.dirname(package)}


def export_with_own_code(revision: str, source: str, env: dict[str, str], rows: int, seed: int, out: str) -> None:
    """The ctr, cvr and rank models under `out`, trained and pushed by the revision's own code (EXPORT)."""
    print(f"{revision}: training and exporting with its own code ...", flush=True)
    exported = subprocess.run(
        [sys.executable, "-c", EXPORT, source, str(rows), str(seed), out], env=env, capture_output=True, text=True
    )
    if exported.returncode:
        raise SystemExit(f"{revision}: training and export failed:\n{exported.stderr[-4000:]}")


def subpackages(setup_py: str) -> tuple[str, ...]:
    """The folders a revision's setup.py installs as subpackages of lt4rec (its `SUBPACKAGES`), read, not run."""
    for node in ast.parse(open(setup_py).read()).body:
        if isinstance(node, ast.Assign) and [getattr(target, "id", None) for target in node.targets] == ["SUBPACKAGES"]:
            return ast.literal_eval(node.value)
    raise SystemExit(f"{setup_py} names no SUBPACKAGES: cannot lay out its lt4rec package")


def server_cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revision", nargs="+", default=["7500e20"], help="Earlier revisions, each a deployment.")
    parser.add_argument("--rows", type=int, default=50_000, help="Generated impressions (2 of 4 days train).")
    parser.add_argument("--seconds", type=float, default=5.0, help="Per round, deployment, way and concurrency.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="lt4rec-deployments-")
    requests_file = os.path.join(work, "requests.pkl")
    with open(requests_file, "wb") as handle:
        pickle.dump(
            [
                (c.SerializeToString(), [s.SerializeToString() for s in st], [w.SerializeToString() for w in wh])
                for c, st, wh in ranking_requests(raw_requests(args.rows, args.seed))[:50]
            ],
            handle,
        )
    revisions = [*args.revision, "."]
    lt4rec = os.path.join(os.path.dirname(sys.executable), "lt4rec")
    processes, deployments = [], {}
    try:
        for revision, port in zip(revisions, free_ports(len(revisions))):
            folder = os.path.join(work, revision.replace("/", "_") if revision != "." else "this_tree")
            source, env = unpack(revision, folder)
            models = os.path.join(folder, "models")
            export_with_own_code(revision, source, env, args.rows, args.seed, models)
            log = open(os.path.join(folder, "serve.log"), "w")
            server = subprocess.Popen(
                [lt4rec, "serve", "--model-base-path", models, "--port", str(port)], env=env, stdout=log, stderr=log
            )
            processes.append(server)
            wait_until_serving(f"localhost:{port}")
            ranking = subprocess.Popen(
                [sys.executable, "-c", CLIENT, f"localhost:{port}", requests_file, BENCHMARKS],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            processes.append(ranking)
            json.loads(ranking.stdout.readline())
            deployments[revision] = (server, ranking)

        def run(revision: str, way: str, concurrency: int, seconds: float) -> dict:
            server, ranking = deployments[revision]
            before = server_cpu_seconds(server.pid)
            ranking.stdin.write(json.dumps({"way": way, "concurrency": concurrency, "seconds": seconds}) + "\n")
            ranking.stdin.flush()
            result = json.loads(ranking.stdout.readline())
            result["server_cpu_seconds"] = server_cpu_seconds(server.pid) - before
            return result

        rows = [(revision, way) for revision in revisions for way in WAYS]
        for row in rows:
            run(*row, 4, 2.0)  # warm up every model, signature and channel
        print(f"{len(rows)} rows, {args.rounds} rounds of {args.seconds:.0f} s each, alternated")
        for concurrency in args.concurrency:
            results = {row: [] for row in rows}
            for _ in range(args.rounds):
                for row in rows:
                    results[row].append(run(*row, concurrency, args.seconds))
            first = statistics.median(result["rps"] for result in results[rows[0]])
            for (revision, way), rounds in results.items():
                rps = statistics.median(result["rps"] for result in rounds)
                done = sum(result["requests"] for result in rounds)
                server_ms = 1000 * sum(result["server_cpu_seconds"] for result in rounds) / max(done, 1)
                client_ms = 1000 * sum(result["cpu_seconds"] for result in rounds) / max(done, 1)
                print(
                    f"concurrency {concurrency:2d}  {revision:<8} {way:<27} req/s "
                    + " ".join(f"{result['rps']:6.1f}" for result in rounds)
                    + f"  median {rps:6.1f} ({rps / first:.2f}x)  p50/p99 ms "
                    + " ".join(f"{result['p50']:.1f}/{result['p99']:.1f}" for result in rounds)
                    + f"  errors {sum(result['errors'] for result in rounds)}"
                    + f"  CPU ms per ranking: server {server_ms:.2f}, client {client_ms:.2f}",
                    flush=True,
                )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
