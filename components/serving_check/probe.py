"""The serving check's child process: load the candidate, send it real requests, judge the answers.

    python -m components.serving_check.probe REQUEST.json RESULT.json
    python -m components.serving_check.probe --wait    (files given on stdin later)

Runs apart from the pipeline so that a model which crashes, hangs or leaks on
load takes down only this process (the executor enforces the deadline), and so
that the model is loaded fresh, as a model server would. RESULT.json lists the
problems found; none means infra-blessed. The model, the eval files and the
Trainer's predictions are read through tf.io.gfile (components.storage),
so they may be on gs:// or s3://.
"""
from __future__ import annotations

# Run with -m by the serving check, which passes its own environment (TF_USE_LEGACY_KERAS included).
import base64
import concurrent.futures
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from components import storage, waiting_process
from components.serving_check import checks
from components.serving_check.backends import BackendError, ModelServerBackend, ObjectBackend, SessionBackend
from components.trainer.predictions import Prediction, read_eval_predictions
from serving.contract import MODEL_METADATA_FILE
from serving.images import InvalidImage
from serving.layout import LABELS_FILE, SAVED_MODEL_FILE, WARMUP_FILE

# TF Serving reads at most this many warmup records and fails the load past it.
MAX_WARMUP_RECORDS = 1000
# Images sent to serving_default and classify (predict_label gets all of them, compared with the Trainer's).
CROSS_CHECK_IMAGES = 4
IN_PROCESS = "saved_model"
MODEL_SERVER = "tensorflow_model_server"


@dataclass
class ProbeRequest:
    """What the executor asks the probe to check (written as REQUEST.json)."""

    model_path: str
    example_files: list[str]
    num_examples: int
    max_loading_seconds: float
    score_tolerance: float
    server: str  # IN_PROCESS or MODEL_SERVER
    workdir: str
    model_name: str = "candidate"
    eval_predictions: str | None = None
    model_server_binary: str | None = None


@dataclass
class ProbeResult:
    """What the probe found (written as RESULT.json)."""

    problems: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    load_seconds: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    images: int = 0
    compared_with_trainer: int = 0


@dataclass
class EvalImage:
    serialized_example: bytes
    image: bytes


def run_probe(request: ProbeRequest) -> ProbeResult:
    """Check the SavedModel file, then load and exercise it with each backend; collect every problem."""
    result = ProbeResult()
    model = request.model_path
    if not storage.exists(storage.join(model, SAVED_MODEL_FILE)):
        result.problems.append(f"{model} has no {SAVED_MODEL_FILE}")
        return result
    labels_path = storage.join(model, str(LABELS_FILE))
    if not storage.exists(labels_path):
        result.problems.append(f"{LABELS_FILE} missing from the SavedModel")
        return result
    labels = [line for line in storage.read_text(labels_path).splitlines() if line]
    unknown_label = _unknown_label(model)
    result.problems += _check_saved_model_file(storage.join(model, SAVED_MODEL_FILE), len(labels))
    warmup, warmup_problems = _read_warmup(storage.join(model, str(WARMUP_FILE)))
    result.problems += warmup_problems
    images = _read_eval_images(request.example_files, request.num_examples)
    if not images:
        result.problems.append("no eval examples with image_raw to send")
        return result
    result.images = len(images)
    expected = None
    if request.eval_predictions:
        try:
            expected = read_eval_predictions(request.eval_predictions)
        except (OSError, ValueError) as err:
            result.problems.append(f"the Trainer's eval predictions are unreadable: {_one_line(err)}")
            return result

    deadline = time.monotonic() + request.max_loading_seconds
    if request.server == MODEL_SERVER:
        backends = [ModelServerBackend(request.model_server_binary, model, request.model_name, Path(request.workdir), deadline)]
    else:
        backends = [SessionBackend(model), ObjectBackend(model)]

    def check(backend) -> ProbeResult:
        found = ProbeResult(backends=[backend.name])
        started = time.monotonic()
        try:
            backend.load()
        except Exception as err:  # noqa: BLE001  any load failure is a finding, not a crash of the check
            found.problems.append(f"{backend.name}: failed to load: {_one_line(err)}")
            backend.close()
            return found
        seconds = time.monotonic() - started
        found.load_seconds[backend.name] = round(seconds, 3)
        if seconds > request.max_loading_seconds:
            found.problems.append(f"{backend.name}: loading took {seconds:.1f}s, the limit is {request.max_loading_seconds}s")
        try:
            _exercise(backend, labels, warmup, images, expected, request.score_tolerance, found, unknown_label)
        finally:
            backend.close()
        return found

    # NOTE: the backends share nothing (a TF1 session on a graph of its own; a tf.saved_model.load object), and
    # most of each one's time is TensorFlow optimising and running every signature's graph with the GIL
    # released: side by side they take about the time of the slower one on 2 cores, not the sum.
    with concurrent.futures.ThreadPoolExecutor(len(backends)) as pool:
        found = list(pool.map(check, backends))
    for one in found:  # in the backends' order, whichever finished first
        result.backends += one.backends
        result.problems += one.problems
        result.load_seconds.update(one.load_seconds)
        result.requests += one.requests
        result.compared_with_trainer = max(result.compared_with_trainer, one.compared_with_trainer)
    return result


def _exercise(backend, labels: list[str], warmup: list[prediction_log_pb2.PredictionLog], images: list[EvalImage],
              expected: dict[str, Prediction] | None, tolerance: float, result: ProbeResult,
              unknown_label: str | None = None) -> None:
    """Send warmup, base64 and classify requests to one backend; append what is wrong to `result`."""
    name = backend.name

    def attempt(what: str, call):
        result.requests += 1
        try:
            return call()
        except (BackendError, InvalidImage) as err:
            result.problems.append(f"{name}: {what} failed: {_one_line(err)}")
        except Exception as err:  # noqa: BLE001  an unexpected error is still the model's finding
            result.problems.append(f"{name}: {what} failed: {type(err).__name__}: {_one_line(err)}")
        return None

    for index, log in enumerate(warmup):
        predict = log.predict_log.request
        signature = predict.model_spec.signature_name or checks.SERVING_SIGNATURE
        inputs = {alias: tf.make_ndarray(tensor) for alias, tensor in predict.inputs.items()}
        outputs = attempt(f"warmup request {index}", lambda: backend.predict(signature, inputs))
        count = len(next(iter(inputs.values()))) if inputs else 0
        if outputs is not None and signature == checks.SERVING_SIGNATURE:
            result.problems += checks.check_probabilities(outputs, count, labels, f"{name} warmup request {index}")
        elif outputs is not None and signature == checks.PREDICT_LABEL_SIGNATURE:
            result.problems += checks.check_predict(outputs, count, labels, f"{name} warmup request {index}",
                                                    unknown_label)

    # Base64 requests in TF Serving's REST shape, on predict_label (labels): all images in one batch, then one
    # alone; then the seed's request (no signature_name: serving_default, probabilities only) on the batch.
    served_labels = None
    labelled = None
    for batch in (images, images[:1]):
        body = json.dumps({
            "signature_name": checks.PREDICT_LABEL_SIGNATURE,
            "instances": [{checks.IMAGE_INPUT: {"b64": base64.b64encode(item.image).decode("ascii")}} for item in batch],
        })
        where = f"{name} b64 predict_label of {len(batch)}"
        outputs = attempt(where, lambda: backend.predict_rest(body))
        if outputs is None:
            continue
        problems = checks.check_predict(outputs, len(batch), labels, where, unknown_label)
        result.problems += problems
        if problems or batch is not images:
            continue
        labelled = outputs
        # The softmax's answers, compared with the Trainer's and classify's: an open-set "unknown" row
        # still has them.
        served_labels, served_scores = checks.softmax_answers(outputs, labels)
        if expected is not None:
            compared, mismatches = checks.compare_with_eval_predictions(
                [hashlib.sha256(item.image).hexdigest() for item in images],
                served_labels,
                served_scores,
                expected,
                tolerance,
                name,
            )
            result.compared_with_trainer = max(result.compared_with_trainer, compared)
            result.problems += mismatches
            if compared == 0:
                result.problems.append(f"{name}: none of the {len(images)} eval images is in the Trainer's eval_predictions.jsonl")

    # serving_default and classify run the graph predict_label ran on every image: a few images show
    # their shapes and that they agree with it (the whole batch again would double the check's time).
    few = images[:CROSS_CHECK_IMAGES]
    if labelled is not None:
        labelled = {key: value[:len(few)] for key, value in labelled.items()}
        served_labels = served_labels[:len(few)]
    body = json.dumps({
        "instances": [{checks.IMAGE_INPUT: {"b64": base64.b64encode(item.image).decode("ascii")}} for item in few],
    })
    where = f"{name} b64 predict of {len(few)} (serving_default)"
    outputs = attempt(where, lambda: backend.predict_rest(body, single_output=checks.PROBABILITIES_OUTPUT))
    if outputs is not None:
        problems = checks.check_probabilities(outputs, len(few), labels, where)
        if not problems and labelled is not None:
            problems = checks.check_same_probabilities(outputs, labelled, where)
        result.problems += problems

    # Classify: the seed's shape (image bytes under "image") and ExampleGen's examples as they are.
    seed_examples = [_image_example(item.image) for item in few]
    for what, examples in (("classify of 'image' examples", seed_examples),
                           ("classify of eval-split examples", [item.serialized_example for item in few])):
        outputs = attempt(what, lambda: backend.classify(examples))
        if outputs is None:
            continue
        problems = checks.check_classify(outputs, len(examples), labels, f"{name} {what}")
        result.problems += problems
        if not problems and served_labels is not None and checks.top_classes(outputs) != served_labels:
            result.problems.append(f"{name}: {what} ranks first {checks.top_classes(outputs)}, "
                                   f"predict_label said {served_labels}")


def _unknown_label(model: str) -> str | None:
    """The label predict_label answers for a stranger when the model's metadata says open-set is on."""
    path = storage.join(model, str(MODEL_METADATA_FILE))
    try:
        verification = json.loads(storage.read_text(path)).get("verification") or {}
    except (OSError, ValueError, tf.errors.OpError):
        return None
    return verification.get("unknown_label") if verification.get("open_set") else None


def _check_saved_model_file(path: str, num_labels: int) -> list[str]:
    """The SignatureDefs TF Serving reads from saved_model.pb (the `serve` MetaGraph)."""
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(storage.read_bytes(path))
    except Exception as err:  # noqa: BLE001  protobuf raises DecodeError or RuntimeWarning-like errors
        return [f"{SAVED_MODEL_FILE} does not parse: {_one_line(err)}"]
    serving = [graph for graph in saved_model.meta_graphs if tf.saved_model.SERVING in graph.meta_info_def.tags]
    if not serving:
        return [f"{SAVED_MODEL_FILE} has no MetaGraph tagged '{tf.saved_model.SERVING}'"]
    return checks.check_signature_defs(serving[0].signature_def, num_labels)


def _read_warmup(path: str) -> tuple[list[prediction_log_pb2.PredictionLog], list[str]]:
    if not storage.exists(path):
        return [], [f"{WARMUP_FILE} missing (the export contract requires warmup requests)"]
    logs = []
    try:
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            logs.append(prediction_log_pb2.PredictionLog.FromString(raw))
    except Exception as err:  # noqa: BLE001  a corrupt file is a finding
        return [], [f"{WARMUP_FILE} is not a TFRecord of PredictionLog: {_one_line(err)}"]
    problems = []
    if not logs:
        problems.append(f"{WARMUP_FILE} is empty")
    if len(logs) > MAX_WARMUP_RECORDS:
        problems.append(f"{WARMUP_FILE} has {len(logs)} records; TF Serving refuses more than {MAX_WARMUP_RECORDS}")
    kinds = {log.WhichOneof("log_type") for log in logs} - {"predict_log"}
    if kinds:
        problems.append(f"{WARMUP_FILE} holds {sorted(map(str, kinds))} records; the contract is predict requests")
    return [log for log in logs if log.WhichOneof("log_type") == "predict_log"], problems


def _read_eval_images(files: list[str], limit: int) -> list[EvalImage]:
    images = []
    for path in sorted(files):
        compression = "GZIP" if path.endswith(".gz") else ""
        for raw in tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator():
            example = tf.train.Example.FromString(raw)
            feature = example.features.feature.get("image_raw")
            if feature is None or not feature.bytes_list.value:
                continue
            images.append(EvalImage(serialized_example=raw, image=feature.bytes_list.value[0]))
            if len(images) >= limit:
                return images
    return images


def _image_example(image: bytes) -> bytes:
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))
    return tf.train.Example(features=tf.train.Features(feature={"image": feature})).SerializeToString()


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] or type(err).__name__


def wait_for_job() -> tuple[str, str] | None:
    """`--wait`: TensorFlow is loaded; read {"request", "result", "log"} as one JSON line on stdin.

    From then on the process writes to that log, as a probe started with its
    files does. None at end of input (the pipeline ended without a check).
    """
    job = waiting_process.read_message()
    if job is None:
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)  # TensorFlow's own logging writes to these descriptors directly
    os.dup2(log, 2)
    os.close(log)
    return job["request"], job["result"]


def main(argv: list[str]) -> int:
    if argv[1:] == ["--wait"]:
        job = wait_for_job()
        if job is None:
            return 0
        request_path, result_path = job
    else:
        request_path, result_path = argv[1:3]
    print(f"serving check probe, pid {os.getpid()}", flush=True)
    request = ProbeRequest(**json.loads(Path(request_path).read_text(encoding="utf-8")))
    result = run_probe(request)
    Path(result_path).write_text(json.dumps(asdict(result), indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
