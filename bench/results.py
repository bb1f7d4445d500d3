"""Where a benchmark writes its results: a new file, never one that another run wrote.

Benchmarks name their results by the time they finish, to the second. Two runs side
by side can finish within the same second (two `bench_serving_memory` runs, one of
them with another allocator, did), and the later one overwrote the earlier one's
figures. `reserve` creates the file exclusively and adds -2, -3, ... to the name
until it gets one nobody has.
"""
from __future__ import annotations

import itertools
from pathlib import Path


def reserve(folder: str | Path, stem: str, suffix: str = ".json") -> Path:
    """Create and return `folder/<stem><suffix>`, or `<stem>-N<suffix>` for the first N >= 2 not taken yet."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for attempt in itertools.count(1):
        path = folder / f"{stem}{'' if attempt == 1 else f'-{attempt}'}{suffix}"
        try:
            with open(path, "x"):
                return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")
