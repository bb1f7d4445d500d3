"""`signflow` command line: one subcommand per job, each implemented in the module that owns it.

Subcommand modules are imported only when chosen, so `signflow serve` never loads
TFX and `signflow --help` is fast. Each module provides `add_arguments(parser)`
and `main(args) -> int` (or `add_<command>_arguments` and `<command>_main` where
one module serves two commands).

The process entry point of `python -m pipeline.cli` and the `signflow` console
script: it chooses Keras 2 for the whole process, and the child processes that
inherit its environment (a scheduler's cycles, Beam's workers, the serving
check's probe), before any subcommand imports TensorFlow.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Keras 2 (tf-keras): TFX 1.16 needs it, and TFT and TFMA pick their Keras when first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("pipeline.runners.local_runner", "run the whole pipeline once, locally"),
    "schedule": ("pipeline.training_server.schedule",
                 "the training server: run the pipeline on a schedule and when data arrives"),
    "status": ("pipeline.training_server.status", "what the training server did last, what waits, what is served"),
    "compile-kubeflow": ("pipeline.runners.kubeflow_v2_runner",
                         "compile the pipeline for Kubeflow Pipelines V2 / Vertex AI"),
    "collect-kubeflow": ("pipeline.runners.kubeflow_v2_runner",
                         "collect new inbox files into a span before a Kubeflow / Vertex AI run"),
    "enroll": ("pipeline.runners.enroll_runner",
               "add a signer from a folder of reference images: a fast cycle, no backbone training"),
    "ingest": ("pipeline.runners.ingest_runner", "ingest the inbox into a new span and print the counts"),
    "versions": ("pipeline.training_server.rollback", "list served model versions and their lineage"),
    "rollback": ("pipeline.training_server.rollback",
                 "take the newest (or every version newer than --to) out of service"),
    "serve": ("serving.cli", "run the TF Serving-compatible model server"),
    "batch-predict": ("pipeline.batch.command",
                      "score folders, files or globs of images with a served model version (Beam)"),
    "predict": ("serving.client", "send an image to a running server and print the answer"),
    "verify": ("serving.client", "ask a running server whether signature images are a claimed signer's"),
    "ui": ("serving.ui_command", "serve the web page in front of a real TF Serving (--api URL)"),
    "weights": ("components.trainer.weights_store",
                "import Xception's pretrained no-top weights for offline training (import FILE | show)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="signflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    # Parse just the command name, then let its own module define the rest.
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv[:1] or ["--help"])
    name = argv[0]
    module = importlib.import_module(SUBCOMMANDS[name][0])
    command_parser = argparse.ArgumentParser(prog=f"signflow {name}", description=SUBCOMMANDS[name][1])
    add_arguments = getattr(module, f"add_{name.replace('-', '_')}_arguments", None) or module.add_arguments
    run = getattr(module, f"{name.replace('-', '_')}_main", None) or module.main
    add_arguments(command_parser)
    return int(run(command_parser.parse_args(argv[1:])) or 0)


if __name__ == "__main__":
    sys.exit(main())
