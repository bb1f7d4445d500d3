"""Loaded model versions: states, leases, labels, and availability-preserving swaps.

The registry is TF Serving's ServerCore + AspiredVersionsManager for this server:

- `reconcile(scans)` takes what the repository found on disk and makes the
  loaded set match the policy. A new version is loaded and warmed up *beside*
  the old one; only when it is AVAILABLE does the old one stop taking requests.
  If the new version fails to load, it is reported (state END, its error) and
  the old one keeps serving.
- A request holds a `Lease` on the version that answers it. A version taken out
  of service is UNLOADING until its last lease is released, then END, and its
  servable is told (`unload()`).
- `acquire` applies TF Serving's rules: no version = the highest AVAILABLE one,
  a label maps to a version, and the same errors (NOT_FOUND "Servable not found
  for request: ...", INVALID_ARGUMENT "Unrecognized servable version label: ...").

Everything here is thread-safe: loads run on the watcher thread, leases are taken
on the event loop and released wherever a request finishes.

Layer: between the data plane (serving.handlers) and the servables. How a version
is loaded is the `load` function it is given (serving.servable.Loader), so this
module never imports TensorFlow; it imports serving.errors, serving.repository
(Scan) and serving.settings (ModelConfig).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from serving import errors
from serving.repository import Scan
from serving.settings import ModelConfig

log = logging.getLogger(__name__)

# ModelVersionStatus.State names.
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


class Loaded(Protocol):
    """What the registry needs of a loaded version (serving.servable.Servable)."""

    version: int

    def unload(self) -> None:
        """Called once, when the version's last request is done, from any thread; must not block."""


@dataclass
class VersionRecord:
    """What the status API reports about one version, and its servable while loaded."""

    version: int
    state: str = START
    error_code: str = "OK"
    error_message: str = ""
    fingerprint: tuple = ()
    servable: Loaded | None = None
    """What `load` returned, while the version is loaded."""
    in_flight: int = 0


@dataclass
class ModelRecord:
    config: ModelConfig | None
    """None once the model was dropped from the config (its END versions stay visible)."""
    versions: dict[int, VersionRecord] = field(default_factory=dict)


class Lease:
    """A version held for one request; release() (or `with`) when the request is done."""

    def __init__(self, registry: "Registry", record: VersionRecord, model_name: str):
        self._registry = registry
        self._record = record
        self.model_name = model_name
        self.servable: Any = record.servable
        """What `load` returned for this version: a serving.servable.Servable in the server; None once released."""
        self.version = record.version
        self._released = False
        self._kept = False

    def release(self) -> None:
        if not self._released and not self._kept:
            self._released = True
            # Let go of the servable first: after the last release the registry frees the version.
            self.servable = None
            self._registry._release(self.model_name, self._record)

    def keep_until(self, future) -> None:
        """Hold the version until `future` is done, past the end of the `with` block.

        For a request that gave up (deadline, disconnect) while its model call
        still runs on a thread: the version must not count as idle before that.
        """
        self._kept = True

        def done(_):
            self._kept = False
            self.release()

        future.add_done_callback(done)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


LoadFn = Callable[[str, int, Path], Loaded]


class Registry:
    """The loaded versions of every configured model."""

    def __init__(
        self,
        load: LoadFn,
        *,
        allow_version_labels_for_unavailable_models: bool = False,
        on_event: Callable[[str, int, str], None] | None = None,
    ):
        """`load(name, version, path)` builds a ready-to-serve version or raises.

        `on_event(model, version, event)` hears "loaded", "load_failed" and
        "unloaded" (for metrics).
        """
        self._load = load
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._on_event = on_event or (lambda *_: None)
        self._lock = threading.Lock()
        self._reconcile_lock = threading.Lock()
        self._scan_errors: dict[str, str] = {}  # model -> the scan error logged last
        self._scan_warnings: dict[str, tuple[str, ...]] = {}  # model -> the scan warnings logged last
        self._models: dict[str, ModelRecord] = {}
        self._labels: dict[str, dict[str, int]] = {}

    # -- configuration ---------------------------------------------------------

    def apply_config(self, models: Iterable[ModelConfig]) -> None:
        """Make `models` the whole set of served models (ServerCore::ReloadConfig).

        Labels are checked first, as TF Serving does: a label may only name an
        AVAILABLE version (or, with --allow_version_labels_for_unavailable_models,
        a new label may name any version). If that fails nothing changes.
        Models no longer listed are unloaded by the next reconcile.
        """
        models = list(models)
        with self._lock:
            new_labels = {}
            for model in models:
                current = self._labels.get(model.name, {})
                record = self._models.get(model.name)
                for label, version in model.version_labels.items():
                    available = (
                        record is not None and record.config is not None
                        and version in record.versions and record.versions[version].state == AVAILABLE)
                    if available:
                        continue
                    if self._allow_unavailable_labels and current.get(label, version) == version:
                        continue
                    raise errors.FailedPrecondition(
                        f"Request to assign label to version {version} of model {model.name}, "
                        "which is not currently available for inference")
                new_labels[model.name] = dict(model.version_labels)
            listed = {model.name for model in models}
            for name, record in self._models.items():
                if name not in listed:
                    record.config = None
            for model in models:
                record = self._models.setdefault(model.name, ModelRecord(config=model))
                record.config = model
            self._labels = new_labels

    def configs(self) -> list[ModelConfig]:
        with self._lock:
            return [record.config for record in self._models.values() if record.config is not None]

    # -- loading and unloading -----------------------------------------------

    def reconcile(self, scans: Iterable[Scan]) -> None:
        """Load what the scans aspire to, then retire what they no longer do.

        A model whose scan failed (base path missing) keeps what it has, as TF
        Serving keeps serving when a poll fails. Models dropped from the config
        have no scan and lose all their versions.
        """
        with self._reconcile_lock:
            scans = {scan.model.name: scan for scan in scans}
            with self._lock:
                names = list(self._models)
            for name in names:
                scan = scans.get(name)
                with self._lock:
                    record = self._models[name]
                    configured = record.config is not None
                if configured and (scan is None or scan.error is not None):
                    # Once per change, not once per poll: a server started before the
                    # first push would otherwise log this every second.
                    if scan is not None and self._scan_errors.get(name) != scan.error:
                        log.error("%s (checked again every poll; logged once)", scan.error)
                        self._scan_errors[name] = scan.error
                    continue
                if scan is not None and self._scan_errors.pop(name, None) is not None:
                    log.info("Base path of model %s found: %s", name, scan.model.base_path)
                if scan is not None and self._scan_warnings.get(name, ()) != scan.warnings:
                    for warning in scan.warnings:
                        log.warning("%s", warning)
                    self._scan_warnings[name] = scan.warnings
                aspired = scan.aspired if configured else ()
                for version in sorted(aspired, reverse=True):  # the newest serves soonest
                    self._maybe_load(name, version, scan.on_disk[version].path, scan.on_disk[version].fingerprint)
                self._retire(name, set(aspired))

    def _maybe_load(self, name: str, version: int, path: Path, fingerprint: tuple) -> None:
        with self._lock:
            record = self._models[name]
            existing = record.versions.get(version)
            if existing is not None and existing.state in (LOADING, AVAILABLE):
                return
            if existing is not None and existing.state == UNLOADING:
                return  # still draining; it is loaded again on a later poll
            if existing is not None and existing.error_code != "OK" and existing.fingerprint == fingerprint:
                return  # failed before and nothing changed on disk since
            entry = VersionRecord(version, state=LOADING, fingerprint=fingerprint)
            record.versions[version] = entry
        log.info("Loading version %s of model %s from %s", version, name, path)
        started = time.monotonic()
        try:
            servable = self._load(name, version, path)
        except Exception as err:  # a failed load is data: it goes in the status
            failure = err if isinstance(err, errors.ServingError) else errors.Unknown(f"{type(err).__name__}: {err}")
            code, message = failure.code.name, failure.message
            # NOTE: the exception's traceback holds the failed load's frames, and with them whatever
            # it had loaded (a whole model when its warmup failed); kept in this frame, it would form
            # a cycle that only a full garbage collection frees. Dropped here, and `err` at the end of
            # the block: the model is freed before anyone hears "load_failed".
            del failure
        else:
            with self._lock:
                entry.servable = servable
                entry.state = AVAILABLE
            log.info("Version %s of model %s is available (%.2fs)", version, name, time.monotonic() - started)
            self._on_event(name, version, "loaded")
            return
        with self._lock:
            entry.state = END
            entry.error_code = code
            entry.error_message = message
        log.error("Failed to load version %s of model %s: %s", version, name, message)
        self._on_event(name, version, "load_failed")

    def _retire(self, name: str, aspired: set[int]) -> None:
        finished = []
        with self._lock:
            record = self._models[name]
            available = [v for v, r in record.versions.items() if r.state == AVAILABLE]
            aspired_available = any(v in aspired for v in available)
            for version in available:
                if version in aspired:
                    continue
                # Availability preservation: keep an old version until a wanted one serves.
                if aspired and not aspired_available:
                    continue
                entry = record.versions[version]
                entry.state = UNLOADING
                if entry.in_flight == 0:
                    finished.append(self._finish_unload(entry))
        self._unload(name, finished)

    def _release(self, name: str, entry: VersionRecord) -> None:
        finished = []
        with self._lock:
            entry.in_flight -= 1
            if entry.state == UNLOADING and entry.in_flight == 0:
                finished.append(self._finish_unload(entry))
        self._unload(name, finished)

    @staticmethod
    def _finish_unload(entry: VersionRecord) -> Loaded:
        servable, entry.servable = entry.servable, None
        entry.state = END
        return servable

    def _unload(self, name: str, finished: list[Loaded]) -> None:
        """Tell each servable it is unloaded and let go of it (emptying `finished`), then report each.

        NOTE: by then nothing in the registry or a lease refers to the version any more,
        so a servable without reference cycles has been freed, whole, before anyone hears
        "unloaded" (the server then collects garbage and trims the heap: serving/server.py).
        """
        versions = []
        while finished:
            servable = finished.pop()
            servable.unload()
            versions.append(servable.version)
            servable = None
        for version in versions:
            log.info("Unloaded version %s of model %s", version, name)
            self._on_event(name, version, "unloaded")

    def unload_all(self) -> None:
        """Retire every version (server shutdown)."""
        with self._lock:
            names = list(self._models)
        for name in names:
            self._retire(name, set())

    # -- requests ---------------------------------------------------------------

    def acquire(self, name: str, version: int | None = None, label: str | None = None) -> Lease:
        """The version that answers a request, held until the lease is released."""
        if not name:
            raise errors.InvalidArgument("ModelSpec has no name specified.")
        with self._lock:
            record = self._models.get(name)
            if label is not None:
                if version is not None:
                    raise errors.InvalidArgument(
                        f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
                labels = self._labels.get(name, {}) if record is not None and record.config is not None else {}
                if label not in labels:
                    raise errors.InvalidArgument(f"Unrecognized servable version label: {label}")
                version = labels[label]
            entry = None
            if record is not None and record.config is not None:
                if version is None:
                    available = [v for v, r in record.versions.items() if r.state == AVAILABLE]
                    entry = record.versions[max(available)] if available else None
                else:
                    candidate = record.versions.get(version)
                    entry = candidate if candidate is not None and candidate.state == AVAILABLE else None
            if entry is None:
                request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
                raise errors.NotFound(f"Servable not found for request: {request}")
            entry.in_flight += 1
            return Lease(self, entry, name)

    def status(self, name: str, version: int | None = None) -> list[VersionRecord]:
        """Version records, newest first (GetModelStatus); copies, safe to read."""
        with self._lock:
            record = self._models.get(name)
            versions = dict(record.versions) if record is not None else {}
            if version is not None:
                if version not in versions:
                    raise errors.NotFound(f"Could not find version {version} of model {name}")
                versions = {version: versions[version]}
            elif not versions:
                raise errors.NotFound(f"Could not find any versions of model {name}")
            return [
                VersionRecord(v, r.state, r.error_code, r.error_message)
                for v, r in sorted(versions.items(), reverse=True)
            ]
