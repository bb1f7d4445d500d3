"""What a training run leaves beside the model: eval predictions, curves, a confusion matrix, a summary.

    <model_run_dir>/eval_predictions.jsonl   one line per eval example:
        {"sha256": ..., "label": true label, "predicted": top label, "score": its probability,
         "runner_up": second label, "runner_up_score": its probability}
        (the serving check compares the served model's answers with these)
    <model_run_dir>/report/curves.png               loss and accuracy per epoch, train and eval
    <model_run_dir>/report/confusion_matrix.png     eval split, true label x predicted label
    <model_run_dir>/report/per_signer_accuracy.png  eval accuracy of each signer, weakest first
    <model_run_dir>/report/verification_det.png     the verifiers' DET curve on the eval split, one per kind of
                                                    forgery, the threshold's operating point marked (plot_det
                                                    over verification_trials, when there is a verification
                                                    model; run_fn draws it)
    <model_run_dir>/report/summary.json             schedule, init (and its weights file's sha256), accuracy,
                                                    per-signer counts, the weakest signers, timings, config,
                                                    Keras version
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a training machine
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402
import numpy as np  # noqa: E402
from scipy.special import ndtri  # noqa: E402

from components.trainer.predictions import (  # noqa: E402
    EVAL_PREDICTIONS_FILE, Prediction, write_eval_predictions)
from components.trainer.train import accuracy  # noqa: E402
from components.trainer.verification import VerificationModel, equal_error_rate  # noqa: E402

REPORT_DIR = "report"
# How many of the weakest signers summary.json lists under "weakest".
WEAKEST_COUNT = 3
# Longer signer labels are shortened (with "...") on the per-signer chart.
MAX_LABEL_CHARS = 28
WEAK_COLOR, STRONG_COLOR = "#d95f02", "#1f77b4"
# Charts with more signers than this also get the accuracy scale above the bars.
TOP_AXIS_FROM = 25
DET_FILE = "verification_det.png"
# The DET chart's ticks (error rates); its axes span the ones the data reaches.
DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6)
# Error rates above this are off the chart (drawn at its edge): a verifier is judged where its errors are few.
DET_MAX_RATE = 0.6
DET_COLORS = ("#1f77b4", "#d95f02", "#7570b3", "#1b9e77")


@dataclass(frozen=True)
class SignerAccuracy:
    label: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total


def write_report(model_run_dir: str | os.PathLike, history: Sequence[dict], predictions: Sequence[Prediction],
                 labels: Sequence[str], summary: dict[str, Any]) -> Path:
    """Write eval_predictions.jsonl and report/{curves.png, confusion_matrix.png, per_signer_accuracy.png,
    summary.json}; returns report/."""
    model_run_dir = Path(model_run_dir)
    report_dir = model_run_dir / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    write_eval_predictions(predictions, model_run_dir / EVAL_PREDICTIONS_FILE)
    plot_curves(history, report_dir / "curves.png", final_accuracy=accuracy(predictions))
    plot_confusion_matrix(predictions, labels, report_dir / "confusion_matrix.png")
    signers = per_signer_accuracy(predictions)
    plot_per_signer_accuracy(signers, report_dir / "per_signer_accuracy.png")
    summary = {**summary, "eval_accuracy": accuracy(predictions), "num_eval_predictions": len(predictions),
               "per_signer": {s.label: {"correct": s.correct, "total": s.total, "accuracy": s.accuracy}
                              for s in sorted(signers, key=lambda s: s.label)},
               "weakest": [{**asdict(s), "accuracy": s.accuracy} for s in signers[:WEAKEST_COUNT]],
               "history": list(history)}
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return report_dir


def plot_curves(history: Sequence[dict], path: Path, final_accuracy: float | None = None) -> Path:
    """Loss and accuracy per epoch (train, and validation when there is a split), a line where each phase starts.

    `final_accuracy` is the exported model's (after best-epoch restore and BatchNorm
    recalibration), shown in the accuracy panel's title.
    """
    epochs = [h["epoch"] for h in history]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        axis.plot(epochs, [h.get(metric, np.nan) for h in history], "o-", label=f"train {metric}")
        if any(f"val_{metric}" in h for h in history):  # only with a validation split (TrainerConfig)
            axis.plot(epochs, [h.get(f"val_{metric}", np.nan) for h in history], "s-", label=f"validation {metric}")
        for i, h in enumerate(history):
            if i == 0 or h["phase"] != history[i - 1]["phase"]:
                axis.axvline(h["epoch"] - 0.5, color="grey", linestyle=":")
                axis.annotate(h["phase"], (h["epoch"] - 0.4, 1.0), xycoords=("data", "axes fraction"),
                              va="top", fontsize=8, color="grey")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize=8)
    axes[1].set_ylim(0.0, 1.02)
    if final_accuracy is not None:
        axes[1].set_title(f"accuracy (exported model on eval: {final_accuracy:.1%})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_confusion_matrix(predictions: Sequence[Prediction], labels: Sequence[str], path: Path) -> Path:
    """Counts of (true label, predicted label) on the eval split; true labels the model lacks get their own rows."""
    columns = list(labels)
    rows = columns + sorted({p.label for p in predictions} - set(columns))
    row_index = {label: i for i, label in enumerate(rows)}
    column_index = {label: i for i, label in enumerate(columns)}
    counts = np.zeros((len(rows), len(columns)), dtype=int)
    for p in predictions:
        counts[row_index[p.label], column_index[p.predicted]] += 1
    size = max(4.0, 0.45 * len(columns) + 2.5)
    figure, axis = plt.subplots(figsize=(size, max(4.0, 0.45 * len(rows) + 2.0)))
    axis.imshow(counts, cmap="Blues")
    axis.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=8)
    axis.set_yticks(range(len(rows)), rows, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(f"eval split: {accuracy(predictions):.1%} top-1 of {len(predictions)}")
    threshold = counts.max() / 2 if counts.size else 0
    for (i, j), count in np.ndenumerate(counts):
        if count:
            axis.text(j, i, str(count), ha="center", va="center", fontsize=8,
                      color="white" if count > threshold else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def per_signer_accuracy(predictions: Sequence[Prediction]) -> list[SignerAccuracy]:
    """Eval counts for every true label, weakest first (lowest accuracy; ties: more examples, then label)."""
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    for p in predictions:
        total[p.label] = total.get(p.label, 0) + 1
        correct[p.label] = correct.get(p.label, 0) + (p.label == p.predicted)
    signers = [SignerAccuracy(label, correct[label], total[label]) for label in total]
    return sorted(signers, key=lambda s: (s.accuracy, -s.total, s.label))


def plot_per_signer_accuracy(signers: Sequence[SignerAccuracy], path: Path) -> Path:
    """Horizontal bars of each signer's eval accuracy, weakest at the top, each labelled k/n; a line at the
    overall accuracy. One row per signer at a fixed height, so the figure grows with the number of signers."""
    correct = sum(s.correct for s in signers)
    total = sum(s.total for s in signers)
    overall = correct / total if total else float("nan")
    figure, axis = plt.subplots(figsize=(8.0, max(3.0, 1.6 + 0.22 * len(signers))))
    positions = np.arange(len(signers))
    below = [s.accuracy < overall for s in signers]
    axis.barh(positions, [s.accuracy for s in signers], height=0.7,
              color=[WEAK_COLOR if weak else STRONG_COLOR for weak in below])
    axis.axvline(overall, color="black", linestyle="--", linewidth=1, zorder=1)
    for y, s in zip(positions, signers):
        # A white box keeps the count readable where the overall line crosses it.
        axis.text(s.accuracy + 0.01, y, f"{s.correct}/{s.total}", va="center", fontsize=8, zorder=3,
                  bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    axis.set_yticks(positions, [_shorten(s.label) for s in signers], fontsize=8)
    axis.set_ylim(max(len(signers), 1) - 0.5, -0.5)  # the first (weakest) signer at the top
    axis.set_xlim(0.0, 1.12)
    axis.set_xticks(np.linspace(0.0, 1.0, 6))
    axis.xaxis.set_major_formatter(PercentFormatter(1.0))
    axis.set_xlabel("eval accuracy (top-1)")
    axis.grid(axis="x", alpha=0.3)
    long_chart = len(signers) > TOP_AXIS_FROM
    if long_chart:  # the scale at the top too, where the weakest signers are
        axis.tick_params(axis="x", top=True, labeltop=True, labelsize=8)
    count = f"{len(signers)} signer" + ("" if len(signers) == 1 else "s")
    axis.set_title(f"eval accuracy per signer: {count}, weakest first", fontsize=10, pad=38 if long_chart else 24)
    handles = [Line2D([], [], color="black", linestyle="--", linewidth=1),
               Patch(color=WEAK_COLOR), Patch(color=STRONG_COLOR)]
    axis.legend(handles, [f"overall {overall:.1%} ({correct}/{total})", "below overall", "at or above"],
                loc="lower center", bbox_to_anchor=(0.5, 1.0), borderaxespad=1.8 if long_chart else 0.5,
                ncol=3, fontsize=8, frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _shorten(label: str) -> str:
    return label if len(label) <= MAX_LABEL_CHARS else label[:MAX_LABEL_CHARS - 3] + "..."


def verification_trials(verification: VerificationModel, labels: Sequence[str], vectors: np.ndarray,
                        forged_labels: Sequence[str] = (), forged_vectors: np.ndarray | None = None
                        ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The eval split's verification trials, as the Evaluator counts them (pipeline/definition/
    verification_metrics.py), from pooled features (embeddings.embed_examples, genuine and forgeries=True):
    (genuine scores: each genuine image for its own enrolled signer, {"random": each genuine image for every
    other enrolled signer, "skilled": each forgery for the enrolled signer it claims}) - what plot_det takes."""
    genuine, random_forgeries, skilled = [], [], []
    vectors = np.asarray(vectors)
    own = np.array(labels, dtype=object)
    for signer in verification.signers:
        if len(vectors):
            scores = verification.score(vectors, [signer] * len(vectors))
            genuine.append(scores[own == signer])
            random_forgeries.append(scores[own != signer])
        claimed = np.array(forged_labels, dtype=object) == signer
        if forged_vectors is not None and claimed.any():
            skilled.append(verification.score(np.asarray(forged_vectors)[claimed], [signer] * int(claimed.sum())))

    def joined(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0)

    return joined(genuine), {"random": joined(random_forgeries), "skilled": joined(skilled)}


def error_rates(genuine: np.ndarray, impostor: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, FRR) at each threshold, "genuine" meaning score >= threshold."""
    genuine, impostor = np.sort(genuine), np.sort(impostor)
    far = 1.0 - np.searchsorted(impostor, thresholds, side="left") / len(impostor)
    frr = np.searchsorted(genuine, thresholds, side="left") / len(genuine)
    return far, frr


def plot_det(genuine_scores: Sequence[float], impostor_scores_by_kind: Mapping[str, Sequence[float]],
             threshold: float, path: str | os.PathLike, trials: str = "eval split") -> Path:
    """The verifiers' DET curve: false rejects of `genuine_scores` against false accepts of each kind of forgery
    (e.g. {"random": ..., "skilled": ...}; empty kinds are left out), both on normal-deviate axes, where equal
    error rates lie on the diagonal. Each curve's legend gives its EER and its rates at `threshold` (the
    model's), whose operating point is marked on it. Rates of 0 and above DET_MAX_RATE are drawn at the
    chart's edges.
    """
    path = Path(path)
    genuine = np.asarray(genuine_scores, dtype=np.float64)
    kinds = {kind: np.asarray(scores, dtype=np.float64) for kind, scores in impostor_scores_by_kind.items()
             if len(scores)}
    if not len(genuine) or not kinds:
        raise ValueError("a DET curve needs genuine scores and at least one kind of forgery scores")
    # Half a trial of the largest set: the smallest rate drawn, where rates of 0 go.
    floor = 0.5 / max(len(genuine), *(len(scores) for scores in kinds.values()))
    low = max(floor, min(DET_TICKS))

    def deviate(rate: np.ndarray | float) -> np.ndarray:
        return ndtri(np.clip(rate, low, DET_MAX_RATE))

    figure, axis = plt.subplots(figsize=(6.4, 6.0))
    for (kind, impostor), color in zip(kinds.items(), DET_COLORS):
        scores = np.unique(np.concatenate([genuine, impostor]))
        thresholds = np.concatenate([[scores[0] - 1.0], (scores[:-1] + scores[1:]) / 2.0, [scores[-1] + 1.0]])
        far, frr = error_rates(genuine, impostor, thresholds)
        eer, _ = equal_error_rate(genuine, impostor)
        [at_far], [at_frr] = error_rates(genuine, impostor, np.array([threshold]))
        axis.plot(deviate(far), deviate(frr), "-", color=color, linewidth=1.8, drawstyle="steps-post",
                  label=f"{kind} forgeries ({len(impostor)}): EER {eer:.1%}\n"
                        f"    at the threshold: FAR {at_far:.1%}, FRR {at_frr:.1%}")
        axis.plot(deviate(at_far), deviate(at_frr), "o", color=color, markersize=8, markeredgecolor="black",
                  zorder=3)
    limits = deviate(np.array([low, DET_MAX_RATE]))
    axis.plot(limits, limits, ":", color="grey", linewidth=1, label="FAR = FRR (equal error)")
    ticks = [t for t in DET_TICKS if low <= t <= DET_MAX_RATE]
    for setter in (axis.set_xticks, axis.set_yticks):
        setter(deviate(np.array(ticks)), [f"{t:.1%}".replace(".0%", "%") for t in ticks], fontsize=8)
    axis.set_xlim(*limits)
    axis.set_ylim(*limits)
    axis.set_xlabel("false accept rate (forgeries accepted)")
    axis.set_ylabel("false reject rate (genuine signatures rejected)")
    axis.set_title(f"verification DET, {trials}: {len(genuine)} genuine trials\n"
                   f"dots: the model's threshold {threshold:.3f}", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left", fontsize=8)  # where a DET curve only goes for a near-perfect verifier
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
