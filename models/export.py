"""SavedModels with serving signatures over raw logs: Transform's graph, then the network.

`serving_default` takes serialized `tf.Example`s in the raw log format and applies the
Transform graph before the network, so that clients (and TFMA, which feeds it the eval
split as it is logged) never see ids. Labels and bookkeeping columns are not inputs.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf
import tensorflow_transform as tft

from lt4rec.models import features, network

NOT_INPUTS = (features.CLICK_LABEL, features.WATCH_RATIO_LABEL, features.REQUEST_ID, features.PRODUCTION_PCTR)
EXAMPLES_INPUT = "examples"


def raw_input_spec(transform_output: tft.TFTransformOutput) -> dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]:
    """The raw features a request carries: the Transform schema's, less labels and bookkeeping."""
    spec = dict(transform_output.raw_feature_spec())
    for name in NOT_INPUTS:
        spec.pop(name, None)
    return spec


class ServingModule(tf.Module):
    """The trained network behind Transform's graph, with the signatures TF Serving calls."""

    def __init__(self, model: network.RankingNetwork, transform_output: tft.TFTransformOutput, tasks: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.transform_layer = transform_output.transform_features_layer()
        self.raw_spec = raw_input_spec(transform_output)
        self.tasks = tasks

    def _score(self, raw: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        transformed = self.transform_layer(dict(raw))
        inputs = {name: transformed[name] for name in features.FEATURE_NAMES}
        outputs = self.model(inputs)
        return {network.OUTPUT_NAMES[task]: outputs[task] for task in self.tasks}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_examples(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._score(tf.io.parse_example(serialized, self.raw_spec))


def export_serving_model(
    model: network.RankingNetwork, transform_output: tft.TFTransformOutput, path: str, tasks: tuple[str, ...] | None = None
) -> None:
    """Write a SavedModel whose `serving_default` scores serialized raw examples."""
    module = ServingModule(model, transform_output, tuple(tasks or model.config.tasks))
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve_examples.get_concrete_function()})
