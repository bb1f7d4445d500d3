"""The input pipeline, and training/serving parity through a real exported SavedModel."""
import hashlib
import json

import numpy as np
import pytest
import tensorflow as tf

from components.trainer import data, report, train
from components.trainer.config import TrainerConfig
from components.trainer.export import export_serving_model
from components.trainer.preprocess import image_to_model_input
from tests.trainer.helpers import generator, rendered_items, split_pattern, write_records, write_splits

CONFIG = TrainerConfig(image_height=72, image_width=144, batch_size=4, seed=3)
# Two short epochs of a small Xception from random init, with a validation share: a real training run in seconds.
SHORT_TRAINING = CONFIG.replace(image_height=71, image_width=142, weights="none", scratch_epochs=2, warmup_epochs=1,
                                steps_per_epoch=2, bn_recalibration_batches=1, validation_fraction=0.3)


@pytest.fixture(scope="module")
def items():
    return rendered_items(signers=range(3), per_signer=5)


def _identity_export(path, config):
    """A model whose "probabilities" are its flattened input: serving_default then returns the model input."""
    height, width = config.image_size
    inputs = tf.keras.Input((height, width, 3))
    model = tf.keras.Model(inputs, tf.keras.layers.Reshape((height * width * 3,))(inputs))
    return export_serving_model(model, [f"px{i}" for i in range(height * width * 3)], config.image_size, path,
                                preprocessing=config.preprocessing)


def _as_mode(image: bytes, mode: str) -> bytes:
    """The same signature as a PNG in Pillow `mode` (L grey, LA grey + alpha, P palette, RGBA with a transparent
    background, as a browser canvas sends)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(image)) as original:
        rgb = original.convert("RGB")
    if mode == "RGBA":
        converted = rgb.convert("RGBA")
        alpha = Image.eval(rgb.convert("L"), lambda v: 255 - v)  # ink opaque, paper transparent
        converted.putalpha(alpha)
    elif mode == "LA":
        converted = rgb.convert("LA")
    else:
        converted = rgb.convert(mode)
    buffer = io.BytesIO()
    converted.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, preprocessing", [
    *((fmt, "scan") for fmt in ("png", "jpg", "gif", "L", "LA", "P", "RGBA")),
    ("png", "fit"), ("RGBA", "fit"),
])
def test_training_pipeline_and_serving_signature_give_the_same_model_input(tmp_path, fmt, preprocessing):
    config = CONFIG.replace(image_height=71, image_width=142, batch_size=1, preprocessing=preprocessing)
    image = generator().render_signature(7, 2, 3, fmt if fmt in ("png", "jpg", "gif") else "png")
    if fmt not in ("png", "jpg", "gif"):
        image = _as_mode(image, fmt)
    files = [str(write_records(tmp_path / "one.gz", [(image, "signer_02")]))]
    trained_on, ids = next(iter(data.training_dataset(files, ["signer_02"], config, augment=False)))

    served = tf.saved_model.load(str(_identity_export(tmp_path / "identity", config)))
    served_input = served.signatures["serving_default"](image_bytes=tf.constant([image]))["probabilities"]

    assert ids.numpy().tolist() == [0]
    np.testing.assert_allclose(served_input.numpy().reshape(trained_on.shape), trained_on.numpy(), rtol=0, atol=1e-6)
    assert trained_on.numpy().min() >= -1.0 and trained_on.numpy().max() <= 1.0


def test_summarize_counts_examples_and_sorts_labels(tmp_path, items):
    splits = write_splits(tmp_path, items)
    summary = data.summarize(data.expand_files(split_pattern(tmp_path, "train")))
    assert summary.num_examples == len(splits["train"])
    assert summary.labels == ["signer_00", "signer_01", "signer_02"]


def test_expand_files_fails_on_an_empty_split(tmp_path):
    with pytest.raises(FileNotFoundError):
        data.expand_files(str(tmp_path / "Split-train" / "*"))


def test_training_batches_are_full_and_labels_are_vocabulary_indices(tmp_path, items):
    write_splits(tmp_path, items)
    files = data.expand_files(split_pattern(tmp_path, "train"))
    batches = list(data.training_dataset(files, ["signer_00", "signer_01", "signer_02"], CONFIG).take(5))
    for images, ids in batches:
        assert images.shape == (4, 72, 144, 3) and images.dtype == tf.float32
        assert set(ids.numpy().tolist()) <= {0, 1, 2}
    assert -1.0 <= min(float(tf.reduce_min(b[0])) for b in batches)
    assert max(float(tf.reduce_max(b[0])) for b in batches) <= 1.0


def test_the_same_seed_gives_the_same_augmented_batches(tmp_path, items):
    """Augmentation draws from stateful random ops: in a parallel map, batches would take their draws in whatever
    order their threads run, and two passes over the same data would differ (over 100 small batches, every time
    on this project's machine)."""
    write_splits(tmp_path, items)
    files = data.expand_files(split_pattern(tmp_path, "train"))

    def one_pass(augment: bool) -> list[np.ndarray]:
        tf.random.set_seed(CONFIG.seed)
        batches = data.training_dataset(files, ["signer_00", "signer_01", "signer_02"], CONFIG, augment=augment)
        return [images.numpy() for images, _ in batches.take(100)]

    first, second, plain = one_pass(True), one_pass(True), one_pass(False)
    assert not any(np.array_equal(a, p) for a, p in zip(first, plain))  # augmentation was on
    assert [i for i, (a, b) in enumerate(zip(first, second)) if not np.array_equal(a, b)] == []


def test_datasets_over_the_records_run_without_tf_data_autotuning(tmp_path, items):
    """Its thread held up the release of `fit`'s iterator by up to 20 s; the options reach every pipeline."""
    write_splits(tmp_path, items)
    files = data.expand_files(split_pattern(tmp_path, "train"))
    labels = ["signer_00", "signer_01", "signer_02"]
    for dataset in (data.read_examples(files), data.training_dataset(files, labels, CONFIG),
                    data.training_dataset(files, labels, CONFIG, forgeries=True, centers=True),
                    data.evaluation_dataset(files, labels, CONFIG), data.prediction_dataset(files, CONFIG)):
        assert dataset.options().autotune.enabled is False


def test_examples_with_labels_outside_the_vocabulary_are_skipped_by_eval(tmp_path, items):
    files = [str(write_records(tmp_path / "eval.gz", items))]
    ids = np.concatenate([ids.numpy() for _, ids in data.evaluation_dataset(files, ["signer_01"], CONFIG)])
    assert ids.tolist() == [0] * 5


def test_augmentation_changes_images_but_keeps_shape_range_and_paper(items):
    images = tf.stack([image_to_model_input(image, 72, 144) for image, _ in items[:4]])
    tf.random.set_seed(0)
    augmented = data.augment_batch(images, CONFIG)
    assert augmented.shape == images.shape
    assert float(tf.reduce_min(augmented)) >= -1.0 and float(tf.reduce_max(augmented)) <= 1.0
    assert float(tf.reduce_mean(tf.abs(augmented - images))) > 0.01
    # Pixels moved in from outside the image are paper (white), not black.
    shifted = data.augment_batch(tf.fill([1, 72, 144, 3], 1.0), CONFIG.replace(translate_fraction=0.3))
    assert float(tf.reduce_min(shifted)) > 0.99


def test_thicker_strokes_darken_and_thinner_strokes_lighten_the_ink(items):
    images = tf.stack([image_to_model_input(image, 72, 144) for image, _ in items[:2]])
    still = CONFIG.replace(rotation_degrees=0, scale_range=0, shear=0, translate_fraction=0, contrast_range=0,
                           stroke_probability=0.5)
    tf.random.set_seed(1)
    means = [float(tf.reduce_mean(data.augment_batch(images[i:i + 1], still))) for i in range(2) for _ in range(6)]
    clean = [float(tf.reduce_mean(images[i])) for i in range(2)]
    assert any(m < clean[i // 6] - 1e-3 for i, m in enumerate(means))
    assert any(m > clean[i // 6] + 1e-3 for i, m in enumerate(means))


def test_predictions_cover_every_eval_example_with_its_sha256(tmp_path, items):
    files = [str(write_records(tmp_path / "eval.gz", items[:6]))]
    inputs = tf.keras.Input((72, 144, 3))
    # A fixed "model": class 1 of 2 always wins.
    outputs = tf.keras.layers.Lambda(lambda x: tf.tile([[0.25, 0.75]], [tf.shape(x)[0], 1]))(inputs)
    predictions = train.predict(tf.keras.Model(inputs, outputs), files, ["signer_00", "signer_01"], CONFIG)
    assert [p.sha256 for p in predictions] == [hashlib.sha256(image).hexdigest() for image, _ in items[:6]]
    assert [p.label for p in predictions] == [label for _, label in items[:6]]
    assert {(p.predicted, p.score, p.runner_up, p.runner_up_score) for p in predictions} == {
        ("signer_01", 0.75, "signer_00", 0.25)}
    path = report.write_eval_predictions(predictions, tmp_path / "eval_predictions.jsonl")
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"sha256", "label", "predicted", "score", "runner_up", "runner_up_score"}


# Sizes whose fit into 72x216 came out a pixel apart between static and dynamic shapes
# with tf.image.resize_with_pad (found by the serving check on a generated sample).
AWKWARD_SIZES = [(164, 415), (108, 381), (80, 253), (118, 381), (102, 361)]


@pytest.mark.parametrize("target", [(72, 216), (71, 142)])
def test_fitting_is_the_same_with_static_and_dynamic_shapes(target):
    """The Trainer's inputs (tf.data, eager) and the server's (a signature with unknown shapes) must be equal."""
    from components.trainer.preprocess import resize_with_white_pad

    height, width = target
    dynamic = tf.function(lambda image: resize_with_white_pad(image, height, width),
                          input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    rng = np.random.default_rng(5)
    sizes = AWKWARD_SIZES + [tuple(int(v) for v in rng.integers(20, 600, size=2)) for _ in range(40)]
    for size in sizes:
        image = tf.constant(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))
        eager = resize_with_white_pad(image, height, width).numpy()
        np.testing.assert_allclose(dynamic(image).numpy(), eager, rtol=0, atol=1e-3, err_msg=str(size))
        assert eager.shape == (height, width, 3)
        # Fitted, not stretched: a full row or column of the output is image, the other side has paper.
        ink_rows = np.where((eager < 254.5).any(axis=(1, 2)))[0]
        ink_cols = np.where((eager < 254.5).any(axis=(0, 2)))[0]
        assert len(ink_rows) == height or len(ink_cols) == width, size


# ------------------------------------------------------------------ forgeries

def _write_marked(path, items) -> list[str]:
    """GZIP TFRecords of (image, label, genuine) items; genuine None writes no `genuine` feature (an example
    ingested before forgeries were recorded)."""
    from tests.trainer.helpers import to_example

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for i, (image, label, genuine) in enumerate(items):
            example = to_example(image, label, source=f"item:{i}")
            if genuine is not None:
                example.features.feature["genuine"].int64_list.value.append(genuine)
            writer.write(example.SerializeToString())
    return [str(path)]


@pytest.fixture(scope="module")
def marked(items):
    """Genuine signings of signers 0-2 (half from before forgeries, without the feature), skilled forgeries
    claimed as signers 0 and 1, and forgeries of signer 5, who has no genuine example."""
    gen = generator()
    genuine = [(image, label, 1 if i % 2 else None) for i, (image, label) in enumerate(items)]
    forged = [(gen.render_forgery(7, target, 20 + n, n), gen.label_for(target), 0)
              for target in (0, 1, 5) for n in range(4)]
    return genuine, forged


def _kinds(batches, marked, config) -> list[str]:
    """For each image of a dataset's batches (images first in each): "genuine" or "forged", the kind of the item
    it is the model input of."""
    genuine, forged = marked
    candidates = [(kind, data.model_input(tf.constant(image), config).numpy())
                  for kind, items in (("genuine", genuine), ("forged", forged)) for image, _, _ in items]
    kinds = []
    for batch in batches:
        for image in batch[0].numpy():
            errors = [float(np.abs(image - candidate).max()) for _, candidate in candidates]
            assert min(errors) < 1e-4
            kinds.append(candidates[int(np.argmin(errors))][0])
    return kinds


def test_forgeries_are_left_out_of_the_split_summary(tmp_path, marked):
    genuine, forged = marked
    files = _write_marked(tmp_path / "train.gz", genuine + forged)
    summary = data.summarize(files)
    # Signer 5 has forgeries only: it gets no class.
    assert (summary.num_examples, summary.labels) == (len(genuine), ["signer_00", "signer_01", "signer_02"])


def test_the_classifier_never_trains_validates_or_evaluates_on_forgeries(tmp_path, marked):
    genuine, forged = marked
    items = forged[:4] + genuine + forged[4:]
    files = _write_marked(tmp_path / "train.gz", items)
    labels = ["signer_00", "signer_01", "signer_02", "signer_05"]  # even a vocabulary that names signer 5
    config = CONFIG.replace(validation_fraction=0.0)

    evaluated = list(data.evaluation_dataset(files, labels, config))
    assert _kinds(evaluated, marked, config) == ["genuine"] * len(genuine)

    steps = 3 * len(genuine) // config.batch_size  # three passes
    trained = data.training_dataset(files, labels, config, augment=False).take(steps)
    assert set(_kinds(trained, marked, config)) == {"genuine"}

    predicted = [sha.decode() for batch in data.prediction_dataset(files, config) for sha in batch["sha256"].numpy()]
    assert sorted(predicted) == sorted(hashlib.sha256(image).hexdigest() for image, _, _ in genuine)

    # The validation share of the train split: the same share of the same images, without the forgeries.
    config = CONFIG.replace(validation_fraction=0.45)
    kept = _kinds(data.validation_dataset(files, labels, config), marked, config)
    all_marked_genuine = _write_marked(tmp_path / "all_genuine.gz", [(image, label, 1) for image, label, _ in items])
    share = _kinds(data.validation_dataset(all_marked_genuine, labels, config), marked, config)
    assert "forged" in share  # the share does hold forgeries to leave out
    assert kept == [kind for kind in share if kind == "genuine"]


def test_the_forgery_head_gets_every_forgery_and_the_signer_head_none(tmp_path, marked):
    genuine, forged = marked
    files = _write_marked(tmp_path / "train.gz", forged[:4] + genuine + forged[4:])
    labels = ["signer_00", "signer_01", "signer_02"]  # signer 5's forgeries have no class, and still come
    config = CONFIG.replace(validation_fraction=0.0, batch_size=len(genuine) + len(forged), shuffle_buffer=64)
    summary = data.summarize(files)
    assert (summary.num_examples, summary.num_forgeries) == (len(genuine), len(forged))

    # One batch is one whole pass over the split.
    images, (ids, is_forged), (signer_weight, forgery_weight) = next(iter(
        data.training_dataset(files, labels, config, augment=False, forgeries=True)))
    kinds = _kinds([(images,)], marked, config)
    assert sorted(kinds) == sorted(["genuine"] * len(genuine) + ["forged"] * len(forged))
    expected_forged = np.array([kind == "forged" for kind in kinds], dtype=np.float32)
    np.testing.assert_array_equal(is_forged.numpy()[:, 0], expected_forged)
    np.testing.assert_array_equal(signer_weight.numpy(), 1.0 - expected_forged)
    np.testing.assert_array_equal(forgery_weight.numpy(), np.ones(len(kinds)))
    # Genuine rows carry their signer's id; forged rows an id in range (their weight is 0).
    by_image = {data.model_input(tf.constant(image), config).numpy().tobytes(): labels.index(label)
                for image, label, _ in genuine}
    for image, kind, label_id in zip(images.numpy(), kinds, ids.numpy()):
        if kind == "genuine":
            assert label_id == by_image[image.tobytes()]
        else:
            assert 0 <= label_id < len(labels)


def test_the_signer_centres_get_the_signer_targets_and_weights(tmp_path, marked):
    genuine, forged = marked
    files = _write_marked(tmp_path / "train.gz", forged + genuine)
    labels = ["signer_00", "signer_01", "signer_02"]
    config = CONFIG.replace(validation_fraction=0.0, batch_size=len(genuine) + len(forged), shuffle_buffer=64)

    images, (ids, is_forged, centre_ids), (signer_weight, forgery_weight, centre_weight) = next(iter(
        data.training_dataset(files, labels, config, augment=False, forgeries=True, centers=True)))
    np.testing.assert_array_equal(centre_ids.numpy(), ids.numpy())
    np.testing.assert_array_equal(centre_weight.numpy(), signer_weight.numpy())
    assert 0 < signer_weight.numpy().sum() < len(signer_weight)  # forgeries are in the batch, at weight 0

    genuine_only = CONFIG.replace(validation_fraction=0.0, batch_size=len(genuine), shuffle_buffer=64)
    images, (ids, centre_ids) = next(iter(
        data.training_dataset(files, labels, genuine_only, augment=False, centers=True)))
    assert _kinds([(images,)], marked, genuine_only) == ["genuine"] * len(genuine)
    np.testing.assert_array_equal(centre_ids.numpy(), ids.numpy())


def test_signer_centres_give_each_image_its_cosine_distance_to_every_centre():
    from components.trainer.model import SignerCenters

    layer = SignerCenters(3)
    features = np.array([[1.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    layer.build(features.shape)
    centres = np.array([[2.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], dtype=np.float32)
    layer.centers.assign(centres)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(layer(features).numpy(), 1.0 - unit(features) @ unit(centres).T, atol=1e-6)
    # The loss takes each image's distance to its own signer's centre.
    np.testing.assert_allclose(train._own_center_distance(tf.constant([2, 0]), layer(features)).numpy(),
                               [1.0 + np.sqrt(0.5), 1.0 - 0.6], atol=1e-6)


def test_the_center_loss_reaches_the_backbone_and_the_centres():
    from components.trainer import model as model_lib

    classifier = model_lib.build_classifier(3, (71, 142))
    fit_model = model_lib.training_model(classifier, center_loss=True)
    images = tf.random.stateless_uniform([2, 71, 142, 3], seed=[1, 2], minval=-1.0, maxval=1.0)
    with tf.GradientTape() as tape:
        _, distances = fit_model(images, training=True)
        loss = tf.reduce_mean(train._own_center_distance(tf.constant([0, 2]), distances))
    backbone = model_lib.backbone_of(classifier).trainable_weights
    centres = fit_model.get_layer(model_lib.CENTER_HEAD_NAME).trainable_weights
    gradients = tape.gradient(loss, [*backbone, *centres])
    # Pulling the features towards the centres is the point: the loss must move the backbone, not only the centres.
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in gradients[:len(backbone)] if g is not None) > 0
    assert float(tf.reduce_sum(tf.abs(gradients[-1]))) > 0


@pytest.mark.slow
def test_a_center_loss_joins_the_forgery_loss_and_the_exported_classifier_leaves_both_out(tmp_path, marked):
    genuine, forged = marked
    train_files = _write_marked(tmp_path / "train.gz", genuine + forged)
    eval_files = _write_marked(tmp_path / "eval.gz", genuine[::4])
    config = SHORT_TRAINING.replace(forgery_loss_weight=0.5, center_loss_weight=0.25)

    result = train.train(config, train_files, eval_files)

    first = result.history[0]
    assert first["loss"] == pytest.approx(first["signer_probabilities_loss"] + 0.5 * first["forgery_probability_loss"]
                                          + 0.25 * first["signer_center_distance_loss"], rel=1e-3)
    assert 0.0 < first["signer_center_distance_loss"] <= 2.0
    # Validation (genuine only): the centres count, the forgery head does not.
    assert first["val_forgery_probability_loss"] == 0.0
    assert 0.0 < first["val_signer_center_distance_loss"] <= 2.0
    assert first["val_loss"] == pytest.approx(
        first["val_signer_probabilities_loss"] + 0.25 * first["val_signer_center_distance_loss"], rel=1e-3)
    assert 0.0 <= first["val_accuracy"] <= 1.0 and result.best_epoch in (1, 2)
    assert [layer.name for layer in result.model.layers][-1] == "signer_probabilities"
    assert not {"forgery_probability", "signer_center_distance"} & {layer.name for layer in result.model.layers}


@pytest.mark.slow
def test_the_default_center_loss_trains_on_genuine_data_with_a_validation_share(tmp_path, items):
    train_files = _write_marked(tmp_path / "train.gz", [(image, label, 1) for image, label in items])
    config = SHORT_TRAINING
    assert config.center_loss_weight > 0

    result = train.train(config, train_files, train_files)

    first = result.history[0]
    assert first["loss"] == pytest.approx(
        first["signer_probabilities_loss"] + config.center_loss_weight * first["signer_center_distance_loss"], rel=1e-3)
    assert "forgery_probability_loss" not in first
    assert 0.0 < first["val_signer_center_distance_loss"] <= 2.0
    assert first["val_loss"] == pytest.approx(
        first["val_signer_probabilities_loss"] + config.center_loss_weight * first["val_signer_center_distance_loss"],
        rel=1e-3)
    assert 0.0 <= first["val_accuracy"] <= 1.0 and result.best_epoch in (1, 2)
    assert "signer_center_distance" not in {layer.name for layer in result.model.layers}


@pytest.mark.slow
def test_a_forgery_loss_trains_a_second_head_that_the_exported_classifier_leaves_out(tmp_path, marked):
    genuine, forged = marked
    train_files = _write_marked(tmp_path / "train.gz", genuine + forged)
    eval_files = _write_marked(tmp_path / "eval.gz", genuine[::4])
    config = SHORT_TRAINING.replace(forgery_loss_weight=0.5, center_loss_weight=0.0)

    result = train.train(config, train_files, eval_files)

    first = result.history[0]
    assert "signer_center_distance_loss" not in first
    # Both heads' losses, the total at the forgery head's weight, and the signer accuracy under its usual name.
    assert first["loss"] == pytest.approx(first["signer_probabilities_loss"] + 0.5 * first["forgery_probability_loss"],
                                          rel=1e-3)
    assert 0.0 <= first["accuracy"] <= 1.0
    # The validation share (genuine only) picks the best epoch by the signer accuracy.
    assert 0.0 <= first["val_accuracy"] <= 1.0 and result.best_epoch in (1, 2)
    assert result.num_train_examples == len(genuine)
    assert [layer.name for layer in result.model.layers][-1] == "signer_probabilities"
    assert "forgery_probability" not in {layer.name for layer in result.model.layers}
    assert len(result.eval_predictions) == len(genuine[::4])
