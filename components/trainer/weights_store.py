"""Xception's pretrained no-top weights on machines without network: `signflow weights import FILE | show`.

Keras downloads the ImageNet weights of `Xception(include_top=False)` from
`XCEPTION_NOTOP_URL` into its cache (`~/.keras/models/`), md5-checked. An
air-gapped site brings that file (or any weights file for the same architecture)
by hand and imports it:

    signflow weights import FILE    check FILE, then place it where the Trainer finds it
    signflow weights show           what is installed, and what weights="auto" would use

`import` refuses FILE unless it is an HDF5 Keras weights file that loads into
`keras.applications.Xception(include_top=False, weights=None)`: the same number of
layers with weights and the same shape for every weight, in order (Keras loads .h5
weights by position). It then copies FILE into a hidden temporary file beside its
destination, checks the copy, and renames it into place:

- the official ImageNet file (md5 == XCEPTION_NOTOP_MD5) goes into Keras' own
  cache under its official name, where `keras.utils.get_file` finds it and never
  downloads; its record is `<store>/imagenet_notop.json`;
- any other file goes to `<store>/xception_notop.h5`, with `<store>/xception_notop.json`.

`<store>` is $SIGNFLOW_WEIGHTS_DIR, or ~/.cache/signflow/weights. A record holds
sha256, md5, the source path, the import time, the layer count and whether the
file is the official ImageNet one. `model.resolve_backbone_weights` reads it.

No TensorFlow is imported until a file is checked, so `signflow weights show` is quick.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import secrets
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from serving.contract import fsync_dir, write_atomic

# What keras.applications.Xception(weights="imagenet", include_top=False) fetches.
XCEPTION_NOTOP_FILE = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
XCEPTION_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/xception/"
                      + XCEPTION_NOTOP_FILE)
XCEPTION_NOTOP_MD5 = "b0042744bf5b25fce3cb969f33bebb97"

STORE_ENV = "SIGNFLOW_WEIGHTS_DIR"
DEFAULT_STORE = Path("~/.cache/signflow/weights")
IMPORTED_FILE = "xception_notop.h5"
IMPORTED_RECORD = "xception_notop.json"
IMAGENET_RECORD = "imagenet_notop.json"

# Mismatching layers named in a refusal; the rest are counted.
MAX_NAMED_MISMATCHES = 5
_CHUNK = 1 << 20


class WeightsRefused(Exception):
    """A weights file that is not Xception no-top weights, or an installed file that no longer matches its record."""


@dataclass(frozen=True)
class WeightsRecord:
    """What `signflow weights import` placed, and from where."""

    path: str  # where the file was placed
    sha256: str
    md5: str
    source_path: str
    imported_at: str  # UTC, ISO 8601
    layers: int  # layers with weights
    official_imagenet: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def read(cls, path: str | os.PathLike) -> WeightsRecord:
        try:
            return cls(**json.loads(Path(path).read_text(encoding="utf-8")))
        except (ValueError, TypeError) as err:
            raise WeightsRefused(f"{path} is not a weights record ({err}); import the file again") from None


# -- locations -----------------------------------------------------------------------------------------------

def store_dir(store: str | os.PathLike | None = None) -> Path:
    """signflow's weights folder: `store`, else $SIGNFLOW_WEIGHTS_DIR, else ~/.cache/signflow/weights."""
    return Path(store or os.environ.get(STORE_ENV) or DEFAULT_STORE).expanduser()


def keras_cache_file(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `keras.utils.get_file(XCEPTION_NOTOP_FILE, ..., cache_subdir="models", cache_dir=cache_dir)` looks.

    NOTE: mirrors tf-keras 2.16's get_file: `cache_dir` defaults to ~/.keras, and a
    base folder that is not writable (or does not exist yet) means /tmp/.keras.
    """
    base = Path(cache_dir or "~/.keras").expanduser()
    if not os.access(base, os.W_OK):
        base = Path("/tmp/.keras")
    return base / "models" / XCEPTION_NOTOP_FILE


# -- checks --------------------------------------------------------------------------------------------------

def file_digests(path: str | os.PathLike) -> tuple[str, str]:
    """(sha256, md5) of a file, read once."""
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


def sha256_of(path: str | os.PathLike) -> str:
    """sha256 of a file (88 MB: ~0.3 s)."""
    return file_digests(path)[0]


def _hdf5_strings(group, name: str) -> list[str]:
    # Keras splits attributes over 64 KB into name0, name1, ... (hdf5_format.save_attributes_to_hdf5_group).
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [value.decode("utf-8") if isinstance(value, bytes) else str(value) for value in values]


def _file_layers(path: Path, shown_as: Path) -> list[tuple[str, list[tuple[int, ...]]]]:
    """The layers with weights in a Keras .h5 weights file, in order, with their weights' shapes."""
    import h5py

    if not h5py.is_hdf5(path):
        raise WeightsRefused(f"{shown_as} is not an HDF5 file; Keras weights files are HDF5 (.h5)")
    try:
        with h5py.File(path, "r") as handle:
            group = handle
            if "layer_names" not in group.attrs and "layer_names0" not in group.attrs and "model_weights" in group:
                group = group["model_weights"]  # a whole model saved with model.save(...h5)
            names = _hdf5_strings(group, "layer_names")
            if not names:
                raise WeightsRefused(f"{shown_as} is an HDF5 file but not Keras weights (no layer_names attribute)")
            layers = []
            for name in names:
                weight_names = _hdf5_strings(group[name], "weight_names")
                if weight_names:
                    layers.append((name, [tuple(group[name][weight].shape) for weight in weight_names]))
    except (OSError, KeyError) as err:  # truncated file, a layer or weight the names point to is missing
        raise WeightsRefused(f"{shown_as} cannot be read as Keras weights: {err}") from None
    return layers


def check_xception_notop(path: str | os.PathLike, shown_as: str | os.PathLike | None = None) -> int:
    """Raise WeightsRefused unless `path` loads into Xception(include_top=False); returns its layer count.

    Compares layer count and every weight's shape, position by position as Keras
    loads them, and names what differs; then loads the file into the model.
    Messages call the file `shown_as` (default `path`).
    """
    path = Path(path)
    shown_as = Path(shown_as or path)
    found = _file_layers(path, shown_as)
    import tensorflow as tf

    model = tf.keras.applications.Xception(include_top=False, weights=None)
    expected = [(layer.name, [tuple(w.shape) for w in layer.trainable_weights + layer.non_trainable_weights])
                for layer in model.layers if layer.weights]
    problems = [f"layer #{i} {name}" + ("" if name == own else f" (Xception's: {own})")
                + f": weights {_shapes(shapes)} instead of {_shapes(own_shapes)}"
                for i, ((name, shapes), (own, own_shapes)) in enumerate(zip(found, expected)) if shapes != own_shapes]
    named = problems[:MAX_NAMED_MISMATCHES]
    if len(problems) > len(named):
        named.append(f"... and {len(problems) - len(named)} more layers with other shapes")
    if len(found) != len(expected):
        count = f"{len(found)} layers with weights, Xception(include_top=False) has {len(expected)}"
        if not problems and len(found) > len(expected):
            extra = ", ".join(name for name, _ in found[len(expected):])
            count += f"; extra in the file: {extra} (Xception with its classification top?)"
        elif not problems:
            count += f"; the file ends before {expected[len(found)][0]}"
        else:
            count += " (another architecture?)"
        named.insert(0, count)
    if named:
        raise WeightsRefused(f"{shown_as} is not Xception no-top weights:\n" + "\n".join(f"  - {n}" for n in named))
    try:
        model.load_weights(str(path))
    except (ValueError, OSError) as err:
        raise WeightsRefused(f"{shown_as} does not load into Xception(include_top=False): {err}") from None
    return len(expected)


def _shapes(shapes: Sequence[tuple[int, ...]]) -> str:
    return ", ".join("x".join(map(str, shape)) or "scalar" for shape in shapes)


# -- import --------------------------------------------------------------------------------------------------

def import_weights(source: str | os.PathLike, *, store: str | os.PathLike | None = None,
                   keras_cache_dir: str | os.PathLike | None = None) -> WeightsRecord:
    """Check `source` and place it (see the module docstring); returns the record written.

    Nothing is placed unless the copy in the destination folder passes every check;
    the file is renamed into place, then its record.
    """
    source = Path(source).expanduser()
    if not source.is_file():
        raise WeightsRefused(f"{source} is not a file")
    sha256, md5 = file_digests(source)
    official = md5 == XCEPTION_NOTOP_MD5
    records = store_dir(store)
    if official:
        base = Path(keras_cache_dir or "~/.keras").expanduser()
        (base / "models").mkdir(parents=True, exist_ok=True)  # before keras_cache_file: it checks the base
        destination, record_path = keras_cache_file(keras_cache_dir), records / IMAGENET_RECORD
    else:
        destination, record_path = records / IMPORTED_FILE, records / IMPORTED_RECORD
    destination.parent.mkdir(parents=True, exist_ok=True)
    records.mkdir(parents=True, exist_ok=True)

    temporary = destination.parent / f".{destination.name}.{secrets.token_hex(4)}.tmp"
    try:
        with open(source, "rb") as src, open(temporary, "xb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
        if file_digests(temporary) != (sha256, md5):
            raise WeightsRefused(f"{source} changed while it was being copied; import it again")
        layers = check_xception_notop(temporary, shown_as=source)
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(destination.parent)
    record = WeightsRecord(
        path=str(destination), sha256=sha256, md5=md5, source_path=str(source.resolve()),
        imported_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        layers=layers, official_imagenet=official)
    write_atomic(record_path, record.to_json())
    return record


# -- lookup --------------------------------------------------------------------------------------------------

def imported_weights(store: str | os.PathLike | None = None) -> WeightsRecord | None:
    """The imported (non-official) file's record, or None when nothing was imported.

    Raises WeightsRefused when the file is gone or its sha256 differs from the record:
    training must not start from a file other than the one that was checked.
    """
    record_path = store_dir(store) / IMPORTED_RECORD
    if not record_path.is_file():
        return None
    record = WeightsRecord.read(record_path)
    if not Path(record.path).is_file():
        raise WeightsRefused(f"{record.path} (imported {record.imported_at}) is missing; import it again")
    actual = sha256_of(record.path)
    if actual != record.sha256:
        raise WeightsRefused(f"{record.path} has sha256 {actual}, not {record.sha256} as imported "
                             f"{record.imported_at}; import it again")
    return record


# -- command line --------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    importing = actions.add_parser("import", help="check a weights file and install it for the Trainer")
    importing.add_argument("file", metavar="FILE", help="an .h5 weights file of Xception(include_top=False)")
    actions.add_parser("show", help='what is installed, and what weights="auto" tries in which order')
    parser.epilog = f"The store is ${STORE_ENV}, else {DEFAULT_STORE}."


def main(args: argparse.Namespace) -> int:
    if args.action == "show":
        print("\n".join(describe_installed()))
        return 0
    try:
        record = import_weights(args.file)
    except (WeightsRefused, OSError) as err:
        print(f"signflow weights import: refused: {err}", file=sys.stderr)
        return 1
    if record.official_imagenet:
        verdict = "the official ImageNet file: Keras' cache now holds it"
        use = 'weights="auto" and "imagenet" use it'
    else:
        verdict = f"not the official ImageNet file ({XCEPTION_NOTOP_MD5})"
        use = 'weights="auto" uses it when the official ImageNet file is neither cached nor downloadable'
    print(f"imported {record.source_path}\n"
          f"  placed at {record.path}\n"
          f"  sha256    {record.sha256}\n"
          f"  md5       {record.md5}: {verdict}\n"
          f"  {record.layers} layers with weights; loads into Xception(include_top=False)\n"
          f"  {use}")
    return 0


def describe_installed(store: str | os.PathLike | None = None) -> list[str]:
    """`signflow weights show`: the candidates of weights="auto", in the order it tries them."""
    lines = ['weights="auto" tries, in order:']
    cached = keras_cache_file()
    if cached.is_file():
        sha256, md5 = file_digests(cached)
        verdict = "the official ImageNet file" if md5 == XCEPTION_NOTOP_MD5 else \
            f"md5 {md5} is NOT the official {XCEPTION_NOTOP_MD5}: Keras will try to download it again"
        lines.append(f"  1. Keras cache  {cached}: {verdict}, sha256 {sha256}")
        official = store_dir(store) / IMAGENET_RECORD
        if official.is_file():
            record = WeightsRecord.read(official)
            lines.append(f"                 imported {record.imported_at} from {record.source_path}")
    else:
        lines.append(f"  1. Keras cache  {cached}: absent (a download from {XCEPTION_NOTOP_URL} is tried)")
    try:
        record = imported_weights(store)
    except WeightsRefused as err:
        lines.append(f"  2. imported     BROKEN: {err}")
    else:
        if record is None:
            lines.append(f"  2. imported     none in {store_dir(store)}")
        else:
            lines.append(f"  2. imported     {record.path}: sha256 {record.sha256}, md5 {record.md5}, "
                         f"{record.layers} layers; imported {record.imported_at} from {record.source_path}")
    lines.append("  3. random init")
    return lines

