"""serving.client and `signflow predict` against a real server on 127.0.0.1 (ephemeral ports).

The server is conftest's session-wide `signflow_server`: signflow's tiny model
(tests/fixtures/tiny_model.py, built by the real export code). Expected answers
come from calling that same SavedModel in-process. Choosing a version or a label
is checked against a second server whose two versions have different label sets,
so an answer can only have come from the version that was asked for. URL inputs
are served by a local http.server.
"""
from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorflow as tf

from serving.client import (
    ClientError,
    GrpcClient,
    RestClient,
    ServerError,
    decode_base64_image,
    fetch_image_url,
    read_image_file,
)
from serving.contract import UNKNOWN_LABEL
from serving.server import ServerThread
from tests.fixtures.ports import free_port
from tests.fixtures.tiny_model import DEFAULT_LABELS, build_tiny_saved_model, make_image_bytes
from tests.serving.conftest import SIGNFLOW_MODEL as MODEL
from tests.serving.conftest import install_version, make_settings, write_model_config
from tests.ui.models import build_model, strip_image, two_strip_image

ROOT = Path(__file__).resolve().parents[2]
FORMATS = {"png": "PNG", "jpg": "JPEG", "gif": "GIF"}


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    files = {}
    for i, (suffix, fmt) in enumerate(FORMATS.items()):
        path = folder / f"signature.{suffix}"
        path.write_bytes(make_image_bytes(fmt, seed=10 + i))
        files[suffix] = path
    return files


def signature_caller(model_path: Path):
    """A SavedModel's predict_label signature called directly: the answers a server of it must give."""
    signature = tf.saved_model.load(str(model_path)).signatures["predict_label"]

    def call(images: list[bytes]) -> tuple[list[str], np.ndarray, np.ndarray]:
        out = signature(image_bytes=tf.constant(images))
        return [b.decode() for b in out["label"].numpy()], out["score"].numpy(), out["probabilities"].numpy()

    return call


@pytest.fixture(scope="module")
def in_process(model_store):
    """The served model's signature called directly: the answers the server must give."""
    return signature_caller(model_store["signflow"])


# -- a server with two versions that answer differently -------------------------------------------

# Version 2 names its signers differently from version 1 (DEFAULT_LABELS) and has other weights:
# every label in an answer says which version gave it.
V2_LABELS = ("v2_signer_a", "v2_signer_b", "v2_signer_c")
LABELS_OF = {1: DEFAULT_LABELS, 2: V2_LABELS}
VERSION_LABELS = {"stable": 1, "canary": 2}


@pytest.fixture(scope="module")
def two_versions(model_store, tmp_path_factory):
    """(server, {version: in-process caller}) for MODEL with versions 1 and 2 both served,
    labels stable -> 1 and canary -> 2."""
    assert not set(V2_LABELS) & set(DEFAULT_LABELS)
    root = tmp_path_factory.mktemp("two_versions")
    templates = {1: model_store["signflow"], 2: build_tiny_saved_model(root / "v2", labels=V2_LABELS, seed=7)}
    for version, template in templates.items():
        install_version(template, root / MODEL, version)
    config = write_model_config(root / "models.config", [
        {"name": MODEL, "base_path": root / MODEL, "policy": "all", "labels": VERSION_LABELS}])
    server = ServerThread(make_settings(model_config_file=str(config),
                                        allow_version_labels_for_unavailable_models=True)).start()
    yield server, {version: signature_caller(path) for version, path in templates.items()}
    server.stop()


# -- a local web server for --url ----------------------------------------------------------------

class _ImageHandler(http.server.BaseHTTPRequestHandler):
    image = b""
    # /slow answers only once this is set: a client that gave up before it was set cannot
    # have had the answer. The bound is a hang guard for a test that fails before setting it.
    slow_release = threading.Event()

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/signature.png":
            self._send(200, self.image, "image/png")
        elif self.path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(50 * 1024 * 1024))
            self.end_headers()
            self.wfile.write(b"\0" * 1024)
        elif self.path == "/big-streamed":
            # No Content-Length: only counting the bytes can stop this.
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"\0" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif self.path == "/slow":
            self.slow_release.wait(120)
            self._send(200, self.image, "image/png")
        elif self.path == "/text":
            self._send(200, b"hello, not an image", "text/plain")
        else:
            self._send(404, b"no such file", "text/plain")

    def _send(self, status, body, content_type):
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first, as the timeout tests intend

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web(image_files):
    _ImageHandler.image = image_files["png"].read_bytes()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# -- the seed's own client, unchanged but for the URL ---------------------------------------------


def test_the_seeds_client_code_works_unchanged(signflow_server, image_files, in_process):
    SERVER_URL = f"{signflow_server.rest_url}/v1/models/{MODEL}:predict"
    path = str(image_files["png"])
    response = requests.post(SERVER_URL, json={"instances": [{"image_bytes": {"b64": base64.b64encode(open(path,"rb").read()).decode()}}]})
    predictions = response.json()["predictions"]

    # The seed's answer shape: serving_default's one output, {"predictions": [[p0, p1, p2]]}.
    assert response.status_code == 200
    assert len(predictions) == 1 and len(predictions[0]) == len(DEFAULT_LABELS)
    labels, scores, probabilities = in_process([image_files["png"].read_bytes()])
    assert predictions[0] == pytest.approx(probabilities[0].tolist(), abs=1e-6)
    assert DEFAULT_LABELS[int(np.argmax(predictions[0]))] == labels[0]
    assert max(predictions[0]) == pytest.approx(float(scores[0]), abs=1e-6)


# -- library: REST and gRPC ------------------------------------------------------------------------


def make_client(kind: str, server) -> RestClient | GrpcClient:
    return RestClient(server.rest_url, MODEL) if kind == "rest" else GrpcClient(server.grpc_target, MODEL)


@pytest.mark.parametrize("client_kind", ["rest", "grpc"])
def test_predict_answers_what_the_model_answers_in_process(signflow_server, image_files, in_process, client_kind):
    images = [read_image_file(image_files[suffix]) for suffix in FORMATS]
    labels, scores, _ = in_process(images)
    with make_client(client_kind, signflow_server) as client:
        predictions = client.predict(images)
    assert [p.label for p in predictions] == labels
    assert [p.score for p in predictions] == pytest.approx(scores.tolist(), rel=1e-5)
    assert all(p.top_k == () for p in predictions)


@pytest.mark.parametrize("client_kind", ["rest", "grpc"])
def test_classify_gives_the_top_k_in_order(signflow_server, image_files, in_process, client_kind):
    images = [read_image_file(image_files[suffix]) for suffix in FORMATS]
    labels, scores, probabilities = in_process(images)
    with make_client(client_kind, signflow_server) as client:
        predictions = client.classify(images, top_k=2)
    for prediction, label, score, probs in zip(predictions, labels, scores, probabilities):
        assert (prediction.label, prediction.score) == (label, pytest.approx(float(score), rel=1e-5))
        order = np.argsort(-probs)[:2]
        assert [name for name, _ in prediction.top_k] == [DEFAULT_LABELS[i] for i in order]
        assert [s for _, s in prediction.top_k] == pytest.approx(probs[order].tolist(), rel=1e-5)


def make_versioned_client(kind: str, server, **choice) -> RestClient | GrpcClient:
    if kind == "rest":
        return RestClient(server.rest_url, MODEL, **choice)
    return GrpcClient(server.grpc_target, MODEL, **choice)


@pytest.mark.parametrize("client_kind", ["rest", "grpc"])
@pytest.mark.parametrize("choice, version", [
    ({"version": 1}, 1),
    ({"version": 2}, 2),
    ({"label": "stable"}, 1),
    ({"label": "canary"}, 2),
    ({}, 2),  # nothing named: the latest
], ids=["version=1", "version=2", "label=stable", "label=canary", "latest"])
def test_the_named_version_answers(two_versions, image_files, client_kind, choice, version):
    server, callers = two_versions
    images = [read_image_file(image_files[suffix]) for suffix in FORMATS]
    labels, scores, probabilities = callers[version](images)
    with make_versioned_client(client_kind, server, **choice) as client:
        predictions = client.predict(images)
        ranked = client.classify(images, top_k=3)
    assert [p.label for p in predictions] == labels
    assert set(labels) <= set(LABELS_OF[version])
    assert [p.score for p in predictions] == pytest.approx(scores.tolist(), rel=1e-5)
    for prediction, probs in zip(ranked, probabilities):
        order = np.argsort(-probs)
        assert [name for name, _ in prediction.top_k] == [LABELS_OF[version][i] for i in order]
        assert [s for _, s in prediction.top_k] == pytest.approx(probs[order].tolist(), rel=1e-5)


def test_server_errors_carry_the_servers_own_message(signflow_server, image_files):
    image = read_image_file(image_files["png"])
    with RestClient(signflow_server.rest_url, "nope") as client, pytest.raises(ServerError) as rest_error:
        client.predict([image])
    assert rest_error.value.status == 404
    assert rest_error.value.message == "Servable not found for request: Latest(nope)"
    with GrpcClient(signflow_server.grpc_target, MODEL, version=99) as client, pytest.raises(ServerError) as grpc_error:
        client.predict([image])
    assert grpc_error.value.status == "NOT_FOUND"
    assert grpc_error.value.message == f"Servable not found for request: Specific({MODEL}, 99)"
    with RestClient(signflow_server.rest_url, MODEL) as client, pytest.raises(ServerError) as bad_image:
        client.predict([b"these bytes are not an image"])
    assert bad_image.value.status == 400
    assert str(bad_image.value).startswith("server answered 400: ")


def test_an_unreachable_server_is_a_clear_client_error():
    closed_port = free_port()
    with RestClient(f"http://127.0.0.1:{closed_port}", MODEL, timeout=5) as client, pytest.raises(ClientError) as err:
        client.predict([make_image_bytes()])
    assert "cannot reach the server" in str(err.value)
    assert not isinstance(err.value, ServerError)


# -- image sources ---------------------------------------------------------------------------------


def test_local_files_of_each_format_are_read_and_checked(image_files, tmp_path):
    for suffix in FORMATS:
        assert read_image_file(image_files[suffix]) == image_files[suffix].read_bytes()
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ClientError, match="not_an_image"):
        read_image_file(text)
    with pytest.raises(ClientError, match="No such file"):
        read_image_file(tmp_path / "missing.png")
    with pytest.raises(ClientError, match="over the limit of 100 bytes"):
        read_image_file(image_files["png"], max_bytes=100)


def test_base64_text_in_every_form_people_paste(image_files):
    data = image_files["jpg"].read_bytes()
    standard = base64.b64encode(data).decode()
    assert decode_base64_image(standard) == data
    assert decode_base64_image(base64.urlsafe_b64encode(data).decode().rstrip("=")) == data
    assert decode_base64_image("data:image/jpeg;base64," + standard) == data
    assert decode_base64_image("\n".join(standard[i:i + 76] for i in range(0, len(standard), 76))) == data
    with pytest.raises(ClientError, match="invalid_base64"):
        decode_base64_image("this is not base64!")
    with pytest.raises(ClientError, match="not_an_image"):
        decode_base64_image(base64.b64encode(b"plain text").decode())


def test_url_images_are_fetched_within_limits(web, image_files):
    assert fetch_image_url(f"{web}/signature.png") == image_files["png"].read_bytes()
    with pytest.raises(ClientError, match="HTTP 404"):
        fetch_image_url(f"{web}/missing.png")
    with pytest.raises(ClientError, match="not_an_image"):
        fetch_image_url(f"{web}/text")
    with pytest.raises(ClientError, match="over the limit"):
        fetch_image_url(f"{web}/big-declared", max_bytes=1024 * 1024)
    with pytest.raises(ClientError, match="more than the limit of 1048576 bytes"):
        fetch_image_url(f"{web}/big-streamed", max_bytes=1024 * 1024)
    with pytest.raises(ClientError, match="only http"):
        fetch_image_url(f"file://{image_files['png']}")


def test_a_slow_url_times_out(web):
    _ImageHandler.slow_release.clear()
    try:
        # The server holds its answer until released below, so this can only end by giving up.
        with pytest.raises(ClientError, match="no answer within 0.5 s"):
            fetch_image_url(f"{web}/slow", timeout=0.5)
    finally:
        _ImageHandler.slow_release.set()


# -- `signflow predict` ----------------------------------------------------------------------------


def signflow(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    python = ROOT / ".venv" / "bin" / "python"
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [str(python if python.exists() else sys.executable), "-m", "pipeline.cli", "predict", *args],
        cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=180,
    )


def test_cli_predicts_files_base64_and_urls_over_rest(signflow_server, image_files, in_process, web):
    png, gif = image_files["png"], image_files["gif"]
    result = signflow(
        str(png), "--b64-file", "-", "--url", f"{web}/signature.png",
        "--rest-url", signflow_server.rest_url, "--model", MODEL,
        stdin=base64.b64encode(gif.read_bytes()).decode(),
    )
    assert result.returncode == 0, result.stderr
    labels, scores, _ = in_process([png.read_bytes(), gif.read_bytes(), png.read_bytes()])
    assert result.stdout.splitlines() == [
        f"{png}: {labels[0]} (score {scores[0]:.4f})",
        f"-: {labels[1]} (score {scores[1]:.4f})",
        f"{web}/signature.png: {labels[2]} (score {scores[2]:.4f})",
    ]


def test_cli_says_an_unknown_answer_is_no_signer_and_its_score_a_similarity(tmp_path):
    base = tmp_path / "models" / MODEL
    install_version(build_model(tmp_path / "open_set", open_set=True), base, 1)
    server = ServerThread(make_settings(model_name=MODEL, model_base_path=str(base))).start()
    try:
        stranger, alan = tmp_path / "stranger.png", tmp_path / "alan.png"
        stranger.write_bytes(two_strip_image())
        alan.write_bytes(strip_image(1))
        result = signflow(str(stranger), str(alan), "--rest-url", server.rest_url, "--model", MODEL, "--json")
        assert result.returncode == 0, result.stderr
        answers = [json.loads(line) for line in result.stdout.splitlines()]
        assert [a["label"] for a in answers] == [UNKNOWN_LABEL, "alan_turing"]
        result = signflow(str(stranger), str(alan), "--rest-url", server.rest_url, "--model", MODEL)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            f"{stranger}: unknown (no enrolled signer is close enough: similarity {answers[0]['score']:.4f})",
            f"{alan}: alan_turing (score {answers[1]['score']:.4f})"]

        # The ranking adds the most probable signers; the answer stays the open set's.
        ranked = signflow(str(stranger), "--rest-url", server.rest_url, "--model", MODEL, "--top-k", "2", "--json")
        assert ranked.returncode == 0, ranked.stderr
        record = json.loads(ranked.stdout)
        assert (record["label"], record["score"]) == (UNKNOWN_LABEL, answers[0]["score"])
        assert len(record["top_k"]) == 2 and UNKNOWN_LABEL not in {entry["label"] for entry in record["top_k"]}
    finally:
        server.stop()


def test_cli_top_k_json_over_grpc(signflow_server, image_files, in_process):
    jpg = image_files["jpg"]
    result = signflow(
        "--b64", base64.b64encode(jpg.read_bytes()).decode(), "--protocol", "grpc",
        "--grpc-target", signflow_server.grpc_target, "--model", MODEL, "--top-k", "3", "--json",
    )
    assert result.returncode == 0, result.stderr
    labels, scores, probabilities = in_process([jpg.read_bytes()])
    record = json.loads(result.stdout)
    assert record["image"] == "base64[0]"
    assert (record["label"], record["score"]) == (labels[0], pytest.approx(float(scores[0]), rel=1e-5))
    assert sorted(entry["label"] for entry in record["top_k"]) == sorted(DEFAULT_LABELS)
    assert [entry["score"] for entry in record["top_k"]] == pytest.approx(sorted(probabilities[0], reverse=True), rel=1e-5)


def test_cli_reports_server_and_input_errors(signflow_server, image_files, tmp_path):
    # Without --model the client asks for "xception", which this server does not serve.
    result = signflow(str(image_files["png"]), "--rest-url", signflow_server.rest_url)
    assert result.returncode == 1
    assert "error: server answered 404: Servable not found for request: Latest(xception)" in result.stderr

    not_image = tmp_path / "x.png"
    not_image.write_bytes(b"nope")
    result = signflow(str(not_image), "--rest-url", signflow_server.rest_url)
    assert result.returncode == 2
    assert f"error: {not_image}: not_an_image" in result.stderr

    result = signflow("--rest-url", signflow_server.rest_url)
    assert result.returncode == 2
    assert "no image given" in result.stderr


def test_cli_version_and_label_choose_the_answering_version(two_versions, image_files):
    server, callers = two_versions
    png = image_files["png"]
    for flags, version in ((["--version", "1"], 1), (["--protocol", "grpc", "--label", "stable"], 1)):
        result = signflow(str(png), *flags, "--rest-url", server.rest_url, "--grpc-target", server.grpc_target,
                          "--model", MODEL)
        assert result.returncode == 0, (flags, result.stderr)
        labels, scores, _ = callers[version]([png.read_bytes()])
        assert result.stdout.splitlines() == [f"{png}: {labels[0]} (score {scores[0]:.4f})"], flags
