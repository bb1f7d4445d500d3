"""The ExampleGen driver: collect new inbox files into the next span, then let TFX resolve it.

Running the collection inside the driver keeps the pipeline self-contained: any
orchestrator that runs TFX drivers (LocalDagRunner, and the launcher-based
Kubeflow/Airflow runners) ingests the inbox as part of the ExampleGen step, and
TFX's FileBasedDriver then resolves the latest `span-{SPAN}` folder, records
`span` on the Examples artifact and fingerprints the span's files for caching.
(Vertex AI Pipelines replaces drivers of FileBasedExampleGen with its own; there
`landing.collect_new_files` must run before the pipeline.)
"""
from __future__ import annotations

import logging
from typing import Any

from tfx.components.example_gen import driver
from tfx.orchestration import data_types

from components.ingest import landing
from components.ingest.spec import ingest_paths

log = logging.getLogger(__name__)


class IngestDriver(driver.FileBasedDriver):
    """FileBasedDriver that first collects new inbox and sample files into a span."""

    def resolve_exec_properties(
        self,
        exec_properties: dict[str, Any],
        pipeline_info: data_types.PipelineInfo,
        component_info: data_types.ComponentInfo,
    ) -> dict[str, Any]:
        # Both the IR launcher (run) and the legacy launcher come through here.
        collection = landing.collect_new_files(ingest_paths(exec_properties))
        if collection.pending:
            log.info("span %d was collected but not processed yet; processing it first", collection.latest_span)
        elif collection.new_span is None:
            log.info(
                "no new inbox files (%d already ingested); span %d is processed again or taken from the cache",
                collection.already_ingested,
                collection.latest_span,
            )
        else:
            log.info(
                "collected %d new files into span %d (%d already ingested, %d identical copies)",
                collection.files,
                collection.new_span,
                collection.already_ingested,
                collection.identical,
            )
        return super().resolve_exec_properties(exec_properties, pipeline_info, component_info)
