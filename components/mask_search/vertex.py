"""MaskSearch as a Vertex AI training job (multi-worker), for `--training-workers`.

The same launcher as the Trainer's (`sparse_sharing_trainer/vertex.py`): TFX's Vertex
training executor starts a CustomJob whose worker pools come from `custom_config`
(`configs.VertexTraining`); every replica runs the stock `executor.Executor`, under the
TF_CONFIG Vertex sets, so the search trains under MultiWorkerMirroredStrategy. Kept apart so
that local runs never import the Vertex AI client.
"""

from __future__ import annotations

from tfx.dsl.components.base import executor_spec
from tfx.extensions.google_cloud_ai_platform.trainer import executor as vertex_trainer_executor

from lt4rec.components.mask_search import executor
from lt4rec.components.mask_search.component import MaskSearch


class VertexExecutor(vertex_trainer_executor.GenericExecutor):
    """Launches the training job; each of its replicas runs `executor.Executor`."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        super().Do(input_dict, output_dict, exec_properties)
        executor.record_search(output_dict, input_dict)  # the job's replicas cannot set the artifact's properties

    def _GetExecutorClass(self):
        return executor.Executor


class VertexMaskSearch(MaskSearch):
    """The same MaskSearch, inputs and outputs, searched by a Vertex AI job."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(VertexExecutor)
