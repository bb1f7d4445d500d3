"""`signflow enroll`: what it refuses before any pipeline runs, how it lands the references, and that it then runs.

The fast cycle it runs is tested with the real Trainer in tests/trainer/test_trainer_tfx.py
and end to end in tests/e2e/test_continuous_training.py.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.definition.configs import PipelineConfig
from pipeline.runners.enroll_runner import MIN_REFERENCES, land
from pipeline.training_server.run_lock import RUN_LOCK, FileLock
from tests.fixtures.tiny_model import make_image_bytes

REPO = Path(__file__).resolve().parents[2]


def _enroll(root: Path, *args: str) -> subprocess.CompletedProcess:
    config = root / "config.json"
    config.write_text(json.dumps({"pipeline_root": str(root / "pipeline_root"), "inbox_dir": str(root / "inbox"),
                                  "sample_dir": None, "serving_dir": str(root / "serving_model")}))
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "enroll", "--config", str(config), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _references(folder: Path, count: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"ref-{i}.png").write_bytes(make_image_bytes(seed=seed + i))
    return folder


def test_fewer_than_five_usable_references_are_refused_naming_what_was_wrong(tmp_path):
    images = _references(tmp_path / "refs", MIN_REFERENCES - 1)
    (images / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (images / "notes.txt").write_text("hello")
    done = _enroll(tmp_path, "--signer", "alice", "--images", str(images))
    assert done.returncode == 2, done.stderr
    assert f"at least {MIN_REFERENCES} reference signatures" in done.stderr
    assert f"has {MIN_REFERENCES - 1} usable image(s)" in done.stderr
    assert "scan.png:" in done.stderr and "notes.txt: not an image file" in done.stderr
    assert not (tmp_path / "inbox").exists()


def test_without_a_served_model_enrolment_says_to_train_first(tmp_path):
    images = _references(tmp_path / "refs", MIN_REFERENCES)
    done = _enroll(tmp_path, "--signer", "alice", "--images", str(images))
    assert done.returncode == 2
    assert "no model is served" in done.stderr and "signflow run" in done.stderr
    assert not (tmp_path / "inbox").exists()


def test_a_label_ingestion_would_refuse_is_refused(tmp_path):
    images = _references(tmp_path / "refs", MIN_REFERENCES)
    done = _enroll(tmp_path, "--signer", "alice ", "--images", str(images))
    assert done.returncode == 2 and "leading or trailing whitespace" in done.stderr
    done = _enroll(tmp_path, "--signer", "unknown", "--images", str(images))
    assert done.returncode == 2 and "not a signer's label" in done.stderr
    assert not (tmp_path / "inbox").exists()


@pytest.mark.parametrize("signer,said", [
    ("../alice", "no '/'"), ("team/alice", "no '/'"), (".alice", "no leading '.'"),
    ("alice_forg", "holds forgeries"), ("forged", "holds forgeries")])
def test_a_signer_whose_inbox_folder_would_not_read_back_as_its_references_is_refused(tmp_path, signer, said):
    images = _references(tmp_path / "refs", MIN_REFERENCES)
    done = _enroll(tmp_path, "--signer", signer, "--images", str(images))
    assert done.returncode == 2 and said in done.stderr, done.stderr
    assert not (tmp_path / "inbox").exists() and not (tmp_path / "alice").exists()


def test_references_land_in_the_signers_inbox_folder_once(tmp_path):
    images = sorted(_references(tmp_path / "refs", MIN_REFERENCES).iterdir())
    inbox = tmp_path / "inbox"
    first = land("alice", images, inbox)
    assert [p.parent for p in first] == [inbox / "alice"] * MIN_REFERENCES
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in images]
    # Landing the same files again adds nothing; another file of the same name gets its own name.
    assert land("alice", images, inbox) == first
    other = tmp_path / "other" / images[0].name
    other.parent.mkdir()
    other.write_bytes(make_image_bytes(seed=99))
    (renamed,) = land("alice", [other], inbox)
    assert renamed.name == f"{other.stem}-1{other.suffix}" and renamed.read_bytes() == other.read_bytes()
    assert not list(inbox.rglob("*.part"))


def test_past_its_checks_enrolment_is_a_signflow_run_with_its_summary(tmp_path):
    images = _references(tmp_path / "refs", MIN_REFERENCES)
    (tmp_path / "serving_model" / "xception" / "1").mkdir(parents=True)  # a served version to start from
    summary = tmp_path / "summary.json"
    run_lock = PipelineConfig(pipeline_root=tmp_path / "pipeline_root").run_root / RUN_LOCK
    run_lock.parent.mkdir(parents=True)
    # The run finds the pipeline busy at once: what is tested is the hand-over to `signflow run`, not a cycle.
    with FileLock(run_lock, purpose="make run-local"):
        done = _enroll(tmp_path, "--signer", "alice", "--images", str(images), "--summary-json", str(summary))
    assert done.returncode == 75, done.stderr[-3000:]
    assert "enrolling 'alice': 5 references" in done.stdout
    written = json.loads(summary.read_text())
    assert written["result"] == "busy" and "make run-local" in written["error"]
