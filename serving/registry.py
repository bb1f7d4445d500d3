"""Loaded model versions: loading, warmup, version policy, labels, and availability-preserving swaps.

The registry is TF Serving's ServerCore + AspiredVersionsManager for this server:

- `reconcile(scans)` takes what the repository found on disk and makes the
  loaded set match the policy. A new version is loaded and warmed up *beside*
  the old one; only when it is AVAILABLE does the old one stop taking requests.
  If the new version fails to load, it is reported (state END, its error) and
  the old one keeps serving.
- A request holds a `Lease` on the version that answers it. A version taken out
  of service is UNLOADING until its last lease is released, then END.
- `resolve` applies TF Serving's rules: no version = the highest AVAILABLE one,
  a label maps to a version, and the same errors (NOT_FOUND "Servable not found
  for request: ...", INVALID_ARGUMENT "Unrecognized servable version label: ...").

Everything here is thread-safe: loads run on the watcher thread, leases are taken
on the event loop and released wherever a request finishes.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from serving import errors, layout
from serving.repository import Scan
from serving.settings import ModelConfig

log = logging.getLogger(__name__)

SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
# The input of signflow's own serving signature; requests to it are image-checked.
IMAGE_INPUT = "image_bytes"
# saved_model_warmup_util.cc: kMaxNumRecords.
MAX_WARMUP_RECORDS = 1000

# ModelVersionStatus.State names.
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


def op_error(err: Exception) -> errors.ServingError:
    """A TensorFlow runtime error as the ServingError with the same code, as TF Serving passes them on."""
    if isinstance(err, tf.errors.OpError):
        # e.g. InvalidArgumentError -> INVALID_ARGUMENT
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(err).__name__.removesuffix("Error")).upper()
        return errors.from_code_name(name if name != "OP" else "UNKNOWN", err.message)
    return errors.Internal(f"{type(err).__name__}: {err}")


class Servable:
    """One loaded model version: its SignatureDefs and its callable signatures."""

    def __init__(self, name: str, version: int, path: Path, meta_graph: meta_graph_pb2.MetaGraphDef, loaded):
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = meta_graph.signature_def
        self._loaded = loaded
        self._functions = dict(loaded.signatures)
        serving = self.signature_defs.get(DEFAULT_SIGNATURE)
        self.validates_images = bool(
            serving is not None and IMAGE_INPUT in serving.inputs
            and serving.inputs[IMAGE_INPUT].dtype == tf.string.as_datatype_enum)
        """signflow's own model: image_bytes values are checked before they reach the graph."""
        self.batchers: dict = {}
        """Per-signature batchers, created and closed by the handler on the event loop."""

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call a signature (blocking; run it off the event loop). Errors carry TF's code."""
        function = self._functions.get(signature_name)
        if function is None:
            raise errors.FailedPrecondition(f'Serving signature key "{signature_name}" not found.')
        signature = self.signature_defs[signature_name]
        unknown = sorted(set(inputs) - set(signature.inputs))
        if unknown:
            # Before signature.inputs[name] below: indexing a protobuf map adds the missing key, which
            # would put the unknown name into this version's SignatureDef. predict_util.cc's words;
            # requests are checked by the handlers first, warm-up requests only here.
            raise errors.InvalidArgument(
                f"input tensor alias not found in signature: {unknown[0]}. "
                f"Inputs expected to be in the set {{{','.join(sorted(signature.inputs))}}}.")
        try:
            feed = {
                name: tf.convert_to_tensor(value, dtype=tf.dtypes.as_dtype(signature.inputs[name].dtype))
                for name, value in inputs.items()
            }
            outputs = function(**feed)
        except tf.errors.OpError as err:
            raise op_error(err) from None
        except (TypeError, ValueError) as err:
            # Raised by the signature's argument binding (wrong dtype or rank).
            raise errors.InvalidArgument(str(err)) from None
        return {name: value.numpy() for name, value in outputs.items()}


def read_meta_graph(path: Path, tags: tuple[str, ...] = (SERVE_TAG,)) -> meta_graph_pb2.MetaGraphDef:
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString((path / layout.SAVED_MODEL_FILE).read_bytes())
    except OSError as err:
        raise errors.NotFound(f"SavedModel file does not exist at: {path}: {err}") from None
    except Exception as err:  # protobuf's DecodeError
        raise errors.ServingError(f"Could not parse {path / layout.SAVED_MODEL_FILE}: {err}") from None
    for meta_graph in saved_model.meta_graphs:
        if set(tags) <= set(meta_graph.meta_info_def.tags):
            return meta_graph
    raise errors.NotFound(
        f"Could not find meta graph def matching supplied tags: {{ {' '.join(tags)} }}. "
        f"To inspect available tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli`")


def load_servable(name: str, version: int, path: Path, *, warmup: bool = True) -> Servable:
    """Load one version folder and replay its warmup requests. Raises ServingError on failure."""
    meta_graph = read_meta_graph(path)
    try:
        loaded = tf.saved_model.load(str(path), tags=[SERVE_TAG])
    except tf.errors.OpError as err:
        raise op_error(err) from None
    except Exception as err:  # a bad graph surfaces as many Python error types
        raise errors.Unknown(f"{type(err).__name__}: {err}") from None
    servable = Servable(name, version, path, meta_graph, loaded)
    if warmup:
        run_warmup(servable)
    return servable


def run_warmup(servable: Servable) -> int:
    """Replay assets.extra/tf_serving_warmup_requests (TFRecord of PredictionLog). Returns the count.

    As TF Serving (saved_model_warmup_util.cc): a missing file is fine; any failing
    record fails the load with that record's error; a file that is not TFRecord
    fails it with DATA_LOSS.
    """
    path = servable.path / layout.WARMUP_FILE
    if not path.is_file():
        return 0
    count = 0
    try:
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise errors.InvalidArgument(
                    f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
            _replay(servable, record, path)
    except tf.errors.DataLossError as err:
        raise errors.from_code_name(
            "DATA_LOSS", f"{err.message}. Please verify your warmup data is in TFRecord format.") from None
    except tf.errors.OpError as err:  # e.g. the file cannot be read
        raise op_error(err) from None
    return count


def _replay(servable: Servable, record: bytes, path: Path) -> None:
    entry = prediction_log_pb2.PredictionLog()
    try:
        entry.ParseFromString(record)
    except Exception:
        raise errors.InvalidArgument(f"Failed to parse warmup record: {record[:64]!r} from {path}") from None
    kind = entry.WhichOneof("log_type")
    if kind == "predict_log":
        request = entry.predict_log.request
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        servable.run(request.model_spec.signature_name or DEFAULT_SIGNATURE, inputs)
    elif kind in ("classify_log", "regress_log"):
        request = getattr(entry, kind).request
        _replay_examples(servable, request.model_spec.signature_name, request.input)
    elif kind == "multi_inference_log":
        request = entry.multi_inference_log.request
        for task in request.tasks:
            _replay_examples(servable, task.model_spec.signature_name, request.input)
    elif kind is not None:
        raise errors.Unimplemented(f"Unsupported log_type for warmup: {kind}")


def _replay_examples(servable: Servable, signature_name: str, request_input) -> None:
    signature_name = signature_name or DEFAULT_SIGNATURE
    signature = servable.signature_defs.get(signature_name)
    if signature is None or len(signature.inputs) != 1:
        raise errors.InvalidArgument(f"No signature was found with the name: {signature_name}")
    (input_name,) = signature.inputs
    servable.run(signature_name, {input_name: np.array(serialize_examples(request_input), dtype=object)})


def serialize_examples(request_input) -> list[bytes]:
    """A tensorflow.serving.Input as the serialized tf.Examples a classify/regress signature takes.

    With a context, each example is the context's bytes followed by the
    example's: protobuf merges them, which is how TF Serving builds them.
    """
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return [example.SerializeToString() for example in request_input.example_list.examples]
    if kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        context = listed.context.SerializeToString()
        return [context + example.SerializeToString() for example in listed.examples]
    return []


@dataclass
class VersionRecord:
    """What the status API reports about one version, and its servable while loaded."""

    version: int
    state: str = START
    error_code: str = "OK"
    error_message: str = ""
    fingerprint: tuple = ()
    servable: Servable | None = None
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
        self.servable: Servable = record.servable
        self.version = record.version
        self._released = False
        self._kept = False

    def release(self) -> None:
        if not self._released and not self._kept:
            self._released = True
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


LoadFn = Callable[[str, int, Path], Servable]


class Registry:
    """The loaded versions of every configured model."""

    def __init__(
        self,
        load: LoadFn,
        *,
        allow_version_labels_for_unavailable_models: bool = False,
        on_event: Callable[[str, int, str], None] | None = None,
        on_unloaded: Callable[[Servable], None] | None = None,
    ):
        """`load(name, version, path)` builds a warmed-up Servable or raises.

        `on_event(model, version, event)` hears "loaded", "load_failed" and
        "unloaded" (for metrics); `on_unloaded(servable)` runs once a version's
        last request is done (the handler closes its batchers there).
        """
        self._load = load
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._on_event = on_event or (lambda *_: None)
        self._on_unloaded = on_unloaded or (lambda _: None)
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
            with self._lock:
                entry.state = END
                entry.error_code = failure.code.name
                entry.error_message = failure.message
            log.error("Failed to load version %s of model %s: %s", version, name, failure.message)
            self._on_event(name, version, "load_failed")
            return
        with self._lock:
            entry.servable = servable
            entry.state = AVAILABLE
        log.info("Version %s of model %s is available (%.2fs)", version, name, time.monotonic() - started)
        self._on_event(name, version, "loaded")

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
        for servable in finished:
            self._unloaded(name, servable)

    def _release(self, name: str, entry: VersionRecord) -> None:
        servable = None
        with self._lock:
            entry.in_flight -= 1
            if entry.state == UNLOADING and entry.in_flight == 0:
                servable = self._finish_unload(entry)
        if servable is not None:
            self._unloaded(name, servable)

    @staticmethod
    def _finish_unload(entry: VersionRecord) -> Servable:
        servable, entry.servable = entry.servable, None
        entry.state = END
        return servable

    def _unloaded(self, name: str, servable: Servable) -> None:
        log.info("Unloaded version %s of model %s", servable.version, name)
        self._on_event(name, servable.version, "unloaded")
        self._on_unloaded(servable)

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
