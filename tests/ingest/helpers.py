"""Fixture builders for the ingestion tests: real images (Pillow), real files, real TFRecords."""
from __future__ import annotations

import base64
import glob
import hashlib
import io
import json
import os
import random
from typing import Iterable

import tensorflow as tf
from PIL import Image
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.ingest.landing import IngestPaths


def image_bytes(seed: int, fmt: str = "PNG", size: tuple[int, int] = (40, 20)) -> bytes:
    """A small noise image, different for every seed (so every seed is a distinct sha256)."""
    rng = random.Random(seed)
    img = Image.frombytes("L", size, rng.randbytes(size[0] * size[1]))
    if fmt == "GIF":
        img = img.convert("P")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes, variant: str = "standard") -> str:
    """Base64 text in the variants ingestion accepts."""
    text = base64.b64encode(data).decode("ascii")
    if variant == "standard":
        return text
    if variant == "urlsafe":
        return base64.urlsafe_b64encode(data).decode("ascii")
    if variant == "unpadded":
        return text.rstrip("=")
    if variant == "urlsafe_unpadded":
        return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")
    if variant == "data_url":
        return "data:image/png;base64," + text
    raise ValueError(variant)


def padded_image(seed: int) -> bytes:
    """A PNG whose base64 ends in padding, so the unpadded variants really drop some."""
    for width in range(40, 43):  # noise does not compress: the length follows the size
        data = image_bytes(seed, size=(width, 20))
        if len(data) % 3:
            return data
    raise AssertionError("unreachable: three consecutive lengths include a non-multiple of 3")


def write_jsonl(path: str, lines: Iterable[dict | str]) -> None:
    """Objects are JSON-encoded; strings are written as they are (to build broken lines)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def write_json(path: str, doc) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f)


def write_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def make_paths(root: str, sample: bool = False) -> IngestPaths:
    return IngestPaths(
        inbox_dir=os.path.join(root, "inbox"),
        state_dir=os.path.join(root, "state"),
        quarantine_dir=os.path.join(root, "quarantine"),
        unlabelled_dir=os.path.join(root, "unlabelled"),
        sample_dir=os.path.join(root, "sample") if sample else None,
    )


def read_examples(examples_uri: str) -> dict[str, list[tf.train.Example]]:
    """split name -> the tf.Examples in that split's GZIP TFRecords."""
    result = {}
    for split_dir in sorted(glob.glob(os.path.join(examples_uri, "Split-*"))):
        files = sorted(glob.glob(os.path.join(split_dir, "*.gz")))
        records = tf.data.TFRecordDataset(files, compression_type="GZIP") if files else []
        result[os.path.basename(split_dir).removeprefix("Split-")] = [
            tf.train.Example.FromString(r.numpy()) for r in records
        ]
    return result


def feature(example: tf.train.Example, name: str):
    f = example.features.feature[name]
    return f.bytes_list.value[0] if f.HasField("bytes_list") else f.int64_list.value[0]


def by_sha(examples: dict[str, list[tf.train.Example]]) -> dict[str, tuple[str, str, bytes]]:
    """sha256 -> (split, label, image bytes) over all splits."""
    return {
        feature(e, "sha256").decode(): (split, feature(e, "label").decode(), feature(e, "image_raw"))
        for split, items in examples.items()
        for e in items
    }


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# A consumer component for pipeline tests: records the spans of the Examples it is given.
class _RecordSpansExecutor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):  # noqa: N802
        spans = sorted(a.get_int_custom_property("span") for a in input_dict["examples"])
        with open(exec_properties["log_file"], "a", encoding="utf-8") as f:
            f.write(json.dumps(spans) + "\n")


class _RecordSpansSpec(ComponentSpec):
    PARAMETERS = {"log_file": ExecutionParameter(type=str)}
    INPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples)}
    OUTPUTS = {}


class RecordSpans(base_component.BaseComponent):
    """Appends the sorted span numbers of its `examples` input to `log_file`, one JSON list per run."""

    SPEC_CLASS = _RecordSpansSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(_RecordSpansExecutor)

    def __init__(self, examples, log_file: str):
        super().__init__(spec=_RecordSpansSpec(examples=examples, log_file=log_file))


def ingest_step(paths: IngestPaths, root: str, run: int):
    """One ingestion step, what the driver then the executor do: (the collection, the summary, the Examples)."""
    from components.ingest import landing
    from components.ingest.executor import run_executor

    collection = landing.collect_new_files(paths, now=1_700_000_000 + run)
    uri = os.path.join(root, "examples", str(run))
    summary = run_executor(paths, collection.latest_span, uri, label_keys=("label", "caption"))
    return collection, summary, read_examples(uri)
