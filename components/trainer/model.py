"""The classifier: a Keras 2 (tf-keras) Xception backbone and a new softmax head over the signers.

Also where the backbone's starting weights come from (ImageNet, a file imported
with `signflow weights import`, a local .h5, or random init) and how a previous
export's weights are brought into a new model (warm start), including when the
set of signers changed.
"""
from __future__ import annotations

import logging
import os
import socket
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from components.trainer import weights_store
from components.trainer.config import WEIGHTS_AUTO, WEIGHTS_IMAGENET, WEIGHTS_NONE
from components.trainer.weights_store import XCEPTION_NOTOP_FILE, XCEPTION_NOTOP_MD5, XCEPTION_NOTOP_URL
from serving.layout import LABELS_FILE

# TF_USE_LEGACY_KERAS=1 (set by the process entry point) makes tf.keras this tf-keras (Keras 2).
keras = tf.keras


def keep_autograph_out_of_keras() -> None:
    """Tell AutoGraph not to convert tf-keras' own code, as it already does not convert `keras`.

    TensorFlow's rule list names `keras` but not `tf_keras`, Keras 2's package name
    since TF 2.16, so the first fit of a process rewrote ~700 Keras internals
    (optimizer, losses, metrics, layers) source to source: ~25 s on 2 cores, longer
    than a fast cycle's whole head training. Keras' code is written for graph mode and
    is left alone under its old name; the same rule for its new one. Idempotent.
    """
    from tensorflow.python.autograph.core import config as autograph_config  # no public API for the rules

    rule = autograph_config.DoNotConvert("tf_keras")
    if not any(getattr(existing, "_prefix", None) == "tf_keras"
               for existing in autograph_config.CONVERSION_RULES):
        autograph_config.CONVERSION_RULES = (rule, *autograph_config.CONVERSION_RULES)


keep_autograph_out_of_keras()

log = logging.getLogger(__name__)

BACKBONE_NAME = "xception"
HEAD_NAME = "signer_probabilities"
FORGERY_HEAD_NAME = "forgery_probability"
CENTER_HEAD_NAME = "signer_center_distance"

# urllib waits forever on a silent network; the 88 MB file itself needs far less than this
# per socket operation.
DOWNLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BackboneWeights:
    """Where the backbone's initial weights come from: `path` to a .h5 file, or None for random init.

    `source`: "imagenet" (Keras' cache or download), "imported" (`signflow weights
    import`), "h5" (a path in the config) or "random". `sha256` is the file's.
    """

    path: str | None
    source: str
    # NOTE: derived from the file at `path`, so it does not take part in equality.
    sha256: str | None = field(default=None, compare=False)

    @property
    def pretrained(self) -> bool:
        return self.path is not None


def resolve_backbone_weights(spec: str, *, origin: str = XCEPTION_NOTOP_URL, cache_dir: str | None = None,
                             store: str | os.PathLike | None = None,
                             timeout_s: float = DOWNLOAD_TIMEOUT_S) -> BackboneWeights:
    """Turn `TrainerConfig.weights` into a weights file (or None).

    "imagenet" uses Keras' own cache and download (keras.utils.get_file, md5-checked)
    and raises RuntimeError when the file is neither cached nor downloadable. "auto"
    tries the same, then the file `signflow weights import` placed in the weights
    store (`store`, see weights_store.store_dir), then logs one line and falls back
    to random init. "none" is random init; anything else must be an existing .h5
    weights file.
    """
    if spec == WEIGHTS_NONE:
        return BackboneWeights(None, "random")
    if spec in (WEIGHTS_AUTO, WEIGHTS_IMAGENET):
        try:
            path = _fetch_imagenet_weights(origin, cache_dir, timeout_s)
        except Exception as err:  # get_file raises a bare Exception for URL failures
            if spec == WEIGHTS_IMAGENET:
                raise RuntimeError(
                    f"ImageNet weights for Xception are not in the Keras cache and could not be downloaded "
                    f"from {origin} ({err}). Import the file with `signflow weights import FILE` (or put "
                    f"{XCEPTION_NOTOP_FILE} into ~/.keras/models/), pass a local .h5 path as weights, or use "
                    f'weights="auto"/"none" to train from random init.'
                ) from err
            return _imported_or_random(store, f"{type(err).__name__}: {err}")
        return BackboneWeights(path, "imagenet", weights_store.sha256_of(path))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'backbone weights file {path} does not exist (weights must be "auto", '
                                f'"imagenet", "none" or a path to a .h5 file)')
    return BackboneWeights(str(path), "h5", weights_store.sha256_of(path))


def _imported_or_random(store: str | os.PathLike | None, unavailable: str) -> BackboneWeights:
    """weights="auto" without ImageNet weights: the imported file if there is one, else random init."""
    try:
        imported = weights_store.imported_weights(store)
    except weights_store.WeightsRefused as err:
        raise RuntimeError(f"the imported backbone weights cannot be used: {err}") from err
    if imported is not None:
        log.info("ImageNet weights unavailable (%s); using the weights imported %s from %s (sha256 %s)",
                 unavailable, imported.imported_at, imported.source_path, imported.sha256)
        return BackboneWeights(imported.path, "imported", imported.sha256)
    log.warning("ImageNet weights unavailable (%s) and none imported (signflow weights import); training "
                "Xception from random init", unavailable)
    return BackboneWeights(None, "random")


def _fetch_imagenet_weights(origin: str, cache_dir: str | None, timeout_s: float) -> str:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        return keras.utils.get_file(XCEPTION_NOTOP_FILE, origin, cache_subdir="models",
                                    file_hash=XCEPTION_NOTOP_MD5, cache_dir=cache_dir)
    finally:
        socket.setdefaulttimeout(previous)


def build_backbone(image_size: tuple[int, int], weights_path: str | None = None) -> keras.Model:
    """keras.applications.Xception without its ImageNet top, weights from `weights_path` (or random)."""
    height, width = image_size
    return keras.applications.Xception(include_top=False, weights=weights_path, input_shape=(height, width, 3))


def build_classifier(num_classes: int, image_size: tuple[int, int], *, weights_path: str | None = None,
                     dropout: float = 0.2) -> keras.Model:
    """Xception backbone -> global average pooling -> dropout -> softmax over `num_classes`.

    The backbone is one nested layer named "xception", so freezing it, copying its
    weights and restoring it from a checkpoint all address it as a unit.
    """
    if num_classes < 1:
        raise ValueError("the classifier needs at least one class")
    height, width = image_size
    inputs = keras.Input((height, width, 3), name="image")
    features = build_backbone(image_size, weights_path)(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    pooled = keras.layers.Dropout(dropout, name="head_dropout")(pooled)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=HEAD_NAME)(pooled)
    return keras.Model(inputs, outputs, name="signflow_classifier")


def training_model(classifier: keras.Model, *, forgery_head: bool = False, center_loss: bool = False) -> keras.Model:
    """The model the Trainer fits: the classifier itself, or the classifier with training-only outputs on its pooled
    features (before the dropout), sharing all of its layers. Outputs in this order:

    - the classifier's signer probabilities;
    - with `forgery_head`, P(forged) [B, 1], a sigmoid. Training it
      (TrainerConfig.forgery_loss_weight) makes the backbone keep what tells a careful
      imitation from the writer's own hand, which the signer head alone has no reason
      to learn: the verification SVMs then get features in which skilled forgeries
      stand apart (Hafemann et al. 2017, SigNet-F);
    - with `center_loss`, each image's cosine distance to a learned centre of every
      signer [B, C] (SignerCenters). Its loss (TrainerConfig.center_loss_weight) pulls
      a signer's signatures towards one direction, the geometry the verification
      SVMs see (they work on L2-normalised features), so that a stranger's signature
      lies away from every enrolled signer's references (Wen et al. 2016, center loss).

    Only the classifier is exported; the training-only outputs are dropped with this model.
    """
    pooled = classifier.get_layer("avg_pool").output
    outputs = [classifier.output]
    if forgery_head:
        outputs.append(keras.layers.Dense(1, activation="sigmoid", name=FORGERY_HEAD_NAME)(pooled))
    if center_loss:
        outputs.append(SignerCenters(classifier.output_shape[-1], name=CENTER_HEAD_NAME)(pooled))
    if len(outputs) == 1:
        return classifier
    return keras.Model(classifier.inputs, outputs, name="signflow_training")


class SignerCenters(keras.layers.Layer):
    """1 - cos(features, centre of signer c) for every signer c: [B, num_classes], the centres trained weights."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes

    def build(self, input_shape):
        self.centers = self.add_weight(name="centers", shape=(self.num_classes, int(input_shape[-1])),
                                       initializer=keras.initializers.RandomNormal(seed=0), trainable=True)
        super().build(input_shape)

    def call(self, features):
        cosine = tf.matmul(tf.math.l2_normalize(features, axis=-1), tf.math.l2_normalize(self.centers, axis=-1),
                           transpose_b=True)
        return 1.0 - cosine

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes}


# Each model's inference graph, traced once for any batch size and kept while the model lives: a new
# function per call, traced again at each split's last (smaller) batch, traced Xception 6-8 times per run.
_INFERENCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inference_function(model: keras.Model):
    """`model(images, training=False)` as one graph (no autograph: no data-dependent Python control flow),
    the same function for every call with the same model; the batch dimension is left open."""
    forward = _INFERENCE.get(model)
    if forward is None:
        alive = weakref.ref(model)  # the function must not keep the model (its key) alive
        forward = tf.function(lambda images: alive()(images, training=False), autograph=False,
                              input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)])
        _INFERENCE[model] = forward
    return forward


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer(BACKBONE_NAME)


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [layer for layer in model.submodules if isinstance(layer, keras.layers.BatchNormalization)]


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> None:
    """Set every BatchNorm layer's moving-average momentum (read when a train step is traced)."""
    for layer in batchnorm_layers(model):
        layer.momentum = momentum


def freeze_backbone(model: keras.Model) -> None:
    """Only the head trains; frozen BatchNorm layers also run in inference mode (Keras 2)."""
    backbone_of(model).trainable = False


def unfreeze_top_blocks(model: keras.Model, from_block: int, *, train_batchnorm: bool = False) -> int:
    """Make Xception blocks >= `from_block` trainable; returns the count of trainable layers with weights.

    Layers are in topological order and each block's shortcut convolution sits
    between the block's first and last layer, so "from the first layer named
    block<N>_ on" covers whole blocks. Unless `train_batchnorm`, BatchNorm stays
    frozen (inference mode): when only the top blocks train, a few small batches
    would otherwise overwrite statistics the frozen layers rely on.
    """
    backbone = backbone_of(model)
    backbone.trainable = True
    prefix = f"block{from_block}_"
    start = next((i for i, layer in enumerate(backbone.layers) if layer.name.startswith(prefix)), None)
    if start is None:
        raise ValueError(f"Xception has no block {from_block} (blocks are 1..14)")
    unfrozen = 0
    for index, layer in enumerate(backbone.layers):
        layer.trainable = index >= start and (train_batchnorm
                                              or not isinstance(layer, keras.layers.BatchNormalization))
        unfrozen += layer.trainable and bool(layer.weights)
    return unfrozen


def read_labels(export_dir: str | os.PathLike) -> list[str]:
    """The label vocabulary of an exported model (assets/labels.txt, one per line)."""
    text = (Path(export_dir) / LABELS_FILE).read_text(encoding="utf-8")
    return [line for line in text.split("\n") if line]


def load_exported_classifier(export_dir: str | os.PathLike, image_size: tuple[int, int],
                             dropout: float = 0.2) -> tuple[keras.Model, list[str]]:
    """Rebuild the Keras classifier of a previous export and restore its weights.

    The export's variables/ checkpoint holds the Keras model under the serving
    module's `model` attribute, so a classifier of the same architecture (sized by
    the export's labels.txt) restores from it directly: no extra copy of the weights
    is kept anywhere, and a pushed serving folder works as well as the Trainer's
    output. Every variable of the rebuilt model must be found in the checkpoint.
    """
    labels = read_labels(export_dir)
    model = build_classifier(len(labels), image_size, dropout=dropout)
    checkpoint = tf.train.Checkpoint(model=model)
    status = checkpoint.read(str(Path(export_dir) / "variables" / "variables"))
    status.expect_partial()  # the serving module also holds labels and functions: no warnings about those
    status.assert_existing_objects_matched()
    return model, labels


def transfer_weights(source: keras.Model, source_labels: Sequence[str], target: keras.Model,
                     target_labels: Sequence[str]) -> int:
    """Copy `source`'s backbone into `target`, and the head columns of the labels both know.

    With an unchanged label list this copies the whole model. Signers new to
    `target` keep their fresh initialisation. Returns how many labels were carried over.
    """
    backbone_of(target).set_weights(backbone_of(source).get_weights())
    source_kernel, source_bias = source.get_layer(HEAD_NAME).get_weights()
    kernel, bias = target.get_layer(HEAD_NAME).get_weights()
    source_index = {label: i for i, label in enumerate(source_labels)}
    shared = [(i, source_index[label]) for i, label in enumerate(target_labels) if label in source_index]
    if shared:
        to_idx, from_idx = (np.array(indices) for indices in zip(*shared))
        kernel[:, to_idx] = source_kernel[:, from_idx]
        bias[to_idx] = source_bias[from_idx]
    target.get_layer(HEAD_NAME).set_weights([kernel, bias])
    return len(shared)
