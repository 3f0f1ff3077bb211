"""Lease rules shared by every backend: one owner per execution, fencing tokens that only grow."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

from typing import Any, Awaitable, Callable

from ..errors import LeaseError
from ..model import COMPLETED, CheckpointHeader, Lease

log = logging.getLogger("spark_ckpt.leases")

#: this machine's name: a pid only means something on the host that recorded it
HOST = socket.gethostname()


def worker_identity() -> str:
    """``host:pid:nonce``: who owns a lease. The host and pid let a worker on the same machine see
    that the owner of a lease died (kill -9) and take the execution over without waiting for expiry."""
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """True only when ``owner`` is a process of this host that no longer exists."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != HOST or not pid_text.isdigit():
        return False  # another machine (or an unknown format): only expiry tells
    return local_process_is_dead(int(pid_text))


def local_process_is_dead(pid: int) -> bool:
    """True only when no process ``pid`` runs on this host any more (a zombie counts as dead)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def grant_lease(current: Lease | None, execution_id: str, owner: str, ttl_s: float, now: float) -> Lease:
    """The lease ``owner`` gets now, given the ``current`` one; ``LeaseError`` if another holds it.

    The same owner renews (same token). A new owner after expiry (or after the owner process died on
    this host) gets ``token + 1``, which makes the previous owner's writes fail their fencing check.
    """
    if current is None:
        return Lease(execution_id, owner, 1, now + ttl_s)
    if current.owner == owner and current.expires_at > now:
        return Lease(execution_id, owner, current.token, now + ttl_s)
    if current.expires_at > now and current.owner and not owner_is_dead(current.owner):
        raise LeaseError(
            f"execution {execution_id} is owned by worker {current.owner!r} for another "
            f"{current.expires_at - now:.1f}s; it may still be running. Wait for it to finish or for "
            "its lease to expire (pass wait=True to wait), instead of forking its history"
        )
    return Lease(execution_id, owner, current.token + 1, now + ttl_s)


def extend_lease(current: Lease | None, presented: Lease, ttl_s: float, now: float) -> Lease:
    """Renewal: ``presented`` for another ``ttl_s``, only while it is still the execution's current
    lease (same token and owner; an expired lease nobody took over may still be extended). Never a new
    token: a worker that stalled past a takeover must stop, not take the execution back."""
    if current is None or current.token != presented.token or current.owner != presented.owner:
        raise LeaseError(
            f"lease token {presented.token} of worker {presented.owner!r} on execution {presented.execution_id} "
            "is gone (another worker took the execution over, or it was released); this worker must stop"
        )
    return Lease(presented.execution_id, presented.owner, presented.token, now + ttl_s)


def check_fence(current: Lease | None, presented: Lease | None, execution_id: str) -> None:
    """Refuse a write made under a lease that is no longer the execution's current one."""
    if presented is None:
        return
    if current is None or current.token != presented.token or current.owner != presented.owner:
        raise LeaseError(
            f"write to execution {execution_id} refused: lease token {presented.token} of worker "
            f"{presented.owner!r} was superseded (another worker took the execution over after this "
            "one stalled). This worker must stop; its work is not lost from the store"
        )


async def claim(
    backend: Any, execution_id: str, owner: str, ttl_s: float, wait: bool | float,
    read_head: Callable[[], Awaitable[CheckpointHeader]],
) -> tuple[Lease | None, CheckpointHeader]:
    """The lease of an unfinished execution for recovery, or ``(None, head)`` once it has completed.

    ``read_head()`` gives the execution's index head (verified; it raises for an unknown execution).
    The head is read again under the lease: another worker may have finished the execution between
    the first read and the grant. ``wait`` for another owner's lease: False raises ``LeaseError`` at
    once; True waits up to two lease lifetimes (the owner finishes, or stops renewing and its lease
    expires); a number waits that many seconds. A completion ends the wait.
    """
    deadline = time.monotonic() + (2 * ttl_s + 1 if wait is True else float(wait or 0))
    while True:
        head = await read_head()
        if head.status == COMPLETED:
            return None, head
        try:
            lease = await backend.aacquire_lease(execution_id, owner, ttl_s)
        except LeaseError:
            if not wait or time.monotonic() > deadline:
                raise
            await asyncio.sleep(min(0.1, ttl_s / 4))
            continue
        head = await read_head()
        if head.status == COMPLETED:
            await release_quietly(backend, lease)
            return None, head
        return lease, head


async def release_quietly(backend: Any, lease: Lease | None) -> None:
    """Give ``lease`` up if there is one; a failure is only logged (the lease expires anyway)."""
    if lease is None:
        return
    try:
        await backend.arelease_lease(lease)
    except Exception:
        log.debug("lease release failed", exc_info=True)
