"""SparseSharingTrainer: TFX's Trainer, plus an optional `masks` input from MaskSearch.

Everything else is the stock Trainer's: its spec's inputs and parameters, `run_fn` by
dotted path, train and eval args, `custom_config`, a `base_model` to warm-start from, the
`model` and `model_run` outputs, and its executor, which this one extends only to hand the
masks artifact's folder to `run_fn` as `custom_config["masks_uri"]`.
"""

from __future__ import annotations

from collections.abc import Mapping

from tfx import v1 as tfx
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import channel, component_spec, standard_artifacts, standard_component_specs
from tfx.utils import json_utils

from lt4rec.components.artifacts import Masks
from lt4rec.components.sparse_sharing_trainer import executor


class SparseSharingTrainerSpec(standard_component_specs.TrainerSpec):
    INPUTS = {
        **standard_component_specs.TrainerSpec.INPUTS,
        executor.MASKS: component_spec.ChannelParameter(type=Masks, optional=True),
    }


class SparseSharingTrainer(tfx.components.Trainer):
    SPEC_CLASS = SparseSharingTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        examples: channel.BaseChannel,
        transform_graph: channel.BaseChannel,
        run_fn: str,
        custom_config: Mapping,
        masks: channel.BaseChannel | None = None,
        base_model: channel.BaseChannel | None = None,
        schema: channel.BaseChannel | None = None,
        train_args: tfx.proto.TrainArgs | None = None,
        eval_args: tfx.proto.EvalArgs | None = None,
    ):
        spec = SparseSharingTrainerSpec(
            examples=examples,
            transform_graph=transform_graph,
            schema=schema,
            base_model=base_model,
            masks=masks,
            train_args=train_args or tfx.proto.TrainArgs(splits=["train"]),
            eval_args=eval_args or tfx.proto.EvalArgs(splits=["eval"]),
            run_fn=run_fn,
            custom_config=json_utils.dumps(dict(custom_config)),
            model=channel.Channel(type=standard_artifacts.Model),
            model_run=channel.Channel(type=standard_artifacts.ModelRun),
        )
        base_component.BaseComponent.__init__(self, spec=spec)
