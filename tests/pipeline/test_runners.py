"""The pipeline under the other runners (compiled for Kubeflow V2 / Vertex AI, and as an Airflow DAG), and what the
local runner imports.

Nothing here needs a cluster: the Kubeflow tests compile to a file and read it
back (kfp-pipeline-spec, the compiler's own dependency, is in the lock); the Airflow
DAG file is checked as source always, and imported only where Airflow is.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.runners.kubeflow_config import DataflowConfig, load_kubeflow_config

REPO = Path(__file__).resolve().parents[2]
IMAGE = "europe-west4-docker.pkg.dev/proj/signflow/training:7"
PIPELINE_ROOT = "gs://bucket/signflow/pipeline_root"
DATA_ROOT = "/gcs/bucket/signflow"
DATAFLOW = {"project": "proj", "region": "europe-west4", "temp_location": "gs://bucket/beam-tmp"}
DATAFLOW_ARGS = [
    "--runner=DataflowRunner",
    "--project=proj",
    "--region=europe-west4",
    "--temp_location=gs://bucket/beam-tmp",
    f"--sdk_container_image={IMAGE}",
]
# TFX's container entrypoint and the platform's ExampleGen driver (tfx/orchestration/kubeflow/v2/).
TFX_ENTRYPOINT = ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
PLATFORM_DRIVER = ["python", "-m", "tfx.orchestration.kubeflow.v2.file_based_example_gen.driver"]
BEAM_TASKS = ("SignatureExampleGen", "StatisticsGen", "Evaluator")


def _overrides(**extra: str) -> list[str]:
    settings = {"image": IMAGE, "pipeline_root": PIPELINE_ROOT, "data_root": DATA_ROOT, **extra}
    return [f"{key}={value}" for key, value in settings.items()] + [f"dataflow={json.dumps(DATAFLOW)}"]


# --- Kubeflow settings (no TFX) ---


def test_kubeflow_config_requires_image_root_and_data_root():
    with pytest.raises(ValueError, match="missing required setting.*image.*pipeline_root.*data_root"):
        load_kubeflow_config(None, [])


def test_kubeflow_config_rejects_a_bucket_uri_as_data_root():
    # Ingestion, the serving check and the Pusher use os/pathlib there: it must be a mounted path.
    with pytest.raises(ValueError, match="absolute POSIX path"):
        load_kubeflow_config(None, _overrides(data_root="gs://bucket/signflow"))


def test_kubeflow_config_rejects_unknown_settings_and_incomplete_sections():
    with pytest.raises(ValueError, match="unknown setting.*imagee"):
        load_kubeflow_config(None, _overrides(imagee="x"))
    with pytest.raises(ValueError, match="temp_location"):
        load_kubeflow_config(None, _overrides() + ['dataflow={"project": "p", "region": "r"}'])


def test_kubeflow_config_resolves_paths_and_beam_args(tmp_path):
    settings = tmp_path / "kubeflow.json"
    settings.write_text(json.dumps({"image": IMAGE, "pipeline_root": PIPELINE_ROOT, "data_root": DATA_ROOT,
                                    "inbox_dir": "/gcs/other/drop", "dataflow": DATAFLOW}))
    config = load_kubeflow_config(settings, ["beam_pipeline_args=[\"--max_num_workers=4\"]", "label_key=caption"])
    paths = config.paths()
    assert paths.ingest.inbox_dir == "/gcs/other/drop"
    assert paths.ingest.state_dir == f"{DATA_ROOT}/ingest_state"
    assert paths.serving_dir == f"{DATA_ROOT}/serving_model"
    assert paths.schema_path == "/app/components/schema/schema.pbtxt"
    assert paths.ingest.sample_dir is None
    assert (paths.pipeline_root, paths.metadata_path) == (PIPELINE_ROOT, None)  # the platform keeps its own MLMD
    assert config.label_keys == ("caption", "label")
    assert config.all_beam_args == (*DATAFLOW_ARGS, "--max_num_workers=4")
    own_image = DataflowConfig(**DATAFLOW, sdk_container_image="workers:1").beam_args(IMAGE)
    assert "--sdk_container_image=workers:1" in own_image


def test_collect_kubeflow_lands_a_span_before_the_run(tmp_path, capsys):
    from pipeline.runners import kubeflow_v2_runner

    data_root = tmp_path / "mounted"
    (data_root / "inbox").mkdir(parents=True)
    (data_root / "inbox" / "batch.jsonl").write_text('{"b64": "aGVsbG8=", "label": "alice"}\n')
    args = argparse.Namespace(config=None, overrides=_overrides(data_root=str(data_root)))

    assert kubeflow_v2_runner.collect_kubeflow_main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["new_span"], first["files"], first["awaiting_processing"]) == (0, 1, True)
    assert (data_root / "ingest_state" / "landing" / "span-0" / "inbox" / "batch.jsonl").is_file()

    # Span 0 is not processed yet: nothing new is collected, and a run is still due.
    assert kubeflow_v2_runner.collect_kubeflow_main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["new_span"], second["pending"], second["awaiting_processing"]) == (None, True, True)


# --- Kubeflow V2 compilation ---


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(config, the pipeline it compiles, the written PipelineJob) — compiled once for the module."""
    from pipeline.runners.kubeflow_v2_runner import build, compile_pipeline

    output = tmp_path_factory.mktemp("kubeflow") / "signflow.json"
    config = load_kubeflow_config(None, _overrides(output_path=str(output)))
    compile_pipeline(config)
    return config, build(config), json.loads(output.read_text())


def _tasks(job: dict) -> dict:
    return job["pipelineSpec"]["root"]["dag"]["tasks"]


def _executors(job: dict) -> dict:
    return job["pipelineSpec"]["deploymentSpec"]["executors"]


def _upstream(task: dict) -> set[str]:
    """Tasks this one waits for: explicit dependencies and the producers of its input artifacts."""
    producers = {
        spec["taskOutputArtifact"]["producerTask"]
        for spec in task.get("inputs", {}).get("artifacts", {}).values()
        if "taskOutputArtifact" in spec
    }
    return set(task.get("dependentTasks", [])) | producers


def test_every_node_is_a_task(compiled):
    from tfx.dsl.components.common.resolver import Resolver

    _, pipeline, job = compiled
    expected = set()
    for node in pipeline.components:
        if isinstance(node, Resolver):
            # The latest-blessed-model resolver compiles to two platform queries.
            expected |= {f"{node.id}-model-blessing-resolver", f"{node.id}-model-resolver"}
        else:
            expected.add(node.id)
    assert set(_tasks(job)) == expected
    assert {"SignatureExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomaliesGate",
            "Trainer", "Evaluator", "ServingCheck", "Pusher"} <= expected


def test_tasks_run_in_dependency_order(compiled):
    tasks = _tasks(compiled[2])
    upstream = {name: _upstream(task) for name, task in tasks.items()}
    assert all(deps <= set(tasks) for deps in upstream.values())
    order: list[str] = []
    while len(order) < len(tasks):
        ready = sorted(name for name in tasks if name not in order and upstream[name] <= set(order))
        assert ready, f"cycle among {set(tasks) - set(order)}"
        order.extend(ready)

    assert upstream["StatisticsGen"] == {"SignatureExampleGen"}
    assert upstream["ExampleValidator"] == {"StatisticsGen", "ImportSchemaGen"}
    assert upstream["AnomaliesGate"] == {"ExampleValidator"}
    # No Transform: the Trainer reads this run's examples and the baseline, after the data gate.
    assert upstream["Trainer"] == {"SignatureExampleGen", "AnomaliesGate", "serving_baseline-model-resolver"}
    trainer_inputs = tasks["Trainer"]["inputs"]["artifacts"]
    assert {key: spec["taskOutputArtifact"]["producerTask"] for key, spec in trainer_inputs.items()} == {
        "examples": "SignatureExampleGen",
        "base_model": "serving_baseline-model-resolver",
    }
    assert {"Trainer", "serving_baseline-model-resolver"} <= upstream["Evaluator"]
    # The serving check and the Evaluator both wait for the Trainer only: they run side by side.
    assert "Trainer" in upstream["ServingCheck"] and "Evaluator" not in upstream["ServingCheck"]
    assert {"Trainer", "Evaluator", "ServingCheck"} <= upstream["Pusher"]
    assert order.index("Pusher") == len(order) - 1


def test_every_step_runs_the_configured_image(compiled):
    job = compiled[2]
    containers = {label: spec["container"] for label, spec in _executors(job).items() if "container" in spec}
    assert {label.removesuffix("_executor") for label in containers} == {
        name for name in _tasks(job) if not name.startswith("serving_baseline")
    }
    for container in containers.values():
        assert container["image"] == IMAGE
        assert container["command"] == TFX_ENTRYPOINT


def test_signflow_executors_are_named_by_importable_paths(compiled):
    # The image must hold this repository: TFX's entrypoint imports these by name.
    executors = _executors(compiled[2])
    paths = {}
    for name in ("SignatureExampleGen", "AnomaliesGate", "ServingCheck", "Pusher"):
        args = executors[f"{name}_executor"]["container"]["args"]
        paths[name] = args[args.index("--executor_class_path") + 1]
    assert paths["SignatureExampleGen"] == "components.ingest.executor.Executor"
    assert paths["Pusher"].startswith("components.pusher.")
    assert paths["ServingCheck"].startswith("components.serving_check.")
    for path in paths.values():
        module, _, name = path.rpartition(".")
        assert hasattr(importlib.import_module(module), name), path


def test_the_evaluator_calls_each_model_once_per_batch_through_signflows_extractors(compiled):
    # TFX's executor looks the hook up with udf_utils.try_get_fn, which turns an import that fails with an
    # AttributeError or ValueError into None (TFMA's default extractors: two passes per model); get_fn raises.
    from tfx.components.util import udf_utils

    from pipeline.definition.evaluation import EVALUATOR_MODULE

    module_path = _tasks(compiled[2])["Evaluator"]["inputs"]["parameters"]["module_path"]
    assert module_path["runtimeValue"]["constantValue"]["stringValue"] == EVALUATOR_MODULE
    assert callable(udf_utils.get_fn({"module_path": EVALUATOR_MODULE}, "custom_extractors"))


def test_example_gen_runs_the_platforms_driver_not_the_custom_one(compiled):
    # Why `signflow collect-kubeflow` must run before each run (pipeline/runners/kubeflow_v2_runner.py).
    container = _executors(compiled[2])["SignatureExampleGen_executor"]["container"]
    hook = container["lifecycle"]["preCacheCheck"]
    assert hook["command"] == PLATFORM_DRIVER
    assert hook["args"][-len(DATAFLOW_ARGS):] == DATAFLOW_ARGS


def test_pipeline_root_and_names(compiled):
    config, _, job = compiled
    assert job["runtimeConfig"]["gcsOutputDirectory"] == PIPELINE_ROOT
    assert job["displayName"] == config.pipeline_name
    assert job["pipelineSpec"]["pipelineInfo"]["name"] == config.pipeline_name


def test_beam_args_reach_the_beam_components(compiled):
    executors = _executors(compiled[2])
    for name in BEAM_TASKS:
        args = executors[f"{name}_executor"]["container"]["args"]
        assert args[-len(DATAFLOW_ARGS):] == DATAFLOW_ARGS, name


def test_paths_are_the_containers_paths(compiled):
    tasks = _tasks(compiled[2])

    def parameter(task: str, name: str):
        return tasks[task]["inputs"]["parameters"][name]["runtimeValue"]["constantValue"]["stringValue"]

    assert parameter("SignatureExampleGen", "inbox_dir") == f"{DATA_ROOT}/inbox"
    assert parameter("SignatureExampleGen", "state_dir") == f"{DATA_ROOT}/ingest_state"
    assert parameter("SignatureExampleGen", "input_base") == f"{DATA_ROOT}/ingest_state/landing"
    assert parameter("ImportSchemaGen", "schema_file") == "/app/components/schema/schema.pbtxt"
    assert parameter("Pusher", "serving_dir") == f"{DATA_ROOT}/serving_model"


def test_yaml_output_is_a_bare_pipeline_spec(compiled, tmp_path):
    import yaml

    from pipeline.runners.kubeflow_v2_runner import compile_pipeline

    config = load_kubeflow_config(None, _overrides(output_path=str(tmp_path / "signflow.yaml")))
    compile_pipeline(config)
    spec = yaml.safe_load((tmp_path / "signflow.yaml").read_text())
    assert spec["pipelineInfo"]["name"] == "signflow"
    assert set(spec["root"]["dag"]["tasks"]) == set(_tasks(compiled[2]))


# --- Airflow ---

AIRFLOW_DAG = REPO / "pipeline" / "runners" / "airflow_dag.py"


def test_airflow_dag_file_builds_the_same_pipeline():
    """Parses everywhere; builds its pipeline with the local runner's create_pipeline mapping, runs it with TFX's
    Airflow runner."""
    source = AIRFLOW_DAG.read_text()
    tree = ast.parse(source)
    compile(source, str(AIRFLOW_DAG), "exec")
    imports = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for alias in node.names}
    assert ("pipeline.runners.local_runner", "build") in imports
    assert ("tfx.orchestration.airflow.airflow_dag_runner", "AirflowDagRunner") in imports
    called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert {"pipeline_for", "AirflowDagRunner"} <= called
    # Relative settings are resolved against the project, not against Airflow's working directory.
    assert "config.paths(root=settings.project_dir.resolve())" in source


def test_airflow_dag_has_one_task_per_node(tmp_path, monkeypatch):
    pytest.importorskip("airflow", reason="Airflow is not installed (optional): `pip install apache-airflow` in the "
                                          "venv to build the DAG")
    monkeypatch.setenv("SIGNFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("SIGNFLOW_SCHEDULE", "0 3 * * *")
    # Settings are read when the file is imported: import it afresh, in this test's environment.
    monkeypatch.delitem(sys.modules, "pipeline.runners.airflow_dag", raising=False)
    module = importlib.import_module("pipeline.runners.airflow_dag")

    dag = module.DAG
    assert set(dag.task_ids) == {
        "SignatureExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomaliesGate",
        "training_spans", "serving_baseline", "Trainer", "Evaluator", "ServingCheck", "Pusher",
    }
    assert {"Evaluator", "ServingCheck", "Trainer"} <= dag.get_task("Pusher").upstream_task_ids
    assert "AnomaliesGate" in dag.get_task("Trainer").upstream_task_ids
    assert module.SETTINGS.project_dir == tmp_path
    assert dag.max_active_runs == 1


# --- The local runner ---


def test_a_local_run_imports_tfx_without_tfx_v1_and_its_google_cloud_extensions():
    """What a `signflow run` process imports to build and run the pipeline (the pipeline definition, the
    Trainer's run_fn, TFX's LocalDagRunner) leaves out tfx.v1, whose package imports TFX's Google Cloud AI
    Platform extensions and google.cloud.aiplatform: 7 of the 18 s such a process spent importing TFX on
    2 cores."""
    code = ("import sys\n"
            "import components.trainer.run, pipeline.definition.pipeline\n"
            "from tfx.orchestration.local.local_dag_runner import LocalDagRunner\n"
            "print(sorted(m for m in sys.modules if m.startswith('tfx.v1') or 'aiplatform' in m))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
