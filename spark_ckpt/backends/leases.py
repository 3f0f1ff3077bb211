"""Lease rules shared by every backend: one owner per execution, fencing tokens that only grow."""

from __future__ import annotations

from ..errors import LeaseError
from ..model import Lease


def grant_lease(current: Lease | None, execution_id: str, owner: str, ttl_s: float, now: float) -> Lease:
    """The lease ``owner`` gets now, given the ``current`` one; ``LeaseError`` if another holds it.

    The same owner renews (same token). A new owner after expiry gets ``token + 1``, which makes the
    previous owner's writes fail their fencing check.
    """
    if current is None:
        return Lease(execution_id, owner, 1, now + ttl_s)
    if current.owner == owner and current.expires_at > now:
        return Lease(execution_id, owner, current.token, now + ttl_s)
    if current.expires_at > now:
        raise LeaseError(
            f"execution {execution_id} is owned by worker {current.owner!r} for another "
            f"{current.expires_at - now:.1f}s; it may still be running. Wait for it to finish or for "
            "its lease to expire (pass wait=True to wait), instead of forking its history"
        )
    return Lease(execution_id, owner, current.token + 1, now + ttl_s)


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
