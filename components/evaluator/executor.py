"""The Evaluator's executor: TFX's own, after working out the baselines a model must beat.

TFX's Evaluator runs TFMA with the pipeline's EvalConfig and blesses the model when every
threshold holds. Besides the model's metrics, that EvalConfig (`pipeline/pipeline.py`)
holds two baseline metrics of `models/tfma_metrics.py`, computed in the same TFMA pass:

- `NoSkillBaseline`: the loss of predicting one constant, the train split's mean label,
  for every example (CTR: the click rate, its log loss; CVR, weighted by clicks: the mean
  watch ratio of clicked impressions, its MSE on the eval split's clicks);
- `IncumbentBaseline`: the AUC (and log loss) of the production model's score that the
  logs carry (`pctr`), beside the model's AUC on the same eval impressions.

Each reports the model's margin over its baseline under its own name; a threshold on
the margin (just above 0) makes TFMA's validation, hence TFX's own blessing code, fail
when the model does not beat the baseline. Nothing is hard-coded: before TFMA runs, this
executor reads the Examples artifact once with Beam, for

- the train split's weighted mean label of each output that has a `NoSkillBaseline`
  (TFMA reads only the eval split), which it writes into that metric's config;
- how many eval impressions carry a valid score (a number in [0, 1]) for each
  `IncumbentBaseline`: with none, that metric's threshold is dropped with a logged note
  (the check is skipped, not failed on a NaN).

After TFMA (and TFX's blessing) it writes `baselines.json` into the evaluation artifact
(each check: model, baseline, margin, status; the train means; every validation failure
when not blessed), logs the same, and records it on the blessing artifact
(`baseline_checks`, `not_blessed_because`).

TFMA runs with the extractors of `extractors.py` (TFMA's own, but only the features the
evaluation reads are split into examples), unless the pipeline gives a module of its own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Iterator

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_specs, metric_types
from tensorflow_model_analysis.writers import eval_config_writer
from tfx.components.evaluator import constants
from tfx.components.evaluator import executor as tfx_executor
from tfx.types import artifact_utils
from tfx.types import standard_component_specs as specs
from tfx.utils import io_utils, json_utils, proto_utils

from lt4rec import errors
from lt4rec.components import artifacts
from lt4rec.components.evaluator import extractors
from lt4rec.models import tfma_metrics

logger = logging.getLogger(__name__)

TRAIN_SPLIT = "train"
REPORT_FILE = "baselines.json"
NO_SKILL = "NoSkillBaseline"
INCUMBENT = "IncumbentBaseline"
CHECK_NAMES = {NO_SKILL: "beat_no_skill", INCUMBENT: "beat_incumbent"}
# Custom properties of the blessing artifact.
CHECKS_PROPERTY = "baseline_checks"
REASONS_PROPERTY = "not_blessed_because"
# Statuses of a check in the report.
PASSED, FAILED, NOT_CHECKED, SKIPPED = "passed", "failed", "not checked", "skipped"
_SUMS_FILE = ".split_sums.json"
# The execution property in which TFX's Evaluator looks up its TFMA extractors' function.
CUSTOM_EXTRACTORS_KEY = "custom_extractors"


@dataclasses.dataclass(frozen=True)
class Baseline:
    """One baseline metric of the EvalConfig, and what it needs from the data."""

    kind: str  # NO_SKILL or INCUMBENT
    spec_index: int  # its place in eval_config.metrics_specs[...].metrics[...]
    metric_index: int
    output_name: str
    name: str  # the margin's metric name
    options: dict  # the metric's config
    label_key: str
    weight_key: str | None  # the output's example weight (NO_SKILL weighs the train mean alike)
    checked: bool  # it has a threshold in the pipeline's EvalConfig

    @property
    def feature(self) -> str:
        return self.options.get("feature", "pctr")


def _options(config: str) -> dict:
    text = config.strip()
    if not text:
        return {}
    return json.loads(text if text.startswith("{") else "{" + text + "}")


def find_baselines(eval_config: tfma.EvalConfig) -> list[Baseline]:
    """The NoSkillBaseline and IncumbentBaseline metrics of `eval_config`, one per output."""
    (model_spec,) = [spec for spec in eval_config.model_specs if not spec.is_baseline][:1] or [tfma.ModelSpec()]
    found = []
    for spec_index, spec in enumerate(eval_config.metrics_specs):
        for metric_index, metric in enumerate(spec.metrics):
            if metric.class_name not in CHECK_NAMES:
                continue
            outputs = list(spec.output_names) or [""]
            if len(outputs) != 1:
                raise ValueError(f"{metric.class_name} needs a MetricsSpec of one output, not {outputs}")
            (output,) = outputs
            label_key = model_spec.label_keys[output] if output else model_spec.label_key
            weight_key = (
                model_spec.example_weight_keys.get(output) if output else model_spec.example_weight_key
            ) or None
            if spec.HasField("example_weights") and not spec.example_weights.weighted:
                weight_key = None  # the spec computes it unweighted only
            threshold = metric.HasField("threshold") or bool(metric.per_slice_thresholds)
            found.append(
                Baseline(
                    kind=metric.class_name,
                    spec_index=spec_index,
                    metric_index=metric_index,
                    output_name=output,
                    name=metric_specs.metric_instance(metric).name,
                    options=_options(metric.config),
                    label_key=label_key,
                    weight_key=weight_key,
                    checked=threshold,
                )
            )
    return found


# --- One Beam pass over the examples: the train split's label means, the eval split's scores ---

RECORDS_PER_BATCH = 4096  # serialized examples read, parsed and summed at a time
_DTYPE_OF_KIND = {"bytes_list": tf.string, "float_list": tf.float32, "int64_list": tf.int64}


def _record_batches(path: str) -> Iterator[list[bytes]]:
    """The serialized examples of one TFRecord file (GZIP-compressed if it ends in .gz, as
    ExampleGens write them), RECORDS_PER_BATCH at a time, read by TensorFlow: Beam's
    ReadFromTFRecord handles each record in Python, and took most of this pass's time."""
    compression = "GZIP" if path.endswith(".gz") else ""
    for batch in (
        tf.data.TFRecordDataset(path, compression_type=compression).batch(RECORDS_PER_BATCH).as_numpy_iterator()
    ):
        yield list(batch)


def _kinds(records: list[bytes], keys: set[str]) -> dict[str, str]:
    """The value kind of each of `keys` (bytes_list, float_list or int64_list) in the first
    of `records` that has the feature (none for a feature that no record has)."""
    kinds: dict[str, str] = {}
    for record in records:
        feature_map = tf.train.Example.FromString(record).features.feature
        for key in keys - set(kinds):
            kind = feature_map[key].WhichOneof("kind") if key in feature_map else None
            if kind:
                kinds[key] = kind
        if len(kinds) == len(keys):
            break
    return kinds


def _single_values(records: list[bytes], keys: set[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per feature key: which of `records` hold exactly one value of it (a mask), and those
    values. TensorFlow parses the batch at once (in Python, example by example, this pass
    took a quarter of the Evaluator's time); a feature must be of one kind in every record."""
    kinds = _kinds(records, keys)
    spec = {key: tf.io.RaggedFeature(_DTYPE_OF_KIND[kind], row_splits_dtype=tf.int64) for key, kind in kinds.items()}
    try:
        parsed = tf.io.parse_example(records, spec) if spec else {}
    except tf.errors.InvalidArgumentError as error:
        raise errors.DataError(
            f"a feature of {sorted(kinds)} is of more than one kind in the examples: {error.message}"
        ) from error
    found = {}
    for key in keys:
        if key not in parsed:
            found[key] = (np.zeros(len(records), dtype=bool), np.empty(0))
            continue
        single = parsed[key].row_lengths().numpy() == 1
        found[key] = (single, parsed[key].values.numpy()[parsed[key].row_starts().numpy()[single]])
    return found


class _SplitSums(beam.CombineFn):
    """Over batches of serialized tf.Examples: rows; per (label, weight) pair the sums of w*y
    and w (rows without one value of each left out); per score feature the rows whose value
    is a valid score."""

    def __init__(self, means: list[tuple[str, str | None]], scores: list[str]) -> None:
        self._means = means
        self._scores = scores

    def create_accumulator(self) -> np.ndarray:
        return np.zeros(1 + 2 * len(self._means) + len(self._scores))

    def add_input(self, accumulator: np.ndarray, records: list[bytes]) -> np.ndarray:
        rows = len(records)
        columns = _single_values(records, {key for pair in self._means for key in pair if key} | set(self._scores))
        accumulator[0] += rows
        for i, (label_key, weight_key) in enumerate(self._means):
            has_label, label_values = columns[label_key]
            has_weight, weight_values = columns[weight_key] if weight_key else (np.ones(rows, dtype=bool), 1.0)
            labels, weights = np.zeros(rows), np.zeros(rows)
            labels[has_label], weights[has_weight] = label_values, weight_values
            kept = has_label & has_weight
            accumulator[1 + 2 * i] += np.sum(weights[kept] * labels[kept])
            accumulator[2 + 2 * i] += np.sum(weights[kept])
        for j, feature in enumerate(self._scores):
            _, values = columns[feature]
            accumulator[1 + 2 * len(self._means) + j] += np.count_nonzero(~np.isnan(tfma_metrics.parse_scores(values)))
        return accumulator

    def merge_accumulators(self, accumulators) -> np.ndarray:
        return np.sum(list(accumulators), axis=0)

    def extract_output(self, accumulator: np.ndarray) -> list[float]:
        return accumulator.tolist()


def _write_json(value: Any, path: str) -> None:
    with tf.io.gfile.GFile(path, "w") as handle:
        json.dump(value, handle)


@dataclasses.dataclass(frozen=True)
class SplitStatistics:
    """What the baselines need from the data, per split."""

    rows: dict[str, int]
    means: dict[str, dict[tuple[str, str | None], tuple[float, float]]]  # split -> pair -> (sum w*y, sum w)
    scored_rows: dict[str, dict[str, int]]  # split -> score feature -> rows with a valid score

    def mean(self, split: str, label_key: str, weight_key: str | None) -> float:
        weighted_sum, weight = self.means[split][(label_key, weight_key)]
        return weighted_sum / weight if weight > 0 else float("nan")


# --- Filling in the EvalConfig, and reporting after TFMA ---


def configure(
    eval_config: tfma.EvalConfig, baselines: list[Baseline], statistics: SplitStatistics, eval_splits: list[str]
) -> tuple[tfma.EvalConfig, list[str]]:
    """`eval_config` with each NoSkillBaseline's constant filled in, and each
    IncumbentBaseline's threshold dropped when no eval example carries a valid score;
    and the notes to log about it."""
    configured = tfma.EvalConfig()
    configured.CopyFrom(eval_config)
    notes = []
    for baseline in baselines:
        metric = configured.metrics_specs[baseline.spec_index].metrics[baseline.metric_index]
        options = dict(baseline.options)
        if baseline.kind == NO_SKILL:
            constant = statistics.mean(TRAIN_SPLIT, baseline.label_key, baseline.weight_key)
            if math.isnan(constant):
                weighted = f" weighted by {baseline.weight_key!r}" if baseline.weight_key else ""
                raise errors.DataError(
                    f"the no-skill baseline of {baseline.output_name or 'the model'} needs the train split's mean "
                    f"{baseline.label_key!r}{weighted}, but the train split has no such examples"
                )
            options["constant"] = constant
            metric.config = json.dumps(options, sort_keys=True)
        else:
            scored = sum(statistics.scored_rows[split][baseline.feature] for split in eval_splits)
            if scored == 0 and baseline.checked:
                metric.ClearField("threshold")
                del metric.per_slice_thresholds[:]
                notes.append(
                    f"The eval split has no valid {baseline.feature!r} values: the check that "
                    f"{baseline.output_name or 'the model'} beats the incumbent's AUC is skipped."
                )
    return configured, notes


def candidate_metrics(output_uri: str) -> dict[str, dict[str, float]]:
    """The candidate model's overall-slice metrics, by output and name (no diffs)."""
    config = eval_config_writer.load_eval_run(output_uri)[0]
    baseline_spec = tfma.utils.get_baseline_model_spec(config) if config else None
    baseline_name = baseline_spec.name if baseline_spec else None
    found: dict[str, dict[str, float]] = {}
    for metrics_for_slice in tfma.load_metrics(output_uri):
        if metrics_for_slice.slice_key.single_slice_keys or metrics_for_slice.HasField("cross_slice_key"):
            continue
        for key_and_value in metrics_for_slice.metric_keys_and_values:
            key = metric_types.MetricKey.from_proto(key_and_value.key)
            if key.is_diff or key.sub_key or (baseline_name is not None and key.model_name == baseline_name):
                continue
            if key_and_value.value.HasField("double_value"):
                found.setdefault(key.output_name, {})[key.name] = key_and_value.value.double_value.value
    return found


def _failure_text(failure) -> str:
    key = failure.metric_key
    threshold = failure.metric_threshold
    bound = ""
    if threshold.HasField("value_threshold"):
        value = threshold.value_threshold
        if value.HasField("lower_bound"):
            bound = f" >= {value.lower_bound.value:g}" if value.lower_bound.value != tfma_metrics.ABOVE_ZERO else " > 0"
        if value.HasField("upper_bound"):
            bound += f" <= {value.upper_bound.value:g}"
    else:
        bound = " (change against the latest blessed model)"
    name = ("change of " if key.is_diff else "") + key.name
    return f"{key.output_name or 'model'} {name} = {failure.metric_value.double_value.value:.6g}, needs{bound}"


def report(
    baselines: list[Baseline],
    configured: tfma.EvalConfig,
    metrics: dict[str, dict[str, float]],
    statistics: SplitStatistics,
    eval_splits: list[str],
    validation: Any,
    blessed: bool | None,
) -> dict:
    """What `baselines.json` holds: per check the model's figure, the baseline's, the
    margin and the status; the train split's means; every validation failure."""
    configured_by_name = {
        (b.output_name, b.name): configured.metrics_specs[b.spec_index].metrics[b.metric_index] for b in baselines
    }
    failing = {
        (f.metric_key.output_name, f.metric_key.name)
        for s in validation.metric_validations_per_slice
        for f in s.failures
    }
    checks = []
    for baseline in baselines:
        figures = metrics.get(baseline.output_name, {})
        margin = figures.get(baseline.name, float("nan"))
        metric = configured_by_name[(baseline.output_name, baseline.name)]
        has_threshold = metric.HasField("threshold")
        if baseline.kind == NO_SKILL:
            loss = baseline.options.get("loss", tfma_metrics.MSE)
            no_skill = figures.get(f"no_skill_{loss}", float("nan"))
            entry = {
                "metric": loss,
                "model": no_skill - margin,
                "baseline": no_skill,
                "no_skill_prediction": figures.get(tfma_metrics.NO_SKILL_PREDICTION, float("nan")),
                "train_examples_weight": statistics.means[TRAIN_SPLIT][(baseline.label_key, baseline.weight_key)][1],
            }
        else:
            entry = {
                "metric": "auc",
                "model": figures.get(tfma_metrics.AUC_ON_INCUMBENT_EXAMPLES, float("nan")),
                "baseline": figures.get(tfma_metrics.INCUMBENT_AUC, float("nan")),
                "feature": baseline.feature,
                "incumbent_examples": int(figures.get(tfma_metrics.INCUMBENT_EXAMPLES, 0)),
                "incumbent_log_loss": figures.get(tfma_metrics.INCUMBENT_LOG_LOSS, float("nan")),
            }
        if has_threshold:
            status = FAILED if (baseline.output_name, baseline.name) in failing else PASSED
        elif baseline.checked:
            status = SKIPPED  # configure() dropped the threshold: no scores to compare with
        else:
            status = NOT_CHECKED
        checks.append(
            {
                "check": CHECK_NAMES[baseline.kind],
                "output": baseline.output_name,
                **entry,
                "margin": margin,
                "status": status,
            }
        )
    reasons = {(check["output"], baseline.name): _lost_to(check) for check, baseline in zip(checks, baselines)}
    failures = [
        reasons.get((f.metric_key.output_name, f.metric_key.name)) or _failure_text(f)
        for s in validation.metric_validations_per_slice
        for f in s.failures
    ]
    return {
        "blessed": blessed,
        "checks": checks,
        "train_split": {"rows": statistics.rows.get(TRAIN_SPLIT, 0)},
        "eval_splits": {
            split: {"rows": statistics.rows.get(split, 0), "scored_rows": statistics.scored_rows.get(split, {})}
            for split in eval_splits
        },
        "model": metrics,
        "failures": failures,
    }


def _lost_to(check: dict) -> str:
    task = check["output"] or "model"
    if check["metric"] == "auc":
        return (
            f"{task} AUC {check['model']:.4f} is not above the incumbent {check['feature']}'s {check['baseline']:.4f}"
        )
    metric = check["metric"]
    return f"{task} {metric} {check['model']:.4f} is not below the no-skill {metric} {check['baseline']:.4f}"


def describe(check: dict) -> str:
    """One line per check, for the log and the blessing artifact."""
    task = check["output"] or "model"
    if check["metric"] == "auc":
        against = f"incumbent {check['feature']} {check['baseline']:.4f} on {check['incumbent_examples']} examples"
        line = f"{task} AUC {check['model']:.4f} vs {against}"
    else:
        line = (
            f"{task} {check['metric']} {check['model']:.4f} vs no-skill {check['baseline']:.4f} "
            f"(predicting {check['no_skill_prediction']:.4f}, the train split's mean)"
        )
    status = check["status"]
    if status == SKIPPED:
        status = f"skipped: no valid {check['feature']} in the eval split"
    label = check["check"]
    return f"{line}: {label} {status}"


def _to_json(value: Any) -> Any:
    """NaN and infinities as null: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _with_extractors(exec_properties: dict) -> dict:
    """`exec_properties` naming `extractors.custom_extractors` (TFMA's extractors, only the
    features the evaluation reads split into examples) for TFX's Evaluator, unless the
    pipeline gives a module or function of its own."""
    if any(exec_properties.get(key) for key in (specs.MODULE_FILE_KEY, specs.MODULE_PATH_KEY, CUSTOM_EXTRACTORS_KEY)):
        return exec_properties
    return {**exec_properties, CUSTOM_EXTRACTORS_KEY: f"{extractors.__name__}.{extractors.custom_extractors.__name__}"}


class Executor(tfx_executor.Executor):
    """TFX's Evaluator executor, with the baselines filled in before and reported after."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        self._evaluate(input_dict, output_dict, exec_properties)
        # The blessing belongs to the pipeline of the model it judged.
        pipeline = artifacts.pipeline_of(input_dict.get(specs.MODEL_KEY) or [])
        if pipeline and output_dict.get(specs.BLESSING_KEY):
            artifacts.mark_pipeline(output_dict[specs.BLESSING_KEY], pipeline)

    def _evaluate(self, input_dict, output_dict, exec_properties) -> None:
        config_json = exec_properties.get(specs.EVAL_CONFIG_KEY)
        eval_config = tfma.EvalConfig()
        if config_json:
            proto_utils.json_to_proto(config_json, eval_config)
        baselines = find_baselines(eval_config) if config_json else []
        if not baselines:
            super().Do(input_dict, output_dict, _with_extractors(exec_properties))
            return
        eval_splits = json_utils.loads(exec_properties.get(specs.EXAMPLE_SPLITS_KEY, "null")) or ["eval"]
        output_uri = artifact_utils.get_single_uri(output_dict[constants.EVALUATION_KEY])
        statistics = self._split_statistics(input_dict[specs.EXAMPLES_KEY], baselines, eval_splits, output_uri)
        configured, notes = configure(eval_config, baselines, statistics, eval_splits)
        for note in notes:
            logger.info("Evaluator: %s", note)

        configured_json = proto_utils.proto_to_json(configured)
        super().Do(
            input_dict, output_dict, _with_extractors({**exec_properties, specs.EVAL_CONFIG_KEY: configured_json})
        )

        blessing = output_dict.get(specs.BLESSING_KEY)
        blessing = artifact_utils.get_single_instance(blessing) if blessing else None
        blessed = None
        if blessing is not None and blessing.has_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY):
            blessed = (
                blessing.get_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY) == constants.BLESSED_VALUE
            )
        summary = report(
            baselines, configured, candidate_metrics(output_uri), statistics, eval_splits,
            tfma.load_validation_result(output_uri), blessed,
        )  # fmt: skip
        _write_json(_to_json(summary), os.path.join(output_uri, REPORT_FILE))
        lines = [describe(check) for check in summary["checks"]]
        logger.info("Evaluator: model vs baselines\n  %s", "\n  ".join(lines))
        if blessing is not None:
            blessing.set_string_custom_property(CHECKS_PROPERTY, "; ".join(lines))
            if blessed is False:
                blessing.set_string_custom_property(REASONS_PROPERTY, "; ".join(summary["failures"]))
                logger.info("Evaluator: not blessed: %s", "; ".join(summary["failures"]))

    def _split_statistics(
        self, examples, baselines: list[Baseline], eval_splits: list[str], output_uri: str
    ) -> SplitStatistics:
        """One Beam pass over the train and eval splits, in batches (see `_SplitSums`)."""
        means = sorted({(b.label_key, b.weight_key) for b in baselines if b.kind == NO_SKILL}, key=str)
        scores = sorted({b.feature for b in baselines if b.kind == INCUMBENT})
        splits = [TRAIN_SPLIT] + [split for split in eval_splits if split != TRAIN_SPLIT]
        path = os.path.join(output_uri, _SUMS_FILE)
        with self._make_beam_pipeline() as pipeline:
            sums = []
            for split in splits:
                for index, uri in enumerate(artifact_utils.get_split_uris(examples, split)):
                    sums.append(
                        pipeline
                        | f"FilesForBaselines[{split}][{index}]"
                        >> beam.Create(tf.io.gfile.glob(io_utils.all_files_pattern(uri)))
                        | f"SpreadFilesForBaselines[{split}][{index}]" >> beam.Reshuffle()
                        | f"ReadForBaselines[{split}][{index}]" >> beam.FlatMap(_record_batches)
                        | f"SumForBaselines[{split}][{index}]" >> beam.CombineGlobally(_SplitSums(means, scores))
                        | f"NameForBaselines[{split}][{index}]" >> beam.Map(lambda values, split=split: [split, values])
                    )
            _ = (
                sums
                | "FlattenSums" >> beam.Flatten()
                | "AllSums" >> beam.combiners.ToList()
                | "WriteSums" >> beam.Map(_write_json, path)
            )
        with tf.io.gfile.GFile(path) as handle:
            per_split = json.load(handle)
        tf.io.gfile.remove(path)
        totals = {split: np.zeros(1 + 2 * len(means) + len(scores)) for split in splits}
        for split, values in per_split:
            totals[split] += values
        return SplitStatistics(
            rows={split: int(values[0]) for split, values in totals.items()},
            means={
                split: {pair: (values[1 + 2 * i], values[2 + 2 * i]) for i, pair in enumerate(means)}
                for split, values in totals.items()
            },
            scored_rows={
                split: {feature: int(values[1 + 2 * len(means) + j]) for j, feature in enumerate(scores)}
                for split, values in totals.items()
            },
        )
