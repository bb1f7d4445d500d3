"""The gate's verification bounds: TFX's real Evaluator computing EER, FAR and FRR inside TFMA, and blessing or not.

As in test_signer_gate.py, the Evaluator runs TFX's executor (TFMA on Beam's
DirectRunner) with the gate's EvalConfig over real SavedModels and real
tf.Examples. The models stand in for the exported ones with the same signature
names (serving.contract): classify answers the signer named in `image_raw`, and
`transformed_features` returns the verification scores written into the example
under the model's own feature, so each test decides every trial's score and the
expected rates are worked out by hand below. A model built without scores has no
`transformed_features` signature, as an export without verification has none.

The trials: signers A, B, C with 4 genuine eval images each and 2 skilled
forgeries claiming A. An image scores GOOD (3.0) for its own signer and RANDOM
(0.0) for the two others; a skilled forgery scores SKILLED (0.5) for A. The
"fair" model scores 2 of A's 4 images at BAD (-1.0) instead:

    genuine trials 12 (2 at -1.0), random forgeries 24 (all 0.0), skilled 2 (0.5)
    pooled EER: FRR = 2/12 wherever the threshold lies in (-1, 3); FAR = 2/26 in
    (0, 0.5), the closest the two come, so EER = (2/12 + 2/26) / 2 = 0.1218;
    at the threshold 1.5: FRR 2/12, FAR 0.
    signer A: genuine [3, 3, -1, -1], forgeries 8 random at 0.0 + 2 skilled at
    0.5: EER = (2/4 + 2/10) / 2 = 0.35 (threshold in (0, 0.5)); FRR 0.5.
    random forgeries alone: FAR 0 in (0, 3), FRR 2/12: EER = 2/12 / 2 = 0.0833.
    skilled alone: FAR 0 in (0.5, 3): EER = 2/12 / 2 = 0.0833.

The "good" model scores every genuine image GOOD: EER 0.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tfx.components.evaluator.executor import Executor as EvaluatorExecutor
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import proto_utils

from components.trainer.verification import equal_error_rate as trainer_equal_error_rate
from pipeline.definition import verification_metrics as vm
from pipeline.definition.configs import GateConfig
from pipeline.definition.evaluation import ACCURACY, EER, EER_INCREASE, EVALUATOR_MODULE, eval_config
from pipeline.training_server.run_summary import RunSummary, read_outputs
from serving.contract import (
    CLASSES_OUTPUT,
    CLASSIFY_INPUT,
    CLASSIFY_SIGNATURE,
    GENUINE_FEATURE,
    IMAGE_FEATURE,
    LABEL_FEATURE,
    PROBABILITIES_OUTPUT,
    SCORES_OUTPUT,
    VERIFICATION_SCORES_OUTPUT,
    VERIFICATION_SCORES_SIGNATURE,
    VERIFICATION_SIGNERS_OUTPUT,
    VERIFICATION_THRESHOLD_OUTPUT,
)

SIGNERS = ("signer_a", "signer_b", "signer_c")
A = SIGNERS[0]
GOOD, RANDOM, SKILLED, BAD = 3.0, 0.0, 0.5, -1.0
THRESHOLD = 1.5
FAIR_EER = (2 / 12 + 2 / 26) / 2


class _StandIn(tf.Module):
    """classify: the signer named by `image_raw` gets 0.05 + `hit` before normalising (each model its own, as
    two trained models never answer alike)."""

    def __init__(self, hit: float = 0.85):
        super().__init__()
        self.labels = tf.constant(list(SIGNERS))
        self._hit = hit

    def _scores(self, inputs):
        named = tf.io.parse_example(inputs, {IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string)})[IMAGE_FEATURE]
        hit = tf.cast(tf.equal(named[:, None], self.labels[None, :]), tf.float32)
        scores = 0.05 + self._hit * hit
        return scores / tf.reduce_sum(scores, axis=1, keepdims=True)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUT)])
    def classify(self, inputs):
        return {CLASSES_OUTPUT: tf.tile(self.labels[None, :], [tf.shape(inputs)[0], 1]),
                SCORES_OUTPUT: self._scores(inputs)}


class _VerifyingStandIn(_StandIn):
    """And transformed_features: the scores written in the example under `score_feature`, for SIGNERS, at
    THRESHOLD, with classify's scores and (`classes`, as the Trainer exports it) its classes."""

    def __init__(self, score_feature: str, classes: bool = True):
        super().__init__()
        self._score_feature = score_feature
        self._classes = classes

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUT)])
    def transformed_features(self, inputs):
        scores = tf.io.parse_example(
            inputs, {self._score_feature: tf.io.FixedLenFeature([len(SIGNERS)], tf.float32)})[self._score_feature]
        count = tf.shape(inputs)[0]
        outputs = {VERIFICATION_SCORES_OUTPUT: scores,
                   VERIFICATION_SIGNERS_OUTPUT: tf.tile(self.labels[None, :], [count, 1]),
                   VERIFICATION_THRESHOLD_OUTPUT: tf.fill([count], tf.constant(THRESHOLD)),
                   PROBABILITIES_OUTPUT: self._scores(inputs)}
        if self._classes:
            outputs[CLASSES_OUTPUT] = tf.tile(self.labels[None, :], [count, 1])
        return outputs


class _ClassifyFails(_VerifyingStandIn):
    """classify fails every call (INVALID_ARGUMENT); transformed_features answers: an Evaluator that calls
    classify fails."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUT)])
    def classify(self, inputs):
        called = tf.debugging.Assert(tf.constant(False), ["classify was called"])
        with tf.control_dependencies([called]):
            return {CLASSES_OUTPUT: tf.tile(self.labels[None, :], [tf.shape(inputs)[0], 1]),
                    SCORES_OUTPUT: tf.identity(self._scores(inputs))}


def _model(root: Path, module: tf.Module) -> standard_artifacts.Model:
    artifact = standard_artifacts.Model()
    artifact.uri = str(root)
    signatures = {CLASSIFY_SIGNATURE: module.classify.get_concrete_function()}
    if isinstance(module, _VerifyingStandIn):
        signatures[VERIFICATION_SCORES_SIGNATURE] = module.transformed_features.get_concrete_function()
    tf.saved_model.save(module, str(root / "Format-Serving"), signatures=signatures)
    return artifact


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, standard_artifacts.Model]:
    modules = {
        "good": _VerifyingStandIn("scores_good"),
        "fair": _VerifyingStandIn("scores_fair"),
        "none": _StandIn(hit=0.8),
        # A serving version whose transformed_features has no classes.
        "fair_without_classes": _VerifyingStandIn("scores_fair", classes=False),
        "classify_fails": _ClassifyFails("scores_good"),
    }
    return {name: _model(tmp_path_factory.mktemp(name), module) for name, module in modules.items()}


def _genuine_score(model: str, signer: str, image: int) -> float:
    return BAD if model == "fair" and signer == A and image < 2 else GOOD


def _examples(root: Path) -> standard_artifacts.Examples:
    """Every signer's 4 genuine images, then 2 skilled forgeries of A; each with both models' scores."""
    rows = [(signer, image, 1) for signer in SIGNERS for image in range(4)] + [(A, 0, 0), (A, 1, 0)]
    examples = standard_artifacts.Examples()
    examples.uri = str(root / "examples")
    examples.split_names = artifact_utils.encode_split_names(["eval"])
    split = root / "examples" / "Split-eval"
    split.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(split / "data.tfrecord")) as writer:
        for claimed, image, genuine in rows:
            feature = {
                IMAGE_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[claimed.encode()])),
                LABEL_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[claimed.encode()])),
                GENUINE_FEATURE: tf.train.Feature(int64_list=tf.train.Int64List(value=[genuine])),
            }
            for model in ("good", "fair"):
                scores = [(_genuine_score(model, s, image) if genuine else SKILLED) if s == claimed else RANDOM
                          for s in SIGNERS]
                feature[f"scores_{model}"] = tf.train.Feature(float_list=tf.train.FloatList(value=scores))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return examples


class Evaluation:
    def __init__(self, blessing, evaluation):
        import tensorflow_model_analysis as tfma

        self.blessed = blessing.get_int_custom_property("blessed") == 1
        result = tfma.load_validation_result(evaluation.uri)
        self.failures = [("change " if f.metric_key.is_diff else "") + f.metric_key.name
                         for per_slice in result.metric_validations_per_slice for f in per_slice.failures]
        [overall] = [s for s in tfma.load_metrics(evaluation.uri) if not s.slice_key.single_slice_keys]
        self.values = {(kv.key.model_name, kv.key.name): kv.value.double_value.value
                       for kv in overall.metric_keys_and_values if not kv.key.is_diff}
        self.summary = RunSummary(run_id="test", outputs={
            "Evaluator.blessing": [blessing.mlmd_artifact], "Evaluator.evaluation": [evaluation.mlmd_artifact]})
        read_outputs(self.summary)

    def of(self, model: str = "") -> dict[str, float]:
        return {name: value for (owner, name), value in self.values.items() if owner == model}


def _evaluate(root: Path, model, gate: GateConfig = GateConfig(), baseline=None) -> Evaluation:
    evaluation, blessing = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
    evaluation.uri, blessing.uri = str(root / "evaluation"), str(root / "blessing")
    Path(blessing.uri).mkdir(parents=True)
    inputs = {"model": [model]} | ({"baseline_model": [baseline]} if baseline else {})
    EvaluatorExecutor().Do(
        {"examples": [_examples(root)], **inputs}, {"evaluation": [evaluation], "blessing": [blessing]},
        {"eval_config": proto_utils.proto_to_json(eval_config(gate)), "example_splits": json.dumps(["eval"]),
         "module_path": EVALUATOR_MODULE})
    return Evaluation(blessing, evaluation)


def test_the_evaluators_eer_is_the_trainers():
    """The definition layer may not import the Trainer, so the EER is written twice: they must agree."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        genuine, impostor = rng.normal(1, 1, rng.integers(1, 30)).round(1), rng.normal(0, 1, rng.integers(1, 60))
        assert vm.equal_error_rate(genuine, impostor) == trainer_equal_error_rate(genuine, impostor)[0]


def test_an_eer_over_the_bound_holds_the_model_back_on_a_first_run(tmp_path, models):
    evaluation = _evaluate(tmp_path, models["fair"], GateConfig(max_eer=0.1))
    assert not evaluation.blessed
    assert evaluation.failures == [EER]
    assert evaluation.of()[EER] == pytest.approx(FAIR_EER)
    assert evaluation.of()[ACCURACY] == 1.0  # identification alone would have passed
    [reason] = evaluation.summary.not_blessed_reasons
    assert reason == f"{EER} on overall: {FAIR_EER:.4f}, threshold <= 0.1"


def test_a_candidate_worse_than_the_serving_version_by_more_than_the_margin_is_held_back(tmp_path, models):
    evaluation = _evaluate(tmp_path, models["fair"], baseline=models["good"])
    assert not evaluation.blessed
    assert evaluation.failures == [EER_INCREASE]  # its EER alone (0.12) is under max_eer (0.2)
    assert evaluation.of("candidate")[EER_INCREASE] == pytest.approx(FAIR_EER)
    assert evaluation.of("baseline")[EER] == 0.0 and evaluation.of("baseline")[vm.TRIALS[vm.GENUINE]] == 12


def test_a_candidate_without_verification_is_not_held_back_for_it(tmp_path, models):
    evaluation = _evaluate(tmp_path, models["none"], baseline=models["fair"])
    assert evaluation.blessed, evaluation.failures
    candidate = evaluation.of("candidate")
    assert (candidate[EER], candidate[EER_INCREASE], candidate[vm.TRIALS[vm.GENUINE]]) == (0.0, 0.0, 0.0)
    assert vm.FRR not in candidate
    assert evaluation.of("baseline")[EER] == pytest.approx(FAIR_EER)
    assert [line for line in evaluation.summary.lines() if line.startswith("verification")] == [
        "verification: not measured (no verify signature, or no genuine eval image of an enrolled signer)"]


def test_a_first_verifying_candidate_is_measured_against_a_serving_version_without_verification(tmp_path, models):
    """Only the candidate has the signature, so TFMA stores its outputs unnamed: they must still be the
    candidate's, every rate as worked out in the module docstring."""
    evaluation = _evaluate(tmp_path, models["fair"], baseline=models["none"])
    assert evaluation.blessed, evaluation.failures
    candidate = evaluation.of("candidate")
    expected = {
        EER: FAIR_EER, EER_INCREASE: 0.0, vm.THRESHOLD: THRESHOLD, vm.FRR: 2 / 12, vm.FAR: 0.0,
        vm.EER_RANDOM: 2 / 12 / 2, vm.FAR_RANDOM: 0.0, vm.EER_SKILLED: 2 / 12 / 2, vm.FAR_SKILLED: 0.0,
        vm.TRIALS[vm.GENUINE]: 12, vm.TRIALS[vm.RANDOM]: 24, vm.TRIALS[vm.SKILLED]: 2,
        vm.signer_key_name(EER, A): 0.35, vm.signer_key_name(vm.FRR, A): 0.5,
        vm.signer_key_name(vm.FAR_RANDOM, A): 0.0, vm.signer_key_name(vm.FAR_SKILLED, A): 0.0,
        vm.signer_key_name(EER, SIGNERS[1]): 0.0, vm.signer_key_name(vm.FRR, SIGNERS[1]): 0.0,
    }
    assert {name: candidate.get(name) for name in expected} == pytest.approx(expected)
    assert vm.signer_key_name(vm.FAR_SKILLED, SIGNERS[1]) not in candidate  # no forgery claims B
    assert vm.TRIALS[vm.GENUINE] not in evaluation.of("baseline") or evaluation.of("baseline")[
        vm.TRIALS[vm.GENUINE]] == 0

    summary = evaluation.summary
    assert summary.verification[EER] == pytest.approx(FAIR_EER)
    assert not [name for name in summary.metrics if name.startswith("verification")]
    assert (f"verification: EER {FAIR_EER:.4f}; at threshold 1.5000 FRR {2 / 12:.4f}, FAR 0.0000 "
            f"(random 0.0000, skilled 0.0000); trials: 12 genuine, 24 random, 2 skilled") in summary.lines()
    assert (f"worst verifiers: {A} EER 0.35 (FRR 0.50, FAR random 0.00, FAR skilled 0.00), "
            f"{SIGNERS[1]} EER 0.00 (FRR 0.00, FAR random 0.00), "
            f"{SIGNERS[2]} EER 0.00 (FRR 0.00, FAR random 0.00)") in summary.lines()
    assert summary.to_json()["worst_verifiers"][0] == {"signer": A, "eer": pytest.approx(0.35), "frr": 0.5,
                                                       "far_random": 0.0, "far_skilled": 0.0}


def test_a_model_whose_transformed_features_has_classes_is_called_through_it_alone(tmp_path, models):
    """Its classify fails every call; the Evaluator's figures are transformed_features' answers."""
    evaluation = _evaluate(tmp_path, models["classify_fails"])
    assert evaluation.of()[ACCURACY] == 1.0
    assert evaluation.of()[EER] == 0.0 and evaluation.of()[vm.TRIALS[vm.GENUINE]] == 12


def test_a_version_whose_transformed_features_has_no_classes_is_called_through_both_signatures(tmp_path, models):
    """It is called through classify and transformed_features, as TFMA's own extractors call it, beside a
    candidate called once: both models' figures are as worked out in the module docstring."""
    evaluation = _evaluate(tmp_path, models["good"], baseline=models["fair_without_classes"])
    baseline, candidate = evaluation.of("baseline"), evaluation.of("candidate")
    assert {name: baseline[name] for name in (EER, vm.FRR, ACCURACY)} == pytest.approx(
        {EER: FAIR_EER, vm.FRR: 2 / 12, ACCURACY: 1.0})
    assert [baseline[vm.TRIALS[kind]] for kind in (vm.GENUINE, vm.RANDOM, vm.SKILLED)] == [12, 24, 2]
    assert (candidate[EER], candidate[EER_INCREASE]) == (0.0, pytest.approx(-FAIR_EER))
