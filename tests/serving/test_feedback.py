"""The feedback endpoint, GET /signflow/status and the request log, on real servers over real HTTP.

What feedback writes is read back with ingestion's own reader
(components.ingest.records): the proof that the two sides agree on the record
shape and the label rule.
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from components.ingest.records import Accepted, LandedFile, Rejected, parse_record, read_landed_file
from serving import cli, contract, feedback
from serving.request_log import RequestLog
from serving.server import ServerThread
from serving.settings import SettingsError
from tests.fixtures.ports import free_port
from tests.fixtures.tiny_model import DEFAULT_LABELS, make_image_bytes
from tests.serving.conftest import SIGNFLOW_MODEL, install_version, make_settings
from tests.serving.test_hostile import assert_tf_serving_400, raw_request

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token_value"
MAX_PIXELS = 50_000  # 160x64 images pass; 300x200 is too many pixels
MAX_REQUEST_BYTES = 1_000_000


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def instance(seed: int = 0, label: str = "signer_01", fmt: str = "PNG") -> dict:
    return {"image_bytes": b64(make_image_bytes(fmt, seed=seed)), "label": label}


def feedback_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def read_with_ingestion(path: Path) -> list:
    landed = LandedFile(path=str(path), name=f"inbox/{path.name}", order=0, folder_label=None)
    return list(read_landed_file(landed))


@pytest.fixture(scope="module")
def served_model(model_store, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("feedback_model") / SIGNFLOW_MODEL
    install_version(model_store["signflow"], base, 1)
    return base


@pytest.fixture(scope="module")
def open_server(served_model, tmp_path_factory):
    """Feedback without a token (loopback), a status file, Prometheus on."""
    root = tmp_path_factory.mktemp("feedback_open")
    monitoring = root / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }")
    settings = make_settings(
        model_name=SIGNFLOW_MODEL, model_base_path=str(served_model), feedback_dir=str(root / "inbox"),
        training_status_file=str(root / "training_status.json"), monitoring_config_file=str(monitoring),
        max_image_pixels=MAX_PIXELS, max_request_bytes=MAX_REQUEST_BYTES)
    server = ServerThread(settings).start()
    yield server
    server.stop()


@pytest.fixture
def inbox(open_server) -> Path:
    """The open server's feedback folder, emptied for each test."""
    directory = Path(open_server.server.settings.feedback_dir)
    for path in directory.iterdir():
        path.unlink()
    return directory


def post_feedback(server: ServerThread, document, model: str = SIGNFLOW_MODEL, **kwargs) -> requests.Response:
    data = document if isinstance(document, (bytes, str)) else json.dumps(document)
    return requests.post(f"{server.rest_url}/v1/models/{model}/feedback", data=data, timeout=60, **kwargs)


def predict(server: ServerThread, images: list[bytes], signature: str | None = None) -> requests.Response:
    body = {"instances": [{"image_bytes": b64(image)} for image in images]}
    if signature is not None:
        body["signature_name"] = signature
    return requests.post(f"{server.rest_url}/v1/models/{SIGNFLOW_MODEL}:predict", json=body, timeout=60)


# -- feedback -----------------------------------------------------------------------------


def test_accepted_instances_land_as_one_file_that_ingestion_reads(open_server, inbox):
    sent = [(make_image_bytes(fmt, seed=i), label)
            for i, (fmt, label) in enumerate([("PNG", "signer_00"), ("JPEG", "Zoë Ünal"), ("GIF", "署名者 7")])]
    response = post_feedback(open_server, {"instances": [{"image_bytes": b64(image), "label": label}
                                                         for image, label in sent]})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["accepted"] == 3 and answer["rejected"] == []
    (written,) = feedback_files(inbox)
    assert answer["file"] == written.name
    assert written.name.startswith("feedback-") and written.name.endswith(".jsonl")
    assert [p.name for p in inbox.iterdir()] == [written.name]  # no temp file left

    outcomes = read_with_ingestion(written)
    assert all(isinstance(outcome, Accepted) for outcome in outcomes), outcomes
    assert [(o.image, o.label) for o in outcomes] == sent
    lines = [json.loads(line) for line in written.read_text(encoding="utf-8").splitlines()]
    for line, outcome in zip(lines, outcomes):
        assert line["sha256"] == outcome.info.sha256 == hashlib.sha256(outcome.image).hexdigest()
        assert line["model"] == SIGNFLOW_MODEL and line["model_version"] == 1
        assert line["received_at"].endswith("Z")


def test_columnar_inputs_are_accepted(open_server, inbox):
    images = [make_image_bytes(seed=s) for s in (1, 2)]
    response = post_feedback(open_server, {"inputs": {"image_bytes": [b64(i) for i in images],
                                                      "label": ["signer_01", "signer_02"]}})
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2
    (written,) = feedback_files(inbox)
    assert [(o.image, o.label) for o in read_with_ingestion(written)] == list(zip(images, ["signer_01", "signer_02"]))


def test_mixed_request_writes_the_valid_ones_and_explains_the_others(open_server, inbox):
    good = [instance(seed=1, label="signer_01"), instance(seed=2, label="signer_02", fmt="JPEG")]
    png = make_image_bytes(seed=3)
    bad = [
        ({"image_bytes": {"b64": "not base64!"}, "label": "signer_01"}, "invalid_base64"),
        ({"image_bytes": {"b64": base64.urlsafe_b64encode(b"\xfb\xff" * 30).decode()}, "label": "a"},
         "invalid_base64"),  # predict's strict alphabet
        ({"image_bytes": b64(b"hello, not an image"), "label": "signer_01"}, "not_an_image"),
        ({"image_bytes": b64(png[: len(png) // 2]), "label": "signer_01"}, "corrupt_image"),
        ({"image_bytes": b64(make_image_bytes(size=(300, 200))), "label": "signer_01"}, "too_many_pixels"),
        ({"image_bytes": b64(png)}, "missing_label"),
        ({"image_bytes": b64(png), "label": "   "}, "missing_label"),
        ({"image_bytes": b64(png), "label": 3}, "invalid_label"),
        ({"image_bytes": b64(png), "label": "two\nlines"}, "invalid_label"),
        ({"image_bytes": b64(png), "label": "signer_01 "}, "invalid_label"),
        ({"image_bytes": b64(png), "label": "x" * 257}, "invalid_label"),
        ({"image_bytes": b64(png), "label": "lone \ud800 surrogate"}, "invalid_label"),
        ({"image_bytes": b64(png), "label": "unknown"}, "invalid_label"),  # predict_label's open-set answer
        ({"label": "signer_01"}, "missing_image"),
        ({"image_bytes": base64.b64encode(png).decode(), "label": "signer_01"}, "invalid_image_field"),
        ("just a string", "not_an_object"),
    ]
    instances = [good[0], *[case for case, _ in bad], good[1]]
    response = post_feedback(open_server, {"instances": instances})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["accepted"] == 2
    assert [(r["index"], r["reason"]) for r in answer["rejected"]] == [
        (i + 1, reason) for i, (_, reason) in enumerate(bad)]
    assert all(r["error"] and "BytesIO" not in r["error"] for r in answer["rejected"])
    (written,) = feedback_files(inbox)
    outcomes = read_with_ingestion(written)
    assert [o.label for o in outcomes] == ["signer_01", "signer_02"]
    assert all(isinstance(o, Accepted) for o in outcomes)

    metrics = requests.get(f"{open_server.rest_url}/monitoring/prometheus/metrics", timeout=30).text
    assert f'signflow_serving_feedback_instances_total{{model="{SIGNFLOW_MODEL}",outcome="rejected"}}' in metrics


def test_all_invalid_is_400_with_reasons_and_writes_nothing(open_server, inbox):
    response = post_feedback(open_server, {"instances": [
        {"image_bytes": b64(b"nope"), "label": "signer_01"}, {"image_bytes": b64(make_image_bytes())}]})
    assert response.status_code == 400
    answer = response.json()
    assert "nothing was written" in answer["error"]
    assert [(r["index"], r["reason"]) for r in answer["rejected"]] == [(0, "not_an_image"), (1, "missing_label")]
    assert list(inbox.iterdir()) == []


@pytest.mark.parametrize("body, message", [
    (b'{"instances": [', "JSON Parse error"),
    (b"", "JSON Parse error: The document is empty"),
    (b"\xff\xfe\x00garbage", "JSON Parse error"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"instances": []}', "No instances"),
    (b'{"instances": {"a": 1}}', "'instances' must be a list"),
    (b'{"signature_name": "x"}', "exactly one of 'instances'"),
    (json.dumps({"instances": [], "inputs": {}}).encode(), "exactly one of 'instances'"),
    (b'{"inputs": {"image_bytes": [1, 2], "label": ["a"]}}', "same length"),
])
def test_malformed_bodies_are_400(open_server, inbox, body, message):
    response = post_feedback(open_server, body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert list(inbox.iterdir()) == []


IMAGE_FIELD = json.dumps(b64(make_image_bytes(seed=6))).encode()
# Bodies with bytes that are not UTF-8 (0xFF, an overlong '/', the UTF-8 form of a surrogate) in each place.
NOT_UTF8_BODIES = {
    "label": b'{"instances": [{"image_bytes": <IMAGE>, "label": "signer_<S>"}]}',
    "image key": b'{"instances": [{"<S>": <IMAGE>, "label": "signer_01"}]}',
    "b64 text": b'{"instances": [{"image_bytes": {"b64": "<S>"}, "label": "signer_01"}]}',
    "column name": b'{"inputs": {"<S>": [<IMAGE>], "label": ["signer_01"]}}',
    "ignored key": b'{"instances": [{"image_bytes": <IMAGE>, "label": "signer_01", "<S>": 1}]}',
}


@pytest.mark.parametrize("bad", [b"\xff", b"\xc0\xaf", b"\xed\xb3\xbf"], ids=["0xFF", "overlong", "surrogate"])
@pytest.mark.parametrize("place", list(NOT_UTF8_BODIES))
def test_bodies_that_are_not_utf8_are_400_and_write_nothing(open_server, inbox, place, bad):
    body = NOT_UTF8_BODIES[place].replace(b"<IMAGE>", IMAGE_FIELD).replace(b"<S>", bad)
    response = post_feedback(open_server, body, headers={"Content-Type": "application/json"})
    message = assert_tf_serving_400(response.status_code, response.content)
    assert message == f"JSON Parse error: Invalid encoding in string. at offset: {body.index(bad)}"
    assert list(inbox.iterdir()) == []
    assert post_feedback(open_server, {"instances": [instance()]}).status_code == 200


def test_lone_surrogate_escapes_are_judged_per_instance(open_server, inbox):
    # Valid JSON grammar, not text: each instance holding one is refused with ingestion's reason.
    good = json.dumps(instance(seed=7)).encode()
    body = (b'{"instances": [' + good + b', {"image_bytes": ' + IMAGE_FIELD + b', "label": "signer_\\udcff"}, '
            b'{"\\ud800": ' + IMAGE_FIELD + b', "label": "signer_01"}, '
            b'{"image_bytes": {"b64": "\\udcff"}, "label": "signer_01"}]}')
    response = post_feedback(open_server, body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    answer = json.loads(response.content.decode("utf-8"))
    assert answer["accepted"] == 1
    assert [(r["index"], r["reason"]) for r in answer["rejected"]] == [
        (1, "invalid_label"), (2, "missing_image"), (3, "invalid_base64")]


@pytest.mark.parametrize("target", ["/v1/models/a%FF/feedback", "/v1/models/%ED%B3%BF/feedback"])
def test_model_names_that_are_not_utf8_are_400(open_server, inbox, target):
    status, answer = raw_request(open_server, "POST", target, json.dumps({"instances": [instance()]}).encode(),
                                 {"Content-Type": "application/json"})
    assert "is not valid UTF-8" in assert_tf_serving_400(status, answer)
    assert list(inbox.iterdir()) == []
    assert post_feedback(open_server, {"instances": [instance()]}).status_code == 200


@pytest.mark.parametrize("target", ["/v1/models/%FF%2Ffeedback", f"/v1/models/{SIGNFLOW_MODEL}%2Ffeedback"])
def test_an_escaped_slash_is_not_the_feedback_route(open_server, inbox, target):
    # The route matches the decoded path; TF Serving's dispatcher sees one segment and no verb.
    status, answer = raw_request(open_server, "POST", target, json.dumps({"instances": [instance()]}).encode())
    assert assert_tf_serving_400(status, answer) == f"Malformed request: POST {target}"
    assert list(inbox.iterdir()) == []


def test_too_many_instances_and_too_large_bodies(open_server, inbox):
    response = post_feedback(open_server, {"instances": [{"label": "a"}] * 1001})
    assert response.status_code == 400 and "at most 1000" in response.json()["error"]
    response = post_feedback(open_server, b'{"instances": ["' + b"A" * MAX_REQUEST_BYTES + b'"]}')
    assert response.status_code == 413 and "--max_request_bytes" in response.json()["error"]
    assert list(inbox.iterdir()) == []


def test_unknown_model_is_404_in_tf_servings_words(open_server, inbox):
    response = post_feedback(open_server, {"instances": [instance()]}, model="nope")
    assert response.status_code == 404
    assert response.json() == {"error": "Servable not found for request: Latest(nope)"}
    assert list(inbox.iterdir()) == []


def test_tf_serving_urls_are_unchanged_around_the_feedback_route(open_server, inbox):
    url = f"{open_server.rest_url}/v1/models/{SIGNFLOW_MODEL}"
    # Another method on the feedback path is still the /v1 dispatcher's (TF Serving's 400).
    response = requests.get(f"{url}/feedback", timeout=30)
    assert response.status_code == 400
    assert response.json() == {"error": f"Malformed request: GET /v1/models/{SIGNFLOW_MODEL}/feedback"}
    assert requests.get(url, timeout=30).json()["model_version_status"][0]["state"] == "AVAILABLE"
    response = requests.post(f"{url}:feedback", json={"instances": [instance()]}, timeout=30)
    assert response.status_code == 400 and "Malformed request" in response.json()["error"]
    assert list(inbox.iterdir()) == []


def test_concurrent_requests_each_get_their_own_complete_file(open_server, inbox):
    def send(i: int) -> requests.Response:
        return post_feedback(open_server, {"instances": [instance(seed=i, label=f"signer_{i:02d}"),
                                                         instance(seed=100 + i, label=f"signer_{i:02d}")]})

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(send, range(20)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    names = {r.json()["file"] for r in responses}
    files = feedback_files(inbox)
    assert len(names) == 20 and {p.name for p in files} == names
    assert sorted(p.name for p in inbox.iterdir()) == sorted(names)  # no temp files
    labels = set()
    for path in files:
        outcomes = read_with_ingestion(path)
        assert len(outcomes) == 2 and all(isinstance(o, Accepted) for o in outcomes)
        assert outcomes[0].label == outcomes[1].label
        labels.add(outcomes[0].label)
    assert labels == {f"signer_{i:02d}" for i in range(20)}


def test_predict_still_serves_after_feedback(open_server, inbox):
    post_feedback(open_server, b"{broken")
    post_feedback(open_server, {"instances": [instance()]})
    response = predict(open_server, [make_image_bytes(seed=5)])
    assert response.status_code == 200
    assert len(response.json()["predictions"][0]) == len(DEFAULT_LABELS)


def test_token_is_required_when_configured(served_model, tmp_path):
    settings = make_settings(model_name=SIGNFLOW_MODEL, model_base_path=str(served_model),
                             feedback_dir=str(tmp_path / "inbox"), feedback_token=TOKEN)
    hello = Route("/hello", lambda request: PlainTextResponse("hi"))
    with ServerThread(settings, extra_routes=[hello]) as server:
        body = {"instances": [instance()]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": "Bearer"}, {"Authorization": f"Bearer {TOKEN}x"}):
            response = post_feedback(server, body, headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "error" in response.json()
        assert feedback_files(tmp_path / "inbox") == []
        # Authentication comes first: an unauthenticated client learns nothing about models.
        assert post_feedback(server, body, model="nope").status_code == 401
        for scheme in ("Bearer", "bearer"):
            response = post_feedback(server, body, headers={"Authorization": f"{scheme} {TOKEN}"})
            assert response.status_code == 200, response.text
        assert len(feedback_files(tmp_path / "inbox")) == 2
        # TF Serving's API needs no token, and caller-given extra_routes still mount.
        assert predict(server, [make_image_bytes()]).status_code == 200
        assert requests.get(f"{server.rest_url}/hello", timeout=30).text == "hi"


def test_unwritable_inbox_is_500_and_nothing_is_lost_silently(served_model, tmp_path, start_server, caplog):
    directory = tmp_path / "inbox"
    with caplog.at_level("WARNING", logger="serving.feedback"):
        server = start_server(make_settings(model_name=SIGNFLOW_MODEL, model_base_path=str(served_model),
                                            feedback_dir=str(directory)))
    assert any("unauthenticated" in record.getMessage() for record in caplog.records)
    directory.rmdir()  # the folder vanished under the server (unmounted volume, cleanup script)
    response = post_feedback(server, {"instances": [instance()]})
    assert response.status_code == 500
    assert "nothing was written" in response.json()["error"]
    directory.mkdir()
    assert post_feedback(server, {"instances": [instance()]}).status_code == 200
    assert predict(server, [make_image_bytes()]).status_code == 200


def test_python_m_serving_mounts_feedback_with_the_token_from_the_environment(served_model, tmp_path):
    """The command-line server (not only ServerThread) has the routes; the token comes from the env."""
    grpc_port, rest_port = free_port(), free_port()
    env = {**os.environ, "SIGNFLOW_FEEDBACK_TOKEN": TOKEN}
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         f"--model_name={SIGNFLOW_MODEL}", f"--model_base_path={served_model}", f"--feedback_dir={tmp_path}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = process.stdout.readline()
        assert f"http://127.0.0.1:{rest_port}" in ready, ready + (process.stderr.read() if process.poll() else "")
        url = f"http://127.0.0.1:{rest_port}/v1/models/{SIGNFLOW_MODEL}/feedback"
        body = {"instances": [instance()]}
        assert requests.post(url, json=body, timeout=30).status_code == 401
        response = requests.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert response.status_code == 200, response.text
        assert (tmp_path / response.json()["file"]).is_file()
        status = requests.get(f"http://127.0.0.1:{rest_port}/signflow/status", timeout=30).json()
        assert status["models"][0]["serving_version"] == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_feedback_disabled_is_404(signflow_server):
    response = post_feedback(signflow_server, {"instances": [instance()]})
    assert response.status_code == 404
    assert "not enabled" in response.json()["error"]


def test_feedback_dir_is_created_and_stale_temp_files_removed(tmp_path):
    directory = tmp_path / "new" / "inbox"
    feedback.prepare_feedback_dir(str(directory))
    assert directory.is_dir()
    stale, fresh, other = directory / ".feedback-old.jsonl.tmp", directory / ".feedback-new.jsonl.tmp", directory / ".x"
    for path in (stale, fresh, other):
        path.write_text("{}")
    os.utime(stale, (0, 0))
    os.utime(other, (0, 0))
    feedback.prepare_feedback_dir(str(directory))
    assert sorted(p.name for p in directory.iterdir()) == sorted([fresh.name, other.name])


@pytest.mark.parametrize("label", ["signer_03", "Zoë Ünal", "署名者", "a-b.c d", "x" * 256])
def test_labels_feedback_accepts_are_accepted_by_ingestion(label):
    assert feedback.check_label(label) == label
    record = {"image": b64(make_image_bytes()), "label": label, "model": "m", "model_version": 1}
    outcome = parse_record(record, "s", (0, 1), "p")
    assert isinstance(outcome, Accepted) and outcome.label == label


@pytest.mark.parametrize("label", ["tab\there", "nl\n", "del\x7f", "unknown"])
def test_labels_ingestion_refuses_are_refused_by_feedback(label):
    with pytest.raises(contract.InvalidRecord) as caught:
        feedback.check_label(label)
    assert caught.value.reason == "invalid_label"
    outcome = parse_record({"image": b64(make_image_bytes()), "label": label}, "s", (0, 1), "p")
    assert isinstance(outcome, Rejected) and outcome.reason == "invalid_label"


# -- the seed's record shape: the image as a bare base64 string ----------------------------------


def test_the_seeds_bare_base64_image_is_accepted_and_written_in_the_b64_shape(open_server, inbox):
    images = [make_image_bytes(seed=11), make_image_bytes("JPEG", seed=12)]
    response = post_feedback(open_server, {"instances": [
        {"image": base64.b64encode(images[0]).decode("ascii"), "label": "signer_01"},  # the seed's shape
        {"image": b64(images[1]), "label": "signer_02"}]})
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2 and response.json()["rejected"] == []
    (written,) = feedback_files(inbox)
    lines = [json.loads(line) for line in written.read_text(encoding="utf-8").splitlines()]
    assert [line["image"] for line in lines] == [b64(image) for image in images]
    assert [(o.image, o.label) for o in read_with_ingestion(written)] == [
        (images[0], "signer_01"), (images[1], "signer_02")]


@pytest.mark.parametrize("text, reason", [
    ("not base64!", "invalid_base64"),
    (base64.urlsafe_b64encode(b"\xfb\xff" * 30).decode(), "invalid_base64"),  # predict's strict alphabet
    ("QUJD=", "invalid_base64"),  # padding that does not fit the length
    ("", "empty_image"),
    (base64.b64encode(b"hello, not an image").decode(), "not_an_image"),
], ids=["not base64", "url-safe", "bad padding", "empty", "not an image"])
def test_a_bare_image_string_is_refused_with_the_reason_its_b64_form_gets(open_server, inbox, text, reason):
    response = post_feedback(open_server, {"instances": [
        {"image": text, "label": "signer_01"}, {"image": {"b64": text}, "label": "signer_01"}]})
    assert response.status_code == 400, response.text
    bare, wrapped = response.json()["rejected"]
    assert (bare["reason"], wrapped["reason"]) == (reason, reason)
    assert bare["error"] == wrapped["error"]
    assert list(inbox.iterdir()) == []
    # Ingestion refuses the same bare text for the same reason (it is laxer about alphabets and padding).
    if reason != "invalid_base64":
        assert parse_record({"image": text, "label": "signer_01"}, "s", (0, 1), "p").reason == reason


def test_predict_keeps_tf_servings_meaning_of_a_bare_string(open_server, inbox):
    text = base64.b64encode(make_image_bytes(seed=13)).decode("ascii")
    url = f"{open_server.rest_url}/v1/models/{SIGNFLOW_MODEL}:predict"
    # TF Serving does not base64-decode a bare string for a bytes input: the text itself is the image.
    bare = requests.post(url, json={"instances": [{"image_bytes": text}]}, timeout=60)
    assert bare.status_code == 400
    assert bare.json()["error"].startswith("Input image_bytes, element 0: not an acceptable image (not_an_image")
    seed_shape = requests.post(url, json={"instances": [{"image": text}]}, timeout=60)
    assert seed_shape.status_code == 400
    assert "does not have named input: image" in seed_shape.json()["error"]
    assert requests.post(url, json={"instances": [{"image_bytes": {"b64": text}}]}, timeout=60).status_code == 200
    # Feedback follows predict under predict's input name.
    response = post_feedback(open_server, {"instances": [{"image_bytes": text, "label": "signer_01"}]})
    assert response.status_code == 400
    assert [r["reason"] for r in response.json()["rejected"]] == ["invalid_image_field"]


# -- GET /signflow/status -------------------------------------------------------------------


def test_status_route_with_without_and_with_a_corrupt_training_status(open_server):
    url = f"{open_server.rest_url}/signflow/status"
    status_file = Path(open_server.server.settings.training_status_file)
    status_file.unlink(missing_ok=True)

    answer = requests.get(url, timeout=30).json()
    assert answer["training"] is None and answer["training_status_error"] is None
    (model,) = answer["models"]
    assert model["name"] == SIGNFLOW_MODEL and model["serving_version"] == 1
    assert model["versions"] == [{"version": 1, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}]

    training = {"state": "idle", "last_run": {"span": 3, "pushed_version": 2}, "waiting_records": 17}
    status_file.write_text(json.dumps(training))
    answer = requests.get(url, timeout=30).json()
    assert answer["training"] == training and answer["training_status_error"] is None
    status_file.write_text('{"note": "lone \\ud800 surrogate"}')
    assert requests.get(url, timeout=30).json()["training"] == {"note": "lone \ud800 surrogate"}

    for corrupt in ('{"state": "tra', "[1, 2]", '{"x": NaN}'):
        status_file.write_text(corrupt)
        answer = requests.get(url, timeout=30).json()
        assert answer["training"] is None
        assert str(status_file) in answer["training_status_error"]
        assert answer["models"][0]["name"] == SIGNFLOW_MODEL

    response = requests.post(url, timeout=30)
    assert response.status_code == 405 and response.headers["Allow"] == "GET, HEAD"
    status_file.unlink()


def test_status_route_without_a_status_file_setting(signflow_server):
    answer = requests.get(f"{signflow_server.rest_url}/signflow/status", timeout=30).json()
    assert answer["training"] is None and answer["training_status_error"] is None
    assert [m["name"] for m in answer["models"]] == [SIGNFLOW_MODEL]


# -- the request log ------------------------------------------------------------------------


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_request_log_records_each_image_and_respects_the_cap(served_model, tmp_path, start_server):
    log_file = tmp_path / "logs" / "requests.jsonl"
    cap = 800
    server = start_server(make_settings(model_name=SIGNFLOW_MODEL, model_base_path=str(served_model),
                                        request_log_file=str(log_file), request_log_max_bytes=cap))
    request_log = server.server.request_log
    images = [make_image_bytes(seed=1), make_image_bytes("JPEG", seed=2)]
    # Both image signatures are logged with label and score: predict_label answers them; for
    # serving_default (probabilities only) they are its top probability, named through labels.txt.
    response = predict(server, images, signature="predict_label")
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    default = predict(server, images)
    assert default.status_code == 200
    assert predict(server, [b"not an image"]).status_code == 400  # refused requests are not logged
    assert predict(server, [b"not an image"], signature="predict_label").status_code == 400
    assert request_log.flush()

    entries = read_log(log_file)
    assert len(entries) == 4
    for entry, image, prediction in zip(entries, images + images, predictions + predictions):
        assert set(entry) == {"time", "model", "version", "sha256", "label", "score"}
        assert entry["sha256"] == hashlib.sha256(image).hexdigest()
        assert (entry["model"], entry["version"]) == (SIGNFLOW_MODEL, 1)
        assert entry["label"] == prediction["label"] and entry["score"] == prediction["score"]
        assert entry["time"].endswith("Z")
    for entry, probabilities in zip(entries[2:], default.json()["predictions"]):
        assert entry["label"] == DEFAULT_LABELS[int(np.argmax(probabilities))] and entry["score"] == max(probabilities)
    assert base64.b64encode(images[0]).decode()[:40] not in log_file.read_text()

    for seed in range(10):
        assert predict(server, [make_image_bytes(seed=seed)]).status_code == 200
    assert request_log.flush()
    rotated = Path(f"{log_file}.1")
    assert rotated.exists()
    assert log_file.stat().st_size <= cap and rotated.stat().st_size <= cap
    kept = read_log(rotated) + read_log(log_file)
    assert len(kept) >= 4
    assert kept[-1]["sha256"] == hashlib.sha256(make_image_bytes(seed=9)).hexdigest()


def test_request_log_drops_a_line_longer_than_the_cap_and_counts_drops(tmp_path):
    dropped = []
    request_log = RequestLog(str(tmp_path / "log.jsonl"), 50, on_dropped=dropped.append)
    request_log.start()
    request_log.record("m", 1, np.array([b"img"], dtype=object), {"label": np.array([b"a"]), "score": np.array([0.5])})
    assert request_log.flush()
    request_log.close()
    assert (tmp_path / "log.jsonl").read_bytes() == b"" and dropped == [1]

    full = RequestLog(str(tmp_path / "full.jsonl"), 10_000, on_dropped=dropped.append, max_pending_bytes=2)
    full.record("m", 1, np.array([b"image"], dtype=object), {})  # never started: the queue is "behind"
    assert dropped == [1, 1]


# -- flags ---------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_feedback_flags_and_the_token_from_the_environment(tmp_path):
    base = [f"--model_base_path={tmp_path}"]
    settings = cli.settings_from_args(parse(
        *base, f"--feedback_dir={tmp_path / 'inbox'}", f"--training_status_file={tmp_path / 's.json'}",
        f"--request_log_file={tmp_path / 'r.jsonl'}", "--request_log_max_bytes=1000"), environ={})
    assert settings.feedback_dir == str(tmp_path / "inbox") and settings.feedback_token == ""
    assert settings.training_status_file == str(tmp_path / "s.json")
    assert (settings.request_log_file, settings.request_log_max_bytes) == (str(tmp_path / "r.jsonl"), 1000)
    assert parse().request_log_max_bytes == 64 * 1024 * 1024 and parse().feedback_dir == ""

    env = {"SIGNFLOW_FEEDBACK_TOKEN": "from-env"}
    assert cli.settings_from_args(parse(*base), environ=env).feedback_token == "from-env"
    assert cli.settings_from_args(parse(*base, "--feedback_token=flag"), environ=env).feedback_token == "flag"
    assert cli.settings_from_args(parse(*base, "--feedback_token="), environ=env).feedback_token == ""
    with_token = cli.settings_from_args(parse(*base, "--feedback_token", TOKEN), environ={})
    assert TOKEN not in repr(with_token)


def test_signflow_only_flags_stay_out_of_the_tensorflow_model_server_command(tmp_path):
    plain = cli.settings_from_args(parse(f"--model_base_path={tmp_path}"), environ={})
    settings = cli.settings_from_args(parse(
        f"--model_base_path={tmp_path}", f"--feedback_dir={tmp_path}", f"--feedback_token={TOKEN}",
        f"--training_status_file={tmp_path / 's.json'}", f"--request_log_file={tmp_path / 'r.jsonl'}",
        "--request_log_max_bytes=5"), environ={})
    assert cli.tensorflow_model_server_argv(settings) == cli.tensorflow_model_server_argv(plain)
    assert cli.signflow_only_features(plain) == []
    assert cli.signflow_only_features(settings) == ["--feedback_dir", "--training_status_file", "--request_log_file"]


@pytest.mark.parametrize("argv, message", [
    (["--feedback_dir=relative/inbox"], "--feedback_dir must be an absolute path"),
    (["--feedback_dir={tmp}", "--host=0.0.0.0"], "needs a token"),
    (["--feedback_dir={tmp}", "--host=example.org"], "needs a token"),
    (["--feedback_dir={tmp}/file"], "is not a folder"),
    (["--feedback_token=has space"], "printable ASCII"),
    (["--request_log_max_bytes=0"], "--request_log_max_bytes must be positive"),
])
def test_bad_feedback_settings_fail_at_start(tmp_path, argv, message):
    (tmp_path / "file").write_text("x")
    args = parse(f"--model_base_path={tmp_path}", *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    with pytest.raises(SettingsError, match=message):
        cli.settings_from_args(args, environ={})


def test_feedback_on_a_public_host_with_a_token_or_on_loopback_without_one(tmp_path):
    for argv in (["--host=0.0.0.0", f"--feedback_token={TOKEN}"], ["--host=::1"], ["--host=localhost"],
                 ["--host=127.0.0.2"]):
        settings = cli.settings_from_args(parse(f"--model_base_path={tmp_path}", f"--feedback_dir={tmp_path}",
                                                *argv), environ={})
        assert settings.feedback_dir == str(tmp_path)
