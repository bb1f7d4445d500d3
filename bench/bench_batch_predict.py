"""Batch-prediction benchmark: the `signflow batch-predict` Beam pipeline against the in-process ceiling.

One run, one machine, one model and one set of images (the committed sample's
records, half as base64 JSON Lines and half as <label>/<image> files, the two
shapes data arrives in):

1. Ceiling: the model's predict_label signature (what batch prediction calls) called in this process on
   the same decoded image bytes, in batches of --batch-size (what batch
   prediction could do if reading, validating, Beam and writing cost nothing).
   Measured before, between and after the pipeline runs. Each run is compared
   with the better of the two ceilings measured next to it (other work on a
   shared machine comes and goes within minutes), and with the best of all;
   taking the better figure, other work lowers the ratios rather than raising them.
2. The pipeline (pipeline.batch.run: DirectRunner in memory, the same
   batch size), timed from launch to both output files in place: on N images
   (cold: the first pipeline of the process), again on N, then on 2N images.
   End to end = images / wall time, everything included. RunInference's own
   metrics split the wall time: model load, model calls (whose rate, compared
   with the ceiling, is what RunInference adds around a call), and the rest
   (Beam start-up, reading and validating records, writing).

Printed and written to bench/out/batch-predict-<timestamp>.json, with the
largest score difference between the pipeline's lines and the ceiling's outputs.

    .venv/bin/python -m bench.bench_batch_predict                    # Xception-shaped, 64 images
    .venv/bin/python -m bench.bench_batch_predict --images 128 --batch-size 32 --build tiny
    .venv/bin/python -m bench.bench_batch_predict --images 1000          # 1,000 then 2,000 images (the sample reused)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

# A process entry point: Keras 2 (tf-keras) before anything imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/bench_batch_predict.py` as well as `-m bench.bench_batch_predict`
    sys.path.insert(0, str(ROOT))

# NOTE: before Beam: importing apache_beam appends IPython/extensions to
# sys.path, whose regular `tests` package would then shadow this namespace one.
from bench.results import reserve  # noqa: E402
from tests.fixtures.tiny_model import DEFAULT_LABELS, build_tiny_saved_model  # noqa: E402

from components.ingest.records import Accepted, read_landed_file  # noqa: E402
from pipeline import batch as batch_predict  # noqa: E402
from serving import layout  # noqa: E402

MODEL_NAME = "xception"
SAMPLE = ROOT / "data" / "sample"
# The ceiling loop runs at least this long and this many rounds over the images.
MIN_CEILING_SECONDS = 3.0
MIN_CEILING_ROUNDS = 2


def _model(args: argparse.Namespace, scratch: Path) -> tuple[Path, str]:
    """(model base path, description): the exported model if there is one, else one built here."""
    base = Path(args.model_base_path) if args.model_base_path else ROOT / "serving_model" / MODEL_NAME
    versions = layout.list_versions(base)
    if versions:
        return base.resolve(), f"exported model {base} (version {versions[-1]})"
    if args.model_base_path:
        raise SystemExit(f"no version folder under {base}")
    base = scratch / MODEL_NAME
    if args.build == "xception":
        from components.trainer.config import TrainerConfig
        from components.trainer.export import export_serving_model
        from components.trainer.model import build_classifier

        size = TrainerConfig().image_size
        labels = [f"signer_{i:02d}" for i in range(10)]
        export_serving_model(build_classifier(len(labels), size), labels, size, base / "1")
        return base, (f"Xception {size[0]}x{size[1]}, 10 classes, untrained (components/trainer/model.py; "
                      "no exported model under serving_model/xception)")
    build_tiny_saved_model(base / "1", labels=DEFAULT_LABELS)
    return base, "tiny CNN from tests/fixtures/tiny_model.py (no exported model under serving_model/xception)"


def _inputs(count: int, folder: Path) -> Path:
    """`count` sample records: the first half as JSON Lines, the rest as <label>/<image> files.

    Past the committed sample's size, its records are used again under other names
    (signatures-<k>.jsonl, <label>/<k>-<image>): the same bytes, distinct records.
    """
    lines = (SAMPLE / "signatures.jsonl").read_text(encoding="utf-8").splitlines()
    files = sorted(p for p in (SAMPLE / "images").glob("*/*") if p.is_file())
    in_jsonl = count // 2 + count % 2
    in_files = count - in_jsonl
    folder.mkdir(parents=True)
    for k, start in enumerate(range(0, in_jsonl, len(lines))):
        name = "signatures.jsonl" if k == 0 else f"signatures-{k}.jsonl"
        chunk = lines[: min(len(lines), in_jsonl - start)]
        (folder / name).write_text("\n".join(chunk) + "\n", encoding="utf-8")
    for i in range(in_files):
        path = files[i % len(files)]
        k = i // len(files)
        (folder / path.parent.name).mkdir(exist_ok=True)
        shutil.copyfile(path, folder / path.parent.name / (path.name if k == 0 else f"{k}-{path.name}"))
    return folder


def _decoded(folder: Path) -> dict[str, bytes]:
    """source -> image bytes, read exactly as the pipeline reads them (the ceiling's input)."""
    images = {}
    for landed in batch_predict.expand_inputs([str(folder)]):
        for outcome in read_landed_file(landed):
            if not isinstance(outcome, Accepted):
                raise SystemExit(f"sample record refused: {outcome.source}: {outcome.reason}")
            images[outcome.source] = outcome.image
    return images


def measure_ceiling(signature, images: list[bytes], batch_size: int) -> dict:
    """predict_label in this process, batch after batch over `images`, warm."""
    import tensorflow as tf

    batches = [tf.constant(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    t0 = time.perf_counter()
    signature(image_bytes=batches[0])["score"].numpy()  # warm-up: graph optimisation, allocator, caches
    first_call_s = time.perf_counter() - t0
    done = rounds = 0
    cpu0, start = time.process_time(), time.perf_counter()
    while rounds < MIN_CEILING_ROUNDS or time.perf_counter() - start < MIN_CEILING_SECONDS:
        for batch in batches:
            signature(image_bytes=batch)["score"].numpy()
            done += int(batch.shape[0])
        rounds += 1
    seconds = time.perf_counter() - start
    return {"images": done, "seconds": round(seconds, 3), "images_per_s": round(done / seconds, 2),
            "cpu_ms_per_image": round((time.process_time() - cpu0) * 1000 / done, 3),
            # Paid once per loaded model, by the pipeline too (inside its model calls).
            "first_call_s": round(first_call_s, 3),
            "steady_call_s": round(seconds / (rounds * len(batches)), 3)}


def run_pipeline(model: batch_predict.ModelVersion, folder: Path, out: Path, batch_size: int) -> dict:
    files = batch_predict.expand_inputs([str(folder)])
    start = time.perf_counter()
    summary = batch_predict.run(model, files, str(out), str(out.with_suffix(".errors.jsonl")), batch_size=batch_size,
                                beam_args=["--direct_running_mode=in_memory"])
    seconds = time.perf_counter() - start
    if summary.errors or summary.predicted != summary.read:
        raise SystemExit(f"pipeline refused records: {summary}")
    return {
        "images": summary.predicted,
        "seconds": round(seconds, 3),
        "images_per_s": round(summary.predicted / seconds, 2),
        "model_load_s": round(summary.model_load_s, 3),
        "model_calls": summary.model_calls,
        "model_call_s": round(summary.model_call_s, 3),
        "model_call_images_per_s": round(summary.predicted / summary.model_call_s, 2) if summary.model_call_s else None,
        "rest_s": round(seconds - summary.model_load_s - summary.model_call_s, 3),
    }


def _machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "schedulable_cpus": len(os.sched_getaffinity(0)),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # Other work on the machine skews every figure: recorded with the results.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-path", help="a model folder with version folders (default: serving_model/xception, "
                                                  "else one built per --build)")
    parser.add_argument("--build", choices=("xception", "tiny"), default="xception",
                        help="model to build when there is no exported one (default: %(default)s)")
    parser.add_argument("--images", type=int, default=64, help="N: images in the smaller run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"), help="folder for the JSON results")
    args = parser.parse_args(argv)

    import tensorflow as tf

    machine = _machine()
    if machine["load_average_1m"] > 0.5:
        print(f"warning: load average {machine['load_average_1m']} before the run; figures will be low", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="signflow-bench-batch-") as scratch_dir:
        scratch = Path(scratch_dir)
        base, description = _model(args, scratch)
        model = batch_predict.resolve_model(base, None)
        small, large = _inputs(args.images, scratch / "in-n"), _inputs(2 * args.images, scratch / "in-2n")
        images = _decoded(large)
        print(f"model: {description}\nimages: N={args.images} and 2N={2 * args.images}, batch size {args.batch_size}, "
              f"{sum(map(len, images.values())) // len(images)} bytes on average", flush=True)

        loaded = tf.saved_model.load(str(model.path))  # held: its signatures only weakly reference its variables
        signature = loaded.signatures["predict_label"]
        ceilings = [measure_ceiling(signature, list(images.values()), args.batch_size)]
        print(f"ceiling: {ceilings[0]['images_per_s']:.1f} img/s; first call on the loaded model "
              f"{ceilings[0]['first_call_s']:.2f} s, then {ceilings[0]['steady_call_s']:.2f} s a call", flush=True)
        runs, adjacent = {}, {}
        # The first pipeline in a process also pays Beam's imports and caches:
        # reported apart as "cold".
        for name, folder in (("cold_n", small), ("n", small), ("2n", large)):
            runs[name] = run_pipeline(model, folder, scratch / f"out-{name}" / "predictions.jsonl", args.batch_size)
            r = runs[name]
            print(f"pipeline {name:>6}: {r['images']} images in {r['seconds']:.2f} s = {r['images_per_s']:.1f} img/s "
                  f"end to end (model load {r['model_load_s']:.1f} s, {r['model_calls']} model calls "
                  f"{r['model_call_s']:.1f} s, the rest {r['rest_s']:.1f} s)", flush=True)
            ceilings.append(measure_ceiling(signature, list(images.values()), args.batch_size))
            adjacent[name] = max(ceilings[-2:], key=lambda c: c["images_per_s"])
            print(f"ceiling: {ceilings[-1]['images_per_s']:.1f} img/s", flush=True)

        # The pipeline's answers against the ceiling's (same images, one batch at a time).
        lines = [json.loads(line) for line in (scratch / "out-2n" / "predictions.jsonl").read_text().splitlines()]
        sources = sorted(images)
        direct = {}
        for i in range(0, len(sources), args.batch_size):
            chunk = sources[i:i + args.batch_size]
            outputs = signature(image_bytes=tf.constant([images[s] for s in chunk]))
            for s, label, score in zip(chunk, outputs["label"].numpy(), outputs["score"].numpy()):
                direct[s] = (label.decode(), float(score))
        max_score_diff = max(abs(line["score"] - direct[line["source"]][1]) for line in lines)
        labels_equal = all(line["label"] == direct[line["source"]][0] for line in lines)

    ceiling = max(ceilings, key=lambda c: c["images_per_s"])
    result = {
        "model": description,
        "batch_size": args.batch_size,
        "images_n": args.images,
        "ceiling": ceiling,
        "ceiling_runs": ceilings,
        **{f"pipeline_{name}": r for name, r in runs.items()},
        **{f"ratio_end_to_end_{name}": round(r["images_per_s"] / ceiling["images_per_s"], 3) for name, r in runs.items()},
        **{f"ratio_end_to_end_{name}_adjacent_ceiling": round(r["images_per_s"] / adjacent[name]["images_per_s"], 3)
           for name, r in runs.items()},
        "ratio_model_calls_2n": (round(runs["2n"]["model_call_images_per_s"] / ceiling["images_per_s"], 3)
                                 if runs["2n"]["model_call_images_per_s"] else None),
        "labels_equal_to_ceiling": labels_equal,
        "max_score_diff_to_ceiling": max_score_diff,
    }
    print(f"\nceiling {ceiling['images_per_s']:.1f} img/s (predict_label in-process, batch {args.batch_size})")
    for name, r in runs.items():
        print(f"pipeline {name:>6} ({r['images']:>4} images): {r['images_per_s']:7.1f} img/s end to end, "
              f"x{result[f'ratio_end_to_end_{name}']:.2f} of the ceiling, "
              f"x{result[f'ratio_end_to_end_{name}_adjacent_ceiling']:.2f} of the better ceiling next to it "
              f"({adjacent[name]['images_per_s']:.1f} img/s)")
    if result["ratio_model_calls_2n"] is not None:
        print(f"model calls inside the 2N run: {runs['2n']['model_call_images_per_s']:.1f} img/s, "
              f"x{result['ratio_model_calls_2n']:.2f} of the ceiling")
    print(f"answers: labels equal to the ceiling's: {labels_equal}; largest score difference {max_score_diff:.2e}")

    out_dir = Path(args.out)
    stamp = dt.datetime.now(dt.timezone.utc)
    out = reserve(out_dir, f"batch-predict-{stamp:%Y%m%dT%H%M%SZ}")
    out.write_text(json.dumps({"date": stamp.isoformat(timespec="seconds"), "machine": machine,
                               "load_average_1m_after": round(os.getloadavg()[0], 2), **result}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
