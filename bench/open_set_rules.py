"""Open-set rules compared offline on a model `bench_quality --keep` pushed: which score best tells unknown writers.

Given the data folder and the work folder of a `bench.bench_quality --keep` run (same
--seed), this rebuilds that run's split, sends every image through the pushed
SavedModel's own graph (its preprocessing and backbone: the `model_inputs` and
`forward` functions of the export), refits verification with `fit_verification`
on the pipeline's own train split (the train split of the run's Examples), and
scores the held-out images of enrolled writers and the images of unknown writers
by several rules for "unknown":

    svm-top        the calibrated SVM score of the signer the softmax names
    svm-max        the largest calibrated SVM score over all signers
    softmax        the softmax's top probability
    nearest-any    cosine to the nearest training reference of any signer
    nearest-top    cosine to the named signer's nearest training reference
    product        the export's rule: mean cosine to the named signer's
                   `open_set_neighbours` nearest references

For each rule: the share of unknown writers' images rejected at the best cut that
costs enrolled writers at most --cost of top-1 (the cut chosen on these test
images, so an upper bound for every rule alike), and for `product` also at the cut
the model itself sets. Printed, and written to bench/out/open-set-rules-<time>.json.

    .venv/bin/python -m bench.bench_quality /path/to/train --keep            # prints its work folder
    .venv/bin/python -m bench.open_set_rules /path/to/train /tmp/signflow-bench-quality-XXXX
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import datetime as dt
import glob
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from bench.results import reserve
from bench import bench_quality as bq
from components.trainer.embeddings import Embeddings
from components.trainer.verification import (
    VerificationSettings,
    fit_verification,
    l2_normalize,
    stranger_images,
)
from serving.contract import SHA256_FEATURE

BATCH = 16


def _pushed_version(work: Path) -> Path:
    versions = [p for p in (work / "serving_model" / bq.MODEL).iterdir() if p.name.isdigit()]
    if not versions:
        raise SystemExit(f"no pushed version under {work / 'serving_model' / bq.MODEL}")
    return max(versions, key=lambda p: int(p.name))


def _train_split_sha256(work: Path) -> set[str]:
    pattern = str(work / "pipeline_root" / "**" / "Split-train" / "*.gz")
    shas = set()
    for path in glob.glob(pattern, recursive=True):
        if "ExampleGen" not in path:
            continue
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            example = tf.train.Example.FromString(record.numpy())
            shas.add(example.features.feature[SHA256_FEATURE].bytes_list.value[0].decode())
    if not shas:
        raise SystemExit(f"no train split of Examples under {work / 'pipeline_root'}")
    return shas


def _forward(model, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(softmax [N, K], pooled features [N, D]) from the export's own graph."""
    probabilities, features = [], []
    for start in range(0, len(images), BATCH):
        p, f = model.forward(model.model_inputs(tf.constant(images[start:start + BATCH])))
        probabilities.append(p.numpy())
        features.append(f.numpy())
    return np.concatenate(probabilities), np.concatenate(features)


def best_rejection(known_ok: np.ndarray, known: np.ndarray, unknown: np.ndarray, cost: float) -> float:
    """The largest share of `unknown` under a cut that rejects at most `cost` of the rows (correct ones among
    `known_ok`); "unknown" is score < cut."""
    correct = np.sort(known[known_ok])
    allowed = int(np.floor(cost * len(known_ok)))
    cut = correct[allowed] if allowed < len(correct) else np.inf
    return float((unknown < cut).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the data folder bench_quality was given")
    parser.add_argument("work", type=Path, help="the work folder of a bench_quality --keep run")
    parser.add_argument("--seed", type=int, default=0, help="the --seed of that run (its split: the defaults)")
    parser.add_argument("--cost", type=float, default=0.02, help="top-1 the open set may cost enrolled writers")
    args = parser.parse_args()

    split = bq.make_split(*bq.writer_images(args.folder), pipeline=True, train_share=bq.TRAIN_SHARE,
                          forgery_train_share=bq.FORGERY_TRAIN_SHARE, unknown_writers=bq.UNKNOWN_WRITERS,
                          seed=args.seed)
    in_split = _train_split_sha256(args.work)
    fitted = lambda paths: [p for p in paths if hashlib.sha256(p.read_bytes()).hexdigest() in in_split]  # noqa: E731

    version = _pushed_version(args.work)
    model = tf.saved_model.load(str(version))
    labels = json.loads((version / "assets.extra" / "signflow_model.json").read_text())["labels"]
    groups = {
        "train": [(p, w) for w, paths in split.train.items() for p in fitted(paths)],
        "forged": [(p, w) for w, paths in split.train_forged.items() for p in fitted(paths)],
        "held_out": [(p, w) for w, paths in split.held_out.items() for p in paths],
        "unknown": [(p, w) for w, paths in split.unknown.items() for p in paths],
    }
    out = {name: _forward(model, [p.read_bytes() for p, _ in rows]) for name, rows in groups.items()}
    writers = {name: np.array([w for _, w in rows]) for name, rows in groups.items()}
    strangers = _forward(model, stranger_images())[1]

    claimed = writers["forged"]
    verification = fit_verification(
        Embeddings(tuple(str(i) for i in range(len(writers["train"]))), tuple(writers["train"]), out["train"][1]),
        VerificationSettings(),
        {w: out["forged"][1][claimed == w] for w in sorted(set(claimed))}, strangers)
    references = l2_normalize(out["train"][1])

    def scores(name: str) -> dict[str, np.ndarray]:
        probabilities, features = out[name]
        named = np.array(labels)[probabilities.argmax(axis=1)]
        unit = l2_normalize(features)
        cosines = unit @ references.T
        svm = np.stack([verification.score(features, [s] * len(features)) for s in verification.signers], axis=1)
        position = {s: j for j, s in enumerate(verification.signers)}
        return {
            "svm-top": svm[np.arange(len(named)), [position[n] for n in named]],
            "svm-max": svm.max(axis=1),
            "softmax": probabilities.max(axis=1),
            "nearest-any": cosines.max(axis=1),
            "nearest-top": np.array([cosines[i, writers["train"] == n].max() for i, n in enumerate(named)]),
            "product": verification.open_set_similarity(features, list(named)),
            "named": named,
        }

    known, strange = scores("held_out"), scores("unknown")
    correct = known["named"] == writers["held_out"]
    result = {
        "benchmark": "open_set_rules", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": str(args.folder), "work": str(args.work), "version": version.name, "seed": args.seed,
        "cost": args.cost, "closed_set_top1": float(correct.mean()),
        "held_out_images": int(len(correct)), "unknown_images": int(len(strange["named"])),
        "open_set_neighbours": verification.open_set_neighbours, "rules": {},
    }
    print(f"closed-set top-1 {correct.mean():.4f} on {len(correct)} held-out images; "
          f"{len(strange['named'])} images of unknown writers")
    for rule in ("svm-top", "svm-max", "softmax", "nearest-any", "nearest-top", "product"):
        rejected = best_rejection(correct, known[rule], strange[rule], args.cost)
        result["rules"][rule] = {"rejected_at_best_cut": rejected}
        print(f"  {rule:12s} unknown writers rejected at the best cut costing <= {args.cost:.0%}: {rejected:.3f}")
    cut = verification.open_set_threshold
    own = {"cut": cut, "rejected": float((strange["product"] < cut).mean()),
           "cost": float((correct & (known["product"] < cut)).mean())}
    result["rules"]["product"]["model_cut"] = own
    print(f"  product at the model's own cut {cut:.4f}: unknown writers rejected {own['rejected']:.3f}, "
          f"top-1 cost {own['cost']:.4f}")
    path = reserve(bq.ROOT / "bench" / "out", f"open-set-rules-{dt.datetime.now():%Y%m%d-%H%M%S}")
    path.write_text(json.dumps(result, indent=2))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
