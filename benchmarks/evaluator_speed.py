"""The Evaluator's time, and what its metrics cost, on a finished pipeline run.

Reruns the run's Evaluator execution (the project's executor, TFMA on the DirectRunner, the
recorded model and examples) --repeats times for each variant of its eval config,
interleaved, and prints the median seconds and the eval rows per second:
- TFMA's metrics: the pipeline's standard metrics (example count, AUC, log loss, calibration,
  mean label and prediction, MSE) as TFMA's (Keras's log loss) own, GAUC and baselines kept;
- Batched metrics: the same as `tfma_metrics.Batched*` (the pipeline's now), the same keys;
- without GAUC (Batched metrics);
- without the baselines (no skill, incumbent; Batched metrics), GAUC kept.
The differences are what each costs; then the first two variants' metric values side by
side, with their relative differences. The eval split is the run's (`make demo`: ~5k rows;
`lt4rec generate --rows 200000` then `lt4rec pipeline run`: ~50k).

    .venv/bin/python benchmarks/evaluator_speed.py --pipeline-root demo/pipeline
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time

import tensorflow_model_analysis as tfma
from tfx.types import standard_artifacts

from lt4rec.components.evaluator import executor
from lt4rec.models import tfma_metrics
from lt4rec.testing import trainer_cluster

TFMA_METRICS, BATCHED_METRICS = "TFMA's metrics", "Batched metrics"
VARIANTS = (TFMA_METRICS, BATCHED_METRICS, "without GAUC", "without baselines")
BASELINES = ("NoSkillBaseline", "IncumbentBaseline")
# The standard metrics that the pipeline computes as Batched ones (a run recorded before
# it did names them without the prefix).
STANDARD = (
    "ExampleCount",
    "WeightedExampleCount",
    "AUC",
    "BinaryCrossentropy",
    "Calibration",
    "MeanLabel",
    "MeanPrediction",
    "MeanSquaredError",
)


def _as_standard(metric: dict, batched: bool) -> None:
    """`metric`'s config as TFMA's (Keras's) own standard metric, or as its Batched one."""
    name = metric["class_name"].removeprefix("Batched")
    if name not in STANDARD:
        return
    metric.pop("module", None)
    metric["class_name"] = f"Batched{name}" if batched else name
    if batched:
        metric["module"] = tfma_metrics.__name__


def eval_config(recorded: str, variant: str) -> str:
    config = json.loads(recorded)
    for spec in config["metrics_specs"]:
        for metric in spec["metrics"]:
            _as_standard(metric, batched=variant != TFMA_METRICS)
        if variant == "without GAUC":
            spec["metrics"] = [m for m in spec["metrics"] if m["class_name"] != "GAUC"]
        if variant == "without baselines":
            spec["metrics"] = [m for m in spec["metrics"] if m["class_name"] not in BASELINES]
    config["metrics_specs"] = [spec for spec in config["metrics_specs"] if spec["metrics"]]
    return json.dumps(config)


def run(execution: trainer_cluster.RecordedExecution, config: str, out: str) -> tuple[float, dict]:
    evaluation, blessing = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
    evaluation.uri, blessing.uri = os.path.join(out, "evaluation"), os.path.join(out, "blessing")
    os.makedirs(evaluation.uri)
    os.makedirs(blessing.uri)
    start = time.perf_counter()
    executor.Executor().Do(execution.inputs, {"evaluation": [evaluation], "blessing": [blessing]},
                           {**execution.exec_properties, "eval_config": config})  # fmt: skip
    seconds = time.perf_counter() - start
    ((_, values),) = tfma.load_eval_result(evaluation.uri).slicing_metrics
    return seconds, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pipeline-root", default="demo/pipeline", help="A finished pipeline run (holds metadata.sqlite)."
    )
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    execution = trainer_cluster.RecordedExecution.recorded(
        os.path.join(args.pipeline_root, "metadata.sqlite"), "Evaluator"
    )
    configs = {variant: eval_config(execution.exec_properties["eval_config"], variant) for variant in VARIANTS}
    seconds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    metrics: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            taken, values = run(execution, configs[variant], tempfile.mkdtemp(prefix="lt4rec-eval-"))
            seconds[variant].append(taken)
            if variant in (TFMA_METRICS, BATCHED_METRICS):
                metrics[variant] = {
                    f"{output}/{name}": float(value["doubleValue"])
                    for output, by_name in values.items()
                    for name, value in by_name[""].items()
                    if "doubleValue" in value
                }
    rows = metrics[BATCHED_METRICS]["ctr/example_count"]
    print(f"Evaluator on {rows:,.0f} eval rows ({args.pipeline_root}), median of {args.repeats}")
    print(f"{'variant':<20} {'seconds':>8} {'rows/s':>8}")
    for variant in VARIANTS:
        median = statistics.median(seconds[variant])
        print(f"{variant:<20} {median:>8.1f} {rows / median:>8.0f}")
    tfma_values, batched_values = metrics[TFMA_METRICS], metrics[BATCHED_METRICS]
    if set(tfma_values) != set(batched_values):
        print(f"different metric keys: {sorted(set(tfma_values) ^ set(batched_values))}")
    print(f"{'metric':<28} {TFMA_METRICS:>20} {BATCHED_METRICS:>20} {'relative difference':>20}")
    for key in sorted(set(tfma_values) & set(batched_values)):
        before, after = tfma_values[key], batched_values[key]
        difference = abs(after - before) / abs(before) if before else abs(after)
        print(f"{key:<28} {before:>20.15g} {after:>20.15g} {difference:>20.2g}")


if __name__ == "__main__":
    main()
