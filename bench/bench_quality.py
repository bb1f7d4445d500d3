"""Quality benchmark on real signatures: identification top-1 through the served API, per writer.

Given a folder of `<writer>/<image>` files (genuine signatures; folders ending in
`_forg` or named `forged` are skipped), each writer's images are split with a fixed
seed: `--train-share` of them (at least one) go to training, the rest are held out.

    pipeline (default)  what a user does: the training images go into an inbox as
                        `<writer>/<file>`, `signflow run` trains, gates, checks and
                        pushes; the pushed version is served by signflow's server on
                        127.0.0.1 and every held-out image is sent to
                        `predict_label` over REST, one request each.
    trainer             the Trainer's code alone (no TFX), for comparing settings
                        quickly: the training images are written as the Examples
                        ingestion writes, split train/eval as ingestion splits
                        them, trained with `components.trainer.train`, exported, and
                        the held-out images go through the exported `predict_label`
                        signature in-process (the graph the server runs).

Settings are TrainerConfig fields (`--set image_height=96`); nothing else differs
between runs. Results: printed, and written as JSON to bench/out/quality-<mode>-<time>.json
with top-1, per-writer accuracy, the most confused pairs and timings, and the
per-writer accuracy as a chart beside it (.png, weakest first).

    .venv/bin/python -m bench.bench_quality /path/to/train --mode trainer --set scratch_epochs=12
    .venv/bin/python -m bench.bench_quality /path/to/train           # the user's path, ~1 hour on 2 cores

Research data stays out of the repository: point this at a folder outside it.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import base64
import collections
import datetime as dt
import hashlib
import json
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp"}
MODEL = "xception"


def writer_images(folder: Path) -> dict[str, list[Path]]:
    """Genuine images per writer: `<writer>/<image>`, skipping forgery folders (`*_forg`, `forged`)."""
    writers: dict[str, list[Path]] = {}
    for directory in sorted(p for p in folder.iterdir() if p.is_dir()):
        if directory.name.endswith("_forg") or directory.name == "forged":
            continue
        images = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            writers[directory.name] = images
    if not writers:
        raise SystemExit(f"no <writer>/<image> folders under {folder}")
    return writers


def split_writers(writers: dict[str, list[Path]], share: float, seed: int) -> tuple[dict, dict]:
    """Per writer, a seeded shuffle: the first `share` (at least one, at most all but one) train, the rest held out."""
    train, held_out = {}, {}
    for writer, images in writers.items():
        order = list(images)
        random.Random(f"{seed}:{writer}").shuffle(order)
        count = min(max(1, round(share * len(order))), len(order) - 1)
        train[writer], held_out[writer] = order[:count], order[count:]
    return train, held_out


def score(answers: list[tuple[str, str]]) -> dict[str, Any]:
    """top-1, per-writer accuracy (weakest first) and the most frequent confusions from (true, predicted) pairs."""
    per_writer: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    confusions: collections.Counter = collections.Counter()
    for true, predicted in answers:
        per_writer[true][1] += 1
        if true == predicted:
            per_writer[true][0] += 1
        else:
            confusions[(true, predicted)] += 1
    ranked = sorted(per_writer.items(), key=lambda item: (item[1][0] / item[1][1], item[0]))
    correct = sum(c for c, _ in per_writer.values())
    return {
        "top1": correct / len(answers),
        "correct": correct,
        "total": len(answers),
        "per_writer": {w: {"correct": c, "total": n, "accuracy": c / n} for w, (c, n) in ranked},
        "writers_below_100": sum(1 for c, n in per_writer.values() if c < n),
        "top_confusions": [{"true": t, "predicted": p, "count": n} for (t, p), n in confusions.most_common(10)],
    }


def run_trainer_mode(train: dict, held_out: dict, overrides: dict, work: Path) -> dict[str, Any]:
    import tensorflow as tf

    from components.trainer import data, train as train_lib
    from components.trainer.config import TrainerConfig
    from components.trainer.export import export_serving_model
    from serving.contract import IMAGE_FEATURE, IMAGE_INPUT, LABEL_FEATURE, LABEL_OUTPUT, SHA256_FEATURE

    from components.ingest.executor import split_assigner
    from components.ingest.spec import OUTPUT_CONFIG

    config = TrainerConfig.from_dict(overrides)
    assign = split_assigner(OUTPUT_CONFIG)
    splits: dict[str, list[tf.train.Example]] = {"train": [], "eval": []}
    for writer, paths in train.items():
        for path in paths:
            raw = path.read_bytes()
            digest = hashlib.sha256(raw).hexdigest()
            split = assign(digest)
            feature = {IMAGE_FEATURE: raw, LABEL_FEATURE: writer.encode(), SHA256_FEATURE: digest.encode()}
            splits[split].append(tf.train.Example(features=tf.train.Features(feature={
                k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v])) for k, v in feature.items()})))
    files = {}
    for split, examples in splits.items():
        files[split] = str(work / f"{split}.tfrecord.gz")
        with tf.io.TFRecordWriter(files[split], options="GZIP") as writer:
            for example in examples:
                writer.write(example.SerializeToString())

    started = time.monotonic()
    result = train_lib.train(config, [files["train"]], [files["eval"]])
    train_seconds = time.monotonic() - started
    export_dir = work / "export"
    export_serving_model(result.model, result.labels, config.image_size, export_dir,
                         preprocessing=config.preprocessing)
    signature = tf.saved_model.load(str(export_dir)).signatures["predict_label"]
    started = time.monotonic()
    answers = []
    for writer, paths in held_out.items():
        for path in paths:
            label = signature(**{IMAGE_INPUT: tf.constant([path.read_bytes()])})[LABEL_OUTPUT].numpy()[0]
            answers.append((writer, label.decode()))
    return {
        "settings": config.to_dict(), "init": result.init, "schedule": result.schedule,
        "best_epoch": result.best_epoch, "trainer_eval_accuracy": result.eval_accuracy,
        "num_train_examples": result.num_train_examples, "num_eval_examples": result.num_eval_examples,
        "history": result.history,
        "seconds": {"train": train_seconds, "predict_held_out": time.monotonic() - started},
        **score(answers),
    }


def run_pipeline_mode(train: dict, held_out: dict, overrides: dict, work: Path) -> dict[str, Any]:
    import requests

    from serving.layout import list_versions
    from serving.server import ServerThread
    from serving.settings import build_settings

    inbox = work / "inbox"
    for writer, paths in train.items():
        (inbox / writer).mkdir(parents=True)
        for path in paths:
            shutil.copyfile(path, inbox / writer / path.name)
    serving_dir = work / "serving_model"
    (serving_dir / MODEL).mkdir(parents=True)
    config = {
        "pipeline_root": str(work / "pipeline_root"), "inbox_dir": str(inbox), "sample_dir": None,
        "serving_dir": str(serving_dir), "trainer": overrides,
    }
    config_file = work / "signflow.json"
    config_file.write_text(json.dumps(config))
    summary_file = work / "run_summary.json"
    log_path = work / "run.log"
    print(f"signflow run: log {log_path}", flush=True)
    started = time.monotonic()
    with open(log_path, "w") as log:
        completed = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config_file), "--summary-json",
             str(summary_file)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log,
            stderr=subprocess.STDOUT, check=False)
    run_seconds = time.monotonic() - started
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    outcome = {"run_seconds": run_seconds, "run_exit_code": completed.returncode, "run_summary": summary}
    versions = list_versions(serving_dir / MODEL)
    if not versions:
        print(f"nothing was pushed (exit {completed.returncode}); see {log_path}", flush=True)
        return {**outcome, "pushed": False}

    settings = build_settings(model_name=MODEL, model_base_path=str(serving_dir / MODEL)).replace(
        grpc_port=0, rest_api_port=0)
    answers = []
    with ServerThread(settings) as server, requests.Session() as session:
        url = f"{server.rest_url}/v1/models/{MODEL}:predict"
        started = time.monotonic()
        for writer, paths in held_out.items():
            for path in paths:
                body = {"signature_name": "predict_label",
                        "instances": [{"image_bytes": {"b64": base64.b64encode(path.read_bytes()).decode()}}]}
                answer = session.post(url, json=body, timeout=60)
                answer.raise_for_status()
                answers.append((writer, answer.json()["predictions"][0]["label"]))
        predict_seconds = time.monotonic() - started
    return {**outcome, "pushed": True, "version": versions[-1], "settings": overrides,
            "seconds": {"run": run_seconds, "predict_held_out": predict_seconds}, **score(answers)}


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="<writer>/<image> folders of genuine signatures")
    parser.add_argument("--mode", choices=("pipeline", "trainer"), default="pipeline")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="a TrainerConfig field (JSON value), e.g. --set image_height=96")
    parser.add_argument("--train-share", type=float, default=2 / 3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="", help="a name for this run in the output")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    writers = writer_images(args.folder)
    train, held_out = split_writers(writers, args.train_share, args.seed)
    overrides = _parse_overrides(args.overrides)
    work = Path(tempfile.mkdtemp(prefix="signflow-bench-quality-"))
    print(f"{len(writers)} writers, {sum(map(len, train.values()))} training images, "
          f"{sum(map(len, held_out.values()))} held out; work folder {work}", flush=True)
    started = time.monotonic()
    try:
        runner = run_trainer_mode if args.mode == "trainer" else run_pipeline_mode
        result = runner(train, held_out, overrides, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "quality", "mode": args.mode, "name": args.name, "data": str(args.folder),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "writers": len(writers), "train_images": sum(map(len, train.values())),
        "held_out_images": sum(map(len, held_out.values())), "train_share": args.train_share, "seed": args.seed,
        "wall_seconds": time.monotonic() - started, **result,
    }
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"quality-{args.mode}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    if "per_writer" in result:
        from components.trainer.report import SignerAccuracy, plot_per_signer_accuracy

        plot_per_signer_accuracy([SignerAccuracy(w, v["correct"], v["total"]) for w, v in result["per_writer"].items()],
                                 path.with_suffix(".png"))
    if "top1" in result:
        weakest = list(result["per_writer"].items())[:3]
        print(f"\n{args.mode} {args.name}: top-1 {result['top1']:.4f} ({result['correct']}/{result['total']}) "
              f"in {result['wall_seconds'] / 60:.1f} min; weakest: "
              + ", ".join(f"{w} {v['correct']}/{v['total']}" for w, v in weakest))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
