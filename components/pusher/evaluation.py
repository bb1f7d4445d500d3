"""What the Evaluator's ModelEvaluation says: why a model was not blessed, its overall metrics, and per signer.

The ModelBlessing only carries blessed=0/1; the reasons (which metric missed which
threshold) are in the TFMA ValidationResult that the Evaluator wrote next to its
metrics. The Pusher reads both through TFMA's own loaders, and records the
candidate's metrics with the version it pushes (components/pusher/records.py):

- **overall**: every metric of the overall slice except the per-signer bound
  (SIGNER_BOUND_METRIC and the keys under it, `signer_accuracy_upper_bound/...`):
  the bound describes one signer's slice, and on the whole eval set it means
  nothing;
- **per signer**: for each slice on the label feature alone,
  {"accuracy": ACCURACY_METRIC, "correct": SIGNER_CORRECT_METRIC, "total":
  EXAMPLE_COUNT_METRIC}. An evaluation from before the bound has no correct count:
  it is then accuracy x total, rounded. A slice without accuracy or count is left out.

The metric names are serving.contract's, which the gate's metrics use too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tensorflow_model_analysis as tfma
from google.protobuf import text_format
from tensorflow_model_analysis.writers.eval_config_writer import load_eval_run

from serving.contract import (
    ACCURACY_METRIC,
    EXAMPLE_COUNT_METRIC,
    LABEL_FEATURE,
    SIGNER_BOUND_METRIC,
    SIGNER_CORRECT_METRIC,
    VERIFICATION_METRIC_PREFIX,
    VERIFICATION_SIGNER_SEPARATOR,
    VERIFICATION_TRIALS_METRIC,
)


@dataclass
class EvaluationSummary:
    validation_ok: bool | None  # None: the evaluation has no validation result (no thresholds)
    failures: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    # Label -> {"accuracy": float, "correct": int, "total": int}, in label order.
    per_signer: dict[str, dict[str, float | int]] = field(default_factory=dict)


def summarize_evaluation(uri: str | Path) -> EvaluationSummary:
    """Read the validation result, and the candidate's overall and per-signer metrics, under `uri`."""
    uri = str(uri)
    validation = _load_validation(uri)
    summary = EvaluationSummary(validation_ok=None if validation is None else validation.validation_ok)
    if validation is not None and not validation.validation_ok:
        summary.failures = _describe_failures(validation)
    eval_config = load_eval_run(uri)[0]
    baselines = {spec.name for spec in eval_config.model_specs if spec.is_baseline} if eval_config else set()
    per_signer = {}
    for metrics_for_slice in tfma.load_metrics(uri):
        keys = metrics_for_slice.slice_key.single_slice_keys
        if metrics_for_slice.HasField("cross_slice_key") or len(keys) > 1:
            continue
        values = {}
        for item in metrics_for_slice.metric_keys_and_values:
            key = item.key
            if key.is_diff or key.model_name in baselines or not item.value.HasField("double_value"):
                continue
            values[_metric_name(key)] = item.value.double_value.value
        if not keys:
            summary.metrics = {name: value for name, value in values.items()
                               if not _is_signer_bound(name) and _is_recorded_verification(name, values)}
        elif keys[0].column == LABEL_FEATURE:
            figures = _signer_figures(values)
            if figures is not None:
                per_signer[_slice_value(keys[0])] = figures
    summary.per_signer = dict(sorted(per_signer.items()))
    return summary


def _is_recorded_verification(name: str, overall: dict[str, float]) -> bool:
    """Whether `name` is recorded as far as verification goes: every other metric is; verification's overall
    figures are when the model was measured (it verifies, and the eval split had genuine trials); its per-signer
    keys (`<metric>/<signer>`) never are."""
    if not name.startswith(VERIFICATION_METRIC_PREFIX):
        return True
    measured = overall.get(f"{VERIFICATION_TRIALS_METRIC}_genuine", 0.0) > 0
    return measured and VERIFICATION_SIGNER_SEPARATOR not in name


def _is_signer_bound(name: str) -> bool:
    return name == SIGNER_BOUND_METRIC or name.startswith(SIGNER_BOUND_METRIC + "/")


def _signer_figures(values: dict[str, float]) -> dict[str, float | int] | None:
    if ACCURACY_METRIC not in values or EXAMPLE_COUNT_METRIC not in values:
        return None
    accuracy = values[ACCURACY_METRIC]
    total = round(values[EXAMPLE_COUNT_METRIC])
    correct = round(values.get(SIGNER_CORRECT_METRIC, accuracy * total))
    return {"accuracy": accuracy, "correct": correct, "total": total}


def _slice_value(single_slice_key) -> str:
    kind = single_slice_key.WhichOneof("kind")
    value = getattr(single_slice_key, kind) if kind else ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


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
