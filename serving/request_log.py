"""The optional request log: one JSON line per image answered by signflow's image signatures
(serving_default and predict_label, contract.IMAGE_SIGNATURES).

Each line is `{"time", "model", "version", "sha256", "label", "score"}`: the
sha256 of the decoded image bytes, never the bytes themselves, so the log can
be joined with feedback and training data without holding anyone's signature.
`label` and `score` are predict_label's outputs; for serving_default, which
answers `probabilities` only, they are the top entry of `probabilities` named
through the version's labels.txt (the same argmax and max predict_label computes).

The event loop only appends to an in-memory queue (`record`); a writer thread
hashes, formats and appends. The queue is bounded by the image bytes it holds:
past that (a writer far behind, a stuck disk) entries are dropped and counted,
never waited for. Nothing here can fail or slow down a predict request.

Size cap: when the next line would take the file past `max_bytes`, the file is
renamed to `<file>.1` (replacing an older one) and a new file is started, so
the log keeps going and uses at most twice the cap on disk. A single line
longer than the cap is dropped. One writer per file: two servers must not share
a log file.

Layer: beside the data plane, which feeds it through its on_predicted hook.
Imports numpy and serving.contract (the output names).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import BinaryIO, Callable, Mapping, Sequence

import numpy as np

from serving.contract import LABEL_OUTPUT, PROBABILITIES_OUTPUT, SCORE_OUTPUT

log = logging.getLogger(__name__)

# Image bytes waiting for the writer; past this, entries are dropped rather than held.
DEFAULT_MAX_PENDING_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class _Entry:
    time: float
    model: str
    version: int
    images: list[bytes]
    labels: list | None
    scores: list | None


_STOP = object()


class RequestLog:
    """Appends prediction records to a JSON Lines file from a background thread."""

    def __init__(self, path: str, max_bytes: int, *, on_dropped: Callable[[int], None] | None = None,
                 max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES):
        self.path = path
        self.max_bytes = max_bytes
        self._on_dropped = on_dropped or (lambda _: None)
        self._max_pending = max_pending_bytes
        self._pending = 0
        self._pending_lock = threading.Lock()
        # Entries, flush() markers and _STOP; unbounded in items, bounded by _pending bytes.
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._file: BinaryIO | None = None
        self._size = 0
        self._failing = False
        self._warned_full = False
        self._warned_long = False

    def start(self) -> None:
        """Open (or create) the file and start the writer. Raises OSError if the file cannot be opened."""
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        self._open()
        self._thread.start()

    def record(self, model: str, version: int, images: np.ndarray, outputs: Mapping[str, np.ndarray],
               labels: Sequence[str] | None = None) -> None:
        """Queue one request's instances (event loop; never blocks, never raises for a full queue).

        `labels`: the version's labels.txt, to name the top entry of `probabilities` when the
        outputs have no `label` (serving_default)."""
        values = [bytes(value) for value in np.asarray(images).reshape(-1)]
        size = sum(len(value) for value in values)
        with self._pending_lock:
            if self._pending + size > self._max_pending:
                full = True
            else:
                full = False
                self._pending += size
        if full:
            self._dropped(len(values))
            if not self._warned_full:
                self._warned_full = True
                log.warning("request log %s: writer is behind; dropping entries (counted in "
                            "signflow_serving_request_log_dropped_total)", self.path)
            return
        top_labels, top_scores = _top(outputs, labels, len(values))
        label_column = _column(outputs, LABEL_OUTPUT, len(values))
        score_column = _column(outputs, SCORE_OUTPUT, len(values))
        self._queue.put(_Entry(time.time(), model, version, values,
                               label_column if label_column is not None else top_labels,
                               score_column if score_column is not None else top_scores))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (tests, shutdown). False on timeout."""
        if not self._thread.is_alive():
            return False
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer and close the file (blocking: call it off the loop)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
        if self._file is not None and not self._thread.is_alive():
            self._file.close()
            self._file = None

    # -- writer thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            # Everything already queued goes out in one write.
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            entries = [item for item in items if isinstance(item, _Entry)]
            try:
                self._write(entries)
            except Exception:  # a bug must not kill the thread and leave flush() waiting
                log.exception("request log %s: could not write %d entries", self.path, len(entries))
            finally:
                with self._pending_lock:
                    self._pending -= sum(len(image) for entry in entries for image in entry.images)
            for item in items:
                if isinstance(item, threading.Event):  # a flush() waiting for what came before it
                    item.set()
            if any(item is _STOP for item in items):
                return

    def _write(self, entries: list[_Entry]) -> None:
        lines = [line for entry in entries for line in _lines(entry)]
        if not lines:
            return
        written = 0
        try:
            if self._file is None:
                self._open()
            for line in lines:
                if len(line) > self.max_bytes:
                    if not self._warned_long:
                        self._warned_long = True
                        log.warning("request log %s: a %d-byte line exceeds --request_log_max_bytes=%d; dropped",
                                    self.path, len(line), self.max_bytes)
                    self._dropped(1)
                    written += 1
                    continue
                if self._size + len(line) > self.max_bytes:
                    self._rotate()
                self._file.write(line)
                self._size += len(line)
                written += 1
            self._file.flush()
        except OSError as err:
            self._dropped(len(lines) - written)
            if not self._failing:
                self._failing = True
                log.warning("request log %s: cannot write (%s); entries are dropped until it works again",
                            self.path, err)
            self._close_quietly()
            return
        if self._failing:
            self._failing = False
            log.warning("request log %s: writing again", self.path)

    def _open(self) -> None:
        self._file = open(self.path, "ab")
        self._size = self._file.seek(0, os.SEEK_END)

    def _rotate(self) -> None:
        self._file.close()
        self._file = None
        os.replace(self.path, self.path + ".1")
        self._open()

    def _close_quietly(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def _dropped(self, count: int) -> None:
        if count > 0:
            try:
                self._on_dropped(count)
            except Exception:  # metrics must not break logging
                log.exception("request log: on_dropped callback failed")


def _column(outputs: Mapping[str, np.ndarray], name: str, rows: int) -> list | None:
    """Output `name` as one value per row, or None when the model has no such [rows] output."""
    value = outputs.get(name)
    if value is None:
        return None
    array = np.asarray(value)
    if array.ndim != 1 or array.shape[0] != rows:
        return None
    return array.tolist()


def _top(outputs: Mapping[str, np.ndarray], labels: Sequence[str] | None, rows: int) -> tuple[list | None, list | None]:
    """The most probable label and its probability per row, from `probabilities` [rows, K] (None when absent;
    labels None when `labels` does not have K entries)."""
    value = outputs.get(PROBABILITIES_OUTPUT)
    if value is None:
        return None, None
    array = np.asarray(value)
    if array.ndim != 2 or array.shape[0] != rows or array.shape[1] == 0:
        return None, None
    scores = array.max(axis=1).tolist()
    if labels is None or len(labels) != array.shape[1]:
        return None, scores
    return [labels[int(index)] for index in np.argmax(array, axis=1)], scores


def _lines(entry: _Entry) -> list[bytes]:
    stamp = datetime.fromtimestamp(entry.time, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    lines = []
    for index, image in enumerate(entry.images):
        record = {
            "time": stamp,
            "model": entry.model,
            "version": entry.version,
            "sha256": hashlib.sha256(image).hexdigest(),
            "label": _label(entry.labels[index]) if entry.labels is not None else None,
            "score": _score(entry.scores[index]) if entry.scores is not None else None,
        }
        lines.append(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
    return lines


def _label(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _score(value) -> float | None:
    try:
        number = float(str(np.float32(value)))  # float32's shortest decimal, as the predict answer writes it
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None
