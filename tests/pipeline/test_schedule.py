"""The training server's loop, its locks and its status, without training.

The scheduler is real; in the loop tests each cycle is ingestion's real
collection step (the part of a run that takes the inbox), so that what the
scheduler counts as waiting really drops after a cycle. The process tests run
`signflow schedule` itself, whose cycles are real `signflow run` children kept
cheap: the run lock is held (the cycle is busy at once), or the child is stopped
or killed while it still loads TFX, or `--cycle-prefix` puts a stand-in in front
of it. tests/e2e runs it with the whole pipeline.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from components.ingest.landing import IngestPaths, collect_new_files, waiting
from pipeline.definition.configs import PipelineConfig
from pipeline.training_server.run_lock import RUN_LOCK, FileLock, LockHeld, holder
from pipeline.training_server.run_summary import CHECK_FAILED, RunSummary, SignerResult
from pipeline.training_server.schedule import (BUSY, FAILED, FULL_AFTER_FAST, STOP_GRACE_SECONDS, CycleResult, Scheduler,
                                               ScheduleSettings,
                               parse_duration, read_status, scheduler_lock_path, status_path)
from pipeline.training_server.status import status_lines
from tests.fixtures.tiny_model import make_image_bytes

REPO = Path(__file__).resolve().parents[2]
# How long a wait may take before it counts as hung. Not a speed requirement: a child that starts
# `signflow run` imports TFX, TFMA and Beam first, which takes half a minute on a loaded 2-core machine.
GUARD = 180


def _config(root: Path) -> PipelineConfig:
    return PipelineConfig(pipeline_root=root / "pipeline_root", inbox_dir=root / "inbox", sample_dir=None,
                          serving_dir=root / "serving_model")


def _config_file(root: Path, config: PipelineConfig) -> Path:
    path = root / "config.json"
    path.write_text(json.dumps({"pipeline_root": str(config.pipeline_root), "inbox_dir": str(config.inbox_dir),
                                "sample_dir": None, "serving_dir": str(config.serving_dir)}))
    return path


def _paths(config: PipelineConfig) -> IngestPaths:
    return config.paths().ingest


def _drop(config: PipelineConfig, name: str, records: int, seed: int = 0) -> None:
    import base64

    config.inbox_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"image": {"b64": base64.b64encode(make_image_bytes(seed=seed * 1000 + i)).decode()},
                         "label": f"signer_{i % 3:02d}"}) for i in range(records)]
    (config.inbox_dir / name).write_text("\n".join(lines) + "\n")


class CollectingCycle:
    """A cycle that takes the inbox into a span (and marks it processed, as the executor would)."""

    def __init__(self, config: PipelineConfig, results: list[str] | None = None):
        self.config = config
        self.results = list(results or [])
        self.calls: list[float] = []

    def __call__(self, summary_json: Path, stop: threading.Event) -> CycleResult:
        result = self.results.pop(0) if self.results else "pushed"
        if result == FAILED:
            self.calls.append(time.time())
            return CycleResult(FAILED, 1, {"result": FAILED, "error": "RuntimeError: the Trainer ran out of memory"})
        paths = _paths(self.config)
        collection = collect_new_files(paths)
        Path(paths.seen_file(collection.latest_span)).parent.mkdir(parents=True, exist_ok=True)
        Path(paths.seen_file(collection.latest_span)).write_text("")
        # Counted once the inbox is taken, so a test that drops files after seeing a call knows they wait.
        self.calls.append(time.time())
        version = str(1000 + len(self.calls))
        return CycleResult(result, 0, {"result": result, "run_id": f"run-{len(self.calls)}",
                                       "pushed_version": version if result == "pushed" else None})


def _run_in_thread(scheduler: Scheduler) -> threading.Thread:
    thread = threading.Thread(target=scheduler.run, daemon=True)
    thread.start()
    return thread


def _wait(predicate, timeout: float = GUARD, what: str = "condition"):
    """The predicate's first truthy value; `timeout` is a hang guard, not a speed requirement."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _status_when(config: PipelineConfig, predicate, what: str, timeout: float = GUARD) -> dict:
    """The first status file the scheduler writes that satisfies `predicate`."""
    def check():
        status = read_status(status_path(config))
        return status if status and predicate(status) else None
    return _wait(check, timeout=timeout, what=what)


def _wait_for_polls(config: PipelineConfig, after: int, count: int) -> dict:
    """The status once the scheduler has counted the inbox `count` more times than in poll `after`."""
    return _status_when(config, lambda status: status["polls"] >= after + count, f"{count} polls after poll {after}")


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("30m", 1800), ("6h", 21600), ("1d", 86400),
                                          ("0.5s", 0.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "6 hours", "-1m", "1w", "m"])
def test_bad_durations_are_refused(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_waiting_counts_records_not_yet_collected(tmp_path):
    config = _config(tmp_path)
    _drop(config, "a.jsonl", 4)
    _drop(config, "b.jsonl", 2, seed=1)
    (config.inbox_dir / "copy-of-a.jsonl").write_bytes((config.inbox_dir / "a.jsonl").read_bytes())
    (config.inbox_dir / ".being-written.jsonl").write_text("{}\n")  # skipped, as collection skips it
    assert waiting(_paths(config)) == type(waiting(_paths(config)))(files=2, records=6)
    collect_new_files(_paths(config))
    assert waiting(_paths(config)).records == 0


def test_cycle_starts_when_enough_records_arrive(tmp_path):
    config = _config(tmp_path)
    cycle = CollectingCycle(config)
    scheduler = Scheduler(config, ScheduleSettings(interval_seconds=3600, min_new_records=5, poll_seconds=0.05,
                                                   max_cycles=2), run_cycle=cycle)
    _drop(config, "first.jsonl", 6)
    thread = _run_in_thread(scheduler)
    _wait(lambda: len(cycle.calls) == 1, what="the first cycle")
    _drop(config, "few.jsonl", 3, seed=1)
    # Polls that saw the 3 records (3 < 5, and the interval is an hour away) and started nothing.
    seen = _status_when(config, lambda status: status["records_waiting"] == 3, "a poll counting the 3 new records")
    status = _wait_for_polls(config, after=seen["polls"], count=5)
    assert len(cycle.calls) == 1 and status["state"] == "idle" and status["records_waiting"] == 3
    _drop(config, "more.jsonl", 2, seed=2)
    thread.join(timeout=20)
    assert not thread.is_alive() and len(cycle.calls) == 2
    status = read_status(status_path(config))
    assert status["state"] == "stopped"
    assert status["last_cycle"]["trigger"] == "5 new records"
    assert status["last_cycle"]["result"] == "pushed" and status["last_push"]["version"] == "1002"
    assert status["cycles"] == {"pushed": 2} and status["records_waiting"] == 0


def test_a_fast_cycle_the_gate_refused_is_followed_at_once_by_a_full_cycle(tmp_path):
    """The pipeline picks fast or full itself; the scheduler only forces a full cycle right after a fast one whose
    candidate was not blessed, even with nothing new waiting and the interval an hour away."""
    config = _config(tmp_path)
    kinds = ["fast", "full"]
    calls: list[tuple[str, ...]] = []

    def cycle(summary_json: Path, stop: threading.Event) -> CycleResult:
        calls.append(scheduler.cycle_args)
        collection = collect_new_files(_paths(config))
        if collection.latest_span is not None:
            Path(_paths(config).seen_file(collection.latest_span)).parent.mkdir(parents=True, exist_ok=True)
            Path(_paths(config).seen_file(collection.latest_span)).write_text("")
        kind = kinds.pop(0)
        result = "not_blessed" if kind == "fast" else "pushed"
        return CycleResult(result, 0, {"result": result, "training": {"cycle": {"kind": kind, "reason": "test"}},
                                       "pushed_version": "7" if result == "pushed" else None})

    scheduler = Scheduler(config, ScheduleSettings(interval_seconds=3600, min_new_records=5, poll_seconds=0.05,
                                                   max_cycles=2), run_cycle=cycle)
    _drop(config, "first.jsonl", 6)
    thread = _run_in_thread(scheduler)
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert calls == [(), ("--set", "trainer.cycle=full")]
    status = read_status(status_path(config))
    assert status["last_cycle"]["trigger"] == FULL_AFTER_FAST
    assert status["last_cycle"]["cycle"]["kind"] == "full" and status["last_cycle"]["result"] == "pushed"


def test_a_failed_cycle_is_recorded_and_the_schedule_goes_on(tmp_path, caplog):
    config = _config(tmp_path)
    cycle = CollectingCycle(config, results=[FAILED, "not_blessed"])
    scheduler = Scheduler(config, ScheduleSettings(interval_seconds=3600, min_new_records=1, poll_seconds=0.05,
                                                   retry_seconds=0.6, max_cycles=2), run_cycle=cycle)
    _drop(config, "a.jsonl", 2)
    with caplog.at_level("INFO", logger="signflow.schedule"):
        scheduler.run()
    # The retry waits out --retry, then the records still waiting start the next cycle.
    assert len(cycle.calls) == 2 and cycle.calls[1] - cycle.calls[0] >= 0.6
    assert "cycle failed" in caplog.text and "the Trainer ran out of memory" in caplog.text
    status = read_status(status_path(config))
    assert status["cycles"] == {FAILED: 1, "not_blessed": 1}
    assert status["last_cycle"]["result"] == "not_blessed" and status["last_push"] is None


def test_interval_with_nothing_new_is_skipped(tmp_path, caplog):
    config = _config(tmp_path)
    cycle = CollectingCycle(config)
    settings = ScheduleSettings(interval_seconds=0.3, min_new_records=100, poll_seconds=0.05)
    _drop(config, "a.jsonl", 2)
    scheduler = Scheduler(config, settings, run_cycle=cycle)
    with caplog.at_level("INFO", logger="signflow.schedule"):
        thread = _run_in_thread(scheduler)
        _wait(lambda: len(cycle.calls) == 1, what="the first cycle")  # 2 < 100 records, but never ran: runs
        # The interval comes round with nothing new: the skip is recorded, then polls go on and start nothing.
        skipped = _status_when(config, lambda status: status.get("skipped_due_at") or len(cycle.calls) > 1,
                               "the skipped interval")
        assert len(cycle.calls) == 1, "a cycle ran at the interval with nothing new"
        status = _wait_for_polls(config, after=skipped["polls"], count=5)
        assert len(cycle.calls) == 1 and status["records_waiting"] == 0
        assert status["skipped_due_at"] == status["next_due_at"] and status["last_poll_at"] > status["next_due_at"]
        _drop(config, "b.jsonl", 1, seed=3)  # below --min-new-records: waits for the interval
        _wait(lambda: len(cycle.calls) == 2, what="the interval cycle")
        scheduler.stop.set()
        thread.join(timeout=10)
    assert "nothing new since the last cycle: skipped" in caplog.text
    assert read_status(status_path(config))["last_cycle"]["trigger"] == "interval (1 new records)"


def test_a_second_scheduler_refuses_to_start(tmp_path):
    config = _config(tmp_path)
    first = Scheduler(config, ScheduleSettings(poll_seconds=0.05), run_cycle=CollectingCycle(config))
    thread = _run_in_thread(first)
    _wait(lambda: read_status(status_path(config)) is not None, what="the first scheduler")
    second = Scheduler(config, ScheduleSettings(poll_seconds=0.05, once=True), run_cycle=CollectingCycle(config))
    assert second.run() == 75
    first.stop.set()
    thread.join(timeout=10)


def test_busy_run_lock_makes_the_cycle_busy_not_failed(tmp_path):
    """`signflow run` as the cycle, while a manual run holds the lock: the child exits 75, nothing is run twice."""
    config = _config(tmp_path)
    config_file = _config_file(tmp_path, config)
    _drop(config, "a.jsonl", 1)
    with FileLock(config.run_root / "run.lock", purpose="make run-local"):
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "schedule", "--once", "--config", str(config_file)],
            cwd=REPO, capture_output=True, text=True, timeout=GUARD,
            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 75, done.stderr
    last = read_status(status_path(config))["last_cycle"]
    assert last["result"] == BUSY and "make run-local" in last["error"]
    assert "cycle skipped" in done.stderr


def test_lock_left_by_a_killed_process_is_taken_over(tmp_path, caplog):
    lock_path = tmp_path / "run.lock"
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pipeline.training_server.run_lock import FileLock; "
         f"FileLock({str(lock_path)!r}, 'crashing run').acquire(); print('held', flush=True); time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(LockHeld, match=f"pid {child.pid}.*crashing run"):
        FileLock(lock_path, "second").acquire()
    assert holder(lock_path)["pid"] == child.pid
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert holder(lock_path) is None  # its record is still there, its process is not: free
    with caplog.at_level("WARNING"):
        lock = FileLock(lock_path, "next run").acquire()
    assert lock.took_over["pid"] == child.pid
    assert f"pid {child.pid}" in caplog.text and "ended without releasing it" in caplog.text
    lock.release()
    assert holder(lock_path) is None
    # Released cleanly: the next holder takes over nothing.
    with FileLock(lock_path, "after") as again:
        assert again.took_over is None


def test_status_command_reports_waiting_records_and_the_last_cycle(tmp_path):
    config = _config(tmp_path)
    cycle = CollectingCycle(config)
    Scheduler(config, ScheduleSettings(once=True), run_cycle=cycle).run()
    _drop(config, "later.jsonl", 3, seed=5)
    config_file = _config_file(tmp_path, config)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    text = subprocess.run([sys.executable, "-m", "pipeline.cli", "status", "--config", str(config_file)],
                          cwd=REPO, capture_output=True, text=True, timeout=GUARD, env=env, check=True).stdout
    assert "training server: not running" in text
    assert "waiting in the inbox: 3 records in 1 files" in text
    assert "last cycle: pushed" in text and "pushed version 1001" in text
    report = json.loads(subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "status", "--json", "--config", str(config_file)],
        cwd=REPO, capture_output=True, text=True, timeout=GUARD, env=env, check=True).stdout)
    assert report["records_waiting"] == 3 and report["scheduler_alive"] is False
    assert report["status"]["last_cycle"]["trigger"] == "once"


def test_status_shows_the_last_cycles_signers_and_serving_check(tmp_path):
    config = _config(tmp_path)
    signers = [SignerResult("signer_00", 1, 2, 0.5, 1.0, judged=False),
               SignerResult("signer_01", 5, 8, 0.625, 0.88), SignerResult("signer_02", 8, 8, 1.0, 1.0)]
    summary = RunSummary(run_id="run-1", blessed=True, signers=signers, min_signer_examples=3,
                         infra_blessed=False, infra_reason="version 3 did not load", serving_check=CHECK_FAILED)

    def cycle(summary_json: Path, stop: threading.Event) -> CycleResult:
        return CycleResult(summary.result, 0, summary.to_json())  # what `signflow run --summary-json` writes

    Scheduler(config, ScheduleSettings(once=True), run_cycle=cycle).run()
    status = read_status(status_path(config))
    last = status["last_cycle"]
    assert [s["signer"] for s in last["weakest_signers"]] == ["signer_00", "signer_01", "signer_02"]
    assert [s["signer"] for s in last["signers_too_few_examples"]] == ["signer_00"]
    assert (last["serving_check"], last["infra_reason"]) == (CHECK_FAILED, "version 3 did not load")
    report = {"status": status, "scheduler": None, "scheduler_alive": False, "run_in_progress": None,
              "records_waiting": 0, "files_waiting": 0, "served_versions": []}
    lines = status_lines(report)
    assert "  weakest signers: signer_00 1/2 (not judged), signer_01 5/8 (upper bound 0.88), " \
           "signer_02 8/8 (upper bound 1.00)" in lines
    assert "  too few eval examples to judge (< 3): signer_00 1/2" in lines
    assert "  serving check: failed: version 3 did not load" in lines


# -- `signflow schedule` as a process ------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie waiting to be reaped has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _live_processes(field: int, value: int) -> list[int]:
    """Live processes whose /proc/<pid>/stat has `value` at `field` (counted after the name: 1 parent, 2 group)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # ended while we looked
        if fields[0] != "Z" and int(fields[field]) == value:
            found.append(int(stat_file.parent.name))
    return found


def _group_members(pgid: int) -> list[int]:
    return _live_processes(2, pgid)


@pytest.fixture
def processes():
    """Starts `signflow schedule`; ends whatever a failing test leaves running (schedulers, cycles, their helpers)."""
    started: list[subprocess.Popen] = []
    pids: list[int] = []

    class Processes:
        def schedule(self, config_file: Path, *args: str, log: Path) -> subprocess.Popen:
            with open(log, "w") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "pipeline.cli", "schedule", "--config", str(config_file), *args],
                    cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
            started.append(process)
            return process

        def track(self, pid: int) -> int:
            pids.append(pid)
            return pid

    yield Processes()
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()
    for pid in pids:
        for member in _group_members(pid) + ([pid] if _alive(pid) else []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)


def _cycle_child(config: PipelineConfig) -> int:
    """The pid of the cycle's `signflow run`, once it holds the run lock (it then loads TFX for a while)."""
    return _wait(lambda: (holder(config.run_root / RUN_LOCK) or {}).get("pid"),
                 what="the cycle's signflow run to take the run lock")


def test_sigterm_stops_the_running_cycle_first_and_leaves_no_process(tmp_path, processes):
    config = _config(tmp_path)
    _drop(config, "a.jsonl", 2)
    log = tmp_path / "schedule.log"
    scheduler = processes.schedule(_config_file(tmp_path, config), "--interval", "1h", "--min-new-records", "1",
                                   "--poll", "0.1s", log=log)
    child = processes.track(_cycle_child(config))
    assert child != scheduler.pid and read_status(status_path(config))["state"] == "running"

    scheduler.send_signal(signal.SIGTERM)
    try:
        code = scheduler.wait(timeout=STOP_GRACE_SECONDS + 60)  # hang guard: a stop must not wait for the run
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the scheduler did not stop; its cycle is {'alive' if _alive(child) else 'gone'}:\n"
                             + log.read_text()[-3000:]) from None
    text = log.read_text()
    assert code == 0, text  # documented: a stopped scheduler exits 0
    assert "SIGTERM received" in text
    assert f"asking the running cycle (pid {child}) to stop" in text
    assert not _alive(child) and _group_members(child) == [], "the cycle outlived the scheduler"
    assert holder(config.run_root / RUN_LOCK) is None and holder(scheduler_lock_path(config)) is None
    status = read_status(status_path(config))
    assert status["state"] == "stopped" and status["current_cycle"] is None
    last = status["last_cycle"]
    assert last["result"] == FAILED and last["exit_code"] == -signal.SIGTERM
    assert last["error"].startswith("the scheduler was asked to stop: ") and "killed by SIGTERM" in last["error"]
    assert status["cycles"] == {FAILED: 1}


def test_a_cycle_killed_by_a_signal_is_a_failed_cycle_with_its_reason(tmp_path, processes):
    config = _config(tmp_path)
    _drop(config, "a.jsonl", 2)
    log = tmp_path / "schedule.log"
    scheduler = processes.schedule(_config_file(tmp_path, config), "--once", log=log)
    child = processes.track(_cycle_child(config))
    os.kill(child, signal.SIGKILL)  # what the kernel's OOM killer does to a run that takes too much memory
    assert scheduler.wait(timeout=GUARD) == 1, log.read_text()  # --once: the cycle failed
    last = read_status(status_path(config))["last_cycle"]
    assert last["result"] == FAILED and last["exit_code"] == -signal.SIGKILL
    assert last["error"] == f"signflow run was killed by SIGKILL (exit code {-signal.SIGKILL}) before writing its summary"
    assert read_status(status_path(config))["cycles"] == {FAILED: 1}
    assert "cycle failed after" in log.read_text() and "killed by SIGKILL" in log.read_text()
    assert holder(config.run_root / RUN_LOCK) is None  # the kernel released the killed run's lock


def test_a_cycle_that_exits_0_without_a_summary_is_a_failed_cycle(tmp_path, processes):
    config = _config(tmp_path)
    _drop(config, "a.jsonl", 2)
    log = tmp_path / "schedule.log"
    # A prefix that swallows its command: the "run" exits 0 and has done nothing.
    swallow = shlex.join([sys.executable, "-c", "import sys; sys.exit(0)"])
    scheduler = processes.schedule(_config_file(tmp_path, config), "--once", "--cycle-prefix", swallow, log=log)
    assert scheduler.wait(timeout=GUARD) == 1, log.read_text()
    status = read_status(status_path(config))
    last = status["last_cycle"]
    assert last["result"] == FAILED and last["exit_code"] == 0
    assert last["error"] == "signflow run ended with exit code 0 without writing its summary"
    assert status["cycles"] == {FAILED: 1} and status["last_push"] is None
    assert "cycle failed after" in log.read_text()


def test_processes_a_cycle_leaves_behind_are_ended(tmp_path, processes):
    config = _config(tmp_path)
    _drop(config, "a.jsonl", 2)
    log = tmp_path / "schedule.log"
    pid_file = tmp_path / "helper.pid"
    # The cycle starts a helper (as Beam starts workers) and dies without stopping it.
    leaves_a_helper = shlex.join([sys.executable, "-c", (
        "import pathlib, subprocess, sys; "
        "helper = subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()']); "
        f"pathlib.Path({str(pid_file)!r}).write_text(str(helper.pid)); sys.exit(3)")])
    scheduler = processes.schedule(_config_file(tmp_path, config), "--once", "--cycle-prefix", leaves_a_helper, log=log)
    assert scheduler.wait(timeout=GUARD) == 1, log.read_text()
    helper = processes.track(int(pid_file.read_text()))
    assert not _alive(helper), "the cycle's helper outlived its cycle"
    assert "left behind in its process group" in log.read_text()
    assert read_status(status_path(config))["last_cycle"]["error"] == \
        "signflow run ended with exit code 3 without writing its summary"


def test_a_busy_cycle_is_retried_after_retry(tmp_path, processes):
    config = _config(tmp_path)
    _drop(config, "a.jsonl", 1)
    log = tmp_path / "schedule.log"
    retry = 2.0
    with FileLock(config.run_root / RUN_LOCK, purpose="make run-local"):
        scheduler = processes.schedule(_config_file(tmp_path, config), "--interval", "1h", "--min-new-records", "1",
                                       "--poll", "0.1s", "--retry", f"{retry:g}s", "--max-cycles", "2", log=log)
        # The poll after the first cycle: 1 record waits (>= --min-new-records), yet --retry holds it back.
        after_first = _status_when(config, lambda status: status["cycles"].get(BUSY) == 1 and status["polls"] >= 2,
                                   "the poll after the first busy cycle")
        assert scheduler.wait(timeout=GUARD) == 0, log.read_text()  # --max-cycles 2
    first, second = after_first["last_cycle"], read_status(status_path(config))["last_cycle"]
    assert second["started_at"] >= first["finished_at"] + retry
    assert first["result"] == second["result"] == BUSY and "make run-local" in second["error"]
    assert after_first["next_due_at"] == pytest.approx(first["finished_at"] + retry)
    assert read_status(status_path(config))["cycles"] == {BUSY: 2}
    assert log.read_text().count("cycle skipped: ") == 2 and f"next try in {retry:g}s" in log.read_text()


def test_a_cycle_runs_in_the_process_started_before_it_was_due(tmp_path, processes):
    config = _config(tmp_path)
    log = tmp_path / "schedule.log"
    with FileLock(config.run_root / RUN_LOCK, purpose="make run-local"):  # the cycle is busy once it has started
        scheduler = processes.schedule(_config_file(tmp_path, config), "--interval", "1h", "--min-new-records", "1",
                                       "--poll", "0.1s", "--retry", "1h", log=log)
        first = processes.track(_status_when(config, lambda status: status["ready_process_pid"],
                                             "the process for the first cycle")["ready_process_pid"])
        idle = _wait_for_polls(config, 0, 3)
        assert idle["cycles"] == {} and idle["ready_process_pid"] == first and _alive(first)

        _drop(config, "a.jsonl", 1)  # the cycle is due from now on
        status = _status_when(config, lambda status: status["cycles"].get(BUSY) == 1 and status["ready_process_pid"],
                              "the busy cycle and the process for the next")
    assert status["last_cycle"]["process"] == {"pid": first, "started_in_advance": True}, log.read_text()
    # The run's own logging is set up as in a process started for the cycle (TFX's imports came first here).
    assert " ERROR signflow.run: not running: " in log.read_text()
    assert not _alive(first)
    second = processes.track(status["ready_process_pid"])
    assert second != first and _alive(second)

    scheduler.send_signal(signal.SIGTERM)
    assert scheduler.wait(timeout=GUARD) == 0, log.read_text()
    assert not _alive(second) and _group_members(second) == [], "the waiting process outlived the scheduler"
    assert read_status(status_path(config))["ready_process_pid"] is None


def test_a_process_started_in_advance_that_ended_is_noticed_at_the_next_poll_and_the_cycle_starts_its_own(
        tmp_path, processes):
    config = _config(tmp_path)
    log = tmp_path / "schedule.log"
    with FileLock(config.run_root / RUN_LOCK, purpose="make run-local"):
        scheduler = processes.schedule(_config_file(tmp_path, config), "--interval", "1h", "--min-new-records", "1",
                                       "--poll", "0.1s", "--retry", "1h", log=log)
        ready = processes.track(_status_when(config, lambda status: status["ready_process_pid"],
                                             "the process for the first cycle")["ready_process_pid"])
        os.kill(ready, signal.SIGKILL)  # as the kernel's OOM killer would
        _wait(lambda: not _alive(ready), what="the killed process to end")
        polled = _status_when(config, lambda status: status["ready_process_pid"] is None,
                              "the status to stop naming the killed process")
        # Not replaced before the next cycle: later polls name no process.
        assert _wait_for_polls(config, polled["polls"], 3)["ready_process_pid"] is None
        _drop(config, "a.jsonl", 1)
        status = _status_when(config, lambda status: status["cycles"].get(BUSY) == 1 and status["ready_process_pid"],
                              "the busy cycle and, after it, a process for the next")
    last = status["last_cycle"]
    processes.track(last["process"]["pid"])
    assert last["result"] == BUSY and last["process"]["started_in_advance"] is False
    assert last["process"]["pid"] != ready
    assert _alive(processes.track(status["ready_process_pid"]))
    scheduler.send_signal(signal.SIGTERM)
    assert scheduler.wait(timeout=GUARD) == 0, log.read_text()
    assert (f"the cycle process started in advance (pid {ready}) ended while waiting (exit code {-signal.SIGKILL}): "
            "the next cycle starts its own") in log.read_text()


@pytest.mark.parametrize("option", [("--no-start-in-advance",), ("--cycle-prefix", "nice -n 5")],
                         ids=["option", "cycle-prefix"])
def test_without_start_in_advance_no_process_waits(tmp_path, processes, option):
    config = _config(tmp_path)
    log = tmp_path / "schedule.log"
    scheduler = processes.schedule(_config_file(tmp_path, config), "--interval", "1h", "--poll", "0.1s", *option,
                                   log=log)
    assert _wait_for_polls(config, 0, 3)["ready_process_pid"] is None
    assert _live_processes(1, scheduler.pid) == []  # none of the scheduler's children
    scheduler.send_signal(signal.SIGTERM)
    assert scheduler.wait(timeout=GUARD) == 0, log.read_text()


def _scrape(url: str) -> dict[str, float]:
    """Prometheus text from `url` as {name or name{label=value}: value}."""
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def test_metrics_port_serves_the_schedulers_gauges_over_http(tmp_path, processes):
    config = _config(tmp_path)
    config_file = _config_file(tmp_path, config)
    _drop(config, "a.jsonl", 5)
    log = tmp_path / "schedule.log"
    with FileLock(config.run_root / RUN_LOCK, purpose="make run-local"):  # the cycle is busy at once
        scheduler = processes.schedule(config_file, "--interval", "1h", "--min-new-records", "1", "--poll", "0.1s",
                                       "--retry", "1h", "--metrics_port", "0", log=log)
        # The first poll after the cycle: the gauges are published with each status change, not with each poll.
        status = _status_when(config, lambda status: status["cycles"].get(BUSY) == 1 and status["state"] == "idle"
                              and status["next_due_at"] and status["last_poll_at"] > status["last_cycle"]["finished_at"],
                              "the first poll after the busy cycle")
    url = status["scheduler"]["metrics_url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics") and ":0/" not in url
    assert f"Prometheus metrics on {url}" in log.read_text()
    metrics = _scrape(url)
    assert metrics["signflow_schedule_records_waiting"] == status["records_waiting"] == 5
    assert metrics['signflow_schedule_cycles{result=busy}'] == 1
    assert metrics["signflow_schedule_running"] == 0
    assert metrics["signflow_schedule_last_cycle_success"] == 0
    assert metrics["signflow_schedule_last_cycle_start_timestamp_seconds"] == status["last_cycle"]["started_at"]
    assert metrics["signflow_schedule_next_due_timestamp_seconds"] == status["next_due_at"]
    assert metrics["signflow_schedule_last_poll_timestamp_seconds"] >= status["last_cycle"]["finished_at"]

    # Live values, not a snapshot: new records show up in the gauge.
    _drop(config, "b.jsonl", 3, seed=1)
    _wait(lambda: _scrape(url)["signflow_schedule_records_waiting"] == 8, what="the gauge to count 8 records")
    report = subprocess.run([sys.executable, "-m", "pipeline.cli", "status", "--config", str(config_file)],
                            cwd=REPO, capture_output=True, text=True, timeout=GUARD, check=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert f"training server: running (pid {scheduler.pid})" in report and "inbox last checked: " in report

    scheduler.send_signal(signal.SIGTERM)
    assert scheduler.wait(timeout=GUARD) == 0, log.read_text()
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=10)
