"""The serving side deploys alone: `python -m serving` starts and answers with the training side absent.

The process runs with tests/serving/no_tfx first on PYTHONPATH, whose sitecustomize makes
TFX, TFMA, TFDV, Beam, ML Metadata and this project's pipeline/ and components/ packages
unimportable, as on a machine that installed only `.[serving]`. The training side's Keras
switch (TF_USE_LEGACY_KERAS) is left out too: serving loads SavedModels without Keras.
"""
from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.fixtures.ports import free_port
from tests.fixtures.tiny_model import make_image_bytes
from tests.serving.conftest import install_version

ROOT = Path(__file__).resolve().parents[2]
NO_TFX = Path(__file__).resolve().parent / "no_tfx"


def _serving_process(tmp_path: Path, *argv: str) -> tuple[subprocess.Popen, Path]:
    refused = tmp_path / "refused_imports.txt"
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    env.update(PYTHONPATH=os.pathsep.join([str(NO_TFX), str(ROOT)]), SIGNFLOW_REFUSED_IMPORTS=str(refused))
    process = subprocess.Popen([sys.executable, "-m", "serving", *argv], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, refused


def test_the_guard_refuses_the_training_side(tmp_path):
    """The environment really lacks TFX: importing it there fails and is recorded."""
    refused = tmp_path / "refused_imports.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(NO_TFX), str(ROOT)]),
           "SIGNFLOW_REFUSED_IMPORTS": str(refused)}
    result = subprocess.run([sys.executable, "-c", "import tfx"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "absent on a serving-only install" in result.stderr
    assert refused.read_text().split() == ["tfx"]


def test_python_m_serving_predicts_over_rest_and_grpc_without_the_training_side(tiny_model, tmp_path):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    install_version(tiny_model, tmp_path / "models" / "signflow", 1)
    grpc_port, rest_port = free_port(), free_port()
    process, refused = _serving_process(
        tmp_path, f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--model_name=signflow",
        f"--model_base_path={tmp_path / 'models' / 'signflow'}")
    try:
        ready = process.stdout.readline()
        assert f"http://127.0.0.1:{rest_port}" in ready, ready + (process.stderr.read() if process.poll() else "")
        image = make_image_bytes("PNG", seed=3)
        rest = requests.post(f"http://127.0.0.1:{rest_port}/v1/models/signflow:predict", timeout=60,
                             json={"instances": [{"image_bytes": {"b64": base64.b64encode(image).decode()}}]})
        assert rest.status_code == 200, rest.text
        assert len(rest.json()["predictions"]) == 1

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "signflow"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
        assert answer.model_spec.version.value == 1
        assert "probabilities" in answer.outputs

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # Nothing tried to import the training side, not even optionally.
    assert not refused.exists(), refused.read_text()
