"""A child process started before it is needed: it loads its libraries, then waits for one JSON line on stdin.

Importing TensorFlow costs every new process seconds of a core. The training
server starts each cycle's `signflow run` this way as the last cycle ends, and the
local runner the serving check's probe as a run begins; when the work is due, the
parent writes it as one JSON line (`hand_over`) and the child, its imports done,
reads it (`read_message`). The child has its own process group, so it is ended
with everything it started.

Layer: bottom of the components (standard library only); used by the serving
check and the training server.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from typing import Any

log = logging.getLogger(__name__)


def start(command: list[str], **popen_args: Any) -> subprocess.Popen:
    """Start `command` in a new session with a pipe for its message; it reads it with read_message()."""
    return subprocess.Popen(command, stdin=subprocess.PIPE, start_new_session=True, **popen_args)


def hand_over(process: subprocess.Popen, message: Any, name: str) -> bool:
    """Send `message`; False (logged, with `name`) when the process had ended: it is reaped, its group ended."""
    if process.poll() is None:
        try:
            process.stdin.write((json.dumps(message) + "\n").encode())
            process.stdin.close()
            return True
        except BrokenPipeError:  # it ended between poll() and the write
            pass
    code = process.wait()
    signal_group(process.pid, signal.SIGKILL)
    log.warning("%s started in advance (pid %d) had ended (exit code %d): starting a new one", name, process.pid, code)
    return False


def discard(process: subprocess.Popen) -> None:
    """End a waiting process that will not be needed, and whatever it started (nothing if it was run and reaped)."""
    if process.returncode is None:  # not reaped yet, so its process group number is still its own
        signal_group(process.pid, signal.SIGKILL)
        process.wait()
    with contextlib.suppress(BrokenPipeError):
        process.stdin.close()


def signal_group(pgid: int, signum: int) -> bool:
    """Send `signum` to the process group `pgid`; False when no process is left in it."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # the group's number was reused by someone else's processes
        return False
    return True


def read_message() -> Any | None:
    """In the child: the parent's message, or None at end of input (the parent no longer needs this process)."""
    line = sys.stdin.readline()
    return json.loads(line) if line.strip() else None
