"""The stock Trainer executor, with the masks artifact's folder passed to `run_fn`, and the
model marked with the pipeline that trained it (`artifacts.mark_pipeline`)."""

from __future__ import annotations

import json
from typing import Any

from tfx.components.trainer import executor as trainer_executor
from tfx.components.trainer import fn_args_utils
from tfx.types import artifact_utils
from tfx.types import standard_component_specs as specs

from lt4rec.components import artifacts
from lt4rec.models import trainer

MASKS = "masks"


def mark_model(output_dict: dict[str, list], exec_properties: dict[str, Any]) -> None:
    custom_config = json.loads(exec_properties.get(specs.CUSTOM_CONFIG_KEY) or "null") or {}
    if custom_config.get(artifacts.PIPELINE_NAME_KEY):
        artifacts.mark_pipeline(output_dict[specs.MODEL_KEY], custom_config[artifacts.PIPELINE_NAME_KEY])


class Executor(trainer_executor.GenericExecutor):
    def Do(self, input_dict: dict[str, list], output_dict: dict[str, list], exec_properties: dict[str, Any]) -> None:
        super().Do(input_dict, output_dict, exec_properties)
        mark_model(output_dict, exec_properties)

    def _GetFnArgs(
        self, input_dict: dict[str, list], output_dict: dict[str, list], exec_properties: dict[str, Any]
    ) -> fn_args_utils.FnArgs:
        fn_args = super()._GetFnArgs(input_dict, output_dict, exec_properties)
        if input_dict.get(MASKS):
            fn_args.custom_config = {
                **(fn_args.custom_config or {}),
                trainer.MASKS_URI: artifact_utils.get_single_uri(input_dict[MASKS]),
            }
        return fn_args
