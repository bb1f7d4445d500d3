"""Publishing a SavedModel as a new TF Serving version: numbered, atomic, with retention.

A push copies the model into a hidden staging folder inside the model folder
(`.incoming-<version>-<pid>`, a name TF Serving ignores), fsyncs every file and
folder, then renames the folder to `<version>` in one step. A model server that
polls the folder sees either no new version or a complete one. A push that dies
half-way leaves only its staging folder, which the next push removes once the
process that owned it is gone. A push that dies after the rename but before
recording the version as live leaves a complete, served version: the next push
adopts it (records it as live) rather than removing what TF Serving serves.

Standard library only (no TensorFlow), so a push is cheap to start.
"""
from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from components.pusher import records
from components.pusher.records import PushRecord
from serving.contract import fsync_dir
from serving.layout import SAVED_MODEL_FILE, STAGING_PREFIX, list_versions, parse_version, version_path

# Retention first renames a version to this hidden name, then deletes it, so a
# server never sees a numbered folder with half its files gone.
REMOVING_PREFIX = ".removing-"

Clock = Callable[[], float]

# (model folder, version) of the pushes this process is running: adoption must
# tell its own push in flight from one of its pushes that raised after the rename.
_publishing: set[tuple[str, int]] = set()


@dataclass(frozen=True)
class PushResult:
    version: int
    path: Path
    stale_removed: list[str]
    adopted: list[int]


@dataclass(frozen=True)
class Recovery:
    """What a push that died left behind and what was done about it."""

    stale_removed: list[str]  # staging and removal folders deleted
    adopted: list[int]  # complete versions whose record said staging, now recorded as live


def push_model(
    model_dir: str | Path,
    model_base_path: str | Path,
    record: PushRecord,
    clock: Clock = time.time,
) -> PushResult:
    """Copy the SavedModel in `model_dir` to a new version under `model_base_path`.

    The version is the clock's whole seconds, raised past every number ever used
    under this folder (live, rolled back, removed by retention, or reserved by a
    push that crashed), so versions strictly increase even if the clock goes back.
    `record` says where the model came from; its version and timestamps are set here.
    """
    model_dir = Path(model_dir)
    base = Path(model_base_path)
    if not (model_dir / SAVED_MODEL_FILE).is_file():
        raise FileNotFoundError(f"{model_dir} has no {SAVED_MODEL_FILE}: not a SavedModel")
    base.mkdir(parents=True, exist_ok=True)
    recovery = recover_interrupted_pushes(base)
    version = _reserve_version(base, record, clock)
    staging = base / f"{STAGING_PREFIX}{version}-{os.getpid()}"
    final = version_path(base, version)
    in_flight = (str(base.resolve()), version)
    _publishing.add(in_flight)
    try:
        try:
            _copy_saved_model(model_dir, staging)
            # The one step that makes the version visible. os.rename of a folder onto
            # an existing non-empty folder fails rather than merging, and the number
            # was reserved above, so an existing target would be a bug, not a race.
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            record.state = records.FAILED
            records.update_record(base, record)
            raise
        # Outside the inner try: once renamed the version is served, so a failure
        # from here on leaves the record saying "staging" for the next push to
        # adopt, never "failed".
        fsync_dir(base)
        record.state = records.LIVE
        record.pushed_at = clock()
        records.update_record(base, record)
    finally:
        _publishing.discard(in_flight)
    return PushResult(version=version, path=final, stale_removed=recovery.stale_removed, adopted=recovery.adopted)


def recover_interrupted_pushes(model_base_path: str | Path) -> Recovery:
    """Clean up after pushes and retentions that died: see remove_stale_folders and adopt_published_versions."""
    return Recovery(stale_removed=remove_stale_folders(model_base_path),
                    adopted=adopt_published_versions(model_base_path))


def adopt_published_versions(model_base_path: str | Path) -> list[int]:
    """Record as live every version folder whose push died after the rename. Returns those versions.

    The rename is a push's commit point: a numbered folder exists only once its
    copy is complete and fsynced, so a record still saying `staging` next to one
    means the push died before writing `live`. TF Serving already serves such a
    version, so it is adopted, not removed. A push still running (in another
    live process, or in this one) is about to write its own record and is left
    alone. A pid names a process on one host only: a record written on another
    host (a pod sharing the volume may even have our pid) is left as it is.
    """
    base = Path(model_base_path)
    adopted = []
    for version in list_versions(base):
        record = records.read_record(base, version)
        if record is None or record.state != records.STAGING or not _owner_is_gone(base, version, record):
            continue
        # Read again now that the owner is known to be gone: it may have written `live`
        # just before it ended, and that record must not be overwritten with a stale copy.
        record = records.read_record(base, version)
        if record is None or record.state != records.STAGING:
            continue
        record.state = records.LIVE
        record.adopted_at = time.time()
        records.update_record(base, record)
        adopted.append(version)
    return adopted


def highest_used_version(model_base_path: str | Path) -> int:
    """The highest version number ever used under `model_base_path` (0 if none)."""
    base = Path(model_base_path)
    used = list_versions(base) + records.rolled_back_versions(base) + records.recorded_versions(base)
    if base.is_dir():
        used += [version for version, _ in (_parse_owned(child.name) for child in base.iterdir()) if version is not None]
    return max(used, default=0)


def serving_version(model_base_path: str | Path) -> int | None:
    """The version TF Serving's `latest` policy serves: the highest numbered folder."""
    versions = list_versions(model_base_path)
    return versions[-1] if versions else None


def apply_retention(model_base_path: str | Path, keep: int, pinned: Iterable[int] = ()) -> list[int]:
    """Remove live versions older than the newest `keep`, except the serving and pinned ones.

    Returns the removed versions. Rolled-back versions are not live and are left
    alone (they are what `signflow versions` shows as history).
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the serving version), got {keep}")
    base = Path(model_base_path)
    live = list_versions(base)
    if not live:
        return []
    kept = set(live[-keep:]) | {live[-1]} | set(pinned)
    removed = []
    for version in live:
        if version in kept:
            continue
        doomed = base / f"{REMOVING_PREFIX}{version}-{os.getpid()}"
        try:
            os.rename(version_path(base, version), doomed)
        except FileNotFoundError:
            # Removed meanwhile by a concurrent push's retention, or rolled back.
            continue
        shutil.rmtree(doomed)
        record = records.read_record(base, version)
        if record is not None:
            record.removed_at = time.time()
            records.update_record(base, record)
        removed.append(version)
    if removed:
        fsync_dir(base)
    return removed


def remove_stale_folders(model_base_path: str | Path) -> list[str]:
    """Delete staging and removal folders whose owning process is gone. Returns their names.

    Folder names carry the owner's pid; a live owner (another Pusher still
    copying) is left alone. Pids are only meaningful on one host: a serving
    folder shared by several pushing hosts needs one pusher at a time. A removal
    folder's record gets the `removed_at` its dead retention did not write.
    """
    base = Path(model_base_path)
    removed = []
    for child in sorted(base.iterdir()) if base.is_dir() else []:
        version, pid = _parse_owned(child.name)
        if version is None or pid is None or _process_alive(pid):
            continue
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child.name)
        record = records.read_record(base, version) if child.name.startswith(REMOVING_PREFIX) else None
        if record is not None and record.removed_at is None:
            record.removed_at = time.time()
            records.update_record(base, record)
    return removed


def _reserve_version(base: Path, record: PushRecord, clock: Clock) -> int:
    now = clock()
    version = max(int(now), highest_used_version(base) + 1)
    record.reserved_at = now
    record.pid = os.getpid()
    record.host = socket.gethostname()
    while True:
        record.version = version
        record.state = records.STAGING
        if records.create_record_exclusively(base, record):
            return version
        # Another push reserved this number between our scan and our create.
        version += 1


def _copy_saved_model(source: Path, destination: Path) -> None:
    """Copy a SavedModel folder with every file and folder fsynced; saved_model.pb last.

    Servers that watch a folder in place (TFX's own Pusher target) take
    saved_model.pb as "this version is complete", so it goes last here too, even
    though the rename already hides the partial copy.
    """
    destination.mkdir()
    folders = [destination]
    last = None
    for root, dirs, files in os.walk(source):
        dirs.sort()
        relative = Path(root).relative_to(source)
        for name in dirs:
            (destination / relative / name).mkdir()
            folders.append(destination / relative / name)
        for name in sorted(files):
            if relative == Path(".") and name == SAVED_MODEL_FILE:
                last = Path(root) / name
                continue
            _copy_file(Path(root) / name, destination / relative / name)
    if last is not None:
        _copy_file(last, destination / SAVED_MODEL_FILE)
    for folder in reversed(folders):
        fsync_dir(folder)


def _copy_file(source: Path, destination: Path) -> None:
    shutil.copyfile(source, destination)
    fd = os.open(destination, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_owned(name: str) -> tuple[int | None, int | None]:
    """(version, pid) of a `.incoming-<version>-<pid>` or `.removing-<version>-<pid>` name."""
    for prefix in (STAGING_PREFIX, REMOVING_PREFIX):
        if name.startswith(prefix):
            version_text, _, pid_text = name[len(prefix):].rpartition("-")
            return parse_version(version_text), parse_version(pid_text)
    return None, None


def _owner_is_gone(base: Path, version: int, record: PushRecord) -> bool:
    """Whether the push that reserved `version` can no longer write its record."""
    if record.host is not None and record.host != socket.gethostname():
        return False
    if record.pid == os.getpid():
        return (str(base.resolve()), version) not in _publishing
    return record.pid is None or not _process_alive(record.pid)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Exists, owned by another user.
        return True
    return True
