"""The Beam steps of a batch prediction: input files -> records -> RunInference -> prediction and error lines.

Layer: batch. May import Beam, components.ingest.records (records are read
exactly as ingestion reads them), serving.images, model_handler and lines.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from components.ingest.records import Accepted, LandedFile, read_landed_file
from pipeline.batch.lines import INFERENCE_FAILED, RecordKey, error_line, prediction_line
from pipeline.batch.model_handler import METRICS_NAMESPACE, InferenceFailure, ServingSignatureHandler
from serving.images import DEFAULT_MAX_PIXELS

_ERRORS_TAG = "errors"
_REJECTED_TAG = "rejected"

_RECORDS_READ = Metrics.counter(METRICS_NAMESPACE, "records_read")
_PREDICTED = Metrics.counter(METRICS_NAMESPACE, "predicted")
_ERRORS = Metrics.counter(METRICS_NAMESPACE, "errors")


def _read(landed: LandedFile, label_keys: Sequence[str], max_pixels: int) -> Iterator[Any]:
    """The records of one input file: accepted ones keyed for RunInference, refused ones tagged."""
    # A label here is the answer expected, which may be the open set's "unknown" for a stranger.
    for outcome in read_landed_file(landed, label_keys=label_keys, max_pixels=max_pixels, labels_name_classes=False):
        _RECORDS_READ.inc()
        if isinstance(outcome, Accepted):
            yield RecordKey(outcome.source, outcome.info.sha256, outcome.label), outcome.image
        else:
            yield beam.pvalue.TaggedOutput(_REJECTED_TAG, _error(outcome.source, outcome.reason, outcome.message))


def _error(source: str, reason: str, message: str) -> str:
    _ERRORS.inc()
    # Per-reason counters are named at run time: the reasons are open-ended (serving.images adds its own).
    Metrics.counter(METRICS_NAMESPACE, f"errors.{reason}").inc()
    return error_line(source, reason, message)


def _format(
    item: tuple[RecordKey, PredictionResult], labels: Sequence[str], version: int, top_k: int
) -> Iterator[Any]:
    """One prediction line, or (for an image the graph refused) one error line."""
    key, result = item
    scores = result.inference
    if isinstance(scores, InferenceFailure):
        yield beam.pvalue.TaggedOutput(_ERRORS_TAG, _error(key.source, INFERENCE_FAILED, scores.message))
        return
    line = prediction_line(key, scores, labels, version, top_k)
    _PREDICTED.inc()
    yield line


@beam.ptransform_fn
def BatchPredict(  # noqa: N802 - Beam's naming for PTransforms
    pipeline: beam.Pipeline,
    files: Sequence[LandedFile],
    handler: ServingSignatureHandler,
    labels: Sequence[str],
    version: int,
    top_k: int,
    label_keys: Sequence[str] = ("label",),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[beam.PCollection, beam.PCollection]:
    """Input files -> (prediction lines, error lines), JSON text."""
    read = (
        pipeline
        | "InputFiles" >> beam.Create(list(files))
        # Lets a distributed runner read different files on different workers.
        | "SpreadFiles" >> beam.Reshuffle()
        | "ReadRecords"
        >> beam.FlatMap(_read, label_keys=tuple(label_keys), max_pixels=max_pixels).with_outputs(
            _REJECTED_TAG, main="accepted"
        )
    )
    formatted = (
        read.accepted
        | "RunInference" >> RunInference(KeyedModelHandler(handler))
        | "Format" >> beam.FlatMap(_format, labels=list(labels), version=version, top_k=top_k).with_outputs(
            _ERRORS_TAG, main="predictions"
        )
    )
    errors = (read[_REJECTED_TAG], formatted[_ERRORS_TAG]) | "AllErrors" >> beam.Flatten()
    return formatted.predictions, errors
