"""signflow's routes for the web page: the page itself, the versions of a model, and rollback.

    GET  /ui/ ...                            the page (serving/ui_page.py), when --ui is on
    GET  /signflow/models/<name>/versions    read-only: what the model folder holds, per version
    POST /signflow/models/<name>/rollback    take the newest version (or every one newer than "to") out

**Versions** answers `{"model", "serving_version", "versions": [...], "rollback": {...}}`:
each version as serving.model_folder describes it (labels, signatures, push record
with its lineage and per-signer accuracy, rollback note) plus `status` ("serving",
"loading", "failed", "older" or "rolled back") and the server's `state` and `error`
for it. The training server's last cycle (--training_status_file) fills in the
spans and record counts of the version it pushed when its push record has none
(`lineage_source` says which).

**Rollback** takes an optional JSON body `{"to": <version>, "reason": "..."}` and
does what `signflow rollback [--to V] [--reason R]` does, through the same
function (serving.rollback.roll_back), on the model's --model_base_path. The
server then picks the change up on its next poll of the folder, as it would after
the command. Answers:

- 200 `{"model", "rolled_back": [versions], "serving_after": version}`;
- 400 `{"error"}`: a body that is not that object, or a refused rollback (the only
  version, a "to" that is not there), in the command's words;
- 401 (+ `WWW-Authenticate: Bearer`): a token is configured and the request's
  `Authorization: Bearer <token>` is missing or wrong;
- 403: no token is configured and --host is not loopback (the page then does not
  offer rollback at all);
- 404: the model is not configured on this server.

The token is the feedback endpoint's (--feedback_token or $SIGNFLOW_FEEDBACK_TOKEN),
checked the same way: the page asks for it once. Without one, rollback over HTTP
is allowed on a loopback --host only, the rule feedback follows.

Layer: REST transport (signflow's own routes, mounted by the server beside the
/v1 API). Imports Starlette, serving.errors, feedback (its Unauthenticated error),
model_folder, registry, rest, rollback, settings and ui_page.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from serving import errors, rest
from serving.feedback import Unauthenticated, check_bearer, token_digest
from serving.model_folder import LIVE, record_counts, versions_on_disk
from serving.registry import AVAILABLE, END, LOADING, START, Registry
from serving.rollback import RollbackRefused, roll_back
from serving.settings import FEEDBACK_TOKEN_ENV, Settings, is_loopback
from serving.ui_page import SIGNFLOW_MODE, PageConfig, page_routes

log = logging.getLogger(__name__)

VERSIONS_PATH = "/signflow/models/{name}/versions"
ROLLBACK_PATH = "/signflow/models/{name}/rollback"
# A rollback body is a version number and a sentence.
MAX_ROLLBACK_BODY_BYTES = 64 * 1024
MAX_REASON_CHARS = 1000
# Every method reaches the endpoints, which answer 405 in JSON (as the status route does) rather than Starlette's text.
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]

SERVING, LOADING_STATUS, FAILED, OLDER, ROLLED_BACK = "serving", "loading", "failed", "older", "rolled back"
# Where a version's spans and record counts come from (its `lineage_source`).
FROM_PUSH_RECORD, FROM_TRAINING_STATUS = "push record", "training status"


def _refuse_other_origins(request: Request) -> None:
    """Refuse a rollback a browser sends on behalf of another site's page (cross-site request forgery).

    Without a token, rollback is open to whatever runs on a loopback host, and any web
    page the user visits can make the browser POST to 127.0.0.1 (a plain-text body
    needs no CORS preflight). Browsers name the sending page's origin in `Origin`;
    only the server's own origin (the page at /ui/) may roll back. Clients that are
    not browsers send no Origin and are unaffected.
    """
    origin = request.headers.get("origin")
    if origin is None:
        return
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin.rstrip("/").lower() != own.lower():
        raise errors.from_code_name("PERMISSION_DENIED", f"Rollback from another origin ({origin[:200]}) is refused: "
                                                         "use the page this server serves at /ui/, or signflow rollback")


def routes(settings: Settings, registry: Registry) -> list[BaseRoute]:
    """The versions and rollback routes, and the page's when --ui is on; mount before rest.py's catch-all."""
    api = _Routes(settings, registry)
    mounted: list[BaseRoute] = [
        Route(VERSIONS_PATH, api.versions, methods=_ALL_METHODS),
        Route(ROLLBACK_PATH, api.rollback, methods=_ALL_METHODS),
    ]
    if settings.ui:
        mounted.extend(page_routes(api.page_config))
    return mounted


def rollback_offered(settings: Settings) -> tuple[bool, str | None]:
    """(whether the rollback route may be used at all, why not in words)."""
    if settings.feedback_token or is_loopback(settings.host):
        return True, None
    return False, (f"Rollback is not offered here: this server listens on {settings.host}, which is not a loopback "
                   f"address, and has no token (set --feedback_token or ${FEEDBACK_TOKEN_ENV}).")


class _Routes:
    def __init__(self, settings: Settings, registry: Registry):
        self._settings = settings
        self._registry = registry
        self._token_digest = token_digest(settings.feedback_token)
        # One rollback at a time in this server: two at once would both pick the same newest version.
        self._rollback_lock = asyncio.Lock()

    def page_config(self) -> PageConfig:
        offered, why_not = rollback_offered(self._settings)
        return PageConfig(
            mode=SIGNFLOW_MODE,
            models=[config.name for config in self._registry.configs()],
            max_request_bytes=self._settings.max_request_bytes,
            max_image_pixels=self._settings.max_image_pixels,
            feedback={"enabled": bool(self._settings.feedback_dir),
                      "token_required": bool(self._settings.feedback_token)},
            rollback={"offered": offered, "token_required": bool(self._settings.feedback_token), "why_not": why_not},
            dashboard=True,
        )

    # -- GET /signflow/models/<name>/versions ------------------------------------------------

    async def versions(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return _method_not_allowed(request.method, "GET, HEAD")
        try:
            name = request.path_params["name"]
            config = self._model_config(name)
            on_disk = await asyncio.to_thread(versions_on_disk, config.base_path)
            training = None
            if self._settings.training_status_file:
                training, _ = await asyncio.to_thread(rest.read_training_status, self._settings.training_status_file)
            document = self._versions_document(name, config.base_path, on_disk, training)
        except errors.ServingError as err:
            return rest.error_response(err)
        except Exception:  # a bug, not a client error: say so, keep serving
            log.exception("Unhandled error listing the versions for %s", request.url.path)
            return rest.error_response(errors.Internal(errors.INTERNAL_MESSAGE))
        return _json(document, 200)

    def _versions_document(self, name: str, base_path: str, on_disk: list, training: dict | None) -> dict:
        try:
            records = {record.version: record for record in self._registry.status(name)}
        except errors.NotFound:
            records = {}
        available = [version for version, record in records.items() if record.state == AVAILABLE]
        serving = max(available) if available else None
        last_cycle = training.get("last_cycle") if isinstance(training, dict) else None
        versions = []
        for info in on_disk:
            entry = info.to_json()
            record = records.get(info.version) if info.place == LIVE else None
            entry["state"] = record.state if record is not None else None
            entry["error"] = record.error_message if record is not None and record.error_message else None
            entry["status"] = _status(info.place, info.version, serving, record)
            entry["lineage_source"] = FROM_PUSH_RECORD if info.spans or info.record_counts else None
            if not entry["lineage_source"] and _pushed_by(last_cycle, info.version):
                _fill_from_cycle(entry, last_cycle)
            versions.append(entry)
        offered, why_not = rollback_offered(self._settings)
        return {
            "model": name,
            "base_path": base_path,
            "serving_version": serving,
            "versions": versions,
            "rollback": {"offered": offered, "token_required": bool(self._settings.feedback_token),
                         "why_not": why_not},
        }

    # -- POST /signflow/models/<name>/rollback ----------------------------------------------------

    async def rollback(self, request: Request) -> Response:
        if request.method != "POST":
            return _method_not_allowed(request.method, "POST")
        try:
            return await self._rollback(request)
        except errors.ServingError as err:
            headers = {"WWW-Authenticate": 'Bearer realm="signflow"'} if isinstance(err, Unauthenticated) else None
            return rest.error_response(err, headers)
        except Exception:  # a bug, not a client error: say so, keep serving
            log.exception("Unhandled error in rollback for %s", request.url.path)
            return rest.error_response(errors.Internal(errors.INTERNAL_MESSAGE))

    async def _rollback(self, request: Request) -> Response:
        offered, why_not = rollback_offered(self._settings)
        if not offered:
            raise errors.from_code_name("PERMISSION_DENIED", why_not)
        _refuse_other_origins(request)
        self._authenticate(request.headers.get("authorization"))
        name = request.path_params["name"]
        config = self._model_config(name)
        to, reason = _rollback_body(await rest.read_body(request, MAX_ROLLBACK_BODY_BYTES))
        client = request.client.host if request.client else "an unknown client"
        via = f"POST {request.url.path} from {client}"
        async with self._rollback_lock:
            try:
                result = await asyncio.to_thread(roll_back, config.base_path, to, reason, via)
            except RollbackRefused as err:
                raise errors.FailedPrecondition(str(err)) from None
            except OSError as err:
                log.error("Rollback of %s failed: %s", name, err)
                raise errors.Internal(f"Could not move the version folder: {err.strerror or err}") from None
        if result.rolled_back:
            log.warning("rolled back %s version(s) %s %s (reason: %s); version %d serves next", name,
                        ", ".join(map(str, result.rolled_back)), via, reason or "none given", result.serving)
        return _json({"model": name, "rolled_back": result.rolled_back, "serving_after": result.serving}, 200)

    def _authenticate(self, header: str | None) -> None:
        check_bearer(self._token_digest, header, "Rollback", "The token is not valid")

    def _model_config(self, name: str):
        for config in self._registry.configs():
            if config.name == name:
                return config
        raise errors.NotFound(f"Model {name} is not served by this server")


def _status(place: str, version: int, serving: int | None, record) -> str:
    if place != LIVE:
        return ROLLED_BACK
    if version == serving:
        return SERVING
    if record is not None and record.state in (START, LOADING):
        return LOADING_STATUS
    if record is not None and record.state == END and record.error_message:
        return FAILED
    return OLDER


def _pushed_by(cycle: Any, version: int) -> bool:
    return isinstance(cycle, dict) and str(cycle.get("pushed_version")) == str(version)


def _fill_from_cycle(entry: dict, cycle: dict) -> None:
    """The spans and record counts of the training cycle that pushed this version (its status file)."""
    ingest = cycle.get("ingest")
    if not isinstance(ingest, dict):
        return
    span = ingest.get("span")
    if isinstance(span, int) and not isinstance(span, bool):
        entry["spans"] = [span]
    entry["record_counts"] = record_counts([ingest])
    entry["pipeline_run_id"] = entry["pipeline_run_id"] or (cycle.get("run_id") if isinstance(cycle.get("run_id"), str)
                                                            else None)
    entry["lineage_source"] = FROM_TRAINING_STATUS


def _rollback_body(body: bytes) -> tuple[int | None, str]:
    if not body.strip():
        return None, ""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise errors.InvalidArgument("The rollback body must be a JSON object like {\"to\": 3, \"reason\": \"...\"}"
                                     ) from None
    if not isinstance(document, dict):
        raise errors.InvalidArgument("The rollback body must be a JSON object like {\"to\": 3, \"reason\": \"...\"}")
    unknown = sorted(set(document) - {"to", "reason"})
    if unknown:
        raise errors.InvalidArgument(f"Unknown field(s) in the rollback body: {', '.join(unknown)}")
    to = document.get("to")
    if to is not None and (isinstance(to, bool) or not isinstance(to, int) or to < 0):
        raise errors.InvalidArgument("\"to\" must be a version number")
    reason = document.get("reason", "")
    if reason is None:
        reason = ""
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise errors.InvalidArgument(f"\"reason\" must be text of at most {MAX_REASON_CHARS} characters")
    return to, reason


def _method_not_allowed(method: str, allowed: str) -> Response:
    return Response(json.dumps({"error": f"Method {method} not allowed; use {allowed.split(',')[0]}"}).encode(),
                    status_code=405, media_type="application/json", headers={"Allow": allowed})


def _json(document: dict, status: int) -> Response:
    # ASCII escapes: strings from the folder's files may hold anything JSON can.
    return Response(json.dumps(document).encode("ascii"), status_code=status, media_type="application/json")
