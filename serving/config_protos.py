"""TF Serving's config messages that the tensorflow-serving-api wheel does not ship.

The wheel has `apis/` and `config/model_server_config_pb2`, but neither
`config/monitoring_config_pb2` nor `servables/tensorflow/session_bundle_config_pb2`.
The two messages the server's flags need are declared here field for field as in
their .proto files (same package, names, numbers and wrapper types), so protobuf's
own text_format parses the files exactly as TF Serving does. Each lives in a
private descriptor pool, where it can never clash with a generated module.

Layer: bottom (read by serving.settings). Imports protobuf only.
"""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_Field = descriptor_pb2.FieldDescriptorProto


def _message_class(proto: descriptor_pb2.FileDescriptorProto, full_name: str, *dependencies) -> type:
    pool = descriptor_pool.DescriptorPool()
    for dependency in dependencies:
        pool.AddSerializedFile(dependency.serialized_pb)
    pool.Add(proto)
    return message_factory.MessageFactory(pool).GetPrototype(pool.FindMessageTypeByName(full_name))


def _monitoring_config() -> type:
    """tensorflow.serving.MonitoringConfig (tensorflow_serving/config/monitoring_config.proto)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="signflow/tensorflow_serving/config/monitoring_config.proto",
        package="tensorflow.serving", syntax="proto3")
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=_Field.TYPE_BOOL, label=_Field.LABEL_OPTIONAL,
                         json_name="enable")
    prometheus.field.add(name="path", number=2, type=_Field.TYPE_STRING, label=_Field.LABEL_OPTIONAL,
                         json_name="path")
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=_Field.TYPE_MESSAGE,
                         type_name=".tensorflow.serving.PrometheusConfig", label=_Field.LABEL_OPTIONAL,
                         json_name="prometheusConfig")
    return _message_class(proto, "tensorflow.serving.MonitoringConfig")


def _batching_parameters() -> type:
    """tensorflow.serving.BatchingParameters (tensorflow_serving/servables/tensorflow/session_bundle_config.proto)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving", syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = proto.message_type.add(name="BatchingParameters")
    for name, number, wrapper in (
        ("max_batch_size", 1, "Int64Value"),
        ("batch_timeout_micros", 2, "Int64Value"),
        ("max_enqueued_batches", 3, "Int64Value"),
        ("num_batch_threads", 4, "Int64Value"),
        ("thread_pool_name", 5, "StringValue"),
        ("enable_large_batch_splitting", 8, "BoolValue"),
        ("max_execution_batch_size", 9, "Int64Value"),
    ):
        message.field.add(name=name, number=number, label=_Field.LABEL_OPTIONAL, type=_Field.TYPE_MESSAGE,
                          type_name=f".google.protobuf.{wrapper}")
    message.field.add(name="allowed_batch_sizes", number=6, label=_Field.LABEL_REPEATED, type=_Field.TYPE_INT64)
    message.field.add(name="pad_variable_length_inputs", number=7, label=_Field.LABEL_OPTIONAL,
                      type=_Field.TYPE_BOOL)
    return _message_class(proto, "tensorflow.serving.BatchingParameters", wrappers_pb2.DESCRIPTOR)


MonitoringConfig = _monitoring_config()
BatchingParameters = _batching_parameters()
