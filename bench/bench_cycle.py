"""Cycle-time benchmark: from N new labelled records arriving to the serving server answering with the new version.

Both servers run for real, as in the README's continuous-training section:
`signflow schedule` in a child process and the serving server (started here on
127.0.0.1 with ephemeral ports, feedback enabled). The first cycle (the sample)
pushes V1 and is not measured. Then N records are POSTed to the feedback
endpoint at t0 and the clock runs until a predict request is answered by V2.

The time is split into stages:

    wait      t0 -> the scheduler starts the cycle (its poll interval)
    start     process start, TFX imports and orchestration, resolvers
    ingest    SignatureExampleGen
    validate  StatisticsGen + ImportSchemaGen + ExampleValidator + AnomaliesGate
    train     Trainer
    evaluate  Evaluator
    check     ServingCheck
    push      Pusher
    load      version folder in place -> the server answers with it (poll, load, warmup, switch)

The ceiling, measured in the same run, is the Trainer's own time: the work a cycle
cannot avoid. The ratio cycle / train says how much the rest costs.

    .venv/bin/python -m bench.bench_cycle                      # tiny training, ~10 minutes
    .venv/bin/python -m bench.bench_cycle --trainer default    # the real schedule, ~25 minutes

Results: printed, and bench/out/cycle-<timestamp>.json.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import base64
import datetime as dt
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.results import reserve  # noqa: E402
from components.trainer.config import TrainerConfig  # noqa: E402
from pipeline.definition.paths import METADATA_FILE  # noqa: E402
from serving.layout import list_versions  # noqa: E402

MODEL = "xception"
STAGES = {
    "ingest": ("SignatureExampleGen",),
    "validate": ("StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomaliesGate"),
    "train": ("Trainer",),
    "evaluate": ("Evaluator",),
    "check": ("ServingCheck",),
    "push": ("Pusher",),
}
TINY_TRAINER = TrainerConfig(
    image_height=71, image_width=142, batch_size=8,
    scratch_epochs=2, warmup_epochs=1, steps_per_epoch=2, bn_recalibration_batches=1,
    head_epochs=1, fine_tune_epochs=1, shuffle_buffer=64,
)
OPEN_GATE = {"min_accuracy": 0.0, "min_signer_accuracy": 0.0, "max_accuracy_drop": 1.0}


def _generator():
    spec = importlib.util.spec_from_file_location("generate_signatures", ROOT / "data" / "generate_signatures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wait(predicate, timeout: float, what: str, interval: float = 0.05) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return time.time()
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _component_spans(metadata_path: Path) -> dict[int, tuple[float, float]]:
    """{execution id: (start, end) in seconds} of the latest pipeline run's components, from its ML Metadata."""
    from pipeline.training_server.run_summary import PIPELINE_RUN_CONTEXT, latest_run_id, open_store

    store = open_store(metadata_path)
    run = store.get_context_by_type_and_name(PIPELINE_RUN_CONTEXT, latest_run_id(store))
    return {e.id: (e.create_time_since_epoch / 1000, e.last_update_time_since_epoch / 1000)
            for e in store.get_executions_by_context(run.id)}


def _covered_seconds(spans) -> float:
    """Seconds covered by at least one of the (start, end) intervals."""
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=40, help="new labelled records sent as feedback (N)")
    parser.add_argument("--trainer", choices=("tiny", "default"), default="tiny",
                        help="tiny: the e2e test's few steps on 71x142 images; default: the pipeline's schedule")
    parser.add_argument("--signers", type=int, default=3)
    parser.add_argument("--per-signer", type=int, default=14)
    parser.add_argument("--poll", default="1s", help="the scheduler's --poll")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per cycle")
    args = parser.parse_args()

    from serving.server import ServerThread
    from serving.settings import build_settings

    gen = _generator()
    root = Path(tempfile.mkdtemp(prefix="signflow-bench-cycle-"))
    gen.generate(seed=23, signers=args.signers, per_signer=args.per_signer, out_dir=root / "sample")
    model_base_path = root / "serving_model" / MODEL
    model_base_path.mkdir(parents=True)
    config = {
        "pipeline_root": str(root / "pipeline_root"), "inbox_dir": str(root / "inbox"),
        "sample_dir": str(root / "sample"), "serving_dir": str(root / "serving_model"),
        "schema_path": str(ROOT / "components/schema/schema.pbtxt"), "gate": OPEN_GATE,
    }
    if args.trainer == "tiny":
        config["trainer"] = TINY_TRAINER.to_dict()
        config["delivery"] = {"check_requests": 8}
    config_file = root / "signflow.json"
    config_file.write_text(json.dumps(config))
    status_file = root / "pipeline_root" / "signflow" / "schedule" / "status.json"

    settings = build_settings(model_name=MODEL, model_base_path=str(model_base_path), file_system_poll_wait_seconds=1,
                              feedback_dir=str(root / "inbox" / "feedback"),
                              training_status_file=str(status_file)).replace(grpc_port=0, rest_api_port=0)
    log_path = root / "schedule.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(f"workspace {root}; scheduler log {log_path}", flush=True)
    with ServerThread(settings) as server, open(log_path, "w") as log:
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "schedule", "--config", str(config_file), "--interval", "24h",
             "--min-new-records", str(args.records), "--poll", args.poll, "--max-cycles", "2"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            def served_version() -> int | None:
                try:
                    answer = requests.post(f"{server.rest_url}/v1/models/{MODEL}:predict", json=probe, timeout=30)
                except requests.RequestException:
                    return None
                return int(answer.headers["X-Model-Version"]) if answer.status_code == 200 else None

            probe = {"instances": [{"image_bytes": {"b64": base64.b64encode(
                gen.render_signature(seed=23, signer=0, sample=999)).decode()}}]}
            first_started = time.time()
            _wait(lambda: served_version() is not None, args.timeout, "V1 (the first cycle)", interval=1)
            first_cycle = time.time() - first_started
            v1 = list_versions(model_base_path)[-1]
            print(f"V1 = {v1} served after {first_cycle:.0f} s (first cycle, not measured)", flush=True)

            items = [{"image_bytes": {"b64": base64.b64encode(gen.render_signature(
                seed=23, signer=i % args.signers, sample=400 + i)).decode()}, "label": gen.label_for(i % args.signers)}
                for i in range(args.records)]
            t0 = time.time()
            answer = requests.post(f"{server.rest_url}/v1/models/{MODEL}/feedback", json={"instances": items},
                                   timeout=60)
            answer.raise_for_status()
            accepted = time.time()
            pushed_at = _wait(lambda: len(list_versions(model_base_path)) >= 2, args.timeout, "V2's folder")
            served_at = _wait(lambda: (served_version() or 0) > v1, 300, "the server to answer with V2")
            scheduler.wait(timeout=120)
        finally:
            if scheduler.poll() is None:
                scheduler.terminate()
                scheduler.wait(timeout=60)

    status = json.loads(status_file.read_text())
    last = status["last_cycle"]
    timings = last["timings"]
    stages = {"wait": last["started_at"] - t0}
    for stage, nodes in STAGES.items():
        stages[stage] = sum(timings.get(node, 0.0) for node in nodes)
    # Components that ran side by side (the Evaluator and the serving check) count once in the wall time.
    spans = _component_spans(root / "pipeline_root" / "signflow" / METADATA_FILE)
    components = _covered_seconds(spans.values())
    overlap = sum(stages[s] for s in STAGES) - components
    stages["start"] = (pushed_at - last["started_at"]) - components
    stages["load"] = served_at - pushed_at
    total = served_at - t0
    order = ["wait", "start", *STAGES, "load"]
    result = {
        "benchmark": "cycle",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "trainer": args.trainer, "records": args.records, "signers": args.signers,
        "sample_records": args.signers * args.per_signer, "feedback_request_seconds": accepted - t0,
        "total_seconds": total, "stages_seconds": {s: round(stages[s], 2) for s in order},
        "side_by_side_seconds": round(overlap, 2),
        "ceiling_train_seconds": stages["train"], "ratio_total_to_train": total / stages["train"],
        "cycle_examples": last["ingest"].get("examples"), "v1": v1, "v2": last["pushed_version"],
        "first_cycle_seconds": first_cycle,
    }
    print(f"\n{args.records} records -> served by V2 in {total:.1f} s "
          f"({args.trainer} trainer, {os.cpu_count()} cores)")
    for stage in order:
        print(f"  {stage:<9} {stages[stage]:7.1f} s  {100 * stages[stage] / total:5.1f} %")
    if overlap > 0.05:
        print(f"  (components side by side for {overlap:.1f} s: the stages add up to more than the total)")
    print(f"ceiling (Trainer alone) {stages['train']:.1f} s; cycle / Trainer = {total / stages['train']:.2f}x")
    out = ROOT / "bench" / "out"
    path = reserve(out, f"cycle-{dt.datetime.now():%Y%m%d-%H%M%S}")
    path.write_text(json.dumps(result, indent=1))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
