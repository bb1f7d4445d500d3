"""Runs the pipeline once on this machine: ConcurrentDagRunner (TFX's LocalDagRunner, independent components side
by side), Beam's DirectRunner, SQLite MLMD.

`make run-local` and `signflow run` call this, and `signflow schedule` runs it
as a child process per cycle. All paths come from the typed config
(pipeline/definition/configs.py), resolved once against the current directory.
A run holds the pipeline's run lock (pipeline/training_server/run_lock.py): a
second run of the same pipeline exits with EXIT_BUSY instead of racing the first.

Exit status: 0 the pipeline ran to its end (whether or not it pushed), 1 it
failed (a component raised, a folder could not be written ...), 2 the settings
are invalid, 75 (EXIT_BUSY) another run holds the lock. Every outcome is also
written to --summary-json, a failure as {"result": "failed", "error": reason},
which is what the scheduler records for the cycle.

Layer: runners. May import definition/, serving.contract,
training_server's run_lock and run_summary, and the serving check's
probe_started_in_advance (the check's process loads TensorFlow while the first
components run); TFX only when running.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.definition.configs import PipelineConfig, load_config, pipeline_arguments
from pipeline.definition.paths import PipelinePaths
from pipeline.training_server.run_lock import RUN_LOCK, FileLock, LockHeld
from serving.contract import write_atomic

if TYPE_CHECKING:
    from pipeline.training_server.run_summary import RunSummary

log = logging.getLogger("signflow.run")

EXIT_FAILED = 1
# As argparse exits for a bad command line.
EXIT_USAGE = 2
# sysexits.h EX_TEMPFAIL: another run holds the lock; try again later.
EXIT_BUSY = 75
BEAM_MODES = ("in_memory", "multi_processing", "multi_threading")


def build(config: PipelineConfig, paths: PipelinePaths):
    """The pipeline for `config`, at `paths` (config.paths(): resolved against the working directory)."""
    from pipeline.definition.pipeline import create_pipeline  # imports TFX: only when running

    return create_pipeline(**pipeline_arguments(config, paths))


def run(config: PipelineConfig) -> RunSummary:
    """Run the pipeline once under the run lock; raises LockHeld when another run holds it."""
    paths = config.paths()
    Path(paths.pipeline_root).parent.mkdir(parents=True, exist_ok=True)
    Path(paths.ingest.inbox_dir).mkdir(parents=True, exist_ok=True)
    with FileLock(Path(paths.pipeline_root) / RUN_LOCK, purpose="signflow run"):
        from components.serving_check.component import probe_started_in_advance
        from pipeline.runners.concurrent_dag import ConcurrentDagRunner
        from pipeline.training_server.run_summary import summarize

        started = time.monotonic()
        with probe_started_in_advance():
            ConcurrentDagRunner().run(build(config, paths))
        summary = summarize(paths.metadata_path)
        log.info("pipeline run finished in %.1f s", time.monotonic() - started)
    return summary


def beam_args(mode: str | None, workers: int | None) -> tuple[str, ...]:
    """DirectRunner arguments for --beam-mode/--workers (0 workers = one per core)."""
    if mode is None and workers is None:
        return ()
    args = [f"--direct_running_mode={mode or 'multi_processing'}"]
    if workers is not None:
        args.append(f"--direct_num_workers={workers}")
    return tuple(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="JSON file with settings (see pipeline/definition/configs.py)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one setting, e.g. --set trainer.scratch_epochs=3 (repeatable)")
    parser.add_argument("--beam-mode", choices=BEAM_MODES,
                        help="Beam DirectRunner mode for ExampleGen, StatisticsGen and the Evaluator "
                             "(default: the config's beam_pipeline_args, in_memory)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="DirectRunner workers (0 = one per core); implies --beam-mode=multi_processing "
                             "unless given")
    parser.add_argument("--summary-json", type=Path, metavar="PATH",
                        help="also write the run summary (or the failure) as JSON to PATH")
    parser.add_argument("--verbose", action="store_true", help="also show TFX's and Beam's INFO logs")
    parser.add_argument("--arguments-on-stdin", action="store_true",
                        help="load TFX first, then read this run's arguments as one JSON list on a line of "
                             "standard input (how the training server keeps its next cycle's process ready); "
                             "end of input exits 0 without running")


def main(args: argparse.Namespace) -> int:
    # Google's client libraries warn about Python 3.10 once per package (a dozen
    # times); the README states the Python 3.10 end of life once.
    warnings.filterwarnings("ignore", message="You are using a non-supported Python version", category=FutureWarning)
    if args.arguments_on_stdin:
        args = arguments_from_stdin()
        if args is None:
            return 0
    # force: a process started in advance has imported TFX, which already gave the root logger a handler.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    if not args.verbose:
        # TFX (absl) logs each component's full IR and Beam each type hint at INFO:
        # thousands of lines that hide signflow's own progress lines.
        for noisy in ("absl", "apache_beam"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = load_config(args.config, args.overrides)
    except (OSError, ValueError) as err:
        return _failed(args.summary_json, f"invalid settings: {err}", EXIT_USAGE)
    extra = beam_args(args.beam_mode, args.workers)
    if extra:
        direct = ("--direct_running_mode", "--direct_num_workers")
        kept = tuple(a for a in config.beam_pipeline_args if not a.startswith(direct))
        config = dataclasses.replace(config, beam_pipeline_args=kept + extra)
    try:
        summary = run(config)
    except LockHeld as err:
        log.error("not running: %s", err)
        _write_json(args.summary_json, {"result": "busy", "error": str(err)})
        return EXIT_BUSY
    except Exception as err:
        # The traceback is logged; the reason is repeated last, on one line, and the scheduler reads it from the JSON.
        log.exception("pipeline run failed")
        return _failed(args.summary_json, f"{type(err).__name__}: {err}"[:2000], EXIT_FAILED)
    _write_json(args.summary_json, summary.to_json())
    print("\n".join(["", "signflow run summary", *summary.lines()]))
    return 0


def arguments_from_stdin() -> argparse.Namespace | None:
    """Import what a run needs, then wait for its arguments: a JSON list of strings on one line of stdin.

    Importing TensorFlow, TFX, Beam and TFMA is ~10 s of every run on 2 cores;
    the training server starts its next cycle's process as the last one ends,
    so that a cycle starts with them loaded. None at end of input: the training
    server stopped without needing this process.
    """
    # The run's own imports (build() and run()), done now rather than once the cycle is due.
    from pipeline.definition.pipeline import create_pipeline  # noqa: F401
    from pipeline.runners.concurrent_dag import ConcurrentDagRunner  # noqa: F401
    from pipeline.training_server.run_summary import summarize  # noqa: F401

    from components import waiting_process

    arguments = waiting_process.read_message()
    if arguments is None:
        return None
    if not isinstance(arguments, list) or not all(isinstance(a, str) for a in arguments):
        raise SystemExit("signflow run: --arguments-on-stdin expects a JSON list of strings, got "
                         f"{json.dumps(arguments)!r}")
    parsed = parse_arguments(arguments)
    if parsed.arguments_on_stdin:
        raise SystemExit("signflow run: --arguments-on-stdin is not one of a run's arguments")
    return parsed


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """`signflow run`'s arguments, every option at its default unless given (also for commands that run it)."""
    parser = argparse.ArgumentParser(prog="signflow run")
    add_arguments(parser)
    return parser.parse_args(argv)


def _failed(summary_json: Path | None, reason: str, code: int) -> int:
    print(f"signflow run failed: {reason}", file=sys.stderr)
    _write_json(summary_json, {"result": "failed", "error": reason})
    return code


def _write_json(path: Path | None, document: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(document, indent=1, default=str))
