"""signflow's Pusher: TFX's Pusher contract, TF Serving's versioned layout, pushed atomically.

Same inputs and output as TFX's Pusher (model, model_blessing, infra_blessing ->
pushed_model with `pushed`, `pushed_destination`, `pushed_version`), plus two
optional inputs for what is recorded with the push: the ModelEvaluation (the
reason a model was not blessed; the overall and per-signer metrics) and the
Examples the Trainer read (their spans and record counts). The executor
subclasses TFX's and replaces the copy with `publish.push_model` (numbered,
staged, renamed into place), writes TF Serving's models.config, and applies
retention.

    <serving_dir>/models.config
    <serving_dir>/<model_name>/<version>/              saved_model.pb, variables/, assets/, assets.extra/
    <serving_dir>/<model_name>/.pushes/<version>.json  the push record (records.PushRecord): model, run,
                                                       spans and record counts, eval metrics, per-signer accuracy

The push record, with all of that, is written when the version number is
reserved, before the copy, and outside the version folder: what TF Serving
loads is only ever the complete copy of the Trainer's export. The serving
folder, the Model and the PushedModel may be on any filesystem TensorFlow knows
(components.storage); on an object store the publish is a copy with
saved_model.pb last instead of a rename (components.pusher.publish).
"""
from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from absl import logging
from tfx import types
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.components.util import model_utils
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components import storage
from components.pusher import lineage, models_config, publish, records
from components.pusher.publish import version_path
from components.pusher.records import PushRecord

if TYPE_CHECKING:
    from components.pusher.evaluation import EvaluationSummary

DEFAULT_MODEL_NAME = "xception"
DEFAULT_KEEP_VERSIONS = 5

MODEL_KEY = "model"
MODEL_BLESSING_KEY = "model_blessing"
INFRA_BLESSING_KEY = "infra_blessing"
EVALUATION_KEY = "evaluation"
EXAMPLES_KEY = "examples"
PUSHED_MODEL_KEY = "pushed_model"
SERVING_DIR_KEY = "serving_dir"
MODEL_NAME_KEY = "model_name"
KEEP_VERSIONS_KEY = "keep_versions"

# Blessing artifacts name the model they judged (the Evaluator's property; the
# serving check writes the same one).
CURRENT_MODEL_KEY = "current_model"
# Written by the serving check on its InfraBlessing.
INFRA_REASON_KEY = "reason"
PUSH_RECORD_FILE = "push.json"


class PusherSpec(types.ComponentSpec):
    """Inputs and output of TFX's PusherSpec; the destination is a serving folder and a model name."""

    PARAMETERS = {
        SERVING_DIR_KEY: ExecutionParameter(type=str),
        MODEL_NAME_KEY: ExecutionParameter(type=str, optional=True),
        KEEP_VERSIONS_KEY: ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {
        MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        MODEL_BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing),
        INFRA_BLESSING_KEY: ChannelParameter(type=standard_artifacts.InfraBlessing),
        EVALUATION_KEY: ChannelParameter(type=standard_artifacts.ModelEvaluation, optional=True),
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {
        PUSHED_MODEL_KEY: ChannelParameter(type=standard_artifacts.PushedModel),
    }


class Executor(tfx_pusher_executor.Executor):
    """Pushes a blessed and infra-blessed model as a new TF Serving version."""

    def Do(self, input_dict: dict[str, list[types.Artifact]], output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        """Push `model` to `<serving_dir>/<model_name>/<version>/` if both blessings say so.

        Nothing is written under serving_dir when the model is not blessed, or
        when this Model artifact was pushed before and that version was rolled back.
        """
        self._log_startup(input_dict, output_dict, exec_properties)
        pushed_model = artifact_utils.get_single_instance(output_dict[PUSHED_MODEL_KEY])
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        serving_dir = exec_properties[SERVING_DIR_KEY]
        if storage.is_local(serving_dir):
            serving_dir = os.path.abspath(storage.local_path(serving_dir))
        model_name = exec_properties.get(MODEL_NAME_KEY) or DEFAULT_MODEL_NAME
        keep_versions = exec_properties.get(KEEP_VERSIONS_KEY) or DEFAULT_KEEP_VERSIONS
        model_base_path = storage.join(serving_dir, model_name)
        pushed_model.set_string_custom_property(lineage.MODEL_NAME, model_name)
        pushed_model.set_string_custom_property(lineage.MODEL_URI, model.uri)
        pushed_model.set_int_custom_property(lineage.MODEL_ID, model.id or 0)
        run_id = self._context.pipeline_run_id if self._context else None
        pipeline_name = self._context.pipeline_info.id if self._context and self._context.pipeline_info else None
        if run_id:
            pushed_model.set_string_custom_property(lineage.PIPELINE_RUN_ID, run_id)
        if pipeline_name:
            pushed_model.set_string_custom_property(lineage.PIPELINE_NAME, pipeline_name)

        evaluation = _single_or_none(input_dict.get(EVALUATION_KEY))
        summary = None
        if evaluation is not None:
            # Imported here: TFMA is heavy and only needed when an evaluation is wired in.
            from components.pusher.evaluation import summarize_evaluation

            summary = summarize_evaluation(evaluation.uri)
        problem = self._blessing_problem(input_dict, model, summary)
        if problem is None:
            problem = _rolled_back_problem(model_base_path, model.uri)
        if problem is not None:
            logging.warning("Pusher: not pushing model %s: %s", model.uri, problem)
            self._MarkNotPushed(pushed_model)
            pushed_model.set_string_custom_property(lineage.NOT_PUSHED_REASON, problem)
            return

        # Before reading the serving version's record: a push that died after
        # publishing left that record saying "staging".
        _log_recovery(model_base_path, publish.recover_interrupted_pushes(model_base_path))
        serving = publish.serving_version(model_base_path)
        serving_record = records.read_record(model_base_path, serving) if serving is not None else None
        if serving_record is not None and serving_record.model_uri == model.uri:
            # A re-run of the same Model artifact: it is already what TF Serving serves.
            logging.info("Pusher: model %s is already serving as version %d; nothing copied.", model.uri, serving)
            record = serving_record
        else:
            spans, record_counts = lineage.trained_on(input_dict.get(EXAMPLES_KEY) or [])
            record = PushRecord(
                version=0,
                model_name=model_name,
                model_uri=model.uri,
                model_id=model.id or None,
                pipeline_name=pipeline_name,
                pipeline_run_id=run_id,
                source_path=self.GetModelPath(input_dict),
                eval_metrics=summary.metrics if summary else {},
                per_signer=summary.per_signer if summary else {},
                spans=spans,
                record_counts=record_counts,
            )
            result = publish.push_model(record.source_path, model_base_path, record)
            _log_recovery(model_base_path, result)
            logging.info("Pusher: model %s pushed as %s.", model.uri, result.path)
        models_config.write_models_config(
            storage.join(serving_dir, models_config.MODELS_CONFIG_FILE), model_name, model_base_path)
        self._retain(serving_dir, model_name, keep_versions)

        destination = version_path(model_base_path, record.version)
        self._MarkPushed(pushed_model, pushed_destination=destination, pushed_version=str(record.version))
        pushed_model.set_int_custom_property(lineage.PUSHED_AT, int(record.pushed_at or record.adopted_at or time.time()))
        if record.eval_metrics:
            pushed_model.set_string_custom_property(lineage.EVAL_METRICS, json.dumps(record.eval_metrics, sort_keys=True))
        # The PushedModel's own folder keeps the push record, not a second copy of the model.
        storage.write_atomic(storage.join(pushed_model.uri, PUSH_RECORD_FILE), record.to_json())

    def _blessing_problem(self, input_dict: dict[str, list[types.Artifact]], model: types.Artifact,
                          summary: EvaluationSummary | None) -> str | None:
        """Why the model may not be pushed (which blessing failed, and the Evaluator's reasons), or None."""
        model_blessing = artifact_utils.get_single_instance(input_dict[MODEL_BLESSING_KEY])
        infra_blessing = artifact_utils.get_single_instance(input_dict[INFRA_BLESSING_KEY])
        for name, blessing in ((MODEL_BLESSING_KEY, model_blessing), (INFRA_BLESSING_KEY, infra_blessing)):
            judged = blessing.get_string_custom_property(CURRENT_MODEL_KEY)
            if judged and judged != model.uri:
                return f"not blessed: {name} judged {judged}, not this model"
        if not model_utils.is_model_blessed(model_blessing):
            reason = "; ".join(summary.failures) if summary and summary.failures else f"see {model_blessing.uri}"
            return f"not blessed: model_blessing (Evaluator): {reason}"
        if not model_utils.is_infra_validated(infra_blessing):
            reason = infra_blessing.get_string_custom_property(INFRA_REASON_KEY) or f"see {infra_blessing.uri}"
            return f"not blessed: infra_blessing (serving check): {reason}"
        return None

    def _retain(self, serving_dir: str, model_name: str, keep_versions: int) -> None:
        model_base_path = storage.join(serving_dir, model_name)
        try:
            pinned = records.read_pins(model_base_path) | models_config.labelled_versions(
                storage.join(serving_dir, models_config.MODELS_CONFIG_FILE), model_name)
        except ValueError as err:
            # A pin file we cannot read must not turn into deleted versions.
            logging.error("Pusher: retention skipped: %s", err)
            return
        removed = publish.apply_retention(model_base_path, keep_versions, pinned)
        if removed:
            logging.info("Pusher: retention removed versions %s (keeping %d, pinned %s).",
                         removed, keep_versions, sorted(pinned) or "none")


def _log_recovery(model_base_path: str, recovery: publish.Recovery | publish.PushResult) -> None:
    for name in recovery.stale_removed:
        logging.info("Pusher: removed %s left by a push or retention that died.", storage.join(model_base_path, name))
    for version in recovery.adopted:
        logging.warning("Pusher: version %d was published by a push that died before recording it; "
                        "it is complete and served, and is now recorded as live.", version)


def _rolled_back_problem(model_base_path: str, model_uri: str) -> str | None:
    found = records.find_rolled_back_push(model_base_path, model_uri)
    if found is None:
        return None
    version, note = found
    why = f" ({note.reason})" if note and note.reason else ""
    return f"refused: this model was pushed as version {version}, which was rolled back{why}; it is not pushed again"


def _single_or_none(artifacts: list[types.Artifact] | None) -> types.Artifact | None:
    return artifact_utils.get_single_instance(artifacts) if artifacts else None


class Pusher(base_component.BaseComponent):
    """Pushes a blessed, infra-blessed model to `<serving_dir>/<model_name>/<version>/`.

    Example:
        pusher = Pusher(
            model=trainer.outputs["model"],
            model_blessing=evaluator.outputs["blessing"],
            infra_blessing=serving_check.outputs["infra_blessing"],
            evaluation=evaluator.outputs["evaluation"],
            examples=trainer_examples,  # what the Trainer read: its spans and counts go in the push record
            serving_dir="serving_model",
        )
    """

    SPEC_CLASS = PusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(
        self,
        model: types.BaseChannel,
        model_blessing: types.BaseChannel,
        infra_blessing: types.BaseChannel,
        serving_dir: str,
        model_name: str = DEFAULT_MODEL_NAME,
        keep_versions: int = DEFAULT_KEEP_VERSIONS,
        evaluation: types.BaseChannel | None = None,
        examples: types.BaseChannel | None = None,
    ):
        """Args:
            model: the Trainer's Model.
            model_blessing: the Evaluator's ModelBlessing (required: nothing unvalidated is pushed).
            infra_blessing: the serving check's InfraBlessing (required, same reason).
            serving_dir: folder TF Serving watches; the model goes to <serving_dir>/<model_name>/<version>.
            model_name: TF Serving model name (the folder under serving_dir and the models.config entry).
            keep_versions: live versions kept by retention (the serving and pinned ones are always kept).
            evaluation: the Evaluator's ModelEvaluation, for the reason a model was not
                blessed and for the overall and per-signer metrics recorded with a push.
            examples: the Examples the Trainer read, for the spans and record counts
                recorded with a push.
        """
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1, got {keep_versions}")
        spec = PusherSpec(
            model=model,
            model_blessing=model_blessing,
            infra_blessing=infra_blessing,
            evaluation=evaluation,
            examples=examples,
            serving_dir=str(serving_dir),
            model_name=model_name,
            keep_versions=keep_versions,
            pushed_model=types.Channel(type=standard_artifacts.PushedModel),
        )
        super().__init__(spec=spec)
