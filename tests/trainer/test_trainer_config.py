import json

import pytest

from components.trainer.config import CUSTOM_CONFIG_KEY, TrainerConfig


def test_round_trips_through_json_as_custom_config_carries_it():
    config = TrainerConfig(image_height=80, image_width=240, weights="/models/xception.h5", steps_per_epoch=7)
    carried = json.loads(json.dumps({CUSTOM_CONFIG_KEY: config.to_dict()}))
    assert TrainerConfig.from_dict(carried[CUSTOM_CONFIG_KEY]) == config


def test_missing_keys_take_defaults_and_none_is_the_default_config():
    assert TrainerConfig.from_dict({"batch_size": 8}) == TrainerConfig(batch_size=8)
    assert TrainerConfig.from_dict(None) == TrainerConfig()


def test_unknown_keys_are_rejected():
    with pytest.raises(ValueError, match="unknown TrainerConfig keys: epochs"):
        TrainerConfig.from_dict({"epochs": 3})


@pytest.mark.parametrize("changes, message", [
    ({"image_height": 64}, ">= 71"),
    ({"batch_size": 0}, "batch_size"),
    ({"warmup_epochs": 5, "scratch_epochs": 5}, "warmup_epochs"),
    ({"head_epochs": 0, "fine_tune_epochs": 0}, "head_epochs"),
    ({"steps_per_epoch": 0}, "steps_per_epoch"),
    ({"scratch_bn_momentum": 1.0}, "momentum"),
    ({"weights": ""}, "weights"),
    ({"forgery_loss_weight": -0.1}, "forgery_loss_weight"),
    ({"center_loss_weight": -0.5}, "center_loss_weight"),
    ({"open_set_neighbours": 0}, "open_set_neighbours"),
    ({"open_set_acceptance": 0.4}, "open_set_acceptance"),
])
def test_invalid_values_fail_when_the_config_is_made(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainerConfig(**changes)


def test_default_input_is_small_enough_for_cpu_and_valid_for_xception():
    config = TrainerConfig()
    assert config.image_size == (config.image_height, config.image_width)
    assert 71 <= config.image_height <= config.image_width <= 256
