"""The lines a batch prediction writes, one JSON object each; every record read ends as exactly one of them.

    predictions  {"source", "sha256", "label", "score", "top_k": [{"label", "score"}], "model_version", "input_label"}
    errors       {"source", "reason", "message"}

`source` ("file:line", or the file for an image) is unique and is the join key.
Lines are ASCII JSON (json.dumps' default): a file name that is not valid UTF-8
reaches Python as lone surrogates, which would fail the UTF-8 write of the whole
output; escaped, it is still the same string once parsed.

Layer: batch. May import signature (the Scores it formats); no Beam.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from pipeline.batch.signature import Scores

# Reason code of an image that passed the checks of serving.images but that the
# model's graph could not decode (tf.io.decode_image is stricter than Pillow, e.g. 1-bit BMPs).
INFERENCE_FAILED = "inference_failed"


@dataclass(frozen=True)
class RecordKey:
    """What a prediction line needs about its record; RunInference carries it next to the image."""

    source: str
    sha256: str
    input_label: str | None


def prediction_line(key: RecordKey, scores: Scores, labels: Sequence[str], version: int, top_k: int) -> str:
    if len(scores.probabilities) != len(labels):
        # A labels file out of step with the model (the launcher checks this only
        # when the signature states its class count): every top-k would be wrong, so stop.
        raise ValueError(
            f"the model outputs {len(scores.probabilities)} probabilities but assets/labels.txt has {len(labels)} labels"
        )
    # Stable sort on the score: ties keep labels.txt order, as argmax does for `label`.
    ranked = sorted(range(len(labels)), key=lambda i: -scores.probabilities[i])[:top_k]
    return json.dumps(
        {
            "source": key.source,
            "sha256": key.sha256,
            "label": scores.label,
            "score": scores.score,
            "top_k": [{"label": labels[i], "score": float(scores.probabilities[i])} for i in ranked],
            "model_version": version,
            "input_label": key.input_label,
        }
    )


def error_line(source: str, reason: str, message: str) -> str:
    return json.dumps({"source": source, "reason": reason, "message": message})
