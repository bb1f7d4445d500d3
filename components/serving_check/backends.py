"""Ways to serve the candidate during the serving check. All run inside the probe process.

- SessionBackend: what TF Serving does in C++: load the MetaGraph tagged `serve`
  into a session (variables restored, asset initialisers run) and answer through
  the SignatureDefs in saved_model.pb, by tensor name.
- ObjectBackend: what a Python server (signflow's) does: tf.saved_model.load and
  the restored signature functions. A SavedModel can satisfy one and not the
  other (the two read different parts of the file), so both are exercised.
- ModelServerBackend: the real `tensorflow_model_server` binary, over gRPC
  (warmup and Classify requests, as protos) and REST (the base64 requests).
"""
from __future__ import annotations

import abc
import json
import os
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
import numpy as np
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from components import storage
from components.serving_check.checks import CLASSIFY_SIGNATURE, SERVING_SIGNATURE
from serving.contract import call_signature
from serving.images import decode_b64, inspect_image


class BackendError(RuntimeError):
    """A request the server refused or failed; the message is the server's."""


class InProcessBackend(abc.ABC):
    """Shared by the two in-process loaders: REST decoding and classify go through predict()."""

    name: str

    @abc.abstractmethod
    def load(self) -> None:
        """Load the SavedModel."""

    @abc.abstractmethod
    def predict(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one signature on named input arrays."""

    def predict_rest(self, body: str, single_output: str | None = None) -> dict[str, np.ndarray]:
        """Answer a TF Serving REST predict body, decoding {"b64": ...} as signflow's server does.

        `single_output`: the name of the signature's one output when it has only one (serving_default's
        `probabilities`): TF Serving's REST answer then holds bare values, without the name."""
        signature_name, inputs = decode_rest_request(body)
        return self.predict(signature_name, inputs)

    def classify(self, serialized_examples: Sequence[bytes]) -> dict[str, np.ndarray]:
        return self.predict(CLASSIFY_SIGNATURE, {"inputs": np.array(list(serialized_examples), dtype=object)})

    def close(self) -> None:
        """Nothing to release beyond what the process exit frees."""


class SessionBackend(InProcessBackend):
    name = "tf-serving-session"

    def __init__(self, model_path: str | Path):
        self._path = str(model_path)
        self._session: tf.compat.v1.Session | None = None
        self._signatures: Mapping = {}

    def load(self) -> None:
        graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=graph)
        with graph.as_default():
            meta_graph = tf.compat.v1.saved_model.load(self._session, [tf.saved_model.SERVING], self._path)
        self._signatures = meta_graph.signature_def

    def predict(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if signature_name not in self._signatures:
            raise BackendError(f"no signature {signature_name!r} (has {sorted(self._signatures)})")
        signature = self._signatures[signature_name]
        if set(inputs) != set(signature.inputs):
            raise BackendError(f"signature {signature_name!r} takes inputs {sorted(signature.inputs)}, got {sorted(inputs)}")
        feeds = {signature.inputs[alias].name: value for alias, value in inputs.items()}
        fetches = {alias: tensor.name for alias, tensor in signature.outputs.items()}
        try:
            return self._session.run(fetches, feed_dict=feeds)
        except tf.errors.OpError as err:
            raise BackendError(err.message) from None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


class ObjectBackend(InProcessBackend):
    name = "tf.saved_model.load"

    def __init__(self, model_path: str | Path):
        self._path = str(model_path)
        self._model = None

    def load(self) -> None:
        self._model = tf.saved_model.load(self._path)

    def predict(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        signatures = self._model.signatures
        if signature_name not in signatures:
            raise BackendError(f"no signature {signature_name!r} (has {sorted(signatures)})")
        try:
            return call_signature(signatures[signature_name], inputs)
        except (tf.errors.OpError, TypeError, ValueError) as err:
            raise BackendError(str(err).splitlines()[0]) from None


class ModelServerBackend:
    """The candidate served by a real tensorflow_model_server on 127.0.0.1."""

    name = "tensorflow_model_server"

    def __init__(self, binary: str, model_path: str | Path, model_name: str, workdir: Path, deadline: float):
        self._binary = binary
        self._model_path = os.fspath(model_path)
        self._model_name = model_name
        self._workdir = workdir
        self._deadline = deadline
        self._process: subprocess.Popen | None = None
        self._log = None
        self._channel: grpc.Channel | None = None
        self._rest_port = 0

    def load(self) -> None:
        # TF Serving wants <base>/<version>/; the candidate becomes version 1 of a private, local base
        # (copied through tf.io.gfile, so the candidate itself may be on gs:// or s3://).
        base = self._workdir / self._model_name
        _copy_tree(self._model_path, str(base / "1"))
        grpc_port, self._rest_port = _free_port(), _free_port()
        self._log = open(self._workdir / "tensorflow_model_server.log", "wb")
        self._process = subprocess.Popen(
            [self._binary, f"--port={grpc_port}", f"--rest_api_port={self._rest_port}",
             f"--model_name={self._model_name}", f"--model_base_path={base}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        status = model_service_pb2_grpc.ModelServiceStub(self._channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self._model_name
        while True:
            if self._process.poll() is not None:
                raise BackendError(f"tensorflow_model_server exited with {self._process.returncode}: {self._log_tail()}")
            try:
                response = status.GetModelStatus(request, timeout=5)
            except grpc.RpcError:
                response = None
            if response is not None and response.model_version_status:
                state = response.model_version_status[0]
                if state.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE:
                    return
                if state.status.error_code:
                    raise BackendError(f"model failed to load: {state.status.error_message}")
            if time.monotonic() > self._deadline:
                raise BackendError(f"model not available before the loading deadline: {self._log_tail()}")
            time.sleep(0.5)

    def predict(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self._model_name
        request.model_spec.signature_name = signature_name
        for alias, value in inputs.items():
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
        response = self._call(prediction_service_pb2_grpc.PredictionServiceStub(self._channel).Predict, request)
        return {alias: tf.make_ndarray(tensor) for alias, tensor in response.outputs.items()}

    def predict_rest(self, body: str, single_output: str | None = None) -> dict[str, np.ndarray]:
        url = f"http://127.0.0.1:{self._rest_port}/v1/models/{self._model_name}:predict"
        response = requests.post(url, data=body, timeout=60)
        answer = response.json()
        if response.status_code != 200 or "error" in answer:
            raise BackendError(f"REST predict returned {response.status_code}: {answer.get('error', answer)}")
        rows = answer["predictions"]
        if rows and not isinstance(rows[0], dict):
            # A signature with one output: TF Serving answers its values without the output's name.
            if single_output is None:
                raise BackendError(f"REST predict answered unnamed values {str(rows)[:120]}; expected named outputs")
            return {single_output: _json_column(rows)}
        names = rows[0].keys() if rows and isinstance(rows[0], dict) else []
        # JSON has no float32 or bytes: restore the SignatureDef's types (checked separately).
        return {name: _json_column([row[name] for row in rows]) for name in names}

    def classify(self, serialized_examples: Sequence[bytes]) -> dict[str, np.ndarray]:
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = self._model_name
        request.model_spec.signature_name = CLASSIFY_SIGNATURE
        for serialized in serialized_examples:
            request.input.example_list.examples.add().ParseFromString(serialized)
        response = self._call(prediction_service_pb2_grpc.PredictionServiceStub(self._channel).Classify, request)
        classifications = response.result.classifications
        return {
            "classes": np.array([[c.label for c in row.classes] for row in classifications], dtype=object),
            "scores": np.array([[c.score for c in row.classes] for row in classifications], dtype=np.float32),
        }

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._log is not None:
            self._log.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=60)
        except grpc.RpcError as err:
            raise BackendError(f"{err.code().name}: {err.details()}") from None

    def _log_tail(self) -> str:
        text = (self._workdir / "tensorflow_model_server.log").read_text(errors="replace")
        return " | ".join(text.strip().splitlines()[-3:])


def decode_rest_request(body: str) -> tuple[str, dict[str, np.ndarray]]:
    """A TF Serving REST predict body ("instances", row format) as signature name and input arrays.

    Every {"b64": ...} value is decoded strictly (serving.images.decode_b64) and
    must be an image the server accepts (serving.images.inspect_image), exactly
    as signflow's server treats it before the model sees it.
    """
    request = json.loads(body)
    columns: dict[str, list] = {}
    for row in request["instances"]:
        for alias, value in row.items():
            if isinstance(value, dict) and set(value) == {"b64"}:
                value = decode_b64(value["b64"], lenient=False)
                inspect_image(value)
            columns.setdefault(alias, []).append(value)
    inputs = {alias: np.array(values, dtype=object) for alias, values in columns.items()}
    return request.get("signature_name", SERVING_SIGNATURE), inputs


def _json_column(values: list) -> np.ndarray:
    first = values[0] if values else None
    while isinstance(first, list):
        first = first[0] if first else None
    return np.array(values, dtype=object if isinstance(first, str) else np.float32)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _copy_tree(source: str, destination: str) -> None:
    for root, _, files in storage.walk(source):
        relative = os.path.relpath(root, source)
        folder = destination if relative == "." else storage.join(destination, relative)
        storage.makedirs(folder)
        for name in files:
            storage.copy_file(storage.join(root, name), storage.join(folder, name))
