"""Compiles the pipeline for Kubeflow Pipelines V2 and Vertex AI Pipelines (`signflow compile-kubeflow`).

The same `create_pipeline(...)` as the local runner, compiled by TFX's
KubeflowV2DagRunner into one file (nothing runs here): a Vertex AI PipelineJob
(`*.json`, with the pipeline root in its runtime config) or a bare PipelineSpec
for Kubeflow Pipelines' upload (`*.yaml`). Settings: pipeline/runners/kubeflow_config.py.

What differs from a local run, all read in TFX 1.16's source:

- Collection runs before the pipeline, not in it (`signflow collect-kubeflow`).
  The compiler gives every FileBasedExampleGen, SignatureExampleGen included,
  the platform's own driver, `python -m
  tfx.orchestration.kubeflow.v2.file_based_example_gen.driver`, as a
  pre-cache-check hook (tfx/orchestration/kubeflow/v2/step_builder.py,
  `_build_file_based_example_gen_spec`); that driver only resolves the latest
  `span-{SPAN}` folder and fingerprints it, and never calls DRIVER_CLASS. So
  the IngestDriver's collection of new inbox files into a new span does not
  happen: run `signflow collect-kubeflow` (same settings) before each pipeline
  run. With nothing new it reports so, and a run would retrain on the latest
  span again.
- Inputs are resolved by the platform, not by Python: the compiler accepts only
  Resolver nodes with LatestArtifactStrategy or LatestBlessedModelStrategy
  (step_builder.py, `_build_resolver_spec`, raises TypeError otherwise). The
  pipeline is built with `platform_resolvers=True`: the Trainer, Evaluator and
  ServingCheck take this run's span (no span window), and the Evaluator's
  baseline is the newest blessed model rather than the one behind the newest
  version folder.
- Every step runs in `image`: TFX's entrypoint
  (`tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor`) imports
  executors by dotted name (`--executor_class_path`), so signflow's own
  (SignatureExampleGen, AnomaliesGate, ServingCheck, Pusher) and the Trainer's
  run_fn must be importable there: the image holds this repository, the locked
  packages and kfp-pipeline-spec. The compiler itself needs kfp-pipeline-spec.
- The Beam arguments are appended to every step's container arguments and to
  the ExampleGen's driver hook; TFX's Beam components (ExampleGen,
  StatisticsGen, Evaluator) pass them to Beam. Beam's workers read the landed
  files by their paths under data_root, so those must be mounted there too.
- Compiling is all this module does. A run on Vertex AI also needs signflow's
  own executors (ingestion, ServingCheck, Pusher) to handle artifact files
  through `tfx.dsl.io.fileio`: they use os and pathlib, and Vertex AI hands
  them `gs://` artifact URIs.

Layer: runners. May import definition/, kubeflow_config and components.ingest;
TFX only when compiling.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import posixpath
from pathlib import Path

from pipeline.definition.configs import pipeline_arguments
from pipeline.runners.kubeflow_config import KubeflowV2Config, load_kubeflow_config

# The kfp-pipeline-spec release whose protobuf range (<4) admits requirements.lock's protobuf 3.20.3.
KFP_PIPELINE_SPEC_REQUIREMENT = "kfp-pipeline-spec==0.2.2"


def build(config: KubeflowV2Config):
    """The pipeline for `config`, every path as the containers see it."""
    from pipeline.definition.pipeline import create_pipeline  # imports TFX: only when compiling

    return create_pipeline(**pipeline_arguments(config, config.paths()))


def compile_pipeline(config: KubeflowV2Config) -> dict:
    """Write the compiled pipeline to `config.output_path`; returns the PipelineJob as a dict."""
    from tfx import v1 as tfx

    try:
        import kfp.pipeline_spec  # noqa: F401  (the compiler's own import, checked here for a clear message)
    except ImportError as err:
        raise RuntimeError(
            f"compiling for Kubeflow V2 needs {KFP_PIPELINE_SPEC_REQUIREMENT} ({err}); "
            "it is in requirements.lock: rebuild the venv (make venv)"
        ) from err

    output_dir, output_filename = posixpath.split(config.output_path)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            display_name=config.display_name, default_image=config.image
        ),
        output_dir=output_dir or None,  # None: the current directory
        output_filename=output_filename,
    )
    return runner.run(build(config))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # TFX logs each component's IR and Beam each type hint at INFO: thousands of lines.
    for noisy in ("absl", "apache_beam"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = load_kubeflow_config(args.config, args.overrides)
    job = compile_pipeline(config)
    tasks = sorted(job["pipelineSpec"]["root"]["dag"]["tasks"])
    print(f"wrote {config.output_path}: {len(tasks)} tasks ({', '.join(tasks)})")
    print(f"image {config.image}, pipeline root {config.pipeline_root}, data root {config.data_root}")
    print(f"beam args: {' '.join(config.all_beam_args) or '(DirectRunner defaults)'}")
    print("before each run: signflow collect-kubeflow with the same settings (new inbox files -> a new span)")
    return 0


def add_collect_kubeflow_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config_arguments(parser)


def collect_kubeflow_main(args: argparse.Namespace) -> int:
    """Collect new inbox files into the next span, the step the platform's ExampleGen driver skips.

    Run it where data_root is mounted at the same path as in the containers, or
    with `--set data_root=<where it is mounted here>`: landed files are found
    relative to the state folder, so the mount point may differ.
    """
    from components.ingest import landing

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_kubeflow_config(args.config, args.overrides)
    collection = landing.collect_new_files(config.paths().ingest)
    # A run is worth submitting when a span awaits processing: new now, or collected before and not processed.
    awaiting = collection.new_span is not None or collection.pending
    print(json.dumps({**dataclasses.asdict(collection), "awaiting_processing": awaiting}))
    return 0


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="JSON file with settings (see pipeline/runners/kubeflow_config.py)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override one setting, e.g. --set image=gcr.io/p/signflow:2 or "
                             "--set dataflow.region=europe-west4 (repeatable)")
