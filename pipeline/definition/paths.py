"""Every location a pipeline run reads or writes, resolved once by its runner.

A runner builds one PipelinePaths from its typed config (PipelineConfig.paths,
KubeflowV2Config.paths) and everything downstream takes it as it is:
create_pipeline, the scheduler, `signflow status`. Each location is absolute,
as the pipeline's steps see it: a local path, or a POSIX path inside the
Kubeflow / Vertex AI containers (with a gs:// pipeline root).

May import components.ingest.landing only (no TFX: the scheduler and `signflow
status` use it too).
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass

from components.ingest.landing import IngestPaths

METADATA_FILE = "metadata.sqlite"
EMBEDDINGS_DIR = "Embeddings"


@dataclass(frozen=True)
class PipelinePaths:
    # TFX's pipeline root: this pipeline's artifacts (locally <pipeline_root>/<pipeline_name>,
    # which also holds MLMD, ingestion's state and the scheduler's files).
    pipeline_root: str
    # The SQLite ML Metadata store; None where the orchestrator keeps its own (Kubeflow, Vertex AI).
    metadata_path: str | None
    # The committed schema the ExampleValidator checks every span against.
    schema_path: str
    # The folder TF Serving watches: the Pusher writes <serving_dir>/<model_name>/<version>/.
    serving_dir: str
    # Inbox, sample, landed spans and ledgers, quarantine and unlabelled records.
    ingest: IngestPaths

    @property
    def embeddings_dir(self) -> str:
        """The Trainer's embeddings, per backbone (components/trainer/embedding_cache.py)."""
        return posixpath.join(self.pipeline_root, EMBEDDINGS_DIR)

    def model_base_path(self, model_name: str) -> str:
        """TF Serving's model base path: the folder holding the numbered versions."""
        return posixpath.join(self.serving_dir, model_name)
