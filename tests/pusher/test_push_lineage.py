"""What the Pusher records with each version: run, spans and record counts, eval metrics, per-signer accuracy.

From a real Evaluator output (TFX's Evaluator executor with the gate's EvalConfig,
tests/pusher/evaluations.py) and from TFMA metrics files written with TFMA's own
protos, for the cases one Evaluator run does not show (a baseline's slices, an
evaluation from before the per-signer bound).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from google.protobuf import json_format
from tensorflow_model_analysis.proto import config_pb2, metrics_for_slice_pb2

from components.pusher import records
from components.pusher.component import PUSH_RECORD_FILE
from components.pusher.evaluation import summarize_evaluation
from serving.contract import (
    ACCURACY_METRIC,
    EXAMPLE_COUNT_METRIC,
    LABEL_FEATURE,
    SIGNER_BOUND_METRIC,
    SIGNER_CORRECT_METRIC,
)
from serving.layout import list_versions
from tests.pusher.conftest import PipelineOutputs
from tests.pusher.evaluations import (
    EXPECTED_ACCURACY,
    EXPECTED_PER_SIGNER,
    EXPECTED_RECORD_COUNTS,
    SPANS,
    Evaluated,
    evaluate,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Evaluated:
    return evaluate(tmp_path_factory.mktemp("evaluated"))


def tree(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def test_the_push_record_holds_the_run_the_data_and_the_evaluators_figures(tmp_path, evaluated):
    outputs = PipelineOutputs(tmp_path, tiny_model=None)
    pushed = outputs.push(evaluated.model, evaluation=evaluated.evaluation, examples=evaluated.examples,
                          run_id="2026-12-02T10:00:00")

    base = outputs.serving_dir / "xception"
    [version] = list_versions(base)
    record = records.read_record(base, version)
    assert record.state == records.LIVE and record.pipeline_run_id == "2026-12-02T10:00:00"
    assert record.spans == list(SPANS)
    assert record.record_counts == EXPECTED_RECORD_COUNTS
    # The overall slice's bound and its count mean nothing for the whole eval set: left out.
    assert record.eval_metrics == {ACCURACY_METRIC: pytest.approx(EXPECTED_ACCURACY), EXAMPLE_COUNT_METRIC: 18}
    assert record.per_signer == EXPECTED_PER_SIGNER
    # The same figures as TFMA's own loader reads from the Evaluator's output.
    for signer, metrics in evaluated.result.per_signer().items():
        assert record.per_signer[signer] == {"accuracy": metrics[ACCURACY_METRIC],
                                             "correct": metrics[SIGNER_CORRECT_METRIC],
                                             "total": metrics[EXAMPLE_COUNT_METRIC]}
    assert SIGNER_BOUND_METRIC in evaluated.result.overall()  # there to be left out

    # Nothing is added inside the version folder: TF Serving loads the Trainer's export as it is.
    assert tree(base / str(version)) == tree(Path(evaluated.model.uri) / "Format-Serving")
    # The PushedModel's own copy of the record says the same.
    assert json.loads((Path(pushed.uri) / PUSH_RECORD_FILE).read_text()) == json.loads(record.to_json())
    assert json.loads(pushed.get_string_custom_property("eval_metrics")) == record.eval_metrics


def test_a_push_without_examples_or_evaluation_records_no_lineage(tmp_path, evaluated):
    outputs = PipelineOutputs(tmp_path, tiny_model=None)
    outputs.push(evaluated.model)

    base = outputs.serving_dir / "xception"
    record = records.read_record(base, list_versions(base)[0])
    assert (record.spans, record.record_counts, record.eval_metrics, record.per_signer) == ([], {}, {}, {})


def _metrics_file(root: Path, slices: dict[str, dict[str, dict[str, float]]]) -> Path:
    """A ModelEvaluation folder in TFMA's formats: slice ("" overall, else a label) -> model -> metric -> value."""
    root.mkdir(parents=True)
    eval_run = config_pb2.EvalRun(eval_config=config_pb2.EvalConfig(model_specs=[
        config_pb2.ModelSpec(name="candidate"), config_pb2.ModelSpec(name="baseline", is_baseline=True)]),
        version=tfma.__version__)
    (root / "eval_config.json").write_text(json_format.MessageToJson(eval_run))
    with tf.io.TFRecordWriter(str(root / "metrics.tfrecord")) as writer:
        for label, models in slices.items():
            sliced = metrics_for_slice_pb2.MetricsForSlice()
            if label:
                sliced.slice_key.single_slice_keys.add(column=LABEL_FEATURE, bytes_value=label.encode())
            for model_name, metrics in models.items():
                for name, value in metrics.items():
                    item = sliced.metric_keys_and_values.add()
                    item.key.name, item.key.model_name = name, model_name
                    item.value.double_value.value = value
            writer.write(sliced.SerializeToString())
    return root


def test_only_the_candidates_slices_are_recorded_and_old_evaluations_get_a_correct_count(tmp_path):
    """With a baseline (the version serving now), each slice holds both models' metrics: the candidate's count.
    An evaluation from before the per-signer bound has no correct count: accuracy x total stands in."""
    figures = {ACCURACY_METRIC: 0.75, EXAMPLE_COUNT_METRIC: 4.0}
    uri = _metrics_file(tmp_path / "eval", {
        "": {"candidate": {ACCURACY_METRIC: 0.9, EXAMPLE_COUNT_METRIC: 10.0},
             "baseline": {ACCURACY_METRIC: 0.8, EXAMPLE_COUNT_METRIC: 10.0}},
        "signer_new": {"candidate": {ACCURACY_METRIC: 1.0, EXAMPLE_COUNT_METRIC: 6.0, SIGNER_CORRECT_METRIC: 6.0},
                       "baseline": {ACCURACY_METRIC: 0.0, EXAMPLE_COUNT_METRIC: 6.0, SIGNER_CORRECT_METRIC: 0.0}},
        "signer_old": {"candidate": figures, "baseline": {ACCURACY_METRIC: 0.5, EXAMPLE_COUNT_METRIC: 4.0}},
        "signer_no_count": {"candidate": {ACCURACY_METRIC: 0.5}},
    })

    summary = summarize_evaluation(uri)

    assert summary.metrics == {ACCURACY_METRIC: 0.9, EXAMPLE_COUNT_METRIC: 10.0}
    assert summary.per_signer == {"signer_new": {"accuracy": 1.0, "correct": 6, "total": 6},
                                  "signer_old": {"accuracy": 0.75, "correct": 3, "total": 4}}
