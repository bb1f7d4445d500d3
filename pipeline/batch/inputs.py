"""What a batch prediction reads: folders (walked like the inbox), files and globs, expanded into the files to read.

Layer: batch. May import components.ingest (the inbox walker, LandedFile) and errors.
"""
from __future__ import annotations

import glob
import os
from typing import Sequence

# NOTE: the inbox walker itself (skipped names, <label>/<image> folder labels):
# reusing it keeps "a folder is read like the inbox" true.
from components.ingest.landing import walk_folder
from components.ingest.records import LandedFile
from pipeline.batch.errors import BatchPredictError

_GLOB_CHARS = ("*", "?", "[")


def expand_inputs(inputs: Sequence[str]) -> list[LandedFile]:
    """The files named by folders (walked like the inbox), files and globs, in order, each once.

    A record's source is the file's path as the input named it (a folder's files
    as <folder>/<relative path>), plus ":<n>" for records inside a file. Only
    images inside a walked folder's subfolders get a folder label; glob matches
    and named files get none.
    """
    found: list[tuple[str, str, str | None]] = []  # (absolute path, name, folder label)
    for given in inputs:
        if any(ch in given for ch in _GLOB_CHARS):
            matches = sorted(glob.glob(given, recursive=True))
            if not matches:
                raise BatchPredictError(f"--input {given}: the pattern matches no file", status=2)
        elif os.path.isdir(given) or os.path.lexists(given):
            matches = [given]
        else:
            raise BatchPredictError(f"--input {given}: no such file or folder", status=2)
        for match in matches:
            if os.path.isdir(match):
                prefix = os.path.normpath(match)
                found.extend((c.origin, c.landed, c.folder_label) for c in walk_folder(match, prefix))
            else:
                found.append((os.path.abspath(match), os.path.normpath(match), None))
    files: list[LandedFile] = []
    seen: set[str] = set()
    for origin, name, label in found:
        if origin in seen:  # named twice (overlapping inputs): read once
            continue
        seen.add(origin)
        files.append(LandedFile(path=origin, name=name, order=len(files), folder_label=label))
    return files
