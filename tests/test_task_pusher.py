"""TaskPusher's publishing: versions moved into place whole, and the base model daily runs import."""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from lt4rec.components import task_pusher

FILES = {  # a SavedModel's layout
    "saved_model.pb": b"graph",
    "fingerprint.pb": b"fingerprint",
    "variables/variables.index": b"index",
    "variables/variables.data-00000-of-00001": b"values",
    "assets/vocabulary.txt": b"a\nb\n",
}


def _write(root: str) -> None:
    for name, content in FILES.items():
        tf.io.gfile.makedirs(os.path.dirname(os.path.join(root, name)))
        with tf.io.gfile.GFile(os.path.join(root, name), "wb") as handle:
            handle.write(content)


def _read(root: str) -> dict[str, bytes]:
    found = {}
    for folder, _, names in tf.io.gfile.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with tf.io.gfile.GFile(path, "rb") as handle:
                found[os.path.relpath(path, root)] = handle.read()
    return found


def test_on_an_object_store_the_graph_is_copied_after_everything_else(monkeypatch):
    """ram:// stands in for gs://: a rename there would copy saved_model.pb before variables/."""
    staging, destination = "ram://serving/ctr/.staging-3", "ram://serving/ctr/3"
    _write(staging)
    copied = []
    real_copy = tf.io.gfile.copy

    def recording_copy(source, target, overwrite=False):
        copied.append(os.path.relpath(target, destination))
        present = _read(destination) if tf.io.gfile.exists(destination) else {}
        if os.path.basename(target) == "saved_model.pb":
            assert set(present) == set(FILES) - {"saved_model.pb"}, "the graph appeared before the rest"
        real_copy(source, target, overwrite=overwrite)

    monkeypatch.setattr(tf.io.gfile, "copy", recording_copy)
    task_pusher.publish_version(staging, destination)
    assert copied[-1] == "saved_model.pb" and sorted(copied) == sorted(FILES)
    assert _read(destination) == FILES
    assert not tf.io.gfile.exists(staging)


def test_on_a_local_disk_a_version_is_renamed_into_place(tmp_path):
    staging, destination = str(tmp_path / ".staging-1"), str(tmp_path / "1")
    _write(staging)
    inode = os.stat(os.path.join(staging, "saved_model.pb")).st_ino
    task_pusher.publish_version(staging, destination)
    assert _read(destination) == FILES and not os.path.exists(staging)
    assert os.stat(os.path.join(destination, "saved_model.pb")).st_ino == inode  # moved, not copied


def test_the_base_model_replaces_the_previous_one(tmp_path):
    serving_dir = str(tmp_path / "serving")
    first, second = str(tmp_path / "model_1"), str(tmp_path / "model_2")
    _write(os.path.join(first, "Format-Serving"))
    os.makedirs(os.path.join(first, "training"))
    np.save(os.path.join(first, "training", "old.npy"), np.zeros(2))
    _write(os.path.join(second, "Format-Serving"))
    task_pusher.publish_base_model(first, serving_dir, 1)
    published = task_pusher.publish_base_model(second, serving_dir, 2)
    assert published == os.path.join(serving_dir, ".base_model")
    found = _read(published)
    assert json.loads(found.pop("source.json")) == {"model": second, "version": 2}
    assert found == {os.path.join("Format-Serving", name): content for name, content in FILES.items()}
