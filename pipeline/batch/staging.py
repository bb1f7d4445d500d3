"""Where a batch prediction's outputs go: checked before the job, written inside hidden `.<name>.<run>.partial/`
folders beside their final names, and renamed into place after the job succeeded.

Files move in the order given, so the last one appearing is the sign that all
are whole; a file under its final name is always complete, and a failed run
leaves the previous result as it was.

Layer: batch. May import Beam's FileSystems (local paths and object stores alike) and errors.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

from apache_beam.io.filesystems import FileSystems

from pipeline.batch.errors import BatchPredictError

log = logging.getLogger(__name__)


def check_output(path: str) -> None:
    """Create the output's folder and check it is writable (local paths; remote ones fail in the pipeline)."""
    if "://" in path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise BatchPredictError(f"cannot create the output folder for {path}: {err}") from None
    if os.path.isdir(path):
        raise BatchPredictError(f"output {path} is a folder")
    if not os.access(folder, os.W_OK):
        raise BatchPredictError(f"output folder {folder} is not writable")


class Staging:
    """One run's staging folders for `finals`, moved into place in that order."""

    def __init__(self, finals: Sequence[str], run_id: str):
        self._folders = {final: _staging_folder(final, run_id) for final in finals}

    def partial(self, final: str) -> str:
        """Where the job writes `final`'s content."""
        return FileSystems.join(self._folders[final], FileSystems.split(final)[1])

    def move_into_place(self) -> None:
        finals = list(self._folders)
        FileSystems.rename([self.partial(final) for final in finals], finals)

    def remove(self) -> None:
        """Delete the staging folders: empty after a success, partial files and WriteToText's temp folders after a
        failure."""
        for folder in self._folders.values():
            # A local folder is removed with everything in it; an object store has
            # no folders, only objects under a prefix, which "**" matches at any depth.
            local = FileSystems.get_scheme(folder) in (None, "file")
            try:
                FileSystems.delete([folder if local else FileSystems.join(folder, "**")])
            except Exception as err:  # noqa: BLE001 - cleanup must not hide the result or the failure being reported
                if FileSystems.exists(folder):
                    log.warning("could not remove the staging folder %s: %s", folder, err)


def _staging_folder(final: str, run_id: str) -> str:
    """A per-run folder beside `final` that holds its partial copy and WriteToText's own temporary files.

    Hidden and ending in .partial: not mistaken for a result, and skipped by the
    inbox walker should the output folder also be an input. Beside the final
    file, so moving the result into place is a rename within one file system.
    """
    folder, name = FileSystems.split(final)
    return FileSystems.join(folder, f".{name}.{run_id}.partial")
