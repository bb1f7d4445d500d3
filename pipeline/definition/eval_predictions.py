"""The Evaluator's model calls: one pass of the network per model and batch of eval examples.

TFMA's default extractors call two signatures of a model that verifies: `classify`
for the predictions and `transformed_features` (contract.VERIFICATION_SCORES_SIGNATURE)
for the verification scores, and each runs the whole backbone over the batch. A
model whose transformed_features also returns `classes` answers both from one call:
its `probabilities` are classify's `scores` (the same softmax) and its `classes`
classify's. The Evaluator imports this module by path (Evaluator(module_path=...))
and TFX's executor calls `custom_extractors`.

Per model, decided once when the models are loaded:
- transformed_features with `classes`: that call alone gives the predictions
  ({classes, scores}) and the transformed features;
- transformed_features without `classes` (a serving version exported without
  them): classify, then transformed_features, as TFMA calls them;
- no transformed_features (no verification): classify alone.

The predictions and transformed features are stored as TFMA's own extractors store
them (model_util.ModelSignaturesDoFn): keyed by model name, or unnamed when a
single model wrote the key, and an empty dict of transformed features when no
model has any; verification_metrics relies on that layout. They are written after
the label and example-weight extractors (TFMA writes transformed features before
them): no signflow output is named like a feature, so no label is read from them.

NOTE: TFX's executor finds `custom_extractors` with udf_utils.try_get_fn, which
returns None on an AttributeError or ValueError while importing this module, and
then evaluates with TFMA's defaults (the same figures, two passes per model):
tests/pipeline/test_runners.py imports it the way the Evaluator does.

Layer: definition. May import TFMA, Apache Beam, NumPy, TensorFlow and serving.contract (the Evaluator
imports this module by path wherever it runs).
"""
from __future__ import annotations

from collections.abc import Mapping

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis import constants as tfma_constants
from tensorflow_model_analysis.utils import model_util

from serving.contract import (
    CLASSES_OUTPUT,
    CLASSIFY_SIGNATURE,
    PROBABILITIES_OUTPUT,
    SCORES_OUTPUT,
    VERIFICATION_SCORES_SIGNATURE,
)

STAGE_NAME = "SignflowPredictions"
# What each model is called through (see the module docstring).
ONE_CALL, TWO_CALLS, CLASSIFY_ONLY = "one call", "two calls", "classify only"


def custom_extractors(eval_shared_model, eval_config: tfma.EvalConfig, tensor_adapter_config=None):
    """TFX's Evaluator hook: TFMA's default extractors with signflow's predictions in place of TFMA's
    predictions and transformed-features extractors."""
    return tfma.default_extractors(
        eval_shared_model=eval_shared_model, eval_config=eval_config,
        tensor_adapter_config=tensor_adapter_config,
        custom_predict_extractor=predictions_extractor(eval_config, eval_shared_model))


def predictions_extractor(eval_config: tfma.EvalConfig, eval_shared_model) -> tfma.extractors.Extractor:
    """Writes tfma.PREDICTIONS_KEY and tfma.TRANSFORMED_FEATURES_KEY for every model, calling the models'
    signatures by their contract names (evaluation.eval_config sets classify on every model spec)."""
    models = model_util.verify_and_update_eval_shared_models(eval_shared_model)
    if not models:
        raise ValueError("the Evaluator's predictions need at least one model")
    others = sorted({spec.signature_name for spec in eval_config.model_specs} - {CLASSIFY_SIGNATURE})
    if others:
        raise ValueError(f"the Evaluator's predictions call {CLASSIFY_SIGNATURE}; the EvalConfig names {others}")
    return tfma.extractors.Extractor(
        stage_name=STAGE_NAME,
        ptransform=beam.ParDo(_PredictionsDoFn({model.model_name: model.model_loader for model in models})))


def call_plan(signatures: Mapping[str, object]) -> str:
    """How a model with these signatures is called: ONE_CALL, TWO_CALLS or CLASSIFY_ONLY."""
    features = signatures.get(VERIFICATION_SCORES_SIGNATURE)
    if features is None:
        return CLASSIFY_ONLY
    return ONE_CALL if CLASSES_OUTPUT in features.structured_outputs else TWO_CALLS


@beam.typehints.with_input_types(tfma.Extracts)
@beam.typehints.with_output_types(tfma.Extracts)
class _PredictionsDoFn(model_util.BatchReducibleBatchedDoFnWithModels):
    """Writes tfma.PREDICTIONS_KEY (classify's outputs) and, for models that verify,
    tfma.TRANSFORMED_FEATURES_KEY (transformed_features' outputs) into each batch of extracts."""

    def setup(self):
        super().setup()
        self._plans = {name: call_plan(model.signatures) for name, model in self._loaded_models.items()}

    def _batch_reducible_process(self, batched_extract: tfma.Extracts) -> list[tfma.Extracts]:
        # dtype=object: a fixed-width bytes array would drop the serialized examples' trailing NUL bytes.
        examples = np.asarray(batched_extract[tfma_constants.INPUT_KEY], dtype=object).reshape(-1)
        inputs = tf.constant(examples, dtype=tf.string)
        predictions, transformed = {}, {}
        for name, model in self._loaded_models.items():
            plan = self._plans[name]
            if plan == ONE_CALL:
                outputs = _call(model, VERIFICATION_SCORES_SIGNATURE, inputs)
                predictions[name] = {CLASSES_OUTPUT: outputs[CLASSES_OUTPUT],
                                     SCORES_OUTPUT: outputs[PROBABILITIES_OUTPUT]}
                transformed[name] = outputs
            else:
                predictions[name] = _call(model, CLASSIFY_SIGNATURE, inputs)
                if plan == TWO_CALLS:
                    transformed[name] = _call(model, VERIFICATION_SCORES_SIGNATURE, inputs)
        result = dict(batched_extract)
        result[tfma_constants.PREDICTIONS_KEY] = _tfma_layout(predictions)
        result[tfma_constants.TRANSFORMED_FEATURES_KEY] = _tfma_layout(transformed)
        return [result]


def _call(model, signature: str, inputs: tf.Tensor) -> dict[str, np.ndarray]:
    function = model.signatures.get(signature)
    if function is None:
        raise ValueError(f"the model has no {signature} signature (it has {sorted(model.signatures)})")
    [input_name] = function.structured_input_signature[1]
    return {key: value.numpy() for key, value in function(**{input_name: inputs}).items()}


def _tfma_layout(per_model: dict[str, dict]) -> dict:
    """As TFMA stores a key: per model name, or one model's outputs unnamed when only one wrote it."""
    return next(iter(per_model.values())) if len(per_model) == 1 else dict(per_model)
