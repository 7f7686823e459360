"""Algorithm 1 on the paper's data, extrapolated from what the benchmarks measured here.

Measured on this machine (2 cores) and read from the benchmarks' JSON:
  --full-search       full_search.py: Algorithm 1 end to end in one process (seconds per
                      phase, examples per pass, examples/s of the shared training, peak RSS)
  --embedding-memory  embedding_memory.py: bytes and step time per id-table row, per optimizer
Counted from the network itself: the dense weights a step reduces or pulls, the largest
one (a parameter server holds it whole), the id positions of an example.

Assumed (flags; printed with the table): the paper's data (docs/LOG_SCHEMA.md: 297M impressions
over 9 days, 10M users, 11M videos; 8 days trained as in benchmarks/comparison.py) and id
tables, the same passes per phase as at the measured size (early stopping may end sooner
on more data), workers like this machine, each with a batch of --worker-batch (the global
batch grows with the workers), a network of --bandwidth-gbit per machine, communication
not overlapped with compute, and the parameter servers evenly loaded but for the largest
dense weight, which one server holds whole.

    .venv/bin/python benchmarks/paper_scale.py
"""

from __future__ import annotations

import argparse
import json
import math

GB = 1 << 30
SEARCH_PHASES = ("warmup", "ctr search", "cvr search")
TRAINING_PHASES = ("shared training",)


def network_traffic() -> dict:
    """Dense weight bytes, the largest dense weight, and id positions per example, counted from the network."""
    import numpy as np
    import tensorflow as tf

    from lt4rec import features
    from lt4rec.models import network
    from lt4rec.models.config import NetworkConfig

    config = features.scaled_config(0.01)
    model = network.RankingNetwork(config, NetworkConfig())
    model.build_for({spec.name: tf.ones((2, spec.max_values), tf.int64) for spec in features.FEATURES})
    tables = {id(v) for v in model.embeddings.variables}
    dense = [v for v in model.trainable_variables if id(v) not in tables]
    sizes = [int(np.prod(v.shape)) * v.dtype.size for v in dense]
    return {
        "dense_bytes": sum(sizes),
        "largest_dense_bytes": max(sizes),
        "dense_variables": len(sizes),
        "id_positions": sum(spec.max_values for spec in features.FEATURES),
        "embedding_dim": NetworkConfig().embedding_dim,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-search", default="benchmarks/results/full_search_5m.json")
    parser.add_argument("--embedding-memory", default="benchmarks/results/embedding_memory.json")
    parser.add_argument("--impressions", type=float, default=297e6)
    parser.add_argument("--days", type=int, default=9)
    parser.add_argument("--train-days", type=int, default=8)
    parser.add_argument("--table-rows", nargs="+",
                        default=["user=10e6", "video=11e6", "content_provider=10e6", "tag=10e6"],
                        help="Id table rows at the paper's scale, table=rows.")  # fmt: skip
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workers-per-ps", type=int, default=4, help="Parameter servers: max(2, workers / this).")
    parser.add_argument("--worker-batch", type=int, default=512)
    parser.add_argument("--bandwidth-gbit", type=float, default=10.0)
    args = parser.parse_args()

    with open(args.full_search) as f:
        run = json.load(f)
    with open(args.embedding_memory) as f:
        per_row = json.load(f)[run["train"]["optimizer"]]["per_row"]
    traffic = network_traffic()
    table_rows = sum(float(item.split("=")[1]) for item in args.table_rows)
    bandwidth = args.bandwidth_gbit * 1e9 / 8  # bytes/s

    # One worker: every phase scales with the rows of a pass; a step costs what it cost
    # here plus, per step, what the optimizer's cost per table row adds at the paper's tables.
    validation = run["train"]["validation_fraction"]
    run_pass = run["examples_per_pass"]["ctr"]
    paper_pass = args.impressions * args.train_days / args.days * (1 - validation)
    scale = paper_pass / run_pass
    example_seconds = 1 / max(run["shared_training_examples_per_second"])  # compute per example, measured
    table_step = max(per_row["step_seconds"], 0.0) * table_rows  # per step, at the paper's tables
    step_compute = args.worker_batch * example_seconds + table_step
    slowdown = step_compute / (args.worker_batch * example_seconds)
    one_worker = {
        "search": sum(run["seconds"][p] for p in SEARCH_PHASES) * scale * slowdown,
        "training": sum(run["seconds"][p] for p in TRAINING_PHASES) * scale * slowdown,
        "count": run["seconds"]["data ready"] * scale,  # the counting pass, read by every worker's share
    }
    eval_seconds = run["seconds"]["eval"] * (args.impressions / args.days) / run["eval"]["examples"]

    # Bytes a step moves: a worker's id rows (one 32-float row per id position, padding
    # included, as the gather's gradient carries them) and the dense weights.
    sparse = args.worker_batch * traffic["id_positions"] * traffic["embedding_dim"] * 4
    dense, largest = traffic["dense_bytes"], traffic["largest_dense_bytes"]
    base_gb = run["peak_rss_gb"]  # the measured process: streamed input, small tables (an upper bound)
    tables_peak_gb = table_rows * per_row["peak_rss_bytes"] / GB
    tables_held_gb = table_rows * per_row["variable_bytes"] / GB

    print(f"Measured ({args.full_search}, {args.embedding_memory}; 2 cores):")
    print(f"  Algorithm 1 on {run['rows']:,} impressions, {run['input']}, {run['train']['optimizer']}, "
          f"batch {run['train']['batch_size']}: "
          + ", ".join(f"{p} {s:.0f} s" for p, s in run["seconds"].items())
          + f"; peak RSS {run['peak_rss_gb']:.2f} GB")  # fmt: skip
    print(f"  {run_pass:,} examples per pass; shared training {1 / example_seconds:,.0f} examples/s")
    print(f"  per id-table row ({run['train']['optimizer']}): {per_row['variable_bytes']:.0f} B of variables, "
          f"{per_row['peak_rss_bytes']:.0f} B of peak RSS, "
          f"{per_row['step_seconds'] * 1e9:.2f} ns per step")  # fmt: skip
    print(f"  network: {dense / 1e6:.2f} MB of dense weights ({traffic['dense_variables']} variables, largest "
          f"{largest / 1e6:.2f} MB), {traffic['id_positions']} id positions per example")  # fmt: skip
    print("Assumed:")
    print(f"  {args.impressions / 1e6:.0f}M impressions, {args.train_days} of {args.days} days trained "
          f"({paper_pass / 1e6:.0f}M per pass after the {validation:.0%} validation share); id tables "
          f"{', '.join(args.table_rows)} ({table_rows / 1e6:.0f}M rows)")  # fmt: skip
    print(f"  the passes per phase measured at {run['rows']:,} impressions; workers of 2 cores like this one, batch "
          f"{args.worker_batch} each; {args.bandwidth_gbit:g} Gbit/s per machine, "
          "no overlap of compute and transfer")  # fmt: skip
    print(f"  one step's transfer: {sparse / 1e6:.1f} MB of id rows per worker, {dense / 1e6:.2f} MB of dense weights")
    print()
    print(f"{'strategy':<22} {'workers':>7} {'PS':>4} {'GB/worker':>10} {'GB/PS':>7} {'step ms':>8} "
          f"{'search h':>9} {'training h':>10} {'total h':>8}")  # fmt: skip
    for strategy in ("mirrored", "parameter servers"):
        for workers in args.workers:
            if strategy == "mirrored":
                servers = 0
                # Ring all-reduce of the dense gradients; all-gather of every worker's row gradients.
                transfer = (2 * (workers - 1) / workers * dense + (workers - 1) * sparse) / bandwidth
                step = step_compute + transfer
                worker_gb, ps_gb = base_gb + tables_peak_gb, 0.0
            else:
                servers = max(2, math.ceil(workers / args.workers_per_ps))
                # Each worker pulls its rows and the dense weights and pushes their gradients;
                # the busiest server does that for every worker's step, for its share.
                own = 2 * (dense + sparse) / bandwidth
                busiest = workers * 2 * (largest + (dense - largest + sparse) / servers) / bandwidth
                step = max(step_compute + own, busiest)
                worker_gb = base_gb
                ps_gb = (tables_held_gb + 3 * dense / GB) / servers  # weights and Adam's two moments
            speed = workers * step_compute / step  # workers' worth of one worker's examples/s
            search, training = one_worker["search"] / speed, one_worker["training"] / speed
            total = search + training + one_worker["count"] / workers + eval_seconds
            ps_text = f"{ps_gb:.1f}" if servers else "-"
            print(f"{strategy:<22} {workers:>7} {servers or '-':>4} {worker_gb:>10.1f} {ps_text:>7} "
                  f"{step * 1000:>8.0f} {search / 3600:>9.1f} {training / 3600:>10.1f} "
                  f"{total / 3600:>8.1f}")  # fmt: skip
    print("total: search, training, the counting pass (split over the workers) and the eval of one day on one worker.")


if __name__ == "__main__":
    main()
