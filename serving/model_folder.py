"""What a model folder says about each of its versions, read-only: the dashboard's source.

    <model_base_path>/
        <version>/assets.extra/signflow_model.json     labels in probabilities order, signatures (the Trainer's export)
        .pushes/<version>.json                          the push record: pipeline run, time, model, eval metrics,
                                                        per-signer accuracy, spans and record counts trained on
        .rolled_back/<version>/ROLLBACK_NOTE.json      when, why and by whom a version was rolled back, and a
                                                        copy of its push record

The push record is the Pusher's (components/pusher/records.py, PushRecord), written
before the version folder appears and kept after it is gone. Every file is
optional and read leniently: a missing or unreadable one leaves its fields empty,
never fails the listing. Values are passed on only when they have the expected
JSON type, so the page can trust what it gets.

Layer: building block. Imports the standard library, serving.contract,
serving.layout and serving.rollback (its readers).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serving.contract import INGEST_COUNTS, MODEL_METADATA_FILE
from serving.layout import list_versions, parse_version, rolled_back_dir, version_path
from serving.rollback import read_push_record, read_rollback_note

# Bigger than any honest metadata file: a file past this is not read.
MAX_FILE_BYTES = 1024 * 1024

LIVE = "live"
ROLLED_BACK = "rolled_back"


@dataclass
class VersionOnDisk:
    """One version folder, live or rolled back, with what its files say."""

    version: int
    place: str
    """LIVE (under the base path, a server may serve it) or ROLLED_BACK (under .rolled_back/)."""
    labels: list[str] = field(default_factory=list)
    signatures: list[str] = field(default_factory=list)
    pushed_at: float | None = None
    pipeline_run_id: str | None = None
    model_uri: str | None = None
    eval_metrics: dict[str, float] = field(default_factory=dict)
    spans: list[int] = field(default_factory=list)
    record_counts: dict[str, int] = field(default_factory=dict)
    """INGEST_COUNTS first, in that order, then the split sizes ("train split", ...) and any others by name."""
    per_signer: dict[str, dict[str, float | int]] = field(default_factory=dict)
    """Label -> {"accuracy": float, "correct": int, "total": int}: the Evaluator's slice of that signer."""
    rollback: dict[str, Any] | None = None
    """For a rolled-back version: {"at", "reason", "user", "host", "serving_after", "via"} from its note."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def versions_on_disk(model_base_path: str | Path) -> list[VersionOnDisk]:
    """Live and rolled-back versions under `model_base_path`, newest first. A missing folder gives []."""
    base = Path(model_base_path)
    found = [_describe(base, version, LIVE, version_path(base, version)) for version in list_versions(base)]
    rolled = rolled_back_dir(base)
    if rolled.is_dir():
        for child in rolled.iterdir():
            version = parse_version(child.name)
            if version is not None and child.is_dir():
                found.append(_describe(base, version, ROLLED_BACK, child))
    found.sort(key=lambda info: (info.version, info.place == LIVE), reverse=True)
    return found


def _describe(base: Path, version: int, place: str, folder: Path) -> VersionOnDisk:
    info = VersionOnDisk(version, place)
    metadata = _read_json(folder / MODEL_METADATA_FILE)
    info.labels = _strings(metadata.get("labels"))
    signatures = metadata.get("signatures")
    info.signatures = sorted(str(name) for name in signatures) if isinstance(signatures, dict) else []

    record = read_push_record(base, version)
    note = (read_rollback_note(base, version) or {}) if place == ROLLED_BACK else {}
    if record is None and isinstance(note.get("push"), dict):
        # The note keeps a copy of the push record, for a record deleted by hand.
        record = note["push"]
    record = record or {}
    info.pushed_at = _number(record.get("pushed_at")) or _number(record.get("adopted_at"))
    info.pipeline_run_id = _string(record.get("pipeline_run_id"))
    info.model_uri = _string(record.get("model_uri"))
    info.eval_metrics = _numbers(record.get("eval_metrics"))
    info.spans = [span for span in _list(record.get("spans")) if _is_int(span)]
    info.record_counts = _in_order({name: int(value) for name, value in _numbers(record.get("record_counts")).items()
                                    if float(value).is_integer()})
    info.per_signer = _per_signer(record.get("per_signer"))

    if place == ROLLED_BACK:
        info.rollback = {
            "at": _number(note.get("rolled_back_at")),
            "reason": _string(note.get("reason")) or "",
            "user": _string(note.get("user")),
            "host": _string(note.get("host")),
            "serving_after": note.get("serving_after") if isinstance(note.get("serving_after"), int) else None,
            "via": _string(note.get("via")),
        }
    return info


def record_counts(ingest_summaries: list[dict[str, Any]]) -> dict[str, int]:
    """The INGEST_COUNTS and split sizes ("train split", ...) of ingest summaries, summed over spans.

    What the Pusher records for the Examples a model was trained on, and what the
    dashboard shows from the training server's last cycle: one rule for both.
    """
    counts: dict[str, int] = {}
    for summary in ingest_summaries:
        found = {key: summary.get(key) for key in INGEST_COUNTS}
        splits = summary.get("splits")
        if isinstance(splits, dict):
            found.update({f"{split} split": n for split, n in splits.items()})
        for key, value in found.items():
            if _is_int(value):
                counts[key] = counts.get(key, 0) + value
    return _in_order(counts)


def _in_order(counts: dict[str, int]) -> dict[str, int]:
    """Records read and what became of them (INGEST_COUNTS' order), then the rest by name."""
    rank = {name: index for index, name in enumerate(INGEST_COUNTS)}
    return {name: counts[name] for name in sorted(counts, key=lambda name: (rank.get(name, len(rank)), name))}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            return {}
        document = json.loads(data)
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _per_signer(value: Any) -> dict[str, dict[str, float | int]]:
    """The entries of a push record's per_signer whose accuracy is a number and counts are whole."""
    out = {}
    for label, figures in value.items() if isinstance(value, dict) else ():
        if not isinstance(figures, dict):
            continue
        accuracy = _numbers({"accuracy": figures.get("accuracy")}).get("accuracy")
        correct, total = figures.get("correct"), figures.get("total")
        if accuracy is not None and _is_int(correct) and _is_int(total):
            out[str(label)] = {"accuracy": accuracy, "correct": correct, "total": total}
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _strings(value: Any) -> list[str]:
    return [item for item in _list(value) if isinstance(item, str)]


def _numbers(value: Any) -> dict[str, float]:
    """The entries of a JSON object whose values are finite numbers."""
    if not isinstance(value, dict):
        return {}
    out = {}
    for name, item in value.items():
        number = _number(item)
        if number is not None and number == number and abs(number) != float("inf"):
            out[str(name)] = number
    return out
