"""Throughput of `lt4rec generate`, writing training logs (GZIP TFRecord) and raw events (JSON, CSV).

Generates the same world once per output mode into a temporary folder and prints the
figures side by side. Wall seconds include building the world, as `lt4rec generate` pays
it; CPU seconds are those of the process and its workers, so that a busy machine shows as
CPU seconds well under wall seconds times the workers. Raw events are made by one process
at about 10,000 rows a second: `--modes tfrecord` skips them at a million rows.

    .venv/bin/python benchmarks/generator_throughput.py --rows 1000000 --modes tfrecord
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import tempfile
import time

from lt4rec.logs import generator, raw_events

MODES = {
    "tfrecord": {"raw": False},
    "raw json": {"raw": True, "raw_format": "json"},
    "raw csv": {"raw": True, "raw_format": "csv"},
}


def _written(manifest: dict) -> str:
    """What the manifest says was written: examples for training logs, event lines for raw events."""
    counts = manifest["counts"]
    if manifest["raw"]:
        return f"{sum(counts[f'{source}_lines'] for source in raw_events.SOURCES)} lines"
    return f"{counts['examples']} examples"


def _cpu_seconds() -> float:
    """User and system seconds of this process and of its children that have ended (the workers)."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="Impressions to generate.")
    parser.add_argument("--days", type=int, default=3, help="Day partitions to spread them over.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="Processes for training logs (default: one per CPU).")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=[mode.split()[-1] for mode in MODES],
        default=[mode.split()[-1] for mode in MODES],
        help="Output modes to time: tfrecord, json, csv (default: all).",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    results = {}
    with tempfile.TemporaryDirectory(prefix="generator-bench-") as workdir:
        for mode, options in MODES.items():
            if mode.split()[-1] not in args.modes:
                continue
            out_dir = os.path.join(workdir, mode.replace(" ", "_"))
            start, cpu = time.perf_counter(), _cpu_seconds()
            manifest = generator.generate(
                out_dir, rows=args.rows, days=args.days, seed=args.seed, workers=args.workers, **options
            )
            results[mode] = (time.perf_counter() - start, _cpu_seconds() - cpu, _written(manifest))

    header = f"{'mode':<10}{'rows':>9}{'written':>18}{'wall s':>9}{'cpu s':>8}{'rows/s':>10}"
    print(header)
    print("-" * len(header))
    for mode, (seconds, cpu, written) in results.items():
        print(f"{mode:<10}{args.rows:>9}{written:>18}{seconds:>9.1f}{cpu:>8.1f}{args.rows / seconds:>10.0f}")
    print(
        f"rows = impressions, over {args.days} days, seed {args.seed}, {args.workers or os.cpu_count()} workers "
        "for tfrecord; raw lines are impression, click and play events"
    )


if __name__ == "__main__":
    main()
