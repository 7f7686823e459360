"""Throughput of `lt4rec preprocess` on the DirectRunner, in memory and with two worker processes.

Generates raw JSON events with the generator's default faults into a temporary folder,
runs the Beam job on them once per running mode, and prints the figures side by side.
Wall seconds include the pipeline's start-up (worker processes, TensorFlow import), which
is what a user of the command waits for; on small inputs it dominates.

    .venv/bin/python benchmarks/preprocess_throughput.py --rows 50000
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

from lt4rec.logs import generator, preprocess, raw_events

RUNNING_MODES = {
    "in_memory": ["--direct_running_mode=in_memory"],
    "multi_processing x2": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
}


def _measure(raw_dir: str, out_dir: str, beam_args: list[str]) -> tuple[float, dict[str, int]]:
    start = time.perf_counter()
    counters = preprocess.run(raw_dir, out_dir, beam_args=beam_args)
    return time.perf_counter() - start, counters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="Impressions to generate.")
    parser.add_argument("--days", type=int, default=3, help="Day partitions to spread them over.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="preprocess-bench-") as workdir:
        raw_dir = os.path.join(workdir, "raw")
        start = time.perf_counter()
        manifest = generator.generate(
            raw_dir, rows=args.rows, days=args.days, seed=args.seed, raw=True, raw_format="json"
        )
        generate_seconds = time.perf_counter() - start
        lines = sum(manifest["counts"][f"{source}_lines"] for source in raw_events.SOURCES)
        print(
            f"generated {args.rows} impressions as {lines} raw JSON lines (default faults) in {generate_seconds:.1f} s"
        )

        results = {}
        for mode, beam_args in RUNNING_MODES.items():
            results[mode] = _measure(raw_dir, os.path.join(workdir, mode.replace(" ", "_")), beam_args)

    header = (
        f"{'running mode':<22}{'rows':>8}{'input lines':>13}{'examples':>10}"
        f"{'wall s':>9}{'lines/s':>10}{'impressions/s':>15}"
    )
    print(header)
    print("-" * len(header))
    for mode, (seconds, counters) in results.items():
        read = sum(counters[f"{preprocess.LINES_READ}/{source}"] for source in raw_events.SOURCES)
        impressions = counters[f"{preprocess.LINES_READ}/{raw_events.IMPRESSIONS}"]
        print(
            f"{mode:<22}{args.rows:>8}{read:>13}{counters[preprocess.EXAMPLES_WRITTEN]:>10}{seconds:>9.1f}"
            f"{read / seconds:>10.0f}{impressions / seconds:>15.0f}"
        )
    print("impressions/s counts impression lines read; examples = impressions kept after rejections")


if __name__ == "__main__":
    main()
