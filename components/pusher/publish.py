"""Publishing a SavedModel as a new TF Serving version: numbered, atomic where the filesystem allows, with retention.

On a filesystem that renames folders atomically (local disk, HDFS:
storage.renames_folders), a push copies the model into a hidden staging folder inside the model folder
(`.incoming-<version>-<pid>`, a name TF Serving ignores), fsyncs every file and
folder, then renames the folder to `<version>` in one step. A model server that
polls the folder sees either no new version or a complete one. A push that dies
half-way leaves only its staging folder, which the next push removes once the
process that owned it is gone. A push that dies after the rename but before
recording the version as live leaves a complete, served version: the next push
adopts it (records it as live) rather than removing what TF Serving serves.

On an object store (gs://, s3://, and any scheme not known to rename folders)
a folder cannot appear in one step. A push there uploads the model into the
same hidden staging folder, then copies it into `<version>/` with
saved_model.pb last, and deletes the staging copy. TF Serving loads a version
once saved_model.pb is there (and loads it even if files are still missing),
so the numbered folder is incomplete only while it has no saved_model.pb; the
copy inside the store is fast next to the upload. A push that dies during that
copy leaves a numbered folder without saved_model.pb: the next push deletes it
(and records the push as failed) instead of adopting it. Retention deletes a
version's saved_model.pb first, then the rest. docs/deployment.md, "Artifacts
on object stores", says what this means for TF Serving.

Every file operation goes through components.storage (tf.io.gfile).
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from components import storage
from components.storage import fsync_dir
from components.pusher import records
from components.pusher.records import PathLike, PushRecord
from serving.layout import SAVED_MODEL_FILE, STAGING_PREFIX, parse_version

log = logging.getLogger(__name__)

# Retention first renames a version to this hidden name, then deletes it, so a
# server never sees a numbered folder with half its files gone.
REMOVING_PREFIX = ".removing-"

Clock = Callable[[], float]

# (model folder, version) of the pushes this process is running: adoption must
# tell its own push in flight from one of its pushes that raised after the rename.
_publishing: set[tuple[str, int]] = set()


def list_versions(model_base_path: PathLike) -> list[int]:
    """serving.layout.list_versions on any filesystem: numbered child folders, ascending."""
    base = os.fspath(model_base_path)
    return sorted(version for version in (parse_version(name) for name in storage.listdir(base))
                  if version is not None and storage.isdir(version_path(base, version)))


def version_path(model_base_path: PathLike, version: int) -> str:
    return storage.join(os.fspath(model_base_path), str(version))


@dataclass(frozen=True)
class PushResult:
    version: int
    path: str
    stale_removed: list[str]
    adopted: list[int]


@dataclass(frozen=True)
class Recovery:
    """What a push that died left behind and what was done about it."""

    stale_removed: list[str]  # staging and removal folders deleted
    adopted: list[int]  # complete versions whose record said staging, now recorded as live


def push_model(
    model_dir: PathLike,
    model_base_path: PathLike,
    record: PushRecord,
    clock: Clock = time.time,
) -> PushResult:
    """Copy the SavedModel in `model_dir` to a new version under `model_base_path`.

    The version is the clock's whole seconds, raised past every number ever used
    under this folder (live, rolled back, removed by retention, or reserved by a
    push that crashed), so versions strictly increase even if the clock goes back.
    `record` says where the model came from; its version and timestamps are set here.
    """
    model_dir, base = os.fspath(model_dir), os.fspath(model_base_path)
    if not storage.exists(storage.join(model_dir, SAVED_MODEL_FILE)):
        raise FileNotFoundError(f"{model_dir} has no {SAVED_MODEL_FILE}: not a SavedModel")
    storage.makedirs(base)
    recovery = recover_interrupted_pushes(base)
    version = _reserve_version(base, record, clock)
    staging = storage.join(base, f"{STAGING_PREFIX}{version}-{os.getpid()}")
    final = version_path(base, version)
    in_flight = (_identity(base), version)
    _publishing.add(in_flight)
    try:
        try:
            _copy_saved_model(model_dir, staging)
            if storage.renames_folders(base):
                # The one step that makes the version visible. A rename onto an existing
                # folder fails rather than merging, and the number was reserved above, so
                # an existing target would be a bug, not a race.
                storage.rename(staging, final)
            else:
                log.info("Pusher: %s cannot rename a folder in one step: copying version %d from %s with %s last, "
                         "then deleting the staging copy.", base, version, staging, SAVED_MODEL_FILE)
                _copy_saved_model(staging, final)
        except BaseException:
            storage.rmtree(staging)
            if not storage.renames_folders(base):
                _remove_version_folder(final)
            record.state = records.FAILED
            records.update_record(base, record)
            raise
        # Outside the inner try: once published the version is served, so a failure
        # from here on leaves the record saying "staging" for the next push to
        # adopt, never "failed".
        fsync_dir(base)
        if not storage.renames_folders(base):
            storage.rmtree(staging)
        record.state = records.LIVE
        record.pushed_at = clock()
        records.update_record(base, record)
    finally:
        _publishing.discard(in_flight)
    return PushResult(version=version, path=final, stale_removed=recovery.stale_removed, adopted=recovery.adopted)


def recover_interrupted_pushes(model_base_path: PathLike) -> Recovery:
    """Clean up after pushes and retentions that died: see remove_stale_folders and adopt_published_versions."""
    return Recovery(stale_removed=remove_stale_folders(model_base_path),
                    adopted=adopt_published_versions(model_base_path))


def adopt_published_versions(model_base_path: PathLike) -> list[int]:
    """Record as live every version folder whose push died after publishing it. Returns those versions.

    The rename is a push's commit point: a numbered folder exists only once its
    copy is complete and fsynced, so a record still saying `staging` next to one
    means the push died before writing `live`. TF Serving already serves such a
    version, so it is adopted, not removed. A push still running (in another
    live process, or in this one) is about to write its own record and is left
    alone. A pid names a process on one host only: a record written on another
    host (a pod sharing the volume may even have our pid) is left as it is.

    On an object store the numbered folder is complete only once it has
    saved_model.pb (copied last): one without it is what a push that died
    mid-copy left, and is deleted (its record says failed) rather than adopted.
    """
    base = os.fspath(model_base_path)
    adopted = []
    for version in list_versions(base):
        record = records.read_record(base, version)
        if record is None or record.state != records.STAGING or not _owner_is_gone(base, version, record):
            continue
        if not storage.exists(storage.join(version_path(base, version), SAVED_MODEL_FILE)):
            _remove_version_folder(version_path(base, version))
            record.state = records.FAILED
            records.update_record(base, record)
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


def highest_used_version(model_base_path: PathLike) -> int:
    """The highest version number ever used under `model_base_path` (0 if none)."""
    base = os.fspath(model_base_path)
    used = list_versions(base) + records.rolled_back_versions(base) + records.recorded_versions(base)
    used += [version for version, _ in (_parse_owned(name) for name in storage.listdir(base)) if version is not None]
    return max(used, default=0)


def serving_version(model_base_path: PathLike) -> int | None:
    """The version TF Serving's `latest` policy serves: the highest numbered folder."""
    versions = list_versions(model_base_path)
    return versions[-1] if versions else None


def apply_retention(model_base_path: PathLike, keep: int, pinned: Iterable[int] = ()) -> list[int]:
    """Remove live versions older than the newest `keep`, except the serving and pinned ones.

    Returns the removed versions. Rolled-back versions are not live and are left
    alone (they are what `signflow versions` shows as history).
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the serving version), got {keep}")
    base = os.fspath(model_base_path)
    live = list_versions(base)
    if not live:
        return []
    kept = set(live[-keep:]) | {live[-1]} | set(pinned)
    removed = []
    for version in live:
        if version in kept:
            continue
        if storage.renames_folders(base):
            doomed = storage.join(base, f"{REMOVING_PREFIX}{version}-{os.getpid()}")
            try:
                storage.rename(version_path(base, version), doomed)
            except storage.StorageError:
                # Removed meanwhile by a concurrent push's retention, or rolled back.
                continue
            storage.rmtree(doomed)
        else:
            _remove_version_folder(version_path(base, version))
        record = records.read_record(base, version)
        if record is not None:
            record.removed_at = time.time()
            records.update_record(base, record)
        removed.append(version)
    if removed:
        fsync_dir(base)
    return removed


def remove_stale_folders(model_base_path: PathLike) -> list[str]:
    """Delete staging and removal folders whose owning process is gone. Returns their names.

    Folder names carry the owner's pid; a live owner (another Pusher still
    copying) is left alone. Pids are only meaningful on one host: a serving
    folder shared by several pushing hosts needs one pusher at a time. A removal
    folder's record gets the `removed_at` its dead retention did not write.
    """
    base = os.fspath(model_base_path)
    removed = []
    for name in storage.listdir(base):
        version, pid = _parse_owned(name)
        if version is None or pid is None or _process_alive(pid):
            continue
        storage.rmtree(storage.join(base, name))
        removed.append(name)
        record = records.read_record(base, version) if name.startswith(REMOVING_PREFIX) else None
        if record is not None and record.removed_at is None:
            record.removed_at = time.time()
            records.update_record(base, record)
    return removed


def _reserve_version(base: str, record: PushRecord, clock: Clock) -> int:
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


def _copy_saved_model(source: str, destination: str) -> None:
    """Copy a SavedModel folder, saved_model.pb last; on local disk every file and folder is fsynced.

    Servers take saved_model.pb as "this version is complete" (TFX's own Pusher
    copies it last for that reason), so it goes last here too: where a rename
    then hides the partial copy that is belt and braces; on an object store it
    is what keeps a half-copied version from being loaded.
    """
    storage.makedirs(destination)
    folders = [destination]
    last = None
    for root, dirs, files in storage.walk(source):
        relative = os.path.relpath(root, source)
        target_root = destination if relative == "." else storage.join(destination, relative)
        for name in dirs:
            storage.makedirs(storage.join(target_root, name))
            folders.append(storage.join(target_root, name))
        for name in files:
            if relative == "." and name == SAVED_MODEL_FILE:
                last = storage.join(root, name)
                continue
            storage.copy_file(storage.join(root, name), storage.join(target_root, name))
    if last is not None:
        storage.copy_file(last, storage.join(destination, SAVED_MODEL_FILE))
    for folder in reversed(folders):
        fsync_dir(folder)


def _remove_version_folder(folder: str) -> None:
    """Delete a version folder where renaming it away first is not possible: saved_model.pb first, so that
    what is left is never loaded as a model."""
    try:
        storage.remove(storage.join(folder, SAVED_MODEL_FILE))
    except storage.StorageError:
        pass  # already gone, or never copied
    storage.rmtree(folder)


def _identity(base: str) -> str:
    """One name per model folder for the in-flight set (a local folder may be reached by several paths)."""
    return os.path.realpath(storage.local_path(base)) if storage.is_local(base) else base


def _parse_owned(name: str) -> tuple[int | None, int | None]:
    """(version, pid) of a `.incoming-<version>-<pid>` or `.removing-<version>-<pid>` name."""
    for prefix in (STAGING_PREFIX, REMOVING_PREFIX):
        if name.startswith(prefix):
            version_text, _, pid_text = name[len(prefix):].rpartition("-")
            return parse_version(version_text), parse_version(pid_text)
    return None, None


def _owner_is_gone(base: str, version: int, record: PushRecord) -> bool:
    """Whether the push that reserved `version` can no longer write its record."""
    if record.host is not None and record.host != socket.gethostname():
        return False
    if record.pid == os.getpid():
        return (_identity(base), version) not in _publishing
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
