"""The SparseSharingTrainer as a Vertex AI training job (multi-worker), for `--training-workers`.

Kept apart from the component and executor so that local runs never import the Vertex
AI client. TFX's Vertex training executor starts a CustomJob whose worker pools come from
`custom_config` (`configs.VertexTraining`); every replica runs the stock `Executor` of
this component, and Vertex sets each replica's TF_CONFIG, so `run_fn` trains under
MultiWorkerMirroredStrategy.
"""

from __future__ import annotations

from tfx.dsl.components.base import executor_spec
from tfx.extensions.google_cloud_ai_platform.trainer import executor as vertex_trainer_executor

from lt4rec.components.sparse_sharing_trainer import executor
from lt4rec.components.sparse_sharing_trainer.component import SparseSharingTrainer


class VertexExecutor(vertex_trainer_executor.GenericExecutor):
    """Launches the training job; each of its replicas runs `executor.Executor`."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        super().Do(input_dict, output_dict, exec_properties)
        executor.mark_model(output_dict, exec_properties)

    def _GetExecutorClass(self):
        return executor.Executor


class VertexSparseSharingTrainer(SparseSharingTrainer):
    """The same Trainer, inputs and outputs, trained by a Vertex AI job."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(VertexExecutor)
