"""pipeline.batch.model_handler: the handler RunInference calls, on a tiny real SavedModel, without Beam."""
from __future__ import annotations

from pathlib import Path

# NOTE: before Beam: importing apache_beam appends IPython/extensions to
# sys.path, whose regular `tests` package would then shadow this namespace one.
from tests.fixtures.tiny_model import build_tiny_saved_model, make_image_bytes

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline.batch.model_handler import InferenceFailure, ServingSignatureHandler  # noqa: E402
from pipeline.batch.signature import Scores  # noqa: E402

LABELS = ("signer_00", "signer_01", "signer_02")


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory) -> Path:
    return build_tiny_saved_model(tmp_path_factory.mktemp("handler") / "1", labels=LABELS)


def test_a_batch_answers_as_the_saved_models_own_signature(version_dir: Path):
    images = [make_image_bytes(fmt, size=(90 + 11 * i, 40), seed=i) for i, fmt in enumerate(["PNG", "JPEG", "GIF"])]
    handler = ServingSignatureHandler(str(version_dir), batch_size=3)
    results = list(handler.run_inference(images, handler.load_model()))

    direct = tf.saved_model.load(str(version_dir)).signatures["predict_label"](image_bytes=tf.constant(images))
    assert [r.example for r in results] == images
    assert [r.inference.label for r in results] == [label.decode() for label in direct["label"].numpy()]
    np.testing.assert_allclose([r.inference.probabilities for r in results], direct["probabilities"].numpy(),
                               atol=1e-6)


def test_an_image_the_graph_refuses_fails_alone(version_dir: Path):
    good = [make_image_bytes("PNG", seed=1), make_image_bytes("JPEG", seed=2)]
    handler = ServingSignatureHandler(str(version_dir), batch_size=3)
    results = list(handler.run_inference([good[0], b"\x89PNG\r\n\x1a\n but no more", good[1]], handler.load_model()))

    assert [type(r.inference) for r in results] == [Scores, InferenceFailure, Scores]
    assert results[1].inference.message  # the op's own words, e.g. DecodeImage's
    assert "Graph execution error" not in results[1].inference.message
