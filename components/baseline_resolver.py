"""Resolves the model that is serving now: the Evaluator's baseline and the Trainer's warm start.

"Serving now" is read from the serving directory, not from MLMD's history: under
TF Serving's `latest` policy the highest numbered version folder is what answers,
so after a rollback the baseline is the version that was rolled back to, never
the newest model ever blessed (what TFX's LatestBlessedModelStrategy returns).
MLMD then supplies the Model artifact behind that folder: the PushedModel whose
`pushed_version` is that number, and the Model its push execution consumed.
"""
from __future__ import annotations

import logging
from pathlib import Path

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.dsl.components.common import resolver

from serving.layout import list_versions

log = logging.getLogger(__name__)

MODEL_KEY = "model"
PUSHED_MODEL_KEY = "pushed_model"


class ServingBaselineStrategy(resolver.ResolverStrategy):
    """Picks the Model artifact whose push is the highest version under `model_base_path`.

    Inputs: `model` (every Model) and `pushed_model` (every PushedModel) of the
    pipeline. Outputs the same keys, each with zero or one artifact: empty on the
    first run, or when the serving folder holds a version no run of this pipeline
    pushed (then there is no baseline and only absolute thresholds apply).
    """

    def __init__(self, model_base_path: str):
        self._model_base_path = model_base_path

    def resolve_artifacts(
        self, store: mlmd.MetadataStore, input_dict: dict[str, list[types.Artifact]]
    ) -> dict[str, list[types.Artifact]] | None:
        empty = {MODEL_KEY: [], PUSHED_MODEL_KEY: []}
        versions = list_versions(self._model_base_path)
        if not versions:
            log.info("no version is serving under %s: no baseline", self._model_base_path)
            return empty
        serving = versions[-1]
        base = Path(self._model_base_path).resolve()
        pushes = [
            pushed
            for pushed in input_dict[PUSHED_MODEL_KEY]
            if pushed.get_string_custom_property("pushed_version") == str(serving)
            and Path(pushed.get_string_custom_property("pushed_destination")).resolve().parent == base
        ]
        if not pushes:
            log.warning("version %d under %s was not pushed by this pipeline: no baseline", serving, base)
            return empty
        pushed = max(pushes, key=lambda artifact: artifact.id)
        models = {model.id: model for model in input_dict[MODEL_KEY]}
        model = _pushed_from(store, pushed.id, models)
        if model is None:
            log.warning("no Model artifact found behind pushed version %d: no baseline", serving)
            return empty
        log.info("baseline: version %d (Model artifact %d, %s)", serving, model.id, model.uri)
        return {MODEL_KEY: [model], PUSHED_MODEL_KEY: [pushed]}


def _pushed_from(store: mlmd.MetadataStore, pushed_id: int, models: dict[int, types.Artifact]) -> types.Artifact | None:
    """The Model that the execution which produced `pushed_id` took as input."""
    output = metadata_store_pb2.Event.OUTPUT
    executions = [e.execution_id for e in store.get_events_by_artifact_ids([pushed_id]) if e.type == output]
    for event in store.get_events_by_execution_ids(executions):
        if event.type == metadata_store_pb2.Event.INPUT and event.artifact_id in models:
            return models[event.artifact_id]
    return None
