"""`signflow weights import | show` and weights="auto" finding the imported file, offline, with real .h5 files."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from components.trainer import model as model_lib, weights_store
from tests.fixtures.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def xception_notop_h5(tmp_path_factory) -> Path:
    """Real Xception no-top weights (random init); the input size does not change any weight's shape."""
    path = tmp_path_factory.mktemp("weights") / "xception_notop_random.h5"
    tf.keras.utils.set_random_seed(3)
    tf.keras.applications.Xception(include_top=False, weights=None, input_shape=(71, 71, 3)).save_weights(str(path))
    return path


@pytest.fixture()
def places(tmp_path):
    """A home and a weights store of the test's own, and an environment for child processes that uses them."""
    home, store = tmp_path / "home", tmp_path / "store"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), weights_store.STORE_ENV: str(store), "PYTHONPATH": str(ROOT)}
    return {"home": home, "store": store, "env": env}


@pytest.fixture()
def unreachable_origin():
    """A URL on a local port nobody listens on: the download fails at once, as offline."""
    port = free_port()
    return f"http://127.0.0.1:{port}/{weights_store.XCEPTION_NOTOP_FILE}"


def signflow(args, env, timeout=120):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_import_places_the_checked_file_with_its_record_and_auto_uses_it_offline(
        xception_notop_h5, places, unreachable_origin):
    result = signflow(["weights", "import", str(xception_notop_h5)], places["env"])
    assert result.returncode == 0, result.stderr

    sha256, md5 = weights_store.file_digests(xception_notop_h5)
    placed = places["store"] / weights_store.IMPORTED_FILE
    record = json.loads((places["store"] / weights_store.IMPORTED_RECORD).read_text())
    assert record["sha256"] == sha256 and record["md5"] == md5 and md5 != weights_store.XCEPTION_NOTOP_MD5
    assert record["path"] == str(placed) and record["source_path"] == str(xception_notop_h5)
    assert record["layers"] == 80 and record["official_imagenet"] is False and record["imported_at"]
    assert weights_store.file_digests(placed) == (sha256, md5)
    assert sorted(p.name for p in places["store"].iterdir()) == [weights_store.IMPORTED_FILE,
                                                                weights_store.IMPORTED_RECORD]  # no temporary left
    assert f"sha256    {sha256}" in result.stdout and "not the official ImageNet file" in result.stdout
    # Not the official md5, so nothing goes into Keras' cache.
    assert not (places["home"] / ".keras" / "models" / weights_store.XCEPTION_NOTOP_FILE).exists()

    shown = signflow(["weights", "show"], places["env"], timeout=30)
    assert shown.returncode == 0 and f"2. imported     {placed}: sha256 {sha256}" in shown.stdout

    cache = places["home"] / ".keras"
    cache.mkdir(exist_ok=True)  # get_file falls back to /tmp/.keras when the folder is missing
    cache = str(cache)
    weights = model_lib.resolve_backbone_weights("auto", origin=unreachable_origin, cache_dir=cache,
                                                 store=places["store"])
    assert (weights.path, weights.source, weights.sha256) == (str(placed), "imported", sha256)
    with pytest.raises(RuntimeError, match="could not be downloaded"):  # "imagenet" means the official file only
        model_lib.resolve_backbone_weights("imagenet", origin=unreachable_origin, cache_dir=cache,
                                           store=places["store"])

    with open(placed, "ab") as handle:  # changed after the import: refused, never used silently
        handle.write(b"\0")
    with pytest.raises(RuntimeError, match="has sha256 .*, not " + sha256):
        model_lib.resolve_backbone_weights("auto", origin=unreachable_origin, cache_dir=cache, store=places["store"])


def test_a_file_with_the_official_md5_goes_into_keras_cache_where_get_file_finds_it(
        xception_notop_h5, tmp_path, monkeypatch, unreachable_origin):
    # NOTE: the real 88 MB ImageNet file is not available offline; pretend ours is it.
    sha256, md5 = weights_store.file_digests(xception_notop_h5)
    monkeypatch.setattr(weights_store, "XCEPTION_NOTOP_MD5", md5)
    monkeypatch.setattr(model_lib, "XCEPTION_NOTOP_MD5", md5)
    cache, store = tmp_path / "keras", tmp_path / "store"

    record = weights_store.import_weights(xception_notop_h5, store=store, keras_cache_dir=cache)

    cached = cache / "models" / weights_store.XCEPTION_NOTOP_FILE
    assert record.official_imagenet and record.path == str(cached) and cached.is_file()
    assert json.loads((store / weights_store.IMAGENET_RECORD).read_text())["sha256"] == sha256
    assert not (store / weights_store.IMPORTED_FILE).exists()
    for spec in ("imagenet", "auto"):
        weights = model_lib.resolve_backbone_weights(spec, origin=unreachable_origin, cache_dir=str(cache),
                                                     store=store)
        assert (weights.path, weights.source, weights.sha256) == (str(cached), "imagenet", sha256)


def test_weights_of_xception_with_its_top_are_refused_naming_the_extra_layer_and_nothing_is_placed(tmp_path):
    top = tmp_path / "xception_with_top.h5"
    tf.keras.applications.Xception(include_top=True, weights=None, input_shape=(71, 71, 3),
                                   classes=3).save_weights(str(top))
    store, cache = tmp_path / "store", tmp_path / "keras"

    with pytest.raises(weights_store.WeightsRefused) as refused:
        weights_store.import_weights(top, store=store, keras_cache_dir=cache)

    assert str(refused.value) == (f"{top} is not Xception no-top weights:\n  - 81 layers with weights, "
                                  "Xception(include_top=False) has 80; extra in the file: predictions "
                                  "(Xception with its classification top?)")
    assert not any(store.iterdir()) and not cache.exists()


def test_weights_of_another_model_are_refused_naming_the_first_shape_mismatches(tmp_path):
    other = tmp_path / "mobilenet.h5"
    tf.keras.applications.MobileNet(include_top=False, weights=None, input_shape=(96, 96, 3)).save_weights(str(other))
    with pytest.raises(weights_store.WeightsRefused) as refused:
        weights_store.import_weights(other, store=tmp_path / "store", keras_cache_dir=tmp_path / "keras")
    message = str(refused.value)
    assert "54 layers with weights, Xception(include_top=False) has 80 (another architecture?)" in message
    assert "layer #2 conv_dw_1 (Xception's: block1_conv2): weights 3x3x32x1 instead of 3x3x32x64" in message
    assert "more layers with other shapes" in message
    assert not any((tmp_path / "store").iterdir())


def test_same_layer_count_with_one_other_shape_is_refused(tmp_path):
    grey = tmp_path / "xception_one_channel.h5"
    tf.keras.applications.Xception(include_top=False, weights=None, input_shape=(71, 71, 1)).save_weights(str(grey))
    with pytest.raises(weights_store.WeightsRefused, match=r"(?s)^[^\n]*\n  - layer #0 block1_conv1: weights "
                                                           r"3x3x1x32 instead of 3x3x3x32$"):
        weights_store.check_xception_notop(grey)


def test_make_weights_refuses_a_file_that_is_not_hdf5_and_needs_weights(tmp_path, places):
    make = shutil.which("make")
    if make is None:
        pytest.skip("GNU make is not on PATH")
    env = {k: v for k, v in places["env"].items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    text = tmp_path / "weights.h5"
    text.write_text("not weights\n")

    # `-o venv`: use the venv running this test as it is.
    refused = subprocess.run([make, "-s", "-C", str(ROOT), "-o", "venv", "weights", f"WEIGHTS={text}"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert f"signflow weights import: refused: {text} is not an HDF5 file" in refused.stderr
    assert not any(places["store"].iterdir())

    usage = subprocess.run([make, "-s", "-C", str(ROOT), "-o", "venv", "weights"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert usage.returncode != 0 and "usage: make weights WEIGHTS=" in usage.stderr


def test_a_local_h5_file_is_resolved_with_its_sha256(xception_notop_h5):
    sha256 = weights_store.file_digests(xception_notop_h5)[0]
    weights = model_lib.resolve_backbone_weights(str(xception_notop_h5))
    assert (weights.path, weights.source, weights.sha256) == (str(xception_notop_h5), "h5", sha256)

