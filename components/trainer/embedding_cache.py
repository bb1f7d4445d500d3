"""The embeddings artifact: every example's pooled features under one backbone, computed once and kept.

Layer: trainer. A backbone is named by `backbone_id` (a digest of its weights), and
everything it embedded lives under `<cache dir>/<backbone id>/` as gzipped TFRecord
shards of tf.Examples {sha256, label, genuine, vector}, keyed by the example's
sha256. A cycle reads the shards of the backbone it runs on, embeds only the
examples no shard holds (the new span's records, typically), and adds them as
one new shard. A fast cycle keeps the backbone, so each one adds just its new
records; a full cycle trains a new backbone and starts a new folder, its train
split written as the `reference` shard that drift is measured against
(cycles.embedding_drift).

After a full cycle, `prune` deletes the folders of all but the
`embedding_cache_keep` most recently written backbones, never one in use (the new
backbone and the serving model's). What it deletes is only a cache: a
rollback to a version whose folder is gone embeds its examples again.

Every read and write goes through tf.io.gfile, so the cache can sit beside the
pipeline root on gs:// or s3://. A shard is written under a temporary name and
renamed when complete (where the filesystem cannot rename, the copy tf.io.gfile
does instead is still the last step); readers skip temporary names, so a
crashed writer leaves at most an orphan, never a half shard.

    cache = EmbeddingCache(config.embedding_cache_dir, backbone_id(classifier))
    split = cache.embed_split(classifier, train_files, config)   # SplitEmbeddings: genuine, forged
"""
from __future__ import annotations

import hashlib
import logging
import posixpath
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from components import storage
from components.trainer import data, embeddings as embeddings_lib, model as model_lib
from components.trainer.config import TrainerConfig
from components.trainer.embeddings import Embeddings
from serving.contract import GENUINE_FEATURE, IMAGE_FEATURE, LABEL_FEATURE, SHA256_FEATURE

keras = tf.keras

log = logging.getLogger(__name__)

SHARD_SUFFIX = ".tfrecord.gz"
# The train split of the full cycle that trained the backbone: what drift is measured against.
REFERENCE_SHARD = "reference"
_TEMPORARY_PREFIX = ".tmp-"
_VECTOR = "vector"


def backbone_id(classifier: keras.Model) -> str:
    """A digest of the classifier's backbone weights (16 hex digits): equal exactly when the weights are equal."""
    digest = hashlib.sha256()
    for weights in model_lib.backbone_of(classifier).get_weights():
        digest.update(np.ascontiguousarray(weights, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class SplitEmbeddings:
    """A split's pooled features: its genuine examples (labelled with their signer) and its forgeries
    (labelled with the signer they claim to be), in file order; how many rows came from the cache."""

    genuine: Embeddings
    forged: Embeddings
    cached: int
    embedded: int
    # The newly embedded genuine rows (the records this backbone has not seen before).
    new_genuine: np.ndarray
    seconds: float


@dataclass(frozen=True)
class _Record:
    sha256: str
    label: str
    genuine: bool
    image: bytes


class EmbeddingCache:
    """The shards of one backbone under `directory` (empty directory: nothing is kept, everything is embedded)."""

    def __init__(self, directory: str, backbone: str):
        self.backbone = backbone
        self.folder = posixpath.join(directory, backbone) if directory else ""
        self._rows: dict[str, np.ndarray] | None = None

    def rows(self) -> dict[str, np.ndarray]:
        """Every cached vector of this backbone, by example sha256."""
        if self._rows is None:
            self._rows = {}
            for shard in self._shards():
                self._rows.update(_read_shard(shard))
        return self._rows

    def reference(self) -> np.ndarray | None:
        """The vectors of the train split the backbone was trained on (None when that shard is not there)."""
        path = posixpath.join(self.folder, REFERENCE_SHARD + SHARD_SUFFIX) if self.folder else ""
        if not path or not tf.io.gfile.exists(path):
            return None
        vectors = list(_read_shard(path).values())
        return np.stack(vectors) if vectors else None

    def reference_age_seconds(self) -> float | None:
        """How long ago the reference shard was written (when the backbone was trained), None without one."""
        path = posixpath.join(self.folder, REFERENCE_SHARD + SHARD_SUFFIX) if self.folder else ""
        if not path or not tf.io.gfile.exists(path):
            return None
        # GFile's mtime is in nanoseconds on every filesystem.
        return max(0.0, time.time() - tf.io.gfile.stat(path).mtime_nsec / 1e9)

    def embed_split(self, classifier: keras.Model, files: Sequence[str], config: TrainerConfig, *,
                    reference: bool = False) -> SplitEmbeddings:
        """The pooled features of every example of a split (tf.Example TFRecords), embedding only the images
        this backbone has not embedded before and keeping them. With `reference`, the split is stored as the
        reference shard (the full cycle's train split)."""
        started = time.monotonic()
        records = _read_records(files)
        known = self.rows()
        missing = list({r.sha256: r for r in records if r.sha256 not in known}.values())
        if missing:
            vectors = embeddings_lib.embed_images(classifier, [r.image for r in missing], config)
            fresh = {r.sha256: vector for r, vector in zip(missing, vectors)}
            known.update(fresh)
        else:
            fresh = {}
        if self.folder and (fresh or reference):
            stored = {r.sha256: known[r.sha256] for r in records} if reference else fresh
            labels = {r.sha256: (r.label, r.genuine) for r in records}
            self._write(REFERENCE_SHARD if reference else f"{int(time.time())}-{uuid.uuid4().hex[:8]}",
                        stored, labels)
        genuine, forged = _split(records, known)
        new_genuine = [known[r.sha256] for r in missing if r.genuine]
        dim = genuine.dim
        result = SplitEmbeddings(genuine, forged, cached=len(records) - len(missing),
                                 embedded=len(missing),
                                 new_genuine=np.stack(new_genuine) if new_genuine else np.zeros((0, dim), np.float32),
                                 seconds=time.monotonic() - started)
        log.info("embeddings of %d examples under backbone %s: %d cached, %d embedded now (%.1f s)", len(records),
                 self.backbone, result.cached, result.embedded, result.seconds)
        return result

    def _shards(self) -> list[str]:
        return _shard_paths(self.folder) if self.folder else []

    def _write(self, name: str, vectors: dict[str, np.ndarray], labels: dict[str, tuple[str, bool]]) -> None:
        tf.io.gfile.makedirs(self.folder)
        final = posixpath.join(self.folder, name + SHARD_SUFFIX)
        temporary = posixpath.join(self.folder, f"{_TEMPORARY_PREFIX}{uuid.uuid4().hex}{SHARD_SUFFIX}")
        with tf.io.TFRecordWriter(temporary, options=data.COMPRESSION) as writer:
            for sha256, vector in vectors.items():
                label, genuine = labels[sha256]
                writer.write(tf.train.Example(features=tf.train.Features(feature={
                    SHA256_FEATURE: _bytes(sha256.encode("ascii")),
                    LABEL_FEATURE: _bytes(label.encode("utf-8")),
                    GENUINE_FEATURE: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(genuine)])),
                    _VECTOR: tf.train.Feature(float_list=tf.train.FloatList(value=vector)),
                })).SerializeToString())
        tf.io.gfile.rename(temporary, final, overwrite=True)


def prune(directory: str, keep: int, in_use: Sequence[str]) -> list[str]:
    """Delete the backbone folders under `directory` beyond the `keep` most recently written ones (the newest
    shard's time), never those named in `in_use`, which count towards `keep`; returns the deleted backbones."""
    if not directory:
        return []
    backbones = [name for name in storage.listdir(directory) if storage.isdir(storage.join(directory, name))]
    others = sorted((b for b in backbones if b not in in_use),
                    key=lambda b: _last_written(storage.join(directory, b)), reverse=True)
    kept = sum(1 for b in backbones if b in in_use)
    removed = others[max(0, keep - kept):]
    for backbone in removed:
        storage.rmtree(storage.join(directory, backbone))
    if removed:
        log.info("embedding cache: deleted the folders of %d backbone(s) (%s), kept %d", len(removed),
                 ", ".join(removed), len(backbones) - len(removed))
    return removed


def _shard_paths(folder: str) -> list[str]:
    """The complete shards in a backbone's folder (not a writer's temporary files), sorted; [] without it."""
    return [storage.join(folder, name) for name in storage.listdir(folder)
            if name.endswith(SHARD_SUFFIX) and not name.startswith(_TEMPORARY_PREFIX)]


def _last_written(folder: str) -> int:
    """The newest shard's modification time (ns) in a backbone's folder; 0 without shards."""
    return max((tf.io.gfile.stat(path).mtime_nsec for path in _shard_paths(folder)), default=0)


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _read_shard(path: str) -> dict[str, np.ndarray]:
    rows = {}
    for record in tf.data.TFRecordDataset([path], compression_type=data.COMPRESSION).as_numpy_iterator():
        example = tf.train.Example.FromString(record)
        feature = example.features.feature
        rows[feature[SHA256_FEATURE].bytes_list.value[0].decode("ascii")] = np.asarray(
            feature[_VECTOR].float_list.value, dtype=np.float32)
    return rows


def _read_records(files: Sequence[str]) -> list[_Record]:
    """Every example of the split, forgeries included, in file order, with its image bytes."""
    records = []
    for example in data.read_examples(files).as_numpy_iterator():
        image = bytes(example[IMAGE_FEATURE])
        sha256 = example[SHA256_FEATURE].decode("ascii") or hashlib.sha256(image).hexdigest()
        records.append(_Record(sha256, example[LABEL_FEATURE].decode("utf-8"), bool(example[GENUINE_FEATURE]),
                               image))
    return records


def _split(records: Sequence[_Record], vectors: dict[str, np.ndarray]) -> tuple[Embeddings, Embeddings]:
    """The genuine examples' and the forgeries' rows, each in file order."""
    def embeddings(chosen: list[_Record]) -> Embeddings:
        dim = len(next(iter(vectors.values()))) if vectors else 0
        stacked = np.stack([vectors[r.sha256] for r in chosen]) if chosen else np.zeros((0, dim), np.float32)
        return Embeddings(tuple(r.sha256 for r in chosen), tuple(r.label for r in chosen),
                          stacked.astype(np.float32, copy=False))

    return embeddings([r for r in records if r.genuine]), embeddings([r for r in records if not r.genuine])
