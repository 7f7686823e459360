"""AnomalyCheck: stops the pipeline when ExampleValidator found anomalies.

ExampleValidator only records anomalies (and marks a split not blessed); nothing
downstream looks at them. Transform runs after this component, which raises a
`DataAnomaliesError` naming every anomalous feature, split and problem, so bad data never
reaches training.
"""

import os

from tensorflow_data_validation.utils import anomalies_util
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

from lt4rec import errors

ANOMALIES_FILE = "SchemaDiff.pb"  # ExampleValidator's file in each split's folder


def anomaly_report(anomalies: standard_artifacts.ExampleAnomalies) -> list[str]:
    """One line per anomaly: split, feature, short and long description."""
    lines = []
    for split in artifact_utils.decode_split_names(anomalies.split_names):
        path = os.path.join(artifact_utils.get_split_uri([anomalies], split), ANOMALIES_FILE)
        found = anomalies_util.load_anomalies_binary(path)
        for feature, info in sorted(found.anomaly_info.items()):
            details = "; ".join(reason.description for reason in info.reason) or info.description
            lines.append(f"split {split!r}, feature {feature!r}: {info.short_description} ({details})")
        if found.HasField("dataset_anomaly_info"):
            info = found.dataset_anomaly_info
            lines.append(f"split {split!r}, whole dataset: {info.short_description} ({info.description})")
    return lines


@component
def AnomalyCheck(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]) -> None:
    """Raises DataAnomaliesError if the statistics break the curated schema."""
    report = anomaly_report(anomalies)
    if report:
        raise errors.DataAnomaliesError(
            "the data does not match the curated schema (pipeline/schema/schema.pbtxt); "
            "fix the data or update the schema:\n  " + "\n  ".join(report)
        )
