"""lt4rec's Evaluator: TFX's Evaluator, blessing only a model that beats its baselines."""

from lt4rec.components.evaluator.component import Evaluator

__all__ = ["Evaluator"]
