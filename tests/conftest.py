import os
from pathlib import Path

import pytest

# The test session is a process entry point: Keras 2 (tf-keras) before any test imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny SavedModel from the real export code, built once per test session."""
    from tests.fixtures.tiny_model import build_tiny_saved_model

    path = tmp_path_factory.getbasetemp() / "signflow-tiny-model"
    if not (path / "saved_model.pb").is_file():
        build_tiny_saved_model(path)
    return path
