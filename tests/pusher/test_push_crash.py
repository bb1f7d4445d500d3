"""A push killed with SIGKILL in the middle of its copy leaves no version behind; the next push cleans up."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.pusher import publish, records
from components.pusher.records import PushRecord
from serving.layout import STAGING_PREFIX, list_versions

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
# Big enough that copying and fsyncing it takes far longer than noticing the copy started.
PADDING_BYTES = 512 * 1024 * 1024

PUSH_SCRIPT = """
import sys
from components.pusher.publish import push_model
from components.pusher.records import PushRecord
push_model(sys.argv[1], sys.argv[2], PushRecord(0, "xception", "model-killed-mid-copy"))
"""


def test_killed_push_leaves_no_numbered_folder_and_the_next_push_removes_its_leftovers(tmp_path, tiny_model):
    source = tmp_path / "big_model"
    shutil.copytree(tiny_model, source)
    # Sparse on the source side, real bytes on the copy; TF ignores unknown files in variables/.
    with open(source / "variables" / "padding.bin", "wb") as handle:
        handle.truncate(PADDING_BYTES)
    base = tmp_path / "serving_model" / "xception"

    push = subprocess.Popen([sys.executable, "-c", PUSH_SCRIPT, str(source), str(base)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    staging = None
    deadline = time.monotonic() + 60
    while staging is None and time.monotonic() < deadline and push.poll() is None:
        found = list(base.glob(f"{STAGING_PREFIX}*")) if base.is_dir() else []
        if found and (found[0] / "variables" / "padding.bin").exists():
            staging = found[0]
        else:
            time.sleep(0.002)
    assert staging is not None, "the push finished or never started copying the large file"
    os.kill(push.pid, signal.SIGKILL)
    push.wait()  # reaped, so its pid is really gone

    try:
        assert list_versions(base) == []
        assert staging.is_dir() and staging.name == f"{STAGING_PREFIX}{records.recorded_versions(base)[0]}-{push.pid}"
        # saved_model.pb goes last, so a half-copied folder never looks like a SavedModel.
        assert not (staging / "saved_model.pb").exists()
        killed_version = records.recorded_versions(base)[0]

        result = publish.push_model(tiny_model, base, PushRecord(0, "xception", "next-model"))

        assert result.stale_removed == [staging.name]
        assert not staging.exists()
        assert list_versions(base) == [result.version]
        # The dead push's number stays used.
        assert result.version > killed_version
        assert records.read_record(base, killed_version).state == records.STAGING
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
