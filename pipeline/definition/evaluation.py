"""The quality gate: a TFMA EvalConfig built from the pipeline's thresholds.

The Evaluator feeds serialized eval tf.Examples to the model's `classify`
signature, whose outputs are TF Serving's `classes` (the label vocabulary) and
`scores` (for a model with verification, the same outputs of its
`transformed_features` call: eval_predictions.py). TFMA maps the string `label`
feature onto `classes` itself, so a baseline and a candidate with different
signer sets are compared fairly: an eval example of a signer a model does not
know is a wrong answer of that model (signer_metrics.TopOneAccuracy; TFMA's own
SparseCategoricalAccuracy crashes on it).

Three bounds, each on its own slices:
- overall top-1 accuracy (signer_metrics.TopOneAccuracy) >= gate.min_accuracy;
- overall accuracy no more than gate.max_accuracy_drop below the version serving
  now (only when there is one);
- per signer (slice `label`), the upper end of the Wilson interval of its accuracy
  (signer_metrics.SignerAccuracyBound) >= gate.min_signer_accuracy, for signers
  with at least gate.min_signer_examples eval examples: a signer holds the model
  back only when its slice shows it is really under the floor, not because 1 of
  its 2 eval images was wrong. Plain per-signer accuracy is still computed, for
  the run summary.

And two on verification (verification_metrics, from the `transformed_features`
signature a model with verification exports; a model without one is not judged):
- overall equal error rate, genuine against random and skilled forgeries
  (verification_metrics.VerificationErrorRates) <= gate.max_eer;
- its increase over the serving version's (verification_metrics.VerificationEerIncrease,
  0 unless both verify) <= gate.max_eer_increase.
FAR and FRR at the model's threshold, per kind and per signer, are computed with them, for the run summary.

Layer: definition. May import TFMA, serving.contract, definition.configs, definition.signer_metrics and
definition.verification_metrics.
"""
from __future__ import annotations

import json

import tensorflow_model_analysis as tfma

from pipeline.definition import signer_metrics, verification_metrics
from pipeline.definition.configs import GateConfig
from serving.contract import CLASSIFY_SIGNATURE, LABEL_FEATURE, SCORES_OUTPUT

# The Evaluator's `module_path`: its custom_extractors call each model once per batch.
EVALUATOR_MODULE = "pipeline.definition.eval_predictions"
# The overall bounds are set on it; per signer it is reported only. Named as TFMA's SparseCategoricalAccuracy was.
ACCURACY = signer_metrics.ACCURACY
# The per-signer bound is set on it.
SIGNER_BOUND = signer_metrics.UPPER_BOUND
# Its companion key: the correct answers it counted, per slice.
SIGNER_CORRECT = signer_metrics.correct_key_name(SIGNER_BOUND)
# The verification bounds are set on them.
EER = verification_metrics.EER
EER_INCREASE = verification_metrics.EER_INCREASE


def eval_config(gate: GateConfig) -> tfma.EvalConfig:
    model_spec = tfma.ModelSpec(
        signature_name=CLASSIFY_SIGNATURE,
        # A TF2 SavedModel that is not a Keras model: its compiled metrics are not used.
        model_type=tfma.TF_GENERIC,
        label_key=LABEL_FEATURE,
        prediction_key=SCORES_OUTPUT,
        preprocessing_function_names=[],
    )
    # NOTE: MetricConfig.threshold would apply to every slice, per-signer ones
    # included; each bound is therefore tied to its own slicing spec.
    overall = tfma.PerSliceMetricThreshold(
        slicing_specs=[tfma.SlicingSpec()],
        threshold=tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": gate.min_accuracy}),
            # Applied only when a baseline (the serving version) exists.
            change_threshold=tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                absolute={"value": -gate.max_accuracy_drop},
            ),
        ),
    )
    per_signer = tfma.PerSliceMetricThreshold(
        slicing_specs=[tfma.SlicingSpec(feature_keys=[LABEL_FEATURE])],
        threshold=tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": gate.min_signer_accuracy})
        ),
    )
    accuracy = tfma.MetricConfig(
        class_name=signer_metrics.TopOneAccuracy.__name__,
        module=signer_metrics.__name__,  # imported by the Evaluator wherever it runs
        config=json.dumps({"name": ACCURACY}),
        per_slice_thresholds=[overall],
    )
    signer_bound = tfma.MetricConfig(
        class_name=signer_metrics.SignerAccuracyBound.__name__,
        module=signer_metrics.__name__,
        config=json.dumps({"name": SIGNER_BOUND, "z": gate.signer_confidence_z,
                           "min_examples": gate.min_signer_examples}),
        per_slice_thresholds=[per_signer],
    )
    overall_only = [tfma.SlicingSpec()]
    eer = tfma.MetricConfig(
        class_name=verification_metrics.VerificationErrorRates.__name__,
        module=verification_metrics.__name__,
        config=json.dumps({"name": EER}),
        per_slice_thresholds=[tfma.PerSliceMetricThreshold(
            slicing_specs=overall_only,
            threshold=tfma.MetricThreshold(
                value_threshold=tfma.GenericValueThreshold(upper_bound={"value": gate.max_eer})))],
    )
    # NOTE: a value threshold on the increase, not a change threshold on the EER: see verification_metrics.
    eer_increase = tfma.MetricConfig(
        class_name=verification_metrics.VerificationEerIncrease.__name__,
        module=verification_metrics.__name__,
        config=json.dumps({"name": EER_INCREASE}),
        per_slice_thresholds=[tfma.PerSliceMetricThreshold(
            slicing_specs=overall_only,
            threshold=tfma.MetricThreshold(
                value_threshold=tfma.GenericValueThreshold(upper_bound={"value": gate.max_eer_increase})))],
    )
    metrics = tfma.MetricsSpec(
        metrics=[
            accuracy,
            signer_bound,
            eer,
            eer_increase,
            tfma.MetricConfig(class_name="ExampleCount"),
        ]
    )
    return tfma.EvalConfig(
        model_specs=[model_spec],
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[LABEL_FEATURE])],
        metrics_specs=[metrics],
    )
