"""The stock Trainer executor, with the masks artifact's folder passed to `run_fn`."""

from __future__ import annotations

from typing import Any

from tfx.components.trainer import executor as trainer_executor
from tfx.components.trainer import fn_args_utils
from tfx.types import artifact_utils

from lt4rec.models import trainer

MASKS = "masks"


class Executor(trainer_executor.GenericExecutor):
    def _GetFnArgs(self, input_dict: dict[str, list], output_dict: dict[str, list], exec_properties: dict[str, Any]) -> fn_args_utils.FnArgs:
        fn_args = super()._GetFnArgs(input_dict, output_dict, exec_properties)
        if input_dict.get(MASKS):
            fn_args.custom_config = {**(fn_args.custom_config or {}), trainer.MASKS_URI: artifact_utils.get_single_uri(input_dict[MASKS])}
        return fn_args
