"""The web page's files (serving/ui/) and the document that tells the page where it runs.

Both servers that show the page mount these routes: signflow's model server
(serving/ui_routes.py, at /ui/ on its REST port) and `signflow ui --api URL`
(serving/ui_command.py, on a port of its own in front of TF Serving).

    GET /ui            -> 308 to /ui/
    GET /ui/           the page (index.html)
    GET /ui/<file>     its scripts and style sheet (only the files in serving/ui/)
    GET /ui/config.json  PageConfig: the mode, the models, what the server offers

The files are plain HTML, CSS and JavaScript modules, read once when the routes
are built: there is no build step and no third-party script. Every answer
carries a Content-Security-Policy that allows the page's own files only.

Layer: transport (static). Imports Starlette, the standard library and the contract
(itself standard library only), so `signflow ui` starts without TensorFlow.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from serving.contract import UNKNOWN_LABEL

UI_DIR = Path(__file__).resolve().parent / "ui"
UI_PATH = "/ui"
CONFIG_FILE = "config.json"

SIGNFLOW_MODE = "signflow"
"""The page is served by signflow's model server: every route is there."""
TF_SERVING_MODE = "tf-serving"
"""The page is served by `signflow ui --api URL`: TF Serving's /v1 API only (through that command)."""

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
HEADERS = {
    # The page's own files and same-origin requests only; data: and blob: for the previews.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass
class PageConfig:
    """What the page needs to know about the server it talks to (GET /ui/config.json)."""

    mode: str
    """SIGNFLOW_MODE or TF_SERVING_MODE."""
    models: list[str]
    """The model names the page offers (signflow: every configured model; TF Serving: --model_name)."""
    api: str | None = None
    """TF_SERVING_MODE: the TF Serving REST URL the requests are forwarded to (shown on the page)."""
    max_request_bytes: int | None = None
    """Largest request body the server accepts; the page refuses bigger images before sending them."""
    max_image_pixels: int | None = None
    feedback: dict = field(default_factory=lambda: {"enabled": False, "token_required": False})
    """{"enabled": --feedback_dir is set, "token_required": a token is configured}."""
    rollback: dict = field(default_factory=lambda: {"offered": False, "token_required": False, "why_not": None})
    """{"offered", "token_required", "why_not": the reason it is not offered, in words}."""
    dashboard: bool = False
    """signflow's /signflow routes are there (versions, status)."""
    unknown_label: str = UNKNOWN_LABEL
    """predict_label's answer for no enrolled signer: shown as such, never offered as a signer's name."""

    def to_json(self) -> dict:
        return asdict(self)


def page_routes(config: Callable[[], PageConfig]) -> list[BaseRoute]:
    """The page's routes; `config()` is called for each GET /ui/config.json (models can change at run time)."""
    files: dict[str, tuple[bytes, str]] = {}
    for path in sorted(UI_DIR.iterdir()):
        kind = _CONTENT_TYPES.get(path.suffix)
        if kind is not None and path.is_file():
            files[path.name] = (path.read_bytes(), kind)
    if "index.html" not in files:
        raise FileNotFoundError(f"the web page is missing: no index.html in {UI_DIR}")

    async def redirect(request: Request) -> Response:
        return RedirectResponse(f"{UI_PATH}/", status_code=308)

    async def page_file(request: Request) -> Response:
        name = request.path_params.get("name") or "index.html"
        if name == CONFIG_FILE:
            return Response(json.dumps(config().to_json()).encode("utf-8"), media_type="application/json",
                            headers=HEADERS)
        found = files.get(name)
        if found is None:
            return Response(b"Not Found\n", status_code=404, media_type="text/plain", headers=HEADERS)
        body, kind = found
        return Response(body, media_type=kind, headers=HEADERS)

    return [
        Route(UI_PATH, redirect, methods=["GET", "HEAD"]),
        Route(f"{UI_PATH}/", page_file, methods=["GET", "HEAD"]),
        Route(UI_PATH + "/{name}", page_file, methods=["GET", "HEAD"]),
    ]
