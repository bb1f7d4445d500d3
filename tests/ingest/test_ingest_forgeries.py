"""Forgeries through real ingestion: the three ways to mark one, the `genuine` feature, the ledger and its conflicts."""
from __future__ import annotations

import base64

from tests.ingest.helpers import (
    b64,
    feature,
    image_bytes,
    ingest_step,
    make_paths,
    read_jsonl,
    sha256,
    write_bytes,
    write_json,
    write_jsonl,
)


def _ingest(paths, root, run: int):
    """The summary and the Examples of one ingestion step."""
    return ingest_step(paths, root, run)[1:]


def _claims(examples) -> dict[str, tuple[str, int]]:
    """sha256 -> (label, genuine feature) over all splits."""
    return {
        feature(e, "sha256").decode(): (feature(e, "label").decode(), feature(e, "genuine"))
        for items in examples.values()
        for e in items
    }


def test_each_way_of_marking_a_forgery_gives_genuine_0_with_the_claimed_label(tmp_path):
    paths = make_paths(str(tmp_path), sample=True)
    expected = {}

    def img(seed, label, genuine):
        data = image_bytes(seed)
        expected[sha256(data)] = (label, genuine)
        return data

    write_jsonl(f"{paths.inbox_dir}/batch.jsonl", [
        {"image": {"b64": b64(img(1, "signer_01", 0))}, "label": "signer_01", "genuine": False},
        {"image": {"b64": b64(img(2, "signer_01", 1))}, "label": "signer_01", "genuine": True},
        {"image": {"b64": b64(img(3, "signer_01", 1))}, "label": "signer_01"},  # as before forgeries: genuine
        {"image": {"b64": b64(image_bytes(4))}, "label": "signer_01", "genuine": "false"},  # quarantined
    ])
    write_json(f"{paths.inbox_dir}/request.json", {"instances": [
        {"image_bytes": {"b64": b64(img(5, "signer_02", 0))}, "label": "signer_02", "genuine": False}]})
    write_json(f"{paths.inbox_dir}/columns.json", {"inputs": {
        "image_bytes": [{"b64": b64(img(6, "signer_02", 0))}, {"b64": b64(img(7, "signer_02", 1))}],
        "label": ["signer_02", "signer_02"],
        "genuine": [False, True],
    }})
    write_json(f"{paths.inbox_dir}/seed.json",
               {"examples": [{"image": b64(img(8, "signer_04", 0)), "caption": "signer_04", "genuine": False}]})
    write_bytes(f"{paths.inbox_dir}/signer_03_forg/a.png", img(9, "signer_03", 0))
    write_bytes(f"{paths.inbox_dir}/signer_03/forged/b.png", img(10, "signer_03", 0))
    write_bytes(f"{paths.inbox_dir}/signer_03/c.png", img(11, "signer_03", 1))
    write_bytes(f"{paths.sample_dir}/images/signer_05_forg/d.png", img(12, "signer_05", 0))
    write_jsonl(f"{paths.sample_dir}/signatures.jsonl", [{"b64": b64(img(13, "signer_05", 1)), "label": "signer_05"}])

    summary, examples = _ingest(paths, str(tmp_path), 0)

    assert _claims(examples) == expected
    counts = ("records_read", "examples", "forgeries", "duplicates", "unlabelled", "quarantined")
    assert [summary[key] for key in counts] == [13, 12, 7, 0, 0, 1]
    assert summary["forged_labels"] == {"signer_01": 1, "signer_02": 2, "signer_03": 2, "signer_04": 1, "signer_05": 1}
    assert summary["labels"] == {"signer_01": 3, "signer_02": 3, "signer_03": 3, "signer_04": 1, "signer_05": 2}
    [refused] = read_jsonl(paths.quarantine_file(0))
    assert (refused["reason"], refused["source"], refused["record"]["genuine"]) == (
        "invalid_genuine", "span-0/inbox/batch.jsonl:4", "false")
    with open(paths.seen_file(0), encoding="utf-8") as f:
        ledger = sorted(line.rstrip("\n").split("\t") for line in f)
    assert ledger == sorted([sha, label, str(genuine)] for sha, (label, genuine) in expected.items())


def test_the_same_image_as_genuine_and_as_forged_of_one_signer_is_a_label_conflict(tmp_path):
    paths = make_paths(str(tmp_path))
    shared, other = image_bytes(20), image_bytes(21)
    write_jsonl(f"{paths.inbox_dir}/a.jsonl", [
        {"b64": b64(shared), "label": "signer_01"},
        {"b64": b64(shared), "label": "signer_01", "genuine": False},  # conflict: first kept
        {"b64": b64(other), "label": "signer_02", "genuine": False},
        {"b64": b64(other), "label": "signer_02", "genuine": False},  # plain duplicate
    ])
    summary, examples = _ingest(paths, str(tmp_path), 0)
    assert _claims(examples) == {sha256(shared): ("signer_01", 1), sha256(other): ("signer_02", 0)}
    counts = ("examples", "forgeries", "duplicates", "label_conflicts")
    assert [summary[key] for key in counts] == [2, 1, 2, 1]
    duplicates = read_jsonl(summary["duplicates_file"])
    assert [(d["source"], d["genuine"], d["kept_genuine"], d["label_conflict"]) for d in duplicates] == [
        ("span-0/inbox/a.jsonl:2", False, True, True),
        ("span-0/inbox/a.jsonl:4", False, False, False),
    ]

    # Across spans, against the ledger: also one written before forgeries were recorded
    # (no third column), whose examples are genuine.
    with open(paths.seen_file(0), encoding="utf-8") as f:
        lines = f.read().splitlines()
    with open(paths.seen_file(0), "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line.rsplit("\t", 1)[0] if line.startswith(sha256(shared)) else line) + "\n")
    write_jsonl(f"{paths.inbox_dir}/b.jsonl", [
        {"b64": b64(shared), "label": "signer_01", "genuine": False},
        {"b64": b64(shared), "label": "signer_01"},
        {"b64": b64(other), "label": "signer_02"},
        {"b64": b64(other), "label": "signer_02", "genuine": False},
    ])
    summary, examples = _ingest(paths, str(tmp_path), 1)
    assert (summary["examples"], summary["duplicates"], summary["label_conflicts"]) == (0, 4, 2)
    duplicates = read_jsonl(summary["duplicates_file"])
    assert [(d["duplicate_of"], d["kept_genuine"], d["label_conflict"]) for d in duplicates] == [
        ("span-0", True, True), ("span-0", True, False), ("span-0", False, True), ("span-0", False, False)]


def test_an_unlabelled_forgery_stays_a_forgery_when_labelled_and_dropped_back(tmp_path):
    paths = make_paths(str(tmp_path))
    forged, genuine, loose = image_bytes(30), image_bytes(31), image_bytes(32)
    write_jsonl(f"{paths.inbox_dir}/a.jsonl", [{"b64": b64(forged), "genuine": False}, {"b64": b64(genuine)}])
    write_bytes(f"{paths.inbox_dir}/forged/x.png", loose)  # a forgery folder without a label
    summary, _ = _ingest(paths, str(tmp_path), 0)
    assert (summary["examples"], summary["unlabelled"]) == (0, 3)

    entries = read_jsonl(paths.unlabelled_file(0))
    assert {base64.b64decode(u["image"]["b64"]): u["genuine"] for u in entries} == {
        forged: False, genuine: True, loose: False}
    write_jsonl(f"{paths.inbox_dir}/labelled.jsonl", [{**u, "label": "signer_07"} for u in entries])
    summary, examples = _ingest(paths, str(tmp_path), 1)
    assert _claims(examples) == {sha256(forged): ("signer_07", 0), sha256(genuine): ("signer_07", 1),
                                 sha256(loose): ("signer_07", 0)}
    assert summary["forgeries"] == 2
