"""The Beam ModelHandler RunInference calls: a SavedModel's serving signature on each batch it forms.

Layer: batch. May import Beam, TensorFlow and signature.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import tensorflow as tf
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipeline.batch.signature import LoadedSignature, Scores, call_signature

# Shared with RunInference's own metrics (model load and batch latencies), which job.py reads back.
METRICS_NAMESPACE = "signflow.batch_predict"


@dataclass(frozen=True)
class InferenceFailure:
    """An image the model's graph refused (the rest of its batch was scored without it)."""

    message: str


class ServingSignatureHandler(ModelHandler[bytes, PredictionResult, LoadedSignature]):
    """Calls a SavedModel's `predict_label(image_bytes: string[N])` on each batch RunInference forms.

    Neither library handler fits this export: tfx_bsl's predict handler fails on
    a rank-1 string output (`label`: it calls `.dtype` on a Python `bytes`), and
    Beam's TF handlers load through Keras and call `model(batch)` rather than a
    signature (and importing them needs tensorflow_hub's estimator module, gone
    in TF 2.16).
    """

    def __init__(self, version_dir: str, batch_size: int):
        super().__init__()
        self._version_dir = version_dir
        self._batch_size = batch_size

    def load_model(self) -> LoadedSignature:
        # Once per worker process: RunInference shares what this returns between the
        # worker's threads and bundles.
        return LoadedSignature(self._version_dir)

    def run_inference(
        self, batch: Sequence[bytes], model: LoadedSignature, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        try:
            scores: list[Scores | InferenceFailure] = list(call_signature(model, batch))
        except tf.errors.InvalidArgumentError:
            # One image the graph cannot decode fails its whole batch (see
            # components/trainer/export.py); score the images one by one so
            # only that image becomes an error line.
            scores = []
            for image in batch:
                try:
                    scores.extend(call_signature(model, [image]))
                except tf.errors.InvalidArgumentError as err:
                    scores.append(InferenceFailure(_op_error_text(err)))
        return [PredictionResult(image, result) for image, result in zip(batch, scores)]

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(image) for image in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def batch_elements_kwargs(self) -> dict[str, Any]:
        # Fixed-size batches (the last of a bundle may be smaller): the figure
        # given on the command line is the batch the model sees.
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}


def _op_error_text(err: Exception) -> str:
    """The op's own message from a TF error, without the "Graph execution error" frame around it."""
    lines = [line.strip() for line in str(getattr(err, "message", err)).splitlines() if line.strip()]
    frame = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")
    useful = [line for line in lines if not line.startswith(frame)]
    return useful[-1] if useful else (lines[0] if lines else type(err).__name__)
