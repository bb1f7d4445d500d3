"""Reading one landed file: every accepted shape and every kind of bad input, on real files."""
from __future__ import annotations

import io
import json
import os
import struct
import zlib

import pytest
from PIL import Image

from components.ingest.records import Accepted, LandedFile, Rejected, count_records, folder_claim, read_landed_file
from tests.ingest.helpers import b64, image_bytes, padded_image, sha256, write_bytes, write_json, write_jsonl


def _read(tmp_path, name: str, label_keys=("label",), folder_label=None, max_pixels=40_000_000):
    landed = LandedFile(path=str(tmp_path / name), name=f"span-0/inbox/{name}", order=0, folder_label=folder_label)
    return list(read_landed_file(landed, label_keys=label_keys, max_pixels=max_pixels))


def _accepted(outcomes) -> list[tuple[str, str | None]]:
    assert all(isinstance(o, Accepted) for o in outcomes), [o for o in outcomes if isinstance(o, Rejected)]
    return [(o.info.sha256, o.label) for o in outcomes]


def test_jsonl_image_fields_and_base64_variants(tmp_path):
    images = [padded_image(seed) for seed in range(6)]
    lines = [
        {"image": {"b64": b64(images[0], "standard")}, "label": "signer_01"},
        {"image_bytes": {"b64": b64(images[1], "urlsafe")}, "label": "signer_02"},
        {"b64": b64(images[2], "unpadded"), "label": "signer_03"},
        {"image": {"b64": b64(images[3], "urlsafe_unpadded")}, "label": "signer_04"},
        {"image": {"b64": b64(images[4], "data_url")}, "label": "signer_05"},
        {"image": {"b64": b64(images[5])}},
    ]
    write_jsonl(str(tmp_path / "a.jsonl"), [lines[0], "", *lines[1:]])
    outcomes = _read(tmp_path, "a.jsonl")
    assert _accepted(outcomes) == [(sha256(img), f"signer_0{i + 1}") for i, img in enumerate(images[:5])] + [
        (sha256(images[5]), None)
    ]
    # Line numbers count the blank line.
    assert [o.source for o in outcomes][:2] == ["span-0/inbox/a.jsonl:1", "span-0/inbox/a.jsonl:3"]
    assert outcomes[0].image == images[0]
    assert b64(images[2], "unpadded") != b64(images[2])


def test_seed_records_with_a_bare_base64_image(tmp_path):
    images = [padded_image(20 + seed) for seed in range(4)]
    write_jsonl(
        str(tmp_path / "seed.jsonl"),
        [
            {"image": b64(images[0]), "label": "signer_01"},  # the seed's own shape
            {"image": b64(images[1], "urlsafe_unpadded"), "label": "signer_02"},
            {"image": b64(images[2], "data_url"), "label": "signer_03"},
            {"image": b64(images[3])},
        ],
    )
    outcomes = _read(tmp_path, "seed.jsonl")
    assert _accepted(outcomes) == [(sha256(images[0]), "signer_01"), (sha256(images[1]), "signer_02"),
                                   (sha256(images[2]), "signer_03"), (sha256(images[3]), None)]
    assert [o.image for o in outcomes] == images

    write_json(str(tmp_path / "seed.json"),
               {"examples": [{"image": b64(img), "caption": f"signer_{i}"} for i, img in enumerate(images[:2])]})
    assert _accepted(_read(tmp_path, "seed.json", label_keys=("caption",))) == [
        (sha256(images[0]), "signer_0"), (sha256(images[1]), "signer_1")]


@pytest.mark.parametrize("text", ["not base64!!", "QUJD$", "A", "", b64(b"plain text, not an image"),
                                  b64(image_bytes(2)[:-30])])
def test_a_bare_image_string_gets_the_reason_its_b64_form_gets(tmp_path, text):
    write_jsonl(str(tmp_path / "pair.jsonl"),
                [{"image": text, "label": "signer_01"}, {"image": {"b64": text}, "label": "signer_01"}])
    bare, wrapped = _read(tmp_path, "pair.jsonl")
    assert isinstance(bare, Rejected) and isinstance(wrapped, Rejected)
    assert (bare.reason, bare.message) == (wrapped.reason, wrapped.message)
    assert bare.record == {"image": text, "label": "signer_01"}


def test_serving_request_bodies(tmp_path):
    images = [image_bytes(i) for i in range(5)]
    write_json(
        str(tmp_path / "rows.json"),
        {"instances": [{"image_bytes": {"b64": b64(images[0])}, "label": "signer_03"}, {"b64": b64(images[1])}]},
    )
    write_json(
        str(tmp_path / "columns.json"),
        {"inputs": {"image_bytes": [{"b64": b64(images[2])}, {"b64": b64(images[3])}], "label": ["signer_01", None]}},
    )
    assert _accepted(_read(tmp_path, "rows.json")) == [(sha256(images[0]), "signer_03"), (sha256(images[1]), None)]
    columns = _read(tmp_path, "columns.json")
    assert _accepted(columns) == [(sha256(images[2]), "signer_01"), (sha256(images[3]), None)]
    assert [o.source for o in columns] == ["span-0/inbox/columns.json:1", "span-0/inbox/columns.json:2"]


def test_seed_example_list_with_caption_as_label(tmp_path):
    images = [image_bytes(10 + i) for i in range(2)]
    write_json(
        str(tmp_path / "seed.json"),
        {"signature_name": "classify", "examples": [{"image": {"b64": b64(img)}, "caption": f"signer_{i}"} for i, img in enumerate(images)]},
    )
    assert _accepted(_read(tmp_path, "seed.json", label_keys=("label", "caption"))) == [
        (sha256(images[0]), "signer_0"),
        (sha256(images[1]), "signer_1"),
    ]
    # With the default key, the caption is not a label: the images are kept as unlabelled.
    assert [label for _, label in _accepted(_read(tmp_path, "seed.json"))] == [None, None]


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif"), ("BMP", "bmp")])
def test_image_file_takes_its_folder_label(tmp_path, fmt, suffix):
    data = image_bytes(7, fmt)
    write_bytes(str(tmp_path / f"x.{suffix}"), data)
    [outcome] = _read(tmp_path, f"x.{suffix}", folder_label="signer_09")
    assert isinstance(outcome, Accepted)
    assert (outcome.image, outcome.label, outcome.info.format) == (data, "signer_09", fmt)
    assert outcome.source == f"span-0/inbox/x.{suffix}"


@pytest.mark.parametrize("folder", ["unknown", "signer\n09"])
def test_an_image_file_in_a_folder_that_cannot_be_a_label_is_rejected_with_the_labels_reason(tmp_path, folder):
    write_bytes(str(tmp_path / "x.png"), image_bytes(7))
    [outcome] = _read(tmp_path, "x.png", folder_label=folder)
    assert isinstance(outcome, Rejected)
    assert (outcome.reason, outcome.source, outcome.path) == ("invalid_label", "span-0/inbox/x.png", str(tmp_path / "x.png"))
    assert "folder" in outcome.message


def _bomb_png(side: int) -> bytes:
    """A valid PNG header declaring side x side pixels, with a tiny (truncated) body."""
    buf = io.BytesIO()
    Image.new("1", (side, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:20] = side.to_bytes(4, "big")  # IHDR width
    data[20:24] = side.to_bytes(4, "big")  # IHDR height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # IHDR CRC
    return bytes(data)


BAD_LINES = [
    ("invalid_json", "{not json"),
    ("not_an_object", json.dumps(["a", "list"])),
    ("missing_image", json.dumps({"label": "signer_01"})),
    ("invalid_image_field", json.dumps({"image": 3, "label": "signer_01"})),
    # Under predict's input name a bare string is raw bytes to TF Serving, not base64: refused.
    ("invalid_image_field", json.dumps({"image_bytes": b64(image_bytes(1)), "label": "signer_01"})),
    ("not_an_image", json.dumps({"image": "aGVsbG8=", "label": "signer_01"})),  # bare base64 of b"hello"
    ("invalid_label", json.dumps({"image": {"b64": b64(image_bytes(1))}, "label": 3})),
    ("invalid_label", json.dumps({"image": {"b64": b64(image_bytes(1))}, "label": "signer\n01"})),
    ("invalid_label", json.dumps({"image": {"b64": b64(image_bytes(1))}, "label": "signer\u202801"})),
    ("invalid_label", json.dumps({"image": {"b64": b64(image_bytes(1))}, "label": "signer_\ud800"})),
    ("invalid_label", json.dumps({"image": {"b64": b64(image_bytes(1))}, "label": "unknown"})),  # the open set's answer
    ("invalid_base64", json.dumps({"image": {"b64": "not base64!!"}, "label": "signer_01"})),
    ("invalid_base64", json.dumps({"image": "not base64!!", "label": "signer_01"})),
    ("not_an_image", json.dumps({"image": {"b64": b64(b"plain text, not an image")}, "label": "signer_01"})),
    ("corrupt_image", json.dumps({"image": {"b64": b64(image_bytes(2)[:-30])}, "label": "signer_01"})),
    ("empty_image", json.dumps({"image": {"b64": ""}, "label": "signer_01"})),
    ("too_many_pixels", json.dumps({"image": {"b64": b64(_bomb_png(10000))}, "label": "signer_01"})),
    # Only JSON booleans say whether a signature is genuine: the text "false" would read as true to most code.
    ("invalid_genuine", json.dumps({"image": {"b64": b64(image_bytes(1))}, "label": "signer_01", "genuine": "false"})),
]


def test_each_bad_line_is_rejected_with_its_reason(tmp_path):
    write_jsonl(str(tmp_path / "bad.jsonl"), [line for _, line in BAD_LINES])
    outcomes = _read(tmp_path, "bad.jsonl")
    assert all(isinstance(o, Rejected) for o in outcomes)
    assert [o.reason for o in outcomes] == [reason for reason, _ in BAD_LINES]
    assert [o.source for o in outcomes] == [f"span-0/inbox/bad.jsonl:{i}" for i in range(1, len(BAD_LINES) + 1)]
    assert outcomes[0].record == "{not json"  # the raw text when it is not JSON
    assert outcomes[2].record == {"label": "signer_01"}  # the parsed record otherwise
    assert all(o.message and o.path == str(tmp_path / "bad.jsonl") for o in outcomes)


@pytest.mark.parametrize("threads", [2, 3])
def test_validation_threads_give_every_outcome_in_file_order(tmp_path, threads):
    # Good and bad lines interleaved, more than the chunks in flight, a blank line and a last partial chunk.
    lines = []
    for i in range(61):
        lines.append(json.dumps({"image": {"b64": b64(image_bytes(900 + i))}, "label": f"signer_{i % 4:02d}"}))
        if i % 5 == 0:
            lines.append(BAD_LINES[i % len(BAD_LINES)][1])
    write_jsonl(str(tmp_path / "mixed.jsonl"), [*lines[:30], "", *lines[30:]])
    landed = LandedFile(path=str(tmp_path / "mixed.jsonl"), name="span-0/inbox/mixed.jsonl", order=0, folder_label=None)

    one_by_one = list(read_landed_file(landed))
    in_threads = list(read_landed_file(landed, threads=threads))

    assert len(one_by_one) == len(lines) == 74
    assert in_threads == one_by_one


def _png_with_undecodable_pixels(width: int, height: int) -> bytes:
    """A PNG whose header is valid and whose pixel data is not zlib: only decoding it can fail."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"not zlib data") + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = _bomb_png(30000)
    assert len(bomb) < 200  # a few bytes declaring 900 MP
    write_jsonl(str(tmp_path / "bomb.jsonl"), [{"image": {"b64": b64(bomb)}, "label": "signer_01"}])
    [outcome] = _read(tmp_path, "bomb.jsonl")
    assert isinstance(outcome, Rejected)
    # Past twice its own limit Pillow refuses while reading the header, before
    # any pixel is decoded; serving.images reports that as too_many_pixels too.
    assert outcome.reason == "too_many_pixels"
    assert "900000000 pixels" in outcome.message


def test_pixel_limit_is_checked_before_any_pixel_is_decoded(tmp_path):
    # 9 MP: under Pillow's own bomb limit, so only signflow's max_pixels can refuse it.
    image = _png_with_undecodable_pixels(3000, 3000)
    write_jsonl(str(tmp_path / "big.jsonl"), [{"image": {"b64": b64(image)}, "label": "signer_01"}])

    [over_the_limit] = _read(tmp_path, "big.jsonl", max_pixels=1_000_000)
    [within_the_limit] = _read(tmp_path, "big.jsonl", max_pixels=10_000_000)

    # Decoding these bytes fails (the second read shows it), so a size refusal
    # for the first read means the size was checked before decoding was tried.
    assert within_the_limit.reason == "corrupt_image"
    assert (over_the_limit.reason, over_the_limit.message) == ("too_many_pixels", "3000x3000 exceeds the limit of 1000000 pixels")


def test_non_utf8_line_is_invalid_json(tmp_path):
    write_bytes(str(tmp_path / "latin.jsonl"), b'{"label": "caf\xe9"}\n')
    [outcome] = _read(tmp_path, "latin.jsonl")
    assert (outcome.reason, outcome.source) == ("invalid_json", "span-0/inbox/latin.jsonl:1")


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("broken.json", b'{"instances": [', "invalid_json"),
        ("list.json", b"[1, 2]", "unknown_json_shape"),
        ("other.json", b'{"hello": 1}', "unknown_json_shape"),
        ("ragged.json", json.dumps({"inputs": {"image_bytes": [{"b64": "AA=="}], "label": []}}).encode(), "invalid_columns"),
        ("notes.txt", b"hello", "unsupported_file"),
        ("truncated.png", image_bytes(3)[:-30], "corrupt_image"),
        ("empty.png", b"", "empty_image"),
        ("text.jpg", b"not a jpeg", "not_an_image"),
    ],
    ids=lambda value: value if isinstance(value, str) and "." in value else "",
)
def test_bad_file_is_one_rejected_record(tmp_path, name, content, reason):
    write_bytes(str(tmp_path / name), content)
    [outcome] = _read(tmp_path, name, folder_label="signer_01")
    assert isinstance(outcome, Rejected)
    assert (outcome.reason, outcome.source, outcome.path) == (reason, f"span-0/inbox/{name}", str(tmp_path / name))


def test_unreadable_file(tmp_path):
    landed = LandedFile(path=str(tmp_path / "gone.png"), name="span-0/inbox/gone.png", order=0, folder_label=None)
    [outcome] = read_landed_file(landed)
    assert outcome.reason == "unreadable_file"
    assert not os.path.exists(landed.path)


# ------------------------------------------------------------------ forgeries

def _genuine(outcomes) -> list[tuple[str, str | None, bool]]:
    assert all(isinstance(o, Accepted) for o in outcomes), [o for o in outcomes if isinstance(o, Rejected)]
    return [(o.info.sha256, o.label, o.genuine) for o in outcomes]


def test_genuine_is_read_from_every_json_shape_and_defaults_to_true(tmp_path):
    images = [image_bytes(900 + i) for i in range(9)]
    write_jsonl(str(tmp_path / "a.jsonl"), [
        {"image": {"b64": b64(images[0])}, "label": "signer_01", "genuine": False},
        {"image": {"b64": b64(images[1])}, "label": "signer_01", "genuine": True},
        {"image": {"b64": b64(images[2])}, "label": "signer_01", "genuine": None},  # null: not said, genuine
        {"image": {"b64": b64(images[3])}, "label": "signer_01"},
    ])
    write_json(str(tmp_path / "rows.json"),
               {"instances": [{"image_bytes": {"b64": b64(images[4])}, "label": "signer_02", "genuine": False}]})
    write_json(str(tmp_path / "columns.json"), {"inputs": {
        "image_bytes": [{"b64": b64(images[5])}, {"b64": b64(images[6])}],
        "label": ["signer_03", "signer_03"],
        "genuine": [False, None],
    }})
    write_json(str(tmp_path / "seed.json"),
               {"examples": [{"image": b64(images[7]), "caption": "signer_04", "genuine": False}]})
    write_json(str(tmp_path / "one.json"), {"image": {"b64": b64(images[8])}, "label": "signer_05", "genuine": False})

    assert _genuine(_read(tmp_path, "a.jsonl")) == [
        (sha256(images[0]), "signer_01", False), (sha256(images[1]), "signer_01", True),
        (sha256(images[2]), "signer_01", True), (sha256(images[3]), "signer_01", True)]
    assert _genuine(_read(tmp_path, "rows.json")) == [(sha256(images[4]), "signer_02", False)]
    assert _genuine(_read(tmp_path, "columns.json")) == [(sha256(images[5]), "signer_03", False),
                                                         (sha256(images[6]), "signer_03", True)]
    assert _genuine(_read(tmp_path, "seed.json", label_keys=("caption",))) == [(sha256(images[7]), "signer_04", False)]
    assert _genuine(_read(tmp_path, "one.json")) == [(sha256(images[8]), "signer_05", False)]


@pytest.mark.parametrize("value", ["false", "False", "true", "no", 0, 1, 0.0, [], {}, ""],
                         ids=lambda value: json.dumps(value))
def test_genuine_must_be_a_json_boolean(tmp_path, value):
    record = {"image": {"b64": b64(image_bytes(950))}, "label": "signer_01", "genuine": value}
    write_jsonl(str(tmp_path / "a.jsonl"), [record])
    [outcome] = _read(tmp_path, "a.jsonl")
    assert isinstance(outcome, Rejected)
    assert (outcome.reason, outcome.record) == ("invalid_genuine", record)
    assert '"genuine" must be true or false' in outcome.message
    if value in ("false", "False"):
        assert 'write false, not "' in outcome.message


def test_genuine_on_a_whole_request_body_refuses_the_file(tmp_path):
    # Ignoring it would ingest a file of forgeries as genuine signatures.
    body = {"instances": [{"image_bytes": {"b64": b64(image_bytes(960))}, "label": "signer_01"}], "genuine": False}
    write_json(str(tmp_path / "body.json"), body)
    [outcome] = _read(tmp_path, "body.json")
    assert isinstance(outcome, Rejected)
    assert (outcome.reason, outcome.source, outcome.record) == ("invalid_genuine", "span-0/inbox/body.json", body)
    assert count_records(str(tmp_path / "body.json")) == 1  # what the scheduler counts: the one quarantined record


@pytest.mark.parametrize("folders,claim", [
    ([], (None, True)),
    (["signer_03"], ("signer_03", True)),
    (["signer_03_forg"], ("signer_03", False)),
    (["signer_03", "forged"], ("signer_03", False)),
    (["batch", "signer_03", "forged"], ("signer_03", False)),
    (["batch", "signer_03"], ("signer_03", True)),
    (["forged"], (None, False)),  # a forgery claimed as nobody: unlabelled
    (["_forg"], (None, False)),
    (["Forged"], ("Forged", True)),  # names match exactly
    (["signer_03_forgery"], ("signer_03_forgery", True)),
])
def test_folder_claim(folders, claim):
    assert folder_claim(folders) == claim


def test_an_image_file_in_a_forgery_folder_is_a_forgery_of_its_label(tmp_path):
    data = image_bytes(970)
    write_bytes(str(tmp_path / "x.png"), data)
    landed = LandedFile(path=str(tmp_path / "x.png"), name="span-0/inbox/signer_03_forg/x.png", order=0,
                        folder_label="signer_03", folder_genuine=False)
    [outcome] = read_landed_file(landed)
    assert (outcome.image, outcome.label, outcome.genuine) == (data, "signer_03", False)
    [genuine] = _read(tmp_path, "x.png", folder_label="signer_03")
    assert (genuine.label, genuine.genuine) == ("signer_03", True)
