"""TFX Trainer entry point: `run_fn`, thin on purpose.

It only wires the pieces, each testable without TFX: the typed config
(config.py), the cycle's kind (cycles.py: a fast cycle trains a head on the
serving backbone's cached features, a full one the network, train.py over
data.py and model.py), the features kept per backbone (embedding_cache.py),
verification on them (verification.py), the serving export (export.py) and the
report (report.py).

    tfx.components.Trainer(run_fn="components.trainer.run.run_fn",
                           custom_config={CUSTOM_CONFIG_KEY: TrainerConfig(...).to_dict()}, ...)
"""
from __future__ import annotations

import logging
import tensorflow as tf
import tf_keras
# tfx.v1's FnArgs, from its module (why not tfx.v1: pipeline/definition/pipeline.py).
from tfx.components.trainer.fn_args_utils import FnArgs

from components.trainer import cycles, data, embeddings, report, train, verification
from components.trainer.embedding_cache import EmbeddingCache, backbone_id
from components.trainer.config import CUSTOM_CONFIG_KEY, TrainerConfig
from components.trainer.export import WARMUP_IMAGES, export_serving_model

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


def run_fn(fn_args: FnArgs) -> None:
    """Train (a fast or a full cycle) on fn_args' splits, export the serving model, write the report beside it."""
    version = keras_version()
    log.info("Keras %s (tf-keras), TensorFlow %s", version, tf.__version__)
    config = TrainerConfig.from_dict((fn_args.custom_config or {}).get(CUSTOM_CONFIG_KEY))
    train_files = data.expand_files(fn_args.train_files)
    eval_files = data.expand_files(fn_args.eval_files)

    decision = cycles.decide(config, fn_args.base_model)
    fast = None
    if decision.kind == cycles.FAST:
        fast = cycles.run_fast(config, fn_args.base_model, train_files, eval_files)
        decision = cycles.judge(decision, config, fast)
        if decision.kind != cycles.FAST:
            fast = None
    log.info("%s cycle: %s", decision.kind, decision.reason)
    if fast is not None:
        result, train_features, eval_features = fast.result, fast.features, fast.eval_features
        backbone = fast.backbone
    else:
        result = train.train(config, train_files, eval_files, log_dir=fn_args.model_run_dir,
                             base_model_dir=fn_args.base_model, total_steps=fn_args.train_steps)
        # The new backbone's features of its own train split: the verification SVMs', the next fast
        # cycle's and drift's reference.
        cache = EmbeddingCache(config.embedding_cache_dir, backbone_id(result.model))
        backbone = cache.backbone
        train_features = cache.embed_split(result.model, train_files, config, reference=True)
        eval_features = cache.embed_split(result.model, eval_files, config)
        cycles.prune_embeddings(config, backbone, fn_args.base_model)

    verifier, verification_summary = None, {"skipped": "TrainerConfig.verification is off"}
    if config.verification:
        strangers = embeddings.embed_images(result.model, verification.stranger_images(), config)
        fitted = verification.fit_on_features(train_features.genuine, train_features.forged, config,
                                              train_features.seconds, strangers)
        verifier, verification_summary = fitted.model, fitted.summary
    export_serving_model(result.model, result.labels, config.image_size, fn_args.serving_model_dir,
                         warmup_images=data.sample_images(eval_files, WARMUP_IMAGES),
                         preprocessing=config.preprocessing, verification=verifier,
                         open_set=None if config.open_set else False, backbone=backbone)
    report_dir = report.write_report(fn_args.model_run_dir, result.history, result.eval_predictions, result.labels, {
        "keras_version": version,
        "tensorflow_version": tf.__version__,
        "labels": result.labels,
        # Fast (head on cached embeddings, backbone unchanged) or full, and why.
        "cycle": decision.to_dict(),
        "embeddings": {"cached": train_features.cached, "embedded": train_features.embedded,
                       "seconds": train_features.seconds},
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

    if verifier is not None:
        genuine, forgeries = report.verification_trials(
            verifier, eval_features.genuine.labels, eval_features.genuine.vectors, eval_features.forged.labels,
            eval_features.forged.vectors)
        if len(genuine) and any(len(scores) for scores in forgeries.values()):
            report.plot_det(genuine, forgeries, verifier.threshold, report_dir / report.DET_FILE)
