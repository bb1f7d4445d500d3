"""TF Serving conformance: the same requests TF Serving's own tests and sources define, against the
real server over real HTTP (requests) and through the official gRPC stubs.

Source abbreviations (tensorflow/serving, tensorflow_serving/...):
  hrah      model_servers/http_rest_api_handler.cc      hrah_test  its _test.cc
  hrau      model_servers/http_rest_api_util.cc         jt / jt_test  util/json_tensor.cc / _test.cc
  http_server  model_servers/http_server.cc             gmsi  model_servers/get_model_status_impl.cc
  bm        core/basic_manager.cc (Servable not found)  sc    model_servers/server_core.cc (labels)
  cls / reg servables/tensorflow/classifier.cc, regressor.cc
  pu        servables/tensorflow/predict_util.cc        gmmi  servables/tensorflow/get_model_metadata_impl.cc
  tms_test  model_servers/tensorflow_model_server_test.py

Fixture (TF Serving's test models, tests/serving/toy_models.py): `m` = half_plus_two (y = x/2 + 2)
versions 1 and 2 with labels stable->1, canary->2 and signatures classify_x_to_y / regress_x_to_y;
`mi` inputs a:int32, b:string -> o = 2a + len(b); `s` s_in:string -> out_bytes; `slow` sleeps x[0] ms;
`broken` fails inside the graph; `h` takes float16; `sig` = signflow's own model.
"""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.fixtures.tiny_model import make_image_bytes
from tests.serving.conftest import install_version, make_settings, write_model_config
from serving.server import ServerThread

pytestmark = pytest.mark.timeout(120)

IMAGE = make_image_bytes("PNG", seed=1)
IMAGE_B64 = base64.b64encode(IMAGE).decode()
NOT_IMAGE_B64 = base64.b64encode(b"these bytes are not an image").decode()
# --rest_api_timeout_in_ms of the server that answers the deadline case (the main one keeps 30 s,
# so a cold first call on a busy machine never trips it).
TIMEOUT_MS = 300


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header declaring width x height 1-bit pixels, with a tiny (truncated) IDAT."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b""))


BOMB_B64 = base64.b64encode(bomb_png()).decode()


@pytest.fixture(scope="module")
def server(model_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("conformance")
    for version in (1, 2):
        install_version(model_store["half_plus_two"], root / "m", version)
    layout = {"mi": "multi_input", "s": "bytes_identity", "slow": "slow", "broken": "broken",
              "h": "half_precision", "sig": "signflow"}
    for name, template in layout.items():
        install_version(model_store[template], root / name, 1)
    config = write_model_config(root / "models.config", [
        {"name": "m", "base_path": root / "m", "policy": [1, 2], "labels": {"stable": 1, "canary": 2}},
        *({"name": name, "base_path": root / name} for name in layout),
    ])
    monitoring = root / "monitoring.config"
    monitoring.write_text('prometheus_config: { enable: true, path: "/monitoring/prometheus/metrics" }\n')
    settings = make_settings(
        model_config_file=str(config), monitoring_config_file=str(monitoring),
        allow_version_labels_for_unavailable_models=True)
    thread = ServerThread(settings).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def deadline_server(model_store, tmp_path_factory):
    base = tmp_path_factory.mktemp("deadline") / "slow"
    install_version(model_store["slow"], base, 1)
    thread = ServerThread(make_settings(model_name="slow", model_base_path=str(base),
                                        rest_api_timeout_in_ms=TIMEOUT_MS)).start()
    yield thread
    thread.stop()


# ---------------------------------------------------------------------------------------------
# REST


@dataclass(frozen=True)
class Rest:
    method: str
    path: str
    body: Any = None  # dict/list -> JSON; str/bytes -> sent as is; None -> no body
    status: int = 200
    expect: Any = None  # str: substring of "error"; dict/list: the whole JSON; "EMPTY";
    # callable(response) -> True (anything else, or an exception, fails the case)
    headers: dict = field(default_factory=dict)
    version: str | None = None  # expected X-Model-Version
    server: str = "server"  # the fixture that answers


def status_of(*versions: str) -> Callable:
    def check(response: requests.Response) -> bool:
        entries = response.json()["model_version_status"]
        assert [e["version"] for e in entries] == list(versions)
        for entry in entries:
            assert entry["state"] == "AVAILABLE"
            assert entry["status"] == {"error_code": "OK", "error_message": ""}
        return True
    return check


def metadata_of(version: str) -> Callable:
    def check(response: requests.Response) -> bool:
        document = response.json()
        assert document["model_spec"] == {"name": "m", "signature_name": "", "version": version}
        signatures = document["metadata"]["signature_def"]["signature_def"]
        x = signatures["serving_default"]["inputs"]["x"]
        assert x["dtype"] == "DT_FLOAT" and x["tensor_shape"]["dim"][0]["size"] == "-1"
        assert signatures["classify_x_to_y"]["method_name"] == "tensorflow/serving/classify"
        assert signatures["regress_x_to_y"]["method_name"] == "tensorflow/serving/regress"
        return True
    return check


def signflow_prediction(response: requests.Response) -> bool:
    """serving_default: the seed's shape, {"predictions": [[p0, p1, p2]]} (its one output, unnamed)."""
    assert set(response.json()) == {"predictions"}
    (probabilities,) = response.json()["predictions"]
    assert len(probabilities) == 3 and all(isinstance(p, float) for p in probabilities)
    assert abs(sum(probabilities) - 1.0) < 1e-5
    return True


def signflow_labelled(response: requests.Response) -> bool:
    """predict_label: {"predictions": [{"label", "score", "probabilities"}]}."""
    (prediction,) = response.json()["predictions"]
    assert set(prediction) == {"label", "probabilities", "score"}
    assert len(prediction["probabilities"]) == 3
    assert prediction["score"] == max(prediction["probabilities"])
    assert prediction["label"] == ["signer_00", "signer_01", "signer_02"][
        prediction["probabilities"].index(max(prediction["probabilities"]))]
    return True


def signflow_classes(response: requests.Response) -> bool:
    (classes,) = response.json()["results"]
    assert [label for label, _ in classes] == ["signer_00", "signer_01", "signer_02"]
    assert abs(sum(score for _, score in classes) - 1.0) < 1e-5
    return True


def non_finite(response: requests.Response) -> bool:
    values = json.loads(response.text)["predictions"]  # NaN/Infinity tokens, as TF Serving writes them
    assert np.isnan(values[0]) and values[1] == float("inf") and values[2] == float("-inf")
    return True


MALFORMED = "Malformed request"
# http_server.cc: a path its dispatcher does not claim gets libevent's evhttp_send_error(req, 404, NULL) page.
NOT_FOUND_PAGE = "<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"
REST_CASES = {
    # -- status (gmsi; hrah_test GetStatus) --
    "status": Rest("GET", "/v1/models/m", expect=status_of("2", "1")),
    "status version": Rest("GET", "/v1/models/m/versions/1", expect=status_of("1")),
    "status unknown version": Rest("GET", "/v1/models/m/versions/99", status=404,
                                   expect="Could not find version 99 of model m"),
    "status unknown model": Rest("GET", "/v1/models/nope", status=404,
                                 expect="Could not find any versions of model nope"),
    "status ignores label": Rest("GET", "/v1/models/m/labels/stable", expect=status_of("2", "1")),
    "status ignores unknown label": Rest("GET", "/v1/models/m/labels/doesnotexist", expect=status_of("2", "1")),
    "status METADATA is status": Rest("GET", "/v1/models/m/METADATA", expect=status_of("2", "1")),
    "status case-insensitive prefix": Rest("GET", "/V1/MODELS/m", expect=status_of("2", "1")),
    # -- URL grammar (hrau regexes; hrah_test UnsupportedApiCalls) --
    "no model name": Rest("GET", "/v1/models", status=400, expect="Missing model name in request."),
    "GET unknown path": Rest("GET", "/v1/foo", status=400, expect="Malformed request: GET /v1/foo"),
    "POST unknown path": Rest("POST", "/v1/foo", status=400, expect="Malformed request: POST /v1/foo"),
    "GET extra segment": Rest("GET", "/v1/models/debug/model_name", status=400, expect=MALFORMED),
    "POST no model": Rest("POST", "/v1/models", status=400, expect=MALFORMED),
    "GET with verb": Rest("GET", "/v1/models/foo:predict", status=400, expect=MALFORMED),
    "singular version": Rest("POST", "/v1/models/foo/version/50:regress", status=400, expect=MALFORMED),
    "version not digits": Rest("POST", "/v1/models/foo/versions/HELLO:regress", status=400, expect=MALFORMED),
    "version overflow": Rest("POST", "/v1/models/foo/versions/18446744073709551615:regress", status=400,
                             expect="Failed to convert version: 18446744073709551615 to numeric."),
    "POST metadata": Rest("POST", "/v1/models/foo/metadata", status=400, expect=MALFORMED),
    "singular label": Rest("POST", "/v1/models/foo/label/some_label:regress", status=400, expect=MALFORMED),
    "version and label": Rest("POST", "/v1/models/foo/versions/50/labels/some_label:regress", status=400,
                              expect=MALFORMED),
    "verb is case-sensitive": Rest("POST", "/v1/models/m:PREDICT", {"instances": [1.0]}, 400,
                                   "Malformed request: POST /v1/models/m:PREDICT"),
    "unknown verb": Rest("POST", "/v1/models/m:explain", {}, 400, "Malformed request: POST /v1/models/m:explain"),
    "PUT": Rest("PUT", "/v1/models/m:predict", {"instances": [1.0]}, 400, "Malformed request: PUT /v1/models/m:predict"),
    "trailing slash": Rest("GET", "/v1/models/m/", status=400, expect="Malformed request: GET /v1/models/m/"),
    "query is part of the name": Rest("GET", "/v1/models/m?x=1", status=404,
                                      expect="Could not find any versions of model m?x=1"),
    "query after verb": Rest("POST", "/v1/models/m:predict?x=1", {"instances": [1.0]}, 400,
                             "Malformed request: POST /v1/models/m:predict?x=1"),
    "outside /v1": Rest("GET", "/healthz", status=404, expect=lambda r: r.text == NOT_FOUND_PAGE),
    "outside /v1 does not echo the path": Rest("GET", "/%3Cscript%3Ealert(1)%3C/script%3E", status=404,
                                               expect=lambda r: r.text == NOT_FOUND_PAGE and "script" not in r.text),
    # -- CORS preflight (http_server) --
    "preflight": Rest("OPTIONS", "/v1/models/m:predict", headers={"Origin": "http://a.b"}, expect="EMPTY"),
    "preflight without origin": Rest("OPTIONS", "/v1/models/m:predict", status=400, expect="EMPTY"),
    # -- metadata (gmmi; hrah_test GetModelMetadata) --
    "metadata": Rest("GET", "/v1/models/m/metadata", expect=metadata_of("2"), version="2"),
    "metadata by label": Rest("GET", "/v1/models/m/labels/stable/metadata", expect=metadata_of("1"), version="1"),
    "metadata unknown version": Rest("GET", "/v1/models/m/versions/99/metadata", status=404,
                                     expect="Servable not found for request: Specific(m, 99)"),
    "metadata unknown model": Rest("GET", "/v1/models/nope/metadata", status=404,
                                   expect="Servable not found for request: Latest(nope)"),
    "metadata unknown label": Rest("GET", "/v1/models/m/labels/nope/metadata", status=400,
                                   expect="Unrecognized servable version label: nope"),
    # -- predict: model resolution (bm, sc; hrah_test PredictModelNameVersionErrors) --
    "predict unknown model": Rest("POST", "/v1/models/foo:predict", {"instances": [1]}, 404,
                                  "Servable not found for request: Latest(foo)"),
    "predict unknown model+version": Rest("POST", "/v1/models/foo/versions/50:predict", {"instances": [1]}, 404,
                                          "Servable not found for request: Specific(foo, 50)"),
    "predict unknown version": Rest("POST", "/v1/models/m/versions/99:predict", {"instances": [1]}, 404,
                                    "Servable not found for request: Specific(m, 99)"),
    "predict unknown label": Rest("POST", "/v1/models/m/labels/Version_Nonexistent:predict",
                                  {"instances": ["x", "y"]}, 400,
                                  "Unrecognized servable version label: Version_Nonexistent"),
    "path trick in name": Rest("POST", "/v1/models/..%2F..%2Fetc:predict", {"instances": [1.0]}, 404,
                               "Servable not found for request: Latest(../../etc)"),
    # -- predict: JSON (jt ParseJson; hrah_test PredictRequestErrors) --
    "empty body": Rest("POST", "/v1/models/m:predict", b"", 400, "JSON Parse error: The document is empty"),
    "not JSON": Rest("POST", "/v1/models/m:predict", "instances = [1, 2]", 400,
                     "JSON Parse error: Invalid value. at offset: 0"),
    "truncated JSON": Rest("POST", "/v1/models/m:predict", '{"instances": [1.0,', 400, "JSON Parse error: "),
    "top level array": Rest("POST", "/v1/models/m:predict", [1.0, 2.0], 400, "Is not object"),
    "signature_name not string": Rest("POST", "/v1/models/m:predict", {"signature_name": 100}, 400,
                                      "'signature_name' key must be a string value."),
    "parse before lookup": Rest("POST", "/v1/models/nope:predict", b"", 400, "JSON Parse error: The document is empty"),
    "trailing garbage ignored": Rest("POST", "/v1/models/m:predict", '{"instances": [1.0]} trailing-garbage',
                                     expect={"predictions": [2.5]}),
    # -- predict: instances / inputs (jt FillPredictRequestFromJson; jt_test) --
    "wrong type": Rest("POST", "/v1/models/m:predict", {"instances": ["x", "y"]}, 400,
                       "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
                       "JSON Value: \"x\" Type: String is not of expected type: float"),
    "instances and inputs": Rest("POST", "/v1/models/m:predict", {"instances": [1.0], "inputs": [1.0]}, 400,
                                 "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"),
    "neither": Rest("POST", "/v1/models/m:predict", {}, 400, "Missing 'inputs' or 'instances' key"),
    "instances not a list": Rest("POST", "/v1/models/m:predict", {"instances": 5}, 400,
                                 "Expecting 'instances' to be an list/array"),
    "instances empty": Rest("POST", "/v1/models/m:predict", {"instances": []}, 400, "No values in 'instances' array"),
    "ragged size": Rest("POST", "/v1/models/m:predict", {"instances": [[1, 2], [3, 4], [5, 6, 7]]}, 400,
                        "Expecting tensor size: 2 but got: 3"),
    "ragged shape": Rest("POST", "/v1/models/m:predict", {"instances": [1, [1]]}, 400,
                         "Expecting shape [] but got: [1]"),
    "ragged nesting": Rest("POST", "/v1/models/m:predict", {"instances": [[1, 2], [3, 4], [[5, 6]]]}, 400,
                           "Expecting shape [2] but got: [1,2]"),
    "unknown signature": Rest("POST", "/v1/models/m:predict", {"signature_name": "nope", "instances": [1.0]}, 400,
                              'Serving signature name: "nope" not found in signature def'),
    "plain list, several inputs": Rest("POST", "/v1/models/mi:predict", {"instances": [1, 2]}, 400,
                                       "instances is a plain list, but expecting list of objects as multiple input "
                                       "tensors required as per tensorinfo_map"),
    "object then list": Rest("POST", "/v1/models/mi:predict", {"instances": [{"a": 1, "b": "x"}, [1, 20, 30]]},
                             400, "Expecting object but got list at item 1 of input list"),
    "list then object": Rest("POST", "/v1/models/s:predict", {"instances": [["baz", "bar"], {"s_in": ["baz", "bat"]}]},
                             400, "Expecting value/list but got object at item 1 of input list"),
    "missing key": Rest("POST", "/v1/models/mi:predict", {"instances": [{"a": 1}]}, 400, "keys must be equal to: a,b"),
    "unknown key": Rest("POST", "/v1/models/mi:predict", {"instances": [{"a": 1, "b": "x", "zzz": 1}]}, 400,
                        "key: zzz of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does not have named "
                        "input: zzz"),
    "columnar missing input": Rest("POST", "/v1/models/mi:predict", {"inputs": {"a": [1]}}, 400,
                                   "Missing named input: b in 'inputs' object."),
    "columnar plain list": Rest("POST", "/v1/models/mi:predict", {"inputs": [1, 2]}, 400,
                                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                                "required as per tensorinfo_map"),
    "columnar extra key ignored": Rest("POST", "/v1/models/mi:predict",
                                       {"inputs": {"a": [1], "b": ["x"], "extra": 5}}, expect={"outputs": [3]}),
    "int32 refuses 1.5": Rest("POST", "/v1/models/mi:predict", {"instances": [{"a": 1.5, "b": "x"}]}, 400,
                              "Type: Number is not of expected type: int32"),
    "half: instances": Rest("POST", "/v1/models/h:predict", {"instances": [3.0]}, 400,
                            "UNIMPLEMENTED: Conversion of JSON Value: 3.0 to type: half"),
    "half: inputs": Rest("POST", "/v1/models/h:predict", {"inputs": [3.0]}, 501,
                         "Conversion of JSON Value: 3.0 to type: half"),
    # -- b64 (jt JsonDecodeBase64Object, absl Base64Unescape) --
    "b64 invalid": Rest("POST", "/v1/models/s:predict", {"instances": [{"b64": "@@@@"}]}, 400,
                        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Unable to base64 "
                        "decode"),
    "b64 url-safe refused": Rest("POST", "/v1/models/s:predict", {"instances": [{"b64": "-_-_"}]}, 400,
                                 "Unable to base64 decode"),
    "b64 without padding": Rest("POST", "/v1/models/s:predict", {"instances": [{"b64": "aGVsbG8"}]},
                                expect={"predictions": [{"b64": "aGVsbG8="}]}),
    "b64 value not a string": Rest("POST", "/v1/models/s:predict", {"inputs": [[{"b64": 1}]]}, 400,
                                   "not formatted correctly for base64 data"),
    "b64 object not b64": Rest("POST", "/v1/models/s:predict", {"instances": [{"b64": 1}]}, 400,
                               "does not have named input: b64"),
    "b64 for a float input": Rest("POST", "/v1/models/m:predict", {"instances": [{"b64": "AAAA"}]}, 400,
                                  "Type: Object is not of expected type: float"),
    "b64 round trip (_bytes output)": Rest("POST", "/v1/models/s:predict",
                                           {"instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]},
                                           expect={"predictions": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}),
    # -- predict: answers (api_rest.md; hrah_test Predict) --
    "predict latest": Rest("POST", "/v1/models/m:predict", {"instances": [1.0, 2.0, 5.0]},
                           expect={"predictions": [2.5, 3.0, 4.5]}, version="2"),
    "predict columnar, version": Rest("POST", "/v1/models/m/versions/1:predict",
                                      {"signature_name": "serving_default", "inputs": [3.0, 4.0]},
                                      expect={"outputs": [3.5, 4.0]}, version="1"),
    "predict by label": Rest("POST", "/v1/models/m/labels/stable:predict", {"instances": [1.0, 2.0]},
                             expect={"predictions": [2.5, 3.0]}, version="1"),
    "predict by other label": Rest("POST", "/v1/models/m/labels/canary:predict", {"instances": [1.0]},
                                   expect={"predictions": [2.5]}, version="2"),
    "predict leading zeros": Rest("POST", "/v1/models/m/versions/001:predict", {"instances": [1.0]},
                                  expect={"predictions": [2.5]}, version="1"),
    "NaN and Infinity": Rest("POST", "/v1/models/m:predict", "{\"instances\": [NaN, Infinity, -Infinity]}",
                             expect=non_finite),
    "multiple inputs": Rest("POST", "/v1/models/mi:predict", {"instances": [{"a": 1, "b": "xy"}, {"a": 5, "b": ""}]},
                            expect={"predictions": [4, 10]}),
    # -- classify / regress (jt FillClassifyRegressRequestFromJson, cls, reg; hrah_test, jt_test JsonErrors) --
    "regress": Rest("POST", "/v1/models/m:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]},
                    expect={"results": [42.0]}),
    "classify": Rest("POST", "/v1/models/m:classify",
                     {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]},
                     expect={"results": [[["", 12.0]]]}),
    "classify with context": Rest("POST", "/v1/models/m:classify",
                                  {"signature_name": "classify_x_to_y", "context": {"x": 4.0}, "examples": [{}, {}]},
                                  expect={"results": [[["", 4.0]], [["", 4.0]]]}),
    "regress without examples": Rest("POST", "/v1/models/m:regress", {"signature_name": "regress_x_to_y"}, 400,
                                     "When method is classify, key 'examples' is expected and was not found"),
    "examples not a list": Rest("POST", "/v1/models/m:classify", {"examples": {"names": ["foo", "bar"]}}, 400,
                                "Expecting 'examples' value to be an list/array"),
    "examples empty": Rest("POST", "/v1/models/m:classify", {"examples": []}, 400, "'examples' value is an empty array"),
    "example not object": Rest("POST", "/v1/models/m:classify", {"examples": [[{"names": ["foo"]}]]}, 400,
                               "Example must be JSON object but got JSON Array"),
    "context not object": Rest("POST", "/v1/models/m:classify", {"context": [{"names": ["foo"]}]}, 400,
                               "Example must be JSON object but got JSON Array"),
    "classify signature_name list": Rest("POST", "/v1/models/m:classify",
                                         {"signature_name": ["hello"], "examples": [{"names": ["foo"]}]}, 400,
                                         "'signature_name' key must be a string"),
    "feature null": Rest("POST", "/v1/models/m:classify", {"examples": [{"names": [10, None]}]}, 400,
                         "Feature: names has element with unexpected JSON type: Null"),
    "feature mixed kinds": Rest("POST", "/v1/models/m:classify", {"examples": [{"names": [10, 10.0]}]}, 400,
                                "Unexpected element type in feature: names expecting type: int64"),
    "feature object": Rest("POST", "/v1/models/m:classify", {"examples": [{"names": [10, {"test": 10}]}]}, 400,
                           "Feature: names has element with unexpected JSON type: Object"),
    "feature nested list": Rest("POST", "/v1/models/m:classify", {"examples": [{"names": [[10], 20]}]}, 400,
                                "Feature: names has element with unexpected JSON type: Array"),
    "feature uint64": Rest("POST", "/v1/models/m:classify", {"examples": [{"names": [20, 18446744073709551603]}]}, 400,
                           "Feature: names has uint64_t element. Only int64_t is supported."),
    "classify on a predict signature": Rest("POST", "/v1/models/m:classify", {"examples": [{"x": 1.0}]}, 400,
                                            "No classification inputs found in SignatureDef:"),
    "classify unknown signature": Rest("POST", "/v1/models/m:classify",
                                       {"signature_name": "nope", "examples": [{"x": 1.0}]}, 400,
                                       "No signature was found with the name: nope"),
    "classify unknown model": Rest("POST", "/v1/models/nope:classify", {"examples": [{"x": 1.0}]}, 404,
                                   "Servable not found for request: Latest(nope)"),
    "classify body before lookup": Rest("POST", "/v1/models/nope:classify", {"examples": []}, 400,
                                        "'examples' value is an empty array"),
    # -- model failures and deadlines (http_server ToHTTPStatusCode) --
    "failure inside the model": Rest("POST", "/v1/models/broken:predict", {"instances": [1.0]}, 500,
                                     "Input/output error"),
    "past rest_api_timeout_in_ms": Rest("POST", "/v1/models/slow:predict", {"instances": [TIMEOUT_MS + 700]}, 504,
                                        "Deadline Exceeded", server="deadline_server"),
    # -- monitoring (http_server ProcessPrometheusRequest; tms_test testPrometheusEndpoint) --
    "prometheus": Rest("GET", "/monitoring/prometheus/metrics", expect=lambda r: "# TYPE" in r.text),
    "prometheus with query": Rest("GET", "/monitoring/prometheus/metrics?x=1", status=400,
                                  expect=lambda r: r.text.startswith("Unexpected path: /monitoring/prometheus/metrics?x=1")),
    # -- signflow's model: images checked before the graph (issue 6) --
    "signflow predict": Rest("POST", "/v1/models/sig:predict", {"instances": [{"b64": IMAGE_B64}]},
                             expect=signflow_prediction, version="1"),
    "signflow named input": Rest("POST", "/v1/models/sig:predict", {"instances": [{"image_bytes": {"b64": IMAGE_B64}}]},
                                 expect=signflow_prediction),
    "signflow predict_label": Rest("POST", "/v1/models/sig:predict",
                                   {"signature_name": "predict_label", "instances": [{"b64": IMAGE_B64}]},
                                   expect=signflow_labelled, version="1"),
    "signflow predict_label not an image": Rest("POST", "/v1/models/sig:predict",
                                                {"signature_name": "predict_label",
                                                 "instances": [{"b64": IMAGE_B64}, {"b64": NOT_IMAGE_B64}]}, 400,
                                                "element 1: not an acceptable image"),
    "signflow not an image": Rest("POST", "/v1/models/sig:predict", {"instances": [{"b64": NOT_IMAGE_B64}]}, 400,
                                  "Input image_bytes, element 0: not an acceptable image (not_an_image"),
    "signflow decompression bomb": Rest("POST", "/v1/models/sig:predict", {"instances": [{"b64": BOMB_B64}]}, 400,
                                        "decompression bomb"),
    "signflow over the pixel limit": Rest("POST", "/v1/models/sig:predict",
                                          {"instances": [{"b64": base64.b64encode(bomb_png(10000, 10000)).decode()}]},
                                          400, "too_many_pixels: 10000x10000 exceeds the limit"),
    "signflow bad image among good": Rest("POST", "/v1/models/sig:predict",
                                          {"instances": [{"b64": IMAGE_B64}, {"b64": NOT_IMAGE_B64}]}, 400,
                                          "element 1: not an acceptable image"),
    "signflow classify": Rest("POST", "/v1/models/sig:classify",
                              {"signature_name": "classify", "examples": [{"image": {"b64": IMAGE_B64}}]},
                              expect=signflow_classes),
    "signflow classify bad image": Rest("POST", "/v1/models/sig:classify",
                                        {"signature_name": "classify", "examples": [{"image": {"b64": NOT_IMAGE_B64}}]},
                                        400, "Example 0, feature image: not an acceptable image"),
    "signflow regress": Rest("POST", "/v1/models/sig:regress", {"examples": [{"image": {"b64": IMAGE_B64}}]}, 400,
                             "No regression inputs found in SignatureDef"),
    "signflow regress named": Rest("POST", "/v1/models/sig:regress",
                                   {"signature_name": "regress", "examples": [{"image": {"b64": IMAGE_B64}}]}, 400,
                                   "No signature was found with the name: regress"),
}


def check_predicate(name: str, predicate: Callable, response: Any, shown: str) -> None:
    """Fail `name` unless `predicate(response)` returns True.

    Only True passes: a predicate that returns None (a forgotten return) or a
    falsy value must not pass silently. The message names the case and shows the body.
    """
    try:
        verdict = predicate(response)
    except Exception as err:  # an assert inside the predicate, or the body lacking what it reads
        pytest.fail(f"case {name!r}: predicate raised {type(err).__name__}: {err}\nbody: {shown[:2000]}")
    assert verdict is True, f"case {name!r}: predicate returned {verdict!r}\nbody: {shown[:2000]}"


def send(server, case: Rest) -> requests.Response:
    body = case.body
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    return requests.request(case.method, server.rest_url + case.path, data=body, headers=case.headers, timeout=30)


@pytest.mark.parametrize("name", list(REST_CASES))
def test_rest(request, name):
    case = REST_CASES[name]
    response = send(request.getfixturevalue(case.server), case)
    assert response.status_code == case.status, f"case {name!r}: body: {response.text[:2000]}"
    if case.expect == "EMPTY":
        assert response.content == b"", f"case {name!r}: body: {response.text[:2000]}"
    elif isinstance(case.expect, str):
        assert response.headers["content-type"] == "application/json", f"case {name!r}: {response.headers}"
        assert case.expect in response.json()["error"], f"case {name!r}: body: {response.text[:2000]}"
    elif callable(case.expect):
        check_predicate(name, case.expect, response, response.text)
    elif case.expect is not None:
        assert response.json() == case.expect, f"case {name!r}: body: {response.text[:2000]}"
    if case.version is not None:
        assert response.headers.get("X-Model-Version") == case.version, f"case {name!r}: {response.headers}"


def test_every_error_answer_is_tf_serving_json(server):
    """Every /v1 error in the table is {"error": ...} and nothing else (MakeJsonFromStatus)."""
    for name, case in REST_CASES.items():
        if case.status >= 400 and isinstance(case.expect, str) and case.expect != "EMPTY" and case.server == "server":
            response = send(server, case)
            assert list(response.json()) == ["error"], name


def test_server_still_serves_after_the_table(server):
    response = requests.post(server.rest_url + "/v1/models/m:predict", json={"instances": [1.0]}, timeout=10)
    assert response.json() == {"predictions": [2.5]}


# ---------------------------------------------------------------------------------------------
# gRPC: the same cases through tensorflow_serving's generated stubs


def spec(name: str = "m", version: int | None = None, label: str | None = None, signature: str = "") -> dict:
    return {"name": name, "version": version, "label": label, "signature": signature}


def _fill_spec(target, name="m", version=None, label=None, signature=""):
    target.name = name
    if version is not None:
        target.version.value = version
    if label is not None:
        target.version_label = label
    if signature:
        target.signature_name = signature


def predict(inputs: dict, output_filter=(), **model) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(output_filter=list(output_filter))
    _fill_spec(request.model_spec, **model)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def examples(*features: dict, context: dict | None = None):
    def example(values: dict) -> example_pb2.Example:
        proto = example_pb2.Example()
        for key, value in values.items():
            feature = proto.features.feature[key]
            if isinstance(value, bytes):
                feature.bytes_list.value.append(value)
            else:
                feature.float_list.value.append(value)
        return proto

    def fill(request_input):
        if context is None:
            request_input.example_list.examples.extend(example(f) for f in features)
        else:
            request_input.example_list_with_context.context.CopyFrom(example(context))
            request_input.example_list_with_context.examples.extend(example(f) for f in features)
    return fill


def classify(fill, **model) -> classification_pb2.ClassificationRequest:
    request = classification_pb2.ClassificationRequest()
    _fill_spec(request.model_spec, **model)
    fill(request.input)
    return request


def regress(fill, **model) -> regression_pb2.RegressionRequest:
    request = regression_pb2.RegressionRequest()
    _fill_spec(request.model_spec, **model)
    fill(request.input)
    return request


def metadata(fields=("signature_def",), **model) -> get_model_metadata_pb2.GetModelMetadataRequest:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=list(fields))
    _fill_spec(request.model_spec, **model)
    return request


def status(**model) -> get_model_status_pb2.GetModelStatusRequest:
    request = get_model_status_pb2.GetModelStatusRequest()
    _fill_spec(request.model_spec, **model)
    return request


def outputs_of(expected: dict, version: int) -> Callable:
    def check(response) -> bool:
        assert response.model_spec.version.value == version
        assert response.model_spec.signature_name == "serving_default"
        for name, values in expected.items():
            np.testing.assert_allclose(tf.make_ndarray(response.outputs[name]), values)
        assert set(response.outputs) == set(expected)
        return True
    return check


def classes_of(expected: list, version: int) -> Callable:
    def check(response) -> bool:
        assert response.model_spec.version.value == version
        got = [[(c.label, pytest.approx(c.score)) for c in entry.classes] for entry in response.result.classifications]
        assert got == expected
        return True
    return check


@dataclass(frozen=True)
class Rpc:
    method: str
    request: Any
    code: grpc.StatusCode = grpc.StatusCode.OK
    expect: Any = None  # str: substring of details(); callable(response) -> True, as for Rest
    timeout: float = 30


X = np.array([1.0, 2.0, 5.0], np.float32)
GRPC_CASES = {
    # -- the REST table's cases, as gRPC sees them --
    "predict latest": Rpc("Predict", predict({"x": X}), expect=outputs_of({"y": [2.5, 3.0, 4.5]}, 2)),
    "predict version": Rpc("Predict", predict({"x": X}, version=1), expect=outputs_of({"y": [2.5, 3.0, 4.5]}, 1)),
    "predict by label": Rpc("Predict", predict({"x": X}, label="stable"), expect=outputs_of({"y": [2.5, 3.0, 4.5]}, 1)),
    "predict unknown model": Rpc("Predict", predict({"x": X}, name="foo"), grpc.StatusCode.NOT_FOUND,
                                 "Servable not found for request: Latest(foo)"),
    "predict unknown version": Rpc("Predict", predict({"x": X}, version=99), grpc.StatusCode.NOT_FOUND,
                                   "Servable not found for request: Specific(m, 99)"),
    "predict unknown label": Rpc("Predict", predict({"x": X}, label="Version_Nonexistent"),
                                 grpc.StatusCode.INVALID_ARGUMENT,
                                 "Unrecognized servable version label: Version_Nonexistent"),
    # pu: gRPC says FAILED_PRECONDITION where REST says INVALID_ARGUMENT.
    "unknown signature": Rpc("Predict", predict({"x": X}, signature="nope"), grpc.StatusCode.FAILED_PRECONDITION,
                             'Serving signature key "nope" not found.'),
    "wrong input name": Rpc("Predict", predict({"zzz": X}), grpc.StatusCode.INVALID_ARGUMENT,
                            "input tensor alias not found in signature: zzz"),
    "missing input": Rpc("Predict", predict({"a": np.array([1], np.int32)}, name="mi"),
                         grpc.StatusCode.INVALID_ARGUMENT,
                         "input size does not match signature: 1!=2 len({a}) != len({a,b}). Sent extra: {}. "
                         "Missing but required: {b}."),
    "wrong type": Rpc("Predict", predict({"x": np.array([b"x"])}), grpc.StatusCode.INVALID_ARGUMENT,
                      "Expects arg[0] to be float but string is provided"),
    "output filter": Rpc("Predict", predict({"x": X}, output_filter=["nope"]), grpc.StatusCode.INVALID_ARGUMENT,
                         "output tensor alias not found in signature: nope Outputs expected to be in the set {y}."),
    "duplicate output filter": Rpc("Predict", predict({"x": X}, output_filter=["y", "y"]),
                                   grpc.StatusCode.INVALID_ARGUMENT, "duplicate output tensor alias: y"),
    "missing model_spec": Rpc("Predict", predict_pb2.PredictRequest(), grpc.StatusCode.INVALID_ARGUMENT,
                              "Missing ModelSpec"),
    "empty model name": Rpc("Predict", predict({"x": X}, name=""), grpc.StatusCode.INVALID_ARGUMENT,
                            "ModelSpec has no name specified."),
    "bytes identity": Rpc("Predict", predict({"s_in": np.array([b"hello", b"\xff\x00"], dtype=object)}, name="s"),
                          expect=lambda r: list(r.outputs["out_bytes"].string_val) == [b"hello", b"\xff\x00"]),
    "half precision": Rpc("Predict", predict({"x": np.array([1.5], np.float16)}, name="h"),
                          expect=lambda r: tf.make_ndarray(r.outputs["y"]).tolist() == [3.0]),
    "failure inside the model": Rpc("Predict", predict({"x": X}, name="broken"), grpc.StatusCode.UNKNOWN,
                                    "Input/output error"),
    "past the client deadline": Rpc("Predict", predict({"x": np.array([1000.0], np.float32)}, name="slow"),
                                    grpc.StatusCode.DEADLINE_EXCEEDED, None, timeout=0.3),
    "classify": Rpc("Classify", classify(examples({"x": 20.0}), signature="classify_x_to_y"),
                    expect=classes_of([[("", 12.0)]], 2)),
    "classify with context": Rpc("Classify", classify(examples({}, {}, context={"x": 4.0}), signature="classify_x_to_y"),
                                 expect=classes_of([[("", 4.0)], [("", 4.0)]], 2)),
    "classify on a predict signature": Rpc("Classify", classify(examples({"x": 1.0})), grpc.StatusCode.INVALID_ARGUMENT,
                                           "No classification inputs found in SignatureDef:"),
    "classify unknown signature": Rpc("Classify", classify(examples({"x": 1.0}), signature="nope"),
                                      grpc.StatusCode.INVALID_ARGUMENT, "No signature was found with the name: nope"),
    "classify no examples": Rpc("Classify", classify(examples(), signature="classify_x_to_y"),
                                grpc.StatusCode.INVALID_ARGUMENT, "Input is empty."),
    "classify unknown model": Rpc("Classify", classify(examples({"x": 1.0}), name="nope"), grpc.StatusCode.NOT_FOUND,
                                  "Servable not found for request: Latest(nope)"),
    "regress": Rpc("Regress", regress(examples({"x": 80.0}), signature="regress_x_to_y"),
                   expect=lambda r: [v.value for v in r.result.regressions] == [42.0]
                   and r.model_spec.version.value == 2 and r.model_spec.signature_name == "regress_x_to_y"),
    "regress without such signature": Rpc("Regress", regress(examples({"image": IMAGE}), name="sig"),
                                          grpc.StatusCode.INVALID_ARGUMENT, "No regression inputs found in SignatureDef"),
    "metadata": Rpc("GetModelMetadata", metadata(version=1),
                    expect=lambda r: r.model_spec.version.value == 1 and "signature_def" in r.metadata),
    "metadata no field": Rpc("GetModelMetadata", metadata(fields=()), grpc.StatusCode.INVALID_ARGUMENT,
                             "GetModelMetadataRequest must specify at least one metadata_field"),
    "metadata bad field": Rpc("GetModelMetadata", metadata(fields=("nope",)), grpc.StatusCode.INVALID_ARGUMENT,
                              "Metadata field nope is not supported"),
    "metadata unknown model": Rpc("GetModelMetadata", metadata(name="nope"), grpc.StatusCode.NOT_FOUND,
                                  "Servable not found for request: Latest(nope)"),
    "status": Rpc("GetModelStatus", status(),
                  expect=lambda r: [s.version for s in r.model_version_status] == [2, 1]),
    "status ignores label": Rpc("GetModelStatus", status(label="doesnotexist"),
                                expect=lambda r: [s.version for s in r.model_version_status] == [2, 1]),
    "status unknown version": Rpc("GetModelStatus", status(version=99), grpc.StatusCode.NOT_FOUND,
                                  "Could not find version 99 of model m"),
    "status unknown model": Rpc("GetModelStatus", status(name="nope"), grpc.StatusCode.NOT_FOUND,
                                "Could not find any versions of model nope"),
    "signflow predict": Rpc("Predict", predict({"image_bytes": np.array([IMAGE], dtype=object)}, name="sig"),
                            expect=lambda r: set(r.outputs) == {"probabilities"}
                            and list(r.outputs["probabilities"].tensor_shape.dim[1:2])[0].size == 3),
    "signflow predict_label": Rpc("Predict", predict({"image_bytes": np.array([IMAGE], dtype=object)}, name="sig",
                                                     signature="predict_label"),
                                  expect=lambda r: set(r.outputs) == {"label", "score", "probabilities"}
                                  and r.outputs["label"].string_val[0].startswith(b"signer_")),
    "signflow predict_label not an image": Rpc("Predict", predict({"image_bytes": np.array([b"nope"], dtype=object)},
                                                                  name="sig", signature="predict_label"),
                                               grpc.StatusCode.INVALID_ARGUMENT,
                                               "Input image_bytes, element 0: not an acceptable image"),
    "signflow not an image": Rpc("Predict", predict({"image_bytes": np.array([b"nope"], dtype=object)}, name="sig"),
                                 grpc.StatusCode.INVALID_ARGUMENT, "Input image_bytes, element 0: not an acceptable image"),
    "signflow decompression bomb": Rpc("Predict", predict({"image_bytes": np.array([bomb_png()], dtype=object)},
                                                          name="sig"),
                                       grpc.StatusCode.INVALID_ARGUMENT, "decompression bomb"),
    "signflow classify": Rpc("Classify", classify(examples({"image": IMAGE}), name="sig", signature="classify"),
                             expect=lambda r: [c.label for c in r.result.classifications[0].classes]
                             == ["signer_00", "signer_01", "signer_02"]),
}


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield channel


def call(channel, method: str, request, timeout: float):
    if method in ("GetModelStatus", "HandleReloadConfigRequest"):
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
    else:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return getattr(stub, method)(request, timeout=timeout)


@pytest.mark.parametrize("name", list(GRPC_CASES))
def test_grpc(channel, name):
    case = GRPC_CASES[name]
    if case.code == grpc.StatusCode.OK:
        response = call(channel, case.method, case.request, case.timeout)
        if case.expect is not None:
            check_predicate(name, case.expect, response, str(response))
        return
    with pytest.raises(grpc.RpcError) as caught:
        call(channel, case.method, case.request, case.timeout)
    assert caught.value.code() == case.code, f"case {name!r}: {caught.value.details()}"
    if case.expect is not None:
        assert case.expect in caught.value.details(), f"case {name!r}: {caught.value.details()}"


def test_grpc_multi_inference(channel):
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify_x_to_y", "tensorflow/serving/classify"),
                              ("regress_x_to_y", "tensorflow/serving/regress")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "m"
        task.model_spec.signature_name = signature
    examples({"x": 20.0})(request.input)
    response = call(channel, "MultiInference", request, 30)
    classify_result, regress_result = response.results
    assert classify_result.classification_result.classifications[0].classes[0].score == pytest.approx(12.0)
    assert regress_result.regression_result.regressions[0].value == pytest.approx(12.0)
    assert {r.model_spec.version.value for r in response.results} == {2}

    request.tasks[1].model_spec.signature_name = "classify_x_to_y"
    with pytest.raises(grpc.RpcError) as caught:
        call(channel, "MultiInference", request, 30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Duplicate evaluation of signature: classify_x_to_y" in caught.value.details()


def test_grpc_reload_refuses_other_config_types(channel):
    request = model_management_pb2.ReloadConfigRequest()
    request.config.custom_model_config.Pack(example_pb2.Example())
    with pytest.raises(grpc.RpcError) as caught:
        call(channel, "HandleReloadConfigRequest", request, 30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Only ModelConfigList is currently supported" in caught.value.details()


def test_prometheus_counts_requests_per_model_and_version(server):
    requests.post(server.rest_url + "/v1/models/m/versions/1:predict", json={"instances": [1.0]}, timeout=10)
    requests.post(server.rest_url + "/v1/models/foo:predict", json={"instances": [1.0]}, timeout=10)
    text = requests.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=10).text
    assert ':tensorflow:serving:request_count{model_name="m",status="OK"}' in text
    assert 'signflow_serving_requests_total{api="predict",code="OK",entrypoint="REST",model="m",version="1"}' in text
    assert 'signflow_serving_requests_total{api="predict",code="NOT_FOUND",entrypoint="REST",model="foo",version=""}' \
        in text
    assert re.search(r':tensorflow:serving:request_latency_bucket\{API="predict",entrypoint="REST",le="[^"]+",'
                     r'model_name="m"\}', text)
    assert 'signflow_serving_model_load_events_total{event="loaded",model="m",version="2"} 1.0' in text
    assert 'signflow_serving_batch_size_count{model="m",version="1"}' in text
