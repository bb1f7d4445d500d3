"""Fixture builders for the trainer tests: real signature images, real GZIP TFRecords as ExampleGen writes them."""
from __future__ import annotations

import hashlib
import importlib.util
import io
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import tensorflow as tf
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
GENERATOR = REPO / "data" / "generate_signatures.py"

Item = tuple[bytes, str]  # (encoded image file, label)


@lru_cache(maxsize=1)
def generator():
    """data/generate_signatures.py as a module (data/ is not a package)."""
    spec = importlib.util.spec_from_file_location("generate_signatures", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rendered_items(signers: Iterable[int], per_signer: int, seed: int = 7, first_sample: int = 0) -> list[Item]:
    """Synthetic signatures from the sample generator: `per_signer` signings of each signer."""
    gen = generator()
    return [(gen.render_signature(seed, signer, sample), gen.label_for(signer))
            for signer in signers for sample in range(first_sample, first_sample + per_signer)]


def to_example(image: bytes, label: str, source: str = "test") -> tf.train.Example:
    """The tf.Example of the ingestion contract."""
    with Image.open(io.BytesIO(image)) as img:
        width, height, fmt = img.width, img.height, img.format

    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image_raw": _bytes(image),
        "label": _bytes(label.encode("utf-8")),
        "sha256": _bytes(hashlib.sha256(image).hexdigest().encode("ascii")),
        "source": _bytes(source.encode("utf-8")),
        "width": _int(width),
        "height": _int(height),
        "format": _bytes(fmt.encode("ascii")),
        "ingested_at": _int(1_700_000_000),
    }))


def write_records(path: Path, items: Sequence[Item]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for i, (image, label) in enumerate(items):
            writer.write(to_example(image, label, source=f"item:{i}").SerializeToString())
    return path


def write_splits(root: Path, items: Sequence[Item], eval_every: int = 5) -> dict[str, list[Item]]:
    """Write ExampleGen's layout, root/Split-{train,eval}/data_tfrecord-00000-of-00001.gz.

    Every `eval_every`-th item of each label goes to eval (ExampleGen splits by hash,
    which on a tiny set may leave a label out of a split; tests want fixed sizes).
    """
    splits: dict[str, list[Item]] = {"train": [], "eval": []}
    seen: dict[str, int] = {}
    for image, label in items:
        seen[label] = seen.get(label, 0) + 1
        splits["eval" if seen[label] % eval_every == 0 else "train"].append((image, label))
    for name, split_items in splits.items():
        write_records(root / f"Split-{name}" / "data_tfrecord-00000-of-00001.gz", split_items)
    return splits


def split_pattern(root: Path, split: str) -> str:
    return str(root / f"Split-{split}" / "*")
