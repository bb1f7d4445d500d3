"""The gRPC transport: tensorflow.serving.PredictionService and ModelService on grpc.aio.

The servicers are the generated ones from tensorflow-serving-api, so any TF
Serving client works unchanged. Each method turns protos into the handlers'
arguments and back, and a ServingError into the gRPC status TF Serving gives
(`grpc_status_util.cc`: same code, message cut at 1024 characters).
Responses carry `model_spec.version`: the version that answered.

Layer: transport. Imports grpc, TensorFlow's tensor protos (its codec:
TensorProto <-> numpy), serving.errors, handlers, metrics and settings.
"""
from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving import errors, settings as settings_module
from serving.handlers import Handlers, fill_model_spec, model_ref, with_deadline
from serving.metrics import Metrics

log = logging.getLogger(__name__)

# numpy dtype -> (DataType, TensorProto field). Outputs are written into the typed
# repeated fields (AsProtoField), as TF Serving does by default, so clients that read
# e.g. `outputs["scores"].float_val` keep working.
_FIELDS = {
    np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val"),
    np.dtype(np.float64): (types_pb2.DT_DOUBLE, "double_val"),
    np.dtype(np.int32): (types_pb2.DT_INT32, "int_val"),
    np.dtype(np.int16): (types_pb2.DT_INT16, "int_val"),
    np.dtype(np.int8): (types_pb2.DT_INT8, "int_val"),
    np.dtype(np.uint8): (types_pb2.DT_UINT8, "int_val"),
    np.dtype(np.int64): (types_pb2.DT_INT64, "int64_val"),
    np.dtype(np.uint32): (types_pb2.DT_UINT32, "uint32_val"),
    np.dtype(np.uint64): (types_pb2.DT_UINT64, "uint64_val"),
    np.dtype(np.bool_): (types_pb2.DT_BOOL, "bool_val"),
}


def tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A numpy array as a TensorProto with typed value fields (Tensor::AsProtoField)."""
    array = np.asarray(array)
    proto = tensor_pb2.TensorProto(
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]))
    if array.dtype == object or array.dtype.kind == "S":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(bytes(v) if not isinstance(v, str) else v.encode() for v in array.reshape(-1))
        return proto
    if array.dtype == np.float16:
        proto.dtype = types_pb2.DT_HALF
        proto.half_val.extend(array.reshape(-1).view(np.uint16).tolist())
        return proto
    if array.dtype not in _FIELDS:
        return tf.make_tensor_proto(array)
    proto.dtype, field = _FIELDS[array.dtype]
    getattr(proto, field).extend(array.reshape(-1).tolist())
    return proto


def _arrays(inputs) -> dict[str, np.ndarray]:
    arrays = {}
    for alias, proto in inputs.items():
        try:
            arrays[alias] = tf.make_ndarray(proto)
        except Exception:  # malformed proto: wrong value count, unknown dtype
            raise errors.InvalidArgument(f"tensor parsing error: {alias}") from None
    return arrays


class _Base:
    def __init__(self, handlers: Handlers, metrics: Metrics):
        self._handlers = handlers
        self._metrics = metrics

    async def _call(self, context: grpc.aio.ServicerContext, api: str | None, model_name: str,
                    work: Callable[[], Awaitable]):
        """Run `work`, map its ServingError to a gRPC status, count Predict/Classify/Regress."""
        started = time.monotonic()
        version = None
        try:
            response = await with_deadline(work(), context.time_remaining(), f"{api or 'gRPC'} call")
        except errors.ServingError as err:
            if api:
                self._metrics.request(model_name, None, api, "GRPC", err.code.name, time.monotonic() - started)
            await context.abort(err.grpc_code, errors.grpc_message(err.message))
        except Exception:
            log.exception("Unhandled error in gRPC %s", api)
            await context.abort(grpc.StatusCode.INTERNAL, errors.INTERNAL_MESSAGE)
        if api:
            spec = getattr(response, "model_spec", None)
            version = spec.version.value if spec is not None and spec.HasField("version") else None
            self._metrics.request(model_name, version, api, "GRPC", "OK", time.monotonic() - started)
        return response


def _require_spec(request) -> None:
    if not request.HasField("model_spec"):
        raise errors.InvalidArgument("Missing ModelSpec")


class PredictionService(_Base, prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService."""

    async def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        async def work():
            _require_spec(request)
            result = await self._handlers.predict(
                model_ref(request.model_spec), request.model_spec.signature_name, _arrays(request.inputs),
                list(request.output_filter))
            response = predict_pb2.PredictResponse()
            fill_model_spec(response.model_spec, request.model_spec.name, result.signature_name, result.version)
            for alias, value in result.outputs.items():
                response.outputs[alias].CopyFrom(tensor_proto(value))
            return response

        return await self._call(context, "Predict", request.model_spec.name, work)

    async def Classify(self, request: classification_pb2.ClassificationRequest, context
                       ) -> classification_pb2.ClassificationResponse:
        async def work():
            _require_spec(request)
            result = await self._handlers.classify(
                model_ref(request.model_spec), request.model_spec.signature_name, request.input)
            response = classification_pb2.ClassificationResponse(result=result.result)
            fill_model_spec(response.model_spec, request.model_spec.name, result.signature_name, result.version)
            return response

        return await self._call(context, "Classify", request.model_spec.name, work)

    async def Regress(self, request: regression_pb2.RegressionRequest, context) -> regression_pb2.RegressionResponse:
        async def work():
            _require_spec(request)
            result = await self._handlers.regress(
                model_ref(request.model_spec), request.model_spec.signature_name, request.input)
            response = regression_pb2.RegressionResponse(result=result.result)
            fill_model_spec(response.model_spec, request.model_spec.name, result.signature_name, result.version)
            return response

        return await self._call(context, "Regress", request.model_spec.name, work)

    async def MultiInference(self, request: inference_pb2.MultiInferenceRequest, context
                             ) -> inference_pb2.MultiInferenceResponse:
        async def work():
            return await self._handlers.multi_inference(request)

        name = request.tasks[0].model_spec.name if request.tasks else ""
        return await self._call(context, "MultiInference", name, work)

    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context
                               ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        async def work():
            _require_spec(request)
            return self._handlers.model_metadata(model_ref(request.model_spec), list(request.metadata_field))

        return await self._call(context, None, request.model_spec.name, work)


class ModelService(_Base, model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: status, and config reload."""

    def __init__(self, handlers: Handlers, metrics: Metrics, reload_config: Callable[[tuple], Awaitable[None]]):
        super().__init__(handlers, metrics)
        self._reload_config = reload_config

    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context
                             ) -> get_model_status_pb2.GetModelStatusResponse:
        async def work():
            _require_spec(request)
            return self._handlers.model_status(model_ref(request.model_spec))

        return await self._call(context, None, request.model_spec.name, work)

    async def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context
                                        ) -> model_management_pb2.ReloadConfigResponse:
        async def work():
            try:
                models = settings_module.models_from_proto(request.config)
            except settings_module.SettingsError as err:
                raise errors.InvalidArgument(str(err)) from None
            await self._reload_config(models)
            response = model_management_pb2.ReloadConfigResponse()
            response.status.error_code = 0  # OK
            return response

        return await self._call(context, None, "", work)


def add_services(server: grpc.aio.Server, handlers: Handlers, metrics: Metrics,
                 reload_config: Callable[[tuple], Awaitable[None]]) -> None:
    generated = _GenericHandlers()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(handlers, metrics), generated)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(handlers, metrics, reload_config), generated)
    server.add_generic_rpc_handlers(tuple(_ParseErrorsAreInvalidArgument(h) for h in generated.handlers))


class _GenericHandlers:
    """Stands in for the server while the generated add_*_to_server functions register their handlers."""

    def __init__(self):
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.handlers.extend(handlers)


class _ParseErrorsAreInvalidArgument(grpc.GenericRpcHandler):
    """A generated service whose requests are parsed inside the call, not by grpc.

    A request protobuf refuses (a string field that is not UTF-8, bytes that are no
    message) then ends as INVALID_ARGUMENT naming the message type, where grpc would
    answer UNKNOWN with the text of the Python exception.
    """

    def __init__(self, inner: grpc.GenericRpcHandler):
        self._inner = inner

    def service(self, handler_call_details):
        handler = self._inner.service(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        parse, behaviour = handler.request_deserializer, handler.unary_unary
        # parse is <Request class>.FromString: a classmethod in the C and upb protobufs, a
        # staticmethod (no __self__) in the pure-Python one.
        descriptor = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
        message_type = descriptor.full_name if descriptor is not None else "request message"

        async def unary_unary(data: bytes, context):
            try:
                request = parse(data)
            except DecodeError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"Request is not a valid {message_type} (a string field that is not UTF-8, "
                                    "or bytes that are no such message)")
            return await behaviour(request, context)

        return handler._replace(request_deserializer=None, unary_unary=unary_unary)
