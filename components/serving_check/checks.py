"""The serving contract as checks on plain arrays, whatever server produced them.

Each check returns a list of problems (empty: fine), phrased for the log line
that explains why a model was not infra-blessed.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from components.trainer.predictions import Prediction
from serving.contract import (
    CLASSES_OUTPUT,
    CLASSIFY_INPUT,
    CLASSIFY_METHOD,
    CLASSIFY_SIGNATURE,
    IMAGE_INPUT,
    LABEL_OUTPUT,
    PREDICT_LABEL_SIGNATURE,
    PREDICT_METHOD,
    PROBABILITIES_OUTPUT,
    SCORE_OUTPUT,
    SCORES_OUTPUT,
    SERVING_SIGNATURE,
)

# The reason ServingCheck records when given the Evaluator's blessing and the model is not blessed: a skip,
# not a verdict (pipeline/training_server/run_summary.py reads it so).
SKIPPED_NOT_BLESSED = "skipped: the Evaluator did not bless this model"

# DataType enum values from tensorflow/core/framework/types.proto.
DT_FLOAT = 1
DT_STRING = 7

# name -> (inputs {alias: dtype}, outputs {alias: dtype}, method)
SIGNATURE_CONTRACT = {
    # The seed's answer shape: one output, so REST :predict answers {"predictions": [[p0, p1, ...]]}.
    SERVING_SIGNATURE: ({IMAGE_INPUT: DT_STRING}, {PROBABILITIES_OUTPUT: DT_FLOAT}, PREDICT_METHOD),
    PREDICT_LABEL_SIGNATURE: (
        {IMAGE_INPUT: DT_STRING},
        {LABEL_OUTPUT: DT_STRING, SCORE_OUTPUT: DT_FLOAT, PROBABILITIES_OUTPUT: DT_FLOAT},
        PREDICT_METHOD,
    ),
    CLASSIFY_SIGNATURE: ({CLASSIFY_INPUT: DT_STRING}, {CLASSES_OUTPUT: DT_STRING, SCORES_OUTPUT: DT_FLOAT}, CLASSIFY_METHOD),
}
IMAGE_SIGNATURES = (SERVING_SIGNATURE, PREDICT_LABEL_SIGNATURE)

# Softmax in float32 sums to 1 within a few ulps per class.
SUM_TOLERANCE = 1e-3
# `score` is max(probabilities) computed in the same graph: equal up to rounding.
SCORE_CONSISTENCY_TOLERANCE = 1e-5


def check_signature_defs(signature_defs: Mapping, num_labels: int) -> list[str]:
    """The SignatureDefs TF Serving will use (from saved_model.pb) against the contract."""
    problems = []
    for name, (inputs, outputs, method) in SIGNATURE_CONTRACT.items():
        if name not in signature_defs:
            problems.append(f"signature {name!r} missing (has {sorted(signature_defs)})")
            continue
        signature = signature_defs[name]
        if signature.method_name != method:
            problems.append(f"signature {name!r} has method_name {signature.method_name!r}, TF Serving needs {method!r}")
        for kind, expected, actual in (("input", inputs, signature.inputs), ("output", outputs, signature.outputs)):
            if set(actual) != set(expected):
                problems.append(f"signature {name!r} {kind}s are {sorted(actual)}, the contract says {sorted(expected)}")
                continue
            for alias, dtype in expected.items():
                if actual[alias].dtype != dtype:
                    problems.append(f"signature {name!r} {kind} {alias!r} has dtype enum {actual[alias].dtype}, expected {dtype}")
        if name in IMAGE_SIGNATURES and PROBABILITIES_OUTPUT in signature.outputs:
            dims = [d.size for d in signature.outputs[PROBABILITIES_OUTPUT].tensor_shape.dim]
            if len(dims) != 2 or dims[1] not in (-1, num_labels):
                problems.append(f"signature {name!r} output 'probabilities' has shape {dims}, "
                                f"expected [-1, {num_labels}] (labels.txt)")
    return problems


def check_probabilities(outputs: Mapping[str, np.ndarray], count: int, labels: Sequence[str], where: str) -> list[str]:
    """serving_default's answer to `count` images: `probabilities` only, a distribution over labels.txt per row."""
    if set(outputs) != {PROBABILITIES_OUTPUT}:
        return [f"{where}: outputs are {sorted(outputs)}, serving_default answers {[PROBABILITIES_OUTPUT]} only"]
    return _check_distribution(np.asarray(outputs[PROBABILITIES_OUTPUT]), count, len(labels), where, PROBABILITIES_OUTPUT)


def check_same_probabilities(served: Mapping[str, np.ndarray], labelled: Mapping[str, np.ndarray], where: str) -> list[str]:
    """serving_default's probabilities against predict_label's for the same images (the same graph: equal up
    to rounding)."""
    first = np.asarray(served[PROBABILITIES_OUTPUT], dtype=np.float32)
    second = np.asarray(labelled[PROBABILITIES_OUTPUT], dtype=np.float32)
    if first.shape != second.shape:
        return [f"{where}: serving_default answered {list(first.shape)} probabilities, predict_label {list(second.shape)}"]
    worst = float(np.max(np.abs(first - second))) if first.size else 0.0
    if worst > SCORE_CONSISTENCY_TOLERANCE:
        return [f"{where}: serving_default's probabilities differ from predict_label's by up to {worst:.6f}"]
    return []


def check_predict(outputs: Mapping[str, np.ndarray], count: int, labels: Sequence[str], where: str,
                  unknown_label: str | None = None) -> list[str]:
    """predict_label's answer to `count` images: keys, shapes, dtypes, probabilities, label, score.

    With open-set identification (`unknown_label`, from the model's metadata) a row may answer that label
    instead of a signer; its score is then a verification score, not a probability, and is not compared."""
    expected = {PROBABILITIES_OUTPUT, LABEL_OUTPUT, SCORE_OUTPUT}
    if not expected <= set(outputs):
        return [f"{where}: outputs {sorted(outputs)} lack {sorted(expected - set(outputs))}"]
    probabilities = np.asarray(outputs[PROBABILITIES_OUTPUT])
    label = np.asarray(outputs[LABEL_OUTPUT])
    score = np.asarray(outputs[SCORE_OUTPUT])
    problems = _check_distribution(probabilities, count, len(labels), where, "probabilities")
    if label.shape != (count,):
        problems.append(f"{where}: 'label' has shape {label.shape}, expected ({count},)")
    if score.shape != (count,) or score.dtype != np.float32:
        problems.append(f"{where}: 'score' is {score.dtype}{list(score.shape)}, expected float32[{count}]")
    if problems:
        return problems
    for row, (name, value) in enumerate(zip(label, score)):
        text = as_text(name)
        if unknown_label is not None and text == unknown_label:
            continue
        if text not in labels:
            problems.append(f"{where}: row {row} label {text!r} is not in labels.txt")
            continue
        top = labels[int(np.argmax(probabilities[row]))]
        if text != top and not np.isclose(probabilities[row][labels.index(text)], probabilities[row].max(), atol=SCORE_CONSISTENCY_TOLERANCE):
            problems.append(f"{where}: row {row} label {text!r} is not the most probable class {top!r}")
        if abs(float(value) - float(probabilities[row].max())) > SCORE_CONSISTENCY_TOLERANCE:
            problems.append(f"{where}: row {row} score {float(value):.6f} is not max(probabilities) {float(probabilities[row].max()):.6f}")
    return problems


def check_classify(outputs: Mapping[str, np.ndarray], count: int, labels: Sequence[str], where: str) -> list[str]:
    """classify's answer to `count` examples: every row ranks exactly the labels, scores a distribution."""
    if not {"classes", "scores"} <= set(outputs):
        return [f"{where}: outputs {sorted(outputs)} lack 'classes'/'scores'"]
    classes = np.asarray(outputs["classes"])
    problems = _check_distribution(np.asarray(outputs["scores"]), count, len(labels), where, "scores")
    if classes.shape != (count, len(labels)):
        problems.append(f"{where}: 'classes' has shape {classes.shape}, expected ({count}, {len(labels)})")
        return problems
    for row in range(count):
        names = sorted(as_text(value) for value in classes[row])
        if names != sorted(labels):
            problems.append(f"{where}: row {row} classes {names} are not the labels in labels.txt")
            break
    return problems


def top_classes(outputs: Mapping[str, np.ndarray]) -> list[str]:
    """The highest-scoring class of each classify row."""
    classes = np.asarray(outputs["classes"])
    scores = np.asarray(outputs["scores"])
    return [as_text(classes[row][int(np.argmax(scores[row]))]) for row in range(len(classes))]


def compare_with_eval_predictions(
    sha256s: Sequence[str],
    labels: Sequence[str],
    scores: Sequence[float],
    expected: Mapping[str, Prediction],
    tolerance: float,
    where: str,
) -> tuple[int, list[str]]:
    """Serving's top label and score per image against the Trainer's. Returns (images compared, problems)."""
    compared = 0
    problems = []
    for sha256, label, score in zip(sha256s, labels, scores):
        trainer = expected.get(sha256)
        if trainer is None:
            continue
        compared += 1
        if label != trainer.predicted:
            # A near-tie may flip between two numerically equivalent computations (measured:
            # scores differ by up to ~0.003 between the Trainer's batches and one image served):
            # the served label must then be the Trainer's runner-up, with its score.
            if (label == trainer.runner_up and trainer.score - trainer.runner_up_score <= 2 * tolerance
                    and abs(score - trainer.runner_up_score) <= tolerance):
                continue
            problems.append(f"{where}: image {sha256[:12]} served as {label!r} ({score:.4f}), "
                            f"the Trainer predicted {trainer.predicted!r} ({trainer.score:.4f})")
        elif abs(score - trainer.score) > tolerance:
            problems.append(f"{where}: image {sha256[:12]} score {score:.6f} differs from the Trainer's "
                            f"{trainer.score:.6f} by more than {tolerance}")
    return compared, problems


def softmax_answers(outputs: Mapping[str, np.ndarray], labels: Sequence[str]) -> tuple[list[str], list[float]]:
    """The most probable label and its probability per row of `probabilities`: what the Trainer predicted, whether
    or not predict_label's open set answered "unknown" for the row."""
    probabilities = np.asarray(outputs[PROBABILITIES_OUTPUT])
    return [labels[int(i)] for i in probabilities.argmax(axis=1)], [float(p) for p in probabilities.max(axis=1)]


def as_text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _check_distribution(values: np.ndarray, count: int, num_labels: int, where: str, name: str) -> list[str]:
    if values.dtype != np.float32 or values.shape != (count, num_labels):
        return [f"{where}: {name!r} is {values.dtype}{list(values.shape)}, expected float32[{count}, {num_labels}] (labels.txt)"]
    if not np.all(np.isfinite(values)):
        return [f"{where}: {name!r} has NaN or infinite values"]
    if values.min() < 0 or values.max() > 1 + SUM_TOLERANCE:
        return [f"{where}: {name!r} has values outside [0, 1]"]
    sums = values.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1)))
    if abs(sums[worst] - 1) > SUM_TOLERANCE:
        return [f"{where}: {name!r} row {worst} sums to {sums[worst]:.6f}, not 1"]
    return []
