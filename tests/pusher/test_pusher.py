"""Pusher executor on real artifacts: TF Serving's layout, blessing gates, versioning, retention, models.config."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import tensorflow as tf
from google.protobuf import json_format, text_format
from tensorflow_model_analysis.proto import config_pb2, metrics_for_slice_pb2, validation_result_pb2
from tensorflow_serving.config import model_server_config_pb2
from tfx.types import standard_artifacts

from components.pusher import publish, records
from components.pusher.records import PushRecord
from pipeline.training_server.rollback import roll_back
from serving.layout import LABELS_FILE, SAVED_MODEL_FILE, WARMUP_FILE, list_versions

pytestmark = pytest.mark.timeout(120)


def tree(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def parse_models_config(path: Path) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())


def model_evaluation(root: Path, validation_ok: bool, accuracy: float) -> standard_artifacts.ModelEvaluation:
    """A ModelEvaluation folder in TFMA's own formats: eval_config.json, metrics and validations TFRecords."""
    root.mkdir(parents=True)
    eval_run = config_pb2.EvalRun(
        eval_config=config_pb2.EvalConfig(model_specs=[
            config_pb2.ModelSpec(name="candidate"), config_pb2.ModelSpec(name="baseline", is_baseline=True)]),
        version="0.47.0",
    )
    (root / "eval_config.json").write_text(json_format.MessageToJson(eval_run))
    metrics = metrics_for_slice_pb2.MetricsForSlice()
    for model_name, value in (("candidate", accuracy), ("baseline", 0.9)):
        item = metrics.metric_keys_and_values.add()
        item.key.name = "sparse_categorical_accuracy"
        item.key.model_name = model_name
        item.value.double_value.value = value
    with tf.io.TFRecordWriter(str(root / "metrics.tfrecord")) as writer:
        writer.write(metrics.SerializeToString())
    validation = validation_result_pb2.ValidationResult(validation_ok=validation_ok)
    if not validation_ok:
        failure = validation.metric_validations_per_slice.add().failures.add()
        failure.metric_key.name = "sparse_categorical_accuracy"
        failure.metric_key.model_name = "candidate"
        failure.metric_value.double_value.value = accuracy
        failure.metric_threshold.value_threshold.lower_bound.value = 0.8
    with tf.io.TFRecordWriter(str(root / "validations.tfrecord")) as writer:
        writer.write(validation.SerializeToString())
    evaluation = standard_artifacts.ModelEvaluation()
    evaluation.uri = str(root)
    return evaluation


def test_push_writes_a_tf_serving_version_that_loads(pipeline, tiny_model):
    model = pipeline.model()
    pushed = pipeline.push(model, evaluation=model_evaluation(pipeline.root / "eval", True, 0.93))

    base = pipeline.serving_dir / "xception"
    [version] = list_versions(base)
    folder = base / str(version)
    assert tree(folder) == tree(tiny_model)
    for part in (SAVED_MODEL_FILE, "variables/variables.index", str(LABELS_FILE), str(WARMUP_FILE)):
        assert (folder / part).is_file()
    loaded = tf.saved_model.load(str(folder))
    assert set(loaded.signatures) == {"serving_default", "predict_label", "classify"}
    # Nothing but the version is visible to a server; no staging left behind.
    assert sorted(p.name for p in base.iterdir()) == sorted([str(version), ".pushes"])

    assert pushed.get_int_custom_property("pushed") == 1
    assert pushed.get_string_custom_property("pushed_version") == str(version)
    assert pushed.get_string_custom_property("pushed_destination") == str(folder)
    assert pushed.get_string_custom_property("model_name") == "xception"
    assert pushed.get_string_custom_property("model_uri") == model.uri
    assert json.loads(pushed.get_string_custom_property("eval_metrics")) == {"sparse_categorical_accuracy": 0.93}
    record = records.read_record(base, version)
    assert (record.state, record.model_uri) == (records.LIVE, model.uri)

    config = parse_models_config(pipeline.serving_dir / "models.config")
    [entry] = config.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == ("xception", str(base.resolve()), "tensorflow")
    assert entry.model_version_policy.latest.num_versions == 1


@pytest.mark.parametrize(
    ("model_blessed", "infra_blessed", "expected"),
    [
        (False, True, "not blessed: model_blessing (Evaluator): sparse_categorical_accuracy=0.61 on the overall slice"),
        (True, False, "not blessed: infra_blessing (serving check): tf-serving-session: failed to load"),
    ],
)
def test_a_model_that_is_not_blessed_writes_nothing(pipeline, caplog, model_blessed, infra_blessed, expected):
    evaluation = model_evaluation(pipeline.root / "eval", model_blessed, 0.61)
    with caplog.at_level(logging.WARNING):
        pushed = pipeline.push(pipeline.model(), model_blessed=model_blessed, infra_blessed=infra_blessed,
                               infra_reason="tf-serving-session: failed to load", evaluation=evaluation)

    assert not pipeline.serving_dir.exists()
    assert pushed.get_int_custom_property("pushed") == 0
    assert expected in caplog.text
    assert pushed.get_string_custom_property("not_pushed_reason").startswith(expected)


def test_a_blessing_for_another_model_is_refused(pipeline):
    model, other = pipeline.model(), pipeline.model()
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(pipeline.root / "pushed")
    from components.pusher.component import Executor

    Executor().Do(
        {
            "model": [model],
            "model_blessing": [pipeline.blessing(standard_artifacts.ModelBlessing, other, True)],
            "infra_blessing": [pipeline.blessing(standard_artifacts.InfraBlessing, model, True)],
        },
        {"pushed_model": [pushed]},
        {"serving_dir": str(pipeline.serving_dir)},
    )

    assert pushed.get_int_custom_property("pushed") == 0
    assert "model_blessing judged" in pushed.get_string_custom_property("not_pushed_reason")
    assert not pipeline.serving_dir.exists()


class SettableClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_versions_strictly_increase_even_when_the_clock_goes_back(tmp_path, tiny_model):
    base = tmp_path / "xception"
    clock = SettableClock(1_000.7)

    def push(name: str, now: float) -> int:
        clock.now = now
        return publish.push_model(tiny_model, base, PushRecord(0, "xception", name), clock=clock).version

    assert push("a", 1_000.7) == 1_000
    assert push("b", 500.0) == 1_001  # the clock went back
    # A version that left (rollback) or was deleted (retention) still counts: its number is never reused.
    roll_back(base)
    assert push("c", 900.0) == 1_002
    assert publish.apply_retention(base, keep=1) == [1_000]
    assert push("d", 2_000.2) == 2_000
    assert push("e", 1_000.0) == 2_001
    assert list_versions(base) == [1_002, 2_000, 2_001]
    assert records.rolled_back_versions(base) == [1_001]
    assert records.recorded_versions(base) == [1_000, 1_001, 1_002, 2_000, 2_001]


def test_retention_keeps_the_last_n_and_never_the_serving_or_pinned_ones(pipeline):
    base = pipeline.serving_dir / "xception"
    pushed = [int(pipeline.push(pipeline.model(), keep_versions=2).get_string_custom_property("pushed_version"))
              for _ in range(2)]
    # Pin the oldest by file and the next one through a TF Serving version label an operator added.
    (base / ".pinned").write_text(f"# keep for the audit\n{pushed[0]}\n")
    config_path = pipeline.serving_dir / "models.config"
    config = parse_models_config(config_path)
    config.model_config_list.config[0].version_labels["stable"] = pushed[1]
    config_path.write_text(text_format.MessageToString(config))

    pushed += [int(pipeline.push(pipeline.model(), keep_versions=2).get_string_custom_property("pushed_version"))
               for _ in range(3)]

    assert list_versions(base) == [pushed[0], pushed[1], pushed[3], pushed[4]]
    assert records.read_record(base, pushed[2]).removed_at is not None
    # The operator's label survives the Pusher rewriting models.config.
    assert dict(parse_models_config(config_path).model_config_list.config[0].version_labels) == {"stable": pushed[1]}

    # keep=1 keeps only the serving one (plus pins), and never deletes what serves.
    (base / ".pinned").unlink()
    config.model_config_list.config[0].ClearField("version_labels")
    config_path.write_text(text_format.MessageToString(config))
    assert publish.apply_retention(base, keep=1) == [pushed[0], pushed[1], pushed[3]]
    assert list_versions(base) == [pushed[4]]


def test_an_unreadable_pin_file_skips_retention_instead_of_deleting(pipeline, caplog):
    base = pipeline.serving_dir / "xception"
    pipeline.push(pipeline.model(), keep_versions=1)
    (base / ".pinned").write_text("17OO\n")
    with caplog.at_level(logging.ERROR):
        pipeline.push(pipeline.model(), keep_versions=1)

    assert len(list_versions(base)) == 2
    assert "retention skipped" in caplog.text and "'17OO' is not a version number" in caplog.text


def test_models_config_keeps_other_models(pipeline):
    config_path = pipeline.serving_dir / "models.config"
    config_path.parent.mkdir(parents=True)
    config_path.write_text('model_config_list { config { name: "other" base_path: "/models/other" model_platform: "tensorflow" } }\n')

    pipeline.push(pipeline.model(), model_name="signatures")

    entries = {entry.name: entry for entry in parse_models_config(config_path).model_config_list.config}
    assert set(entries) == {"other", "signatures"}
    assert entries["other"].base_path == "/models/other"
    assert entries["signatures"].base_path == str((pipeline.serving_dir / "signatures").resolve())


def test_a_rolled_back_model_is_never_pushed_again(pipeline, caplog):
    base = pipeline.serving_dir / "xception"
    first, bad = pipeline.model(), pipeline.model()
    pipeline.push(first)
    bad_version = int(pipeline.push(bad).get_string_custom_property("pushed_version"))
    roll_back(base, reason="wrong signer on the demo set")

    with caplog.at_level(logging.WARNING):
        again = pipeline.push(bad)

    assert again.get_int_custom_property("pushed") == 0
    reason = again.get_string_custom_property("not_pushed_reason")
    assert f"pushed as version {bad_version}, which was rolled back (wrong signer on the demo set)" in reason
    assert reason in caplog.text
    assert len(list_versions(base)) == 1
    # Another model is pushed as usual, above the rolled-back number.
    assert int(pipeline.push(pipeline.model()).get_string_custom_property("pushed_version")) > bad_version


def test_pushing_the_model_that_already_serves_adds_no_version(pipeline):
    model = pipeline.model()
    first = pipeline.push(model)
    second = pipeline.push(model)

    assert second.get_int_custom_property("pushed") == 1
    assert second.get_string_custom_property("pushed_version") == first.get_string_custom_property("pushed_version")
    assert len(list_versions(pipeline.serving_dir / "xception")) == 1
