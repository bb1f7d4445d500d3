"""Serving benchmark: REST and gRPC against the in-process ceiling, batching off and on.

One run, one machine, one model and one set of images:

1. Ceiling: the model's serving_default signature called in this process with
   batches of 1, 8 and 32 images (what the server could do if transport,
   JSON/protobuf and scheduling cost nothing).
2. The server (`signflow serve`, started here on 127.0.0.1 with ephemeral
   ports, stopped at the end) with batching off, then on; at each concurrency
   (closed loop: N clients, each sending one image per request and waiting for
   the answer), REST then gRPC, for a bounded time and request count.

Printed and written to bench/out/serving-<timestamp>.json: images/s, p50 and p99
latency per cell, and ratios to the ceiling of the same batch size (the batch
the server can at best form from N concurrent one-image requests).

    .venv/bin/python -m bench.bench_serving                      # ~3 minutes
    .venv/bin/python -m bench.bench_serving --model-base-path serving_model/xception --duration 10

Loopback only; every loop is bounded in time and count.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import asyncio
import base64
import datetime as dt
import json
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/bench_serving.py` as well as `-m bench.bench_serving`
    sys.path.insert(0, str(ROOT))

from bench.results import reserve  # noqa: E402
from serving import layout  # noqa: E402

MODEL_NAME = "xception"
SERVER_START_TIMEOUT_S = 180.0
# A slow model (Xception on 2 cores: ~1 s per batch of 32) still gets a few calls per ceiling cell.
MIN_CEILING_CALLS = 5
# Batching parameters for the "on" runs. No timeout, as TF Serving advises for
# CPUs (tensorflow_serving/batching/README.md): a lone request does not wait, and
# requests that arrive while the batch thread is busy are batched anyway. One
# batch thread, not one per core: the model call already uses every core
# (TensorFlow's intra-op threads), so a second concurrent batch only halves the
# batch sizes (measured with Xception at 32 clients: 0.68x of the ceiling with 2
# threads, 0.90x with 1). The queue is long enough not to refuse the load.
DEFAULT_BATCHING = """
max_batch_size { value: 32 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 64 }
num_batch_threads { value: 1 }
"""


@dataclass
class Cell:
    protocol: str  # "in-process", "rest" or "grpc"
    batching: str  # "off", "on", or "-" for the ceiling
    concurrency: int  # clients (for the ceiling: images per call)
    requests: int
    errors: int
    seconds: float
    images_per_s: float
    p50_ms: float
    p99_ms: float
    ratio_to_ceiling: float | None = None
    client_cpu_ms_per_request: float | None = None  # the load generator's own cost, on the same cores
    server_cpu_ms_per_request: float | None = None  # for the ceiling: this process's CPU per image


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _cell(protocol, batching, concurrency, latencies, errors, seconds, images_per_request) -> Cell:
    return Cell(
        protocol=protocol,
        batching=batching,
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        seconds=round(seconds, 3),
        images_per_s=round(len(latencies) * images_per_request / seconds, 2) if seconds else 0.0,
        p50_ms=round(_percentile(latencies, 0.50) * 1000, 3),
        p99_ms=round(_percentile(latencies, 0.99) * 1000, 3),
    )


# -- model and images -----------------------------------------------------------------------------


def _model_and_images(args, scratch: Path) -> tuple[Path, list[bytes], str]:
    """(model base path, images, description).

    The exported model when there is one; otherwise one built here: `--build
    tiny` (the test CNN, cheap: transport overheads dominate) or `--build
    xception` (the trainer's real architecture and export, untrained weights:
    realistic compute). Images are the committed sample's, topped up with
    generated ones.
    """
    from tests.fixtures.tiny_model import DEFAULT_LABELS, build_tiny_saved_model, make_image_bytes

    base = Path(args.model_base_path) if args.model_base_path else ROOT / "serving_model" / MODEL_NAME
    if layout.list_versions(base):
        description = f"exported model {base} (version {layout.list_versions(base)[-1]})"
    elif args.model_base_path:
        raise SystemExit(f"no version folder under {base}")
    elif args.build == "xception":
        from components.trainer.config import TrainerConfig
        from components.trainer.export import export_serving_model
        from components.trainer.model import build_classifier

        image_size = TrainerConfig().image_size
        base = scratch / MODEL_NAME
        export_serving_model(build_classifier(len(DEFAULT_LABELS), image_size), DEFAULT_LABELS, image_size, base / "1")
        description = (f"Xception {image_size[0]}x{image_size[1]}, untrained (components/trainer/model.py; "
                       "no exported model under serving_model/xception)")
    else:
        base = scratch / MODEL_NAME
        build_tiny_saved_model(base / "1")
        description = "tiny CNN from tests/fixtures/tiny_model.py (no exported model under serving_model/xception)"
    sample = sorted(p for p in (ROOT / "data" / "sample" / "images").glob("*/*") if p.suffix.lower() in (".png", ".jpg", ".gif"))
    images = [p.read_bytes() for p in sample[: args.images]]
    formats = ("PNG", "JPEG", "GIF")
    images += [make_image_bytes(formats[i % 3], seed=i) for i in range(args.images - len(images))]
    return base.resolve(), images, description


def measure_ceiling(signature, images: list[bytes], batch_sizes: list[int], args) -> dict[int, Cell]:
    """The serving signature called in-process, one batch at a time (at least MIN_CEILING_CALLS per size)."""
    import tensorflow as tf

    cells = {}
    for size in batch_sizes:
        batch = tf.constant([images[i % len(images)] for i in range(size)])
        for _ in range(3):  # warm up: tracing, allocator, caches
            signature(image_bytes=batch)
        latencies = []
        cpu0, start = time.process_time(), time.perf_counter()
        while len(latencies) < MIN_CEILING_CALLS or (
            len(latencies) < args.max_requests and time.perf_counter() - start < args.duration
        ):
            t0 = time.perf_counter()
            signature(image_bytes=batch)["probabilities"].numpy()
            latencies.append(time.perf_counter() - t0)
        cells[size] = _cell("in-process", "-", size, latencies, 0, time.perf_counter() - start, size)
        cells[size].server_cpu_ms_per_request = round((time.process_time() - cpu0) * 1000 / (len(latencies) * size), 3)
    return cells


# -- server -----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`signflow serve` in a child process on 127.0.0.1; stopped on exit."""

    def __init__(self, base_path: Path, batching_file: Path | None, log_path: Path):
        self.rest_port, self.grpc_port = _free_port(), _free_port()
        command = [
            sys.executable, "-m", "pipeline.cli", "serve",
            "--host=127.0.0.1",
            f"--port={self.grpc_port}",
            f"--rest_api_port={self.rest_port}",
            f"--model_name={MODEL_NAME}",
            f"--model_base_path={base_path}",
        ]
        if batching_file is not None:
            command += ["--enable_batching=true", f"--batching_parameters_file={batching_file}"]
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.rest_url = f"http://127.0.0.1:{self.rest_port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (/proc/<pid>/stat)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log.name}")
            try:
                status = requests.get(f"{self.rest_url}/v1/models/{MODEL_NAME}", timeout=1).json()
                if any(v.get("state") == "AVAILABLE" for v in status.get("model_version_status", [])):
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {SERVER_START_TIMEOUT_S:g} s; see {self.log.name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


async def _closed_loop(concurrency: int, send, args) -> tuple[list[float], int, float, float]:
    """`concurrency` clients each sending requests back to back; bounded by time and count.

    One asyncio loop drives every client (cheaper than a thread each: the
    clients share the machine's two cores with the server). Returns
    (latencies, errors, seconds, client CPU seconds).
    """
    latencies: list[float] = []
    errors = 0
    remaining = args.max_requests
    cpu0, start = time.process_time(), time.perf_counter()
    stop_at = start + args.duration

    async def client(index: int) -> None:
        nonlocal errors, remaining
        while time.perf_counter() < stop_at and remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            try:
                await send(index)
            except Exception:  # noqa: BLE001 - counted and reported, the run goes on
                errors += 1
            else:
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return latencies, errors, time.perf_counter() - start, time.process_time() - cpu0


async def _http_post(streams, host: str, path: str, body: bytes) -> bytes:
    """One HTTP/1.1 keep-alive POST on an open connection; the response body."""
    reader, writer = streams
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    answer = await reader.readexactly(length)
    if status != 200:
        raise RuntimeError(answer[:200])
    return answer


async def bench_rest(server: Server, images: list[bytes], concurrency: int, args):
    path = f"/v1/models/{MODEL_NAME}:predict"
    host = f"127.0.0.1:{server.rest_port}"
    # Bodies are encoded once and HTTP is spoken directly, one keep-alive
    # connection per client: the benchmark measures the server, not a client library.
    bodies = [
        json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(image).decode()}}]}).encode()
        for image in images
    ]
    connections = [await asyncio.open_connection("127.0.0.1", server.rest_port) for _ in range(concurrency)]
    counters = [0] * concurrency

    async def send(index: int) -> None:
        counters[index] += 1
        try:
            answer = await _http_post(connections[index], host, path, bodies[(index + counters[index]) % len(bodies)])
        except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
            connections[index][1].close()  # a broken connection is replaced
            connections[index] = await asyncio.open_connection("127.0.0.1", server.rest_port)
            raise
        json.loads(answer)

    for i in range(min(concurrency, 4)):
        await send(i)  # warm: first-request paths
    try:
        return await _closed_loop(concurrency, send, args)
    finally:
        for _, writer in connections:
            writer.close()


async def bench_grpc(server: Server, images: list[bytes], concurrency: int, args):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    requests_ = []
    for image in images:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL_NAME
        request.model_spec.signature_name = "serving_default"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
        requests_.append(request)
    counters = [0] * concurrency
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        async def send(index: int) -> None:
            counters[index] += 1
            await stub.Predict(requests_[(index + counters[index]) % len(requests_)], timeout=60)

        for i in range(min(concurrency, 4)):
            await send(i)
        return await _closed_loop(concurrency, send, args)


# -- report -----------------------------------------------------------------------------------------


def _machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "schedulable_cpus": len(os.sched_getaffinity(0)),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # Other work on the machine skews every figure: recorded with the results.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _print_table(cells: list[Cell]) -> None:
    print(f"{'protocol':<11}{'batching':>9}{'conc':>6}{'reqs':>7}{'err':>5}{'img/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'x ceiling':>11}{'CPU ms/req: server':>20}{'client':>8}")
    for c in cells:
        ratio = f"{c.ratio_to_ceiling:.2f}" if c.ratio_to_ceiling is not None else "-"
        client = f"{c.client_cpu_ms_per_request:.2f}" if c.client_cpu_ms_per_request is not None else "-"
        server = f"{c.server_cpu_ms_per_request:.2f}" if c.server_cpu_ms_per_request is not None else "-"
        print(f"{c.protocol:<11}{c.batching:>9}{c.concurrency:>6}{c.requests:>7}{c.errors:>5}"
              f"{c.images_per_s:>10.1f}{c.p50_ms:>9.2f}{c.p99_ms:>9.2f}{ratio:>11}{server:>20}{client:>8}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-path", help="a model folder with version folders (default: serving_model/xception, else one built per --build)")
    parser.add_argument("--build", choices=("tiny", "xception"), default="tiny",
                        help="model to build when there is no exported one (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per measurement cell (default: %(default)s)")
    parser.add_argument("--max-requests", type=int, default=3000, help="request cap per cell (default: %(default)s)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts (default: %(default)s)")
    parser.add_argument("--images", type=int, default=16, help="distinct images to cycle through (default: %(default)s)")
    parser.add_argument("--batching-parameters", help="a BatchingParameters text file for the batching-on runs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"), help="folder for the JSON results")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]

    machine_before = _machine()
    if machine_before["load_average_1m"] > 0.5:
        print(f"warning: load average {machine_before['load_average_1m']} before the run; figures will be low", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="signflow-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        base, images, description = _model_and_images(args, scratch)
        version_dir = layout.version_path(base, layout.list_versions(base)[-1])
        print(f"model: {description}\nimages: {len(images)}, {sum(map(len, images)) // len(images)} bytes on average")

        import tensorflow as tf

        signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
        batch_sizes = sorted(set([1] + levels))
        # NOTE: measured before and after the server runs, and the better of the two
        # kept: other work on the machine then lowers the ratios rather than raising them.
        ceiling_before = measure_ceiling(signature, images, batch_sizes, args)

        batching_text = Path(args.batching_parameters).read_text() if args.batching_parameters else DEFAULT_BATCHING
        batching_file = scratch / "batching.txt"
        batching_file.write_text(batching_text)
        served: list[Cell] = []
        for batching in ("off", "on"):
            log_path = scratch / f"server-{batching}.log"
            with Server(base, batching_file if batching == "on" else None, log_path) as server:
                try:
                    server.wait_ready()
                except RuntimeError:
                    print(log_path.read_text()[-3000:], file=sys.stderr)
                    raise
                for concurrency in levels:
                    for protocol, run in (("rest", bench_rest), ("grpc", bench_grpc)):
                        server_cpu = server.cpu_seconds()
                        latencies, errors, seconds, cpu = asyncio.run(run(server, images, concurrency, args))
                        server_cpu = server.cpu_seconds() - server_cpu
                        cell = _cell(protocol, batching, concurrency, latencies, errors, seconds, 1)
                        cell.client_cpu_ms_per_request = round(cpu * 1000 / max(len(latencies), 1), 3)
                        cell.server_cpu_ms_per_request = round(server_cpu * 1000 / max(len(latencies), 1), 3)
                        served.append(cell)
                        print(f"  {protocol:<5} batching {batching:<3} concurrency {concurrency:>3}: "
                              f"{cell.images_per_s:8.1f} img/s  p50 {cell.p50_ms:7.2f} ms  p99 {cell.p99_ms:7.2f} ms  "
                              f"CPU/request: server {cell.server_cpu_ms_per_request:.2f} ms, "
                              f"client {cell.client_cpu_ms_per_request:.2f} ms",
                              flush=True)
        ceiling_after = measure_ceiling(signature, images, batch_sizes, args)

    ceiling = {size: max(ceiling_before[size], ceiling_after[size], key=lambda c: c.images_per_s) for size in batch_sizes}
    for cell in served:
        cell.ratio_to_ceiling = round(cell.images_per_s / ceiling[cell.concurrency].images_per_s, 3)
    cells = [ceiling[size] for size in batch_sizes] + served

    print()
    _print_table(cells)
    by_key = {(c.protocol, c.batching, c.concurrency): c for c in cells}
    top = max(levels)
    checks = {}
    for protocol, target in (("rest", 0.8), ("grpc", 0.9)):
        cell = by_key.get((protocol, "on", top))
        if cell:
            checks[f"{protocol}_batching_c{top}_ratio"] = {"value": cell.ratio_to_ceiling, "target": f">= {target}",
                                                           "met": cell.ratio_to_ceiling >= target}
    if 1 in ceiling:
        for protocol in ("rest", "grpc"):
            for batching in ("off", "on"):
                cell = by_key.get((protocol, batching, 1))
                if cell:
                    gap = round(cell.p50_ms - ceiling[1].p50_ms, 3)
                    checks[f"{protocol}_batching_{batching}_c1_p50_gap_ms"] = {"value": gap, "target": "<= 3", "met": gap <= 3}
    print("\ntargets:")
    for name, check in checks.items():
        print(f"  {name}: {check['value']} (target {check['target']}) {'met' if check['met'] else 'NOT met'}")

    out_dir = Path(args.out)
    stamp = dt.datetime.now(dt.timezone.utc)
    out = reserve(out_dir, f"serving-{stamp:%Y%m%dT%H%M%SZ}")
    out.write_text(json.dumps({
        "date": stamp.isoformat(timespec="seconds"),
        "machine": machine_before,
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "model": description,
        "images": len(images),
        "duration_s_per_cell": args.duration,
        "max_requests_per_cell": args.max_requests,
        "batching_parameters": batching_text.strip(),
        "cells": [asdict(c) for c in cells],
        "ceiling_runs": {"before": [asdict(c) for c in ceiling_before.values()],
                         "after": [asdict(c) for c in ceiling_after.values()]},
        "targets": checks,
    }, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
