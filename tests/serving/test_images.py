"""serving.images: the one place base64 is decoded and image bytes are accepted or refused."""
import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from serving.images import InvalidImage, decode_b64, inspect_image
from tests.fixtures.tiny_model import make_image_bytes

PAYLOAD = bytes(range(256)) * 3 + b"\xfb\xff"  # encodes with '+' and '/' and needs padding


def _reason(fn, *args, **kwargs) -> str:
    with pytest.raises(InvalidImage) as caught:
        fn(*args, **kwargs)
    return caught.value.reason


@pytest.mark.parametrize("lenient", [False, True])
def test_standard_base64_round_trips_with_and_without_padding(lenient):
    text = base64.b64encode(PAYLOAD).decode()
    assert text.endswith("=") and ("+" in text or "/" in text)
    assert decode_b64(text, lenient=lenient) == PAYLOAD
    assert decode_b64(text.rstrip("="), lenient=lenient) == PAYLOAD
    assert decode_b64(text[:40] + "\n " + text[40:], lenient=lenient) == PAYLOAD


def test_strict_refuses_url_safe_alphabet_like_tf_serving():
    url_safe = base64.urlsafe_b64encode(PAYLOAD).decode()
    assert _reason(decode_b64, url_safe, lenient=False) == "invalid_base64"
    assert decode_b64(url_safe, lenient=True) == PAYLOAD


@pytest.mark.parametrize("text", ["aGVsbG8==", "aGVs====", "aGVsbG8=x", "a", "a€bc"])
def test_strict_refuses_wrong_padding_and_junk(text):
    assert _reason(decode_b64, text, lenient=False) == "invalid_base64"


def test_lenient_refuses_a_text_mixing_the_two_alphabets():
    standard, url_safe = base64.b64encode(PAYLOAD).decode(), base64.urlsafe_b64encode(PAYLOAD).decode()
    assert "+" in standard and "-" in url_safe
    mixed = standard[:100] + url_safe[100:]
    assert "+" in mixed[:100] and "-" in mixed[100:]
    for lenient in (True, False):
        assert _reason(decode_b64, mixed, lenient=lenient) == "invalid_base64"


@pytest.mark.parametrize("lenient", [False, True])
def test_whitespace_around_the_padding_is_ignored_and_a_wrapped_url_safe_text_decodes(lenient):
    text = base64.b64encode(PAYLOAD).decode()
    assert decode_b64(text[:-1] + " \n" + text[-1] + "\r\n", lenient=lenient) == PAYLOAD
    wrapped_url_safe = "\n".join(base64.urlsafe_b64encode(PAYLOAD).decode()[i:i + 76] for i in range(0, 1028, 76))
    if lenient:
        assert decode_b64(wrapped_url_safe, lenient=True) == PAYLOAD
    else:
        assert _reason(decode_b64, wrapped_url_safe, lenient=False) == "invalid_base64"


def test_lenient_accepts_a_browser_data_url():
    png = make_image_bytes("PNG")
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    assert decode_b64(data_url, lenient=True) == png
    assert _reason(decode_b64, data_url, lenient=False) == "invalid_base64"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_accepted_formats_report_size_and_format(fmt):
    info = inspect_image(make_image_bytes(fmt, size=(150, 50)))
    assert (info.format, info.width, info.height) == (fmt, 150, 50)


def _png_header_only(width: int, height: int) -> bytes:
    """A few-byte PNG that declares width x height pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_image"),
        (b"not an image at all", "not_an_image"),
        (make_image_bytes("PNG")[:200], "corrupt_image"),
        (_png_header_only(30000, 30000), "too_many_pixels"),
        (_png_header_only(3000, 3000), "too_many_pixels"),
    ],
    ids=["empty", "text", "truncated", "bomb-900MP", "over-limit"],
)
def test_refused_bytes_carry_a_reason(data, reason):
    assert _reason(inspect_image, data, max_pixels=1_000_000) == reason


def test_unsupported_format_is_refused():
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10)).save(buffer, format="TIFF")
    assert _reason(inspect_image, buffer.getvalue()) == "unsupported_format"


@pytest.mark.parametrize("mode,accepted", [("1", False), ("L", True), ("RGB", True), ("RGBA", True)])
def test_bmp_depths_follow_what_tensorflow_decodes(mode, accepted):
    """Pillow reads 1-bit BMP, TensorFlow's decoder does not: refused here, not in the middle of a model call."""
    import tensorflow as tf

    buffer = io.BytesIO()
    Image.new(mode, (20, 10)).save(buffer, format="BMP")
    data = buffer.getvalue()
    try:
        tf.io.decode_image(data, channels=3)
        decodes = True
    except tf.errors.InvalidArgumentError:
        decodes = False
    assert decodes is accepted
    if accepted:
        assert inspect_image(data).format == "BMP"
    else:
        assert _reason(inspect_image, data) == "unsupported_format"
