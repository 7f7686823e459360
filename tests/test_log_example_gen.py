"""LogExampleGen under the real LocalDagRunner: day splits, daily spans, and bad rows."""

import glob
import json
import os

import pytest
from tfx import v1 as tfx
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from lt4rec import errors
from lt4rec.components.log_example_gen import LogExampleGen, day_span
from lt4rec.components.log_example_gen.component import DAILY_PATTERN
from lt4rec.components.log_example_gen.executor import resolve_span
from lt4rec.pipeline.pipeline import _range_config
from tests.helpers import read_examples


def run_example_gen(tmp_path, data_root, **kwargs) -> str:
    """Runs a pipeline of LogExampleGen alone; returns its Examples artifact's folder."""
    root = str(tmp_path / "pipeline")
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="example_gen_test",
        pipeline_root=root,
        components=[LogExampleGen(input_base=data_root, **kwargs)],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(root, "metadata.sqlite")
        ),
    )
    tfx.orchestration.LocalDagRunner().run(pipeline)
    (artifact,) = glob.glob(os.path.join(root, "LogExampleGen", "examples", "*"))
    return artifact


def split_records(artifact: str, split: str) -> list:
    return [e for path in sorted(glob.glob(os.path.join(artifact, f"Split-{split}", "*"))) for e in read_examples(path)]


def day_records(data_root: str, day: str) -> list:
    return read_examples(os.path.join(data_root, day, "part-00000.gz"))


def _key(example) -> tuple:
    return (
        example.features.feature["seqnum"].bytes_list.value[0],
        example.features.feature["FEA_VID"].bytes_list.value[0],
    )


def test_history_mode_holds_out_the_last_day(tmp_path, tiny_logs):
    artifact = run_example_gen(tmp_path, tiny_logs, eval_days=1)
    train, evaluation = split_records(artifact, "train"), split_records(artifact, "eval")
    expected_train = day_records(tiny_logs, "20201011") + day_records(tiny_logs, "20201012")
    assert sorted(map(_key, train)) == sorted(map(_key, expected_train))
    assert sorted(map(_key, evaluation)) == sorted(map(_key, day_records(tiny_logs, "20201013")))
    assert sorted(e.SerializeToString() for e in evaluation) == sorted(
        e.SerializeToString() for e in day_records(tiny_logs, "20201013")
    )


def test_history_mode_takes_a_window_of_days(tmp_path, tiny_logs):
    artifact = run_example_gen(tmp_path, tiny_logs, first_day="20201012", last_day="20201013")
    assert len(split_records(artifact, "train")) == len(day_records(tiny_logs, "20201012"))
    assert len(split_records(artifact, "eval")) == len(day_records(tiny_logs, "20201013"))


def test_daily_mode_takes_one_span_and_keeps_requests_together(tmp_path, tiny_logs):
    artifact = run_example_gen(tmp_path, tiny_logs, daily=True, range_config=_range_config("20201012"))
    train, evaluation = split_records(artifact, "train"), split_records(artifact, "eval")
    day = day_records(tiny_logs, "20201012")
    assert sorted(map(_key, train + evaluation)) == sorted(map(_key, day))
    assert 0.03 < len(evaluation) / len(day) < 0.2
    assert not {k[0] for k in map(_key, train)} & {k[0] for k in map(_key, evaluation)}


def test_latest_span_is_the_last_day(tmp_path, tiny_logs):
    artifact = run_example_gen(tmp_path, tiny_logs, daily=True, range_config=_range_config("latest"))
    found = split_records(artifact, "train") + split_records(artifact, "eval")
    assert sorted(map(_key, found)) == sorted(map(_key, day_records(tiny_logs, "20201013")))
    assert day_span("19700102") == 1


def _break_labels(examples):
    del examples[3].features.feature["label"]
    examples[7].features.feature["cvrlabel"].float_list.value[0] = 1.5
    return examples


def test_bad_labels_stop_the_run_naming_file_record_and_field(tmp_path, damaged_copy):
    root = damaged_copy(_break_labels)
    with pytest.raises(errors.DataError) as stopped:
        run_example_gen(tmp_path, root)
    message = str(stopped.value)
    path = os.path.join(root, "20201012", "part-00000.gz")
    assert f"{path} record 3: field 'label' is missing" in message
    assert f"{path} record 7: field 'cvrlabel' = [1.5] is outside [0, 1]" in message


def test_rows_within_the_tolerance_are_kept_aside_not_lost(tmp_path, damaged_copy, tiny_logs):
    root = damaged_copy(_break_labels)
    artifact = run_example_gen(tmp_path, root, max_rejected_fraction=0.01)
    train = split_records(artifact, "train")
    expected = len(day_records(tiny_logs, "20201011")) + len(day_records(tiny_logs, "20201012")) - 2
    assert len(train) == expected
    rejected = [
        json.loads(line) for path in glob.glob(os.path.join(artifact, "rejected", "_rejected-*")) for line in open(path)
    ]
    assert sorted((r["record"], r["reason"], r["field"]) for r in rejected) == [
        (3, "missing_label", "label"),
        (7, "label_out_of_domain", "cvrlabel"),
    ]
    with open(os.path.join(artifact, "rejected", "counts.json")) as handle:
        counts = json.load(handle)
    assert counts["rows_read"] == expected + 2 + len(day_records(tiny_logs, "20201013"))


def test_a_feature_of_the_wrong_type_is_named(tmp_path, damaged_copy):
    def int_user_ids(examples):
        feature = examples[0].features.feature["FEA_UID"]
        feature.ClearField("bytes_list")
        feature.int64_list.value.append(5)
        return examples

    with pytest.raises(errors.DataError, match=r"record 0: field 'FEA_UID' has int64 values where bytes belong"):
        run_example_gen(tmp_path, damaged_copy(int_user_ids))


def test_a_corrupt_gzip_file_is_named_whatever_the_tolerance(tmp_path, tiny_logs):
    import shutil

    root = str(tmp_path / "logs")
    shutil.copytree(tiny_logs, root)
    path = os.path.join(root, "20201012", "part-00000.gz")
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    with pytest.raises(
        errors.DataError, match=rf"{path}: not a valid GZIP TFRecord file: it breaks off after \d+ records"
    ):
        run_example_gen(tmp_path, root, max_rejected_fraction=1.0)


def test_too_few_days_for_the_held_out_days(tmp_path, tiny_logs):
    with pytest.raises(errors.DataError, match=r"3 day partition\(s\).*needs at least 4"):
        run_example_gen(tmp_path, tiny_logs, eval_days=3)


def test_mode_arguments_are_checked():
    with pytest.raises(ValueError, match="eval_days"):
        LogExampleGen(input_base="/x", eval_days=0)
    with pytest.raises(ValueError, match="range_config"):
        LogExampleGen(input_base="/x", range_config=_range_config("latest"))
    with pytest.raises(ValueError, match="first_day"):
        LogExampleGen(input_base="/x", daily=True, first_day="20201011")


def test_the_reader_finds_damage_that_tensorflow_misses(tmp_path, tiny_logs):
    from lt4rec.logs.beam_jobs import read_tfrecords
    from lt4rec.logs.tfrecord import CorruptFileError

    source = os.path.join(tiny_logs, "20201011", "part-00000.gz")
    with open(source, "rb") as handle:
        data = handle.read()
    import tensorflow as tf

    assert [tf.train.Example.FromString(r) for r in read_tfrecords(source)] == read_examples(source)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    for name, damaged in [
        ("no_trailer", data[:-8]),
        ("cut", data[: len(data) // 3]),
        ("flipped", bytes(flipped)),
        ("plain", b"not gzip at all"),
    ]:
        path = str(tmp_path / name)
        with open(path, "wb") as handle:
            handle.write(damaged)
        with pytest.raises(CorruptFileError):
            list(read_tfrecords(path))


@pytest.mark.parametrize("span,day", [("latest", "20201013"), ("20201012", "20201012")])
def test_without_a_driver_the_executor_resolves_the_day_itself(tiny_logs, span, day):
    """Kubeflow Pipelines 2.x runs no ExampleGen driver: the pattern arrives as compiled."""
    compiled = {
        "input_base": tiny_logs,
        "input_config": proto_utils.proto_to_json(
            example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="all", pattern=DAILY_PATTERN)])
        ),
        "range_config": proto_utils.proto_to_json(_range_config(span)),
    }
    examples = standard_artifacts.Examples()
    resolved = resolve_span(compiled, examples)
    config = example_gen_pb2.Input()
    proto_utils.json_to_proto(resolved["input_config"], config)
    assert config.splits[0].pattern == f"{day}/*"
    assert resolved["span"] == examples.get_int_custom_property("span") == day_span(day)
    assert resolve_span(resolved, standard_artifacts.Examples()) == resolved  # a driver's output passes unchanged
