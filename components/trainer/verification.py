"""Verification, "is it really theirs?": writer-dependent SVMs on the classifier's pooled features.

Layer: trainer. The fitting is numpy and scikit-learn; export.py turns the
fitted `VerificationModel` into TensorFlow ops (the `verify` signature), so TF
Serving needs no Python. `fit_for_classifier` is the Trainer's step after
training: embed the train split with the final model (embeddings.py), its
forgeries included, then fit.

What is fitted (`fit_verification`):

- Features: the trained classifier's pooled features of every training example
  (embeddings.py), **L2-normalised**. The pooled activations' length follows how
  much ink an image has and how strongly the network responds overall, not who
  wrote it; on unit vectors the RBF kernel is a function of the cosine alone,
  exp(-gamma * (2 - 2 cos)), squared distances lie in [0, 4] whatever the model,
  so one gamma grid fits every training run, and the linear kernel is the cosine.
- One SVM per enrolled signer (scikit-learn SVC, class_weight="balanced"):
  positives are the signer's genuine training references; negatives are every
  other genuine training image (random forgeries: other people's signatures,
  those of signers too rare to enrol included), the `strangers` (pages nobody
  signed: blank, ruled, smudged; see stranger_images) and
  `extra_negatives[signer]` when given: the Trainer passes the train split's
  forgeries claimed as that signer (skilled forgeries, `genuine` == 0 in the
  examples).
- C and gamma are chosen once for all signers by stratified k-fold
  cross-validation over a small grid (TrainerConfig.verification_c_grid,
  verification_gamma_grid; linear: C only), on the calibrated out-of-fold
  scores. The criterion is the random-forgery EER (genuine references against
  other signers' references and the strangers), and when the train split has
  skilled forgeries the mean of that and the skilled-forgery EER: skilled
  forgeries are a few rows among hundreds of random negatives, so a pooled EER
  would not see them, and on real scans the grid points that tie on random
  forgeries differ by half on skilled ones. Ties: higher AUC, then smaller C,
  then smaller gamma. The kernel matrix over all rows is computed once per gamma
  and every fit takes its blocks (kernel="precomputed"), which keeps the search
  to seconds.
- Calibration (z-norm): each signer's decision function is shifted and scaled by
  the mean and standard deviation of its random-forgery negatives' out-of-fold
  scores, so a score says "how many standard deviations above an impostor" for
  every signer alike, and ONE threshold means the same for all of them.
- The threshold (TrainerConfig.verification_operating_point): the equal-error
  point of the pooled out-of-fold calibrated scores against skilled forgeries
  ("skilled", when the train split has them) or against random forgeries
  ("random", and always without skilled forgeries). At the random-forgery point
  a skilled forgery passes far more often than a genuine signature fails; the
  skilled point balances the two for the forgeries `verify` exists to catch.
- The open set (predict_label's "unknown", export.py): not the SVMs. The image's
  mean cosine similarity to the `open_set_neighbours` nearest training references
  of the signer the softmax names, against a cut that `open_set_acceptance` of the
  training references reach when each is left out of its signer's in turn. On real
  scans this rejected far more writers the model never saw than the named signer's
  SVM score did at the same cost to enrolled signers (docs/benchmarks.md): an SVM
  is asked "this signer or the other enrolled ones?", and a stranger is neither,
  where the nearest references ask "like this signer's own signatures?".

Who is enrolled: signers with at least `min_references` training references (2:
cross-validation needs one to hold out). Fewer than 2 enrolled signers: no
verification (NotEnoughSigners), since there is nothing to calibrate against.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import sklearn
from sklearn.metrics import roc_auc_score
from sklearn.svm import SVC

from components.trainer.config import (
    OPERATING_POINTS,
    OPERATING_RANDOM,
    OPERATING_SKILLED,
    VERIFICATION_LINEAR,
    VERIFICATION_RBF,
    TrainerConfig,
)
from components.trainer.embeddings import Embeddings, embed_examples

log = logging.getLogger(__name__)

KERNELS = (VERIFICATION_RBF, VERIFICATION_LINEAR)
CALIBRATION = "z-norm"
# What predict_label's open set compares with `open_set_threshold` (metadata "open_set_rule").
OPEN_SET_RULE = "nearest-references-cosine"

# The normalisation divides a row by its length, or by this when it is shorter (an all-zero row stays zero).
NORM_EPSILON = 1e-12
# Floor of a signer's negative-score standard deviation: a signer whose impostors all score
# alike would otherwise get an unbounded scale.
MIN_SCORE_STD = 1e-3


class NotEnoughSigners(ValueError):
    """Verification cannot be fitted: fewer than 2 signers have enough references."""


@dataclass(frozen=True)
class VerificationSettings:
    """How the SVMs are fitted; `from_config` takes them from the Trainer's config (TrainerConfig.verification_*)."""

    # The defaults are TrainerConfig's (its comments say why).
    kernel: str = TrainerConfig.verification_kernel
    c_grid: tuple[float, ...] = TrainerConfig.verification_c_grid
    # On L2-normalised features; ignored by the linear kernel.
    gamma_grid: tuple[float, ...] = TrainerConfig.verification_gamma_grid
    cv_folds: int = TrainerConfig.verification_cv_folds
    min_references: int = TrainerConfig.verification_min_references
    open_set_acceptance: float = TrainerConfig.open_set_acceptance
    open_set_neighbours: int = TrainerConfig.open_set_neighbours
    # Which cross-validated equal-error point the threshold is (see the module docstring).
    operating_point: str = TrainerConfig.verification_operating_point
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        if not self.c_grid or min(self.c_grid) <= 0:
            raise ValueError(f"c_grid must hold positive values, got {self.c_grid}")
        if self.kernel == VERIFICATION_RBF and (not self.gamma_grid or min(self.gamma_grid) <= 0):
            raise ValueError(f"gamma_grid must hold positive values, got {self.gamma_grid}")
        if self.cv_folds < 2:
            raise ValueError(f"cv_folds must be >= 2, got {self.cv_folds}")
        if self.operating_point not in OPERATING_POINTS:
            raise ValueError(f"operating_point must be one of {OPERATING_POINTS}, got {self.operating_point!r}")
        if self.open_set_neighbours < 1:
            raise ValueError(f"open_set_neighbours must be >= 1, got {self.open_set_neighbours}")
        if self.min_references < 2:
            raise ValueError(f"min_references must be >= 2 (one is held out in cross-validation), "
                             f"got {self.min_references}")

    @classmethod
    def from_config(cls, config: TrainerConfig) -> VerificationSettings:
        return cls(kernel=config.verification_kernel, c_grid=config.verification_c_grid,
                   gamma_grid=config.verification_gamma_grid, cv_folds=config.verification_cv_folds,
                   min_references=config.verification_min_references,
                   open_set_acceptance=config.open_set_acceptance,
                   open_set_neighbours=config.open_set_neighbours,
                   operating_point=config.verification_operating_point, seed=config.seed)


@dataclass(frozen=True)
class SignerCounts:
    """What one signer's SVM was fitted on, and what it kept."""

    references: int
    negatives: int
    extra_negatives: int
    support_vectors: int


@dataclass(frozen=True)
class GridPoint:
    """One (C, gamma) of the search and its pooled cross-validated figures (after calibration).

    `cv_eer` is the search's criterion: the random-forgery EER, or its mean with the
    skilled-forgery EER when there are skilled forgeries (`cv_skilled_eer`, else None).
    """

    c: float
    gamma: float | None
    cv_eer: float
    cv_auc: float
    cv_random_eer: float
    cv_skilled_eer: float | None


@dataclass(frozen=True)
class VerificationModel:
    """The fitted SVMs, in the layout the export writes (see export.py for the graph).

    Support vectors are stored once even when several signers' SVMs use the same
    training image (a reference of one signer is a negative of every other):
    `support_vectors` [U, D] holds the distinct unit-length rows; signer j's SVM
    is the entries offsets[j]:offsets[j+1] of `sv_index` (rows of
    `support_vectors`) and `dual_coef` (dual coefficient times label, scikit-learn's
    dual_coef_), plus `intercept[j]`. Its raw decision for a unit feature row x is

        f_j(x) = sum_t dual_coef[t] * k(x, support_vectors[sv_index[t]]) + intercept[j]

    with k(x, v) = exp(-gamma * |x - v|^2) (rbf) or x . v (linear), and its
    calibrated score (f_j(x) - score_mean[j]) / score_std[j]; genuine means
    score >= threshold.
    """

    kernel: str
    c: float
    gamma: float | None
    threshold: float
    cv_eer: float
    cv_auc: float
    signers: tuple[str, ...]
    support_vectors: np.ndarray  # float64 [U, D]
    sv_index: np.ndarray  # int32 [T]
    dual_coef: np.ndarray  # float64 [T]
    offsets: np.ndarray  # int64 [S + 1]
    intercept: np.ndarray  # float64 [S]
    score_mean: np.ndarray  # float64 [S]
    score_std: np.ndarray  # float64 [S]
    counts: Mapping[str, SignerCounts] = field(default_factory=dict)
    # Training labels that are not enrolled, and why.
    skipped: Mapping[str, str] = field(default_factory=dict)
    grid: tuple[GridPoint, ...] = ()
    seconds: float = 0.0
    # Open set (see fit_verification and `open_set_similarity`): every enrolled signer's training references as
    # unit rows (float32 [R, D]), each row's signer (its position in `signers`, int32 [R]), how many nearest
    # references an image's similarity is the mean of, and the least similarity for the softmax's answer to stand.
    references: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    reference_signer: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    open_set_neighbours: int = TrainerConfig.open_set_neighbours
    open_set_threshold: float = 0.0
    # Which equal-error point `threshold` is (OPERATING_SKILLED or OPERATING_RANDOM), and the chosen
    # grid point's cross-validated EERs (skilled: None without skilled forgeries).
    operating_point: str = OPERATING_RANDOM
    cv_random_eer: float | None = None
    cv_skilled_eer: float | None = None

    @property
    def dim(self) -> int:
        return int(self.support_vectors.shape[1])

    def signer_indices(self, claimed: Sequence[str]) -> np.ndarray:
        """Each claimed signer's position in `signers`; ValueError naming those that are not enrolled."""
        position = {signer: j for j, signer in enumerate(self.signers)}
        unknown = sorted({signer for signer in claimed if signer not in position})
        if unknown:
            raise ValueError(f"not enrolled for verification: {', '.join(unknown)}")
        return np.array([position[signer] for signer in claimed], dtype=np.int64)

    def decision_function(self, vectors: np.ndarray, claimed: Sequence[str]) -> np.ndarray:
        """The raw SVM decision of each row's claimed signer (float64 [N]): what export.py computes in the graph."""
        index = self.signer_indices(claimed)
        kernel = kernel_matrix(l2_normalize(vectors), self.support_vectors, self.kernel, self.gamma)
        out = np.empty(len(index))
        for i, j in enumerate(index):
            entries = slice(self.offsets[j], self.offsets[j + 1])
            out[i] = kernel[i, self.sv_index[entries]] @ self.dual_coef[entries] + self.intercept[j]
        return out

    def score(self, vectors: np.ndarray, claimed: Sequence[str]) -> np.ndarray:
        """The calibrated score of each row for its claimed signer (float64 [N])."""
        index = self.signer_indices(claimed)
        return (self.decision_function(vectors, claimed) - self.score_mean[index]) / self.score_std[index]

    def open_set_similarity(self, vectors: np.ndarray, claimed: Sequence[str]) -> np.ndarray:
        """How close each row is to its claimed signer's references (float64 [N]): the mean cosine similarity of
        its pooled features to the `open_set_neighbours` nearest of them (all of them when there are fewer)."""
        index = self.signer_indices(claimed)
        similarity = l2_normalize(vectors) @ self.references.T.astype(np.float64)
        out = np.empty(len(index))
        for i, j in enumerate(index):
            nearest = np.sort(similarity[i, self.reference_signer == j])[::-1][:self.open_set_neighbours]
            out[i] = nearest.mean()
        return out

    def metadata(self) -> dict:
        """What assets.extra/signflow_model.json says about verification."""
        return {
            "threshold": self.threshold,
            "open_set_threshold": self.open_set_threshold,
            "open_set_rule": OPEN_SET_RULE,
            "open_set_neighbours": self.open_set_neighbours,
            "calibration": CALIBRATION,
            "operating_point": self.operating_point,
            "kernel": self.kernel,
            "C": self.c,
            "gamma": self.gamma,
            "cv_eer": self.cv_eer,
            "cv_random_eer": self.cv_random_eer,
            "cv_skilled_eer": self.cv_skilled_eer,
            "feature_dim": self.dim,
            "support_vectors": int(self.support_vectors.shape[0]),
            "signers": list(self.signers),
        }

    def summary(self) -> dict:
        """What the Trainer's report/summary.json says about verification."""
        return {
            **self.metadata(),
            "cv_auc": self.cv_auc,
            "per_signer": {signer: vars(counts) for signer, counts in sorted(self.counts.items())},
            "skipped": dict(sorted(self.skipped.items())),
            "grid": [vars(point) for point in self.grid],
            "seconds": self.seconds,
        }


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in float64 (an all-zero row stays zero; see NORM_EPSILON)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, NORM_EPSILON)


def kernel_matrix(a: np.ndarray, b: np.ndarray, kernel: str, gamma: float | None) -> np.ndarray:
    """k(a_i, b_j) for rows of `a` and `b` (float64 [len(a), len(b)])."""
    dots = a @ b.T
    if kernel == VERIFICATION_LINEAR:
        return dots
    squared = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * dots, 0.0)
    return np.exp(-gamma * squared)


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(EER, threshold) for scores where higher means genuine and "genuine" is score >= threshold.

    Candidate thresholds lie halfway between consecutive distinct scores (and
    beyond both ends). The EER is the mean of the false-accept and false-reject
    rates where they are closest; when several thresholds are equally close (a
    gap between the classes), the threshold is the middle of that range.
    """
    genuine, impostor = np.sort(np.asarray(genuine, float)), np.sort(np.asarray(impostor, float))
    if not len(genuine) or not len(impostor):
        raise ValueError("the EER needs genuine and impostor scores")
    scores = np.unique(np.concatenate([genuine, impostor]))
    candidates = np.concatenate([[scores[0] - 1.0], (scores[:-1] + scores[1:]) / 2.0, [scores[-1] + 1.0]])
    false_accept = 1.0 - np.searchsorted(impostor, candidates, side="left") / len(impostor)
    false_reject = np.searchsorted(genuine, candidates, side="left") / len(genuine)
    gap = np.abs(false_accept - false_reject)
    closest = np.flatnonzero(gap == gap.min())
    first, last = closest[0], closest[-1]
    eer = float((false_accept[first] + false_reject[first] + false_accept[last] + false_reject[last]) / 4.0)
    return eer, float((candidates[first] + candidates[last]) / 2.0)


@dataclass
class _Problem:
    """What every fit shares: the unit features, who is enrolled, and the cross-validation folds.

    Signer s's SVM is fitted on its rows: every shared row (the training examples,
    its references positive and all others negative, then the strangers, negative
    for everyone), then its own extra negatives. Its scores are kept in that order.
    """

    features: np.ndarray  # float64 [N + E, D]: the N shared rows, then every signer's extra negatives
    num_examples: int  # N: training examples and strangers
    stranger: np.ndarray  # bool [N]: the shared rows that are strangers
    signers: list[str]
    own: list[np.ndarray]  # per signer: bool [N], its references among the training examples
    extras: list[np.ndarray]  # per signer: its rows of `features` among the extra negatives
    fold: np.ndarray  # int [N + E]: each row's cross-validation fold
    counts: dict[str, SignerCounts]
    skipped: dict[str, str]

    def rows(self, s: int) -> np.ndarray:
        return np.concatenate([np.arange(self.num_examples), self.extras[s]])

    def targets(self, s: int) -> np.ndarray:
        return np.concatenate([self.own[s], np.zeros(len(self.extras[s]), bool)]).astype(int)

    def random_negatives(self, s: int) -> np.ndarray:
        """Which of signer s's rows are other signers' genuine images (the calibration's impostors)."""
        return np.concatenate([~self.own[s] & ~self.stranger, np.zeros(len(self.extras[s]), bool)])

    def skilled(self, s: int) -> np.ndarray:
        """Which of signer s's rows are its extra negatives (skilled forgeries)."""
        return np.concatenate([np.zeros(self.num_examples, bool), np.ones(len(self.extras[s]), bool)])


def _problem(embeddings: Embeddings, settings: VerificationSettings,
             extra_negatives: Mapping[str, np.ndarray], strangers: np.ndarray) -> _Problem:
    labels = np.array(embeddings.labels, dtype=object)
    present, references = np.unique(labels, return_counts=True) if len(labels) else ([], [])
    signers = [str(s) for s, n in zip(present, references) if n >= settings.min_references]
    skipped = {str(s): f"{n} reference(s), fewer than min_references={settings.min_references}"
               for s, n in zip(present, references) if n < settings.min_references}
    for signer in skipped:
        log.info("verification: signer %s not enrolled (%s); its images still serve as negatives",
                 signer, skipped[signer])
    if len(signers) < 2:
        raise NotEnoughSigners(f"{len(signers)} signer(s) with at least {settings.min_references} references "
                               f"among {len(present)} in the train split; verification needs 2")
    unused = sorted(set(extra_negatives) - set(signers))
    if unused:
        log.warning("verification: extra negatives of signers that are not enrolled are not used: %s", unused)

    strangers = np.asarray(strangers, dtype=np.float32)
    if strangers.ndim != 2 or strangers.shape[1] != embeddings.dim:
        raise ValueError(f"strangers must be [M, {embeddings.dim}], got {strangers.shape}")
    blocks = [embeddings.vectors, strangers]
    shared = len(embeddings) + len(strangers)
    extras: list[np.ndarray] = []
    start = shared
    for signer in signers:
        extra = np.asarray(extra_negatives.get(signer, np.zeros((0, embeddings.dim))), dtype=np.float32)
        if extra.ndim != 2 or extra.shape[1] != embeddings.dim:
            raise ValueError(f"extra negatives of {signer} must be [M, {embeddings.dim}], got {extra.shape}")
        extras.append(np.arange(start, start + len(extra)))
        start += len(extra)
        blocks.append(extra)

    # Folds stratified by label: each label's rows (and each signer's extra negatives) are dealt
    # round the folds, so every signer's one-against-the-rest problem is stratified as well, and
    # the training examples' part of every fold is the same for all signers (their kernel
    # blocks are cut once per fold). A signer's references fall in at least two folds, so every
    # fold leaves it a reference to train on.
    rng = np.random.default_rng(settings.seed)
    fold = np.empty(start, dtype=int)
    groups = ([np.flatnonzero(labels == label) for label in present] + [len(embeddings) + np.arange(len(strangers))]
              + extras)
    for rows in groups:
        rows = rng.permutation(rows)
        fold[rows] = (np.arange(len(rows)) + rng.integers(settings.cv_folds)) % settings.cv_folds

    own = [np.r_[labels == signer, np.zeros(len(strangers), bool)] for signer in signers]
    counts = {signer: SignerCounts(references=int(mine.sum()), negatives=int((~mine).sum()),
                                   extra_negatives=len(extra), support_vectors=0)
              for signer, mine, extra in zip(signers, own, extras)}
    stranger = np.r_[np.zeros(len(embeddings), bool), np.ones(len(strangers), bool)]
    return _Problem(l2_normalize(np.concatenate(blocks)), shared, stranger, signers, own, extras, fold, counts,
                    skipped)


class _Kernels:
    """The kernel matrix over all rows for any gamma (linear: gamma None), as kernel_matrix computes it.

    The dot products (and squared distances) are computed once; a gamma's matrix on
    demand, so the search holds two N x N matrices, not one per gamma.
    """

    def __init__(self, features: np.ndarray, kernel: str):
        self._dots = features @ features.T
        self._squared = None
        if kernel != VERIFICATION_LINEAR:
            norms = (features * features).sum(1)
            self._squared = np.maximum(norms[:, None] + norms[None, :] - 2.0 * self._dots, 0.0)

    def __call__(self, gamma: float | None) -> np.ndarray:
        return self._dots if self._squared is None else np.exp(-gamma * self._squared)


def _svc(c: float) -> SVC:
    return SVC(kernel="precomputed", C=c, class_weight="balanced")


def _out_of_fold(problem: _Problem, kernel: np.ndarray, c_grid: Sequence[float],
                 folds: int) -> dict[float, list[np.ndarray]]:
    """Every signer's out-of-fold decision values over its rows, for each C."""
    n = problem.num_examples
    scores = {c: [np.empty(n + len(extra)) for extra in problem.extras] for c in c_grid}
    for f in range(folds):
        held_out = problem.fold == f
        train, test = np.flatnonzero(~held_out[:n]), np.flatnonzero(held_out[:n])
        shared_train, shared_test = kernel[np.ix_(train, train)], kernel[np.ix_(test, train)]
        for s, extra in enumerate(problem.extras):
            extra_train, extra_test = extra[~held_out[extra]], extra[held_out[extra]]
            if len(extra):
                train_rows, test_rows = np.r_[train, extra_train], np.r_[test, extra_test]
                k_train, k_test = kernel[np.ix_(train_rows, train_rows)], kernel[np.ix_(test_rows, train_rows)]
            else:
                k_train, k_test = shared_train, shared_test
            target = np.r_[problem.own[s][train], np.zeros(len(extra_train), bool)].astype(int)
            # Positions of the held-out rows in the signer's row order (examples, then its extras).
            positions = np.r_[test, n + np.flatnonzero(held_out[extra])]
            for c in c_grid:
                scores[c][s][positions] = _svc(c).fit(k_train, target).decision_function(k_test)
    return scores


def _znorm(scores: np.ndarray, random_negative: np.ndarray) -> tuple[float, float]:
    negatives = scores[random_negative]
    return float(negatives.mean()), max(float(negatives.std()), MIN_SCORE_STD)


@dataclass(frozen=True)
class _Pooled:
    """One grid point's figures from its calibrated out-of-fold scores, pooled over signers."""

    point: GridPoint
    calibration: list[tuple[float, float]]  # per signer (mean, std)
    random_threshold: float  # equal-error point against random forgeries and strangers
    skilled_threshold: float | None  # equal-error point against skilled forgeries (None: there are none)


def _pooled(problem: _Problem, c: float, gamma: float | None, scores: list[np.ndarray]) -> _Pooled:
    """Calibrate each signer's out-of-fold scores, pool them, and measure the grid point."""
    genuine, random, skilled, calibration = [], [], [], []
    for s, signer_scores in enumerate(scores):
        mean, std = _znorm(signer_scores, problem.random_negatives(s))
        calibrated = (signer_scores - mean) / std
        target, extra = problem.targets(s), problem.skilled(s)
        genuine.append(calibrated[target == 1])
        random.append(calibrated[(target == 0) & ~extra])
        skilled.append(calibrated[extra])
        calibration.append((mean, std))
    genuine, random, skilled = np.concatenate(genuine), np.concatenate(random), np.concatenate(skilled)
    random_eer, random_threshold = equal_error_rate(genuine, random)
    skilled_eer, skilled_threshold = equal_error_rate(genuine, skilled) if len(skilled) else (None, None)
    criterion = random_eer if skilled_eer is None else (random_eer + skilled_eer) / 2.0
    impostor = np.r_[random, skilled]
    auc = float(roc_auc_score(np.r_[np.ones(len(genuine)), np.zeros(len(impostor))], np.r_[genuine, impostor]))
    point = GridPoint(float(c), None if gamma is None else float(gamma), criterion, auc, random_eer, skilled_eer)
    return _Pooled(point, calibration, random_threshold, skilled_threshold)


def _open_set(problem: _Problem, settings: VerificationSettings) -> dict:
    """The open set's references and cut: every enrolled signer's training references, and the similarity that
    `open_set_acceptance` of them reach when each is left out of its signer's references in turn."""
    references, reference_signer, left_out = [], [], []
    k = settings.open_set_neighbours
    for s, mine in enumerate(problem.own):
        rows = problem.features[np.flatnonzero(mine)]
        similarity = rows @ rows.T
        np.fill_diagonal(similarity, -np.inf)
        # Row i's nearest others (a signer has at least min_references >= 2 references, so one at least).
        nearest = -np.sort(-similarity, axis=1)[:, :min(k, len(rows) - 1)]
        left_out.append(nearest.mean(axis=1))
        references.append(rows)
        reference_signer.append(np.full(len(rows), s, np.int32))
    return {"references": np.concatenate(references).astype(np.float32),
            "reference_signer": np.concatenate(reference_signer), "open_set_neighbours": k,
            "open_set_threshold": float(np.quantile(np.concatenate(left_out), 1.0 - settings.open_set_acceptance))}


def fit_verification(embeddings: Embeddings, settings: VerificationSettings = VerificationSettings(),
                     extra_negatives: Mapping[str, np.ndarray] | None = None,
                     strangers: np.ndarray | None = None) -> VerificationModel:
    """Fit one calibrated SVM per enrolled signer on `embeddings` (the train split's pooled features).

    `extra_negatives`: per signer, more negatives ([M, D] features, e.g. skilled
    forgeries claimed as that signer); they join that signer's training and
    cross-validation negatives and the skilled-forgery EER, not the calibration
    statistics (those come from random forgeries, which every signer has, so the
    scale stays comparable between signers with and without forgeries).
    `strangers`: [M, D] features of pages nobody signed, a negative of every
    signer (see stranger_images). Raises NotEnoughSigners when fewer than 2
    signers have `settings.min_references`.
    """
    started = time.monotonic()
    problem = _problem(embeddings, settings, extra_negatives or {},
                       np.zeros((0, embeddings.dim)) if strangers is None else strangers)
    # NOTE: the kernel matrices are finite by construction; skipping scikit-learn's checks
    # of every matrix handed to every fit saves a fifth of the search.
    with sklearn.config_context(assume_finite=True):
        kernels = _Kernels(problem.features, settings.kernel)
        gammas = [None] if settings.kernel == VERIFICATION_LINEAR else list(settings.gamma_grid)
        results = []
        for gamma in gammas:
            kernel = kernels(gamma)
            for c, scores in _out_of_fold(problem, kernel, settings.c_grid, settings.cv_folds).items():
                results.append(_pooled(problem, c, gamma, scores))
        chosen = min(results, key=lambda r: (r.point.cv_eer, -r.point.cv_auc, r.point.c, r.point.gamma or 0.0))
        best, calibration = chosen.point, chosen.calibration
        operating_point = (OPERATING_SKILLED if settings.operating_point == OPERATING_SKILLED
                           and chosen.skilled_threshold is not None else OPERATING_RANDOM)
        threshold = chosen.skilled_threshold if operating_point == OPERATING_SKILLED else chosen.random_threshold
        kernel = kernels(best.gamma)

        # Final SVMs on all of each signer's rows; the calibration is that of its out-of-fold
        # scores at the chosen point.
        support: list[np.ndarray] = []
        coefficients: list[np.ndarray] = []
        intercepts = []
        for s, signer in enumerate(problem.signers):
            rows = problem.rows(s)
            fitted = _svc(best.c).fit(kernel[np.ix_(rows, rows)], problem.targets(s))
            support.append(rows[fitted.support_])
            coefficients.append(fitted.dual_coef_[0].astype(np.float64))
            intercepts.append(float(fitted.intercept_[0]))
            problem.counts[signer] = dataclasses.replace(problem.counts[signer], support_vectors=len(fitted.support_))
    distinct, sv_index = np.unique(np.concatenate(support), return_inverse=True)
    offsets = np.concatenate([[0], np.cumsum([len(rows) for rows in support])]).astype(np.int64)
    model = VerificationModel(
        kernel=settings.kernel, c=best.c, gamma=best.gamma, threshold=threshold, cv_eer=best.cv_eer,
        cv_auc=best.cv_auc, signers=tuple(problem.signers), support_vectors=problem.features[distinct],
        sv_index=sv_index.astype(np.int32), dual_coef=np.concatenate(coefficients), offsets=offsets,
        intercept=np.array(intercepts), score_mean=np.array([mean for mean, _ in calibration]),
        score_std=np.array([std for _, std in calibration]), counts=dict(problem.counts), skipped=problem.skipped,
        grid=tuple(result.point for result in results), seconds=time.monotonic() - started,
        operating_point=operating_point, **_open_set(problem, settings),
        cv_random_eer=best.cv_random_eer, cv_skilled_eer=best.cv_skilled_eer,
    )
    log.info("verification: %d signers, %s kernel, C=%g%s, cross-validated EER %.4f on random forgeries, %s on "
             "skilled; threshold %.4f (%s forgeries' equal-error point); %d distinct support vectors; %.1f s",
             len(model.signers), model.kernel, model.c, "" if model.gamma is None else f", gamma={model.gamma:g}",
             best.cv_random_eer, "n/a" if best.cv_skilled_eer is None else f"{best.cv_skilled_eer:.4f}",
             model.threshold, operating_point, len(distinct), model.seconds)
    return model


@dataclass(frozen=True)
class TrainerVerification:
    """What the Trainer's verification step produced: the model (None when skipped), what report/summary.json
    says about it, and the train split's pooled features it was fitted on (reusable as they are)."""

    model: VerificationModel | None
    summary: dict
    embeddings: Embeddings


def fit_for_classifier(classifier, train_files: Sequence[str | os.PathLike], config: TrainerConfig
                       ) -> TrainerVerification:
    """The Trainer's verification step: the final classifier's pooled features of the train split (one forward
    pass over its genuine examples, one over its forgeries), then `fit_verification` with the config's
    settings, the forgeries (`genuine` == 0, labelled with the signer they claim to be) as that signer's
    extra negatives.

    With fewer than 2 signers to enrol the model is None (logged; the export then
    has no verify signature) and the summary says why.
    """
    started = time.monotonic()
    files = [str(f) for f in train_files]
    features = embed_examples(classifier, files, config)
    forged = embed_examples(classifier, files, config, forgeries=True)
    embedding_seconds = time.monotonic() - started
    log.info("verification: pooled features of %d training examples and %d forgeries (%d-d) in %.1f s",
             len(features), len(forged), features.dim, embedding_seconds)
    return fit_on_features(features, forged, config, embedding_seconds)


def stranger_images(size: tuple[int, int] = (160, 400)) -> list[bytes]:
    """Pages no signer wrote: blank white, grey and tinted paper, paper noise, a ruled line, a smudge (PNG).

    Every signer's SVM gets their features as negatives (fit_verification's `strangers`). Without them an image
    far from every training image (a blank page) gets an RBF decision near the SVM's
    intercept, which can lie above the threshold: such pages were accepted by
    `verify` and the open set in tests until these negatives were added.
    """
    from PIL import Image, ImageDraw, ImageFilter  # only here: the rest of the module needs no images

    height, width = size
    rng = np.random.default_rng(0)
    pages = [Image.new("RGB", (width, height), colour) for colour in
             ((255, 255, 255), (200, 200, 200), (128, 128, 128), (245, 235, 200), (220, 230, 245))]
    noise = np.clip(235 + rng.normal(0, 25, (height, width, 1)), 0, 255).astype(np.uint8).repeat(3, axis=2)
    pages.append(Image.fromarray(noise))
    ruled = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(ruled).line([(10, height * 2 // 3), (width - 10, height * 2 // 3)], fill=(40, 40, 40), width=3)
    pages.append(ruled)
    smudge = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(smudge).ellipse([width // 3, height // 3, width // 2, height // 2], fill=(90, 90, 90))
    pages.append(smudge.filter(ImageFilter.GaussianBlur(6)))
    encoded = []
    for page in pages:
        buffer = io.BytesIO()
        page.save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    return encoded


def fit_on_features(features: Embeddings, forged: Embeddings, config: TrainerConfig,
                    embedding_seconds: float = 0.0, strangers: np.ndarray | None = None) -> TrainerVerification:
    """`fit_verification` with the config's settings on a train split's pooled features (`features`: genuine
    references; `forged`: its forgeries, labelled with the signer they claim to be, as that signer's extra
    negatives; `strangers`: the stranger pages' features, everyone's negatives). The fast cycle calls it on
    cached features; fit_for_classifier after a forward pass."""
    claimed = np.array(forged.labels, dtype=object)
    extra_negatives = {str(signer): forged.vectors[claimed == signer] for signer in sorted(set(forged.labels))}
    try:
        model = fit_verification(features, VerificationSettings.from_config(config), extra_negatives, strangers)
    except NotEnoughSigners as err:
        log.warning("verification skipped, the export has no verify signature: %s", err)
        return TrainerVerification(None, {"skipped": str(err), "embedding_seconds": embedding_seconds}, features)
    return TrainerVerification(model, {**model.summary(), "embedding_seconds": embedding_seconds}, features)
