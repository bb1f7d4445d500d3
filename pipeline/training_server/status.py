"""`signflow status` / `make status`: what the training server did last, what waits, what is served.

Reads the scheduler's status file (schedule.py), asks the two locks whether a
scheduler and a run are alive, and counts the inbox itself, so the answer is
right even when no scheduler runs.

Layer: training_server. May import definition.configs, schedule, run_lock,
run_summary (how a cycle's signers and serving check read), components.ingest.landing and serving.layout.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from pipeline.definition.configs import load_config
from pipeline.training_server.run_lock import RUN_LOCK, holder
from pipeline.training_server.run_summary import SignerResult, serving_check_lines, signer_lines
from pipeline.training_server.schedule import human_duration, read_status, scheduler_lock_path, status_path


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="JSON settings file (to find the pipeline's folders)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")


def status_main(args: argparse.Namespace) -> int:
    from components.ingest.landing import waiting
    from serving.layout import list_versions

    config = load_config(args.config, args.overrides)
    paths = config.paths()
    status = read_status(status_path(config)) or {}
    found = waiting(paths.ingest)
    scheduler = holder(scheduler_lock_path(config))
    running = holder(Path(paths.pipeline_root) / RUN_LOCK)
    model_base_path = Path(paths.model_base_path(config.delivery.model_name))
    versions = list_versions(model_base_path) if model_base_path.is_dir() else []
    report = {
        "scheduler_alive": scheduler is not None, "scheduler": scheduler, "run_in_progress": running,
        "records_waiting": found.records, "files_waiting": found.files,
        "served_versions": [int(v) for v in versions], "status_file": str(status_path(config)), "status": status,
    }
    if args.json:
        print(json.dumps(report, indent=1, default=str))
        return 0
    print("\n".join(status_lines(report)))
    return 0


def status_lines(report: dict[str, Any]) -> list[str]:
    status = report["status"]
    out = []
    scheduler = report["scheduler"]
    if report["scheduler_alive"]:
        info = status.get("scheduler", {})
        out.append(f"training server: running (pid {scheduler.get('pid', '?')}), every "
                   f"{human_duration(info.get('interval_seconds', 0))} or at {info.get('min_new_records', '?')} new records")
        if status.get("last_poll_at"):
            out.append(f"inbox last checked: {_when(status['last_poll_at'])} ({status.get('polls', '?')} checks since "
                       "the training server started)")
    else:
        out.append("training server: not running")
    if report["run_in_progress"] is not None:
        who = report["run_in_progress"]
        out.append(f"run in progress: pid {who.get('pid', '?')} ({who.get('purpose', '?')}) since {_when(who.get('since'))}")
    out.append(f"waiting in the inbox: {report['records_waiting']} records in {report['files_waiting']} files")
    last = status.get("last_cycle")
    if last:
        line = f"last cycle: {last['result']} at {_when(last['finished_at'])} after {human_duration(last['duration_seconds'])}"
        line += f" ({last['trigger']})"
        if last.get("pushed_version"):
            line += f", pushed version {last['pushed_version']}"
        out.append(line)
        if last.get("error"):
            out.append(f"  reason: {last['error']}")
        for reason in last.get("not_blessed_reasons") or []:
            out.append(f"  not blessed: {reason}")
        signers = [[SignerResult.from_json(s) for s in last.get(key) or []]
                   for key in ("weakest_signers", "signers_too_few_examples")]
        details = signer_lines(*signers, last.get("min_signer_examples"))
        details += serving_check_lines(last.get("serving_check"), last.get("infra_reason"))
        out += [f"  {line}" for line in details]
    else:
        out.append("last cycle: none recorded")
    if status.get("next_due_at") and report["scheduler_alive"]:
        out.append(f"next interval run due: {_when(status['next_due_at'])} (sooner when enough records arrive)")
    if status.get("last_push"):
        out.append(f"last push: version {status['last_push']['version']} at {_when(status['last_push']['at'])}")
    versions = report["served_versions"]
    out.append(f"serving folder: {len(versions)} version(s), newest {versions[-1]}" if versions
               else "serving folder: no versions")
    return out


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "?"
