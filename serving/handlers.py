"""The data plane: status, metadata, predict, classify, regress, multi-inference.

Transport-free: REST (rest.py) and gRPC (grpc_service.py) both call this module,
so the two cannot drift apart. It holds TF Serving's rules:

- which version answers (through the registry's leases),
- the checks TF Serving makes on a request and their exact messages
  (`predict_util.cc`, `classifier.cc`, `regressor.cc`, `multi_inference.cc`),
- the REST JSON <-> tensor mapping of `util/json_tensor.cc` (row "instances" and
  columnar "inputs", {"b64": ...}, outputs named *_bytes written as b64, floats
  written as their shortest round-tripping decimal, NaN/Infinity tokens),

plus signflow's guards, applied before anything reaches the graph: request-size
limits and the image check of signflow's `image_bytes` input, so a bad image
fails only its own request, never a batch shared with other clients.

Model calls run on the thread pool (or the batcher), never on the event loop.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import math
import re
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Sequence

import numpy as np
from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    regression_pb2,
)

from serving import errors, images
from serving.registry import DEFAULT_SIGNATURE, IMAGE_INPUT, Lease, Registry, Servable, serialize_examples
from serving.settings import Settings

log = logging.getLogger(__name__)

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
# Feature names under which signflow's classify signature reads image bytes.
IMAGE_FEATURES = ("image", "image_raw")
# json_tensor.cc: kMaxJsonDebugStringBytes.
_DUMP_LIMIT = 256
# Deeper JSON tensors than this are refused outright (no real model has rank 32).
_MAX_JSON_RANK = 32

# DataType -> (numpy dtype, DataTypeString name).
_DTYPES: dict[int, tuple[Any, str]] = {
    types_pb2.DT_FLOAT: (np.float32, "float"),
    types_pb2.DT_DOUBLE: (np.float64, "double"),
    types_pb2.DT_INT32: (np.int32, "int32"),
    types_pb2.DT_INT16: (np.int16, "int16"),
    types_pb2.DT_INT8: (np.int8, "int8"),
    types_pb2.DT_UINT8: (np.uint8, "uint8"),
    types_pb2.DT_INT64: (np.int64, "int64"),
    types_pb2.DT_UINT32: (np.uint32, "uint32"),
    types_pb2.DT_UINT64: (np.uint64, "uint64"),
    types_pb2.DT_BOOL: (np.bool_, "bool"),
    types_pb2.DT_STRING: (object, "string"),
    types_pb2.DT_HALF: (np.float16, "half"),
    types_pb2.DT_UINT16: (np.uint16, "uint16"),
    types_pb2.DT_COMPLEX64: (np.complex64, "complex64"),
    types_pb2.DT_COMPLEX128: (np.complex128, "complex128"),
}
# json_tensor.cc AddValueToTensor has no case for these: UNIMPLEMENTED over REST (gRPC takes them).
_NO_JSON = {types_pb2.DT_HALF, types_pb2.DT_UINT16, types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128,
            types_pb2.DT_BFLOAT16}
_NUMPY_NAMES = {np.dtype(np_type): name for np_type, name in _DTYPES.values() if np_type is not object}


def dtype_name(dtype: int) -> str:
    return _DTYPES.get(dtype, (None, types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()))[1]


@dataclass(frozen=True)
class ModelRef:
    """Which servable a request names (TF Serving's ModelSpec without the signature)."""

    name: str
    version: int | None = None
    label: str | None = None


@dataclass
class PredictResult:
    version: int
    signature_name: str
    outputs: dict[str, np.ndarray]


@dataclass
class ClassifyResult:
    version: int
    signature_name: str
    result: classification_pb2.ClassificationResult


@dataclass
class RegressResult:
    version: int
    signature_name: str
    result: regression_pb2.RegressionResult


@dataclass
class JsonResponse:
    """A REST answer: the body TF Serving would send, and the version that produced it."""

    body: bytes
    version: int | None = None


class Handlers:
    """The operations both transports offer, over one registry."""

    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        executor: Executor,
        *,
        batching_options=None,
        batch_executor: Executor | None = None,
        on_batch: Callable[[str, int, int], None] | None = None,
        on_predicted: Callable[[str, int, np.ndarray, Mapping[str, np.ndarray]], None] | None = None,
    ):
        """`batching_options` (a serving.batching.BatchingOptions) turns dynamic batching on.

        `on_predicted(model, version, image_bytes, outputs)` hears every answered call of a
        serving_default with an image_bytes input (the request log). It runs on the event
        loop, so it must only hand the data off; an error in it is logged, never returned.
        """
        self._registry = registry
        self._settings = settings
        self._executor = executor
        self._batching_options = batching_options
        self._batch_executor = batch_executor
        self._on_batch = on_batch or (lambda *_: None)
        self._on_predicted = on_predicted
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: set[asyncio.Task] = set()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop requests run on (batchers live there)."""
        self._loop = loop

    # -- status and metadata ----------------------------------------------------

    def model_status(self, ref: ModelRef) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatus. A label is ignored, as in TF Serving (all versions are listed)."""
        response = get_model_status_pb2.GetModelStatusResponse()
        state_enum = get_model_status_pb2.ModelVersionStatus.State
        for record in self._registry.status(ref.name, ref.version):
            entry = response.model_version_status.add(version=record.version, state=state_enum.Value(record.state))
            entry.status.error_code = _code_value(record.error_code)
            entry.status.error_message = record.error_message
        return response

    def model_metadata(self, ref: ModelRef, fields: Sequence[str] = ("signature_def",)
                       ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not fields:
            raise errors.InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != "signature_def":
                raise errors.InvalidArgument(f"Metadata field {field} is not supported")
        with self._registry.acquire(ref.name, ref.version, ref.label) as lease:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = ref.name
            response.model_spec.version.value = lease.version
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for name, signature in lease.servable.signature_defs.items():
                signature_map.signature_def[name].CopyFrom(signature)
            response.metadata["signature_def"].Pack(signature_map)
            return response

    def model_status_json(self, ref: ModelRef) -> JsonResponse:
        return JsonResponse(_proto_json(self.model_status(ref)))

    def model_metadata_json(self, ref: ModelRef) -> JsonResponse:
        response = self.model_metadata(ref)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        # Built by hand, as http_rest_api_util.cc does: the Any is shown unpacked.
        document = {
            "model_spec": _proto_dict(response.model_spec),
            "metadata": {"signature_def": _proto_dict(signature_map)},
        }
        return JsonResponse(json.dumps(document, indent=1).encode(), response.model_spec.version.value)

    # -- predict -------------------------------------------------------------------

    async def predict(self, ref: ModelRef, signature_name: str, inputs: Mapping[str, np.ndarray],
                      output_filter: Sequence[str] = ()) -> PredictResult:
        """Predict on tensors (gRPC's PredictRequest, already decoded)."""
        with self._registry.acquire(ref.name, ref.version, ref.label) as lease:
            return await self._predict_with(lease, signature_name, dict(inputs), output_filter)

    async def predict_json(self, ref: ModelRef, body: bytes) -> JsonResponse:
        """Predict from a REST body, answering TF Serving's JSON."""
        document = await self._cpu(_parse_document, body)
        signature_name = _signature_name(document)
        with self._registry.acquire(ref.name, ref.version, ref.label) as lease:
            signature = lease.servable.signature_defs.get(signature_name or DEFAULT_SIGNATURE)
            if signature is None:
                raise errors.InvalidArgument(
                    f'Serving signature name: "{signature_name or DEFAULT_SIGNATURE}" not found in signature def')
            inputs, row_format = await self._cpu(self._inputs_from_json, document, signature, signature_name)
            result = await self._predict_with(lease, signature_name, inputs, ())
            body = await self._cpu(_predict_json_body, result.outputs, row_format)
            return JsonResponse(body, result.version)

    async def _predict_with(self, lease: Lease, signature_name: str, inputs: dict[str, np.ndarray],
                            output_filter: Sequence[str]) -> PredictResult:
        servable = lease.servable
        signature_name = signature_name or DEFAULT_SIGNATURE
        signature = servable.signature_defs.get(signature_name)
        if signature is None:
            raise errors.FailedPrecondition(f'Serving signature key "{signature_name}" not found.')
        _check_predict_inputs(signature, inputs)
        aliases = _check_output_filter(signature, output_filter)
        self._check_batch_size(inputs)
        if servable.validates_images and signature_name == DEFAULT_SIGNATURE and IMAGE_INPUT in inputs:
            await self._cpu(_check_images, inputs[IMAGE_INPUT], self._settings.max_image_pixels)
        outputs = await self._run(lease, signature_name, inputs)
        if (self._on_predicted is not None and servable.validates_images and signature_name == DEFAULT_SIGNATURE
                and IMAGE_INPUT in inputs):
            try:
                self._on_predicted(servable.name, lease.version, inputs[IMAGE_INPUT], outputs)
            except Exception:  # the answer is ready: a logging problem must not lose it
                log.exception("on_predicted hook failed for model %s version %s", servable.name, lease.version)
        return PredictResult(lease.version, signature_name, {alias: outputs[alias] for alias in aliases})

    # -- classify / regress / multi-inference --------------------------------------

    async def classify(self, ref: ModelRef, signature_name: str, request_input: input_pb2.Input) -> ClassifyResult:
        with self._registry.acquire(ref.name, ref.version, ref.label) as lease:
            return await self._classify_with(lease, signature_name, request_input)

    async def regress(self, ref: ModelRef, signature_name: str, request_input: input_pb2.Input) -> RegressResult:
        with self._registry.acquire(ref.name, ref.version, ref.label) as lease:
            return await self._regress_with(lease, signature_name, request_input)

    async def classify_json(self, ref: ModelRef, body: bytes) -> JsonResponse:
        signature_name, request_input = await self._cpu(_examples_from_json, body)
        result = await self.classify(ref, signature_name, request_input)
        results = [[[_text(c.label), _float32(c.score)] for c in classes.classes]
                   for classes in result.result.classifications]
        if not results:
            raise errors.InvalidArgument("Cannot convert empty ClassificationResults to JSON")
        return JsonResponse(_dumps({"results": results}), result.version)

    async def regress_json(self, ref: ModelRef, body: bytes) -> JsonResponse:
        signature_name, request_input = await self._cpu(_examples_from_json, body)
        result = await self.regress(ref, signature_name, request_input)
        values = [_float32(r.value) for r in result.result.regressions]
        if not values:
            raise errors.InvalidArgument("Cannot convert empty RegressionResults to JSON")
        return JsonResponse(_dumps({"results": values}), result.version)

    async def multi_inference(self, request: inference_pb2.MultiInferenceRequest
                              ) -> inference_pb2.MultiInferenceResponse:
        """MultiInference (multi_inference.cc): classify/regress tasks over one input, one version."""
        if not request.tasks:
            raise errors.InvalidArgument("Found no tasks in MultiInferenceRequest")
        name = request.tasks[0].model_spec.name
        seen = set()
        for task in request.tasks:
            if task.model_spec.name != name:
                raise errors.InvalidArgument(
                    "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            if task.model_spec.signature_name in seen:
                raise errors.InvalidArgument(
                    f"Duplicate evaluation of signature: {task.model_spec.signature_name}")
            seen.add(task.model_spec.signature_name)
            if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise errors.Unimplemented(f"Unsupported signature method_name: {task.method_name}")
        spec = request.tasks[0].model_spec
        ref = model_ref(spec)
        response = inference_pb2.MultiInferenceResponse()
        with self._registry.acquire(ref.name, ref.version, ref.label) as lease:
            for task in request.tasks:
                entry = response.results.add()
                if task.method_name == CLASSIFY_METHOD:
                    result = await self._classify_with(lease, task.model_spec.signature_name, request.input)
                    entry.classification_result.CopyFrom(result.result)
                else:
                    result = await self._regress_with(lease, task.model_spec.signature_name, request.input)
                    entry.regression_result.CopyFrom(result.result)
                fill_model_spec(entry.model_spec, name, result.signature_name, lease.version)
        return response

    async def _classify_with(self, lease: Lease, signature_name: str, request_input) -> ClassifyResult:
        signature_name = signature_name or DEFAULT_SIGNATURE
        signature = _example_signature(lease.servable, signature_name, "classification")
        if len(signature.outputs) not in (1, 2):
            raise errors.InvalidArgument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
        if "classes" not in signature.outputs and "scores" not in signature.outputs:
            raise errors.InvalidArgument(
                'Expected classification signature outputs to contain at least one of "classes" or "scores". '
                f"Signature was: {signature}")
        outputs, count = await self._run_examples(lease, signature_name, request_input)
        classes, scores = outputs.get("classes"), outputs.get("scores")
        for name, tensor, kind in (("classes", classes, np.object_), ("scores", scores, np.float32)):
            if tensor is None:
                continue
            if tensor.ndim != 2:
                raise errors.InvalidArgument(
                    f"Expected Tensor shape: [batch_size num_classes] but got {list(tensor.shape)}")
            if tensor.dtype != kind:
                wanted = "DT_STRING" if name == "classes" else "DT_FLOAT"
                raise errors.InvalidArgument(f"Expected {name} Tensor of {wanted}. Got: {tensor.dtype}")
            if tensor.shape[0] != count:
                raise errors.InvalidArgument(f"Expected {name} output batch size of {count}. Got: {tensor.shape[0]}")
        if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
            raise errors.InvalidArgument(
                f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}")
        num_classes = (classes if classes is not None else scores).shape[1]
        result = classification_pb2.ClassificationResult()
        for i in range(count):
            entry = result.classifications.add()
            for c in range(num_classes):
                cls = entry.classes.add()
                if classes is not None:
                    cls.label = _text(classes[i, c])
                if scores is not None:
                    cls.score = float(scores[i, c])
        return ClassifyResult(lease.version, signature_name, result)

    async def _regress_with(self, lease: Lease, signature_name: str, request_input) -> RegressResult:
        signature_name = signature_name or DEFAULT_SIGNATURE
        signature = _example_signature(lease.servable, signature_name, "regression")
        if len(signature.outputs) != 1:
            raise errors.InvalidArgument("Expected one output Tensor.")
        if "outputs" not in signature.outputs:
            raise errors.InvalidArgument(f"No regression outputs found in SignatureDef: {signature}")
        outputs, count = await self._run_examples(lease, signature_name, request_input)
        values = outputs["outputs"]
        if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
            raise errors.InvalidArgument(
                f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {list(values.shape)}")
        if values.shape[0] != count:
            raise errors.InvalidArgument(
                f"Input batch size did not match output batch size: {count} vs. {values.shape[0]}")
        if values.dtype != np.float32:
            raise errors.InvalidArgument(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype}")
        result = regression_pb2.RegressionResult()
        for value in values.reshape(-1):
            result.regressions.add(value=float(value))
        return RegressResult(lease.version, signature_name, result)

    async def _run_examples(self, lease: Lease, signature_name: str, request_input) -> tuple[dict, int]:
        examples = serialize_examples(request_input)
        if not examples:
            raise errors.InvalidArgument("Input is empty.")
        if len(examples) > self._settings.max_instances_per_request:
            raise _too_many(len(examples), self._settings.max_instances_per_request)
        if lease.servable.validates_images:
            await self._cpu(_check_example_images, request_input, self._settings.max_image_pixels)
        (input_name,) = lease.servable.signature_defs[signature_name].inputs
        outputs = await self._run(lease, signature_name, {input_name: np.array(examples, dtype=object)})
        return outputs, len(examples)

    # -- execution -------------------------------------------------------------------

    def _check_batch_size(self, inputs: Mapping[str, np.ndarray]) -> None:
        limit = self._settings.max_instances_per_request
        for array in inputs.values():
            if array.ndim and array.shape[0] > limit:
                raise _too_many(array.shape[0], limit)

    async def _run(self, lease: Lease, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a signature on the pool or through its batcher; the lease is held until the model is done."""
        servable = lease.servable
        if self._batching_options is not None:
            future = asyncio.ensure_future(self._batcher(servable, signature_name).submit(inputs))
        else:
            self._on_batch(servable.name, servable.version, _rows(inputs))
            future = asyncio.get_running_loop().run_in_executor(self._executor, servable.run, signature_name, inputs)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The caller gave up (deadline, disconnect); the model still runs, so
            # the version stays in use until it is done.
            lease.keep_until(future)
            raise
        except _batching_error_types() as err:
            raise errors.from_code_name(err.code, err.message) from None

    def _batcher(self, servable: Servable, signature_name: str):
        from serving.batching import Batcher

        batcher = servable.batchers.get(signature_name)
        if batcher is None:
            name, version = servable.name, servable.version
            batcher = Batcher(
                functools.partial(servable.run, signature_name), self._batching_options, self._batch_executor,
                on_batch=lambda stats: self._on_batch(name, version, stats.batch_size))
            servable.batchers[signature_name] = batcher
        return batcher

    def on_unloaded(self, servable: Servable) -> None:
        """Registry callback: close the batchers of a version that left service (any thread)."""
        if not servable.batchers or self._loop is None or self._loop.is_closed():
            return
        batchers = list(servable.batchers.values())

        def close() -> None:
            for batcher in batchers:
                task = self._loop.create_task(batcher.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

        self._loop.call_soon_threadsafe(close)

    async def aclose(self) -> None:
        """Wait for batchers being closed (server shutdown)."""
        await asyncio.sleep(0)  # let close() callbacks scheduled from other threads run
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def _cpu(self, function: Callable, *args):
        """CPU-bound request work (JSON, image checks) on the pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(function, *args))

    def _inputs_from_json(self, document: dict, signature: meta_graph_pb2.SignatureDef,
                          signature_name: str) -> tuple[dict[str, np.ndarray], bool]:
        infos = dict(signature.inputs)
        if not infos:
            raise errors.InvalidArgument(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
        return inputs_from_json(document, infos, self._settings.max_instances_per_request)


# ---------------------------------------------------------------------------------------------
# Checks shared by both transports (predict_util.cc, classifier.cc, regressor.cc)

def _check_predict_inputs(signature: meta_graph_pb2.SignatureDef, inputs: Mapping[str, np.ndarray]) -> None:
    sent, wanted = set(inputs), set(signature.inputs)
    if len(sent) > len(wanted) or (len(sent) < len(wanted) and not signature.defaults):
        raise errors.InvalidArgument(
            f"input size does not match signature: {len(sent)}!={len(wanted)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
            f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.")
    for alias in sorted(sent):
        if alias not in signature.inputs:
            raise errors.InvalidArgument(
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {{{','.join(sorted(wanted))}}}.")
    for index, alias in enumerate(sorted(sent)):
        expected = signature.inputs[alias].dtype
        if not _numpy_matches(inputs[alias], expected):
            raise errors.InvalidArgument(
                f"Expects arg[{index}] to be {dtype_name(expected)} but "
                f"{_numpy_dtype_name(inputs[alias])} is provided")


def _check_output_filter(signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]) -> list[str]:
    seen: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise errors.InvalidArgument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{','.join(sorted(signature.outputs))}}}.")
        if alias in seen:
            raise errors.InvalidArgument(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen or list(signature.outputs)


def _example_signature(servable: Servable, signature_name: str, kind: str) -> meta_graph_pb2.SignatureDef:
    signature = servable.signature_defs.get(signature_name)
    if signature is None:
        raise errors.InvalidArgument(f"No signature was found with the name: {signature_name}")
    if len(signature.inputs) != 1:
        raise errors.InvalidArgument("Expected one input Tensor.")
    if "inputs" not in signature.inputs:
        raise errors.InvalidArgument(f"No {kind} inputs found in SignatureDef: {signature}")
    return signature


def _numpy_matches(array: np.ndarray, dtype: int) -> bool:
    expected = _DTYPES.get(dtype, (None, ""))[0]
    if expected is object:
        return array.dtype == object or array.dtype.kind == "S"
    return expected is not None and array.dtype == np.dtype(expected)


def _numpy_dtype_name(array: np.ndarray) -> str:
    if array.dtype == object or array.dtype.kind == "S":
        return "string"
    return _NUMPY_NAMES.get(array.dtype, str(array.dtype))


def _too_many(count: int, limit: int) -> errors.ServingError:
    return errors.InvalidArgument(
        f"Request has {count} instances; this server accepts at most {limit} per request "
        "(--max_instances_per_request)")


def _check_images(values: np.ndarray, max_pixels: int) -> None:
    for index, value in enumerate(values.reshape(-1)):
        try:
            images.inspect_image(bytes(value), max_pixels=max_pixels)
        except images.InvalidImage as err:
            raise errors.InvalidArgument(
                f"Input {IMAGE_INPUT}, element {index}: not an acceptable image ({_image_reason(err)})") from None


def _check_example_images(request_input: input_pb2.Input, max_pixels: int) -> None:
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        listed, context = request_input.example_list.examples, None
    elif kind == "example_list_with_context":
        listed, context = request_input.example_list_with_context.examples, request_input.example_list_with_context.context
    else:
        return
    for index, example in enumerate(listed):
        for source in (example, context):
            if source is None:
                continue
            for feature in IMAGE_FEATURES:
                values = source.features.feature.get(feature)
                if values is None:
                    continue
                for value in values.bytes_list.value:
                    try:
                        images.inspect_image(value, max_pixels=max_pixels)
                    except images.InvalidImage as err:
                        raise errors.InvalidArgument(
                            f"Example {index}, feature {feature}: not an acceptable image "
                            f"({_image_reason(err)})") from None


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    for array in inputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 0


def _image_reason(err: images.InvalidImage) -> str:
    # Pillow's messages name its in-memory file object; that is noise to a client.
    detail = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", err.detail)
    return f"{err.reason}: {detail}"


def _batching_error_types() -> tuple[type, ...]:
    from serving.batching import BatchingError

    return (BatchingError,)


def _code_value(name: str) -> int:
    from tensorflow_serving.apis import status_pb2

    enum = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type
    value = enum.values_by_name.get(name)
    return value.number if value is not None else enum.values_by_name["UNKNOWN"].number


def model_ref(spec: model_pb2.ModelSpec) -> ModelRef:
    """A gRPC ModelSpec as a ModelRef (version and label are a oneof)."""
    choice = spec.WhichOneof("version_choice")
    return ModelRef(
        name=spec.name,
        version=spec.version.value if choice == "version" else None,
        label=spec.version_label if choice == "version_label" else None,
    )


def fill_model_spec(spec: model_pb2.ModelSpec, name: str, signature_name: str, version: int) -> None:
    """The model_spec of a response: requested name, resolved signature and version (util.cc MakeModelSpec)."""
    spec.name = name
    spec.signature_name = signature_name
    spec.version.value = version


# ---------------------------------------------------------------------------------------------
# REST JSON (tensorflow_serving/util/json_tensor.cc)

_JSON_ERRORS = {
    # Python's json messages -> RapidJSON's (GetParseError_En), for the common cases.
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
}
_DECODER = json.JSONDecoder()


# Bytes that are not UTF-8, as the surrogateescape decoding below leaves them.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")
# One escape in a JSON string: \uXXXX (group 1), or a backslash and the character it escapes.
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)


def parse_json(body: bytes, *, trailing: bool = True, lone_surrogates: bool = False) -> Any:
    """ParseJson: the first JSON value of the body, with RapidJSON's error messages.

    With `trailing`, bytes after that value are ignored; without, only whitespace may follow.

    Strings must be Unicode text: bytes that are not UTF-8 are refused ("Invalid encoding
    in string.", where TF Serving would pass them on as they are), and so are \\u escapes of
    lone surrogates unless `lone_surrogates` ("The surrogate pair in string is invalid.").
    Neither can be encoded as UTF-8, so neither could be a signature, input or feature
    name (protobuf strings), a string tensor, or part of a JSON answer.
    """
    if not body:
        raise errors.InvalidArgument("JSON Parse error: The document is empty")
    # surrogateescape: a byte that is not UTF-8 becomes one character, so the parser can
    # still report the syntax error that comes first, and _unicode_error finds the byte.
    text = body.decode("utf-8", "surrogateescape")
    start = len(text) - len(text.lstrip(" \t\n\r"))
    if start == len(text):
        raise errors.InvalidArgument(f"JSON Parse error: The document is empty. at offset: {len(text)}")
    try:
        value, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as err:
        message = _JSON_ERRORS.get(err.msg, err.msg)
        if err.msg == "Expecting ',' delimiter":
            message = "Missing a comma or ']' after an array element." if _in_array(text, err.pos) \
                else "Missing a comma or '}' after an object member."
        raise errors.InvalidArgument(f"JSON Parse error: {message} at offset: {err.pos}") from None
    except RecursionError:
        raise errors.InvalidArgument("JSON Parse error: The document is nested too deeply") from None
    problem = _unicode_error(text, start, end, lone_surrogates)
    if problem is not None:
        raise errors.InvalidArgument(f"JSON Parse error: {problem}")
    if not trailing and text[end:].strip(" \t\n\r"):
        offset = end + len(text[end:]) - len(text[end:].lstrip(" \t\n\r"))
        raise errors.InvalidArgument(
            f"JSON Parse error: The document root must not be followed by other values. at offset: "
            f"{_byte_offset(text, offset)}")
    return value


def _unicode_error(text: str, start: int, end: int, lone_surrogates: bool) -> str | None:
    """RapidJSON's message and byte offset for the first string in text[start:end] that is not Unicode text.

    The parser accepted text[start:end], so every backslash and every byte that is not
    UTF-8 in it lies inside a string.
    """
    bad_byte = _NOT_UTF8.search(text, start, end)
    stop = bad_byte.start() if bad_byte else end
    if not lone_surrogates and text.find("\\u", start, stop) >= 0:
        lone = None  # where the first lone surrogate escape starts
        high = None  # (start, end) of a high surrogate escape whose low half may follow
        for escape in _ESCAPE.finditer(text, start, stop):
            code = int(escape.group(1), 16) if escape.group(1) else -1
            if high is not None:
                if 0xDC00 <= code <= 0xDFFF and escape.start() == high[1]:
                    high = None  # a pair: one character
                    continue
                lone = high[0]
                break
            if 0xD800 <= code <= 0xDBFF:
                high = (escape.start(), escape.end())
            elif 0xDC00 <= code <= 0xDFFF:
                lone = escape.start()
                break
        else:
            if high is not None:
                lone = high[0]
        if lone is not None:
            return f"The surrogate pair in string is invalid. at offset: {_byte_offset(text, lone)}"
    if bad_byte:
        return f"Invalid encoding in string. at offset: {_byte_offset(text, bad_byte.start())}"
    return None


def _byte_offset(text: str, index: int) -> int:
    """The offset in the body's bytes of text[index] (each surrogateescape character was one byte)."""
    return len(text[:index].encode("utf-8", "surrogateescape"))


def _parse_document(body: bytes) -> dict:
    """ParseJson: the first JSON value of the body (trailing bytes ignored), which must be an object."""
    document = parse_json(body)
    if not isinstance(document, dict):
        raise errors.InvalidArgument(f"JSON Value: {_dump(document)} Is not object")
    return document


def _in_array(text: str, pos: int) -> bool:
    # Which container the parser was in: the innermost unclosed bracket before pos.
    depth = 0
    for char in reversed(text[:pos]):
        if char in "]}":
            depth += 1
        elif char in "[{":
            if depth == 0:
                return char == "["
            depth -= 1
    return False


def _signature_name(document: dict) -> str:
    value = document.get("signature_name", "")
    if not isinstance(value, str):
        raise errors.InvalidArgument(
            f"JSON Value: {_dump(document)} not formatted correctly. 'signature_name' key must be a string value.")
    return value


def inputs_from_json(document: dict, infos: Mapping[str, Any], max_instances: int
                     ) -> tuple[dict[str, np.ndarray], bool]:
    """FillPredictRequestFromJson: tensors from "instances" (row) or "inputs" (columnar).

    Returns (tensors by input name, row_format). `infos` are the signature's TensorInfos.
    """
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise errors.InvalidArgument(
            f"JSON Value: {_dump(document)} Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist ")
    if has_instances:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise errors.InvalidArgument(f"JSON Value: {_dump(document)} Expecting 'instances' to be an list/array")
        if not instances:
            raise errors.InvalidArgument(f"JSON Value: {_dump(document)} No values in 'instances' array")
        if len(instances) > max_instances:
            raise _too_many(len(instances), max_instances)
        return _from_instances(instances, infos), True
    if has_inputs:
        return _from_inputs(document["inputs"], infos), False
    raise errors.InvalidArgument("Missing 'inputs' or 'instances' key")


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_element_object(value) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


class _Column:
    """One input being filled from instances: its values and the shape every row must share."""

    def __init__(self, info):
        self.dtype = info.dtype
        self.values: list = []
        self.shape: list[int] | None = None
        self.size = 0

    def add(self, item) -> None:
        shape = _json_shape(item)
        values: list = []
        _fill(item, 0, shape, self.dtype, values)
        if self.shape is None:
            self.shape, self.size = shape, len(values)
        elif self.size != len(values):
            raise errors.InvalidArgument(f"Expecting tensor size: {self.size} but got: {len(values)}")
        elif self.shape != shape:
            raise errors.InvalidArgument(
                f"Expecting shape {_shape_text(self.shape)} but got: {_shape_text(shape)}")
        self.values.extend(values)

    def tensor(self, rows: int) -> np.ndarray:
        return _to_array(self.values, [rows] + (self.shape or []), self.dtype)


def _from_instances(instances: list, infos: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise errors.InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as "
            "per tensorinfo_map")
    columns = {name: _Column(info) for name, info in infos.items()}
    names = sorted(infos)
    if _is_element_object(instances[0]):
        for index, element in enumerate(instances):
            if not _is_element_object(element):
                raise errors.InvalidArgument(f"Expecting object but got list at item {index} of input list")
            for key, value in element.items():
                try:
                    if key not in columns:
                        raise errors.InvalidArgument(f"JSON object: does not have named input: {key}")
                    columns[key].add(value)
                except errors.ServingError as err:
                    raise errors.InvalidArgument(
                        f"Failed to process element: {index} key: {key} of 'instances' list. "
                        f"Error: {_status_text(err)}") from None
            if set(element) != set(names):
                raise errors.InvalidArgument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: {_dump(element)} "
                    f"keys must be equal to: {','.join(names)}")
    else:
        name = names[0]
        for index, element in enumerate(instances):
            if _is_element_object(element):
                raise errors.InvalidArgument(f"Expecting value/list but got object at item {index} of input list")
            try:
                columns[name].add(element)
            except errors.ServingError as err:
                raise errors.InvalidArgument(
                    f"Failed to process element: {index} of 'instances' list. Error: {_status_text(err)}") from None
        columns = {name: columns[name]}
    return {name: column.tensor(len(instances)) for name, column in columns.items()}


def _from_inputs(value, infos: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(infos) > 1:
            raise errors.InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as "
                "per tensorinfo_map")
        ((name, info),) = infos.items()
        return {name: _tensor(value, info.dtype)}
    tensors = {}
    for name in sorted(infos):
        if name not in value:
            raise errors.InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = _tensor(value[name], infos[name].dtype)
    return tensors


def _tensor(value, dtype: int) -> np.ndarray:
    shape = _json_shape(value)
    values: list = []
    _fill(value, 0, shape, dtype, values)
    return _to_array(values, shape, dtype)


def _json_shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if len(shape) > _MAX_JSON_RANK:
            raise errors.InvalidArgument(f"JSON value is nested more than {_MAX_JSON_RANK} levels deep")
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level: int, shape: list[int], dtype: int, out: list) -> None:
    """FillTensorProto: append the leaves of `value` (checked against shape and dtype) to `out`."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise errors.InvalidArgument(
                f"JSON Value: {_dump(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {rank}")
        if isinstance(value, dict):
            if dtype != types_pb2.DT_STRING:
                raise _type_error(value, dtype)
            out.append(_decode_b64_object(value))
        else:
            out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise errors.InvalidArgument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise errors.InvalidArgument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}")
    if level == rank - 1:
        # The innermost lists hold the scalars: one loop, no recursion per value.
        for item in value:
            if isinstance(item, list):
                raise errors.InvalidArgument(f"Encountered list at unexpected level: {level + 1} expected < {rank}")
            if isinstance(item, dict):
                if dtype != types_pb2.DT_STRING:
                    raise _type_error(item, dtype)
                out.append(_decode_b64_object(item))
            else:
                out.append(_scalar(item, dtype))
        return
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


_INT_RANGES = {
    types_pb2.DT_INT32: (-2**31, 2**31 - 1), types_pb2.DT_INT16: (-2**31, 2**31 - 1),
    types_pb2.DT_INT8: (-2**31, 2**31 - 1), types_pb2.DT_UINT8: (-2**31, 2**31 - 1),
    types_pb2.DT_INT64: (-2**63, 2**63 - 1), types_pb2.DT_UINT32: (0, 2**32 - 1),
    types_pb2.DT_UINT64: (0, 2**64 - 1),
}


def _scalar(value, dtype: int):
    """AddValueToTensor: one JSON scalar as `dtype`, with RapidJSON's type predicates."""
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(value, dtype)
        return float(value)
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _type_error(value, dtype)
        # NOTE: like TF Serving, no range check for int8/int16/uint8 (int_val is int32); numpy wraps.
        return value
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8", "surrogateescape")
    raise errors.Unimplemented(f"Conversion of JSON Value: {_dump(value)} to type: {dtype_name(dtype)}")


def _decode_b64_object(value: dict) -> bytes:
    if not _is_b64(value):
        raise errors.InvalidArgument(f"JSON Value: {_dump(value)} not formatted correctly for base64 data")
    try:
        # serving.images is the one base64 decoder; strict is TF Serving's alphabet.
        return images.decode_b64(value["b64"], lenient=False)
    except images.InvalidImage:
        raise errors.InvalidArgument("Unable to base64 decode") from None


def _to_array(values: list, shape: list[int], dtype: int) -> np.ndarray:
    np_type = _DTYPES[dtype][0]
    if np_type is object:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    if dtype in (types_pb2.DT_INT8, types_pb2.DT_INT16, types_pb2.DT_UINT8):
        return np.array(values, dtype=np.int64).astype(np_type).reshape(shape)
    return np.array(values, dtype=np_type).reshape(shape)


def _type_error(value, dtype: int) -> errors.ServingError:
    if dtype in _NO_JSON and not isinstance(value, dict):
        return errors.Unimplemented(f"Conversion of JSON Value: {_dump(value)} to type: {dtype_name(dtype)}")
    return errors.InvalidArgument(
        f"JSON Value: {_dump(value)} Type: {_json_type(value)} is not of expected type: {dtype_name(dtype)}")


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _status_text(err: errors.ServingError) -> str:
    """absl::Status::ToString(): CODE: message."""
    return f"{err.code.name}: {err.message}"


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _dump(value) -> str:
    """JsonValueToDebugString: the value as JSON, cut at 256 bytes (possibly mid-token)."""
    parts: list[str] = []
    budget = [_DUMP_LIMIT]

    def emit(text: str) -> bool:
        parts.append(text)
        budget[0] -= len(text)
        return budget[0] > 0

    def walk(item) -> bool:
        if isinstance(item, dict):
            if not emit("{"):
                return False
            for i, (key, member) in enumerate(item.items()):
                if not emit((", " if i else "") + json.dumps(key, ensure_ascii=False) + ": ") or not walk(member):
                    return False
            return emit("}")
        if isinstance(item, list):
            if not emit("["):
                return False
            for i, member in enumerate(item):
                if (i and not emit(", ")) or not walk(member):
                    return False
            return emit("]")
        if isinstance(item, float) and not math.isfinite(item):
            return emit("NaN" if math.isnan(item) else ("Infinity" if item > 0 else "-Infinity"))
        return emit(json.dumps(item, ensure_ascii=False))

    walk(value)
    return "".join(parts)[:_DUMP_LIMIT]


def _examples_from_json(body: bytes) -> tuple[str, input_pb2.Input]:
    """FillClassifyRegressRequestFromJson: the whole body is checked before the model is looked up."""
    document = _parse_document(body)
    signature_name = _signature_name(document)
    request_input = input_pb2.Input()
    context = None
    if "context" in document:
        context = request_input.example_list_with_context.context
        _example_from_json(document["context"], context)
    if "examples" not in document:
        raise errors.InvalidArgument(
            f"JSON Value: {_dump(document)} When method is classify, key 'examples' is expected and was not found")
    examples = document["examples"]
    if not isinstance(examples, list):
        raise errors.InvalidArgument(f"JSON Value: {_dump(document)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise errors.InvalidArgument(f"JSON Value: {_dump(document)} 'examples' value is an empty array")
    target = (request_input.example_list_with_context.examples if context is not None
              else request_input.example_list.examples)
    for value in examples:
        _example_from_json(value, target.add())
    return signature_name, request_input


def _example_from_json(value, example: example_pb2.Example) -> None:
    if not isinstance(value, dict):
        raise errors.InvalidArgument(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_to_feature(item, name, feature)
        example.features.feature[name].CopyFrom(feature)


def _add_to_feature(value, name: str, feature: feature_pb2.Feature) -> None:
    """AddValueToFeature: JSON scalar -> bytes/float/int64 list, with TF Serving's messages."""
    kind = feature.WhichOneof("kind")

    def require(wanted: str) -> None:
        if kind is not None and kind != wanted:
            kind_name = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}[kind]
            raise errors.InvalidArgument(f"Unexpected element type in feature: {name} expecting type: {kind_name}")

    if value is None or isinstance(value, list) or (isinstance(value, dict) and not _is_b64(value)):
        raise errors.InvalidArgument(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
    if isinstance(value, bool):
        require("int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, dict):
        require("bytes_list")
        feature.bytes_list.value.append(_decode_b64_object(value))
    elif isinstance(value, str):
        require("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8", "surrogateescape"))
    elif isinstance(value, float) or not -2**63 <= value < 2**64:
        # RapidJSON reads integers beyond uint64 as doubles.
        require("float_list")
        feature.float_list.value.append(float(value))
    else:
        require("int64_list")
        if value >= 2**63:
            raise errors.InvalidArgument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.int64_list.value.append(value)


def _predict_json_body(outputs: dict[str, np.ndarray], row_format: bool) -> bytes:
    """MakeJsonFromTensors: {"predictions": ...} for row requests, {"outputs": ...} for columnar."""
    if not outputs:
        raise errors.InvalidArgument("Cannot convert empty tensor map to JSON")
    if not row_format:
        if len(outputs) == 1:
            ((name, tensor),) = outputs.items()
            return _dumps({"outputs": _json_value(tensor, name)})
        return _dumps({"outputs": {name: _json_value(tensor, name) for name, tensor in outputs.items()}})
    batch = -1
    for name, tensor in outputs.items():
        if tensor.ndim == 0:
            raise errors.InvalidArgument(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and tensor.shape[0] != batch:
            raise errors.InvalidArgument(
                f"Tensor name: {name} has inconsistent batch size: {tensor.shape[0]} expecting: {batch}")
        batch = tensor.shape[0]
    if len(outputs) == 1:
        ((name, tensor),) = outputs.items()
        return _dumps({"predictions": _json_value(tensor, name)})
    columns = {name: _json_value(tensor, name) for name, tensor in outputs.items()}
    return _dumps({"predictions": [{name: column[i] for name, column in columns.items()} for i in range(batch)]})


def _json_value(tensor: np.ndarray, name: str):
    """A tensor as nested JSON values, written as TF Serving writes them."""
    tensor = np.asarray(tensor)
    if tensor.dtype == object or tensor.dtype.kind == "S":
        if name.endswith("_bytes"):
            return _map_nested(tensor.tolist(), lambda b: {"b64": base64.b64encode(bytes(b)).decode("ascii")})
        return _map_nested(tensor.tolist(), _text)
    if tensor.dtype == np.float32:
        # Shortest decimal that reads back as the same float32 (WriteDecimal's intent), not
        # the float64 expansion's noise digits.
        return tensor.astype(str).astype(np.float64).tolist()
    if tensor.dtype in _JSON_OUTPUT_TYPES:
        return tensor.tolist()
    raise errors.InvalidArgument(
        f"Failed to write JSON value for tensor type: {_NUMPY_NAMES.get(tensor.dtype, str(tensor.dtype))}")


# AddSingleValueAndAdvance's cases (float32 and strings are handled above).
_JSON_OUTPUT_TYPES = tuple(np.dtype(t) for t in (
    np.float64, np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, np.uint64))


def _map_nested(value, function):
    if isinstance(value, list):
        return [_map_nested(item, function) for item in value]
    return function(value)


def _text(value) -> str:
    """Bytes as a JSON string: raw bytes, as TF Serving writes them (invalid UTF-8 passes through)."""
    return bytes(value).decode("utf-8", "surrogateescape") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _float32(value: float) -> float:
    return float(str(np.float32(value)))


def _dumps(document) -> bytes:
    # NaN/Infinity are written as bare tokens, as TF Serving does.
    return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogateescape")


def _proto_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True, including_default_value_fields=True)


def _proto_json(message) -> bytes:
    return json_format.MessageToJson(
        message, preserving_proto_field_name=True, including_default_value_fields=True, indent=1).encode()


async def with_deadline(awaitable: Awaitable, seconds: float | None, what: str):
    """Await with a deadline; past it, DEADLINE_EXCEEDED (HTTP 504) as a TF session timeout."""
    if seconds is None or seconds <= 0:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        raise errors.DeadlineExceeded(f"Deadline Exceeded: {what} did not finish within {seconds * 1000:.0f} ms") from None
