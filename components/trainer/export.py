"""Export a trained classifier as the SavedModel that TF Serving (and signflow's server) loads.

Layout written under `export_dir` (TF Serving's version folder contents):

    saved_model.pb, variables/
    assets/labels.txt                          one signer id per line, in `probabilities` order
    assets.extra/signflow_model.json           the model's metadata: labels (in `probabilities` order),
                                               image size, signatures (contract.MODEL_METADATA_FILE)
    assets.extra/tf_serving_warmup_requests    TF Serving's warmup log (PredictionLog TFRecord)

Signatures (tf.functions: TF 2.16 has no Estimator export):

    serving_default  (tensorflow/serving/predict)
        image_bytes: string [N]  raw PNG/JPEG/GIF/BMP file bytes
        -> probabilities: float32 [N, K]
           (the only output, so REST :predict answers {"predictions": [[p0, p1, ...]]}, one list per image)
    predict_label    (tensorflow/serving/predict, what signflow's client, CLI, batch prediction and serving
                      check call)
        image_bytes: string [N]
        -> label: string [N], score: float32 [N] (max of the row), probabilities: float32 [N, K]
        Open set (`open_set`, on by default with `verification`): when the image's mean cosine similarity
        to the nearest training references of the softmax's top signer is under the open-set threshold
        (metadata "open_set_threshold": the similarity TrainerConfig.open_set_acceptance of the training
        references reach, each left out of its signer's in turn; see verification.py), the answer is label
        "unknown" (contract.UNKNOWN_LABEL) with score = that similarity (in [-1, 1], not a probability).
        Any other image keeps the answer above: the softmax's top label and its probability (a top label
        too rare to be enrolled included). probabilities are the softmax's on every row.
    classify         (tensorflow/serving/classify, for TF Serving's Classify API and the Evaluator)
        inputs: string [N]  serialized tf.Example, image bytes under "image" (the
                            seed's classify request) or "image_raw" (ExampleGen's)
        -> classes: string [N, K], scores: float32 [N, K]
    verify           (tensorflow/serving/predict; only with `verification`, see verification.py)
        image_bytes: string [N], claimed_signer: string [N]
        -> score: float32 [N] (calibrated), genuine: bool [N] (score >= threshold),
           threshold: float32 [N] (the same on every row)
        A claimed signer that is not enrolled fails the call with INVALID_ARGUMENT naming it.
    transformed_features  (tensorflow/serving/predict; only with `verification`; for the Evaluator)
        inputs: string [N]  serialized tf.Example, the image as classify reads it
        -> verification_scores: float32 [N, S] (calibrated, each enrolled signer), verification_signers:
           string [N, S] (the columns' signers), verification_threshold: float32 [N],
           probabilities: float32 [N, K] and classes: string [N, K] (classify's scores and classes, so the
           Evaluator gets a model's predictions and verification scores from one pass of the network, see
           pipeline/definition/eval_predictions.py)
        The name is TFMA's default for transformed features: the Evaluator calls it when a model has it (and
        skips a model without it), which is how verification error rates are measured inside TFMA while
        classify keeps the two outputs TF Serving's Classify API allows (it refuses a third).

The verify signature's SVMs are variables of the SavedModel (so they live in
variables/, not in the graph), under `verifier` (a tf.Module):

    signers          string  [S]       enrolled signers, sorted
    support_vectors  float64 [U, D]    distinct unit-length support vectors, shared by all signers' SVMs
    sv_index         int32   [T]       signer j's SVM: entries offsets[j]:offsets[j+1] of sv_index (rows of
    dual_coef        float64 [T]         support_vectors) and dual_coef
    offsets          int64   [S + 1]
    intercept, score_mean, score_std   float64 [S]   the SVM's intercept; its z-norm calibration
    gamma            float64 []        the RBF kernel's (0 for the linear kernel)
    threshold        float32 []
    open_set_threshold  float32 []     predict_label's open set (verification.py):
    references          float32 [R, D] every enrolled signer's unit-length training references,
    reference_signer    int32   [R]    each one's signer (position in signers),
    reference_count     int32   [S]    how many each signer has

The image goes through the same preprocessing and backbone as the other
signatures; its pooled features (before dropout and head) are L2-normalised,
then f = sum dual_coef * k(x, sv) + intercept over the claimed signer's entries
(one kernel row against all U vectors, a matrix product, then a gather), and
score = (f - score_mean) / score_std. The kernel runs in float64: dual
coefficients reach C times the class weight, and float32 would cost the
agreement with scikit-learn's decision function.

A batch holding bytes that do not decode fails as a whole (tf.io.decode_image
raises): no image in it gets a silently wrong answer. The server validates every
image before it joins a shared batch, so one client's bad bytes never fail
another client's request.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model import fingerprinting_utils
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
# NOTE: tf-keras has no public switch for this outside Model.save(save_traces=False); see _keras_traces_off.
from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope

from components import storage
from components.trainer.config import PREPROCESS_SCAN, VERIFICATION_LINEAR
from components.trainer.embeddings import feature_model
from components.trainer.preprocess import image_to_model_input
from components.trainer.verification import NORM_EPSILON, VerificationModel
from serving.contract import (
    CLAIMED_SIGNER_INPUT,
    CLASSES_OUTPUT,
    CLASSIFY_INPUT,
    CLASSIFY_METHOD,
    CLASSIFY_SIGNATURE,
    GENUINE_OUTPUT,
    IMAGE_FEATURE,
    IMAGE_INPUT,
    LABEL_OUTPUT,
    MODEL_METADATA_FILE,
    PREDICT_LABEL_SIGNATURE,
    PREDICT_METHOD,
    PROBABILITIES_OUTPUT,
    REQUEST_IMAGE_FEATURE,
    SCORE_OUTPUT,
    SCORES_OUTPUT,
    SERVING_SIGNATURE,
    THRESHOLD_OUTPUT,
    UNKNOWN_LABEL,
    VERIFICATION_SCORES_OUTPUT,
    VERIFICATION_SCORES_SIGNATURE,
    VERIFICATION_SIGNERS_OUTPUT,
    VERIFICATION_THRESHOLD_OUTPUT,
    VERIFY_SCORE_OUTPUT,
    VERIFY_SIGNATURE,
    write_atomic,
)
from serving.layout import LABELS_FILE, SAVED_MODEL_FILE, WARMUP_FILE

METADATA_FORMAT = 1
# Eval images the Trainer puts in the warmup file. One: the model's input size is fixed, so a signature's
# first call is what warms it, and each further image is a steady call that every load and both backends of
# the serving check would pay for nothing.
WARMUP_IMAGES = 1


class _Verifier(tf.Module):
    """The fitted SVMs as variables, and the calibrated score of features for claimed signers (layout: above)."""

    def __init__(self, verification: VerificationModel):
        super().__init__()

        def constant(value, dtype) -> tf.Variable:
            return tf.Variable(tf.constant(value, dtype), trainable=False)

        self._linear = verification.kernel == VERIFICATION_LINEAR
        self._count = len(verification.signers)
        self.signers = constant(list(verification.signers), tf.string)
        self.support_vectors = constant(verification.support_vectors, tf.float64)
        self.sv_index = constant(verification.sv_index, tf.int32)
        self.dual_coef = constant(verification.dual_coef, tf.float64)
        self.offsets = constant(verification.offsets, tf.int64)
        self.intercept = constant(verification.intercept, tf.float64)
        self.score_mean = constant(verification.score_mean, tf.float64)
        self.score_std = constant(verification.score_std, tf.float64)
        self.gamma = constant(verification.gamma or 0.0, tf.float64)
        self.threshold = constant(verification.threshold, tf.float32)
        self.open_set_threshold = constant(verification.open_set_threshold, tf.float32)
        self.references = constant(verification.references, tf.float32)
        self.reference_signer = constant(verification.reference_signer, tf.int32)
        self.reference_count = constant(np.bincount(verification.reference_signer, minlength=self._count), tf.int32)
        # tf.math.top_k takes at most as many as there are columns.
        self._neighbours = min(verification.open_set_neighbours, len(verification.reference_signer))

    def signer_index(self, claimed_signer: tf.Tensor) -> tuple[tf.Tensor, tf.Operation]:
        """Each claimed signer's position in `signers`, and the assertion that every one is enrolled."""
        matches = tf.equal(tf.expand_dims(claimed_signer, 1), tf.expand_dims(self.signers, 0))
        enrolled = tf.reduce_any(matches, axis=1)
        unknown, _ = tf.unique(tf.boolean_mask(claimed_signer, tf.logical_not(enrolled)))
        message = tf.strings.join([
            "claimed_signer not enrolled for verification: ",
            # NOTE: no quotes around the names: the assertion's message C-escapes quotes (and non-ASCII bytes).
            tf.strings.reduce_join(unknown, separator=", "),
            f" (this model verifies {self._count} signers, listed in {MODEL_METADATA_FILE})",
        ])
        check = tf.debugging.Assert(tf.reduce_all(enrolled), [message])
        return tf.argmax(tf.cast(matches, tf.int32), axis=1), check

    def _kernel(self, features: tf.Tensor) -> tf.Tensor:
        """k(x_i, v_u) of the unit-length `features` [N, D] against every support vector (float64 [N, U])."""
        x = tf.cast(features, tf.float64)
        x = x / tf.maximum(tf.norm(x, axis=1, keepdims=True), NORM_EPSILON)
        dots = tf.matmul(x, self.support_vectors, transpose_b=True)  # [N, U]
        if self._linear:
            return dots
        squared = (tf.reduce_sum(x * x, axis=1, keepdims=True)
                   + tf.expand_dims(tf.reduce_sum(self.support_vectors * self.support_vectors, axis=1), 0)
                   - 2.0 * dots)
        return tf.exp(-self.gamma * tf.maximum(squared, 0.0))

    def open_set_similarity(self, features: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        """float32 [N]: the mean cosine similarity of pooled `features` [N, D] to the nearest references of the
        signers at `index` [N] (VerificationModel.open_set_similarity)."""
        x = features / tf.maximum(tf.norm(features, axis=1, keepdims=True), NORM_EPSILON)
        similarity = tf.matmul(x, self.references, transpose_b=True)  # [N, R]
        mine = tf.equal(tf.expand_dims(self.reference_signer, 0), tf.cast(tf.expand_dims(index, 1), tf.int32))
        # Cosines are >= -1: other signers' references, at -2, come after every one of the signer's own.
        nearest = tf.math.top_k(tf.where(mine, similarity, -2.0), k=self._neighbours).values  # [N, k]
        count = tf.minimum(tf.gather(self.reference_count, index), self._neighbours)
        used = tf.range(self._neighbours)[tf.newaxis, :] < tf.expand_dims(count, 1)
        return tf.reduce_sum(tf.where(used, nearest, 0.0), axis=1) / tf.cast(count, tf.float32)

    def score_all(self, features: tf.Tensor) -> tf.Tensor:
        """Calibrated scores (float64 [N, S]) of pooled `features` [N, D] for every enrolled signer, in `signers`
        order: the kernel rows times one [U, S] matrix holding each signer's dual coefficients in its column."""
        signer_of_entry = tf.ragged.range(self.offsets[:-1], self.offsets[1:]).value_rowids()
        # scatter_nd sums duplicates; there are none (a signer's SVM holds a support vector once).
        coefficients = tf.scatter_nd(
            tf.stack([tf.cast(self.sv_index, tf.int64), signer_of_entry], axis=1), self.dual_coef,
            tf.stack([tf.shape(self.support_vectors, out_type=tf.int64)[0], tf.cast(self._count, tf.int64)]))
        decision = tf.matmul(self._kernel(features), coefficients) + self.intercept
        return (decision - self.score_mean) / self.score_std

    def score(self, features: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        """Calibrated scores (float64 [N]) of pooled `features` [N, D] for the signers at `index` [N]."""
        kernel = self._kernel(features)
        # Row i uses entries offsets[index[i]] .. offsets[index[i] + 1] of sv_index and dual_coef.
        entries = tf.ragged.range(tf.gather(self.offsets, index), tf.gather(self.offsets, index + 1))
        row = entries.value_rowids()
        entry = entries.flat_values
        values = tf.gather(self.dual_coef, entry) * tf.gather_nd(
            kernel, tf.stack([row, tf.cast(tf.gather(self.sv_index, entry), tf.int64)], axis=1))
        decision = (tf.math.unsorted_segment_sum(values, row, tf.shape(index, out_type=tf.int64)[0])
                    + tf.gather(self.intercept, index))
        return (decision - tf.gather(self.score_mean, index)) / tf.gather(self.score_std, index)


class _ServingModule(tf.Module):
    """What gets saved: the Keras model, its labels, the serving functions, and the verifier if there is one."""

    def __init__(self, model: tf.keras.Model, labels: Sequence[str], image_size: tuple[int, int], labels_file: str,
                 preprocessing: str, verification: VerificationModel | None = None, open_set: bool = False):
        super().__init__()
        self._open_set = open_set
        self.model = model
        self.labels = tf.constant(list(labels), dtype=tf.string)
        # Tracked so SavedModel copies it into assets/ under its own name.
        self.labels_asset = tf.saved_model.Asset(labels_file)
        self._height, self._width = image_size
        self._preprocessing = preprocessing
        # Every signature calls the network through this one function: saved (and traced) once, instead
        # of Xception's graph once per signature, which was most of an export's time.
        self.forward = tf.function(self._network, autograph=False, input_signature=[
            tf.TensorSpec([None, self._height, self._width, 3], tf.float32)])
        # The image preprocessing likewise: traced once instead of once per signature (5 traces of its
        # map_fn were a third of an export). No function here has tensor-dependent Python control flow,
        # so none goes through AutoGraph.
        self.model_inputs = tf.function(self._model_inputs, autograph=False,
                                        input_signature=[tf.TensorSpec([None], tf.string)])
        if verification is not None:
            # The classifier's pooled features, sharing its weights (saved once).
            self.embedder = feature_model(model)
            # The softmax and the pooled features from one pass (open-set predict_label needs both).
            self.classifier_and_embedder = tf.keras.Model(model.inputs, [model.output, self.embedder.output])
            self.verifier = _Verifier(verification)
            # Each label's verifier (its position in verification.signers), -1 for labels not enrolled.
            position = {signer: j for j, signer in enumerate(verification.signers)}
            self.label_signer = tf.constant([position.get(label, -1) for label in labels], tf.int64)
            self.verify = tf.function(self._verify, autograph=False, input_signature=[
                tf.TensorSpec([None], tf.string, name=IMAGE_INPUT),
                tf.TensorSpec([None], tf.string, name=CLAIMED_SIGNER_INPUT),
            ])
            self.verification_scores = tf.function(self._verification_scores, autograph=False, input_signature=[
                tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUT)])

    def _network(self, images: tf.Tensor) -> tuple[tf.Tensor, ...]:
        if hasattr(self, "classifier_and_embedder"):
            return tuple(self.classifier_and_embedder(images, training=False))
        return (self.model(images, training=False),)

    def _model_inputs(self, image_bytes: tf.Tensor) -> tf.Tensor:
        return tf.map_fn(
            lambda one: image_to_model_input(one, self._height, self._width, self._preprocessing),
            image_bytes,
            fn_output_signature=tf.TensorSpec([self._height, self._width, 3], tf.float32),
        )

    def probabilities(self, image_bytes: tf.Tensor) -> tf.Tensor:
        return self.forward(self.model_inputs(image_bytes))[0]

    def _probabilities_and_scores(self, image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The softmax and every enrolled signer's calibrated score (float32 [N, S]), from one backbone pass."""
        probabilities, features = self.forward(self.model_inputs(image_bytes))
        return probabilities, tf.cast(self.verifier.score_all(features), tf.float32)

    def _verification_scores(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities, scores = self._probabilities_and_scores(example_images(inputs))
        count = tf.shape(scores)[0]
        return {
            CLASSES_OUTPUT: _repeat_row(self.labels, count),
            PROBABILITIES_OUTPUT: probabilities,
            VERIFICATION_SCORES_OUTPUT: scores,
            VERIFICATION_SIGNERS_OUTPUT: _repeat_row(self.verifier.signers, count),
            VERIFICATION_THRESHOLD_OUTPUT: tf.fill([count], tf.identity(self.verifier.threshold)),
        }

    def _verify(self, image_bytes: tf.Tensor, claimed_signer: tf.Tensor) -> dict[str, tf.Tensor]:
        same_size = tf.debugging.assert_equal(
            tf.size(image_bytes), tf.size(claimed_signer),
            message=f"{IMAGE_INPUT} and {CLAIMED_SIGNER_INPUT} must have one entry per image")
        index, enrolled = self.verifier.signer_index(claimed_signer)
        # NOTE: checked before the images are decoded and the backbone runs.
        with tf.control_dependencies([same_size, enrolled]):
            features = self.forward(self.model_inputs(image_bytes))[1]
        score = tf.cast(self.verifier.score(features, index), tf.float32)
        threshold = tf.identity(self.verifier.threshold)
        return {
            VERIFY_SCORE_OUTPUT: score,
            GENUINE_OUTPUT: score >= threshold,
            THRESHOLD_OUTPUT: tf.fill(tf.shape(score), threshold),
        }

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_INPUT)])
    def serve(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return {PROBABILITIES_OUTPUT: self.probabilities(image_bytes)}

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_INPUT)])
    def predict_label(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        if not self._open_set:
            probabilities = self.probabilities(image_bytes)
            return {
                LABEL_OUTPUT: tf.gather(self.labels, tf.argmax(probabilities, axis=1)),
                SCORE_OUTPUT: tf.reduce_max(probabilities, axis=1),
                PROBABILITIES_OUTPUT: probabilities,
            }
        probabilities, features = self.forward(self.model_inputs(image_bytes))
        top = tf.argmax(probabilities, axis=1)
        signer = tf.gather(self.label_signer, top)
        similarity = self.verifier.open_set_similarity(features, tf.maximum(signer, 0))
        # Open set: the image is not close enough to the softmax's signer's own references, so it is nobody
        # enrolled (a top label too rare to be enrolled stands as it is).
        unknown = tf.logical_and(signer >= 0, similarity < self.verifier.open_set_threshold)
        return {
            LABEL_OUTPUT: tf.where(unknown, tf.constant(UNKNOWN_LABEL), tf.gather(self.labels, top)),
            SCORE_OUTPUT: tf.where(unknown, similarity, tf.reduce_max(probabilities, axis=1)),
            PROBABILITIES_OUTPUT: probabilities,
        }

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUT)])
    def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        scores = self.probabilities(example_images(inputs))
        return {CLASSES_OUTPUT: _repeat_row(self.labels, tf.shape(scores)[0]), SCORES_OUTPUT: scores}


def _repeat_row(values: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """[count, len(values)]: `values` on every row (an output that names the columns, once per image)."""
    return tf.tile(tf.expand_dims(values, 0), [count, 1])


def example_images(inputs: tf.Tensor) -> tf.Tensor:
    """The image bytes of serialized tf.Examples: under "image" (a Classify request's) or else "image_raw"
    (ExampleGen's)."""
    features = tf.io.parse_example(
        inputs,
        {
            REQUEST_IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string, default_value=""),
            IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string, default_value=""),
        },
    )
    return tf.where(tf.strings.length(features[REQUEST_IMAGE_FEATURE]) > 0,
                    features[REQUEST_IMAGE_FEATURE], features[IMAGE_FEATURE])


def export_serving_model(
    model: tf.keras.Model,
    labels: Sequence[str],
    image_size: tuple[int, int],
    export_dir: str | os.PathLike,
    warmup_images: Sequence[bytes] = (),
    preprocessing: str = PREPROCESS_SCAN,
    verification: VerificationModel | None = None,
    open_set: bool | None = None,
    backbone: str | None = None,
) -> Path:
    """Write the serving SavedModel for `model` (softmax over `labels`) into `export_dir`.

    `preprocessing` is the mode of preprocess.image_to_model_input the model was
    trained with; it becomes part of every image signature's graph.
    `verification` (SVMs fitted on this model's pooled features) adds the verify
    and verification-scores signatures, their variables and their metadata.
    `open_set` makes predict_label answer contract.UNKNOWN_LABEL for an image no
    enrolled signer's verifier accepts; None means on when there is `verification`.
    `backbone` (embedding_cache.backbone_id of `model`) is recorded in the metadata, so the next
    cycle knows which cached embeddings this version's backbone made without loading its weights.
    """
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("cannot export a classifier with no labels")
    if any("\n" in label for label in labels):
        raise ValueError("labels may not contain newlines (labels.txt is one label per line)")
    open_set = verification is not None if open_set is None else open_set
    if open_set and verification is None:
        raise ValueError("open-set identification needs a verification model: its verifiers decide 'unknown'")
    if open_set and UNKNOWN_LABEL in labels:
        raise ValueError(f"a class is named {UNKNOWN_LABEL!r}, the open-set answer for no enrolled signer")
    export_dir = Path(export_dir)
    with tempfile.TemporaryDirectory() as scratch:
        labels_file = Path(scratch) / LABELS_FILE.name
        labels_file.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
        module = _ServingModule(model, labels, image_size, str(labels_file), preprocessing, verification, open_set)
        signatures = {
            SERVING_SIGNATURE: module.serve,
            PREDICT_LABEL_SIGNATURE: module.predict_label,
            CLASSIFY_SIGNATURE: module.classify,
        }
        if verification is not None:
            dim = module.embedder.output_shape[-1]
            if dim != verification.dim:
                raise ValueError(f"the verification SVMs were fitted on {verification.dim}-d features; "
                                 f"this model's pooled features are {dim}-d")
            signatures[VERIFY_SIGNATURE] = module.verify
            signatures[VERIFICATION_SCORES_SIGNATURE] = module.verification_scores
        with _keras_traces_off():
            tf.saved_model.save(module, str(export_dir), signatures=signatures)
    _mark_classify_signature(export_dir)
    write_model_metadata(export_dir, labels, image_size, preprocessing, verification, open_set, backbone)
    if warmup_images:
        write_warmup_requests(export_dir, warmup_images,
                              verification.signers[0] if verification is not None else None)
    return export_dir


def _keras_traces_off():
    """Save the Keras model's variables and config without a traced function per layer.

    Nothing loads the export as Keras layers: every signature calls the module's own
    `forward`, and warm start rebuilds the classifier and reads the checkpoint
    (model.load_exported_classifier), whose keys are the same either way. Tracing
    Xception's ~130 layers was most of an export (33 s -> 6 s measured) and made
    every tf.saved_model.load revive them (5.6 s -> 2.0 s): the serving check, the
    Evaluator and every version swap of signflow's server load the export.
    """
    return keras_option_scope(save_traces=False, in_tf_saved_model_scope=True)


def _mark_classify_signature(export_dir: Path) -> None:
    """Give the classify signature TF Serving's classify method name.

    tf.saved_model.save marks every signature as predict; TF Serving's Classify
    API (and TFMA's classify path) only accept a signature whose method_name is
    tensorflow/serving/classify, so the saved graph is edited once after saving.
    """
    path = export_dir / SAVED_MODEL_FILE
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        meta_graph.signature_def[CLASSIFY_SIGNATURE].method_name = CLASSIFY_METHOD
    path.write_bytes(saved_model.SerializeToString())
    # fingerprint.pb holds a checksum of saved_model.pb: recompute it for the edited graph.
    fingerprinting_utils.write_fingerprint(str(export_dir))


def model_metadata(labels: Sequence[str], image_size: tuple[int, int], preprocessing: str = PREPROCESS_SCAN,
                   verification: VerificationModel | None = None, open_set: bool = False,
                   backbone: str | None = None) -> dict:
    """What assets.extra/signflow_model.json holds: the label order of `probabilities`, the signatures, the
    backbone's id when given, and with `verification` its threshold, calibration, enrolled signers and whether
    predict_label is open-set."""
    image = {IMAGE_INPUT: "string [N]"}
    metadata = {
        "format": METADATA_FORMAT,
        "labels": [str(label) for label in labels],
        "image_size": [int(image_size[0]), int(image_size[1])],
        "preprocessing": preprocessing,
        "signatures": {
            SERVING_SIGNATURE: {"method": PREDICT_METHOD, "inputs": image,
                                "outputs": {PROBABILITIES_OUTPUT: "float32 [N, K]"}},
            PREDICT_LABEL_SIGNATURE: {"method": PREDICT_METHOD, "inputs": image,
                                      "outputs": {LABEL_OUTPUT: "string [N]", SCORE_OUTPUT: "float32 [N]",
                                                  PROBABILITIES_OUTPUT: "float32 [N, K]"}},
            CLASSIFY_SIGNATURE: {"method": CLASSIFY_METHOD, "inputs": {CLASSIFY_INPUT: "string [N] (tf.Example)"},
                                 "outputs": {CLASSES_OUTPUT: "string [N, K]", SCORES_OUTPUT: "float32 [N, K]"}},
        },
    }
    if backbone:
        metadata["backbone"] = backbone
    if verification is not None:
        metadata["signatures"][VERIFY_SIGNATURE] = {
            "method": PREDICT_METHOD, "inputs": {**image, CLAIMED_SIGNER_INPUT: "string [N]"},
            "outputs": {VERIFY_SCORE_OUTPUT: "float32 [N]", GENUINE_OUTPUT: "bool [N]", THRESHOLD_OUTPUT: "float32 [N]"}}
        metadata["signatures"][VERIFICATION_SCORES_SIGNATURE] = {
            "method": PREDICT_METHOD, "inputs": {CLASSIFY_INPUT: "string [N] (tf.Example)"},
            "outputs": {VERIFICATION_SCORES_OUTPUT: "float32 [N, S]", VERIFICATION_SIGNERS_OUTPUT: "string [N, S]",
                        VERIFICATION_THRESHOLD_OUTPUT: "float32 [N]", PROBABILITIES_OUTPUT: "float32 [N, K]",
                        CLASSES_OUTPUT: "string [N, K]"}}
        metadata["verification"] = {**verification.metadata(), "open_set": open_set}
        if open_set:
            metadata["verification"]["unknown_label"] = UNKNOWN_LABEL
    return metadata


def write_model_metadata(export_dir: str | os.PathLike, labels: Sequence[str], image_size: tuple[int, int],
                         preprocessing: str = PREPROCESS_SCAN, verification: VerificationModel | None = None,
                         open_set: bool = False, backbone: str | None = None) -> Path:
    """Write assets.extra/signflow_model.json (contract.MODEL_METADATA_FILE)."""
    path = Path(export_dir) / MODEL_METADATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = model_metadata(labels, image_size, preprocessing, verification, open_set, backbone)
    write_atomic(path, json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")
    return path


def read_model_metadata(version_dir: str | os.PathLike) -> dict:
    """The JSON write_model_metadata wrote, from any tf.io.gfile filesystem (OSError, tf.errors.OpError or
    ValueError when absent or unreadable)."""
    return json.loads(storage.read_text(storage.join(str(version_dir), MODEL_METADATA_FILE)))


def write_warmup_requests(export_dir: str | os.PathLike, images: Sequence[bytes],
                          claimed_signer: str | None = None) -> Path:
    """Write TF Serving's warmup file: one predict request per image on serving_default, then the first image on
    predict_label (so both image signatures are traced before the first request), and with `claimed_signer`
    (an enrolled signer) the first image on verify."""
    path = Path(export_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    requests = [(SERVING_SIGNATURE, {IMAGE_INPUT: image}) for image in images]
    if images:
        requests.append((PREDICT_LABEL_SIGNATURE, {IMAGE_INPUT: images[0]}))
        if claimed_signer is not None:
            requests.append((VERIFY_SIGNATURE, {IMAGE_INPUT: images[0],
                                                CLAIMED_SIGNER_INPUT: claimed_signer.encode("utf-8")}))
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature_name, inputs in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name=signature_name),
            )
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto([value], dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path
