"""TensorFlow's in-memory filesystem (ram://) as a stand-in for an object store in tests.

ram:// is process-wide, so every test takes its own root. Like gs:// it has no
folder rename (renaming a folder there moves its name, not its files), so it
exercises the object-store path of the Pusher too.
"""
from __future__ import annotations

import os
import uuid

import tensorflow as tf

from components import storage


def ram_root(name: str) -> str:
    return f"ram://signflow-test-{name}-{uuid.uuid4().hex}"


def upload(local_folder: str | os.PathLike, target: str) -> str:
    """Copy a local folder into `target` (a ram:// folder); returns `target`."""
    local_folder = os.fspath(local_folder)
    for root, _, files in os.walk(local_folder):
        relative = os.path.relpath(root, local_folder)
        folder = target if relative == "." else f"{target}/{relative}"
        tf.io.gfile.makedirs(folder)
        for name in files:
            tf.io.gfile.copy(os.path.join(root, name), f"{folder}/{name}", overwrite=True)
    return target


def tree(root: str) -> set[str]:
    """Every file under `root`, relative to it (storage.walk: ram://'s raw listing has phantom names)."""
    return {os.path.relpath(f"{folder}/{name}", root) for folder, _, files in storage.walk(root) for name in files}
