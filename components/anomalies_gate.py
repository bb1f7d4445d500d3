"""Stops the pipeline before training when ExampleValidator found anomalies that matter.

ExampleValidator only records anomalies; nothing downstream reads them. This
component reads them and fails its execution with the list, so the Trainer (which
depends on it) never runs on broken data and the run reports why.
"""
# No `from __future__ import annotations`: TFX reads this component's annotations at runtime.
import logging

# The decorator and annotation tfx.v1.dsl.components re-exports (why not tfx.v1: pipeline/definition/pipeline.py).
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import io_utils
from tensorflow_metadata.proto.v0 import anomalies_pb2

log = logging.getLogger(__name__)


class DataAnomaliesError(RuntimeError):
    """Raised to stop the run: the new data breaks the schema."""


def read_anomalies(anomalies_uri: str, split: str) -> dict[str, str]:
    """{feature or dataset: description} of the anomalies recorded for `split`."""
    path = f"{anomalies_uri}/Split-{split}/SchemaDiff.pb"
    result = anomalies_pb2.Anomalies()
    result.ParseFromString(io_utils.read_bytes_file(path))
    found = {name: info.description or info.short_description for name, info in result.anomaly_info.items()}
    if result.HasField("dataset_anomaly_info"):
        found["<dataset>"] = result.dataset_anomaly_info.description
    return found


@component
def AnomaliesGate(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]) -> None:
    """Fails when any split of the newest span has schema anomalies."""
    problems = {}
    for split in artifact_utils.decode_split_names(anomalies.split_names):
        for name, description in read_anomalies(anomalies.uri, split).items():
            problems[f"{split}/{name}"] = description
    if problems:
        listing = "; ".join(f"{where}: {what}" for where, what in sorted(problems.items()))
        raise DataAnomaliesError(f"data anomalies, not training on this data: {listing}")
    log.info("no data anomalies in %s", anomalies.uri)
