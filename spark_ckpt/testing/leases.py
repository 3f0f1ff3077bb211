"""Lease checks with real worker processes, for any backend (its plugin's tests call them):

* ``race_two_workers(backend, url, tmp_path)``: two processes recover one execution at once;
  exactly one continues it, the other is refused, and the history does not fork.
* ``stalled_worker_is_fenced(backend, url)``: a worker stalls (SIGSTOP) past its lease, another
  takes over (and lets its own lease run out too), and the stalled one can neither renew its lease
  back nor write.
* ``check_leases(url, tmp_path)``: both, on a backend opened from ``url``.

The workers run this module: ``python -m spark_ckpt.testing.leases MODE URL EXECUTION_ID OWNER ARG``.

race:  wait until the file ARG exists, then try to take the execution over and continue it
       (3 checkpoints after the newest one). Prints WON or REFUSED.
stall: take the lease for ARG seconds, write 2 checkpoints, print STALLING and stop itself
       (SIGSTOP); once continued, try to renew the lease, then one more write. Prints FENCED if
       both were refused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from spark_ckpt.config import open_backend
from spark_ckpt.errors import LeaseError
from spark_ckpt.model import CheckpointHeader


def continue_execution(backend, execution_id: str, owner: str, lease, count: int) -> int:
    newest = backend.list(execution_id=execution_id, limit=1)
    seq = newest[0].seq if newest else -1
    for _ in range(count):
        seq += 1
        header = CheckpointHeader(f"{owner}-{seq}", "g-lease", execution_id, seq, time.time())
        backend.put(header, f"{owner}:{seq}".encode(), lease=lease)
    return seq


def main(mode: str, url: str, execution_id: str, owner: str, arg: str) -> int:
    backend = open_backend(url)
    try:
        if mode == "race":
            while not os.path.exists(arg):
                time.sleep(0.005)
            try:
                lease = backend.acquire_lease(execution_id, owner, 30)
            except LeaseError:
                print("REFUSED", flush=True)
                return 0
            continue_execution(backend, execution_id, owner, lease, 3)
            print("WON", flush=True)
            return 0
        lease = backend.acquire_lease(execution_id, owner, float(arg))
        continue_execution(backend, execution_id, owner, lease, 2)
        print("STALLING", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
        try:
            backend.renew_lease(lease, float(arg))
            print("RENEWED-AFTER-TAKEOVER", flush=True)
            return 1
        except LeaseError:
            pass
        try:
            continue_execution(backend, execution_id, owner, lease, 1)
        except LeaseError:
            print("FENCED", flush=True)
            return 0
        print("WROTE-AFTER-TAKEOVER", flush=True)
        return 1
    finally:
        backend.close()


# -- the scenarios, run from the test modules ----------------------------------------------------
def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "spark_ckpt.testing.leases", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )


def race_two_workers(backend, url: str, tmp_path: Path) -> None:
    """Two worker processes recover one execution at once: one continues it, one is refused."""
    execution_id = f"race-{time.time_ns()}"
    backend.put(CheckpointHeader("dead-0", "g-lease", execution_id, 0, time.time()), b"dead:0")
    dead = backend.acquire_lease(execution_id, "dead-worker", 30)
    backend.release_lease(dead)  # the crashed worker's lease is over
    go = tmp_path / "go"
    workers = [_spawn("race", url, execution_id, owner, str(go)) for owner in ("worker-a", "worker-b")]
    time.sleep(0.5)  # both processes imported and waiting
    go.touch()
    outputs = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    results = sorted(out.strip() for out, _ in outputs)
    assert results == ["REFUSED", "WON"], outputs
    winner = ("worker-a", "worker-b")[[out.strip() for out, _ in outputs].index("WON")]
    history = sorted(backend.list(execution_id=execution_id), key=lambda h: h.seq)
    assert [h.seq for h in history] == [0, 1, 2, 3]
    # one line of history: everything after the crash was written by the winner alone
    assert [backend.get(h.checkpoint_id).blob.decode() for h in history[1:]] == [
        f"{winner}:{seq}" for seq in (1, 2, 3)
    ]


def _wait_stopped(pid: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        time.sleep(0.01)
    raise AssertionError(f"worker {pid} never stopped itself")


def stalled_worker_is_fenced(backend, url: str) -> None:
    """A worker stalls past its lease; another takes over; the stalled one cannot write any more."""
    execution_id = f"stall-{time.time_ns()}"
    ttl = 1.0
    stalled = _spawn("stall", url, execution_id, "slow-worker", str(ttl))
    try:
        line = stalled.stdout.readline().strip()
        assert line == "STALLING", (line, stalled.stderr.read() if stalled.poll() is not None else "")
        _wait_stopped(stalled.pid)
        time.sleep(ttl * 1.5)  # the lease runs out while the worker is frozen
        lease = backend.acquire_lease(execution_id, "new-worker", ttl)
        assert lease.token >= 2
        last = continue_execution(backend, execution_id, "new-worker", lease, 2)
        time.sleep(ttl * 1.5)  # the new owner's lease runs out too: renewing must still not take it back
    finally:
        os.kill(stalled.pid, signal.SIGCONT)
    out, err = stalled.communicate(timeout=120)
    assert stalled.returncode == 0 and out.strip() == "FENCED", (out, err)
    history = sorted(backend.list(execution_id=execution_id), key=lambda h: h.seq)
    owners = [backend.get(h.checkpoint_id).blob.decode().split(":")[0] for h in history]
    assert owners == ["slow-worker", "slow-worker", "new-worker", "new-worker"]
    assert history[-1].seq == last


def check_leases(url: str, tmp_path: Path) -> None:
    """Run both lease scenarios against the backend at ``url``."""
    backend = open_backend(url)
    try:
        race_two_workers(backend, url, tmp_path)
        stalled_worker_is_fenced(backend, url)
    finally:
        backend.close()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
