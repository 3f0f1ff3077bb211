"""A worker process killed with SIGKILL once it reached a point: it writes a marker file there and
stalls (the worker scripts do), and the test kills it ``delay_s`` later."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_when_marked(args: list[str], marker: Path, delay_s: float, *, within_s: float = 120) -> None:
    """Start ``args``, wait for ``marker`` (failing if the worker exits or ``within_s`` passes first),
    then SIGKILL it ``delay_s`` later and reap it."""
    worker = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + within_s
        while not marker.exists():
            assert worker.poll() is None, worker.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the worker never reached its stall"
            time.sleep(0.02)
        time.sleep(delay_s)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        worker.stderr.close()
