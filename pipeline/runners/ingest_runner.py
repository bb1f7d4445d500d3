"""`signflow ingest`: run only the ExampleGen (a one-node LocalDagRunner pipeline) and print the counts.

The node runs under the same pipeline name, node id and MLMD database as the
full pipeline, so the spans it ingests are the ones the full pipeline's span
resolver sees. Its defaults are the folders `signflow run` uses (PipelineConfig's
defaults, relative to the working directory).

Layer: runners. May import definition/, components.ingest and serving.images;
TFX and ML Metadata only when running.
"""
from __future__ import annotations

import argparse
import json
import os

from pipeline.definition.configs import PipelineConfig
from pipeline.definition.paths import METADATA_FILE
from serving.images import DEFAULT_MAX_PIXELS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = PipelineConfig()  # the folders `signflow run` uses, so both commands share spans, ledgers and MLMD
    inbox, sample, state = str(d.inbox_dir), str(d.sample_dir or ""), str(d.ingest_state_dir)
    quarantine, unlabelled, root = str(d.quarantine_dir), str(d.unlabelled_dir), str(d.run_root)
    parser.add_argument("--inbox", default=inbox, help=f"drop folder (default {inbox})")
    parser.add_argument("--sample", default=sample, help=f"committed sample, ingested once; '' for none (default {sample})")
    parser.add_argument("--state", default=state, help=f"landed spans and examples ledgers (default {state})")
    parser.add_argument("--quarantine", default=quarantine, help=f"refused records, span-<N>.jsonl (default {quarantine})")
    parser.add_argument("--unlabelled", default=unlabelled,
                        help=f"images without a label, span-<N>.jsonl (default {unlabelled})")
    parser.add_argument("--pipeline-name", default=d.pipeline_name, help=f"(default {d.pipeline_name})")
    parser.add_argument("--pipeline-root", default=root, help=f"(default {root})")
    parser.add_argument("--metadata", default=None,
                        help=f"MLMD SQLite file (default <pipeline-root>/{METADATA_FILE}: {d.metadata_path})")
    parser.add_argument(
        "--label-key",
        dest="label_keys",
        action="append",
        help="record key holding the label; repeat for several, first present wins (default: label)",
    )
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help=f"(default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--json", action="store_true", help="print the span's ingest_summary.json instead of text")


def main(args: argparse.Namespace) -> int:
    from tfx.orchestration import metadata
    from tfx.orchestration import pipeline as tfx_pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    from components.ingest import landing
    from components.ingest.component import DEFAULT_LABEL_KEYS, create_example_gen
    from components.ingest.executor import SUMMARY_FILE

    example_gen = create_example_gen(
        inbox_dir=args.inbox,
        state_dir=args.state,
        quarantine_dir=args.quarantine,
        unlabelled_dir=args.unlabelled,
        sample_dir=args.sample or None,
        label_keys=tuple(args.label_keys or DEFAULT_LABEL_KEYS),
        max_pixels=args.max_pixels,
    )
    pipeline_root = os.path.abspath(args.pipeline_root)
    metadata_path = args.metadata or os.path.join(pipeline_root, METADATA_FILE)
    config = metadata.sqlite_metadata_connection_config(metadata_path)
    paths = example_gen.paths
    processed_before = {s for s in landing.committed_spans(paths) if landing.is_processed(paths, s)}
    LocalDagRunner().run(
        tfx_pipeline.Pipeline(
            pipeline_name=args.pipeline_name,
            pipeline_root=pipeline_root,
            components=[example_gen],
            metadata_connection_config=config,
            enable_cache=True,
        )
    )
    uri = latest_examples_uri(config, args.pipeline_name, example_gen.id)
    with open(os.path.join(uri, SUMMARY_FILE), encoding="utf-8") as f:
        summary = json.load(f)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    if summary["span"] in processed_before:
        print(f"no new inbox files; latest span is {summary['span']}")
    print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    splits = ", ".join(f"{name} {count}" for name, count in summary["splits"].items()) or "none"
    if "forgeries" in summary:  # summaries written before forgeries were counted lack it
        splits = f"{summary['forgeries']} forgeries; {splits}"
    reasons = ", ".join(f"{reason} {count}" for reason, count in summary["quarantine_reasons"].items())
    lines = [
        f"span {summary['span']}: {summary['records_read']} records read = {summary['examples']} examples ({splits})"
        f" + {summary['duplicates']} duplicates + {summary['unlabelled']} unlabelled + {summary['quarantined']} quarantined",
        f"quarantine: {summary['quarantine_file']}" + (f" ({reasons})" if reasons else ""),
        f"unlabelled: {summary['unlabelled_file']}",
        f"duplicates: {summary['duplicates_file']}",
    ]
    return "\n".join(lines)


def latest_examples_uri(config, pipeline_name: str, node_id: str) -> str:
    """The URI of the newest Examples artifact the node has published."""
    import ml_metadata as mlmd

    store = mlmd.MetadataStore(config)
    context = store.get_context_by_type_and_name("node", f"{pipeline_name}.{node_id}")
    if context is None:
        raise RuntimeError(f"no node {pipeline_name}.{node_id} in MLMD")
    examples_type = store.get_artifact_type("Examples").id
    live = [
        a
        for a in store.get_artifacts_by_context(context.id)
        if a.type_id == examples_type and a.state == mlmd.proto.Artifact.LIVE
    ]
    if not live:
        raise RuntimeError(f"{pipeline_name}.{node_id} has published no Examples")
    return max(live, key=lambda a: (a.create_time_since_epoch, a.id)).uri
