"""Artifact types of the pipeline's own components."""

from tfx.types.artifact import Artifact


class Masks(Artifact):
    """Per-task masks of the shared MLP, sNET_init, every search round, plots and a summary.

    Files: `masks.npz`, `search.json`, `snet_init/`, `pruning_curve.png`,
    `mask_overlap.png`, `summary.txt` (see `models/sparse_sharing.py` and `models/plots.py`).
    The data span the search ran on is the int custom property `span`.

    The Kubeflow V2 compiler takes custom artifact types only with a KFP schema title as
    type name (`<namespace>.<Name>`) and without declared PROPERTIES (custom properties
    are fine), hence the name and `span` as a custom property.
    """

    TYPE_NAME = "lt4rec.Masks"
