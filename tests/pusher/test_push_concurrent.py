"""Two real processes pushing into the same model folder at once: both land, with distinct versions."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.pusher import records
from serving.layout import list_versions

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
# Hang guard for two pushes of the tiny model.
PUSH_TIMEOUT = 60

# Stops between choosing a number (after scanning the folder) and reserving it,
# until the test lets it go: both pushes then reserve a number neither has seen taken.
PUSH_RESERVING_WHEN_TOLD = """
import sys
from components.pusher import publish, records
from components.pusher.records import PushRecord

reserve = records.create_record_exclusively
chosen = []

def reserve_when_told(base, record):
    if not chosen:
        chosen.append(record.version)
        print("chose", record.version, flush=True)
        sys.stdin.readline()
    return reserve(base, record)

records.create_record_exclusively = reserve_when_told
result = publish.push_model(sys.argv[1], sys.argv[2], PushRecord(0, "xception", sys.argv[3]), clock=lambda: 1000.0)
print("pushed", result.version, flush=True)
"""


def tree(folder: Path) -> dict[str, bytes | None]:
    return {str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
            for path in sorted(folder.rglob("*"))}


def test_two_pushes_choosing_the_same_number_at_once_both_land_on_distinct_versions(tmp_path, tiny_model):
    base = tmp_path / "serving_model" / "xception"
    sources = {}
    for name in ("model-a", "model-b"):
        sources[name] = tmp_path / name
        shutil.copytree(tiny_model, sources[name])
        (sources[name] / "WHICH_MODEL").write_text(name)

    pushes = {
        name: subprocess.Popen([sys.executable, "-c", PUSH_RESERVING_WHEN_TOLD, str(source), str(base), name],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        for name, source in sources.items()
    }
    try:
        # Both scanned an empty folder with the same clock: the race on 1000 is real.
        assert [push.stdout.readline() for push in pushes.values()] == ["chose 1000\n", "chose 1000\n"]
        for push in pushes.values():
            push.stdin.write("go\n")
            push.stdin.flush()
        outputs = {name: push.communicate(timeout=PUSH_TIMEOUT)[0] for name, push in pushes.items()}
    finally:
        for push in pushes.values():
            if push.poll() is None:
                push.kill()
                push.wait()

    assert {name: push.returncode for name, push in pushes.items()} == {"model-a": 0, "model-b": 0}
    versions = {name: int(output.split()[-1]) for name, output in outputs.items()}
    assert sorted(versions.values()) == [1000, 1001]
    assert list_versions(base) == [1000, 1001]
    for name, version in versions.items():
        # Each version holds exactly the model that was pushed as it: nothing overwritten or merged.
        assert tree(base / str(version)) == tree(sources[name])
        record = records.read_record(base, version)
        assert (record.state, record.model_uri) == (records.LIVE, name)
    assert sorted(path.name for path in base.iterdir()) == [".pushes", "1000", "1001"]
