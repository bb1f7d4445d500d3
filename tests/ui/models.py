"""Model folders for the page's tests: models with and without `verify`, push records, a status.

signflow's exported model has no `verify` signature yet. `build_model` exports a
small tf.Module with the signatures the page uses: serving_default and
predict_label (image_bytes in; probabilities, label, score out, as
components/trainer/export.py writes them), classify (TF Serving's classes and
scores, for `signflow ui --api`), and with `verify=True` a verify signature as
the page expects it (inputs image_bytes and claimed_signer; outputs score,
genuine and threshold). It writes assets/labels.txt and
assets.extra/signflow_model.json too, and saves in about a second; the real
export (tests/fixtures/tiny_model.py) takes far longer to build.

Its answer is known without running it: the image is cut into as many vertical
strips as there are labels, and the strip with the most ink names the signer.
`strip_image(k)` draws in strip k only.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import tensorflow as tf
from PIL import Image, ImageDraw

from serving.contract import MODEL_METADATA_FILE, UNKNOWN_LABEL
from serving.layout import LABELS_FILE, push_record_path
from tests.fixtures.tiny_model import encode_image
from tests.serving.toy_models import CLASSIFY_METHOD, _set_methods

LABELS = ("ada_lovelace", "alan_turing", "grace_hopper", "john_backus", "margaret_hamilton", "tim_berners_lee")
VERIFY_THRESHOLD = 0.5
OPEN_SET_CUT = 0.5
"""With open_set, predict_label answers UNKNOWN_LABEL under this top probability (ink spread over several strips)."""


class _StripModel(tf.Module):
    def __init__(self, labels, open_set: bool = False):
        super().__init__()
        self._labels = tf.constant(list(labels))
        self._count = len(labels)
        self._open_set = open_set

    def _probabilities(self, image_bytes):
        count = self._count

        def ink_per_strip(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            ink = 1.0 - tf.reduce_mean(tf.image.convert_image_dtype(image, tf.float32), axis=2, keepdims=True)
            ink = tf.image.resize(ink, [16, 16 * count], method="area")
            return tf.reduce_mean(tf.reshape(ink, [16, count, 16]), axis=[0, 2])

        ink = tf.map_fn(ink_per_strip, image_bytes, fn_output_signature=tf.TensorSpec([count], tf.float32))
        return tf.nn.softmax(25.0 * ink)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_default(self, image_bytes):
        return {"probabilities": self._probabilities(image_bytes)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def predict_label(self, image_bytes):
        probabilities = self._probabilities(image_bytes)
        label = tf.gather(self._labels, tf.argmax(probabilities, axis=1))
        score = tf.reduce_max(probabilities, axis=1)
        if self._open_set:  # the export's answer shape for no enrolled signer, its score standing in for a similarity
            label = tf.where(score < OPEN_SET_CUT, tf.constant(UNKNOWN_LABEL), label)
        return {"label": label, "score": score, "probabilities": probabilities}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        image = tf.io.parse_example(inputs, {"image": tf.io.FixedLenFeature([], tf.string)})["image"]
        scores = self._probabilities(image)
        return {"classes": tf.tile(self._labels[None, :], [tf.shape(scores)[0], 1]), "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes"),
                                  tf.TensorSpec([None], tf.string, name="claimed_signer")])
    def verify(self, image_bytes, claimed_signer):
        probabilities = self._probabilities(image_bytes)
        matches = tf.equal(claimed_signer[:, None], self._labels[None, :])
        score = tf.reduce_sum(probabilities * tf.cast(matches, tf.float32), axis=1)
        return {"score": score, "genuine": score >= VERIFY_THRESHOLD,
                "threshold": tf.fill(tf.shape(score), VERIFY_THRESHOLD)}


def build_model(path: Path, labels=LABELS, verify: bool = False, open_set: bool = False) -> Path:
    """A version folder (a SavedModel with labels.txt and signflow_model.json); `verify` adds that signature,
    `open_set` an "unknown" answer from predict_label (see OPEN_SET_CUT)."""
    module = _StripModel(labels, open_set)
    signatures = {"serving_default": module.serving_default, "predict_label": module.predict_label,
                  "classify": module.classify}
    if verify:
        signatures["verify"] = module.verify
    tf.saved_model.save(module, str(path), signatures=signatures)
    _set_methods(path, {"classify": CLASSIFY_METHOD})
    (path / LABELS_FILE).parent.mkdir(parents=True, exist_ok=True)
    (path / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels))
    metadata = path / MODEL_METADATA_FILE
    metadata.parent.mkdir(parents=True, exist_ok=True)
    metadata.write_text(json.dumps({"labels": list(labels), "signatures": {name: {} for name in signatures}}))
    return path


def strip_image(strip: int, count: int = len(LABELS), fmt: str = "PNG", size=(600, 200)) -> bytes:
    """A white image with pen strokes in vertical strip `strip` of `count`: the model names labels[strip]."""
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    width, height = size
    left, right = width * strip / count, width * (strip + 1) / count
    points = [(left + (right - left) * (0.1 + 0.8 * i / 7), height * (0.3 if i % 2 else 0.7)) for i in range(8)]
    draw.line(points, fill=(20, 20, 30), width=6)
    return encode_image(image, fmt)


def two_strip_image() -> bytes:
    """The same strokes in the first two strips: no strip dominates (an open-set model answers UNKNOWN_LABEL)."""
    image = Image.new("RGB", (600, 200), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for left in (0, 100):
        draw.line([(left + 10 + 11 * i, 60 if i % 2 else 140) for i in range(8)], fill=(20, 20, 30), width=6)
    return encode_image(image, "PNG")


def write_push_record(base: Path, version: int, run_id: str, accuracy: float, labels=LABELS,
                      lineage: bool = True) -> None:
    """A push record as components.pusher.records writes it (the fields the dashboard reads); with `lineage`,
    the spans and record counts trained on and the per-signer figures (9 eval examples a signer)."""
    record = {
        "version": version, "model_name": base.name, "model_uri": f"/pipeline_root/Trainer/model/{version}",
        "state": "live", "pipeline_run_id": run_id, "pushed_at": time.time() - 3600,
        "eval_metrics": {"sparse_categorical_accuracy": accuracy, "example_count": 54.0},
    }
    if lineage:
        correct = {label: 9 - (index * 7) % 5 for index, label in enumerate(labels)}
        record.update({
            "spans": [3, 4],
            "record_counts": {"records_read": 330, "examples": 324, "quarantined": 2, "duplicates": 4,
                              "train split": 270, "eval split": 54},
            "per_signer": {label: {"accuracy": n / 9, "correct": n, "total": 9} for label, n in correct.items()},
        })
    path = push_record_path(base, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True))


def write_training_status(path: Path, pushed_version: int | None = None) -> Path:
    """A training scheduler status file as pipeline/training_server/schedule.py writes it."""
    now = time.time()
    path.write_text(json.dumps({
        "scheduler": {"pid": 1, "interval_seconds": 21600, "min_new_records": 100},
        "state": "idle", "current_cycle": None,
        "last_cycle": {"started_at": now - 1800, "finished_at": now - 1500, "result": "pushed", "trigger": "interval",
                       "run_id": "2026-12-02T10:00:00", "pushed_version": pushed_version, "not_blessed_reasons": [],
                       "ingest": {"span": 5, "records_read": 120, "examples": 117, "duplicates": 3}},
        "next_due_at": now + 19800, "records_waiting": 12, "files_waiting": 2, "updated_at": now}))
    return path
