"""ConcurrentDagRunner (pipeline/runners/concurrent_dag.py): real TFX pipelines of Python function components, run
in this process with a real SQLite ML Metadata store.

The diamond source -> (left, right) -> sink: left and right meet at a barrier, which
they pass only when both run at the same time; the sink starts only after both.
(No `from __future__ import annotations`: TFX reads the components' type hints as
objects.)
"""
from typing import List

import logging
import threading
from pathlib import Path

import pytest
from ml_metadata.proto import metadata_store_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.orchestration import metadata
from tfx.orchestration.pipeline import Pipeline
from tfx.types.standard_artifacts import String

from pipeline.runners import concurrent_dag
from pipeline.runners.concurrent_dag import ConcurrentDagRunner

# A hang guard, not a pace: a component that waits this long at the barrier has run alone.
BARRIER_TIMEOUT_S = 120


class Journal:
    """What the components did, in order, and how many ran at once at most."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events: List[str] = []
        self.running = 0
        self.most_at_once = 0
        self.barrier = threading.Barrier(2, timeout=BARRIER_TIMEOUT_S)
        self.right_started = threading.Event()
        self.release_right = threading.Event()

    def enter(self, name: str) -> None:
        with self.lock:
            self.events.append(f"start {name}")
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)

    def leave(self, name: str) -> None:
        with self.lock:
            self.events.append(f"end {name}")
            self.running -= 1


JOURNAL = Journal()


@component
def Source(out: OutputArtifact[String]):  # noqa: N802 (TFX component names are classes)
    JOURNAL.enter("source")
    out.value = "source"
    JOURNAL.leave("source")


@component
def Branch(source: InputArtifact[String], out: OutputArtifact[String], name: Parameter[str],  # noqa: N802
           behaviour: Parameter[str] = ""):
    JOURNAL.enter(name)
    try:
        if name == "right":
            JOURNAL.right_started.set()
        if behaviour == "meet":
            JOURNAL.barrier.wait()
        elif behaviour == "fail":
            raise RuntimeError(f"{name} failed on purpose")
        elif behaviour == "interrupt":  # as Ctrl-C lands in the component running on the runner's thread
            assert JOURNAL.right_started.wait(BARRIER_TIMEOUT_S), "right never started"
            raise KeyboardInterrupt
        elif behaviour == "wait_for_release":
            assert JOURNAL.release_right.wait(BARRIER_TIMEOUT_S), "never released"
        elif behaviour == "alone":
            # A wait for something that must not happen is bounded by time; 1 s is ample for a thread to start.
            assert not JOURNAL.right_started.wait(1), "right started while left was running"
        out.value = name
    finally:
        JOURNAL.leave(name)


@component
def Sink(left: InputArtifact[String], right: InputArtifact[String]):  # noqa: N802
    JOURNAL.enter("sink")
    JOURNAL.leave("sink")


def diamond(root: Path, left: str = "", right: str = "") -> Pipeline:
    """source -> (left, right) -> sink; `left` and `right` say what each branch does (Branch's behaviour)."""
    source = Source()
    left = Branch(source=source.outputs["out"], name="left", behaviour=left).with_id("left")
    right = Branch(source=source.outputs["out"], name="right", behaviour=right).with_id("right")
    sink = Sink(left=left.outputs["out"], right=right.outputs["out"])
    return Pipeline(
        pipeline_name="diamond", pipeline_root=str(root / "root"), components=[source, left, right, sink],
        metadata_connection_config=metadata.sqlite_metadata_connection_config(str(root / "metadata.sqlite")))


def execution_states(root: Path) -> List[str]:
    """The state of every execution ML Metadata recorded, sorted."""
    with metadata.Metadata(metadata.sqlite_metadata_connection_config(str(root / "metadata.sqlite"))) as m:
        return sorted(metadata_store_pb2.Execution.State.Name(e.last_known_state) for e in m.store.get_executions())


@pytest.fixture(autouse=True)
def journal():
    global JOURNAL
    JOURNAL = Journal()
    yield JOURNAL


def test_independent_components_run_at_the_same_time_and_their_dependents_after_both(tmp_path, journal):
    ConcurrentDagRunner().run(diamond(tmp_path, left="meet", right="meet"))
    events = journal.events
    assert events[:2] == ["start source", "end source"]
    assert set(events[2:4]) == {"start left", "start right"}  # both started before either ended
    assert events[-2:] == ["start sink", "end sink"]
    assert journal.most_at_once == 2
    assert execution_states(tmp_path) == ["COMPLETE"] * 4


def test_max_parallel_one_runs_one_component_at_a_time(tmp_path, journal):
    ConcurrentDagRunner(max_parallel=1).run(diamond(tmp_path, left="alone"))
    assert journal.most_at_once == 1
    assert journal.events[-2:] == ["start sink", "end sink"] and len(journal.events) == 8


def test_a_failure_lets_the_running_branch_finish_starts_nothing_after_it_and_is_raised(tmp_path, journal):
    with pytest.raises(RuntimeError, match="left failed on purpose"):
        ConcurrentDagRunner().run(diamond(tmp_path, left="fail"))
    assert "end right" in journal.events
    assert "start sink" not in journal.events
    assert execution_states(tmp_path) == ["COMPLETE", "COMPLETE", "FAILED"]


class _ReleaseWhenTheRunnerWaits(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("waiting for right to finish"):
            JOURNAL.release_right.set()


def test_an_interrupt_waits_for_the_component_on_the_other_thread_then_is_raised(tmp_path, journal):
    """Ctrl-C lands in the component on the runner's own thread (left); right, on another thread, is let finish
    (and recorded) before the interrupt leaves the runner, so the run lock is not released under it."""
    handler = _ReleaseWhenTheRunnerWaits()
    runner_log = logging.getLogger("pipeline.runners.concurrent_dag")
    runner_log.addHandler(handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            ConcurrentDagRunner().run(diamond(tmp_path, left="interrupt", right="wait_for_release"))
    finally:
        runner_log.removeHandler(handler)
    assert journal.events[-1] == "end right" and "start sink" not in journal.events
    assert execution_states(tmp_path) == ["COMPLETE", "COMPLETE", "RUNNING"]  # source, right; left interrupted


def test_one_metadata_connection_is_open_at_a_time(tmp_path):
    config = metadata.sqlite_metadata_connection_config(str(tmp_path / "metadata.sqlite"))

    def free_elsewhere() -> bool:
        result = []

        def probe():
            if concurrent_dag._METADATA_LOCK.acquire(blocking=False):
                concurrent_dag._METADATA_LOCK.release()
                result.append(True)
            else:
                result.append(False)

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
        return result[0]

    with concurrent_dag._OneAtATimeMetadata(config) as m:
        assert m.store is not None and not free_elsewhere()
    assert free_elsewhere()


def test_max_parallel_must_be_positive():
    with pytest.raises(ValueError, match="max_parallel"):
        ConcurrentDagRunner(max_parallel=0)
