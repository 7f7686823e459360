"""Artifact types of the pipeline's own components."""

from tfx.types.artifact import Artifact, Property, PropertyType


class Masks(Artifact):
    """Per-task masks of the shared MLP, sNET_init, every search round, plots and a summary.

    Files: `masks.npz`, `search.json`, `snet_init/`, `pruning_curve.png`,
    `mask_overlap.png`, `summary.txt` (see `models/sparse_sharing.py` and `models/plots.py`).
    """

    TYPE_NAME = "LT4RecMasks"
    PROPERTIES = {
        "span": Property(type=PropertyType.INT),  # the data span the search ran on, for resolvers
    }
