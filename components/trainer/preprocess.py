"""Image preprocessing shared by the training input pipeline and the serving signature.

Layer: trainer. Both sides call `image_to_model_input`, so what the model sees at
serving time is exactly what it saw in training (tests/trainer checks the two
paths agree for every image mode a client can send).

Two modes (TrainerConfig.preprocessing):

- "scan" (default): what real scanned signatures need. Greyscale; the paper is
  estimated locally and divided out, so coloured or unevenly lit paper becomes
  white and only the ink's relative darkness remains; the ink's contrast is
  normalised (a pale ballpoint and a felt pen look alike); the image is cropped to
  the ink with a margin, so the signature fills the input whatever the scan's
  size and empty border; then the aspect-preserving fit with white padding.
- "fit": the colour image fitted as it comes (no paper normalisation, no crop).
"""
from __future__ import annotations

import tensorflow as tf

from components.trainer.config import MIN_SIDE, PREPROCESS_FIT, PREPROCESS_SCAN

# Images are first shrunk so that, fitted into the input, they would still be this many
# times larger than it: enough detail survives the crop to the ink, and the per-pixel
# work below stays proportional to the model input, not to the scan.
_WORK_OVERSAMPLING = 3.0
# The paper is estimated on a grid of cells of about this many pixels (at work size):
# coarser than a stroke is wide, finer than how uneven a scan's lighting is.
_PAPER_CELL = 12.0
# Relative darkness (1 - pixel / paper) below this is paper grain or scanner noise.
_NOISE_FLOOR = 0.06
# The ink level that becomes black: this quantile of the darkness of ink pixels.
_INK_QUANTILE = 0.9
# Ink mass left out on each side by the crop (specks and dust at the margins).
_CROP_TAIL = 0.003
# Margin added around the ink, as a fraction of the ink's extent (plus one pixel).
_CROP_MARGIN = 0.04


def decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decode one PNG/JPEG/GIF/BMP to uint8 RGB [H, W, 3]; GIFs give their first frame.

    Transparent pixels are composited over white: a browser canvas sends ink on a
    transparent background whose hidden colour is black, which would otherwise turn
    the whole signature into a black rectangle.
    """
    image = tf.io.decode_image(image_bytes, channels=0, expand_animations=False)
    channels = tf.shape(image)[-1]

    def over_white(rgb: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
        alpha = tf.cast(alpha, tf.float32) / 255.0
        blended = tf.cast(rgb, tf.float32) * alpha + 255.0 * (1.0 - alpha)
        return tf.cast(tf.round(blended), tf.uint8)

    return tf.switch_case(
        channels - 1,
        branch_fns=[
            lambda: tf.image.grayscale_to_rgb(image[..., :1]),
            lambda: tf.image.grayscale_to_rgb(over_white(image[..., :1], image[..., 1:2])),
            lambda: image[..., :3],
            lambda: over_white(image[..., :3], image[..., 3:4]),
        ],
    )


def _fitted_size(source: tf.Tensor, height: float | tf.Tensor, width: float | tf.Tensor) -> tf.Tensor:
    """[h, w] of `source` ([2] float64) scaled to fit height x width, as int32, at least 1.

    One float64 rounding, the same whatever is known about the shape: TF's own
    resize_with_pad computes this differently for static and dynamic shapes, which
    put the Trainer's and the server's inputs a pixel apart for some sizes.
    """
    target = tf.cast(tf.stack([height, width]), tf.float64)
    scale = tf.reduce_min(target / source)
    return tf.cast(tf.clip_by_value(tf.round(source * scale), 1.0, target), tf.int32)


def resize_with_white_pad(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Fit `image` ([H, W, C], values in [0, 255]) into height x width keeping its aspect ratio, padding with paper.

    Signatures are wide; stretching would distort the stroke shapes the model keys
    on, and black padding would add strong false edges. Returns float32 in [0, 255].
    """
    fitted_size = _fitted_size(tf.cast(tf.shape(image)[:2], tf.float64), height, width)
    inverted = 255.0 - tf.cast(image, tf.float32)
    fitted = tf.image.resize(inverted, fitted_size, method="bilinear", antialias=True)
    top = (height - fitted_size[0]) // 2
    left = (width - fitted_size[1]) // 2
    # Zero in the inverted image is white paper.
    padded = tf.pad(fitted, [[top, height - fitted_size[0] - top], [left, width - fitted_size[1] - left], [0, 0]])
    return 255.0 - tf.ensure_shape(padded, [height, width, None])


def _darkness(grey: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Grey [H, W, 1] float in [0, 255] -> ink darkness [h, w, 1] in [0, 1] (0 = paper, 1 = full ink), at work size.

    The paper level is estimated per cell of a coarse grid as its brightest
    neighbourhood (a cell's mean, max-pooled over 3x3 cells, so strokes crossing a
    cell do not darken the estimate) and interpolated back; dividing by it removes
    paper colour and uneven lighting. Darkness is then rescaled so the ink's
    `_INK_QUANTILE` level is 1.
    """
    source = tf.cast(tf.shape(grey)[:2], tf.float64)
    target = tf.constant([height * _WORK_OVERSAMPLING, width * _WORK_OVERSAMPLING], tf.float64)
    # Never enlarged: an image that already fits keeps its own size.
    work_size = tf.where(tf.reduce_all(source <= target), tf.cast(source, tf.int32),
                         _fitted_size(source, target[0], target[1]))
    grey = tf.image.resize(grey, work_size, method="area")

    cells = tf.maximum(1, tf.cast(tf.math.ceil(tf.cast(work_size, tf.float32) / _PAPER_CELL), tf.int32))
    coarse = tf.image.resize(grey, cells, method="area")
    coarse = tf.nn.max_pool2d(coarse[tf.newaxis], ksize=3, strides=1, padding="SAME")[0]
    paper = tf.maximum(tf.image.resize(coarse, work_size, method="bilinear"), grey)
    darkness = 1.0 - grey / tf.maximum(paper, 1.0)

    ink = tf.boolean_mask(darkness, darkness > _NOISE_FLOOR)
    count = tf.size(ink)
    level = tf.cond(
        count > 0,
        lambda: tf.sort(ink)[tf.cast(tf.cast(count - 1, tf.float32) * _INK_QUANTILE, tf.int32)],
        lambda: tf.constant(1.0))
    scale = tf.maximum(level - _NOISE_FLOOR, 0.05)
    return tf.clip_by_value((darkness - _NOISE_FLOOR) / scale, 0.0, 1.0)


def _ink_bounds(darkness: tf.Tensor) -> tf.Tensor:
    """[top, bottom, left, right] of the ink in `darkness` [h, w, 1], with a margin, as fractions of h and w.

    Bounds are quantiles of the ink mass along each axis (`_CROP_TAIL` left out on
    each side), so a speck of dust in a corner does not stretch the crop. Without
    ink, the whole image: [0, 1, 0, 1].
    """
    size = tf.shape(darkness)[:2]

    def bounds(mass: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
        cumulative = tf.cumsum(mass) / tf.reduce_sum(mass)
        first = tf.reduce_min(tf.where(cumulative >= _CROP_TAIL)[:, 0])
        last = tf.reduce_min(tf.where(cumulative >= 1.0 - _CROP_TAIL)[:, 0])
        margin = tf.cast(tf.cast(last - first + 1, tf.float32) * _CROP_MARGIN, tf.int64) + 1
        start = tf.maximum(first - margin, 0)
        stop = tf.minimum(last + margin + 1, tf.cast(length, tf.int64))
        return tf.cast(tf.stack([start, stop]), tf.float64) / tf.cast(length, tf.float64)

    def ink() -> tf.Tensor:
        return tf.concat([bounds(tf.reduce_sum(darkness, axis=[1, 2]), size[0]),
                          bounds(tf.reduce_sum(darkness, axis=[0, 2]), size[1])], axis=0)

    return tf.cond(tf.reduce_sum(darkness) > 1.0, ink, lambda: tf.constant([0.0, 1.0, 0.0, 1.0], tf.float64))


def ink_darkness(rgb: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """uint8 RGB [H, W, 3] -> the ink's darkness [h, w, 1] in [0, 1], cropped to the ink with a margin.

    Two passes: the crop is found on the whole image at work size, then the crop
    is cut from the full-resolution image and measured again, so a small
    signature on a large page keeps all the detail the model input can hold.
    """
    grey = tf.image.rgb_to_grayscale(tf.cast(rgb, tf.float32))
    fractions = _ink_bounds(_darkness(grey, height, width))
    size = tf.cast(tf.shape(grey)[:2], tf.float64)
    top = tf.cast(tf.floor(fractions[0] * size[0]), tf.int32)
    bottom = tf.maximum(tf.cast(tf.math.ceil(fractions[1] * size[0]), tf.int32), top + 1)
    left = tf.cast(tf.floor(fractions[2] * size[1]), tf.int32)
    right = tf.maximum(tf.cast(tf.math.ceil(fractions[3] * size[1]), tf.int32), left + 1)
    return _darkness(grey[top:bottom, left:right], height, width)


def scale_for_xception(image: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> [-1, 1], what keras.applications.xception.preprocess_input does."""
    return image / 127.5 - 1.0


# NOTE: tensor-dependent branches here are tf.cond / tf.switch_case and the Python `if`s test Python values,
# so AutoGraph has nothing to convert; converting this module's functions anyway took ~5 s of every export
# and of every traced input pipeline.
@tf.autograph.experimental.do_not_convert
def image_to_model_input(image_bytes: tf.Tensor, height: int, width: int,
                         mode: str = PREPROCESS_SCAN) -> tf.Tensor:
    """Raw image file bytes (scalar string) -> float32 [height, width, 3] model input in [-1, 1]."""
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ValueError(f"Xception needs inputs of at least {MIN_SIDE}x{MIN_SIDE}, got {height}x{width}")
    rgb = decode_rgb(image_bytes)
    if mode == PREPROCESS_FIT:
        return scale_for_xception(resize_with_white_pad(rgb, height, width))
    if mode != PREPROCESS_SCAN:
        raise ValueError(f'preprocessing must be "{PREPROCESS_SCAN}" or "{PREPROCESS_FIT}", got {mode!r}')
    grey = resize_with_white_pad(255.0 * (1.0 - ink_darkness(rgb, height, width)), height, width)
    grey = tf.clip_by_value(grey, 0.0, 255.0)  # resizing's rounding can leave 255 + 1e-5
    return scale_for_xception(tf.image.grayscale_to_rgb(grey))
