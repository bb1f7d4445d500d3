"""The gate's thresholds, checked with TFMA's own validator on made-up sliced metrics."""
import pytest
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.evaluators import metrics_validator

from pipeline.definition.configs import GateConfig
from pipeline.definition.evaluation import ACCURACY, LABEL_FEATURE, eval_config

GATE = GateConfig(min_accuracy=0.9, max_accuracy_drop=0.02, min_signer_accuracy=0.6)
OVERALL = ()


def _signer(name: str):
    return ((LABEL_FEATURE, name),)


def _failures(slice_key, accuracy: float, change: float | None = None) -> list[str]:
    """Failed metric names for one slice; `change` = candidate - serving, when there is a baseline."""
    # What TFX's Evaluator does: name the models, and drop change thresholds without a baseline.
    config = tfma.utils.update_eval_config_with_defaults(
        eval_config(GATE), has_baseline=change is not None, rubber_stamp=change is None)
    model = config.model_specs[0].name
    metrics = {tfma.metrics.MetricKey(name=ACCURACY, model_name=model): accuracy}
    if change is not None:
        metrics[tfma.metrics.MetricKey(name=ACCURACY, model_name=model, is_diff=True)] = change
    result = metrics_validator.validate_metrics((slice_key, metrics), config)
    return [("change " if failure.metric_key.is_diff else "") + failure.metric_key.name
            for per_slice in result.metric_validations_per_slice for failure in per_slice.failures]


@pytest.mark.parametrize(
    "slice_key, accuracy, fails",
    [
        (OVERALL, 0.95, False),
        (OVERALL, 0.85, True),  # below min_accuracy
        (_signer("signer_03"), 0.7, False),  # a signer only needs min_signer_accuracy, not min_accuracy
        (_signer("signer_03"), 0.5, True),  # one ruined signer blocks the model
    ],
)
def test_each_bound_applies_to_its_own_slices(slice_key, accuracy, fails):
    assert bool(_failures(slice_key, accuracy)) is fails


def test_no_worse_than_serving_by_more_than_the_margin():
    assert _failures(OVERALL, 0.95, change=-0.01) == []
    assert _failures(OVERALL, 0.95, change=-0.05) == [f"change {ACCURACY}"]
