"""What a training run leaves beside the model: eval predictions, curves, a confusion matrix, a summary.

    <model_run_dir>/eval_predictions.jsonl   one line per eval example:
        {"sha256": ..., "label": true label, "predicted": top label, "score": its probability,
         "runner_up": second label, "runner_up_score": its probability}
        (the serving check compares the served model's answers with these)
    <model_run_dir>/report/curves.png            loss and accuracy per epoch, train and eval
    <model_run_dir>/report/confusion_matrix.png  eval split, true label x predicted label
    <model_run_dir>/report/summary.json          schedule, accuracy, timings, config, Keras version
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a training machine
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from components.trainer.predictions import (  # noqa: E402
    EVAL_PREDICTIONS_FILE, Prediction, write_eval_predictions)
from components.trainer.train import accuracy  # noqa: E402

REPORT_DIR = "report"


def write_report(model_run_dir: str | os.PathLike, history: Sequence[dict], predictions: Sequence[Prediction],
                 labels: Sequence[str], summary: dict[str, Any]) -> Path:
    """Write eval_predictions.jsonl and report/{curves.png, confusion_matrix.png, summary.json}; returns report/."""
    model_run_dir = Path(model_run_dir)
    report_dir = model_run_dir / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    write_eval_predictions(predictions, model_run_dir / EVAL_PREDICTIONS_FILE)
    plot_curves(history, report_dir / "curves.png", final_accuracy=accuracy(predictions))
    plot_confusion_matrix(predictions, labels, report_dir / "confusion_matrix.png")
    summary = {**summary, "eval_accuracy": accuracy(predictions), "num_eval_predictions": len(predictions),
               "history": list(history)}
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return report_dir


def plot_curves(history: Sequence[dict], path: Path, final_accuracy: float | None = None) -> Path:
    """Loss and accuracy per epoch (train and eval), with a line where each training phase starts.

    `final_accuracy` is the exported model's (after best-epoch restore and BatchNorm
    recalibration), shown in the accuracy panel's title.
    """
    epochs = [h["epoch"] for h in history]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        axis.plot(epochs, [h.get(metric, np.nan) for h in history], "o-", label=f"train {metric}")
        axis.plot(epochs, [h.get(f"val_{metric}", np.nan) for h in history], "s-", label=f"eval {metric}")
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
