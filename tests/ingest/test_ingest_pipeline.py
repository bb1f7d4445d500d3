"""SignatureExampleGen in real TFX pipeline runs (LocalDagRunner, SQLite MLMD, Beam DirectRunner).

One pipeline, run four times as the continuous-training loop would, with caching
off as in signflow's pipeline: the committed sample and a first inbox, the same
inbox again, new files, then new files that are all duplicates or invalid.
Downstream: the committed schema through ImportSchemaGen, StatisticsGen and
ExampleValidator, and two consumers of `training_spans` (all spans, last span).
"""
from __future__ import annotations

import json
import os

import ml_metadata as mlmd
import pytest
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx

from components.ingest.component import create_example_gen
from components.ingest.spans import training_spans
from components.schema import SCHEMA_PATH
from tests.ingest.helpers import (
    RecordSpans,
    b64,
    by_sha,
    image_bytes,
    make_paths,
    read_examples,
    sha256,
    write_bytes,
    write_jsonl,
)

pytestmark = pytest.mark.slow


def _pipeline(root: str, paths) -> tfx.dsl.Pipeline:
    example_gen = create_example_gen(
        inbox_dir=paths.inbox_dir,
        state_dir=paths.state_dir,
        quarantine_dir=paths.quarantine_dir,
        unlabelled_dir=paths.unlabelled_dir,
        sample_dir=paths.sample_dir,
    )
    schema = tfx.components.ImportSchemaGen(schema_file=SCHEMA_PATH)
    statistics = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    validator = tfx.components.ExampleValidator(statistics=statistics.outputs["statistics"], schema=schema.outputs["schema"])
    every_span = training_spans(example_gen)
    last_span = training_spans(example_gen, rolling_window=1, node_id="last_span")
    return tfx.dsl.Pipeline(
        pipeline_name="ingest-test",
        pipeline_root=os.path.join(root, "pipeline_root"),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(root, "metadata.sqlite")
        ),
        components=[
            example_gen,
            schema,
            statistics,
            validator,
            every_span,
            last_span,
            RecordSpans(every_span.outputs["examples"], os.path.join(root, "every_span.log")).with_id("train_all"),
            RecordSpans(last_span.outputs["examples"], os.path.join(root, "last_span.log")).with_id("train_last"),
        ],
        enable_cache=False,
    )


class _Run:
    """What one pipeline run published, read back from MLMD and the artifacts."""

    def __init__(self, root: str, store: mlmd.MetadataStore, run: int):
        examples = _newest(store, "Examples")
        self.span = examples.custom_properties["span"].int_value
        self.counts = {k: v.int_value for k, v in examples.custom_properties.items() if k.startswith("ingest_")}
        with open(os.path.join(examples.uri, "ingest_summary.json")) as f:
            self.summary = json.load(f)
        self.examples = {sha: label for sha, (_, label, _) in by_sha(read_examples(examples.uri)).items()}
        self.anomalies = {}
        for split in ("train", "eval"):
            with open(os.path.join(_newest(store, "ExampleAnomalies").uri, f"Split-{split}", "SchemaDiff.pb"), "rb") as f:
                self.anomalies[split] = dict(anomalies_pb2.Anomalies.FromString(f.read()).anomaly_info)
        self.every_span = _log_line(root, "every_span.log", run)
        self.last_span = _log_line(root, "last_span.log", run)


def _newest(store: mlmd.MetadataStore, type_name: str):
    return max(store.get_artifacts_by_type(type_name), key=lambda a: a.id)


def _log_line(root: str, name: str, run: int):
    with open(os.path.join(root, name)) as f:
        lines = f.read().splitlines()
    assert len(lines) == run + 1  # the consumer ran in every run
    return json.loads(lines[-1])


def test_continuous_ingestion_in_a_real_pipeline(tmp_path):
    root = str(tmp_path)
    paths = make_paths(root, sample=True)
    store = mlmd.MetadataStore(tfx.orchestration.metadata.sqlite_metadata_connection_config(f"{root}/metadata.sqlite"))

    def run(number: int) -> _Run:
        tfx.orchestration.LocalDagRunner().run(_pipeline(root, paths))
        return _Run(root, store, number)

    sample = [image_bytes(i) for i in range(4)]
    write_jsonl(f"{paths.sample_dir}/signatures.jsonl", [{"image": {"b64": b64(img)}, "label": "signer_01"} for img in sample[:2]])
    for i, img in enumerate(sample[2:]):
        write_bytes(f"{paths.sample_dir}/images/signer_02/{i}.png", img)
    inbox = [image_bytes(10 + i) for i in range(3)]
    write_jsonl(f"{paths.inbox_dir}/first.jsonl", [{"b64": b64(img), "label": "signer_03"} for img in inbox] + ["{oops"])

    first = run(0)
    assert first.span == 0
    assert first.examples == {
        **{sha256(img): "signer_01" for img in sample[:2]},
        **{sha256(img): "signer_02" for img in sample[2:]},
        **{sha256(img): "signer_03" for img in inbox},
    }
    assert first.counts == {
        "ingest_records_read": 8,
        "ingest_examples": 7,
        "ingest_duplicates": 0,
        "ingest_unlabelled": 0,
        "ingest_quarantined": 1,
        "ingest_forgeries": 0,
    }
    assert first.anomalies == {"train": {}, "eval": {}}
    assert (first.every_span, first.last_span) == ([0], [0])

    # The same inbox again: span 0 is processed again (caching is off) and adds nothing.
    second = run(1)
    assert (second.span, second.examples, second.counts) == (0, first.examples, first.counts)
    assert (second.every_span, second.last_span) == ([0], [0])  # span 0 once, not twice

    # New files, a new signer among them: exactly one new span with exactly those records.
    new = [image_bytes(20 + i) for i in range(3)]
    write_jsonl(f"{paths.inbox_dir}/second.jsonl", [{"b64": b64(img), "label": "signer_04"} for img in new])
    third = run(2)
    assert third.span == 1
    assert third.examples == {sha256(img): "signer_04" for img in new}
    assert third.anomalies == {"train": {}, "eval": {}}
    assert (third.every_span, third.last_span) == ([0, 1], [1])

    # New files with nothing valid and new: an empty span 2, and the pipeline still runs through.
    write_jsonl(f"{paths.inbox_dir}/third.jsonl", [{"b64": b64(new[0]), "label": "signer_04"}, "{broken"])
    fourth = run(3)
    assert (fourth.span, fourth.examples) == (2, {})
    assert (fourth.summary["duplicates"], fourth.summary["quarantined"]) == (1, 1)
    assert fourth.anomalies == {"train": {}, "eval": {}}
    assert (fourth.every_span, fourth.last_span) == ([0, 1], [1])  # the empty span is not trained on
