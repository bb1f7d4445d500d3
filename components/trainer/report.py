"""What a training run leaves beside the model: eval predictions, curves, a confusion matrix, a summary.

    <model_run_dir>/eval_predictions.jsonl   one line per eval example:
        {"sha256": ..., "label": true label, "predicted": top label, "score": its probability,
         "runner_up": second label, "runner_up_score": its probability}
        (the serving check compares the served model's answers with these)
    <model_run_dir>/report/curves.png               loss and accuracy per epoch, train and eval
    <model_run_dir>/report/confusion_matrix.png     eval split, true label x predicted label
    <model_run_dir>/report/per_signer_accuracy.png  eval accuracy of each signer, weakest first
    <model_run_dir>/report/summary.json             schedule, init (and its weights file's sha256), accuracy,
                                                    per-signer counts, the weakest signers, timings, config,
                                                    Keras version
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
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

from components.trainer.predictions import (  # noqa: E402
    EVAL_PREDICTIONS_FILE, Prediction, write_eval_predictions)
from components.trainer.train import accuracy  # noqa: E402

REPORT_DIR = "report"
# How many of the weakest signers summary.json lists under "weakest".
WEAKEST_COUNT = 3
# Longer signer labels are shortened (with "...") on the per-signer chart.
MAX_LABEL_CHARS = 28
WEAK_COLOR, STRONG_COLOR = "#d95f02", "#1f77b4"
# Charts with more signers than this also get the accuracy scale above the bars.
TOP_AXIS_FROM = 25


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
