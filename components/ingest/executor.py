"""The ExampleGen executor: one landed span -> validated, de-duplicated tf.Examples.

Follows TFX's BaseExampleGenExecutor: its GenerateExamplesByBeam calls our
PTransform on the resolved span pattern and splits the tf.Examples into
train/eval by the hash of the `sha256` feature (output_config.partition_feature_name);
the artifact gets the same split names, payload and file format properties and
the same GZIP TFRecords. What differs is how files are written: every output
goes through tf.io.gfile (so the Examples artifact may be on gs://, s3:// or
any filesystem TensorFlow knows, not only those Beam knows), each Beam bundle
writing one shard file into a staging folder inside the artifact
(`_WriteShards`). The PTransform also writes, as a side branch of the same Beam
pipeline, everything that did not become an example. After the pipeline, `Do`
moves the shards into place, writes `<examples uri>/ingest_summary.json`, and
writes the span's examples ledger last (the "span processed" marker, see
`components.ingest.landing`).

The landing folder and the ledger stay on the local disk of the machine that
collects the inbox (see `components.ingest.landing`); the quarantine and
unlabelled stores, like the Examples, may be anywhere.
"""
from __future__ import annotations

import collections
import functools
import itertools
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import apache_beam as beam
import tensorflow as tf
from apache_beam.transforms.window import GlobalWindows
from tfx import types
from tfx.components.example_gen import base_example_gen_executor, write_split
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from components import storage
from components.ingest import landing, spec
from components.ingest.records import Accepted, LandedFile, read_landed_file, to_example, unlabelled_entry
from serving.contract import RECORD_LABEL_KEY
from serving.images import DEFAULT_MAX_PIXELS, ImageInfo

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
# Threads validating the records of one JSON Lines file (image decoding releases
# the GIL). Two: the pipeline's machines have a few cores, and the Beam runner and
# the shard writes (executor's _ShardFile) use the rest; a third measured no faster.
VALIDATION_THREADS = 2
# TFX's .gz TFRecords, deflate level 0 (stored blocks): the records are mostly PNG, JPEG
# and GIF bytes, already compressed, which TensorFlow's default level shrinks by ~4% for
# most of a span's write time (docs/benchmarks.md#ingestion). Every GZIP reader reads them.
SHARD_OPTIONS = tf.io.TFRecordOptions(compression_type="GZIP", compression_level=0)
# Shard kinds: the examples of one split, or side records (JSON lines).
_EXAMPLES_SHARD = "examples"
_SIDE_SHARD = "side"


@dataclass(frozen=True)
class _SpanPlan:
    """Everything the Beam pipeline needs about the span being processed."""

    span: int
    files: list[LandedFile]
    # (span, ledger file) of the processed spans before this one. The de-duplication
    # step reads them where it runs (_Deduplicate.setup), so the pipeline graph, which a
    # cluster runner ships to its service, does not grow with the history.
    prior_ledgers: tuple[tuple[int, str], ...]
    staging: str
    ingested_at: int
    label_keys: tuple[str, ...]
    max_pixels: int

    @property
    def example_shard_list(self) -> str:
        return storage.join(self.staging, "example-shards.json")

    @property
    def side_shard_list(self) -> str:
        return storage.join(self.staging, "side-shards.json")


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
    """Reads one span of landed inbox/sample files; see the module docstring."""

    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        span = int(exec_properties[example_gen_utils.SPAN_PROPERTY_NAME])
        paths = spec.ingest_paths(exec_properties)
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        staging = storage.join(examples.uri, _STAGING)
        storage.rmtree(staging)  # left by an attempt that died; its shards are not listed anywhere
        storage.makedirs(staging)
        self._plan = _plan_span(paths, span, staging, exec_properties)
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
        output_config = example_gen_pb2.Output()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config)
        split_names = example_gen_utils.generate_output_split_names(input_config, output_config)
        examples.split_names = artifact_utils.encode_split_names(split_names)

        with self._make_beam_pipeline() as pipeline:
            splits = self.GenerateExamplesByBeam(pipeline, exec_properties)
            # NOTE: no Reshuffle before writing, unlike TFX's WriteSplit: consumers
            # shuffle their input themselves, and moving every image through a
            # shuffle was a large part of the executor's time.
            shards = [
                examples_split
                | f"WriteSplit[{name}]" >> beam.ParDo(_WriteShards(staging, _EXAMPLES_SHARD, name, tfrecord=True))
                for name, examples_split in splits.items()
            ]
            _ = shards | "AllSplits" >> beam.Flatten() | "ListSplitShards" >> _ListShards(self._plan.example_shard_list)

        examples_utils.set_payload_format(examples, exec_properties[standard_component_specs.OUTPUT_DATA_FORMAT_KEY])
        examples_utils.set_file_format(
            examples, write_split.to_file_format_str(exec_properties[standard_component_specs.OUTPUT_FILE_FORMAT_KEY]))
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
        **spec.ingest_properties(paths, label_keys, max_pixels),
    }
    examples = standard_artifacts.Examples()
    examples.uri = examples_uri
    executor = Executor(Executor.Context(beam_pipeline_args=list(beam_pipeline_args)))
    executor.Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties)
    return json.loads(storage.read_text(storage.join(examples_uri, SUMMARY_FILE)))


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
    """Landed files of one span -> tf.Examples; everything else goes to staged side shards.

    The side shards hold one JSON object per line, by "kind": "read" (records
    read in one file), "example" (the ledger entry of an example), "quarantine",
    "unlabelled" and "duplicate". One kind of shard rather than five keeps the
    Beam graph small, which is most of the cost of a small span.
    """
    del exec_properties, split_pattern  # the plan holds the files of the resolved span
    outcomes = (
        pipeline
        | "LandedFiles" >> beam.Create(plan.files)
        # Lets a distributed runner read different files on different workers.
        | "SpreadFiles" >> beam.Reshuffle()
        | "ReadAndValidate" >> beam.FlatMap(
            _read_file, span=plan.span, label_keys=plan.label_keys, max_pixels=plan.max_pixels
        ).with_outputs(_SIDE, main="accepted")
    )
    decided = (
        outcomes.accepted
        | "GroupBySha" >> beam.GroupByKey()
        | "Deduplicate" >> beam.ParDo(_Deduplicate(plan.prior_ledgers, plan.span)).with_outputs(_SIDE, main="examples")
    )
    _ = (
        (outcomes[_SIDE], decided[_SIDE])
        | "AllSide" >> beam.Flatten()
        | "WriteSide" >> beam.ParDo(_WriteShards(plan.staging, _SIDE_SHARD, "", tfrecord=False))
        | "ListSideShards" >> _ListShards(plan.side_shard_list)
    )
    return decided.examples | "ToExample" >> beam.Map(to_example, ingested_at=plan.ingested_at)


# -- shards: one file per Beam bundle, written through tf.io.gfile ---------------------------------------------

class _ShardFile:
    """One shard being written: GZIP TFRecords (TensorFlow's own writer), or UTF-8 lines; through tf.io.gfile."""

    def __init__(self, path: str, tfrecord: bool):
        self._records = tf.io.TFRecordWriter(path, options=SHARD_OPTIONS) if tfrecord else None
        self._lines = None if tfrecord else tf.io.gfile.GFile(path, "wb")
        self.records = 0

    def add(self, record: bytes) -> None:
        self.records += 1
        if self._records is not None:
            self._records.write(record)
        else:
            self._lines.write(record + b"\n")

    def close(self) -> None:
        (self._records or self._lines).close()


class _WriteShards(beam.DoFn):
    """Writes each bundle's elements to one new file in `folder`; outputs (kind, split, file name, records).

    Examples (tf.train.Example) become GZIP TFRecords, side records (str) lines.
    Only the files named in the output count (`_ListShards` lists them): a
    bundle that a runner retries leaves a file that nothing lists, and that is
    deleted with the staging folder.
    """

    def __init__(self, folder: str, kind: str, split: str, tfrecord: bool):
        self._folder = folder
        self._kind = kind
        self._split = split
        self._tfrecord = tfrecord
        self._name: str | None = None
        self._shard: _ShardFile | None = None

    def start_bundle(self) -> None:
        self._name, self._shard = None, None

    def process(self, element: tf.train.Example | str) -> None:
        if self._shard is None:
            suffix = ".gz" if self._tfrecord else ".jsonl"
            self._name = f"{self._kind}-{self._split or 'all'}-{uuid.uuid4().hex}{suffix}"
            self._shard = _ShardFile(storage.join(self._folder, self._name), self._tfrecord)
        self._shard.add(element.SerializeToString() if self._tfrecord else element.encode("utf-8"))

    def finish_bundle(self) -> Iterator[Any]:
        if self._shard is None:
            return
        self._shard.close()
        yield GlobalWindows.windowed_value((self._kind, self._split, self._name, self._shard.records))


@beam.ptransform_fn
def _ListShards(shards: beam.PCollection, path: str):  # noqa: N802
    """Write the (kind, split, file name, records) of every committed shard to `path`, as one JSON list.

    Nothing is written when there are no shards: without the default for an empty
    input, Beam's graph is two stages smaller (_publish checks the counts instead).
    """
    return (
        shards
        | "ToList" >> beam.combiners.ToList().without_defaults()
        | "Write" >> beam.Map(lambda names: storage.write(path, json.dumps(sorted(names))))
    )


def _read_file(landed: LandedFile, span: int, **kwargs) -> Iterator[Any]:
    """One file's accepted records as (sha256, _to_wire(record)); as side lines, its rejected records and
    how many records it held (counted apart from how they end)."""
    count = 0
    for outcome in read_landed_file(landed, threads=VALIDATION_THREADS, **kwargs):
        count += 1
        if isinstance(outcome, Accepted):
            yield outcome.info.sha256, _to_wire(outcome)
        else:
            yield beam.pvalue.TaggedOutput(
                _SIDE, json.dumps({"kind": "quarantine", **outcome.to_json(span)}, ensure_ascii=False))
    yield beam.pvalue.TaggedOutput(_SIDE, json.dumps({"kind": "read", "file": landed.name, "records": count}))


# Accepted records cross the shuffle as tuples of primitives, which Beam's coder
# writes in compiled code; a dataclass would be pickled on each of four crossings.
def _to_wire(a: Accepted) -> tuple:
    info = a.info
    return (a.source, a.order, a.image, info.format, info.width, info.height, info.sha256, a.label, a.genuine)


def _from_wire(t: tuple) -> Accepted:
    source, order, image, fmt, width, height, sha256, label, genuine = t
    return Accepted(source, tuple(order), image, ImageInfo(fmt, width, height, sha256), label, genuine)


class _Deduplicate(beam.DoFn):
    """_deduplicate against the earlier spans' ledgers, read once per instance where the step runs."""

    def __init__(self, ledgers: tuple[tuple[int, str], ...], span: int):
        self._ledgers = ledgers
        self._span = span
        self._prior: dict[str, tuple[int, str, bool]] = {}

    def setup(self) -> None:
        self._prior = _read_ledgers(self._ledgers)

    def process(self, item: tuple[str, Iterable[tuple]]):
        yield from _deduplicate(item, self._prior, self._span)


def _deduplicate(item: tuple[str, Iterable[tuple]], prior: dict[str, tuple[int, str, bool]], span: int):
    """One image (sha256): keep the first labelled record of this span unless an earlier span has it."""
    sha256, records = item
    new = sorted(map(_from_wire, records), key=lambda a: (a.label is None, a.order))
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


def _plan_span(paths: landing.IngestPaths, span: int, staging: str, exec_properties: dict[str, Any]) -> _SpanPlan:
    """What the Beam pipeline of span `span` needs: its landed files, the ledgers of the processed spans before it
    (paths only), its collection time and ingestion's rules from `exec_properties`."""
    return _SpanPlan(
        span=span,
        files=landing.landed_files(paths, span),
        prior_ledgers=tuple((earlier, paths.seen_file(earlier)) for earlier in landing.committed_spans(paths)
                            if earlier < span and landing.is_processed(paths, earlier)),
        staging=staging,
        ingested_at=int(landing.read_manifest(paths, span)["collected_at"]),
        label_keys=spec.label_keys(exec_properties),
        max_pixels=int(exec_properties[spec.MAX_PIXELS_KEY]),
    )


def _read_ledgers(ledgers: Iterable[tuple[int, str]]) -> dict[str, tuple[int, str, bool]]:
    """sha256 -> (first span, label, genuine) of every example in the (span, ledger file) pairs, oldest first.

    Held in memory where de-duplication runs: ~100 bytes an image, ~100 MB for a million.
    A ledger that has gone since the span was planned is an error, not an empty history
    (its images would all be examples again).
    """
    prior: dict[str, tuple[int, str, bool]] = {}
    for earlier, path in ledgers:
        if not storage.exists(path):
            raise FileNotFoundError(f"the examples ledger of span {earlier} ({path}) is gone; it was there when "
                                    "this span was planned")
        for line in storage.read_lines(path):
            sha256, label, genuine = _parse_ledger_line(line)
            prior.setdefault(sha256, (earlier, label, genuine))
    return prior


def _publish(
    plan: _SpanPlan, paths: landing.IngestPaths, uri: str, split_names: list[str], assign: Callable[[str], str]
) -> dict:
    """Check that every landed file and every example is accounted for, move the listed shards into place, sort
    the side records into their files, write the summary, then the ledger (last)."""
    example_shards = _listed_shards(plan.example_shard_list)
    kinds: dict[str, list[dict]] = collections.defaultdict(list)
    for _, _, name, _ in _listed_shards(plan.side_shard_list):
        for line in storage.read_lines(storage.join(plan.staging, name)):
            entry = json.loads(line)
            kinds[entry.pop("kind")].append(entry)
    records_read = sum(entry["records"] for entry in kinds["read"])
    ledger = sorted(_ledger_line(e["sha256"], e["label"], e["genuine"]) for e in kinds["example"])
    # Every file reports how many records it held, and every example is in a listed
    # shard: a shard or a file lost between the workers and here fails the span.
    reported = collections.Counter(entry["file"] for entry in kinds["read"])
    landed_names = collections.Counter(landed.name for landed in plan.files)
    if reported != landed_names:
        raise RuntimeError(
            f"ingest span {plan.span}: {len(plan.files)} files landed, {sum(reported.values())} reports; not reported:"
            f" {sorted(landed_names - reported)}, reported but not landed or twice: {sorted(reported - landed_names)}")
    written = sum(records for _, _, _, records in example_shards)
    if written != len(ledger):
        raise RuntimeError(f"ingest span {plan.span}: {len(ledger)} examples decided but {written} written")
    _place_examples(plan.staging, example_shards, uri, split_names)
    quarantine, unlabelled, duplicates = (
        sorted(kinds[kind], key=_by_source) for kind in ("quarantine", "unlabelled", "duplicate")
    )

    storage.write_atomic(paths.quarantine_file(plan.span), _jsonl(quarantine))
    storage.write_atomic(paths.unlabelled_file(plan.span), _jsonl(unlabelled))
    storage.write_atomic(storage.join(uri, DUPLICATES_FILE), _jsonl(duplicates))

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
        "duplicates_file": storage.join(uri, DUPLICATES_FILE),
    }
    accounted = summary["examples"] + summary["duplicates"] + summary["unlabelled"] + summary["quarantined"]
    if accounted != records_read:
        raise RuntimeError(f"ingest span {plan.span}: {records_read} records read but {accounted} accounted for")
    storage.write_atomic(storage.join(uri, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    storage.write_atomic(paths.seen_file(plan.span), "".join(f"{line}\n" for line in ledger))
    storage.rmtree(plan.staging)
    return summary


def _listed_shards(path: str) -> list[tuple[str, str, str, int]]:
    """The (kind, split, file name, records) of the shards a finished pipeline committed (none: no list)."""
    if not storage.exists(path):
        return []
    return [tuple(item) for item in json.loads(storage.read_text(path))]


def _place_examples(staging: str, shards: list[tuple[str, str, str, int]], uri: str, split_names: list[str]) -> None:
    """Move each split's shards to `Split-<name>/data_tfrecord-NNNNN-of-NNNNN.gz`, TFX's own names.

    A split without examples gets one empty file, as Beam's TFRecord sink writes:
    readers that list the split's files then find a (valid, empty) TFRecord.
    """
    by_split: dict[str, list[str]] = collections.defaultdict(list)
    for _, split, name, _ in shards:
        by_split[split].append(name)
    for split in split_names:
        folder = storage.join(uri, f"Split-{split}")
        storage.makedirs(folder)
        names = by_split[split]
        if not names:
            _ShardFile(storage.join(folder, f"{write_split.DEFAULT_FILE_NAME}-00000-of-00001.gz"), tfrecord=True).close()
        for index, name in enumerate(names):
            target = storage.join(folder, f"{write_split.DEFAULT_FILE_NAME}-{index:05d}-of-{len(names):05d}.gz")
            storage.rename(storage.join(staging, name), target)


def _jsonl(entries: list[dict]) -> str:
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)


def _by_source(entry: dict) -> tuple[str, int]:
    """Sort key: file, then record number ("span-0/inbox/a.jsonl:10" after ":9")."""
    source = entry["source"]
    path, sep, number = source.rpartition(":")
    return (path, int(number)) if sep and number.isdigit() else (source, 0)
