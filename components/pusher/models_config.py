"""TF Serving's `--model_config_file`: a text ModelServerConfig beside the model folders.

Built and printed with the generated protos (tensorflow_serving.config), so what
TF Serving parses is exactly what we wrote. An existing file is read back and
only this model's entry is added or refreshed: other models, and a version
policy or version_labels an operator set by hand, are kept.
"""
from __future__ import annotations

import os

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from components import storage

MODELS_CONFIG_FILE = "models.config"


def read_models_config(path: str | os.PathLike) -> model_server_config_pb2.ModelServerConfig:
    """Parse a models.config (on any filesystem); a missing file is an empty config."""
    config = model_server_config_pb2.ModelServerConfig()
    path = os.fspath(path)
    if storage.exists(path):
        text_format.Parse(storage.read_text(path), config)
    return config


def write_models_config(path: str | os.PathLike, model_name: str,
                        model_base_path: str | os.PathLike) -> model_server_config_pb2.ModelServerConfig:
    """Add or refresh `model_name` in the models.config at `path`; returns the config written.

    A new entry serves the highest version (the `latest` policy with one
    version), which is what rollback relies on.
    """
    path = os.fspath(path)
    config = read_models_config(path)
    if config.WhichOneof("config") == "custom_model_config":
        raise ValueError(f"{path} holds a custom_model_config; signflow only manages model_config_list")
    entry = _find_entry(config, model_name)
    if entry is None:
        entry = config.model_config_list.config.add(name=model_name, model_platform="tensorflow")
        entry.model_version_policy.latest.num_versions = 1
    base = os.fspath(model_base_path)
    # TF Serving reads gs:// and s3:// base paths itself; a local one is made absolute.
    entry.base_path = os.path.realpath(storage.local_path(base)) if storage.is_local(base) else base
    storage.write_atomic(path, text_format.MessageToString(config))
    return config


def labelled_versions(path: str | os.PathLike, model_name: str) -> set[int]:
    """Versions that `model_name`'s version_labels point to (retention keeps them)."""
    entry = _find_entry(read_models_config(path), model_name)
    return set(entry.version_labels.values()) if entry is not None else set()


def _find_entry(config: model_server_config_pb2.ModelServerConfig, model_name: str) -> model_server_config_pb2.ModelConfig | None:
    for entry in config.model_config_list.config:
        if entry.name == model_name:
            return entry
    return None
