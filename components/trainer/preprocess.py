"""Image preprocessing shared by the training input pipeline and the serving signature.

Both sides call `image_to_model_input`, so what the model sees at serving time is
exactly what it saw in training (tests/trainer checks the two paths agree).
"""
from __future__ import annotations

import tensorflow as tf

from components.trainer.config import MIN_SIDE


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


def resize_with_white_pad(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Fit `image` into height x width keeping its aspect ratio, padding with white paper.

    Signatures are wide; stretching would distort the stroke shapes the model keys
    on, and black padding would add strong false edges. Returns float32 in [0, 255].

    NOTE: not tf.image.resize_with_pad: it computes the fitted size with different
    arithmetic for static and dynamic shapes (measured: a 164x415 image fitted to
    72x216 came out a pixel apart in the serving signature, where shapes are
    unknown, and in eager code), so the Trainer's and the server's inputs differed
    by up to 115 of 255 at stroke edges. The size here is one float64 rounding,
    the same whatever is known about the shape.
    """
    shape = tf.shape(image)
    source = tf.cast(shape[:2], tf.float64)
    target = tf.constant([height, width], tf.float64)
    scale = tf.reduce_min(target / source)
    fitted_size = tf.cast(tf.clip_by_value(tf.round(source * scale), 1.0, target), tf.int32)
    inverted = 255.0 - tf.cast(image, tf.float32)
    fitted = tf.image.resize(inverted, fitted_size, method="bilinear", antialias=True)
    top = (height - fitted_size[0]) // 2
    left = (width - fitted_size[1]) // 2
    # Zero in the inverted image is white paper.
    padded = tf.pad(fitted, [[top, height - fitted_size[0] - top], [left, width - fitted_size[1] - left], [0, 0]])
    return 255.0 - tf.ensure_shape(padded, [height, width, None])


def scale_for_xception(image: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> [-1, 1], what keras.applications.xception.preprocess_input does."""
    return image / 127.5 - 1.0


def image_to_model_input(image_bytes: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Raw image file bytes (scalar string) -> float32 [height, width, 3] model input."""
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ValueError(f"Xception needs inputs of at least {MIN_SIDE}x{MIN_SIDE}, got {height}x{width}")
    return scale_for_xception(resize_with_white_pad(decode_rgb(image_bytes), height, width))
