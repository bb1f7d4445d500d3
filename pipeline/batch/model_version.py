"""Which model version a batch prediction uses: the newest version folder (TF Serving's rule) or the one asked for,
with its labels, its serving signature checked before any worker starts.

Layer: batch. May import serving.layout, signature and errors.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.batch.errors import BatchPredictError
from pipeline.batch.signature import check_signature
from serving import layout


@dataclass(frozen=True)
class ModelVersion:
    base: Path
    version: int
    path: Path
    labels: tuple[str, ...]


def resolve_model(model_base_path: str | os.PathLike, version: int | None) -> ModelVersion:
    """The version folder to use (the newest unless `version`) and its labels, or BatchPredictError."""
    base = Path(model_base_path)
    if not base.is_dir():
        raise BatchPredictError(f"model folder {base} does not exist")
    versions = layout.list_versions(base)
    if not versions:
        raise BatchPredictError(
            f"no version folder under {base} (versions are folders named by an integer, e.g. {base}/1)"
        )
    chosen = versions[-1] if version is None else version
    if chosen not in versions:
        raise BatchPredictError(f"no version {chosen} under {base}; versions present: {', '.join(map(str, versions))}")
    path = layout.version_path(base, chosen)
    if not (path / layout.SAVED_MODEL_FILE).is_file():
        raise BatchPredictError(f"{path} has no {layout.SAVED_MODEL_FILE}")
    try:
        text = (path / layout.LABELS_FILE).read_text(encoding="utf-8")
    except OSError as err:
        raise BatchPredictError(f"cannot read the model's labels ({path / layout.LABELS_FILE}): {err}") from None
    labels = tuple(line for line in text.split("\n") if line)
    if not labels:
        raise BatchPredictError(f"{path / layout.LABELS_FILE} lists no labels")
    check_signature(path, len(labels))
    return ModelVersion(base, chosen, path, labels)
