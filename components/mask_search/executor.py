"""MaskSearch's executor: reads Transform's train split, runs the search, writes the masks artifact.

The rounds are chosen on a seeded random share of the train split held out for it
(`TrainConfig.validation_fraction`; every phase also stops early on it), so that the eval
split stays the Evaluator's own test set, untouched by any choice the search makes.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils

from lt4rec.models import distribution, inputs, masks, network, plots, sparse_sharing
from lt4rec.models.config import ModelSettings

logger = logging.getLogger(__name__)

EXAMPLES = "examples"
TRANSFORM_GRAPH = "transform_graph"
MASKS = "masks"
SETTINGS = "settings"
CUSTOM_CONFIG = "custom_config"
WORKERS = "workers"  # how many workers searched, in search.json
TRAIN_SPLIT = "train"


def split_examples(
    examples_artifacts: list, split: str, transform_output: tft.TFTransformOutput
) -> inputs.TransformedSplit:
    uri = artifact_utils.get_split_uri(examples_artifacts, split)
    return inputs.TransformedSplit.from_patterns(io_utils.all_files_pattern(uri), transform_output)


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: dict[str, list], output_dict: dict[str, list], exec_properties: dict[str, Any]) -> None:
        replica = distribution.Replica.from_env()
        if replica.serves:  # a worker or parameter server: the chief schedules the training
            distribution.serve(replica)
        settings = ModelSettings.from_dict(json.loads(exec_properties[SETTINGS]))
        feature_config, network_config, train_config, search_config = (
            settings.features,
            settings.network,
            settings.train,
            settings.search,
        )
        # Before any TensorFlow op runs: collectives are configured when the runtime starts.
        strategy = distribution.training_strategy(replica, network.id_table_shapes(feature_config, network_config))

        transform_output = tft.TFTransformOutput(artifact_utils.get_single_uri(input_dict[TRANSFORM_GRAPH]))
        tf.keras.utils.set_random_seed(train_config.seed)
        data = sparse_sharing.Datasets.from_split(
            split_examples(input_dict[EXAMPLES], TRAIN_SPLIT, transform_output),
            train_config,
            network_config.tasks,
            strategy,
        )
        with strategy.scope():
            model = network.RankingNetwork(feature_config, network_config)
            model.build_for(next(iter(data.validation)))
            model.start_at_base_rates(data.base_rates)
            algorithm = sparse_sharing.SparseSharing(model, data, train_config, search_config, strategy)
            logger.info(
                "Mask search: %d rounds per task, q=%.3f (%.0f%% left after the last), %s %s pruning, rewinding to %s",
                search_config.rounds,
                search_config.rate,
                100 * search_config.remaining,
                search_config.scope,
                search_config.granularity,
                search_config.rewind_to,
            )
            algorithm.warmup()
            searches = {task: algorithm.search(task) for task in network_config.tasks}

        output = artifact_utils.get_single_instance(output_dict[MASKS])
        # Every replica writes (saving may need all of them); only the chief's folder is kept.
        with (
            distribution.output_folder(output.uri, replica) as folder,
            strategy.scope(),
        ):  # writing sets sNET_init's masks
            algorithm.write(folder, searches, extra={"features": feature_config.to_dict(), WORKERS: replica.workers})
            if replica.is_chief:
                overlaps = masks.overlap(searches["ctr"].masks, searches["cvr"].masks)
                plots.pruning_curve(searches, os.path.join(folder, "pruning_curve.png"))
                plots.mask_overlap(overlaps, os.path.join(folder, "mask_overlap.png"))
                summary = plots.summary_text(searches, overlaps)
                with tf.io.gfile.GFile(os.path.join(folder, "summary.txt"), "w") as f:
                    f.write(summary)
                logger.info("Mask search done:\n%s", summary)
        distribution.barrier(strategy)  # the chief's artifact exists when any replica returns
        record_search(output_dict, input_dict)


def record_search(output_dict: dict[str, list], input_dict: dict[str, list]) -> None:
    """The masks artifact's properties, from the search report its folder holds (also after a Vertex AI job)."""
    output = artifact_utils.get_single_instance(output_dict[MASKS])
    report = masks.read_report(output.uri)
    for task, search in report["tasks"].items():
        best = search["rounds"][search["best_round"]]
        output.set_float_custom_property(f"{task}_remaining", search["remaining"])
        output.set_int_custom_property(f"{task}_best_round", search["best_round"])
        output.set_float_custom_property(f"{task}_{best['metric']}", best["value"])
    output.set_int_custom_property("span", max(artifact.span for artifact in input_dict[EXAMPLES]))
