"""The feedback endpoint: `POST /v1/models/<name>/feedback` writes labelled images into the ingestion inbox.

A client that knows the right answer for an image sends it back in predict's
body format plus a label per instance:

    {"instances": [{"image_bytes": {"b64": "..."}, "label": "signer_03"}, ...]}
    {"inputs": {"image_bytes": [{"b64": "..."}, ...], "label": ["signer_03", ...]}}

or in the seed's record shape, the image under "image" as {"b64": ...} or as bare
base64 text: {"instances": [{"image": "<base64>", "label": "signer_03"}]}. Base64
is strict (TF Serving's rule) in every form.

Each instance is checked as ingestion would check it (serving.images decodes
and inspects the image; serving.contract.check_label applies the label rule in
its strict mode: required, no surrounding whitespace, at most MAX_LABEL_CHARS).
The valid ones become ONE new JSON Lines file in --feedback_dir per request,
each line in the record shape ingestion reads:

    {"image": {"b64": ...}, "label": ..., "sha256": ..., "model": ..., "model_version": ..., "received_at": ...}

(ingestion reads "image" and "label" and ignores the other keys). The file is
written with serving.contract.write_atomic (a hidden `.feedback-*.tmp` file,
fsynced, renamed to `feedback-<UTC time>-<random>.jsonl`): ingestion skips
dotfiles and *.tmp, so it never sees half a file.

Answers (bodies are JSON):
- 200 `{"accepted": n, "rejected": [{"index", "reason", "error"}], "file": name}`:
  at least one instance was written; `rejected` lists the others (possibly none).
- 400 `{"error": ..., "rejected": [...]}`: no instance was valid, nothing written.
- 400 `{"error": ...}`: the body is not UTF-8 JSON, or not one of the two shapes;
  or the model name in the URL is not UTF-8 once percent-decoded.
- 401 (+ `WWW-Authenticate: Bearer`): a token is configured and the request's
  `Authorization: Bearer <token>` is missing or wrong.
- 404: the model is not served (TF Serving's "Servable not found" wording), or
  feedback is not enabled (no --feedback_dir).
- 413: body over --max_request_bytes. 500: the file could not be written.

Without a token, feedback is accepted only on a loopback --host (settings.py
refuses to start otherwise) and a warning is logged at start.

The serving side never imports the training side: the record keys, reason
codes and label rule come from serving.contract, which both sides share, and
tests/serving/test_feedback.py proves with components.ingest.records that
ingestion accepts what this writes.

Layer: REST transport (signflow's own route, mounted by the server beside the
/v1 API). Imports Starlette, serving.contract, errors, images, metrics,
registry, rest, rest_codec, settings, and handlers for the instance limit's wording.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from serving import contract, errors, images, rest, rest_codec
from serving.contract import InvalidRecord, json_type_name
from serving.handlers import too_many_instances
from serving.metrics import Metrics
from serving.registry import Registry
from serving.settings import Settings

log = logging.getLogger(__name__)

FEEDBACK_PATH = "/v1/models/{name}/feedback"
FILE_PREFIX = "feedback-"
FILE_SUFFIX = ".jsonl"
# A temp file this old was left by a crash (a write takes milliseconds); removed at start.
STALE_TEMP_SECONDS = 3600


class Unauthenticated(errors.ServingError):
    code = errors.Code.UNAUTHENTICATED


def token_digest(token: str) -> bytes | None:
    """What check_bearer compares with: the token's sha256, or None when no token is configured."""
    return hashlib.sha256(token.encode("ascii")).digest() if token else None


def check_bearer(digest: bytes | None, header: str | None, what: str, invalid: str) -> None:
    """Raise Unauthenticated unless `header` is `Bearer <token>` with the configured token (nothing when none is).

    Compared as digests: the time taken does not depend on what was sent. Shared by
    feedback and signflow's rollback route (serving/ui_routes.py), which take the same token.
    """
    if digest is None:
        return
    scheme, _, credentials = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Unauthenticated(f"{what} needs an 'Authorization: Bearer <token>' header")
    sent = hashlib.sha256(credentials.strip().encode("latin-1", "replace")).digest()
    if not hmac.compare_digest(sent, digest):
        raise Unauthenticated(invalid)


@dataclass(frozen=True)
class Rejection:
    """One instance that was not written, and why (`reason` is a stable code)."""

    index: int
    reason: str
    error: str

    def to_json(self) -> dict:
        return {"index": self.index, "reason": self.reason, "error": self.error}


@dataclass(frozen=True)
class Item:
    """One valid instance: the decoded image and its label."""

    index: int
    image: bytes
    sha256: str
    label: str


def check_label(value: Any) -> str:
    """The label if ingestion accepts it and it is one a person meant; raises contract.InvalidRecord otherwise."""
    return contract.check_label(value, lenient=False)


def parse_feedback(body: bytes, *, max_instances: int, max_pixels: int) -> tuple[list[Item], list[Rejection]]:
    """Split a feedback body into valid items and rejections, in instance order.

    Raises errors.InvalidArgument when the body as a whole is unusable (not JSON,
    neither shape, no instances, too many).
    """
    rows = _rows(_parse_json(body), max_instances)
    items: list[Item] = []
    rejected: list[Rejection] = []
    for index, row in enumerate(rows):
        try:
            items.append(_check_instance(index, row, max_pixels))
        except InvalidRecord as err:
            rejected.append(Rejection(index, err.reason, err.message))
    return items, rejected


def _parse_json(body: bytes) -> Any:
    if not body.strip():
        raise errors.InvalidArgument("JSON Parse error: The document is empty")
    # Lone surrogate escapes are let through to be refused one instance at a time (a label
    # holding one is invalid_label), as ingestion quarantines one record, not the file.
    return rest_codec.parse_json(body, trailing=False, lone_surrogates=True)


def _rows(document: Any, max_instances: int) -> list:
    if not isinstance(document, dict):
        raise errors.InvalidArgument(f"The feedback body must be a JSON object, got {json_type_name(document)}")
    has_instances, has_inputs = contract.INSTANCES_KEY in document, contract.INPUTS_KEY in document
    if has_instances == has_inputs:
        raise errors.InvalidArgument(
            "The feedback body needs exactly one of 'instances' (a list of {\"image_bytes\": {\"b64\": ...}, "
            "\"label\": ...}) or 'inputs' ({\"image_bytes\": [...], \"label\": [...]})")
    if has_instances:
        rows = document[contract.INSTANCES_KEY]
        if not isinstance(rows, list):
            raise errors.InvalidArgument(f"'instances' must be a list, got {json_type_name(rows)}")
    else:
        try:
            rows = contract.columns_to_rows(document[contract.INPUTS_KEY])
        except InvalidRecord as err:
            raise errors.InvalidArgument(err.message) from None
    if not rows:
        raise errors.InvalidArgument("No instances in the feedback request")
    if len(rows) > max_instances:
        raise too_many_instances(len(rows), max_instances)
    return rows


def _check_instance(index: int, row: Any, max_pixels: int) -> Item:
    if not isinstance(row, dict):
        raise InvalidRecord(contract.NOT_AN_OBJECT, f"an instance must be a JSON object, got {json_type_name(row)}")
    label = check_label(row.get(contract.RECORD_LABEL_KEY))  # cheap: before any image is decoded
    key = next((key for key in contract.RECORD_IMAGE_KEYS if key in row), None)
    if key is None:
        raise InvalidRecord(contract.MISSING_IMAGE,
                            f"no image under {' or '.join(repr(k) for k in contract.RECORD_IMAGE_KEYS)}")
    field = row[key]
    if isinstance(field, dict) and isinstance(field.get(contract.B64_KEY), str):
        text = field[contract.B64_KEY]
    elif key == contract.BARE_TEXT_IMAGE_KEY and isinstance(field, str):
        text = field
    else:
        raise InvalidRecord(contract.INVALID_IMAGE_FIELD, _image_field_error(key, field))
    try:
        # Strict: the body is predict's format, so TF Serving's base64 rule applies.
        data = images.decode_b64(text, lenient=False)
        info = images.inspect_image(data, max_pixels=max_pixels)
    except images.InvalidImage as err:
        raise InvalidRecord(err.reason, err.client_detail) from None
    return Item(index, data, info.sha256, label)


def _image_field_error(key: str, field: Any) -> str:
    if key == contract.BARE_TEXT_IMAGE_KEY:
        return f'"{key}" must be {{"b64": "<base64 text>"}} or base64 text, got {json_type_name(field)}'
    if isinstance(field, str):
        return f'"{key}" must be {{"b64": "<base64 text>"}}: a bare string is raw bytes to :predict, not base64'
    return f'"{key}" must be {{"b64": "<base64 text>"}}, got {json_type_name(field)}'


def feedback_record(item: Item, model: str, version: int, received_at: str) -> dict:
    """One inbox line: ingestion's record shape ("image", "label") plus provenance it ignores."""
    return {
        contract.BARE_TEXT_IMAGE_KEY: {contract.B64_KEY: base64.b64encode(item.image).decode("ascii")},
        contract.RECORD_LABEL_KEY: item.label,
        contract.SHA256_FEATURE: item.sha256,
        "model": model,
        "model_version": version,
        "received_at": received_at,
    }


def write_feedback_file(directory: str, records: list[dict], now: datetime | None = None) -> str:
    """Write `records` as a new JSON Lines file in `directory`, atomically. Returns the file's name.

    A reader sees the whole file or none, and a crash leaves at most a skipped
    dotfile (contract.write_atomic). The name has 48 random bits, so concurrent
    requests never collide.
    """
    now = now or datetime.now(timezone.utc)
    name = f"{FILE_PREFIX}{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{secrets.token_hex(6)}{FILE_SUFFIX}"
    data = b"".join(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n" for record in records)
    contract.write_atomic(os.path.join(directory, name), data)
    return name


def prepare_feedback_dir(directory: str) -> None:
    """Create the folder if needed, check it is writable, remove temp files a crash left behind."""
    os.makedirs(directory, exist_ok=True)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OSError(f"--feedback_dir {directory} is not writable")
    cutoff = time.time() - STALE_TEMP_SECONDS
    for name in os.listdir(directory):
        if name.startswith("." + FILE_PREFIX) and name.endswith(".tmp"):
            path = os.path.join(directory, name)
            try:
                # Only old ones: another server may share the folder and be writing now.
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
                    log.warning("removed %s, left by an interrupted feedback write", path)
            except OSError:
                pass


class FeedbackEndpoint:
    """The Starlette endpoint for POST /v1/models/<name>/feedback."""

    def __init__(self, settings: Settings, registry: Registry, metrics: Metrics, executor: Executor | None = None):
        self._settings = settings
        self._registry = registry
        self._metrics = metrics
        self._executor = executor
        self._directory = settings.feedback_dir
        # Compared as digests, so the comparison takes the same time whatever the length sent.
        self._token_digest = token_digest(settings.feedback_token)

    async def handle(self, request: Request) -> Response:
        """Answer one request (a bound method, so Starlette treats it as a request -> response endpoint)."""
        try:
            return await self._handle(request)
        except errors.ServingError as err:
            self._metrics.feedback(err.code.name)
            headers = None
            if isinstance(err, Unauthenticated):
                headers = {"WWW-Authenticate": 'Bearer realm="signflow feedback"'}
            return rest.error_response(err, headers)
        except Exception:  # a bug, not a client error: say so, keep serving
            log.exception("Unhandled error in feedback for %s", request.url.path)
            self._metrics.feedback(errors.Code.INTERNAL.name)
            return rest.error_response(errors.Internal(errors.INTERNAL_MESSAGE))

    async def _handle(self, request: Request) -> Response:
        if not self._directory:
            raise errors.NotFound("Feedback is not enabled on this server (start it with --feedback_dir)")
        self._authenticate(request.headers.get("authorization"))
        name = _model_name(request)
        # Only a served model takes feedback; the version that serves now is recorded with it.
        with self._registry.acquire(name) as lease:
            version = lease.version
        body = await rest.read_body(request, self._settings.max_request_bytes)
        items, rejected = await self._off_loop(
            parse_feedback, body, max_instances=self._settings.max_instances_per_request,
            max_pixels=self._settings.max_image_pixels)
        rejected_json = [rejection.to_json() for rejection in rejected]
        if not items:
            self._metrics.feedback(errors.Code.INVALID_ARGUMENT.name, name, 0, len(rejected))
            document = {"error": f"No valid instance in the feedback request ({len(rejected)} rejected); "
                                 "nothing was written", "rejected": rejected_json}
            return _json(document, 400)
        received_at = datetime.now(timezone.utc)
        stamp = received_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        records = [feedback_record(item, name, version, stamp) for item in items]
        try:
            file_name = await self._off_loop(write_feedback_file, self._directory, records, received_at)
        except OSError as err:
            log.error("Could not write feedback to %s: %s", self._directory, err)
            raise errors.Internal(
                f"Could not store the feedback (nothing was written): {err.strerror or err}") from None
        self._metrics.feedback("OK", name, len(items), len(rejected))
        log.info("feedback for %s: %d accepted, %d rejected -> %s", name, len(items), len(rejected), file_name)
        return _json({"accepted": len(items), "rejected": rejected_json, "file": file_name}, 200)

    def _authenticate(self, header: str | None) -> None:
        check_bearer(self._token_digest, header, "Feedback", "The feedback token is not valid")

    async def _off_loop(self, function, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(function, *args, **kwargs))


def routes(settings: Settings, registry: Registry, metrics: Metrics, executor: Executor | None = None
           ) -> list[BaseRoute]:
    """The feedback route, to mount before rest.py's /v1 catch-all.

    POST only: any other method on that path falls through to the /v1
    dispatcher and gets TF Serving's answer, exactly as before. Mounted even
    when feedback is off, so a client hears "not enabled" instead of TF
    Serving's "Malformed request".
    """
    if settings.feedback_dir:
        prepare_feedback_dir(settings.feedback_dir)
        if not settings.feedback_token:
            log.warning("Feedback (POST %s) is unauthenticated: no --feedback_token or $SIGNFLOW_FEEDBACK_TOKEN; "
                        "accepted because --host=%s is loopback", FEEDBACK_PATH, settings.host)
    endpoint = FeedbackEndpoint(settings, registry, metrics, executor)
    return [Route(FEEDBACK_PATH, endpoint.handle, methods=["POST"])]


_RAW_FEEDBACK_PATH = re.compile(r"/v1/models/([^/]+)/feedback")


def _model_name(request: Request) -> str:
    """The model name as the client escaped it, decoded as the /v1 dispatcher decodes names.

    The route matched the decoded path, where %2F is already a '/': a target that is not
    /v1/models/<one segment>/feedback as sent is TF Serving's (a name and no verb).
    """
    target = rest.raw_target(request)
    match = _RAW_FEEDBACK_PATH.fullmatch(target.partition("?")[0])
    if match is None:
        raise errors.InvalidArgument(f"Malformed request: {request.method} {target}")
    return rest.decode_segment(match.group(1), "Model name")


def _json(document: dict, status: int) -> Response:
    # Strings here are text quoted from the request, never bytes: no raw_bytes.
    return Response(rest_codec.json_bytes(document, raw_bytes=False), status_code=status,
                    media_type="application/json")
