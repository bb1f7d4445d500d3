"""eval_predictions.jsonl: the Trainer's answer for every eval image, written by the Trainer beside its
model and read by the serving check, which compares what the exported model serves with it.

Plain Python (no TensorFlow): the serving check reads it in a light process.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

EVAL_PREDICTIONS_FILE = "eval_predictions.jsonl"


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one example: its top label and that label's probability, and the runner-up's."""

    sha256: str
    label: str
    predicted: str
    score: float
    # NOTE: kept so the serving check can tell a near-tie that flips between two
    # numerically equivalent runs (batched here, one image there) from a wrong export.
    runner_up: str | None = None
    runner_up_score: float = 0.0


def write_eval_predictions(predictions: Sequence[Prediction], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for p in predictions:
            out.write(json.dumps({"sha256": p.sha256, "label": p.label, "predicted": p.predicted,
                                  "score": p.score, "runner_up": p.runner_up,
                                  "runner_up_score": p.runner_up_score}) + "\n")
    return path


def read_eval_predictions(path: str | os.PathLike) -> dict[str, Prediction]:
    """eval_predictions.jsonl by image sha256. Lines for the same image must agree (same bytes, same model)."""
    predictions: dict[str, Prediction] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                item = Prediction(str(data["sha256"]), str(data["label"]), str(data["predicted"]),
                                  float(data["score"]), data.get("runner_up"),
                                  float(data.get("runner_up_score", 0.0)))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{number}: not an eval prediction ({err})") from None
            predictions.setdefault(item.sha256, item)
    return predictions
