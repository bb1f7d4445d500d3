"""The REST transport: TF Serving's HTTP API on a Starlette app.

URL grammar, method dispatch and status codes are TF Serving's
(`model_servers/http_rest_api_util.cc`, `http_rest_api_handler.cc`,
`http_server.cc`): the /v1 regexes are matched case-insensitively against the
raw path plus query string, the verb and `metadata` are compared
case-sensitively, and every /v1 error is `{"error": "..."}` with the status its
code maps to. Everything past the URL is the handlers' job.

signflow additions, none of which change a body TF Serving would send:
- `X-Model-Version: <n>` on answers that came from a model version;
- bodies over --max_request_bytes are refused with 413 before they are read.

Routes outside /v1 (TF Serving's namespace, where anything unknown is a 400)
are passed in as `extra_routes`; the feedback endpoint will live in its own
route module and be mounted that way.
"""
from __future__ import annotations

import json
import logging
import re
import time
from typing import Awaitable, Callable, Sequence
from urllib.parse import unquote_to_bytes

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from serving import errors
from serving.handlers import Handlers, JsonResponse, ModelRef, with_deadline
from serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from serving.metrics import Metrics
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

_NOT_FOUND_PAGE = (
    "<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n"
    "The requested URL {} was not found on this server.\n</BODY></HTML>\n")


def error_response(err: errors.ServingError, headers: dict | None = None) -> Response:
    """The one place an error becomes an HTTP answer: TF Serving's {"error": message}."""
    return Response(_json_bytes(err.to_json()), status_code=err.http_status, media_type=_JSON, headers=headers)


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
            path = _raw_target(request)
            return Response(
                f"Unexpected path: {path}. Should be {self._settings.prometheus_path}",
                status_code=400, media_type="text/plain")
        return Response(self._metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def dispatch(self, request: Request) -> Response:
        target = _raw_target(request)
        if not _V1.fullmatch(target):
            page = _NOT_FOUND_PAGE.format(request.url.path)
            return Response(page, status_code=404, media_type="text/html")
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
                body = await _read_body(request, self._settings.max_request_bytes)
                call: Callable[[ModelRef, bytes], Awaitable[JsonResponse]] = {
                    "predict": self._handlers.predict_json,
                    "classify": self._handlers.classify_json,
                    "regress": self._handlers.regress_json,
                }[verb]
                answer = await with_deadline(call(ref, body), self._timeout, f"{verb} request")
            elif method == "GET" and (match := _GET.fullmatch(target)):
                ref = _model_ref(match)
                model_name = ref.name
                if not ref.name:
                    raise errors.InvalidArgument("Missing model name in request.")
                if match.group(4) == "metadata":
                    answer = self._handlers.model_metadata_json(ref)
                else:
                    answer = self._handlers.model_status_json(ref)
            else:
                raise errors.InvalidArgument(f"Malformed request: {method} {target}")
        except errors.ServingError as err:
            self._metrics.request(model_name, version, api, "REST", err.code.name, time.monotonic() - started)
            return error_response(err)
        except Exception as err:  # a bug, not a client error: say so, keep serving
            log.exception("Unhandled error for %s %s", method, target)
            failure = errors.Internal(f"Internal server error: {type(err).__name__}: {err}")
            self._metrics.request(model_name, version, api, "REST", failure.code.name, time.monotonic() - started)
            return error_response(failure)
        version = answer.version
        self._metrics.request(model_name, version, api, "REST", "OK", time.monotonic() - started)
        headers = {VERSION_HEADER: str(version)} if version is not None else None
        return Response(answer.body, media_type=_JSON, headers=headers)


def _raw_target(request: Request) -> str:
    """Path and query as sent (percent-escapes intact): what TF Serving matches its regexes on."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    query = request.scope.get("query_string", b"")
    target = raw + (b"?" + query if query else b"")
    return target.decode("latin-1")


def _decode(text: str | None) -> str | None:
    """curl_easy_unescape: %XX escapes only ('+' stays '+')."""
    if text is None:
        return None
    return unquote_to_bytes(text.encode("latin-1")).decode("utf-8", "surrogateescape")


def _model_ref(match: re.Match) -> ModelRef:
    version = match.group(2)
    if version is not None:
        number = int(version)
        if number > _INT64_MAX:
            raise errors.InvalidArgument(f"Failed to convert version: {version} to numeric.")
        version = number
    return ModelRef(name=_decode(match.group(1)) or "", version=version, label=_decode(match.group(3)))


async def _read_body(request: Request, limit: int) -> bytes:
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


def _json_bytes(document: dict) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogateescape")
