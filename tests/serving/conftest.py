"""Shared serving fixtures: tiny model folders and real servers on ephemeral ports.

For other test modules (client, bench, end-to-end):

- `model_store`: session-wide templates of every test model (one version folder each).
- `install_version(template, base_path, version)`: copy a template in as a version folder.
- `make_settings(**flags)`: Settings as the flags would give them, with ephemeral ports.
- `start_server(settings)`: a function-scoped factory; every server it starts is
  stopped at teardown. Returns a ServerThread (`.rest_url`, `.grpc_target`, `.server`).
- `signflow_server`: one session-wide server of signflow's own tiny model, named
  `SIGNFLOW_MODEL`, version 1.
- `wait_for(predicate, timeout)`: poll until true (version changes take a poll interval).
  Its timeout is a hang guard, not a speed claim: keep it generous (HANG_GUARD).
- `wait_for_polls(server, rounds)`: wait until the server's version watcher completed
  `rounds` more polls, i.e. until it has certainly looked at the folders as they are now.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

import pytest

from serving.server import ServerThread
from serving.settings import Settings, build_settings
from tests.serving import toy_models

SIGNFLOW_MODEL = "signflow"
TOY_BUILDERS = {
    "half_plus_two": toy_models.build_half_plus_two,
    "multi_input": toy_models.build_multi_input,
    "bytes_identity": toy_models.build_bytes_identity,
    "slow": toy_models.build_slow,
    "gated": toy_models.build_gated,
    "broken": toy_models.build_broken,
    "half_precision": toy_models.build_half_precision,
}


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> dict[str, Path]:
    """Template version folders: the toy models plus "signflow" (tests/fixtures/tiny_model.py)."""
    from tests.fixtures.tiny_model import build_tiny_saved_model

    root = tmp_path_factory.mktemp("model_store")
    store = {name: build(root / name) for name, build in TOY_BUILDERS.items()}
    store["signflow"] = build_tiny_saved_model(root / "signflow")
    return store


def install_version(template: Path, base_path: Path, version: int) -> Path:
    """Copy a model folder in as `base_path/<version>`, atomically (staged, then renamed) as the Pusher does."""
    base_path.mkdir(parents=True, exist_ok=True)
    staging = base_path / f".incoming-{version}-test"
    shutil.copytree(template, staging)
    target = base_path / str(version)
    staging.rename(target)
    return target


def make_settings(**flags) -> Settings:
    """build_settings(**flags) with both ports 0, which ServerThread binds to free ports."""
    flags.setdefault("grpc_port", 8500)
    flags.setdefault("rest_api_port", 8501)
    return build_settings(**flags).replace(grpc_port=0, rest_api_port=0)


def write_model_config(path: Path, models: list[dict]) -> Path:
    """A text-format ModelServerConfig. Each dict: name, base_path, and optionally
    policy ("all", "latest", or a list of versions) and labels {label: version}."""
    entries = []
    for model in models:
        parts = [f'name: "{model["name"]}"', f'base_path: "{model["base_path"]}"', 'model_platform: "tensorflow"']
        policy = model.get("policy")
        if policy == "all":
            parts.append("model_version_policy { all {} }")
        elif isinstance(policy, (list, tuple)):
            versions = " ".join(f"versions: {v}" for v in policy)
            parts.append(f"model_version_policy {{ specific {{ {versions} }} }}")
        elif isinstance(policy, int):
            parts.append(f"model_version_policy {{ latest {{ num_versions: {policy} }} }}")
        for label, version in model.get("labels", {}).items():
            parts.append(f'version_labels {{ key: "{label}" value: {version} }}')
        entries.append("  config { " + " ".join(parts) + " }\n")
    path.write_text("model_config_list {\n" + "".join(entries) + "}\n")
    return path


# How long a wait may take before the test calls it a hang. Loading a tiny model takes well
# under a second on an idle machine; this leaves room for two cores shared with other jobs.
HANG_GUARD = 60.0


def wait_for(predicate: Callable[[], bool], timeout: float = HANG_GUARD, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def wait_for_polls(server: ServerThread, rounds: int = 2, timeout: float = HANG_GUARD) -> bool:
    """Wait until the version watcher completed `rounds` more rounds than it has now.

    With rounds >= 2, at least one whole round (scan and reconcile) began after
    this call: whatever the folders held at the call has been seen and acted on.
    """
    target = server.file_system_polls + rounds
    return wait_for(lambda: server.file_system_polls >= target, timeout, interval=0.05)


@pytest.fixture
def start_server():
    """Factory: start_server(settings) -> running ServerThread; all are stopped at teardown."""
    started: list[ServerThread] = []

    def start(settings: Settings) -> ServerThread:
        server = ServerThread(settings).start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture(scope="session")
def signflow_server(model_store, tmp_path_factory) -> ServerThread:
    """signflow's tiny model served as SIGNFLOW_MODEL (version 1) for the whole session."""
    base = tmp_path_factory.mktemp("signflow_serving") / SIGNFLOW_MODEL
    install_version(model_store["signflow"], base, 1)
    server = ServerThread(make_settings(model_name=SIGNFLOW_MODEL, model_base_path=str(base))).start()
    yield server
    server.stop()
