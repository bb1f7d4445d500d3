"""Version management on a live server: new versions, broken versions, rollback, policies, labels,
config reloads. Folders change under a running server polling every second (--file_system_poll_wait_seconds=1)."""
from __future__ import annotations

import shutil
import threading
import time

import grpc
import pytest
import requests
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from serving import layout
from tests.serving.conftest import install_version, make_settings, wait_for, write_model_config

pytestmark = pytest.mark.timeout(120)

POLL = 1
# Discovery takes at most one poll; loading and warming a tiny model takes well under this.
LOAD_BUDGET = 10


def predict(server, model: str = "m", path: str = "", x: float = 1.0) -> requests.Response:
    return requests.post(f"{server.rest_url}/v1/models/{model}{path}:predict", json={"instances": [x]}, timeout=30)


def served_version(server, model: str = "m") -> str | None:
    response = predict(server, model)
    return response.headers.get("X-Model-Version") if response.status_code == 200 else None


def states(server, model: str = "m") -> dict[str, tuple[str, str]]:
    response = requests.get(f"{server.rest_url}/v1/models/{model}", timeout=10)
    if response.status_code != 200:
        return {}
    return {s["version"]: (s["state"], s["status"]["error_code"]) for s in response.json()["model_version_status"]}


@pytest.fixture
def single_model(model_store, tmp_path, start_server):
    """A server for model "m" (half_plus_two) whose base path holds version 1."""
    base = tmp_path / "m"
    install_version(model_store["half_plus_two"], base, 1)
    server = start_server(make_settings(model_name="m", model_base_path=str(base), file_system_poll_wait_seconds=POLL))
    return server, base


def test_new_version_serves_within_a_poll_and_traffic_never_fails(single_model, model_store):
    server, base = single_model
    assert served_version(server) == "1"
    failures, stop = [], threading.Event()

    def hammer():
        while not stop.is_set():
            response = predict(server)
            if response.status_code != 200 or response.json() != {"predictions": [2.5]}:
                failures.append((response.status_code, response.text))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        started = time.monotonic()
        install_version(model_store["half_plus_two"], base, 2)
        assert wait_for(lambda: served_version(server) == "2", POLL + LOAD_BUDGET)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert elapsed < POLL + LOAD_BUDGET
    assert wait_for(lambda: states(server) == {"2": ("AVAILABLE", "OK"), "1": ("END", "OK")}, 5)


def test_broken_version_is_reported_and_the_old_one_keeps_serving(single_model, model_store):
    server, base = single_model
    broken = base / ".incoming-2"
    shutil.copytree(model_store["half_plus_two"], broken)
    (broken / layout.SAVED_MODEL_FILE).write_bytes(b"\x08\x01corrupt, not a SavedModel" * 10)
    broken.rename(base / "2")

    assert wait_for(lambda: states(server).get("2", ("", ""))[0] == "END", POLL + LOAD_BUDGET)
    status = requests.get(f"{server.rest_url}/v1/models/m/versions/2", timeout=10).json()["model_version_status"][0]
    assert status["status"]["error_code"] != "OK"
    assert "saved_model.pb" in status["status"]["error_message"]
    assert states(server)["1"] == ("AVAILABLE", "OK")
    assert served_version(server) == "1"
    assert predict(server, path="/versions/2").status_code == 404

    # Fixing the folder (a new push of version 2) is picked up.
    shutil.rmtree(base / "2")
    install_version(model_store["half_plus_two"], base, 2)
    assert wait_for(lambda: served_version(server) == "2", POLL + LOAD_BUDGET)


def test_removing_the_newest_version_falls_back(single_model, model_store):
    server, base = single_model
    install_version(model_store["half_plus_two"], base, 2)
    assert wait_for(lambda: served_version(server) == "2", POLL + LOAD_BUDGET)

    # What `signflow rollback` does: move the folder out of the integer namespace.
    (base / layout.ROLLED_BACK_DIR).mkdir()
    (base / "2").rename(base / layout.ROLLED_BACK_DIR / "2")
    assert wait_for(lambda: served_version(server) == "1", POLL + LOAD_BUDGET)
    assert wait_for(lambda: states(server) == {"2": ("END", "OK"), "1": ("AVAILABLE", "OK")}, 5)


def test_old_version_finishes_its_requests_before_unloading(model_store, tmp_path, start_server):
    base = tmp_path / "slow"
    install_version(model_store["slow"], base, 1)
    server = start_server(make_settings(model_name="slow", model_base_path=str(base),
                                        file_system_poll_wait_seconds=POLL))
    answer = {}

    def slow_request():
        answer["response"] = predict(server, "slow", x=2500.0)

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.3)  # the request is now inside version 1
    install_version(model_store["slow"], base, 2)
    # Status requests never touch a model, so they answer while version 1 is still busy.
    assert wait_for(lambda: states(server, "slow") == {"2": ("AVAILABLE", "OK"), "1": ("UNLOADING", "OK")},
                    POLL + LOAD_BUDGET)
    thread.join()
    assert answer["response"].status_code == 200
    assert answer["response"].headers["X-Model-Version"] == "1"
    assert wait_for(lambda: states(server, "slow")["1"] == ("END", "OK"), 5)
    assert served_version(server, "slow") == "2"


def test_policies_and_labels_route(model_store, tmp_path, start_server):
    for version in (1, 2, 3):
        install_version(model_store["half_plus_two"], tmp_path / "specific", version)
        install_version(model_store["half_plus_two"], tmp_path / "all", version)
        install_version(model_store["half_plus_two"], tmp_path / "latest2", version)
    config = write_model_config(tmp_path / "models.config", [
        {"name": "specific", "base_path": tmp_path / "specific", "policy": [1, 3],
         "labels": {"stable": 1, "canary": 3}},
        {"name": "all", "base_path": tmp_path / "all", "policy": "all"},
        {"name": "latest2", "base_path": tmp_path / "latest2", "policy": 2},
    ])
    server = start_server(make_settings(model_config_file=str(config), file_system_poll_wait_seconds=POLL,
                                        allow_version_labels_for_unavailable_models=True))

    assert sorted(states(server, "specific")) == ["1", "3"]
    assert served_version(server, "specific") == "3"
    assert predict(server, "specific", "/versions/1").headers["X-Model-Version"] == "1"
    assert predict(server, "specific", "/versions/2").json() == {
        "error": "Servable not found for request: Specific(specific, 2)"}
    assert predict(server, "specific", "/labels/stable").headers["X-Model-Version"] == "1"
    assert predict(server, "specific", "/labels/canary").headers["X-Model-Version"] == "3"
    assert predict(server, "specific", "/labels/nope").status_code == 400

    assert sorted(states(server, "all")) == ["1", "2", "3"]
    for version in ("1", "2", "3"):
        assert predict(server, "all", f"/versions/{version}").headers["X-Model-Version"] == version
    assert sorted(states(server, "latest2")) == ["2", "3"]
    assert predict(server, "latest2", "/versions/1").status_code == 404


def test_labels_need_an_available_version_unless_allowed(model_store, tmp_path, start_server):
    """server_core.cc: a label may only name an AVAILABLE version, so labels in the first config fail
    startup unless --allow_version_labels_for_unavailable_models (TF Serving issue #1413)."""
    install_version(model_store["half_plus_two"], tmp_path / "m", 1)
    config = write_model_config(tmp_path / "models.config", [
        {"name": "m", "base_path": tmp_path / "m", "labels": {"stable": 1}}])
    with pytest.raises(Exception, match="Request to assign label to version 1 of model m, which is not currently "
                                        "available for inference"):
        start_server(make_settings(model_config_file=str(config)))


def test_config_file_change_applies_whole(model_store, tmp_path, start_server):
    for name in ("a", "b", "c"):
        install_version(model_store["half_plus_two"], tmp_path / name, 1)
    config = write_model_config(tmp_path / "models.config", [
        {"name": "a", "base_path": tmp_path / "a"}, {"name": "b", "base_path": tmp_path / "b"}])
    server = start_server(make_settings(model_config_file=str(config), model_config_file_poll_wait_seconds=1,
                                        file_system_poll_wait_seconds=POLL))
    assert served_version(server, "a") == "1" and served_version(server, "b") == "1"

    write_model_config(config, [{"name": "b", "base_path": tmp_path / "b"}, {"name": "c", "base_path": tmp_path / "c"}])
    assert wait_for(lambda: served_version(server, "c") == "1", 1 + LOAD_BUDGET)
    assert predict(server, "a").json() == {"error": "Servable not found for request: Latest(a)"}
    assert states(server, "a") == {"1": ("END", "OK")}
    assert served_version(server, "b") == "1"

    # A config that does not parse is logged and ignored: the server keeps what it has.
    config.write_text("model_config_list { config { nonsense: 1 } }")
    time.sleep(2.5)
    assert served_version(server, "c") == "1"


def test_grpc_reload_config(model_store, tmp_path, start_server):
    for name in ("a", "b"):
        install_version(model_store["half_plus_two"], tmp_path / name, 1)
    server = start_server(make_settings(model_name="a", model_base_path=str(tmp_path / "a")))
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(server.grpc_target))

    request = model_management_pb2.ReloadConfigRequest()
    entry = request.config.model_config_list.config.add(name="b", base_path=str(tmp_path / "b"),
                                                        model_platform="tensorflow")
    response = stub.HandleReloadConfigRequest(request, timeout=60)
    assert response.status.error_code == 0
    # As TF Serving: the reload returns once the new models are loaded.
    assert served_version(server, "b") == "1"
    assert predict(server, "a").status_code == 404

    entry.version_labels["stable"] = 7
    with pytest.raises(grpc.RpcError) as caught:
        stub.HandleReloadConfigRequest(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Request to assign label to version 7 of model b" in caught.value.details()

    entry.base_path = "relative/path"
    with pytest.raises(grpc.RpcError) as caught:
        stub.HandleReloadConfigRequest(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected model b to have an absolute path or URI" in caught.value.details()


def test_missing_base_path_is_logged_once_and_its_arrival_noted(model_store, tmp_path, start_server, caplog):
    """A server started before the first push: one error and one warning, not one per poll, then serving."""
    base = tmp_path / "not_yet" / "m"
    with caplog.at_level("INFO", logger="serving.registry"):
        server = start_server(make_settings(model_name="m", model_base_path=str(base),
                                            file_system_poll_wait_seconds=POLL))
        time.sleep(3 * POLL)
        missing = [r for r in caplog.records if "Could not find base path" in r.getMessage()]
        assert len(missing) == 1
        base.mkdir(parents=True)  # the folder exists, empty: TF Serving's "No versions" warning, once
        time.sleep(3 * POLL)
        install_version(model_store["half_plus_two"], base, 1)
        assert wait_for(lambda: served_version(server) == "1", timeout=LOAD_BUDGET)
    assert any("Base path of model m found" in r.getMessage() for r in caplog.records)
    assert len([r for r in caplog.records if "No versions of servable m found" in r.getMessage()]) == 1
