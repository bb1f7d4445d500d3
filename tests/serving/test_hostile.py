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
    assert len(response.json()["predictions"][0]) == 3  # serving_default: the probabilities of the 3 signers


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


# -- text that is not Unicode: invalid UTF-8 bytes and lone surrogate escapes ------------------

CLASSIFY = f"/v1/models/{SIGNFLOW_MODEL}:classify"
REGRESS = f"/v1/models/{SIGNFLOW_MODEL}:regress"
IMAGE = b'{"b64": "' + IMAGE_B64.encode() + b'"}'
# What an answer must never show: Python's exception names and texts, or a traceback.
LEAKS = ("Traceback", "UnicodeEncodeError", "UnicodeDecodeError", "codec can't", "surrogates not allowed",
         "Internal server error", "DecodeError")

NOT_UNICODE = {
    "0xFF byte": b"\xff\xfe",
    "overlong UTF-8": b"\xc0\xaf",
    "UTF-8 of a surrogate": b"\xed\xa0\x80",
    "lone low surrogate escape": b"\\udcff",
    "lone high surrogate escape": b"\\ud800",
}
# (target, body with <S> where the string goes). Each is a place a JSON string can sit.
STRING_PLACES = {
    "predict signature_name": (PREDICT, b'{"signature_name": "<S>", "instances": [<IMAGE>]}'),
    "predict instance key": (PREDICT, b'{"instances": [{"<S>": <IMAGE>}]}'),
    "predict columnar input name": (PREDICT, b'{"inputs": {"<S>": [<IMAGE>]}}'),
    "predict string value": (PREDICT, b'{"instances": ["<S>"]}'),
    "predict b64 text": (PREDICT, b'{"instances": [{"b64": "<S>"}]}'),
    "predict unused key": (PREDICT, b'{"<S>": 1, "instances": [<IMAGE>]}'),
    "predict echoed in an error": (PREDICT, b'{"instances": 5, "note": "<S>"}'),
    "classify signature_name": (CLASSIFY, b'{"signature_name": "<S>", "examples": [{"image": <IMAGE>}]}'),
    "classify feature name": (CLASSIFY, b'{"examples": [{"<S>": <IMAGE>}]}'),
    "classify feature value": (CLASSIFY, b'{"examples": [{"image": "<S>"}]}'),
    "regress signature_name": (REGRESS, b'{"signature_name": "<S>", "examples": [{"image": <IMAGE>}]}'),
    "regress feature name echoed in an error": (REGRESS, b'{"examples": [{"<S>": [null]}]}'),
}


def assert_tf_serving_400(status: int, answer: bytes) -> str:
    """TF Serving's error shape, as UTF-8 JSON a strict client can read, naming no Python internals."""
    assert status == 400, answer
    text = answer.decode("utf-8")  # strict: an answer with raw invalid bytes fails here
    document = json.loads(text)
    assert list(document) == ["error"] and isinstance(document["error"], str) and document["error"], document
    for leak in LEAKS:
        assert leak not in text, text
    return document["error"]


@pytest.mark.parametrize("text", list(NOT_UNICODE))
@pytest.mark.parametrize("place", list(STRING_PLACES))
def test_body_strings_that_are_not_unicode_are_400(signflow_server, place, text):
    target, template = STRING_PLACES[place]
    body = template.replace(b"<IMAGE>", IMAGE).replace(b"<S>", NOT_UNICODE[text])
    response = requests.post(signflow_server.rest_url + target, data=body,
                             headers={"Content-Type": "application/json"}, timeout=60)
    assert response.headers["Content-Type"] == "application/json"
    message = assert_tf_serving_400(response.status_code, response.content)
    # RapidJSON's words (TF Serving's parser), with the byte offset of the first bad string.
    expected = ("Invalid encoding in string." if b"\\u" not in NOT_UNICODE[text]
                else "The surrogate pair in string is invalid.")
    assert message == f"JSON Parse error: {expected} at offset: {body.index(NOT_UNICODE[text])}"
    still_serving(signflow_server)


def test_surrogate_pairs_and_escaped_backslashes_are_text(signflow_server):
    # A pair is one character (U+1F58A), and "\\udcff" is a backslash then "udcff": neither is refused.
    for note in (b"\\ud83d\\udd8a", b"\\\\udcff", b"\xf0\x9f\x96\x8a"):
        body = b'{"note": "' + note + b'", "instances": [' + IMAGE + b"]}"
        response = requests.post(signflow_server.rest_url + PREDICT, data=body,
                                 headers={"Content-Type": "application/json"}, timeout=60)
        assert response.status_code == 200, (note, response.text)


NOT_UNICODE_IN_URLS = {
    # (method, raw target). %FF is not UTF-8; %ED%B3%BF is the UTF-8 form of the surrogate U+DCFF.
    "model name, predict": ("POST", "/v1/models/a%FF:predict"),
    "model name, classify": ("POST", "/v1/models/a%ED%B3%BF:classify"),
    "model name, status": ("GET", "/v1/models/a%FF"),
    "model name, metadata": ("GET", "/v1/models/a%ED%B3%BF/metadata"),
    "query glued to the model name": ("GET", f"/v1/models/{SIGNFLOW_MODEL}?x=%FF"),
    "label, predict": ("POST", f"/v1/models/{SIGNFLOW_MODEL}/labels/%FF:predict"),
    "label, regress": ("POST", f"/v1/models/{SIGNFLOW_MODEL}/labels/%ED%B3%BF:regress"),
    "label, status": ("GET", f"/v1/models/{SIGNFLOW_MODEL}/labels/%FF"),
    "label, metadata": ("GET", f"/v1/models/{SIGNFLOW_MODEL}/labels/%FF/metadata"),
}


@pytest.mark.parametrize("name", list(NOT_UNICODE_IN_URLS))
def test_url_segments_that_are_not_unicode_are_400(signflow_server, name):
    method, target = NOT_UNICODE_IN_URLS[name]
    body = b'{"instances": [' + IMAGE + b"]}" if method == "POST" else b""
    status, answer = raw_request(signflow_server, method, target, body, {"Content-Type": "application/json"})
    message = assert_tf_serving_400(status, answer)
    assert "is not valid UTF-8" in message, message
    still_serving(signflow_server)


def _grpc_raw(request) -> bytes:
    """`request` serialised with its model name's "signflow" replaced by the same length of invalid UTF-8."""
    data = request.SerializeToString()
    assert data.count(b"signflow") == 1
    return data.replace(b"signflow", b"signfl\xffw")


def test_grpc_strings_that_are_not_utf8_are_invalid_argument(signflow_server):
    from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, get_model_status_pb2

    channel = grpc.insecure_channel(signflow_server.grpc_target)
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = SIGNFLOW_MODEL
    predict.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([base64.b64decode(IMAGE_B64)]))
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = SIGNFLOW_MODEL
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = SIGNFLOW_MODEL
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = SIGNFLOW_MODEL
    calls = {
        "/tensorflow.serving.PredictionService/Predict": predict,
        "/tensorflow.serving.PredictionService/Classify": classify,
        "/tensorflow.serving.PredictionService/GetModelMetadata": metadata,
        "/tensorflow.serving.ModelService/GetModelStatus": status,
    }
    for method, request in calls.items():
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(method)(_grpc_raw(request), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, caught.value.details())
        assert f"not a valid {type(request).DESCRIPTOR.full_name}" in caught.value.details()
        for leak in LEAKS + ("<class",):
            assert leak not in caught.value.details(), caught.value.details()
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    assert len(stub.Predict(predict, timeout=30).outputs["probabilities"].float_val) == 3
    still_serving(signflow_server)
