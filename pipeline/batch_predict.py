"""`signflow batch-predict`: score every image in folders, files or globs with one served model version, in Beam.

    signflow batch-predict --model serving_model/xception --input data/inbox --output out/predictions.jsonl
    signflow batch-predict ... --version 3 --batch-size 16 --top-k 5 -- --runner=DataflowRunner --project=...

Inputs are read exactly as ingestion reads them (components.ingest.records):
JSON Lines, TF Serving row/columnar `.json` bodies, `examples` lists, image
files, and <label>/<image> folders (a folder is walked like the inbox). The
model is the newest version folder under --model (TF Serving's rule, via
serving.layout) or --version, and is called through its `serving_default`
signature, so a batch prediction is what the server would have answered.

Outputs, one JSON object per line; every record read lands in exactly one:

    --output   {"source", "sha256", "label", "score", "top_k": [{"label", "score"}],
                "model_version", "input_label"}
    --errors   {"source", "reason", "message"}   (default: <output>.errors.jsonl)

Both are written inside hidden `.<name>.<run>.partial/` folders beside them and
renamed into place after the pipeline succeeds, the errors file first and the
predictions file last: a file under the final name is always complete, and a
failed run leaves the previous result as it was. Lines are not in input order
(Beam keeps none); `source` ("file:line", or the file for an image) is unique
and is the join key.

Exit status: 0 when the pipeline ran, however many records were refused; 1 for
an infrastructure failure (model folder, version, labels file, output folder,
or the pipeline itself); 2 for a bad command line or an input that names nothing.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

# Before anything imports TensorFlow (see pipeline/__init__.py).
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.metrics.metric import Metrics, MetricsFilter  # noqa: E402
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.runners.runner import PipelineState  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402

# NOTE: the inbox walker itself (skipped names, <label>/<image> folder labels):
# reusing it keeps "a folder is read like the inbox" true.
from components.ingest.landing import walk_folder  # noqa: E402
from components.ingest.records import Accepted, LandedFile, Rejected, read_landed_file  # noqa: E402
from serving import layout  # noqa: E402
from serving.images import DEFAULT_MAX_PIXELS  # noqa: E402

log = logging.getLogger(__name__)

SERVING_SIGNATURE = "serving_default"
IMAGE_INPUT = "image_bytes"
DEFAULT_BATCH_SIZE = 32
DEFAULT_TOP_K = 3
ERRORS_SUFFIX = ".errors.jsonl"
# Reason code of an image that passed the checks of serving.images but that the
# model's graph could not decode (tf.io.decode_image is stricter than Pillow, e.g. 1-bit BMPs).
INFERENCE_FAILED = "inference_failed"
METRICS_NAMESPACE = "signflow.batch_predict"
_ERRORS_TAG = "errors"
_REJECTED_TAG = "rejected"
_GLOB_CHARS = ("*", "?", "[")

_RECORDS_READ = Metrics.counter(METRICS_NAMESPACE, "records_read")
_PREDICTED = Metrics.counter(METRICS_NAMESPACE, "predicted")
_ERRORS = Metrics.counter(METRICS_NAMESPACE, "errors")


class BatchPredictError(Exception):
    """A failure before or around the pipeline, with the exit status it stands for."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


# -- what travels through the pipeline ----------------------------------------------------------


@dataclass(frozen=True)
class RecordKey:
    """What a prediction line needs about its record; RunInference carries it next to the image."""

    source: str
    sha256: str
    input_label: str | None


@dataclass(frozen=True)
class Scores:
    """The serving_default outputs for one image."""

    label: str
    score: float
    probabilities: np.ndarray  # [K] float32, in labels.txt order


@dataclass(frozen=True)
class InferenceFailure:
    """An image the model's graph refused (the rest of its batch was scored without it)."""

    message: str


class ServingSignatureHandler(ModelHandler[bytes, PredictionResult, Any]):
    """Calls a SavedModel's `serving_default(image_bytes: string[N])` on each batch RunInference forms.

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

    def load_model(self) -> Any:
        # The loaded object is what RunInference keeps: its signatures only hold
        # weak references to the variables it owns.
        return tf.saved_model.load(self._version_dir)

    def run_inference(
        self, batch: Sequence[bytes], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        signature = model.signatures[SERVING_SIGNATURE]
        try:
            scores: list[Scores | InferenceFailure] = list(_call_signature(signature, batch))
        except tf.errors.InvalidArgumentError:
            # One image the graph cannot decode fails its whole batch (see
            # components/trainer/export.py); score the images one by one so
            # only that image becomes an error line.
            scores = []
            for image in batch:
                try:
                    scores.extend(_call_signature(signature, [image]))
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


def _call_signature(signature: Any, images: Sequence[bytes]) -> Iterator[Scores]:
    outputs = signature(**{IMAGE_INPUT: tf.constant(list(images), dtype=tf.string)})
    labels = outputs["label"].numpy()
    score = outputs["score"].numpy()
    probabilities = outputs["probabilities"].numpy()
    if not (len(labels) == len(score) == len(probabilities) == len(images)):
        raise ValueError(f"{SERVING_SIGNATURE} answered {len(labels)} rows for {len(images)} images")
    for i in range(len(images)):
        yield Scores(labels[i].decode("utf-8"), float(score[i]), probabilities[i])


# -- the Beam steps -------------------------------------------------------------------------------
# Lines are ASCII JSON (json.dumps' default): a file name that is not valid
# UTF-8 reaches Python as lone surrogates, which would fail the UTF-8 write of
# the whole output; escaped, it is still the same string once parsed.


def _read(landed: LandedFile, label_keys: Sequence[str], max_pixels: int) -> Iterator[Any]:
    """The records of one input file: accepted ones keyed for RunInference, refused ones tagged."""
    for outcome in read_landed_file(landed, label_keys=label_keys, max_pixels=max_pixels):
        _RECORDS_READ.inc()
        if isinstance(outcome, Accepted):
            yield RecordKey(outcome.source, outcome.info.sha256, outcome.label), outcome.image
        else:
            yield beam.pvalue.TaggedOutput(_REJECTED_TAG, _rejected_line(outcome))


def _rejected_line(rejected: Rejected) -> str:
    return _error_line(rejected.source, rejected.reason, rejected.message)


def _error_line(source: str, reason: str, message: str) -> str:
    _ERRORS.inc()
    # Per-reason counters are named at run time: the reasons are open-ended (serving.images adds its own).
    Metrics.counter(METRICS_NAMESPACE, f"errors.{reason}").inc()
    return json.dumps({"source": source, "reason": reason, "message": message})


def _format(
    item: tuple[RecordKey, PredictionResult], labels: Sequence[str], version: int, top_k: int
) -> Iterator[Any]:
    """One prediction line, or (for an image the graph refused) one error line."""
    key, result = item
    scores = result.inference
    if isinstance(scores, InferenceFailure):
        yield beam.pvalue.TaggedOutput(_ERRORS_TAG, _error_line(key.source, INFERENCE_FAILED, scores.message))
        return
    if len(scores.probabilities) != len(labels):
        # A labels file out of step with the model (the launcher checks this only
        # when the signature states its class count): every top-k would be wrong, so stop.
        raise ValueError(
            f"the model outputs {len(scores.probabilities)} probabilities but assets/labels.txt has {len(labels)} labels"
        )
    # Stable sort on the score: ties keep labels.txt order, as argmax does for `label`.
    ranked = sorted(range(len(labels)), key=lambda i: -scores.probabilities[i])[:top_k]
    _PREDICTED.inc()
    yield json.dumps(
        {
            "source": key.source,
            "sha256": key.sha256,
            "label": scores.label,
            "score": scores.score,
            "top_k": [{"label": labels[i], "score": float(scores.probabilities[i])} for i in ranked],
            "model_version": version,
            "input_label": key.input_label,
        }
    )


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


# -- the launcher: model, inputs, outputs ---------------------------------------------------------


@dataclass(frozen=True)
class ModelVersion:
    base: Path
    version: int
    path: Path
    labels: tuple[str, ...]


def resolve_model(model_base_path: str | os.PathLike, version: int | None) -> ModelVersion:
    """The version folder to use (the newest unless `version`) and its labels, or BatchPredictError."""
    base = Path(model_base_path)
    if not base.is_dir():
        raise BatchPredictError(f"model folder {base} does not exist")
    versions = layout.list_versions(base)
    if not versions:
        raise BatchPredictError(
            f"no version folder under {base} (versions are folders named by an integer, e.g. {base}/1)"
        )
    chosen = versions[-1] if version is None else version
    if chosen not in versions:
        raise BatchPredictError(f"no version {chosen} under {base}; versions present: {', '.join(map(str, versions))}")
    path = layout.version_path(base, chosen)
    if not (path / layout.SAVED_MODEL_FILE).is_file():
        raise BatchPredictError(f"{path} has no {layout.SAVED_MODEL_FILE}")
    try:
        text = (path / layout.LABELS_FILE).read_text(encoding="utf-8")
    except OSError as err:
        raise BatchPredictError(f"cannot read the model's labels ({path / layout.LABELS_FILE}): {err}") from None
    labels = tuple(line for line in text.split("\n") if line)
    if not labels:
        raise BatchPredictError(f"{path / layout.LABELS_FILE} lists no labels")
    _check_signature(path, len(labels))
    return ModelVersion(base, chosen, path, labels)


def _check_signature(path: Path, num_labels: int) -> None:
    """Refuse, before any worker starts, a version folder whose serving_default is not the export contract."""
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString((path / layout.SAVED_MODEL_FILE).read_bytes())
    except (OSError, ValueError) as err:  # protobuf's DecodeError is a ValueError
        raise BatchPredictError(f"cannot read {path / layout.SAVED_MODEL_FILE}: {err}") from None
    signature = next(
        (g.signature_def[SERVING_SIGNATURE] for g in saved_model.meta_graphs if SERVING_SIGNATURE in g.signature_def),
        None,
    )
    if signature is None:
        raise BatchPredictError(f"{path} has no {SERVING_SIGNATURE} signature")
    image_input = signature.inputs.get(IMAGE_INPUT)
    if image_input is None or image_input.dtype != tf.string.as_datatype_enum:
        raise BatchPredictError(f"{path}: {SERVING_SIGNATURE} does not take {IMAGE_INPUT}: string[batch]")
    missing = {"probabilities", "label", "score"} - set(signature.outputs)
    if missing:
        raise BatchPredictError(f"{path}: {SERVING_SIGNATURE} lacks the outputs {', '.join(sorted(missing))}")
    dims = signature.outputs["probabilities"].tensor_shape.dim
    if dims and dims[-1].size not in (-1, num_labels):
        raise BatchPredictError(
            f"{path}: the model outputs {dims[-1].size} probabilities but {layout.LABELS_FILE} has {num_labels} labels"
        )


def expand_inputs(inputs: Sequence[str]) -> list[LandedFile]:
    """The files named by folders (walked like the inbox), files and globs, in order, each once.

    A record's source is the file's path as the input named it (a folder's files
    as <folder>/<relative path>), plus ":<n>" for records inside a file. Only
    images inside a walked folder's subfolders get a folder label; glob matches
    and named files get none.
    """
    found: list[tuple[str, str, str | None]] = []  # (absolute path, name, folder label)
    for given in inputs:
        if any(ch in given for ch in _GLOB_CHARS):
            matches = sorted(glob.glob(given, recursive=True))
            if not matches:
                raise BatchPredictError(f"--input {given}: the pattern matches no file", status=2)
        elif os.path.isdir(given) or os.path.lexists(given):
            matches = [given]
        else:
            raise BatchPredictError(f"--input {given}: no such file or folder", status=2)
        for match in matches:
            if os.path.isdir(match):
                prefix = os.path.normpath(match)
                found.extend((c.origin, c.landed, c.folder_label) for c in walk_folder(match, prefix))
            else:
                found.append((os.path.abspath(match), os.path.normpath(match), None))
    files: list[LandedFile] = []
    seen: set[str] = set()
    for origin, name, label in found:
        if origin in seen:  # named twice (overlapping inputs): read once
            continue
        seen.add(origin)
        files.append(LandedFile(path=origin, name=name, order=len(files), folder_label=label))
    return files


def _staging_folder(final: str, run_id: str) -> str:
    """A per-run folder beside `final` that holds its partial copy and WriteToText's own temporary files.

    Hidden and ending in .partial: not mistaken for a result, and skipped by the
    inbox walker should the output folder also be an input. Beside the final
    file, so moving the result into place is a rename within one file system.
    """
    folder, name = FileSystems.split(final)
    return FileSystems.join(folder, f".{name}.{run_id}.partial")


def _check_output(path: str) -> None:
    """Create the output's folder and check it is writable (local paths; remote ones fail in the pipeline)."""
    if "://" in path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise BatchPredictError(f"cannot create the output folder for {path}: {err}") from None
    if os.path.isdir(path):
        raise BatchPredictError(f"output {path} is a folder")
    if not os.access(folder, os.W_OK):
        raise BatchPredictError(f"output folder {folder} is not writable")


def _metrics(result: Any) -> tuple[dict[str, int], dict[str, Any]]:
    """(counters, distributions) of this command's namespace, which RunInference's own metrics share."""
    found = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))

    def value(metric: Any) -> Any:
        return metric.committed if metric.committed is not None else metric.attempted

    counters: dict[str, int] = {}
    for counter in found["counters"]:
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + int(value(counter) or 0)
    distributions = {d.key.metric.name: value(d) for d in found["distributions"] if value(d) is not None}
    return counters, distributions


@dataclass(frozen=True)
class Summary:
    read: int
    predicted: int
    errors: int
    errors_by_reason: dict[str, int]
    # From RunInference's metrics: what the model cost inside the run.
    model_load_s: float
    model_calls: int
    model_call_s: float


def run(
    model: ModelVersion,
    files: Sequence[LandedFile],
    output: str,
    errors_output: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    top_k: int = DEFAULT_TOP_K,
    label_keys: Sequence[str] = ("label",),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    beam_args: Sequence[str] = (),
) -> Summary:
    """Run the pipeline and move both outputs into place; BatchPredictError if it fails."""
    run_id = uuid.uuid4().hex[:12]
    staged = {final: _staging_folder(final, run_id) for final in (errors_output, output)}
    partial = {final: FileSystems.join(folder, FileSystems.split(final)[1]) for final, folder in staged.items()}
    try:
        pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args)))
        predictions, errors = pipeline | "BatchPredict" >> BatchPredict(
            files,
            ServingSignatureHandler(str(model.path), batch_size),
            model.labels,
            model.version,
            top_k,
            label_keys=label_keys,
            max_pixels=max_pixels,
        )
        for name, lines, final in (("Predictions", predictions, output), ("Errors", errors, errors_output)):
            _ = lines | f"Write{name}" >> beam.io.WriteToText(partial[final], num_shards=1, shard_name_template="")
        result = pipeline.run()
        state = result.wait_until_finish()
        if state != PipelineState.DONE:
            raise BatchPredictError(f"the pipeline ended in state {state}")
        counts, distributions = _metrics(result)
        # Errors first, predictions last: the predictions file appearing is the sign that both are whole.
        FileSystems.rename([partial[errors_output], partial[output]], [errors_output, output])
    except BatchPredictError:
        raise
    except Exception as err:  # noqa: BLE001 - any pipeline failure is reported as one, with its cause
        raise BatchPredictError(f"the pipeline failed: {type(err).__name__}: {err}") from err
    finally:
        _remove_quietly(list(staged.values()))
    by_reason = {
        name.split(".", 1)[1]: value for name, value in sorted(counts.items()) if name.startswith("errors.")
    }
    load = distributions.get("load_model_latency_milli_secs")
    calls = distributions.get("inference_batch_latency_micro_secs")
    return Summary(
        read=counts.get("records_read", 0),
        predicted=counts.get("predicted", 0),
        errors=counts.get("errors", 0),
        errors_by_reason=by_reason,
        model_load_s=load.sum / 1e3 if load else 0.0,
        model_calls=calls.count if calls else 0,
        model_call_s=calls.sum / 1e6 if calls else 0.0,
    )


def _remove_quietly(folders: Sequence[str]) -> None:
    """Delete staging folders: empty after a success, partial files and WriteToText's temp folders after a failure."""
    for folder in folders:
        # A local folder is removed with everything in it; an object store has
        # no folders, only objects under a prefix, which "**" matches at any depth.
        local = FileSystems.get_scheme(folder) in (None, "file")
        try:
            FileSystems.delete([folder if local else FileSystems.join(folder, "**")])
        except Exception as err:  # noqa: BLE001 - cleanup must not hide the result or the failure being reported
            if FileSystems.exists(folder):
                log.warning("could not remove the staging folder %s: %s", folder, err)


# -- `signflow batch-predict` ---------------------------------------------------------------------


def _default_model() -> str:
    from pipeline.configs import PipelineConfig

    return str(PipelineConfig().model_base_path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `signflow batch-predict` options; Beam's own options follow `--` or come as --beam-arg."""
    default_model = _default_model()
    parser.add_argument("--model", default=default_model,
                        help=f"model folder holding version folders (default: {default_model})")
    parser.add_argument("--version", type=int, help="version folder to use (default: the newest, as TF Serving serves)")
    parser.add_argument("--input", action="append", required=True, metavar="DIR_OR_GLOB",
                        help="a folder (walked like the inbox), a file, or a glob (quote it); repeatable")
    parser.add_argument("--output", required=True, metavar="OUT.jsonl", help="prediction lines")
    parser.add_argument("--errors", metavar="OUT.errors.jsonl",
                        help=f"refused records (default: the output with {ERRORS_SUFFIX})")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help="images per model call (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, metavar="K",
                        help="ranked labels per prediction (default: %(default)s)")
    parser.add_argument("--label-key", dest="label_keys", action="append",
                        help="record key holding a record's own label; repeatable, first present wins (default: label)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="largest image accepted (default: %(default)s)")
    parser.add_argument("--beam-arg", dest="beam_arg", action="append", default=[], metavar="ARG",
                        help="a Beam pipeline option, e.g. --beam-arg=--runner=DataflowRunner; repeatable")
    parser.add_argument("beam_args", nargs=argparse.REMAINDER,
                        help="after `--`: Beam pipeline options (DirectRunner when none)")


def default_errors_path(output: str) -> str:
    """Where refused records go when --errors is not given: OUT.jsonl -> OUT.errors.jsonl."""
    stem = output[: -len(".jsonl")] if output.endswith(".jsonl") else output
    return stem + ERRORS_SUFFIX


def main(args: argparse.Namespace) -> int:
    """Run `signflow batch-predict`: 0 when the pipeline ran, 1 on an infrastructure failure, 2 for bad usage."""
    if args.batch_size < 1:
        print("error: --batch-size must be 1 or more", file=sys.stderr)
        return 2
    if args.top_k < 0:
        print("error: --top-k must be 0 or more", file=sys.stderr)
        return 2
    beam_args = list(args.beam_arg) + [a for a in (args.beam_args or []) if a != "--"]
    errors_output = args.errors or default_errors_path(args.output)
    try:
        if os.path.abspath(errors_output) == os.path.abspath(args.output):
            raise BatchPredictError("--errors must differ from --output", status=2)
        model = resolve_model(args.model, args.version)
        files = expand_inputs(args.input)
        _check_output(args.output)
        _check_output(errors_output)
        print(f"model {model.base} version {model.version}; {len(files)} input files", flush=True)
        summary = run(
            model,
            files,
            args.output,
            errors_output,
            batch_size=args.batch_size,
            top_k=args.top_k,
            label_keys=tuple(args.label_keys or ("label",)),
            max_pixels=args.max_pixels,
            beam_args=beam_args,
        )
    except BatchPredictError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.status
    print(f"read {summary.read} records: {summary.predicted} predicted, {summary.errors} errors")
    for reason, count in summary.errors_by_reason.items():
        print(f"  {reason}: {count}")
    print(f"model: loaded in {summary.model_load_s:.1f} s; {summary.model_calls} batches in {summary.model_call_s:.1f} s")
    print(f"predictions: {args.output}\nerrors: {errors_output}")
    if summary.read != summary.predicted + summary.errors:
        # Every record ends as one line of either file; a gap means lines were lost.
        print(f"error: {summary.read - summary.predicted - summary.errors} records are in neither output",
              file=sys.stderr)
        return 1
    return 0
