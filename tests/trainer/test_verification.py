"""Verification: pooled features, writer-dependent SVMs, their export as the `verify` signature, and its clients.

One tiny classifier (a convolution, the global average pooling verification reads,
a softmax head) on synthetic signatures of four signers from data/generate_signatures.py
is embedded, fitted (fit_for_classifier, as the Trainer runs it) and exported once
through the real export code with the default "scan" preprocessing. The exported
graph is then checked against scikit-learn's own SVC fitted independently on the
same features, and served by signflow's real server. Only the learning test trains.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorflow as tf
from sklearn.svm import SVC

from components.trainer import data, train
from components.trainer.config import VERIFICATION_LINEAR, TrainerConfig
from components.trainer.embeddings import Embeddings, embed_images
from components.trainer.export import _Verifier, export_serving_model
from components.trainer.verification import (
    NotEnoughSigners,
    SignerCounts,
    VerificationSettings,
    equal_error_rate,
    fit_for_classifier,
    fit_verification,
    l2_normalize,
)
from serving.client import GrpcClient, RestClient, ServerError
from serving.contract import (
    CLAIMED_SIGNER_INPUT,
    GENUINE_OUTPUT,
    IMAGE_INPUT,
    MODEL_METADATA_FILE,
    THRESHOLD_OUTPUT,
    VERIFY_SCORE_OUTPUT,
    VERIFY_SIGNATURE,
)
from serving.server import ServerThread
from tests.serving.conftest import install_version, make_settings
from tests.trainer.helpers import REPO, generator, rendered_items, split_pattern, to_example, write_splits

SIGNERS = range(4)
CONFIG = TrainerConfig(image_height=72, image_width=144, batch_size=8, seed=1)
MODEL_NAME = "signflow"


def tiny_classifier(num_labels: int, seed: int = 0) -> tf.keras.Model:
    """The classifier's shape in miniature: features -> global average pooling -> dropout -> softmax."""
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input((*CONFIG.image_size, 3))
    x = tf.keras.layers.Conv2D(16, 5, strides=2, activation="relu")(inputs)
    x = tf.keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = tf.keras.layers.Dropout(0.2)(x)
    return tf.keras.Model(inputs, tf.keras.layers.Dense(num_labels, activation="softmax")(x))


def splits_of(root: Path, per_signer: int) -> dict:
    splits = write_splits(root, rendered_items(SIGNERS, per_signer=per_signer), eval_every=5)
    return {"splits": splits, "train_files": data.expand_files(split_pattern(root, "train")),
            "labels": sorted({label for _, label in splits["train"]})}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("verification")
    run = splits_of(root, per_signer=10)  # 8 training references and 2 eval images per signer
    model = tiny_classifier(len(run["labels"]))
    trainer_step = fit_for_classifier(model, run["train_files"], CONFIG)
    eval_images = [image for image, _ in run["splits"]["eval"]]
    export_dir = export_serving_model(model, run["labels"], CONFIG.image_size, root / "export",
                                      warmup_images=eval_images[:2], preprocessing=CONFIG.preprocessing,
                                      verification=trainer_step.model)
    return {**run, "root": root, "model": model, "verification": trainer_step.model, "summary": trainer_step.summary,
            "train_features": trainer_step.embeddings, "export_dir": export_dir, "eval_images": eval_images,
            "eval_features": embed_images(model, eval_images, CONFIG),
            "eval_labels": [label for _, label in run["splits"]["eval"]]}


@pytest.fixture(scope="module")
def verify_signature(fitted):
    return tf.saved_model.load(str(fitted["export_dir"])).signatures[VERIFY_SIGNATURE]


def signflow(*args: str) -> subprocess.CompletedProcess:
    """The `signflow` command line in a process of its own."""
    python = REPO / ".venv" / "bin" / "python"
    return subprocess.run([str(python if python.exists() else sys.executable), "-m", "pipeline.cli", *args], cwd=REPO,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=180)


def sklearn_scores(train: Embeddings, verification, vectors: np.ndarray, signer: str) -> np.ndarray:
    """scikit-learn's own SVC for `signer`, fitted on the same normalised features with the chosen C and gamma,
    calibrated with the model's z-norm: what the exported score must be."""
    kernel = {"kernel": "linear"} if verification.kernel == VERIFICATION_LINEAR else {
        "kernel": "rbf", "gamma": verification.gamma}
    svc = SVC(C=verification.c, class_weight="balanced", **kernel).fit(
        l2_normalize(train.vectors), np.array(train.labels) == signer)
    j = verification.signers.index(signer)
    return (svc.decision_function(l2_normalize(vectors)) - verification.score_mean[j]) / verification.score_std[j]


def test_verify_signature_agrees_with_scikit_learn_on_every_eval_image_and_claim(fitted, verify_signature):
    verification, train_features, eval_features = (fitted[key] for key in ("verification", "train_features",
                                                                            "eval_features"))
    for signer in verification.signers:
        served = verify_signature(image_bytes=tf.constant(fitted["eval_images"]),
                                  claimed_signer=tf.constant([signer] * len(fitted["eval_images"])))
        expected = sklearn_scores(train_features, verification, eval_features, signer)
        np.testing.assert_allclose(served[VERIFY_SCORE_OUTPUT].numpy(), expected, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(served[GENUINE_OUTPUT].numpy(),
                                      served[VERIFY_SCORE_OUTPUT].numpy() >= np.float32(verification.threshold))
        np.testing.assert_array_equal(served[THRESHOLD_OUTPUT].numpy(), np.float32(verification.threshold))
    # Mixed claims in one request: each row is scored for its own claimed signer.
    mixed = verify_signature(image_bytes=tf.constant(fitted["eval_images"]),
                             claimed_signer=tf.constant(fitted["eval_labels"]))
    np.testing.assert_allclose(mixed[VERIFY_SCORE_OUTPUT].numpy(),
                               verification.score(eval_features, fitted["eval_labels"]), rtol=0, atol=1e-4)


def test_linear_kernel_scores_are_scikit_learns_decision_function(fitted):
    train_features, probes = fitted["train_features"], fitted["eval_features"]
    linear = fit_verification(train_features, VerificationSettings(kernel=VERIFICATION_LINEAR))
    assert linear.gamma is None and len(linear.grid) == len(CONFIG.verification_c_grid)
    for signer in linear.signers:
        np.testing.assert_allclose(linear.score(probes, [signer] * len(probes)),
                                   sklearn_scores(train_features, linear, probes, signer), rtol=0, atol=1e-8)


def test_unknown_claimed_signer_fails_the_call_with_invalid_argument_naming_it(fitted, verify_signature):
    images = tf.constant(fitted["eval_images"][:2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="not enrolled for verification: nobody "):
        verify_signature(image_bytes=images, claimed_signer=tf.constant([fitted["labels"][0], "nobody"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="one entry per image"):
        verify_signature(image_bytes=images, claimed_signer=tf.constant([fitted["labels"][0]]))


def test_metadata_lists_verify_with_its_threshold_and_summary_has_the_counts(fitted):
    verification, summary = fitted["verification"], fitted["summary"]
    metadata = json.loads((fitted["export_dir"] / MODEL_METADATA_FILE).read_text())
    assert metadata["signatures"][VERIFY_SIGNATURE] == {
        "method": "tensorflow/serving/predict",
        "inputs": {IMAGE_INPUT: "string [N]", CLAIMED_SIGNER_INPUT: "string [N]"},
        "outputs": {VERIFY_SCORE_OUTPUT: "float32 [N]", GENUINE_OUTPUT: "bool [N]", THRESHOLD_OUTPUT: "float32 [N]"},
    }
    assert metadata["verification"]["threshold"] == verification.threshold
    assert metadata["verification"]["signers"] == fitted["labels"]
    assert metadata["verification"]["calibration"] == "z-norm"
    # What report/summary.json gets: the threshold, the cross-validated EER, per-signer counts.
    json.dumps(summary)  # plain JSON
    assert summary["threshold"] == verification.threshold and 0.0 <= summary["cv_eer"] <= 1.0
    assert summary["per_signer"][fitted["labels"][0]]["references"] == 8
    assert summary["per_signer"][fitted["labels"][0]]["negatives"] == 24
    assert summary["per_signer"][fitted["labels"][0]]["support_vectors"] >= 1
    assert len(summary["grid"]) == len(CONFIG.verification_c_grid) * len(CONFIG.verification_gamma_grid)


def test_served_verify_answers_over_rest_and_grpc_and_refuses_an_unknown_signer_with_400(
        fitted, verify_signature, tmp_path):
    install_version(fitted["export_dir"], tmp_path / MODEL_NAME, 1)  # the warmup file replays a verify request
    server = ServerThread(make_settings(model_name=MODEL_NAME, model_base_path=str(tmp_path / MODEL_NAME))).start()
    try:
        images, signer = fitted["eval_images"][:3], fitted["labels"][1]
        expected = verify_signature(image_bytes=tf.constant(images), claimed_signer=tf.constant([signer] * 3))
        with RestClient(server.rest_url, MODEL_NAME) as rest, GrpcClient(server.grpc_target, MODEL_NAME) as grpc:
            for client in (rest, grpc):
                verdicts = client.verify(images, signer)
                assert [v.genuine for v in verdicts] == list(expected[GENUINE_OUTPUT].numpy())
                np.testing.assert_allclose([v.score for v in verdicts], expected[VERIFY_SCORE_OUTPUT].numpy(),
                                           rtol=0, atol=1e-5)
                assert [v.threshold for v in verdicts] == pytest.approx([fitted["verification"].threshold] * 3)
            with pytest.raises(ServerError) as refused:
                grpc.verify(images[:1], "nobody")
            assert refused.value.status == "INVALID_ARGUMENT" and "verification: nobody " in refused.value.message

        # TF Serving's REST error: 400 and {"error": "..."} naming the signer, never a 500.
        body = {"signature_name": VERIFY_SIGNATURE,
                "instances": [{IMAGE_INPUT: {"b64": base64.b64encode(images[0]).decode()},
                               CLAIMED_SIGNER_INPUT: "nobody"}]}
        answer = requests.post(f"{server.rest_url}/v1/models/{MODEL_NAME}:predict", json=body, timeout=60)
        assert answer.status_code == 400
        assert list(answer.json()) == ["error"] and "not enrolled for verification: nobody " in answer.json()["error"]

        # `signflow verify --signer NAME FILE --server URL`, as a user runs it.
        files = []
        for i, image in enumerate(images[:2]):
            files.append(tmp_path / f"scan{i}.png")
            files[-1].write_bytes(image)
        result = signflow("verify", "--signer", signer, *map(str, files), "--server", server.rest_url,
                          "--model", MODEL_NAME)
        assert result.returncode == 0, result.stderr
        threshold = fitted["verification"].threshold
        assert result.stdout.splitlines() == [
            f"{path}: {'genuine' if genuine else 'forged'} (claimed {signer}; score {score:.4f}, threshold {threshold:.4f})"
            for path, genuine, score in zip(files, expected[GENUINE_OUTPUT].numpy(), expected[VERIFY_SCORE_OUTPUT].numpy())]
        result = signflow("verify", "--signer", "nobody", str(files[0]), "--server", server.rest_url,
                          "--model", MODEL_NAME)
        assert result.returncode == 1 and "error: server answered 400: " in result.stderr
        assert "not enrolled for verification: nobody " in result.stderr
    finally:
        server.stop()


def test_in_a_batch_only_the_verify_request_with_bad_data_fails(fitted, verify_signature, tmp_path):
    """With batching, concurrent `verify` requests share one graph call. A claim of a signer not enrolled or an
    image damaged past its header makes the graph refuse the whole batch; the batch then runs again request by
    request, so only the request that brought the bad data gets its 400, worded for it."""
    import concurrent.futures

    install_version(fitted["export_dir"], tmp_path / MODEL_NAME, 1)
    batching = tmp_path / "batching.txt"
    # A batch runs only when it is full (the timeout never fires within the test): each pair below is one batch.
    batching.write_text("max_batch_size { value: 2 } batch_timeout_micros { value: 600000000 }")
    settings = make_settings(model_name=MODEL_NAME, model_base_path=str(tmp_path / MODEL_NAME), enable_batching=True,
                             batching_parameters_file=str(batching), rest_api_timeout_in_ms=0)
    images, signer = fitted["eval_images"], fitted["labels"][0]
    truncated = images[1][:len(images[1]) // 2]

    def post(instance: tuple[bytes, str]) -> requests.Response:
        image, claimed = instance
        body = {"signature_name": VERIFY_SIGNATURE,
                "instances": [{IMAGE_INPUT: {"b64": base64.b64encode(image).decode()}, CLAIMED_SIGNER_INPUT: claimed}]}
        return requests.post(f"{server.rest_url}/v1/models/{MODEL_NAME}:predict", json=body, timeout=120)

    expected = verify_signature(image_bytes=tf.constant(images[:1]), claimed_signer=tf.constant([signer]))
    with ServerThread(settings) as server, concurrent.futures.ThreadPoolExecutor(2) as pool:
        for bad, message in (((images[0], "nobody"), "not enrolled for verification: nobody "),
                             ((truncated, signer), "Input image_bytes, element 0: not an acceptable image")):
            good, refused = pool.map(post, [(images[0], signer), bad])
            assert (good.status_code, refused.status_code) == (200, 400), (good.text, refused.text)
            assert message in refused.json()["error"]
            assert good.json()["predictions"][0][VERIFY_SCORE_OUTPUT] == pytest.approx(
                float(expected[VERIFY_SCORE_OUTPUT][0]), abs=1e-5)


def test_signers_with_too_few_references_are_not_enrolled_and_one_signer_is_not_enough():
    rng = np.random.default_rng(0)
    vectors = rng.random((7, 5)).astype(np.float32)
    keys = tuple(str(i) for i in range(7))
    model = fit_verification(Embeddings(keys, ("a", "a", "a", "b", "b", "b", "c"), vectors))
    assert model.signers == ("a", "b") and set(model.skipped) == {"c"}
    assert model.counts["a"].references == 3 and model.counts["a"].negatives == 4  # c's image is a negative
    with pytest.raises(ValueError, match="not enrolled for verification: c"):
        model.score(vectors[:1], ["c"])
    with pytest.raises(NotEnoughSigners, match="1 signer"):
        fit_verification(Embeddings(keys, ("a", "a", "a", "a", "b", "c", "d"), vectors))


def test_extra_negatives_of_a_signer_join_its_training():
    """The hook for skilled forgeries: vectors given as a signer's extra negatives score lower afterwards."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16)) * 3
    vectors = np.concatenate([centre + rng.normal(size=(6, 16)) for centre in centres]).astype(np.float32)
    labels = tuple(np.repeat(["a", "b", "c", "d"], 6))
    features = Embeddings(tuple(map(str, range(24))), labels, vectors)
    forgeries = (0.6 * centres[0] + 0.4 * rng.normal(size=(8, 16)) * 3).astype(np.float32)  # near a, not a
    # One grid point for both: with forgeries the search weighs them and may choose another (C, gamma),
    # whose scores are on another scale.
    settings = VerificationSettings(c_grid=(1.0,), gamma_grid=(0.5,))
    plain = fit_verification(features, settings)
    hardened = fit_verification(features, settings, extra_negatives={"a": forgeries})
    assert hardened.counts["a"].extra_negatives == 8 and hardened.counts["b"].extra_negatives == 0
    assert hardened.score(forgeries, ["a"] * 8).mean() < plain.score(forgeries, ["a"] * 8).mean()


def clustered_signers(seed: int, forgeries_per_signer: int = 0) -> tuple[Embeddings, dict[str, np.ndarray]]:
    """Four signers as clusters of 8 feature vectors; each signer's "skilled forgeries" lie between its own
    centre and noise, nearer to it than any other signer's images."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 16)) * 3
    vectors = np.concatenate([centre + rng.normal(size=(8, 16)) for centre in centres]).astype(np.float32)
    signers = ["a", "b", "c", "d"]
    features = Embeddings(tuple(map(str, range(32))), tuple(np.repeat(signers, 8)), vectors)
    forged = {signer: (0.7 * centre + rng.normal(size=(forgeries_per_signer, 16)) * 1.5).astype(np.float32)
              for signer, centre in zip(signers, centres)}
    return features, forged


def test_with_skilled_forgeries_the_grid_weighs_them_and_the_threshold_is_their_equal_error_point():
    features, forged = clustered_signers(2, forgeries_per_signer=6)
    skilled = fit_verification(features, extra_negatives=forged)
    random = fit_verification(features, VerificationSettings(operating_point="random"), extra_negatives=forged)
    assert skilled.operating_point == "skilled" and random.operating_point == "random"
    # The criterion: the mean of the random- and skilled-forgery EERs; the chosen point is the grid's best.
    for point in skilled.grid:
        assert point.cv_skilled_eer is not None
        assert point.cv_eer == pytest.approx((point.cv_random_eer + point.cv_skilled_eer) / 2)
    assert skilled.cv_eer == min(point.cv_eer for point in skilled.grid)
    assert (skilled.c, skilled.gamma) == (random.c, random.gamma)  # the operating point moves the threshold only
    # Skilled forgeries sit nearer the references than other signers do: their equal-error point is higher.
    assert skilled.threshold > random.threshold
    # The open set tells writers apart: its cut does not follow the skilled point.
    assert skilled.open_set_threshold == random.open_set_threshold
    assert skilled.metadata()["operating_point"] == "skilled"
    assert skilled.metadata()["cv_skilled_eer"] == skilled.cv_skilled_eer

    # Without skilled forgeries there is no skilled point: random forgeries decide the grid and the threshold.
    plain = fit_verification(features)
    assert plain.operating_point == "random" and plain.cv_skilled_eer is None
    assert all(point.cv_eer == point.cv_random_eer for point in plain.grid)


def test_stranger_pages_are_a_negative_of_every_signer():
    features, _ = clustered_signers(3)
    rng = np.random.default_rng(4)
    # Pages nobody signed, away from every signer: without them an RBF decision there is only the intercept.
    strangers = (rng.normal(size=(6, 16)) * 3).astype(np.float32)
    plain = fit_verification(features)
    guarded = fit_verification(features, strangers=strangers)
    for signer in guarded.signers:
        assert guarded.counts[signer].negatives == plain.counts[signer].negatives + 6
        assert (guarded.score(strangers, [signer] * 6) < guarded.threshold).all()
        assert guarded.score(strangers, [signer] * 6).mean() < plain.score(strangers, [signer] * 6).mean()
    with pytest.raises(ValueError, match=r"strangers must be \[M, 16\]"):
        fit_verification(features, strangers=strangers[:, :8])


def test_the_train_splits_forgeries_are_their_claimed_signers_extra_negatives(fitted, tmp_path):
    """Examples with genuine == 0 (a forgery claimed as its label) never count as references; fit_for_classifier
    hands them to the claimed signer's SVM as extra negatives."""
    gen = generator()
    target = gen.label_for(0)
    path = tmp_path / "Split-train" / "data_tfrecord-00000-of-00001.gz"
    path.parent.mkdir()
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for image, label in rendered_items(SIGNERS, per_signer=4):
            writer.write(to_example(image, label).SerializeToString())
        for forger in (1, 2, 3):
            forgery = to_example(gen.render_forgery(7, 0, forger, 0), target)
            forgery.features.feature["genuine"].int64_list.value.append(0)
            writer.write(forgery.SerializeToString())
    step = fit_for_classifier(fitted["model"], [str(path)], CONFIG)
    assert len(step.embeddings) == 16 and target in step.model.signers
    assert step.model.counts[target] == SignerCounts(references=4, negatives=12, extra_negatives=3,
                                                     support_vectors=step.model.counts[target].support_vectors)
    assert {step.model.counts[label].extra_negatives for label in step.model.signers if label != target} == {0}
    assert step.summary["per_signer"][target]["extra_negatives"] == 3


def test_equal_error_rate_and_its_threshold():
    eer, threshold = equal_error_rate(np.array([2.0, 3.0, 4.0]), np.array([-1.0, 0.0, 1.0]))
    assert eer == 0.0 and threshold == 1.5  # the middle of the gap between the classes
    eer, threshold = equal_error_rate(np.array([0.5, 2.0, 3.0, 4.0]), np.array([-1.0, 0.0, 1.0, 2.5]))
    assert eer == pytest.approx(0.25) and 1.0 <= threshold <= 2.0


def test_embeddings_are_keyed_by_sha256_and_round_trip_through_npz(fitted, tmp_path):
    features = fitted["train_features"]
    assert len(features) == len(fitted["splits"]["train"]) and features.vectors.dtype == np.float32
    assert features.dim == 32 and len(set(features.sha256)) == len(features)
    # The same rows as the images' own forward pass (a different batching of the same graph).
    by_key = dict(zip(features.sha256, features.vectors))
    images = [image for image, _ in fitted["splits"]["train"][:4]]
    np.testing.assert_allclose(embed_images(fitted["model"], images, CONFIG),
                               [by_key[hashlib.sha256(image).hexdigest()] for image in images], rtol=1e-5, atol=1e-6)
    again = Embeddings.load(features.save(tmp_path / "train.npz"))
    assert again.sha256 == features.sha256 and again.labels == features.labels
    np.testing.assert_array_equal(again.vectors, features.vectors)


def test_config_carries_verification_settings_through_json():
    config = TrainerConfig(verification_c_grid=[1, 5], verification_kernel="linear")
    assert TrainerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert VerificationSettings.from_config(config).c_grid == (1.0, 5.0)
    with pytest.raises(ValueError, match="verification_kernel"):
        TrainerConfig(verification_kernel="poly")
    with pytest.raises(ValueError, match="verification_min_references"):
        TrainerConfig(verification_min_references=1)
    with pytest.raises(ValueError, match="verification_operating_point"):
        TrainerConfig(verification_operating_point="both")
    assert VerificationSettings.from_config(TrainerConfig(verification_operating_point="random")).operating_point \
        == "random"


@pytest.mark.slow
def test_after_training_a_signers_own_images_score_higher_than_other_signers(tmp_path):
    """On held-out images: each signer's own signatures score above the other signers' claimed as theirs."""
    run = splits_of(tmp_path, per_signer=15)  # 12 references and 3 held-out images per signer
    model = tiny_classifier(len(run["labels"]), seed=3)
    train.compile_classifier(model, 3e-3, CONFIG.label_smoothing)
    model.fit(data.training_dataset(run["train_files"], run["labels"], CONFIG), epochs=4, steps_per_epoch=10,
              verbose=0)
    verification = fit_for_classifier(model, run["train_files"], CONFIG).model
    images = [image for image, _ in run["splits"]["eval"]]
    owners = np.array([label for _, label in run["splits"]["eval"]])
    features = embed_images(model, images, CONFIG)
    margins = []
    for signer in verification.signers:
        scores = verification.score(features, [signer] * len(images))
        margins.append(scores[owners == signer].mean() - scores[owners != signer].mean())
    assert np.mean(margins) > 1.0, f"own minus others' mean calibrated score per signer: {margins}"
    assert min(margins) > 0.0, f"own minus others' mean calibrated score per signer: {margins}"


def test_open_set_similarity_is_the_mean_of_the_nearest_references_and_the_cut_their_left_out_quantile():
    features, _ = clustered_signers(3)
    # Signer "d" (rows 24-31) keeps 2 references: fewer than the 3 neighbours asked for.
    keep = slice(0, 26)
    features = Embeddings(features.sha256[keep], features.labels[keep], features.vectors[keep])
    settings = VerificationSettings(open_set_neighbours=3, open_set_acceptance=0.9)
    verification = fit_verification(features, settings)
    labels = np.array(features.labels)
    unit = features.vectors / np.linalg.norm(features.vectors, axis=1, keepdims=True)
    # The references are every enrolled signer's training rows, unit length, with their signer.
    assert len(verification.references) == len(features)
    for j, signer in enumerate(verification.signers):
        np.testing.assert_allclose(verification.references[verification.reference_signer == j], unit[labels == signer],
                                   rtol=0, atol=1e-6)

    def brute_force(vector: np.ndarray, signer: str, leave_out: int | None = None) -> float:
        rows = [i for i in np.flatnonzero(labels == signer) if i != leave_out]
        cosines = sorted((float(unit[i] @ vector) for i in rows), reverse=True)
        return float(np.mean(cosines[:3]))

    rng = np.random.default_rng(7)
    probes = rng.normal(size=(6, features.dim)).astype(np.float32) + features.vectors[[0, 9, 17, 24, 25, 25]]
    for signer in verification.signers:
        expected = [brute_force(probe / np.linalg.norm(probe), signer) for probe in probes]
        np.testing.assert_allclose(verification.open_set_similarity(probes, [signer] * len(probes)), expected,
                                   rtol=0, atol=1e-6)
    # The graph predict_label runs computes the same, signer "d" with 2 references included.
    index = np.tile(np.arange(len(verification.signers)), len(probes))
    graph = _Verifier(verification).open_set_similarity(tf.constant(np.repeat(probes, len(verification.signers), 0)),
                                                        tf.constant(index))
    np.testing.assert_allclose(graph.numpy(), verification.open_set_similarity(
        np.repeat(probes, len(verification.signers), 0), [verification.signers[j] for j in index]),
        rtol=0, atol=1e-5)
    # The cut: what 90% of the references reach against the rest of their signer's references.
    left_out = [brute_force(unit[i], labels[i], leave_out=i) for i in range(len(features))]
    assert verification.open_set_threshold == pytest.approx(float(np.quantile(left_out, 0.1)), abs=1e-6)
    assert verification.metadata()["open_set_neighbours"] == 3
    with pytest.raises(ValueError, match="open_set_neighbours"):
        VerificationSettings(open_set_neighbours=0)

