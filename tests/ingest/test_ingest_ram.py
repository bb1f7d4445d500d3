"""The real ingestion executor with its outputs on a non-local filesystem (ram://, read back through tf.io).

The landing folder and the ledger stay local (the machine that collects the
inbox owns them, docs/ingestion.md); the Examples, quarantine and unlabelled
stores are on ram://.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from components import storage
from components.ingest import landing
from components.ingest.executor import run_executor
from tests.fileio.ram import ram_root, tree
from tests.ingest.helpers import b64, image_bytes, make_paths, sha256, write_jsonl


def test_examples_quarantine_and_unlabelled_go_to_ram(tmp_path):
    root = ram_root("ingest")
    paths = dataclasses.replace(make_paths(str(tmp_path)), quarantine_dir=f"{root}/quarantine",
                                unlabelled_dir=f"{root}/unlabelled")
    good = [image_bytes(900 + i) for i in range(6)]
    write_jsonl(f"{paths.inbox_dir}/a.jsonl", [
        *({"b64": b64(img), "label": "signer_01"} for img in good),
        "{broken",
        {"b64": b64(image_bytes(950))},
    ])
    span = landing.collect_new_files(paths, now=1_700_000_000).latest_span

    summary = run_executor(paths, span, f"{root}/examples")

    assert (summary["records_read"], summary["examples"], summary["quarantined"], summary["unlabelled"]) == (8, 6, 1, 1)
    files = tree(f"{root}/examples")
    assert {"ingest_summary.json", "duplicates.jsonl"} <= files
    assert not any(name.startswith(".ingest-staging") for name in files)
    split_files = sorted(f"{root}/examples/{name}" for name in files if name.startswith("Split-"))
    assert {name.split("/")[0] for name in files if name.startswith("Split-")} == {"Split-train", "Split-eval"}
    written = [tf.train.Example.FromString(raw.numpy())
               for raw in tf.data.TFRecordDataset(split_files, compression_type="GZIP")]
    assert sorted(e.features.feature["sha256"].bytes_list.value[0].decode() for e in written) == sorted(map(sha256, good))
    assert sum(summary["splits"].values()) == 6
    [refused] = [line for line in storage.read_lines(paths.quarantine_file(span))]
    assert '"reason": "invalid_json"' in refused
    assert len(storage.read_lines(paths.unlabelled_file(span))) == 1
    assert landing.is_processed(paths, span)  # the local ledger, written last
