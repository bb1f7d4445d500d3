"""The gate's thresholds, checked with TFMA's own validator on made-up sliced metrics.

What the metrics are computed from is in test_signer_gate.py (TFX's Evaluator on a real model); here each
slice gets the values the validator sees: plain accuracy and the per-signer upper bound.
"""
import pytest
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.evaluators import metrics_validator
from tensorflow_model_analysis.metrics import metric_specs

from pipeline.definition.configs import GateConfig
from pipeline.definition.evaluation import ACCURACY, EER, EER_INCREASE, LABEL_FEATURE, SIGNER_BOUND, eval_config
from pipeline.definition.signer_metrics import SignerAccuracyBound, TopOneAccuracy

GATE = GateConfig(min_accuracy=0.9, max_accuracy_drop=0.02, min_signer_accuracy=0.6)
OVERALL = ()


def _signer(name: str):
    return ((LABEL_FEATURE, name),)


def _failures(slice_key, accuracy: float, bound: float = 1.0, change: float | None = None, eer: float = 0.0,
              eer_increase: float = 0.0) -> list[str]:
    """Failed metric names for one slice; `bound` = the signer upper bound, `change` = candidate - serving,
    `eer` and `eer_increase` the verification metrics (0 for a model without verification)."""
    # What TFX's Evaluator does: name the models, and drop change thresholds without a baseline.
    config = tfma.utils.update_eval_config_with_defaults(
        eval_config(GATE), has_baseline=change is not None, rubber_stamp=change is None)
    model = config.model_specs[0].name
    metrics = {tfma.metrics.MetricKey(name=ACCURACY, model_name=model): accuracy,
               tfma.metrics.MetricKey(name=SIGNER_BOUND, model_name=model): bound,
               tfma.metrics.MetricKey(name=EER, model_name=model): eer,
               tfma.metrics.MetricKey(name=EER_INCREASE, model_name=model): eer_increase}
    if change is not None:
        metrics[tfma.metrics.MetricKey(name=ACCURACY, model_name=model, is_diff=True)] = change
    result = metrics_validator.validate_metrics((slice_key, metrics), config)
    return [("change " if failure.metric_key.is_diff else "") + failure.metric_key.name
            for per_slice in result.metric_validations_per_slice for failure in per_slice.failures]


@pytest.mark.parametrize(
    "slice_key, accuracy, bound, failed",
    [
        (OVERALL, 0.95, 0.97, []),
        (OVERALL, 0.85, 0.90, [ACCURACY]),  # below min_accuracy
        (OVERALL, 0.95, 0.50, []),  # the signer bound is not checked on the overall slice
        (_signer("signer_03"), 0.7, 0.9, []),  # a signer only needs min_signer_accuracy, not min_accuracy
        (_signer("signer_03"), 0.5, 0.91, []),  # 1 of 2 right: its accuracy alone no longer blocks the model
        (_signer("signer_03"), 0.0, 0.39, [SIGNER_BOUND]),  # 0 of 6 right: even the optimistic end is under 0.6
    ],
)
def test_each_bound_applies_to_its_own_slices(slice_key, accuracy, bound, failed):
    assert _failures(slice_key, accuracy, bound) == failed


def test_no_worse_than_serving_by_more_than_the_margin():
    assert _failures(OVERALL, 0.95, change=-0.01) == []
    assert _failures(OVERALL, 0.95, change=-0.05) == [f"change {ACCURACY}"]


def test_verification_bounds_apply_to_the_overall_slice_only():
    assert _failures(OVERALL, 0.95, eer=0.1, eer_increase=0.04) == []
    assert _failures(OVERALL, 0.95, eer=0.25) == [EER]  # over max_eer (0.2)
    assert _failures(OVERALL, 0.95, eer=0.1, eer_increase=0.06) == [EER_INCREASE]  # over max_eer_increase (0.05)
    assert _failures(_signer("signer_03"), 0.9, eer=0.5, eer_increase=0.5) == []


def _metric_config(config: tfma.EvalConfig, metric_class: type) -> tfma.MetricConfig:
    [metric] = [m for m in config.metrics_specs[0].metrics if m.class_name == metric_class.__name__]
    return metric


def test_the_accuracy_is_signflows_own_under_tfmas_name():
    """TFMA's SparseCategoricalAccuracy crashes on a label a model does not know; the name stays the same."""
    accuracy_metric = _metric_config(eval_config(GATE), TopOneAccuracy)
    assert metric_specs.metric_instance(accuracy_metric).name == ACCURACY == "sparse_categorical_accuracy"
    [threshold] = accuracy_metric.per_slice_thresholds
    assert not threshold.slicing_specs[0].feature_keys  # the overall slice only
    classes = [m.class_name for spec in eval_config(GATE).metrics_specs for m in spec.metrics]
    assert "SparseCategoricalAccuracy" not in classes


def test_the_signer_bound_carries_the_gate_settings():
    gate = GateConfig(min_signer_accuracy=0.7, signer_confidence_z=1.645, min_signer_examples=4)
    signer_metric = _metric_config(eval_config(gate), SignerAccuracyBound)
    metric = metric_specs.metric_instance(signer_metric)  # imported by module path, as the Evaluator does
    assert (metric.name, metric.kwargs["z"], metric.kwargs["min_examples"]) == (SIGNER_BOUND, 1.645, 4)
    [threshold] = signer_metric.per_slice_thresholds
    assert list(threshold.slicing_specs[0].feature_keys) == [LABEL_FEATURE]
    assert threshold.threshold.value_threshold.lower_bound.value == 0.7


@pytest.mark.parametrize("setting", [
    {"min_signer_examples": 0}, {"signer_confidence_z": -1.0}, {"min_signer_accuracy": 1.2}, {"min_accuracy": -0.1},
    {"max_eer": 1.5}, {"max_eer_increase": -0.1}])
def test_the_gate_refuses_settings_outside_their_range(setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        GateConfig(**setting)
