"""The serving signature batch prediction calls: its contract, checked on disk before any worker starts, and the
call itself on a batch of images.

`predict_label(image_bytes: string[N]) -> {label: string[N], score: float[N],
probabilities: float[N, K]}`, K the lines of assets/labels.txt; the export
(components/trainer/export.py) writes it and the model server serves it, so a
batch prediction is what the server would have answered (predict_label's
probabilities are serving_default's: the same graph).

Layer: batch. May import TensorFlow, serving.contract (the names), serving.layout and errors.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from pipeline.batch.errors import BatchPredictError
from serving import contract, layout
from serving.contract import IMAGE_INPUT, LABEL_OUTPUT, PREDICT_LABEL_SIGNATURE, PROBABILITIES_OUTPUT, SCORE_OUTPUT

SIGNATURE = PREDICT_LABEL_SIGNATURE
"""The signature batch prediction calls."""
OUTPUTS = (LABEL_OUTPUT, SCORE_OUTPUT, PROBABILITIES_OUTPUT)


@dataclass(frozen=True)
class Scores:
    """The predict_label outputs for one image."""

    label: str
    score: float
    probabilities: np.ndarray  # [K] float32, in labels.txt order


def check_signature(path: Path, num_labels: int) -> None:
    """Refuse a version folder whose predict_label is not the contract above (BatchPredictError)."""
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString((path / layout.SAVED_MODEL_FILE).read_bytes())
    except (OSError, ValueError) as err:  # protobuf's DecodeError is a ValueError
        raise BatchPredictError(f"cannot read {path / layout.SAVED_MODEL_FILE}: {err}") from None
    signature = next(
        (g.signature_def[SIGNATURE] for g in saved_model.meta_graphs if SIGNATURE in g.signature_def),
        None,
    )
    if signature is None:
        raise BatchPredictError(
            f"{path} has no {SIGNATURE} signature (a model exported before it existed: export it again)")
    image_input = signature.inputs.get(IMAGE_INPUT)
    if image_input is None or image_input.dtype != tf.string.as_datatype_enum:
        raise BatchPredictError(f"{path}: {SIGNATURE} does not take {IMAGE_INPUT}: string[batch]")
    missing = set(OUTPUTS) - set(signature.outputs)
    if missing:
        raise BatchPredictError(f"{path}: {SIGNATURE} lacks the outputs {', '.join(sorted(missing))}")
    dims = signature.outputs[PROBABILITIES_OUTPUT].tensor_shape.dim
    if dims and dims[-1].size not in (-1, num_labels):
        raise BatchPredictError(
            f"{path}: the model outputs {dims[-1].size} probabilities but {layout.LABELS_FILE} has {num_labels} labels"
        )


class LoadedSignature:
    """predict_label of one version folder, loaded as TF Serving loads a SavedModel: the `serve`
    MetaGraph into a Session (SavedModelBundle), the signature run by its tensor names.

    NOTE: not tf.saved_model.load: that also revives the Python object graph the Keras
    export carries (every layer's functions), which on the Trainer's Xception costs three
    times as long as the graph and variables themselves, and a slower first call; batch
    prediction pays both once per worker. The graph, weights and answers are the same.
    Session.run is thread-safe, so one instance serves every thread of a worker.
    """

    def __init__(self, version_dir: str):
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        with self._graph.as_default():
            meta_graph = tf.compat.v1.saved_model.load(self._session, [contract.SERVE_TAG], version_dir)
        signature = meta_graph.signature_def[SIGNATURE]
        self._run = self._session.make_callable(
            [signature.outputs[name].name for name in OUTPUTS], [signature.inputs[IMAGE_INPUT].name])

    def __call__(self, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """The outputs by name for one batch; tf.errors.InvalidArgumentError when an image does not decode."""
        return dict(zip(OUTPUTS, self._run(np.array(list(images), dtype=object))))

    def close(self) -> None:
        self._session.close()


def call_signature(signature: LoadedSignature, images: Sequence[bytes]) -> Iterator[Scores]:
    """predict_label on one batch: one Scores per image, in order."""
    outputs = signature(images)
    labels, score, probabilities = outputs[LABEL_OUTPUT], outputs[SCORE_OUTPUT], outputs[PROBABILITIES_OUTPUT]
    if not (len(labels) == len(score) == len(probabilities) == len(images)):
        raise ValueError(f"{SIGNATURE} answered {len(labels)} rows for {len(images)} images")
    for i in range(len(images)):
        yield Scores(labels[i].decode("utf-8"), float(score[i]), probabilities[i])
