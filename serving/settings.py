"""The server's settings: one typed object, built once from tensorflow_model_server's flags.

Flag names, defaults and meanings are TF Serving's (`model_servers/main.cc`,
`server.h`), so a command line works unchanged against the real
`tensorflow_model_server`. The config files are TF Serving's text protobufs,
parsed with the protos from tensorflow-serving-api. Only `--host`, the
request limits, the REST keep-alive timeout and the feedback / status /
request-log / web page settings are signflow's own
(`tensorflow_model_server_argv` leaves them out).

Every config file is parsed here, once, into typed values (ModelConfig,
BatchingOptions, the monitoring fields) that the rest of the server is given.

Layer: bottom. Imports protobuf, tensorflow-serving-api's config protos,
serving.config_protos and serving.images (the pixel limit's default). It never
imports TensorFlow: a bad flag or config file fails in a fraction of a second,
before the 10-second TensorFlow import.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving import images
from serving.config_protos import BatchingParameters, MonitoringConfig

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_INSTANCES_PER_REQUEST = 1000
DEFAULT_REQUEST_LOG_MAX_BYTES = 64 * 1024 * 1024
# Above the 60 s idle timeout of common load balancers, as nginx's 75 s default is: a proxy that
# pools connections to this server then closes them first, never sending a request into one the
# server is closing at that moment.
DEFAULT_REST_API_KEEP_ALIVE_TIMEOUT_SECONDS = 75
# Read by cli.py only (once, when --feedback_token is not given).
FEEDBACK_TOKEN_ENV = "SIGNFLOW_FEEDBACK_TOKEN"


class SettingsError(ValueError):
    """A flag or config file the server cannot start with; the message says which and why."""


@dataclass(frozen=True)
class VersionPolicy:
    """ServableVersionPolicy: which version folders on disk are served."""

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1  # latest: how many of the highest versions
    versions: tuple[int, ...] = ()  # specific: exactly these

    def select(self, on_disk: list[int]) -> list[int]:
        """The versions to serve out of those present on disk (ascending)."""
        if self.kind == "all":
            return sorted(on_disk)
        if self.kind == "specific":
            return sorted(set(on_disk) & set(self.versions))
        return sorted(on_disk)[-max(self.num_versions, 1):] if on_disk else []


@dataclass(frozen=True)
class ModelConfig:
    """One entry of ModelServerConfig.model_config_list."""

    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    version_labels: Mapping[str, int] = field(default_factory=dict)


def _schedulable_cpus() -> int:
    # TensorFlow's default for num_batch_threads is port::MaxParallelism(),
    # the number of CPUs this process may run on.
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's BatchingParameters (the `--batching_parameters_file` text proto).

    Defaults are what TF Serving uses for an unset field: TensorFlow's
    SharedBatchScheduler defaults. Construction refuses values TF Serving refuses
    (ValueError).
    """

    max_batch_size: int = 1000
    """Most rows one request (task) may have, and most rows per batch unless splitting."""
    batch_timeout_micros: int = 0
    """How long the first task of a batch waits for more before the batch may run."""
    max_enqueued_batches: int = 10
    """Batches the queue may hold, the open one included; past that requests get UNAVAILABLE."""
    num_batch_threads: int = field(default_factory=_schedulable_cpus)
    """Batches run at the same time (the worker threads); TF's default is the CPU count."""
    allowed_batch_sizes: tuple[int, ...] = ()
    """If set, increasing sizes; each batch is padded up to the next one."""
    enable_large_batch_splitting: bool = False
    """Split a task larger than the room left in a batch across batches."""
    max_execution_batch_size: int | None = None
    """With splitting: most rows per batch (unset means max_batch_size)."""
    thread_pool_name: str = ""
    """Accepted for compatibility; thread names have no effect on behaviour."""

    def __post_init__(self) -> None:
        if self.max_batch_size <= 0:
            raise ValueError(f"max_batch_size must be positive; was {self.max_batch_size}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batch_timeout_micros must be non-negative; was {self.batch_timeout_micros}")
        if self.max_enqueued_batches < 0 or (self.enable_large_batch_splitting and self.max_enqueued_batches == 0):
            raise ValueError(f"max_enqueued_batches must be positive; was {self.max_enqueued_batches}")
        if self.num_batch_threads <= 0:
            raise ValueError(f"num_batch_threads must be positive; was {self.num_batch_threads}")
        if self.max_execution_batch_size is not None and self.max_execution_batch_size <= 0:
            raise ValueError(f"max_execution_batch_size must be positive; was {self.max_execution_batch_size}")
        if self.enable_large_batch_splitting and self.execution_batch_size > self.max_batch_size:
            raise ValueError(
                "When enable_large_batch_splitting is true, max_batch_size must be greater than or equal to "
                f"max_execution_batch_size; was {self.max_batch_size} < {self.execution_batch_size}"
            )
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(size <= 0 for size in sizes) or any(b <= a for a, b in zip(sizes, sizes[1:])):
                raise ValueError(f"allowed_batch_sizes entries must be positive and monotonically increasing; was {list(sizes)}")
            if sizes[-1] != self.execution_batch_size:
                expected = "max_execution_batch_size" if self.enable_large_batch_splitting else "max_batch_size"
                raise ValueError(
                    f"Last entry in allowed_batch_sizes must match {expected}; last entry was {sizes[-1]}; "
                    f"expected {self.execution_batch_size}"
                )

    @property
    def execution_batch_size(self) -> int:
        """Most rows a batch may hold when it runs."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size is not None:
            return self.max_execution_batch_size
        return self.max_batch_size

    @property
    def queue_capacity(self) -> int:
        """max_enqueued_batches as TensorFlow applies it (0 without splitting means 1)."""
        return self.max_enqueued_batches or 1

    @classmethod
    def from_text_proto(cls, text: str) -> "BatchingOptions":
        """Parse a BatchingParameters text proto, e.g. `max_batch_size { value: 128 }`.

        Raises ValueError for text that is not a valid BatchingParameters message,
        for values TF Serving would refuse, and for `pad_variable_length_inputs: true`
        (not supported by signflow's server).
        """
        message = BatchingParameters()
        try:
            text_format.Parse(text, message)
        except text_format.ParseError as err:
            hint = ""
            if 'Expected "{"' in str(err):
                hint = " (the numeric fields are wrapper messages: write `max_batch_size { value: 128 }`)"
            raise ValueError(f"Invalid BatchingParameters text proto: {err}{hint}") from None
        if message.pad_variable_length_inputs:
            raise ValueError("pad_variable_length_inputs is not supported: requests must agree on all but dimension 0")
        kwargs: dict = {}
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                     "enable_large_batch_splitting", "max_execution_batch_size", "thread_pool_name"):
            if message.HasField(name):
                kwargs[name] = getattr(message, name).value
        kwargs["allowed_batch_sizes"] = tuple(message.allowed_batch_sizes)
        return cls(**kwargs)


@dataclass(frozen=True)
class Settings:
    """Everything `signflow serve` / `python -m serving` is told. See cli.py for the flags."""

    host: str = "127.0.0.1"
    """Interface both ports bind to. TF Serving binds every interface; signflow stays local unless told."""
    grpc_port: int = 8500
    """--port: gRPC port; 0 disables gRPC (TF Serving's meaning)."""
    rest_api_port: int = 8501
    """--rest_api_port: REST port; 0 disables REST. TF Serving's default is 0; its Docker image passes 8501."""
    model_name: str = "default"
    """--model_name: the single model's name when no --model_config_file is given."""
    model_base_path: str = ""
    """--model_base_path: folder of integer-named version folders (absolute, as TF Serving requires)."""
    model_config_file: str = ""
    """--model_config_file: text-format ModelServerConfig; replaces --model_name/--model_base_path."""
    model_config_file_poll_wait_seconds: int = 0
    """Seconds between re-reads of --model_config_file; 0 reads it once."""
    file_system_poll_wait_seconds: int = 1
    """Seconds between scans of the base paths for version folders; 0 scans once, < 0 never."""
    enable_batching: bool = False
    """--enable_batching: gather concurrent predict requests into one model call."""
    batching_parameters_file: str = ""
    """--batching_parameters_file: text-format BatchingParameters (needs --enable_batching)."""
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    """--batching_parameters_file, parsed (TensorFlow's scheduler defaults without one); used with
    --enable_batching only."""
    monitoring_config_file: str = ""
    """--monitoring_config_file: text-format MonitoringConfig."""
    prometheus_enabled: bool = False
    """prometheus_config.enable from the monitoring config."""
    prometheus_path: str = DEFAULT_PROMETHEUS_PATH
    """prometheus_config.path, on the REST port."""
    rest_api_timeout_in_ms: int = 30000
    """--rest_api_timeout_in_ms: a REST inference call past this answers 504; <= 0 means no limit."""
    rest_api_keep_alive_timeout_seconds: int = DEFAULT_REST_API_KEEP_ALIVE_TIMEOUT_SECONDS
    """signflow: an HTTP connection with no request in progress for this long is closed, including one that
    has not sent its first request yet or sent only part of it. TF Serving's REST server (libevent, no
    timeout set) keeps idle connections open for ever."""
    grpc_channel_arguments: str = ""
    """--grpc_channel_arguments: comma-separated gRPC server arguments, e.g.
    `grpc.max_connection_idle_ms=75000` (close a connection with no RPC for 75 s)."""
    grpc_options: tuple[tuple[str, int | str], ...] = ()
    """--grpc_channel_arguments, parsed as TF Serving does: a value that reads as a 32-bit integer is one."""
    enable_model_warmup: bool = True
    """--enable_model_warmup: replay assets.extra/tf_serving_warmup_requests before a version serves."""
    allow_version_labels_for_unavailable_models: bool = False
    """--allow_version_labels_for_unavailable_models: a new label may name a version not yet loaded."""
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    """signflow: largest REST body / gRPC message accepted (413 / RESOURCE_EXHAUSTED beyond)."""
    max_instances_per_request: int = DEFAULT_MAX_INSTANCES_PER_REQUEST
    """signflow: most instances (rows, examples) in one request."""
    max_image_pixels: int = images.DEFAULT_MAX_PIXELS
    """signflow: largest image (width x height) the image_bytes input accepts."""
    models: tuple[ModelConfig, ...] = ()
    """The models to serve, from the config file or from --model_name/--model_base_path."""
    execution_threads: int = max(4, 2 * (os.cpu_count() or 1))
    """Threads that run models and decode requests, off the event loop."""
    feedback_dir: str = ""
    """signflow: the ingestion inbox (absolute) where POST /v1/models/<name>/feedback writes one
    JSON Lines file per request; created at start if missing. "" disables feedback (the route answers 404)."""
    feedback_token: str = field(default="", repr=False)
    """signflow: bearer token the feedback route requires ("" = none; only allowed on a loopback
    --host). From --feedback_token, else $SIGNFLOW_FEEDBACK_TOKEN. Kept out of repr so logs never show it."""
    training_status_file: str = ""
    """signflow: JSON file the training scheduler writes; GET /signflow/status shows it ("" = none)."""
    request_log_file: str = ""
    """signflow: JSON Lines log of image predictions (time, model, version, sha256, label, score; never
    the image); "" = off."""
    request_log_max_bytes: int = DEFAULT_REQUEST_LOG_MAX_BYTES
    """signflow: size cap of --request_log_file; past it the file is rotated once to <file>.1."""
    ui: bool | None = None
    """signflow: serve the web page at /ui/ on the REST port (serving/ui_routes.py). None, the default: on
    when --host is a loopback address; build_settings resolves it."""

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


def build_settings(**flags) -> Settings:
    """Settings from flag values (names as the flags), reading and checking the config files.

    Raises SettingsError with TF Serving's wording where it has one.
    """
    settings = Settings(**flags)
    if settings.batching_parameters_file and not settings.enable_batching:
        raise SettingsError(
            "server_options.batching_parameters_file is set without setting "
            "server_options.enable_batching to true.")
    if settings.grpc_port == 0 and settings.rest_api_port == 0:
        raise SettingsError("At least one of --port or --rest_api_port must be set (non-zero).")
    if settings.grpc_port and settings.grpc_port == settings.rest_api_port:
        raise SettingsError(f"--rest_api_port ({settings.rest_api_port}) must differ from --port.")
    for name in ("max_request_bytes", "max_instances_per_request", "max_image_pixels", "request_log_max_bytes",
                 "rest_api_keep_alive_timeout_seconds"):
        if getattr(settings, name) <= 0:
            raise SettingsError(f"--{name} must be positive")
    _check_feedback(settings)

    if settings.model_config_file:
        models = read_model_config_file(settings.model_config_file)
    elif settings.model_base_path:
        models = (ModelConfig(name=settings.model_name, base_path=settings.model_base_path),)
        _check_models(models)
    else:
        raise SettingsError("Both server_options.model_base_path and server_options.model_config_file are empty!")

    batching = settings.batching
    if settings.batching_parameters_file:
        batching = read_batching_parameters_file(settings.batching_parameters_file)

    prometheus_enabled, prometheus_path = False, DEFAULT_PROMETHEUS_PATH
    if settings.monitoring_config_file:
        prometheus_enabled, prometheus_path = read_monitoring_config_file(settings.monitoring_config_file)

    return settings.replace(
        models=models,
        batching=batching,
        grpc_options=parse_grpc_channel_arguments(settings.grpc_channel_arguments),
        prometheus_enabled=prometheus_enabled,
        prometheus_path=prometheus_path,
        ui=settings.ui if settings.ui is not None else is_loopback(settings.host),
    )


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to any interface


def _check_feedback(settings: Settings) -> None:
    token = settings.feedback_token
    # A token a client cannot send in an Authorization header would lock everyone out.
    if token and not all("\x21" <= ch <= "\x7e" for ch in token):
        raise SettingsError("--feedback_token must be printable ASCII without spaces")
    directory = settings.feedback_dir
    if not directory:
        return
    if not Path(directory).is_absolute():
        raise SettingsError(f"--feedback_dir must be an absolute path; got {directory}")
    if Path(directory).exists() and not Path(directory).is_dir():
        raise SettingsError(f"--feedback_dir: {directory} exists and is not a folder")
    # Feedback becomes training data: anyone who can reach an unauthenticated
    # endpoint on a public interface could poison the next model.
    if not token and not is_loopback(settings.host):
        raise SettingsError(
            f"--feedback_dir on --host={settings.host} needs a token: set --feedback_token or "
            f"${FEEDBACK_TOKEN_ENV} (feedback without a token is allowed on a loopback host only)")


def read_model_config_file(path: str) -> tuple[ModelConfig, ...]:
    """Parse a text-format ModelServerConfig into ModelConfigs, checked as ServerCore checks them."""
    text = _read_text(path, "--model_config_file")
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise SettingsError(
            f"Error parsing text-format tensorflow.serving.ModelServerConfig in {path}: {err}") from None
    return models_from_proto(config)


def models_from_proto(config) -> tuple[ModelConfig, ...]:
    """ModelConfigs from a ModelServerConfig proto (a file, or HandleReloadConfigRequest)."""
    if config.WhichOneof("config") != "model_config_list":
        raise SettingsError(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. "
            "Only ModelConfigList is currently supported")
    models = []
    for entry in config.model_config_list.config:
        if not entry.model_platform and not entry.model_type:
            raise SettingsError(
                "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                f"ModelServerConfig::model_platform, model name is {entry.name}")
        if entry.model_platform and entry.model_platform != "tensorflow":
            raise SettingsError(
                f"Model {entry.name}: model_platform {entry.model_platform!r} is not supported "
                "(only 'tensorflow')")
        models.append(ModelConfig(
            name=entry.name,
            base_path=entry.base_path,
            policy=_policy_from_proto(entry.model_version_policy),
            version_labels=dict(entry.version_labels),
        ))
    models = tuple(models)
    _check_models(models)
    return models


def _policy_from_proto(policy) -> VersionPolicy:
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        return VersionPolicy("specific", versions=tuple(policy.specific.versions))
    if kind == "latest":
        return VersionPolicy("latest", num_versions=max(policy.latest.num_versions, 1))
    return VersionPolicy()


def _check_models(models: tuple[ModelConfig, ...]) -> None:
    seen = set()
    for model in models:
        if not model.name:
            raise SettingsError("A model in the config has no name")
        if model.name in seen:
            raise SettingsError(f"Illegal to list model {model.name} multiple times in config list")
        seen.add(model.name)
        if not Path(model.base_path).is_absolute():
            raise SettingsError(
                f"Expected model {model.name} to have an absolute path or URI; "
                f"got base_path()={model.base_path}")


def parse_grpc_channel_arguments(text: str) -> tuple[tuple[str, int | str], ...]:
    """`key=value,key=value` as tensorflow_model_server reads --grpc_channel_arguments: a value that parses
    as a 32-bit integer is passed as one, any other as a string. "" is none."""
    options = []
    for item in text.split(",") if text.strip() else ():
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or "=" in value:
            raise SettingsError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        number = int(value) if re.fullmatch(r"[+-]?[0-9]+", value) else None
        options.append((key, number if number is not None and -2**31 <= number < 2**31 else value))
    return tuple(options)


def read_batching_parameters_file(path: str) -> BatchingOptions:
    """BatchingOptions from a text-format BatchingParameters file."""
    text = _read_text(path, "--batching_parameters_file")
    try:
        return BatchingOptions.from_text_proto(text)
    except ValueError as err:
        raise SettingsError(
            f"Error parsing text-format tensorflow.serving.BatchingParameters in {path}: {err}") from None


def read_monitoring_config_file(path: str) -> tuple[bool, str]:
    """(enabled, path) from a text-format MonitoringConfig."""
    text = _read_text(path, "--monitoring_config_file")
    config = MonitoringConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise SettingsError(
            f"Error parsing text-format tensorflow.serving.MonitoringConfig in {path}: {err}") from None
    prometheus = config.prometheus_config
    metrics_path = prometheus.path or DEFAULT_PROMETHEUS_PATH
    if prometheus.enable and not metrics_path.startswith("/"):
        raise SettingsError(f"prometheus_config.path must start with '/': {metrics_path!r}")
    return prometheus.enable, metrics_path


def _read_text(path: str, flag: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(f"{flag}: cannot read {path}: {err}") from None
