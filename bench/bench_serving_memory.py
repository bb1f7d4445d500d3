"""Serving memory across version swaps: the server's RSS after N pushes of a new version.

One run, one machine, one model:

1. A real model is built once (the trainer's Xception classifier, untrained,
   exported by the trainer's own export code with its warmup requests) into a
   template version folder.
2. The server (`python -m serving`, a child process so the RSS is the server's
   alone) serves version 1 of it; the RSS is read once it answers (the baseline).
3. N swaps: each pushes the template as the next version (staged under a dotted
   name, then renamed into place, as the Pusher does), waits until that version
   answers `:predict` (X-Model-Version) and the previous one is END in the status
   API (unloaded; policy latest, 1 version), sends a few predictions to it, waits
   for the server's log to report the memory reclaim that follows the unload
   (serving/server.py, MemoryReclaimer; `--no-reclaim-wait` for a server without
   one), then reads the RSS. Every few swaps a broken version is pushed first and
   waited for until the status reports its failure; the broken kinds take turns:
   a corrupt saved_model.pb (fails before any weight is read), truncated variables
   (fails while restoring them) and a failing warmup request (fails after the
   whole model is loaded).

Printed and written to bench/out/serving-memory-<timestamp>.json: RSS after the
first load, after each swap and at the end, each reclaim's collected objects and
duration, and the ratios final/first and max/first (target: final/first <= 1.2);
the server's log beside it (.log).

    .venv/bin/python -m bench.bench_serving_memory                      # ~10 minutes on 2 busy cores
    .venv/bin/python -m bench.bench_serving_memory --swaps 5 --image-size 71,71
    .venv/bin/python -m bench.bench_serving_memory --server-env MALLOC_ARENA_MAX=2   # an experiment

Loopback only; every wait is bounded (a hang fails the run with the server's log).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import base64
import datetime as dt
import json
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/bench_serving_memory.py` as well as `-m bench.bench_serving_memory`
    sys.path.insert(0, str(ROOT))

from bench.results import reserve  # noqa: E402
from serving import layout  # noqa: E402

MODEL_NAME = "xception"
TARGET_RATIO = 1.2
SERVER_START_TIMEOUT_S = 300.0
# A hang guard per swap, not a speed claim: loading and warming up Xception takes
# seconds; on two cores shared with other work it can take much longer.
SWAP_TIMEOUT_S = 300.0
FAILURE_KINDS = ("corrupt_graph", "truncated_variables", "failing_warmup")
# MemoryReclaimer's log line: "Reclaimed memory after xception/3, xception/4: 41534 objects collected,
# heap trimmed (1.23s)".
RECLAIM_LINE = re.compile(r"Reclaimed memory after (?P<versions>[^:]+): (?P<objects>\d+) objects collected"
                          r"(?P<trimmed>, heap trimmed)? \((?P<seconds>[0-9.]+)s\)")


# -- the model folder -------------------------------------------------------------------------------


def build_template(path: Path, num_labels: int, image_size: tuple[int, int]) -> tuple[Path, list[bytes]]:
    """The trainer's classifier (untrained) exported with warmup requests, as `signflow run` exports it."""
    from components.trainer.export import export_serving_model
    from components.trainer.model import build_classifier
    from tests.fixtures.tiny_model import make_image_bytes

    labels = [f"signer_{i:02d}" for i in range(num_labels)]
    images = [make_image_bytes(fmt, seed=i) for i, fmt in enumerate(("PNG", "JPEG", "GIF", "PNG"))]
    export_serving_model(build_classifier(num_labels, image_size), labels, image_size, path, warmup_images=images)
    return path, images


def weights_bytes(version_dir: Path) -> int:
    return sum(p.stat().st_size for p in (version_dir / "variables").glob("variables.data-*"))


def push_version(template: Path, base: Path, version: int, broken: str | None = None) -> Path:
    """Copy `template` in as `base/<version>`: staged under a dotted name, broken there if asked, then renamed."""
    staging = base / f".incoming-{version}-bench"
    shutil.copytree(template, staging)
    if broken == "corrupt_graph":
        (staging / layout.SAVED_MODEL_FILE).write_bytes(b"\x08\x01corrupt, not a SavedModel" * 10)
    elif broken == "truncated_variables":
        data = next((staging / "variables").glob("variables.data-*"))
        with open(data, "r+b") as handle:
            handle.truncate(data.stat().st_size // 2)
    elif broken == "failing_warmup":
        _write_failing_warmup(staging)
    elif broken is not None:
        raise ValueError(f"unknown failure kind {broken!r}")
    target = base / str(version)
    staging.rename(target)
    return target


def _write_failing_warmup(version_dir: Path) -> None:
    """A warmup file whose one request names an input the signature does not have: the whole model loads,
    then the warmup fails the version."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = "serving_default"
    request.inputs["no_such_input"].CopyFrom(tf.make_tensor_proto([1.0]))
    record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    with tf.io.TFRecordWriter(str(version_dir / layout.WARMUP_FILE)) as writer:
        writer.write(record.SerializeToString())


# -- the server -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_rss(pid: int) -> dict:
    """The process's resident memory in bytes: total (VmRSS), anonymous (RssAnon) and file-backed (RssFile)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024  # kB
    return {"rss": fields["VmRSS"], "rss_anon": fields.get("RssAnon"), "rss_file": fields.get("RssFile"),
            "peak_rss": fields.get("VmHWM")}


class Server:
    """`python -m serving` in a child process on 127.0.0.1; stopped on exit."""

    def __init__(self, base: Path, log_path: Path, extra_env: dict[str, str], extra_flags: list[str]):
        self.rest_port, grpc_port = _free_port(), _free_port()
        command = [
            sys.executable, "-m", "serving",
            "--host=127.0.0.1", f"--port={grpc_port}", f"--rest_api_port={self.rest_port}",
            f"--model_name={MODEL_NAME}", f"--model_base_path={base}",
            "--file_system_poll_wait_seconds=1", *extra_flags,
        ]
        env = {**os.environ, **extra_env}
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.rest_port}/v1/models/{MODEL_NAME}"
        self.session = requests.Session()
        self.log_path = log_path

    def reclaims(self) -> list[dict]:
        """The memory reclaims the server has logged so far: versions, objects collected, trimmed, seconds."""
        text = self.log_path.read_text(errors="replace")
        return [{"versions": [v.strip() for v in m["versions"].split(",")], "objects": int(m["objects"]),
                 "trimmed": bool(m["trimmed"]), "seconds": float(m["seconds"])} for m in RECLAIM_LINE.finditer(text)]

    def reclaimed(self, version: int) -> dict | None:
        """The logged reclaim that covered `version`'s unload, if there is one yet."""
        name = f"{MODEL_NAME}/{version}"
        return next((r for r in self.reclaims() if name in r["versions"]), None)

    def rss(self) -> dict:
        return read_rss(self.process.pid)

    def states(self) -> dict[int, tuple[str, str]]:
        """{version: (state, error_code)} from the status API; {} while it does not answer."""
        try:
            response = self.session.get(self.url, timeout=10)
        except requests.RequestException:
            return {}
        if response.status_code != 200:
            return {}
        return {int(s["version"]): (s["state"], s["status"]["error_code"])
                for s in response.json()["model_version_status"]}

    def predict(self, body: bytes) -> str:
        """One :predict; the version that answered."""
        response = self.session.post(f"{self.url}:predict", data=body, timeout=120)
        response.raise_for_status()
        return response.headers["X-Model-Version"]

    def wait_until(self, what: str, predicate, timeout: float) -> None:
        """Poll the server until `predicate()`; fail with the log's tail on timeout or exit."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode} waiting for {what}; see {self.log.name}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}; see {self.log.name}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.session.close()
        self.log.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# -- the run ----------------------------------------------------------------------------------------


def _machine() -> dict:
    try:
        import psutil

        memory = psutil.virtual_memory().total
    except ImportError:
        memory = None
    return {
        "cpus": os.cpu_count(),
        "schedulable_cpus": len(os.sched_getaffinity(0)),
        "memory_bytes": memory,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "glibc": "-".join(platform.libc_ver()),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _mb(value: int) -> float:
    return round(value / 2**20, 1)


def run_swaps(server: Server, template: Path, base: Path, bodies: list[bytes], args) -> list[dict]:
    """The swaps after version 1; one record per swap with the RSS once the new version serves."""
    records = []
    current, highest = 1, 1  # the version serving; the highest number pushed
    kinds = iter(FAILURE_KINDS * args.swaps)
    for swap in range(1, args.swaps + 1):
        started = time.monotonic()
        failed = None
        if args.fail_every and swap % args.fail_every == 0:
            failed, highest = next(kinds), highest + 1
            bad = highest
            push_version(template, base, bad, broken=failed)
            server.wait_until(f"version {bad} ({failed}) to fail",
                              lambda: server.states().get(bad, ("", ""))[0] == "END", SWAP_TIMEOUT_S)
            if server.states()[bad][1] == "OK":
                raise RuntimeError(f"version {bad} ({failed}) loaded although it is broken")
        old, new = current, highest + 1
        highest = new
        push_version(template, base, new)
        server.wait_until(f"version {new} to answer", lambda: server.predict(bodies[0]) == str(new), SWAP_TIMEOUT_S)
        server.wait_until(f"version {old} to unload",
                          lambda: server.states().get(old, ("", ""))[0] == "END", SWAP_TIMEOUT_S)
        for i in range(args.requests):
            if server.predict(bodies[i % len(bodies)]) != str(new):
                raise RuntimeError(f"a version other than {new} answered after the swap")
        reclaim = None
        if args.reclaim_wait:
            server.wait_until(f"the memory reclaim after version {old}'s unload",
                              lambda: server.reclaimed(old) is not None, SWAP_TIMEOUT_S)
            reclaim = server.reclaimed(old)
        current = new
        rss = server.rss()
        records.append({"swap": swap, "version": new, "failed_load_before": failed,
                        "seconds": round(time.monotonic() - started, 2), "reclaim": reclaim, **rss})
        print(f"  swap {swap:>2}: version {new:>2} serves{f' (after a failed {failed})' if failed else '':<34}"
              f" RSS {_mb(rss['rss']):8.1f} MB  anon {_mb(rss['rss_anon']):8.1f} MB", flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=20, help="version swaps after the first load (default: %(default)s)")
    parser.add_argument("--fail-every", type=int, default=4,
                        help="push a broken version before every Nth swap; 0: never (default: %(default)s)")
    parser.add_argument("--image-size", default="96,192", help="the model's input height,width (default: %(default)s)")
    parser.add_argument("--labels", type=int, default=20, help="signers in the model's head (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=4, help="predictions sent to each new version (default: %(default)s)")
    parser.add_argument("--no-reclaim-wait", dest="reclaim_wait", action="store_false",
                        help="read the RSS without waiting for the server's memory reclaim (a server without one)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the server only, e.g. MALLOC_ARENA_MAX=2 (repeatable)")
    parser.add_argument("--server-flag", action="append", default=[], metavar="--FLAG=VALUE",
                        help="an extra server flag (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"), help="folder for the JSON results")
    args = parser.parse_args(argv)
    image_size = tuple(int(x) for x in args.image_size.split(","))
    extra_env = dict(item.split("=", 1) for item in args.server_env)

    machine = _machine()
    with tempfile.TemporaryDirectory(prefix="signflow-bench-memory-") as scratch_dir:
        scratch = Path(scratch_dir)
        print(f"building Xception {image_size[0]}x{image_size[1]} with {args.labels} labels ...", flush=True)
        template, images = build_template(scratch / "template", args.labels, image_size)
        weights = weights_bytes(template)
        bodies = [json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode() for image in images]
        base = scratch / MODEL_NAME
        base.mkdir()
        push_version(template, base, 1)
        stamp = dt.datetime.now(dt.timezone.utc)
        out_dir = Path(args.out)
        log_path = reserve(out_dir, f"serving-memory-{stamp:%Y%m%dT%H%M%SZ}", ".log")
        with Server(base, log_path, extra_env, args.server_flag) as server:
            try:
                server.wait_until("version 1", lambda: server.states().get(1, ("", ""))[0] == "AVAILABLE",
                                  SERVER_START_TIMEOUT_S)
                for i in range(args.requests):
                    server.predict(bodies[i % len(bodies)])
                first = server.rss()
                print(f"  first load: version  1 serves{'':<34} RSS {_mb(first['rss']):8.1f} MB"
                      f"  anon {_mb(first['rss_anon']):8.1f} MB", flush=True)
                swaps = run_swaps(server, template, base, bodies, args)
            except Exception:
                server.stop()
                print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
                raise

    final = swaps[-1] if swaps else first
    peak = max([first] + swaps, key=lambda r: r["rss"])
    ratios = {"final_over_first": round(final["rss"] / first["rss"], 3),
              "max_over_first": round(peak["rss"] / first["rss"], 3)}
    met = ratios["final_over_first"] <= TARGET_RATIO
    print(f"\nRSS first {_mb(first['rss'])} MB, final {_mb(final['rss'])} MB, max {_mb(peak['rss'])} MB; "
          f"final/first {ratios['final_over_first']} (target <= {TARGET_RATIO}: {'met' if met else 'NOT met'}), "
          f"max/first {ratios['max_over_first']}")

    out = reserve(out_dir, log_path.stem)
    out.write_text(json.dumps({
        "date": stamp.isoformat(timespec="seconds"),
        "machine": machine,
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "model": f"Xception {image_size[0]}x{image_size[1]}, {args.labels} labels, untrained, with warmup requests",
        "weights_bytes": weights,
        "swaps": args.swaps,
        "fail_every": args.fail_every,
        "requests_per_version": args.requests,
        "server_env": extra_env,
        "server_flags": args.server_flag,
        "server_log": str(log_path),
        "first": first,
        "after_swaps": swaps,
        "ratios": ratios,
        "target": {"final_over_first": f"<= {TARGET_RATIO}", "met": met},
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
