"""The synthetic signature generator (data/generate_signatures.py) and the sample it committed.

`data` is not a package, so the generator is loaded by path, as other code does.
"""
import base64
import hashlib
import importlib.util
import io
import json
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import PIL
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
GENERATOR = REPO / "data" / "generate_signatures.py"
SAMPLE = REPO / "data" / "sample"
STANDARD_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_signatures", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def committed() -> dict:
    return json.loads((SAMPLE / "MANIFEST.json").read_text())


def _output_files(out_dir: Path) -> list[str]:
    """What generate() owns in a folder: signatures.jsonl and images/**."""
    owned = [p for p in (out_dir / "images").rglob("*") if p.is_file()] + list(out_dir.glob("signatures.jsonl"))
    return sorted(p.relative_to(out_dir).as_posix() for p in owned)


# ---------------------------------------------------------------- determinism

def test_same_seed_gives_identical_bytes_and_another_seed_does_not(gen, tmp_path):
    # 8 samples with 4 in the JSONL puts every format into images/ as files too.
    first = gen.generate(3, 2, 8, tmp_path / "a", jsonl_per_signer=4)
    second = gen.generate(3, 2, 8, tmp_path / "b", jsonl_per_signer=4)
    assert first == second
    assert (tmp_path / "a" / "MANIFEST.json").read_bytes() == (tmp_path / "b" / "MANIFEST.json").read_bytes()
    assert _output_files(tmp_path / "a") == sorted(first["files"]) == _output_files(tmp_path / "b")
    for rel in first["files"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), f"{rel} differs"
    assert {p.rsplit(".", 1)[1] for p in first["files"] if p.startswith("images/")} == set(gen.FORMATS)

    other = gen.generate(4, 2, 8, tmp_path / "c", jsonl_per_signer=4)
    assert other["files"].keys() == first["files"].keys()
    assert all(other["files"][rel] != first["files"][rel] for rel in first["files"])


def test_render_signature_encodes_the_requested_format(gen):
    pixels = gen.render_array(7, 1, 2)
    for fmt in gen.FORMATS:
        data = gen.render_signature(7, 1, 2, fmt)
        assert data == gen.render_signature(7, 1, 2, fmt)
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == gen.PIL_FORMAT[fmt]
            assert img.size == (pixels.shape[1], pixels.shape[0])
    # Lossless PNG round-trips the rendered pixels: the format only changes the encoding.
    with Image.open(io.BytesIO(gen.render_signature(7, 1, 2, "png"))) as img:
        assert np.array_equal(np.asarray(img.convert("RGB")), pixels)


def test_cli_writes_the_sample_and_a_contact_sheet(gen, tmp_path):
    assert gen.main(["--seed", "5", "--signers", "2", "--per-signer", "3", "--jsonl-per-signer", "2",
                     "--out", str(tmp_path / "out"), "--contact-sheet", str(tmp_path / "sheet.png")]) == 0
    manifest = json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    assert manifest["args"] == {"seed": 5, "signers": 2, "per_signer": 3, "jsonl_per_signer": 2}
    assert sorted(manifest["files"]) == _output_files(tmp_path / "out")
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > sheet.height


# ------------------------------------------------------- the committed sample

def test_committed_files_match_the_manifest(committed):
    assert _output_files(SAMPLE) == sorted(committed["files"]), "stray or missing files in data/sample"
    for rel, digest in committed["files"].items():
        actual = hashlib.sha256((SAMPLE / rel).read_bytes()).hexdigest()
        assert actual == digest, f"{rel} is not what MANIFEST.json says"


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


# How far the committed sample may sit from what this machine makes. Encoded bytes are
# not portable: numpy's float kernels differ by CPU (a rint can land one level apart, a
# GIF palette entry with it), and JPEG decoders round differently. A changed generator
# moves strokes, which puts ink where paper was: differences of 100+ levels over many
# pixels. The bounds sit far above the first and far below the second.
MAX_MEAN_ABS_DIFF = 1.0
MAX_PIXEL_DIFF = 24


def test_committed_sample_is_what_the_generator_makes(gen, committed):
    """Regenerate every sample of a few signers (first, middle, last) and compare decoded pixels.

    All 300 would take several seconds; a generator change shows in any signer, and the
    manifest test above ties the rest to their hashes.
    """
    args = committed["args"]
    signers, lines = args["signers"], (SAMPLE / "signatures.jsonl").read_text(encoding="ascii").splitlines()
    versions = f"committed with {committed['versions']}, now numpy {np.__version__}, Pillow {PIL.__version__}"
    hint = f"data/sample is not what data/generate_signatures.py makes ({versions}); regenerate it (data/README.md)"
    compared = 0
    for signer in sorted({0, signers // 2, signers - 1}):
        label = gen.label_for(signer)
        for sample in range(args["per_signer"]):
            fresh = gen.render_signature(args["seed"], signer, sample)
            if sample < args["jsonl_per_signer"]:
                # signatures.jsonl is sample-major: line n holds sample n // signers of signer n % signers.
                record = json.loads(lines[sample * signers + signer])
                assert record["label"] == label, f"{label} #{sample}: {hint}"
                rel, stored = f"signatures.jsonl line {sample * signers + signer + 1}", base64.b64decode(
                    record["image"]["b64"])
            else:
                rel = f"images/{label}/{label}_{sample:02d}.{gen.format_for(sample)}"
                stored = (SAMPLE / rel).read_bytes()
            want, got = _pixels(fresh), _pixels(stored)
            assert want.shape == got.shape, f"{rel}: size {got.shape} != {want.shape}: {hint}"
            diff = np.abs(want - got)
            assert diff.mean() <= MAX_MEAN_ABS_DIFF and diff.max() <= MAX_PIXEL_DIFF, (
                f"{rel}: mean |diff| {diff.mean():.3f}, max {diff.max()}: {hint}")
            compared += 1
    assert compared == 3 * args["per_signer"]


def test_the_pixel_comparison_catches_a_changed_generator(gen, committed):
    """The bounds above are not vacuous: the same signer's next signing is far outside them."""
    args = committed["args"]
    one = _pixels(gen.encode(gen.render_array(args["seed"], 0, 0), "png"))
    other = gen.render_array(args["seed"], 0, 1)
    # Same canvas, other signing: the strokes move; a generator change does at least that much.
    other = _pixels(gen.encode(np.asarray(Image.fromarray(other).resize((one.shape[1], one.shape[0]))), "png"))
    diff = np.abs(one - other)
    assert diff.mean() > 5 * MAX_MEAN_ABS_DIFF or diff.max() > 4 * MAX_PIXEL_DIFF


def test_committed_records_and_images_decode_in_their_declared_format(gen, committed):
    args = committed["args"]
    labels = [f"signer_{i:02d}" for i in range(args["signers"])]
    lines = (SAMPLE / "signatures.jsonl").read_text(encoding="ascii").splitlines()
    assert len(lines) == args["signers"] * args["jsonl_per_signer"]
    encoded: list[tuple[str, bytes]] = []
    for n, line in enumerate(lines):
        record = json.loads(line)
        assert set(record) == {"image", "label"} and set(record["image"]) == {"b64"}
        # Sample-major order: line n is sample n // signers of signer n % signers.
        assert record["label"] == labels[n % args["signers"]]
        assert STANDARD_B64.match(record["image"]["b64"]), "not standard base64"
        encoded.append((gen.format_for(n // args["signers"]), base64.b64decode(record["image"]["b64"], validate=True)))
    for label in labels:
        files = sorted((SAMPLE / "images" / label).iterdir())
        assert [p.name.rsplit(".", 1)[0] for p in files] == [
            f"{label}_{i:02d}" for i in range(args["jsonl_per_signer"], args["per_signer"])]
        encoded += [(p.suffix[1:], p.read_bytes()) for p in files]

    assert {fmt for fmt, _ in encoded} == set(gen.FORMATS)
    for fmt, data in encoded:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            assert img.format == gen.PIL_FORMAT[fmt]
            assert img.width > img.height
            assert 220 <= img.width <= 420 and 80 <= img.height <= 170
            if fmt == "gif":
                assert img.mode == "P"


# ----------------------------------------------------------- no easy cue

def _features(data: bytes) -> dict[str, np.ndarray]:
    """Trivial global features of a signature image, and a crude shape descriptor to compare them with."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
    lum = rgb.mean(axis=2)
    darkness = np.median(lum) - lum  # the paper is most of the canvas
    ink = darkness > 60
    ys, xs = np.nonzero(ink)
    crop = Image.fromarray(darkness[ys.min():ys.max() + 1, xs.min():xs.max() + 1].clip(0, 255).astype(np.uint8))
    shape = np.asarray(crop.resize((96, 32), Image.Resampling.BILINEAR), dtype=np.float64).ravel()
    return {
        "size": np.array([rgb.shape[1], rgb.shape[0]], dtype=np.float64),
        "ink colour": rgb[ink].mean(axis=0),
        "ink fraction": np.array([ink.mean()]),
        "shape": shape / np.linalg.norm(shape),
    }


def _nearest_centroid_accuracy(train: list[tuple[str, np.ndarray]], test: list[tuple[str, np.ndarray]]) -> float:
    x = np.array([f for _, f in train])
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
    labels = sorted({label for label, _ in train})
    centroids = np.array([np.mean([(f - mean) / std for lab, f in train if lab == label], axis=0) for label in labels])
    hits = [labels[int(np.argmin(((centroids - (f - mean) / std) ** 2).sum(axis=1)))] == label for label, f in test]
    return float(np.mean(hits))


def test_only_the_shape_identifies_the_signer(gen):
    """Train on the JSONL samples, test on the image files: global cues must be near chance, shape not."""
    samples = gen.read_samples(SAMPLE)
    jsonl_count = json.loads((SAMPLE / "MANIFEST.json").read_text())["args"]["jsonl_per_signer"]
    rows = [(label, index, _features(data)) for label, items in samples.items() for index, data in items]
    for _, _, f in rows:
        f["all global cues"] = np.concatenate([f["size"], f["ink colour"], f["ink fraction"]])

    def accuracy(name: str) -> float:
        train = [(label, f[name]) for label, index, f in rows if index < jsonl_count]
        test = [(label, f[name]) for label, index, f in rows if index >= jsonl_count]
        return _nearest_centroid_accuracy(train, test)

    chance = 1 / len(samples)
    cues = {name: accuracy(name) for name in ("size", "ink colour", "ink fraction", "all global cues")}
    shape = accuracy("shape")
    assert max(cues.values()) < 0.5, f"a global cue identifies signers (chance {chance:.2f}): {cues}"
    assert cues["size"] < 2 * chance, f"image size tracks the signer: {cues}"
    assert shape >= 0.9, f"shape alone should identify signers: {shape:.2f}"
    assert shape > 2 * max(cues.values())


# ------------------------------------------------------------- forgeries

def test_forgeries_are_added_without_changing_the_genuine_output(gen, tmp_path):
    plain = gen.generate(3, 2, 6, tmp_path / "plain", jsonl_per_signer=3)
    forged = gen.generate(3, 2, 6, tmp_path / "forged", jsonl_per_signer=3, forgeries_per_signer=4)
    again = gen.generate(3, 2, 6, tmp_path / "again", jsonl_per_signer=3, forgeries_per_signer=4)

    assert forged == again
    assert forged["args"] == {**plain["args"], "forgeries_per_signer": 4, "forgeries_in": "images"}
    added = {rel: digest for rel, digest in forged["files"].items() if rel not in plain["files"]}
    assert {rel: forged["files"][rel] for rel in plain["files"]} == plain["files"]
    assert sorted(added) == [f"images/signer_0{s}_forg/signer_0{s}_forg_0{i}.{gen.format_for(i)}"
                             for s in range(2) for i in range(4)]
    assert _output_files(tmp_path / "forged") == sorted(forged["files"])
    assert len(set(added.values())) == len(added)
    assert list(gen.read_samples(tmp_path / "forged")) == ["signer_00", "signer_00_forg", "signer_01",
                                                           "signer_01_forg"]


def test_forgeries_as_records_carry_genuine_false_and_go_when_regenerated_without(gen, tmp_path):
    out = tmp_path / "out"
    manifest = gen.generate(3, 2, 4, out, jsonl_per_signer=2, forgeries_per_signer=3, forgeries_in="jsonl")
    images = gen.generate(3, 2, 4, tmp_path / "images", jsonl_per_signer=2, forgeries_per_signer=3)
    records = [json.loads(line) for line in (out / "forgeries.jsonl").read_text(encoding="ascii").splitlines()]
    # Sample-major, as signatures.jsonl: forgery n of every signer, then forgery n + 1.
    assert [(r["label"], r["genuine"]) for r in records] == [(f"signer_0{i % 2}", False) for i in range(6)]
    assert not any(p.name.endswith("_forg") for p in (out / "images").iterdir())
    assert manifest["files"]["forgeries.jsonl"] == hashlib.sha256((out / "forgeries.jsonl").read_bytes()).hexdigest()
    # The same forgeries as the images/<label>_forg/ layout holds.
    folder = {rel: digest for rel, digest in images["files"].items() if "_forg/" in rel}
    digests = [hashlib.sha256(base64.b64decode(r["image"]["b64"])).hexdigest() for r in records]
    assert sorted(digests) == sorted(folder.values())

    gen.main(["--seed", "3", "--signers", "2", "--per-signer", "4", "--jsonl-per-signer", "2", "--out", str(out)])
    assert not (out / "forgeries.jsonl").exists()
    assert "forgeries_per_signer" not in json.loads((out / "MANIFEST.json").read_text())["args"]


def test_a_forger_copies_the_name_and_layout_in_their_own_hand(gen):
    target, forger = gen.signer_style(7, 2), gen.signer_style(7, 30)
    style = gen.forged_style(7, 2, 30)
    assert [(a.key, a.capital, a.lift_after, a.extra is None) for a in style.letters] == [
        (a.key, a.capital, a.lift_after, a.extra is None) for a in target.letters]
    assert (style.initial_dot, style.flourish) == (target.initial_dot, target.flourish)
    assert (style.pen_ratio, style.ink_family) == (forger.pen_ratio, forger.ink_family)
    assert min(target.slant, forger.slant) <= style.slant <= max(target.slant, forger.slant)
    assert style.tremor > 0 and target.tremor == 0
    assert any(not np.allclose(a.shape, b.shape) for a, b in zip(style.letters, target.letters))
    # A perfect forger draws every letter as the signer does.
    perfect = gen.forged_style(7, 2, 30, skill=1.0)
    assert all(np.allclose(a.shape, b.shape) for a, b in zip(perfect.letters, target.letters))
    with pytest.raises(ValueError):
        gen.forged_style(7, 2, 2)
    with pytest.raises(ValueError):
        gen.forged_style(7, 2, 30, skill=1.5)


def test_a_forgery_looks_like_the_signer_it_imitates_not_like_its_writer(gen, committed):
    """Nearest shape centroid of the committed sample's signers: a forgery's is mostly its target's."""
    seed, samples = committed["args"]["seed"], gen.read_samples(SAMPLE)
    train = [(label, _features(data)["shape"]) for label, items in samples.items() for _, data in items]
    signers = len(samples)
    forgeries = [(target, (target + 3) % signers, sample) for target in range(signers) for sample in range(2)]
    test = [(gen.label_for(target), _features(gen.render_forgery(seed, target, forger, sample))["shape"])
            for target, forger, sample in forgeries]
    as_writer = [(gen.label_for(forger), f) for (_, forger, _), (_, f) in zip(forgeries, test)]
    assert _nearest_centroid_accuracy(train, test) >= 0.6
    assert _nearest_centroid_accuracy(train, as_writer) <= 0.2
