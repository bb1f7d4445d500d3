"""The page's server side without a browser: the rollback and versions routes, the page's files, --ui.

Rollback over HTTP follows `signflow rollback`'s rules (the same function moves the
folders) and the feedback endpoint's token rules; what it writes is read back with
the Pusher's own reader (components.pusher.records). The versions route shows what
the Pusher recorded: one test pushes with the real Pusher from a real Evaluator
output (tests/pusher/evaluations.py).
"""
from __future__ import annotations

import json

import pytest
import requests
from starlette.applications import Starlette

from components.pusher import records
from serving import rollback as serving_rollback
from serving.layout import ROLLBACK_NOTE_FILE, list_versions
from serving.registry import Registry
from serving.settings import ModelConfig, build_settings
from serving.ui_page import HEADERS
from serving.ui_routes import routes
from tests.serving.conftest import install_version, wait_for_polls
from tests.ui.conftest import MODEL, TOKEN
from tests.ui.models import LABELS, write_push_record

pytestmark = pytest.mark.timeout(120)


def _rollback(server, body=None, token: str | None = None, name: str = MODEL) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.post(f"{server.url}/signflow/models/{name}/rollback", headers=headers, timeout=60,
                         data=json.dumps(body) if body is not None else b"")


def test_rollback_needs_the_token_when_one_is_configured(ui_server):
    server = ui_server(versions=(1, 2, 3), token=TOKEN)

    for token in (None, "wrong"):
        refused = _rollback(server, token=token)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert refused.headers["Content-Type"] == "application/json"
        assert set(refused.json()) == {"error"}
    assert list_versions(server.base) == [1, 2, 3]

    done = _rollback(server, {"reason": "bad labels"}, token=TOKEN)
    assert done.status_code == 200, done.text
    assert done.json() == {"model": MODEL, "rolled_back": [3], "serving_after": 2}
    assert list_versions(server.base) == [1, 2]
    note = records.read_rollback_note(server.base, 3)  # the Pusher's reader reads the route's note
    assert note.reason == "bad labels" and note.serving_after == 2 and note.push.pipeline_run_id == "run-3"
    assert json.loads((server.base / ".rolled_back" / "3" / ROLLBACK_NOTE_FILE).read_text())["via"] \
        .startswith(f"POST /signflow/models/{MODEL}/rollback from 127.0.0.1")

    # "to" as `signflow rollback --to`, then the last version stays, as the command insists.
    assert _rollback(server, {"to": 1}, token=TOKEN).json()["rolled_back"] == [2]
    last = _rollback(server, token=TOKEN)
    assert last.status_code == 400
    assert last.json()["error"].startswith("refusing to roll back version 1: it is the only version")
    assert list_versions(server.base) == [1]


def test_rollback_refuses_bad_requests_in_tf_servings_error_shape(ui_server):
    server = ui_server(versions=(1, 2))
    cases = [
        (_rollback(server, {"to": 7}), 400, "version 7 does not exist"),
        (_rollback(server, {"to": "2"}), 400, "\"to\" must be a version number"),
        (_rollback(server, {"version": 1}), 400, "Unknown field(s) in the rollback body: version"),
        (_rollback(server, ["to", 1]), 400, "must be a JSON object"),
        (_rollback(server, name="other"), 404, "Model other is not served by this server"),
        (requests.get(f"{server.url}/signflow/models/{MODEL}/rollback", timeout=60), 405, "Method GET not allowed"),
    ]
    for answer, status, words in cases:
        assert answer.status_code == status, answer.text
        assert set(answer.json()) == {"error"} and words in answer.json()["error"]
    assert list_versions(server.base) == [1, 2]
    # Without a token on a loopback host, as feedback: allowed.
    assert _rollback(server).json()["rolled_back"] == [2]


@pytest.fixture
def routes_alone(app_server):
    """Factory: the routes for `host` served on 127.0.0.1, for a host the tests cannot listen on.

    No model is loaded: the registry is only configured, which is all the routes need.
    Returns a function (method, path, **requests options) -> requests.Response.
    """

    def start(host: str, token: str, base, **flags):
        settings = build_settings(host=host, model_name=MODEL, model_base_path=str(base), feedback_token=token,
                                  **flags)
        registry = Registry(lambda *args: None)
        registry.apply_config([ModelConfig(MODEL, str(base))])
        server = app_server(Starlette(routes=routes(settings, registry)))

        def call(method: str, path: str, **options) -> requests.Response:
            return requests.request(method, server.url + path, timeout=60, **options)

        return call

    return start


def test_a_rollback_sent_by_another_sites_page_is_refused(ui_server):
    """Without a token any page the user visits could make the browser POST to 127.0.0.1; only the server's own
    page may roll back. A client that is not a browser sends no Origin."""
    server = ui_server(versions=(1, 2, 3))
    headers = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    forged = requests.post(f"{server.url}/signflow/models/{MODEL}/rollback", headers=headers, timeout=60,
                           data=json.dumps({"reason": "forged"}))
    assert forged.status_code == 403 and "another origin" in forged.json()["error"]
    assert list_versions(server.base) == [1, 2, 3]

    own = requests.post(f"{server.url}/signflow/models/{MODEL}/rollback", headers={"Origin": server.url},
                        timeout=60, data=json.dumps({"reason": "from the page"}))
    assert own.status_code == 200 and own.json()["rolled_back"] == [3]
    assert _rollback(server).json()["rolled_back"] == [2]  # no Origin: the command-line style client


def test_rollback_is_not_offered_on_a_non_loopback_host_without_a_token(tmp_path, models, routes_alone):
    base = tmp_path / MODEL
    for version in (1, 2):
        install_version(models["plain"], base, version)

    public = routes_alone("0.0.0.0", "", base, ui=True)
    refused = public("POST", f"/signflow/models/{MODEL}/rollback")
    assert refused.status_code == 403
    assert "not a loopback address" in refused.json()["error"]
    config = public("GET", "/ui/config.json").json()
    assert config["rollback"]["offered"] is False and "--feedback_token" in config["rollback"]["why_not"]
    assert public("GET", f"/signflow/models/{MODEL}/versions").json()["rollback"]["offered"] is False
    assert list_versions(base) == [1, 2]

    with_token = routes_alone("0.0.0.0", TOKEN, base, ui=True)
    assert with_token("GET", "/ui/config.json").json()["rollback"] == {
        "offered": True, "token_required": True, "why_not": None}
    assert with_token("POST", f"/signflow/models/{MODEL}/rollback").status_code == 401
    assert with_token("POST", f"/signflow/models/{MODEL}/rollback",
                      headers={"Authorization": f"Bearer {TOKEN}"}).json()["rolled_back"] == [2]


def test_the_page_is_on_by_default_only_on_a_loopback_host(tmp_path, routes_alone):
    base = tmp_path / MODEL
    assert build_settings(model_base_path=str(base)).ui is True
    assert build_settings(model_base_path=str(base), host="0.0.0.0").ui is False
    assert build_settings(model_base_path=str(base), host="0.0.0.0", ui=True).ui is True
    assert build_settings(model_base_path=str(base), ui=False).ui is False

    off = routes_alone("127.0.0.1", "", base, ui=False)
    assert off("GET", "/ui/").status_code == 404
    on = routes_alone("127.0.0.1", "", base)
    page = on("GET", "/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == HEADERS["Content-Security-Policy"]
    assert on("GET", "/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert on("GET", "/ui/%2E%2E%2Fsettings.py").status_code == 404
    assert on("GET", "/ui", allow_redirects=False).headers["location"] == "/ui/"


def test_the_versions_route_says_what_each_version_holds(ui_server):
    server = ui_server(versions=(1, 2, 3))
    assert _rollback(server, {"reason": "too eager"}).status_code == 200
    write_push_record(server.base, 2, "run-2", 0.92, lineage=False)  # falls back to the training status
    status = json.loads(server.status_file.read_text())
    status["last_cycle"]["pushed_version"] = 2
    server.status_file.write_text(json.dumps(status))
    assert wait_for_polls(server.thread)  # the server has seen version 3 go

    listing = requests.get(f"{server.url}/signflow/models/{MODEL}/versions", timeout=60).json()

    assert listing["model"] == MODEL and listing["rollback"]["offered"] is True
    assert listing["serving_version"] == 2
    by_version = {entry["version"]: entry for entry in listing["versions"]}
    assert [entry["version"] for entry in listing["versions"]] == [3, 2, 1]
    assert by_version[3]["status"] == "rolled back" and by_version[3]["rollback"]["reason"] == "too eager"
    assert by_version[3]["rollback"]["serving_after"] == 2 and by_version[3]["state"] is None
    one = by_version[1]
    assert one["status"] == "older" and one["labels"] == list(LABELS)
    assert one["eval_metrics"]["sparse_categorical_accuracy"] == pytest.approx(0.91)
    assert one["spans"] == [3, 4] and one["record_counts"]["eval split"] == 54
    assert set(one["per_signer"]) == set(LABELS) and one["lineage_source"] == "push record"
    assert one["signatures"] == ["classify", "predict_label", "serving_default"]
    two = by_version[2]
    assert two["status"] == "serving" and two["state"] == "AVAILABLE"
    assert two["spans"] == [5] and two["record_counts"] == {"records_read": 120, "examples": 117, "duplicates": 3}
    assert two["lineage_source"] == "training status" and two["pipeline_run_id"] == "run-2"
    assert two["per_signer"] == {}
    # A rolled-back version's record is read too (and, were it deleted, its copy in the note).
    assert by_version[3]["pipeline_run_id"] == "run-3" and set(by_version[3]["per_signer"]) == set(LABELS)


def test_the_versions_route_shows_the_per_signer_figures_the_pusher_recorded(tmp_path, routes_alone):
    """The real Pusher, given the real Evaluator's output and the Examples trained on, writes the push record."""
    from tests.pusher.conftest import PipelineOutputs
    from tests.pusher.evaluations import EXPECTED_PER_SIGNER, EXPECTED_RECORD_COUNTS, SPANS, evaluate

    evaluated = evaluate(tmp_path / "evaluated")
    outputs = PipelineOutputs(tmp_path, tiny_model=None)
    outputs.push(evaluated.model, evaluation=evaluated.evaluation, examples=evaluated.examples,
                 run_id="2026-12-02T10:00:00", model_name=MODEL)
    base = outputs.serving_dir / MODEL
    [version] = list_versions(base)

    listing = routes_alone("127.0.0.1", "", base)("GET", f"/signflow/models/{MODEL}/versions").json()

    [entry] = listing["versions"]
    assert entry["version"] == version and entry["model_uri"] == evaluated.model.uri
    assert entry["per_signer"] == EXPECTED_PER_SIGNER
    assert entry["spans"] == list(SPANS) and entry["record_counts"] == EXPECTED_RECORD_COUNTS
    assert entry["lineage_source"] == "push record" and entry["pipeline_run_id"] == "2026-12-02T10:00:00"
    assert set(entry["eval_metrics"]) == {"sparse_categorical_accuracy", "example_count"}


def test_signflow_rollback_and_the_route_share_one_implementation():
    from pipeline.training_server import rollback as pipeline_rollback

    assert pipeline_rollback.roll_back is serving_rollback.roll_back
    assert pipeline_rollback.RollbackRefused is serving_rollback.RollbackRefused
