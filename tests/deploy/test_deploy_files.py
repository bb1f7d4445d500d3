"""The deployment files agree with the code: ports, model name, paths, image tags, Python.

Docker cannot run here, so the Dockerfile, docker-compose.yml and the Kubernetes
manifests are checked as files against the values the code uses
(serving.settings.Settings, pipeline.definition.configs, requirements.lock). `make serve` is
run for real, with a fake tensorflow_model_server first on PATH that records its
command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path, PurePosixPath

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from pipeline.definition.configs import DeliveryConfig, PipelineConfig
from pipeline.runners import kubeflow_v2_runner
from pipeline.runners.kubeflow_config import KubeflowV2Config
from serving import cli
from serving.settings import Settings, build_settings

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S_DIR = ROOT / "deploy" / "k8s"
MODEL_NAME = DeliveryConfig().model_name
MODEL_MOUNT = f"/models/{MODEL_NAME}"
DEFAULTS = Settings()
YAML_FILES = [COMPOSE_FILE, *sorted(K8S_DIR.glob("*.yaml"))]


def locked_version(package: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in requirements.lock")


TF_SERVING_IMAGE = f"tensorflow/serving:{locked_version('tensorflow-serving-api')}"


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def k8s_objects() -> dict[str, dict]:
    """Every manifest under deploy/k8s by kind (one object of each kind here)."""
    objects = {}
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in objects, f"two {doc['kind']} objects; the test expects one"
            objects[doc["kind"]] = doc
    return objects


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def workdir() -> str:
    return [rest for keyword, rest in dockerfile_instructions() if keyword == "WORKDIR"][-1]


def parse_signflow_command(argv: list[str]) -> argparse.Namespace:
    """Parse `python -m pipeline.cli <argv>` the way pipeline/cli.py does, without running it."""
    from pipeline.cli import SUBCOMMANDS

    name, *rest = argv
    module = importlib.import_module(SUBCOMMANDS[name][0])
    add_arguments = getattr(module, f"add_{name.replace('-', '_')}_arguments", None) or module.add_arguments
    parser = argparse.ArgumentParser(prog=f"signflow {name}")
    add_arguments(parser)
    return parser.parse_args(rest)


def short_volumes(service: dict) -> dict[str, tuple[str, str]]:
    """Compose short-syntax volumes as target -> (source, mode)."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        mounts[target] = (source, mode[0] if mode else "rw")
    return mounts


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def published_ports(service: dict) -> list[tuple[int, int]]:
    return [tuple(int(part) for part in str(entry).split(":")) for entry in service["ports"]]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_parses(path):
    docs = [doc for doc in yaml.safe_load_all(path.read_text())]
    assert docs and all(isinstance(doc, dict) for doc in docs)
    if path.parent == K8S_DIR:
        for doc in docs:
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]


@pytest.mark.parametrize("path", sorted(K8S_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_k8s_manifests_use_only_kubernetes_api_fields(path):
    # The official client's models (kubernetes in requirements.lock) drop unknown fields and
    # reject wrong types, so a misspelled field shows up as a difference after a round trip.
    from kubernetes.client import ApiClient

    api = ApiClient()
    for doc in yaml.safe_load_all(path.read_text()):
        model = api._ApiClient__deserialize(doc, f"{doc['apiVersion'].split('/')[-1].upper()}{doc['kind']}")
        assert api.sanitize_for_serialization(model) == doc


def test_compose_serving_is_tf_serving_on_the_default_ports():
    serving = compose()["services"]["serving"]
    assert serving["image"] == TF_SERVING_IMAGE
    assert published_ports(serving) == [(8500, 8500), (8501, 8501)]
    assert published_ports(serving) == [(DEFAULTS.grpc_port,) * 2, (DEFAULTS.rest_api_port,) * 2]
    assert environment(serving)["MODEL_NAME"] == MODEL_NAME
    assert f"--file_system_poll_wait_seconds={DEFAULTS.file_system_poll_wait_seconds}" in serving["command"]


def test_compose_training_and_serving_share_the_model_folder():
    config = compose()
    services = config["services"]
    serving_mounts = short_volumes(services["serving"])
    source, mode = serving_mounts[MODEL_MOUNT]
    assert mode == "ro"
    # A named volume, declared once: the same filesystem for the Pusher's rename and TF Serving's poll.
    assert source in config["volumes"]
    training_mounts = short_volumes(services["training"])
    model_folder = str(PurePosixPath(workdir()) / PipelineConfig().model_base_path)
    assert training_mounts[model_folder] == (source, "rw")
    # The training server's other state outlives the container too.
    pipeline_root = str(PurePosixPath(workdir()) / PipelineConfig().pipeline_root)
    assert training_mounts[pipeline_root][0] in config["volumes"]
    inbox = PurePosixPath(workdir()) / PipelineConfig().inbox_dir
    assert any(inbox == PurePosixPath(target) or PurePosixPath(target) in inbox.parents
               for target in training_mounts)
    assert services["training"]["command"][0] == "schedule"
    parse_signflow_command(services["training"]["command"])


def test_compose_signflow_serving_profile_is_a_drop_in():
    config = compose()
    service = config["services"]["signflow-serving"]
    assert service["profiles"] == ["signflow-serving"]
    assert service["entrypoint"] == ["python", "-m", "serving"]
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    settings = cli.settings_from_args(parser.parse_args(service["command"]), environ={})
    assert published_ports(service) == [(settings.grpc_port,) * 2, (settings.rest_api_port,) * 2]
    assert published_ports(service) == published_ports(config["services"]["serving"])
    assert (settings.model_name, settings.model_base_path) == (MODEL_NAME, MODEL_MOUNT)
    assert settings.host == "0.0.0.0"  # a published port cannot reach 127.0.0.1 inside the container
    assert short_volumes(service)[MODEL_MOUNT] == short_volumes(config["services"]["serving"])[MODEL_MOUNT]


def test_k8s_deployment_agrees_with_the_code():
    objects = k8s_objects()
    deployment, service, claim = objects["Deployment"], objects["Service"], objects["PersistentVolumeClaim"]
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["image"] == TF_SERVING_IMAGE
    assert {e["name"]: e["value"] for e in container["env"]}["MODEL_NAME"] == MODEL_NAME
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert sorted(ports.values()) == [DEFAULTS.grpc_port, DEFAULTS.rest_api_port] == [8500, 8501]

    [mount] = container["volumeMounts"]
    assert mount["mountPath"] == MODEL_MOUNT and mount["readOnly"] is True
    # The claim is the pipeline's data root; TF Serving sees only the model folder in it.
    assert mount["subPath"] == PipelineConfig().model_base_path.as_posix()
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]

    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == f"/v1/models/{MODEL_NAME}"
    assert ports.get(probe["port"], probe["port"]) == DEFAULTS.rest_api_port
    assert any(arg.startswith("--file_system_poll_wait_seconds=") for arg in container["args"])

    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    served = {p["port"]: ports.get(p["targetPort"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert served == {8500: 8500, 8501: 8501}


def test_the_image_and_the_claim_fit_the_kubeflow_runner():
    defaults = {f.name: f.default for f in dataclasses.fields(KubeflowV2Config)}
    # Every step imports signflow's modules from source_dir inside the image.
    assert defaults["source_dir"] == workdir()
    # The image installs the lock, and the lock holds what TFX's Kubeflow entrypoint imports.
    runs = [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN"]
    assert any("-r /tmp/requirements.lock" in run for run in runs)
    assert kubeflow_v2_runner.KFP_PIPELINE_SPEC_REQUIREMENT in (ROOT / "requirements.lock").read_text().splitlines()
    # The Pusher writes <data_root>/<serving_dir>/<model_name>: the folder TF Serving mounts.
    [mount] = k8s_objects()["Deployment"]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert mount["subPath"] == f"{defaults['serving_dir']}/{MODEL_NAME}"


def test_dockerfile_builds_the_locked_python_310_environment():
    instructions = dockerfile_instructions()
    args = dict(rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest)
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest).split()[0]
             for keyword, rest in instructions if keyword == "FROM"]
    assert froms and all(image.startswith("python:3.10") for image in froms), froms
    setup = (ROOT / "setup.py").read_text()
    python_requires = re.search(r'python_requires="([^"]+)"', setup).group(1)
    assert "3.10" in SpecifierSet(python_requires)
    assert "with Python 3.10." in (ROOT / "requirements.lock").read_text().splitlines()[0]

    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    copies = [rest.split() for keyword, rest in instructions if keyword == "COPY"]
    [lock_copy] = [c for c in copies if c[0] == "requirements.lock"]
    assert re.search(rf"pip install (--\S+ )*-r {re.escape(lock_copy[1])}", runs)

    env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    assert "TF_USE_LEGACY_KERAS=1" in env.split()
    assert f"PYTHONPATH={workdir()}" in env.split()
    [entrypoint] = [json.loads(rest) for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    [command] = [json.loads(rest) for keyword, rest in instructions if keyword == "CMD"]
    assert entrypoint == ["python", "-m", "pipeline.cli"]
    assert command[0] == "schedule"
    assert parse_signflow_command(command).interval == 6 * 3600


def dockerignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        forms = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        if any(fnmatch.fnmatchcase(c, form) for c in candidates for form in forms):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_run_outputs_out_and_code_in():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in [".venv/bin/python", "pipeline_root/signflow/metadata.sqlite",
                 f"serving_model/{MODEL_NAME}/1/saved_model.pb", "data/inbox/batch.jsonl",
                 "data/inbox/signer_03/a.png", "bench/out/serving.json", ".pytest_cache/v/cache",
                 "serving/__pycache__/cli.cpython-310.pyc", ".git/HEAD"]:
        assert dockerignored(patterns, path), path
    for path in ["requirements.lock", "setup.py", "pipeline/cli.py", "components/schema/schema.pbtxt",
                 "serving/settings.py", "data/sample/MANIFEST.json", "data/inbox/README.md"]:
        assert not dockerignored(patterns, path), path


SIGNFLOW_ONLY_FLAGS = {"--host", "--max_request_bytes", "--max_instances_per_request", "--max_image_pixels",
                       "--feedback_dir", "--feedback_token", "--training_status_file", "--request_log_file",
                       "--request_log_max_bytes", "--prefer_tensorflow_model_server"}


def signflow_only_flags() -> set[str]:
    """The brief's list plus whatever serving/cli.py files under its own group."""
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    [group] = [g for g in parser._action_groups if g.title == "signflow flags"]
    return SIGNFLOW_ONLY_FLAGS | {option for action in group._group_actions for option in action.option_strings}


def test_make_serve_execs_tensorflow_model_server_with_tf_servings_flags(tmp_path):
    make = shutil.which("make")
    if make is None:
        pytest.skip("GNU make is not on PATH: install make to run `make serve`")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorded = tmp_path / "argv"
    fake = bin_dir / cli.TF_SERVING_BINARY
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$0" "$@" > "{recorded}"\n')
    fake.chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    # `-o venv`: `make serve` uses the venv running this test as it is, instead of rebuilding a 3 GB one.
    process = subprocess.Popen([make, "-C", str(ROOT), "-o", "venv", "serve", f"MODEL={MODEL_NAME}", "SERVE_FLAGS="],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    # If signflow's own server starts instead, stop it before it imports TensorFlow
    # and opens ports or folders: at its first notice, or after the deadline.
    deadline = threading.Timer(45, os.killpg, (process.pid, signal.SIGKILL))
    deadline.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("signflow serve:"):
                os.killpg(process.pid, signal.SIGKILL)
                break
    finally:
        deadline.cancel()
        process.wait()
    output = "".join(lines)
    assert process.returncode == 0, f"`make serve` did not exec {cli.TF_SERVING_BINARY}:\n{output}"
    argv = recorded.read_text().splitlines()

    settings = build_settings(grpc_port=8500, rest_api_port=8501, model_name=MODEL_NAME,
                              model_base_path=str(ROOT / PipelineConfig().model_base_path))
    assert argv == cli.tensorflow_model_server_argv(settings, binary=str(fake))
    # What TF Serving's Docker image passes (tf_serving_entrypoint.sh), for the same model.
    for flag in ["--port=8500", "--rest_api_port=8501", f"--model_name={MODEL_NAME}",
                 f"--model_base_path={ROOT}/serving_model/{MODEL_NAME}"]:
        assert flag in argv
    names = {arg.split("=", 1)[0] for arg in argv[1:]}
    assert not names & signflow_only_flags(), names & signflow_only_flags()
