"""The component spec of SignatureExampleGen: FileBasedExampleGen's parameters plus ingestion's own.

Shared by the component, its driver and its executor (which read the
parameters back from `exec_properties`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs
from tfx.types.component_spec import ComponentSpec, ExecutionParameter

from components.ingest.landing import SPAN_PATTERN, IngestPaths
from serving.contract import SHA256_FEATURE

INBOX_DIR_KEY = "inbox_dir"
SAMPLE_DIR_KEY = "sample_dir"
STATE_DIR_KEY = "state_dir"
QUARANTINE_DIR_KEY = "quarantine_dir"
UNLABELLED_DIR_KEY = "unlabelled_dir"
# Comma-separated: the keys that may hold a record's label, first present wins.
LABEL_KEYS_KEY = "label_keys"
MAX_PIXELS_KEY = "max_pixels"

# One input split: TFX's FileBasedDriver resolves {SPAN} to the latest landed span.
INPUT_CONFIG = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="single_split", pattern=SPAN_PATTERN)])
# ~80/20 by the hash of the image's sha256: the same image lands in the same
# split in every run and every span.
OUTPUT_CONFIG = example_gen_pb2.Output(
    split_config=example_gen_pb2.SplitConfig(
        splits=[
            example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=8),
            example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=2),
        ],
        partition_feature_name=SHA256_FEATURE,
    )
)


class SignatureExampleGenSpec(ComponentSpec):
    """FileBasedExampleGenSpec plus the folders and rules of signature ingestion."""

    PARAMETERS = {
        **standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
        INBOX_DIR_KEY: ExecutionParameter(type=str),
        SAMPLE_DIR_KEY: ExecutionParameter(type=str, optional=True),
        STATE_DIR_KEY: ExecutionParameter(type=str),
        QUARANTINE_DIR_KEY: ExecutionParameter(type=str),
        UNLABELLED_DIR_KEY: ExecutionParameter(type=str),
        LABEL_KEYS_KEY: ExecutionParameter(type=str),
        MAX_PIXELS_KEY: ExecutionParameter(type=int),
    }
    INPUTS = {}
    OUTPUTS = standard_component_specs.FileBasedExampleGenSpec.OUTPUTS


def ingest_properties(paths: IngestPaths, label_keys: Sequence[str], max_pixels: int) -> dict[str, Any]:
    """Ingestion's own parameters (what ingest_paths and label_keys read back), for the component and run_executor."""
    if not label_keys or any(not key or "," in key for key in label_keys):
        raise ValueError(f"label_keys must be non-empty keys without commas, got {label_keys!r}")
    return {
        INBOX_DIR_KEY: paths.inbox_dir,
        SAMPLE_DIR_KEY: paths.sample_dir,
        STATE_DIR_KEY: paths.state_dir,
        QUARANTINE_DIR_KEY: paths.quarantine_dir,
        UNLABELLED_DIR_KEY: paths.unlabelled_dir,
        LABEL_KEYS_KEY: ",".join(label_keys),
        MAX_PIXELS_KEY: max_pixels,
    }


def ingest_paths(exec_properties: Mapping[str, Any]) -> IngestPaths:
    return IngestPaths(
        inbox_dir=exec_properties[INBOX_DIR_KEY],
        state_dir=exec_properties[STATE_DIR_KEY],
        quarantine_dir=exec_properties[QUARANTINE_DIR_KEY],
        unlabelled_dir=exec_properties[UNLABELLED_DIR_KEY],
        sample_dir=exec_properties.get(SAMPLE_DIR_KEY) or None,
    )


def label_keys(exec_properties: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(key for key in exec_properties[LABEL_KEYS_KEY].split(",") if key)
