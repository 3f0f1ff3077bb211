"""In-process backend: fast, for tests and development. Data is gone when the process exits.

What it hands out is checked like any store's rows (``rows``): its dicts are reachable from the
process, so a caller poking at them must not turn a listing into a TypeError."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import ClassVar

import attrs

from ..errors import CheckpointNotFoundError, DuplicateCheckpointError
from ..model import CheckpointHeader, Lease, StoredCheckpoint
from . import heads
from .base import LocalBackend, newest_first
from .rows import checked, checked_blob, storable
from .leases import check_fence, extend_lease, grant_lease


class MemoryBackend(LocalBackend):
    name = "memory"
    url_schemes = ("memory",)
    durable = False

    # One store per URL location, so two configs naming "memory://shared" see the same data.
    _stores: ClassVar[dict[str, MemoryBackend]] = {}

    def __init__(self) -> None:
        """An empty store of this process (``MemoryBackend()``, the guide's development backend)."""
        self._items: dict[str, StoredCheckpoint] = {}
        self._by_position: dict[tuple[str, int], str] = {}
        self._leases: dict[str, Lease] = {}
        self._heads: dict[str, CheckpointHeader] = {}  # the executions index
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **options: object) -> MemoryBackend:
        location = url.split("://", 1)[1] if "://" in url else ""
        if not location:
            return cls()
        return cls._stores.setdefault(location, cls())

    def put(self, header: CheckpointHeader, blob: bytes, *, lease: Lease | None = None) -> None:
        storable(header, self.describe())
        with self._lock:
            check_fence(self._leases.get(header.execution_id), lease, header.execution_id)
            position = (header.execution_id, header.seq)
            if position in self._by_position or header.checkpoint_id in self._items:
                raise DuplicateCheckpointError(
                    f"checkpoint seq {header.seq} of execution {header.execution_id} already exists; not overwritten"
                )
            if heads.advance(self._heads.get(header.execution_id), header, leased=lease is not None):
                self._heads[header.execution_id] = header
            stored = attrs.evolve(header, tag=None) if header.tag is not None else header
            self._items[header.checkpoint_id] = StoredCheckpoint(stored, bytes(blob))
            self._by_position[position] = header.checkpoint_id

    def execution_head(self, execution_id: str) -> CheckpointHeader | None:
        head = self._heads.get(execution_id)
        return checked(head, self.describe(), row="head") if head is not None else None

    def get(self, checkpoint_id: str) -> StoredCheckpoint:
        try:
            item = self._items[checkpoint_id]
        except KeyError:
            raise CheckpointNotFoundError(f"no checkpoint with id {checkpoint_id!r} in memory backend") from None
        checked(item.header, self.describe())
        checked_blob(item.blob, item.header, self.describe())
        return item

    def _sorted(self) -> list[CheckpointHeader]:
        return sorted(
            (checked(item.header, self.describe()) for item in list(self._items.values())),
            key=newest_first,
            reverse=True,
        )

    def list(self, *, graph_id=None, execution_id=None, limit=None) -> list[CheckpointHeader]:
        out = [
            h for h in self._sorted()
            if (graph_id is None or h.graph_id == graph_id)
            and (execution_id is None or h.execution_id == execution_id)
        ]
        return out[:limit] if limit is not None else out

    def executions(self, *, graph_id=None, unfinished_only=False, limit=None) -> list[CheckpointHeader]:
        stored: dict[str, CheckpointHeader] = {}  # per execution, its highest seq stored
        for h in self._sorted():
            if (graph_id is None or h.graph_id == graph_id) and h.seq > getattr(stored.get(h.execution_id), "seq", -1):
                stored[h.execution_id] = h
        latest = (heads.newest(self.execution_head(e), h) for e, h in stored.items())
        out = sorted((attrs.evolve(h, tag=None) for h in latest), key=newest_first, reverse=True)
        if unfinished_only:
            out = [h for h in out if h.unfinished]
        return out[:limit] if limit is not None else out

    def delete(self, checkpoint_ids: Iterable[str]) -> int:
        n = 0
        with self._lock:
            for cid in checkpoint_ids:
                item = self._items.pop(cid, None)
                if item is not None:
                    self._by_position.pop((item.header.execution_id, item.header.seq), None)
                    n += 1
        return n

    def replace(self, header: CheckpointHeader, blob: bytes) -> None:
        with self._lock:
            current = self._items.get(header.checkpoint_id)
            if current is None or (current.header.execution_id, current.header.seq) != (header.execution_id, header.seq):
                raise CheckpointNotFoundError(f"no checkpoint with id {header.checkpoint_id!r} in memory backend to replace")
            self._items[header.checkpoint_id] = StoredCheckpoint(attrs.evolve(header, tag=None), bytes(blob))
            head = self._heads.get(header.execution_id)
            if header.tag is not None and head is not None and head.seq == header.seq:
                self._heads[header.execution_id] = attrs.evolve(head, tag=header.tag)

    def acquire_lease(self, execution_id: str, owner: str, ttl_s: float) -> Lease:
        with self._lock:
            lease = grant_lease(self._leases.get(execution_id), execution_id, owner, ttl_s, time.time())
            self._leases[execution_id] = lease
            return lease

    def renew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        with self._lock:
            renewed = extend_lease(self._leases.get(lease.execution_id), lease, ttl_s, time.time())
            self._leases[lease.execution_id] = renewed
            return renewed

    def release_lease(self, lease: Lease) -> None:
        with self._lock:
            current = self._leases.get(lease.execution_id)
            if current is not None and current.token == lease.token and current.owner == lease.owner:
                # keep the token so the next owner's token still grows; just expire it
                self._leases[lease.execution_id] = Lease(lease.execution_id, "", lease.token, 0.0)
