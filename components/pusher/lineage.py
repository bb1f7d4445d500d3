"""Where a version came from: what the Pusher records at push time, and ML Metadata look-ups after.

At push time, `trained_on` reads the spans and record counts of the Examples the
Pusher is given (the Trainer's), for the push record. Afterwards, the Pusher
stores `model_name` and `pushed_version` on every PushedModel it marks pushed, so
the artifact behind a version folder (for example the version serving after a
rollback, the next run's baseline) is found from MLMD alone: version ->
PushedModel -> Model -> Trainer inputs.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components import storage
from serving.model_folder import record_counts

log = logging.getLogger(__name__)

PUSHED_MODEL_TYPE = "PushedModel"
MODEL_TYPE = "Model"
EXAMPLES_TYPE = "Examples"

# Custom property names on the PushedModel. The first two are TFX's own Pusher's
# (which also sets pushed_destination, the version folder).
PUSHED = "pushed"
PUSHED_VERSION = "pushed_version"
MODEL_NAME = "model_name"
MODEL_URI = "model_uri"
MODEL_ID = "model_id"
PIPELINE_NAME = "pipeline_name"
PIPELINE_RUN_ID = "pipeline_run_id"
PUSHED_AT = "pushed_at"
EVAL_METRICS = "eval_metrics"
NOT_PUSHED_REASON = "not_pushed_reason"
# The Examples artifact's property (TFX's ExampleGen sets it).
SPAN = "span"


@dataclass
class VersionLineage:
    """Where a served version came from, as far as MLMD knows."""

    pushed_model_id: int
    pipeline_name: str | None
    pipeline_run_id: str | None
    pushed_at: int | None
    model_id: int | None
    model_uri: str | None
    trainer_execution_id: int | None = None
    spans: list[int] = field(default_factory=list)
    eval_metrics: dict[str, float] = field(default_factory=dict)


def trained_on(examples: Sequence[Any]) -> tuple[list[int], dict[str, int]]:
    """(spans, record counts) of Examples artifacts: each one's `span`, and the counts of the
    ingest_summary.json that signflow's ExampleGen writes in it, summed over all of them.

    An artifact without that file (another ExampleGen, or one that cannot be read)
    still gives its span; its records are not counted.
    """
    if not examples:
        return [], {}
    # Imported here: the ingest executor pulls in Apache Beam, and only a push given Examples needs it.
    from components.ingest.executor import SUMMARY_FILE

    spans, summaries = set(), []
    for artifact in examples:
        summary = _read_summary(storage.join(artifact.uri, SUMMARY_FILE))
        span = _int(artifact.mlmd_artifact, SPAN)
        span = span if span is not None else summary.get(SPAN)
        if isinstance(span, int) and not isinstance(span, bool):
            spans.add(span)
        if summary:
            summaries.append(summary)
    return sorted(spans), record_counts(summaries)


def _read_summary(path: str) -> dict[str, Any]:
    if not storage.exists(path):
        return {}
    try:
        summary = json.loads(storage.read_text(path))
    except (OSError, ValueError, storage.StorageError) as err:
        log.warning("Pusher: cannot read %s (%s): its records are not counted", path, err)
        return {}
    return summary if isinstance(summary, dict) else {}


def find_pushed_model_for_version(
    store: metadata_store.MetadataStore, model_name: str, version: int
) -> metadata_store_pb2.Artifact | None:
    """The PushedModel that put `version` of `model_name` in place, or None.

    Only artifacts marked pushed count (a refused push has no version). If
    several match (which versioning rules out), the newest one wins.
    """
    matches = [
        artifact
        for artifact in store.get_artifacts_by_type(PUSHED_MODEL_TYPE)
        if _int(artifact, PUSHED) == 1
        and _string(artifact, MODEL_NAME) == model_name
        and _string(artifact, PUSHED_VERSION) == str(version)
    ]
    return max(matches, key=lambda artifact: artifact.id, default=None)


def find_model_for_version(
    store: metadata_store.MetadataStore, model_name: str, version: int
) -> metadata_store_pb2.Artifact | None:
    """The Model artifact (Trainer output) behind `version` of `model_name`, or None.

    This is what a baseline resolver hands the Evaluator after a rollback: the
    model of the highest numbered folder, not of the last push.
    """
    pushed = find_pushed_model_for_version(store, model_name, version)
    return model_of_push(store, pushed) if pushed is not None else None


def model_of_push(store: metadata_store.MetadataStore, pushed: metadata_store_pb2.Artifact) -> metadata_store_pb2.Artifact | None:
    """The Model that the execution which produced `pushed` took as input."""
    pusher = _producer(store, pushed.id)
    if pusher is None:
        return None
    models = _inputs_of_type(store, pusher, MODEL_TYPE)
    return models[0] if models else None


def version_lineage(store: metadata_store.MetadataStore, model_name: str, version: int) -> VersionLineage | None:
    """Run, model, training spans and eval metrics of `version`, or None if MLMD has no push for it."""
    pushed = find_pushed_model_for_version(store, model_name, version)
    if pushed is None:
        return None
    model = model_of_push(store, pushed)
    lineage = VersionLineage(
        pushed_model_id=pushed.id,
        pipeline_name=_string(pushed, PIPELINE_NAME),
        pipeline_run_id=_string(pushed, PIPELINE_RUN_ID),
        pushed_at=_int(pushed, PUSHED_AT),
        model_id=model.id if model is not None else None,
        model_uri=model.uri if model is not None else _string(pushed, MODEL_URI),
    )
    metrics = _string(pushed, EVAL_METRICS)
    if metrics:
        lineage.eval_metrics = json.loads(metrics)
    if model is not None:
        trainer = _producer(store, model.id)
        if trainer is not None:
            lineage.trainer_execution_id = trainer
            spans = {_int(examples, SPAN) for examples in _inputs_of_type(store, trainer, EXAMPLES_TYPE)}
            lineage.spans = sorted(span for span in spans if span is not None)
    return lineage


def _producer(store: metadata_store.MetadataStore, artifact_id: int) -> int | None:
    """Id of the execution that output `artifact_id`."""
    for event in store.get_events_by_artifact_ids([artifact_id]):
        if event.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT):
            return event.execution_id
    return None


def _inputs_of_type(store: metadata_store.MetadataStore, execution_id: int, type_name: str) -> list[metadata_store_pb2.Artifact]:
    ids = [
        event.artifact_id
        for event in store.get_events_by_execution_ids([execution_id])
        if event.type in (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT)
    ]
    if not ids:
        return []
    artifacts = store.get_artifacts_by_id(ids)
    types = {t.id: t.name for t in store.get_artifact_types_by_id(list({a.type_id for a in artifacts}))}
    return sorted((a for a in artifacts if types.get(a.type_id) == type_name), key=lambda a: a.id)


def _string(artifact: metadata_store_pb2.Artifact, name: str) -> str | None:
    for properties in (artifact.custom_properties, artifact.properties):
        if name in properties and properties[name].WhichOneof("value") == "string_value":
            return properties[name].string_value
    return None


def _int(artifact: metadata_store_pb2.Artifact, name: str) -> int | None:
    for properties in (artifact.custom_properties, artifact.properties):
        if name in properties and properties[name].WhichOneof("value") == "int_value":
            return properties[name].int_value
    return None
