"""Does the default offline schedule (random-init Xception, from scratch) learn at all? Small, but not at chance."""
import pytest

from components.trainer import data, train
from components.trainer.config import TrainerConfig
from tests.trainer.helpers import rendered_items, split_pattern, write_splits

SIGNERS = 4


# Trains Xception from scratch for 36 steps: minutes on 2 quiet cores, several times that
# beside a training job, so more than the suite's 300 s.
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_from_scratch_training_beats_chance_by_far(tmp_path):
    splits = write_splits(tmp_path, rendered_items(range(SIGNERS), per_signer=12), eval_every=4)
    # The default schedule, shortened: fewer epochs of fewer steps on a smaller input.
    config = TrainerConfig(image_height=71, image_width=142, scratch_epochs=6, steps_per_epoch=6,
                           bn_recalibration_batches=4, weights="none")
    result = train.train(config, data.expand_files(split_pattern(tmp_path, "train")),
                         data.expand_files(split_pattern(tmp_path, "eval")))

    chance = 1 / SIGNERS
    assert result.init == "random" and result.schedule == train.SCHEDULE_FROM_SCRATCH
    assert len(splits["eval"]) == SIGNERS * 3
    assert result.eval_accuracy >= 2.5 * chance, (
        f"eval accuracy {result.eval_accuracy:.2f} is near chance ({chance:.2f}): the from-scratch schedule "
        f"does not learn; history: {[round(h['accuracy'], 2) for h in result.history]}")
