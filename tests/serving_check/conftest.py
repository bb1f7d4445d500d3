"""Real artifacts for the serving check: the tiny exported model, an eval split, the Trainer's predictions."""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.fixtures.tiny_model import DEFAULT_LABELS, make_image_bytes

import tensorflow as tf
from tfx.types import artifact_utils, standard_artifacts

EVAL_FORMATS = ("PNG", "JPEG", "GIF", "PNG", "BMP")


@pytest.fixture(scope="session")
def eval_images() -> list[tuple[bytes, str]]:
    """(image bytes, true label) of the eval split, in every accepted format."""
    return [(make_image_bytes(fmt, seed=100 + i), DEFAULT_LABELS[i % len(DEFAULT_LABELS)]) for i, fmt in enumerate(EVAL_FORMATS)]


@pytest.fixture(scope="session")
def trainer_predictions(tiny_model, eval_images) -> list[dict]:
    """eval_predictions.jsonl lines as the Trainer writes them, computed by running the model."""
    loaded = tf.saved_model.load(str(tiny_model))
    outputs = loaded.signatures["predict_label"](image_bytes=tf.constant([image for image, _ in eval_images]))
    return [
        {"sha256": hashlib.sha256(image).hexdigest(), "label": label, "predicted": predicted.decode(), "score": float(score)}
        for (image, label), predicted, score in zip(eval_images, outputs["label"].numpy(), outputs["score"].numpy())
    ]


@dataclass
class Candidate:
    """The serving check's inputs for one test; edit the files before running the executor."""

    model: standard_artifacts.Model
    examples: list[standard_artifacts.Examples]  # two spans, as the Trainer's rolling window gives them
    model_run: standard_artifacts.ModelRun
    infra_blessing: standard_artifacts.InfraBlessing

    @property
    def saved_model(self) -> Path:
        return Path(self.model.uri) / "Format-Serving"

    def write_eval_predictions(self, lines: list[dict]) -> None:
        path = Path(self.model_run.uri) / "eval_predictions.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


@pytest.fixture
def examples_dir(tmp_path, eval_images) -> Path:
    """An ExampleGen output folder: Split-train and Split-eval."""
    root = tmp_path / "ExampleGen" / "examples"
    write_split(root / "Split-train", eval_images[:1])
    write_split(root / "Split-eval", eval_images)
    return root


@pytest.fixture
def candidate(tmp_path, tiny_model, eval_images, trainer_predictions) -> Candidate:
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "Trainer" / "model")
    shutil.copytree(tiny_model, Path(model.uri) / "Format-Serving")

    examples = []
    for span, images in enumerate((eval_images[:2], eval_images[2:])):
        artifact = standard_artifacts.Examples()
        artifact.uri = str(tmp_path / "ExampleGen" / "examples" / str(span))
        artifact.split_names = artifact_utils.encode_split_names(["train", "eval"])
        artifact.span = span
        write_split(Path(artifact.uri) / "Split-train", images[:1])
        write_split(Path(artifact.uri) / "Split-eval", images)
        examples.append(artifact)

    model_run = standard_artifacts.ModelRun()
    model_run.uri = str(tmp_path / "Trainer" / "model_run")

    infra_blessing = standard_artifacts.InfraBlessing()
    infra_blessing.uri = str(tmp_path / "ServingCheck" / "infra_blessing")
    Path(infra_blessing.uri).mkdir(parents=True)
    found = Candidate(model, examples, model_run, infra_blessing)
    found.write_eval_predictions(trainer_predictions)
    return found


def write_split(folder: Path, images: list[tuple[bytes, str]]) -> None:
    """One split as ExampleGen writes it: a GZIP TFRecord of tf.Example (image_raw, label, sha256)."""
    folder.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(folder / "data_tfrecord-00000-of-00001.gz"), options="GZIP") as writer:
        for image, label in images:
            features = {"image_raw": image, "label": label.encode(), "sha256": hashlib.sha256(image).hexdigest().encode()}
            example = tf.train.Example(features=tf.train.Features(feature={
                key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value])) for key, value in features.items()
            }))
            writer.write(example.SerializeToString())
