"""The REST transport: TF Serving's HTTP API on a Starlette app.

URL grammar, method dispatch and status codes are TF Serving's
(`model_servers/http_rest_api_util.cc`, `http_rest_api_handler.cc`,
`http_server.cc`): the /v1 regexes are matched case-insensitively against the
raw path plus query string, the verb and `metadata` are compared
case-sensitively, and every /v1 error is `{"error": "..."}` with the status its
code maps to. Bodies are decoded and answers written by rest_codec.py; what a
request means is the data plane's job (handlers.py).

signflow additions, none of which change a body TF Serving would send:
- `X-Model-Version: <n>` on answers that came from a model version;
- bodies over --max_request_bytes are refused with 413 before they are read;
- `GET /signflow/status` (`status_route`): the models' versions and the
  training scheduler's status file.

One deliberate difference: a model name or version label that is not UTF-8 once
%-decoded, and a body whose strings are not Unicode text (bytes that are not
UTF-8, \\u escapes of lone surrogates), are 400 `{"error": ...}`. TF Serving
passes such bytes on, into answers that are then not UTF-8 JSON.

signflow's own routes are passed in as `extra_routes` and matched before the
/v1 dispatcher. The feedback endpoint (serving/feedback.py) is mounted that way
at `POST /v1/models/<name>/feedback`: a URL TF Serving has no meaning for (it
answers 400 "Malformed request"), so every URL of TF Serving's API still
reaches the dispatcher, and any other method on that path too.

Layer: transport. Imports Starlette, numpy, serving.errors, handlers, metrics,
registry (the status route), rest_codec and settings.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import unquote_to_bytes

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from serving import errors, rest_codec
from serving.handlers import INLINE_WORK_BYTES, Handlers, ModelRef, is_small, with_deadline
from serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from serving.metrics import Metrics
from serving.registry import AVAILABLE, Registry
from serving.settings import Settings

log = logging.getLogger(__name__)

VERSION_HEADER = "X-Model-Version"
_JSON = "application/json"
_INT64_MAX = 2**63 - 1
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"]

# http_rest_api_util.h / .cc
_V1 = re.compile(r"(?i)/v1/.*", re.DOTALL)
_POST = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)")
_GET = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
_CORS_ORIGIN = re.compile(r"https?://")
# Values in an answer written on the event loop (_small_answer): a classifier's probabilities, or a few.
_INLINE_ANSWER_VALUES = 64

STATUS_PATH = "/signflow/status"
# The scheduler's status is a few hundred bytes; anything this big is not it.
MAX_TRAINING_STATUS_BYTES = 1024 * 1024

# What TF Serving answers outside /v1: no handler claims the request, so its HTTP server calls
# libevent's evhttp_send_error(req, 404, NULL), whose page names the status only (never the URL,
# which would reflect unescaped client input into HTML).
NOT_FOUND_PAGE = "<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"


def error_response(err: errors.ServingError, headers: dict | None = None) -> Response:
    """The one place an error becomes an HTTP answer: TF Serving's {"error": message}."""
    return Response(rest_codec.json_bytes(err.to_json()), status_code=err.http_status, media_type=_JSON,
                    headers=headers)


def create_app(
    handlers: Handlers,
    settings: Settings,
    metrics: Metrics,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The REST app: Prometheus (if enabled), `extra_routes`, then TF Serving's /v1 API."""
    api = _RestApi(handlers, settings, metrics)
    routes: list[BaseRoute] = []
    if settings.prometheus_enabled:
        routes.append(Route(settings.prometheus_path, api.prometheus, methods=_ALL_METHODS))
    routes.extend(extra_routes)
    routes.append(Route("/{path:path}", api.dispatch, methods=_ALL_METHODS))

    async def on_serving_error(request: Request, exc: Exception) -> Response:
        return error_response(exc)

    return Starlette(routes=routes, exception_handlers={errors.ServingError: on_serving_error})


class _RestApi:
    def __init__(self, handlers: Handlers, settings: Settings, metrics: Metrics):
        self._handlers = handlers
        self._settings = settings
        self._metrics = metrics
        self._timeout = settings.rest_api_timeout_in_ms / 1000 if settings.rest_api_timeout_in_ms > 0 else None

    async def prometheus(self, request: Request) -> Response:
        # http_server.cc ProcessPrometheusRequest: the path must match exactly, query included.
        query = request.scope.get("query_string", b"")
        if query:
            path = raw_target(request)
            return Response(
                f"Unexpected path: {path}. Should be {self._settings.prometheus_path}",
                status_code=400, media_type="text/plain")
        return Response(self._metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def dispatch(self, request: Request) -> Response:
        target = raw_target(request)
        if not _V1.fullmatch(target):
            return Response(NOT_FOUND_PAGE, status_code=404, media_type="text/html")
        method = request.method
        if method == "OPTIONS":
            # CORS preflight: an empty answer, 200 with an http(s) Origin, else 400.
            ok = bool(_CORS_ORIGIN.search(request.headers.get("origin", "")))
            return Response(b"", status_code=200 if ok else 400)

        started = time.monotonic()
        model_name, api, version = "", "", None
        try:
            if method == "POST":
                match = _POST.fullmatch(target)
                verb = match.group(4) if match else None
                if verb not in ("predict", "classify", "regress"):
                    raise errors.InvalidArgument(f"Malformed request: {method} {target}")
                ref = _model_ref(match)
                model_name, api = ref.name, verb
                body = await read_body(request, self._settings.max_request_bytes)
                call: Callable[[ModelRef, bytes], Awaitable[tuple[bytes, int | None]]] = {
                    "predict": self._predict,
                    "classify": self._classify,
                    "regress": self._regress,
                }[verb]
                answer, version = await with_deadline(call(ref, body), self._timeout, f"{verb} request")
            elif method == "GET" and (match := _GET.fullmatch(target)):
                ref = _model_ref(match)
                model_name = ref.name
                if not ref.name:
                    raise errors.InvalidArgument("Missing model name in request.")
                if match.group(4) == "metadata":
                    response = self._handlers.model_metadata(ref)
                    answer, version = rest_codec.metadata_body(response), response.model_spec.version.value
                else:
                    answer, version = rest_codec.status_body(self._handlers.model_status(ref)), None
            else:
                raise errors.InvalidArgument(f"Malformed request: {method} {target}")
        except errors.ServingError as err:
            self._metrics.request(model_name, version, api, "REST", err.code.name, time.monotonic() - started)
            return error_response(err)
        except Exception:  # a bug, not a client error: say so, keep serving
            log.exception("Unhandled error for %s %s", method, target)
            failure = errors.Internal(errors.INTERNAL_MESSAGE)
            self._metrics.request(model_name, version, api, "REST", failure.code.name, time.monotonic() - started)
            return error_response(failure)
        self._metrics.request(model_name, version, api, "REST", "OK", time.monotonic() - started)
        headers = {VERSION_HEADER: str(version)} if version is not None else None
        return Response(answer, media_type=_JSON, headers=headers)

    # Each verb: (the answer's body, the version that produced it). Decoding and
    # encoding a large body or answer run on the handlers' pool, so as not to stall
    # the event loop; a small one is done here (handlers.is_small).

    async def _predict(self, ref: ModelRef, body: bytes) -> tuple[bytes, int]:
        # Commas bound a JSON text's values (base64 has none): one more than there are.
        small = is_small(len(body), body.count(b",") + 1)
        document = await self._handlers.offload_unless(small, rest_codec.parse_document, body)
        name = rest_codec.signature_name(document)
        decode = functools.partial(rest_codec.predict_inputs, document, name=name,
                                   max_instances=self._settings.max_instances_per_request)
        result = await self._handlers.predict_decoded(ref, name, decode, small)
        row_format = rest_codec.is_row_format(document)
        answer = await self._handlers.offload_unless(_small_answer(result.outputs), rest_codec.predict_body,
                                                     result.outputs, row_format)
        return answer, result.version

    async def _classify(self, ref: ModelRef, body: bytes) -> tuple[bytes, int]:
        name, request_input = await self._handlers.offload(rest_codec.examples_from_json, body)
        result = await self._handlers.classify(ref, name, request_input)
        return rest_codec.classify_body(result.result), result.version

    async def _regress(self, ref: ModelRef, body: bytes) -> tuple[bytes, int]:
        name, request_input = await self._handlers.offload(rest_codec.examples_from_json, body)
        result = await self._handlers.regress(ref, name, request_input)
        return rest_codec.regress_body(result.result), result.version


def _small_answer(outputs: dict[str, np.ndarray]) -> bool:
    """Whether writing `outputs` as JSON may run on the event loop: some 6 microseconds a value
    (shortest round-tripping floats are formatted in Python), so at most _INLINE_ANSWER_VALUES,
    and strings within handlers.INLINE_WORK_BYTES."""
    if sum(array.size for array in outputs.values()) > _INLINE_ANSWER_VALUES:
        return False
    size = sum(len(v) for array in outputs.values() if array.dtype.kind in "OSU"
               for v in array.reshape(-1) if isinstance(v, (bytes, str)))
    return size <= INLINE_WORK_BYTES


def raw_target(request: Request) -> str:
    """Path and query as sent (percent-escapes intact): what TF Serving matches its regexes on."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    query = request.scope.get("query_string", b"")
    target = raw + (b"?" + query if query else b"")
    return target.decode("latin-1")


def decode_segment(text: str, what: str) -> str:
    """A URL segment as raw_target gives it, unescaped as curl_easy_unescape does (%XX only; '+'
    stays '+'), then read as UTF-8.

    TF Serving keeps the bytes as they are; here a name that is not UTF-8 is refused, since
    it could be neither looked up (names are protobuf strings) nor quoted in a JSON answer.
    `what` names the segment in the message.
    """
    try:
        return unquote_to_bytes(text.encode("latin-1")).decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidArgument(f"{what} in the URL is not valid UTF-8 once %-decoded: {text}") from None


def _model_ref(match: re.Match) -> ModelRef:
    version = match.group(2)
    if version is not None:
        number = int(version)
        if number > _INT64_MAX:
            raise errors.InvalidArgument(f"Failed to convert version: {version} to numeric.")
        version = number
    name = decode_segment(match.group(1), "Model name") if match.group(1) is not None else ""
    label = decode_segment(match.group(3), "Version label") if match.group(3) is not None else None
    return ModelRef(name=name, version=version, label=label)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with RequestTooLarge (413) past `limit` bytes, before more is read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.RequestTooLarge(
            f"Request body of {declared} bytes exceeds the limit of {limit} bytes (--max_request_bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise errors.RequestTooLarge(
                f"Request body exceeds the limit of {limit} bytes (--max_request_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def status_route(registry: Registry, training_status_file: str) -> Route:
    """`GET /signflow/status`: every configured model's versions, and the training status file.

    Answers `{"models": [{"name", "serving_version", "versions": [{"version", "state",
    "error_code", "error_message"}]}], "training": <the file's JSON object or null>,
    "training_status_error": <why the file could not be used, or null>}`. A missing
    file (or no --training_status_file) is `training: null` with no error.
    """

    async def status(request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(rest_codec.json_bytes({"error": f"Method {request.method} not allowed; use GET"}),
                            status_code=405, media_type=_JSON, headers={"Allow": "GET, HEAD"})
        training, error = None, None
        if training_status_file:
            training, error = await asyncio.to_thread(read_training_status, training_status_file)
        document = {"models": models_status(registry), "training": training, "training_status_error": error}
        # ASCII escapes: the file's strings may hold lone surrogates, which UTF-8 cannot carry.
        return Response(json.dumps(document).encode("ascii"), media_type=_JSON)

    return Route(STATUS_PATH, status, methods=_ALL_METHODS)


def models_status(registry: Registry) -> list[dict]:
    """The status route's "models": configured models in config order, versions newest first."""
    models = []
    for config in registry.configs():
        try:
            records = registry.status(config.name)
        except errors.NotFound:
            records = []  # configured, nothing found on disk yet
        versions = [{"version": r.version, "state": r.state, "error_code": r.error_code,
                     "error_message": r.error_message} for r in records]
        available = [r.version for r in records if r.state == AVAILABLE]
        models.append({"name": config.name, "serving_version": max(available) if available else None,
                       "versions": versions})
    return models


def read_training_status(path: str) -> tuple[dict | None, str | None]:
    """(the file's JSON object, None), (None, None) when it does not exist, or (None, why it is unusable).

    The scheduler replaces the file atomically, so a read sees an old or a new
    file, never half of one; its content is passed on as it is.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TRAINING_STATUS_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, f"cannot read {path}: {err.strerror or err}"
    if len(data) > MAX_TRAINING_STATUS_BYTES:
        return None, f"{path} is larger than {MAX_TRAINING_STATUS_BYTES} bytes"
    try:
        document: Any = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as err:
        return None, f"{path} is not valid JSON: {err}"
    except RecursionError:
        return None, f"{path} is nested too deeply"
    if not isinstance(document, dict):
        return None, f"{path} does not hold a JSON object"
    return document, None


def _reject_constant(name: str):
    # NaN/Infinity would be passed on as tokens a strict JSON client cannot parse.
    raise ValueError(f"{name} is not JSON")
