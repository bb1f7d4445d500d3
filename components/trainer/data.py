"""Input pipeline: ExampleGen's tf.Example TFRecords -> batches of (model input, label id).

Images go through `preprocess.image_to_model_input`, the function the serving
signature also uses, so an unaugmented training batch holds exactly what the
served model would see for the same bytes. Augmentation runs afterwards, on whole
batches, in model-input space (white paper = 1.0, ink is dark).

The classifier identifies signers from their genuine signatures: forgeries
(`genuine` == 0, a forgery claimed as its label) never train, validate or
evaluate a signer's class, and the split summaries' sizes and labels are those of
the genuine examples. Only `training_dataset(..., forgeries=True)` lets them in,
for the Trainer's forgery head (TrainerConfig.forgery_loss_weight): there a
forgery's weight on the signer head is 0. Examples ingested before forgeries were
recorded have no `genuine` feature and are genuine.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import tensorflow as tf

from components.trainer.config import TrainerConfig
from components.trainer.preprocess import image_to_model_input
from serving.contract import GENUINE_FEATURE, IMAGE_FEATURE, LABEL_FEATURE, SHA256_FEATURE

# ExampleGen writes GZIP-compressed TFRecords (see the tf.Example contract).
COMPRESSION = "GZIP"
_FEATURES = {
    IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string),
    LABEL_FEATURE: tf.io.FixedLenFeature([], tf.string),
    SHA256_FEATURE: tf.io.FixedLenFeature([], tf.string, default_value=""),
    GENUINE_FEATURE: tf.io.FixedLenFeature([], tf.int64, default_value=1),
}
# Model input of white paper, the fill value for pixels that augmentation moves in.
_PAPER = 1.0


def expand_files(patterns: str | Sequence[str]) -> list[str]:
    """Files matching `patterns` (TFX passes split folders as glob patterns), sorted; none is an error."""
    if isinstance(patterns, str):
        patterns = [patterns]
    files = sorted({path for pattern in patterns for path in tf.io.gfile.glob(pattern)})
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {list(patterns)}")
    return files


def _without_autotuning() -> tf.data.Options:
    # tf.data's autotuning thread holds up the release of an iterator: a Keras `fit` call returned
    # 0-20 s after its last batch (measured on Xception, 2 cores), the Trainer idle meanwhile; none
    # with it off. Options set here reach every dataset built on these records. With it off,
    # AUTOTUNE parallelism is the number of cores and prefetch buffers still grow on demand.
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def read_examples(files: Sequence[str]) -> tf.data.Dataset:
    """Parsed examples, forgeries included: dicts of scalar strings image_raw, label, sha256 and int64 genuine."""
    records = tf.data.TFRecordDataset(list(files), compression_type=COMPRESSION,
                                      num_parallel_reads=tf.data.AUTOTUNE).with_options(_without_autotuning())
    return records.map(lambda record: tf.io.parse_single_example(record, _FEATURES),
                       num_parallel_calls=tf.data.AUTOTUNE)


def read_genuine_examples(files: Sequence[str]) -> tf.data.Dataset:
    """read_examples without the forgeries: what the classifier trains, validates and is evaluated on."""
    return read_examples(files).filter(is_genuine)


def is_genuine(example: dict[str, tf.Tensor]) -> tf.Tensor:
    """Whether a parsed example is a genuine signature of its label (missing `genuine`: parsed as 1)."""
    return tf.not_equal(example[GENUINE_FEATURE], 0)


@dataclass(frozen=True)
class SplitSummary:
    """What one pass over a split's labels tells: its genuine examples' count and sorted label set, and how many
    forgeries it holds besides."""

    num_examples: int
    labels: list[str]
    num_forgeries: int = 0


def summarize(files: Sequence[str]) -> SplitSummary:
    """Count the genuine examples of a split and collect their labels (the vocabulary is the train split's),
    and count its forgeries.

    A signer with forgeries only gets no class.
    """
    records = tf.data.TFRecordDataset(list(files), compression_type=COMPRESSION).with_options(_without_autotuning())
    wanted = {key: _FEATURES[key] for key in (LABEL_FEATURE, GENUINE_FEATURE)}
    parsed = records.map(lambda record: tf.io.parse_single_example(record, wanted), num_parallel_calls=tf.data.AUTOTUNE)
    counts: dict[str, int] = {}
    forgeries = 0
    for batch in parsed.batch(1024):
        for label, genuine in zip(batch[LABEL_FEATURE].numpy(), batch[GENUINE_FEATURE].numpy()):
            if genuine == 0:
                forgeries += 1
                continue
            text = label.decode("utf-8")
            counts[text] = counts.get(text, 0) + 1
    return SplitSummary(num_examples=sum(counts.values()), labels=sorted(counts), num_forgeries=forgeries)


def label_table(labels: Sequence[str]) -> tf.lookup.StaticHashTable:
    """label string -> index in `labels`; unknown labels map to -1."""
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(labels), tf.string), tf.range(len(labels), dtype=tf.int32)),
        default_value=-1,
    )


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Batches in one pass over `num_examples` (the last, partial batch counts)."""
    return max(1, math.ceil(num_examples / batch_size))


def _in_validation(example: dict[str, tf.Tensor], fraction: float) -> tf.Tensor:
    """Whether an example belongs to the validation share of the train split, decided by its sha256.

    The same image always falls on the same side, whatever else is in the span or
    in what order the files are read.
    """
    bucket = tf.strings.to_hash_bucket_fast(_sha256_of(example), 10_000)
    return bucket < int(round(fraction * 10_000))


def _sha256_of(example: dict[str, tf.Tensor]) -> tf.Tensor:
    return tf.where(tf.strings.length(example[SHA256_FEATURE]) > 0, example[SHA256_FEATURE],
                    _hex_sha256(example[IMAGE_FEATURE]))


def _train_part(files: Sequence[str], config: TrainerConfig, *, forgeries: bool = False) -> tf.data.Dataset:
    examples = read_examples(files) if forgeries else read_genuine_examples(files)
    if config.validation_fraction > 0:
        examples = examples.filter(lambda ex: tf.logical_not(_in_validation(ex, config.validation_fraction)))
    return examples


def training_dataset(files: Sequence[str], labels: Sequence[str], config: TrainerConfig,
                     *, augment: bool | None = None, num_examples: int | None = None,
                     forgeries: bool = False, centers: bool = False) -> tf.data.Dataset:
    """Endless shuffled batches of (images [B, H, W, 3] float32, label ids [B] int32).

    The validation share of the split (`config.validation_fraction`) is left out;
    so are forgeries and examples whose label is not in `labels`. `augment` defaults to
    `config.augment`. With `num_examples` (the examples a pass reads) the preprocessed
    images are kept in memory after the first pass when they fit in
    `config.cache_mib`.

    With `forgeries`, for the training model's forgery head (model.training_model),
    the forgeries come too and batches are (images, (label ids, forged [B, 1] float32),
    (signer weights, forgery weights)): a forgery's signer weight is 0 (its label id,
    which may be -1 for a signer without a class, is then 0), every example's forgery
    weight 1. With `centers`, for its signer-centre output, the label ids come once more
    as the last target (and, with `forgeries`, the signer weights as the last weights):
    (images, (label ids, label ids)) or (images, (ids, forged, ids), (signer w, forgery w, signer w)).
    """
    augment = config.augment if augment is None else augment
    table = label_table(labels)
    examples = _train_part(files, config, forgeries=forgeries)
    if forgeries:
        dataset = examples.map(lambda ex: _to_two_head_input(ex, table, config), num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.filter(lambda image, targets, weights: tf.logical_or(targets[0] >= 0, targets[1][0] > 0))
        dataset = dataset.map(lambda image, targets, weights: _in_output_order(
            image, tf.maximum(targets[0], 0), centers=centers, forged=targets[1], weights=weights))
    else:
        dataset = examples.map(lambda ex: _to_model_input(ex, table, config), num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.filter(lambda image, label: label >= 0)
        if centers:
            dataset = dataset.map(lambda image, ids: _in_output_order(image, ids, centers=True))
    if num_examples is not None and num_examples * _bytes_per_input(config) <= config.cache_mib * 2**20:
        dataset = dataset.cache()
    dataset = dataset.shuffle(config.shuffle_buffer, seed=config.seed).repeat()
    # Full batches only: a 1-example batch would give BatchNorm a degenerate variance.
    dataset = dataset.batch(config.batch_size, drop_remainder=True)
    if augment:
        # One batch at a time: augmentation draws from stateful random ops, and parallel calls would
        # take their numbers in whatever order their threads run, so the same seed would give other
        # batches (and another model) from run to run. A batch's warp costs far less than its step.
        dataset = dataset.map(lambda images, *rest: (augment_batch(images, config), *rest))
    return dataset.prefetch(tf.data.AUTOTUNE)


def _to_two_head_input(example: dict[str, tf.Tensor], table: tf.lookup.StaticHashTable, config: TrainerConfig):
    image, label = _to_model_input(example, table, config)
    genuine = tf.cast(is_genuine(example), tf.float32)
    return image, (label, tf.reshape(1.0 - genuine, [1])), (genuine, tf.constant(1.0))


def _in_output_order(image, ids, *, centers: bool, forged=None, weights=None):
    """An example for model.training_model: (image, targets) without a forgery head, else (image, targets,
    weights); targets in its output order (label ids, then `forged` with a forgery head, then the ids again for
    the signer centres), weights as (signer, forgery) and the signer weight again for the centres."""
    if forged is None:
        return (image, (ids, ids)) if centers else (image, ids)
    signer_weight, forgery_weight = weights
    if centers:
        return image, (ids, forged, ids), (signer_weight, forgery_weight, signer_weight)
    return image, (ids, forged), (signer_weight, forgery_weight)


def _bytes_per_input(config: TrainerConfig) -> int:
    return config.image_height * config.image_width * 3 * 4


def validation_dataset(files: Sequence[str], labels: Sequence[str], config: TrainerConfig,
                       *, forgeries: bool = False, centers: bool = False) -> tf.data.Dataset | None:
    """One ordered pass over the genuine examples of the validation share of the train split, or None when there
    is no such share. With `forgeries` and/or `centers`, batches laid out as training_dataset's with the same flags;
    the forgery head's weight is 0 (genuine examples only)."""
    if config.validation_fraction <= 0:
        return None
    table = label_table(labels)
    examples = read_genuine_examples(files).filter(lambda ex: _in_validation(ex, config.validation_fraction))
    dataset = examples.map(lambda ex: _to_model_input(ex, table, config), num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.filter(lambda image, label: label >= 0)
    if forgeries or centers:
        dataset = dataset.map(lambda image, ids: _in_output_order(
            image, ids, centers=centers, forged=tf.zeros([1]) if forgeries else None,
            weights=(tf.constant(1.0), tf.constant(0.0))))
    return dataset.batch(config.batch_size).cache().prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(files: Sequence[str], labels: Sequence[str], config: TrainerConfig) -> tf.data.Dataset:
    """One ordered pass of (images, label ids) over the genuine examples whose label is in `labels`."""
    table = label_table(labels)
    dataset = read_genuine_examples(files)
    dataset = dataset.map(lambda ex: _to_model_input(ex, table, config), num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.filter(lambda image, label: label >= 0)
    return dataset.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)


def prediction_dataset(files: Sequence[str], config: TrainerConfig) -> tf.data.Dataset:
    """One ordered pass over every genuine example: dicts of image (model input), label and sha256 strings."""
    def convert(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {
            "image": model_input(example[IMAGE_FEATURE], config),
            LABEL_FEATURE: example[LABEL_FEATURE],
            SHA256_FEATURE: _sha256_of(example),
        }

    return read_genuine_examples(files).map(convert, num_parallel_calls=tf.data.AUTOTUNE).batch(
        config.batch_size).prefetch(tf.data.AUTOTUNE)


def _hex_sha256(data: tf.Tensor) -> tf.Tensor:
    # Older examples may lack the sha256 feature; tf has no sha256 op, so hash in Python.
    return tf.numpy_function(lambda raw: hashlib.sha256(raw).hexdigest().encode("ascii"), [data], tf.string,
                             stateful=False)


def model_input(image_bytes: tf.Tensor, config: TrainerConfig) -> tf.Tensor:
    """One image's model input under `config` (size and preprocessing mode), as the export computes it."""
    return image_to_model_input(image_bytes, config.image_height, config.image_width, config.preprocessing)


def _to_model_input(example: dict[str, tf.Tensor], table: tf.lookup.StaticHashTable,
                    config: TrainerConfig) -> tuple[tf.Tensor, tf.Tensor]:
    return model_input(example[IMAGE_FEATURE], config), table.lookup(example[LABEL_FEATURE])


def augment_batch(images: tf.Tensor, config: TrainerConfig) -> tf.Tensor:
    """Random signature-like variation of a batch of model inputs ([-1, 1], white paper = 1).

    Per image: one affine warp (small rotation, scale, shear, shift) filling with
    paper, then with some probability thicker or thinner strokes (grey-scale erosion
    / dilation as 3x3 min / max pooling: ink is dark), then ink contrast (how dark the
    pen is against the paper).
    """
    batch = tf.shape(images)[0]
    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)

    def uniform(limit: float) -> tf.Tensor:
        return tf.random.uniform([batch], -limit, limit)

    angle = uniform(config.rotation_degrees * math.pi / 180.0)
    scale = 1.0 + uniform(config.scale_range)
    shear = uniform(config.shear)
    shift_x = uniform(config.translate_fraction) * width
    shift_y = uniform(config.translate_fraction) * height
    # Output pixel p is read from input M (p - c) + c + shift, M = rotation . shear / scale.
    cos, sin = tf.cos(angle), tf.sin(angle)
    a0, a1 = cos / scale, (cos * shear - sin) / scale
    b0, b1 = sin / scale, (sin * shear + cos) / scale
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a2 = cx - a0 * cx - a1 * cy + shift_x
    b2 = cy - b0 * cx - b1 * cy + shift_y
    zeros = tf.zeros([batch])
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=_PAPER, interpolation="BILINEAR", fill_mode="CONSTANT")

    if config.stroke_probability > 0:
        thicker = -tf.nn.max_pool2d(-images, ksize=3, strides=1, padding="SAME")
        thinner = tf.nn.max_pool2d(images, ksize=3, strides=1, padding="SAME")
        draw = tf.random.uniform([batch, 1, 1, 1])
        images = tf.where(draw < config.stroke_probability, thicker,
                          tf.where(draw > 1.0 - config.stroke_probability, thinner, images))

    if config.contrast_range > 0:
        contrast = 1.0 + tf.reshape(uniform(config.contrast_range), [-1, 1, 1, 1])
        images = _PAPER - (_PAPER - images) * contrast
    return tf.clip_by_value(images, -1.0, 1.0)


def sample_images(files: Sequence[str], count: int) -> list[bytes]:
    """The raw bytes of the first `count` examples (real images for the serving warmup file)."""
    return [example[IMAGE_FEATURE].numpy() for example in read_examples(files).take(count)]
