"""Scan preprocessing: what it removes (paper colour, uneven light, empty border, specks) and what it keeps.

Each test draws the same strokes under two conditions and compares the model
inputs the real graph computes; the parity with the serving signature for every
image mode is tested in test_trainer_data.py.
"""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw

from components.trainer.config import PREPROCESS_FIT, PREPROCESS_SCAN
from components.trainer.preprocess import image_to_model_input

SIZE = (72, 216)
STROKES = [(30, 70), (60, 20), (90, 75), (130, 25), (170, 80), (210, 30), (250, 60)]


def _page(size=(280, 110), paper=(255, 255, 255), ink=(30, 30, 30), offset=(0, 0), gradient=0.0,
          speck=None, fmt="PNG") -> bytes:
    """STROKES drawn on a page of `size`, shifted by `offset`; `gradient` darkens the paper left to right."""
    image = Image.new("RGB", size, paper)
    if gradient:
        shade = np.linspace(1.0, 1.0 - gradient, size[0])[None, :, None]
        image = Image.fromarray((np.asarray(image, np.float32) * shade).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.line([(x + offset[0], y + offset[1]) for x, y in STROKES], fill=ink, width=4, joint="curve")
    if speck:
        draw.rectangle([speck, (speck[0] + 1, speck[1] + 1)], fill=ink)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _input(data: bytes, mode: str = PREPROCESS_SCAN) -> np.ndarray:
    return image_to_model_input(tf.constant(data), *SIZE, mode).numpy()


def _similarity(a: bytes, b: bytes, mode: str = PREPROCESS_SCAN) -> float:
    """Cosine similarity of two model inputs' ink (1 - input) after a 5x5 blur: 1 for the same ink in the same
    place and weight, lower as the ink moves, shrinks or fades; a stroke a pixel apart still scores high."""
    def ink(data: bytes) -> np.ndarray:
        return tf.nn.avg_pool2d(1.0 - _input(data, mode)[np.newaxis], 5, 1, "SAME").numpy().ravel()

    x, y = ink(a), ink(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_scan_input_is_grey_white_paper_and_black_ink():
    image = _input(_page(paper=(235, 225, 200), ink=(40, 60, 160)))
    assert image.shape == (*SIZE, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    np.testing.assert_array_equal(image[..., 1], image[..., 2])
    assert np.median(image) == pytest.approx(1.0, abs=1e-6)  # paper is white
    assert image.min() < -0.9  # the ink's core is (nearly) black


def test_coloured_and_unevenly_lit_paper_looks_like_white_paper():
    white = _page()
    for other in (_page(paper=(240, 220, 170)), _page(paper=(200, 230, 240), ink=(20, 40, 140)),
                  _page(gradient=0.35)):
        assert _similarity(white, other) > 0.99
        # The paper is what the plain fit keeps, and the similarity shows it.
        assert _similarity(white, other, PREPROCESS_FIT) < 0.8


def test_pale_ink_is_normalised_to_the_same_contrast():
    def ink_mass(data: bytes, mode: str) -> float:
        return float((1.0 - _input(data, mode)).sum())

    dark, pale = _page(ink=(20, 20, 20)), _page(ink=(150, 150, 150))
    assert 0.9 < ink_mass(pale, PREPROCESS_SCAN) / ink_mass(dark, PREPROCESS_SCAN) < 1.1
    assert ink_mass(pale, PREPROCESS_FIT) / ink_mass(dark, PREPROCESS_FIT) < 0.6


def test_the_crop_removes_empty_paper_around_the_ink():
    tight, roomy = _page(), _page(size=(900, 500), offset=(400, 250))
    assert _similarity(tight, roomy) > 0.85
    assert _similarity(tight, roomy, PREPROCESS_FIT) < 0.3


def test_a_speck_of_dust_far_from_the_ink_does_not_move_the_crop():
    page = dict(size=(900, 500), offset=(300, 200))
    assert _similarity(_page(**page), _page(**page, speck=(880, 480))) > 0.9


def test_an_empty_page_gives_white_paper():
    image = _input(_page(ink=(255, 255, 255)))
    assert image.min() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("size", [(80, 30), (1400, 780), (229, 83), (300, 1200)])
def test_small_large_and_tall_images_give_the_model_size(size):
    assert _input(_page(size=size, offset=(0, 0))).shape == (*SIZE, 3)


def test_scan_preprocessing_is_the_same_with_static_and_dynamic_shapes():
    """tf.data and eager code know the image's shape; the serving signature does not."""
    dynamic = tf.function(lambda data: image_to_model_input(data, *SIZE),
                          input_signature=[tf.TensorSpec([], tf.string)])
    for size, offset in [((280, 110), (0, 0)), ((641, 333), (200, 90)), ((1372, 778), (500, 300)),
                         ((229, 83), (-40, -20))]:
        data = _page(size=size, offset=offset)
        np.testing.assert_allclose(dynamic(tf.constant(data)).numpy(), _input(data), rtol=0, atol=1e-6,
                                   err_msg=str(size))
