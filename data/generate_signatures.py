"""Deterministic generator of synthetic offline handwritten signatures.

No public signature dataset is reachable from where signflow is built and tested,
so the committed sample in `data/sample/` is synthesised by this script:

    python data/generate_signatures.py --seed 7 --signers 10 --per-signer 30 \
        --out data/sample --contact-sheet data/sample/contact_sheet.png

How a signature is made
-----------------------
A *signer* is a stable style drawn from (seed, signer index): a name-like
sequence of cursive letter shapes (a capital, then lowercase letters, in one or
two words) with the signer's own quirks on every letter, letter widths and
spacing (rhythm), proportions of ascenders, descenders and capitals to the
x-height, slant, a baseline that tilts and bends, height that trails off along
the name, an optional flourish (underline, loop-back underline, separate bar,
rising tail) and a pen-width-to-x-height ratio.

A *sample* is one signing by that signer, drawn from (seed, signer, sample): the
letter keypoints move a little (independent jitter plus a smooth elastic field),
letter widths, spacing, slant, rotation, scale and aspect change slightly, the
pen pressure and ink flow vary along the stroke, and the "scan" differs: canvas
size, margins and placement, paper tone and shading, ink colour, blur, noise,
and the file format (PNG, JPEG or GIF, by sample index).

Global cues are deliberately uninformative: the canvas size is drawn per sample
independently of the signer, the ink colour comes from a palette whose families
are shared by several signers (and each sample may use a different pen), and pen
widths overlap between signers. Only the shape of the signature identifies the
signer.

Determinism: every random draw comes from a numpy Generator(PCG64) seeded from a
SeedSequence of (seed, stream, signer[, sample]); rasterisation, blur and noise
are numpy code; the encoders get fixed options and no metadata. So the same
arguments give byte-identical files (for the same numpy and Pillow versions,
which MANIFEST.json records).

Skilled forgeries
-----------------
A *forgery* of signer T by writer F (`render_forgery`) is T's name written in
F's hand while imitating T (`forged_style`): the forger copies what can be seen
(T's letters, capitals, word breaks, pen lifts, i-dots and t-bars, letter
proportions and kind of flourish) but not exactly how T forms them: each
letter's quirks, the slant, baseline tilt and bend and the ascender and
descender sizes are F's own, pulled towards T's by the forger's `skill`; the pen
(width ratio, usual ink) is F's, and slow, careful copying adds a fine tremor to
the stroke. The forger may be any writer index, inside the signer set or not;
`generate(..., forgeries_per_signer=N)` uses writers outside it, a different one
for every forgery, and writes them as `images/<label>_forg/` files or as
`forgeries.jsonl` records with "genuine": false (both are ingestion's forgery
conventions). Without forgeries, nothing of the output changes.

The file is importable by path (`data` is not a package); the API is
`generate`, `render_signature`, `render_array`, `render_forgery`,
`forged_style` and `make_contact_sheet`.
"""

import argparse
import base64
import hashlib
import io
import json
import math
import shutil
import sys
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFont

DEFAULT_SEED = 7
DEFAULT_SIGNERS = 10
DEFAULT_PER_SIGNER = 30
# Samples 0..DEFAULT_JSONL_PER_SIGNER-1 of each signer go to signatures.jsonl (base64),
# the rest to images/<label>/ as plain files: both ways data reaches the pipeline.
DEFAULT_JSONL_PER_SIGNER = 20
# How closely a forger imitates the signer's hand: 0 writes the name in their own hand, 1 copies it exactly.
DEFAULT_FORGERY_SKILL = 0.5
# Where generate() puts forgeries: image files in images/<label>_forg/, or records in forgeries.jsonl.
FORGERIES_IN = ("images", "jsonl")
FORGERY_FOLDER_SUFFIX = "_forg"
FORGERIES_JSONL = "forgeries.jsonl"

# File extension -> Pillow's format name.
PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "gif": "GIF"}
FORMATS = tuple(PIL_FORMAT)
# Formats by sample index. JPEG is what phones and most scanners send, so it is
# half of the cycle (which also keeps the committed sample small).
_FORMAT_CYCLE = ("jpg", "png", "jpg", "gif")

# Random streams: one per signer style, one per (signer, sample) for the pixels
# and one per (signer, sample) for encoder settings. The stream tag keeps them apart.
_STYLE_STREAM = 0
_SAMPLE_STREAM = 1
_ENCODE_STREAM = 2
# Forgeries: the forger's imitation of a signer (per target, forger), its signings and their encoding.
_FORGERY_STYLE_STREAM = 3
_FORGERY_SAMPLE_STREAM = 4
_FORGERY_ENCODE_STREAM = 5

Point = tuple[float, float]

# --------------------------------------------------------------------------
# Letter shapes
#
# Keypoints of the pen path through one letter, in a cell of width 1: x is a
# fraction of the letter's width, y is in x-heights above the baseline. y > 1
# reaches into the ascender zone and y < 0 into the descender zone; both zones
# are rescaled per signer (see _zone). Every lowercase letter enters near the
# baseline at x=0 and leaves at x=1, so letters join into a connected cursive
# stroke; the spline through the keypoints rounds them into loops and arcs.
# --------------------------------------------------------------------------

_LOWER: dict[str, list[Point]] = {
    "a": [(0.0, 0.15), (0.55, 0.85), (0.72, 0.95), (0.35, 1.0), (0.05, 0.55), (0.2, 0.05),
          (0.58, 0.35), (0.78, 0.95), (0.72, 0.35), (0.82, 0.04), (1.0, 0.22)],
    "c": [(0.0, 0.2), (0.55, 0.88), (0.68, 0.82), (0.35, 0.98), (0.05, 0.5), (0.3, 0.02), (1.0, 0.28)],
    "e": [(0.0, 0.1), (0.62, 0.45), (0.66, 0.8), (0.42, 0.96), (0.15, 0.6), (0.3, 0.05), (1.0, 0.25)],
    "i": [(0.0, 0.2), (0.45, 0.95), (0.5, 0.2), (0.68, 0.02), (1.0, 0.28)],
    "l": [(0.0, 0.1), (0.55, 1.3), (0.68, 1.95), (0.48, 2.2), (0.3, 1.85), (0.35, 0.6), (0.5, 0.02),
          (1.0, 0.28)],
    "m": [(0.0, 0.1), (0.12, 0.95), (0.12, 0.0), (0.24, 0.85), (0.38, 0.95), (0.45, 0.0), (0.56, 0.85),
          (0.72, 0.95), (0.78, 0.1), (1.0, 0.28)],
    "n": [(0.0, 0.1), (0.2, 0.95), (0.2, 0.0), (0.36, 0.85), (0.6, 0.95), (0.7, 0.1), (1.0, 0.28)],
    "o": [(0.0, 0.2), (0.45, 0.9), (0.42, 1.0), (0.12, 0.6), (0.3, 0.04), (0.66, 0.38), (0.55, 0.95),
          (0.78, 0.88), (1.0, 0.78)],
    "r": [(0.0, 0.1), (0.3, 0.95), (0.45, 0.78), (0.7, 0.95), (0.7, 0.4), (0.76, 0.04), (1.0, 0.28)],
    "s": [(0.0, 0.1), (0.42, 1.0), (0.35, 0.58), (0.72, 0.3), (0.45, 0.0), (0.18, 0.12), (1.0, 0.3)],
    "u": [(0.0, 0.3), (0.15, 0.95), (0.15, 0.2), (0.35, 0.02), (0.6, 0.5), (0.65, 0.95), (0.65, 0.2),
          (0.8, 0.02), (1.0, 0.28)],
    "h": [(0.0, 0.1), (0.4, 1.5), (0.5, 2.15), (0.3, 2.2), (0.25, 1.2), (0.22, 0.0), (0.4, 0.85),
          (0.65, 0.95), (0.72, 0.1), (1.0, 0.28)],
    "d": [(0.0, 0.2), (0.5, 0.9), (0.3, 1.0), (0.05, 0.5), (0.25, 0.02), (0.6, 0.5), (0.75, 1.6),
          (0.8, 2.2), (0.72, 1.0), (0.76, 0.05), (1.0, 0.3)],
    "t": [(0.0, 0.1), (0.4, 1.1), (0.5, 1.7), (0.45, 0.4), (0.6, 0.02), (1.0, 0.3)],
    "g": [(0.0, 0.2), (0.5, 0.9), (0.3, 1.0), (0.05, 0.5), (0.25, 0.02), (0.6, 0.5), (0.72, 0.95),
          (0.66, -0.4), (0.45, -1.0), (0.2, -0.8), (0.45, -0.2), (1.0, 0.3)],
    "y": [(0.0, 0.3), (0.15, 0.95), (0.15, 0.2), (0.35, 0.02), (0.65, 0.95), (0.6, -0.5), (0.4, -1.0),
          (0.15, -0.75), (0.5, -0.1), (1.0, 0.35)],
}
# Natural letter widths in x-heights (before the signer's own width factors).
_LOWER_WIDTH = {"a": 0.9, "c": 0.7, "e": 0.65, "i": 0.45, "l": 0.55, "m": 1.25, "n": 0.9, "o": 0.8,
                "r": 0.75, "s": 0.7, "u": 0.9, "h": 0.9, "d": 0.95, "t": 0.55, "g": 0.9, "y": 0.9}
# Rough English letter frequencies, so names look like names rather than noise.
_LOWER_WEIGHT = {"a": 8, "c": 3, "e": 11, "i": 7, "l": 4, "m": 3, "n": 7, "o": 7, "r": 6, "s": 6,
                 "u": 3, "h": 4, "d": 4, "t": 6, "g": 2, "y": 2}
# Pen-lift extras drawn after the word: i-dots and t-bars, in cell coordinates.
_EXTRA: dict[str, list[Point]] = {
    "i": [(0.5, 1.55), (0.58, 1.62)],
    "t": [(0.1, 1.08), (0.9, 1.18)],
}

# Capitals, in a cell of width 1 and height in x-heights (the top near 2.5).
# Each ends near the baseline on the right so the surname can continue from it.
_CAPITAL: dict[str, list[Point]] = {
    "O": [(0.72, 2.35), (0.3, 2.5), (0.0, 1.4), (0.2, 0.08), (0.7, 0.2), (0.95, 1.4), (0.7, 2.35),
          (0.45, 2.0), (0.6, 0.6), (1.0, 0.3)],
    "J": [(0.15, 2.0), (0.55, 2.6), (0.82, 2.45), (0.62, 0.8), (0.42, -0.8), (0.12, -1.0), (0.05, -0.4),
          (0.5, 0.2), (1.0, 0.3)],
    "M": [(0.0, 0.0), (0.1, 2.3), (0.3, 0.2), (0.48, 2.4), (0.66, 0.0), (0.78, 0.9), (1.0, 0.3)],
    "S": [(0.9, 2.35), (0.55, 2.6), (0.22, 2.05), (0.68, 1.35), (0.8, 0.5), (0.4, 0.0), (0.05, 0.3),
          (0.3, 0.62), (1.0, 0.3)],
    "R": [(0.12, 0.05), (0.22, 2.4), (0.5, 2.6), (0.86, 2.2), (0.6, 1.42), (0.22, 1.3), (0.6, 1.1),
          (0.84, 0.08), (1.0, 0.3)],
    "E": [(0.82, 2.3), (0.42, 2.6), (0.14, 2.1), (0.46, 1.5), (0.3, 1.36), (0.05, 0.8), (0.3, 0.05),
          (0.8, 0.2), (1.0, 0.3)],
    "L": [(0.55, 1.6), (0.8, 2.5), (0.55, 2.6), (0.4, 1.6), (0.25, 0.3), (0.05, 0.05), (0.2, -0.1),
          (0.6, 0.15), (1.0, 0.3)],
    "H": [(0.05, 2.3), (0.2, 1.2), (0.12, 0.0), (0.3, 1.05), (0.75, 1.3), (0.86, 2.4), (0.72, 0.9),
          (0.8, 0.04), (1.0, 0.3)],
    "C": [(0.85, 2.2), (0.62, 2.55), (0.2, 2.2), (0.02, 1.2), (0.25, 0.1), (0.7, 0.05), (1.0, 0.35)],
    "B": [(0.15, 0.1), (0.2, 2.45), (0.55, 2.6), (0.75, 2.1), (0.3, 1.4), (0.8, 1.1), (0.6, 0.1),
          (0.15, 0.1), (0.6, 0.25), (1.0, 0.3)],
}
_CAPITAL_WIDTH = {"O": 1.3, "J": 1.1, "M": 1.6, "S": 1.2, "R": 1.3, "E": 1.1, "L": 1.2, "H": 1.5,
                  "C": 1.2, "B": 1.2}

# Ink families (RGB), shared across signers: ballpoint black, two blues, blue-black, violet.
_INK_FAMILIES = np.array([
    [28, 28, 34],
    [28, 48, 140],
    [36, 78, 190],
    [24, 32, 78],
    [78, 44, 120],
], dtype=np.float64)
# Paper tones: white office paper, cream, light grey recycled, cool white.
_PAPER_TONES = np.array([
    [250, 250, 247],
    [246, 240, 226],
    [236, 235, 231],
    [243, 246, 250],
], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Letter:
    """One letter of a signer's name, as this signer writes it."""

    key: str  # which letter: a key of _LOWER, or of _CAPITAL when `capital`
    capital: bool
    shape: np.ndarray  # (n, 2) keypoints in the letter's cell: the model shape plus the signer's quirks
    extra: np.ndarray | None  # the i-dot or t-bar, if this signer draws it here
    width: float  # x-heights
    height: float  # scale of the letter's heights (signatures trail off towards the end)
    gap: float  # space before the next letter, x-heights
    lift_after: bool  # pen lift after this letter (word break, or a capital drawn apart)


@dataclass(frozen=True)
class Style:
    """What stays the same every time a signer signs."""

    letters: tuple[Letter, ...]
    initial_dot: bool  # "J. Smith": a full stop after a lone initial
    slant: float  # shear, x += slant * y
    tilt: float  # radians; positive runs uphill
    bend: float  # baseline curvature, x-heights per x-height squared
    ascender: float  # ascender zone scale
    descender: float  # descender zone scale
    flourish: str  # one of FLOURISHES
    flourish_size: float
    pen_ratio: float  # pen radius / x-height
    ink_family: int  # index into _INK_FAMILIES: the signer's usual pen
    tremor: float = 0.0  # x-heights of fine shake across the stroke: slow, careful copying (forgeries)


FLOURISHES = ("none", "underline", "loop", "tail", "bar")


@dataclass
class Stroke:
    """One pen-down path in letter space (x-heights, y up), with how loosely each keypoint repeats."""

    points: np.ndarray  # (n, 2)
    jitter: np.ndarray  # (n,) standard deviation of the per-signing noise, x-heights


def _rng(*key: int) -> np.random.Generator:
    """A generator that depends only on `key` (so on no global state and no call order)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


@lru_cache(maxsize=256)
def signer_style(seed: int, signer: int) -> Style:
    """The stable identity of one signer, drawn from (seed, signer) only."""
    rng = _rng(seed, _STYLE_STREAM, signer)
    layout = str(rng.choice(["full", "initial", "single"], p=[0.45, 0.3, 0.25]))
    # Lowercase letters per word; an initial is a capital alone.
    word_lengths = {"full": [int(rng.integers(2, 5)), int(rng.integers(3, 7))],
                    "initial": [0, int(rng.integers(4, 8))],
                    "single": [int(rng.integers(5, 9))]}[layout]
    keys = list(_LOWER_WEIGHT)
    weights = np.array([_LOWER_WEIGHT[k] for k in keys], dtype=np.float64)
    weights /= weights.sum()
    letter_width = rng.uniform(0.75, 1.25)  # narrow vs wide hands
    spacing = rng.uniform(0.0, 0.25)
    decay = rng.uniform(0.0, 0.4)
    capital_apart = bool(rng.random() < 0.35)
    quirk_size = rng.uniform(0.04, 0.09)

    letters: list[Letter] = []
    n_total = sum(word_lengths) + len(word_lengths)
    for n_lower in word_lengths:
        first = str(rng.choice(list(_CAPITAL)))  # drawn before the lowercase letters
        word = [(first, True)] + [(str(k), False) for k in rng.choice(keys, n_lower, p=weights)]
        for pos, (key, capital) in enumerate(word):
            last_in_word = pos == len(word) - 1
            progress = len(letters) / max(1, n_total - 1)
            model = np.array(_CAPITAL[key] if capital else _LOWER[key])
            natural = _CAPITAL_WIDTH[key] if capital else _LOWER_WIDTH[key]
            # Quirks: each signer bends every letter their own way, so the same
            # letter differs between signers, not only the name.
            quirk = rng.normal(0.0, quirk_size, model.shape)
            quirk[0] = 0.0  # keep the entry on the baseline so letters still join
            has_extra = key in _EXTRA and not capital and rng.random() < 0.8
            letters.append(Letter(
                key=key,
                capital=capital,
                shape=model + quirk,
                extra=np.array(_EXTRA[key]) + rng.normal(0.0, 0.1, (2, 2)) if has_extra else None,
                width=natural * letter_width * rng.uniform(0.8, 1.2),
                height=(1.0 - decay * progress) * rng.uniform(0.9, 1.1) * (rng.uniform(0.85, 1.2) if capital else 1.0),
                gap=rng.uniform(0.7, 1.3) if last_in_word else spacing * rng.uniform(0.5, 1.5),
                lift_after=last_in_word or (capital and capital_apart),
            ))
    return Style(
        letters=tuple(letters),
        initial_dot=layout == "initial" and bool(rng.random() < 0.7),
        slant=rng.uniform(-0.1, 0.6),
        tilt=rng.uniform(-0.06, 0.12),
        bend=rng.uniform(-0.012, 0.012),
        ascender=rng.uniform(0.75, 1.25),
        descender=rng.uniform(0.7, 1.2),
        flourish=str(rng.choice(FLOURISHES, p=[0.4, 0.2, 0.15, 0.1, 0.15])),
        flourish_size=rng.uniform(0.8, 1.2),
        pen_ratio=rng.uniform(0.055, 0.11),
        # Families are dealt round-robin so each is shared by several signers.
        ink_family=(signer + seed) % len(_INK_FAMILIES),
    )


def _zone(y: np.ndarray, style: Style) -> np.ndarray:
    """Rescale the ascender (y > 1) and descender (y < 0) zones for this signer."""
    return np.where(y > 1.0, 1.0 + (y - 1.0) * style.ascender, np.where(y < 0.0, y * style.descender, y))


def _place(cell: np.ndarray, x: float, width: float, height: float, style: Style) -> np.ndarray:
    """Cell keypoints of a letter -> letter space, for a letter starting at `x`."""
    return np.column_stack([x + cell[:, 0] * width, _zone(cell[:, 1], style) * height])


def _layout_strokes(style: Style, rng: np.random.Generator) -> list[Stroke]:
    """Lay the letters out for one signing, as pen strokes in letter space.

    Widths, gaps and heights vary a little per signing; the letter shapes, their
    order, the pen lifts and the flourish do not.
    """
    words: list[np.ndarray] = []
    extras: list[np.ndarray] = []
    current: list[np.ndarray] = []
    x = 0.0
    for letter in style.letters:
        width = letter.width * rng.normal(1.0, 0.07)
        height = letter.height * rng.normal(1.0, 0.05)
        placed = _place(letter.shape, x, width, height, style)
        # Joined letters share the pen path: the previous letter's exit already
        # leads into this one, so its entry point is dropped.
        current.append(placed if not current else placed[1:])
        if letter.extra is not None:
            extras.append(_place(letter.extra, x, width, height, style))
        x += width + letter.gap * rng.normal(1.0, 0.1)
        if letter.lift_after:
            words.append(np.concatenate(current))
            current = []
    if style.initial_dot:
        dot_x = style.letters[0].width + 0.15
        extras.append(np.array([[dot_x, 0.04], [dot_x + 0.08, 0.0]]))

    strokes = [Stroke(w, np.full(len(w), 0.05)) for w in words]
    tail, separate = _flourish(style, strokes[-1].points[-1], x)
    if len(tail):
        # Flourishes are looser than letters: their keypoints jitter more.
        last = strokes[-1]
        strokes[-1] = Stroke(np.vstack([last.points, tail]), np.concatenate([last.jitter, np.full(len(tail), 0.1)]))
    if len(separate):
        strokes.append(Stroke(separate, np.full(len(separate), 0.1)))
    strokes.extend(Stroke(e, np.full(len(e), 0.05)) for e in extras)
    return strokes


def _flourish(style: Style, end: np.ndarray, length: float) -> tuple[np.ndarray, np.ndarray]:
    """The signer's closing gesture: (points continuing the last stroke, a separate stroke)."""
    s = style.flourish_size
    ex, ey = float(end[0]), float(end[1])
    depth = -0.5 - 0.6 * style.descender  # below the descenders
    none = np.empty((0, 2))
    if style.flourish == "underline":
        # The last letter swings down and back left under the whole name.
        return np.array([[ex + 0.5 * s, ey - 0.15], [ex + 0.3 * s, depth], [length * 0.5, depth - 0.15 * s],
                         [-0.2 * s, depth + 0.1]]), none
    if style.flourish == "loop":
        # Down into a loop, back left under the name, then a sweep to the right.
        return np.array([[ex + 0.6 * s, ey - 0.2], [ex + 0.45 * s, depth - 0.3 * s], [ex - 0.2, depth],
                         [length * 0.35, depth - 0.1], [-0.15, depth + 0.15], [0.1, depth - 0.4 * s],
                         [length * 0.75, depth - 0.35 * s]]), none
    if style.flourish == "tail":
        # The pen leaves the last letter in a rising stroke up and to the right.
        return np.array([[ex + 0.6 * s, ey + 0.15], [ex + 1.3 * s, ey + 1.5 * s]]), none
    if style.flourish == "bar":
        # A separate, slightly curved underline with a hook, drawn after the name.
        y0 = depth - 0.1
        return none, np.array([[-0.1, y0 + 0.1], [length * 0.35, y0 - 0.1 * s], [length * 0.8, y0 - 0.05],
                               [length + 0.3 * s, y0 + 0.25 * s]])
    return none, none


def _tremble(path: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """A fine shake of the pen across a path in letter space: `amount` x-heights, a few waves per x-height."""
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    return path + amount * np.column_stack([_wave(s, rng, (0.15, 0.45)), _wave(s, rng, (0.15, 0.45))])


def _spline(points: np.ndarray, per_unit: float = 24.0) -> np.ndarray:
    """Centripetal Catmull-Rom curve through `points`, ~`per_unit` samples per x-height.

    The centripetal form never overshoots into cusps or stray loops between
    keypoints, so a letter's loops are exactly the ones its keypoints describe.
    """
    if len(points) == 2:
        return np.linspace(points[0], points[1], 8)
    ext = np.vstack([2 * points[0] - points[1], points, 2 * points[-1] - points[-2]])
    p0, p1, p2, p3 = ext[:-3], ext[1:-2], ext[2:-1], ext[3:]  # one row per segment p1 -> p2
    chord = np.linalg.norm(np.diff(ext, axis=0), axis=1)
    t1 = np.sqrt(chord[:-2]) + 1e-6
    t2 = t1 + np.sqrt(chord[1:-1]) + 1e-6
    t3 = t2 + np.sqrt(chord[2:]) + 1e-6
    counts = np.maximum(2, np.ceil(chord[1:-1] * per_unit).astype(np.int64))
    seg = np.repeat(np.arange(len(counts)), counts)
    step = np.arange(len(seg)) - np.repeat(np.cumsum(counts) - counts, counts)
    t = (t1[seg] + (t2 - t1)[seg] * step / counts[seg])[:, None]
    p0, p1, p2, p3 = p0[seg], p1[seg], p2[seg], p3[seg]
    t1, t2, t3 = t1[seg, None], t2[seg, None], t3[seg, None]
    a1 = (t1 - t) / t1 * p0 + t / t1 * p1
    a2 = (t2 - t) / (t2 - t1) * p1 + (t - t1) / (t2 - t1) * p2
    a3 = (t3 - t) / (t3 - t2) * p2 + (t - t2) / (t3 - t2) * p3
    b1 = (t2 - t) / t2 * a1 + t / t2 * a2
    b2 = (t3 - t) / (t3 - t1) * a2 + (t - t1) / (t3 - t1) * a3
    curve = (t2 - t) / (t2 - t1) * b1 + (t - t1) / (t2 - t1) * b2
    return np.vstack([curve, points[-1:]])


def _resample(path: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Points every `step` pixels along `path`, and their arc length."""
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.append(np.arange(0.0, arc[-1], step), arc[-1])
    return np.column_stack([np.interp(s, arc, path[:, 0]), np.interp(s, arc, path[:, 1])]), s


def _wave(s: np.ndarray, rng: np.random.Generator, wavelengths: tuple[float, float]) -> np.ndarray:
    """Smooth noise in [-1, 1] along arc length: a sum of two random sinusoids."""
    lam = rng.uniform(*wavelengths, size=2)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    return 0.5 * (np.sin(2 * np.pi * s / lam[0] + phase[0]) + np.sin(2 * np.pi * s / lam[1] + phase[1]))


def _stamp(alpha: np.ndarray, pts: np.ndarray, radius: np.ndarray, ink: np.ndarray) -> None:
    """Rasterise discs of `radius` at `pts` into `alpha` (max-composited), antialiased analytically."""
    height, width = alpha.shape
    k = int(math.ceil(radius.max() + 1.0))
    off = np.arange(-k, k + 1)
    cx = np.rint(pts[:, 0]).astype(np.int64)
    cy = np.rint(pts[:, 1]).astype(np.int64)
    gx = cx[:, None, None] + off[None, None, :]
    gy = cy[:, None, None] + off[None, :, None]
    dist = np.sqrt((gx - pts[:, 0, None, None]) ** 2 + (gy - pts[:, 1, None, None]) ** 2)
    # Coverage of a pixel by a disc is ~ the signed distance of its centre to the edge.
    cover = np.clip(radius[:, None, None] + 0.5 - dist, 0.0, 1.0) * ink[:, None, None]
    keep = (cover > 0) & (gx >= 0) & (gx < width) & (gy >= 0) & (gy < height)
    np.maximum.at(alpha.reshape(-1), (gy * width + gx)[keep], cover[keep])


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (height, width, channels) image, edges padded."""
    r = max(1, int(math.ceil(3 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    height, width = img.shape[:2]
    padded = np.pad(img, ((r, r), (0, 0), (0, 0)), mode="edge")
    img = sum(w * padded[i:i + height] for i, w in enumerate(kernel))
    padded = np.pad(img, ((0, 0), (r, r), (0, 0)), mode="edge")
    return sum(w * padded[:, i:i + width] for i, w in enumerate(kernel))


def render_array(seed: int, signer: int, sample: int) -> np.ndarray:
    """One signing by `signer`, as an RGB uint8 array (height, width, 3)."""
    return _render(signer_style(seed, signer), _rng(seed, _SAMPLE_STREAM, signer, sample))


@lru_cache(maxsize=256)
def forged_style(seed: int, target: int, forger: int, skill: float = DEFAULT_FORGERY_SKILL) -> Style:
    """How writer `forger` writes signer `target`'s signature when imitating it: a skilled forgery's style.

    Copied from the target: the letters and capitals, word breaks and pen lifts,
    i-dots and t-bars, the initial's full stop, the letter proportions (roughly:
    the forger measures by eye) and the kind of flourish. The forger's own hand,
    pulled towards the target's by `skill` (0: none of it, 1: all of it): each
    letter's quirks, slant, baseline tilt and bend, ascender and descender sizes,
    flourish size. The forger's: the pen (width ratio, usual ink) and a tremor
    that shrinks as skill grows. Drawn from (seed, target, forger) only.
    """
    if not 0.0 <= skill <= 1.0:
        raise ValueError(f"skill must be in [0, 1], got {skill}")
    if forger == target:
        raise ValueError(f"writer {forger} cannot forge their own signature")
    model, hand = signer_style(seed, target), signer_style(seed, forger)
    rng = _rng(seed, _FORGERY_STYLE_STREAM, target, forger)
    loose = 1.0 - skill
    quirk_size = rng.uniform(0.04, 0.09)
    letters = []
    for letter in model.letters:
        shape = np.array(_CAPITAL[letter.key] if letter.capital else _LOWER[letter.key])
        own = rng.standard_normal(shape.shape) * quirk_size
        own[0] = 0.0  # letters still join on the baseline
        # The same number of draws whatever the letter and skill, so a style depends on (seed, target, forger) only.
        extra_noise, size_noise = rng.standard_normal((2, 2)), rng.standard_normal(3)
        letters.append(replace(
            letter,
            shape=shape + skill * (letter.shape - shape) + loose * own,
            extra=None if letter.extra is None else letter.extra + 0.1 * loose * extra_noise,
            width=letter.width * (1.0 + 0.08 * size_noise[0]),
            height=letter.height * (1.0 + 0.05 * size_noise[1]),
            gap=max(0.0, letter.gap * (1.0 + 0.15 * size_noise[2])),
        ))

    def blend(copied: float, own_habit: float) -> float:
        return skill * copied + loose * own_habit

    return Style(
        letters=tuple(letters),
        initial_dot=model.initial_dot,
        slant=blend(model.slant, hand.slant),
        tilt=blend(model.tilt, hand.tilt),
        bend=blend(model.bend, hand.bend),
        ascender=blend(model.ascender, hand.ascender),
        descender=blend(model.descender, hand.descender),
        flourish=model.flourish,
        flourish_size=blend(model.flourish_size, hand.flourish_size),
        pen_ratio=hand.pen_ratio,
        ink_family=hand.ink_family,
        tremor=0.006 + 0.012 * loose,
    )


def render_forgery_array(seed: int, target: int, forger: int, sample: int,
                         skill: float = DEFAULT_FORGERY_SKILL) -> np.ndarray:
    """One forgery of `target`'s signature by writer `forger`, as an RGB uint8 array (height, width, 3)."""
    style = forged_style(seed, target, forger, skill)
    return _render(style, _rng(seed, _FORGERY_SAMPLE_STREAM, target, forger, sample))


def _render(style: Style, rng: np.random.Generator) -> np.ndarray:
    """One signing in `style`, every random draw from `rng`."""
    # 1. The pen path in letter space, with this signing's wobble: independent
    #    keypoint noise plus a smooth elastic field over the whole name.
    amp = rng.uniform(0.04, 0.09, size=4)
    lam = rng.uniform(2.0, 6.0, size=4)
    phase = rng.uniform(0, 2 * np.pi, size=4)
    paths = []
    for stroke in _layout_strokes(style, rng):
        p = stroke.points + rng.normal(0.0, 1.0, stroke.points.shape) * stroke.jitter[:, None]
        # Elastic field: dx and dy are each a sinusoid of x plus one of y.
        waves = amp * np.sin(2 * np.pi * p[:, [0, 1, 0, 1]] / lam + phase)
        path = _spline(p + np.column_stack([waves[:, 0] + waves[:, 1], waves[:, 2] + waves[:, 3]]))
        # NOTE: only styles with a tremor draw for it, so genuine signings keep their draws (and bytes).
        paths.append(_tremble(path, style.tremor, rng) if style.tremor > 0 else path)

    # 2. Slant, baseline bend, tilt and aspect: the signer's habit plus this signing's deviation.
    slant = style.slant + rng.normal(0.0, 0.06)
    angle = style.tilt + rng.normal(0.0, 0.035)
    aspect = rng.normal(1.0, 0.05)
    mid = 0.5 * (min(p[:, 0].min() for p in paths) + max(p[:, 0].max() for p in paths))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    shaped = []
    for p in paths:
        x = (p[:, 0] + slant * p[:, 1]) * aspect
        y = p[:, 1] + style.bend * (p[:, 0] - mid) ** 2
        shaped.append(np.column_stack([x, -y]) @ rot.T)  # y flipped: image rows grow downwards

    # 3. The scan: a canvas whose size owes nothing to the signer, the signature
    #    scaled to fill a random share of it and placed with random margins.
    width = int(rng.integers(220, 421))
    height = int(np.clip(round(width / rng.uniform(1.8, 3.8)), 80, 170))
    pen = style.pen_ratio * rng.normal(1.0, 0.12)  # pen radius in x-heights for this signing
    # The box around the ink, not just the pen's path: the path's box grown by
    # the widest the pen gets (radius * (1 + pressure wave)).
    lo = np.min([p.min(axis=0) for p in shaped], axis=0) - 1.25 * pen
    hi = np.max([p.max(axis=0) for p in shaped], axis=0) + 1.25 * pen
    margin = 3.0  # pixels, so the blur never reaches the edge
    fill = rng.uniform(0.65, 0.92)
    scale = fill * min((width - 2 * margin) / (hi[0] - lo[0]), (height - 2 * margin) / (hi[1] - lo[1]))
    slack = np.array([width, height]) - 2 * margin - (hi - lo) * scale
    origin = margin + rng.uniform(0.0, 1.0, size=2) * slack

    # 4. Ink: the pen radius follows the letter size (a pen-to-letter ratio whose
    #    range is shared by all signers), pressure and ink flow waver along the stroke.
    radius0 = max(0.6, pen * scale)
    # Disc spacing grows with the pen: the edge of a stroke stays smooth to
    # within ~0.05 px while thick pens stamp a third as many discs.
    step = max(0.35, 0.3 * radius0)
    alpha = np.zeros((height, width))
    for p in shaped:
        pts, s = _resample((p - lo) * scale + origin, step)
        taper_in = np.clip(0.4 + 0.6 * s / (4 * radius0), 0.0, 1.0)
        taper_out = np.clip(0.25 + 0.75 * (s[-1] - s) / (8 * radius0), 0.0, 1.0)
        radius = radius0 * (1.0 + 0.2 * _wave(s, rng, (20.0, 80.0)))
        if s[-1] > 6 * radius0:  # dots and short bars are pressed, not flicked
            radius = radius * taper_in * taper_out
        ink = np.clip(0.9 + 0.12 * _wave(s, rng, (30.0, 120.0)), 0.0, 1.0)
        _stamp(alpha, pts, np.maximum(radius, 0.35), ink)
    # Ballpoint grain: ink does not cover the paper fibres evenly.
    alpha *= 1.0 - np.clip(rng.normal(0.05, 0.05, alpha.shape), 0.0, 0.3)

    # 5. Colours: the signer's usual pen most of the time, any pen otherwise;
    #    the paper's tone, shading and an occasional printed signature line.
    family = style.ink_family if rng.random() < 0.6 else int(rng.integers(len(_INK_FAMILIES)))
    ink_rgb = np.clip(_INK_FAMILIES[family] + rng.normal(0.0, 10.0, 3), 0, 255)
    alpha *= rng.uniform(0.88, 1.0)
    paper = _PAPER_TONES[int(rng.integers(len(_PAPER_TONES)))] + rng.normal(0.0, 3.0, 3)
    yy, xx = np.arange(height)[:, None], np.arange(width)[None, :]
    shade_dir = rng.normal(0.0, 1.0, 2)
    shade = (xx / width - 0.5) * shade_dir[0] + (yy / height - 0.5) * shade_dir[1]
    line = np.zeros((height, width))
    if rng.random() < 0.2:
        line_y = origin[1] + (hi[1] - lo[1]) * scale * rng.uniform(0.7, 0.95)
        line = np.clip(1.0 - np.abs(yy - line_y), 0.0, 1.0) * ((xx > width * 0.05) & (xx < width * 0.95))

    # 6. Scanner: optics blur, then sensor noise. The paper is smooth, so
    #    blurring the ink and line coverage equals blurring the scan, at less cost.
    cover = _blur(np.stack([alpha, line], axis=2), rng.uniform(0.35, 0.8))
    ink_cover, line_cover = cover[:, :, :1], cover[:, :, 1:]
    img = paper + 4.0 * shade[:, :, None] - 70.0 * line_cover
    img = img * (1.0 - ink_cover) + ink_rgb * ink_cover
    # Integer luminance-only noise, the same on all three channels: independent
    # per-channel noise would triple the PNG sizes for no gain in realism here.
    noise = np.rint(rng.normal(0.0, rng.uniform(0.2, 0.6), (height, width, 1)))
    return np.clip(np.rint(img) + noise, 0, 255).astype(np.uint8)


def format_for(sample: int) -> str:
    """The file format of a sample: cycles by sample index, so no signer owns a format."""
    return _FORMAT_CYCLE[sample % len(_FORMAT_CYCLE)]


def encode(pixels: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """Encode RGB pixels with fixed options and no metadata, so the bytes are reproducible."""
    options: dict[str, dict] = {
        "png": {"compress_level": 6, "optimize": False},
        "jpg": {"quality": quality, "subsampling": 2, "optimize": False, "progressive": False},  # 2: 4:2:0
        "gif": {"optimize": False},
    }
    if fmt not in options:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    image = _palette_image(pixels) if fmt == "gif" else Image.fromarray(pixels, "RGB")
    buf = io.BytesIO()
    image.save(buf, format=PIL_FORMAT[fmt], **options[fmt])
    return buf.getvalue()


def _palette_image(pixels: np.ndarray, levels: int = 64) -> Image.Image:
    """A palette image whose colours run from the paper to the ink.

    A signature scan is a blend of two colours, so a ramp between them keeps it
    faithful with few colours; building the palette here (not with Pillow's
    quantizer) keeps the result independent of Pillow's quantisation algorithm.
    """
    flat = pixels.reshape(-1, 3).astype(np.float64)
    lum = flat @ np.array([0.299, 0.587, 0.114])
    light = flat[lum >= np.percentile(lum, 60)].mean(axis=0)  # the paper: most of the canvas
    dark = flat[lum <= np.percentile(lum, 0.5)].mean(axis=0)  # the ink's core
    span = light - dark
    t = np.clip((flat - dark) @ span / max(float(span @ span), 1e-9), 0.0, 1.0)
    index = np.rint(t * (levels - 1)).astype(np.uint8).reshape(pixels.shape[:2])
    palette = np.rint(dark[None, :] + np.linspace(0.0, 1.0, levels)[:, None] * span[None, :])
    img = Image.fromarray(index, "P")
    img.putpalette(np.clip(palette, 0, 255).astype(np.uint8).reshape(-1).tolist())
    return img


def render_signature(seed: int, signer: int, sample: int, fmt: str | None = None) -> bytes:
    """One signing by `signer`, encoded as `fmt` ("png", "jpg", "gif"; default: by sample index).

    The pixels do not depend on `fmt`, so a sample differs between formats only by encoding.
    """
    fmt = fmt or format_for(sample)
    # JPEG quality has its own stream so the pixels never depend on the format.
    quality = int(_rng(seed, _ENCODE_STREAM, signer, sample).integers(85, 93))
    return encode(render_array(seed, signer, sample), fmt, quality)


def render_forgery(seed: int, target: int, forger: int, sample: int, fmt: str | None = None,
                   skill: float = DEFAULT_FORGERY_SKILL) -> bytes:
    """One forgery of `target`'s signature by writer `forger`, encoded as `fmt` (default: by sample index)."""
    fmt = fmt or format_for(sample)
    quality = int(_rng(seed, _FORGERY_ENCODE_STREAM, target, forger, sample).integers(85, 93))
    return encode(render_forgery_array(seed, target, forger, sample, skill), fmt, quality)


def forger_for(signers: int, signer: int, forgery: int, forgeries_per_signer: int) -> int:
    """The writer of forgery `forgery` of `signer` in generate(): a different writer outside the signer set for
    every forgery (indices from `signers` up), so no forger's hand is shared by two forgeries."""
    return signers + signer * forgeries_per_signer + forgery


def label_for(signer: int) -> str:
    """The class label of a signer: signer_00, signer_01, ..."""
    return f"signer_{signer:02d}"


def record_line(data: bytes, label: str, genuine: bool = True) -> str:
    """One line of signatures.jsonl (without the newline): the image as standard base64, and its label;
    forgeries (of forgeries.jsonl) also carry "genuine": false."""
    record = {"image": {"b64": base64.b64encode(data).decode("ascii")}, "label": label}
    if not genuine:
        record["genuine"] = False
    return json.dumps(record)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate(seed: int, signers: int, per_signer: int, out_dir: Path,
             jsonl_per_signer: int = DEFAULT_JSONL_PER_SIGNER, forgeries_per_signer: int = 0,
             forgeries_in: str = "images") -> dict:
    """Write the sample set into `out_dir` and return its manifest (also written as MANIFEST.json).

    signatures.jsonl holds samples 0..jsonl_per_signer-1 of every signer, ordered
    sample-major (sample 0 of every signer, then sample 1, ...) so any prefix of
    the file covers all signers. images/<label>/ holds the remaining samples.

    With `forgeries_per_signer` N > 0, N skilled forgeries of every signer, each
    by its own writer (forger_for), go to images/<label>_forg/<label>_forg_<NN>.<ext>
    (`forgeries_in="images"`) or to forgeries.jsonl (`"jsonl"`, sample-major,
    "genuine": false); the manifest's args then name both settings. With none,
    the output is what it was before forgeries existed.

    Earlier outputs (signatures.jsonl, forgeries.jsonl, images/) are replaced;
    other files in `out_dir` are left alone.
    """
    if forgeries_in not in FORGERIES_IN:
        raise ValueError(f"forgeries_in must be one of {FORGERIES_IN}, got {forgeries_in!r}")
    if forgeries_per_signer < 0:
        raise ValueError(f"forgeries_per_signer must be >= 0, got {forgeries_per_signer}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images_dir = out_dir / "images"
    if images_dir.exists():
        shutil.rmtree(images_dir)
    forgeries_jsonl = out_dir / FORGERIES_JSONL
    forgeries_jsonl.unlink(missing_ok=True)

    in_jsonl = min(jsonl_per_signer, per_signer)
    with open(out_dir / "signatures.jsonl", "w", encoding="ascii", newline="\n") as f:
        for sample in range(in_jsonl):
            for signer in range(signers):
                f.write(record_line(render_signature(seed, signer, sample), label_for(signer)) + "\n")
    for signer in range(signers):
        label = label_for(signer)
        for sample in range(in_jsonl, per_signer):
            path = images_dir / label / f"{label}_{sample:02d}.{format_for(sample)}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(render_signature(seed, signer, sample))

    def forgery(signer: int, index: int) -> bytes:
        return render_forgery(seed, signer, forger_for(signers, signer, index, forgeries_per_signer), index)

    if forgeries_per_signer and forgeries_in == "jsonl":
        with open(forgeries_jsonl, "w", encoding="ascii", newline="\n") as f:
            for index in range(forgeries_per_signer):
                for signer in range(signers):
                    f.write(record_line(forgery(signer, index), label_for(signer), genuine=False) + "\n")
    elif forgeries_per_signer:
        for signer in range(signers):
            folder = label_for(signer) + FORGERY_FOLDER_SUFFIX
            for index in range(forgeries_per_signer):
                path = images_dir / folder / f"{folder}_{index:02d}.{format_for(index)}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(forgery(signer, index))

    files = [out_dir / "signatures.jsonl", *(p for p in images_dir.rglob("*") if p.is_file())]
    if forgeries_jsonl.exists():
        files.append(forgeries_jsonl)
    args = {"seed": seed, "signers": signers, "per_signer": per_signer, "jsonl_per_signer": in_jsonl}
    if forgeries_per_signer:
        args.update(forgeries_per_signer=forgeries_per_signer, forgeries_in=forgeries_in)
    manifest = {
        "generator": "data/generate_signatures.py",
        "args": args,
        # Byte-identical output is promised for the same versions of these.
        "versions": {"numpy": np.__version__, "pillow": PIL.__version__},
        "files": dict(sorted((p.relative_to(out_dir).as_posix(), _sha256(p)) for p in files)),
    }
    (out_dir / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="ascii")
    return manifest


def read_samples(out_dir: Path) -> dict[str, list[tuple[int, bytes]]]:
    """Every sample in a generated folder: label -> [(sample index, encoded bytes)] in sample order.

    Forgeries are listed apart, under "<label>_forg" (from images/<label>_forg/ or forgeries.jsonl).
    """
    out_dir = Path(out_dir)
    samples: dict[str, list[tuple[int, bytes]]] = {}
    counts: dict[str, int] = {}
    for name in ("signatures.jsonl", FORGERIES_JSONL):
        if name == FORGERIES_JSONL and not (out_dir / name).exists():
            continue
        with open(out_dir / name, encoding="ascii") as f:
            for line in f:
                record = json.loads(line)
                label = record["label"] + ("" if record.get("genuine", True) else FORGERY_FOLDER_SUFFIX)
                index = counts.get(label, 0)
                counts[label] = index + 1
                samples.setdefault(label, []).append((index, base64.b64decode(record["image"]["b64"])))
    for path in sorted((out_dir / "images").glob("*/*.*")):
        index = int(path.stem.rsplit("_", 1)[1])
        samples.setdefault(path.parent.name, []).append((index, path.read_bytes()))
    return {label: sorted(items) for label, items in sorted(samples.items())}


def make_contact_sheet(out_dir: Path, png_path: Path, columns: int = 8, cell: tuple[int, int] = (180, 72)) -> Path:
    """A grid preview of a generated folder: one row per signer, `columns` samples spread over its range."""
    samples = read_samples(out_dir)
    cell_w, cell_h = cell
    label_w, pad = 78, 4
    sheet = Image.new("RGB", (label_w + columns * (cell_w + pad) + pad, len(samples) * (cell_h + pad) + pad),
                      (96, 96, 96))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for row, (label, items) in enumerate(samples.items()):
        y = pad + row * (cell_h + pad)
        draw.text((6, y + cell_h // 2 - 6), label, fill=(255, 255, 255), font=font)
        # Every k-th sample: spans the set and, with the format cycle, all formats.
        for col, (index, data) in enumerate(items[::max(1, len(items) // columns)][:columns]):
            with Image.open(io.BytesIO(data)) as img:
                fmt = (img.format or "?").lower()
                thumb = img.convert("RGB")
            thumb.thumbnail((cell_w, cell_h), Image.Resampling.LANCZOS)
            x = label_w + pad + col * (cell_w + pad)
            sheet.paste(thumb, (x + (cell_w - thumb.width) // 2, y + (cell_h - thumb.height) // 2))
            draw.text((x + 2, y + cell_h - 11), f"#{index} {fmt}", fill=(200, 0, 0), font=font)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours are plenty for a preview and keep it small enough to commit.
    sheet.quantize(256, dither=Image.Dither.NONE).save(png_path, format="PNG", optimize=True)
    return png_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"non-negative (default {DEFAULT_SEED})")
    parser.add_argument("--signers", type=int, default=DEFAULT_SIGNERS, help=f"default {DEFAULT_SIGNERS}")
    parser.add_argument("--per-signer", type=int, default=DEFAULT_PER_SIGNER, help=f"default {DEFAULT_PER_SIGNER}")
    parser.add_argument("--jsonl-per-signer", type=int, default=DEFAULT_JSONL_PER_SIGNER,
                        help=f"samples per signer written to signatures.jsonl (default {DEFAULT_JSONL_PER_SIGNER})")
    parser.add_argument("--forgeries-per-signer", type=int, default=0,
                        help="skilled forgeries of each signer, each by another writer (default 0)")
    parser.add_argument("--forgeries-in", choices=FORGERIES_IN, default="images",
                        help="images/<label>_forg/ files (default) or forgeries.jsonl records with \"genuine\": false")
    parser.add_argument("--out", type=Path, default=Path("data/sample"))
    parser.add_argument("--contact-sheet", type=Path, help="also write a preview grid PNG here")
    args = parser.parse_args(argv)
    if (args.seed < 0 or args.signers < 1 or args.per_signer < 1 or args.jsonl_per_signer < 0
            or args.forgeries_per_signer < 0):
        parser.error("--seed must be >= 0, --signers and --per-signer >= 1, --jsonl-per-signer and "
                     "--forgeries-per-signer >= 0")
    manifest = generate(args.seed, args.signers, args.per_signer, args.out, args.jsonl_per_signer,
                        args.forgeries_per_signer, args.forgeries_in)
    print(f"wrote {len(manifest['files'])} files to {args.out}", file=sys.stderr)
    if args.contact_sheet:
        print(f"wrote {make_contact_sheet(args.out, args.contact_sheet)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
