"""The Evaluator component: TFX's own, with lt4rec's executor (see `executor.py`).

Same spec, inputs, outputs and id ("Evaluator") as `tfx.components.Evaluator`, so ML
Metadata lineage, the LatestBlessedModel resolver and the Pusher see an ordinary Evaluator.
"""

from __future__ import annotations

from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec

from lt4rec.components.evaluator import executor


class Evaluator(tfx.components.Evaluator):
    """TFX's Evaluator; its executor fills in the no-skill and incumbent baselines first."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)
