"""The Evaluator's time, and what its metrics cost, on a finished pipeline run.

Reruns the run's Evaluator execution (the project's executor, TFMA on the DirectRunner, the
recorded model and examples) --repeats times for each variant of its eval config,
interleaved, and prints the median seconds and the eval rows per second:
- as configured (the pipeline's metrics, GAUC by user included);
- without GAUC;
- without the baselines (no skill, incumbent), GAUC kept.
The differences are what each costs. The eval split is the run's (`make demo`: ~5k rows;
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
from lt4rec.pipeline import trainer_cluster

VARIANTS = ("as configured", "without GAUC", "without baselines")
BASELINES = ("NoSkillBaseline", "IncumbentBaseline")


def eval_config(recorded: str, variant: str) -> str:
    config = json.loads(recorded)
    for spec in config["metrics_specs"]:
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
    parser.add_argument("--pipeline-root", default="demo/pipeline", help="A finished pipeline run (holds metadata.sqlite).")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    execution = trainer_cluster.RecordedExecution.recorded(os.path.join(args.pipeline_root, "metadata.sqlite"), "Evaluator")
    configs = {variant: eval_config(execution.exec_properties["eval_config"], variant) for variant in VARIANTS}
    seconds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    rows = gauc = None
    for _ in range(args.repeats):
        for variant in VARIANTS:
            taken, values = run(execution, configs[variant], tempfile.mkdtemp(prefix="lt4rec-eval-"))
            seconds[variant].append(taken)
            if variant == "as configured":
                rows = values["ctr"][""]["example_count"]["doubleValue"]
                gauc = values["ctr"][""]["gauc"]["doubleValue"]
    print(f"Evaluator on {rows:,.0f} eval rows ({args.pipeline_root}), median of {args.repeats}; GAUC {gauc:.6f}")
    print(f"{'variant':<20} {'seconds':>8} {'rows/s':>8}")
    for variant in VARIANTS:
        median = statistics.median(seconds[variant])
        print(f"{variant:<20} {median:>8.1f} {rows / median:>8.0f}")


if __name__ == "__main__":
    main()
