"""Airflow DAG: the same pipeline on a schedule, with TFX's AirflowDagRunner.

Airflow is not in requirements.lock (README, "Running at scale"): install it
beside signflow, make this repository importable (PYTHONPATH or `pip install`),
and put this file in Airflow's dags folder. A symlink finds the repository by
itself; a copy needs SIGNFLOW_HOME. Settings, read once when Airflow parses the
file:

    SIGNFLOW_HOME      the folder the config's relative paths are resolved against
                       (data/inbox, pipeline_root, serving_model, the schema);
                       default: the repository this file belongs to
    SIGNFLOW_CONFIG    a JSON settings file, as for `signflow run --config`;
                       default: the defaults of pipeline/definition/configs.py
    SIGNFLOW_SCHEDULE  a cron expression or an Airflow preset; default: @daily

Every TFX component becomes one Airflow task, run in the task's process by
TFX's component launcher with its driver, so SignatureExampleGen's driver
collects new inbox files into a new span exactly as in a local run.

One run at a time and one task at a time: ingestion's spans and the SQLite
MLMD store expect a single writer (a local run, which runs the Evaluator and the
serving check side by side, lets one MLMD connection be open at a time; Airflow's
tasks are separate processes, which no lock here spans). The local run lock
(pipeline/training_server/run_lock.py) is not taken across Airflow's tasks, so do not run
`signflow run` or `signflow schedule` on the same pipeline root as this DAG.
Written for Airflow 2.4 to 2.x: TFX 1.16's Airflow runner imports
`airflow.operators.python_operator`, which Airflow 3 removed.

Layer: runners, and a process entry point: Airflow imports this file itself, so
it chooses Keras 2 before anything imports TensorFlow. May import definition/
and the local runner's build.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Keras 2 (tf-keras): TFX 1.16 needs it, and TFT and TFMA pick their Keras when first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tfx.orchestration.airflow.airflow_dag_runner import AirflowDagRunner, AirflowPipelineConfig  # noqa: E402

from pipeline.definition.configs import load_config  # noqa: E402
from pipeline.runners.local_runner import build as pipeline_for  # noqa: E402

# With catchup off, only the next scheduled run matters; a fixed past date keeps the DAG stable across parses.
START_DATE = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


@dataclass(frozen=True)
class AirflowSettings:
    project_dir: Path
    config_file: Path | None = None
    schedule: str = "@daily"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> AirflowSettings:
        home = environ.get("SIGNFLOW_HOME")
        config = environ.get("SIGNFLOW_CONFIG")
        return cls(
            project_dir=Path(home) if home else Path(__file__).resolve().parents[2],
            config_file=Path(config) if config else None,
            schedule=environ.get("SIGNFLOW_SCHEDULE") or cls.schedule,
        )


def build(settings: AirflowSettings):
    """The local runner's pipeline, with relative paths resolved against the project: Airflow's working directory
    is not the project's."""
    config = load_config(settings.config_file)
    return pipeline_for(config, config.paths(root=settings.project_dir.resolve()))


def dag_config(settings: AirflowSettings) -> AirflowPipelineConfig:
    return AirflowPipelineConfig(
        airflow_dag_config={
            "schedule": settings.schedule,
            "start_date": START_DATE,
            # A missed interval is not worth a run of its own: the next run ingests whatever arrived.
            "catchup": False,
            "max_active_runs": 1,
            "max_active_tasks": 1,
        }
    )


SETTINGS = AirflowSettings.from_environment(os.environ)
DAG = AirflowDagRunner(dag_config(SETTINGS)).run(build(SETTINGS))
