"""Per-task binary masks on the shared MLP, carried by TF-MOT's pruning wrapper.

TF-MOT's `PruneLowMagnitude` holds one mask per weight and applies it by assignment
(`kernel.assign(kernel * mask)` on every call), which is right for one task and wrong for
two sharing one kernel: a CTR call would erase the weights only CVR keeps. So
`TaskMaskedPruneLowMagnitude` extends it rather than replacing it:

- it keeps TF-MOT's own `mask` variable as the *union* of the task masks (the weights that
  some task keeps), so TF-MOT's `weight_mask_op` zeroes in place exactly the weights no
  task keeps, and TF-MOT's summaries see a valid mask (TF-MOT's `strip_pruning` takes only
  Sequential and functional models, and would give the union, not a task: `folded` is the
  per-task strip);
- it adds one `<task>_mask` variable per task and applies mask k in the forward pass,
  `inputs @ (kernel * mask_k) + bias * unit_mask_k`, leaving the shared kernel as it is.
  A unit none of whose incoming weights task k keeps is off for task k (its bias too), so
  that a pruned unit outputs exactly zero and export can drop it.

Because gradients flow through `kernel * mask_k`, a batch of task k has zero gradient on
every weight outside mask k, and the trainer's optimizer (`training.MaskedAdam`) updates
neither those weights nor their moments: they stay bit-for-bit unchanged.

The masks come from the search, never from TF-MOT's schedule (`NeverPrune`), and all task
masks of a layer are set together (`set_task_masks`): the union, and with it what
`weight_mask_op` zeroes, is only ever computed from the masks the network trains under.

The functions below compute masks (magnitude pruning, globally or per layer, of
connections or of whole units, with the weights of dead units dropped), fold them for
export, and describe their overlap.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from lt4rec.models.config import CONNECTION, GLOBAL, GRANULARITIES, PER_LAYER, SCOPES, TASKS, NetworkConfig

Masks = dict[str, np.ndarray]  # layer name -> 0/1 float32 array of the kernel's shape


class NeverPrune(tfmot.sparsity.keras.PruningSchedule):
    """A TF-MOT schedule that never prunes: the masks are the search's, whoever asks TF-MOT.

    (A `ConstantSparsity` with a huge frequency still fires at its begin step.)
    """

    def __call__(self, step):
        return tf.constant(False), tf.constant(0.0)

    def get_config(self):
        return {"class_name": self.__class__.__name__, "config": {}}


def _tfmot_wrapper_class() -> type:
    """TF-MOT's pruning wrapper class, reached through its public API (the class itself is
    exported only from a private module): the type of what `prune_low_magnitude` returns."""
    return type(tfmot.sparsity.keras.prune_low_magnitude(tf.keras.layers.Dense(1), pruning_schedule=NeverPrune()))


PruneLowMagnitude = _tfmot_wrapper_class()


class TaskMaskedPruneLowMagnitude(PruneLowMagnitude):
    """A pruning wrapper around a Dense layer with one mask per task over one shared kernel."""

    def __init__(self, layer: tf.keras.layers.Dense, tasks: Sequence[str] = TASKS, **kwargs):
        kwargs.setdefault("pruning_schedule", NeverPrune())
        super().__init__(layer, **kwargs)
        self.tasks = tuple(tasks)
        self.task_masks: dict[str, tf.Variable] = {}

    def build(self, input_shape):
        super().build(input_shape)
        for task in self.tasks:
            self.task_masks[task] = self.add_weight(
                f"{task}_mask",
                shape=self.layer.kernel.shape,
                initializer="ones",
                dtype=self.layer.kernel.dtype,
                trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )

    @property
    def union_mask(self) -> tf.Variable:
        """TF-MOT's own mask variable, kept equal to the union of the task masks."""
        return self.pruning_vars[0][1]

    def call(self, inputs, task: str | None = None, training=None):
        """The layer as task `task` sees it; `task=None` is the union of all tasks' weights."""
        mask = self.union_mask if task is None else self.task_masks[task]
        dense = self.layer
        outputs = tf.matmul(inputs, dense.kernel * mask)
        if dense.use_bias:
            unit_on = tf.reduce_max(mask, axis=0)
            outputs = outputs + dense.bias * unit_on
        return dense.activation(outputs) if dense.activation is not None else outputs

    def get_config(self):
        return {**super().get_config(), "tasks": list(self.tasks)}

    def set_task_masks(self, masks_by_task: Mapping[str, np.ndarray]) -> None:
        """Every task's mask at once, then the union, then zero the weights that no task keeps.

        All at once: a union built while another task still held a stale mask would zero
        weights that the new masks keep, and no later call could bring them back.
        """
        if set(masks_by_task) != set(self.tasks):
            raise ValueError(
                f"{self.name}: masks for tasks {sorted(masks_by_task)}, but the layer has {sorted(self.tasks)}"
            )
        arrays = {task: np.asarray(mask, dtype=np.float32) for task, mask in masks_by_task.items()}
        for task, mask in arrays.items():
            if mask.shape != tuple(self.layer.kernel.shape):
                raise ValueError(
                    f"{self.name}: {task} mask of shape {mask.shape} for a kernel of shape {self.layer.kernel.shape}"
                )
            self.task_masks[task].assign(mask)
        self.union_mask.assign(np.maximum.reduce(list(arrays.values())))
        self.pruning_obj.weight_mask_op()

    def task_mask(self, task: str) -> np.ndarray:
        return self.task_masks[task].numpy()

    def folded(self, task: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Kernel and bias of a plain Dense layer equal to this layer for `task`."""
        mask = self.task_mask(task)
        kernel = self.layer.kernel.numpy() * mask
        bias = self.layer.bias.numpy() * mask.max(axis=0) if self.layer.use_bias else None
        return kernel, bias


def masked_layers(model: tf.keras.layers.Layer) -> list[TaskMaskedPruneLowMagnitude]:
    """The task-masked wrappers of a model or layer, in the order they were created."""
    return [layer for layer in model.submodules if isinstance(layer, TaskMaskedPruneLowMagnitude)]


def get_masks(model: tf.keras.layers.Layer, task: str) -> Masks:
    return {layer.name: layer.task_mask(task) for layer in masked_layers(model)}


def get_task_masks(model: tf.keras.layers.Layer) -> dict[str, Masks]:
    """Every task's masks, as `set_task_masks` takes them."""
    layers = masked_layers(model)
    return {task: get_masks(model, task) for task in (layers[0].tasks if layers else ())}


def set_task_masks(model: tf.keras.layers.Layer, masks_by_task: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Set every task's masks on every masked layer, each layer's all at once."""
    layers = {layer.name: layer for layer in masked_layers(model)}
    for task, masks in masks_by_task.items():
        if set(masks) != set(layers):
            raise ValueError(
                f"{task} masks for layers {sorted(masks)}, but the model's masked layers are {sorted(layers)}"
            )
    for name, layer in layers.items():
        layer.set_task_masks({task: masks[name] for task, masks in masks_by_task.items()})


def update_masks(model: tf.keras.layers.Layer, task: str) -> list[tuple[tf.Variable, Callable[[], tf.Tensor]]]:
    """What a step of `task` may move of each masked layer: its kernel in mask k, the biases of its units.

    (variable, mask) pairs; the masks are callables, read when the optimizer applies the
    step (inside its traced update).
    """
    result = []
    for layer in masked_layers(model):
        mask = layer.task_masks[task]
        result.append((layer.layer.kernel, lambda mask=mask: mask.read_value()))
        if layer.layer.use_bias:
            result.append((layer.layer.bias, lambda mask=mask: tf.reduce_max(mask, axis=0)))
    return result


def get_kernels(model: tf.keras.layers.Layer) -> dict[str, np.ndarray]:
    return {layer.name: layer.layer.kernel.numpy() for layer in masked_layers(model)}


def full_masks(model: tf.keras.layers.Layer) -> Masks:
    """Masks that keep everything (round 0 of a search)."""
    return {layer.name: np.ones(layer.layer.kernel.shape, np.float32) for layer in masked_layers(model)}


def remaining_fraction(masks: Mapping[str, np.ndarray]) -> float:
    kept = sum(float(mask.sum()) for mask in masks.values())
    return kept / sum(mask.size for mask in masks.values())


def _keep_top(scores: np.ndarray, keep: int) -> np.ndarray:
    """0/1 of scores' shape with the `keep` largest scores set (ties broken by position).

    Dropped items score -1 and stay dropped even when fewer than `keep` are left.
    """
    flat = np.zeros(scores.size, np.float32)
    keep = min(keep, int(np.count_nonzero(scores.ravel() >= 0)))
    if keep > 0:
        order = np.argsort(-scores.ravel(), kind="stable")
        flat[order[:keep]] = 1.0
    return flat.reshape(scores.shape)


def prune_by_magnitude(
    kernels: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    rounds: int,
    rate: float,
    scope: str = GLOBAL,
    granularity: str = CONNECTION,
    initial: Mapping[str, np.ndarray] | None = None,
) -> Masks:
    """The masks after pruning round `rounds`: keep the largest |w| among the kept weights.

    `kernels` and `masks` are the MLP's layers in order. The count kept is
    `round(n * (1 - rate) ** rounds)` of the n weights (or units) that the task's `initial`
    masks (round 0; every weight by default) keep over the scope (all kernels for GLOBAL,
    each kernel for PER_LAYER), taken from the weights `masks` still keeps: round r keeps
    (1-q)^r of what the task started with, whatever the rounding of the earlier rounds.
    NEURON granularity scores a unit by the mean |w| of its kept incoming weights (over
    GLOBAL scope, divided by the mean of its layer's kept units) and keeps or drops its
    whole kernel column. Then the weights of dead units go too (`without_dead_units`), so
    a mask counts only weights that can matter.
    """
    if scope not in SCOPES or granularity not in GRANULARITIES:
        raise ValueError(f"scope must be one of {SCOPES} and granularity one of {GRANULARITIES}")
    if not 0 <= rate < 1:
        raise ValueError(f"pruning rate {rate} is not in [0, 1)")
    share = (1.0 - rate) ** rounds
    names = list(kernels)
    initial = initial if initial is not None else {name: np.ones(kernels[name].shape, np.float32) for name in names}

    def items(name: str) -> int:  # the prunable items the task starts with in one kernel
        return (
            int(np.count_nonzero(initial[name]))
            if granularity == CONNECTION
            else int(np.count_nonzero(initial[name].max(axis=0)))
        )

    # Scores of the prunable items: kernel entries, or units (columns); dropped items score -1.
    scores = {}
    for name in names:
        magnitude = np.abs(kernels[name]) * masks[name]
        if granularity == CONNECTION:
            scores[name] = np.where(masks[name] > 0, magnitude, -1.0)
        else:
            kept_in = masks[name].sum(axis=0)
            unit_scores = magnitude.sum(axis=0) / np.maximum(kept_in, 1)
            if scope == GLOBAL and np.any(kept_in > 0):
                # Relative to the layer's kept units: wider fan-in means smaller initial |w|,
                # and raw means would empty the first layer before touching the others.
                unit_scores = unit_scores / max(float(unit_scores[kept_in > 0].mean()), 1e-12)
            scores[name] = np.where(kept_in > 0, unit_scores, -1.0)

    def expand(name: str, kept_items: np.ndarray) -> np.ndarray:
        if granularity == CONNECTION:
            return kept_items
        return masks[name] * kept_items[np.newaxis, :]

    if scope == PER_LAYER:
        result = {name: expand(name, _keep_top(scores[name], round(items(name) * share))) for name in names}
    else:
        flat = np.concatenate([scores[name].ravel() for name in names])
        kept = _keep_top(flat, round(sum(items(name) for name in names) * share))
        result, start = {}, 0
        for name in names:
            size = scores[name].size
            result[name] = expand(name, kept[start : start + size].reshape(scores[name].shape))
            start += size
    return without_dead_units(result)


def without_dead_units(masks: Mapping[str, np.ndarray]) -> Masks:
    """The masks (an MLP's layers in order) without the weights of units that cannot matter.

    A hidden unit none of whose incoming weights is kept outputs 0 (its bias is off too), so
    its outgoing weights do nothing; a unit none of whose outgoing weights is kept feeds
    nothing, so its incoming weights do nothing. Dropping either can kill more units: repeat
    until nothing changes. (The last layer's units all feed the head, which is not masked.)
    """
    result = {name: np.array(mask, dtype=np.float32) for name, mask in masks.items()}
    layers = list(result.values())
    changed = True
    while changed:
        changed = False
        for below, above in zip(layers, layers[1:]):
            if below.shape[1] != above.shape[0]:
                raise ValueError(f"masks of shapes {below.shape} and {above.shape} are not consecutive layers")
            dead = (below.max(axis=0) == 0) & (above.max(axis=1) > 0)  # no input, some output
            idle = (above.max(axis=1) == 0) & (below.max(axis=0) > 0)  # some input, no output
            above[dead, :] = 0
            below[:, idle] = 0
            changed = changed or bool(dead.any() or idle.any())
    return result


@dataclasses.dataclass(frozen=True)
class LayerOverlap:
    """How the CTR and CVR masks of one kernel divide its weights."""

    layer: str
    size: int
    shared: int
    ctr_only: int
    cvr_only: int
    unused: int

    def fractions(self) -> dict[str, float]:
        return {key: getattr(self, key) / self.size for key in ("shared", "ctr_only", "cvr_only", "unused")}


def overlap(ctr_masks: Mapping[str, np.ndarray], cvr_masks: Mapping[str, np.ndarray]) -> list[LayerOverlap]:
    result = []
    for name, ctr_mask in ctr_masks.items():
        ctr, cvr = ctr_mask > 0, cvr_masks[name] > 0
        result.append(
            LayerOverlap(
                layer=name,
                size=ctr.size,
                shared=int(np.sum(ctr & cvr)),
                ctr_only=int(np.sum(ctr & ~cvr)),
                cvr_only=int(np.sum(~ctr & cvr)),
                unused=int(np.sum(~ctr & ~cvr)),
            )
        )
    return result


def units_kept(mask: np.ndarray) -> np.ndarray:
    """Indices of the units (kernel columns) a mask keeps any incoming weight of."""
    return np.flatnonzero(mask.max(axis=0) > 0)


def save_masks(path: str, masks_by_task: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Write masks as one .npz (keys `<task>/<layer>`), compressed: they are mostly zeros."""
    arrays = {
        f"{task}/{name}": mask.astype(np.uint8) for task, masks in masks_by_task.items() for name, mask in masks.items()
    }
    buffer = io.BytesIO()  # zip needs a seekable file; GFile (for gs:// paths) is not
    np.savez_compressed(buffer, **arrays)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buffer.getvalue())


def load_masks(path: str) -> dict[str, Masks]:
    with tf.io.gfile.GFile(path, "rb") as f:
        arrays = np.load(io.BytesIO(f.read()))
    result: dict[str, Masks] = {}
    for key in arrays.files:
        task, name = key.split("/", 1)
        result.setdefault(task, {})[name] = arrays[key].astype(np.float32)
    return result


# The Masks artifact (MaskSearch's output; its TFX type is `components.artifacts.Masks`): a
# folder with the chosen masks, sNET_init (the weights every task's mask starts from, with
# the masks of round 0) and the search's report.
MASKS_FILE = "masks.npz"
REPORT_FILE = "search.json"
SNET_INIT_CHECKPOINT = "snet_init/checkpoint"


def write_artifact(folder: str, snet_init: tf.keras.Model, masks_by_task: Mapping[str, Masks], report: Mapping) -> None:
    """The artifact's files: `masks_by_task`, `snet_init`'s weights, and `report` (with the
    network's config under "network", which `load_artifact` checks)."""
    tf.io.gfile.makedirs(folder)
    save_masks(os.path.join(folder, MASKS_FILE), masks_by_task)
    tf.train.Checkpoint(network=snet_init).write(os.path.join(folder, SNET_INIT_CHECKPOINT))
    with tf.io.gfile.GFile(os.path.join(folder, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=2)


def read_report(folder: str) -> dict:
    with tf.io.gfile.GFile(os.path.join(folder, REPORT_FILE)) as f:
        return json.load(f)


def read_artifact_masks(folder: str) -> dict[str, Masks]:
    """The chosen masks of an artifact, by task."""
    return load_masks(os.path.join(folder, MASKS_FILE))


def load_artifact(folder: str, model: tf.keras.Model) -> dict[str, Masks]:
    """Restore sNET_init from an artifact into `model` (a network of the searched config) and
    return its chosen masks, for `set_task_masks`."""
    searched = NetworkConfig.from_dict(read_report(folder)["network"])
    if searched != model.config:
        raise ValueError(f"the masks in {folder} were searched on network {searched}, not on {model.config}")
    tf.train.Checkpoint(network=model).read(
        os.path.join(folder, SNET_INIT_CHECKPOINT)
    ).assert_existing_objects_matched()
    return read_artifact_masks(folder)
