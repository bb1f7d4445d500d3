"""`signflow serve` / `python -m serving`: tensorflow_model_server's command line.

The flags are tensorflow_model_server's that matter for this project, with the
same names, defaults and meanings; write them `--flag=value` (TF Serving's
style) or `--flag value`, booleans `--enable_batching` or
`--enable_batching=true`. An unknown flag, a bad value or a config file that
does not parse stops the server at once with a message saying which.

signflow's own flags: --host (TF Serving binds every interface; this server
binds 127.0.0.1 unless told), the request limits, the REST keep-alive timeout
(--rest_api_keep_alive_timeout_seconds), the feedback endpoint
(--feedback_dir, --feedback_token), the status route (--training_status_file),
the request log (--request_log_file, --request_log_max_bytes), the web page
(--ui, docs/ui.md), and --prefer_tensorflow_model_server, which execs the real
tensorflow_model_server with the equivalent command line when it is on PATH
(`make serve` uses it) -- unless a signflow-only feature is asked for, which TF
Serving cannot provide. The web page is not such a feature: it is on by default,
and `signflow ui --api URL` (serving/ui_command.py) serves it in front of TF Serving.

$SIGNFLOW_FEEDBACK_TOKEN is read here, once, when --feedback_token is not given
(a token in the environment stays out of `ps`).

Layer: entry point, beside the server. Imports serving.settings at once and
serving.server (hence TensorFlow) only once the flags are good, so a bad flag
fails in a fraction of a second.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from typing import Mapping

from serving.settings import FEEDBACK_TOKEN_ENV, Settings, SettingsError, build_settings

TF_SERVING_BINARY = "tensorflow_model_server"

_DEFAULTS = Settings()


def _bool(text: str) -> bool:
    """tensorflow::Flags' bool syntax: true/false/1/0."""
    lowered = text.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Define the server's flags on `parser` (pipeline/cli.py's `signflow serve` and __main__)."""
    # TF Serving's flags are matched whole; a prefix like --model must not mean --model_name.
    parser.allow_abbrev = False
    tf_flags = parser.add_argument_group("tensorflow_model_server flags")

    def flag(name: str, kind, help_text: str, group=tf_flags) -> None:
        default = getattr(_DEFAULTS, "grpc_port" if name == "port" else name)
        if kind is bool:
            group.add_argument(f"--{name}", type=_bool, nargs="?", const=True, default=default,
                               metavar="true|false", help=f"{help_text} (default: {str(default).lower()})")
        else:
            group.add_argument(f"--{name}", type=kind, default=default, metavar=kind.__name__.upper(),
                               help=f"{help_text} (default: {default!r})")

    flag("port", int, "gRPC port; 0 disables gRPC")
    flag("rest_api_port", int, "HTTP/REST port; 0 disables REST")
    flag("model_name", str, "name of the model, when --model_config_file is not set")
    flag("model_base_path", str, "absolute path of the folder holding the model's version folders")
    flag("model_config_file", str, "text-format ModelServerConfig (several models, version policies, labels)")
    flag("model_config_file_poll_wait_seconds", int, "seconds between re-reads of --model_config_file; 0: read once")
    flag("file_system_poll_wait_seconds", int, "seconds between scans for new versions; 0: once, <0: never")
    flag("enable_batching", bool, "batch concurrent requests together")
    flag("batching_parameters_file", str, "text-format BatchingParameters (needs --enable_batching)")
    flag("monitoring_config_file", str, "text-format MonitoringConfig (Prometheus endpoint on the REST port)")
    flag("rest_api_timeout_in_ms", int, "REST inference calls past this answer 504; <=0: no limit")
    flag("enable_model_warmup", bool, "replay assets.extra/tf_serving_warmup_requests before serving a version")
    flag("allow_version_labels_for_unavailable_models", bool,
         "allow a new version label to name a version that is not loaded yet")
    flag("grpc_channel_arguments", str,
         "comma-separated gRPC server arguments, e.g. grpc.max_connection_idle_ms=75000")

    own = parser.add_argument_group("signflow flags")
    flag("host", str, "interface to listen on", own)
    flag("max_request_bytes", int, "largest request body / gRPC message accepted", own)
    flag("max_instances_per_request", int, "most instances or examples in one request", own)
    flag("max_image_pixels", int, "largest image (width x height) accepted in image_bytes", own)
    flag("rest_api_keep_alive_timeout_seconds", int,
         "close an HTTP connection that has no request in progress for this long", own)
    flag("feedback_dir", str, "absolute inbox folder for POST /v1/models/<name>/feedback; empty: feedback off", own)
    # No default shown: the default comes from the environment, and a token must not be printed.
    own.add_argument("--feedback_token", type=str, default=None, metavar="TOKEN",
                     help=f"bearer token the feedback endpoint requires (default: ${FEEDBACK_TOKEN_ENV}, "
                          "else none, allowed on a loopback --host only)")
    flag("training_status_file", str, "JSON file of the training scheduler, shown by GET /signflow/status", own)
    flag("request_log_file", str, "JSON Lines log of image predictions (no image bytes); empty: off", own)
    flag("request_log_max_bytes", int, "size at which --request_log_file is rotated to <file>.1", own)
    # No default shown: it depends on --host.
    own.add_argument("--ui", type=_bool, nargs="?", const=True, default=None, metavar="true|false",
                     help="serve the web page at /ui/ on the REST port (default: true when --host is loopback)")
    own.add_argument("--prefer_tensorflow_model_server", type=_bool, nargs="?", const=True, default=False,
                     metavar="true|false",
                     help=f"exec {TF_SERVING_BINARY} with the same settings when it is on PATH (default: false)")


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """The typed settings for parsed flags; raises SettingsError for bad values or config files.

    `environ` (default os.environ) supplies $SIGNFLOW_FEEDBACK_TOKEN when --feedback_token is not given.
    """
    environ = os.environ if environ is None else environ
    token = args.feedback_token if args.feedback_token is not None else environ.get(FEEDBACK_TOKEN_ENV, "")
    return build_settings(
        host=args.host,
        grpc_port=args.port,
        rest_api_port=args.rest_api_port,
        model_name=args.model_name,
        model_base_path=args.model_base_path,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        enable_batching=args.enable_batching,
        batching_parameters_file=args.batching_parameters_file,
        monitoring_config_file=args.monitoring_config_file,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
        rest_api_keep_alive_timeout_seconds=args.rest_api_keep_alive_timeout_seconds,
        grpc_channel_arguments=args.grpc_channel_arguments,
        enable_model_warmup=args.enable_model_warmup,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        max_request_bytes=args.max_request_bytes,
        max_instances_per_request=args.max_instances_per_request,
        max_image_pixels=args.max_image_pixels,
        feedback_dir=args.feedback_dir,
        feedback_token=token,
        training_status_file=args.training_status_file,
        request_log_file=args.request_log_file,
        request_log_max_bytes=args.request_log_max_bytes,
        ui=args.ui,
    )


def signflow_only_features(settings: Settings) -> list[str]:
    """The flags in use that tensorflow_model_server has no equivalent for (it would ignore them silently)."""
    wanted = ("feedback_dir", "training_status_file", "request_log_file")
    return [f"--{name}" for name in wanted if getattr(settings, name)]


def tensorflow_model_server_argv(settings: Settings, binary: str = TF_SERVING_BINARY) -> list[str]:
    """The tensorflow_model_server command line that serves what `settings` describe.

    Every flag is written out (TF Serving's --rest_api_port default is 0, ours
    8501). signflow-only settings have no equivalent and are left out: --host
    (TF Serving listens on all interfaces), the request limits, the REST
    keep-alive timeout (TF Serving keeps idle connections open), feedback, the
    status route and the request log.
    """
    argv = [
        binary,
        f"--port={settings.grpc_port}",
        f"--rest_api_port={settings.rest_api_port}",
        f"--rest_api_timeout_in_ms={settings.rest_api_timeout_in_ms}",
        f"--file_system_poll_wait_seconds={settings.file_system_poll_wait_seconds}",
    ]
    if settings.model_config_file:
        argv.append(f"--model_config_file={settings.model_config_file}")
        argv.append(f"--model_config_file_poll_wait_seconds={settings.model_config_file_poll_wait_seconds}")
    else:
        argv.append(f"--model_name={settings.model_name}")
        argv.append(f"--model_base_path={settings.model_base_path}")
    argv.append(f"--enable_batching={str(settings.enable_batching).lower()}")
    if settings.batching_parameters_file:
        argv.append(f"--batching_parameters_file={settings.batching_parameters_file}")
    if settings.monitoring_config_file:
        argv.append(f"--monitoring_config_file={settings.monitoring_config_file}")
    if settings.grpc_channel_arguments:
        argv.append(f"--grpc_channel_arguments={settings.grpc_channel_arguments}")
    argv.append(f"--enable_model_warmup={str(settings.enable_model_warmup).lower()}")
    argv.append("--allow_version_labels_for_unavailable_models="
                f"{str(settings.allow_version_labels_for_unavailable_models).lower()}")
    return argv


def main(args: argparse.Namespace, prog: str = "signflow serve") -> int:
    """Run the server with parsed flags; returns the exit code (2 for bad flags or config). `prog` names the
    command in error messages, as argparse does."""
    try:
        settings = settings_from_args(args)
    except SettingsError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    if args.prefer_tensorflow_model_server:
        binary = shutil.which(TF_SERVING_BINARY)
        features = signflow_only_features(settings)
        if binary is not None and features:
            # Exec'ing would drop them without a word; the feature asked for wins over the preference.
            print(f"signflow serve: not using {binary}: it has no equivalent of {', '.join(features)}",
                  file=sys.stderr, flush=True)
        elif binary is not None:
            argv = tensorflow_model_server_argv(settings, binary)
            print("exec " + " ".join(argv), file=sys.stderr, flush=True)
            os.execv(binary, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from serving import server  # imports TensorFlow

    return server.run(settings)

