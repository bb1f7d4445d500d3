"""Base64 and image-byte checks shared by ingestion (training side) and the server.

This is the one place where signflow decodes base64 and decides whether bytes are
an image it accepts. It lives in `serving/` because the serving side must deploy
without TFX; the training side imports it from here.

Layer: bottom, beside serving.contract (its reason codes). Imports Pillow and
serving.contract only.
"""
from __future__ import annotations

import binascii
import hashlib
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from serving.contract import (
    CORRUPT_IMAGE,
    EMPTY_IMAGE,
    INVALID_BASE64,
    NOT_AN_IMAGE,
    TOO_MANY_PIXELS,
    UNSUPPORTED_FORMAT,
)

# A signature scan is a few hundred pixels wide; 40 MP leaves room for photos and
# still refuses decompression bombs (a 30000 x 30000 PNG is 900 MP).
DEFAULT_MAX_PIXELS = 40_000_000

# Formats the serving graph can decode (tf.io.decode_image), by Pillow's name.
ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP")

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w=.+-]+)*;base64,", re.IGNORECASE)
_STANDARD_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_STANDARD = "standard"
_URL_SAFE = "url-safe"
_PILLOW_FILE_OBJECT = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


class InvalidImage(ValueError):
    """Bytes or text that are not an acceptable image. `reason` is one of serving.contract's image reason codes."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    @property
    def client_detail(self) -> str:
        """`detail` for a client's answer: Pillow's messages name its in-memory file object, noise to a client."""
        return _PILLOW_FILE_OBJECT.sub("", self.detail)


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "PNG", "JPEG", "GIF" or "BMP"
    width: int
    height: int
    sha256: str


def decode_b64(text: str | bytes, *, lenient: bool) -> bytes:
    """Decode base64 text.

    strict (lenient=False) is TF Serving's rule for `{"b64": ...}` values: the
    standard alphabet only, padding optional but exact when present, whitespace
    ignored. A client that works
    against signflow's server must also work against the real TF Serving, so the
    server uses strict.

    lenient (lenient=True) is for ingested data: also the URL-safe alphabet,
    missing padding, embedded whitespace/newlines, and a `data:image/...;base64,`
    prefix as a browser canvas produces.
    """
    if isinstance(text, str):
        if lenient:
            text = text.strip()
            # match, not sub: sub tries the anchored pattern at every offset of a 15 KB text.
            if prefix := _DATA_URL.match(text):
                text = text[prefix.end():]
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidImage(INVALID_BASE64, "base64 text contains non-ASCII characters") from None
    else:
        raw = text
    alphabet = _alphabet(raw)
    if alphabet is None:
        # Whitespace is ignored by both TF Serving's decoder and the lenient one; neither
        # alphabet holds any, so text that passed has none to remove.
        raw = b"".join(raw.split())
        alphabet = _alphabet(raw)
    if lenient:
        if alphabet is None:
            raise InvalidImage(INVALID_BASE64, "characters outside the base64 alphabets")
        if alphabet == _URL_SAFE:
            raw = raw.replace(b"-", b"+").replace(b"_", b"/")
        raw = raw.rstrip(b"=")
    else:
        if alphabet != _STANDARD:
            raise InvalidImage(
                INVALID_BASE64,
                "not standard base64 (alphabet A-Z a-z 0-9 + /; URL-safe '-' and '_' are not accepted)",
            )
        # TF Serving: padding is optional, but when present it must be exact.
        if raw.endswith(b"=") and len(raw) % 4:
            raise InvalidImage(INVALID_BASE64, "base64 padding is wrong for the text's length")
        unpadded = raw.rstrip(b"=")
        if raw != unpadded and len(raw) - len(unpadded) != -len(unpadded) % 4:
            raise InvalidImage(INVALID_BASE64, "base64 padding is wrong for the text's length")
        raw = unpadded
    if len(raw) % 4 == 1:
        raise InvalidImage(INVALID_BASE64, "base64 text has an impossible length")
    try:
        # The alphabet is checked above: b64decode(validate=True) would scan the text again.
        return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4))
    except binascii.Error as err:
        raise InvalidImage(INVALID_BASE64, str(err)) from None


def _alphabet(raw: bytes) -> str | None:
    """_STANDARD (A-Z a-z 0-9 + /), _URL_SAFE (A-Z a-z 0-9 - _) or None: the one alphabet all of `raw` is
    written in, followed by at most two "=". Text in neither, or mixing "+/" with "-_", is None."""
    body = raw.rstrip(b"=")
    if len(raw) - len(body) > 2:
        return None
    # bytes.translate deleting the standard alphabet leaves b"" for standard text, in one
    # pass in C (a third of the time a regular expression takes); of URL-safe or wrapped
    # text it leaves a few symbols.
    rest = body.translate(None, _STANDARD_CHARS)
    if not rest:
        return _STANDARD
    if rest.translate(None, b"-_") or b"+" in body or b"/" in body:
        return None
    return _URL_SAFE


# tf.io.decode_bmp (what the serving signature and the Trainer use) reads these
# depths only; Pillow reads 1- and 4-bit files too, which would fail in the model.
_TF_BMP_BITS = (8, 24, 32)


def _bmp_bits_per_pixel(data: bytes) -> int:
    """biBitCount: at offset 28 in the common 40+ byte info header, 24 in OS/2's 12-byte one."""
    header_size = int.from_bytes(data[14:18], "little")
    offset = 24 if header_size == 12 else 28
    return int.from_bytes(data[offset:offset + 2], "little")


def check_image_header(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) of `data`, checked from its header alone: a PNG/JPEG/GIF/BMP
    (8, 24 or 32-bit) within the pixel limit. Raises InvalidImage.

    No pixel is decoded, so this costs a few microseconds whatever the image; what it
    cannot see is damage past the header (a truncated or corrupt file), which
    inspect_image finds and TensorFlow's decoder refuses.
    """
    return _inspect(data, max_pixels, decode=False)[:3]


def inspect_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Check that `data` is a complete PNG/JPEG/GIF/BMP within the pixel limit.

    The header is read first and the size checked before any pixel is decoded, so
    a decompression bomb costs a few bytes of parsing, not gigabytes of memory.
    Then the image is fully decoded once to catch truncated or corrupt files.
    """
    fmt, width, height = _inspect(data, max_pixels, decode=True)
    return ImageInfo(format=fmt, width=width, height=height, sha256=hashlib.sha256(data).hexdigest())


def _inspect(data: bytes, max_pixels: int, *, decode: bool) -> tuple[str, int, int]:
    if not data:
        raise InvalidImage(EMPTY_IMAGE, "zero bytes")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and past 2x raises) on its own bomb limit; ours is explicit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                width, height = img.size
                if fmt not in ACCEPTED_FORMATS:
                    raise InvalidImage(UNSUPPORTED_FORMAT, f"{fmt or 'unknown'} is not one of {', '.join(ACCEPTED_FORMATS)}")
                if width <= 0 or height <= 0:
                    raise InvalidImage(EMPTY_IMAGE, f"{width}x{height} pixels")
                if width * height > max_pixels:
                    raise InvalidImage(TOO_MANY_PIXELS, f"{width}x{height} exceeds the limit of {max_pixels} pixels")
                if fmt == "BMP" and (bits := _bmp_bits_per_pixel(data)) not in _TF_BMP_BITS:
                    raise InvalidImage(UNSUPPORTED_FORMAT,
                                       f"{bits}-bit BMP: the model's decoder reads 8, 24 and 32-bit BMP only")
                if decode:
                    img.load()
    except InvalidImage:
        raise
    except Image.DecompressionBombError as err:
        raise InvalidImage(TOO_MANY_PIXELS, str(err)) from None
    except UnidentifiedImageError:
        raise InvalidImage(NOT_AN_IMAGE, "not a PNG, JPEG, GIF or BMP image") from None
    except (OSError, SyntaxError, ValueError) as err:
        # Pillow reports truncated and corrupt data as OSError/SyntaxError.
        raise InvalidImage(CORRUPT_IMAGE, str(err) or type(err).__name__) from None
    return fmt, width, height
