"""`signflow ui --api URL` as a serving machine runs it: `python -m serving ui`, without TFX, in a child process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from pipeline.cli import main as signflow
from tests.fixtures.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
NO_TFX = ROOT / "tests" / "serving" / "no_tfx"

pytestmark = pytest.mark.timeout(120)


def test_python_m_serving_ui_serves_the_page_and_forwards_without_the_training_side(tmp_path):
    refused = tmp_path / "refused_imports.txt"
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    env.update(PYTHONPATH=os.pathsep.join([str(NO_TFX), str(ROOT)]), SIGNFLOW_REFUSED_IMPORTS=str(refused))
    port, nothing = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "ui", f"--api=http://127.0.0.1:{nothing}", f"--port={port}",
         "--model_name=xception"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/ui/" in ready, ready + (process.stderr.read() if process.poll() else "")
        url = f"http://127.0.0.1:{port}"
        page = requests.get(f"{url}/ui/", timeout=30)  # the port listens before the line is printed
        assert page.status_code == 200 and "signflow" in page.text
        config = requests.get(f"{url}/ui/config.json", timeout=10).json()
        assert config["mode"] == "tf-serving" and config["models"] == ["xception"]
        assert config["api"] == f"http://127.0.0.1:{nothing}" and config["dashboard"] is False
        assert config["unknown_label"] == "unknown"  # the page needs it in front of TF Serving too
        down = requests.get(f"{url}/v1/models/xception", timeout=30)
        assert down.status_code == 502 and "is not answering" in down.json()["error"]

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not refused.exists(), refused.read_text()


def test_signflow_ui_refuses_an_api_that_is_not_a_url(capsys):
    assert signflow(["ui", "--api", "127.0.0.1:8501"]) == 2
    assert "--api must be an http:// or https:// URL" in capsys.readouterr().err
