"""The training loop: where the weights start, which schedule runs, and what comes out.

Schedules (see TrainerConfig):

- "from_scratch", when the backbone starts from random init (the offline default).
  Measured on the sample: a random-init Xception fitted with plain Adam reached 98%
  training accuracy while eval accuracy stayed at chance for 9 epochs, because
  BatchNorm moving statistics (momentum 0.99, ~15 steps an epoch) lagged far behind
  the weights. So the whole network trains with linear warmup then cosine decay
  (large early steps, settled final weights), BatchNorm momentum 0.9 (statistics
  follow within ~10 steps), and after training the moving statistics are recomputed
  from unaugmented training batches with the final weights (what eval and serving see).
- "two_phase", when the backbone has useful weights (ImageNet, a local .h5, or the
  previous model): first the head alone on the frozen backbone, then the network
  from block `fine_tune_from_block` up (by default all of it, BatchNorm included)
  at a lower learning rate with cosine decay.

With `forgery_loss_weight` > 0 and forgeries in the train split, training runs
a model with a second head (model.training_model): the signer head on the genuine
examples, and a forgery head, P(forged) from the pooled features, on all of them,
its loss at that weight. With `center_loss_weight` > 0 a third output, each genuine
example's cosine distance to its signer's learned centre, joins the loss at that
weight. The exported classifier is the signer model alone.

With a validation split (`validation_fraction`, carved out of the train split by
sha256) every epoch is evaluated on it and, with `restore_best_epoch`, the best
epoch's weights are kept. The eval split is the gate's: training never reads it;
it is only predicted once at the end, for the report and the serving check.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from components.trainer import data, model as model_lib
from components.trainer.config import TrainerConfig
from components.trainer.predictions import Prediction
from serving.contract import LABEL_FEATURE, SHA256_FEATURE

keras = tf.keras

log = logging.getLogger(__name__)

SCHEDULE_FROM_SCRATCH = "from_scratch"
SCHEDULE_TWO_PHASE = "two_phase"


@dataclass
class TrainingResult:
    """A trained classifier (uncompiled: no optimizer state is exported) and how it got there."""

    model: keras.Model
    labels: list[str]
    schedule: str
    # "warm_start", "imagenet", "imported", "h5" or "random".
    init: str
    # The backbone's starting file and its sha256 (None: random init or warm start).
    init_weights: model_lib.BackboneWeights | None = None
    # One dict per epoch: phase, epoch, loss, accuracy, val_loss, val_accuracy, learning_rate, seconds.
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    # The final model's answer for every eval example, in file order.
    eval_predictions: list[Prediction] = field(default_factory=list)
    num_train_examples: int = 0
    num_eval_examples: int = 0
    # Labels whose head weights came from the previous model (warm start only).
    carried_labels: int = 0
    seconds: float = 0.0

    @property
    def eval_accuracy(self) -> float:
        return accuracy(self.eval_predictions)


def train(config: TrainerConfig, train_files: Sequence[str], eval_files: Sequence[str], *,
          log_dir: str | os.PathLike | None = None, base_model_dir: str | os.PathLike | None = None,
          total_steps: int | None = None) -> TrainingResult:
    """Train the signature classifier on tf.Example TFRecords.

    `base_model_dir`: a previous export to warm-start from (ignored unless
    `config.warm_start`). `total_steps`: TFX's TrainArgs.num_steps, divided evenly
    over the schedule's epochs (overrides `config.steps_per_epoch`). `log_dir`
    receives TensorBoard logs.
    """
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    train_summary = data.summarize(train_files)
    eval_summary = data.summarize(eval_files)
    labels = train_summary.labels
    if not labels:
        raise ValueError(f"the train split {list(train_files)} has no examples")
    if not set(eval_summary.labels) & set(labels):
        # Epoch selection, the report and the serving check all need eval examples.
        raise ValueError(f"the eval split {list(eval_files)} has no example of a training label")
    unseen = sorted(set(eval_summary.labels) - set(labels))
    if unseen:
        log.warning("eval labels absent from the train split are skipped by per-epoch eval: %s", unseen)
    log.info("train: %d examples, %d labels; eval: %d examples", train_summary.num_examples, len(labels),
             eval_summary.num_examples)

    classifier, init, carried, init_weights = initial_model(config, labels, base_model_dir)
    schedule = SCHEDULE_FROM_SCRATCH if init == "random" else SCHEDULE_TWO_PHASE
    phases = _phases(config, schedule)
    epochs = sum(phase.epochs for phase in phases)
    forgery_head = config.forgery_loss_weight > 0 and train_summary.num_forgeries > 0
    # What one pass over the training data reads: the forgeries too when the forgery head trains.
    per_pass = train_summary.num_examples + (train_summary.num_forgeries if forgery_head else 0)
    if total_steps:
        steps = max(1, total_steps // epochs)
    else:
        steps = config.steps_per_epoch or data.steps_per_epoch(per_pass, config.batch_size)
    log.info("init=%s schedule=%s: %s, %d steps/epoch of %d%s", init, schedule,
             ", ".join(f"{p.name} {p.epochs} epochs" for p in phases), steps, config.batch_size,
             f"; forgery head on {train_summary.num_forgeries} forgeries at weight {config.forgery_loss_weight}"
             if forgery_head else "")

    center_loss = config.center_loss_weight > 0
    fit_model = model_lib.training_model(classifier, forgery_head=forgery_head, center_loss=center_loss)
    train_ds = data.training_dataset(train_files, labels, config, num_examples=per_pass, forgeries=forgery_head,
                                     centers=center_loss)
    validation_ds = data.validation_dataset(train_files, labels, config, forgeries=forgery_head, centers=center_loss)
    several_outputs = fit_model is not classifier
    best = _BestEpoch("val_" + (f"{model_lib.HEAD_NAME}_accuracy" if several_outputs else "accuracy"))
    callbacks: list[keras.callbacks.Callback] = [best] if validation_ds is not None else []
    if log_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir), profile_batch=0))
    history: list[dict] = []
    epoch = 0
    for phase in phases:
        if phase.epochs == 0:
            continue
        phase.prepare(classifier)
        compile_classifier(fit_model, phase.learning_rate(steps), config.label_smoothing,
                           forgery_loss_weight=config.forgery_loss_weight if forgery_head else None,
                           center_loss_weight=config.center_loss_weight if center_loss else None)
        timer = _EpochTimer()
        fit = fit_model.fit(train_ds, epochs=epoch + phase.epochs, initial_epoch=epoch, steps_per_epoch=steps,
                            validation_data=validation_ds, callbacks=[*callbacks, timer], verbose=2)
        for i, index in enumerate(fit.epoch):
            history.append({"phase": phase.name, "epoch": index + 1, "seconds": timer.seconds[i],
                            **{_history_key(key): float(values[i]) for key, values in fit.history.items()}})
        epoch += phase.epochs

    restored = config.restore_best_epoch and best.weights is not None
    if restored:
        log.info("restoring epoch %d (validation accuracy %.4f)", best.epoch, best.accuracy)
        fit_model.set_weights(best.weights)
    trained_batchnorm = schedule == SCHEDULE_FROM_SCRATCH or config.fine_tune_batchnorm
    if trained_batchnorm and config.bn_recalibration_batches:
        clean = data.training_dataset(train_files, labels, config, augment=False)
        recalibrate_batchnorm(classifier, clean, config.bn_recalibration_batches)

    # A fresh, uncompiled copy: exporting the trained one would also save its optimizer
    # slots and metrics (3x the variables) into the serving model.
    final = model_lib.build_classifier(len(labels), config.image_size, dropout=config.dropout)
    final.set_weights(classifier.get_weights())
    predictions = predict(final, eval_files, labels, config)
    log.info("final eval accuracy %.4f on %d examples", accuracy(predictions), len(predictions))
    return TrainingResult(
        model=final, labels=labels, schedule=schedule, init=init, init_weights=init_weights, history=history,
        best_epoch=best.epoch if restored else None, eval_predictions=predictions,
        num_train_examples=train_summary.num_examples, num_eval_examples=eval_summary.num_examples,
        carried_labels=carried, seconds=time.monotonic() - started,
    )


def initial_model(config: TrainerConfig, labels: list[str],
                  base_model_dir: str | os.PathLike | None
                  ) -> tuple[keras.Model, str, int, model_lib.BackboneWeights | None]:
    """The classifier training starts from, how it was initialised, how many labels' head weights it carries,
    and the weights file the backbone started from (None for a warm start).

    Warm start (`base_model_dir` and `config.warm_start`): the previous export's
    backbone, and its head columns for the labels still present. Otherwise the
    backbone weights `config.weights` resolves to, and a fresh head.
    """
    if config.warm_start and base_model_dir:
        try:
            previous, previous_labels = model_lib.load_exported_classifier(base_model_dir, config.image_size,
                                                                           config.dropout)
        except (OSError, ValueError, AssertionError, tf.errors.OpError) as err:
            raise RuntimeError(f"cannot warm-start from {base_model_dir}: it is not an export of this classifier "
                               f"({type(err).__name__}: {err}); set warm_start=False to train without it") from err
        classifier = model_lib.build_classifier(len(labels), config.image_size, dropout=config.dropout)
        carried = model_lib.transfer_weights(previous, previous_labels, classifier, labels)
        log.info("warm start from %s: backbone and %d of %d labels' head weights carried over (previous "
                 "model had %d labels)", base_model_dir, carried, len(labels), len(previous_labels))
        return classifier, "warm_start", carried, None
    if base_model_dir:
        log.info("warm_start is off: not starting from %s", base_model_dir)
    weights = model_lib.resolve_backbone_weights(config.weights)
    classifier = model_lib.build_classifier(len(labels), config.image_size, weights_path=weights.path,
                                            dropout=config.dropout)
    return classifier, weights.source, 0, weights


@dataclass
class _Phase:
    name: str
    epochs: int
    peak_learning_rate: float
    warmup_epochs: int
    prepare_fn: Callable[[keras.Model], None]

    def prepare(self, classifier: keras.Model) -> None:
        self.prepare_fn(classifier)

    def learning_rate(self, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
        """Linear warmup to the peak, then cosine decay to zero at the phase's last step."""
        warmup = self.warmup_epochs * steps_per_epoch
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else self.peak_learning_rate,
            decay_steps=max(1, (self.epochs - self.warmup_epochs) * steps_per_epoch),
            warmup_target=self.peak_learning_rate if warmup else None,
            warmup_steps=warmup,
        )


def _phases(config: TrainerConfig, schedule: str) -> list[_Phase]:
    if schedule == SCHEDULE_FROM_SCRATCH:
        def whole_network(classifier: keras.Model) -> None:
            classifier.trainable = True
            model_lib.set_batchnorm_momentum(classifier, config.scratch_bn_momentum)

        return [_Phase("from_scratch", config.scratch_epochs, config.scratch_learning_rate, config.warmup_epochs,
                       whole_network)]

    def head_only(classifier: keras.Model) -> None:
        model_lib.freeze_backbone(classifier)

    def top_blocks(classifier: keras.Model) -> None:
        count = model_lib.unfreeze_top_blocks(classifier, config.fine_tune_from_block,
                                              train_batchnorm=config.fine_tune_batchnorm)
        if config.fine_tune_batchnorm:
            model_lib.set_batchnorm_momentum(classifier, config.scratch_bn_momentum)
        log.info("fine-tuning %d backbone layers (blocks >= %d, BatchNorm %s)", count, config.fine_tune_from_block,
                 "trained" if config.fine_tune_batchnorm else "frozen")

    return [
        _Phase("head", config.head_epochs, config.head_learning_rate, 0, head_only),
        _Phase("fine_tune", config.fine_tune_epochs, config.fine_tune_learning_rate, 0, top_blocks),
    ]


def compile_classifier(classifier: keras.Model,
                       learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
                       label_smoothing: float, *, forgery_loss_weight: float | None = None,
                       center_loss_weight: float | None = None) -> None:
    """Adam on label-smoothed crossentropy over label ids, with accuracy: the training step of every phase.

    With `forgery_loss_weight` and/or `center_loss_weight`, `classifier` is the
    training model with those outputs (model.training_model, in its order): the
    forgery head's binary crossentropy and the signer-centre distance join the loss
    at their weights, and the signer accuracy is weighted by the batches' signer
    weights, so forgeries do not count in it.
    """
    accuracy_metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    signer_loss = _smoothed_sparse_crossentropy(classifier.outputs[0].shape[-1], label_smoothing)
    if forgery_loss_weight is None and center_loss_weight is None:
        classifier.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=signer_loss,
                           metrics=[accuracy_metric])
        return
    losses, weights, metrics = [signer_loss], [1.0], [[accuracy_metric]]
    if forgery_loss_weight is not None:
        losses.append(keras.losses.BinaryCrossentropy())
        weights.append(forgery_loss_weight)
        metrics.append([])
    if center_loss_weight is not None:
        losses.append(_own_center_distance)
        weights.append(center_loss_weight)
        metrics.append([])
    classifier.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=losses, loss_weights=weights,
                       weighted_metrics=metrics)


def _own_center_distance(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """The distance of each example to its own signer's centre: y_pred [B, C] at the label id y_true [B]."""
    ids = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
    # Whatever rank Keras matched y_true and y_pred to (one signer: [B, 1] both), one row per example.
    return tf.gather(tf.reshape(y_pred, [tf.shape(ids)[0], -1]), ids, axis=1, batch_dims=1)


def _history_key(key: str) -> str:
    """Keras' metric name -> the history's: the training model's signer accuracy is "accuracy", as without its
    other outputs (its losses keep their output names; "loss" is the total)."""
    return key.replace(f"{model_lib.HEAD_NAME}_accuracy", "accuracy")


def _smoothed_sparse_crossentropy(num_classes: int, label_smoothing: float):
    # Keras' sparse crossentropy has no label smoothing; one-hot the ids first.
    def loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        one_hot = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), num_classes)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=label_smoothing)

    return loss


class _BestEpoch(keras.callbacks.Callback):
    """Remembers the weights of the epoch with the highest validation accuracy (`key` in Keras' logs; ties: the
    later one)."""

    def __init__(self, key: str = "val_accuracy") -> None:
        super().__init__()
        self.key = key
        self.accuracy = -1.0
        self.epoch: int | None = None
        self.weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        accuracy = (logs or {}).get(self.key)
        if accuracy is not None and accuracy >= self.accuracy:
            self.accuracy, self.epoch, self.weights = accuracy, epoch + 1, self.model.get_weights()


class _EpochTimer(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.monotonic() - self._start)


def recalibrate_batchnorm(classifier: keras.Model, dataset: tf.data.Dataset, num_batches: int) -> None:
    """Replace BatchNorm moving statistics by their average over `num_batches` forward passes.

    Forward passes run in training mode (each layer normalises with its batch's
    statistics, as during training) with momentum 0, so after each pass a layer's
    moving mean/variance are exactly that batch's; their average over the batches
    becomes the new moving statistics. No weight is updated.
    """
    layers = model_lib.batchnorm_layers(classifier)
    momenta = [layer.momentum for layer in layers]
    model_lib.set_batchnorm_momentum(classifier, 0.0)
    # No autograph: the forward pass has no tensor-dependent Python control flow, and
    # converting Keras' layer code costs tens of seconds on a first trace.
    forward = tf.function(lambda images: classifier(images, training=True), autograph=False)
    sums = [[np.zeros(layer.moving_mean.shape), np.zeros(layer.moving_variance.shape)] for layer in layers]
    count = 0
    try:
        for images, _ in dataset.take(num_batches):
            forward(images)
            for total, layer in zip(sums, layers):
                total[0] += layer.moving_mean.numpy()
                total[1] += layer.moving_variance.numpy()
            count += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if count == 0:
        raise ValueError("no batches to recalibrate BatchNorm statistics with")
    for (mean_sum, variance_sum), layer in zip(sums, layers):
        layer.moving_mean.assign(mean_sum / count)
        layer.moving_variance.assign(variance_sum / count)
    log.info("recalibrated %d BatchNorm layers on %d batches", len(layers), count)


def predict(classifier: keras.Model, files: Sequence[str], labels: Sequence[str],
            config: TrainerConfig) -> list[Prediction]:
    """Top label and score for every example of a split, in file order (labels unknown to the model included)."""
    forward = model_lib.inference_function(classifier)
    predictions = []
    for batch in data.prediction_dataset(files, config):
        predictions += ranked_predictions(
            forward(batch["image"]).numpy(), [s.decode("ascii") for s in batch[SHA256_FEATURE].numpy()],
            [label.decode("utf-8") for label in batch[LABEL_FEATURE].numpy()], labels)
    return predictions


def ranked_predictions(probabilities: np.ndarray, sha256s: Sequence[str], true_labels: Sequence[str],
                       vocabulary: Sequence[str]) -> list[Prediction]:
    """One Prediction per row of `probabilities` [N, K] over `vocabulary`: its top label and the runner-up."""
    predictions = []
    for sha256, label, ranked, row in zip(sha256s, true_labels, np.argsort(-probabilities, axis=1), probabilities):
        first, second = ranked[0], (ranked[1] if len(ranked) > 1 else None)
        predictions.append(Prediction(
            sha256, label, vocabulary[first], float(row[first]),
            vocabulary[second] if second is not None else None,
            float(row[second]) if second is not None else 0.0))
    return predictions


def accuracy(predictions: Sequence[Prediction]) -> float:
    """Top-1 accuracy over `predictions` (labels the model never saw count as wrong)."""
    if not predictions:
        return math.nan
    return sum(p.label == p.predicted for p in predictions) / len(predictions)
