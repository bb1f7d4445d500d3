import os
from collections import Counter
from pathlib import Path

import pytest

# The test session is a process entry point: Keras 2 (tf-keras) before any test imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True, scope="session")
def _no_imported_weights(tmp_path_factory):
    """An empty weights store: weights imported on this machine (signflow weights import) must not change what
    weights="auto" resolves to in tests."""
    previous = os.environ.get("SIGNFLOW_WEIGHTS_DIR")
    os.environ["SIGNFLOW_WEIGHTS_DIR"] = str(tmp_path_factory.mktemp("weights-store"))
    yield
    if previous is None:
        os.environ.pop("SIGNFLOW_WEIGHTS_DIR", None)
    else:
        os.environ["SIGNFLOW_WEIGHTS_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny SavedModel from the real export code, built once per test session."""
    from tests.fixtures.tiny_model import build_tiny_saved_model

    path = tmp_path_factory.getbasetemp() / "signflow-tiny-model"
    if not (path / "saved_model.pb").is_file():
        build_tiny_saved_model(path)
    return path


def pytest_collection_modifyitems(config, items):
    """The likely longest modules first: the end-to-end story, then the modules with the most slow tests, then
    the rest.

    With `--dist loadscope --no-loadscope-reorder` (the Makefile) pytest-xdist hands whole modules to its
    workers in this order, so the story starts at once beside the rest rather than behind the modules with
    the most tests (xdist's own order); within a module the order is unchanged.
    """
    def module(item) -> str:
        return item.nodeid.split("::")[0]

    e2e, slow, first_seen = set(), Counter(), {}
    for item in items:
        first_seen.setdefault(module(item), len(first_seen))
        if item.get_closest_marker("e2e"):
            e2e.add(module(item))
        if item.get_closest_marker("slow"):
            slow[module(item)] += 1
    items.sort(key=lambda item: (module(item) not in e2e, -slow[module(item)], first_seen[module(item)]))
