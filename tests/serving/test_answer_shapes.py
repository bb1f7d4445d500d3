"""Issue 12 item 8: the seed's answer shape by default, labels through `predict_label` and `classify`.

- serving_default has the single output `probabilities`: REST :predict answers
  {"predictions": [[p0, p1, ...]]}, and the seed's client code (run verbatim below)
  finds the signer with np.argmax and labels.txt;
- predict_label answers label, score and probabilities, over REST and gRPC, consistent
  with serving_default and labels.txt;
- classify answers TF Serving's {"results": [[[label, score], ...]]};
- the label order is in assets/labels.txt and assets.extra/signflow_model.json.

Real servers on 127.0.0.1 (ephemeral ports). The known-answer model
(tests/fixtures/tiny_model.py) names the signer by the image's dominant colour, so
a wrong label order or a wrong argmax fails; the untrained tiny model is checked
against its own signature called in-process, on images whose argmax differ.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image

from serving import contract
from serving.server import ServerThread
from tests.fixtures.tiny_model import (
    COLOUR_LABELS,
    DEFAULT_LABELS,
    build_known_answer_saved_model,
    build_tiny_saved_model,
    make_colour_image_bytes,
    make_image_bytes,
)
from tests.serving.conftest import install_version, make_settings, write_model_config

pytestmark = pytest.mark.timeout(180)

KNOWN = "known"
TINY = "tiny"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("answer_shapes")
    templates = {
        KNOWN: build_known_answer_saved_model(root / "templates" / KNOWN),
        # seed 6: an untrained model whose argmax differs between the images below (checked: 2, 1, 0, 2, 0).
        TINY: build_tiny_saved_model(root / "templates" / TINY, seed=6),
    }
    return {name: install_version(template, root / "models" / name, 1) for name, template in templates.items()}


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    config = write_model_config(tmp_path_factory.mktemp("answer_shapes_config") / "models.config",
                                [{"name": name, "base_path": path.parent} for name, path in models.items()])
    thread = ServerThread(make_settings(model_config_file=str(config))).start()
    yield thread
    thread.stop()


def tiny_images() -> list[bytes]:
    """A pen-stroke image, pure red, green and blue, and black: the untrained model does not answer them alike."""
    black = io.BytesIO()
    Image.new("RGB", (160, 64), (0, 0, 0)).save(black, format="PNG")
    return [make_image_bytes("PNG", seed=0), *(make_colour_image_bytes(c) for c in range(3)), black.getvalue()]


def in_process(model_dir: Path, signature: str, images: list[bytes]) -> dict[str, np.ndarray]:
    function = tf.saved_model.load(str(model_dir)).signatures[signature]
    return {name: value.numpy() for name, value in function(image_bytes=tf.constant(images)).items()}


def seed_client(server_url: str, path: str) -> int:
    """The seed's client code, verbatim but for the URL and the image path: the predicted class index."""
    SERVER_URL = server_url
    b64 = base64.b64encode(open(path, "rb").read()).decode()
    resp = requests.post(SERVER_URL, json={"instances": [{"image_bytes": {"b64": b64}}]}).json()
    return int(np.argmax(resp["predictions"][0]))


def labels_txt(model_dir: Path) -> list[str]:
    return (model_dir / "assets" / "labels.txt").read_text(encoding="utf-8").splitlines()


def predict_url(server: ServerThread, model: str) -> str:
    return f"{server.rest_url}/v1/models/{model}:predict"


# -- (1) the seed's client, verbatim ---------------------------------------------------------------


def test_the_seeds_client_names_the_signer_of_a_known_answer_model(server, models, tmp_path):
    labels = labels_txt(models[KNOWN])
    assert labels == list(COLOUR_LABELS)
    for channel, expected in enumerate(COLOUR_LABELS):
        path = tmp_path / f"colour_{channel}.png"
        path.write_bytes(make_colour_image_bytes(channel))
        assert labels[seed_client(predict_url(server, KNOWN), str(path))] == expected


def test_the_seeds_client_agrees_with_the_model_in_process(server, models, tmp_path):
    images = tiny_images()
    expected = np.argmax(in_process(models[TINY], contract.SERVING_SIGNATURE, images)[contract.PROBABILITIES_OUTPUT],
                         axis=1)
    assert len(set(expected.tolist())) >= 2, "the test images must not all have one answer, or the check cannot fail"
    top_two = np.sort(in_process(models[TINY], contract.SERVING_SIGNATURE, images)[contract.PROBABILITIES_OUTPUT])[:, -2:]
    assert np.all(top_two[:, 1] - top_two[:, 0] > 1e-4), "no near-tie: the server's argmax must be the same"
    labels = labels_txt(models[TINY])
    assert labels == list(DEFAULT_LABELS)
    for index, image in enumerate(images):
        path = tmp_path / f"signature_{index}.png"
        path.write_bytes(image)
        assert labels[seed_client(predict_url(server, TINY), str(path))] == labels[int(expected[index])]


def test_serving_default_answers_the_seeds_shape_exactly(server, models):
    images = tiny_images()[:2]
    body = {"instances": [{"image_bytes": {"b64": base64.b64encode(image).decode()}} for image in images]}
    response = requests.post(predict_url(server, TINY), json=body, timeout=60)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"predictions"}
    expected = in_process(models[TINY], contract.SERVING_SIGNATURE, images)[contract.PROBABILITIES_OUTPUT]
    # [[p0, p1, p2], [p0, p1, p2]]: one bare list of floats per image, no names.
    assert [len(row) for row in answer["predictions"]] == [len(DEFAULT_LABELS)] * 2
    assert all(isinstance(p, float) for row in answer["predictions"] for p in row)
    assert np.allclose(answer["predictions"], expected, atol=1e-6)
    # Columnar: {"outputs": [[...], [...]]}.
    columnar = {"inputs": {"image_bytes": [{"b64": base64.b64encode(image).decode()} for image in images]}}
    answer = requests.post(predict_url(server, TINY), json=columnar, timeout=60).json()
    assert np.allclose(answer["outputs"], expected, atol=1e-6)


# -- (2) predict_label over REST and gRPC ---------------------------------------------------------------


@pytest.mark.parametrize("model", [KNOWN, TINY])
def test_predict_label_over_rest_agrees_with_serving_default_and_labels_txt(server, models, model):
    images = [make_colour_image_bytes(c) for c in range(3)] if model == KNOWN else tiny_images()
    labels = labels_txt(models[model])
    instances = [{"image_bytes": {"b64": base64.b64encode(image).decode()}} for image in images]
    default = requests.post(predict_url(server, model), json={"instances": instances}, timeout=60).json()
    named = requests.post(predict_url(server, model), json={"signature_name": "predict_label", "instances": instances},
                          timeout=60).json()

    assert len(named["predictions"]) == len(images)
    for row, probabilities in zip(named["predictions"], default["predictions"]):
        assert set(row) == {"label", "score", "probabilities"}
        assert np.allclose(row["probabilities"], probabilities, atol=1e-6)
        assert row["label"] == labels[int(np.argmax(probabilities))]
        assert row["score"] == pytest.approx(max(probabilities), abs=1e-6)
    if model == KNOWN:
        assert [row["label"] for row in named["predictions"]] == list(COLOUR_LABELS)


def test_predict_label_over_grpc_agrees_with_serving_default(server, models):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    images = tiny_images()
    labels = labels_txt(models[TINY])
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answers = {}
        for signature in (contract.SERVING_SIGNATURE, contract.PREDICT_LABEL_SIGNATURE):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = TINY
            request.model_spec.signature_name = signature
            request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
            response = stub.Predict(request, timeout=60)
            assert response.model_spec.signature_name == signature
            answers[signature] = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    assert set(answers["serving_default"]) == {"probabilities"}
    assert set(answers["predict_label"]) == {"label", "score", "probabilities"}
    probabilities = answers["serving_default"]["probabilities"]
    assert np.allclose(answers["predict_label"]["probabilities"], probabilities, atol=1e-6)
    assert [label.decode() for label in answers["predict_label"]["label"]] == [
        labels[i] for i in np.argmax(probabilities, axis=1)]
    assert np.allclose(answers["predict_label"]["score"], probabilities.max(axis=1), atol=1e-6)


def test_predict_label_checks_images_like_serving_default(server):
    for signature in (None, "predict_label"):
        body = {"instances": [{"image_bytes": {"b64": base64.b64encode(b"not an image").decode()}}]}
        if signature:
            body["signature_name"] = signature
        response = requests.post(predict_url(server, TINY), json=body, timeout=60)
        assert response.status_code == 400 and "not an acceptable image" in response.json()["error"], signature


# -- (3) classify, unchanged -------------------------------------------------------------------------------


def test_classify_answers_tf_servings_results_shape(server, models):
    images = [make_colour_image_bytes(c) for c in range(3)]
    body = {"signature_name": "classify",
            "examples": [{"image": {"b64": base64.b64encode(image).decode()}} for image in images]}
    response = requests.post(f"{server.rest_url}/v1/models/{KNOWN}:classify", json=body, timeout=60)

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3
    for result, expected in zip(results, COLOUR_LABELS):
        # [["signer_red", 0.9993], ["signer_green", 0.0003], ...]: every class, labels.txt order.
        assert [pair[0] for pair in result] == list(COLOUR_LABELS)
        assert all(isinstance(pair[1], float) for pair in result)
        assert max(result, key=lambda pair: pair[1])[0] == expected


# -- the label order in the model's metadata --------------------------------------------------------------


@pytest.mark.parametrize("model", [KNOWN, TINY])
def test_the_label_order_is_in_the_models_metadata_file(models, model):
    metadata = json.loads((models[model] / contract.MODEL_METADATA_FILE).read_text(encoding="utf-8"))
    assert metadata["labels"] == labels_txt(models[model])
    assert metadata["image_size"] == [72, 144]
    assert metadata["signatures"]["serving_default"]["outputs"] == {"probabilities": "float32 [N, K]"}
    assert set(metadata["signatures"]["predict_label"]["outputs"]) == {"label", "score", "probabilities"}
    assert metadata["signatures"]["classify"]["method"] == contract.CLASSIFY_METHOD


def test_the_warmup_file_calls_serving_default_then_predict_label(models):
    from tensorflow_serving.apis import prediction_log_pb2

    path = models[KNOWN] / "assets.extra" / "tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(raw)
            for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == [
        "serving_default", "serving_default", "serving_default", "predict_label"]
