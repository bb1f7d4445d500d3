"""Export a trained classifier as the SavedModel that TF Serving (and signflow's server) loads.

Layout written under `export_dir` (TF Serving's version folder contents):

    saved_model.pb, variables/
    assets/labels.txt                          one signer id per line, in `probabilities` order
    assets.extra/tf_serving_warmup_requests    TF Serving's warmup log (PredictionLog TFRecord)

Signatures (tf.functions: TF 2.16 has no Estimator export):

    serving_default  (tensorflow/serving/predict)
        image_bytes: string [N]  raw PNG/JPEG/GIF/BMP file bytes
        -> probabilities: float32 [N, K], label: string [N], score: float32 [N]
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

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model import fingerprinting_utils
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from components.trainer.preprocess import image_to_model_input
from serving.layout import LABELS_FILE, SAVED_MODEL_FILE, WARMUP_FILE

SERVING_SIGNATURE = "serving_default"
CLASSIFY_SIGNATURE = "classify"
IMAGE_INPUT = "image_bytes"
CLASSIFY_METHOD = "tensorflow/serving/classify"
# TF Serving replays at most 1000 warmup records; a handful makes the first request fast.
MAX_WARMUP_REQUESTS = 8


class _ServingModule(tf.Module):
    """What gets saved: the Keras model, its labels, and the two serving functions."""

    def __init__(self, model: tf.keras.Model, labels: Sequence[str], image_size: tuple[int, int], labels_file: str):
        super().__init__()
        self.model = model
        self.labels = tf.constant(list(labels), dtype=tf.string)
        # Tracked so SavedModel copies it into assets/ under its own name.
        self.labels_asset = tf.saved_model.Asset(labels_file)
        self._height, self._width = image_size

    def probabilities(self, image_bytes: tf.Tensor) -> tf.Tensor:
        inputs = tf.map_fn(
            lambda one: image_to_model_input(one, self._height, self._width),
            image_bytes,
            fn_output_signature=tf.TensorSpec([self._height, self._width, 3], tf.float32),
        )
        return self.model(inputs, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_INPUT)])
    def serve(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = self.probabilities(image_bytes)
        return {
            "probabilities": probabilities,
            "label": tf.gather(self.labels, tf.argmax(probabilities, axis=1)),
            "score": tf.reduce_max(probabilities, axis=1),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        features = tf.io.parse_example(
            inputs,
            {
                "image": tf.io.FixedLenFeature([], tf.string, default_value=""),
                "image_raw": tf.io.FixedLenFeature([], tf.string, default_value=""),
            },
        )
        images = tf.where(tf.strings.length(features["image"]) > 0, features["image"], features["image_raw"])
        scores = self.probabilities(images)
        classes = tf.tile(tf.expand_dims(self.labels, 0), [tf.shape(scores)[0], 1])
        return {"classes": classes, "scores": scores}


def export_serving_model(
    model: tf.keras.Model,
    labels: Sequence[str],
    image_size: tuple[int, int],
    export_dir: str | os.PathLike,
    warmup_images: Sequence[bytes] = (),
) -> Path:
    """Write the serving SavedModel for `model` (softmax over `labels`) into `export_dir`."""
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("cannot export a classifier with no labels")
    if any("\n" in label for label in labels):
        raise ValueError("labels may not contain newlines (labels.txt is one label per line)")
    export_dir = Path(export_dir)
    with tempfile.TemporaryDirectory() as scratch:
        labels_file = Path(scratch) / LABELS_FILE.name
        labels_file.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
        module = _ServingModule(model, labels, image_size, str(labels_file))
        tf.saved_model.save(
            module,
            str(export_dir),
            signatures={SERVING_SIGNATURE: module.serve, CLASSIFY_SIGNATURE: module.classify},
        )
    _mark_classify_signature(export_dir)
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


def write_warmup_requests(export_dir: str | os.PathLike, images: Sequence[bytes]) -> Path:
    """Write TF Serving's warmup file: one predict request per image on serving_default."""
    path = Path(export_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image in images:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name=SERVING_SIGNATURE),
            )
            request.inputs[IMAGE_INPUT].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path
