"""Backbone weights (offline fallback, local .h5), freezing, label changes, BatchNorm recalibration, AutoGraph."""
import logging

import numpy as np
import pytest
import tensorflow as tf

from components.trainer import model as model_lib, train
from components.trainer.config import TrainerConfig
from components.trainer.train import recalibrate_batchnorm
from tests.fixtures.ports import free_port
from tests.fixtures.tiny_model import build_tiny_saved_model

SIZE = (71, 71)


@pytest.fixture()
def unreachable_origin():
    """A URL on a local port nobody listens on: the download fails at once, as offline."""
    port = free_port()
    return f"http://127.0.0.1:{port}/{model_lib.XCEPTION_NOTOP_FILE}"


def test_auto_weights_fall_back_to_random_init_with_one_log_line(tmp_path, unreachable_origin, caplog):
    with caplog.at_level(logging.WARNING, logger=model_lib.__name__):
        weights = model_lib.resolve_backbone_weights("auto", origin=unreachable_origin, cache_dir=str(tmp_path))
    assert weights == model_lib.BackboneWeights(None, "random")
    assert not weights.pretrained
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and "ImageNet weights unavailable" in messages[0] and "random init" in messages[0]


def test_explicit_imagenet_fails_clearly_when_unavailable(tmp_path, unreachable_origin):
    with pytest.raises(RuntimeError, match="ImageNet weights for Xception are not in the Keras cache"):
        model_lib.resolve_backbone_weights("imagenet", origin=unreachable_origin, cache_dir=str(tmp_path))


def test_none_means_random_init_and_a_missing_h5_is_an_error(tmp_path):
    assert model_lib.resolve_backbone_weights("none") == model_lib.BackboneWeights(None, "random")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_lib.resolve_backbone_weights(str(tmp_path / "missing.h5"))


def test_local_h5_weights_are_loaded_into_the_backbone(tmp_path):
    tf.keras.utils.set_random_seed(11)
    source = model_lib.build_backbone(SIZE)
    path = tmp_path / "xception_notop.h5"
    source.save_weights(str(path))

    weights = model_lib.resolve_backbone_weights(str(path))
    assert weights == model_lib.BackboneWeights(str(path), "h5") and weights.pretrained
    tf.keras.utils.set_random_seed(12)
    classifier = model_lib.build_classifier(4, (72, 144), weights_path=weights.path)
    loaded = model_lib.backbone_of(classifier).get_weights()
    assert len(loaded) == len(source.get_weights())
    for expected, actual in zip(source.get_weights(), loaded):
        np.testing.assert_array_equal(actual, expected)
    assert classifier.output_shape == (None, 4)


def test_head_phase_freezes_the_backbone_and_fine_tuning_unfreezes_only_top_blocks_without_batchnorm():
    classifier = model_lib.build_classifier(3, SIZE)
    model_lib.freeze_backbone(classifier)
    assert {w.name.split("/")[0] for w in classifier.trainable_weights} == {model_lib.HEAD_NAME}

    model_lib.unfreeze_top_blocks(classifier, 13)
    trainable = {layer.name for layer in model_lib.backbone_of(classifier).layers if layer.trainable and layer.weights}
    assert "block13_sepconv1" in trainable and "block14_sepconv2" in trainable
    assert "block12_sepconv3" not in trainable and "block1_conv1" not in trainable
    assert not any(isinstance(model_lib.backbone_of(classifier).get_layer(name), tf.keras.layers.BatchNormalization)
                   for name in trainable)
    with pytest.raises(ValueError, match="no block 15"):
        model_lib.unfreeze_top_blocks(classifier, 15)


def test_transfer_keeps_the_backbone_and_the_head_columns_of_known_signers():
    tf.keras.utils.set_random_seed(5)
    old = model_lib.build_classifier(2, SIZE)
    new = model_lib.build_classifier(3, SIZE)
    carried = model_lib.transfer_weights(old, ["signer_a", "signer_c"], new, ["signer_a", "signer_b", "signer_c"])
    assert carried == 2
    for expected, actual in zip(model_lib.backbone_of(old).get_weights(), model_lib.backbone_of(new).get_weights()):
        np.testing.assert_array_equal(actual, expected)
    old_kernel, old_bias = old.get_layer(model_lib.HEAD_NAME).get_weights()
    kernel, bias = new.get_layer(model_lib.HEAD_NAME).get_weights()
    np.testing.assert_array_equal(kernel[:, [0, 2]], old_kernel)
    np.testing.assert_array_equal(bias[[0, 2]], old_bias)
    assert not np.allclose(kernel[:, 1], old_kernel[:, 0])


def test_batchnorm_recalibration_sets_moving_statistics_to_the_batch_average_without_training():
    inputs = tf.keras.Input((4,))
    hidden = tf.keras.layers.Dense(3, name="dense")(inputs)
    outputs = tf.keras.layers.BatchNormalization(name="bn")(hidden)
    net = tf.keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=i, scale=1 + i, size=(16, 4)).astype("float32") for i in range(3)]
    dataset = tf.data.Dataset.from_tensor_slices((np.stack(batches), np.zeros((3, 16)))).map(lambda x, y: (x, y))
    kernel = net.get_layer("dense").get_weights()
    bn = net.get_layer("bn")

    recalibrate_batchnorm(net, dataset, num_batches=3)

    features = [b @ kernel[0] + kernel[1] for b in batches]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([f.mean(axis=0) for f in features], axis=0), rtol=1e-4)
    # A 2-D (non-fused) Keras BatchNorm averages the biased batch variance.
    np.testing.assert_allclose(bn.moving_variance.numpy(),
                               np.mean([f.var(axis=0) for f in features], axis=0), rtol=1e-3)
    for expected, actual in zip(kernel, net.get_layer("dense").get_weights()):
        np.testing.assert_array_equal(actual, expected)
    assert bn.momentum == 0.99


def test_warm_start_from_an_export_of_another_architecture_fails_clearly(tmp_path):
    other = build_tiny_saved_model(tmp_path / "tiny", labels=("signer_00", "signer_01"))
    with pytest.raises(RuntimeError, match="cannot warm-start from .*set warm_start=False"):
        train.initial_model(TrainerConfig(image_height=71, image_width=71), ["signer_00", "signer_01"], other)


def test_autograph_leaves_keras_internals_alone_and_converts_our_code():
    # Converting tf-keras' training step, optimizer and losses cost ~25 s at the first fit of every process.
    from tensorflow.python.autograph.core import config as autograph_config
    from tensorflow.python.autograph.impl import conversion

    model_lib.keep_autograph_out_of_keras()  # a second call adds no second rule
    assert [rule for rule in autograph_config.CONVERSION_RULES if getattr(rule, "_prefix", None) == "tf_keras"] \
        == list(autograph_config.CONVERSION_RULES[:1])
    assert conversion.is_allowlisted(model_lib.keras.Model.train_step)
    assert conversion.is_allowlisted(model_lib.keras.optimizers.Adam.apply_gradients)
    assert not conversion.is_allowlisted(recalibrate_batchnorm)
