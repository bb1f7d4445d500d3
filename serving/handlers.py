"""The data plane: status, metadata, predict, classify, regress, multi-inference.

Transport-free, as MLServer's handlers: REST (rest.py, with its JSON codec
rest_codec.py) and gRPC (grpc_service.py) both call this module with decoded
values (numpy arrays, TF Serving's protos), so the two cannot drift apart. It
holds TF Serving's rules:

- which version answers (through the registry's leases),
- the checks TF Serving makes on a request and their exact messages
  (`predict_util.cc`, `classifier.cc`, `regressor.cc`, `multi_inference.cc`),

plus signflow's guards, applied before anything reaches the graph: request-size
limits and the image check of signflow's `image_bytes` input. That check reads
each image's header only (format, size within the pixel limit: a few
microseconds, so decompression bombs never reach the graph); the model's own
decoder checks the rest, and when it refuses an image the full check
(serving.images.inspect_image) words the error, naming the element. Batched, such
a refusal fails only its own request: the servable's batcher runs the batch's
requests again one by one (serving.batching `retry_alone`).

Model calls go through `Servable.submit` (the model threads, or the version's
batcher: this module does not know which), never on the event loop. Other work
proportional to a request's size (decoding, image checks) runs on the loop when
the request is small (`is_small`), where it costs less than the two thread
switches of a trip to the pool, and on the pool otherwise.

Layer: below the transports, above the registry and the servables. Imports
serving.contract, errors, images, registry, servable, settings and tensors, and
TF Serving's protos (its request and result types); never JSON, HTTP or grpc.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping, Sequence

import numpy as np
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

from serving import contract, errors, images
from serving.registry import Lease, Registry
from serving.servable import Servable, serialize_examples
from serving.settings import Settings
from serving.tensors import as_text, dtype_name, numpy_dtype_name, numpy_matches

log = logging.getLogger(__name__)

# Work on a request of at most this many bytes and values (a JSON body, the images of a tensor)
# takes well under a millisecond: decoding bytes is C code, and the per-value Python is bounded
# by the count. A one-image request is some 5 to 50 KiB and one value.
INLINE_WORK_BYTES = 64 * 1024
INLINE_WORK_VALUES = 16


def is_small(size: int, values: int) -> bool:
    """Whether work on `size` bytes holding `values` values may run on the event loop."""
    return size <= INLINE_WORK_BYTES and values <= INLINE_WORK_VALUES


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


class Handlers:
    """The operations both transports offer, over one registry."""

    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        executor: Executor,
        *,
        on_predicted: Callable[[str, int, np.ndarray, Mapping[str, np.ndarray], Sequence[str] | None], None]
        | None = None,
    ):
        """`executor` runs the CPU-bound work of requests (decoding, image checks) off the event loop.

        `on_predicted(model, version, image_bytes, outputs, labels)` hears every answered call of
        an image signature (contract.IMAGE_SIGNATURES: serving_default, predict_label) with an
        image_bytes input (the request log); `labels` is the version's labels.txt (None if it has
        none), the order of `probabilities`. It runs on the event loop, so it must only hand the
        data off; an error in it is logged, never returned.
        """
        self._registry = registry
        self._settings = settings
        self._executor = executor
        self._on_predicted = on_predicted

    def acquire(self, ref: ModelRef) -> Lease:
        """The version that answers a request naming `ref`, held until the lease is released."""
        return self._registry.acquire(ref.name, ref.version, ref.label)

    async def offload(self, function: Callable, *args):
        """CPU-bound request work (decoding, image checks) on the pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(function, *args))

    async def offload_unless(self, small: bool, function: Callable, *args):
        """`function(*args)` here when its input is `small` (see is_small), on the pool otherwise."""
        if small:
            return function(*args)
        return await self.offload(function, *args)

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
        with self.acquire(ref) as lease:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = ref.name
            response.model_spec.version.value = lease.version
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for name, signature in lease.servable.signature_defs.items():
                signature_map.signature_def[name].CopyFrom(signature)
            response.metadata["signature_def"].Pack(signature_map)
            return response

    # -- predict -------------------------------------------------------------------

    async def predict(self, ref: ModelRef, signature_name: str, inputs: Mapping[str, np.ndarray],
                      output_filter: Sequence[str] = ()) -> PredictResult:
        """Predict on tensors (gRPC's PredictRequest, already decoded)."""
        with self.acquire(ref) as lease:
            return await self._predict_with(lease, signature_name, dict(inputs), output_filter)

    async def predict_decoded(self, ref: ModelRef, signature_name: str,
                              decode: Callable[[Mapping[str, meta_graph_pb2.SignatureDef]], dict[str, np.ndarray]],
                              small: bool) -> PredictResult:
        """Predict on inputs that can only be decoded against the version that answers (REST's JSON:
        the signature gives each input's dtype). `decode(signature_defs)` runs off the event loop
        unless the request is `small` (is_small)."""
        with self.acquire(ref) as lease:
            inputs = await self.offload_unless(small, decode, lease.servable.signature_defs)
            return await self._predict_with(lease, signature_name, inputs, ())

    async def _predict_with(self, lease: Lease, signature_name: str, inputs: dict[str, np.ndarray],
                            output_filter: Sequence[str]) -> PredictResult:
        servable = lease.servable
        signature_name = signature_name or contract.SERVING_SIGNATURE
        signature = servable.signature_defs.get(signature_name)
        if signature is None:
            raise errors.FailedPrecondition(f'Serving signature key "{signature_name}" not found.')
        _check_predict_inputs(signature, inputs)
        aliases = _check_output_filter(signature, output_filter)
        self._check_batch_size(inputs)
        image_call = (servable.validates_images and signature_name in contract.CHECKED_IMAGE_SIGNATURES
                      and contract.IMAGE_INPUT in inputs)
        if image_call:
            values = inputs[contract.IMAGE_INPUT]
            await self.offload_unless(is_small(_bytes_in(values), values.size), _check_images, values,
                                      self._settings.max_image_pixels, images.check_image_header)
        try:
            outputs = await self._run(lease, signature_name, inputs)
        except errors.InvalidArgument:
            if image_call:
                # The graph refused the request; if an image is damaged past its header, say which.
                await self.offload(_check_images, values, self._settings.max_image_pixels, images.inspect_image)
            raise
        if image_call and signature_name in contract.IMAGE_SIGNATURES and self._on_predicted is not None:
            try:
                self._on_predicted(servable.name, lease.version, inputs[contract.IMAGE_INPUT], outputs,
                                   servable.labels)
            except Exception:  # the answer is ready: a logging problem must not lose it
                log.exception("on_predicted hook failed for model %s version %s", servable.name, lease.version)
        return PredictResult(lease.version, signature_name, {alias: outputs[alias] for alias in aliases})

    # -- classify / regress / multi-inference --------------------------------------

    async def classify(self, ref: ModelRef, signature_name: str, request_input: input_pb2.Input) -> ClassifyResult:
        with self.acquire(ref) as lease:
            return await self._classify_with(lease, signature_name, request_input)

    async def regress(self, ref: ModelRef, signature_name: str, request_input: input_pb2.Input) -> RegressResult:
        with self.acquire(ref) as lease:
            return await self._regress_with(lease, signature_name, request_input)

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
            if task.method_name not in (contract.CLASSIFY_METHOD, contract.REGRESS_METHOD):
                raise errors.Unimplemented(f"Unsupported signature method_name: {task.method_name}")
        spec = request.tasks[0].model_spec
        ref = model_ref(spec)
        response = inference_pb2.MultiInferenceResponse()
        with self.acquire(ref) as lease:
            for task in request.tasks:
                entry = response.results.add()
                if task.method_name == contract.CLASSIFY_METHOD:
                    result = await self._classify_with(lease, task.model_spec.signature_name, request.input)
                    entry.classification_result.CopyFrom(result.result)
                else:
                    result = await self._regress_with(lease, task.model_spec.signature_name, request.input)
                    entry.regression_result.CopyFrom(result.result)
                fill_model_spec(entry.model_spec, name, result.signature_name, lease.version)
        return response

    async def _classify_with(self, lease: Lease, signature_name: str, request_input) -> ClassifyResult:
        signature_name = signature_name or contract.SERVING_SIGNATURE
        signature = _example_signature(lease.servable, signature_name, "classification")
        if len(signature.outputs) not in (1, 2):
            raise errors.InvalidArgument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
        if contract.CLASSES_OUTPUT not in signature.outputs and contract.SCORES_OUTPUT not in signature.outputs:
            raise errors.InvalidArgument(
                'Expected classification signature outputs to contain at least one of "classes" or "scores". '
                f"Signature was: {signature}")
        outputs, count = await self._run_examples(lease, signature_name, request_input)
        classes, scores = outputs.get(contract.CLASSES_OUTPUT), outputs.get(contract.SCORES_OUTPUT)
        for name, tensor, kind in ((contract.CLASSES_OUTPUT, classes, np.object_),
                                   (contract.SCORES_OUTPUT, scores, np.float32)):
            if tensor is None:
                continue
            if tensor.ndim != 2:
                raise errors.InvalidArgument(
                    f"Expected Tensor shape: [batch_size num_classes] but got {list(tensor.shape)}")
            if tensor.dtype != kind:
                wanted = "DT_STRING" if name == contract.CLASSES_OUTPUT else "DT_FLOAT"
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
                    cls.label = as_text(classes[i, c])
                if scores is not None:
                    cls.score = float(scores[i, c])
        return ClassifyResult(lease.version, signature_name, result)

    async def _regress_with(self, lease: Lease, signature_name: str, request_input) -> RegressResult:
        signature_name = signature_name or contract.SERVING_SIGNATURE
        signature = _example_signature(lease.servable, signature_name, "regression")
        if len(signature.outputs) != 1:
            raise errors.InvalidArgument("Expected one output Tensor.")
        if contract.REGRESS_OUTPUT not in signature.outputs:
            raise errors.InvalidArgument(f"No regression outputs found in SignatureDef: {signature}")
        outputs, count = await self._run_examples(lease, signature_name, request_input)
        values = outputs[contract.REGRESS_OUTPUT]
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
            raise too_many_instances(len(examples), self._settings.max_instances_per_request)
        if lease.servable.validates_images:
            await self.offload(_check_example_images, request_input, self._settings.max_image_pixels)
        (input_name,) = lease.servable.signature_defs[signature_name].inputs
        outputs = await self._run(lease, signature_name, {input_name: np.array(examples, dtype=object)})
        return outputs, len(examples)

    # -- execution -------------------------------------------------------------------

    def _check_batch_size(self, inputs: Mapping[str, np.ndarray]) -> None:
        limit = self._settings.max_instances_per_request
        for array in inputs.values():
            if array.ndim and array.shape[0] > limit:
                raise too_many_instances(array.shape[0], limit)

    async def _run(self, lease: Lease, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a signature through the servable; the lease is held until the model is done."""
        future = lease.servable.submit(signature_name, inputs)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The caller gave up (deadline, disconnect); the model still runs, so
            # the version stays in use until it is done.
            lease.keep_until(future)
            raise


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
        if not numpy_matches(inputs[alias], expected):
            raise errors.InvalidArgument(
                f"Expects arg[{index}] to be {dtype_name(expected)} but "
                f"{numpy_dtype_name(inputs[alias])} is provided")


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
    # classify.cc and regress.cc share the input name: CLASSIFY_INPUT == REGRESS_INPUT.
    if contract.CLASSIFY_INPUT not in signature.inputs:
        raise errors.InvalidArgument(f"No {kind} inputs found in SignatureDef: {signature}")
    return signature


def too_many_instances(count: int, limit: int) -> errors.ServingError:
    """signflow's limit on instances per request (--max_instances_per_request), as both transports word it."""
    return errors.InvalidArgument(
        f"Request has {count} instances; this server accepts at most {limit} per request "
        "(--max_instances_per_request)")


def _bytes_in(values: np.ndarray) -> int:
    return sum(len(value) for value in values.reshape(-1) if isinstance(value, (bytes, str)))


def _check_images(values: np.ndarray, max_pixels: int, check: Callable[..., object]) -> None:
    """`check` (images.check_image_header or inspect_image) on each value, as INVALID_ARGUMENT naming the element."""
    for index, value in enumerate(values.reshape(-1)):
        try:
            check(bytes(value), max_pixels=max_pixels)
        except images.InvalidImage as err:
            raise errors.InvalidArgument(
                f"Input {contract.IMAGE_INPUT}, element {index}: not an acceptable image ({_image_reason(err)})") from None


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
            for feature in contract.CLASSIFY_IMAGE_FEATURES:
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


def _image_reason(err: images.InvalidImage) -> str:
    return f"{err.reason}: {err.client_detail}"


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


async def with_deadline(awaitable: Awaitable, seconds: float | None, what: str):
    """Await with a deadline; past it, DEADLINE_EXCEEDED (HTTP 504) as a TF session timeout."""
    if seconds is None or seconds <= 0:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        raise errors.DeadlineExceeded(f"Deadline Exceeded: {what} did not finish within {seconds * 1000:.0f} ms") from None
