"""Open-set identification and the Evaluator's verification scores, as the real export writes them.

The classifier is a known-answer stand-in whose pooled features are colour
detectors (a fixed 1x1 convolution: red, green, blue, yellow, cyan, then the
global average pooling verification reads), so who an image "is" is its colour.
Four colours are enrolled signers with 8 references each; six cyan images are
signers with one reference each, too few to enrol, which the verifiers see as
impostors only (as every real training set has rare signers). The softmax head is
a logistic regression on the pooled features, the SVMs are fitted by the real
fit_verification, and the model goes through export_serving_model. Every
exported answer is checked against VerificationModel.score in numpy.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import random

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from sklearn.linear_model import LogisticRegression

from components.trainer.config import PREPROCESS_FIT, TrainerConfig
from components.trainer.embeddings import Embeddings, embed_images
from components.trainer.export import export_serving_model, model_metadata
from components.trainer.preprocess import image_to_model_input
from components.trainer.report import error_rates, plot_det, verification_trials
from components.trainer.verification import VerificationModel, fit_verification
from serving.contract import (
    CLASSIFY_INPUT,
    IMAGE_FEATURE,
    LABEL_OUTPUT,
    MODEL_METADATA_FILE,
    PREDICT_LABEL_SIGNATURE,
    PROBABILITIES_OUTPUT,
    SCORE_OUTPUT,
    UNKNOWN_LABEL,
    VERIFICATION_SCORES_OUTPUT,
    VERIFICATION_SCORES_SIGNATURE,
    VERIFICATION_SIGNERS_OUTPUT,
    VERIFICATION_THRESHOLD_OUTPUT,
    VERIFY_SIGNATURE,
)

# The colours stay colours: the scan preprocessing would make them grey.
CONFIG = TrainerConfig(image_height=72, image_width=144, batch_size=8, seed=1, preprocessing=PREPROCESS_FIT)
# Channels that are high (the others low) for each colour; the detectors' order.
COLOURS = {"red": (0,), "green": (1,), "blue": (2,), "yellow": (0, 1), "cyan": (1, 2)}
ENROLLED = ("red", "green", "blue", "yellow")
REFERENCES = 8
RARE = 6  # cyan signers with one reference each


def colour_image(colour: str, rng: random.Random) -> bytes:
    """A signing of `colour`: its high channels in [190, 255], the others in [0, 70]."""
    high = COLOURS[colour]
    pixel = tuple(rng.randrange(190, 256) if c in high else rng.randrange(0, 71) for c in range(3))
    buffer = io.BytesIO()
    Image.new("RGB", (160, 64), pixel).save(buffer, format="PNG")
    return buffer.getvalue()


def blank_image() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (160, 64), (250, 250, 250)).save(buffer, format="PNG")
    return buffer.getvalue()


def colour_classifier(num_labels: int) -> tf.keras.Model:
    """Colour detectors -> global average pooling (the pooled features) -> softmax head (set by the fixture).

    Detector k is relu(s_k . x - 1) on the preprocessed pixel x in [-1, 1]^3, s_k the colour's +-1 pattern:
    about 2 on its colour, 0 on the others."""
    inputs = tf.keras.Input((*CONFIG.image_size, 3))
    detectors = tf.keras.layers.Conv2D(len(COLOURS), 1, activation="relu")
    x = tf.keras.layers.GlobalAveragePooling2D(name="avg_pool")(detectors(inputs))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(num_labels, activation="softmax")(x))
    signs = np.array([[1.0 if c in high else -1.0 for c in range(3)] for high in COLOURS.values()], np.float32)
    detectors.set_weights([signs.T.reshape(1, 1, 3, len(COLOURS)), -np.ones(len(COLOURS), np.float32)])
    return model


def model_input(image: bytes) -> tf.Tensor:
    return image_to_model_input(tf.constant(image), *CONFIG.image_size, CONFIG.preprocessing)


def all_scores(verification: VerificationModel, features: np.ndarray) -> np.ndarray:
    """float64 [N, S]: every row's calibrated score for every enrolled signer, from the numpy model."""
    return np.stack([verification.score(features, [signer] * len(features)) for signer in verification.signers],
                    axis=1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    rng = random.Random(0)
    labels = [f"signer_{colour}" for colour in sorted(ENROLLED)]
    train = [(colour_image(label.removeprefix("signer_"), rng), label) for label in labels for _ in range(REFERENCES)]
    rare = [(colour_image("cyan", rng), f"rare_{i}") for i in range(RARE)]
    # Later signings of the enrolled signers (not fitted on), then strangers: cyan signers never seen, a blank page.
    later = [(colour_image(label.removeprefix("signer_"), rng), label) for label in labels for _ in range(3)]
    strangers = [(colour_image("cyan", rng), None) for _ in range(4)] + [(blank_image(), None)]
    model = colour_classifier(len(labels))
    # The head does not change the pooled features: one pass over every image serves the whole fixture.
    everything = train + rare + later + strangers
    features = embed_images(model, [image for image, _ in everything], CONFIG)
    fitted, probes = slice(0, len(train) + len(rare)), slice(len(train) + len(rare), None)
    train_labels = [label for _, label in train]
    scale = 1.0 / features[:len(train)].std()  # the regression sees standardised features; the head gets it back
    head = LogisticRegression(C=1e4, max_iter=20000).fit(features[:len(train)] * scale, train_labels)
    assert list(head.classes_) == labels
    model.layers[-1].set_weights([(head.coef_.T * scale).astype(np.float32), head.intercept_.astype(np.float32)])
    verification = fit_verification(Embeddings(
        tuple(hashlib.sha256(image).hexdigest() for image, _ in everything[fitted]),
        tuple(label for _, label in everything[fitted]), features[fitted]))
    assert verification.signers == tuple(labels) and len(verification.skipped) == RARE
    export_dir = export_serving_model(model, labels, CONFIG.image_size, tmp_path_factory.mktemp("open_set") / "v1",
                                      preprocessing=CONFIG.preprocessing, verification=verification)
    shown = train + later + strangers
    return {"model": model, "labels": labels, "verification": verification, "export_dir": export_dir,
            "images": [image for image, _ in shown], "true": [label for _, label in shown],
            "features": np.concatenate([features[:len(train)], features[probes]])}


@functools.lru_cache(maxsize=1)
def _load(export_dir) -> tf.Module:
    return tf.saved_model.load(str(export_dir))


def _call(export_dir, signature: str, **inputs) -> dict[str, np.ndarray]:
    function = _load(export_dir).signatures[signature]
    return {name: value.numpy() for name, value in function(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def test_predict_label_is_unknown_exactly_when_the_image_is_far_from_the_top_signers_references(exported):
    verification = exported["verification"]
    served = _call(exported["export_dir"], PREDICT_LABEL_SIGNATURE, image_bytes=exported["images"])
    labels = np.array([label.decode() for label in served[LABEL_OUTPUT]])
    # The closed-set answer: the softmax's top label and its probability.
    probabilities = served[PROBABILITIES_OUTPUT]
    closed_labels = np.array(exported["labels"])[probabilities.argmax(axis=1)]
    # Every label is enrolled here: the image's similarity to the top signer's nearest references decides.
    best = verification.open_set_similarity(exported["features"], list(closed_labels))
    threshold = verification.open_set_threshold
    decided = np.abs(best - threshold) > 1e-5  # rows this close to the threshold may round either way
    expect_unknown = best < threshold

    np.testing.assert_array_equal((labels == UNKNOWN_LABEL)[decided], expect_unknown[decided])
    # Unknown rows carry that similarity; the others keep the closed-set answer unchanged.
    known = labels != UNKNOWN_LABEL
    np.testing.assert_allclose(served[SCORE_OUTPUT][~known], best[~known], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(labels[known], closed_labels[known])
    np.testing.assert_array_equal(served[SCORE_OUTPUT][known], probabilities[known].max(axis=1))
    # The softmax is the classifier's, open set or not.
    expected = exported["model"](tf.stack([model_input(image) for image in exported["images"]]), training=False)
    np.testing.assert_allclose(probabilities, expected.numpy(), rtol=0, atol=1e-5)

    # What the rule gives here: every enrolled signer's images, fitted on or not, are named; the strangers
    # (cyan like the rare signers, and a blank page: no pooled feature at all) are nobody enrolled.
    true = np.array(exported["true"], dtype=object)
    enrolled = true != None  # noqa: E711 (elementwise)
    assert list(labels[enrolled]) == list(true[enrolled])
    assert list(labels[~enrolled]) == [UNKNOWN_LABEL] * int((~enrolled).sum()), best[~enrolled]


def test_verification_scores_signature_is_the_numpy_models_score_for_every_signer(exported):
    verification = exported["verification"]
    examples = [tf.train.Example(features=tf.train.Features(feature={
        IMAGE_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))})).SerializeToString()
        for image in exported["images"]]
    served = _call(exported["export_dir"], VERIFICATION_SCORES_SIGNATURE, **{CLASSIFY_INPUT: examples})
    np.testing.assert_allclose(served[VERIFICATION_SCORES_OUTPUT], all_scores(verification, exported["features"]),
                               rtol=0, atol=1e-4)
    signers = [[s.decode() for s in row] for row in served[VERIFICATION_SIGNERS_OUTPUT]]
    assert signers == [list(verification.signers)] * len(examples)
    np.testing.assert_array_equal(served[VERIFICATION_THRESHOLD_OUTPUT], np.float32(verification.threshold))


def test_metadata_says_open_set_is_on_with_the_threshold(exported):
    metadata = json.loads((exported["export_dir"] / MODEL_METADATA_FILE).read_text())
    assert metadata["verification"]["open_set"] is True
    assert metadata["verification"]["unknown_label"] == UNKNOWN_LABEL
    assert metadata["verification"]["threshold"] == exported["verification"].threshold
    assert metadata["verification"]["open_set_threshold"] == exported["verification"].open_set_threshold
    assert metadata["verification"]["open_set_rule"] == "nearest-references-cosine"
    assert set(metadata["signatures"]) >= {PREDICT_LABEL_SIGNATURE, VERIFY_SIGNATURE, VERIFICATION_SCORES_SIGNATURE}
    closed = model_metadata(exported["labels"], CONFIG.image_size, CONFIG.preprocessing, exported["verification"],
                            open_set=False)
    assert closed["verification"]["open_set"] is False and "unknown_label" not in closed["verification"]


def test_open_set_needs_verifiers_and_a_free_label(exported, tmp_path):
    model, labels = exported["model"], exported["labels"]
    with pytest.raises(ValueError, match="needs a verification model"):
        export_serving_model(model, labels, CONFIG.image_size, tmp_path / "a", open_set=True)
    with pytest.raises(ValueError, match="'unknown'"):
        export_serving_model(model, [*labels[:-1], UNKNOWN_LABEL], CONFIG.image_size, tmp_path / "b",
                             verification=exported["verification"])


def test_plot_det_draws_the_eval_scores_the_trainer_has(exported, tmp_path):
    """What the Trainer hands plot_det: the eval images' calibrated scores from VerificationModel in numpy,
    genuine (each image for its own signer) and random forgeries (for every other enrolled signer)."""
    verification = exported["verification"]
    enrolled = np.array([true is not None for true in exported["true"]])
    labels = [true for true in exported["true"] if true is not None]
    # The strangers stand in for forgeries claimed as the first signer.
    genuine, forgeries = verification_trials(verification, labels, exported["features"][enrolled],
                                             [verification.signers[0]] * int((~enrolled).sum()),
                                             exported["features"][~enrolled])
    scores = all_scores(verification, exported["features"])
    claimed = np.array([[signer == true for signer in verification.signers] for true in labels])
    assert sorted(genuine) == sorted(scores[enrolled][claimed])
    assert sorted(forgeries["random"]) == sorted(scores[enrolled][~claimed])
    assert sorted(forgeries["skilled"]) == sorted(scores[~enrolled][:, 0])
    path = plot_det(genuine, forgeries, verification.threshold, tmp_path / "det.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    # The operating point drawn is the numpy model's: every genuine image accepted, no forgery.
    far, frr = error_rates(genuine, forgeries["random"], np.array([verification.threshold]))
    assert (far[0], frr[0]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="at least one kind"):
        plot_det(genuine, {"skilled": []}, verification.threshold, tmp_path / "none.png")
