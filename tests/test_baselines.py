"""The Evaluator's baselines: a model must beat no skill and the incumbent (`pctr`) to be pushed.

One pipeline run on the tiny logs made into baselines no model can beat: `pctr` replaced by
the generator's true click probability, and every clicked impression of the eval day given
the train days' mean watch ratio of clicks, the no-skill prediction itself (so the constant
scores an MSE of 0). Then three reruns of the Evaluator and the Pusher with the checks
turned off one at a time and together. The reported baselines are
checked against numpy and scikit-learn over the parsed logs, here and for the shared
`finished_run`.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import gzip
import json
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow_model_analysis as tfma
from click.testing import CliRunner
from sklearn import metrics as sk

from lt4rec import errors, features
from lt4rec.components.evaluator import executor
from lt4rec.pipeline import configs, local_runner
from lt4rec.pipeline import pipeline as pipeline_lib
from tests.helpers import TABLE_SCALE, read_examples, tiny_model, write_examples

pytestmark = pytest.mark.e2e

TRAIN_DAYS, EVAL_DAYS = ("20201011", "20201012"), ("20201013",)
NO_SKILL_MARGIN, INCUMBENT_MARGIN = "mse_below_no_skill", "auc_above_incumbent"


def _latest(settings, component: str, output: str) -> str:
    return sorted(glob.glob(os.path.join(settings.pipeline_root, component, output, "*")), key=os.path.getmtime)[-1]


def _unbeatable_baselines(tiny_logs: str, root: str) -> str:
    """A copy of the logs whose `pctr` is the true click probability (from `_truth-*.csv.gz`)
    and whose eval day's clicks all watch the train days' mean watch ratio of clicks."""
    shutil.copytree(tiny_logs, root)
    train = _columns(root, TRAIN_DAYS)
    no_skill = float(np.float32(train["ratio"][train["click"] == 1].mean()))
    for path in glob.glob(os.path.join(root, "2*", "part-*.gz")):
        folder, name = os.path.split(path)
        with gzip.open(os.path.join(folder, "_truth-" + name.replace(".gz", ".csv.gz")), "rt") as handle:
            truth = list(csv.DictReader(handle))
        examples = read_examples(path)
        assert len(truth) == len(examples)
        for example, row in zip(examples, truth):
            assert (
                example.features.feature[features.REQUEST_ID].bytes_list.value[0].decode() == row[features.REQUEST_ID]
            )
            pctr = example.features.feature[features.PRODUCTION_PCTR].bytes_list.value
            pctr[0] = f"{float(row['p_click']):.6f}".encode()
            if (
                os.path.basename(folder) in EVAL_DAYS
                and example.features.feature[features.CLICK_LABEL].int64_list.value[0] == 1
            ):
                example.features.feature[features.WATCH_RATIO_LABEL].float_list.value[0] = no_skill
        write_examples(path, examples)
    return root


def _columns(data_root: str, days) -> dict[str, np.ndarray]:
    """Labels and the logged pctr (NaN where absent) of `days`, parsed with TensorFlow."""
    examples = [e for day in days for e in read_examples(os.path.join(data_root, day, "part-00000.gz"))]
    feature = lambda e, key: e.features.feature[key]  # noqa: E731
    return {
        "click": np.array([feature(e, features.CLICK_LABEL).int64_list.value[0] for e in examples]),
        "ratio": np.array([feature(e, features.WATCH_RATIO_LABEL).float_list.value[0] for e in examples], np.float64),
        "pctr": np.array(
            [float(feature(e, features.PRODUCTION_PCTR).bytes_list.value[0])
             if features.PRODUCTION_PCTR in e.features.feature else np.nan
             for e in examples]
        ),
    }  # fmt: skip


def independent_baselines(data_root: str) -> dict[str, float]:
    """The baselines from the raw logs, without TFMA: numpy and scikit-learn."""
    train, evaluation = _columns(data_root, TRAIN_DAYS), _columns(data_root, EVAL_DAYS)
    click_rate = train["click"].mean()
    watch_ratio = train["ratio"][train["click"] == 1].mean()  # of clicked impressions
    clicked = evaluation["ratio"][evaluation["click"] == 1]
    scored = ~np.isnan(evaluation["pctr"])
    return {
        "click_rate": click_rate,
        "watch_ratio": watch_ratio,
        "no_skill_mse": float(np.mean((clicked - watch_ratio) ** 2)),
        "no_skill_log_loss": sk.log_loss(evaluation["click"], np.full(evaluation["click"].size, click_rate)),
        "incumbent_auc": sk.roc_auc_score(evaluation["click"][scored], evaluation["pctr"][scored]),
        "incumbent_log_loss": sk.log_loss(evaluation["click"][scored], evaluation["pctr"][scored]),
        "incumbent_examples": int(scored.sum()),
        "eval_rows": evaluation["click"].size,
    }


def evaluation_figures(settings) -> tuple[dict, dict, dict]:
    """The latest Evaluator's TFMA metrics (ctr, cvr) and its baselines.json."""
    evaluation = _latest(settings, "Evaluator", "evaluation")
    ((_, by_output),) = tfma.load_eval_result(evaluation).slicing_metrics
    ctr, cvr = ({name: value["doubleValue"] for name, value in by_output[task][""].items()} for task in ("ctr", "cvr"))
    with open(os.path.join(evaluation, executor.REPORT_FILE)) as handle:
        return ctr, cvr, json.load(handle)


def assert_reported_baselines_match(settings) -> tuple[dict, dict, dict]:
    ctr, cvr, report = evaluation_figures(settings)
    expected = independent_baselines(settings.data_root)
    assert cvr["no_skill_prediction"] == pytest.approx(expected["watch_ratio"], rel=1e-6)
    assert cvr["no_skill_mse"] == pytest.approx(expected["no_skill_mse"], rel=1e-5, abs=1e-9)
    assert ctr["no_skill_prediction"] == pytest.approx(expected["click_rate"], rel=1e-6)
    assert ctr["no_skill_log_loss"] == pytest.approx(expected["no_skill_log_loss"], rel=1e-5)
    assert ctr["incumbent_examples"] == expected["incumbent_examples"] == expected["eval_rows"]
    assert ctr["incumbent_auc"] == pytest.approx(expected["incumbent_auc"], abs=1e-3)  # 10,000 score buckets
    assert ctr["incumbent_log_loss"] == pytest.approx(expected["incumbent_log_loss"], rel=1e-5)
    # The margins are the model's metrics (TFMA's own) minus the baselines'.
    assert cvr[NO_SKILL_MARGIN] == pytest.approx(cvr["no_skill_mse"] - cvr["mse"], abs=1e-6)
    assert ctr[INCUMBENT_MARGIN] == pytest.approx(ctr["auc"] - ctr["incumbent_auc"], abs=2e-3)
    checks = {(check["output"], check["check"]): check for check in report["checks"]}
    assert checks["cvr", "beat_no_skill"]["model"] == pytest.approx(cvr["mse"], rel=1e-5)
    assert checks["cvr", "beat_no_skill"]["baseline"] == pytest.approx(expected["no_skill_mse"], rel=1e-5, abs=1e-9)
    assert checks["ctr", "beat_incumbent"]["baseline"] == pytest.approx(expected["incumbent_auc"], abs=1e-3)
    assert checks["ctr", "beat_no_skill"]["baseline"] == pytest.approx(expected["no_skill_log_loss"], rel=1e-5)
    print(
        f"\nmodel vs no-skill vs incumbent ({settings.data_root}): CVR MSE {cvr['mse']:.4f} vs no-skill "
        f"{cvr['no_skill_mse']:.4f}; CTR AUC {ctr['auc']:.4f} vs no-skill 0.5 vs incumbent {ctr['incumbent_auc']:.4f}; "
        f"CTR log loss {ctr['log_loss']:.4f} vs no-skill {ctr['no_skill_log_loss']:.4f} "
        f"vs incumbent {ctr['incumbent_log_loss']:.4f}"
    )
    return ctr, cvr, report


VARIANTS = {  # run in this order: only the last one blesses, so none has a blessed baseline model
    "both checks": dict(beat_no_skill=True, beat_incumbent=True),
    "no-skill check off": dict(beat_no_skill=False, beat_incumbent=True),
    "incumbent check off": dict(beat_no_skill=True, beat_incumbent=False),
    "both checks off": dict(beat_no_skill=False, beat_incumbent=False),
}


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def losing_runs(tiny_logs, tmp_path_factory) -> dict:
    """The pipeline once, then the Evaluator and Pusher again per variant of the checks."""
    root = tmp_path_factory.mktemp("baselines")
    base = configs.PipelineSettings(
        data_root=_unbeatable_baselines(tiny_logs, str(root / "logs")),
        pipeline_root=str(root / "pipeline"),
        serving_dir=str(root / "serving"),
        table_scale=TABLE_SCALE,
        min_ctr_auc=0.0,  # the value bounds out of the way: the baselines alone decide
        max_cvr_mse=1.0,
        **tiny_model(),
    )
    handler, logger = _Messages(), logging.getLogger()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    results = {}
    try:
        for variant, checks in VARIANTS.items():
            settings = dataclasses.replace(base, **checks)
            del handler.messages[:]
            local_runner.run(settings)
            blessing = _latest(settings, "Evaluator", "blessing")
            results[variant] = {
                "settings": settings,
                "steps": {step.component: step.state for step in local_runner.last_run_steps(settings)},
                "blessing": sorted(os.listdir(blessing)),
                "validation": tfma.load_validation_result(_latest(settings, "Evaluator", "evaluation")),
                "report": evaluation_figures(settings)[2],
                "pushed": {task: sorted(os.listdir(os.path.join(settings.serving_dir, task)))
                           if os.path.isdir(os.path.join(settings.serving_dir, task)) else []
                           for task in ("ctr", "cvr")},
                "log": list(handler.messages),
            }  # fmt: skip
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return results


def _failing(result: dict) -> set[str]:
    return {f.metric_key.name for s in result["validation"].metric_validations_per_slice for f in s.failures}


def test_a_model_that_loses_to_both_baselines_is_not_blessed_nor_pushed(losing_runs):
    result = losing_runs["both checks"]
    assert result["steps"]["SparseSharingTrainer"] == "COMPLETE"
    assert result["blessing"] == ["NOT_BLESSED"]
    assert _failing(result) == {NO_SKILL_MARGIN, INCUMBENT_MARGIN}  # the baselines, not the value bounds
    assert result["pushed"] == {"ctr": [], "cvr": []}
    assert result["report"]["blessed"] is False
    statuses = {(c["output"], c["check"]): c["status"] for c in result["report"]["checks"]}
    assert statuses == {
        ("ctr", "beat_no_skill"): "not checked",
        ("ctr", "beat_incumbent"): "failed",
        ("cvr", "beat_no_skill"): "failed",
    }
    log = "\n".join(result["log"])
    assert "cvr mse" in log and "is not below the no-skill mse" in log and "is not above the incumbent pctr's" in log


@pytest.mark.parametrize(
    "variant, failing",
    [("no-skill check off", {INCUMBENT_MARGIN}), ("incumbent check off", {NO_SKILL_MARGIN})],
)
def test_each_check_alone_stops_the_push(losing_runs, variant, failing):
    result = losing_runs[variant]
    assert result["steps"]["SparseSharingTrainer"] == "CACHED" and result["steps"]["Evaluator"] == "COMPLETE"
    assert result["blessing"] == ["NOT_BLESSED"]
    assert _failing(result) == failing
    assert result["pushed"] == {"ctr": [], "cvr": []}


def test_with_both_checks_off_the_same_model_is_blessed_and_pushed(losing_runs):
    result = losing_runs["both checks off"]
    assert result["steps"]["SparseSharingTrainer"] == "CACHED"
    assert result["blessing"] == ["BLESSED"]
    assert result["validation"].validation_ok
    assert result["pushed"] == {"ctr": ["1"], "cvr": ["1"]}
    # Still reported, only not checked: the model did lose to both.
    checks = {(c["output"], c["check"]): c for c in result["report"]["checks"]}
    assert {c["status"] for c in checks.values()} == {"not checked"}
    assert checks["cvr", "beat_no_skill"]["margin"] < 0 and checks["ctr", "beat_incumbent"]["margin"] < 0


def test_the_losing_runs_baselines_match_numpy_and_scikit_learn(losing_runs):
    ctr, cvr, _ = assert_reported_baselines_match(losing_runs["both checks off"]["settings"])
    assert cvr["no_skill_mse"] < 1e-9 < cvr["mse"]  # the train mean is exactly right on the eval clicks
    assert ctr["auc"] < ctr["incumbent_auc"]  # nothing trained on 932 rows ranks like the true probability


def test_the_finished_runs_baselines_match_numpy_and_scikit_learn(finished_run):
    """The generator's own pctr (the production model's noisy score)."""
    assert_reported_baselines_match(finished_run)


# --- The pieces, without a pipeline run ---


def _statistics(scored_eval_rows: int) -> executor.SplitStatistics:
    return executor.SplitStatistics(
        rows={"train": 10, "eval": 5},
        means={"train": {("cvrlabel", "label"): (3.2, 4.0), ("label", None): (4.0, 10.0)}, "eval": {}},
        scored_rows={"train": {"pctr": 10}, "eval": {"pctr": scored_eval_rows}},
    )


def test_configure_fills_in_the_train_means_and_skips_the_incumbent_without_scores():
    settings = configs.PipelineSettings(data_root="d", pipeline_root="p", serving_dir="s")
    eval_config = pipeline_lib.eval_config(settings)
    baselines = executor.find_baselines(eval_config)
    assert [(b.kind, b.output_name, b.checked) for b in baselines] == [
        ("NoSkillBaseline", "ctr", False), ("IncumbentBaseline", "ctr", True), ("NoSkillBaseline", "cvr", True),
    ]  # fmt: skip

    configured, notes = executor.configure(eval_config, baselines, _statistics(5), ["eval"])
    assert notes == []
    configs_by_output = {
        (b.output_name, b.kind): configured.metrics_specs[b.spec_index].metrics[b.metric_index] for b in baselines
    }
    # 3.2 / 4 clicks
    assert json.loads(configs_by_output["cvr", "NoSkillBaseline"].config)["constant"] == pytest.approx(0.8)
    assert json.loads(configs_by_output["ctr", "NoSkillBaseline"].config)["constant"] == pytest.approx(0.4)
    assert configs_by_output["ctr", "IncumbentBaseline"].HasField("threshold")

    skipped, notes = executor.configure(eval_config, baselines, _statistics(0), ["eval"])
    incumbent = skipped.metrics_specs[baselines[1].spec_index].metrics[baselines[1].metric_index]
    assert not incumbent.HasField("threshold")
    assert notes == [
        "The eval split has no valid 'pctr' values: the check that ctr beats the incumbent's AUC is skipped."
    ]
    assert eval_config.metrics_specs[baselines[1].spec_index].metrics[baselines[1].metric_index].HasField("threshold")


def test_the_flags_turn_the_checks_off(monkeypatch):
    captured = []
    monkeypatch.setattr(local_runner, "run", captured.append)  # settings only: nothing runs
    for flags, expected in (
        ((), (True, True)),
        (("--no-beat-no-skill",), (False, True)),
        (("--no-beat-incumbent",), (True, False)),
    ):
        settings = _settings_from_cli(captured, *flags)
        assert (settings.beat_no_skill, settings.beat_incumbent) == expected
        thresholds = {
            (b.output_name, b.kind): b.checked for b in executor.find_baselines(pipeline_lib.eval_config(settings))
        }
        assert thresholds == {("ctr", "NoSkillBaseline"): False, ("ctr", "IncumbentBaseline"): expected[1],
                              ("cvr", "NoSkillBaseline"): expected[0]}  # fmt: skip


def _settings_from_cli(captured: list, *flags: str) -> configs.PipelineSettings:
    """`lt4rec pipeline run`'s settings (the subcommand alone: the group's logging setup stays out)."""
    from lt4rec import cli

    done = CliRunner().invoke(
        cli.pipeline_run, ["--data-root", "d", "--pipeline-root", "p", "--serving-dir", "s", *flags]
    )
    assert done.exit_code == 0, done.output
    return captured.pop()


def test_environment_variables_turn_the_checks_off(monkeypatch):
    for name, value in (("LT4REC_DATA_ROOT", "d"), ("LT4REC_PIPELINE_ROOT", "p"), ("LT4REC_SERVING_DIR", "s")):
        monkeypatch.setenv(name, value)
    settings = configs.PipelineSettings.from_env()
    assert settings.beat_no_skill and settings.beat_incumbent
    monkeypatch.setenv("LT4REC_BEAT_NO_SKILL", "false")
    monkeypatch.setenv("LT4REC_BEAT_INCUMBENT", "0")
    settings = configs.PipelineSettings.from_env()
    assert not settings.beat_no_skill and not settings.beat_incumbent
    monkeypatch.setenv("LT4REC_BEAT_INCUMBENT", "maybe")
    with pytest.raises(Exception, match="LT4REC_BEAT_INCUMBENT='maybe' is not a boolean"):
        configs.PipelineSettings.from_env()


def _example(values: dict) -> bytes:
    """A serialized tf.Example of `values`: feature name -> list of ints, floats or bytes."""
    import tensorflow as tf

    def feature(value_list: list) -> tf.train.Feature:
        if value_list and isinstance(value_list[0], bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=value_list))
        if value_list and isinstance(value_list[0], float):
            return tf.train.Feature(float_list=tf.train.FloatList(value=value_list))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=value_list))

    return tf.train.Example(
        features=tf.train.Features(feature={k: feature(v) for k, v in values.items()})
    ).SerializeToString()


def test_the_split_sums_of_batches_match_a_loop_over_the_examples():
    """Rows without a label, with two labels, without the weight, and scores that are missing,
    doubled, empty, out of [0, 1] or not numbers, in batches of a few sizes."""
    rng = np.random.default_rng(7)
    damages = [
        ("label", None), ("label", [1, 0]), ("cvrlabel", None), ("cvrlabel", [0.5, 0.5]), ("pctr", None),
        ("pctr", [b"0.1", b"0.2"]), ("pctr", [b""]), ("pctr", [b"1.5"]), ("pctr", [b"-1"]), ("pctr", [b"abc"]),
    ]  # fmt: skip
    rows = []
    for i in range(700):
        row = {
            "label": [int(rng.integers(0, 2))],
            "cvrlabel": [float(np.float32(rng.random()))],
            "pctr": [f"{rng.random():.6f}".encode()],
        }
        if i % 23 < len(damages):  # each damage once in every 23 rows
            key, value = damages[i % 23]
            if value is None:
                del row[key]
            else:
                row[key] = value
        rows.append(row)
    means, scores = [("cvrlabel", "label"), ("label", None)], ["pctr"]
    expected = np.zeros(1 + 2 * len(means) + len(scores))
    expected[0] = len(rows)
    for row in rows:
        for i, (label_key, weight_key) in enumerate(means):
            label, weight = row.get(label_key, []), row.get(weight_key, []) if weight_key else [1.0]
            if len(label) == 1 and len(weight) == 1:
                expected[1 + 2 * i] += weight[0] * label[0]
                expected[2 + 2 * i] += weight[0]
        pctr = row.get("pctr", [])
        if len(pctr) == 1:
            try:
                expected[-1] += 0.0 <= float(pctr[0]) <= 1.0
            except ValueError:
                pass
    assert 0 < expected[-1] < len(rows) and expected[2] < len(rows)  # the data does have bad rows

    records = [_example(row) for row in rows]
    sums = executor._SplitSums(means, scores)
    for batch_size in (1, 64, 700):
        accumulators = [sums.create_accumulator()]
        for start in range(0, len(records), batch_size):
            accumulators.append(sums.add_input(sums.create_accumulator(), records[start : start + batch_size]))
        np.testing.assert_allclose(sums.extract_output(sums.merge_accumulators(accumulators)), expected, rtol=1e-12)


def test_the_split_sums_refuse_a_feature_of_two_kinds():
    records = [_example({"label": [1]}), _example({"label": [0.5]})]
    sums = executor._SplitSums([("label", None)], [])
    with pytest.raises(errors.DataError, match="more than one kind"):
        sums.add_input(sums.create_accumulator(), records)


def test_the_split_statistics_read_plain_and_gzip_record_files_in_batches(tmp_path, monkeypatch):
    import tensorflow as tf

    records = [_example({"label": [i % 2]}) for i in range(10)]
    for name, options in (("plain.tfrecord", None), ("part-0.gz", tf.io.TFRecordOptions(compression_type="GZIP"))):
        with tf.io.TFRecordWriter(str(tmp_path / name), options) as writer:
            for record in records:
                writer.write(record)
        monkeypatch.setattr(executor, "RECORDS_PER_BATCH", 4)
        assert list(executor._record_batches(str(tmp_path / name))) == [records[:4], records[4:8], records[8:]]
