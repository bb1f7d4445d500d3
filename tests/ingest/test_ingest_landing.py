"""Collecting inbox and sample files into spans: once per content, one span per run, restart-safe."""
from __future__ import annotations

import os

from components.ingest import landing
from tests.ingest.helpers import image_bytes, make_paths, write_bytes, write_jsonl


def _manifest_paths(paths, span: int) -> dict[str, str | None]:
    return {e["path"]: e.get("folder_label") for e in landing.read_manifest(paths, span)["files"]}


def _mark_processed(paths, span: int) -> None:
    # What the executor writes last when it finishes a span (see landing's docstring).
    os.makedirs(paths.seen_dir, exist_ok=True)
    open(paths.seen_file(span), "w").close()


def test_first_collection_takes_inbox_and_sample_data(tmp_path):
    paths = make_paths(str(tmp_path), sample=True)
    write_jsonl(f"{paths.inbox_dir}/batch.jsonl", [{"b64": "AA=="}])
    write_bytes(f"{paths.inbox_dir}/signer_03/a.png", image_bytes(1))
    write_bytes(f"{paths.inbox_dir}/loose.png", image_bytes(2))
    write_jsonl(f"{paths.sample_dir}/signatures.jsonl", [{"b64": "AQ=="}])
    write_bytes(f"{paths.sample_dir}/images/signer_01/x.gif", image_bytes(3, "GIF"))
    # Not data: the sample's manifest and preview, the inbox README, temporary and hidden files.
    write_bytes(f"{paths.sample_dir}/MANIFEST.json", b"{}")
    write_bytes(f"{paths.sample_dir}/contact_sheet.png", image_bytes(4))
    for name in ("README.md", ".DS_Store", "upload.jsonl.part", "x.tmp", ".hidden/y.png"):
        write_bytes(f"{paths.inbox_dir}/{name}", b"x")

    collection = landing.collect_new_files(paths, now=1_700_000_000)

    assert (collection.new_span, collection.latest_span, collection.files) == (0, 0, 5)
    assert _manifest_paths(paths, 0) == {
        "inbox/batch.jsonl": None,
        "inbox/loose.png": None,
        "inbox/signer_03/a.png": "signer_03",
        "sample/signatures.jsonl": None,
        "sample/images/signer_01/x.gif": "signer_01",
    }
    with open(f"{paths.span_dir(0)}/inbox/signer_03/a.png", "rb") as f:
        assert f.read() == image_bytes(1)
    assert landing.read_manifest(paths, 0)["collected_at"] == 1_700_000_000
    # The inbox is left as it was.
    assert os.path.exists(f"{paths.inbox_dir}/signer_03/a.png")


def test_each_content_is_collected_once(tmp_path):
    paths = make_paths(str(tmp_path), sample=True)
    write_bytes(f"{paths.inbox_dir}/signer_01/a.png", image_bytes(1))
    write_bytes(f"{paths.sample_dir}/images/signer_02/b.png", image_bytes(2))
    assert landing.collect_new_files(paths).new_span == 0
    _mark_processed(paths, 0)

    again = landing.collect_new_files(paths)
    assert (again.new_span, again.latest_span, again.already_ingested) == (None, 0, 2)
    assert landing.committed_spans(paths) == [0]

    # New files, one of them a renamed copy of a file already ingested, two identical to each other.
    write_bytes(f"{paths.inbox_dir}/renamed.png", image_bytes(1))
    write_bytes(f"{paths.inbox_dir}/signer_01/c.png", image_bytes(3))
    write_bytes(f"{paths.inbox_dir}/signer_01/c_copy.png", image_bytes(3))
    write_bytes(f"{paths.inbox_dir}/signer_04/d.png", image_bytes(4))
    third = landing.collect_new_files(paths)
    assert (third.new_span, third.files, third.already_ingested, third.identical) == (1, 2, 3, 1)
    assert _manifest_paths(paths, 1) == {"inbox/signer_01/c.png": "signer_01", "inbox/signer_04/d.png": "signer_04"}


def test_a_changed_file_is_collected_again(tmp_path):
    paths = make_paths(str(tmp_path))
    write_jsonl(f"{paths.inbox_dir}/a.jsonl", [{"b64": "AA=="}])
    landing.collect_new_files(paths)
    _mark_processed(paths, 0)
    write_jsonl(f"{paths.inbox_dir}/a.jsonl", [{"b64": "AA=="}, {"b64": "AQ=="}])  # appended
    assert landing.collect_new_files(paths).new_span == 1
    assert _manifest_paths(paths, 1) == {"inbox/a.jsonl": None}


def test_an_unprocessed_span_is_finished_before_a_new_one(tmp_path):
    paths = make_paths(str(tmp_path))
    write_bytes(f"{paths.inbox_dir}/signer_01/a.png", image_bytes(1))
    landing.collect_new_files(paths)
    write_bytes(f"{paths.inbox_dir}/signer_01/b.png", image_bytes(2))

    # Span 0's executor has not finished (crashed, or never ran): process span 0 again.
    pending = landing.collect_new_files(paths)
    assert (pending.new_span, pending.latest_span, pending.pending) == (None, 0, True)

    _mark_processed(paths, 0)
    after = landing.collect_new_files(paths)
    assert (after.new_span, after.files) == (1, 1)


def test_a_crash_during_collection_is_redone(tmp_path):
    paths = make_paths(str(tmp_path))
    write_bytes(f"{paths.inbox_dir}/signer_01/a.png", image_bytes(1))
    # What a crash before the commit rename leaves: a partial folder, no span.
    partial = os.path.join(paths.landing_dir, ".span-0.partial", "inbox", "signer_01")
    os.makedirs(partial)
    write_bytes(os.path.join(partial, "a.png"), image_bytes(1)[:10])

    collection = landing.collect_new_files(paths)

    assert (collection.new_span, collection.files) == (0, 1)
    assert sorted(os.listdir(paths.landing_dir)) == ["span-0"]
    with open(f"{paths.span_dir(0)}/inbox/signer_01/a.png", "rb") as f:
        assert f.read() == image_bytes(1)


def test_an_unreadable_file_is_listed_once(tmp_path):
    paths = make_paths(str(tmp_path))
    os.makedirs(paths.inbox_dir)
    os.symlink(str(tmp_path / "nowhere.png"), f"{paths.inbox_dir}/broken.png")
    write_bytes(f"{paths.inbox_dir}/signer_01/a.png", image_bytes(1))

    landing.collect_new_files(paths)
    [entry] = [e for e in landing.read_manifest(paths, 0)["files"] if e["path"] == "inbox/broken.png"]
    assert "No such file" in entry["unreadable"]
    [landed] = [f for f in landing.landed_files(paths, 0) if f.name == "span-0/inbox/broken.png"]
    assert landed.unreadable == entry["unreadable"]

    _mark_processed(paths, 0)
    assert landing.collect_new_files(paths).new_span is None


def test_nothing_ever_collected_gives_an_empty_first_span(tmp_path):
    paths = make_paths(str(tmp_path), sample=True)  # neither folder exists
    first = landing.collect_new_files(paths)
    assert (first.new_span, first.files) == (0, 0)
    assert landing.landed_files(paths, 0) == []
    _mark_processed(paths, 0)
    assert landing.collect_new_files(paths).new_span is None


def test_forgery_folders_are_recorded_with_their_claimed_label(tmp_path):
    paths = make_paths(str(tmp_path), sample=True)
    write_bytes(f"{paths.inbox_dir}/signer_01/a.png", image_bytes(1))
    write_bytes(f"{paths.inbox_dir}/signer_01_forg/b.png", image_bytes(2))
    write_bytes(f"{paths.inbox_dir}/signer_02/forged/c.png", image_bytes(3))
    write_bytes(f"{paths.inbox_dir}/forged/d.png", image_bytes(4))
    write_bytes(f"{paths.sample_dir}/images/signer_03_forg/e.png", image_bytes(5))

    landing.collect_new_files(paths)

    entries = {e["path"]: (e.get("folder_label"), e.get("genuine")) for e in landing.read_manifest(paths, 0)["files"]}
    assert entries == {
        "inbox/signer_01/a.png": ("signer_01", None),  # genuine: no key, as in manifests from before forgeries
        "inbox/signer_01_forg/b.png": ("signer_01", False),
        "inbox/signer_02/forged/c.png": ("signer_02", False),
        "inbox/forged/d.png": (None, False),
        "sample/images/signer_03_forg/e.png": ("signer_03", False),
    }
    landed = {f.name: (f.folder_label, f.folder_genuine) for f in landing.landed_files(paths, 0)}
    assert landed["span-0/inbox/signer_01/a.png"] == ("signer_01", True)
    assert landed["span-0/inbox/signer_02/forged/c.png"] == ("signer_02", False)
