"""Embeddings: the trained classifier's pooled backbone features, one float32 row per image.

Layer: trainer. The features are the output of the classifier's global average
pooling (2048-d for Xception), before dropout and the softmax head: what the
backbone learnt about signatures, without the head's commitment to one of the
known signers. Verification (verification.py) fits its writer-dependent SVMs on
them, and the export computes the same features inside the `verify` signature.

Images reach the model through `data.model_input` (preprocess.image_to_model_input
with the config's size and mode), the graph the serving signatures run, so a row
computed here is what the served model computes for the same bytes.

    features = embed_examples(result.model, train_files, config)   # Embeddings: sha256, labels, vectors [N, D]
    forged = embed_examples(result.model, train_files, config, forgeries=True)   # labelled with the claimed signer
    vectors = embed_images(result.model, [png_bytes], config)     # float32 [N, D]

`Embeddings` is keyed by each example's sha256 and saves to one .npz file, so it
can become a pipeline artifact that a later cycle reuses without a forward pass.
"""
from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from components.trainer import data, model as model_lib
from components.trainer.config import TrainerConfig
from serving.contract import IMAGE_FEATURE, LABEL_FEATURE, SHA256_FEATURE

keras = tf.keras


@dataclass(frozen=True)
class Embeddings:
    """Pooled features of a set of examples: row i of `vectors` belongs to `sha256[i]`, labelled `labels[i]`."""

    sha256: tuple[str, ...]
    labels: tuple[str, ...]
    # float32 [N, D].
    vectors: np.ndarray

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.dtype != np.float32:
            raise ValueError(f"vectors must be float32 [N, D], got {self.vectors.dtype} {self.vectors.shape}")
        if not len(self.sha256) == len(self.labels) == len(self.vectors):
            raise ValueError(f"{len(self.sha256)} keys, {len(self.labels)} labels and {len(self.vectors)} vectors")

    def __len__(self) -> int:
        return len(self.sha256)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def save(self, path: str | os.PathLike) -> Path:
        """Write one .npz file (no pickled objects: plain arrays of strings and floats)."""
        path = Path(path)
        with path.open("wb") as f:
            np.savez(f, sha256=np.array(self.sha256, dtype=np.str_), labels=np.array(self.labels, dtype=np.str_),
                     vectors=self.vectors)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Embeddings:
        with np.load(Path(path), allow_pickle=False) as stored:
            return cls(tuple(str(s) for s in stored["sha256"]), tuple(str(s) for s in stored["labels"]),
                       stored["vectors"].astype(np.float32, copy=False))


def pooled_layer(classifier: keras.Model) -> keras.layers.Layer:
    """The classifier's one top-level GlobalAveragePooling2D layer ("avg_pool" in model.build_classifier).

    Looked up by type, not by name, so any classifier of the same shape (backbone ->
    pooling -> head) works, the tests' tiny ones included; a nested backbone's own
    layers are not searched.
    """
    found = [layer for layer in classifier.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    if len(found) != 1:
        raise ValueError(f"the classifier must have exactly one top-level GlobalAveragePooling2D layer, "
                         f"found {len(found)}: {[layer.name for layer in found]}")
    return found[0]


def feature_model(classifier: keras.Model) -> keras.Model:
    """A model from the classifier's input to its pooled features, sharing the classifier's weights."""
    return keras.Model(classifier.inputs, pooled_layer(classifier).output, name="signflow_embedder")


# The embedder of each classifier, kept while the classifier lives, so that its inference function
# (model.inference_function) is traced once per classifier rather than once per split embedded.
_EMBEDDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _embed_function(classifier: keras.Model):
    embedder = _EMBEDDERS.get(classifier)
    if embedder is None:
        embedder = _EMBEDDERS[classifier] = feature_model(classifier)
    return model_lib.inference_function(embedder)


def embed_examples(classifier: keras.Model, files: Sequence[str], config: TrainerConfig, *,
                   forgeries: bool = False) -> Embeddings:
    """The pooled features of every genuine example of a split (tf.Example TFRecords), in file order: one
    forward pass. With `forgeries`, those of its forgeries instead (`genuine` == 0), each labelled with the
    signer it claims to be."""
    forward = _embed_function(classifier)
    keys: list[str] = []
    labels: list[str] = []
    rows: list[np.ndarray] = []
    for batch in (_forgery_dataset(files, config) if forgeries else data.prediction_dataset(files, config)):
        rows.append(forward(batch["image"]).numpy())
        keys.extend(key.decode("ascii") for key in batch[SHA256_FEATURE].numpy())
        labels.extend(label.decode("utf-8") for label in batch[LABEL_FEATURE].numpy())
    vectors = np.concatenate(rows).astype(np.float32, copy=False) if rows else np.zeros((0, _dim(classifier)),
                                                                                       np.float32)
    return Embeddings(tuple(keys), tuple(labels), vectors)


def _forgery_dataset(files: Sequence[str], config: TrainerConfig) -> tf.data.Dataset:
    """data.prediction_dataset's batches, over the forgeries of a split."""
    def convert(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {"image": data.model_input(example[IMAGE_FEATURE], config), LABEL_FEATURE: example[LABEL_FEATURE],
                SHA256_FEATURE: example[SHA256_FEATURE]}

    forged = data.read_examples(files).filter(lambda example: tf.logical_not(data.is_genuine(example)))
    return forged.map(convert, num_parallel_calls=tf.data.AUTOTUNE).batch(config.batch_size)


def embed_images(classifier: keras.Model, images: Sequence[bytes], config: TrainerConfig) -> np.ndarray:
    """The pooled features of encoded images (PNG, JPEG, GIF, BMP bytes): float32 [N, D], in order."""
    if not images:
        return np.zeros((0, _dim(classifier)), np.float32)
    forward = _embed_function(classifier)
    inputs = tf.data.Dataset.from_tensor_slices(tf.constant(list(images), tf.string)).map(
        lambda image: data.model_input(image, config), num_parallel_calls=tf.data.AUTOTUNE)
    rows = [forward(batch).numpy() for batch in inputs.batch(config.batch_size)]
    return np.concatenate(rows).astype(np.float32, copy=False)


def _dim(classifier: keras.Model) -> int:
    return int(pooled_layer(classifier).output.shape[-1])
