"""`signflow rollback` and `signflow versions`: the serving folder is the source of truth.

TF Serving's `latest` policy serves the highest numbered folder under the model's
base path. Rolling back therefore means moving versions out of that folder, to
`<model_base_path>/.rolled_back/<version>/` (a non-numeric name, which servers
ignore), in one rename each. The server falls back to the previous version on its
next poll, and the next pipeline run takes that version as its baseline. The move
itself is serving.rollback.roll_back, which the model server's rollback route
calls too: one implementation.

    signflow rollback [--to VERSION] [--reason TEXT]   take the newest (or all newer than VERSION) out
    signflow versions [--json]                         what is on disk, what serves, where each came from

Layer: training_server. May import components.pusher, serving.contract, serving.layout,
serving.rollback and definition's paths; ML Metadata only when listing lineage.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.pusher import records
from pipeline.definition.paths import METADATA_FILE
from serving.contract import ACCURACY_METRIC
from serving.layout import list_versions, rolled_back_dir
from serving.rollback import RollbackRefused, roll_back

DEFAULT_MODEL_NAME = "xception"
DEFAULT_SERVING_DIR = Path("serving_model")
DEFAULT_PIPELINE_ROOT = Path("pipeline_root")
# How many eval metrics the table's METRICS column shows (in ordered_metrics' order).
SHOWN_METRICS = 3
SERVING = "serving"
LIVE = "live"
ROLLED_BACK = "rolled back"


@dataclass
class VersionInfo:
    """One version as `signflow versions` shows it."""

    version: int
    status: str  # SERVING, LIVE or ROLLED_BACK
    pushed_at: float | None = None
    model_uri: str | None = None
    pipeline_run_id: str | None = None
    spans: list[int] = field(default_factory=list)
    eval_metrics: dict[str, float] = field(default_factory=dict)  # in ordered_metrics' order
    lineage_from: str | None = None  # "mlmd", "push record" or None
    rollback: dict | None = None  # when, why, who (the note), for rolled-back versions


@dataclass
class VersionListing:
    model_name: str
    model_base_path: str
    metadata_path: str | None
    metadata_note: str
    versions: list[VersionInfo]


def list_version_info(model_base_path: str | Path, model_name: str, metadata_path: str | Path | None) -> VersionListing:
    """Live and rolled-back versions, newest first, with lineage from MLMD (or the push records)."""
    base = Path(model_base_path)
    live = list_versions(base)
    infos = [VersionInfo(v, SERVING if v == live[-1] else LIVE) for v in live]
    for version in records.rolled_back_versions(base):
        note = records.read_rollback_note(base, version)
        info = VersionInfo(version, ROLLED_BACK)
        if note is not None:
            info.rollback = {"at": note.rolled_back_at, "reason": note.reason, "user": note.user,
                             "host": note.host, "serving_after": note.serving_after}
        infos.append(info)
    infos.sort(key=lambda info: info.version, reverse=True)

    store, note = _open_metadata(metadata_path)
    for info in infos:
        if store is not None and _fill_from_metadata(store, model_name, info):
            continue
        record = records.read_record(base, info.version)
        if record is not None:
            info.lineage_from = "push record"
            info.pushed_at = record.pushed_at
            info.model_uri = record.model_uri
            info.pipeline_run_id = record.pipeline_run_id
            info.spans = record.spans
            info.eval_metrics = ordered_metrics(record.eval_metrics)
    return VersionListing(model_name, str(base), str(metadata_path) if metadata_path else None, note, infos)


def _fill_from_metadata(store, model_name: str, info: VersionInfo) -> bool:
    from components.pusher.lineage import version_lineage

    lineage = version_lineage(store, model_name, info.version)
    if lineage is None:
        return False
    info.lineage_from = "mlmd"
    info.pushed_at = lineage.pushed_at
    info.model_uri = lineage.model_uri
    info.pipeline_run_id = lineage.pipeline_run_id
    info.spans = lineage.spans
    info.eval_metrics = ordered_metrics(lineage.eval_metrics)
    return True


def _open_metadata(metadata_path: str | Path | None):
    """(read-only MLMD store or None, a note saying which). Missing MLMD is normal, not an error."""
    if metadata_path is None:
        return None, "no ML Metadata found (pass --metadata_path): lineage from push records only"
    if not Path(metadata_path).is_file():
        return None, f"no ML Metadata at {metadata_path}: lineage from push records only"
    # Imported here: `signflow rollback` and a versions listing without MLMD need no ml_metadata.
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(metadata_path)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    try:
        return metadata_store.MetadataStore(config), f"lineage from ML Metadata at {metadata_path}"
    except Exception as err:  # noqa: BLE001  an unreadable store degrades to push records
        return None, f"cannot read ML Metadata at {metadata_path} ({err}): lineage from push records only"


def default_metadata_path(pipeline_root: Path = DEFAULT_PIPELINE_ROOT) -> Path | None:
    """The runner's `<pipeline_root>/<pipeline_name>/metadata.sqlite`, if exactly one pipeline has one."""
    found = sorted(pipeline_root.glob(f"*/{METADATA_FILE}"))
    return found[0] if len(found) == 1 else None


def _model_base_path(args: argparse.Namespace) -> Path:
    return Path(args.model_base_path) if args.model_base_path else DEFAULT_SERVING_DIR / args.model_name


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_name", default=DEFAULT_MODEL_NAME, help=f"TF Serving model name (default {DEFAULT_MODEL_NAME})")
    parser.add_argument("--model_base_path", default=None,
                        help=f"folder holding the numbered versions (default {DEFAULT_SERVING_DIR}/<model_name>)")


def add_rollback_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `signflow rollback`."""
    parser.add_argument("--to", type=int, metavar="VERSION", default=None,
                        help="take every version newer than VERSION out of service (default: only the newest)")
    parser.add_argument("--reason", default="", help="why, recorded in the rollback note")
    _add_model_arguments(parser)


def rollback_main(args: argparse.Namespace) -> int:
    """`signflow rollback`: 0 on success, 1 with a one-line message when refused."""
    base = _model_base_path(args)
    try:
        result = roll_back(base, to=args.to, reason=args.reason)
    except RollbackRefused as err:
        print(f"signflow rollback: {err}", file=sys.stderr)
        return 1
    if not result.rolled_back:
        print(f"version {result.serving} is already the newest under {base}; nothing rolled back")
    else:
        moved = ", ".join(map(str, result.rolled_back))
        print(f"rolled back {moved} to {rolled_back_dir(base)}; now serving {result.serving}")
    return 0


def add_versions_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `signflow versions`."""
    _add_model_arguments(parser)
    parser.add_argument("--metadata_path", default=None,
                        help=f"ML Metadata sqlite file (default: {DEFAULT_PIPELINE_ROOT}/<pipeline>/{METADATA_FILE} if there is exactly one)")
    parser.add_argument("--json", action="store_true", help="print the listing as JSON")


def versions_main(args: argparse.Namespace) -> int:
    """`signflow versions`: print the versions table (or JSON)."""
    metadata_path = args.metadata_path or default_metadata_path()
    listing = list_version_info(_model_base_path(args), args.model_name, metadata_path)
    if args.json:
        print(json.dumps(asdict(listing), indent=2))
        return 0
    print(f"{listing.model_name} in {listing.model_base_path} ({listing.metadata_note})")
    if not listing.versions:
        print("no versions")
        return 0
    print(f"{'VERSION':<12} {'STATUS':<12} {'PUSHED (UTC)':<20} {'RUN':<28} {'SPANS':<8} {'METRICS':<32} MODEL")
    for info in listing.versions:
        shown = list(info.eval_metrics.items())[:SHOWN_METRICS]
        metrics = " ".join(f"{name}={value:.4g}" for name, value in shown)
        print(f"{info.version:<12} {info.status:<12} {_utc(info.pushed_at):<20} {info.pipeline_run_id or '-':<28} "
              f"{','.join(map(str, info.spans)) or '-':<8} {metrics or '-':<32} {info.model_uri or '-'}")
        if info.rollback:
            print(f"{'':<12} rolled back {_utc(info.rollback['at'])} by {info.rollback['user']}@{info.rollback['host']}: "
                  f"{info.rollback['reason'] or 'no reason given'}")
    return 0


def ordered_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` with the gate's accuracy (ACCURACY_METRIC) first when it is there, then the others by name."""
    return {name: metrics[name] for name in sorted(metrics, key=lambda name: (name != ACCURACY_METRIC, name))}


def _utc(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp)) if timestamp else "-"
