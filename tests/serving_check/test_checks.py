"""The serving check's comparison of served answers with the Trainer's own eval predictions."""
import pytest

from components.serving_check.checks import compare_with_eval_predictions
from components.trainer.predictions import Prediction as EvalPrediction

TOLERANCE = 0.01
TRAINER = {
    "clear": EvalPrediction("clear", "signer_00", "signer_00", 0.91, "signer_01", 0.05),
    # A near-tie: 0.3901 vs 0.3867, as measured once on a barely trained model.
    "tie": EvalPrediction("tie", "signer_00", "signer_01", 0.3901, "signer_00", 0.3867),
}


def _problems(sha256: str, label: str, score: float) -> list[str]:
    compared, problems = compare_with_eval_predictions([sha256], [label], [score], TRAINER, TOLERANCE, "probe")
    assert compared == 1
    return problems


def test_same_label_and_score_within_tolerance_pass():
    assert _problems("clear", "signer_00", 0.9126) == []


def test_score_beyond_tolerance_fails():
    assert "by more than 0.01" in _problems("clear", "signer_00", 0.93)[0]


def test_a_clear_answer_flipped_fails():
    assert "the Trainer predicted 'signer_00'" in _problems("clear", "signer_01", 0.05)[0]


def test_a_near_tie_may_flip_to_the_runner_up_with_its_score():
    assert _problems("tie", "signer_00", 0.3870) == []


@pytest.mark.parametrize("label,score", [("signer_02", 0.3870), ("signer_00", 0.41)])
def test_a_near_tie_flipped_elsewhere_or_with_another_score_fails(label, score):
    assert _problems("tie", label, score)


def test_images_the_trainer_did_not_predict_are_not_compared():
    compared, problems = compare_with_eval_predictions(["other"], ["signer_00"], [0.5], TRAINER, TOLERANCE, "probe")
    assert (compared, problems) == (0, [])
