"""Conformance: leases give one owner per execution, and fencing tokens that only grow."""

from __future__ import annotations

import asyncio
import time

import pytest

from ...backends.base import Backend
from ...errors import CheckpointNotFoundError, DuplicateCheckpointError, LeaseError
from ...model import Lease
from .harness import ConformanceHarness
from .headers import _ids, make_header


class LeaseConformance(ConformanceHarness):
    """Acquire, renew, release, takeover after expiry, fenced puts and ``start_execution``."""

    def test_lease_acquire_and_renew(self, backend: Backend) -> None:
        """The first owner gets a lease; renewing keeps the token and pushes the expiry out."""
        before = time.time()
        first = backend.acquire_lease("exec-1", "worker-a", 30)
        assert (first.execution_id, first.owner) == ("exec-1", "worker-a")
        assert first.expires_at >= before + 30 - 1
        renewed = backend.acquire_lease("exec-1", "worker-a", 60)
        assert renewed.token == first.token
        assert renewed.expires_at > first.expires_at

    def test_lease_refused_to_other_owner_while_valid(self, backend: Backend) -> None:
        """A second owner cannot take a lease that has not expired; the holder keeps it."""
        held = backend.acquire_lease("exec-1", "worker-a", 30)
        with pytest.raises(LeaseError, match="worker-a"):
            backend.acquire_lease("exec-1", "worker-b", 30)
        assert backend.acquire_lease("exec-1", "worker-a", 30).token == held.token

    def test_leases_are_per_execution(self, backend: Backend) -> None:
        """Holding one execution does not block another."""
        backend.acquire_lease("exec-1", "worker-a", 30)
        other = backend.acquire_lease("exec-2", "worker-b", 30)
        assert other.owner == "worker-b"

    def test_lease_takeover_after_expiry_grows_token(self, backend: Backend) -> None:
        """Once expired, another owner takes the lease with a larger fencing token."""
        stale = backend.acquire_lease("exec-1", "worker-a", self.lease_expiry_s)
        self.wait_for_expiry()
        taken = backend.acquire_lease("exec-1", "worker-b", 30)
        assert taken.owner == "worker-b"
        assert taken.token > stale.token
        with pytest.raises(LeaseError):
            backend.acquire_lease("exec-1", "worker-a", 30)

    def test_renew_extends_the_same_token(self, backend: Backend) -> None:
        """renew_lease keeps the token and pushes the expiry out, also for a lease that expired but
        was not taken over; a write under it is still accepted."""
        first = backend.acquire_lease("exec-1", "worker-a", self.lease_expiry_s)
        renewed = backend.renew_lease(first, 30)
        assert (renewed.owner, renewed.token) == ("worker-a", first.token)
        assert renewed.expires_at > first.expires_at
        short = backend.acquire_lease("exec-2", "worker-a", self.lease_expiry_s)
        self.wait_for_expiry()
        again = asyncio.run(backend.arenew_lease(short, 30))
        assert again.token == short.token
        backend.put(make_header(0, execution_id="exec-2"), b"x", lease=again)
        with pytest.raises(LeaseError):
            backend.acquire_lease("exec-2", "worker-b", 30)

    def test_renew_never_takes_a_lease_back(self, backend: Backend) -> None:
        """A stalled owner whose lease was taken over (even by an owner that is gone since) or
        released cannot renew it: LeaseError, and the current lease is untouched."""
        stale = backend.acquire_lease("exec-1", "worker-a", self.lease_expiry_s)
        self.wait_for_expiry()
        taken = backend.acquire_lease("exec-1", "worker-b", self.lease_expiry_s)
        self.wait_for_expiry()  # the new owner's lease has expired too
        with pytest.raises(LeaseError):
            backend.renew_lease(stale, 30)
        with pytest.raises(LeaseError):
            backend.put(make_header(0), b"zombie", lease=stale)
        assert backend.renew_lease(taken, 30).token == taken.token
        released = backend.acquire_lease("exec-2", "worker-a", 30)
        backend.release_lease(released)
        with pytest.raises(LeaseError):
            backend.renew_lease(released, 30)

    def test_put_with_current_lease_succeeds(self, backend: Backend) -> None:
        """A write fenced by the current lease is stored."""
        lease = backend.acquire_lease("exec-1", "worker-a", 30)
        backend.put(make_header(0), b"fenced", lease=lease)
        backend.put(make_header(1), b"fenced too", lease=backend.acquire_lease("exec-1", "worker-a", 30))
        assert backend.get("exec-1-0").blob == b"fenced"
        assert len(backend.list()) == 2

    def test_stale_lease_put_refused_and_nothing_written(self, backend: Backend) -> None:
        """After a takeover the old owner's put raises LeaseError and stores nothing."""
        stale = backend.acquire_lease("exec-1", "worker-a", self.lease_expiry_s)
        backend.put(make_header(0), b"before", lease=stale)
        self.wait_for_expiry()
        current = backend.acquire_lease("exec-1", "worker-b", 30)
        with pytest.raises(LeaseError):
            backend.put(make_header(1, checkpoint_id="zombie"), b"late write", lease=stale)
        with pytest.raises(CheckpointNotFoundError):
            backend.get("zombie")
        assert _ids(backend.list()) == ["exec-1-0"]
        # the slot is still free for the rightful owner
        backend.put(make_header(1), b"new owner", lease=current)
        assert backend.get("exec-1-1").blob == b"new owner"

    def test_put_with_lease_never_acquired_refused(self, backend: Backend) -> None:
        """A lease object the store never granted does not pass the fencing check."""
        forged = backend.acquire_lease("exec-2", "worker-a", 30)
        with pytest.raises(LeaseError):
            backend.put(make_header(0), b"x", lease=Lease("exec-1", "worker-a", forged.token, forged.expires_at))
        assert backend.list() == []

    def test_start_execution_leases_and_stores(self, backend: Backend) -> None:
        """start_execution stores the first checkpoint and returns a lease that fences later puts;
        another owner cannot start the same execution while that lease is valid."""
        lease = backend.start_execution(make_header(0), b"first", "worker-a", 30)
        assert (lease.execution_id, lease.owner) == ("exec-1", "worker-a")
        assert backend.get("exec-1-0").blob == b"first"
        backend.put(make_header(1), b"second", lease=lease)
        with pytest.raises(LeaseError):
            backend.start_execution(make_header(2), b"forked", "worker-b", 30)
        assert _ids(backend.list()) == ["exec-1-1", "exec-1-0"]
        assert backend.acquire_lease("exec-1", "worker-a", 30).token == lease.token
        other = asyncio.run(backend.astart_execution(make_header(0, execution_id="e2"), b"async", "worker-c", 30))
        assert (other.execution_id, other.owner, backend.get("e2-0").blob) == ("e2", "worker-c", b"async")

    def test_start_execution_after_a_release_takes_a_larger_token(self, backend: Backend) -> None:
        """An execution whose lease was held and released starts under a larger token, which fences
        the earlier owner's writes."""
        first = backend.acquire_lease("exec-1", "worker-a", 30)
        backend.release_lease(first)
        lease = backend.start_execution(make_header(0), b"first", "worker-b", 30)
        assert (lease.owner, lease.token > first.token) == ("worker-b", True)
        with pytest.raises(LeaseError):
            backend.put(make_header(1), b"stale", lease=first)
        assert _ids(backend.list()) == ["exec-1-0"]

    def test_start_execution_duplicate_leaves_no_lease(self, backend: Backend) -> None:
        """A start_execution whose checkpoint is refused as a duplicate keeps the stored one and holds
        no lease afterwards, so another worker can take the execution at once."""
        backend.put(make_header(0), b"kept")
        with pytest.raises(DuplicateCheckpointError):
            backend.start_execution(make_header(0), b"other", "worker-a", 30)
        assert backend.get("exec-1-0").blob == b"kept"
        assert backend.acquire_lease("exec-1", "worker-b", 30).owner == "worker-b"

    def test_release_lets_another_owner_in(self, backend: Backend) -> None:
        """After release another owner acquires at once, with a larger token; the old lease is fenced."""
        first = backend.acquire_lease("exec-1", "worker-a", 30)
        backend.release_lease(first)
        second = backend.acquire_lease("exec-1", "worker-b", 30)
        assert second.token > first.token
        with pytest.raises(LeaseError):
            backend.put(make_header(0), b"x", lease=first)
        assert backend.list() == []

    def test_release_of_superseded_lease_is_a_no_op(self, backend: Backend) -> None:
        """Releasing a lease that was taken over does not release the new owner's lease."""
        stale = backend.acquire_lease("exec-1", "worker-a", self.lease_expiry_s)
        self.wait_for_expiry()
        current = backend.acquire_lease("exec-1", "worker-b", 30)
        backend.release_lease(stale)
        with pytest.raises(LeaseError):
            backend.acquire_lease("exec-1", "worker-c", 30)
        backend.put(make_header(0), b"still mine", lease=current)
        assert backend.get("exec-1-0").blob == b"still mine"

    def test_large_blobs_are_fenced_like_small_ones(self, backend: Backend) -> None:
        """Blobs of several MB (which a backend may write differently, e.g. into their pages after the
        row) are fenced, refused as duplicates and started with a lease like small ones."""
        big = bytes(range(256)) * (2 * 1024 * 1024 // 256)
        lease = backend.start_execution(make_header(0, size=len(big)), big, "worker-a", self.lease_expiry_s)
        assert backend.get("exec-1-0").blob == big
        with pytest.raises(DuplicateCheckpointError):
            backend.put(make_header(0, size=len(big) + 1), big + b"!", lease=lease)
        self.wait_for_expiry()
        current = backend.acquire_lease("exec-1", "worker-b", 30)
        with pytest.raises(LeaseError):
            backend.put(make_header(1, checkpoint_id="zombie", size=len(big)), big, lease=lease)
        with pytest.raises(CheckpointNotFoundError):
            backend.get("zombie")
        assert _ids(backend.list()) == ["exec-1-0"] and backend.get("exec-1-0").blob == big
        backend.put(make_header(1, size=len(big)), memoryview(big[::-1]), lease=current)
        assert backend.get("exec-1-1").blob == big[::-1]
