"""Artifact types of the pipeline's own components."""

from __future__ import annotations

from tfx.types.artifact import Artifact


class Masks(Artifact):
    """Per-task masks of the shared MLP, sNET_init, every search round, plots and a summary.

    Files: `masks.npz`, `search.json`, `snet_init/`, `pruning_curve.png`,
    `mask_overlap.png`, `summary.txt` (written and read by `models/masks.py`, the plots by
    `models/plots.py`).
    The data span the search ran on is the int custom property `span`.

    The Kubeflow V2 compiler takes custom artifact types only with a KFP schema title as
    type name (`<namespace>.<Name>`) and without declared PROPERTIES (custom properties
    are fine), hence the name and `span` as a custom property. The container entrypoint
    imports the type by that title, so `lt4rec.Masks` resolves to this class
    (`lt4rec/__init__.py`).
    """

    TYPE_NAME = "lt4rec.Masks"


# Which pipeline made a model or blessing: the Trainer and the Evaluator write it on their
# outputs, and the compiled Kubeflow spec's resolver queries (which Vertex AI runs over the
# project's whole metadata store) ask for it, so a run never picks another pipeline's model.
PIPELINE_PROPERTY = "lt4rec_pipeline"
PIPELINE_NAME_KEY = "pipeline_name"  # in the Trainer's custom_config


def mark_pipeline(artifacts: list[Artifact], pipeline_name: str) -> None:
    for artifact in artifacts:
        artifact.set_string_custom_property(PIPELINE_PROPERTY, pipeline_name)


def pipeline_of(artifacts: list[Artifact]) -> str | None:
    for artifact in artifacts:
        if artifact.has_custom_property(PIPELINE_PROPERTY):
            return artifact.get_string_custom_property(PIPELINE_PROPERTY)
    return None


def pipeline_filter(pipeline_name: str) -> str:
    """The Vertex ML Metadata filter clause for artifacts marked by `mark_pipeline`."""
    return f'metadata.{PIPELINE_PROPERTY}.string_value="{pipeline_name}"'
