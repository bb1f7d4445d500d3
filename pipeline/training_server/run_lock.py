"""One pipeline run at a time per pipeline root, and a lock that a crash cannot leave behind.

The lock is an advisory `flock` on a file in the pipeline's folder: the kernel
releases it when its holder dies, however it dies, so a crashed run never blocks
the next one. The file also records who holds it (pid, host, start time, what
for). A holder that finishes cleanly empties it; a record still present when the
lock is free was left by a process that died, and the new holder says so in the
log before taking over.

`signflow run` (and so `make run-local`) and each cycle of `signflow schedule`
take the run lock; the scheduler also holds a second lock of its own so that
two schedulers never drive the same pipeline.

Layer: training_server. Standard library only.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_LOCK = "run.lock"
SCHEDULER_LOCK = "scheduler.lock"


class LockHeld(RuntimeError):
    """Another live process holds the lock; `holder` is what it recorded."""

    def __init__(self, path: Path, holder: dict[str, Any]):
        self.path = path
        self.holder = holder
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}" if holder else "another process"
        since = holder.get("since")
        when = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else ""
        super().__init__(f"{path} is held by {who}{when} ({holder.get('purpose', 'unknown purpose')})")


class FileLock:
    """A non-blocking, crash-safe, exclusive lock. Use as a context manager or acquire()/release()."""

    def __init__(self, path: Path, purpose: str):
        self.path = Path(path)
        self.purpose = purpose
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None
        """The record a dead holder left behind, when this acquisition took over from it."""

    def acquire(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_record(fd)
            os.close(fd)
            raise LockHeld(self.path, holder) from None
        left = _read_record(fd)
        if left:
            self.took_over = left
            log.warning("taking over %s: its holder (pid %s on %s, %s, since %s) ended without releasing it",
                        self.path, left.get("pid", "?"), left.get("host", "?"), left.get("purpose", "?"),
                        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(left.get("since", 0))))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "purpose": self.purpose}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # Emptied before unlocking: an empty file means "released cleanly".
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(path: Path) -> dict[str, Any] | None:
    """Who holds the lock at `path` now (their record), or None when it is free.

    Reads the record only and never takes the lock itself, so asking (`signflow
    status`) cannot make a run that starts at that moment find the lock busy. An
    empty record was released cleanly; one whose process on this host is gone was
    left by a crash. (A reused pid reads as held: this answer is for people; the
    flock decides who runs.)
    """
    try:
        record = _parse(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    if not record:
        return None
    if record.get("host") == socket.gethostname() and not _alive(record.get("pid")):
        return None
    return record


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _read_record(fd: int) -> dict[str, Any]:
    return _parse(os.pread(fd, 4096, 0))


def _parse(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        record = json.loads(raw)
    except ValueError:
        return {"purpose": "unreadable lock record"}
    return record if isinstance(record, dict) else {}
