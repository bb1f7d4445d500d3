"""Quality benchmark on real signatures: identification and verification through the served API, per writer.

Given a folder of `<writer>/<image>` genuine signatures, with skilled forgeries of
writer W in `W_forg/` (or `W/forged/`), everything is split with a fixed seed:

- `--unknown-writers` whole writers (pipeline mode) never reach training: they
  are the signers the model has never seen;
- of every other writer, `--train-share` of the genuine images (at least one)
  train and the rest are held out, and `--forgery-train-share` of the skilled
  forgeries go to training (as negatives of W's verifier) and the rest are held out.

    pipeline (default)  what a user does: the training images go into an inbox as
                        `<writer>/<file>` and `<writer>_forg/<file>`, `signflow run`
                        trains, gates, checks and pushes with its defaults; the
                        pushed version is served by signflow's server on 127.0.0.1
                        and measured over REST (:predict), one request per image:
                          identification  each held-out genuine image of an enrolled
                                          writer and every image of an unknown writer
                                          to `predict_label`: top-1 as answered (open
                                          set on: "unknown" counts as wrong), top-1 of
                                          the argmax of its probabilities (open set
                                          off), and how often an unknown writer's
                                          image is answered "unknown";
                          verification    each held-out genuine image of writer A to
                                          `verify`, claimed as A (genuine trial) and, in
                                          the same request, as `--random-claims` other
                                          enrolled writers (random forgeries); each
                                          held-out skilled forgery of A claimed as A;
                                          each image of an unknown writer claimed as
                                          `--random-claims` enrolled writers (unseen
                                          forgeries: random forgeries by people the
                                          classifier never saw, as open set meets them).
                        Equal error rates pooled and per claimed writer (min, median,
                        max), FAR and FRR at the model's own threshold, and a DET plot.
    trainer             the Trainer's code alone (no TFX), for comparing settings
                        quickly: all writers, genuine images only. The training
                        images are written as the Examples ingestion writes, split
                        train/eval as ingestion splits them, trained with
                        `components.trainer.train`, exported, and the held-out images
                        go through the exported `predict_label` signature in-process
                        (the graph the server runs).

Settings are TrainerConfig fields (`--set image_height=96`); nothing else differs
between runs, unless `--gate FIELD=VALUE` changes the pipeline's gate (so that a
setting the default bar holds back is still pushed and measured through REST).
Results: printed, and written as JSON to bench/out/quality-<mode>-<time>.json
with top-1, per-writer accuracy, the most confused pairs, timings and (pipeline) the
verification figures with every trial's score, the targets of issue #15 and whether
each is met; beside it the per-writer accuracy as a chart (.png, weakest first) and
(pipeline) the DET curve (-det.png).

    .venv/bin/python -m bench.bench_quality /path/to/train --mode trainer --set scratch_epochs=12
    .venv/bin/python -m bench.bench_quality /path/to/train --set preprocessing=fit --gate min_accuracy=0.8
    .venv/bin/python -m bench.bench_quality /path/to/train   # the user's path: ~15-25 min and ~1,100 requests
                                                             # (~2,900 instances) for 64 writers on 2 cores

Research data stays out of the repository: point this at a folder outside it.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import base64
import collections
import dataclasses
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

from bench.results import reserve  # noqa: E402

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp"}
# The split's defaults (--train-share, --forgery-train-share, --unknown-writers).
TRAIN_SHARE = 2 / 3
FORGERY_TRAIN_SHARE = 0.5
UNKNOWN_WRITERS = 10
MODEL = "xception"
FORGERY_SUFFIX = "_forg"
FORGERY_FOLDER = "forged"
# Verification trials: a genuine image claimed as its writer, and the kinds of forgery claimed as someone else.
FORGERY_KINDS = ("skilled", "random", "unseen")
# Issue #15's targets: (figure, "<=" or ">=", bound).
TARGETS = {
    "skilled_eer": ("<=", 0.10),
    "random_eer": ("<=", 0.03),
    "unknown_rejection_rate": (">=", 0.90),
    "open_set_top1_cost": ("<=", 0.02),
}


def _images(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def writer_images(folder: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """(genuine, skilled forgeries) per writer: `<writer>/<image>`, and `<writer>_forg/<image>` or
    `<writer>/forged/<image>` (forgeries claimed as a writer with no genuine images are left out)."""
    genuine: dict[str, list[Path]] = {}
    forged: dict[str, list[Path]] = collections.defaultdict(list)
    for directory in sorted(p for p in folder.iterdir() if p.is_dir()):
        if directory.name.endswith(FORGERY_SUFFIX):
            forged[directory.name[:-len(FORGERY_SUFFIX)]] += _images(directory)
            continue
        if directory.name == FORGERY_FOLDER:
            continue
        if (directory / FORGERY_FOLDER).is_dir():
            forged[directory.name] += _images(directory / FORGERY_FOLDER)
        images = _images(directory)
        if images:
            genuine[directory.name] = images
    if not genuine:
        raise SystemExit(f"no <writer>/<image> folders under {folder}")
    return genuine, {w: sorted(forged[w]) for w in genuine if forged.get(w)}


def _shuffled(images: list[Path], seed: str) -> list[Path]:
    order = list(images)
    random.Random(seed).shuffle(order)
    return order


def split_writers(writers: dict[str, list[Path]], share: float, seed: int) -> tuple[dict, dict]:
    """Per writer, a seeded shuffle: the first `share` (at least one, at most all but one) train, the rest held out."""
    train, held_out = {}, {}
    for writer, images in writers.items():
        order = _shuffled(images, f"{seed}:{writer}")
        count = min(max(1, round(share * len(order))), len(order) - 1)
        train[writer], held_out[writer] = order[:count], order[count:]
    return train, held_out


def split_forgeries(forged: dict[str, list[Path]], share: float, seed: int) -> tuple[dict, dict]:
    """Per writer, a seeded shuffle of its forgeries: the first `share` train, the rest held out."""
    train, held_out = {}, {}
    for writer, images in forged.items():
        order = _shuffled(images, f"{seed}:forgeries:{writer}")
        count = round(share * len(order))
        train[writer], held_out[writer] = order[:count], order[count:]
    return train, held_out


def pick_unknown_writers(writers: list[str], count: int, seed: int) -> list[str]:
    """`count` writers, seeded, kept out of training entirely (at least two stay enrolled)."""
    count = max(0, min(count, len(writers) - 2))
    return sorted(random.Random(f"{seed}:unknown").sample(sorted(writers), count))


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


def error_rates(genuine: list[float], impostor: list[float], threshold: float) -> dict[str, Any]:
    """EER (and where it lies) of genuine against impostor scores, and FAR/FRR at `threshold` (accepted: score >= it)."""
    from components.trainer.verification import equal_error_rate

    eer, eer_threshold = equal_error_rate(genuine, impostor)
    return {
        "eer": eer, "eer_threshold": eer_threshold,
        "far_at_threshold": sum(s >= threshold for s in impostor) / len(impostor),
        "frr_at_threshold": sum(s < threshold for s in genuine) / len(genuine),
        "genuine_trials": len(genuine), "forgery_trials": len(impostor),
    }


def spread(values: list[float]) -> dict[str, Any]:
    values = sorted(values)
    middle = len(values) // 2
    median = values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
    return {"writers": len(values), "min": values[0], "median": median, "max": values[-1],
            "mean": sum(values) / len(values)}


def verification_figures(trials: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Per kind of forgery (FORGERY_KINDS): pooled EER and rates at the model's threshold, and the same per
    claimed writer (its held-out genuine trials against the forgeries claimed as it) with their spread."""
    genuine: dict[str, list[float]] = collections.defaultdict(list)
    forgeries: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for trial in trials:
        if trial["kind"] == "genuine":
            genuine[trial["claimed"]].append(trial["score"])
        else:
            forgeries[trial["kind"]][trial["claimed"]].append(trial["score"])
    all_genuine = [score for scores in genuine.values() for score in scores]
    figures: dict[str, Any] = {
        "threshold": threshold, "genuine_trials": len(all_genuine),
        "frr_at_threshold": sum(s < threshold for s in all_genuine) / len(all_genuine) if all_genuine else None,
        # The server's verdict is score >= threshold: any disagreement is a bug.
        "verdicts_disagreeing_with_score": sum(t["genuine"] != (t["score"] >= threshold) for t in trials),
    }
    for kind in FORGERY_KINDS:
        claimed = forgeries.get(kind, {})
        impostor = [score for scores in claimed.values() for score in scores]
        if not all_genuine or not impostor:
            figures[kind] = None
            continue
        per_writer = {writer: error_rates(genuine[writer], scores, threshold)
                      for writer, scores in sorted(claimed.items()) if genuine.get(writer)}
        ranked = sorted(per_writer.items(), key=lambda item: (-item[1]["eer"], item[0]))
        figures[kind] = {
            **error_rates(all_genuine, impostor, threshold),
            "per_writer_eer": spread([rates["eer"] for rates in per_writer.values()]),
            "weakest": [{"writer": writer, **rates} for writer, rates in ranked[:5]],
            "per_writer": {writer: {key: rates[key] for key in ("eer", "far_at_threshold", "frr_at_threshold",
                                                                 "genuine_trials", "forgery_trials")}
                           for writer, rates in ranked},
        }
    return figures


def check_targets(figures: dict[str, float | None]) -> dict[str, Any]:
    checked = {}
    for name, (relation, bound) in TARGETS.items():
        value = figures.get(name)
        met = None if value is None else (value <= bound if relation == "<=" else value >= bound)
        checked[name] = {"value": value, "target": f"{relation} {bound}", "met": met}
    return checked


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


@dataclasses.dataclass
class Split:
    """Who and what trains, and what is held out (see the module docstring)."""

    train: dict[str, list[Path]]  # enrolled writers' genuine training images
    held_out: dict[str, list[Path]]  # their held-out genuine images
    train_forged: dict[str, list[Path]] = dataclasses.field(default_factory=dict)  # forgeries into the inbox
    held_out_forged: dict[str, list[Path]] = dataclasses.field(default_factory=dict)
    unknown: dict[str, list[Path]] = dataclasses.field(default_factory=dict)  # writers kept out: all their images

    def counts(self) -> dict[str, int]:
        return {name: sum(map(len, getattr(self, name).values()))
                for name in ("train", "held_out", "train_forged", "held_out_forged", "unknown")}


def make_split(writers: dict[str, list[Path]], forged: dict[str, list[Path]], *, pipeline: bool, train_share: float,
               forgery_train_share: float, unknown_writers: int, seed: int) -> Split:
    """The run's split of `writer_images`' output: unknown writers and forgeries in pipeline mode only."""
    unknown = pick_unknown_writers(list(writers), unknown_writers, seed) if pipeline else []
    enrolled = {w: images for w, images in writers.items() if w not in unknown}
    train, held_out = split_writers(enrolled, train_share, seed)
    split = Split(train, held_out, unknown={w: writers[w] for w in unknown})
    if pipeline:
        split.train_forged, split.held_out_forged = split_forgeries(
            {w: images for w, images in forged.items() if w in enrolled}, forgery_train_share, seed)
    return split


class RestProbe:
    """:predict over REST, one request per call, counting requests and instances and keeping failures (a failed
    request is recorded and skipped, so one bad answer does not lose a run)."""

    def __init__(self, session, url: str):
        self.session, self.url = session, url
        self.requests = self.instances = 0
        self.errors: list[dict[str, Any]] = []
        self.started = time.monotonic()

    def predict(self, signature: str, instances: list[dict[str, Any]], what: str) -> list[dict[str, Any]] | None:
        self.requests += 1
        self.instances += len(instances)
        if self.requests % 100 == 0:
            rate = self.requests / (time.monotonic() - self.started)
            print(f"  {self.requests} requests, {self.instances} instances ({rate:.2f} requests/s)", flush=True)
        answer = self.session.post(self.url, json={"signature_name": signature, "instances": instances}, timeout=300)
        if answer.status_code != 200:
            self.errors.append({"what": what, "status": answer.status_code, "body": answer.text[:300]})
            return None
        return answer.json()["predictions"]


def _b64(path: Path) -> dict[str, str]:
    return {"b64": base64.b64encode(path.read_bytes()).decode()}


def signflow_run(split: Split, overrides: dict, work: Path,
                 gate: dict | None = None) -> tuple[dict[str, Any], Path]:
    """The training images into an inbox, `signflow run` on it: (what happened, the serving folder).
    `gate`: fields of the pipeline's gate to change (the default bar otherwise)."""
    inbox = work / "inbox"
    for folders, suffix in ((split.train, ""), (split.train_forged, FORGERY_SUFFIX)):
        for writer, paths in folders.items():
            if paths:
                (inbox / f"{writer}{suffix}").mkdir(parents=True)
            for path in paths:
                shutil.copyfile(path, inbox / f"{writer}{suffix}" / path.name)
    serving_dir = work / "serving_model"
    (serving_dir / MODEL).mkdir(parents=True)
    config = {
        "pipeline_root": str(work / "pipeline_root"), "inbox_dir": str(inbox), "sample_dir": None,
        "serving_dir": str(serving_dir), "trainer": overrides, **({"gate": gate} if gate else {}),
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
    if completed.returncode:
        outcome["run_log_tail"] = log_path.read_text(errors="replace").splitlines()[-60:]
    return outcome, serving_dir


def run_pipeline_mode(split: Split, overrides: dict, work: Path, *, random_claims: int = 5, seed: int = 0,
                      serving_dir: Path | None = None, gate: dict | None = None) -> dict[str, Any]:
    """`signflow run`, then the measurements over REST; with `serving_dir`, the measurements alone, of the version
    an earlier run (same folder, seed and shares) pushed there."""
    import requests

    from serving.contract import (
        CLAIMED_SIGNER_INPUT, GENUINE_OUTPUT, IMAGE_INPUT, LABEL_OUTPUT, MODEL_METADATA_FILE,
        PREDICT_LABEL_SIGNATURE, PROBABILITIES_OUTPUT, THRESHOLD_OUTPUT, UNKNOWN_LABEL, VERIFY_SCORE_OUTPUT,
        VERIFY_SIGNATURE)
    from serving.layout import list_versions
    from serving.server import ServerThread
    from serving.settings import build_settings

    if serving_dir is None:
        outcome, serving_dir = signflow_run(split, overrides, work, gate)
    else:
        outcome = {"run_seconds": 0.0, "measured_existing": str(serving_dir)}
    outcome.update({"unknown_writers": sorted(split.unknown), "split": split.counts()})
    run_seconds = outcome["run_seconds"]
    versions = list_versions(serving_dir / MODEL)
    if not versions:
        print(f"nothing was pushed (exit {outcome.get('run_exit_code')}); see the log tail in the JSON", flush=True)
        return {**outcome, "pushed": False}

    metadata = json.loads((serving_dir / MODEL / str(versions[-1]) / MODEL_METADATA_FILE).read_text())
    labels = metadata["labels"]
    verification = metadata.get("verification") or {}
    signers = verification.get("signers", [])
    settings = build_settings(model_name=MODEL, model_base_path=str(serving_dir / MODEL)).replace(
        grpc_port=0, rest_api_port=0)
    seconds = {"run": run_seconds}
    open_answers, closed_answers, unknown_answers, trials = [], [], [], []
    with ServerThread(settings) as server, requests.Session() as session:
        probe = RestProbe(session, f"{server.rest_url}/v1/models/{MODEL}:predict")

        def identify(path: Path) -> dict[str, Any] | None:
            answer = probe.predict(PREDICT_LABEL_SIGNATURE, [{IMAGE_INPUT: _b64(path)}], f"identify {path.name}")
            return answer[0] if answer else None

        started = time.monotonic()
        for writer, paths in split.held_out.items():
            for path in paths:
                if (answer := identify(path)) is not None:
                    probabilities = answer[PROBABILITIES_OUTPUT]
                    open_answers.append((writer, answer[LABEL_OUTPUT]))
                    closed_answers.append((writer, labels[probabilities.index(max(probabilities))]))
        seconds["identify_enrolled"] = time.monotonic() - started
        started = time.monotonic()
        for writer, paths in split.unknown.items():
            for path in paths:
                if (answer := identify(path)) is not None:
                    unknown_answers.append((writer, answer[LABEL_OUTPUT]))
        seconds["identify_unknown"] = time.monotonic() - started

        def verify(path: Path, writer: str, claims: list[tuple[str, str]]) -> None:
            image = _b64(path)
            answer = probe.predict(VERIFY_SIGNATURE, [{IMAGE_INPUT: image, CLAIMED_SIGNER_INPUT: claimed}
                                                      for claimed, _ in claims], f"verify {path.name}")
            for (claimed, kind), row in zip(claims, answer or []):
                trials.append({"image": path.name, "writer": writer, "claimed": claimed, "kind": kind,
                               "score": row[VERIFY_SCORE_OUTPUT], "genuine": row[GENUINE_OUTPUT],
                               "threshold": row[THRESHOLD_OUTPUT]})

        started = time.monotonic()
        enrolled = set(signers)
        for writer, paths in split.held_out.items():
            if writer not in enrolled:
                continue
            others = sorted(enrolled - {writer})
            for path in paths:
                sampled = random.Random(f"{seed}:claims:{writer}:{path.name}").sample(
                    others, min(random_claims, len(others)))
                verify(path, writer, [(writer, "genuine")] + [(other, "random") for other in sampled])
            for path in split.held_out_forged.get(writer, []):
                verify(path, writer, [(writer, "skilled")])
        everyone = sorted(enrolled)
        for writer, paths in split.unknown.items():
            for path in paths:
                sampled = random.Random(f"{seed}:claims:{writer}:{path.name}").sample(
                    everyone, min(random_claims, len(everyone)))
                verify(path, writer, [(other, "unseen") for other in sampled])
        seconds["verify"] = time.monotonic() - started
        requests_made = {"requests": probe.requests, "instances": probe.instances, "errors": len(probe.errors),
                         "first_errors": probe.errors[:5],
                         "per_second": probe.requests / (time.monotonic() - probe.started)}

    identification = score(open_answers)
    closed = score(closed_answers)
    rejected = collections.Counter(writer for writer, label in unknown_answers if label == UNKNOWN_LABEL)
    per_unknown = collections.Counter(writer for writer, _ in unknown_answers)
    unknown = {
        "writers": sorted(split.unknown), "images": len(unknown_answers), "rejected": sum(rejected.values()),
        "rejection_rate": sum(rejected.values()) / len(unknown_answers) if unknown_answers else None,
        "per_writer": {w: {"rejected": rejected[w], "total": n} for w, n in sorted(per_unknown.items())},
        "answered_as": dict(collections.Counter(label for _, label in unknown_answers
                                                if label != UNKNOWN_LABEL).most_common()),
    }
    threshold = trials[0]["threshold"] if trials else verification.get("threshold")
    figures = verification_figures(trials, threshold) if trials else None
    verification_summary = {key: verification.get(key) for key in ("open_set", "kernel", "C", "gamma", "cv_eer",
                                                                     "cv_random_eer", "cv_skilled_eer", "operating_point")}
    targets = check_targets({
        "skilled_eer": ((figures or {}).get("skilled") or {}).get("eer"),
        "random_eer": ((figures or {}).get("random") or {}).get("eer"),
        "unknown_rejection_rate": unknown["rejection_rate"],
        "open_set_top1_cost": closed["top1"] - identification["top1"],
    })
    return {
        **outcome, "pushed": True, "version": versions[-1], "settings": overrides, "gate": gate or {},
        "seconds": seconds, "requests": requests_made, "targets": targets,
        # Identification, open set as served ("unknown" for an enrolled writer's image is wrong):
        **identification,
        "closed_set": {key: closed[key] for key in ("top1", "correct", "total", "writers_below_100")},
        "open_set_top1_cost": closed["top1"] - identification["top1"],
        "enrolled_answered_unknown": sum(label == UNKNOWN_LABEL for _, label in open_answers),
        "unknown_signers": unknown,
        "model_verification": {**verification_summary, "signers": len(signers),
                               "held_out_writers_not_verified": sorted(set(split.held_out) - set(signers))},
        "verification": figures,
        "trials": trials,
    }


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def _report(result: dict[str, Any], path: Path) -> None:
    """Print the figures, and draw the per-writer accuracy and (pipeline) the DET curve beside `path`."""
    from components.trainer.report import SignerAccuracy, plot_det, plot_per_signer_accuracy

    if "per_writer" in result:
        plot_per_signer_accuracy([SignerAccuracy(w, v["correct"], v["total"]) for w, v in result["per_writer"].items()],
                                 path.with_suffix(".png"))
    if "top1" in result:
        weakest = list(result["per_writer"].items())[:3]
        print(f"\n{result['mode']} {result['name']}: top-1 {result['top1']:.4f} ({result['correct']}/{result['total']}) "
              f"in {result['wall_seconds'] / 60:.1f} min; weakest: "
              + ", ".join(f"{w} {v['correct']}/{v['total']}" for w, v in weakest))
    if "closed_set" in result:
        unknown = result["unknown_signers"]
        print(f"  closed set (argmax) top-1 {result['closed_set']['top1']:.4f}; open set costs "
              f"{result['open_set_top1_cost']:+.4f} ({result['enrolled_answered_unknown']} enrolled images answered "
              f"unknown); unknown writers rejected {unknown['rejected']}/{unknown['images']}")
    figures = result.get("verification")
    if figures:
        for kind in FORGERY_KINDS:
            if figures.get(kind):
                f, s = figures[kind], figures[kind]["per_writer_eer"]
                print(f"  {kind} forgeries: EER {f['eer']:.4f} ({f['genuine_trials']} genuine, {f['forgery_trials']} "
                      f"forgery trials); at the threshold {figures['threshold']:.3f} FAR {f['far_at_threshold']:.4f} "
                      f"FRR {f['frr_at_threshold']:.4f}; per-writer EER min {s['min']:.3f} median {s['median']:.3f} "
                      f"max {s['max']:.3f}")
        genuine = [t["score"] for t in result["trials"] if t["kind"] == "genuine"]
        by_kind = {kind: [t["score"] for t in result["trials"] if t["kind"] == kind]
                   for kind in ("random", "skilled", "unseen")}
        det = plot_det(genuine, by_kind, figures["threshold"], path.with_name(path.stem + "-det.png"),
                       trials="held-out images through REST")
        print(f"  DET curve: {det}")
    for name, target in result.get("targets", {}).items():
        value = "n/a" if target["value"] is None else f"{target['value']:.4f}"
        print(f"  target {name} {target['target']}: {value} {'met' if target['met'] else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="<writer>/<image> genuine and <writer>_forg/<image> forgery folders")
    parser.add_argument("--mode", choices=("pipeline", "trainer"), default="pipeline")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="a TrainerConfig field (JSON value), e.g. --set image_height=96")
    parser.add_argument("--train-share", type=float, default=TRAIN_SHARE, help="of each writer's genuine images")
    parser.add_argument("--forgery-train-share", type=float, default=FORGERY_TRAIN_SHARE,
                        help="pipeline: of each enrolled writer's skilled forgeries, into the inbox")
    parser.add_argument("--unknown-writers", type=int, default=UNKNOWN_WRITERS,
                        help="pipeline: whole writers kept out of training, to probe open-set rejection")
    parser.add_argument("--random-claims", type=int, default=5,
                        help="pipeline: other writers each held-out genuine image is claimed as")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="", help="a name for this run in the output")
    parser.add_argument("--gate", dest="gate", action="append", default=[], metavar="FIELD=VALUE",
                        help="pipeline: a field of the gate (pipeline config), e.g. --gate min_accuracy=0.8 to "
                             "measure through REST a setting the default bar would not push")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--serving-dir", type=Path, default=None,
                        help="pipeline: skip `signflow run` and measure the version pushed into this folder "
                             "(<work folder>/serving_model of an earlier --keep run with the same data and split)")
    args = parser.parse_args()

    writers, forged = writer_images(args.folder)
    overrides = _parse_overrides(args.overrides)
    split = make_split(writers, forged, pipeline=args.mode == "pipeline", train_share=args.train_share,
                       forgery_train_share=args.forgery_train_share, unknown_writers=args.unknown_writers,
                       seed=args.seed)
    work = Path(tempfile.mkdtemp(prefix="signflow-bench-quality-"))
    counts = split.counts()
    print(f"{len(writers)} writers ({len(split.unknown)} kept out), {counts['train']} genuine training images, "
          f"{counts['held_out']} held out; {counts['train_forged']} forgeries trained, {counts['held_out_forged']} "
          f"held out; {counts['unknown']} images of unknown writers; work folder {work}", flush=True)
    started = time.monotonic()
    try:
        if args.mode == "trainer":
            result = run_trainer_mode(split.train, split.held_out, overrides, work)
        else:
            result = run_pipeline_mode(split, overrides, work, random_claims=args.random_claims, seed=args.seed,
                                       serving_dir=args.serving_dir, gate=_parse_overrides(args.gate))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "quality", "mode": args.mode, "name": args.name, "data": str(args.folder),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "writers": len(writers), "train_images": counts["train"], "held_out_images": counts["held_out"],
        "train_share": args.train_share, "seed": args.seed,
        **({"forgery_train_share": args.forgery_train_share, "random_claims": args.random_claims}
           if args.mode == "pipeline" else {}),
        "wall_seconds": time.monotonic() - started, **result,
    }
    out = ROOT / "bench" / "out"
    path = reserve(out, f"quality-{args.mode}-{dt.datetime.now():%Y%m%d-%H%M%S}")
    path.write_text(json.dumps(result, indent=1))
    _report(result, path)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
