"""The Trainer's hyperparameters: one typed config, passed by the pipeline through custom_config.

    trainer = tfx.components.Trainer(
        run_fn="components.trainer.run.run_fn",
        custom_config={CUSTOM_CONFIG_KEY: TrainerConfig(...).to_dict()},
        ...)

Only plain JSON values cross that boundary; `TrainerConfig.from_dict` turns them
back into the typed object once, at the start of run_fn, and rejects unknown keys.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Xception's smallest input side (keras.applications refuses less).
MIN_SIDE = 71

# Key under which the pipeline puts `TrainerConfig.to_dict()` in Trainer's custom_config.
CUSTOM_CONFIG_KEY = "signflow_trainer"

# Special values of `TrainerConfig.weights`; anything else is a path to a .h5 weights file.
WEIGHTS_AUTO = "auto"
WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_NONE = "none"

# Values of `TrainerConfig.preprocessing` (see components/trainer/preprocess.py).
PREPROCESS_SCAN = "scan"
PREPROCESS_FIT = "fit"

# Values of `TrainerConfig.verification_kernel` (see components/trainer/verification.py).
VERIFICATION_RBF = "rbf"
VERIFICATION_LINEAR = "linear"
# Values of `TrainerConfig.verification_operating_point`: which equal-error point the verify threshold is.
OPERATING_SKILLED = "skilled"
OPERATING_RANDOM = "random"
OPERATING_POINTS = (OPERATING_SKILLED, OPERATING_RANDOM)

# Values of `TrainerConfig.cycle` (see components/trainer/cycles.py).
CYCLE_AUTO = "auto"
CYCLE_FAST = "fast"
CYCLE_FULL = "full"


@dataclass(frozen=True)
class TrainerConfig:
    """Hyperparameters of the signature classifier (Xception backbone + a new softmax head).

    Schedules (which one runs depends on where the backbone's weights come from):

    - "from_scratch" (random init, the offline default): the whole network trains
      with linear warmup then cosine decay, BatchNorm momentum `scratch_bn_momentum`,
      and BatchNorm moving statistics recalibrated on training data at the end.
    - "two_phase" (ImageNet, a local .h5, or a warm start from the previous model):
      `head_epochs` with the backbone frozen, then `fine_tune_epochs` with the
      blocks from `fine_tune_from_block` up (default: the whole network, BatchNorm
      included) at the lower `fine_tune_learning_rate`, cosine-decayed.
    """

    # Model input, height x width; the ink is cropped and fitted with white padding, aspect
    # ratio kept. Chosen on real scans (docs/benchmarks.md#real-signatures): 96 x 192 beat
    # 72 x 216 by a point at the same training time (the scans' ink is about 2:1). For a
    # GPU use 299 on the short side (299 x 598), as the seed did.
    image_height: int = 96
    image_width: int = 192
    batch_size: int = 16
    # "scan": greyscale, paper normalised away, cropped to the ink, then fitted;
    # "fit": the colour image fitted as it comes. Part of the exported graph.
    preprocessing: str = PREPROCESS_SCAN

    # Backbone weights: "auto" (ImageNet when cached or downloadable, otherwise random
    # init with one log line), "imagenet" (fail if unavailable), "none", or a .h5 path.
    weights: str = WEIGHTS_AUTO
    # Start from the previous blessed model (Trainer's base_model) when there is one.
    warm_start: bool = True

    # "from_scratch" schedule.
    scratch_epochs: int = 10
    scratch_learning_rate: float = 2e-3
    warmup_epochs: int = 1
    # Keras' default 0.99 averages the statistics over ~100 steps, 6 epochs of the sample,
    # while the weights change fast: measured, eval stayed at chance for all 10 epochs
    # while training accuracy reached 98%. 0.9 follows within ~10 steps.
    scratch_bn_momentum: float = 0.9
    # Batches of (unaugmented) training data used to recompute BatchNorm moving
    # statistics after training; 0 disables it.
    bn_recalibration_batches: int = 16

    # "two_phase" schedule.
    head_epochs: int = 1
    head_learning_rate: float = 1e-3
    fine_tune_epochs: int = 8
    fine_tune_learning_rate: float = 1e-4
    # Xception has blocks 1..14; blocks >= this one are unfrozen in phase 2. Freezing the
    # lower blocks (11, BatchNorm frozen) kept ImageNet's features too close to photos:
    # on real scans it stayed 3 points under a plain fine-tune of the whole network.
    fine_tune_from_block: int = 1
    # Train BatchNorm in phase 2 (its statistics then follow the scans, and are
    # recomputed at the end as in the from-scratch schedule).
    fine_tune_batchnorm: bool = True

    # Steps per epoch; None = one pass over the train split. TrainArgs.num_steps, when the
    # pipeline sets it, is the total instead and is divided evenly over the epochs.
    steps_per_epoch: int | None = None
    # Share of the train split (chosen by each example's sha256, so stable across runs)
    # held out as the validation split that picks the best epoch. The eval split is the
    # gate's: training never looks at it. 0 trains on all of it and keeps the last epoch.
    validation_fraction: float = 0.0
    # Keep the weights of the epoch with the best validation accuracy instead of the last
    # one (only with a validation split).
    restore_best_epoch: bool = True
    # Keep the preprocessed training images in memory after the first epoch when they
    # fit in this many MiB (decoding and cropping every scan every epoch costs CPU).
    cache_mib: int = 1024
    label_smoothing: float = 0.1
    dropout: float = 0.2
    # Weight of the forgery head's loss (model.training_model) when the train split has
    # forgeries: the backbone also learns to tell a forgery from a genuine signature, so the
    # verification SVMs see skilled forgeries apart. Measured on real scans
    # (docs/benchmarks.md#verification-on-real-signatures): skilled-forgery EER 19.1% -> 13.9%,
    # random-forgery EER 0.4% -> 1.6%, open set costs more. 0: the signer head alone. Without
    # forgeries in the train split nothing changes.
    forgery_loss_weight: float = 1.0
    # Weight of the signer-centre loss (model.training_model): each genuine signature's
    # cosine distance to a learned centre of its signer, so that a signer's signatures
    # gather around one direction of the L2-normalised features the verification SVMs
    # and the open-set rule see. Measured on real scans
    # (docs/benchmarks.md#verification-on-real-signatures), two splits: at 0.5 the open
    # set turns away fewer enrolled images (2.0 points of top-1 instead of 4.8; 3.6
    # instead of 6.1) for as many unknown writers rejected as that cut would trade for
    # without it, or more; verification EERs within a point either way. 0: off.
    center_loss_weight: float = 0.5

    # Augmentation (training only).
    augment: bool = True
    rotation_degrees: float = 4.0
    scale_range: float = 0.1
    shear: float = 0.15
    translate_fraction: float = 0.05
    # Probability of thickening strokes, and (separately) of thinning them, per image.
    stroke_probability: float = 0.25
    # Ink contrast is multiplied by a factor drawn from [1 - contrast_range, 1 + contrast_range].
    contrast_range: float = 0.3

    shuffle_buffer: int = 1024
    seed: int = 0

    # Verification (components/trainer/verification.py, docs/trainer.md#verification): after
    # training, one SVM per signer on the classifier's pooled features, calibrated so one
    # threshold serves every signer, exported as the `verify` signature.
    verification: bool = True
    # "rbf" or "linear".
    verification_kernel: str = VERIFICATION_RBF
    # C and gamma are chosen once for all signers by cross-validation over these grids (the
    # calibrated EER against random forgeries decides, averaged with the one against skilled
    # forgeries when the train split has them). Features are L2-normalised, so squared distances lie in
    # [0, 4] and the RBF kernel is exp(-gamma * (2 - 2 cos)) whatever the model: gamma 0.5 is
    # smooth, 4 local. gamma is ignored by the linear kernel.
    verification_c_grid: tuple[float, ...] = (0.1, 1.0, 10.0)
    verification_gamma_grid: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    verification_cv_folds: int = 3
    # Signers with fewer training references are not enrolled (their images still serve as
    # other signers' negatives); with fewer than 2 enrolled signers there is no verify signature.
    verification_min_references: int = 2
    # The verify threshold: the cross-validated equal-error point against skilled forgeries
    # ("skilled"; used when the train split has forgeries, else "random") or against random
    # forgeries, other signers' signatures ("random"). See components/trainer/verification.py.
    verification_operating_point: str = OPERATING_SKILLED
    # With verification, predict_label answers "unknown" when the image is not close enough to
    # the training references of the signer the softmax names (docs/trainer.md#open-set-identification).
    open_set: bool = True
    # Open set: how close is the mean cosine similarity of the image's pooled features to this
    # many nearest references of the softmax's signer (fewer when it has fewer). 3 rejected the
    # most unknown writers at a 2-point cost on real scans (docs/benchmarks.md), against 1-8 and all.
    open_set_neighbours: int = 3
    # Open set: the softmax's answer stands when the image is at least as close to its signer's
    # references as this share of the training references are to the rest of their signer's
    # (each left out in turn); otherwise the answer is "unknown".
    open_set_acceptance: float = 0.98

    # Cycles (components/trainer/cycles.py, docs/continuous-training.md#fast-and-full-cycles):
    # "auto" trains only the head and the SVMs on the serving model's unchanged backbone
    # (a fast cycle, from cached embeddings) when it can, and the whole network otherwise
    # (a full cycle); "fast" and "full" ask for one (a fast cycle without a serving model
    # to start from fails).
    cycle: str = CYCLE_AUTO
    # Where the pooled features of every example are kept per backbone (TFRecords, any
    # tf.io.gfile filesystem). Empty: nothing is kept and a fast cycle embeds every
    # example again; create_pipeline sets <pipeline root>/Embeddings.
    embedding_cache_dir: str = ""
    # Backbones whose embeddings a full cycle leaves in that folder, the new one and the
    # serving model's included (embedding_cache.prune): each full cycle starts a folder.
    embedding_cache_keep: int = 3
    # Under "auto", a full cycle runs when the new records' embeddings have moved further
    # than this from the ones the backbone was trained on (cycles.embedding_drift: the mean
    # absolute standardised shift of the feature means), judged once at least
    # `drift_min_records` new records are there.
    max_embedding_drift: float = 0.5
    drift_min_records: int = 20
    # Under "auto", a full cycle also runs once the backbone is this old (its reference
    # embeddings were written this long ago), whatever the drift: fast cycles in between,
    # the backbone relearnt on everything on a slower schedule.
    full_cycle_every_hours: float = 7 * 24.0
    # Head training on cached embeddings: Adam steps of 64 feature rows.
    fast_head_steps: int = 400
    fast_head_learning_rate: float = 3e-3

    def __post_init__(self) -> None:
        # JSON (custom_config) carries tuples as lists.
        for name in ("verification_c_grid", "verification_gamma_grid"):
            object.__setattr__(self, name, tuple(float(value) for value in getattr(self, name)))
        if min(self.image_height, self.image_width) < MIN_SIDE:
            raise ValueError(f"image_height and image_width must be >= {MIN_SIDE} (Xception), got "
                             f"{self.image_height}x{self.image_width}")
        for name in ("batch_size", "scratch_epochs", "fine_tune_from_block", "embedding_cache_keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_epochs", "head_epochs", "fine_tune_epochs", "bn_recalibration_batches"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.head_epochs + self.fine_tune_epochs < 1:
            raise ValueError("head_epochs + fine_tune_epochs must be >= 1")
        if self.warmup_epochs >= self.scratch_epochs:
            raise ValueError("warmup_epochs must be smaller than scratch_epochs")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}")
        if not 0.0 <= self.scratch_bn_momentum < 1.0:
            raise ValueError(f"scratch_bn_momentum must be in [0, 1), got {self.scratch_bn_momentum}")
        if not 0.0 <= self.validation_fraction < 0.5:
            raise ValueError(f"validation_fraction must be in [0, 0.5), got {self.validation_fraction}")
        if self.forgery_loss_weight < 0:
            raise ValueError(f"forgery_loss_weight must be >= 0, got {self.forgery_loss_weight}")
        if self.center_loss_weight < 0:
            raise ValueError(f"center_loss_weight must be >= 0, got {self.center_loss_weight}")
        if not 0.0 <= self.stroke_probability <= 0.5:
            raise ValueError(f"stroke_probability must be in [0, 0.5], got {self.stroke_probability}")
        if self.preprocessing not in (PREPROCESS_SCAN, PREPROCESS_FIT):
            raise ValueError(f'preprocessing must be "{PREPROCESS_SCAN}" or "{PREPROCESS_FIT}", '
                             f"got {self.preprocessing!r}")
        if not self.weights:
            raise ValueError('weights must be "auto", "imagenet", "none" or a path to a .h5 file')
        if self.verification_kernel not in (VERIFICATION_RBF, VERIFICATION_LINEAR):
            raise ValueError(f'verification_kernel must be "{VERIFICATION_RBF}" or "{VERIFICATION_LINEAR}", '
                             f"got {self.verification_kernel!r}")
        for name in ("verification_c_grid", "verification_gamma_grid"):
            values = getattr(self, name)
            if not values or min(values) <= 0:
                raise ValueError(f"{name} must hold at least one positive value, got {list(values)}")
        if self.verification_operating_point not in OPERATING_POINTS:
            raise ValueError(f"verification_operating_point must be one of {OPERATING_POINTS}, "
                             f"got {self.verification_operating_point!r}")
        if self.verification_cv_folds < 2:
            raise ValueError(f"verification_cv_folds must be >= 2, got {self.verification_cv_folds}")
        if not 0.5 <= self.open_set_acceptance <= 1.0:
            raise ValueError(f"open_set_acceptance must be in [0.5, 1], got {self.open_set_acceptance}")
        if self.open_set_neighbours < 1:
            raise ValueError(f"open_set_neighbours must be >= 1, got {self.open_set_neighbours}")
        if self.cycle not in (CYCLE_AUTO, CYCLE_FAST, CYCLE_FULL):
            raise ValueError(f'cycle must be "{CYCLE_AUTO}", "{CYCLE_FAST}" or "{CYCLE_FULL}", got {self.cycle!r}')
        if self.max_embedding_drift <= 0 or self.full_cycle_every_hours <= 0:
            raise ValueError("max_embedding_drift and full_cycle_every_hours must be > 0")
        if min(self.drift_min_records, self.fast_head_steps) < 1:
            raise ValueError("drift_min_records and fast_head_steps must be >= 1")
        if self.verification_min_references < 2:
            raise ValueError("verification_min_references must be >= 2 (cross-validation holds one out), "
                             f"got {self.verification_min_references}")

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image_height, self.image_width

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values, as Trainer's custom_config carries them."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> TrainerConfig:
        """The config from `to_dict()` output; missing keys take their defaults, unknown keys fail."""
        values = dict(values or {})
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainerConfig keys: {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainerConfig:
        return dataclasses.replace(self, **changes)
