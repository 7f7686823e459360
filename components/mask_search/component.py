"""MaskSearch: warmup and per-task iterative magnitude pruning on Transform's output.

Its `masks` output is what the Trainer trains the shared weights under. It runs once
(history mode, or when the masks should be renewed); daily runs reuse the latest masks
and retrain the shared weights only, as the paper does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import channel, component_spec, standard_artifacts

from lt4rec.components.artifacts import Masks
from lt4rec.components.mask_search import executor


class MaskSearchSpec(component_spec.ComponentSpec):
    PARAMETERS = {
        executor.SETTINGS: component_spec.ExecutionParameter(type=str),  # JSON: features, network, train, search
    }
    INPUTS = {
        executor.EXAMPLES: component_spec.ChannelParameter(type=standard_artifacts.Examples),
        executor.TRANSFORM_GRAPH: component_spec.ChannelParameter(type=standard_artifacts.TransformGraph),
    }
    OUTPUTS = {
        executor.MASKS: component_spec.ChannelParameter(type=Masks),
    }


class MaskSearch(base_component.BaseComponent):
    """Searches one mask per task (see `models/sparse_sharing.py`)."""

    SPEC_CLASS = MaskSearchSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, examples: channel.BaseChannel, transform_graph: channel.BaseChannel, settings: Mapping):
        """`settings`: {"features", "network", "train", "search"}, each the `to_dict()` of its config."""
        spec = MaskSearchSpec(
            examples=examples,
            transform_graph=transform_graph,
            settings=json.dumps(settings, sort_keys=True),
            masks=channel.Channel(type=Masks),
        )
        super().__init__(spec=spec)
