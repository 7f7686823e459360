"""Throughput of Transform in the real TFX pipeline (LocalDagRunner, Beam's DirectRunner in memory).

For each row count, generates that many impressions as training logs into a temporary
folder, runs the whole pipeline on them in a fresh pipeline root (so nothing is cached), and
reads every component's seconds from ML Metadata. Transform's seconds include the start-up
of its Beam pipeline, which dominates on small inputs; that is why two sizes are measured,
and the rows/s between them, where start-up cancels out, is printed as well.

    .venv/bin/python benchmarks/transform_throughput.py --rows 2000 20000
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

from lt4rec.logs import generator
from lt4rec.pipeline import configs, local_runner
from lt4rec.pipeline import pipeline as pipeline_lib

TRANSFORM = "Transform"


def _measure(workdir: str, rows: int, args: argparse.Namespace) -> tuple[float, dict[str, float]]:
    """Whole-run wall seconds, and seconds per component in the pipeline's order, of one run on `rows` impressions."""
    data_root = os.path.join(workdir, "logs")
    start = time.perf_counter()
    generator.generate(data_root, rows=rows, days=args.days, seed=args.seed)
    print(f"generated {rows} impressions over {args.days} days in {time.perf_counter() - start:.1f} s")
    # The settings `lt4rec pipeline run` builds from its default options, with --table-scale.
    settings = configs.PipelineSettings(
        data_root=data_root,
        pipeline_root=os.path.join(workdir, "pipeline"),
        serving_dir=os.path.join(workdir, "serving"),
        table_scale=args.table_scale,
    )
    start = time.perf_counter()
    local_runner.run(settings)
    wall = time.perf_counter() - start
    seconds = {step.component: step.seconds for step in local_runner.last_run_steps(settings)}
    return wall, {component.id: seconds[component.id] for component in pipeline_lib.create_components(settings)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000, 20_000], help="Impressions per run.")
    parser.add_argument("--days", type=int, default=3, help="Day partitions to spread them over.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--table-scale",
        type=float,
        default=0.05,
        help="As `lt4rec pipeline run --table-scale` (`make demo` uses 0.05).",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    results = {}
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="transform-bench-") as workdir:
            results[rows] = _measure(workdir, rows, args)

    components = list(next(iter(results.values()))[1])
    header = f"{'rows':>8}" + "".join(f"{name:>{len(name) + 2}}" for name in components)
    header += f"{'Transform rows/s':>18}{'wall s':>9}"
    print(header)
    print("-" * len(header))
    for rows, (wall, seconds) in results.items():
        line = f"{rows:>8}" + "".join(f"{seconds[name]:>{len(name) + 2}.1f}" for name in components)
        print(line + f"{rows / seconds[TRANSFORM]:>18.0f}{wall:>9.1f}")
    print("component columns: seconds from ML Metadata; wall s: the whole pipeline run, as `lt4rec pipeline run` waits")
    (small, (_, small_seconds)), (large, (_, large_seconds)) = min(results.items()), max(results.items())
    extra = large_seconds[TRANSFORM] - small_seconds[TRANSFORM]
    if large > small and extra > 0:
        print(f"Transform rows/s from {small} to {large} rows, start-up cancelled out: {(large - small) / extra:.0f}")


if __name__ == "__main__":
    main()
