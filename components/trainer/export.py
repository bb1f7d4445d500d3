"""Export a trained classifier as the SavedModel that TF Serving (and signflow's server) loads.

Layout written under `export_dir` (TF Serving's version folder contents):

    saved_model.pb, variables/
    assets/labels.txt                          one signer id per line, in `probabilities` order
    assets.extra/signflow_model.json           the model's metadata: labels (in `probabilities` order),
                                               image size, signatures (contract.MODEL_METADATA_FILE)
    assets.extra/tf_serving_warmup_requests    TF Serving's warmup log (PredictionLog TFRecord)

Signatures (tf.functions: TF 2.16 has no Estimator export):

    serving_default  (tensorflow/serving/predict)
        image_bytes: string [N]  raw PNG/JPEG/GIF/BMP file bytes
        -> probabilities: float32 [N, K]
           (the only output, so REST :predict answers {"predictions": [[p0, p1, ...]]}, one list per image)
    predict_label    (tensorflow/serving/predict, what signflow's client, CLI, batch prediction and serving
                      check call)
        image_bytes: string [N]
        -> label: string [N], score: float32 [N] (max of the row), probabilities: float32 [N, K]
    classify         (tensorflow/serving/classify, for TF Serving's Classify API and the Evaluator)
        inputs: string [N]  serialized tf.Example, image bytes under "image" (the
                            seed's classify request) or "image_raw" (ExampleGen's)
        -> classes: string [N, K], scores: float32 [N, K]

A batch holding bytes that do not decode fails as a whole (tf.io.decode_image
raises): no image in it gets a silently wrong answer. The server validates every
image before it joins a shared batch, so one client's bad bytes never fail
another client's request.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model import fingerprinting_utils
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from components.trainer.config import PREPROCESS_SCAN
from components.trainer.preprocess import image_to_model_input
from serving.contract import (
    CLASSES_OUTPUT,
    CLASSIFY_INPUT,
    CLASSIFY_METHOD,
    CLASSIFY_SIGNATURE,
    IMAGE_FEATURE,
    IMAGE_INPUT,
    LABEL_OUTPUT,
    MODEL_METADATA_FILE,
    PREDICT_LABEL_SIGNATURE,
    PREDICT_METHOD,
    PROBABILITIES_OUTPUT,
    REQUEST_IMAGE_FEATURE,
    SCORE_OUTPUT,
    SCORES_OUTPUT,
    SERVING_SIGNATURE,
    write_atomic,
)
from serving.layout import LABELS_FILE, SAVED_MODEL_FILE, WARMUP_FILE

METADATA_FORMAT = 1
# TF Serving replays at most 1000 warmup records; a handful makes the first request fast.
MAX_WARMUP_REQUESTS = 8


class _ServingModule(tf.Module):
    """What gets saved: the Keras model, its labels, and the three serving functions."""

    def __init__(self, model: tf.keras.Model, labels: Sequence[str], image_size: tuple[int, int], labels_file: str,
                 preprocessing: str):
        super().__init__()
        self.model = model
        self.labels = tf.constant(list(labels), dtype=tf.string)
        # Tracked so SavedModel copies it into assets/ under its own name.
        self.labels_asset = tf.saved_model.Asset(labels_file)
        self._height, self._width = image_size
        self._preprocessing = preprocessing

    def probabilities(self, image_bytes: tf.Tensor) -> tf.Tensor:
        inputs = tf.map_fn(
            lambda one: image_to_model_input(one, self._height, self._width, self._preprocessing),
            image_bytes,
            fn_output_signature=tf.TensorSpec([self._height, self._width, 3], tf.float32),
        )
        return self.model(inputs, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_INPUT)])
    def serve(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return {PROBABILITIES_OUTPUT: self.probabilities(image_bytes)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_INPUT)])
    def predict_label(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = self.probabilities(image_bytes)
        return {
            LABEL_OUTPUT: tf.gather(self.labels, tf.argmax(probabilities, axis=1)),
            SCORE_OUTPUT: tf.reduce_max(probabilities, axis=1),
            PROBABILITIES_OUTPUT: probabilities,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUT)])
    def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        features = tf.io.parse_example(
            inputs,
            {
                REQUEST_IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string, default_value=""),
                IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string, default_value=""),
            },
        )
        images = tf.where(tf.strings.length(features[REQUEST_IMAGE_FEATURE]) > 0,
                          features[REQUEST_IMAGE_FEATURE], features[IMAGE_FEATURE])
        scores = self.probabilities(images)
        classes = tf.tile(tf.expand_dims(self.labels, 0), [tf.shape(scores)[0], 1])
        return {CLASSES_OUTPUT: classes, SCORES_OUTPUT: scores}


def export_serving_model(
    model: tf.keras.Model,
    labels: Sequence[str],
    image_size: tuple[int, int],
    export_dir: str | os.PathLike,
    warmup_images: Sequence[bytes] = (),
    preprocessing: str = PREPROCESS_SCAN,
) -> Path:
    """Write the serving SavedModel for `model` (softmax over `labels`) into `export_dir`.

    `preprocessing` is the mode of preprocess.image_to_model_input the model was
    trained with; it becomes part of every image signature's graph.
    """
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("cannot export a classifier with no labels")
    if any("\n" in label for label in labels):
        raise ValueError("labels may not contain newlines (labels.txt is one label per line)")
    export_dir = Path(export_dir)
    with tempfile.TemporaryDirectory() as scratch:
        labels_file = Path(scratch) / LABELS_FILE.name
        labels_file.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
        module = _ServingModule(model, labels, image_size, str(labels_file), preprocessing)
        tf.saved_model.save(
            module,
            str(export_dir),
            signatures={
                SERVING_SIGNATURE: module.serve,
                PREDICT_LABEL_SIGNATURE: module.predict_label,
                CLASSIFY_SIGNATURE: module.classify,
            },
        )
    _mark_classify_signature(export_dir)
    write_model_metadata(export_dir, labels, image_size, preprocessing)
    if warmup_images:
        write_warmup_requests(export_dir, warmup_images[:MAX_WARMUP_REQUESTS])
    return export_dir


def _mark_classify_signature(export_dir: Path) -> None:
    """Give the classify signature TF Serving's classify method name.

    tf.saved_model.save marks every signature as predict; TF Serving's Classify
    API (and TFMA's classify path) only accept a signature whose method_name is
    tensorflow/serving/classify, so the saved graph is edited once after saving.
    """
    path = export_dir / SAVED_MODEL_FILE
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        meta_graph.signature_def[CLASSIFY_SIGNATURE].method_name = CLASSIFY_METHOD
    path.write_bytes(saved_model.SerializeToString())
    # fingerprint.pb holds a checksum of saved_model.pb: recompute it for the edited graph.
    fingerprinting_utils.write_fingerprint(str(export_dir))


def model_metadata(labels: Sequence[str], image_size: tuple[int, int], preprocessing: str = PREPROCESS_SCAN) -> dict:
    """What assets.extra/signflow_model.json holds: the label order of `probabilities` and the signatures."""
    image = {IMAGE_INPUT: "string [N]"}
    return {
        "format": METADATA_FORMAT,
        "labels": [str(label) for label in labels],
        "image_size": [int(image_size[0]), int(image_size[1])],
        "preprocessing": preprocessing,
        "signatures": {
            SERVING_SIGNATURE: {"method": PREDICT_METHOD, "inputs": image,
                                "outputs": {PROBABILITIES_OUTPUT: "float32 [N, K]"}},
            PREDICT_LABEL_SIGNATURE: {"method": PREDICT_METHOD, "inputs": image,
                                      "outputs": {LABEL_OUTPUT: "string [N]", SCORE_OUTPUT: "float32 [N]",
                                                  PROBABILITIES_OUTPUT: "float32 [N, K]"}},
            CLASSIFY_SIGNATURE: {"method": CLASSIFY_METHOD, "inputs": {CLASSIFY_INPUT: "string [N] (tf.Example)"},
                                 "outputs": {CLASSES_OUTPUT: "string [N, K]", SCORES_OUTPUT: "float32 [N, K]"}},
        },
    }


def write_model_metadata(export_dir: str | os.PathLike, labels: Sequence[str], image_size: tuple[int, int],
                         preprocessing: str = PREPROCESS_SCAN) -> Path:
    """Write assets.extra/signflow_model.json (contract.MODEL_METADATA_FILE)."""
    path = Path(export_dir) / MODEL_METADATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = model_metadata(labels, image_size, preprocessing)
    write_atomic(path, json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")
    return path


def read_model_metadata(version_dir: str | os.PathLike) -> dict:
    """The JSON write_model_metadata wrote (OSError / ValueError when absent or unreadable)."""
    return json.loads((Path(version_dir) / MODEL_METADATA_FILE).read_text(encoding="utf-8"))


def write_warmup_requests(export_dir: str | os.PathLike, images: Sequence[bytes]) -> Path:
    """Write TF Serving's warmup file: one predict request per image on serving_default, then the first image on
    predict_label (so both image signatures are traced before the first request)."""
    path = Path(export_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    requests = [(SERVING_SIGNATURE, image) for image in images]
    if images:
        requests.append((PREDICT_LABEL_SIGNATURE, images[0]))
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature_name, image in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name=signature_name),
            )
            request.inputs[IMAGE_INPUT].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path
