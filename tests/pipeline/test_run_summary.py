"""What the run summary says about the gate and the serving check, from the artifacts' own properties.

The artifacts carry the properties the Evaluator, ServingCheck and Pusher write
(ServingCheck's skip of a model the Evaluator did not bless, when a pipeline gives it that verdict, included); the
per-signer lines are read from a real evaluation in test_signer_gate.py.
"""
from __future__ import annotations

import json

import pytest
from ml_metadata.proto import metadata_store_pb2

from components.serving_check.checks import SKIPPED_NOT_BLESSED
from pipeline.training_server.run_summary import CHECK_NOT_RUN, RunSummary, SignerResult, read_outputs


def _artifact(**properties) -> metadata_store_pb2.Artifact:
    artifact = metadata_store_pb2.Artifact()
    for name, value in properties.items():
        if isinstance(value, int):
            artifact.custom_properties[name].int_value = value
        else:
            artifact.custom_properties[name].string_value = value
    return artifact


def _summary(blessed: int, infra_blessed: int, infra_reason: str = "", pushed: int = 0) -> RunSummary:
    pushed_model = _artifact(pushed=pushed, **({"pushed_version": "7", "pushed_destination": "/s/xception/7"}
                                                if pushed else {}))
    summary = RunSummary(run_id="test", outputs={
        "Evaluator.blessing": [_artifact(blessed=blessed)],
        "ServingCheck.infra_blessing": [_artifact(blessed=infra_blessed, reason=infra_reason)],
        "Pusher.pushed_model": [pushed_model],
    })
    read_outputs(summary)
    return summary


def test_a_serving_check_given_the_evaluators_refusal_is_reported_as_not_run():
    # What ServingCheck writes when a pipeline gives it the Evaluator's blessing and the model is not blessed.
    summary = _summary(blessed=0, infra_blessed=0, infra_reason=SKIPPED_NOT_BLESSED)
    lines = summary.lines()
    assert "serving check: not run" in lines
    assert not [line for line in lines if "skipped" in line or "failed" in line]
    assert summary.result == "not_blessed"
    data = summary.to_json()
    assert (data["serving_check"], data["infra_blessed"], data["infra_reason"]) == (CHECK_NOT_RUN, None, "")


@pytest.mark.parametrize("infra_blessed, line", [
    (1, "serving check: passed"),
    (0, "serving check: failed: tf-serving-session: failed to load"),
])
def test_a_model_the_evaluator_refused_still_gets_the_verdict_of_the_check_that_ran_beside_it(infra_blessed, line):
    summary = _summary(blessed=0, infra_blessed=infra_blessed,
                       infra_reason="" if infra_blessed else "tf-serving-session: failed to load")
    assert line in summary.lines() and summary.result == "not_blessed"
    assert summary.to_json()["infra_blessed"] == bool(infra_blessed)


@pytest.mark.parametrize(
    "infra_blessed, pushed, line, result",
    [
        (1, 1, "serving check: passed", "pushed"),
        (0, 0, "serving check: failed: tf-serving-session: failed to load", "serving_check_failed"),
    ],
)
def test_a_blessed_model_gets_the_serving_checks_verdict(infra_blessed, pushed, line, result):
    summary = _summary(blessed=1, infra_blessed=infra_blessed, pushed=pushed,
                       infra_reason="" if infra_blessed else "tf-serving-session: failed to load")
    assert line in summary.lines()
    assert summary.result == result
    assert summary.to_json()["serving_check"] == line.split(": ")[1]


def test_the_weakest_signers_are_the_least_accurate_with_more_evidence_first():
    summary = RunSummary(run_id="test", min_signer_examples=3, signers=[
        SignerResult("a", 9, 10, 0.9, 0.98), SignerResult("b", 1, 2, 0.5, 1.0, judged=False),
        SignerResult("c", 2, 4, 0.5, 0.85), SignerResult("d", 4, 4, 1.0, 1.0),
        SignerResult("e", 0, 1, 0.0, 1.0, judged=False),
    ])
    assert [s.signer for s in summary.weakest_signers] == ["e", "c", "b"]
    assert "weakest signers: e 0/1 (not judged), c 2/4 (upper bound 0.85), b 1/2 (not judged)" in summary.lines()
    assert "too few eval examples to judge (< 3): b 1/2, e 0/1" in summary.lines()


def test_the_summary_says_how_the_backbone_started_from_the_trainers_report(tmp_path):
    # What components/trainer/report.py writes beside the model (report/summary.json), trimmed.
    report = tmp_path / "model_run" / "report"
    report.mkdir(parents=True)
    (report / "summary.json").write_text(json.dumps({
        "init": "imported", "init_weights_sha256": "ab" * 32, "schedule": "two_phase", "best_epoch": None,
        "eval_accuracy": 0.9643, "num_train_examples": 479, "num_eval_examples": 112, "train_seconds": 405.2,
        "history": [{"epoch": 1}]}))
    model_run = metadata_store_pb2.Artifact(uri=str(tmp_path / "model_run"))
    summary = RunSummary(run_id="test", outputs={"Trainer.model_run": [model_run]})
    read_outputs(summary)
    assert ("trained: init imported (weights sha256 abababababab...), schedule two_phase, 479 train examples, "
            "eval accuracy 0.9643") in summary.lines()
    assert summary.to_json()["training"]["init"] == "imported"
    assert "history" not in summary.to_json()["training"]


def test_the_summary_says_which_cycle_ran_and_why(tmp_path):
    report = tmp_path / "model_run" / "report"
    report.mkdir(parents=True)
    (report / "summary.json").write_text(json.dumps({
        "cycle": {"kind": "fast", "reason": "same backbone, new head", "drift": 0.23},
        "embeddings": {"cached": 246, "embedded": 5, "seconds": 2.1},
        "init": "warm_start", "schedule": "head_on_cached_embeddings", "eval_accuracy": 0.9818,
        "num_train_examples": 251}))
    summary = RunSummary(run_id="test", outputs={"Trainer.model_run": [
        metadata_store_pb2.Artifact(uri=str(tmp_path / "model_run"))]})
    read_outputs(summary)
    lines = summary.lines()
    assert ("cycle: fast (same backbone, new head), embedding drift 0.23; train embeddings 246 cached, 5 computed"
            in lines)
    assert lines.index(next(line for line in lines if line.startswith("cycle:"))) + 1 == lines.index(
        next(line for line in lines if line.startswith("trained:")))
    # What the training server reads to run a full cycle after a fast one the gate refused.
    assert summary.to_json()["training"]["cycle"]["kind"] == "fast"


def test_the_ingest_line_counts_records_in_order_and_says_how_many_examples_are_forgeries():
    summary = RunSummary(run_id="test", outputs={})
    summary.ingest = {"span": 3, "records_read": 12, "examples": 9, "duplicates": 1, "unlabelled": 1,
                      "quarantined": 1, "forgeries": 2, "splits": {"train": 7, "eval": 2}}
    assert summary.lines()[1] == ("ingested span 3: 12 records read, 9 examples (2 forgeries), 1 duplicates, "
                                  "1 unlabelled, 1 quarantined (7 train, 2 eval)")
    summary.ingest["forgeries"] = 0
    assert "forgeries" not in summary.lines()[1]
