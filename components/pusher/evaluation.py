"""What the Evaluator's ModelEvaluation says: why a model was not blessed, and its overall metrics.

The ModelBlessing only carries blessed=0/1; the reasons (which metric missed which
threshold) are in the TFMA ValidationResult that the Evaluator wrote next to its
metrics. The Pusher reads both through TFMA's own loaders.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tensorflow_model_analysis as tfma
from google.protobuf import text_format
from tensorflow_model_analysis.writers.eval_config_writer import load_eval_run


@dataclass
class EvaluationSummary:
    validation_ok: bool | None  # None: the evaluation has no validation result (no thresholds)
    failures: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def summarize_evaluation(uri: str | Path) -> EvaluationSummary:
    """Read the validation result and the candidate's overall-slice metrics under `uri`."""
    uri = str(uri)
    validation = _load_validation(uri)
    summary = EvaluationSummary(validation_ok=None if validation is None else validation.validation_ok)
    if validation is not None and not validation.validation_ok:
        summary.failures = _describe_failures(validation)
    eval_config = load_eval_run(uri)[0]
    baselines = {spec.name for spec in eval_config.model_specs if spec.is_baseline} if eval_config else set()
    for metrics_for_slice in tfma.load_metrics(uri):
        if metrics_for_slice.slice_key.single_slice_keys or metrics_for_slice.HasField("cross_slice_key"):
            continue
        for item in metrics_for_slice.metric_keys_and_values:
            key = item.key
            if key.is_diff or key.model_name in baselines or not item.value.HasField("double_value"):
                continue
            summary.metrics[_metric_name(key)] = item.value.double_value.value
    return summary


def _load_validation(uri: str) -> tfma.ValidationResult | None:
    if not list(Path(uri).glob("validations*")):
        return None
    return tfma.load_validation_result(uri)


def _describe_failures(validation: tfma.ValidationResult) -> list[str]:
    failures = []
    for per_slice in validation.metric_validations_per_slice:
        where = _slice_name(per_slice.slice_key)
        for failure in per_slice.failures:
            name = _metric_name(failure.metric_key) + (" change vs baseline" if failure.metric_key.is_diff else "")
            value = failure.metric_value.double_value.value if failure.metric_value.HasField("double_value") else None
            threshold = text_format.MessageToString(failure.metric_threshold, as_one_line=True)
            text = f"{name}={value:.4g}" if value is not None else name
            detail = f"{text} on {where} misses {{{threshold}}}"
            if failure.message.strip():
                detail += f" ({' '.join(failure.message.split())})"
            failures.append(detail)
    failures += [f"no data for slice {text_format.MessageToString(s, as_one_line=True) or 'overall'}" for s in validation.missing_slices]
    if validation.missing_thresholds:
        failures.append("thresholds configured but never checked")
    return failures or ["validation failed without a recorded metric failure"]


def _metric_name(key) -> str:
    parts = [key.name]
    if key.output_name:
        parts.append(key.output_name)
    if key.HasField("sub_key"):
        parts.append(text_format.MessageToString(key.sub_key, as_one_line=True).replace(" ", ""))
    return "/".join(parts)


def _slice_name(slice_key) -> str:
    if not slice_key.single_slice_keys:
        return "the overall slice"
    return "slice " + ", ".join(text_format.MessageToString(single, as_one_line=True) for single in slice_key.single_slice_keys)
