"""Trainer input pipeline throughput against its ceiling, measured in the same run.

    .venv/bin/python -m bench.bench_trainer [--steps 12] [--rounds 3]     # ~5 minutes on 2 cores

Both sides train the same model as `signflow run` on genuine data (the Xception
classifier with its signer-centre output, model.training_model) with the same
compiled step (train.compile_classifier), batch size and input shape:

  trainer  data.training_dataset: GZIP TFRecords of real signature images, decoded,
           resized and augmented in parallel by tf.data (what run_fn trains on)
  ceiling  plain Keras fit(x, y) on in-memory float32 tensors (no decoding or augmentation;
           Keras still slices and batches them); the ratio trainer/ceiling is the target
  compute  fit on one in-memory batch repeated by tf.data (no input work at all): what
           the model alone costs, for reference

Rounds alternate trainer/ceiling so a machine whose load changes during the run
affects both alike, and images per CPU-second of this process are printed beside
images/s (a shared machine slows wall time, much less CPU time). Prints the
medians and the ratio (target >= 0.85), and
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
import tf_keras  # noqa: E402

from bench.results import reserve  # noqa: E402
from components.trainer import data, model as model_lib, train  # noqa: E402
from components.trainer.config import TrainerConfig  # noqa: E402
from tests.trainer.helpers import rendered_items, write_records  # noqa: E402

TARGET_RATIO = 0.85


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating trainer/ceiling measurements")
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
        # The model `signflow run` fits on genuine data: with the signer-centre output when its weight is on (the
        # forgery head trains only on data with forgeries, which these items have none of).
        centers = config.center_loss_weight > 0
        classifier = model_lib.training_model(model_lib.build_classifier(len(labels), config.image_size),
                                              center_loss=centers)
        train.compile_classifier(classifier, 1e-4, config.label_smoothing,
                                 center_loss_weight=config.center_loss_weight if centers else None)
        pipeline = data.training_dataset(files, labels, config, centers=centers)
        images = tf.random.stateless_uniform((args.steps * batch, height, width, 3), seed=(0, 0), minval=-1.0)
        ids = tf.range(args.steps * batch) % len(labels)
        ids = (ids, ids) if centers else ids  # the targets in the training model's output order

        batch_ends: list[float] = []

        class BatchEnds(tf_keras.callbacks.Callback):
            def on_train_batch_end(self, step, logs=None):
                batch_ends.append(time.perf_counter())

        def measure(fit) -> tuple[float, float, float, float]:
            """For one fit call: (images per wall second, images per CPU second of this process, images per wall
            second from the first batch's end to the last's, seconds from the last batch's end to fit's return)."""
            batch_ends.clear()
            wall, cpu = time.perf_counter(), time.process_time()
            fit()
            done = time.perf_counter()
            images_done = args.steps * batch
            steady = (len(batch_ends) - 1) * batch / (batch_ends[-1] - batch_ends[0])
            return (images_done / (done - wall), images_done / (time.process_time() - cpu), steady,
                    done - batch_ends[-1])

        def fit_trainer() -> None:
            classifier.fit(pipeline, steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=[BatchEnds()])

        def fit_ceiling() -> None:
            classifier.fit(images, ids, batch_size=batch, epochs=1, shuffle=False, verbose=0,
                           callbacks=[BatchEnds()])

        first = tf.nest.map_structure(lambda t: t[:batch], ids)
        one_batch = tf.data.Dataset.from_tensors((images[:batch], first)).repeat()

        def fit_compute() -> None:
            classifier.fit(one_batch, steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=[BatchEnds()])

        # First calls trace the train step and fill tf.data's buffers: not timed.
        classifier.fit(pipeline, steps_per_epoch=2, epochs=1, verbose=0)
        classifier.fit(images[: 2 * batch], tf.nest.map_structure(lambda t: t[: 2 * batch], ids), batch_size=batch,
                       epochs=1, verbose=0)
        classifier.fit(one_batch, steps_per_epoch=2, epochs=1, verbose=0)
        trainer_runs, ceiling_runs, compute_runs = [], [], []
        for _ in range(args.rounds):
            trainer_runs.append(measure(fit_trainer))
            ceiling_runs.append(measure(fit_ceiling))
            compute_runs.append(measure(fit_compute))

    all_runs = (trainer_runs, ceiling_runs, compute_runs)
    trainer_rate, ceiling_rate, compute_rate = (float(np.median([run[0] for run in runs])) for runs in all_runs)
    trainer_cpu, ceiling_cpu, compute_cpu = (float(np.median([run[1] for run in runs])) for runs in all_runs)
    ratio = trainer_rate / ceiling_rate
    trainer_steady, ceiling_steady = (float(np.median([run[2] for run in runs])) for runs in all_runs[:2])
    tails = {name: [round(run[3], 2) for run in runs] for name, runs in zip(("trainer", "ceiling", "compute"), all_runs)}
    stamp = dt.datetime.now(dt.timezone.utc)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}"
    print(f"date: {stamp:%Y-%m-%d %H:%M} UTC  machine: {machine}  load average (1 min): {os.getloadavg()[0]:.2f}")
    print(f"TF {tf.__version__}, Keras {tf_keras.__version__} ({tf.keras.__name__}); Xception {height}x{width}, "
          f"batch {batch}, {args.steps} steps x {args.rounds} rounds (medians)")
    print(f"trainer (TFRecord decode + resize + augment): {trainer_rate:6.2f} images/s, "
          f"{trainer_cpu:6.2f} images/CPU-s   wall rounds {[round(run[0], 2) for run in trainer_runs]}")
    print(f"ceiling (in-memory tensors):                  {ceiling_rate:6.2f} images/s, "
          f"{ceiling_cpu:6.2f} images/CPU-s   wall rounds {[round(run[0], 2) for run in ceiling_runs]}")
    print(f"compute (one batch repeated):                 {compute_rate:6.2f} images/s, "
          f"{compute_cpu:6.2f} images/CPU-s   wall rounds {[round(run[0], 2) for run in compute_runs]}")
    print(f"ratio trainer/ceiling {ratio:.3f} wall, {trainer_cpu / ceiling_cpu:.3f} CPU "
          f"(target >= {TARGET_RATIO}) {'met' if ratio >= TARGET_RATIO else 'NOT met'}; "
          f"trainer/compute {trainer_rate / compute_rate:.3f} wall, {trainer_cpu / compute_cpu:.3f} CPU")
    # A fit call's end (its iterator's teardown) is not throughput: shown apart, and the ratio between batches.
    print(f"between the first and last batch: trainer {trainer_steady:.2f}, ceiling {ceiling_steady:.2f} images/s, "
          f"ratio {trainer_steady / ceiling_steady:.3f}; seconds from the last batch to fit's return: {tails}")
    out_dir = Path(args.out)
    out = reserve(out_dir, f"trainer-{stamp:%Y%m%dT%H%M%SZ}")
    out.write_text(json.dumps({
        "date": stamp.isoformat(timespec="seconds"), "machine": machine,
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "image_size": [height, width], "batch_size": batch, "steps": args.steps, "rounds": args.rounds,
        "trainer_images_per_s": [run[0] for run in trainer_runs],
        "ceiling_images_per_s": [run[0] for run in ceiling_runs],
        "trainer_images_per_cpu_s": [run[1] for run in trainer_runs],
        "ceiling_images_per_cpu_s": [run[1] for run in ceiling_runs],
        "compute_images_per_s": [run[0] for run in compute_runs],
        "compute_images_per_cpu_s": [run[1] for run in compute_runs],
        "ratio": ratio, "cpu_ratio": trainer_cpu / ceiling_cpu, "target": TARGET_RATIO,
        "trainer_steady_images_per_s": [run[2] for run in trainer_runs],
        "ceiling_steady_images_per_s": [run[2] for run in ceiling_runs],
        "steady_ratio": trainer_steady / ceiling_steady, "seconds_after_last_batch": tails,
    }, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
