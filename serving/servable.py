"""One model version: loaded from its folder, warmed up, and run off the event loop.

TF Serving's SavedModelBundle plus its BatchingSession: `load_servable` reads the
MetaGraph tagged `serve`, loads the SavedModel and replays its warmup requests;
`Servable.run` calls a signature (blocking); `Servable.submit` starts that call
from the event loop, on the model threads or, with batching on, through the
signature's Batcher. `Loader` is what the registry calls to load a version: it
wraps `run` in batching there and then, so no request path ever creates a batcher
and the data plane does not know whether a call is batched.

Layer: below the registry (which holds servables without importing this module)
and the data plane (serving.handlers). Imports TensorFlow, serving.batching,
serving.contract, serving.errors, serving.layout and serving.settings.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import re
import weakref
from concurrent.futures import Executor
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from serving import contract, errors, layout
from serving.batching import Batcher, BatchingError
from serving.settings import BatchingOptions

# saved_model_warmup_util.cc: kMaxNumRecords.
MAX_WARMUP_RECORDS = 1000


def op_error(err: Exception) -> errors.ServingError:
    """A TensorFlow runtime error as the ServingError with the same code, as TF Serving passes them on."""
    if isinstance(err, tf.errors.OpError):
        # e.g. InvalidArgumentError -> INVALID_ARGUMENT
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(err).__name__.removesuffix("Error")).upper()
        return errors.from_code_name(name if name != "OP" else "UNKNOWN", err.message)
    return errors.Internal(f"{type(err).__name__}: {err}")


class Servable:
    """One loaded model version: its SignatureDefs, `run` (blocking) and `submit` (from the event loop)."""

    def __init__(self, name: str, version: int, path: Path, meta_graph: meta_graph_pb2.MetaGraphDef, loaded):
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = meta_graph.signature_def
        self._loaded = loaded
        self._functions = dict(loaded.signatures)
        serving = self.signature_defs.get(contract.SERVING_SIGNATURE)
        self.validates_images = bool(
            serving is not None and contract.IMAGE_INPUT in serving.inputs
            and serving.inputs[contract.IMAGE_INPUT].dtype == tf.string.as_datatype_enum)
        """signflow's own model: image_bytes values are checked before they reach the graph."""
        self.labels = read_labels(path)
        """The version's assets/labels.txt (the order of `probabilities`), or None if it has none."""
        self._executor: Executor | None = None
        self._on_rows: Callable[[int], None] = lambda _: None
        self._batchers: dict[str, Batcher] = {}
        self.unloaded = False
        """Set by unload(): the registry took the version out of service and its last request is done."""

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
            return contract.call_signature(function, inputs, {name: signature.inputs[name].dtype for name in inputs})
        except tf.errors.OpError as err:
            raise op_error(err) from None
        except (TypeError, ValueError) as err:
            # Raised by the signature's argument binding (wrong dtype or rank).
            raise errors.InvalidArgument(str(err)) from None

    def serve(self, executor: Executor, *, on_rows: Callable[[int], None] | None = None,
              batching: BatchingOptions | None = None, batch_executor: Executor | None = None) -> None:
        """Make `submit` usable: model calls run on `executor`, or with `batching`, through one
        Batcher per signature wrapped around `run`, on `batch_executor`.

        `on_rows(n)` hears the rows of every model call (with batching: of every batch).
        """
        self._executor = executor
        self._on_rows = on_rows or (lambda _: None)
        if batching is not None:
            self._batchers = {
                name: Batcher(functools.partial(self.run, name), batching, batch_executor,
                              on_batch=lambda stats: self._on_rows(stats.batch_size),
                              retry_alone=_refused_input if self._checks_images(name) else None)
                for name in self._functions
            }

    def _checks_images(self, signature_name: str) -> bool:
        """Whether requests to this signature have their images checked by headers only (serving.handlers):
        the model's own decoder is then the check of the rest of each image."""
        return self.validates_images and signature_name in contract.CHECKED_IMAGE_SIGNATURES

    def submit(self, signature_name: str, inputs: dict[str, np.ndarray]) -> asyncio.Future:
        """Start `run` off the event loop (call on the loop); the future holds its outputs or its ServingError."""
        batcher = self._batchers.get(signature_name)
        if batcher is not None:
            return asyncio.ensure_future(self._batched(batcher, inputs))
        self._on_rows(_rows(inputs))
        return asyncio.get_running_loop().run_in_executor(self._executor, self.run, signature_name, inputs)

    @staticmethod
    async def _batched(batcher: Batcher, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return await batcher.submit(inputs)
        except BatchingError as err:
            raise errors.from_code_name(err.code, err.message) from None

    def unload(self) -> None:
        """The registry's call once the version's last request is done (any thread; returns at once):
        each batcher runs what it still holds, then stops."""
        self.unloaded = True
        for batcher in self._batchers.values():
            batcher.close_soon()

    async def aclose(self) -> None:
        """After unload(): wait until every batcher has run what it holds and stopped (on the loop)."""
        await asyncio.gather(*(batcher.close() for batcher in self._batchers.values()), return_exceptions=True)


def _refused_input(err: Exception) -> bool:
    # An op refusing its input (e.g. DecodePng on a truncated file) is INVALID_ARGUMENT: one
    # request's data, so its batch is run again request by request (serving.batching).
    return isinstance(err, errors.ServingError) and err.code is errors.Code.INVALID_ARGUMENT


def read_labels(path: Path) -> tuple[str, ...] | None:
    """A version folder's assets/labels.txt, one label per line, or None when it is missing or unreadable."""
    try:
        text = (Path(path) / layout.LABELS_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, TypeError):
        return None
    labels = tuple(line for line in text.split("\n") if line)
    return labels or None


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    for array in inputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 0


def read_meta_graph(path: Path, tags: tuple[str, ...] = (contract.SERVE_TAG,)) -> meta_graph_pb2.MetaGraphDef:
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
        loaded = tf.saved_model.load(str(path), tags=[contract.SERVE_TAG])
    except tf.errors.OpError as err:
        raise op_error(err) from None
    except Exception as err:  # a bad graph surfaces as many Python error types
        raise errors.Unknown(f"{type(err).__name__}: {err}") from None
    servable = Servable(name, version, path, meta_graph, loaded)
    if warmup:
        run_warmup(servable)
    return servable


class Loader:
    """Loads versions for the registry: `load_servable`, then `Servable.serve` with this server's threads
    and batching.

    Owns the batch threads (TF Serving's shared batch scheduler threads: one pool for
    every model) and closes them in `aclose`.
    """

    def __init__(self, executor: Executor, *, warmup: bool = True, batching: BatchingOptions | None = None,
                 on_batch: Callable[[str, int, int], None] | None = None):
        """`on_batch(model, version, rows)` hears every model call (with batching: every batch)."""
        self._executor = executor
        self._warmup = warmup
        self._batching = batching
        self._on_batch = on_batch or (lambda *_: None)
        self._batch_executor = None
        if batching is not None:
            self._batch_executor = concurrent.futures.ThreadPoolExecutor(batching.num_batch_threads, "batch")
        self._loaded: weakref.WeakSet[Servable] = weakref.WeakSet()

    def __call__(self, name: str, version: int, path: Path) -> Servable:
        servable = load_servable(name, version, path, warmup=self._warmup)
        servable.serve(self._executor, on_rows=functools.partial(self._on_batch, name, version),
                       batching=self._batching, batch_executor=self._batch_executor)
        self._loaded.add(servable)
        return servable

    async def aclose(self) -> None:
        """At server shutdown, after the registry's unload_all(): wait for the batchers of unloaded versions
        to stop, then stop the batch threads.

        A version still in use (a request that gave up while its model call runs) is not
        waited for, so a stuck model call cannot hold up shutdown.
        """
        await asyncio.gather(*(servable.aclose() for servable in list(self._loaded) if servable.unloaded))
        if self._batch_executor is not None:
            self._batch_executor.shutdown(wait=False, cancel_futures=True)


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
        servable.run(request.model_spec.signature_name or contract.SERVING_SIGNATURE, inputs)
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
    signature_name = signature_name or contract.SERVING_SIGNATURE
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
