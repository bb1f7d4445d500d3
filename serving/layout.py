"""TF Serving's model directory layout, shared by the server, the Pusher and rollback.

    <model_base_path>/
        3/                     a version: saved_model.pb, variables/, assets/, assets.extra/
        7/                     the highest number is what the `latest` policy serves
        .incoming-8-<pid>/     a push in progress (a non-numeric name: TF Serving ignores it)
        .pushes/7.json         the Pusher's record of version 7 (components/pusher/records.py)
        .rolled_back/5/        a version taken out of service by rollback (serving/rollback.py),
            ROLLBACK_NOTE.json     with a note saying when, why and by whom

Only children whose name is a non-negative integer are versions; TF Serving skips
everything else, which is what makes staging, record and rollback folders safe.
These names are defined here only: the Pusher, rollback and the dashboard import them.

Layer: bottom, shared with the Pusher and rollback. Imports the standard library only.
"""
from __future__ import annotations

from pathlib import Path

STAGING_PREFIX = ".incoming-"
ROLLED_BACK_DIR = ".rolled_back"
PUSH_RECORDS_DIR = ".pushes"
"""`<model_base_path>/.pushes/<version>.json`: the push record of each version number ever handed out."""
ROLLBACK_NOTE_FILE = "ROLLBACK_NOTE.json"
"""Written into a rolled-back version's folder, `.rolled_back/<version>/`."""
SAVED_MODEL_FILE = "saved_model.pb"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
LABELS_FILE = Path("assets") / "labels.txt"


def parse_version(name: str) -> int | None:
    """The version number a folder name stands for, or None if it is not a version."""
    if name.isascii() and name.isdigit():
        return int(name)
    return None


def list_versions(model_base_path: str | Path) -> list[int]:
    """Version numbers present under `model_base_path`, ascending. Missing base: []."""
    base = Path(model_base_path)
    if not base.is_dir():
        return []
    versions = []
    for child in base.iterdir():
        version = parse_version(child.name)
        if version is not None and child.is_dir():
            versions.append(version)
    return sorted(versions)


def version_path(model_base_path: str | Path, version: int) -> Path:
    return Path(model_base_path) / str(version)


def push_record_path(model_base_path: str | Path, version: int) -> Path:
    return Path(model_base_path) / PUSH_RECORDS_DIR / f"{version}.json"


def rolled_back_dir(model_base_path: str | Path) -> Path:
    return Path(model_base_path) / ROLLED_BACK_DIR


def rollback_note_path(model_base_path: str | Path, version: int) -> Path:
    return rolled_back_dir(model_base_path) / str(version) / ROLLBACK_NOTE_FILE
