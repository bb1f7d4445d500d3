"""TFX Trainer entry point: `run_fn`, thin on purpose.

It only wires the pieces, each testable without TFX: the typed config
(config.py), training (train.py over data.py and model.py), verification on the
trained model's features (verification.py over embeddings.py), the serving
export (export.py) and the report (report.py).

    tfx.components.Trainer(run_fn="components.trainer.run.run_fn",
                           custom_config={CUSTOM_CONFIG_KEY: TrainerConfig(...).to_dict()}, ...)
"""
from __future__ import annotations

import logging

import tensorflow as tf
import tf_keras
from tfx import v1 as tfx

from components.trainer import data, report, train, verification
from components.trainer.config import CUSTOM_CONFIG_KEY, TrainerConfig
from components.trainer.export import MAX_WARMUP_REQUESTS, export_serving_model

log = logging.getLogger(__name__)


def keras_version() -> str:
    """The version of the Keras behind tf.keras; fails unless it is tf-keras (Keras 2), which TFX 1.16 needs.

    The process's entry point chooses it (TF_USE_LEGACY_KERAS=1: pipeline/cli.py,
    the Dockerfile's ENV); this module only checks.
    """
    module = tf.keras.__name__  # e.g. "tf_keras.api._v2.keras"; Keras 3 would be "keras..."
    if not module.startswith("tf_keras"):
        raise RuntimeError(f"tf.keras is {module} (Keras 3); set TF_USE_LEGACY_KERAS=1 before TensorFlow is imported")
    return tf_keras.__version__


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """Train on fn_args' splits, export the serving model, write the report beside it."""
    version = keras_version()
    log.info("Keras %s (tf-keras), TensorFlow %s", version, tf.__version__)
    config = TrainerConfig.from_dict((fn_args.custom_config or {}).get(CUSTOM_CONFIG_KEY))
    train_files = data.expand_files(fn_args.train_files)
    eval_files = data.expand_files(fn_args.eval_files)

    result = train.train(config, train_files, eval_files, log_dir=fn_args.model_run_dir,
                         base_model_dir=fn_args.base_model, total_steps=fn_args.train_steps)
    verifier, verification_summary = None, {"skipped": "TrainerConfig.verification is off"}
    if config.verification:
        fitted = verification.fit_for_classifier(result.model, train_files, config)
        verifier, verification_summary = fitted.model, fitted.summary
    export_serving_model(result.model, result.labels, config.image_size, fn_args.serving_model_dir,
                         warmup_images=data.sample_images(eval_files, MAX_WARMUP_REQUESTS),
                         preprocessing=config.preprocessing, verification=verifier)
    report.write_report(fn_args.model_run_dir, result.history, result.eval_predictions, result.labels, {
        "keras_version": version,
        "tensorflow_version": tf.__version__,
        "labels": result.labels,
        "schedule": result.schedule,
        "init": result.init,
        # The backbone's starting file and its checksum (None for random init and warm start).
        "init_weights_file": result.init_weights.path if result.init_weights else None,
        "init_weights_sha256": result.init_weights.sha256 if result.init_weights else None,
        "base_model": fn_args.base_model,
        "carried_labels": result.carried_labels,
        "best_epoch": result.best_epoch,
        "num_train_examples": result.num_train_examples,
        "num_eval_examples": result.num_eval_examples,
        "train_seconds": result.seconds,
        # Threshold, cross-validated EER, per-signer counts, the grid; or why it was skipped.
        "verification": verification_summary,
        "config": config.to_dict(),
    })
