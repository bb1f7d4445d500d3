"""Ingestion benchmark: base64 JSON Lines of signature images -> GZIP TFRecords, against a ceiling.

One run, one machine, one input file (N synthetic signatures from
data/generate_signatures.py, ~11 KB each, cached in bench/out/):

1. Ceiling: a plain Python loop that only parses each line, base64-decodes the
   image and writes the bytes to a GZIP TFRecord. No validation, no tf.Example,
   no Beam: what ingestion would cost if checking images were free.
2. Parse + validate: components.ingest.records in a loop (JSON, lenient base64,
   serving.images.inspect_image with its full decode, tf.Example), one thread, no
   Beam, written as the executor writes its shards (deflate level 0).
3. The executor: the real SignatureExampleGen executor on a landed span
   (Beam pipeline: read, validate, de-duplicate, split, write), with Beam's
   DirectRunner in memory, then with the pipeline's setting (multi_processing,
   2 workers).

Printed and written to bench/out/ingest-<timestamp>.json: MB/s of JSONL input,
records/s, and each ratio to the ceiling.

    .venv/bin/python -m bench.bench_ingest                # ~2 minutes on 2 cores
    .venv/bin/python -m bench.bench_ingest --records 300
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

# A process entry point: Keras 2 (tf-keras) before anything imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from bench.results import reserve  # noqa: E402
from components.ingest import landing  # noqa: E402
from components.ingest.executor import SHARD_OPTIONS, run_executor  # noqa: E402
from components.ingest.records import Accepted, LandedFile, read_landed_file, to_example  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
MULTI_PROCESSING = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")


def input_file(records: int, seed: int) -> Path:
    """N distinct signatures as base64 JSON Lines (cached: rendering costs ~50 ms an image)."""
    path = OUT / f"ingest-input-{seed}-{records}.jsonl"
    if path.exists():
        return path
    spec = importlib.util.spec_from_file_location("generate_signatures", ROOT / "data" / "generate_signatures.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", encoding="ascii") as f:
        for i in range(records):
            signer, sample = i % 10, 1000 + i // 10  # samples beyond the committed sample's
            f.write(gen.record_line(gen.render_signature(seed, signer, sample), gen.label_for(signer)) + "\n")
    tmp.rename(path)
    return path


def ceiling(jsonl: Path, work: Path) -> float:
    started = time.perf_counter()
    with open(jsonl, "rb") as f, tf.io.TFRecordWriter(str(work / "ceiling.gz"), options="GZIP") as writer:
        for line in f:
            writer.write(base64.b64decode(json.loads(line)["image"]["b64"]))
    return time.perf_counter() - started


def parse_and_validate(jsonl: Path, work: Path) -> float:
    landed = LandedFile(path=str(jsonl), name="bench.jsonl", order=0, folder_label=None)
    started = time.perf_counter()
    with tf.io.TFRecordWriter(str(work / "validated.gz"), options=SHARD_OPTIONS) as writer:
        for outcome in read_landed_file(landed):
            if not isinstance(outcome, Accepted):
                raise RuntimeError(f"benchmark input refused: {outcome}")
            writer.write(to_example(outcome, 0).SerializeToString())
    return time.perf_counter() - started


def executor(jsonl: Path, work: Path, beam_args: tuple[str, ...]) -> tuple[float, dict]:
    root = Path(tempfile.mkdtemp(dir=work))
    paths = landing.IngestPaths(
        inbox_dir=str(root / "inbox"),
        state_dir=str(root / "state"),
        quarantine_dir=str(root / "quarantine"),
        unlabelled_dir=str(root / "unlabelled"),
    )
    (root / "inbox").mkdir()
    shutil.copy(jsonl, root / "inbox" / "bench.jsonl")
    span = landing.collect_new_files(paths).latest_span
    started = time.perf_counter()
    summary = run_executor(paths, span, str(root / "examples"), beam_pipeline_args=beam_args)
    return time.perf_counter() - started, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000, help="signatures in the input (default 1000)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    jsonl = input_file(args.records, args.seed)
    megabytes = jsonl.stat().st_size / 1e6
    work = Path(tempfile.mkdtemp(prefix="ingest-", dir=OUT))
    try:
        results = {"ceiling (decode + write bytes)": ceiling(jsonl, work)}
        results["parse + validate (no Beam)"] = parse_and_validate(jsonl, work)
        for name, beam_args in (("executor, DirectRunner in memory", ()),
                                ("executor, DirectRunner 2 processes", MULTI_PROCESSING)):
            seconds, summary = executor(jsonl, work, beam_args)
            if summary["examples"] != args.records:
                raise RuntimeError(f"{name}: expected {args.records} examples, got {summary}")
            results[name] = seconds
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = results["ceiling (decode + write bytes)"]
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
        "records": args.records,
        "input_mb": round(megabytes, 2),
        "results": {
            name: {
                "seconds": round(s, 3),
                "mb_per_s": round(megabytes / s, 2),
                "records_per_s": round(args.records / s, 1),
                "ratio_to_ceiling": round(base / s, 3),
            }
            for name, s in results.items()
        },
    }
    print(f"{args.records} records, {megabytes:.1f} MB of JSON Lines; {report['machine']}")
    print(f"{'path':38} {'s':>7} {'MB/s':>7} {'rec/s':>8} {'x ceiling':>9}")
    for name, r in report["results"].items():
        print(f"{name:38} {r['seconds']:7.2f} {r['mb_per_s']:7.2f} {r['records_per_s']:8.1f} {r['ratio_to_ceiling']:9.3f}")
    out = reserve(OUT, f"ingest-{dt.datetime.now():%Y%m%d-%H%M%S}")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
