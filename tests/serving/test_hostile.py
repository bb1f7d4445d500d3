"""Malformed and hostile requests: each gets the right 4xx, and the server keeps serving.

Runs against the shared `signflow_server` (signflow's own model, image checks on).
"""
from __future__ import annotations

import base64
import http.client
import json
import socket

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.settings import DEFAULT_MAX_INSTANCES_PER_REQUEST, DEFAULT_MAX_REQUEST_BYTES
from tests.fixtures.tiny_model import make_image_bytes
from tests.serving.conftest import SIGNFLOW_MODEL
from tests.serving.test_conformance import bomb_png

pytestmark = pytest.mark.timeout(120)

PREDICT = f"/v1/models/{SIGNFLOW_MODEL}:predict"
IMAGE_B64 = base64.b64encode(make_image_bytes("JPEG", seed=3)).decode()


def still_serving(server) -> None:
    response = requests.post(server.rest_url + PREDICT, json={"instances": [{"b64": IMAGE_B64}]}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"].startswith("signer_")


def raw_request(server, method: str, target: str, body: bytes = b"", headers: dict | None = None):
    """One request with the target sent byte for byte (no client-side path normalisation)."""
    host, port = server.rest_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            connection.putheader(key, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


HOSTILE_BODIES = {
    "bad base64": ({"instances": [{"b64": "!!!not base64!!!"}]}, 400, "Unable to base64 decode"),
    "url-safe base64": ({"instances": [{"b64": base64.urlsafe_b64encode(b"\xfb\xff" * 30).decode()}]}, 400,
                        "Unable to base64 decode"),
    "not an image": ({"instances": [{"b64": base64.b64encode(b"GIF89a but then nothing").decode()}]}, 400,
                     "not an acceptable image"),
    "truncated image": ({"instances": [{"b64": base64.b64encode(make_image_bytes("PNG")[:200]).decode()}]}, 400,
                        "not an acceptable image"),
    "decompression bomb": ({"instances": [{"b64": base64.b64encode(bomb_png()).decode()}]}, 400,
                           "decompression bomb"),
    "too many instances": ({"instances": [{"b64": "AAAA"}] * 10_000}, 400,
                           f"Request has 10000 instances; this server accepts at most "
                           f"{DEFAULT_MAX_INSTANCES_PER_REQUEST} per request"),
    "rank bomb": ({"instances": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}, 400,
                  "nested more than 32 levels"),
    "string, not bytes": ({"instances": ["just text"]}, 400, "not an acceptable image"),
    "number for bytes": ({"instances": [1.5]}, 400, "is not of expected type: string"),
}


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_hostile_body(signflow_server, name):
    body, status, message = HOSTILE_BODIES[name]
    response = requests.post(signflow_server.rest_url + PREDICT, data=json.dumps(body), timeout=60)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    still_serving(signflow_server)


def test_deeply_nested_json(signflow_server):
    body = b'{"instances": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    status, answer = raw_request(signflow_server, "POST", PREDICT, body)
    assert status == 400
    assert json.loads(answer)["error"].startswith("JSON Parse error")
    still_serving(signflow_server)


def test_fifty_megabyte_body_is_refused_unread(signflow_server):
    body = b'{"instances": ["' + b"A" * (50 * 1024 * 1024) + b'"]}'
    status, answer = raw_request(signflow_server, "POST", PREDICT, body)
    assert status == 413
    assert f"exceeds the limit of {DEFAULT_MAX_REQUEST_BYTES} bytes" in json.loads(answer)["error"]
    still_serving(signflow_server)


def test_oversized_chunked_body_is_cut_off(signflow_server):
    host, port = signflow_server.rest_url.removeprefix("http://").split(":")
    chunk = b"A" * (1024 * 1024)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        try:
            for _ in range(40):
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: what we want
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    still_serving(signflow_server)


PATH_TRICKS = {
    # (method, raw target, status, error substring or None for a non-JSON answer)
    "dot segments in the name": ("POST", "/v1/models/../../etc/passwd:predict", 400, "Malformed request"),
    "escaped slashes in the name": ("GET", "/v1/models/..%2F..%2Fetc%2Fpasswd", 404,
                                    "Could not find any versions of model ../../etc/passwd"),
    "escaped slashes, predict": ("POST", "/v1/models/..%2F..%2Fetc:predict", 404,
                                 "Servable not found for request: Latest(../../etc)"),
    "NUL in the name": ("GET", "/v1/models/a%00b", 404, "Could not find any versions of model a\x00b"),
    "dot segments outside /v1": ("GET", "/../../etc/passwd", 404, None),
    "backslashes": ("GET", "/v1/models/..\\..\\etc", 404, "Could not find any versions of model ..\\..\\etc"),
}


@pytest.mark.parametrize("name", list(PATH_TRICKS))
def test_path_tricks(signflow_server, name):
    method, target, status, message = PATH_TRICKS[name]
    body = json.dumps({"instances": [{"b64": IMAGE_B64}]}).encode() if method == "POST" else b""
    got_status, answer = raw_request(signflow_server, method, target, body)
    assert got_status == status, answer
    if message is not None:
        assert message in json.loads(answer)["error"]
    still_serving(signflow_server)


def test_grpc_oversized_message_and_bad_tensor(signflow_server):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(signflow_server.grpc_target))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = SIGNFLOW_MODEL
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([b"\0" * (DEFAULT_MAX_REQUEST_BYTES + 1)]))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(np.array([b"x"] * 7, dtype=object)))
    request.inputs["image_bytes"].tensor_shape.dim[0].size = 5  # 5 declared, 7 given
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tensor parsing error: image_bytes" in caught.value.details()
    still_serving(signflow_server)
