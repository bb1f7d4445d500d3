"""SignatureExampleGen: the ExampleGen of signflow (spans for training: components.ingest.spans).

A FileBasedExampleGen whose driver first collects new inbox (and sample) files
into the next landing span, and whose executor validates, de-duplicates and
writes them as tf.Examples (schema: /tmp/contracts.md, "tf.Example written by
ingestion"). The Examples artifact carries TFX's `span` property plus the
`ingest_*` counts (see `components.ingest.executor`); the span's summary is
`<artifact uri>/ingest_summary.json`.
"""
from __future__ import annotations

import os
from typing import Sequence

from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import channel, standard_artifacts

from components.ingest import spec
from components.ingest.driver import IngestDriver
from components.ingest.executor import Executor
from components.ingest.landing import IngestPaths
from serving.contract import RECORD_LABEL_KEY
from serving.images import DEFAULT_MAX_PIXELS

DEFAULT_LABEL_KEYS = (RECORD_LABEL_KEY,)


class SignatureExampleGen(FileBasedExampleGen):
    """Ingests the inbox into a new span per run; see the module docstring.

    `paths` (an IngestPaths) tells where the inbox, state, quarantine and
    unlabelled folders are.
    """

    SPEC_CLASS = spec.SignatureExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
    DRIVER_CLASS = IngestDriver

    def __init__(
        self,
        paths: IngestPaths,
        label_keys: Sequence[str] = DEFAULT_LABEL_KEYS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        component_spec = spec.SignatureExampleGenSpec(
            input_base=paths.landing_dir,
            input_config=spec.INPUT_CONFIG,
            output_config=spec.OUTPUT_CONFIG,
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            examples=channel.Channel(type=standard_artifacts.Examples),
            **spec.ingest_properties(paths, label_keys, max_pixels),
        )
        # NOTE: FileBasedExampleGen.__init__ builds its own (narrower) spec, so it
        # is skipped; subclassing it still marks this as a file-based ExampleGen.
        base_beam_component.BaseBeamComponent.__init__(self, spec=component_spec)
        self.paths = paths


def create_example_gen(
    *,
    inbox_dir: str,
    state_dir: str,
    quarantine_dir: str,
    unlabelled_dir: str,
    sample_dir: str | None = None,
    label_keys: Sequence[str] = DEFAULT_LABEL_KEYS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> SignatureExampleGen:
    """The ExampleGen node; its output is `.outputs["examples"]`.

    Args:
      inbox_dir: the drop folder (JSONL, TF Serving .json bodies, the seed's
        example lists, and <label>/<image> files). Read, never modified.
      state_dir: ingestion's own state: landed spans and the examples ledgers.
        Keep it as long as the pipeline's MLMD: together they define what was ingested.
      quarantine_dir: where `span-<N>.jsonl` lists the refused records of span N.
      unlabelled_dir: where `span-<N>.jsonl` keeps valid images without a label.
      sample_dir: the committed sample (its *.jsonl and images/<label>/<file>);
        ingested once, with the first collection.
      label_keys: record keys that may hold the label, first present wins
        (e.g. ("label", "caption") for the seed's example lists).
      max_pixels: images with more pixels are refused before being decoded.
    """
    paths = IngestPaths(
        inbox_dir=os.path.abspath(inbox_dir),
        state_dir=os.path.abspath(state_dir),
        quarantine_dir=os.path.abspath(quarantine_dir),
        unlabelled_dir=os.path.abspath(unlabelled_dir),
        sample_dir=os.path.abspath(sample_dir) if sample_dir else None,
    )
    return SignatureExampleGen(paths, label_keys=label_keys, max_pixels=max_pixels)
