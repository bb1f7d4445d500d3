"""Client for a signflow (or TensorFlow Serving) model server, `signflow predict` and `signflow verify`.

Library:

    client = RestClient("http://127.0.0.1:8501", "xception")
    client.predict([png_bytes])            # `predict_label` signature -> [Prediction(label, score)]
    client.classify([png_bytes], top_k=3)  # `classify` signature -> label, score and top-k
    client.verify([png_bytes], "signer_03")  # `verify` signature -> [Verdict(signer, genuine, score, threshold)]

    with GrpcClient("127.0.0.1:8500", "xception") as client: ...   # same methods, official stubs

Only the wire formats of TF Serving are used (REST `:predict` / `:classify`,
gRPC PredictionService), so the same client works against the real
tensorflow_model_server. `serving_default` answers `probabilities` only (the
seed's shape: {"predictions": [[p0, p1, ...]]}, in the order of the version's
assets/labels.txt); predict() calls the `predict_label` signature, which adds the
top label and its score. Ranking several labels needs the label names, which the
`classify` signature returns with its scores, so top-k goes through Classify.

Image sources for the command line: local files (PNG, JPEG, GIF, BMP), base64
text (a data: URL prefix and the URL-safe alphabet are accepted; it is decoded
here and re-encoded in TF Serving's standard alphabet), and http(s) URLs fetched
with a time limit and a size limit.

Layer: a client, outside the server: imports serving.contract (the signature,
input and feature names) and serving.images only, never the server's modules.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import requests

from serving import images as image_checks
from serving.contract import (
    B64_KEY,
    CLAIMED_SIGNER_INPUT,
    CLASSIFY_SIGNATURE,
    GENUINE_OUTPUT,
    IMAGE_INPUT,
    INSTANCES_KEY,
    LABEL_OUTPUT,
    PREDICT_LABEL_SIGNATURE,
    REQUEST_IMAGE_FEATURE,
    SCORE_OUTPUT,
    SIGNATURE_NAME_KEY,
    THRESHOLD_OUTPUT,
    UNKNOWN_LABEL,
    VERIFY_SCORE_OUTPUT,
    VERIFY_SIGNATURE,
)

DEFAULT_REST_URL = "http://127.0.0.1:8501"
DEFAULT_GRPC_TARGET = "127.0.0.1:8500"
DEFAULT_MODEL = "xception"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_URL_TIMEOUT_S = 10.0
# A signature scan is tens of KB; 10 MiB is generous and still bounds memory.
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024


class ClientError(Exception):
    """An image that cannot be sent, or a server that cannot be reached."""


class ServerError(ClientError):
    """The server answered with an error.

    `status` is the HTTP status (REST) or the gRPC status code name; `message`
    is the server's own text (the `{"error": ...}` body or the gRPC details).
    """

    def __init__(self, status: int | str, message: str):
        super().__init__(f"server answered {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Prediction:
    """One image's answer: the top signer, its probability, and (from classify) the ranking."""

    label: str
    score: float
    top_k: tuple[tuple[str, float], ...] = ()
    """(label, score) pairs, best first; empty for predict()."""


@dataclass(frozen=True)
class Verdict:
    """One image's answer from the verify signature: is it `signer`'s signature?"""

    signer: str
    genuine: bool
    score: float
    """Calibrated: compared with the same threshold for every signer."""
    threshold: float | None = None
    """The threshold `genuine` was decided with (None when the model does not output it)."""


def _claims(images: Sequence[bytes], signers: str | Sequence[str]) -> list[str]:
    """One claimed signer per image: a single name applies to every image."""
    claims = [signers] * len(images) if isinstance(signers, str) else [str(s) for s in signers]
    if len(claims) != len(images):
        raise ValueError(f"{len(images)} images but {len(claims)} claimed signers")
    return claims


def _ranked(pairs: Sequence[tuple[str, float]], top_k: int) -> Prediction:
    ranked = sorted(pairs, key=lambda pair: pair[1], reverse=True)
    if not ranked:
        raise ClientError("the classify signature returned no classes")
    return Prediction(label=ranked[0][0], score=ranked[0][1], top_k=tuple(ranked[:top_k]))


def _check_version_choice(version: int | None, label: str | None) -> None:
    # ModelSpec's version and version_label are a oneof; REST URLs allow one of them.
    if version is not None and label is not None:
        raise ValueError("give a model version or a version label, not both")


def _version_path(version: int | None, label: str | None) -> str:
    _check_version_choice(version, label)
    if version is not None:
        return f"/versions/{int(version)}"
    if label is not None:
        return f"/labels/{requests.utils.quote(label, safe='')}"
    return ""


class RestClient:
    """TF Serving's REST API (`POST /v1/models/<model>[/versions/N|/labels/L]:predict|:classify`)."""

    def __init__(
        self,
        base_url: str = DEFAULT_REST_URL,
        model: str = DEFAULT_MODEL,
        *,
        version: int | None = None,
        label: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        session: requests.Session | None = None,
    ):
        self.url = f"{base_url.rstrip('/')}/v1/models/{requests.utils.quote(model, safe='')}{_version_path(version, label)}"
        self.timeout = timeout
        self.session = session or requests.Session()

    def predict(self, images: Sequence[bytes]) -> list[Prediction]:
        """Top label and score per image, from the predict_label signature."""
        body = {
            SIGNATURE_NAME_KEY: PREDICT_LABEL_SIGNATURE,
            INSTANCES_KEY: [{IMAGE_INPUT: {B64_KEY: base64.b64encode(image).decode("ascii")}} for image in images],
        }
        predictions = self._post(":predict", body).get("predictions")
        if not isinstance(predictions, list) or len(predictions) != len(images):
            raise ClientError(f"unexpected :predict answer: {str(predictions)[:200]}")
        try:
            return [Prediction(label=str(p[LABEL_OUTPUT]), score=float(p[SCORE_OUTPUT])) for p in predictions]
        except (KeyError, TypeError, ValueError):
            raise ClientError(f"the model's {PREDICT_LABEL_SIGNATURE} answer has no label/score outputs: "
                              f"{str(predictions[0])[:200]}") from None

    def classify(self, images: Sequence[bytes], top_k: int = 5) -> list[Prediction]:
        """Label, score and the `top_k` best (label, score) pairs per image, from the classify signature."""
        body = {
            SIGNATURE_NAME_KEY: CLASSIFY_SIGNATURE,
            "examples": [{REQUEST_IMAGE_FEATURE: {B64_KEY: base64.b64encode(image).decode("ascii")}} for image in images],
        }
        results = self._post(":classify", body).get("results")
        if not isinstance(results, list) or len(results) != len(images):
            raise ClientError(f"unexpected :classify answer: {str(results)[:200]}")
        return [_ranked([(str(label), float(score)) for label, score in result], top_k) for result in results]

    def verify(self, images: Sequence[bytes], signers: str | Sequence[str]) -> list[Verdict]:
        """Whether each image is its claimed signer's signature (one name for all, or one per image), from the
        verify signature. A signer the model does not verify fails the whole request (ServerError 400)."""
        claims = _claims(images, signers)
        body = {
            SIGNATURE_NAME_KEY: VERIFY_SIGNATURE,
            INSTANCES_KEY: [{IMAGE_INPUT: {B64_KEY: base64.b64encode(image).decode("ascii")},
                             CLAIMED_SIGNER_INPUT: claim} for image, claim in zip(images, claims)],
        }
        answers = self._post(":predict", body).get("predictions")
        if not isinstance(answers, list) or len(answers) != len(images):
            raise ClientError(f"unexpected :predict answer: {str(answers)[:200]}")
        try:
            return [Verdict(claim, bool(a[GENUINE_OUTPUT]), float(a[VERIFY_SCORE_OUTPUT]),
                            float(a[THRESHOLD_OUTPUT]) if a.get(THRESHOLD_OUTPUT) is not None else None)
                    for claim, a in zip(claims, answers)]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ClientError(f"the model's {VERIFY_SIGNATURE} answer has no genuine/score outputs: "
                              f"{str(answers[0])[:200]}") from None

    def _post(self, verb: str, body: dict) -> dict:
        try:
            response = self.session.post(self.url + verb, json=body, timeout=self.timeout)
        except requests.RequestException as err:
            raise ClientError(f"cannot reach the server at {self.url}: {err}") from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code != 200:
            if isinstance(answer, dict) and "error" in answer:
                raise ServerError(response.status_code, str(answer["error"]))
            raise ServerError(response.status_code, response.text.strip()[:300] or response.reason or "(empty body)")
        if not isinstance(answer, dict):
            raise ClientError(f"the server's answer is not a JSON object: {response.text[:200]}")
        return answer

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "RestClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class GrpcClient:
    """TF Serving's gRPC PredictionService through the official tensorflow-serving-api stubs."""

    def __init__(
        self,
        target: str = DEFAULT_GRPC_TARGET,
        model: str = DEFAULT_MODEL,
        *,
        version: int | None = None,
        label: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ):
        # NOTE: the stubs import TensorFlow's protos (and so TensorFlow, seconds);
        # imported here so that REST use of this module stays light.
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        _check_version_choice(version, label)
        self._grpc = grpc
        self.model, self.version, self.label, self.timeout = model, version, label, timeout
        self.channel = grpc.insecure_channel(target)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def _model_spec(self, spec, signature: str) -> None:
        spec.name = self.model
        spec.signature_name = signature
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except self._grpc.RpcError as err:
            raise ServerError(err.code().name, err.details() or "") from None

    def predict(self, images: Sequence[bytes]) -> list[Prediction]:
        """Top label and score per image, from the predict_label signature."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, PREDICT_LABEL_SIGNATURE)
        request.inputs[IMAGE_INPUT].CopyFrom(tf.make_tensor_proto(list(images), dtype=tf.string))
        response = self._call(self.stub.Predict, request)
        try:
            labels = tf.make_ndarray(response.outputs[LABEL_OUTPUT])
            scores = tf.make_ndarray(response.outputs[SCORE_OUTPUT])
        except (KeyError, ValueError, TypeError):
            raise ClientError(f"the model's {PREDICT_LABEL_SIGNATURE} answer has no label/score outputs: "
                              f"{sorted(response.outputs)}") from None
        return [Prediction(label=label.decode("utf-8"), score=float(score)) for label, score in zip(labels, scores)]

    def verify(self, images: Sequence[bytes], signers: str | Sequence[str]) -> list[Verdict]:
        """Whether each image is its claimed signer's signature, from the verify signature (see RestClient.verify;
        an unknown signer is ServerError INVALID_ARGUMENT)."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        claims = _claims(images, signers)
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, VERIFY_SIGNATURE)
        request.inputs[IMAGE_INPUT].CopyFrom(tf.make_tensor_proto(list(images), dtype=tf.string))
        request.inputs[CLAIMED_SIGNER_INPUT].CopyFrom(
            tf.make_tensor_proto([claim.encode("utf-8") for claim in claims], dtype=tf.string))
        response = self._call(self.stub.Predict, request)
        try:
            genuine = tf.make_ndarray(response.outputs[GENUINE_OUTPUT])
            scores = tf.make_ndarray(response.outputs[VERIFY_SCORE_OUTPUT])
            thresholds = (tf.make_ndarray(response.outputs[THRESHOLD_OUTPUT])
                          if THRESHOLD_OUTPUT in response.outputs else [None] * len(claims))
        except (KeyError, ValueError, TypeError):
            raise ClientError(f"the model's {VERIFY_SIGNATURE} answer has no genuine/score outputs: "
                              f"{sorted(response.outputs)}") from None
        return [Verdict(claim, bool(g), float(score), None if t is None else float(t))
                for claim, g, score, t in zip(claims, genuine, scores, thresholds)]

    def classify(self, images: Sequence[bytes], top_k: int = 5) -> list[Prediction]:
        """Label, score and the `top_k` best (label, score) pairs per image, from the classify signature."""
        from tensorflow.core.example import example_pb2
        from tensorflow_serving.apis import classification_pb2

        request = classification_pb2.ClassificationRequest()
        self._model_spec(request.model_spec, CLASSIFY_SIGNATURE)
        for image in images:
            example = example_pb2.Example()
            example.features.feature[REQUEST_IMAGE_FEATURE].bytes_list.value.append(image)
            request.input.example_list.examples.append(example)
        response = self._call(self.stub.Classify, request)
        return [
            _ranked([(c.label, c.score) for c in classifications.classes], top_k)
            for classifications in response.result.classifications
        ]

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "GrpcClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- image sources ------------------------------------------------------------------------------


def _checked(data: bytes, source: str, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise ClientError(f"{source}: {len(data)} bytes is over the limit of {max_bytes} bytes")
    try:
        image_checks.inspect_image(data)
    except image_checks.InvalidImage as err:
        raise ClientError(f"{source}: {err}") from None
    return data


def read_image_file(path: str | Path, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """The bytes of a local PNG/JPEG/GIF/BMP file, checked to be a whole image."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ClientError(f"{path}: {size} bytes is over the limit of {max_bytes} bytes")
        data = path.read_bytes()
    except OSError as err:
        raise ClientError(f"{path}: {err.strerror or err}") from None
    return _checked(data, str(path), max_bytes)


def decode_base64_image(text: str, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """Image bytes from base64 text (standard or URL-safe alphabet, optional data: URL prefix)."""
    try:
        data = image_checks.decode_b64(text, lenient=True)
    except image_checks.InvalidImage as err:
        raise ClientError(f"base64 input: {err}") from None
    return _checked(data, "base64 input", max_bytes)


def fetch_image_url(url: str, timeout: float = DEFAULT_URL_TIMEOUT_S, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """Download an image over http(s) within `timeout` seconds in total and `max_bytes` bytes."""
    if not url.lower().startswith(("http://", "https://")):
        raise ClientError(f"{url}: only http:// and https:// URLs are fetched")
    deadline = time.monotonic() + timeout
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            if response.status_code != 200:
                raise ClientError(f"{url}: HTTP {response.status_code} {response.reason}")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ClientError(f"{url}: {declared} bytes is over the limit of {max_bytes} bytes")
            chunks, received = [], 0
            for chunk in response.iter_content(64 * 1024):
                received += len(chunk)
                if received > max_bytes:
                    raise ClientError(f"{url}: more than the limit of {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise ClientError(f"{url}: download took longer than {timeout:g} s")
                chunks.append(chunk)
    except requests.Timeout:
        raise ClientError(f"{url}: no answer within {timeout:g} s") from None
    except requests.RequestException as err:
        raise ClientError(f"{url}: {err}") from None
    return _checked(b"".join(chunks), url, max_bytes)


# -- `signflow predict` ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `signflow predict` options."""
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="local image files (PNG, JPEG, GIF, BMP)")
    parser.add_argument("--b64", action="append", default=[], metavar="TEXT", help="an image as base64 text (repeatable)")
    parser.add_argument("--b64-file", action="append", default=[], metavar="PATH",
                        help="a file holding base64 text; '-' reads standard input (repeatable)")
    parser.add_argument("--url", action="append", default=[], help="an http(s) URL of an image (repeatable)")
    parser.add_argument("--url-timeout", type=float, default=DEFAULT_URL_TIMEOUT_S, metavar="SECONDS",
                        help="time limit for downloading each --url (default: %(default)s)")
    parser.add_argument("--max-image-bytes", type=int, default=DEFAULT_MAX_IMAGE_BYTES, metavar="N",
                        help="largest image accepted from any source (default: %(default)s)")
    parser.add_argument("--protocol", choices=("rest", "grpc"), default="rest", help="default: %(default)s")
    parser.add_argument("--rest-url", default=DEFAULT_REST_URL, help="REST server (default: %(default)s)")
    parser.add_argument("--grpc-target", default=DEFAULT_GRPC_TARGET, help="gRPC server host:port (default: %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="a specific model version (default: the latest)")
    which.add_argument("--label", help="a model version label, e.g. stable")
    parser.add_argument("--top-k", type=int, default=0, metavar="K",
                        help="also show the K most likely signers by probability (a second request, to the "
                             "classify signature; the answer itself stays predict_label's)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help="time limit for the server's answer (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")


def _gather_images(args: argparse.Namespace) -> list[tuple[str, bytes]]:
    """(name to show, bytes) for every image named on the command line, in order."""
    found = [(path, read_image_file(path, args.max_image_bytes)) for path in args.images]
    for i, text in enumerate(args.b64):
        found.append((f"base64[{i}]", decode_base64_image(text, args.max_image_bytes)))
    for path in args.b64_file:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as err:
            raise ClientError(f"{path}: {err}") from None
        found.append((path, decode_base64_image(text, args.max_image_bytes)))
    found.extend((url, fetch_image_url(url, args.url_timeout, args.max_image_bytes)) for url in args.url)
    return found


def main(args: argparse.Namespace) -> int:
    """Run `signflow predict`: 0 on success, 1 when the server fails or cannot be reached, 2 for bad input."""
    if args.top_k < 0:
        print("error: --top-k must be 0 or more", file=sys.stderr)
        return 2
    try:
        named = _gather_images(args)
    except ClientError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not named:
        print("error: no image given (IMAGE, --b64, --b64-file or --url)", file=sys.stderr)
        return 2
    try:
        if args.protocol == "grpc":
            client = GrpcClient(args.grpc_target, args.model, version=args.version, label=args.label, timeout=args.timeout)
        else:
            client = RestClient(args.rest_url, args.model, version=args.version, label=args.label, timeout=args.timeout)
        with client:
            data = [image for _, image in named]
            predictions = client.predict(data)
            if args.top_k:
                # The answer stays predict_label's (with the open set's "unknown"); classify, which
                # ranks every label by the softmax alone, only adds the ranking.
                ranked = client.classify(data, args.top_k)
                predictions = [replace(p, top_k=r.top_k) for p, r in zip(predictions, ranked)]
    except ClientError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for (name, _), prediction in zip(named, predictions):
        if args.json:
            record = {"image": name, "label": prediction.label, "score": prediction.score}
            if args.top_k:
                record["top_k"] = [{"label": label, "score": score} for label, score in prediction.top_k]
            print(json.dumps(record))
            continue
        if prediction.label == UNKNOWN_LABEL:
            # Not a signer: its score is the similarity to the most likely signer's references, not a probability.
            print(f"{name}: {UNKNOWN_LABEL} (no enrolled signer is close enough: similarity {prediction.score:.4f})")
        else:
            print(f"{name}: {prediction.label} (score {prediction.score:.4f})")
        for rank, (label, score) in enumerate(prediction.top_k, start=1):
            print(f"  {rank}. {label}  {score:.4f}")
    return 0


# -- `signflow verify` ----------------------------------------------------------------------------

GRPC_SCHEME = "grpc://"


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    """The `signflow verify` options."""
    parser.add_argument("images", nargs="+", metavar="FILE", help="local image files (PNG, JPEG, GIF, BMP)")
    parser.add_argument("--signer", required=True, metavar="NAME", help="the signer every FILE claims to be")
    parser.add_argument("--server", default=DEFAULT_REST_URL, metavar="URL",
                        help=f"http(s)://HOST:PORT for REST, {GRPC_SCHEME}HOST:PORT for gRPC (default: %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="a specific model version (default: the latest)")
    which.add_argument("--label", help="a model version label, e.g. stable")
    parser.add_argument("--max-image-bytes", type=int, default=DEFAULT_MAX_IMAGE_BYTES, metavar="N",
                        help="largest image accepted (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help="time limit for the server's answer (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")


def verify_main(args: argparse.Namespace) -> int:
    """Run `signflow verify`: 0 when answered (genuine or not), 1 when the server fails or cannot be reached
    (an unknown signer included), 2 for bad input."""
    try:
        named = [(path, read_image_file(path, args.max_image_bytes)) for path in args.images]
    except ClientError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        if args.server.startswith(GRPC_SCHEME):
            client = GrpcClient(args.server[len(GRPC_SCHEME):], args.model, version=args.version, label=args.label,
                                timeout=args.timeout)
        else:
            client = RestClient(args.server, args.model, version=args.version, label=args.label, timeout=args.timeout)
        with client:
            verdicts = client.verify([image for _, image in named], args.signer)
    except ClientError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for (name, _), verdict in zip(named, verdicts):
        if args.json:
            print(json.dumps({"image": name, "signer": verdict.signer, "genuine": verdict.genuine,
                              "score": verdict.score, "threshold": verdict.threshold}))
            continue
        threshold = "threshold not published" if verdict.threshold is None else f"threshold {verdict.threshold:.4f}"
        verdict_text = "genuine" if verdict.genuine else "forged"
        print(f"{name}: {verdict_text} (claimed {verdict.signer}; score {verdict.score:.4f}, {threshold})")
    return 0
