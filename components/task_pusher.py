"""TaskPusher: one SavedModel per task from the blessed shared network, in TF Serving's layout.

From the Trainer's model it writes `<serving_dir>/ctr/<version>/` and
`<serving_dir>/cvr/<version>/`, each the task's network with its mask folded in and its
switched-off units removed (`models/export.py`), but only if the Evaluator blessed the
model; for sparse sharing also `<serving_dir>/rank/<version>/`, the joint model that
scores both tasks (and the rankscore) in one pass over the shared front. Every model stores
its id tables as `embedding_storage` says and multiplies its pruned layers as `matmul` says
(the pipeline's settings). Each version is
written under a dot-folder and moved into place so that a server polling the folder loads
it whole or not at all (`publish_version`: on object stores, where a rename copies object
by object, the graph file comes last). Versions are consecutive integers (1, 2, ...), the
next after the highest already under `serving_dir`, so that TF Serving loads each push as
a new version.

It also publishes the pushed Trainer model (serving model and `training/` folder: weights
and masks) to `<serving_dir>/.base_model/`, a fixed place from which daily runs on
Kubeflow Pipelines 2.x, which has no resolver tasks to find the latest blessed model in
ML Metadata, import the model they continue (`base_model_uri`). `source.json` there
names the artifact and version it came from. (A dot-folder: no model to TF Serving's
config or `lt4rec serve`.)
"""

import json
import os

import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.util import model_utils
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from lt4rec.models import export, network, trainer

BASE_MODEL_FOLDER = ".base_model"
SOURCE_FILE = "source.json"


# Written last when a version is copied into place: TF Serving (and `lt4rec serve`) load a
# version only once its saved_model.pb is there, and retry a load that fails.
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def _copy_tree(source: str, destination: str) -> None:
    """Every file under `source` to the same place under `destination`, the graph files last."""
    files = []
    for folder, _, names in tf.io.gfile.walk(source):
        tf.io.gfile.makedirs(os.path.join(destination, os.path.relpath(folder, source)))  # empty ones too
        files += [os.path.join(folder, name) for name in names]
    files.sort(key=lambda path: os.path.basename(path) in SAVED_MODEL_FILES)
    for path in files:
        tf.io.gfile.copy(path, os.path.join(destination, os.path.relpath(path, source)), overwrite=True)


def publish_version(staging: str, destination: str) -> None:
    """Moves a written version into place so that a polling server never loads half of it.

    On a local disk a rename does it at once. On object stores (gs://, s3://) a rename is
    a copy object by object, in name order, which would put `saved_model.pb` before the
    `variables/`; there every other file is copied first and the graph last.
    """
    if "://" not in staging:
        tf.io.gfile.rename(staging, destination)
        return
    _copy_tree(staging, destination)
    tf.io.gfile.rmtree(staging)


def base_model_uri(serving_dir: str) -> str:
    return os.path.join(serving_dir, BASE_MODEL_FOLDER)


def publish_base_model(model_uri: str, serving_dir: str, version: int) -> str:
    """The pushed model's whole artifact at `base_model_uri`, replacing the previous one."""
    destination = base_model_uri(serving_dir)
    if tf.io.gfile.exists(destination):
        tf.io.gfile.rmtree(destination)
    _copy_tree(model_uri, destination)
    with tf.io.gfile.GFile(os.path.join(destination, SOURCE_FILE), "w") as handle:
        handle.write(json.dumps({"model": model_uri, "version": version}))
    return destination


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
    embedding_storage: Parameter[str] = export.EMBEDDING_STORAGE,
    matmul: Parameter[str] = export.MEASURE,
) -> None:
    """Pushes the CTR and CVR models of a blessed model; records pushed=0 otherwise.

    `embedding_storage`: how every pushed model stores its id tables (one of `export.EMBEDDING_STORAGES`);
    the pipeline gives the Trainer's serving model the same, so these are the scores the Evaluator blessed.
    `matmul`: how the sparse-sharing models' pruned hidden layers multiply (one of `export.MATMUL_CHOICES`;
    `measure` times both ways here). The paths do not change a score.
    """
    if not model_utils.is_model_blessed(model_blessing):
        pushed_model.set_int_custom_property("pushed", 0)
        return
    trained, settings = trainer.load_trained(model.uri)
    transform_output = tft.TFTransformOutput(transform_graph.uri)
    tasks = trained.config.tasks
    joint = trained.masked and len(tasks) > 1
    version = next_version(serving_dir, (*tasks, export.RANK_MODEL))
    for task in (*tasks, export.RANK_MODEL) if joint else tasks:
        name = export.RANK_MODEL if task == export.RANK_MODEL else network.OUTPUT_NAMES[task]
        destination = os.path.join(serving_dir, name, str(version))
        # Written aside and renamed, so that a polling server never sees half a version.
        staging = os.path.join(serving_dir, name, f".staging-{version}")
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
        if task == export.RANK_MODEL:
            export.export_rank_model(
                trained, transform_output, staging, matmul=matmul, embedding_storage=embedding_storage
            )
        else:
            task_network = export.export_task_model(
                trained, task, transform_output, staging, matmul=matmul, embedding_storage=embedding_storage
            )
            pushed_model.set_string_custom_property(
                f"{task}_layer_widths", ",".join(map(str, task_network.layer_widths))
            )
        publish_version(staging, destination)
        pushed_model.set_string_custom_property(f"{task}_destination", destination)
    pushed_model.set_string_custom_property("base_model", publish_base_model(model.uri, serving_dir, version))
    pushed_model.set_int_custom_property("pushed", 1)
    pushed_model.set_int_custom_property("pushed_version", version)
    pushed_model.set_string_custom_property("embedding_storage", embedding_storage)
    pushed_model.set_string_custom_property("matmul", matmul)
