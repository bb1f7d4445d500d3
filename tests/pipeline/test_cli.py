"""`python -m pipeline.cli`: each subcommand reaches its module, and `signflow run` fails loudly and on record.

Commands run as the user runs them, in a child process, except the cheap
per-subcommand help check. `signflow run`'s failures here happen before TFX
starts; tests/pipeline/test_gate_run.py fails a real run inside the pipeline.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import SUBCOMMANDS, main as signflow

REPO = Path(__file__).resolve().parents[2]
IMAGE = "europe-west4-docker.pkg.dev/proj/signflow/training:7"


def _signflow(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_help_lists_every_subcommand_and_unknown_ones_are_refused():
    done = _signflow("--help")
    assert done.returncode == 0
    for name in SUBCOMMANDS:
        assert name in done.stdout, name
    done = _signflow("retrain")
    assert done.returncode == 2 and "invalid choice: 'retrain'" in done.stderr


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_has_its_own_options(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        signflow([name, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: signflow {name} ")


def test_compile_kubeflow_is_dispatched_and_compiles(tmp_path):
    done = _signflow("compile-kubeflow", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: signflow compile-kubeflow")
    assert "--config" in done.stdout and "--set" in done.stdout

    output = tmp_path / "signflow.json"
    done = _signflow("compile-kubeflow", "--set", f"image={IMAGE}", "--set", "pipeline_root=gs://bucket/root",
                     "--set", "data_root=/gcs/bucket/signflow", "--set", f"output_path={output}")
    assert done.returncode == 0, done.stderr[-3000:]
    job = json.loads(output.read_text())
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    assert {"SignatureExampleGen", "AnomaliesGate", "Trainer", "Evaluator", "Pusher"} <= set(tasks)
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/root"
    assert done.stdout.startswith(f"wrote {output}: {len(tasks)} tasks")
    assert f"image {IMAGE}" in done.stdout


def test_batch_predict_is_dispatched_and_refuses_bad_arguments(tmp_path):
    # Its documented exit status: 2 for a bad command line, 1 for a model folder it cannot use.
    done = _signflow("batch-predict")
    assert done.returncode == 2
    assert "usage: signflow batch-predict" in done.stderr
    assert "the following arguments are required: --input, --output" in done.stderr

    (tmp_path / "in").mkdir()
    done = _signflow("batch-predict", "--model", str(tmp_path / "absent"), "--input", str(tmp_path / "in"),
                     "--output", str(tmp_path / "out" / "p.jsonl"))
    assert done.returncode == 1
    assert f"error: model folder {tmp_path / 'absent'} does not exist" in done.stderr
    assert not (tmp_path / "out").exists()


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.mark.parametrize("settings, reason", [
    (("--set", "trainer.epochs=3"), "invalid settings: config.trainer: unknown setting(s) epochs; known: "),
    (("--set", "gate.min_accuracy=high"), "invalid settings: config.gate.min_accuracy must be float, got 'high'"),
    (("--config", "/nonexistent/signflow.json"), "invalid settings: [Errno 2] No such file or directory: "),
], ids=["unknown-setting", "wrong-type", "missing-config-file"])
def test_run_with_invalid_settings_fails_with_its_reason_and_a_failed_summary(tmp_path, settings, reason):
    summary = tmp_path / "summary.json"
    root = tmp_path / "pipeline_root"
    done = _signflow("run", "--set", f"pipeline_root={root}", *settings, "--summary-json", str(summary))
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert _last_line(done.stderr).startswith(f"signflow run failed: {reason}"), done.stderr[-3000:]
    written = json.loads(summary.read_text())
    assert written == {"result": "failed", "error": _last_line(done.stderr).removeprefix("signflow run failed: ")}
    assert not root.exists()  # refused before anything was created


def test_run_that_cannot_create_its_pipeline_root_fails_with_its_reason_and_a_failed_summary(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    summary = tmp_path / "summary.json"
    done = _signflow("run", "--set", f"pipeline_root={blocker / 'pipeline_root'}", "--set",
                     f"inbox_dir={tmp_path / 'inbox'}", "--set", "sample_dir=null", "--summary-json", str(summary))
    assert done.returncode == 1, done.stderr[-3000:]
    assert "pipeline run failed" in done.stderr  # the logged traceback's headline
    reason = f"NotADirectoryError: [Errno 20] Not a directory: '{blocker / 'pipeline_root'}'"
    assert _last_line(done.stderr) == f"signflow run failed: {reason}"
    assert json.loads(summary.read_text()) == {"result": "failed", "error": reason}


def test_schedule_refuses_invalid_settings_before_any_cycle(tmp_path):
    root = tmp_path / "pipeline_root"
    done = _signflow("schedule", "--once", "--set", f"pipeline_root={root}", "--set", "trainer.epochs=3")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert _last_line(done.stderr).startswith("signflow schedule: error: invalid settings: config.trainer: "
                                              "unknown setting(s) epochs")
    assert not root.exists()  # no status file, no lock, no cycle


def test_run_with_arguments_on_stdin_takes_them_from_one_line_and_ends_quietly_at_end_of_input(tmp_path):
    """How the training server starts a cycle's process before the cycle is due (training_server/schedule.py)."""
    summary = tmp_path / "summary.json"
    lines = {
        "settings": json.dumps(["--set", "trainer.epochs=3", "--summary-json", str(summary)]) + "\n",
        "not-a-list": json.dumps({"--set": "trainer.epochs=3"}) + "\n",
        "end-of-input": "",
    }
    started = {name: subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--arguments-on-stdin"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
               for name in lines}
    done = {name: (process, *process.communicate(lines[name], timeout=180)) for name, process in started.items()}

    process, _, err = done["settings"]
    assert process.returncode == 2, err[-3000:]
    reason = "invalid settings: config.trainer: unknown setting(s) epochs; known: "
    assert _last_line(err).startswith(f"signflow run failed: {reason}")
    assert json.loads(summary.read_text())["error"].startswith(reason)

    process, _, err = done["not-a-list"]
    assert process.returncode == 1
    assert _last_line(err) == ('signflow run: --arguments-on-stdin expects a JSON list of strings, got '
                               '\'{"--set": "trainer.epochs=3"}\'')

    process, out, err = done["end-of-input"]
    assert process.returncode == 0 and out == "" and "signflow run" not in err
