"""Version management on a live server: new versions, broken versions, failed warm-ups, rollback,
policies, labels, config reloads. Folders change under a running server polling every second
(--file_system_poll_wait_seconds=1).

Nothing here waits a fixed time for something to happen: a change is waited for with
wait_for (its timeout is a hang guard), and "nothing changed" is asserted only after the
server's watcher has completed two more polls (wait_for_polls), so that it has looked."""
from __future__ import annotations

import shutil
import threading

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc, predict_pb2, prediction_log_pb2

from serving import layout
from tests.serving.conftest import HANG_GUARD, install_version, make_settings, wait_for, wait_for_polls, write_model_config
from tests.serving.toy_models import Gate

pytestmark = pytest.mark.timeout(300)

POLL = 1


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


def load_events(server, event: str, version: int, model: str = "m") -> float:
    """signflow_serving_model_load_events_total for one version, from the server's own metrics."""
    sample = f'signflow_serving_model_load_events_total{{event="{event}",model="{model}",version="{version}"}} '
    for line in server.server.metrics.render().decode().splitlines():
        if line.startswith(sample):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def single_model(model_store, tmp_path, start_server):
    """A server for model "m" (half_plus_two) whose base path holds version 1."""
    base = tmp_path / "m"
    install_version(model_store["half_plus_two"], base, 1)
    server = start_server(make_settings(model_name="m", model_base_path=str(base), file_system_poll_wait_seconds=POLL))
    return server, base


def test_new_version_takes_over_and_traffic_never_fails(single_model, model_store):
    server, base = single_model
    assert served_version(server) == "1"
    failures, answered_by, stop = [], [], threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                response = predict(server)
            except requests.RequestException as err:
                failures.append(repr(err))
                continue
            if response.status_code != 200 or response.json() != {"predictions": [2.5]}:
                failures.append((response.status_code, response.text))
            else:
                answered_by.append(response.headers["X-Model-Version"])

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        assert wait_for(lambda: "1" in answered_by)
        install_version(model_store["half_plus_two"], base, 2)
        # The hammer itself must see the switch: its traffic spanned the swap.
        assert wait_for(lambda: "2" in answered_by), f"hammer saw versions {sorted(set(answered_by))}"
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert "1" not in answered_by[answered_by.index("2"):], "version 1 answered again after version 2 took over"
    assert wait_for(lambda: states(server) == {"2": ("AVAILABLE", "OK"), "1": ("END", "OK")})


def test_broken_version_is_reported_and_the_old_one_keeps_serving(single_model, model_store):
    server, base = single_model
    broken = base / ".incoming-2"
    shutil.copytree(model_store["half_plus_two"], broken)
    (broken / layout.SAVED_MODEL_FILE).write_bytes(b"\x08\x01corrupt, not a SavedModel" * 10)
    broken.rename(base / "2")

    assert wait_for(lambda: states(server).get("2", ("", ""))[0] == "END")
    status = requests.get(f"{server.rest_url}/v1/models/m/versions/2", timeout=10).json()["model_version_status"][0]
    assert status["status"]["error_code"] != "OK"
    assert "saved_model.pb" in status["status"]["error_message"]
    assert states(server)["1"] == ("AVAILABLE", "OK")
    assert served_version(server) == "1"
    assert predict(server, path="/versions/2").status_code == 404

    # Fixing the folder (a new push of version 2) is picked up.
    shutil.rmtree(base / "2")
    install_version(model_store["half_plus_two"], base, 2)
    assert wait_for(lambda: served_version(server) == "2")


def test_removing_the_newest_version_falls_back(single_model, model_store):
    server, base = single_model
    install_version(model_store["half_plus_two"], base, 2)
    assert wait_for(lambda: served_version(server) == "2")

    # What `signflow rollback` does: move the folder out of the integer namespace.
    (base / layout.ROLLED_BACK_DIR).mkdir()
    (base / "2").rename(base / layout.ROLLED_BACK_DIR / "2")
    assert wait_for(lambda: served_version(server) == "1")
    assert wait_for(lambda: states(server) == {"2": ("END", "OK"), "1": ("AVAILABLE", "OK")})


def gated_predict(server, gate: Gate) -> requests.Response:
    return requests.post(f"{server.rest_url}/v1/models/gated:predict", data=gate.request(), timeout=HANG_GUARD + 60)


def test_old_version_finishes_its_requests_before_unloading(model_store, tmp_path, start_server):
    base = tmp_path / "gated"
    install_version(model_store["gated"], base, 1)
    # No REST deadline: the held request must last exactly as long as the test holds it.
    server = start_server(make_settings(model_name="gated", model_base_path=str(base),
                                        file_system_poll_wait_seconds=POLL, rest_api_timeout_in_ms=0))
    gate, answer = Gate(tmp_path / "held"), {}
    thread = threading.Thread(target=lambda: answer.setdefault("response", gated_predict(server, gate)))
    thread.start()
    try:
        assert wait_for(gate.started), "the held request never reached the model"
        install_version(model_store["gated"], base, 2)
        # Status requests never touch a model, so they answer while version 1 is still busy.
        draining = {"2": ("AVAILABLE", "OK"), "1": ("UNLOADING", "OK")}
        assert wait_for(lambda: states(server, "gated") == draining), states(server, "gated")
        # New requests go to version 2 while version 1 drains.
        quick = gated_predict(server, Gate.open(tmp_path / "quick"))
        assert quick.status_code == 200 and quick.headers["X-Model-Version"] == "2", quick.text
        # Version 1 stays UNLOADING, whatever the watcher does, for as long as its request runs.
        assert wait_for_polls(server)
        assert states(server, "gated") == draining
        assert thread.is_alive() and "response" not in answer
    finally:
        gate.release()
        thread.join(HANG_GUARD + 60)
    assert not thread.is_alive(), "the held request never finished"
    response = answer["response"]
    assert response.status_code == 200, response.text
    assert response.headers["X-Model-Version"] == "1"
    assert response.json() == {"predictions": [{"y": 2.5, "released": True}]}
    assert wait_for(lambda: states(server, "gated")["1"] == ("END", "OK"))
    assert states(server, "gated")["2"] == ("AVAILABLE", "OK")


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
    assert wait_for(lambda: served_version(server, "c") == "1")
    assert wait_for(lambda: server.config_file_polls("applied") == 1)
    assert predict(server, "a").json() == {"error": "Servable not found for request: Latest(a)"}
    assert states(server, "a") == {"1": ("END", "OK")}
    assert served_version(server, "b") == "1"

    # A config that does not parse is logged and ignored: the server keeps what it has.
    config.write_text("model_config_list { config { nonsense: 1 } }")
    # Refused on every poll: two refusals mean a poll read the bad file and the next one still did.
    assert wait_for(lambda: server.config_file_polls("failed") >= 2)
    assert server.config_file_polls("applied") == 1
    assert served_version(server, "c") == "1" and served_version(server, "b") == "1"
    assert states(server, "c") == {"1": ("AVAILABLE", "OK")}


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

    def logged(text: str) -> int:
        return len([r for r in caplog.records if text in r.getMessage()])

    with caplog.at_level("INFO", logger="serving.registry"):
        server = start_server(make_settings(model_name="m", model_base_path=str(base),
                                            file_system_poll_wait_seconds=POLL))
        # The start-up scan and at least two more have all found no base path.
        assert wait_for_polls(server, 3)
        assert logged("Could not find base path") == 1
        base.mkdir(parents=True)  # the folder exists, empty: TF Serving's "No versions" warning, once
        assert wait_for_polls(server, 3)
        assert logged("Base path of model m found") == 1
        assert logged("No versions of servable m found") == 1
        install_version(model_store["half_plus_two"], base, 1)
        assert wait_for(lambda: served_version(server) == "1")
    assert logged("Could not find base path") == 1
    assert logged("No versions of servable m found") == 1


# -- warm-up (saved_model_warmup_util.cc): a version whose warm-up fails is not loaded --------------


def _warmup_record(inputs: dict) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = "serving_default"
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString()


def _write_tfrecords(path, records: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def _corrupt_file(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"these bytes are not a TFRecord file, whatever their length " * 4)


def _failing_request(path) -> None:
    # A good record first, so the file itself is fine and it is the second request that fails.
    _write_tfrecords(path, [_warmup_record({"x": [1.0]}), _warmup_record({"zzz": [1.0]})])


WARMUP_FAILURES = {
    # A file that is not TFRecord: DATA_LOSS, with TF Serving's hint.
    "corrupt file": (_corrupt_file, "DATA_LOSS", "Please verify your warmup data is in TFRecord format"),
    # A request the model refuses: the load fails with that request's own error.
    "failing request": (_failing_request, "INVALID_ARGUMENT",
                        "input tensor alias not found in signature: zzz. Inputs expected to be in the set {x}."),
}


def _push_with_warmup(model_store, base, version: int, write_warmup) -> None:
    staging = base / f".incoming-{version}-warmup"
    shutil.copytree(model_store["half_plus_two"], staging)
    write_warmup(staging / layout.WARMUP_FILE)
    staging.rename(base / str(version))


@pytest.mark.parametrize("failure", list(WARMUP_FAILURES))
def test_a_failed_warmup_fails_the_load_and_the_old_version_keeps_serving(single_model, model_store, failure):
    server, base = single_model
    write_warmup, code, message = WARMUP_FAILURES[failure]
    _push_with_warmup(model_store, base, 2, write_warmup)

    assert wait_for(lambda: states(server).get("2", ("", ""))[0] == "END"), states(server)
    status = requests.get(f"{server.rest_url}/v1/models/m/versions/2", timeout=10).json()["model_version_status"][0]
    assert status["state"] == "END"
    assert status["status"]["error_code"] == code, status
    assert message in status["status"]["error_message"], status
    assert states(server)["1"] == ("AVAILABLE", "OK")
    assert served_version(server) == "1"
    assert predict(server, path="/versions/2").json() == {"error": "Servable not found for request: Specific(m, 2)"}
    # The failure is kept, not retried every poll, while the folder stays as it is.
    assert wait_for_polls(server)
    assert states(server) == {"2": ("END", code), "1": ("AVAILABLE", "OK")}
    assert load_events(server, "load_failed", 2) == 1
    assert load_events(server, "loaded", 2) == 0
    assert served_version(server) == "1"


def test_a_good_warmup_file_is_replayed_and_the_version_serves(single_model, model_store):
    server, base = single_model
    _push_with_warmup(model_store, base, 2, lambda path: _write_tfrecords(
        path, [_warmup_record({"x": [1.0, 2.0]}), _warmup_record({"x": [3.0]})]))
    assert wait_for(lambda: served_version(server) == "2")
    assert wait_for(lambda: states(server) == {"2": ("AVAILABLE", "OK"), "1": ("END", "OK")})


def test_without_model_warmup_the_warmup_file_is_not_read(model_store, tmp_path, start_server):
    """--enable_model_warmup=false: TF Serving skips the file, so even a corrupt one does not stop the load."""
    base = tmp_path / "m"
    install_version(model_store["half_plus_two"], base, 1)
    _push_with_warmup(model_store, base, 2, _corrupt_file)
    server = start_server(make_settings(model_name="m", model_base_path=str(base), enable_model_warmup=False))
    assert states(server) == {"2": ("AVAILABLE", "OK")}
    assert served_version(server) == "2"
