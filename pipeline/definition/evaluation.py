"""The quality gate: a TFMA EvalConfig built from the pipeline's thresholds.

The Evaluator feeds serialized eval tf.Examples to the model's `classify`
signature, whose outputs are TF Serving's `classes` (the label vocabulary) and
`scores`. TFMA maps the string `label` feature onto `classes` itself, so a
baseline and a candidate with different signer sets are compared fairly.

Layer: definition. May import TFMA, serving.contract and definition.configs.
"""
from __future__ import annotations

import tensorflow_model_analysis as tfma

from pipeline.definition.configs import GateConfig
from serving.contract import CLASSIFY_SIGNATURE, LABEL_FEATURE, SCORES_OUTPUT

# The metric every threshold is set on (TFMA computes it from labels and scores).
ACCURACY = "sparse_categorical_accuracy"


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
    metrics = tfma.MetricsSpec(
        metrics=[
            tfma.MetricConfig(class_name="SparseCategoricalAccuracy", per_slice_thresholds=[overall, per_signer]),
            tfma.MetricConfig(class_name="ExampleCount"),
        ]
    )
    return tfma.EvalConfig(
        model_specs=[model_spec],
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[LABEL_FEATURE])],
        metrics_specs=[metrics],
    )
