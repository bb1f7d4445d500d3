"""What the Pusher and `signflow rollback` remember beside TF Serving's version folders.

    <model_base_path>/
        .pushes/<version>.json          one push record per version number ever handed out
        .rolled_back/<version>/         a version taken out of service
            ROLLBACK_NOTE.json          when, why and by whom (written by serving.rollback)
        .pinned                         versions retention must keep, one per line ('#' comments)

The first three names are serving.layout's (PUSH_RECORDS_DIR, ROLLED_BACK_DIR,
ROLLBACK_NOTE_FILE), shared with rollback and the model server's dashboard.

All of these have non-integer names, so TF Serving and signflow's server never
mistake them for versions. Push records outlive their version folder: they are
what keeps a version number from ever being handed out twice, and what tells
the Pusher which Model artifact a rolled-back version came from, and what the
dashboard (serving/model_folder.py) and `signflow versions` show about a version:
its pipeline run, the spans and record counts it was trained on, its eval metrics
and its per-signer accuracy.

Paths are strings, read and written through components.storage
(tf.io.gfile), so a model folder on gs:// or s3:// works like a local one.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from components import storage
from serving.layout import PUSH_RECORDS_DIR, ROLLBACK_NOTE_FILE, ROLLED_BACK_DIR, parse_version

# Accepted wherever a model folder is passed: callers outside the Pusher hold Paths.
PathLike = str | os.PathLike

PIN_FILE = ".pinned"

# Push record states. A record whose state is STAGING but whose folder never
# appeared belongs to a push that crashed: its number stays used. One whose
# folder did appear is adopted as LIVE by the next push (publish.adopt_published_versions).
STAGING = "staging"
LIVE = "live"
FAILED = "failed"


@dataclass
class PushRecord:
    """One push: the version number it got and the Model artifact it came from."""

    version: int
    model_name: str
    model_uri: str
    state: str = STAGING
    model_id: int | None = None
    pipeline_name: str | None = None
    pipeline_run_id: str | None = None
    source_path: str | None = None
    reserved_at: float | None = None
    pushed_at: float | None = None
    removed_at: float | None = None
    # The process that reserved the number, and its host: tells a push that died from one still running.
    pid: int | None = None
    host: str | None = None
    # Set instead of pushed_at when the push died after publishing and a later push adopted the version.
    adopted_at: float | None = None
    # The Evaluator's overall metrics of this model (components.pusher.evaluation says which are kept).
    eval_metrics: dict[str, float] = field(default_factory=dict)
    # Per signer (the Evaluator's `label` slices): {"accuracy": float, "correct": int, "total": int}.
    per_signer: dict[str, dict[str, float | int]] = field(default_factory=dict)
    # The spans of the Examples the model was trained on, and their record counts summed
    # (serving.model_folder.record_counts); empty when the Pusher was not given the Examples.
    spans: list[int] = field(default_factory=list)
    record_counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "PushRecord":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PushRecord":
        """A record from its JSON object; keys this version does not know are ignored."""
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass
class RollbackNote:
    """Why a version left the watched folder; written next to its moved files by serving.rollback.roll_back."""

    version: int
    rolled_back_at: float
    reason: str
    user: str
    host: str
    serving_after: int | None
    push: PushRecord | None

    @classmethod
    def from_json(cls, text: str) -> "RollbackNote":
        data = json.loads(text)
        push = data.get("push")
        return cls(
            version=int(data["version"]),
            rolled_back_at=float(data["rolled_back_at"]),
            reason=str(data.get("reason", "")),
            user=str(data.get("user", "")),
            host=str(data.get("host", "")),
            serving_after=data.get("serving_after"),
            push=PushRecord.from_dict(push) if isinstance(push, dict) else None,
        )


def records_dir(model_base_path: PathLike) -> str:
    return storage.join(os.fspath(model_base_path), PUSH_RECORDS_DIR)


def push_record_path(model_base_path: PathLike, version: int) -> str:
    """serving.layout.push_record_path as a string (a Path would turn "gs://" into "gs:/")."""
    return storage.join(records_dir(model_base_path), f"{version}.json")


def rolled_back_dir(model_base_path: PathLike) -> str:
    return storage.join(os.fspath(model_base_path), ROLLED_BACK_DIR)


def read_record(model_base_path: PathLike, version: int) -> PushRecord | None:
    """The push record of `version`, or None if there is none or it is unreadable.

    A record can be unreadable only if a push died while creating it, before any
    of its files were copied, so treating it as absent loses nothing.
    """
    try:
        return PushRecord.from_json(storage.read_text(push_record_path(model_base_path, version)))
    except (OSError, ValueError, TypeError, storage.StorageError):
        return None


def recorded_versions(model_base_path: PathLike) -> list[int]:
    """Every version number a push record exists for (handed out at least once), ascending."""
    names = storage.listdir(records_dir(model_base_path))
    versions = (parse_version(name.removesuffix(".json")) for name in names if name.endswith(".json"))
    return sorted(v for v in versions if v is not None)


def create_record_exclusively(model_base_path: PathLike, record: PushRecord) -> bool:
    """Create the record file only if no record for that version exists yet.

    On local disk O_EXCL makes this the reservation of the version number: two
    Pushers racing for the same number cannot both win. On an object store it is
    a check then a write (storage.create_exclusively): one Pusher per model folder.
    Returns False if the number is taken.
    """
    storage.makedirs(records_dir(model_base_path))
    return storage.create_exclusively(push_record_path(model_base_path, record.version), record.to_json())


def update_record(model_base_path: PathLike, record: PushRecord) -> None:
    """Replace the record of `record.version` atomically."""
    storage.write_atomic(push_record_path(model_base_path, record.version), record.to_json())


def rolled_back_versions(model_base_path: PathLike) -> list[int]:
    """Versions under `.rolled_back/`, ascending."""
    directory = rolled_back_dir(model_base_path)
    versions = (parse_version(name) for name in storage.listdir(directory) if storage.isdir(storage.join(directory, name)))
    return sorted(v for v in versions if v is not None)


def read_rollback_note(model_base_path: PathLike, version: int) -> RollbackNote | None:
    try:
        path = storage.join(rolled_back_dir(model_base_path), str(version), ROLLBACK_NOTE_FILE)
        return RollbackNote.from_json(storage.read_text(path))
    except (OSError, ValueError, TypeError, KeyError, storage.StorageError):
        return None


def find_rolled_back_push(model_base_path: PathLike, model_uri: str) -> tuple[int, RollbackNote | None] | None:
    """The rolled-back version that `model_uri` was pushed as, with its note; None if none was.

    The push record is the authority on which model a version held; the note's
    copy of it covers a record that was deleted by hand.
    """
    for version in reversed(rolled_back_versions(model_base_path)):
        note = read_rollback_note(model_base_path, version)
        record = read_record(model_base_path, version) or (note.push if note else None)
        if record is not None and record.model_uri == model_uri:
            return version, note
    return None


def read_pins(model_base_path: PathLike) -> set[int]:
    """Versions listed in `<model_base_path>/.pinned`. Raises ValueError on a line that is not a version.

    A typo must not silently unpin a version (retention would then delete it),
    so a bad line is an error rather than skipped.
    """
    path = storage.join(os.fspath(model_base_path), PIN_FILE)
    if not storage.exists(path):
        return set()
    pins = set()
    for number, line in enumerate(storage.read_text(path).splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        version = parse_version(text)
        if version is None:
            raise ValueError(f"{path}:{number}: {text!r} is not a version number")
        pins.add(version)
    return pins
