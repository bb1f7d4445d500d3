"""The gate's metrics: the Wilson bound's arithmetic, and TFX's real Evaluator blessing or holding back a model.

The Evaluator tests run TFX's Evaluator executor (TFMA on Beam's DirectRunner)
with the gate's EvalConfig over a real SavedModel and real tf.Examples, and read
the blessing it writes: the one the Pusher obeys. Some runs have a baseline (the
version serving now), and some give a model eval examples of a signer it does not
know, as on the first run after a signer is added. The model is a stand-in for
the exported model's `classify` signature (same names, from serving.contract)
that answers the signer named in the example's `image_raw` bytes, so each test
decides exactly which answers are right; the trained model's image path plays
no part in the gate.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tfx.components.evaluator.executor import Executor as EvaluatorExecutor
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import proto_utils

from pipeline.definition.configs import GateConfig
from pipeline.definition.evaluation import ACCURACY, EVALUATOR_MODULE, SIGNER_BOUND, SIGNER_CORRECT, eval_config
from pipeline.definition.signer_metrics import SignerAccuracyBound, TopOneAccuracy, wilson_upper_bound
from pipeline.training_server.run_summary import RunSummary, read_outputs
from serving.contract import (
    CLASSES_OUTPUT,
    CLASSIFY_INPUT,
    CLASSIFY_SIGNATURE,
    GENUINE_FEATURE,
    IMAGE_FEATURE,
    LABEL_FEATURE,
    SCORES_OUTPUT,
)

SIGNERS = ("signer_00", "signer_01", "signer_02")
WEAK = SIGNERS[0]
# The signer added last: old_model does not know it.
NEW = SIGNERS[-1]


# --- the bound's arithmetic ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "correct, total, z, expected",
    [
        (0, 10, 1.96, 0.2775),  # the textbook 95% Wilson interval of 0/10: [0, 0.2775]
        (5, 10, 1.96, 0.7634),  # ... of 5/10: [0.2366, 0.7634]
        (0, 8, 1.96, 0.3244),  # z^2 / (n + z^2) when nothing is right
        (1, 2, 1.96, 0.9055),
        (0, 2, 1.96, 0.6576),  # still above the default floor of 0.6: a 2-image slice can never fail it
        (0, 3, 1.96, 0.5615),  # the smallest slice that can (hence min_signer_examples = 3)
        (1, 5, 1.96, 0.6245),
        (1, 6, 1.96, 0.5635),
        (10, 10, 1.96, 1.0),
        (3, 4, 0.0, 0.75),  # z = 0: the plain accuracy
    ],
)
def test_wilson_upper_bound_known_values(correct, total, z, expected):
    assert wilson_upper_bound(correct, total, z) == pytest.approx(expected, abs=5e-5)


def test_wilson_upper_bound_edges():
    assert wilson_upper_bound(0, 0) == 1.0  # no evidence
    # More evidence at the same accuracy narrows the interval from above.
    bounds = [wilson_upper_bound(n // 2, n) for n in (2, 4, 8, 16, 64)]
    assert bounds == sorted(bounds, reverse=True) and all(b > 0.5 for b in bounds)
    with pytest.raises(ValueError):
        wilson_upper_bound(3, 2)


# --- the metrics' counting, through TFMA's own label mapping -----------------------------------------------------

def _metric_output(metric, answers_and_labels, classes=SIGNERS):
    """Run `metric`'s combiner over (answer, label) pairs the way TFMA feeds it one slice, one example at a time."""
    # As TFX's Evaluator prepares the config for a run with a serving version: models named candidate and baseline.
    config = tfma.utils.update_eval_config_with_defaults(eval_config(GateConfig()), has_baseline=True)
    candidate = config.model_specs[0].name
    [computation] = metric.computations(eval_config=config, model_names=[candidate])
    combiner = computation.combiner
    accumulator = combiner.create_accumulator()
    for answer, label in answers_and_labels:
        scores = np.array([0.9 if s == answer else 0.05 for s in classes], dtype=np.float32)
        element = tfma.metrics.StandardMetricInputs(
            labels={candidate: np.array([label.encode()])},
            predictions={candidate: {CLASSES_OUTPUT: np.array([s.encode() for s in classes]), SCORES_OUTPUT: scores}},
            example_weights={candidate: np.array([1.0])},
        )
        accumulator = combiner.add_input(accumulator, element)
    output = combiner.extract_output(combiner.merge_accumulators([accumulator]))
    return {key.name: value for key, value in output.items()}


def _signer_bound_output(answers_and_labels, z=1.96, min_examples=1):
    return _metric_output(SignerAccuracyBound(z=z, min_examples=min_examples), answers_and_labels)


def test_string_labels_are_matched_to_the_classes_output():
    pairs = [(WEAK, WEAK), (SIGNERS[1], WEAK), (SIGNERS[1], WEAK)]
    assert _signer_bound_output(pairs) == {SIGNER_BOUND: pytest.approx(wilson_upper_bound(1, 3)), SIGNER_CORRECT: 1}
    assert _metric_output(TopOneAccuracy(), pairs) == {ACCURACY: pytest.approx(1 / 3)}


def test_a_label_the_model_does_not_know_counts_as_wrong():
    output = _signer_bound_output([(WEAK, "signer_new")] * 4)
    assert output[SIGNER_CORRECT] == 0
    assert output[SIGNER_BOUND] == pytest.approx(wilson_upper_bound(0, 4))
    # Known and unknown labels in one slice: what TFMA's SparseCategoricalAccuracy cannot stack.
    mixed = [(WEAK, WEAK), (SIGNERS[1], SIGNERS[1]), (WEAK, "signer_new"), (SIGNERS[2], SIGNERS[1])]
    assert _metric_output(TopOneAccuracy(), mixed) == {ACCURACY: 0.5}


def test_a_one_class_model_is_right_on_its_class_and_wrong_on_any_other():
    """With one class, a class id and a one-hot row are both 1 long: the label's dtype tells them apart."""
    pairs = [(WEAK, WEAK), (WEAK, WEAK), (WEAK, SIGNERS[1])]
    assert _metric_output(TopOneAccuracy(), pairs, classes=[WEAK]) == {ACCURACY: pytest.approx(2 / 3)}


def test_an_empty_slice_has_no_accuracy_to_pass_a_bound_with():
    assert _metric_output(TopOneAccuracy(), []) == {ACCURACY: 0.0}


def test_a_slice_under_min_examples_is_not_judged():
    assert _signer_bound_output([(SIGNERS[1], WEAK)] * 2, min_examples=3)[SIGNER_BOUND] == 1.0
    judged = _signer_bound_output([(SIGNERS[1], WEAK)] * 3, min_examples=3)
    assert judged[SIGNER_BOUND] == pytest.approx(0.5615, abs=5e-5)


# --- TFX's Evaluator with the gate's EvalConfig --------------------------------------------------------------------

class _NamedAnswerModel(tf.Module):
    """classify(inputs: serialized tf.Examples) -> classes, scores: the signer named by `image_raw` gets 0.9."""

    def __init__(self, labels):
        super().__init__()
        self.labels = tf.constant(list(labels))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUT)])
    def classify(self, inputs):
        named = tf.io.parse_example(inputs, {IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string)})[IMAGE_FEATURE]
        hit = tf.cast(tf.equal(named[:, None], self.labels[None, :]), tf.float32)
        scores = 0.05 + 0.85 * hit
        classes = tf.tile(self.labels[None, :], [tf.shape(inputs)[0], 1])
        return {CLASSES_OUTPUT: classes, SCORES_OUTPUT: scores / tf.reduce_sum(scores, axis=1, keepdims=True)}


def _saved_model(root: Path, labels) -> standard_artifacts.Model:
    artifact = standard_artifacts.Model()
    artifact.uri = str(root)
    module = _NamedAnswerModel(labels)
    tf.saved_model.save(module, str(Path(artifact.uri) / "Format-Serving"),
                        signatures={CLASSIFY_SIGNATURE: module.classify.get_concrete_function()})
    return artifact


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> standard_artifacts.Model:
    return _saved_model(tmp_path_factory.mktemp("model"), SIGNERS)


@pytest.fixture(scope="module")
def old_model(tmp_path_factory) -> standard_artifacts.Model:
    """A model from before NEW was added: it knows every signer but NEW."""
    return _saved_model(tmp_path_factory.mktemp("old_model"), SIGNERS[:-1])


def _examples(root: Path, answers_and_labels) -> standard_artifacts.Examples:
    examples = standard_artifacts.Examples()
    examples.uri = str(root / "examples")
    examples.split_names = artifact_utils.encode_split_names(["eval"])
    split = root / "examples" / "Split-eval"
    split.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(split / "data.tfrecord")) as writer:
        for answer, label, *genuine in answers_and_labels:
            feature = {
                IMAGE_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[answer.encode()])),
                LABEL_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[label.encode()])),
            }
            if genuine:  # (answer, label, genuine): with the feature ingestion writes since forgeries exist
                feature[GENUINE_FEATURE] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(genuine[0])]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return examples


def _slice(weak_right: int, weak_wrong: int, others: int):
    """WEAK gets `weak_right` right and `weak_wrong` wrong; every other signer gets all its `others` right."""
    pairs = [(WEAK, WEAK)] * weak_right + [(SIGNERS[1], WEAK)] * weak_wrong
    return pairs + [(signer, signer) for signer in SIGNERS[1:] for _ in range(others)]


class Evaluation:
    def __init__(self, blessing: standard_artifacts.ModelBlessing, evaluation: standard_artifacts.ModelEvaluation):
        self.blessed = blessing.get_int_custom_property("blessed") == 1
        self.uri = evaluation.uri
        self.summary = RunSummary(run_id="test", outputs={
            "Evaluator.blessing": [blessing.mlmd_artifact], "Evaluator.evaluation": [evaluation.mlmd_artifact]})
        read_outputs(self.summary)

    def failures(self) -> list[tuple[str, str]]:
        """(slice, metric) of every failed threshold, from TFMA's ValidationResult ("change <metric>" vs serving)."""
        result = tfma.load_validation_result(self.uri)
        return [(",".join(f"{k.column}={k.bytes_value.decode()}" for k in per_slice.slice_key.single_slice_keys)
                 or "overall", ("change " if failure.metric_key.is_diff else "") + failure.metric_key.name)
                for per_slice in result.metric_validations_per_slice for failure in per_slice.failures]

    def per_signer(self, model: str = "") -> dict[str, dict[str, float]]:
        """Signer -> metric name -> value; `model` is "candidate" or "baseline" when there is a baseline."""
        return {sliced.slice_key.single_slice_keys[0].bytes_value.decode(): self._values(sliced, model)
                for sliced in tfma.load_metrics(self.uri) if sliced.slice_key.single_slice_keys}

    def overall(self, model: str = "", diff: bool = False) -> dict[str, float]:
        """The overall slice's metrics of `model`, or its change vs the baseline when `diff`."""
        [sliced] = [s for s in tfma.load_metrics(self.uri) if not s.slice_key.single_slice_keys]
        return self._values(sliced, model, diff)

    @staticmethod
    def _values(sliced, model: str, diff: bool = False) -> dict[str, float]:
        return {kv.key.name: kv.value.double_value.value for kv in sliced.metric_keys_and_values
                if kv.key.model_name == model and kv.key.is_diff == diff}


def _evaluate(root: Path, model: standard_artifacts.Model, answers_and_labels, gate: GateConfig,
              baseline: standard_artifacts.Model | None = None, config: tfma.EvalConfig | None = None) -> Evaluation:
    """What the pipeline's Evaluator does: on a first run (no `baseline`), or against the version serving now.

    `config` replaces the gate's EvalConfig (eval_config(gate)).
    """
    evaluation, blessing = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
    evaluation.uri, blessing.uri = str(root / "evaluation"), str(root / "blessing")
    Path(blessing.uri).mkdir(parents=True)
    models = {"model": [model]} | ({"baseline_model": [baseline]} if baseline else {})
    EvaluatorExecutor().Do(
        {"examples": [_examples(root, answers_and_labels)], **models},
        {"evaluation": [evaluation], "blessing": [blessing]},
        {"eval_config": proto_utils.proto_to_json(config or eval_config(gate)), "example_splits": json.dumps(["eval"]),
         "module_path": EVALUATOR_MODULE},
    )
    return Evaluation(blessing, evaluation)


@pytest.fixture(scope="module")
def one_of_two(tmp_path_factory, model) -> Evaluation:
    """The issue's case: 17/18 overall, the weak signer's slice has 2 images and 1 is right."""
    return _evaluate(tmp_path_factory.mktemp("one_of_two"), model, _slice(1, 1, others=8), GateConfig())


@pytest.fixture(scope="module")
def none_of_six(tmp_path_factory, model) -> Evaluation:
    """A model that really fails a signer: 0/6 on it, 60/66 = 0.91 overall (above min_accuracy)."""
    return _evaluate(tmp_path_factory.mktemp("none_of_six"), model, _slice(0, 6, others=30), GateConfig())


def test_a_signer_with_one_of_two_right_does_not_hold_the_model_back(one_of_two):
    assert one_of_two.blessed, one_of_two.failures()
    weak = one_of_two.per_signer()[WEAK]
    assert (weak[ACCURACY], weak["example_count"], weak[SIGNER_CORRECT]) == (0.5, 2, 1)
    assert weak[SIGNER_BOUND] == 1.0  # under min_signer_examples: not judged


@pytest.mark.parametrize(
    "gate, blessed",
    [
        # The bound alone lets it through: 1/2 has an upper bound of 0.91.
        (GateConfig(min_signer_examples=1), True),
        # The old rule (the floor on plain accuracy, every slice judged) holds it back.
        (GateConfig(min_signer_examples=1, signer_confidence_z=0.0), False),
    ],
)
def test_the_bound_not_only_the_minimum_size_lets_one_of_two_through(tmp_path, model, gate, blessed):
    evaluation = _evaluate(tmp_path, model, _slice(1, 1, others=8), gate)
    assert evaluation.blessed is blessed
    assert evaluation.failures() == ([] if blessed else [(f"{LABEL_FEATURE}={WEAK}", SIGNER_BOUND)])


def test_a_signer_the_model_gets_wrong_six_times_of_six_holds_it_back(none_of_six):
    assert not none_of_six.blessed
    # Only the weak signer fails; the overall accuracy (0.91) passes.
    assert none_of_six.failures() == [(f"{LABEL_FEATURE}={WEAK}", SIGNER_BOUND)]
    assert none_of_six.per_signer()[WEAK][SIGNER_BOUND] == pytest.approx(wilson_upper_bound(0, 6))
    [reason] = none_of_six.summary.not_blessed_reasons
    assert reason == f"{SIGNER_BOUND} on {LABEL_FEATURE}={WEAK}: 0.3903 (0/6 right), threshold >= 0.6"


def test_the_bound_counts_the_answers_the_accuracy_counts(one_of_two, none_of_six):
    for evaluation in (one_of_two, none_of_six):
        for signer, metrics in evaluation.per_signer().items():
            assert metrics[SIGNER_CORRECT] == pytest.approx(metrics[ACCURACY] * metrics["example_count"]), signer


def test_the_accuracy_is_what_tfma_sparse_categorical_accuracy_reports_when_every_label_is_known(tmp_path, model):
    """It keeps TFMA's metric's name, so it must keep its value wherever TFMA's metric works."""
    config = eval_config(GateConfig())
    config.metrics_specs[0].metrics.add(class_name="SparseCategoricalAccuracy", config=json.dumps({"name": "tfma"}))
    evaluation = _evaluate(tmp_path, model, _slice(1, 2, others=4), GateConfig(), config=config)
    for signer, metrics in {"overall": evaluation.overall(), **evaluation.per_signer()}.items():
        assert metrics[ACCURACY] == pytest.approx(metrics["tfma"]), signer
    assert evaluation.overall()[ACCURACY] == pytest.approx(9 / 11)


def test_the_run_summary_names_the_weakest_and_the_unjudged_signers(one_of_two, none_of_six):
    lines = one_of_two.summary.lines()
    assert "blessed: yes" in lines
    assert f"weakest signers: {WEAK} 1/2 (not judged), {SIGNERS[1]} 8/8 (upper bound 1.00), " \
           f"{SIGNERS[2]} 8/8 (upper bound 1.00)" in lines
    assert f"too few eval examples to judge (< 3): {WEAK} 1/2" in lines
    data = one_of_two.summary.to_json()
    assert [s["signer"] for s in data["signers_too_few_examples"]] == [WEAK]
    assert data["weakest_signers"][0] == {"signer": WEAK, "correct": 1, "examples": 2, "accuracy": 0.5,
                                          "upper_bound": 1.0, "judged": False}
    # The bound and its count belong to the signers' lines, not to the overall metrics.
    assert set(data["metrics"]) == {ACCURACY, "example_count"}

    weakest = none_of_six.summary.weakest_signers[0]
    assert (weakest.signer, weakest.correct, weakest.examples, weakest.judged) == (WEAK, 0, 6, True)
    assert math.isclose(weakest.upper_bound, wilson_upper_bound(0, 6))
    assert none_of_six.summary.signers_too_few_examples == []


# --- a signer that one of the models does not know ----------------------------------------------------------------

def _signers(counts: dict[str, int]):
    """`counts[signer]` eval examples of each signer, each naming its own signer (right for a model that knows it)."""
    return [(signer, signer) for signer, n in counts.items() for _ in range(n)]


@pytest.fixture(scope="module")
def new_signer(tmp_path_factory, model, old_model) -> Evaluation:
    """The first run after NEW was added: the candidate knows NEW, the version serving now does not."""
    return _evaluate(tmp_path_factory.mktemp("new_signer"), model, _signers(dict.fromkeys(SIGNERS, 8)),
                     GateConfig(), baseline=old_model)


def test_a_new_signer_unknown_to_the_serving_version_does_not_stop_the_evaluator(new_signer):
    assert new_signer.blessed, new_signer.failures()
    assert new_signer.overall("candidate")[ACCURACY] == 1.0
    # The serving version's answers to NEW's 8 images count as wrong: 16/24 right.
    assert new_signer.overall("baseline")[ACCURACY] == pytest.approx(16 / 24)
    assert new_signer.overall("candidate", diff=True)[ACCURACY] == pytest.approx(1 - 16 / 24)
    serving_on_new = new_signer.per_signer("baseline")[NEW]
    assert (serving_on_new[ACCURACY], serving_on_new[SIGNER_CORRECT], serving_on_new["example_count"]) == (0, 0, 8)
    # What the run summary reports is the candidate's.
    assert new_signer.summary.metrics[ACCURACY] == 1.0
    assert [s.correct for s in new_signer.summary.signers] == [8, 8, 8]


def test_a_candidate_that_lost_a_signer_the_serving_version_knows_is_held_back_by_the_change(tmp_path, model,
                                                                                            old_model):
    """NEW has only 2 eval images (not judged per signer): the drop vs serving (1.0 -> 40/42) is what stops it."""
    evaluation = _evaluate(tmp_path, old_model, _signers({SIGNERS[0]: 20, SIGNERS[1]: 20, NEW: 2}),
                           GateConfig(), baseline=model)
    assert not evaluation.blessed
    assert evaluation.failures() == [("overall", f"change {ACCURACY}")]
    assert evaluation.overall("candidate")[ACCURACY] == pytest.approx(40 / 42)  # above min_accuracy
    on_new = evaluation.per_signer("candidate")[NEW]
    assert (on_new[ACCURACY], on_new[SIGNER_CORRECT], on_new[SIGNER_BOUND]) == (0, 0, 1.0)
    [reason] = evaluation.summary.not_blessed_reasons
    assert reason == f"{ACCURACY} (change vs serving) on overall: -0.0476, threshold change >= -0.02 vs serving"


def test_a_candidate_that_does_not_know_a_signer_counts_its_examples_as_wrong(tmp_path, old_model):
    """First run, no serving version: NEW's 3 eval images are all wrong, which its floor catches."""
    evaluation = _evaluate(tmp_path, old_model, _signers({SIGNERS[0]: 30, SIGNERS[1]: 30, NEW: 3}), GateConfig())
    assert not evaluation.blessed
    assert evaluation.failures() == [(f"{LABEL_FEATURE}={NEW}", SIGNER_BOUND)]
    assert evaluation.overall()[ACCURACY] == pytest.approx(60 / 63)
    on_new = evaluation.per_signer()[NEW]
    assert (on_new[ACCURACY], on_new[SIGNER_CORRECT], on_new["example_count"]) == (0, 0, 3)
    assert on_new[SIGNER_BOUND] == pytest.approx(wilson_upper_bound(0, 3))


def test_forgeries_in_the_eval_split_are_not_counted_as_wrong_identifications(tmp_path, model):
    """A skilled forgery claims WEAK but is another hand: the model naming someone else is not an error. Old
    examples without the feature (genuine) and new ones with it share the split."""
    forgeries = [(SIGNERS[1], WEAK, 0)] * 6
    genuine = [(WEAK, WEAK, 1)] * 3 + [(signer, signer) for signer in SIGNERS for _ in range(6)]
    result = _evaluate(tmp_path, model, genuine + forgeries, GateConfig())
    assert result.blessed, result.failures()
    assert result.overall()[ACCURACY] == 1.0
    weak = result.per_signer()[WEAK]
    assert (weak[ACCURACY], weak[SIGNER_CORRECT]) == (1.0, 9)
