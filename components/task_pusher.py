"""TaskPusher: one SavedModel per task from the blessed shared network, in TF Serving's layout.

From the Trainer's model it writes `<serving_dir>/ctr/<version>/` and
`<serving_dir>/cvr/<version>/`, each the task's network with its mask folded in and its
switched-off units removed (`models/export.py`), but only if the Evaluator blessed the
model. Each version is written under a dot-folder and renamed into place, so a server
polling the folder loads it whole or not at all. Versions are consecutive integers (1, 2, ...), the next after the highest already
under `serving_dir`, so that TF Serving loads each push as a new version.
"""

import os

import tensorflow as tf
import tensorflow_transform as tft
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from lt4rec.models import export, network, trainer

BLESSED_FILE = "BLESSED"


def next_version(serving_dir: str, tasks: tuple[str, ...]) -> int:
    versions = [
        int(name.rstrip("/"))
        for task in tasks
        if tf.io.gfile.isdir(os.path.join(serving_dir, task))
        for name in tf.io.gfile.listdir(os.path.join(serving_dir, task))
        if name.rstrip("/").isdigit()
    ]
    return max(versions, default=0) + 1


@component
def TaskPusher(
    model: InputArtifact[standard_artifacts.Model],
    model_blessing: InputArtifact[standard_artifacts.ModelBlessing],
    transform_graph: InputArtifact[standard_artifacts.TransformGraph],
    pushed_model: OutputArtifact[standard_artifacts.PushedModel],
    serving_dir: Parameter[str],
) -> None:
    """Pushes the CTR and CVR models of a blessed model; records pushed=0 otherwise."""
    if not tf.io.gfile.exists(os.path.join(model_blessing.uri, BLESSED_FILE)):
        pushed_model.set_int_custom_property("pushed", 0)
        return
    trained, settings = trainer.load_trained(model.uri)
    transform_output = tft.TFTransformOutput(transform_graph.uri)
    tasks = trained.config.tasks
    version = next_version(serving_dir, tasks)
    for task in tasks:
        destination = os.path.join(serving_dir, network.OUTPUT_NAMES[task], str(version))
        # Written aside and renamed, so that a polling server never sees half a version.
        staging = os.path.join(serving_dir, network.OUTPUT_NAMES[task], f".staging-{version}")
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
        task_network = export.export_task_model(trained, task, transform_output, staging, compact=True)
        tf.io.gfile.rename(staging, destination)
        pushed_model.set_string_custom_property(f"{task}_destination", destination)
        pushed_model.set_string_custom_property(f"{task}_layer_widths", ",".join(map(str, task_network.layer_widths)))
    pushed_model.set_int_custom_property("pushed", 1)
    pushed_model.set_int_custom_property("pushed_version", version)
