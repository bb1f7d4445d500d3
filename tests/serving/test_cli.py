"""The command line: tensorflow_model_server's flags, failures at start, the tensorflow_model_server
command built from the same settings, and a real start/stop of `signflow serve` in a subprocess."""
from __future__ import annotations

import argparse
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from serving import cli
from serving.settings import Settings
from tests.fixtures.ports import free_port
from tests.serving.conftest import install_version

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def run_serving(*argv: str, env: dict | None = None, python_flags: tuple[str, ...] = (),
                timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m serving ...`; `timeout` is only a hang guard."""
    return subprocess.run([sys.executable, *python_flags, "-m", "serving", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_the_signflow_serve_script_names_itself_in_its_errors():
    script = Path(sys.executable).with_name("signflow-serve")  # the venv's entry point for serving/__main__.py
    result = subprocess.run([str(script), "--model_base_path=relative/m"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("signflow-serve: error: Expected model default to have an absolute path"), result.stderr


def imported_modules(importtime_stderr: str) -> list[str]:
    """Module names from `python -X importtime`'s report ("import time: self | cumulative | name")."""
    return [line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2]


def test_both_flag_styles_and_tf_booleans(tmp_path):
    args = parse("--port=9000", "--rest_api_port", "9001", "--model_name=sig", f"--model_base_path={tmp_path}",
                 "--enable_batching", "--file_system_poll_wait_seconds=0", "--enable_model_warmup=false")
    settings = cli.settings_from_args(args)
    assert (settings.grpc_port, settings.rest_api_port) == (9000, 9001)
    assert settings.enable_batching is True and settings.enable_model_warmup is False
    assert settings.file_system_poll_wait_seconds == 0
    assert settings.models[0].name == "sig" and settings.models[0].base_path == str(tmp_path)
    assert settings.host == "127.0.0.1"
    assert parse("--enable_batching=true").enable_batching is True
    assert parse("--enable_batching=0").enable_batching is False


def test_defaults_are_tf_servings():
    args = parse()
    assert (args.port, args.rest_api_port, args.model_name) == (8500, 8501, "default")
    assert args.file_system_poll_wait_seconds == 1 and args.rest_api_timeout_in_ms == 30000
    assert args.model_config_file_poll_wait_seconds == 0 and args.enable_batching is False


@pytest.mark.parametrize("argv, message", [
    (["--bogus_flag=1"], "unrecognized arguments: --bogus_flag=1"),
    (["--model=x"], "unrecognized arguments: --model=x"),  # no prefix matching, as TF's flag parser
    (["--port=eighty"], "argument --port: invalid int value: 'eighty'"),
    (["--enable_batching=maybe"], "argument --enable_batching: expected true or false"),
])
def test_bad_flags_fail_at_start(argv, message):
    result = run_serving(*argv)
    assert result.returncode == 2
    assert message in result.stderr


def test_config_problems_fail_at_start(tmp_path):
    bad_config = tmp_path / "models.config"
    bad_config.write_text('model_config_list { config { name: "m" base_path: "/x" model_platform: "tensorflow" '
                          "model_version_policy { newest {} } } }")
    bad_batching = tmp_path / "batching.config"
    bad_batching.write_text("max_batch_size: 8")
    bad_monitoring = tmp_path / "monitoring.config"
    bad_monitoring.write_text("prometheus_config { enabled: true }")
    cases = [
        ([f"--model_config_file={bad_config}"],
         "Error parsing text-format tensorflow.serving.ModelServerConfig"),
        ([f"--model_config_file={tmp_path / 'missing.config'}"], "--model_config_file: cannot read"),
        ([], "Both server_options.model_base_path and server_options.model_config_file are empty!"),
        (["--model_base_path=relative/m"], "Expected model default to have an absolute path or URI"),
        ([f"--model_base_path={tmp_path}", f"--batching_parameters_file={bad_batching}"],
         "server_options.batching_parameters_file is set without setting server_options.enable_batching"),
        ([f"--model_base_path={tmp_path}", "--enable_batching", f"--batching_parameters_file={bad_batching}"],
         "Error parsing text-format tensorflow.serving.BatchingParameters"),
        ([f"--model_base_path={tmp_path}", f"--monitoring_config_file={bad_monitoring}"],
         "Error parsing text-format tensorflow.serving.MonitoringConfig"),
        ([f"--model_base_path={tmp_path}", "--port=8600", "--rest_api_port=8600"], "must differ from --port"),
    ]
    for argv, message in cases:
        result = run_serving(*argv, python_flags=("-X", "importtime"))
        assert result.returncode == 2, (argv, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("python -m serving: error: ")]
        assert len(errors) == 1 and message in errors[0], (argv, result.stderr)
        # Refused before TensorFlow (seconds to import) was loaded: the failure is immediate by
        # construction. tensorflow_serving's config protos are plain protobuf and may load.
        modules = imported_modules(result.stderr)
        assert "serving.cli" in modules, "no -X importtime report to check"
        tensorflow = [name for name in modules if name == "tensorflow" or name.startswith("tensorflow.")]
        assert tensorflow == [], (argv, tensorflow[:5])


def test_tensorflow_model_server_command(tmp_path):
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "m" base_path: "/srv/m" model_platform: "tensorflow" } }')
    settings = cli.settings_from_args(parse(
        f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=30", "--port=9500",
        "--rest_api_port=9501", "--rest_api_timeout_in_ms=2000", "--host=0.0.0.0", "--max_request_bytes=100"))
    assert cli.tensorflow_model_server_argv(settings) == [
        "tensorflow_model_server", "--port=9500", "--rest_api_port=9501", "--rest_api_timeout_in_ms=2000",
        "--file_system_poll_wait_seconds=1", f"--model_config_file={config}",
        "--model_config_file_poll_wait_seconds=30", "--enable_batching=false", "--enable_model_warmup=true",
        "--allow_version_labels_for_unavailable_models=false"]

    single = Settings(model_name="sig", model_base_path="/srv/sig", enable_batching=True,
                      batching_parameters_file="/etc/batching.config", monitoring_config_file="/etc/monitoring.config")
    assert cli.tensorflow_model_server_argv(single, "/opt/tfs") == [
        "/opt/tfs", "--port=8500", "--rest_api_port=8501", "--rest_api_timeout_in_ms=30000",
        "--file_system_poll_wait_seconds=1", "--model_name=sig", "--model_base_path=/srv/sig",
        "--enable_batching=true", "--batching_parameters_file=/etc/batching.config",
        "--monitoring_config_file=/etc/monitoring.config", "--enable_model_warmup=true",
        "--allow_version_labels_for_unavailable_models=false"]


def test_prefer_tensorflow_model_server_execs_it(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorded = tmp_path / "argv.txt"
    fake = bin_dir / "tensorflow_model_server"
    fake.write_text(f'#!/bin/sh\nfor a in "$0" "$@"; do echo "$a"; done > "{recorded}"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = run_serving("--prefer_tensorflow_model_server", "--model_name=sig", f"--model_base_path={tmp_path}",
                         "--rest_api_port=9001", env=env)
    assert result.returncode == 0, result.stderr
    settings = cli.settings_from_args(parse("--model_name=sig", f"--model_base_path={tmp_path}", "--rest_api_port=9001"))
    assert recorded.read_text().splitlines() == cli.tensorflow_model_server_argv(settings, str(fake))


def test_signflow_serve_starts_serves_and_stops(model_store, tmp_path):
    """The real entry point (`signflow serve`, via pipeline/cli.py) in its own process."""
    install_version(model_store["half_plus_two"], tmp_path / "m", 1)
    grpc_port, rest_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", f"--port={grpc_port}", "--rest_api_port", str(rest_port),
         "--model_name=m", f"--model_base_path={tmp_path / 'm'}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = process.stdout.readline()
        assert f"gRPC at 127.0.0.1:{grpc_port}" in ready and f"http://127.0.0.1:{rest_port}" in ready, \
            ready + process.stderr.read() if process.poll() is not None else ready
        response = requests.post(f"http://127.0.0.1:{rest_port}/v1/models/m:predict", json={"instances": [1.0]},
                                 timeout=30)
        assert response.json() == {"predictions": [2.5]}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
