"""Throughput of `lt4rec generate`, writing training logs (GZIP TFRecord) and raw events (JSON, CSV).

Generates the same world once per output mode into a temporary folder and prints the
figures side by side. Wall seconds include building the world; TensorFlow, which TFRecord
mode imports on first use, is imported before any timing so that its import (a few
seconds, paid once per process) does not count against that mode.

    .venv/bin/python benchmarks/generator_throughput.py --rows 50000
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="Impressions to generate.")
    parser.add_argument("--days", type=int, default=3, help="Day partitions to spread them over.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    start = time.perf_counter()
    importlib.import_module("tensorflow")
    print(f"imported TensorFlow in {time.perf_counter() - start:.1f} s (not counted)")

    results = {}
    with tempfile.TemporaryDirectory(prefix="generator-bench-") as workdir:
        for mode, options in MODES.items():
            out_dir = os.path.join(workdir, mode.replace(" ", "_"))
            start = time.perf_counter()
            manifest = generator.generate(out_dir, rows=args.rows, days=args.days, seed=args.seed, **options)
            results[mode] = (time.perf_counter() - start, _written(manifest))

    header = f"{'mode':<10}{'rows':>8}{'written':>18}{'wall s':>9}{'rows/s':>10}"
    print(header)
    print("-" * len(header))
    for mode, (seconds, written) in results.items():
        print(f"{mode:<10}{args.rows:>8}{written:>18}{seconds:>9.1f}{args.rows / seconds:>10.0f}")
    print(f"rows = impressions, over {args.days} days, seed {args.seed}; raw lines are impression, click and play events")


if __name__ == "__main__":
    main()
