"""LogExampleGen: an ImportExampleGen for day partitions of Tencent-style logs.

It is an `ImportExampleGen` (TFRecord files of `tf.Example` in, an `Examples` artifact with
train and eval splits out, the same driver for spans and fingerprints), with an executor
that checks every row and splits by day; see `executor.py` for why.

    history mode: LogExampleGen(input_base=data_root, eval_days=1)
        every DATA_ROOT/YYYYMMDD/ partition (optionally from first_day to last_day); the
        last `eval_days` days are eval, the rest train.
    daily mode:   LogExampleGen(input_base=data_root, daily=True, range_config=...)
        one day, found by TFX's date spec DATA_ROOT/{YYYY}{MM}{DD}/ (the latest by default,
        or the span that `range_config` names), split 9:1 into train and eval by request.
"""

from __future__ import annotations

import datetime as dt

from tfx.components import ImportExampleGen
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.types import channel, component_spec, standard_artifacts, standard_component_specs

from lt4rec.components.log_example_gen import executor

DAY_GLOB = "[0-9]" * 8  # any YYYYMMDD folder; `_truth` and other `_` folders are skipped
DAILY_PATTERN = "{YYYY}{MM}{DD}/*"
DAILY_SPLIT = (("train", 9), ("eval", 1))


class LogExampleGenSpec(standard_component_specs.FileBasedExampleGenSpec):
    """FileBasedExampleGen's spec plus the day split and the rejection limit."""

    PARAMETERS = {
        **standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
        executor.EVAL_DAYS: component_spec.ExecutionParameter(type=int),
        executor.FIRST_DAY: component_spec.ExecutionParameter(type=str, optional=True),
        executor.LAST_DAY: component_spec.ExecutionParameter(type=str, optional=True),
        executor.MAX_REJECTED_FRACTION: component_spec.ExecutionParameter(type=float),
    }


def day_span(day: str) -> int:
    """The span number TFX's {YYYY}{MM}{DD} date spec gives a YYYYMMDD day (days since 1970)."""
    return (dt.datetime.strptime(day, "%Y%m%d").date() - dt.date(1970, 1, 1)).days


class LogExampleGen(ImportExampleGen):
    """Imports checked log partitions as train and eval splits (see the module docstring)."""

    SPEC_CLASS = LogExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(
        self,
        input_base: str,
        eval_days: int = 1,
        first_day: str | None = None,
        last_day: str | None = None,
        daily: bool = False,
        range_config: range_config_pb2.RangeConfig | None = None,
        max_rejected_fraction: float = 0.0,
    ):
        if daily:
            if first_day or last_day:
                raise ValueError("daily mode takes its day from range_config, not first_day/last_day")
            pattern, eval_days = DAILY_PATTERN, 0
            splits = DAILY_SPLIT
        else:
            if eval_days < 1:
                raise ValueError(f"eval_days must be at least 1 in history mode, got {eval_days}")
            if range_config is not None:
                raise ValueError("range_config selects a day in daily mode; history mode takes first_day/last_day")
            # One split in, train and eval out; the executor assigns whole days, not hash buckets.
            pattern, splits = f"{DAY_GLOB}/*", (("train", 1), ("eval", 1))
        input_config = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="all", pattern=pattern)])
        output_config = example_gen_pb2.Output(
            split_config=example_gen_pb2.SplitConfig(
                splits=[example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=n) for name, n in splits]
            )
        )
        spec = LogExampleGenSpec(
            input_base=input_base,
            input_config=input_config,
            output_config=output_config,
            range_config=range_config,
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            eval_days=eval_days,
            first_day=first_day,
            last_day=last_day,
            max_rejected_fraction=float(max_rejected_fraction),
            examples=channel.Channel(type=standard_artifacts.Examples),
        )
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)
