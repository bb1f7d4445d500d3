"""Fast and full cycles: which one a Trainer run is, and the fast cycle's training.

Layer: trainer. A *full cycle* trains the network (train.train). A *fast cycle*
keeps the serving model's backbone exactly (its weights are copied, byte for
byte) and trains only the softmax head on the cached pooled features
(embedding_cache), so new records and new signers reach a new version in
seconds of training; the verification SVMs are refitted on the same features
by the caller. The gate, the serving check and the push are the same for both.

`decide` picks the kind before any image is embedded, from what is known
without data: a fast cycle needs a model to start from (the Trainer's
base_model, the version serving now) that was exported for the same input
(image size, preprocessing). After embedding, `embedding_drift` can still turn
"auto" into a full cycle: when the new records' features have moved away from
those the backbone was trained on, the backbone no longer describes the data.

Drift is a simple distance, not TFDV: per feature dimension, how far the new
records' mean lies from the reference mean in units of the reference's
standard deviation, averaged over dimensions. It is insensitive to which
signers arrive (a new signer moves a few dimensions; the mean over 2048 barely
moves) and sensitive to a change of capture (scanner, pen, photo): every
dimension moves. The sampling noise of a mean over n records is about 0.8/sqrt(n)
in these units, so it is judged only from `drift_min_records` new records.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from components.trainer import embedding_cache, model as model_lib
from components.trainer.config import CYCLE_AUTO, CYCLE_FAST, CYCLE_FULL, TrainerConfig
from components.trainer.embedding_cache import EmbeddingCache, SplitEmbeddings, backbone_id
from components.trainer.embeddings import Embeddings
from components.trainer.export import read_model_metadata
from components.trainer.predictions import Prediction
from components.trainer.train import TrainingResult, accuracy, compile_classifier, ranked_predictions

keras = tf.keras

log = logging.getLogger(__name__)

FAST = CYCLE_FAST
FULL = CYCLE_FULL
SCHEDULE_HEAD_ON_EMBEDDINGS = "head_on_cached_embeddings"
# The head's training, reported as this many epochs of fast_head_steps / FAST_HEAD_EPOCHS steps.
FAST_HEAD_EPOCHS = 10
FAST_HEAD_BATCH = 64


@dataclass(frozen=True)
class CycleDecision:
    kind: str
    reason: str
    drift: float | None = None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "reason": self.reason, "drift": self.drift}


def decide(config: TrainerConfig, base_model_dir: str | os.PathLike | None) -> CycleDecision:
    """The cycle's kind from the config and the model to start from (drift is judged later, on the data)."""
    if config.cycle == CYCLE_FULL:
        return CycleDecision(FULL, "asked for with trainer.cycle=full")
    problem = _why_not_fast(config, base_model_dir)
    if problem is None:
        reason = "asked for with trainer.cycle=fast" if config.cycle == CYCLE_FAST else "same backbone, new head"
        return CycleDecision(FAST, reason)
    if config.cycle == CYCLE_FAST:
        raise ValueError(f"a fast cycle was asked for but cannot run: {problem}")
    return CycleDecision(FULL, problem)


def _why_not_fast(config: TrainerConfig, base_model_dir: str | os.PathLike | None) -> str | None:
    if not base_model_dir:
        return "no serving model to start from"
    if not config.warm_start:
        return "warm_start is off"
    try:
        metadata = read_model_metadata(base_model_dir)
    except (OSError, ValueError, tf.errors.OpError) as err:
        return f"the serving model's metadata is unreadable ({type(err).__name__})"
    wanted = {"image_size": list(config.image_size), "preprocessing": config.preprocessing}
    found = {key: metadata.get(key) for key in wanted}
    if found != wanted:
        return f"the input changed: serving model {found}, config {wanted}"
    return None


def embedding_drift(reference: np.ndarray, new: np.ndarray) -> float:
    """Mean over feature dimensions of |mean(new) - mean(reference)| / std(reference) (module docstring)."""
    if len(reference) < 2 or not len(new):
        raise ValueError(f"drift needs >= 2 reference rows and >= 1 new row, got {len(reference)} and {len(new)}")
    scale = reference.std(axis=0)
    # Dimensions that never fire in the reference (ReLU features that stay 0) carry no scale:
    # measured against the spread of all dimensions instead of dividing by ~0.
    scale = np.maximum(scale, np.median(scale) + 1e-12)
    return float(np.mean(np.abs(new.mean(axis=0) - reference.mean(axis=0)) / scale))


def judge(decision: CycleDecision, config: TrainerConfig, fast: FastCycle) -> CycleDecision:
    """The decision after the fast cycle has looked at its data: under "auto", a backbone older than
    `full_cycle_every_hours` or embeddings drifted beyond `max_embedding_drift` make it a full cycle."""
    if decision.kind != FAST:
        return decision
    auto = config.cycle == CYCLE_AUTO
    age = fast.backbone_age_seconds
    if auto and age is not None and age > config.full_cycle_every_hours * 3600:
        return CycleDecision(FULL, f"the backbone is {age / 3600:.0f} h old (full_cycle_every_hours="
                                   f"{config.full_cycle_every_hours:g})")
    new = fast.features.new_genuine
    if fast.reference is None or len(new) < config.drift_min_records:
        return decision
    drift = embedding_drift(fast.reference, new)
    if auto and drift > config.max_embedding_drift:
        return CycleDecision(FULL, f"embedding drift {drift:.2f} > {config.max_embedding_drift:g} "
                                   f"on {len(new)} new records", drift)
    return CycleDecision(decision.kind, decision.reason, drift)


def prune_embeddings(config: TrainerConfig, backbone: str, base_model_dir: str | os.PathLike | None) -> list[str]:
    """After a full cycle: delete old backbones' cached embeddings (embedding_cache.prune), keeping this cycle's
    `backbone` and the serving model's, which the next fast cycle runs on if this candidate is not pushed. A
    serving model whose metadata does not name its backbone (exported before it was recorded there) leaves
    the cache as it is. Returns the deleted backbones."""
    in_use = [backbone]
    if base_model_dir:
        try:
            base_backbone = read_model_metadata(base_model_dir).get("backbone")
        except (OSError, ValueError, tf.errors.OpError):
            base_backbone = None
        if not base_backbone:
            log.info("embedding cache not pruned: the serving model's metadata does not name its backbone")
            return []
        in_use.append(base_backbone)
    return embedding_cache.prune(config.embedding_cache_dir, config.embedding_cache_keep, in_use)


@dataclass(frozen=True)
class FastCycle:
    """A fast cycle's trained model, the train split's features it used, and the backbone's id and reference
    features."""

    result: TrainingResult
    features: SplitEmbeddings
    eval_features: SplitEmbeddings
    reference: np.ndarray | None
    backbone_age_seconds: float | None
    backbone: str


def run_fast(config: TrainerConfig, base_model_dir: str | os.PathLike, train_files: Sequence[str],
             eval_files: Sequence[str]) -> FastCycle:
    """The serving model's backbone, both splits' features from its cache (embedding only what is new), and a
    head trained on them."""
    base, base_labels = model_lib.load_exported_classifier(base_model_dir, config.image_size, config.dropout)
    cache = EmbeddingCache(config.embedding_cache_dir, backbone_id(base))
    train_features = cache.embed_split(base, train_files, config)
    eval_features = cache.embed_split(base, eval_files, config)
    result = train_head(base, base_labels, train_features.genuine, eval_features.genuine, config)
    return FastCycle(result, train_features, eval_features, cache.reference(), cache.reference_age_seconds(),
                     cache.backbone)


def train_head(base: keras.Model, base_labels: Sequence[str], train: Embeddings, evaluation: Embeddings,
               config: TrainerConfig) -> TrainingResult:
    """The fast cycle: a new softmax head on the train split's cached features, the base model's backbone
    copied unchanged. Head columns of signers the base model knows start from its weights."""
    started = time.monotonic()
    labels = sorted(set(train.labels))
    if not labels:
        raise ValueError("the train split has no genuine example")
    keras.utils.set_random_seed(config.seed)
    final = model_lib.build_classifier(len(labels), config.image_size, dropout=config.dropout)
    carried = model_lib.transfer_weights(base, base_labels, final, labels)

    head_layer = final.get_layer(model_lib.HEAD_NAME)
    features = keras.Input((train.dim,), name="pooled")
    outputs = keras.layers.Dense(len(labels), activation="softmax", name=model_lib.HEAD_NAME)(
        keras.layers.Dropout(config.dropout)(features))
    head = keras.Model(features, outputs, name="signflow_head")
    head.get_layer(model_lib.HEAD_NAME).set_weights(head_layer.get_weights())
    compile_classifier(head, config.fast_head_learning_rate, config.label_smoothing)
    index = {label: i for i, label in enumerate(labels)}
    targets = np.array([index[label] for label in train.labels], dtype=np.int64)
    # Few rows: Keras' per-epoch overhead would dominate many tiny epochs, so a few "epochs" of a fixed
    # number of steps each over a shuffled, repeating dataset.
    steps = max(1, config.fast_head_steps // FAST_HEAD_EPOCHS)
    dataset = (tf.data.Dataset.from_tensor_slices((train.vectors, targets)).shuffle(len(targets), seed=config.seed)
               .repeat().batch(FAST_HEAD_BATCH))
    epoch_timer = time.monotonic()
    fit = head.fit(dataset, epochs=FAST_HEAD_EPOCHS, steps_per_epoch=steps, verbose=0)
    seconds = time.monotonic() - epoch_timer
    head_layer.set_weights(head.get_layer(model_lib.HEAD_NAME).get_weights())
    history = [{"phase": "head", "epoch": i + 1, "seconds": seconds / len(fit.epoch),
                **{key: float(values[i]) for key, values in fit.history.items()}} for i in range(len(fit.epoch))]
    predictions = predict_from_features(head, evaluation, labels)
    log.info("fast cycle: head trained on %d cached feature rows, %d labels (%d carried) in %.1f s; "
             "eval accuracy %.4f on %d examples", len(train), len(labels), carried, seconds,
             accuracy(predictions), len(predictions))
    return TrainingResult(
        model=final, labels=labels, schedule=SCHEDULE_HEAD_ON_EMBEDDINGS, init="warm_start", history=history,
        eval_predictions=predictions, num_train_examples=len(train), num_eval_examples=len(evaluation),
        carried_labels=carried, seconds=time.monotonic() - started,
    )


def predict_from_features(head: keras.Model, evaluation: Embeddings, labels: Sequence[str]) -> list[Prediction]:
    """The head's top label and runner-up for every row, as train.predict gives them from images."""
    if not len(evaluation):
        return []
    probabilities = head.predict(evaluation.vectors, batch_size=256, verbose=0)
    return ranked_predictions(probabilities, evaluation.sha256, evaluation.labels, labels)
