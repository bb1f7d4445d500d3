"""`signflow ingest` through the real dispatcher (pipeline.cli), in process: a one-node LocalDagRunner run."""
from __future__ import annotations

import json

import pytest

from pipeline import cli
from tests.ingest.helpers import b64, image_bytes, make_paths, write_jsonl

pytestmark = pytest.mark.slow


def test_ingest_command_prints_the_counts_and_ingests_once(tmp_path, capsys):
    paths = make_paths(str(tmp_path))
    write_jsonl(
        f"{paths.inbox_dir}/a.jsonl",
        [{"b64": b64(image_bytes(i)), "label": "signer_01"} for i in range(3)]
        + [{"b64": b64(image_bytes(7)), "label": "signer_01", "genuine": False}]
        + [{"b64": b64(image_bytes(9))}, "{bad"],
    )
    argv = [
        "ingest",
        "--inbox", paths.inbox_dir,
        "--sample", "",
        "--state", paths.state_dir,
        "--quarantine", paths.quarantine_dir,
        "--unlabelled", paths.unlabelled_dir,
        "--pipeline-root", str(tmp_path / "pipeline_root"),
    ]  # fmt: skip

    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "span 0: 6 records read = 4 examples (1 forgeries; " in out
    assert "+ 0 duplicates + 1 unlabelled + 1 quarantined" in out
    assert f"quarantine: {paths.quarantine_file(0)} (invalid_json 1)" in out

    assert cli.main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["span"], summary["examples"], summary["records_read"], summary["forgeries"]) == (0, 4, 6, 1)

    assert cli.main(argv) == 0
    assert "no new inbox files; latest span is 0" in capsys.readouterr().out

    write_jsonl(f"{paths.inbox_dir}/b.jsonl", [{"b64": b64(image_bytes(20)), "label": "signer_02"}])
    assert cli.main(argv) == 0
    assert "span 1: 1 records read = 1 examples (0 forgeries; " in capsys.readouterr().out
