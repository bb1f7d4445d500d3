"""Rolling back: take the newest version (or every version newer than one) out of service.

TF Serving's `latest` policy serves the highest numbered folder under the model's
base path. Rolling back therefore means moving versions out of that folder, to
`<model_base_path>/.rolled_back/<version>/` (a non-numeric name, which servers
ignore), in one rename each, with a note saying when, why and by whom. A server
falls back to the previous version on its next poll.

This is the one implementation: `signflow rollback` (pipeline/training_server/rollback.py)
and the model server's `POST /signflow/models/<name>/rollback` (serving/ui_routes.py)
both call `roll_back`.

The note (`ROLLBACK_NOTE.json`) and the push records (`.pushes/<version>.json`),
both named in serving.layout, are read back by the Pusher (components/pusher/records.py,
as `RollbackNote` and `PushRecord`). Here they are plain JSON, so that the serving
side needs no components/.

Layer: building block, beside repository. Imports the standard library,
serving.contract and serving.layout only.
"""
from __future__ import annotations

import getpass
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.contract import fsync_dir, write_atomic
from serving.layout import (
    ROLLBACK_NOTE_FILE,
    list_versions,
    push_record_path,
    rollback_note_path,
    rolled_back_dir,
    version_path,
)


class RollbackRefused(Exception):
    """A rollback that would leave nothing to serve or names a version that is not there."""


@dataclass
class RollbackResult:
    rolled_back: list[int]
    """The versions moved out, oldest first; empty when `to` was already the newest."""
    serving: int
    """The highest version left in place: what a `latest` policy serves now."""


def read_push_record(model_base_path: str | Path, version: int) -> dict[str, Any] | None:
    """The push record of `version` as a JSON object, or None when there is none or it cannot be read."""
    path = push_record_path(model_base_path, version)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def roll_back(model_base_path: str | Path, to: int | None = None, reason: str = "",
              via: str | None = None) -> RollbackResult:
    """Move the newest version (or every version newer than `to`) to `.rolled_back/`.

    Versions move oldest first, so the one being served stays in place until the
    last rename and the server switches straight to the version left on top.
    Each move is a rename inside the model folder, hence atomic. Raises
    RollbackRefused when nothing would be left to serve, `to` is not a live
    version, or `.rolled_back/` already holds a version being moved.
    `via` (e.g. "POST /signflow/models/xception/rollback from 127.0.0.1") is
    recorded in the note beside the user and host of this process.
    """
    base = Path(model_base_path)
    live = list_versions(base)
    if not live:
        raise RollbackRefused(f"no versions under {base}")
    if to is None:
        if len(live) == 1:
            raise RollbackRefused(
                f"refusing to roll back version {live[0]}: it is the only version under {base}, "
                "nothing would be served")
        doomed = [live[-1]]
    elif to not in live:
        raise RollbackRefused(f"version {to} does not exist under {base} (versions: {', '.join(map(str, live))})")
    else:
        doomed = [version for version in live if version > to]
    serving_after = max(version for version in live if version not in doomed)
    target = rolled_back_dir(base)
    clashes = [version for version in doomed if (target / str(version)).exists()]
    if clashes:
        raise RollbackRefused(
            f"{target} already holds {', '.join(map(str, clashes))} (restored by hand?); move it away first")
    target.mkdir(exist_ok=True)
    for version in doomed:
        destination = target / str(version)
        os.rename(version_path(base, version), destination)
        note = rollback_note(version, reason, serving_after, read_push_record(base, version), via)
        write_atomic(destination / ROLLBACK_NOTE_FILE, note)  # destination: the folder just renamed
    fsync_dir(base)
    fsync_dir(target)
    return RollbackResult(rolled_back=doomed, serving=serving_after)


def rollback_note(version: int, reason: str, serving_after: int | None, push: dict[str, Any] | None,
                  via: str | None = None) -> str:
    """The note's JSON text, stamped with the current time, user and host (records.RollbackNote reads it)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        # No passwd entry (e.g. an arbitrary uid in a container).
        user = str(os.getuid())
    now = time.time()
    note = {
        "version": version,
        "rolled_back_at": now,
        "rolled_back_at_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "reason": reason,
        "user": user,
        "host": socket.gethostname(),
        "serving_after": serving_after,
        "push": push,
    }
    if via:
        note["via"] = via
    return json.dumps(note, indent=2, sort_keys=True) + "\n"


def read_rollback_note(model_base_path: str | Path, version: int) -> dict[str, Any] | None:
    """The note of a rolled-back version as a JSON object, or None."""
    path = rollback_note_path(model_base_path, version)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None
