"""Trainer input pipeline throughput against its ceiling, measured in the same run.

    .venv/bin/python -m bench.bench_trainer [--steps 12] [--rounds 2]     # ~3 minutes on 2 cores

Both sides train the same Xception classifier with the same compiled step
(train.compile_classifier), batch size and input shape:

  trainer  data.training_dataset: GZIP TFRecords of real signature images, decoded,
           resized and augmented in parallel by tf.data (what run_fn trains on)
  ceiling  plain Keras fit on in-memory float32 tensors (no input work at all)

Rounds alternate trainer/ceiling so a machine whose load changes during the run
affects both alike. Prints images/s for each and the ratio (target >= 0.85), and
writes them to bench/out/trainer-<timestamp>.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/bench_trainer.py` as well as `-m bench.bench_trainer`
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from components.trainer import data, model as model_lib, train  # noqa: E402
from components.trainer.config import TrainerConfig  # noqa: E402
from tests.trainer.helpers import rendered_items, write_records  # noqa: E402

TARGET_RATIO = 0.85


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating trainer/ceiling measurements")
    parser.add_argument("--signers", type=int, default=6)
    parser.add_argument("--per-signer", type=int, default=12)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = parser.parse_args(argv)
    config = TrainerConfig()
    height, width = config.image_size
    batch = config.batch_size

    with tempfile.TemporaryDirectory() as scratch:
        items = rendered_items(range(args.signers), per_signer=args.per_signer)
        files = [str(write_records(Path(scratch) / "train.gz", items))]
        labels = sorted({label for _, label in items})
        tf.keras.utils.set_random_seed(0)
        classifier = model_lib.build_classifier(len(labels), config.image_size)
        train.compile_classifier(classifier, 1e-4, config.label_smoothing)
        pipeline = data.training_dataset(files, labels, config)
        images = np.random.default_rng(0).uniform(-1, 1, (args.steps * batch, height, width, 3)).astype("float32")
        ids = np.arange(args.steps * batch) % len(labels)

        def run_trainer() -> float:
            start = time.perf_counter()
            classifier.fit(pipeline, steps_per_epoch=args.steps, epochs=1, verbose=0)
            return args.steps * batch / (time.perf_counter() - start)

        def run_ceiling() -> float:
            start = time.perf_counter()
            classifier.fit(images, ids, batch_size=batch, epochs=1, shuffle=False, verbose=0)
            return args.steps * batch / (time.perf_counter() - start)

        # First calls trace the train step and fill tf.data's buffers: not timed.
        classifier.fit(pipeline, steps_per_epoch=2, epochs=1, verbose=0)
        classifier.fit(images[: 2 * batch], ids[: 2 * batch], batch_size=batch, epochs=1, verbose=0)
        trainer_rates, ceiling_rates = [], []
        for _ in range(args.rounds):
            trainer_rates.append(run_trainer())
            ceiling_rates.append(run_ceiling())

    trainer_rate, ceiling_rate = float(np.median(trainer_rates)), float(np.median(ceiling_rates))
    ratio = trainer_rate / ceiling_rate
    stamp = dt.datetime.now(dt.timezone.utc)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}"
    print(f"date: {stamp:%Y-%m-%d %H:%M} UTC  machine: {machine}  load average (1 min): {os.getloadavg()[0]:.2f}")
    print(f"TF {tf.__version__}, Keras {tf.keras.__version__}; Xception {height}x{width}, batch {batch}, "
          f"{args.steps} steps x {args.rounds} rounds")
    print(f"trainer (TFRecord decode + resize + augment): {trainer_rate:6.2f} images/s  "
          f"rounds {[round(r, 2) for r in trainer_rates]}")
    print(f"ceiling (in-memory tensors):                  {ceiling_rate:6.2f} images/s  "
          f"rounds {[round(r, 2) for r in ceiling_rates]}")
    print(f"ratio {ratio:.3f} (target >= {TARGET_RATIO}) {'met' if ratio >= TARGET_RATIO else 'NOT met'}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"trainer-{stamp:%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({
        "date": stamp.isoformat(timespec="seconds"), "machine": machine,
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "image_size": [height, width], "batch_size": batch, "steps": args.steps, "rounds": args.rounds,
        "trainer_images_per_s": trainer_rates, "ceiling_images_per_s": ceiling_rates,
        "ratio": ratio, "target": TARGET_RATIO,
    }, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
