"""The training server: `signflow schedule` runs the pipeline on a schedule and when new data arrives.

A cycle is due when
- at least `--min-new-records` records wait in the inbox (checked every `--poll`;
  feedback sent to the serving server lands there), or
- `--interval` has passed since the last cycle started and something waits, or
  the last cycle did not finish (a cycle with nothing new would retrain on the
  same data, so it is skipped, with a log line).

Each cycle is `signflow run` in a child process (optionally under
`--cycle-prefix`, e.g. `nice -n 10` or `timeout 4h`) in its own process group: a
crash, a leak or a TensorFlow abort ends that cycle only, the scheduler logs the
reason and goes on, and the serving side keeps the last version pushed. The
next cycle's child starts as soon as the last cycle ends, loads TensorFlow and
TFX (~10 s) and waits for its arguments on stdin (`start_ready_child`,
components/waiting_process.py; `--no-start-in-advance` turns that off, and so
does a `--cycle-prefix`, which may limit the process's life). A cycle
counts as finished only when its child exits 0 or 75 and leaves its run summary;
a child killed by a signal, or one that exits without a summary, is a failed
cycle with that reason. Processes a cycle leaves behind in its group are killed
once it ends. Cycles never overlap:
the child holds the pipeline's run lock (a manual `make run-local` meanwhile
makes the cycle report "busy"), and the scheduler holds its own lock so that a
second scheduler on the same pipeline refuses to start. Both locks are released
by the kernel when their holder dies (run_lock.py).

What the scheduler knows is written atomically after every change to
`<pipeline_root>/<pipeline_name>/schedule/status.json`: `signflow status`
(status.py) prints it, the serving server's /signflow/status route can show it
(`--training_status_file`), and `--metrics_port` exposes it to Prometheus. The
status counts the scheduler's polls of the inbox (`polls`, `last_poll_at`), so a
reader can tell a scheduler that is checking from one that is stuck.

SIGTERM or SIGINT stops the scheduler: a running cycle's process group is sent
SIGTERM (SIGKILL after STOP_GRACE_SECONDS), the cycle is recorded as failed
("the scheduler was asked to stop"), the status becomes "stopped", and the
scheduler exits 0 (with `--once`, 1: the cycle did not finish). Exit codes: 0
stopped or `--max-cycles` reached, 1 the `--once` cycle failed, 2 bad
settings, 75 another scheduler runs this pipeline (or the `--once` cycle was busy).

Layer: training_server. May import definition/, run_lock, serving.contract,
components.ingest.landing and components.waiting_process; never a runner (a
cycle is a child process).

Over 450 lines because the loop, the child's lifecycle (process group, stop,
leftovers) and the status file must agree on every state a cycle can end in;
split apart they would each restate those states.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from components import waiting_process
from pipeline.definition.configs import PipelineConfig, load_config
from pipeline.training_server.run_lock import SCHEDULER_LOCK, FileLock, LockHeld
from serving.contract import write_atomic

log = logging.getLogger("signflow.schedule")

STATUS_FILE = "status.json"
# Results of a cycle. The first two mean the pipeline finished its work.
FINISHED = ("pushed", "not_blessed", "serving_check_failed", "not_pushed")
FAILED, BUSY = "failed", "busy"
# `signflow run`'s exit codes (pipeline/runners/local_runner.py) that come with a summary worth reading.
EXIT_OK, EXIT_BUSY = 0, 75
# How long a stopping cycle gets to end after SIGTERM before its process group is killed.
STOP_GRACE_SECONDS = 60
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "30m", "6h" or "1d"."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 30m, 6h or 1d, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@dataclass(frozen=True)
class ScheduleSettings:
    interval_seconds: float = 6 * 3600
    """Run at least this often when something new waits (or the last cycle failed)."""
    min_new_records: int = 100
    """Run as soon as this many new records wait in the inbox."""
    poll_seconds: float = 30.0
    """How often the inbox is checked."""
    retry_seconds: float = 300.0
    """After a failed or busy cycle, wait at least this long before the next one."""
    once: bool = False
    """Run one cycle now and exit with its result (what `make run-local` does, plus the status file)."""
    max_cycles: int | None = None
    """Stop after this many cycles (tests, benchmarks)."""
    run_args: tuple[str, ...] = ()
    """Arguments passed on to each `signflow run` (--config, --set, --beam-mode ...)."""
    cycle_prefix: tuple[str, ...] = ()
    """A command each cycle's `signflow run` runs under (`nice -n 10`, `timeout 4h`); it must pass the exit code on."""
    start_in_advance: bool = True
    """Start the next cycle's process (and its TFX imports, ~10 s) as soon as the last cycle ends; never under a
    cycle_prefix."""


@dataclass
class CycleResult:
    result: str  # one of FINISHED, FAILED, BUSY
    exit_code: int
    summary: dict[str, Any]
    process: dict[str, Any] | None = None  # the child's pid and whether it was started before the cycle was due


def schedule_dir(config: PipelineConfig) -> Path:
    """The scheduler's folder in the pipeline's own: its status file and its lock."""
    return Path(config.paths().pipeline_root) / "schedule"


def status_path(config: PipelineConfig) -> Path:
    return schedule_dir(config) / STATUS_FILE


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def scheduler_lock_path(config: PipelineConfig) -> Path:
    return schedule_dir(config) / SCHEDULER_LOCK


def start_ready_child() -> subprocess.Popen:
    """A `signflow run` that loads TFX now and runs once its arguments arrive on stdin (run_child's `ready`)."""
    return waiting_process.start([sys.executable, "-m", "pipeline.cli", "run", "--arguments-on-stdin"])


def run_child(run_args: tuple[str, ...], summary_json: Path, stop: threading.Event,
              prefix: tuple[str, ...] = (), ready: subprocess.Popen | None = None) -> CycleResult:
    """One `signflow run` in its own process group (and session, so a stop reaches it only through us).

    `ready` (start_ready_child) runs the cycle when it is still alive; otherwise a new process does.
    """
    arguments = [*run_args, "--summary-json", str(summary_json)]
    if ready is not None and waiting_process.hand_over(ready, arguments, "the cycle process"):
        child = ready
    else:
        child = subprocess.Popen([*prefix, sys.executable, "-m", "pipeline.cli", "run", *arguments],
                                 start_new_session=True)
    stopped = False
    while child.poll() is None:
        if stop.wait(0.5):
            stopped = True
            log.info("stopping: asking the running cycle (pid %d) to stop", child.pid)
            waiting_process.signal_group(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning("the cycle (pid %d) did not stop within %s: killing it", child.pid,
                            human_duration(STOP_GRACE_SECONDS))
                waiting_process.signal_group(child.pid, signal.SIGKILL)
            break
    code = child.wait()
    # Beam workers and other helpers of a crashed run would otherwise outlive it (and hold memory).
    if waiting_process.signal_group(child.pid, signal.SIGKILL):
        log.warning("killed processes the cycle (pid %d) left behind in its process group", child.pid)
    try:
        summary = json.loads(summary_json.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        summary = {"result": FAILED, "error": _no_summary_reason(code)}
    result = summary.get("result", FAILED) if code in (EXIT_OK, EXIT_BUSY) else FAILED
    if code not in (EXIT_OK, EXIT_BUSY) and "error" not in summary:
        summary["error"] = f"signflow run ended with exit code {code}"
    if stopped and result == FAILED:
        summary["error"] = f"the scheduler was asked to stop: {summary.get('error')}"
    return CycleResult(result, code, summary, process={"pid": child.pid, "started_in_advance": child is ready})


def _no_summary_reason(code: int) -> str:
    if code < 0:
        return f"signflow run was killed by {signal.Signals(-code).name} (exit code {code}) before writing its summary"
    return f"signflow run ended with exit code {code} without writing its summary"


class Scheduler:
    """The loop. `run_cycle` is how one cycle runs (a child `signflow run` unless given)."""

    def __init__(self, config: PipelineConfig, settings: ScheduleSettings,
                 run_cycle: Callable[[Path, threading.Event], CycleResult] | None = None,
                 on_status: Callable[[dict[str, Any]], None] | None = None):
        self.config = config
        self.settings = settings
        self.stop = threading.Event()
        # Added to run_args for the cycle about to run (a full cycle after a fast one the gate refused).
        self.cycle_args: tuple[str, ...] = ()
        self._run_cycle = run_cycle or (
            lambda path, stop: run_child((*settings.run_args, *self.cycle_args), path, stop,
                                         prefix=settings.cycle_prefix, ready=self._take_ready()))
        # The next cycle's `signflow run`, loading TFX while the scheduler waits (only for real child cycles).
        # Not under a --cycle-prefix: the prefix may measure or limit the process's life (`timeout 4h`).
        self._start_in_advance = settings.start_in_advance and run_cycle is None and not settings.cycle_prefix
        self._ready: subprocess.Popen | None = None
        # Set when the process started in advance ended while waiting: none is started again before the next
        # cycle has run, so that one that cannot start (a failing import after a deploy) is not restarted at
        # every poll.
        self._ready_ended = False
        self._on_status = on_status
        self._paths = config.paths().ingest
        self._key_cache: dict = {}
        self.status_file = status_path(config)
        previous = read_status(self.status_file) or {}
        # Carried over a restart: when the last cycle ran and how it ended.
        self.status: dict[str, Any] = {
            "scheduler": {
                "pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time(),
                "interval_seconds": settings.interval_seconds, "min_new_records": settings.min_new_records,
                "poll_seconds": settings.poll_seconds,
            },
            "state": "starting",
            "current_cycle": None,
            "last_cycle": previous.get("last_cycle"),
            "last_push": previous.get("last_push"),
            "cycles": previous.get("cycles", {}),
            "records_waiting": None,
            "files_waiting": None,
            "next_due_at": None,
            "polls": 0,
            "last_poll_at": None,
            "ready_process_pid": None,
            "updated_at": None,
        }

    # -- the loop ---------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped (or one cycle with `once`). Returns the exit code."""
        lock = FileLock(scheduler_lock_path(self.config), purpose="signflow schedule")
        try:
            lock.acquire()
        except LockHeld as err:
            log.error("another scheduler runs this pipeline: %s", err)
            return 75
        try:
            return self._loop()
        finally:
            if self._ready is not None:
                waiting_process.discard(self._take_ready())
            self._set(state="stopped", current_cycle=None)
            lock.release()

    def _loop(self) -> int:
        s = self.settings
        cycles = 0
        log.info("training server: interval %s, min new records %d, poll %s; status in %s",
                 human_duration(s.interval_seconds), s.min_new_records, human_duration(s.poll_seconds), self.status_file)
        while not self.stop.is_set():
            if self._ready is not None and self._ready.poll() is not None:
                ended = self._take_ready()
                log.warning("the cycle process started in advance (pid %d) ended while waiting (exit code %s): "
                            "the next cycle starts its own", ended.pid, ended.returncode)
                waiting_process.discard(ended)
                self._ready_ended = True
            if self._start_in_advance and self._ready is None and not self._ready_ended:
                self._ready = start_ready_child()
                self._set(ready_process_pid=self._ready.pid)
            waiting = self._count_waiting()
            now = time.time()
            self.status["polls"] += 1
            self.status["last_poll_at"] = now
            log.debug("poll %d: %d records in %d files waiting", self.status["polls"], waiting.records, waiting.files)
            trigger = "once" if s.once else self._trigger(waiting.records, now)
            if trigger:
                outcome = self._cycle(trigger)
                self._ready_ended = False
                cycles += 1
                if s.once:
                    return 0 if outcome.result in FINISHED else (75 if outcome.result == BUSY else 1)
                if s.max_cycles is not None and cycles >= s.max_cycles:
                    return 0
                continue  # count again at once: data may have arrived during the cycle
            self._set(state="idle", next_due_at=self._next_due())
            self.stop.wait(s.poll_seconds)
        return 0

    def _trigger(self, records: int, now: float) -> str | None:
        s = self.settings
        last = self.status.get("last_cycle") or {}
        if last.get("result") in (FAILED, BUSY) and now < last.get("finished_at", 0) + s.retry_seconds:
            return None
        if _fast_cycle_refused(last):
            return FULL_AFTER_FAST
        if records > 0 and records >= s.min_new_records:
            return f"{records} new records"
        if now < self._next_due():
            return None
        if records > 0:
            return f"interval ({records} new records)"
        if last and last.get("result") not in FINISHED:
            return "interval (retrying the last cycle)"
        due = self._next_due()
        if self.status.get("skipped_due_at") != due:
            log.info("interval reached, nothing new since the last cycle: skipped")
            self.status["skipped_due_at"] = due
        return None

    def _take_ready(self) -> subprocess.Popen | None:
        ready, self._ready = self._ready, None
        if ready is not None:
            self._set(ready_process_pid=None)
        return ready

    def _next_due(self) -> float:
        last = self.status.get("last_cycle")
        if not last:
            return 0.0
        due = last["started_at"] + self.settings.interval_seconds
        if last.get("result") in (FAILED, BUSY):
            due = min(due, last["finished_at"] + self.settings.retry_seconds)
        return due

    def _count_waiting(self):
        from components.ingest.landing import waiting

        found = waiting(self._paths, self._key_cache)
        self.status["records_waiting"], self.status["files_waiting"] = found.records, found.files
        return found

    def _cycle(self, trigger: str):
        started = time.time()
        records = self.status.get("records_waiting")
        # The pipeline picks fast or full itself (components/trainer/cycles.py); after a fast cycle the gate
        # refused, the backbone itself may be what fails the new data: relearn it at once.
        self.cycle_args = ("--set", "trainer.cycle=full") if trigger == FULL_AFTER_FAST else ()
        log.info("cycle starts (%s)", trigger)
        self._set(state="running", current_cycle={"started_at": started, "trigger": trigger, "pid": os.getpid()})
        with tempfile.TemporaryDirectory(prefix="signflow-cycle-") as tmp:
            outcome = self._run_cycle(Path(tmp) / "summary.json", self.stop)
        finished = time.time()
        summary = outcome.summary
        last = {
            "started_at": started, "finished_at": finished, "duration_seconds": round(finished - started, 1),
            "trigger": trigger, "records_waiting_at_start": records, "result": outcome.result,
            "exit_code": outcome.exit_code, "error": summary.get("error"),
            "run_id": summary.get("run_id"), "pushed_version": summary.get("pushed_version"),
            "not_blessed_reasons": summary.get("not_blessed_reasons", []),
            "weakest_signers": summary.get("weakest_signers", []),
            "signers_too_few_examples": summary.get("signers_too_few_examples", []),
            "min_signer_examples": summary.get("min_signer_examples"),
            "serving_check": summary.get("serving_check"),
            "infra_reason": summary.get("infra_reason") or None,
            "metrics": summary.get("metrics", {}), "ingest": summary.get("ingest", {}),
            "cycle": (summary.get("training") or {}).get("cycle"),
            "timings": summary.get("timings", {}),
            "process": outcome.process,
        }
        cycles = dict(self.status.get("cycles") or {})
        cycles[outcome.result] = cycles.get(outcome.result, 0) + 1
        changes: dict[str, Any] = {"state": "idle", "current_cycle": None, "last_cycle": last, "cycles": cycles}
        if outcome.result == "pushed":
            changes["last_push"] = {"version": summary.get("pushed_version"), "at": finished,
                                    "path": summary.get("pushed_path")}
        self._set(**changes)
        self._count_waiting()
        self._set(next_due_at=self._next_due())
        self._log_outcome(last)
        return outcome

    def _log_outcome(self, last: dict[str, Any]) -> None:
        took = human_duration(last["duration_seconds"])
        result = last["result"]
        if result == "pushed":
            log.info("cycle pushed version %s in %s", last["pushed_version"], took)
        elif result == "not_blessed":
            log.info("cycle finished in %s, candidate not pushed: %s", took,
                     "; ".join(last["not_blessed_reasons"]) or "not blessed")
        elif result in FINISHED:
            log.info("cycle finished in %s, nothing pushed: %s", took, last.get("infra_reason") or result)
        elif result == BUSY:
            log.warning("cycle skipped: %s; next try in %s", last["error"], human_duration(self.settings.retry_seconds))
        else:
            log.error("cycle failed after %s: %s; serving keeps the last version; next try in %s",
                      took, last["error"], human_duration(self.settings.retry_seconds))

    def _set(self, **changes: Any) -> None:
        self.status.update(changes)
        self.status["updated_at"] = time.time()
        # Gauges first: whatever a reader finds in the file is already what Prometheus scrapes.
        if self._on_status:
            self._on_status(self.status)
        # Readers (the serving server, `signflow status`) see the old file or the new one, never half.
        self.status_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.status_file, json.dumps(self.status, indent=1, default=str))


FULL_AFTER_FAST = "the last fast cycle's candidate was not blessed: full cycle"


def _fast_cycle_refused(last: dict[str, Any]) -> bool:
    """Whether the last cycle was a fast one whose candidate the gate refused."""
    return last.get("result") == "not_blessed" and (last.get("cycle") or {}).get("kind") == "fast"


def human_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s" if seconds < 120 else f"{seconds / 60:.1f}m"


# -- Prometheus ----------------------------------------------------------------


def serve_metrics(port: int, host: str) -> tuple[Callable[[dict[str, Any]], None], str]:
    """Expose the status as Prometheus gauges on host:port (0: a free port); returns the status callback and the
    URL the metrics are served at."""
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    registry = CollectorRegistry()
    waiting = Gauge("signflow_schedule_records_waiting", "New records in the inbox not ingested yet", registry=registry)
    running = Gauge("signflow_schedule_running", "1 while a cycle runs", registry=registry)
    last_start = Gauge("signflow_schedule_last_cycle_start_timestamp_seconds", "Start of the last cycle",
                       registry=registry)
    last_ok = Gauge("signflow_schedule_last_cycle_success", "1 when the last cycle finished its work",
                    registry=registry)
    duration = Gauge("signflow_schedule_last_cycle_duration_seconds", "Duration of the last cycle", registry=registry)
    next_due = Gauge("signflow_schedule_next_due_timestamp_seconds", "When the interval makes the next cycle due",
                     registry=registry)
    pushed = Gauge("signflow_schedule_last_pushed_version", "Version the last pushing cycle wrote", registry=registry)
    cycles = Gauge("signflow_schedule_cycles", "Cycles since the status file was created, by result", ["result"],
                   registry=registry)
    last_poll = Gauge("signflow_schedule_last_poll_timestamp_seconds", "When the scheduler last counted the inbox",
                      registry=registry)
    server, _ = start_http_server(port, addr=host, registry=registry)
    url = f"http://{host}:{server.server_port}/metrics"

    def update(status: dict[str, Any]) -> None:
        waiting.set(status.get("records_waiting") or 0)
        running.set(1 if status.get("state") == "running" else 0)
        last = status.get("last_cycle") or {}
        if last:
            last_start.set(last["started_at"])
            last_ok.set(1 if last["result"] in FINISHED else 0)
            duration.set(last["duration_seconds"])
        next_due.set(status.get("next_due_at") or 0)
        if status.get("last_push") and str(status["last_push"].get("version", "")).isdigit():
            pushed.set(int(status["last_push"]["version"]))
        for result, count in (status.get("cycles") or {}).items():
            cycles.labels(result).set(count)
        last_poll.set(status.get("last_poll_at") or 0)

    return update, url


# -- command line ----------------------------------------------------------------


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=parse_duration, default="6h",
                        help="run at least this often when new data waits, e.g. 30m, 6h (default: 6h)")
    parser.add_argument("--min-new-records", type=int, default=ScheduleSettings.min_new_records,
                        help="run as soon as this many new records wait in the inbox (default: %(default)s)")
    parser.add_argument("--poll", type=parse_duration, default="30s",
                        help="how often to count the inbox (default: 30s)")
    parser.add_argument("--retry", type=parse_duration, default="5m",
                        help="after a failed or busy cycle, wait this long before the next (default: 5m)")
    parser.add_argument("--once", action="store_true", help="run one cycle now and exit with its result")
    parser.add_argument("--max-cycles", type=int, help="exit after this many cycles")
    parser.add_argument("--metrics_port", type=int, default=None,
                        help="serve Prometheus metrics of the schedule on this port, 0 for any free one (logged and "
                             "recorded in the status as scheduler.metrics_url; default: off)")
    parser.add_argument("--metrics_host", default="127.0.0.1", help="interface for --metrics_port")
    parser.add_argument("--config", type=Path, help="JSON settings file, passed on to every run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one setting, passed on to every run (repeatable)")
    parser.add_argument("--beam-mode", help="passed on to every run (see signflow run --help)")
    parser.add_argument("--workers", type=int, help="passed on to every run (see signflow run --help)")
    parser.add_argument("--cycle-prefix", type=shlex.split, default=[], metavar="COMMAND",
                        help="run each cycle's `signflow run` under this command, split as a shell would, e.g. "
                             "'nice -n 10' or 'timeout 4h'; it must pass the exit code on. With a prefix each "
                             "cycle's process starts when the cycle is due, as with --no-start-in-advance")
    parser.add_argument("--no-start-in-advance", dest="start_in_advance", action="store_false",
                        help="start each cycle's process only when the cycle is due (default: the next cycle's "
                             "process starts when the last ends and loads TensorFlow and TFX while it waits: "
                             "about 10 s less per cycle, about 0.75 GB of memory while idle)")


def schedule_main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.min_new_records < 1:
        print("signflow schedule: error: --min-new-records must be >= 1", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, args.overrides)  # fails here, not in the first cycle
    except (OSError, ValueError) as err:
        print(f"signflow schedule: error: invalid settings: {err}", file=sys.stderr)
        return 2
    run_args: list[str] = []
    if args.config:
        run_args += ["--config", str(args.config.resolve())]
    for item in args.overrides:
        run_args += ["--set", item]
    if args.beam_mode:
        run_args += ["--beam-mode", args.beam_mode]
    if args.workers is not None:
        run_args += ["--workers", str(args.workers)]
    settings = ScheduleSettings(
        interval_seconds=args.interval, min_new_records=args.min_new_records, poll_seconds=args.poll,
        retry_seconds=args.retry, once=args.once, max_cycles=args.max_cycles, run_args=tuple(run_args),
        cycle_prefix=tuple(args.cycle_prefix), start_in_advance=args.start_in_advance)
    on_status, metrics_url = None, None
    if args.metrics_port is not None:
        on_status, metrics_url = serve_metrics(args.metrics_port, args.metrics_host)
        log.info("Prometheus metrics on %s", metrics_url)
    scheduler = Scheduler(config, settings, on_status=on_status)
    scheduler.status["scheduler"]["metrics_url"] = metrics_url

    def stop(signum, _frame):
        log.info("%s received: stopping after the current step", signal.Signals(signum).name)
        scheduler.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return scheduler.run()
