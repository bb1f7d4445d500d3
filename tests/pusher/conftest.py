"""Real artifacts for the Pusher: Model artifacts holding the tiny exported SavedModel, blessings, a serving dir."""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest

from tfx.types import standard_artifacts

from components.pusher.component import Executor


class PipelineOutputs:
    """Makes the artifacts upstream components would hand the Pusher, and runs the Pusher's executor."""

    def __init__(self, root: Path, tiny_model: Path):
        self.root = root
        self.tiny_model = tiny_model
        self.serving_dir = root / "serving_model"
        self._ids = itertools.count(1)

    def model(self) -> standard_artifacts.Model:
        """A new Trainer output: its own uri, the SavedModel under Format-Serving."""
        model = standard_artifacts.Model()
        model.uri = str(self.root / "Trainer" / "model" / str(next(self._ids)))
        shutil.copytree(self.tiny_model, Path(model.uri) / "Format-Serving")
        return model

    def blessing(self, kind, model: standard_artifacts.Model, blessed: bool, **properties):
        artifact = kind()
        artifact.uri = str(self.root / kind.TYPE_NAME / str(next(self._ids)))
        artifact.set_int_custom_property("blessed", int(blessed))
        artifact.set_string_custom_property("current_model", model.uri)
        for key, value in properties.items():
            artifact.set_string_custom_property(key, value)
        return artifact

    def push(self, model, model_blessed=True, infra_blessed=True, infra_reason="", evaluation=None, examples=None,
             run_id=None, **exec_properties):
        """Run the Pusher executor (in pipeline run `run_id`, if given); returns the PushedModel artifact."""
        pushed = standard_artifacts.PushedModel()
        pushed.uri = str(self.root / "Pusher" / "pushed_model" / str(next(self._ids)))
        inputs = {
            "model": [model],
            "model_blessing": [self.blessing(standard_artifacts.ModelBlessing, model, model_blessed)],
            "infra_blessing": [self.blessing(standard_artifacts.InfraBlessing, model, infra_blessed, reason=infra_reason)],
        }
        if evaluation is not None:
            inputs["evaluation"] = [evaluation]
        if examples is not None:
            inputs["examples"] = list(examples)
        executor = Executor(Executor.Context(pipeline_run_id=run_id)) if run_id else Executor()
        executor.Do(inputs, {"pushed_model": [pushed]}, {"serving_dir": str(self.serving_dir), **exec_properties})
        return pushed


@pytest.fixture
def pipeline(tmp_path, tiny_model) -> PipelineOutputs:
    return PipelineOutputs(tmp_path, tiny_model)
