"""Pushes and retentions killed with SIGKILL at chosen points: what TF Serving sees, and how the next push recovers.

Each crash runs the real publish code in a child process; the child's script
wraps one of the file operations publish goes through (storage.copy_file,
storage.rename, storage.rmtree) so that the process kills itself at exactly
the point under test.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from components.pusher import publish, records
from components.pusher.publish import REMOVING_PREFIX
from components.pusher.records import PushRecord
from pipeline.training_server.rollback import list_version_info
from serving.layout import STAGING_PREFIX, list_versions

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
# Hang guard for a child that should die at its injected point within a second or two.
CHILD_TIMEOUT = 60

# Dies in the middle of the copy: once the first file under variables/ is in the
# staging folder (the folder's top-level files are copied before its subfolders).
PUSH_KILLED_MID_COPY = """
import os, signal, sys
from pathlib import Path
from components import storage
from components.pusher.publish import push_model
from components.pusher.records import PushRecord

copy_file = storage.copy_file

def copy_then_die(source, destination):
    copy_file(source, destination)
    if Path(destination).parent.name == "variables":
        os.kill(os.getpid(), signal.SIGKILL)

storage.copy_file = copy_then_die
push_model(sys.argv[1], sys.argv[2], PushRecord(0, "xception", "model-killed-mid-copy"))
"""

# Dies right after the rename that publishes the version, before the record says "live".
PUSH_KILLED_AFTER_RENAME = """
import os, signal, sys
from components import storage
from components.pusher.publish import push_model
from components.pusher.records import PushRecord
from serving.layout import parse_version

rename = storage.rename

def rename_then_die(source, destination):
    rename(source, destination)
    if parse_version(os.path.basename(destination)) is not None:
        os.kill(os.getpid(), signal.SIGKILL)

storage.rename = rename_then_die
push_model(sys.argv[1], sys.argv[2], PushRecord(0, "xception", sys.argv[3]), clock=lambda: 1000.0)
"""

# Dies once retention has started deleting a version's files (saved_model.pb gone, the rest not).
RETENTION_KILLED_MID_DELETE = """
import os, signal, sys
from pathlib import Path
from components import storage
from components.pusher.publish import apply_retention

def delete_one_file_then_die(path):
    os.unlink(Path(path) / "saved_model.pb")
    os.kill(os.getpid(), signal.SIGKILL)

storage.rmtree = delete_one_file_then_die
apply_retention(sys.argv[1], keep=1)
"""


def tree(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def run_until_killed(script: str, *args) -> int:
    """Run `script` in a child; assert it died of its injected SIGKILL. Returns its (now free) pid."""
    child = subprocess.Popen([sys.executable, "-c", script, *map(str, args)],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.wait(timeout=CHILD_TIMEOUT) == -signal.SIGKILL, "the child did not reach its injected crash"
    return child.pid


def test_killed_push_leaves_no_numbered_folder_and_the_next_push_removes_its_leftovers(tmp_path, tiny_model):
    base = tmp_path / "serving_model" / "xception"
    killed_pid = run_until_killed(PUSH_KILLED_MID_COPY, tiny_model, base)

    assert list_versions(base) == []
    [killed_version] = records.recorded_versions(base)
    staging = base / f"{STAGING_PREFIX}{killed_version}-{killed_pid}"
    assert [path.name for path in (staging / "variables").iterdir()] != []  # the copy was under way
    # saved_model.pb goes last, so a half-copied folder never looks like a SavedModel.
    assert not (staging / "saved_model.pb").exists()

    result = publish.push_model(tiny_model, base, PushRecord(0, "xception", "next-model"))

    assert result.stale_removed == [staging.name]
    assert not staging.exists()
    assert list_versions(base) == [result.version]
    # The dead push's number stays used.
    assert result.version > killed_version
    assert records.read_record(base, killed_version).state == records.STAGING
    # No folder was published for it, so there is nothing to adopt.
    assert result.adopted == []


def test_push_killed_after_publishing_serves_a_complete_version_that_the_next_push_adopts(tmp_path, tiny_model):
    base = tmp_path / "serving_model" / "xception"
    run_until_killed(PUSH_KILLED_AFTER_RENAME, tiny_model, base, "model-killed-after-rename")

    # What TF Serving sees: one complete version and nothing else with a number.
    assert list_versions(base) == [1000]
    assert tree(base / "1000") == tree(tiny_model)
    assert sorted(path.name for path in base.iterdir()) == [".pushes", "1000"]
    assert records.read_record(base, 1000).state == records.STAGING
    # `signflow versions` before any recovery: it serves, and its record still names the model.
    [info] = list_version_info(base, "xception", None).versions
    assert (info.version, info.status, info.model_uri, info.pushed_at) == (1000, "serving", "model-killed-after-rename", None)

    # Same clock: only the used-number scan keeps the next push off 1000.
    result = publish.push_model(tiny_model, base, PushRecord(0, "xception", "next-model"), clock=lambda: 1000.0)

    assert result.adopted == [1000]
    assert result.version == 1001
    assert list_versions(base) == [1000, 1001]
    adopted = records.read_record(base, 1000)
    assert (adopted.state, adopted.model_uri, adopted.pushed_at) == (records.LIVE, "model-killed-after-rename", None)
    assert adopted.adopted_at is not None
    assert {info.version: info.status for info in list_version_info(base, "xception", None).versions} == {
        1001: "serving", 1000: "live"}


def test_a_version_reserved_on_another_host_is_not_adopted(tmp_path, tiny_model):
    """A pid means nothing across hosts (a pod sharing the volume may have ours): leave that record alone."""
    base = tmp_path / "serving_model" / "xception"
    run_until_killed(PUSH_KILLED_AFTER_RENAME, tiny_model, base, "model-on-another-host")
    record = records.read_record(base, 1000)
    assert record.host is not None and record.pid is not None
    record.host, record.pid = "another-host", os.getpid()
    records.update_record(base, record)

    assert publish.recover_interrupted_pushes(base).adopted == []
    assert records.read_record(base, 1000).state == records.STAGING


def test_rerunning_a_push_killed_after_publishing_adopts_the_version_it_published(pipeline):
    model = pipeline.model()
    base = pipeline.serving_dir / "xception"
    run_until_killed(PUSH_KILLED_AFTER_RENAME, Path(model.uri) / "Format-Serving", base, model.uri)

    pushed = pipeline.push(model)

    # The re-run copies nothing and names version 1000 on its PushedModel, which is
    # what the next run's baseline resolver matches against the serving folder.
    assert pushed.get_int_custom_property("pushed") == 1
    assert pushed.get_string_custom_property("pushed_version") == "1000"
    assert list_versions(base) == [1000]
    assert records.read_record(base, 1000).state == records.LIVE


def test_a_push_that_fails_after_publishing_never_records_its_served_version_as_failed(tmp_path, tiny_model, monkeypatch):
    base = tmp_path / "serving_model" / "xception"
    fsync_dir = publish.fsync_dir

    def fail_on_the_model_folder(path):
        # The one fsync of the model folder itself comes right after the publishing rename.
        if Path(path) == base:
            raise OSError(errno.EIO, "injected I/O error", str(path))
        fsync_dir(path)

    monkeypatch.setattr(publish, "fsync_dir", fail_on_the_model_folder)
    with pytest.raises(OSError, match="injected I/O error"):
        publish.push_model(tiny_model, base, PushRecord(0, "xception", "model-failed-after-rename"), clock=lambda: 1000.0)
    monkeypatch.undo()

    assert list_versions(base) == [1000]
    assert records.read_record(base, 1000).state == records.STAGING
    # The same process pushes next (a long-lived caller): its own dead push is still adopted.
    result = publish.push_model(tiny_model, base, PushRecord(0, "xception", "next-model"), clock=lambda: 1000.0)
    assert (result.adopted, result.version) == ([1000], 1001)
    assert records.read_record(base, 1000).state == records.LIVE


def test_retention_killed_mid_delete_never_shows_a_partial_version_and_the_next_push_cleans_up(tmp_path, tiny_model):
    base = tmp_path / "serving_model" / "xception"
    for version in (100, 200, 300):
        publish.push_model(tiny_model, base, PushRecord(0, "xception", f"model-{version}"),
                           clock=lambda version=version: float(version))

    killed_pid = run_until_killed(RETENTION_KILLED_MID_DELETE, base)

    # What TF Serving sees: every numbered folder complete, the half-deleted one under a name it ignores.
    assert [version for version in list_versions(base) if not (base / str(version) / "saved_model.pb").is_file()] == []
    assert list_versions(base) == [200, 300]
    leftover = base / f"{REMOVING_PREFIX}100-{killed_pid}"
    assert leftover.is_dir() and not (leftover / "saved_model.pb").exists()

    result = publish.push_model(tiny_model, base, PushRecord(0, "xception", "next-model"), clock=lambda: 50.0)

    assert result.stale_removed == [leftover.name]
    assert not leftover.exists()
    assert result.version == 301  # 100 stays used although its folder is gone
    assert list_versions(base) == [200, 300, 301]
    assert records.read_record(base, 100).removed_at is not None
