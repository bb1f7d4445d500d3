"""The training server's loop, its locks and its status, without training.

The scheduler is real; each cycle here is ingestion's real collection step (the
part of a run that takes the inbox), so that what the scheduler counts as
waiting really drops after a cycle. tests/e2e runs it with the whole pipeline.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from components.ingest.landing import IngestPaths, collect_new_files, waiting
from pipeline.configs import PipelineConfig
from pipeline.run_lock import FileLock, LockHeld, holder
from pipeline.schedule import (BUSY, FAILED, CycleResult, Scheduler, ScheduleSettings, parse_duration, read_status,
                               status_path)
from tests.fixtures.tiny_model import make_image_bytes

REPO = Path(__file__).resolve().parents[2]


def _config(root: Path) -> PipelineConfig:
    return PipelineConfig(pipeline_root=root / "pipeline_root", inbox_dir=root / "inbox", sample_dir=None,
                          serving_dir=root / "serving_model")


def _paths(config: PipelineConfig) -> IngestPaths:
    return config.ingest_paths


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
        self.calls.append(time.time())
        result = self.results.pop(0) if self.results else "pushed"
        if result == FAILED:
            return CycleResult(FAILED, 1, {"result": FAILED, "error": "RuntimeError: the Trainer ran out of memory"})
        paths = _paths(self.config)
        collection = collect_new_files(paths)
        Path(paths.seen_file(collection.latest_span)).parent.mkdir(parents=True, exist_ok=True)
        Path(paths.seen_file(collection.latest_span)).write_text("")
        version = str(1000 + len(self.calls))
        return CycleResult(result, 0, {"result": result, "run_id": f"run-{len(self.calls)}",
                                       "pushed_version": version if result == "pushed" else None})


def _run_in_thread(scheduler: Scheduler) -> threading.Thread:
    thread = threading.Thread(target=scheduler.run, daemon=True)
    thread.start()
    return thread


def _wait(predicate, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


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
    time.sleep(0.5)  # ten polls: 3 < 5 records, and the interval is an hour away
    assert len(cycle.calls) == 1
    assert read_status(status_path(config))["records_waiting"] == 3
    _drop(config, "more.jsonl", 2, seed=2)
    thread.join(timeout=20)
    assert not thread.is_alive() and len(cycle.calls) == 2
    status = read_status(status_path(config))
    assert status["state"] == "stopped"
    assert status["last_cycle"]["trigger"] == "5 new records"
    assert status["last_cycle"]["result"] == "pushed" and status["last_push"]["version"] == "1002"
    assert status["cycles"] == {"pushed": 2} and status["records_waiting"] == 0


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
        time.sleep(1.0)  # three intervals with nothing new
        assert len(cycle.calls) == 1
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
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"pipeline_root": str(config.pipeline_root), "inbox_dir": str(config.inbox_dir),
                                       "sample_dir": None, "serving_dir": str(config.serving_dir)}))
    _drop(config, "a.jsonl", 1)
    with FileLock(config.run_root / "run.lock", purpose="make run-local"):
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "schedule", "--once", "--config", str(config_file)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 75, done.stderr
    last = read_status(status_path(config))["last_cycle"]
    assert last["result"] == BUSY and "make run-local" in last["error"]
    assert "cycle skipped" in done.stderr


def test_lock_left_by_a_killed_process_is_taken_over(tmp_path, caplog):
    lock_path = tmp_path / "run.lock"
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pipeline.run_lock import FileLock; "
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
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"pipeline_root": str(config.pipeline_root), "inbox_dir": str(config.inbox_dir),
                                       "sample_dir": None, "serving_dir": str(config.serving_dir)}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    text = subprocess.run([sys.executable, "-m", "pipeline.cli", "status", "--config", str(config_file)],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env=env, check=True).stdout
    assert "training server: not running" in text
    assert "waiting in the inbox: 3 records in 1 files" in text
    assert "last cycle: pushed" in text and "pushed version 1001" in text
    report = json.loads(subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "status", "--json", "--config", str(config_file)],
        cwd=REPO, capture_output=True, text=True, timeout=60, env=env, check=True).stdout)
    assert report["records_waiting"] == 3 and report["scheduler_alive"] is False
    assert report["status"]["last_cycle"]["trigger"] == "once"
