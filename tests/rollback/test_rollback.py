"""`signflow rollback` and `signflow versions` through the real CLI dispatcher, on a real serving folder."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from components.pusher import publish, records
from components.pusher.records import PushRecord
from pipeline.cli import main as signflow
from serving.layout import ROLLBACK_NOTE_FILE, SAVED_MODEL_FILE, list_versions

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A SavedModel-shaped folder (rollback only moves folders; it never loads them)."""
    folder = tmp_path / "export"
    (folder / "variables").mkdir(parents=True)
    (folder / "assets").mkdir()
    (folder / SAVED_MODEL_FILE).write_bytes(b"\x08\x01")
    (folder / "variables" / "variables.index").write_bytes(b"index")
    (folder / "assets" / "labels.txt").write_text("signer_00\nsigner_01\n")
    return folder


@pytest.fixture
def base(tmp_path, model_dir) -> Path:
    """serving_model/xception with versions 100, 200, 300, 400 pushed by the real publish code."""
    base = tmp_path / "serving_model" / "xception"
    for version in (100, 200, 300, 400):
        record = PushRecord(0, "xception", f"/pipeline_root/Trainer/model/{version}", pipeline_run_id=f"run-{version}",
                            eval_metrics={"accuracy": version / 1000})
        publish.push_model(model_dir, base, record, clock=lambda version=version: float(version))
    return base


def test_rollback_moves_the_newest_out_of_the_watched_folder(base, capsys):
    code = signflow(["rollback", "--model_base_path", str(base), "--reason", "labels swapped"])

    assert code == 0
    assert list_versions(base) == [100, 200, 300]
    moved = base / ".rolled_back" / "400"
    assert (moved / SAVED_MODEL_FILE).is_file() and (moved / "assets" / "labels.txt").is_file()
    note = json.loads((moved / ROLLBACK_NOTE_FILE).read_text())
    assert note["reason"] == "labels swapped"
    assert note["host"] == socket.gethostname() and note["user"]
    assert note["serving_after"] == 300
    assert note["push"]["model_uri"] == "/pipeline_root/Trainer/model/400"
    assert "now serving 300" in capsys.readouterr().out


def test_rollback_to_a_version_takes_every_newer_one_out(base):
    assert signflow(["rollback", "--model_base_path", str(base), "--to", "200"]) == 0

    assert list_versions(base) == [100, 200]
    assert records.rolled_back_versions(base) == [300, 400]
    assert json.loads((base / ".rolled_back" / "300" / ROLLBACK_NOTE_FILE).read_text())["serving_after"] == 200


def test_rollback_to_the_serving_version_changes_nothing(base, capsys):
    assert signflow(["rollback", "--model_base_path", str(base), "--to", "400"]) == 0
    assert list_versions(base) == [100, 200, 300, 400]
    assert "nothing rolled back" in capsys.readouterr().out


def test_rollback_refuses_the_only_version(tmp_path, model_dir, capsys):
    base = tmp_path / "serving_model" / "xception"
    publish.push_model(model_dir, base, PushRecord(0, "xception", "only"), clock=lambda: 7.0)

    code = signflow(["rollback", "--model_base_path", str(base)])

    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "refusing to roll back version 7: it is the only version" in err
    assert list_versions(base) == [7]


def test_rollback_refuses_a_version_that_does_not_exist(base, capsys):
    code = signflow(["rollback", "--model_base_path", str(base), "--to", "250"])

    err = capsys.readouterr().err
    assert code == 1
    assert err == f"signflow rollback: version 250 does not exist under {base} (versions: 100, 200, 300, 400)\n"
    assert list_versions(base) == [100, 200, 300, 400]


def test_rollback_refuses_a_version_already_rolled_back(base, capsys):
    signflow(["rollback", "--model_base_path", str(base)])
    assert signflow(["rollback", "--model_base_path", str(base), "--to", "400"]) == 1
    assert "version 400 does not exist" in capsys.readouterr().err


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every folder and file under `folder` with the file contents: equal snapshots mean nothing moved."""
    return {str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
            for path in sorted(folder.rglob("*"))}


def test_rollback_refuses_when_rolled_back_already_holds_a_version_and_moves_nothing(base, capsys):
    # 400 was rolled back, then restored by hand as a copy, so .rolled_back/400 is still there.
    assert signflow(["rollback", "--model_base_path", str(base), "--reason", "labels swapped"]) == 0
    shutil.copytree(base / ".rolled_back" / "400", base / "400")
    capsys.readouterr()
    before = snapshot(base)

    code = signflow(["rollback", "--model_base_path", str(base), "--to", "200", "--reason", "again"])

    assert code == 1
    assert capsys.readouterr().err == (
        f"signflow rollback: {base / '.rolled_back'} already holds 400 (restored by hand?); move it away first\n")
    # Not even 300, which has no clash, moved: the check comes before the first rename.
    assert snapshot(base) == before
    assert list_versions(base) == [100, 200, 300, 400]


def test_rollback_exit_code_from_a_real_process(tmp_path):
    empty = tmp_path / "serving_model" / "xception"
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "rollback", "--model_base_path", str(empty)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == f"signflow rollback: no versions under {empty}\n"


def test_versions_lists_serving_live_and_rolled_back_without_mlmd(base, tmp_path, capsys):
    signflow(["rollback", "--model_base_path", str(base), "--reason", "bad eval"])
    capsys.readouterr()

    missing = tmp_path / "pipeline_root" / "signflow" / "metadata.sqlite"
    assert signflow(["versions", "--model_base_path", str(base), "--metadata_path", str(missing), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)

    assert "no ML Metadata" in listing["metadata_note"]
    rows = {row["version"]: row for row in listing["versions"]}
    assert [row["version"] for row in listing["versions"]] == [400, 300, 200, 100]
    assert {v: row["status"] for v, row in rows.items()} == {400: "rolled back", 300: "serving", 200: "live", 100: "live"}
    assert rows[400]["rollback"]["reason"] == "bad eval"
    assert rows[300]["lineage_from"] == "push record"
    assert rows[300]["model_uri"] == "/pipeline_root/Trainer/model/300"
    assert rows[300]["pipeline_run_id"] == "run-300"
    assert rows[300]["eval_metrics"] == {"accuracy": 0.3}

    assert signflow(["versions", "--model_base_path", str(base), "--metadata_path", str(missing)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2].split()[:2] == ["400", "rolled"] and "bad eval" in table[3]
    assert table[4].split()[:2] == ["300", "serving"]


def test_versions_shows_the_gates_accuracy_first(tmp_path, model_dir, capsys):
    """Whatever else a record holds (here an older one with the per-signer bound's overall keys), the table's
    METRICS column and the JSON start with sparse_categorical_accuracy."""
    base = tmp_path / "serving_model" / "xception"
    metrics = {"example_count": 54.0, "signer_accuracy_upper_bound": 1.0, "signer_accuracy_upper_bound/correct": 53.0,
               "sparse_categorical_accuracy": 0.9815}
    publish.push_model(model_dir, base, PushRecord(0, "xception", "m", eval_metrics=metrics), clock=lambda: 500.0)
    missing = tmp_path / "metadata.sqlite"

    assert signflow(["versions", "--model_base_path", str(base), "--metadata_path", str(missing), "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["versions"][0]["eval_metrics"]) == [
        "sparse_categorical_accuracy", "example_count", "signer_accuracy_upper_bound",
        "signer_accuracy_upper_bound/correct"]

    assert signflow(["versions", "--model_base_path", str(base), "--metadata_path", str(missing)]) == 0
    row = capsys.readouterr().out.splitlines()[2].split()
    assert row[0] == "500" and row[6:9] == [  # after the pushed date and time, run and spans
        "sparse_categorical_accuracy=0.9815", "example_count=54", "signer_accuracy_upper_bound=1"]
