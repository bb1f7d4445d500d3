"""Dynamic request batching, as TF Serving's `--enable_batching` does it.

One `Batcher` wraps one model version's synchronous signature call. Requests
(`submit`) are queued as tasks; tasks are packed into batches along dimension 0;
a batch runs on a worker thread when it is full or when `batch_timeout_micros`
has passed since its first task, and each caller gets its own rows back.

The scheduling rules are those of TensorFlow's SharedBatchScheduler queue
(`tensorflow/core/kernels/batching_util/shared_batch_scheduler.h`) and of TF
Serving's BatchingSession (`tensorflow_serving/batching/batching_session.cc`):

- The queue holds at most `max_enqueued_batches` batches, the open one (still
  accepting tasks) included; a batch handed to a worker has left the queue. A
  task that fits in no batch is refused with UNAVAILABLE (`BatchQueueFull`).
- A task of more than `max_batch_size` rows is refused with INVALID_ARGUMENT.
  With `enable_large_batch_splitting`, batches run at most
  `max_execution_batch_size` rows and a larger task is split across batches
  (its caller still gets one answer).
- The open batch becomes runnable when full, when its timeout expires, or when
  the batcher is closing; it is handed to a worker only when one of the
  `num_batch_threads` workers is free. So with the default timeout of 0, tasks
  that arrive while every worker is busy are batched together.
- With `allowed_batch_sizes`, a batch is padded up to the next allowed size with
  copies of the first row of its last task, and the padding is dropped from the
  outputs.

The one deliberate difference: TF Serving fails a whole batch with
FAILED_PRECONDITION when two of its tasks have different input names, dtypes or
non-batch dimensions, so a request's success depends on which requests it was
batched with. Here such a task starts a new batch instead (counted against
`max_enqueued_batches` like any other batch), so a request never fails because
of another one.

For the same reason, a batcher given `retry_alone` runs the tasks of a failed
batch again one by one when that predicate accepts the error (bad input data,
such as an image the model's decoder refuses): only the tasks that fail on their
own get an error. Other errors reach every caller of the batch, as in TF Serving.

Layer: beside the servable, which wraps its `run` in one Batcher per signature
when a version is loaded. Knows nothing of models, transports or the registry;
imports numpy and serving.settings (BatchingOptions, parsed there from the flags).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from serving.settings import BatchingOptions

# close() tasks started by close_soon from other threads, held until they finish.
_CLOSING: set[asyncio.Task] = set()

RunBatch = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class BatchingError(Exception):
    """A request the batcher refused or could not answer.

    `code` is the TensorFlow/gRPC status code name TF Serving uses for the same
    case ("UNAVAILABLE", "INVALID_ARGUMENT", "FAILED_PRECONDITION"); the
    servable raises the ServingError of that code (UNAVAILABLE -> HTTP 503,
    INVALID_ARGUMENT and FAILED_PRECONDITION -> 400). str(error) is the message
    TF Serving sends.
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class BatchQueueFull(BatchingError):
    """The queue already holds max_enqueued_batches batches and the task fits in none (UNAVAILABLE)."""

    def __init__(self, message: str):
        super().__init__("UNAVAILABLE", message)


class BatcherClosed(BatchingError):
    """submit() after close(): the model version is being unloaded (UNAVAILABLE)."""

    def __init__(self) -> None:
        super().__init__("UNAVAILABLE", "The batch scheduler of this model version is closed")


@dataclass(frozen=True)
class BatchStats:
    """What happened to one batch, for metrics (TF Serving's batching_session metrics)."""

    num_tasks: int
    batch_size: int  # rows from requests
    padded_size: int  # rows given to the model (batch_size + padding)
    queuing_seconds: tuple[float, ...]  # per task: enqueue -> batch handed to a worker


class _Task:
    """One submit() call; with splitting its rows may be spread over several batches."""

    __slots__ = ("inputs", "rows", "future", "enqueued_at", "parts", "pending")

    def __init__(self, inputs: dict[str, np.ndarray], rows: int, future: asyncio.Future):
        self.inputs = inputs
        self.rows = rows
        self.future = future
        self.enqueued_at = time.monotonic()
        self.parts: dict[int, dict[str, np.ndarray]] = {}  # start row -> outputs of those rows
        self.pending = 0

    def part_done(self, start: int, outputs: dict[str, np.ndarray]) -> None:
        if self.future.done():
            return
        self.parts[start] = outputs
        self.pending -= 1
        if self.pending:
            return
        if len(self.parts) == 1:
            self.future.set_result(self.parts[start])
        else:
            ordered = [self.parts[s] for s in sorted(self.parts)]
            self.future.set_result({name: np.concatenate([p[name] for p in ordered]) for name in ordered[0]})

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclass
class _Piece:
    task: _Task
    start: int
    inputs: dict[str, np.ndarray]  # rows [start, start + rows) of the task's inputs
    rows: int


class _Batch:
    __slots__ = ("pieces", "size", "signature", "opened_at")

    def __init__(self) -> None:
        self.pieces: list[_Piece] = []
        self.size = 0
        self.signature: tuple | None = None
        self.opened_at = 0.0  # loop time of the first task


def _signature(inputs: dict[str, np.ndarray]) -> tuple:
    # What must agree for tasks to be concatenated: names, dtypes, and all dims but 0.
    # Fixed-width byte strings of different widths concatenate fine (b"ab" and b"abc").
    return tuple(sorted(
        (name, "S" if array.dtype.kind == "S" else array.dtype.str, array.shape[1:]) for name, array in inputs.items()
    ))


def _task_rows(inputs: dict[str, np.ndarray]) -> int:
    if not inputs:
        raise BatchingError("INVALID_ARGUMENT", "Batching Run() must have at least one input tensor")
    sizes = set()
    for array in inputs.values():
        if array.ndim == 0:
            raise BatchingError("INVALID_ARGUMENT", "Batching Run() input tensors must have at least one dimension")
        sizes.add(array.shape[0])
    if len(sizes) > 1:
        raise BatchingError("INVALID_ARGUMENT", "Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


Outcome = dict[str, np.ndarray] | Exception


def _execute(run_batch: RunBatch, pieces: list[_Piece], padded_size: int,
             retry_alone: Callable[[Exception], bool] | None, pad: Callable[[int], int]) -> list[Outcome]:
    """Runs on a worker thread: each piece's outputs, or the error for that piece.

    The batch fails as a whole unless `retry_alone` accepts its error; then each piece
    runs alone (padded per `pad`) and fails, or succeeds, on its own.
    """
    try:
        return list(_run_merged(run_batch, pieces, padded_size))
    except Exception as err:
        if retry_alone is None or len(pieces) < 2 or not retry_alone(err):
            raise
    outcomes: list[Outcome] = []
    for piece in pieces:
        try:
            outcomes.extend(_run_merged(run_batch, [piece], pad(piece.rows)))
        except Exception as err:  # noqa: BLE001 - this piece's own error, for its caller only
            outcomes.append(err)
    return outcomes


def _run_merged(run_batch: RunBatch, pieces: list[_Piece], padded_size: int) -> list[dict[str, np.ndarray]]:
    """Merge the pieces, call the model once, split its outputs."""
    size = sum(piece.rows for piece in pieces)
    padding = padded_size - size
    if len(pieces) == 1 and not padding:
        merged = pieces[0].inputs
    else:
        merged = {}
        for name in pieces[0].inputs:
            parts = [piece.inputs[name] for piece in pieces]
            if padding:
                # As BatchingSession: pad with the first row of the last task, a known-valid input.
                parts.append(np.repeat(parts[-1][:1], padding, axis=0))
            merged[name] = np.concatenate(parts)
    outputs = {name: np.asarray(value) for name, value in run_batch(merged).items()}
    for value in outputs.values():
        if value.ndim == 0:
            raise BatchingError("FAILED_PRECONDITION", "Batched output tensor has 0 dimensions")
        if value.shape[0] != padded_size:
            raise BatchingError(
                "FAILED_PRECONDITION",
                "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of the input tensors",
            )
    results, offset = [], 0
    for piece in pieces:
        results.append({name: value[offset:offset + piece.rows] for name, value in outputs.items()})
        offset += piece.rows
    return results


class Batcher:
    """Batches concurrent `submit` calls into calls of `run_batch`.

    `run_batch` is a synchronous model call (e.g. a SavedModel signature) taking
    and returning dicts of arrays with the batch on dimension 0; it runs on
    `executor` (by default a pool of `num_batch_threads` threads owned by the
    batcher), never on the event loop. `retry_alone(error)`, if given, says which
    errors of a batch of several tasks are worth running each task again alone for
    (see the module docstring); it runs on the worker thread. Pass a shared executor to share threads
    between models as TF Serving's SharedBatchScheduler does; this batcher still
    runs at most `num_batch_threads` of its batches at once.

    All methods must be called from one event loop (the one the server runs);
    the batcher binds to it on first use. `on_batch`, if given, is called on the
    loop with a BatchStats for every batch that ran.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        options: BatchingOptions,
        executor: concurrent.futures.Executor | None = None,
        *,
        on_batch: Callable[[BatchStats], None] | None = None,
        retry_alone: Callable[[Exception], bool] | None = None,
    ):
        self._run_batch = run_batch
        self._retry_alone = retry_alone
        self._options = options
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=options.num_batch_threads, thread_name_prefix="batch"
        )
        self._on_batch = on_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batches: deque[_Batch] = deque([_Batch()])  # last = the open batch
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._drained: asyncio.Event | None = None

    @property
    def options(self) -> BatchingOptions:
        return self._options

    @property
    def queued_tasks(self) -> int:
        """Requests waiting in the queue, not yet handed to a worker (a split request counts once;
        one whose caller went away counts until its batch is taken)."""
        return len({id(piece.task) for batch in self._batches for piece in batch.pieces})

    async def submit(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run `inputs` (one request; all arrays share dimension 0) as part of a batch.

        Returns the outputs for exactly this request's rows. Raises BatchQueueFull
        (UNAVAILABLE) at once when the queue is full, BatchingError
        (INVALID_ARGUMENT) for a task larger than max_batch_size or inconsistent
        inputs, BatcherClosed after close(), and whatever `run_batch` raised for
        the batch this request was part of.
        """
        loop = self._bind()
        if self._closing:
            raise BatcherClosed()
        inputs = {name: np.asarray(value) for name, value in inputs.items()}
        rows = _task_rows(inputs)
        task = _Task(inputs, rows, loop.create_future())
        if rows == 0:
            # NOTE: rows are what make a batch runnable, so an empty request would wait
            # for other traffic (as it does in TF Serving); run it on its own instead.
            piece = _Piece(task, 0, inputs, 0)
            (outcome,) = await loop.run_in_executor(self._executor, _run_merged, self._run_batch, [piece], 0)
            return outcome
        self._enqueue(task, _signature(inputs), loop.time())
        self._dispatch()
        return await task.future

    async def close(self) -> None:
        """Refuse new requests, run everything already queued without waiting for
        timeouts, wait for it to finish, then stop the batcher's own threads."""
        self._bind()
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._dispatch()
        if not self._empty():
            if self._drained is None:
                self._drained = asyncio.Event()
            await self._drained.wait()
        if self._own_executor:
            self._executor.shutdown(wait=False)

    def close_soon(self) -> None:
        """Start close() from any thread and return at once (a version is unloaded off the loop).

        A batcher that never ran a request has nothing to drain: it only stops
        taking requests.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            self._closing = True
            if self._own_executor:
                self._executor.shutdown(wait=False)
            return
        try:
            loop.call_soon_threadsafe(self._start_close, loop)
        except RuntimeError:  # the loop closed meanwhile: the server is gone, and so is the queue
            pass

    def _start_close(self, loop: asyncio.AbstractEventLoop) -> None:
        # The loop keeps only weak references to tasks: hold this one until it is done.
        task = loop.create_task(self.close())
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)

    # -- queue (runs on the event loop only) ----------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("a Batcher must be used from one event loop")
        return loop

    def _empty(self) -> bool:
        return self._running == 0 and len(self._batches) == 1 and not self._batches[0].pieces

    def _room(self, batch: _Batch, signature: tuple) -> int:
        """Rows the open batch can still take from a task with this signature."""
        if batch.pieces and batch.signature != signature:
            return 0
        return self._options.execution_batch_size - batch.size

    def _enqueue(self, task: _Task, signature: tuple, now: float) -> None:
        opts = self._options
        if task.rows > opts.max_batch_size:
            raise BatchingError(
                "INVALID_ARGUMENT", f"Task size {task.rows} is larger than maximum input batch size {opts.max_batch_size}"
            )
        room = self._room(self._batches[-1], signature)
        limit = opts.execution_batch_size
        if opts.enable_large_batch_splitting:
            capacity = (opts.queue_capacity - len(self._batches)) * limit + room
            if task.rows > capacity:
                raise BatchQueueFull(
                    "The batch scheduling queue to which this task was submitted is full; task size is "
                    f"{task.rows} but scheduling capacity is only {capacity} (num_enqueued_batches={len(self._batches)}, "
                    f"max_enqueued_batches={opts.max_enqueued_batches}, open_batch_size={self._batches[-1].size}, "
                    f"max_execution_batch_size={limit})"
                )
            sizes = []
            remaining = task.rows
            if 0 < room < remaining:
                sizes.append(room)
                remaining -= room
            while remaining > limit:
                sizes.append(limit)
                remaining -= limit
            sizes.append(remaining)
        else:
            if task.rows > room and len(self._batches) >= opts.queue_capacity:
                raise BatchQueueFull(
                    "The batch scheduling queue to which this task was submitted is full; currently "
                    f"{len(self._batches)} batches enqueued and max_enqueued_batches is {opts.max_enqueued_batches}"
                )
            sizes = [task.rows]
        task.pending = len(sizes)
        start = 0
        for rows in sizes:
            if rows > self._room(self._batches[-1], signature):
                self._batches.append(_Batch())
            batch = self._batches[-1]
            if not batch.pieces:
                batch.opened_at = now
                batch.signature = signature
            inputs = task.inputs if rows == task.rows else {k: v[start:start + rows] for k, v in task.inputs.items()}
            batch.pieces.append(_Piece(task, start, inputs, rows))
            batch.size += rows
            start += rows

    def _take_runnable(self) -> _Batch | None:
        if len(self._batches) >= 2:
            return self._batches.popleft()
        open_batch = self._batches[0]
        if not open_batch.pieces:
            return None
        deadline = open_batch.opened_at + self._options.batch_timeout_micros / 1e6
        if self._closing or open_batch.size >= self._options.execution_batch_size or self._loop.time() >= deadline:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._batches.append(_Batch())
            return self._batches.popleft()
        if self._timer is None or self._timer.when() != deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)
        return None

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _dispatch(self) -> None:
        while self._running < self._options.num_batch_threads:
            batch = self._take_runnable()
            if batch is None:
                break
            # Requests whose callers went away (client disconnected) are not run.
            pieces = [piece for piece in batch.pieces if not piece.task.future.done()]
            if not pieces:
                continue
            self._start(pieces)
        if self._drained is not None and self._empty():
            self._drained.set()

    def _start(self, pieces: list[_Piece]) -> None:
        self._running += 1
        size = sum(piece.rows for piece in pieces)
        padded = self._padded(size)
        stats = BatchStats(
            num_tasks=len(pieces),
            batch_size=size,
            padded_size=padded,
            queuing_seconds=tuple(time.monotonic() - piece.task.enqueued_at for piece in pieces),
        )
        # A done-callback rather than a task per batch: one loop turn less per request.
        future = self._loop.run_in_executor(self._executor, _execute, self._run_batch, pieces, padded,
                                            self._retry_alone, self._padded)
        future.add_done_callback(lambda done: self._finish(done, pieces, stats))

    def _padded(self, size: int) -> int:
        return next((s for s in self._options.allowed_batch_sizes if s >= size), size)

    def _finish(self, done: asyncio.Future, pieces: list[_Piece], stats: BatchStats) -> None:
        self._running -= 1
        if done.cancelled():  # the executor was shut down under the batch
            for piece in pieces:
                piece.task.future.cancel()
        elif done.exception() is not None:  # every caller of the batch gets the model's error
            for piece in pieces:
                piece.task.fail(done.exception())
        else:
            for piece, outcome in zip(pieces, done.result()):
                if isinstance(outcome, Exception):
                    piece.task.fail(outcome)
                else:
                    piece.task.part_done(piece.start, outcome)
        if self._on_batch is not None:
            self._on_batch(stats)
        self._dispatch()
