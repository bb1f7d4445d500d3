"""The committed schema against TFDV statistics of real ExampleGen output (what StatisticsGen + ExampleValidator compute)."""
from __future__ import annotations

import glob
import os

import tensorflow as tf
import tensorflow_data_validation as tfdv

from components.ingest import landing
from components.ingest.executor import run_executor
from components.schema import SCHEMA_PATH
from tests.ingest.helpers import b64, image_bytes, make_paths, read_examples, write_bytes, write_jsonl

SCHEMA = tfdv.load_schema_text(SCHEMA_PATH)


def _anomalies(data_location: str) -> dict[str, list[str]]:
    stats = tfdv.generate_statistics_from_tfrecord(data_location, stats_options=tfdv.StatsOptions(schema=SCHEMA))
    anomalies = tfdv.validate_statistics(stats, SCHEMA)
    return {name: sorted(r.short_description for r in info.reason) for name, info in anomalies.anomaly_info.items()}


def _ingest_span(paths, root: str, run: int, labels: list[str], first_seed: int) -> str:
    write_jsonl(
        f"{paths.inbox_dir}/batch{run}.jsonl",
        [{"image": {"b64": b64(image_bytes(first_seed + i))}, "label": label} for i, label in enumerate(labels)],
    )
    span = landing.collect_new_files(paths).latest_span
    uri = os.path.join(root, "examples", str(run))
    run_executor(paths, span, uri)
    return uri


def test_schema_accepts_clean_data_and_new_signers_and_flags_broken_examples(tmp_path):
    paths = make_paths(str(tmp_path))
    first = _ingest_span(paths, str(tmp_path), 0, ["signer_01", "signer_02"] * 6, 0)
    assert _anomalies(os.path.join(first, "Split-*", "*.gz")) == {}

    # A span whose signers were never seen before.
    second = _ingest_span(paths, str(tmp_path), 1, ["signer_77", "signer_78"] * 3, 100)
    assert _anomalies(os.path.join(second, "Split-*", "*.gz")) == {}

    # Real examples from the first span, each broken in one way ExampleGen itself never writes.
    examples = [e for split in read_examples(first).values() for e in split]
    no_label, empty_image, bad_format, zero_width = (tf.train.Example.FromString(e.SerializeToString()) for e in examples[:4])
    del no_label.features.feature["label"]
    empty_image.features.feature["image_raw"].bytes_list.ClearField("value")
    bad_format.features.feature["format"].bytes_list.value[0] = b"TIFF"
    zero_width.features.feature["width"].int64_list.value[0] = 0
    broken = str(tmp_path / "broken.tfrecord")
    with tf.io.TFRecordWriter(broken) as writer:
        for example in [no_label, empty_image, bad_format, zero_width, *examples[4:]]:
            writer.write(example.SerializeToString())

    assert _anomalies(broken) == {
        "label": ["Column dropped"],
        "image_raw": ["Missing values"],
        "format": ["Unexpected string values"],
        "width": ["Out-of-range values"],
    }


def test_an_empty_span_has_no_anomalies(tmp_path):
    paths = make_paths(str(tmp_path))
    write_jsonl(f"{paths.inbox_dir}/a.jsonl", ["{broken"])
    landing.collect_new_files(paths)
    uri = str(tmp_path / "examples")
    assert run_executor(paths, 0, uri)["examples"] == 0
    files = glob.glob(os.path.join(uri, "Split-*", "*.gz"))
    assert files  # empty splits are still written
    assert _anomalies(os.path.join(uri, "Split-*", "*.gz")) == {}


def test_a_span_with_forgeries_has_no_anomalies_and_neither_has_one_from_before_forgeries(tmp_path):
    paths = make_paths(str(tmp_path))
    records = [{"image": {"b64": b64(image_bytes(300 + i))}, "label": f"signer_0{i % 3}", "genuine": i % 4 != 0}
               for i in range(12)]
    write_jsonl(f"{paths.inbox_dir}/batch.jsonl", records)
    write_bytes(f"{paths.inbox_dir}/signer_01_forg/a.png", image_bytes(320))
    write_bytes(f"{paths.inbox_dir}/signer_02/forged/b.png", image_bytes(321))
    landing.collect_new_files(paths)
    uri = str(tmp_path / "examples")
    assert run_executor(paths, 0, uri)["forgeries"] == 5
    assert _anomalies(os.path.join(uri, "Split-*", "*.gz")) == {}

    examples = [e for split in read_examples(uri).values() for e in split]
    assert {e.features.feature["genuine"].int64_list.value[0] for e in examples} == {0, 1}

    def rewritten(name: str, change) -> str:
        path = str(tmp_path / name)
        with tf.io.TFRecordWriter(path) as writer:
            for example in examples:
                copy = tf.train.Example.FromString(example.SerializeToString())
                change(copy)
                writer.write(copy.SerializeToString())
        return path

    def from_before_forgeries(example):
        del example.features.feature["genuine"]

    # A span ingested before forgeries were recorded: no example has the feature.
    assert _anomalies(rewritten("old.tfrecord", from_before_forgeries)) == {}

    def out_of_range(example):
        example.features.feature["genuine"].int64_list.value[0] = 2

    def two_values(example):
        example.features.feature["genuine"].int64_list.value.append(1)

    assert _anomalies(rewritten("two.tfrecord", out_of_range)) == {"genuine": ["Out-of-range values"]}
    assert _anomalies(rewritten("many.tfrecord", two_values)) == {"genuine": ["Superfluous values"]}
