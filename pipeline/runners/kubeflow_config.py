"""Settings of the Kubeflow Pipelines V2 / Vertex AI runner: typed, parsed once.

Read like pipeline/definition/configs.py: defaults <- a JSON file with the same nesting <-
`field=value` / `section.field=value` overrides (values in JSON syntax); unknown
keys, wrong types and missing required settings fail before anything is
compiled. Unlike PipelineConfig, every location is a string as the pipeline's
containers see it: pathlib would turn `gs://bucket` into `gs:/bucket`.

    {
      "image": "europe-west4-docker.pkg.dev/my-project/signflow/training:1",
      "pipeline_root": "gs://my-bucket/signflow/pipeline_root",
      "data_root": "/gcs/my-bucket/signflow",
      "dataflow": {"project": "my-project", "region": "europe-west4",
                   "temp_location": "gs://my-bucket/signflow/beam-tmp"}
    }

Layer: runners. May import definition's configs and paths, components.ingest.landing; no TFX.
"""
from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from components.ingest.landing import IngestPaths
from pipeline.definition.configs import PipelineSettings, from_dict, read_settings
from pipeline.definition.paths import PipelinePaths


@dataclass(frozen=True)
class DataflowConfig:
    """Run the Beam-based steps (ExampleGen, StatisticsGen, Evaluator) on Google Cloud Dataflow."""

    project: str
    region: str
    # gs:// folder for Dataflow's temporary and staged files.
    temp_location: str
    # The workers' image. Dataflow workers unpickle signflow's own transforms (the
    # ingestion executor's), so they need this repository, the locked packages and
    # Beam's SDK harness (/opt/apache/beam/boot). None: the pipeline's image, which
    # then must carry the harness too (README, "Running at scale").
    sdk_container_image: str | None = None
    max_num_workers: int | None = None
    machine_type: str | None = None
    service_account_email: str | None = None

    def beam_args(self, pipeline_image: str) -> tuple[str, ...]:
        args = [
            "--runner=DataflowRunner",
            f"--project={self.project}",
            f"--region={self.region}",
            f"--temp_location={self.temp_location}",
            f"--sdk_container_image={self.sdk_container_image or pipeline_image}",
        ]
        if self.max_num_workers is not None:
            args.append(f"--max_num_workers={self.max_num_workers}")
        if self.machine_type is not None:
            args.append(f"--machine_type={self.machine_type}")
        if self.service_account_email is not None:
            args.append(f"--service_account_email={self.service_account_email}")
        return tuple(args)


@dataclass(frozen=True, kw_only=True)
class KubeflowV2Config(PipelineSettings):
    # The image every step runs in, TFX's components and signflow's own: it must hold
    # this repository at `source_dir` (the custom executors, the Trainer's run_fn and
    # the resolver classes are imported by dotted name), the packages of
    # requirements.lock, and kfp-pipeline-spec (TFX's container entrypoint imports it).
    image: str
    # Where TFX writes artifacts. Vertex AI needs gs://bucket/path.
    pipeline_root: str
    # An absolute POSIX folder that every step's container sees at this same path:
    # ingestion, the serving check and the Pusher handle their files with os and
    # pathlib. Vertex AI mounts buckets at /gcs/<bucket>/ (Cloud Storage FUSE); on
    # Kubeflow Pipelines use a shared volume.
    data_root: str
    # The name shown by Kubeflow / Vertex AI; None: pipeline_name.
    display_name: str | None = None
    # The compiled file (local path or gs://): *.json is a Vertex AI PipelineJob,
    # *.yaml a bare PipelineSpec for Kubeflow Pipelines' upload.
    output_path: str = "signflow_kubeflow_v2.json"
    # The repository inside the image (the Dockerfile's WORKDIR).
    source_dir: str = "/app"
    # Relative to source_dir unless absolute.
    schema_path: str = "components/schema/schema.pbtxt"
    # Relative to data_root unless absolute.
    inbox_dir: str = "inbox"
    # A sample collected once with the first span; None: the inbox only.
    sample_dir: str | None = None
    # Landed spans and ledgers: keep as long as the platform's MLMD.
    ingest_state_dir: str = "ingest_state"
    quarantine_dir: str = "quarantine"
    unlabelled_dir: str = "unlabelled"
    serving_dir: str = "serving_model"
    # Beam arguments added after the Dataflow ones. Empty: Beam's DirectRunner inside
    # each step's container, in_memory, which pipeline/definition/configs.py measured
    # fastest on the sample; add "--direct_running_mode=multi_processing",
    # "--direct_num_workers=0" (one worker per core) for larger spans, or another
    # runner's arguments (README).
    beam_pipeline_args: tuple[str, ...] = ()
    dataflow: DataflowConfig | None = None
    # Let the platform skip steps whose inputs and settings did not change.
    enable_cache: bool = False
    # The platform compiles only TFX's own resolver strategies: each run trains on its own span.
    platform_resolvers: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for name in ("image", "pipeline_root", "pipeline_name"):
            if not getattr(self, name):
                raise ValueError(f"kubeflow config: {name} must not be empty")
        if not _is_posix_absolute(self.data_root):
            raise ValueError(
                f"kubeflow config: data_root must be an absolute POSIX path inside the containers "
                f"(e.g. /gcs/<bucket>/signflow), got {self.data_root!r}"
            )
        for name in ("inbox_dir", "sample_dir", "ingest_state_dir", "quarantine_dir", "unlabelled_dir", "serving_dir"):
            value = getattr(self, name)
            if value is not None and "://" in value:
                raise ValueError(
                    f"kubeflow config: {name} must be a path under data_root or an absolute POSIX path, got {value!r}"
                )

    def paths(self) -> PipelinePaths:
        """Every location as the containers see it (no MLMD file: the platform keeps its own)."""
        return PipelinePaths(
            pipeline_root=self.pipeline_root,
            metadata_path=None,
            schema_path=posixpath.join(self.source_dir, self.schema_path),
            serving_dir=self._data(self.serving_dir),
            ingest=IngestPaths(
                inbox_dir=self._data(self.inbox_dir),
                state_dir=self._data(self.ingest_state_dir),
                quarantine_dir=self._data(self.quarantine_dir),
                unlabelled_dir=self._data(self.unlabelled_dir),
                sample_dir=self._data(self.sample_dir) if self.sample_dir else None,
            ),
        )

    @property
    def all_beam_args(self) -> tuple[str, ...]:
        runner = self.dataflow.beam_args(self.image) if self.dataflow else ()
        return runner + self.beam_pipeline_args

    def _data(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.data_root, path))


def load_kubeflow_config(path: Path | None = None, overrides: Sequence[str] = ()) -> KubeflowV2Config:
    """JSON file at `path` <- `field=value` overrides (values in JSON syntax, else a bare string)."""
    data = read_settings(path, overrides)
    required = [f.name for f in dataclasses.fields(KubeflowV2Config) if _required(f) and f.name not in data]
    if required:
        raise ValueError(f"kubeflow config: missing required setting(s) {', '.join(required)}")
    try:
        return from_dict(KubeflowV2Config, data, where="kubeflow config")
    except TypeError as err:  # a nested section without one of its required fields
        raise ValueError(f"kubeflow config: {err}") from err


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _is_posix_absolute(path: str) -> bool:
    return path.startswith("/") and "://" not in path
