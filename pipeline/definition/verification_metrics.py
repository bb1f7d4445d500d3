"""The gate's verification metrics: EER, FAR and FRR of the writer-dependent verifiers, computed inside TFMA.

Where the scores come from: a model with verification exports a signature named
`transformed_features` (contract.VERIFICATION_SCORES_SIGNATURE), which the
Evaluator calls on every eval batch (eval_predictions.py; TFMA's own extractors
call a signature of that default name too) and skips on a model without it, so a
serving version without verification, or one with fewer than 2 signers, still
evaluates. It gives each eval image's calibrated score
for every enrolled signer, the signers, the threshold, and the softmax.
classify keeps its two outputs: TF Serving's Classify API refuses a signature
with a third (classifier.cc, PreProcessClassification: "Expected one or two
output Tensors").

Trials, per model, from each eval example (its `label` feature is the signer it
claims to be, its `genuine` feature 0 for a forgery, absent = genuine):

- genuine: a genuine image scored for its own signer, when that signer is enrolled;
- random forgery: a genuine image scored for every other enrolled signer (other
  people's signatures claimed as this signer; images of signers that are not
  enrolled are random forgeries of every enrolled one);
- skilled forgery: a `genuine` = 0 example scored for the signer it claims.

From them (higher score = genuine, accepted when score >= the model's threshold):

    verification_eer                  EER of genuine against all forgery trials (random and skilled, pooled
                                      over signers as the Trainer's cross-validated EER is)
    verification_eer_random/_skilled  the same against one kind (skilled: only when the slice has some)
    verification_frr                  genuine trials rejected at the threshold
    verification_far(_random/_skilled) forgery trials accepted at the threshold
    verification_threshold            the model's threshold
    verification_trials_genuine/_random/_skilled   the trials counted
    <name>/<signer>                   EER, FRR, FAR_random, FAR_skilled of one signer (its genuine trials and
                                      the forgeries claimed as it), for signers with genuine trials in the
                                      slice, each rate when there are the trials it needs

A signer's random forgeries are the other signers' images, which lie in other
`label` slices: the per-signer rates are therefore keys of the overall slice
(on a `label` slice they are computed from that slice's trials alone: its
signer's genuine images and skilled forgeries). Example weights are not used:
every trial counts once.

Nothing is measured for a model without verification scores, or on a slice
without both genuine and forgery trials: `verification_eer` is then 0.0 with
`verification_trials_genuine` 0 (an error rate over no trials; NaN would fail
every TFMA threshold), and no other rate is written. That is how a model without
a verify signature passes the gate's EER bound: it has nothing to verify.

`VerificationEerIncrease` (verification_eer_increase) is the candidate's EER minus
the baseline's, written for the candidate only, and 0.0 unless both models are
measured: the gate's margin against the serving version is a value threshold on
it, not a TFMA change threshold, because TFMA's change threshold would compare a
measured EER with the 0.0 of a serving version that had no verification.

Layer: definition. May import TFMA, Apache Beam, NumPy and serving.contract; nothing else of signflow
(the Evaluator imports this module by path wherever it runs).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis import constants as tfma_constants
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.proto import config_pb2

from serving.contract import (
    GENUINE_FEATURE,
    LABEL_FEATURE,
    PROBABILITIES_OUTPUT,
    SCORES_OUTPUT,
    VERIFICATION_EER_INCREASE_METRIC,
    VERIFICATION_EER_METRIC,
    VERIFICATION_FAR_METRIC,
    VERIFICATION_FRR_METRIC,
    VERIFICATION_RANDOM_SUFFIX,
    VERIFICATION_SCORES_OUTPUT,
    VERIFICATION_SIGNER_SEPARATOR,
    VERIFICATION_SIGNERS_OUTPUT,
    VERIFICATION_SKILLED_SUFFIX,
    VERIFICATION_THRESHOLD_METRIC,
    VERIFICATION_THRESHOLD_OUTPUT,
    VERIFICATION_TRIALS_METRIC,
)

EER = VERIFICATION_EER_METRIC
EER_RANDOM = EER + VERIFICATION_RANDOM_SUFFIX
EER_SKILLED = EER + VERIFICATION_SKILLED_SUFFIX
FRR = VERIFICATION_FRR_METRIC
FAR = VERIFICATION_FAR_METRIC
FAR_RANDOM = FAR + VERIFICATION_RANDOM_SUFFIX
FAR_SKILLED = FAR + VERIFICATION_SKILLED_SUFFIX
THRESHOLD = VERIFICATION_THRESHOLD_METRIC
GENUINE, RANDOM, SKILLED = "genuine", "random", "skilled"
TRIALS = {kind: f"{VERIFICATION_TRIALS_METRIC}_{kind}" for kind in (GENUINE, RANDOM, SKILLED)}
# The rates written per signer, as `<name>/<signer>`.
PER_SIGNER = (EER, FRR, FAR_RANDOM, FAR_SKILLED)
EER_INCREASE = VERIFICATION_EER_INCREASE_METRIC
# Names the preprocessor, which TFMA shares between computations by name.
_PREPROCESSOR_NAME = "signflow_verification_trials"


def signer_key_name(name: str, signer: str) -> str:
    """The key of metric `name` for one signer: `<name>/<signer>`."""
    return f"{name}{VERIFICATION_SIGNER_SEPARATOR}{signer}"


def equal_error_rate(genuine: Sequence[float], impostor: Sequence[float]) -> float:
    """The EER of scores where higher means genuine, as components/trainer/verification.equal_error_rate
    computes it (the Trainer's cross-validated EER and this one must be comparable): candidate thresholds
    halfway between consecutive distinct scores and beyond both ends; the mean of the false-accept and
    false-reject rates where they are closest, averaged over the first and last such threshold."""
    genuine, impostor = np.sort(np.asarray(genuine, float)), np.sort(np.asarray(impostor, float))
    if not len(genuine) or not len(impostor):
        raise ValueError("the EER needs genuine and impostor scores")
    scores = np.unique(np.concatenate([genuine, impostor]))
    candidates = np.concatenate([[scores[0] - 1.0], (scores[:-1] + scores[1:]) / 2.0, [scores[-1] + 1.0]])
    false_accept = 1.0 - np.searchsorted(impostor, candidates, side="left") / len(impostor)
    false_reject = np.searchsorted(genuine, candidates, side="left") / len(genuine)
    gap = np.abs(false_accept - false_reject)
    closest = np.flatnonzero(gap == gap.min())
    first, last = closest[0], closest[-1]
    return float((false_accept[first] + false_reject[first] + false_accept[last] + false_reject[last]) / 4.0)


@dataclass
class Trials:
    """One model's verification trials over a slice: scores per kind and claimed signer, and its threshold."""

    scores: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {GENUINE: {}, RANDOM: {}, SKILLED: {}})
    threshold: float | None = None

    def add(self, kind: str, signer: str, score: float) -> None:
        self.scores[kind].setdefault(signer, []).append(float(score))

    def merge(self, other: Trials) -> None:
        for kind, by_signer in other.scores.items():
            for signer, values in by_signer.items():
                self.scores[kind].setdefault(signer, []).extend(values)
        if self.threshold is None:
            self.threshold = other.threshold

    def pooled(self, kind: str) -> np.ndarray:
        return np.array([s for values in self.scores[kind].values() for s in values], dtype=np.float64)

    @property
    def measured(self) -> bool:
        """Whether there is anything to measure: a threshold, genuine trials and forgery trials."""
        return (self.threshold is not None and len(self.pooled(GENUINE)) > 0
                and len(self.pooled(RANDOM)) + len(self.pooled(SKILLED)) > 0)

    def rates(self) -> dict[str, float]:
        """Metric name -> value (module docstring); only verification_eer and the counts when not measured."""
        genuine, random_, skilled = (self.pooled(kind) for kind in (GENUINE, RANDOM, SKILLED))
        out = {TRIALS[GENUINE]: float(len(genuine)), TRIALS[RANDOM]: float(len(random_)),
               TRIALS[SKILLED]: float(len(skilled))}
        if not self.measured:
            return {EER: 0.0, **out}
        threshold = self.threshold
        forgeries = np.concatenate([random_, skilled])
        out.update({EER: equal_error_rate(genuine, forgeries), THRESHOLD: threshold,
                    FRR: float(np.mean(genuine < threshold)), FAR: float(np.mean(forgeries >= threshold))})
        for name, far_name, kind in ((EER_RANDOM, FAR_RANDOM, random_), (EER_SKILLED, FAR_SKILLED, skilled)):
            if len(kind):
                out[name] = equal_error_rate(genuine, kind)
                out[far_name] = float(np.mean(kind >= threshold))
        # NOTE: only signers with genuine trials in the slice: on a `label` slice that is its own signer, so
        # the keys grow with the signers, not with their square.
        for signer in sorted(self.scores[GENUINE]):
            own = np.array(self.scores[GENUINE][signer])
            random_of = np.array(self.scores[RANDOM].get(signer, []))
            skilled_of = np.array(self.scores[SKILLED].get(signer, []))
            forged = np.concatenate([random_of, skilled_of])
            if len(forged):
                out[signer_key_name(EER, signer)] = equal_error_rate(own, forged)
            out[signer_key_name(FRR, signer)] = float(np.mean(own < threshold))
            if len(random_of):
                out[signer_key_name(FAR_RANDOM, signer)] = float(np.mean(random_of >= threshold))
            if len(skilled_of):
                out[signer_key_name(FAR_SKILLED, signer)] = float(np.mean(skilled_of >= threshold))
        return out

    def eer(self) -> float | None:
        """The pooled EER, or None when not measured."""
        return equal_error_rate(self.pooled(GENUINE), np.concatenate([self.pooled(RANDOM), self.pooled(SKILLED)])) \
            if self.measured else None


class VerificationErrorRates(metric_types.Metric):
    """Per slice and model: EER, FAR and FRR of the model's verifiers, overall and per signer (module docstring).

    `name` is the pooled EER's key, the one the gate's absolute bound is put on; the other keys have fixed names.
    """

    def __init__(self, name: str = EER):
        super().__init__(_error_rates, name=name)


class VerificationEerIncrease(metric_types.Metric):
    """Per slice, for the candidate: its pooled EER minus the baseline's; 0.0 unless both are measured."""

    def __init__(self, name: str = EER_INCREASE):
        super().__init__(_eer_increase, name=name)


def _model_names(model_names: Sequence[str] | None) -> list[str]:
    return list(model_names) if model_names else [""]


def _preprocessor() -> metric_types.StandardMetricInputsPreprocessor:
    # Predictions (classify's scores) come along as the default inputs: see _scores_of.
    return metric_types.StandardMetricInputsPreprocessor(
        include_filter={tfma_constants.FEATURES_KEY: {LABEL_FEATURE: {}, GENUINE_FEATURE: {}},
                        tfma_constants.TRANSFORMED_FEATURES_KEY: {}},
        include_default_inputs=True, name=_PREPROCESSOR_NAME)


def _error_rates(name: str = EER, eval_config: config_pb2.EvalConfig | None = None,
                 model_names: Sequence[str] | None = None,
                 example_weighted: bool = False) -> metric_types.MetricComputations:
    models = _model_names(model_names)
    key = metric_types.MetricKey(name=name, model_name=models[0], example_weighted=example_weighted)
    return [metric_types.MetricComputation(
        keys=[key], preprocessors=[_preprocessor()],
        combiner=_RatesCombiner(name, models, example_weighted))]


def _eer_increase(name: str = EER_INCREASE, eval_config: config_pb2.EvalConfig | None = None,
                  model_names: Sequence[str] | None = None,
                  example_weighted: bool = False) -> metric_types.MetricComputations:
    models = _model_names(model_names)
    baseline = next((spec.name for spec in (eval_config.model_specs if eval_config else ()) if spec.is_baseline),
                    None)
    candidates = [m for m in models if m != baseline]
    key = metric_types.MetricKey(name=name, model_name=candidates[0], example_weighted=example_weighted)
    return [metric_types.MetricComputation(
        keys=[key], preprocessors=[_preprocessor()],
        combiner=_IncreaseCombiner(key, models, baseline if baseline in models else None))]


class _TrialsCombiner(beam.CombineFn):
    """Accumulates each model's Trials over a slice; subclasses turn them into metrics."""

    def __init__(self, models: Sequence[str]):
        self._models = list(models)

    def create_accumulator(self) -> dict[str, Trials]:
        return {model: Trials() for model in self._models}

    def add_input(self, accumulator: dict[str, Trials],
                  element: metric_types.StandardMetricInputs) -> dict[str, Trials]:
        features = element.get_features() or {}
        claimed = _text(features.get(LABEL_FEATURE))
        genuine = features.get(GENUINE_FEATURE)
        forgery = genuine is not None and np.asarray(genuine).size > 0 and not np.asarray(genuine).all()
        if claimed is None:
            return accumulator
        for model, outputs in _scores_of(element, self._models).items():
            trials = accumulator[model]
            scores = np.asarray(outputs[VERIFICATION_SCORES_OUTPUT], dtype=np.float64).reshape(-1)
            signers = [_text(s) for s in np.asarray(outputs[VERIFICATION_SIGNERS_OUTPUT]).reshape(-1)]
            trials.threshold = float(np.asarray(outputs[VERIFICATION_THRESHOLD_OUTPUT]).reshape(-1)[0])
            for signer, score in zip(signers, scores):
                if forgery:
                    if signer == claimed:
                        trials.add(SKILLED, signer, score)
                else:
                    trials.add(GENUINE if signer == claimed else RANDOM, signer, score)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[dict[str, Trials]]) -> dict[str, Trials]:
        merged = self.create_accumulator()
        for accumulator in accumulators:
            for model, trials in accumulator.items():
                merged[model].merge(trials)
        return merged


class _RatesCombiner(_TrialsCombiner):
    def __init__(self, name: str, models: Sequence[str], example_weighted: bool):
        super().__init__(models)
        self._name = name
        self._example_weighted = example_weighted

    def extract_output(self, accumulator: dict[str, Trials]) -> dict[metric_types.MetricKey, Any]:
        out = {}
        for model, trials in accumulator.items():
            for metric, value in trials.rates().items():
                out[metric_types.MetricKey(name=self._name if metric == EER else metric, model_name=model,
                                           example_weighted=self._example_weighted)] = value
        return out


class _IncreaseCombiner(_TrialsCombiner):
    def __init__(self, key: metric_types.MetricKey, models: Sequence[str], baseline: str | None):
        super().__init__(models)
        self._key = key
        self._baseline = baseline

    def extract_output(self, accumulator: dict[str, Trials]) -> dict[metric_types.MetricKey, Any]:
        candidate = accumulator[self._key.model_name].eer()
        baseline = accumulator[self._baseline].eer() if self._baseline is not None else None
        increase = candidate - baseline if candidate is not None and baseline is not None else 0.0
        return {self._key: increase}


def _scores_of(element: metric_types.StandardMetricInputs, models: Sequence[str]) -> dict[str, Mapping[str, Any]]:
    """Model -> its verification outputs for this example, for the models that have them.

    NOTE: TFMA stores transformed features under each model's name, except when only
    one model produced any: then it stores that model's outputs unnamed (model_util.
    ModelSignaturesDoFn), whichever model it was. With two models (a candidate and a
    baseline of which one has no verification) the owner is the model whose classify
    scores are the softmax the signature also returns; when both models' are, the
    outputs are nobody's (two models that answer alike cannot be told apart).
    """
    transformed = element.get(tfma_constants.TRANSFORMED_FEATURES_KEY) or {}
    if not isinstance(transformed, Mapping) or not transformed:
        return {}
    if VERIFICATION_SCORES_OUTPUT in transformed:  # stored unnamed: one model's
        if len(models) == 1:
            return {models[0]: transformed}
        softmax = np.asarray(transformed.get(PROBABILITIES_OUTPUT, []), dtype=np.float64).reshape(-1)
        owners = []
        for model in models:
            predictions = element.get_predictions(model)
            scores = predictions.get(SCORES_OUTPUT) if isinstance(predictions, Mapping) else None
            if scores is not None and np.asarray(scores).size == softmax.size and np.allclose(
                    np.asarray(scores, dtype=np.float64).reshape(-1), softmax, rtol=0, atol=1e-5):
                owners.append(model)
        return {owners[0]: transformed} if len(owners) == 1 else {}
    return {model: outputs for model, outputs in transformed.items()
            if model in models and isinstance(outputs, Mapping) and VERIFICATION_SCORES_OUTPUT in outputs}


def _text(value: Any) -> str | None:
    """A feature's or output's one string value (bytes decoded), None when absent or empty."""
    if value is None:
        return None
    if isinstance(value, (bytes, str)):
        values = [value]
    else:
        values = np.asarray(value, dtype=object).reshape(-1)
    if not len(values):
        return None
    first = values[0]
    return first.decode("utf-8") if isinstance(first, bytes) else str(first)
