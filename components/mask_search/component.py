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
        # JSON: where it runs if elsewhere (a Vertex AI training job's `custom_config`, as the Trainer's)
        executor.CUSTOM_CONFIG: component_spec.ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        executor.EXAMPLES: component_spec.ChannelParameter(type=standard_artifacts.Examples),
        executor.TRANSFORM_GRAPH: component_spec.ChannelParameter(type=standard_artifacts.TransformGraph),
    }
    OUTPUTS = {
        executor.MASKS: component_spec.ChannelParameter(type=Masks),
    }


class MaskSearch(base_component.BaseComponent):
    """Searches one mask per task (see `models/sparse_sharing.py`), under MultiWorkerMirroredStrategy
    when `TF_CONFIG` names several workers, as the Trainer trains."""

    SPEC_CLASS = MaskSearchSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        examples: channel.BaseChannel,
        transform_graph: channel.BaseChannel,
        settings: Mapping,
        custom_config: Mapping | None = None,
    ):
        """`settings`: `models.config.ModelSettings.to_dict()`, as the Trainer's custom_config holds it;
        `custom_config`: a Vertex AI training job's (`VertexMaskSearch`)."""
        spec = MaskSearchSpec(
            examples=examples,
            transform_graph=transform_graph,
            settings=json.dumps(settings, sort_keys=True),
            custom_config=json.dumps(dict(custom_config), sort_keys=True) if custom_config else None,
            masks=channel.Channel(type=Masks),
        )
        super().__init__(spec=spec)
