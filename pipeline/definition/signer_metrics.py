"""The gate's metrics, both counting top-1 answers the same way: accuracy, and per signer its Wilson upper bound.

`TopOneAccuracy` is the gate's accuracy, overall and per signer. It replaces
TFMA's own SparseCategoricalAccuracy, which crashes the Evaluator (`ValueError:
... inhomogeneous shape`) as soon as an eval example's label is not among a
model's classes: TFMA turns such a label into an all-zero one-hot row while the
others stay class ids, and its Keras wrapper cannot stack the two. That happens
on the first run after a signer is added (the serving version, the baseline,
does not know it) and for a candidate none of whose training images showed a
signer. Here an unknown label is a wrong answer. The metric keeps the name TFMA's
reported (`sparse_categorical_accuracy`), and the same value wherever TFMA's
worked, so pushed records, the UI and older versions' records stay comparable.

A signer's eval slice is small (about a fifth of its references, see
docs/delivery.md), so its plain accuracy jumps in big steps: 1 right out of 2 is
0.5. `SignerAccuracyBound` reports instead the upper end of the Wilson score
interval of that accuracy, from the slice's correct and total counts; the gate
puts the per-signer floor on it, so a signer holds a model back only when even
the optimistic end of the interval is under the floor (0/8 right: 0.32, held
back; 1/2 right: 0.91, let through). A slice with fewer than `min_examples`
examples is not judged at all: it counts as no evidence, whose interval is
[0, 1], so the metric is 1.0 there.

Examples marked as forgeries (the `genuine` feature is 0) are left out of both
counts: a skilled forgery claims a signer but is another hand, so identification
has no right answer for it. Examples without the feature (spans ingested before
forgeries were recorded) are genuine. TFMA's ExampleCount still counts them.

TFMA's Evaluator loads these classes by module path (`MetricConfig.module`, in the
Evaluator's own process or Beam workers), so the module must be importable wherever
the Evaluator runs: of signflow it imports only serving.contract (standard library
only), which names the metrics for the Pusher that reads them back.

Layer: definition. May import TFMA, Apache Beam, NumPy and serving.contract; nothing else of signflow.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2

from serving.contract import ACCURACY_METRIC, GENUINE_FEATURE, SIGNER_BOUND_METRIC, SIGNER_CORRECT_SUFFIX

# TopOneAccuracy's default name: the one TFMA's SparseCategoricalAccuracy reports, kept for the records that hold it.
ACCURACY = ACCURACY_METRIC
# SignerAccuracyBound's default name: the value the per-signer floor is put on.
UPPER_BOUND = SIGNER_BOUND_METRIC
# Suffix of the second key the metric writes: the slice's correct top-1 answers (same counting as the bound).
CORRECT_SUFFIX = SIGNER_CORRECT_SUFFIX
# z of a two-sided 95% interval: the upper end alone is a one-sided 97.5% bound.
DEFAULT_Z = 1.96
DEFAULT_MIN_EXAMPLES = 3


def wilson_upper_bound(correct: float, total: float, z: float = DEFAULT_Z) -> float:
    """Upper end of the Wilson score interval for `correct` successes out of `total` at normal quantile `z`.

        (p + z²/2n + z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n),   p = correct / n

    With no examples there is no evidence and the bound is 1.0; z = 0 gives the plain accuracy p.
    """
    if total <= 0:
        return 1.0
    if not 0 <= correct <= total:
        raise ValueError(f"correct must be in [0, total], got {correct} of {total}")
    p = correct / total
    z2 = z * z
    centre = p + z2 / (2 * total)
    margin = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    return min(1.0, (centre + margin) / (1 + z2 / total))


def correct_key_name(name: str) -> str:
    """The name of the correct-count key that metric `name` writes beside its bound."""
    return name + CORRECT_SUFFIX


class TopOneAccuracy(metric_types.Metric):
    """Per slice: the fraction of examples whose top-scoring class is their label (0.0 for an empty slice).

    The string label is mapped onto the classify signature's `classes` by TFMA
    (metric_util.to_label_prediction_example_weight, with the EvalConfig's label and prediction keys), each model
    with its own classes, as TFMA's SparseCategoricalAccuracy does. A label the model does not know counts as a
    wrong answer instead of stopping the Evaluator.
    """

    def __init__(self, name: str = ACCURACY):
        super().__init__(metric_util.merge_per_key_computations(_top_one_accuracy), name=name)


class SignerAccuracyBound(metric_types.Metric):
    """Per slice: the Wilson upper bound of top-1 accuracy (`name`), and the number of correct answers
    (`name` + "/correct"). Slices with fewer than `min_examples` examples get 1.0 (not judged).

    Top-1 is counted as TopOneAccuracy counts it: a label the model does not know is a wrong answer.
    """

    def __init__(self, name: str = UPPER_BOUND, z: float = DEFAULT_Z, min_examples: int = DEFAULT_MIN_EXAMPLES):
        if z < 0:
            raise ValueError(f"z must be >= 0, got {z}")
        if min_examples < 1:
            raise ValueError(f"min_examples must be >= 1, got {min_examples}")
        super().__init__(metric_util.merge_per_key_computations(_signer_accuracy_bound),
                         name=name, z=z, min_examples=min_examples)


def _metric_key(name: str, model_name: str, output_name: str, example_weighted: bool) -> metric_types.MetricKey:
    return metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name,
                                  example_weighted=example_weighted)


def _top_one_accuracy(
    name: str = ACCURACY,
    eval_config: config_pb2.EvalConfig | None = None,
    model_name: str = "",
    output_name: str = "",
    example_weighted: bool = False,
) -> metric_types.MetricComputations:
    key = _metric_key(name, model_name, output_name, example_weighted)
    return [metric_types.MetricComputation(
        keys=[key],
        # Labels, predictions and example weights (TFMA's defaults), and the genuine feature.
        preprocessors=[metric_types.FeaturePreprocessor(feature_keys=[GENUINE_FEATURE])],
        combiner=_AccuracyCombiner(key, eval_config, example_weighted),
    )]


def _signer_accuracy_bound(
    name: str = UPPER_BOUND,
    z: float = DEFAULT_Z,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
    eval_config: config_pb2.EvalConfig | None = None,
    model_name: str = "",
    output_name: str = "",
    example_weighted: bool = False,
) -> metric_types.MetricComputations:
    keys = [_metric_key(key_name, model_name, output_name, example_weighted)
            for key_name in (name, correct_key_name(name))]
    return [metric_types.MetricComputation(
        keys=keys,
        preprocessors=[metric_types.FeaturePreprocessor(feature_keys=[GENUINE_FEATURE])],
        combiner=_BoundCombiner(keys, eval_config, z, min_examples, example_weighted),
    )]


class _TopOneCounter(beam.CombineFn):
    """Accumulates (correct, total) top-1 answers over a slice; subclasses turn them into their metrics."""

    def __init__(self, key: metric_types.MetricKey, eval_config: config_pb2.EvalConfig | None,
                 example_weighted: bool):
        self._key = key  # names the model and output whose labels and predictions are counted
        self._eval_config = eval_config
        self._example_weighted = example_weighted

    def create_accumulator(self) -> tuple[float, float]:
        return 0.0, 0.0

    def add_input(self, accumulator: tuple[float, float],
                  element: metric_types.StandardMetricInputs) -> tuple[float, float]:
        correct, total = accumulator
        if _is_forgery(element):
            # A forgery claims its signer but is not theirs: identification has no right answer for it.
            return accumulator
        for label, prediction, example_weight in metric_util.to_label_prediction_example_weight(
                element, eval_config=self._eval_config, model_name=self._key.model_name,
                output_name=self._key.output_name, example_weighted=self._example_weighted,
                flatten=False):
            hits = _top1_hits(label, prediction)
            weight = float(metric_util.safe_to_scalar(example_weight)) if self._example_weighted else 1.0
            correct += weight * float(np.sum(hits))
            total += weight * len(hits)
        return correct, total

    def merge_accumulators(self, accumulators: Iterable[tuple[float, float]]) -> tuple[float, float]:
        correct = total = 0.0
        for c, t in accumulators:
            correct += c
            total += t
        return correct, total


class _AccuracyCombiner(_TopOneCounter):
    def extract_output(self, accumulator: tuple[float, float]) -> dict[metric_types.MetricKey, Any]:
        correct, total = accumulator
        # NOTE: 0.0, not NaN, for no examples (as Keras' accuracy): NaN would pass every lower bound.
        return {self._key: correct / total if total else 0.0}


class _BoundCombiner(_TopOneCounter):
    def __init__(self, keys: list[metric_types.MetricKey], eval_config: config_pb2.EvalConfig | None,
                 z: float, min_examples: int, example_weighted: bool):
        self._bound_key, self._correct_key = keys
        super().__init__(self._bound_key, eval_config, example_weighted)
        self._z = z
        self._min_examples = min_examples

    def extract_output(self, accumulator: tuple[float, float]) -> dict[metric_types.MetricKey, Any]:
        correct, total = accumulator
        # NOTE: a slice under min_examples is not judged: its bound is that of no evidence at all.
        bound = wilson_upper_bound(correct, total, self._z) if total >= self._min_examples else 1.0
        return {self._bound_key: bound, self._correct_key: correct}


def _is_forgery(element: metric_types.StandardMetricInputs) -> bool:
    """Whether the example is marked as a forgery (its `genuine` feature is 0; absent in spans ingested before
    forgeries were recorded, which are genuine)."""
    features = element.get("features") or {}
    genuine = features.get(GENUINE_FEATURE) if isinstance(features, dict) else None
    if genuine is None:
        return False
    values = np.asarray(genuine).reshape(-1)
    return values.size > 0 and not values.all()


def _top1_hits(label: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """One bool per example: is the top-scoring class the label?

    TFMA hands over class ids (integers; -1 in a batch for a label the model does not know) or, when every label
    it was given is unknown, all-zero one-hot rows (floats, the shape of the scores); both, for one example or a
    batch.
    """
    scores = np.asarray(prediction, dtype=np.float64)
    scores = scores.reshape(-1, scores.shape[-1]) if scores.ndim else scores.reshape(1, 1)
    labels = np.asarray(label)
    # NOTE: the dtype, not only the size, tells a one-hot row from a class id: for a one-class model both are 1 long.
    if labels.dtype.kind == "f" and labels.size == scores.size:
        rows = labels.reshape(scores.shape)
        return (rows.max(axis=1) > 0) & (rows.argmax(axis=1) == scores.argmax(axis=1))
    return labels.reshape(-1).astype(np.int64) == scores.argmax(axis=1)
