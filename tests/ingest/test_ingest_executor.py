"""The ExampleGen executor on real landed spans (Beam DirectRunner in process, real GZIP TFRecords)."""
from __future__ import annotations

import base64
import hashlib
import json
import os

import apache_beam as beam
import pytest

from components.ingest import executor as executor_module
from components.ingest import landing, spec
from components.ingest.executor import split_assigner
from components.ingest.spec import OUTPUT_CONFIG
from serving.images import DEFAULT_MAX_PIXELS
from tests.ingest.helpers import (
    b64,
    by_sha,
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
from tests.ingest.test_ingest_records import BAD_LINES


def _every_shape(paths) -> dict[str, str]:
    """One inbox + sample with each accepted shape; returns sha256 -> label of what went in."""
    expected = {}

    def img(seed, label, fmt="PNG"):
        data = image_bytes(seed, fmt)
        expected[sha256(data)] = label
        return data

    write_jsonl(
        f"{paths.inbox_dir}/batch.jsonl",
        [
            {"image": {"b64": b64(img(1, "signer_01"))}, "label": "signer_01"},
            {"image_bytes": {"b64": b64(img(2, "signer_02"), "urlsafe")}, "label": "signer_02"},
            {"b64": b64(img(3, "signer_03"), "unpadded"), "label": "signer_03"},
            {"image": {"b64": b64(img(4, "signer_01"), "data_url")}, "label": "signer_01"},
        ],
    )
    write_json(
        f"{paths.inbox_dir}/request.json",
        {"instances": [{"image_bytes": {"b64": b64(img(5, "signer_02"))}, "label": "signer_02"}]},
    )
    write_json(
        f"{paths.inbox_dir}/columns.json",
        {"inputs": {"image_bytes": [{"b64": b64(img(6, "signer_03"))}], "label": ["signer_03"]}},
    )
    write_json(
        f"{paths.inbox_dir}/seed.json",
        {"signature_name": "classify", "examples": [{"image": {"b64": b64(img(7, "signer_04"))}, "caption": "signer_04"}]},
    )
    for seed, fmt, suffix in ((8, "PNG", "png"), (9, "JPEG", "jpg"), (10, "GIF", "gif"), (11, "BMP", "bmp")):
        write_bytes(f"{paths.inbox_dir}/signer_05/{seed}.{suffix}", img(seed, "signer_05", fmt))
    write_jsonl(f"{paths.sample_dir}/signatures.jsonl", [{"image": {"b64": b64(img(12, "signer_06"))}, "label": "signer_06"}])
    write_bytes(f"{paths.sample_dir}/images/signer_07/s.png", img(13, "signer_07"))
    return expected


def test_every_shape_round_trips(tmp_path):
    paths = make_paths(str(tmp_path), sample=True)
    expected = _every_shape(paths)

    _, summary, examples = ingest_step(paths, str(tmp_path), 0)

    got = by_sha(examples)
    assert {sha: label for sha, (_, label, _) in got.items()} == expected
    assert all(sha256(raw) == sha for sha, (_, _, raw) in got.items())  # bytes kept, never re-encoded
    assert (summary["records_read"], summary["examples"], summary["quarantined"]) == (13, 13, 0)
    assign = split_assigner(OUTPUT_CONFIG)
    assert all(split == assign(sha) for sha, (split, _, _) in got.items())
    assert summary["splits"] == {name: len(items) for name, items in examples.items()}

    jpeg = next(e for items in examples.values() for e in items if feature(e, "format") == b"JPEG")
    assert (feature(jpeg, "width"), feature(jpeg, "height")) == (40, 20)
    assert feature(jpeg, "source") == b"span-0/inbox/signer_05/9.jpg"
    assert feature(jpeg, "ingested_at") == 1_700_000_000
    sources = {feature(e, "source").decode() for items in examples.values() for e in items}
    assert {"span-0/inbox/batch.jsonl:3", "span-0/inbox/request.json:1", "span-0/sample/signatures.jsonl:1"} <= sources


def test_mixed_batch_counts_and_quarantine(tmp_path):
    paths = make_paths(str(tmp_path))
    good = [image_bytes(100 + i) for i in range(4)]
    write_jsonl(
        f"{paths.inbox_dir}/mixed.jsonl",
        [
            {"image": {"b64": b64(good[0])}, "label": "signer_01"},
            *[line for _, line in BAD_LINES],
            {"image": {"b64": b64(good[1])}},  # unlabelled
            {"image": {"b64": b64(good[2])}, "label": "   "},  # blank label: unlabelled
            {"image": {"b64": b64(good[0])}, "label": "signer_01"},  # duplicate
            {"image": {"b64": b64(good[0])}, "label": "signer_09"},  # duplicate, other label
            {"image": {"b64": b64(good[3])}, "label": "signer_02"},
        ],
    )
    write_bytes(f"{paths.inbox_dir}/signer_03/truncated.png", image_bytes(5)[:-30])
    write_bytes(f"{paths.inbox_dir}/notes.txt", b"not data")
    write_bytes(f"{paths.inbox_dir}/broken.json", b'{"instances": [')
    os.symlink(str(tmp_path / "missing.png"), f"{paths.inbox_dir}/dangling.png")

    _, summary, examples = ingest_step(paths, str(tmp_path), 0)

    n_bad = len(BAD_LINES) + 4
    assert summary["records_read"] == 1 + len(BAD_LINES) + 5 + 4
    assert (summary["examples"], summary["duplicates"], summary["unlabelled"], summary["quarantined"]) == (2, 2, 2, n_bad)
    assert summary["label_conflicts"] == 1
    assert {sha: label for sha, (_, label, _) in by_sha(examples).items()} == {
        sha256(good[0]): "signer_01",
        sha256(good[3]): "signer_02",
    }

    quarantine = read_jsonl(paths.quarantine_file(0))
    expected_reasons = [reason for reason, _ in BAD_LINES] + ["invalid_json", "unreadable_file", "unsupported_file", "corrupt_image"]
    assert sorted(q["reason"] for q in quarantine) == sorted(expected_reasons)
    assert summary["quarantine_reasons"] == {r: expected_reasons.count(r) for r in sorted(set(expected_reasons))}
    by_source = {q["source"]: q for q in quarantine}
    assert by_source["span-0/inbox/mixed.jsonl:2"]["record"] == "{not json"
    assert by_source["span-0/inbox/mixed.jsonl:4"]["record"] == {"label": "signer_01"}
    # A label with a lone surrogate cannot travel as text: its record is kept as its JSON, escapes included.
    [kept] = [q["record"] for q in quarantine if isinstance(q["record"], str) and "\\ud800" in q["record"]]
    assert json.loads(kept)["label"] == "signer_\ud800"
    assert by_source["span-0/inbox/dangling.png"]["path"] == f"{paths.inbox_dir}/dangling.png"
    truncated = by_source["span-0/inbox/signer_03/truncated.png"]
    assert (truncated["reason"], truncated["record"], truncated["span"]) == ("corrupt_image", None, 0)
    with open(truncated["path"], "rb") as f:  # the original bytes are kept in the landing folder
        assert f.read() == image_bytes(5)[:-30]

    unlabelled = read_jsonl(paths.unlabelled_file(0))
    assert [base64.b64decode(u["image"]["b64"]) for u in unlabelled] == [good[1], good[2]]
    assert all(u["label"] is None for u in unlabelled)

    duplicates = read_jsonl(summary["duplicates_file"])
    assert [(d["source"], d["duplicate_of"], d["label_conflict"]) for d in duplicates] == [
        (f"span-0/inbox/mixed.jsonl:{len(BAD_LINES) + 4}", "span-0/inbox/mixed.jsonl:1", False),
        (f"span-0/inbox/mixed.jsonl:{len(BAD_LINES) + 5}", "span-0/inbox/mixed.jsonl:1", True),
    ]


def test_spans_ingest_only_new_files_and_new_images(tmp_path):
    paths = make_paths(str(tmp_path))
    first = [image_bytes(200 + i) for i in range(3)]
    write_jsonl(f"{paths.inbox_dir}/a.jsonl", [{"b64": b64(img), "label": "signer_01"} for img in first])
    _, summary0, _ = ingest_step(paths, str(tmp_path), 0)
    assert (summary0["span"], summary0["examples"]) == (0, 3)

    # Same inbox again: no new span; the driver would resolve span 0 again.
    again = landing.collect_new_files(paths)
    assert (again.new_span, again.latest_span) == (None, 0)

    # New files: one new span with exactly their records; an image seen in span 0 is a duplicate.
    new = [image_bytes(300 + i) for i in range(2)]
    write_jsonl(f"{paths.inbox_dir}/b.jsonl", [{"b64": b64(img), "label": "signer_02"} for img in new])
    write_bytes(f"{paths.inbox_dir}/signer_01/old.png", first[0])
    collection, summary1, examples1 = ingest_step(paths, str(tmp_path), 1)
    assert (collection.new_span, summary1["span"]) == (1, 1)
    assert {sha: label for sha, (_, label, _) in by_sha(examples1).items()} == {sha256(img): "signer_02" for img in new}
    assert (summary1["records_read"], summary1["examples"], summary1["duplicates"]) == (3, 2, 1)
    [duplicate] = read_jsonl(summary1["duplicates_file"])
    assert (duplicate["source"], duplicate["duplicate_of"], duplicate["kept_label"]) == (
        "span-1/inbox/signer_01/old.png",
        "span-0",
        "signer_01",
    )


def test_restart_after_a_crash_gives_the_same_span(tmp_path):
    paths = make_paths(str(tmp_path))
    write_jsonl(f"{paths.inbox_dir}/a.jsonl", [{"b64": b64(image_bytes(400)), "label": "signer_01"}])
    ingest_step(paths, str(tmp_path), 0)
    write_jsonl(f"{paths.inbox_dir}/b.jsonl", [{"b64": b64(image_bytes(400 + i)), "label": "signer_02"} for i in range(3)])
    _, summary, examples = ingest_step(paths, str(tmp_path), 1)

    # A crash after span 1's examples were written but before its ledger: the
    # span is not processed, so the next run processes span 1 again even though
    # new files have arrived meanwhile.
    os.remove(paths.seen_file(1))
    write_jsonl(f"{paths.inbox_dir}/c.jsonl", [{"b64": b64(image_bytes(500)), "label": "signer_03"}])
    collection, retried, retried_examples = ingest_step(paths, str(tmp_path), 2)

    assert (collection.pending, retried["span"]) == (True, 1)
    assert {k: retried[k] for k in ("records_read", "examples", "duplicates")} == {"records_read": 3, "examples": 2, "duplicates": 1}
    assert retried == {**summary, "duplicates_file": retried["duplicates_file"]}
    assert by_sha(retried_examples) == by_sha(examples)

    # Span 1 is processed now: the waiting file goes into span 2.
    assert landing.collect_new_files(paths).new_span == 2
    assert [f.name for f in landing.landed_files(paths, 2)] == ["span-2/inbox/c.jsonl"]


def test_the_beam_graph_does_not_carry_the_history(tmp_path):
    """A cluster runner ships the pipeline graph to its service (Dataflow refuses graphs over ~10 MB): the earlier
    spans' ledgers are read where de-duplication runs, so the graph stays the same size as the history grows."""
    paths = make_paths(str(tmp_path))
    write_jsonl(f"{paths.inbox_dir}/a.jsonl", [{"b64": b64(image_bytes(700)), "label": "signer_01"}])
    ingest_step(paths, str(tmp_path), 0)
    again = image_bytes(701)
    write_jsonl(f"{paths.inbox_dir}/b.jsonl", [{"b64": b64(again), "label": "signer_02"}])
    assert landing.collect_new_files(paths).new_span == 1
    properties = spec.ingest_properties(paths, ("label",), DEFAULT_MAX_PIXELS)

    def graph_bytes() -> int:
        plan = executor_module._plan_span(paths, 1, str(tmp_path / "staging"), properties)
        pipeline = beam.Pipeline()
        _ = pipeline | executor_module._IngestSpan({}, "", plan)
        return len(pipeline.to_runner_api().SerializeToString())

    before = graph_bytes()
    # 20,000 more images in span 0's ledger, among them the image span 1 brings.
    lines = [f"{hashlib.sha256(str(i).encode()).hexdigest()}\tsigner_{i % 50:02d}\t1\n" for i in range(19_999)]
    with open(paths.seen_file(0), "a", encoding="utf-8") as f:
        f.writelines([*lines, f"{sha256(again)}\tsigner_09\t1\n"])
    assert graph_bytes() - before < 1_000  # ~1 MB more if the history were in it

    summary = executor_module.run_executor(paths, 1, str(tmp_path / "examples-1"))
    assert (summary["examples"], summary["duplicates"]) == (0, 1)
    [duplicate] = read_jsonl(summary["duplicates_file"])
    assert (duplicate["duplicate_of"], duplicate["kept_label"]) == ("span-0", "signer_09")


def test_a_ledger_gone_after_planning_is_an_error_not_an_empty_history(tmp_path):
    with pytest.raises(FileNotFoundError, match="ledger of span 3"):
        executor_module._read_ledgers([(3, str(tmp_path / "span-3.tsv"))])


def test_split_of_an_image_is_stable_across_runs(tmp_path):
    images = [image_bytes(600 + i) for i in range(30)]
    splits = []
    for run, order in enumerate((images, images[::-1])):
        paths = make_paths(str(tmp_path / f"run{run}"))
        write_jsonl(f"{paths.inbox_dir}/a.jsonl", [{"b64": b64(img), "label": "signer_01"} for img in order])
        _, _, examples = ingest_step(paths, str(tmp_path / f"run{run}"), 0)
        splits.append({sha: split for sha, (split, _, _) in by_sha(examples).items()})
    assert splits[0] == splits[1]
    assert set(splits[0].values()) == {"train", "eval"}


def test_unlabelled_store_can_be_labelled_and_dropped_back(tmp_path):
    paths = make_paths(str(tmp_path))
    data = image_bytes(700)
    write_jsonl(f"{paths.inbox_dir}/a.jsonl", [{"b64": b64(data)}])
    _, summary, _ = ingest_step(paths, str(tmp_path), 0)
    assert (summary["examples"], summary["unlabelled"]) == (0, 1)

    [entry] = read_jsonl(paths.unlabelled_file(0))
    write_jsonl(f"{paths.inbox_dir}/labelled.jsonl", [{**entry, "label": "signer_05"}])
    _, summary, examples = ingest_step(paths, str(tmp_path), 1)
    assert summary["examples"] == 1
    assert {sha: label for sha, (_, label, _) in by_sha(examples).items()} == {sha256(data): "signer_05"}


def test_zero_valid_new_records_is_not_an_error(tmp_path):
    paths = make_paths(str(tmp_path))
    write_jsonl(f"{paths.inbox_dir}/a.jsonl", ["{broken", json.dumps({"label": "x"})])
    _, summary, examples = ingest_step(paths, str(tmp_path), 0)
    assert (summary["records_read"], summary["examples"], summary["quarantined"]) == (2, 0, 2)
    assert examples == {"train": [], "eval": []}
    assert landing.is_processed(paths, 0)


@pytest.mark.parametrize(
    ("listing", "message"),
    [
        ("example_shard_list", "4 examples decided but 0 written"),
        ("side_shard_list", r"2 files landed, 0 reports; not reported: \['span-0/inbox/a.jsonl', 'span-0/inbox/b.jsonl'\]"),
    ],
)
def test_a_lost_shard_listing_fails_the_span_and_a_rerun_recovers(tmp_path, monkeypatch, listing, message):
    paths = make_paths(str(tmp_path))
    write_jsonl(f"{paths.inbox_dir}/a.jsonl", [{"b64": b64(image_bytes(800 + i)), "label": "signer_01"} for i in range(3)])
    write_jsonl(f"{paths.inbox_dir}/b.jsonl", [{"b64": b64(image_bytes(810)), "label": "signer_02"}])
    publish = executor_module._publish

    def publish_after_losing_the_listing(plan, *args):
        # What a filesystem that loses a write would leave: the pipeline ran, its listing is gone.
        os.remove(getattr(plan, listing))
        return publish(plan, *args)

    monkeypatch.setattr(executor_module, "_publish", publish_after_losing_the_listing)
    with pytest.raises(RuntimeError, match=message):
        ingest_step(paths, str(tmp_path), 0)
    assert not landing.is_processed(paths, 0)

    monkeypatch.setattr(executor_module, "_publish", publish)
    collection, summary, examples = ingest_step(paths, str(tmp_path), 1)
    assert (collection.latest_span, summary["records_read"], summary["examples"]) == (0, 4, 4)
    assert sum(len(split) for split in examples.values()) == 4


@pytest.mark.parametrize("label_keys", [(), ("",), ("label,caption",)])
def test_label_keys_that_cannot_be_read_back_are_refused_by_the_component_and_run_executor(tmp_path, label_keys):
    from components.ingest.component import SignatureExampleGen

    paths = make_paths(str(tmp_path))
    with pytest.raises(ValueError, match="label_keys must be non-empty keys without commas"):
        SignatureExampleGen(paths, label_keys=label_keys)
    with pytest.raises(ValueError, match="label_keys must be non-empty keys without commas"):
        executor_module.run_executor(paths, 0, str(tmp_path / "examples"), label_keys=label_keys)
