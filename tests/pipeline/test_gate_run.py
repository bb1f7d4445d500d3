"""The AnomaliesGate stops a real run before the Trainer when the data breaks the schema.

The training server (`signflow schedule --once`) runs the real pipeline at a
small size on an inbox whose images are PNGs, against a schema that admits only
the other formats: ExampleValidator records the anomaly, the gate fails the run,
and the Trainer, the Evaluator and the Pusher never run. The trainer settings are
tiny so that, were the gate not in the Trainer's way, the Trainer would run (and
be seen) within the test's time.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ml_metadata.proto import metadata_store_pb2

from components.anomalies_gate import read_anomalies
from components.trainer.config import TrainerConfig
from pipeline.definition.configs import load_config
from pipeline.training_server.schedule import FAILED, read_status, status_path
from pipeline.training_server.run_summary import open_store, summarize
from serving.layout import list_versions
from tests.fixtures.tiny_model import make_image_bytes

# One real pipeline run in the first test's setup: up to a tiny training cycle had the gate let
# the Trainer through (minutes on 2 loaded cores), so more than the suite's 300 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
COMMITTED_SCHEMA = REPO / "components" / "schema" / "schema.pbtxt"
TINY_TRAINER = TrainerConfig(
    image_height=71, image_width=142, batch_size=8, weights="none",
    scratch_epochs=2, warmup_epochs=1, steps_per_epoch=1, bn_recalibration_batches=1,
    head_epochs=1, fine_tune_epochs=1, shuffle_buffer=16,
)
SIGNERS, PER_SIGNER = 3, 8


def _schema_without_png(path: Path) -> Path:
    """The committed schema with PNG taken out of the `format` domain: every PNG in a span is an anomaly."""
    text = COMMITTED_SCHEMA.read_text()
    png = '    value: "PNG"\n'
    assert text.count(png) == 1, "the committed schema's format domain changed; update this test"
    path.write_text(text.replace(png, ""))
    return path


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    inbox = root / "inbox"
    inbox.mkdir()
    lines = [json.dumps({"image": {"b64": base64.b64encode(make_image_bytes("PNG", seed=i)).decode()},
                         "label": f"signer_{i % SIGNERS:02d}"}) for i in range(SIGNERS * PER_SIGNER)]
    (inbox / "batch.jsonl").write_text("\n".join(lines) + "\n")
    config_file = root / "signflow.json"
    config_file.write_text(json.dumps({
        "pipeline_root": str(root / "pipeline_root"), "inbox_dir": str(inbox), "sample_dir": None,
        "serving_dir": str(root / "serving_model"), "schema_path": str(_schema_without_png(root / "schema.pbtxt")),
        "trainer": TINY_TRAINER.to_dict(),
        "gate": {"min_accuracy": 0.0, "min_signer_accuracy": 0.0, "max_accuracy_drop": 1.0},
        "delivery": {"check_requests": 4},
    }))
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "schedule", "--once", "--config", str(config_file)],
                          cwd=REPO, capture_output=True, text=True, timeout=840,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return load_config(config_file), done


def test_the_run_fails_at_the_gate_with_the_anomaly_as_its_reason(gated_run):
    config, done = gated_run
    assert done.returncode == 1, done.stderr[-5000:]  # --once: the cycle failed
    last = read_status(status_path(config))["last_cycle"]
    assert last["result"] == FAILED and last["exit_code"] == 1
    # The reason is the one `signflow run` wrote to its summary, not the scheduler's guess.
    assert last["error"].startswith("DataAnomaliesError: data anomalies, not training on this data: "), last["error"]
    assert "train/format" in last["error"] and "eval/format" in last["error"]
    assert "signflow run failed: DataAnomaliesError" in done.stderr


def test_the_gate_stopped_it_before_the_trainer(gated_run):
    config, _ = gated_run
    states = summarize(config.metadata_path).states
    # The data really went through ingestion and validation...
    for node in ("SignatureExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator"):
        assert states.get(node) == "COMPLETE", states
    # ...the gate is what failed, and nothing after it ran.
    assert states.get("AnomaliesGate") == "FAILED", states
    assert not {"Trainer", "Evaluator", "ServingCheck", "Pusher"} & set(states), states
    store = open_store(config.metadata_path)
    assert store.get_artifacts_by_type("Model") == []
    assert store.get_artifacts_by_type("PushedModel") == []


def test_the_anomaly_is_the_schema_violation(gated_run):
    config, _ = gated_run
    store = open_store(config.metadata_path)
    [anomalies] = [a for a in store.get_artifacts_by_type("ExampleAnomalies")
                   if a.state == metadata_store_pb2.Artifact.LIVE]
    for split in ("train", "eval"):
        assert set(read_anomalies(anomalies.uri, split)) == {"format"}, split


def test_nothing_was_pushed(gated_run):
    config, _ = gated_run
    assert not config.model_base_path.exists() or list_versions(config.model_base_path) == []
    assert read_status(status_path(config))["last_push"] is None
