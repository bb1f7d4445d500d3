"""Reading landed files into records, validating them, and building tf.Examples.

Pure Python (no Beam, no TFX) so tests and the benchmark can call it directly.
Every record read ends as exactly one `Accepted` or one `Rejected`; nothing is
dropped silently. What counts as one record:

- a non-blank line of a `.jsonl` file;
- an element of `instances`, a row of columnar `inputs`, or an element of
  `examples` in a `.json` file (a `.json` file holding one record object is one
  record; a `.json` file that cannot be parsed, or has none of those shapes, is
  one rejected record);
- an image file;
- any other file (rejected as `unsupported_file`).

A record is a genuine signature of its label unless it says otherwise: a JSON
record with `"genuine": false`, or an image file in a `<label>_forg/` or
`<label>/forged/` folder, is a forgery claimed as <label> (see `folder_claim`).

Base64 is decoded and image bytes are checked only by `serving.images`.
"""
from __future__ import annotations

import base64
import collections
import concurrent.futures
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from serving.contract import (
    B64_KEY,
    BARE_TEXT_IMAGE_KEY,
    GENUINE_FEATURE,
    GENUINE_KEY,
    IMAGE_FEATURE,
    INPUTS_KEY,
    INSTANCES_KEY,
    INVALID_GENUINE,
    INVALID_IMAGE_FIELD,
    INVALID_JSON,
    LABEL_FEATURE,
    MISSING_IMAGE,
    NOT_AN_OBJECT,
    RECORD_IMAGE_KEYS,
    RECORD_LABEL_KEY,
    SHA256_FEATURE,
    UNKNOWN_JSON_SHAPE,
    UNREADABLE_FILE,
    UNSUPPORTED_FILE,
    InvalidRecord,
    check_label,
    columns_to_rows,
    json_type_name,
)
from serving.images import DEFAULT_MAX_PIXELS, ImageInfo, InvalidImage, decode_b64, inspect_image

if TYPE_CHECKING:
    import tensorflow as tf

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp")
JSONL_SUFFIX = ".jsonl"
JSON_SUFFIX = ".json"

# The record and feature keys, the label rule and the reason codes written to the
# quarantine file are serving.contract's (the image ones are raised by serving.images).

EXAMPLES_KEY = "examples"
"""The seed's example lists: a .json file may hold its records under this key."""

FORGERY_FOLDER_SUFFIX = "_forg"
"""An image in `<label>_forg/` is a forgery claimed as <label>."""
FORGERY_FOLDER = "forged"
"""An image in `<label>/forged/` is a forgery claimed as <label>."""


@dataclass(frozen=True)
class LandedFile:
    """One file of a span, as listed in the span's MANIFEST.json."""

    path: str  # absolute path of the landed copy
    name: str  # path relative to the landing folder, e.g. "span-3/inbox/batch.jsonl"
    order: int  # position in the manifest (ties in de-duplication go to the lowest)
    folder_label: str | None  # the signer folder an image file sits in, if any
    unreadable: str | None = None  # why the original could not be read (then nothing was copied)
    folder_genuine: bool = True  # False: the folder marks the image as a forgery (see folder_claim)


@dataclass(frozen=True)
class Accepted:
    """A decodable image within limits, with its label (None: unlabelled) and whether it is genuine."""

    source: str
    order: tuple[int, int]  # (file order, record number): a total order within a span
    image: bytes
    info: ImageInfo
    label: str | None
    genuine: bool = True  # False: a forgery claimed as `label`


@dataclass(frozen=True)
class Rejected:
    """A record that cannot be used, with the reason and what was read."""

    source: str
    reason: str
    message: str
    record: Any  # the parsed JSON value, the raw line text, or None for a whole file
    path: str  # the landed file that holds the original bytes

    def __post_init__(self) -> None:
        # NOTE: JSON may hold lone surrogates ("\ud800"), which no UTF-8 encoder takes:
        # Beam could not even pass such a record on to the quarantine. Kept as its
        # JSON text instead, escapes and all, so nothing is lost.
        try:
            json.dumps(self.record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            object.__setattr__(self, "record", json.dumps(self.record))

    def to_json(self, span: int) -> dict:
        return {
            "reason": self.reason,
            "message": self.message,
            "source": self.source,
            "span": span,
            "path": self.path,
            "record": self.record,
        }


Outcome = Accepted | Rejected


def read_landed_file(
    landed: LandedFile,
    *,
    label_keys: Sequence[str] = (RECORD_LABEL_KEY,),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threads: int = 1,
    labels_name_classes: bool = True,
) -> Iterator[Outcome]:
    """Yield one outcome per record in `landed`, in file order.

    `threads` > 1 validates the records of a JSON Lines file on that many
    threads (outcomes still in file order): decoding an image releases the GIL,
    and it is most of the cost of a record. `labels_name_classes` False (batch
    prediction: a label is the answer expected) accepts contract.UNKNOWN_LABEL
    as a label (see contract.check_label).
    """
    suffix = os.path.splitext(landed.name)[1].lower()
    if landed.unreadable is not None:
        yield Rejected(landed.name, UNREADABLE_FILE, landed.unreadable, None, landed.path)
    elif suffix in IMAGE_SUFFIXES:
        yield _read_image_file(landed, max_pixels, labels_name_classes)
    elif suffix == JSONL_SUFFIX:
        yield from _read_jsonl(landed, label_keys, max_pixels, threads, labels_name_classes)
    elif suffix == JSON_SUFFIX:
        yield from _read_json(landed, label_keys, max_pixels, labels_name_classes)
    else:
        yield Rejected(
            landed.name,
            UNSUPPORTED_FILE,
            f"'{suffix or 'no extension'}' is not one of .jsonl, .json, {', '.join(IMAGE_SUFFIXES)}",
            None,
            landed.path,
        )


def parse_record(
    obj: Any,
    source: str,
    order: tuple[int, int],
    path: str,
    *,
    label_keys: Sequence[str] = (RECORD_LABEL_KEY,),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    labels_name_classes: bool = True,
) -> Outcome:
    """Validate one JSON record: the image as {"b64": ...} under image_bytes/image, as base64 text under
    image, or as a bare "b64" string; the label under the first of `label_keys`; "genuine" (optional)."""
    if not isinstance(obj, dict):
        return Rejected(source, NOT_AN_OBJECT, f"expected a JSON object, got {json_type_name(obj)}", obj, path)
    try:
        text = _image_text(obj)
        label = _label(obj, label_keys, labels_name_classes)
        genuine = _genuine(obj)
    except InvalidRecord as err:
        return Rejected(source, err.reason, err.message, obj, path)
    try:
        data = decode_b64(text, lenient=True)
        info = inspect_image(data, max_pixels=max_pixels)
    except InvalidImage as err:
        return Rejected(source, err.reason, err.detail, obj, path)
    return Accepted(source, order, data, info, label, genuine)


def to_example(accepted: Accepted, ingested_at: int) -> tf.train.Example:
    """The tf.Example of the shared contract (labelled records only)."""
    # NOTE: imported here so that counting and parsing records (the scheduler's
    # poll, `signflow status`) does not load TensorFlow.
    import tensorflow as tf

    if accepted.label is None:
        raise ValueError(f"{accepted.source}: unlabelled records do not become examples")

    info = accepted.info
    example = tf.train.Example()
    # Filled in place: Feature messages built first and passed to the constructors
    # are each copied again into the map, the image three times (3x the time).
    feature = example.features.feature
    feature[IMAGE_FEATURE].bytes_list.value.append(accepted.image)
    feature[LABEL_FEATURE].bytes_list.value.append(accepted.label.encode("utf-8"))
    feature[SHA256_FEATURE].bytes_list.value.append(info.sha256.encode("ascii"))
    feature["source"].bytes_list.value.append(accepted.source.encode("utf-8"))
    feature["width"].int64_list.value.append(info.width)
    feature["height"].int64_list.value.append(info.height)
    feature["format"].bytes_list.value.append(info.format.encode("ascii"))
    feature["ingested_at"].int64_list.value.append(ingested_at)
    feature[GENUINE_FEATURE].int64_list.value.append(1 if accepted.genuine else 0)
    return example


def unlabelled_entry(accepted: Accepted, span: int) -> dict:
    """A line of the unlabelled store, in the JSON Lines input shape.

    Fill in "label" and drop the file into the inbox to ingest it ("genuine" travels with it).
    """
    info = accepted.info
    return {
        BARE_TEXT_IMAGE_KEY: {B64_KEY: base64.b64encode(accepted.image).decode("ascii")},
        RECORD_LABEL_KEY: None,
        GENUINE_KEY: accepted.genuine,
        "source": accepted.source,
        "span": span,
        "sha256": info.sha256,
        "format": info.format,
        "width": info.width,
        "height": info.height,
    }


def _image_text(obj: dict) -> str:
    """The base64 text of the record's image, or InvalidRecord."""
    for key in RECORD_IMAGE_KEYS:
        if key in obj:
            value = obj[key]
            if isinstance(value, dict) and isinstance(value.get(B64_KEY), str):
                return value[B64_KEY]
            if key == BARE_TEXT_IMAGE_KEY and isinstance(value, str):
                return value
            raise InvalidRecord(INVALID_IMAGE_FIELD, _image_field_error(key, value))
    if B64_KEY in obj:
        value = obj[B64_KEY]
        if isinstance(value, str):
            return value
        raise InvalidRecord(INVALID_IMAGE_FIELD, f'"{B64_KEY}" must be base64 text, got {json_type_name(value)}')
    raise InvalidRecord(
        MISSING_IMAGE, f"no image under {', '.join(repr(k) for k in RECORD_IMAGE_KEYS)} or {B64_KEY!r}")


def _image_field_error(key: str, value: Any) -> str:
    wanted = f'{{"{B64_KEY}": "<base64 text>"}}'
    if key == BARE_TEXT_IMAGE_KEY:
        return f'"{key}" must be {wanted} or base64 text, got {json_type_name(value)}'
    if isinstance(value, str):
        return f'"{key}" must be {wanted}: a bare string there is raw bytes to TF Serving, not base64'
    return f'"{key}" must be {wanted}, got {json_type_name(value)}'


def _label(obj: dict, label_keys: Sequence[str], names_a_class: bool) -> str | None:
    """The label under the first of `label_keys` that holds a value (None: unlabelled), or InvalidRecord."""
    for key in label_keys:
        value = obj.get(key)
        if value is None:
            continue
        try:
            return check_label(value, lenient=True, names_a_class=names_a_class)
        except InvalidRecord as err:
            if key == RECORD_LABEL_KEY:
                raise
            raise InvalidRecord(err.reason, f"{err.message} (under {key!r})") from None
    return None


def _genuine(obj: dict) -> bool:
    """The record's "genuine" (True when absent or null), or InvalidRecord(INVALID_GENUINE)."""
    value = obj.get(GENUINE_KEY)
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    # NOTE: JSON booleans only, one spelling with nothing to guess: the text "false"
    # (the classic mistake) is truthy almost everywhere, and 0/1 would invite "0"/"1" next.
    message = f'"{GENUINE_KEY}" must be true or false (a JSON boolean), got {json_type_name(value)}'
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        message += f": write {value.strip().lower()}, not {json.dumps(value)}"
    raise InvalidRecord(INVALID_GENUINE, message)


def folder_claim(folders: Sequence[str]) -> tuple[str | None, bool]:
    """(label, genuine) of an image file from the folders it sits in, outermost first ([] at the top).

    `<label>/<file>`: genuine, of <label>. `<label>_forg/<file>` and
    `<label>/forged/<file>`: a forgery claimed as <label>. A `forged/` or `_forg/`
    folder with no label (at the top) holds unlabelled forgeries. Names match
    exactly (case-sensitive).
    """
    if not folders:
        return None, True
    name = folders[-1]
    if name == FORGERY_FOLDER:
        return (folders[-2] if len(folders) > 1 else None), False
    if name.endswith(FORGERY_FOLDER_SUFFIX):
        return name[: -len(FORGERY_FOLDER_SUFFIX)] or None, False
    return name, True


def _read_image_file(landed: LandedFile, max_pixels: int, labels_name_classes: bool) -> Outcome:
    if landed.folder_label is not None:
        # A folder name becomes a class, and a line of labels.txt: the same rule as a record's label.
        try:
            check_label(landed.folder_label, lenient=True, names_a_class=labels_name_classes)
        except InvalidRecord as err:
            return Rejected(landed.name, err.reason, f"{err.message} (the folder's name)", None, landed.path)
    try:
        with open(landed.path, "rb") as f:
            data = f.read()
    except OSError as err:
        return Rejected(landed.name, UNREADABLE_FILE, str(err), None, landed.path)
    try:
        info = inspect_image(data, max_pixels=max_pixels)
    except InvalidImage as err:
        return Rejected(landed.name, err.reason, err.detail, None, landed.path)
    return Accepted(landed.name, (landed.order, 1), data, info, landed.folder_label, landed.folder_genuine)


def _read_jsonl(landed: LandedFile, label_keys: Sequence[str], max_pixels: int, threads: int,
                labels_name_classes: bool) -> Iterator[Outcome]:
    def validate(item: tuple[str, int, Any]) -> Outcome:
        source, line_no, obj = item
        return parse_record(obj, source, (landed.order, line_no), landed.path, label_keys=label_keys,
                            max_pixels=max_pixels, labels_name_classes=labels_name_classes)

    def validate_chunk(items: list[tuple[str, int, Any] | Rejected]) -> list[Outcome]:
        return [item if isinstance(item, Rejected) else validate(item) for item in items]

    if threads <= 1:
        for item in _jsonl_items(landed):
            yield item if isinstance(item, Rejected) else validate(item)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        # A bounded window of chunks in flight keeps memory flat on a large file.
        window: collections.deque[concurrent.futures.Future] = collections.deque()
        for chunk in _chunks(_jsonl_items(landed), _CHUNK):
            window.append(pool.submit(validate_chunk, chunk))
            if len(window) >= _CHUNKS_PER_THREAD * threads:
                yield from window.popleft().result()
        while window:
            yield from window.popleft().result()


# Records go to the validation threads in chunks of 8: handing them over one future at
# a time (locks and wake-ups, each taking the GIL) made 5,000 records take 1.24 s on
# 2 threads instead of 1.07 s.
_CHUNK = 8
_CHUNKS_PER_THREAD = 3


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _jsonl_items(landed: LandedFile) -> Iterator[tuple[str, int, Any] | Rejected]:
    """(source, line number, parsed JSON) of each non-blank line, or the Rejected of a line or file that cannot be
    read or parsed."""
    try:
        f = open(landed.path, "rb")
    except OSError as err:
        yield Rejected(landed.name, UNREADABLE_FILE, str(err), None, landed.path)
        return
    with f:
        line_no = 0
        while True:
            try:
                raw = f.readline()
            except OSError as err:
                yield Rejected(f"{landed.name}:{line_no + 1}", UNREADABLE_FILE, str(err), None, landed.path)
                return
            if not raw:
                return
            line_no += 1
            if not raw.strip():
                continue
            source = f"{landed.name}:{line_no}"
            try:
                obj = json.loads(raw)
            except (UnicodeDecodeError, ValueError) as err:
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                yield Rejected(source, INVALID_JSON, str(err), text, landed.path)
                continue
            yield source, line_no, obj


def _read_json(landed: LandedFile, label_keys: Sequence[str], max_pixels: int,
               labels_name_classes: bool) -> Iterator[Outcome]:
    try:
        with open(landed.path, "rb") as f:
            raw = f.read()
    except OSError as err:
        yield Rejected(landed.name, UNREADABLE_FILE, str(err), None, landed.path)
        return
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        yield Rejected(landed.name, INVALID_JSON, str(err), raw.decode("utf-8", errors="replace"), landed.path)
        return
    try:
        rows = _json_rows(doc)
    except InvalidRecord as err:
        yield Rejected(landed.name, err.reason, err.message, doc, landed.path)
        return
    for number, row in enumerate(rows, start=1):
        yield parse_record(
            row,
            f"{landed.name}:{number}",
            (landed.order, number),
            landed.path,
            label_keys=label_keys,
            max_pixels=max_pixels,
            labels_name_classes=labels_name_classes,
        )


def count_records(path: str) -> int:
    """How many records `path` holds, without decoding images: what the scheduler counts as waiting.

    The same units as read_landed_file (a non-blank JSONL line, a row of a .json
    body, an image file); a file that cannot be read or parsed counts as one
    record, the one ingestion will quarantine.
    """
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix == JSONL_SUFFIX:
            with open(path, "rb") as f:
                return sum(1 for line in f if line.strip())
        if suffix == JSON_SUFFIX:
            with open(path, "rb") as f:
                return len(_json_rows(json.load(f)))
    except (OSError, UnicodeDecodeError, ValueError):  # InvalidRecord is a ValueError
        return 1
    return 1


def _json_rows(doc: Any) -> list:
    """The records of a .json document: TF Serving row/columnar request, the seed's examples, or one record.

    Raises InvalidRecord when the document has none of those shapes.
    """
    if not isinstance(doc, dict):
        raise InvalidRecord(
            UNKNOWN_JSON_SHAPE, f"expected a JSON object at the top level, got {json_type_name(doc)}")
    if GENUINE_KEY in doc and any(key in doc for key in (INSTANCES_KEY, EXAMPLES_KEY, INPUTS_KEY)):
        # NOTE: refused rather than ignored: ignoring it would ingest a file of forgeries as genuine.
        raise InvalidRecord(INVALID_GENUINE,
                            f'"{GENUINE_KEY}" belongs on each record (instance, row or example), not on the whole file')
    for key in (INSTANCES_KEY, EXAMPLES_KEY):
        if key in doc:
            if not isinstance(doc[key], list):
                raise InvalidRecord(UNKNOWN_JSON_SHAPE, f'"{key}" must be a list, got {json_type_name(doc[key])}')
            return doc[key]
    if INPUTS_KEY in doc:
        inputs = doc[INPUTS_KEY]
        if isinstance(inputs, list):  # TF Serving's columnar form with a single unnamed input
            return inputs
        return columns_to_rows(inputs)
    if any(key in doc for key in (*RECORD_IMAGE_KEYS, B64_KEY)):
        return [doc]
    raise InvalidRecord(
        UNKNOWN_JSON_SHAPE,
        f'expected "{INSTANCES_KEY}", "{INPUTS_KEY}", "{EXAMPLES_KEY}" or an image field at the top level')
