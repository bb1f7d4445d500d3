"""Many clients at once: answers go to the right caller, the event loop stays free, and with
--enable_batching requests share model calls while one client's bad image fails only its own request."""
from __future__ import annotations

import base64
import concurrent.futures

import pytest
import requests

from tests.fixtures.tiny_model import make_image_bytes
from tests.serving.conftest import HANG_GUARD, SIGNFLOW_MODEL, install_version, make_settings, wait_for
from tests.serving.toy_models import Gate

pytestmark = pytest.mark.timeout(300)

IMAGES = [base64.b64encode(make_image_bytes(fmt, size=(120 + 7 * i, 60), seed=i)).decode()
          for i, fmt in enumerate(["PNG", "JPEG", "GIF", "BMP"] * 4)]
BAD = base64.b64encode(b"definitely not an image").decode()


def predict(server, b64: str, model: str = SIGNFLOW_MODEL) -> requests.Response:
    return requests.post(f"{server.rest_url}/v1/models/{model}:predict",
                         json={"instances": [{"b64": b64}]}, timeout=60)


def answers_in_parallel(server, images: list[str], workers: int) -> list[requests.Response]:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda b64: predict(server, b64), images))


def test_many_concurrent_connections_each_get_their_own_answer(signflow_server):
    expected = {b64: predict(signflow_server, b64).json() for b64 in IMAGES}
    images = IMAGES * 6
    responses = answers_in_parallel(signflow_server, images, workers=48)
    for b64, response in zip(images, responses):
        assert response.status_code == 200
        assert response.json() == expected[b64]


def test_model_work_never_blocks_the_event_loop(model_store, tmp_path, start_server):
    """Status answers arrive while a model call runs: the call is held in the model until the
    test has them, so a server that ran models on its event loop could not answer at all."""
    install_version(model_store["gated"], tmp_path / "gated", 1)
    server = start_server(make_settings(model_name="gated", model_base_path=str(tmp_path / "gated"),
                                        rest_api_timeout_in_ms=0))
    gate = Gate(tmp_path / "held")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(requests.post, f"{server.rest_url}/v1/models/gated:predict",
                           data=gate.request(), timeout=HANG_GUARD + 60)
        try:
            assert wait_for(gate.started), "the held request never reached the model"
            for _ in range(5):
                status = requests.get(f"{server.rest_url}/v1/models/gated", timeout=HANG_GUARD)
                assert status.status_code == 200, status.text
                assert status.json()["model_version_status"][0]["state"] == "AVAILABLE"
            # Ordering: every status answer above came back while the model call was still running.
            assert not held.done()
            assert not gate.released()
        finally:
            gate.release()
        response = held.result()
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [{"y": 2.5, "released": True}]}


@pytest.fixture
def batching_server(model_store, tmp_path, start_server):
    install_version(model_store["signflow"], tmp_path / SIGNFLOW_MODEL, 1)
    parameters = tmp_path / "batching.config"
    # A batch runs only when full (the timeout, 10 minutes, is never reached in a passing test):
    # how the requests happen to be spread in time cannot change what is batched.
    parameters.write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 600000000 } "
                          "max_enqueued_batches { value: 100 } num_batch_threads { value: 1 }\n")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }\n")
    return start_server(make_settings(
        model_name=SIGNFLOW_MODEL, model_base_path=str(tmp_path / SIGNFLOW_MODEL), enable_batching=True,
        batching_parameters_file=str(parameters), monitoring_config_file=str(monitoring)))


def test_batching_shares_model_calls_and_isolates_bad_images(batching_server, signflow_server):
    expected = {b64: predict(signflow_server, b64).json() for b64 in IMAGES}
    images = IMAGES + [BAD, BAD]
    responses = answers_in_parallel(batching_server, images, workers=len(images))
    for b64, response in zip(images, responses):
        if b64 == BAD:
            assert response.status_code == 400
            assert "not an acceptable image" in response.json()["error"]
        else:
            assert response.status_code == 200, response.text
            # serving_default: the seed's shape, one list of probabilities per image.
            (got,), (want,) = response.json()["predictions"], expected[b64]["predictions"]
            assert got.index(max(got)) == want.index(max(want))
            assert got == pytest.approx(want, abs=1e-5)

    metrics = requests.get(batching_server.rest_url + "/monitoring/prometheus/metrics", timeout=10).text
    count = _sample(metrics, f'signflow_serving_batch_size_count{{model="{SIGNFLOW_MODEL}",version="1"}}')
    rows = _sample(metrics, f'signflow_serving_batch_size_sum{{model="{SIGNFLOW_MODEL}",version="1"}}')
    # 16 good one-image requests and full batches of 8 (bad images are refused before batching).
    assert rows == len(IMAGES) == 16
    assert count == 2

    # shared_batch_scheduler.h: a request over max_batch_size is INVALID_ARGUMENT. (A full queue's
    # 503 is tested behind a real server in test_batching.py.)
    too_big = requests.post(f"{batching_server.rest_url}/v1/models/{SIGNFLOW_MODEL}:predict",
                            json={"instances": [{"b64": IMAGES[0]}] * 9}, timeout=60)
    assert too_big.status_code == 400
    assert too_big.json() == {"error": "Task size 9 is larger than maximum input batch size 8"}


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")
