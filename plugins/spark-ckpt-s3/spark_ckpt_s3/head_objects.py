"""The S3 backend's executions index (``spark_ckpt.backends.heads``): one head object per execution.

``heads/<execution_id>`` holds the header of the highest seq ever stored, with the writer's ``tag``.
S3 has no transactions, so it is written after the checkpoint is published, and only forward: with
``If-Match: <etag>`` of the head it read (``If-None-Match: *`` when there is none), so of two
writers the later one to commit re-reads it and writes only if it is still behind. Deleting
checkpoints leaves it alone. A writer killed between the two requests (or whose head write
failed) leaves the head one write behind, never ahead: readers (``execution_head``,
``executions``) take the later of it and the newest listed checkpoint (``heads.newest``). A put
under a lease checks the head object before publishing, so right after such a crash the rules
hold from the head before the lost write; each position can still be published only once.
Cost: one ``PutObject`` per put (``If-Match`` the ETag this process last saw, so no read first),
and under a lease one ``GetObject`` of the head, sent together with the lease read and the id
pointer's write (the round trips per put stay three). ``executions()`` lists ``heads/`` once and
reads only the heads whose ETag changed.

With the optional index (``external_index``) its own executions index does this job, and no head
object is written.

Invariants: a head object only moves forward (``heads.advance``), never past a published checkpoint;
the ETag cached here is never newer than the object's.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import attrs

from spark_ckpt.backends import heads
from spark_ckpt.backends.leases import check_fence
from spark_ckpt.errors import BackendError
from spark_ckpt.model import CheckpointHeader, Lease

from .layout import _damaged, _head_from_json, _head_json, _short
from .objects import _CONDITION_FAILED, _CONDITIONAL_ATTEMPTS


class HeadObjects:
    """Mixin of ``S3Backend``: reading, advancing and re-tagging head objects (or the index's heads).
    Needs the host's ``_index``, ``_head_cache``, ``_executor`` and the request helpers."""

    _index: Any
    _head_cache: dict[str, tuple[str, CheckpointHeader]]
    _executor: ThreadPoolExecutor
    _cache_lock: threading.Lock

    def _read_for_leased_put(self, execution_id: str) -> tuple[Future, Future]:
        """Start reading the lease and the execution's head (object, or the index's) in parallel."""
        read_head = self._index.execution_head if self._index is not None else self._read_head
        return self._executor.submit(self._read_lease, execution_id), self._executor.submit(read_head, execution_id)

    def _check_leased_put(
        self, header: CheckpointHeader, lease: Lease, reads: tuple[Future, Future]
    ) -> tuple[CheckpointHeader | None, str | None] | None:
        """Raise unless ``lease`` is current and the execution's head lets it write ``header``
        (``heads.advance``); returns the head object and its ETag (None with an index), to advance from."""
        current, _ = reads[0].result()
        found = reads[1].result()
        check_fence(current, lease, header.execution_id)
        if self._index is not None:
            heads.advance(found, header, leased=True)
            return None
        heads.advance(found[0], header, leased=True)
        return found

    def _index_after_publishing(
        self, header: CheckpointHeader, head_state: tuple[CheckpointHeader | None, str | None] | None
    ) -> None:
        """Index the published checkpoint: the index row (which advances the index's head), else the head object."""
        if self._index is not None:
            self._index_put(header)
            return
        try:
            self._advance_head(header, head_state)
        except BackendError as exc:
            raise BackendError(
                f"checkpoint {header.checkpoint_id} was stored in {self.describe()}, but the head of execution "
                f"{header.execution_id} was not advanced ({exc}); readers still see the checkpoint (the head "
                "lags it by this write)"
            ) from exc

    def _remember_head(self, execution_id: str, etag: str, head: CheckpointHeader) -> None:
        with self._cache_lock:
            if len(self._head_cache) > 10_000:  # bound the memory of very long-lived workers
                self._head_cache.clear()
            self._head_cache[execution_id] = (etag, head)

    def _read_head(self, execution_id: str) -> tuple[CheckpointHeader | None, str | None]:
        """The head object and its ETag; (None, None) if the execution has none."""
        key = self._head_key(execution_id)
        found = self._get_object(key)
        if found is None:
            return None, None
        head = _head_from_json(found["Body"], self._where(key))
        if head.execution_id != execution_id:
            raise _damaged(f"the head object {self._where(key)}", f"it names execution {_short(head.execution_id)}")
        self._remember_head(execution_id, found["ETag"], head)
        return head, found["ETag"]

    def _advance_head(
        self, header: CheckpointHeader, state: tuple[CheckpointHeader | None, str | None] | None = None
    ) -> None:
        """Move the head object forward to ``header`` (its checkpoint is published). ``state`` is the
        head and ETag read before publishing; else the one this process last saw is assumed (no read).
        A write whose condition failed (another writer moved it) reads it again."""
        execution_id = header.execution_id
        if state is None:
            with self._cache_lock:
                cached = self._head_cache.get(execution_id)
            # nothing known here: most often a new execution, so try to create it before reading it
            state = (cached[1], cached[0]) if cached is not None else (None, None)
        for _ in range(_CONDITIONAL_ATTEMPTS):
            if state is None:
                state = self._read_head(execution_id)
            head, etag = state
            if not heads.advance(head, header, leased=False):
                return  # (heads only grow: a head known here is never ahead of the real one)
            condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
            written = self._call(
                "head write", self._s3.put_object, none_on=_CONDITION_FAILED,
                Bucket=self.bucket, Key=self._head_key(execution_id), Body=_head_json(header),
                ContentType="application/json", **condition,
            )
            if written is not None:
                self._remember_head(execution_id, written["ETag"], header)
                return
            state = None  # another writer moved it meanwhile: read it again
        raise BackendError(f"the head object kept changing under other writers ({_CONDITIONAL_ATTEMPTS} attempts)")

    def _heads_of(self, execution_ids: set[str]) -> dict[str, CheckpointHeader]:
        """The head objects of these executions: one listing of ``heads/``, then a read of each head
        not cached with the listed ETag."""
        if not execution_ids:
            return {}
        wanted = {self._head_key(execution_id): execution_id for execution_id in execution_ids}
        found: dict[str, CheckpointHeader] = {}
        stale: list[str] = []
        listed = [obj for obj in self._objects(self._key("heads") + "/") if obj["Key"] in wanted]
        with self._cache_lock:
            for obj in listed:
                execution_id = wanted[obj["Key"]]
                cached = self._head_cache.get(execution_id)
                if cached is not None and cached[0] == obj["ETag"]:
                    found[execution_id] = cached[1]
                else:
                    stale.append(execution_id)
        for execution_id, (head, _) in zip(stale, self._executor.map(self._read_head, stale)):
            if head is not None:
                found[execution_id] = head
        return found

    def _newest_stored(self, objects: list[dict[str, Any]]) -> CheckpointHeader | None:
        """The header of the highest seq among one execution's listed objects (zero-padded keys)."""
        for obj in sorted(objects, key=lambda o: o["Key"], reverse=True):
            found = self._headers_of([obj])
            if found:
                return found[0]
        return None  # (each one deleted between the listing and now)

    def execution_head(self, execution_id: str) -> CheckpointHeader | None:
        if self._index is not None:
            return self._index.execution_head(execution_id)
        head, _ = self._read_head(execution_id)
        # the head object may lag the newest checkpoint by one write (its writer died in between)
        prefix = self._prefix_for(head.graph_id if head is not None else None, execution_id)
        stored = self._newest_stored(list(self._objects(prefix))) if prefix is not None else None
        return heads.newest(head, stored)

    def _retag_head(self, header: CheckpointHeader) -> None:
        """Key rotation: the head object gets ``header``'s tag if it is still at that seq."""
        for _ in range(_CONDITIONAL_ATTEMPTS):
            head, etag = self._read_head(header.execution_id)
            if head is None or head.seq != header.seq:
                return
            retagged = attrs.evolve(head, tag=header.tag)
            written = self._call(
                "head write", self._s3.put_object, none_on=_CONDITION_FAILED,
                Bucket=self.bucket, Key=self._head_key(header.execution_id), Body=_head_json(retagged),
                ContentType="application/json", IfMatch=etag,
            )
            if written is not None:
                self._remember_head(header.execution_id, written["ETag"], retagged)
                return
        raise BackendError(f"the head object kept changing under other writers ({_CONDITIONAL_ATTEMPTS} attempts)")
