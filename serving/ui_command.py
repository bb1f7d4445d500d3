"""`signflow ui --api URL`: the web page on a port of its own, in front of a real TF Serving.

Where `tensorflow_model_server` serves the model, nothing serves signflow's page.
This command does: it serves the same files as the model server's /ui/ and
forwards the page's /v1 requests to TF Serving's REST API at --api, so the page
talks to one origin and TF Serving needs no CORS set-up. Only TF Serving's API
is there: the page says that corrections (feedback) and the dashboard need
signflow's server, and names the signers from TF Serving's `:classify` answer
instead of the model folder.

    signflow ui --api http://127.0.0.1:8501 [--model_name xception] [--host 127.0.0.1] [--port 8502]
    python -m serving ui ...            the same, without TFX (also `signflow-serve ui ...`)

Forwarding answers as TF Serving did (status, body, content type), except:
502 `{"error"}` when TF Serving does not answer, 504 past --api_timeout_seconds,
413 for a body over --max_request_bytes, 404 for anything but GET/POST under /v1/.

Layer: entry point. Imports Starlette, uvicorn, requests, serving.settings (the
request limit's default) and serving.ui_page; never TensorFlow, so it starts in
a fraction of a second.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
from urllib.parse import urlsplit

import requests
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from serving.settings import DEFAULT_MAX_REQUEST_BYTES
from serving.ui_page import TF_SERVING_MODE, UI_PATH, PageConfig, page_routes

log = logging.getLogger(__name__)

DEFAULT_API = "http://127.0.0.1:8501"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8502
DEFAULT_MODEL = "xception"
DEFAULT_API_TIMEOUT_SECONDS = 60.0
# Headers of TF Serving's answer that reach the page.
_PASSED_HEADERS = ("content-type", "x-model-version")


class _Uvicorn(uvicorn.Server):
    # NOTE: the signals are main()'s: uvicorn's own handling re-raises SIGTERM once it has shut
    # down, and a stop asked for is a clean exit (0), as for the model server.
    @contextlib.contextmanager
    def capture_signals(self):
        yield

    def stop(self) -> None:
        self.should_exit = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `signflow ui` (pipeline/cli.py) and `python -m serving ui` (serving/__main__.py)."""
    parser.add_argument("--api", default=DEFAULT_API, metavar="URL",
                        help=f"TF Serving's REST API, e.g. http://serving-host:8501 (default: {DEFAULT_API})")
    parser.add_argument("--model_name", action="append", metavar="NAME",
                        help=f"a model the page offers; repeat for several (default: {DEFAULT_MODEL})")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"interface to listen on (default: {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port of the page (default: {DEFAULT_PORT})")
    parser.add_argument("--api_timeout_seconds", type=float, default=DEFAULT_API_TIMEOUT_SECONDS,
                        help=f"how long to wait for TF Serving (default: {DEFAULT_API_TIMEOUT_SECONDS:g})")
    parser.add_argument("--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help=f"largest request forwarded (default: {DEFAULT_MAX_REQUEST_BYTES})")


def check_api_url(url: str) -> str:
    """`url` without a trailing slash; ValueError unless it is an http(s) URL with a host and no query."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"--api must be an http:// or https:// URL such as {DEFAULT_API}; got {url!r}")
    return url.rstrip("/")


def create_app(api: str, models: list[str], *, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
               timeout: float = DEFAULT_API_TIMEOUT_SECONDS) -> Starlette:
    """The page's routes and the /v1 forwarder to `api` (checked with check_api_url)."""
    api = check_api_url(api)

    def config() -> PageConfig:
        return PageConfig(mode=TF_SERVING_MODE, models=list(models), api=api, max_request_bytes=max_request_bytes)

    async def home(request: Request) -> Response:
        return RedirectResponse(f"{UI_PATH}/", status_code=307)

    async def forward(request: Request) -> Response:
        target = api + _raw_target(request)
        body = b""
        if request.method == "POST":
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_request_bytes:
                return _error(413, f"Request body of {declared} bytes exceeds the limit of {max_request_bytes} bytes")
            body = await request.body()
            if len(body) > max_request_bytes:
                return _error(413, f"Request body exceeds the limit of {max_request_bytes} bytes")
        headers = {"Content-Type": request.headers.get("content-type", "application/json")}
        try:
            answer = await asyncio.to_thread(
                requests.request, request.method, target, data=body or None, headers=headers,
                timeout=(min(timeout, 10.0), timeout), allow_redirects=False)
        except requests.Timeout:
            return _error(504, f"TF Serving at {api} did not answer within {timeout:g} seconds")
        except requests.RequestException as err:
            log.warning("TF Serving at %s is not answering: %s", api, err)
            return _error(502, f"TF Serving at {api} is not answering ({type(err).__name__})")
        passed = {name: answer.headers[name] for name in _PASSED_HEADERS if name in answer.headers}
        media_type = passed.pop("content-type", None)
        return Response(answer.content, status_code=answer.status_code, media_type=media_type, headers=passed)

    routes = [
        Route("/", home, methods=["GET", "HEAD"]),
        *page_routes(config),
        Route("/v1/{path:path}", forward, methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes)


def _raw_target(request: Request) -> str:
    """Path and query as the page sent them (percent-escapes intact)."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    query = request.scope.get("query_string", b"")
    return (raw + (b"?" + query if query else b"")).decode("latin-1")


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}).encode(), status_code=status, media_type="application/json")


def main(args: argparse.Namespace) -> int:
    """Serve the page until SIGINT/SIGTERM; 2 for a bad flag."""
    try:
        app = create_app(args.api, args.model_name or [DEFAULT_MODEL], max_request_bytes=args.max_request_bytes,
                         timeout=args.api_timeout_seconds)
    except ValueError as err:
        print(f"signflow ui: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Bound before the line is printed: whoever waits for it can connect at once.
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as err:
        print(f"signflow ui: error: cannot listen on {args.host}:{args.port}: {err.strerror or err}", file=sys.stderr)
        sock.close()
        return 1
    sock.listen(128)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"signflow ui: http://{host}:{sock.getsockname()[1]}{UI_PATH}/ in front of TF Serving at {args.api}",
          flush=True)
    server = _Uvicorn(uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.stop)
        await server.serve(sockets=[sock])

    asyncio.run(serve())
    return 0
