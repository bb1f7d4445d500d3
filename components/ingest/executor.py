"""The ExampleGen executor: one landed span -> validated, de-duplicated tf.Examples.

TFX's BaseExampleGenExecutor owns the frame: it calls our PTransform on the
resolved span pattern, splits its tf.Examples into train/eval by the hash of the
`sha256` feature (output_config.partition_feature_name) and writes GZIP
TFRecords. The PTransform also writes, as side branches of the same Beam
pipeline, everything that did not become an example. After the pipeline, `Do`
moves those files into place, writes `<examples uri>/ingest_summary.json`, and
writes the span's examples ledger last (the "span processed" marker, see
`components.ingest.landing`).
"""
from __future__ import annotations

import collections
import functools
import itertools
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import apache_beam as beam
import tensorflow as tf
from tfx import types
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen import utils as example_gen_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from components.ingest import landing, spec
from components.ingest.records import Accepted, LandedFile, Rejected, read_landed_file, to_example, unlabelled_entry
from serving.contract import RECORD_LABEL_KEY, write_atomic
from serving.images import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)

SUMMARY_FILE = "ingest_summary.json"
DUPLICATES_FILE = "duplicates.jsonl"
_STAGING = ".ingest-staging"

# Integer custom properties set on the output Examples artifact (besides TFX's
# own "span"), e.g. for a tfx.dsl.Cond that skips training when nothing is new.
RECORDS_READ_PROPERTY = "ingest_records_read"
EXAMPLES_PROPERTY = "ingest_examples"
DUPLICATES_PROPERTY = "ingest_duplicates"
UNLABELLED_PROPERTY = "ingest_unlabelled"
QUARANTINED_PROPERTY = "ingest_quarantined"
FORGERIES_PROPERTY = "ingest_forgeries"  # of the examples, those marked as forgeries

_SIDE = "side"


@dataclass(frozen=True)
class _SpanPlan:
    """Everything the Beam pipeline needs about the span being processed."""

    span: int
    files: list[LandedFile]
    # sha256 -> (span, label, genuine) of the examples of earlier spans. Held in
    # memory: ~100 bytes an image, so a million images cost ~100 MB.
    prior: dict[str, tuple[int, str, bool]]
    staging: str
    ingested_at: int
    label_keys: tuple[str, ...]
    max_pixels: int

    @property
    def side_file(self) -> str:
        return os.path.join(self.staging, "side.jsonl")


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
    """Reads one span of landed inbox/sample files; see the module docstring."""

    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        span = int(exec_properties[example_gen_utils.SPAN_PROPERTY_NAME])
        paths = spec.ingest_paths(exec_properties)
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        staging = os.path.join(examples.uri, _STAGING)
        shutil.rmtree(staging, ignore_errors=True)
        self._plan = _SpanPlan(
            span=span,
            files=landing.landed_files(paths, span),
            prior=_read_prior(paths, span),
            staging=staging,
            ingested_at=int(landing.read_manifest(paths, span)["collected_at"]),
            label_keys=spec.label_keys(exec_properties),
            max_pixels=int(exec_properties[spec.MAX_PIXELS_KEY]),
        )
        super().Do(input_dict, output_dict, exec_properties)

        output_config = example_gen_pb2.Output()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config)
        split_names = [split.name for split in output_config.split_config.splits]
        summary = _publish(self._plan, paths, examples.uri, split_names, split_assigner(output_config))
        for prop, key in (
            (RECORDS_READ_PROPERTY, "records_read"),
            (EXAMPLES_PROPERTY, "examples"),
            (DUPLICATES_PROPERTY, "duplicates"),
            (UNLABELLED_PROPERTY, "unlabelled"),
            (QUARANTINED_PROPERTY, "quarantined"),
            (FORGERIES_PROPERTY, "forgeries"),
        ):
            examples.set_int_custom_property(prop, summary[key])
        log.info(
            "ingest span %d: %d records read = %d examples (%d forgeries) + %d duplicates + %d unlabelled"
            " + %d quarantined",
            span,
            summary["records_read"],
            summary["examples"],
            summary["forgeries"],
            summary["duplicates"],
            summary["unlabelled"],
            summary["quarantined"],
        )

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        # The plan is built in Do, which is the only caller of this (through
        # GenerateExamplesByBeam).
        return functools.partial(_IngestSpan, plan=self._plan)


def run_executor(
    paths: landing.IngestPaths,
    span: int,
    examples_uri: str,
    *,
    label_keys: Sequence[str] = (RECORD_LABEL_KEY,),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    beam_pipeline_args: Sequence[str] = (),
) -> dict:
    """Run the executor on landed span `span` without an orchestrator; return its summary.

    Gives the executor what the driver would: the span and the span's input
    pattern. For tests and benchmarks; the pipeline runs the component.
    """
    input_config = example_gen_pb2.Input()
    input_config.CopyFrom(spec.INPUT_CONFIG)
    for split in input_config.splits:
        split.pattern = split.pattern.replace("{SPAN}", str(span))
    exec_properties = {
        standard_component_specs.INPUT_BASE_KEY: paths.landing_dir,
        standard_component_specs.INPUT_CONFIG_KEY: proto_utils.proto_to_json(input_config),
        standard_component_specs.OUTPUT_CONFIG_KEY: proto_utils.proto_to_json(spec.OUTPUT_CONFIG),
        standard_component_specs.OUTPUT_DATA_FORMAT_KEY: example_gen_pb2.FORMAT_TF_EXAMPLE,
        standard_component_specs.OUTPUT_FILE_FORMAT_KEY: example_gen_pb2.FORMAT_TFRECORDS_GZIP,
        example_gen_utils.SPAN_PROPERTY_NAME: span,
        spec.INBOX_DIR_KEY: paths.inbox_dir,
        spec.SAMPLE_DIR_KEY: paths.sample_dir,
        spec.STATE_DIR_KEY: paths.state_dir,
        spec.QUARANTINE_DIR_KEY: paths.quarantine_dir,
        spec.UNLABELLED_DIR_KEY: paths.unlabelled_dir,
        spec.LABEL_KEYS_KEY: ",".join(label_keys),
        spec.MAX_PIXELS_KEY: max_pixels,
    }
    examples = standard_artifacts.Examples()
    examples.uri = examples_uri
    executor = Executor(Executor.Context(beam_pipeline_args=list(beam_pipeline_args)))
    executor.Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties)
    with open(os.path.join(examples_uri, SUMMARY_FILE), encoding="utf-8") as f:
        return json.load(f)


def split_assigner(output_config: example_gen_pb2.Output) -> Callable[[str], str]:
    """Map an image's sha256 (hex) to the split TFX's partitioning puts it in.

    Uses TFX's own partition function on a one-feature example, so this cannot
    drift from what BaseExampleGenExecutor writes.
    """
    split_config = output_config.split_config
    names = [split.name for split in split_config.splits]
    buckets = list(itertools.accumulate(split.hash_buckets for split in split_config.splits))

    def assign(sha256: str) -> str:
        feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[sha256.encode("ascii")]))
        example = tf.train.Example(features=tf.train.Features(feature={split_config.partition_feature_name: feature}))
        # NOTE: _PartitionFn is private to TFX; it is the function that decides the split.
        return names[base_example_gen_executor._PartitionFn(example, len(buckets), buckets, split_config)]  # noqa: SLF001

    return assign


@beam.ptransform_fn
def _IngestSpan(pipeline: beam.Pipeline, exec_properties: dict, split_pattern: str, plan: _SpanPlan):  # noqa: N802
    """Landed files of one span -> tf.Examples; everything else goes to one staged side file.

    The side file holds one JSON object per line, by "kind": "read" (records read
    in one file), "example" (the ledger entry of an example), "quarantine",
    "unlabelled" and "duplicate". One sink rather than five keeps the Beam graph
    small, which is most of the cost of a small span.
    """
    del exec_properties, split_pattern  # the plan holds the files of the resolved span
    outcomes = (
        pipeline
        | "LandedFiles" >> beam.Create(plan.files)
        # Lets a distributed runner read different files on different workers.
        | "SpreadFiles" >> beam.Reshuffle()
        | "ReadAndValidate" >> beam.FlatMap(_read_counted, label_keys=plan.label_keys, max_pixels=plan.max_pixels)
    )
    accepted, side = outcomes | "AcceptedOrNot" >> beam.Partition(
        lambda outcome, _: 0 if isinstance(outcome, Accepted) else 1, 2
    )
    decided = (
        accepted
        | "KeyBySha" >> beam.Map(lambda a: (a.info.sha256, a))
        | "GroupBySha" >> beam.GroupByKey()
        | "Deduplicate" >> beam.FlatMap(_deduplicate, prior=plan.prior, span=plan.span).with_outputs(_SIDE, main="examples")
    )
    _ = (
        (side | "SideJson" >> beam.Map(_side_line, span=plan.span), decided[_SIDE])
        | "AllSide" >> beam.Flatten()
        | "WriteSide" >> beam.io.WriteToText(plan.side_file, num_shards=1, shard_name_template="")
    )
    return decided.examples | "ToExample" >> beam.Map(to_example, ingested_at=plan.ingested_at)


@dataclass(frozen=True)
class _FileRead:
    name: str
    records: int


def _read_counted(landed: LandedFile, **kwargs):
    """The outcomes of one file, then how many there were (counted apart from how they end)."""
    count = 0
    for outcome in read_landed_file(landed, **kwargs):
        count += 1
        yield outcome
    yield _FileRead(landed.name, count)


def _side_line(item: Rejected | _FileRead, span: int) -> str:
    if isinstance(item, _FileRead):
        return json.dumps({"kind": "read", "file": item.name, "records": item.records})
    return json.dumps({"kind": "quarantine", **item.to_json(span)}, ensure_ascii=False)


def _deduplicate(item: tuple[str, Iterable[Accepted]], prior: dict[str, tuple[int, str, bool]], span: int):
    """One image (sha256): keep the first labelled record of this span unless an earlier span has it."""
    sha256, records = item
    new = sorted(records, key=lambda a: (a.label is None, a.order))
    if sha256 in prior:
        first_span, first_label, first_genuine = prior[sha256]
        for a in new:
            yield beam.pvalue.TaggedOutput(_SIDE, _duplicate(a, f"span-{first_span}", first_label, first_genuine))
        return
    kept = new[0]
    if kept.label is None:
        yield beam.pvalue.TaggedOutput(_SIDE, json.dumps({"kind": "unlabelled", **unlabelled_entry(kept, span)}))
    else:
        yield beam.pvalue.TaggedOutput(_SIDE, json.dumps(
            {"kind": "example", "sha256": sha256, "label": kept.label, "genuine": kept.genuine}))
        yield kept
    for a in new[1:]:
        yield beam.pvalue.TaggedOutput(_SIDE, _duplicate(a, kept.source, kept.label, kept.genuine))


def _duplicate(a: Accepted, duplicate_of: str, kept_label: str | None, kept_genuine: bool) -> str:
    # The same image as a genuine signature of a signer and as a forgery claimed as
    # that signer is as contradictory as two signers: both are label conflicts.
    conflict = a.label is not None and kept_label is not None and (a.label, a.genuine) != (kept_label, kept_genuine)
    entry = {
        "kind": "duplicate",
        "source": a.source,
        "sha256": a.info.sha256,
        "label": a.label,
        "genuine": a.genuine,
        "duplicate_of": duplicate_of,
        "kept_label": kept_label,
        "kept_genuine": kept_genuine,
        "label_conflict": conflict,
    }
    return json.dumps(entry, ensure_ascii=False)


def _ledger_line(sha256: str, label: str, genuine: bool) -> str:
    return f"{sha256}\t{label}\t{1 if genuine else 0}"


def _parse_ledger_line(line: str) -> tuple[str, str, bool]:
    """(sha256, label, genuine) of a ledger line; lines written before forgeries were recorded have no third
    column and are genuine."""
    sha256, _, rest = line.partition("\t")
    label, sep, flag = rest.rpartition("\t")
    if not sep or flag not in ("0", "1"):
        return sha256, rest, True
    return sha256, label, flag == "1"


def _read_prior(paths: landing.IngestPaths, span: int) -> dict[str, tuple[int, str, bool]]:
    """sha256 -> (first span, label, genuine) of every example of the processed spans before `span`."""
    prior: dict[str, tuple[int, str, bool]] = {}
    for earlier in landing.committed_spans(paths):
        if earlier >= span or not landing.is_processed(paths, earlier):
            continue
        for line in _lines(paths.seen_file(earlier)):
            sha256, label, genuine = _parse_ledger_line(line)
            prior.setdefault(sha256, (earlier, label, genuine))
    return prior


def _publish(
    plan: _SpanPlan, paths: landing.IngestPaths, uri: str, split_names: list[str], assign: Callable[[str], str]
) -> dict:
    """Sort the staged side file into its places, write the summary, then the ledger (last)."""
    kinds: dict[str, list[dict]] = collections.defaultdict(list)
    for line in _lines(plan.side_file):
        entry = json.loads(line)
        kinds[entry.pop("kind")].append(entry)
    records_read = sum(entry["records"] for entry in kinds["read"])
    ledger = sorted(_ledger_line(e["sha256"], e["label"], e["genuine"]) for e in kinds["example"])
    quarantine, unlabelled, duplicates = (
        sorted(kinds[kind], key=_by_source) for kind in ("quarantine", "unlabelled", "duplicate")
    )

    for folder in (paths.quarantine_dir, paths.unlabelled_dir, uri, paths.seen_dir):
        os.makedirs(folder, exist_ok=True)  # write_atomic needs the folder to exist
    write_atomic(paths.quarantine_file(plan.span), _jsonl(quarantine))
    write_atomic(paths.unlabelled_file(plan.span), _jsonl(unlabelled))
    write_atomic(os.path.join(uri, DUPLICATES_FILE), _jsonl(duplicates))

    labels = collections.Counter(e["label"] for e in kinds["example"])
    forged = collections.Counter(e["label"] for e in kinds["example"] if not e["genuine"])
    splits = collections.Counter(assign(e["sha256"]) for e in kinds["example"])
    reasons = collections.Counter(e["reason"] for e in quarantine)
    summary = {
        "span": plan.span,
        "records_read": records_read,
        "examples": len(ledger),
        "forgeries": sum(forged.values()),
        "duplicates": len(duplicates),
        "unlabelled": len(unlabelled),
        "quarantined": len(quarantine),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "label_conflicts": sum(e["label_conflict"] for e in duplicates),
        "splits": {name: splits[name] for name in split_names},
        "labels": dict(sorted(labels.items())),
        "forged_labels": dict(sorted(forged.items())),
        "files": len(plan.files),
        "ingested_at": plan.ingested_at,
        "landing_dir": paths.span_dir(plan.span),
        "quarantine_file": paths.quarantine_file(plan.span),
        "unlabelled_file": paths.unlabelled_file(plan.span),
        "duplicates_file": os.path.join(uri, DUPLICATES_FILE),
    }
    accounted = summary["examples"] + summary["duplicates"] + summary["unlabelled"] + summary["quarantined"]
    if accounted != records_read:
        raise RuntimeError(f"ingest span {plan.span}: {records_read} records read but {accounted} accounted for")
    write_atomic(os.path.join(uri, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    write_atomic(paths.seen_file(plan.span), "".join(f"{line}\n" for line in ledger))
    shutil.rmtree(plan.staging, ignore_errors=True)
    return summary


def _jsonl(entries: list[dict]) -> str:
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)


def _lines(path: str) -> list[str]:
    if not os.path.exists(path):  # a sink given no element may write no file
        return []
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _by_source(entry: dict) -> tuple[str, int]:
    """Sort key: file, then record number ("span-0/inbox/a.jsonl:10" after ":9")."""
    source = entry["source"]
    path, sep, number = source.rpartition(":")
    return (path, int(number)) if sep and number.isdigit() else (source, 0)
