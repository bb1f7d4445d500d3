"""Wiring: one asyncio event loop runs the REST server (uvicorn) and the gRPC server (grpc.aio).

Both transports share one Handlers object, hence one registry. Models run on a
thread pool or, with --enable_batching, through the batchers the Loader wraps
around each version as it loads; never on the loop. Startup follows TF
Serving's order: the models present on disk are loaded (and warmed up) first,
then the ports open; the version watcher and the config-file poller then run
in the background.

signflow's own routes come from the settings: the feedback endpoint
(serving/feedback.py), `GET /signflow/status` (rest.status_route), the
versions and rollback routes and, with --ui, the web page (serving/ui_routes.py)
and, with --request_log_file, the request log (serving/request_log.py) fed by
the handlers' on_predicted hook. `extra_routes` are mounted after them.

Resources: idle HTTP connections are closed after
--rest_api_keep_alive_timeout_seconds (`_HttpProtocol`); gRPC takes
--grpc_channel_arguments; after each unload or failed load, `MemoryReclaimer`
collects the version's garbage and trims the heap (docs/serving.md#resources).

`ModelServer` is the async object; `ServerThread` runs one on a background
thread (tests, embedding); `run(settings)` is the command-line entry.

Layer: the top; the only module that builds every other one. Imports grpc,
uvicorn and every serving module but cli and client.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import ctypes
import gc
import logging
import queue
import signal
import socket
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Sequence

import grpc
import uvicorn
from starlette.routing import BaseRoute
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving import errors, feedback, grpc_service, rest, ui_routes
from serving.handlers import Handlers
from serving.metrics import Metrics
from serving.registry import Registry
from serving.servable import Loader, Servable
from serving.repository import Watcher
from serving.request_log import RequestLog
from serving.settings import ModelConfig, Settings, SettingsError, read_model_config_file

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    # NOTE: signals belong to ModelServer (both transports stop together), not to uvicorn.
    @contextlib.contextmanager
    def capture_signals(self):
        yield


class _HttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, with its keep-alive timer (--rest_api_keep_alive_timeout_seconds)
    running whenever the connection has no request in progress.

    uvicorn arms that timer only once a response is complete, so a connection that
    never sends a request, or sends only part of one, would stay open for ever.
    Here it is armed on accept too, and again after any data that does not start a
    request, so every connection left without work is closed after the timeout.
    """

    # NOTE: uses HttpToolsProtocol's timer attributes; uvicorn is pinned in requirements.lock,
    # and tests/serving/test_connections.py fails if they change.
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_keep_alive_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is None or self.cycle.response_complete:
            self._arm_keep_alive_timer()

    def _arm_keep_alive_timer(self) -> None:
        if self.transport.is_closing() or self.pipeline:
            return
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (another OS, or another C library such as musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


class _OnRelease:
    """Calls `callback` when it is deleted (MemoryReclaimer.watch)."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[], None]):
        self._callback = callback

    def __del__(self) -> None:
        self._callback()


class MemoryReclaimer:
    """Gives the memory of a version that is gone back to the operating system, on a thread of its own.

    After a version is unloaded (its last request done) or fails to load:

    1. waits until the version's Servable has been released, whole (at most
       `grace_seconds`: with batching, the Servable and its batchers form a cycle that
       only step 2 frees);
    2. collects Python's cyclic garbage (`gc.collect()`): a loaded SavedModel is some
       170,000 objects in reference cycles, among them the handles of its variables, so
       the model's memory is freed only by a full collection, which Python's automatic
       collector runs rarely (old versions piled up until it did);
    3. on Linux with glibc, returns free heap pages to the operating system
       (`malloc_trim(0)`); glibc otherwise keeps them.

    Requests that arrive together are handled in one round. A version not freed by then
    is logged: something still refers to it.
    """

    def __init__(self, grace_seconds: float = 10.0):
        self._grace = grace_seconds
        self._trim = _find_malloc_trim()
        self._released: dict[tuple[str, int], threading.Event] = {}
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: list[threading.Event] = []
        self._stopping = threading.Event()
        self._rounds = 0
        self._thread = threading.Thread(target=self._run, name="memory-reclaim", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def rounds(self) -> int:
        """Completed reclaims (collection and trim) since the start."""
        with self._lock:
            return self._rounds

    def watch(self, name: str, version: int, servable: Servable) -> None:
        """Called for each loaded version, to know when its Servable has been released (keeps no reference)."""
        released = threading.Event()
        # NOTE: a weakref callback on the Servable would run as its release *begins*: releasing
        # its attributes (the model) comes after, and lets other threads run (TensorFlow drops the
        # GIL), so a collection started on the callback could miss the model. An attribute added
        # last is released last: its deletion says the whole Servable is gone.
        try:
            servable._memory_released = _OnRelease(released.set)
        except AttributeError:  # no instance attributes: the weakref callback is the best left
            weakref.finalize(servable, released.set)
        with self._lock:
            self._released[(name, version)] = released

    def on_event(self, name: str, version: int, event: str) -> None:
        """The registry's load events: "unloaded" and "load_failed" start a reclaim."""
        if event == "unloaded":
            with self._lock:
                released = self._released.pop((name, version), None)
            self._jobs.put((name, version, released))
        elif event == "load_failed":
            self._jobs.put((name, version, None))

    def stop(self) -> None:
        """Stop at once (server shutdown): a round waiting for a version to be released ends
        without collecting, and requests not started are dropped."""
        self._stopping.set()
        with self._lock:
            for released in self._waiting:
                released.set()
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            jobs = [job]
            while not self._jobs.empty():
                job = self._jobs.get()
                if job is None:
                    return
                jobs.append(job)
            try:
                self._reclaim(jobs)
            except Exception:  # never let a failure here end reclaiming
                log.exception("Reclaiming memory failed")

    def _reclaim(self, jobs: list[tuple[str, int, threading.Event | None]]) -> None:
        unloaded = [(name, version, released) for name, version, released in jobs if released is not None]
        with self._lock:
            self._waiting = [released for _, _, released in unloaded]
        if self._stopping.is_set():
            return
        deadline = time.monotonic() + self._grace
        for _, _, released in unloaded:
            released.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._waiting = []
        if self._stopping.is_set():
            return
        started = time.monotonic()
        collected = gc.collect()
        trimmed = bool(self._trim(0)) if self._trim is not None else False
        for name, version, released in unloaded:
            if not released.is_set():
                log.warning("Version %s of model %s is still referenced after its unload; its memory stays in use",
                            version, name)
        log.info("Reclaimed memory after %s: %d objects collected%s (%.2fs)",
                 ", ".join(f"{name}/{version}" for name, version, _ in jobs), collected,
                 ", heap trimmed" if trimmed else "", time.monotonic() - started)
        with self._lock:
            self._rounds += 1


class ModelServer:
    """The model server: `await start()`, then `await run_until_stopped()`; `request_stop()` ends it."""

    def __init__(self, settings: Settings, *, ephemeral_ports: bool = False,
                 extra_routes: Sequence[BaseRoute] = ()):
        """With `ephemeral_ports`, a port of 0 means "any free port" instead of "disabled"."""
        self.settings = settings
        self.metrics = Metrics()
        self._ephemeral = ephemeral_ports
        self._extra_routes = extra_routes
        self._executor = concurrent.futures.ThreadPoolExecutor(settings.execution_threads, "model")
        self.request_log: RequestLog | None = None
        if settings.request_log_file:
            self.request_log = RequestLog(settings.request_log_file, settings.request_log_max_bytes,
                                          on_dropped=self.metrics.request_log_dropped)
        self._routes: list[BaseRoute] = []
        self._loader = Loader(
            self._executor, warmup=settings.enable_model_warmup,
            batching=settings.batching if settings.enable_batching else None, on_batch=self.metrics.batch)
        self.memory = MemoryReclaimer()
        self.registry = Registry(
            self._load,
            allow_version_labels_for_unavailable_models=settings.allow_version_labels_for_unavailable_models,
            on_event=self._load_event,
        )
        self.handlers = Handlers(
            self.registry, settings, self._executor,
            on_predicted=self.request_log.record if self.request_log is not None else None)
        self._watcher = Watcher(self.registry.configs, self.registry.reconcile, settings.file_system_poll_wait_seconds,
                                on_poll=self.metrics.file_system_poll)
        self._config_text: str | None = None
        self._config_file_polls: collections.Counter[str] = collections.Counter()
        self._config_file_polls_lock = threading.Lock()  # updated on the loop, read from any thread
        self._stopping: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._uvicorn: _Uvicorn | None = None
        self._uvicorn_task: asyncio.Task | None = None
        self._grpc: grpc.aio.Server | None = None
        self.rest_port: int | None = None
        self.grpc_port: int | None = None

    def _load(self, name: str, version: int, path: Path) -> Servable:
        servable = self._loader(name, version, path)
        self.memory.watch(name, version, servable)
        return servable

    def _load_event(self, name: str, version: int, event: str) -> None:
        self.metrics.load_event(name, version, event)
        self.memory.on_event(name, version, event)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.memory.start()
        # First, before any thread or port starts: a feedback folder or log file that
        # cannot be used stops the server with nothing to undo.
        self._routes = await loop.run_in_executor(self._executor, self._signflow_routes)
        if self.request_log is not None:
            await loop.run_in_executor(self._executor, self.request_log.start)
        self._stopping = asyncio.Event()
        self.registry.apply_config(self.settings.models)
        if self.settings.model_config_file:
            self._config_text = Path(self.settings.model_config_file).read_text(encoding="utf-8")
        if self.settings.file_system_poll_wait_seconds >= 0:
            await loop.run_in_executor(self._executor, self._watcher.poll_once)
        self._watcher.start()
        await self._start_grpc()
        await self._start_rest()
        if self.settings.model_config_file and self.settings.model_config_file_poll_wait_seconds > 0:
            self._tasks.append(loop.create_task(self._poll_config_file()))

    def _signflow_routes(self) -> list[BaseRoute]:
        """signflow's routes (blocking: prepares the feedback folder), then the caller's extra_routes."""
        return [
            *feedback.routes(self.settings, self.registry, self.metrics, self._executor),
            rest.status_route(self.registry, self.settings.training_status_file),
            *ui_routes.routes(self.settings, self.registry),
            *self._extra_routes,
        ]

    async def _start_grpc(self) -> None:
        port = self.settings.grpc_port
        if port == 0 and not self._ephemeral:
            return
        options = {
            "grpc.max_receive_message_length": self.settings.max_request_bytes,
            "grpc.max_send_message_length": 2**31 - 1,
            "grpc.so_reuseport": 0,
        }
        options.update(self.settings.grpc_options)  # --grpc_channel_arguments win, as in TF Serving
        self._grpc = grpc.aio.server(options=list(options.items()))
        grpc_service.add_services(self._grpc, self.handlers, self.metrics, self.reload_config)
        try:
            self.grpc_port = self._grpc.add_insecure_port(f"{self.settings.host}:{port}")
        except RuntimeError as err:
            raise OSError(f"cannot listen for gRPC on {self.settings.host}:{port}: {err}") from None
        if not self.grpc_port:
            raise OSError(f"cannot listen for gRPC on {self.settings.host}:{port}")
        await self._grpc.start()

    async def _start_rest(self) -> None:
        port = self.settings.rest_api_port
        if port == 0 and not self._ephemeral:
            return
        # NOTE: asyncio sets TCP_NODELAY on accepted connections only when the listening
        # socket says IPPROTO_TCP; without it every keep-alive response waits ~40 ms
        # for the client's delayed ACK (Nagle).
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.host, port))
        sock.listen(1024)
        sock.setblocking(False)
        self.rest_port = sock.getsockname()[1]
        app = rest.create_app(self.handlers, self.settings, self.metrics, self._routes)
        # No WebSocket routes: ws="none" also keeps every connection on _HttpProtocol's idle timer.
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, http=_HttpProtocol,
                                ws="none", timeout_keep_alive=self.settings.rest_api_keep_alive_timeout_seconds,
                                timeout_graceful_shutdown=5)
        self._uvicorn = _Uvicorn(config)
        self._uvicorn_task = asyncio.get_running_loop().create_task(self._uvicorn.serve(sockets=[sock]))
        while not self._uvicorn.started:
            if self._uvicorn_task.done():
                self._uvicorn_task.result()  # startup failed: raise its error
            await asyncio.sleep(0.01)

    async def reload_config(self, models: tuple[ModelConfig, ...]) -> None:
        """Serve exactly `models` from now on (HandleReloadConfigRequest, config file change).

        Returns once the new models' versions are loaded (or failed), as TF Serving does.
        """
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.registry.apply_config, models)
        await loop.run_in_executor(self._executor, self._watcher.poll_once)

    @property
    def file_system_polls(self) -> int:
        """Completed version-watcher rounds (see repository.Watcher.polls)."""
        return self._watcher.polls

    def config_file_polls(self, outcome: str | None = None) -> int:
        """Completed re-reads of --model_config_file with this outcome ("unchanged", "applied",
        "failed"), or all of them."""
        with self._config_file_polls_lock:
            return sum(self._config_file_polls.values()) if outcome is None else self._config_file_polls[outcome]

    async def _poll_config_file(self) -> None:
        path = self.settings.model_config_file
        while True:
            await asyncio.sleep(self.settings.model_config_file_poll_wait_seconds)
            outcome = "unchanged"
            try:
                text = Path(path).read_text(encoding="utf-8")
                if text != self._config_text:
                    models = read_model_config_file(path)
                    await self.reload_config(models)
                    self._config_text = text
                    outcome = "applied"
                    log.info("Applied the new model config from %s", path)
            except (OSError, SettingsError, errors.ServingError) as err:
                # As TF Serving: a bad config file is logged and the old config keeps serving.
                outcome = "failed"
                log.error("Not applying %s: %s", path, err)
            with self._config_file_polls_lock:
                self._config_file_polls[outcome] += 1
            self.metrics.config_file_poll(outcome)

    def request_stop(self) -> None:
        """Ask run_until_stopped() to shut down (thread-safe through loop.call_soon_threadsafe)."""
        if self._stopping is not None:
            self._stopping.set()

    async def run_until_stopped(self) -> None:
        """After start(): serve until request_stop(), then shut everything down."""
        await self._stopping.wait()
        await self._shutdown()

    async def _shutdown(self) -> None:
        # The watcher may be in the middle of a load: wait for it off the loop.
        await asyncio.get_running_loop().run_in_executor(None, self._watcher.stop)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
            await asyncio.gather(self._uvicorn_task, return_exceptions=True)
            self._uvicorn = self._uvicorn_task = None
        if self._grpc is not None:
            await self._grpc.stop(grace=2)
            self._grpc = None
        if self.request_log is not None:
            # The transports are closed: nothing more is recorded; write what is queued.
            await asyncio.get_running_loop().run_in_executor(None, self.request_log.close)
        # Before unload_all: the process is about to end, reclaiming would only delay it.
        await asyncio.get_running_loop().run_in_executor(None, self.memory.stop)
        self.registry.unload_all()
        await self._loader.aclose()
        self._executor.shutdown(wait=False, cancel_futures=True)


class ServerThread:
    """A ModelServer on its own thread and event loop. `start()` returns once it serves."""

    def __init__(self, settings: Settings, *, ephemeral_ports: bool = True,
                 extra_routes: Sequence[BaseRoute] = ()):
        self.server = ModelServer(settings, ephemeral_ports=ephemeral_ports, extra_routes=extra_routes)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="model-server", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 120) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("model server did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main():
            try:
                await self.server.start()
            except BaseException as err:
                self._error = err
                self._ready.set()
                return
            self._ready.set()
            await self.server.run_until_stopped()

        self._loop.run_until_complete(main())
        self._loop.close()

    def call(self, coroutine, timeout: float = 60):
        """Run a coroutine on the server's loop (e.g. reload_config) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self, timeout: float = 30) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.server.request_stop)
            self._thread.join(timeout)

    @property
    def file_system_polls(self) -> int:
        """Completed version-watcher rounds: wait for it to grow by 2 to know a change was looked at."""
        return self.server.file_system_polls

    def config_file_polls(self, outcome: str | None = None) -> int:
        """Completed re-reads of --model_config_file (ModelServer.config_file_polls)."""
        return self.server.config_file_polls(outcome)

    @property
    def rest_url(self) -> str:
        return f"http://{self.server.settings.host}:{self.server.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.server.settings.host}:{self.server.grpc_port}"

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM. Returns the process exit code."""

    async def main() -> int:
        server = ModelServer(settings)
        # NOTE: what the imports made (TensorFlow's 600,000 objects) lives as long as the process; out
        # of the collector's sight, each memory reclaim's full collection walks only what came after.
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.request_stop)
        try:
            await server.start()
        except (OSError, errors.ServingError) as err:
            print(f"Failed to start server. Error: {err}", file=sys.stderr)
            await server._shutdown()
            return 1
        listening = []
        if server.grpc_port:
            listening.append(f"gRPC at {settings.host}:{server.grpc_port}")
        if server.rest_port:
            listening.append(f"HTTP/REST at http://{settings.host}:{server.rest_port}")
        print(f"signflow model server: {', '.join(listening)}", flush=True)
        await server.run_until_stopped()
        return 0

    return asyncio.run(main())
