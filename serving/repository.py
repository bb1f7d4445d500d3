"""Which versions of a model exist on disk, and which of them the version policy asks for.

This is TF Serving's FileSystemStoragePathSource: it only looks at folders. Loading
and unloading what it finds is the registry's job.

Layer: below the registry. Imports serving.layout and serving.settings only.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from serving import layout
from serving.settings import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionOnDisk:
    version: int
    path: Path
    fingerprint: tuple
    """Changes when the folder is replaced or its saved_model.pb rewritten, so a
    version that failed to load is tried again once someone fixes it."""


@dataclass(frozen=True)
class Scan:
    """One look at a model's base path."""

    model: ModelConfig
    on_disk: dict[int, VersionOnDisk]
    aspired: tuple[int, ...]
    """The versions the policy wants served, ascending."""
    error: str | None = None
    warnings: tuple[str, ...] = ()
    """What is odd but not fatal (no version yet, a pinned version missing); the registry logs each once."""


def scan(model: ModelConfig) -> Scan:
    """List `model.base_path`'s version folders and apply the model's version policy.

    Only integer-named folders count (serving.layout); staging (".incoming-*")
    and rollback (".rolled_back") folders are invisible, as they are to TF Serving.
    """
    base = Path(model.base_path)
    if not base.is_dir():
        error = f"Could not find base path {model.base_path} for servable {model.name}"
        return Scan(model, {}, (), error)
    on_disk = {}
    for version in layout.list_versions(base):
        path = layout.version_path(base, version)
        on_disk[version] = VersionOnDisk(version, path, _fingerprint(path))
    warnings = []
    if not on_disk:
        warnings.append(
            f"No versions of servable {model.name} found under base path {model.base_path}. Did you forget to "
            "name your leaf directory as a number (eg. '/1/')?")
    aspired = tuple(model.policy.select(list(on_disk)))
    if model.policy.kind == "specific":
        for missing in sorted(set(model.policy.versions) - set(on_disk)):
            warnings.append(f"Version {missing} of servable {model.name} is not on disk under {base}")
    return Scan(model, on_disk, aspired, warnings=tuple(warnings))


def _fingerprint(path: Path) -> tuple:
    try:
        folder = os.stat(path)
    except OSError:
        return ()
    try:
        graph = os.stat(path / layout.SAVED_MODEL_FILE)
        graph_key = (graph.st_ino, graph.st_size, graph.st_mtime_ns)
    except OSError:
        graph_key = None
    return (folder.st_ino, graph_key)


class Watcher:
    """Scans the configured models' base paths every `poll_seconds` on a background thread.

    `models()` gives the current configs (they change on a config reload) and
    `on_scans(scans)` receives every round (the registry's reconcile). As with
    --file_system_poll_wait_seconds, 0 means one scan at start and < 0 none:
    call `poll_once()` for that first scan; `start()` runs the periodic ones.

    `polls` counts completed rounds (scan, then `on_scans` returned), and
    `on_poll()` hears each one (the metrics). A round that began after some
    moment has completed once `polls` has grown by 2 since then: how a caller
    knows the watcher has looked at a change, including one that changes nothing.
    """

    def __init__(self, models: Callable[[], list[ModelConfig]], on_scans: Callable[[list[Scan]], None],
                 poll_seconds: float, on_poll: Callable[[], None] | None = None):
        self._models = models
        self._on_scans = on_scans
        self._on_poll = on_poll or (lambda: None)
        self._poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Rounds run on the watcher thread and, for config reloads, on the server's pool.
        self._lock = threading.Lock()
        self._polls = 0

    @property
    def polls(self) -> int:
        """Completed rounds since the watcher was created."""
        with self._lock:
            return self._polls

    def poll_once(self) -> None:
        self._on_scans([scan(model) for model in self._models()])
        with self._lock:
            self._polls += 1
        self._on_poll()

    def start(self) -> None:
        if self._poll_seconds > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="version-watcher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.poll_once()
            except Exception:  # keep polling: one bad round must not end version management
                log.exception("Version poll failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
