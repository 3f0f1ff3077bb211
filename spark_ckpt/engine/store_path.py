"""The store path: an execution's records encoded and put under its lease, in order, as the durability
mode says; the lease kept alive while the execution runs; retention after a run.

Invariants:

* records are numbered in the order they are built (``next_seq``) and put in that order;
* a fresh execution's first record takes the lease in the same write (``start_execution``);
  every later one is fenced by it;
* the last boundary record (``last_blob``) is set only once its put succeeded: a record built on it
  (in-flight journals, a failure) never stacks on a record that is not in the store;
* the lease is only ever extended under its own token (``renew``); once it is gone the writer is
  ``fenced`` and the execution must stop: no live work starts after that;
* each write is timed (encoding plus put, ``on_stored`` gets the duration) and a graph record carries
  the execution's write totals as of just before it was encoded (``engine.write_stats``).

No Spark import.
"""

from __future__ import annotations

import asyncio
import logging
import time
from time import perf_counter
from typing import Any, Awaitable, Callable

import attrs

from ..backends.base import Backend, LocalBackend
from ..backends.leases import release_quietly
from ..codec import Codec, Identity
from ..errors import CodecError, LeaseError
from ..model import GRAPH, RUNNING, BlobParts, CheckpointHeader, Lease
from ..retention import prune
from .durability import DurableWriter
from .attempts import ATTEMPT_KEY
from .value_parts import parts_in_state, take_values
from .write_stats import EXTRAS_KEY, WriteStats

log = logging.getLogger("spark_ckpt.store")

#: fields of a graph record left out of what is stored while they hold these values, ``GraphCheckpoint``'s
#: defaults (the decoder puts them back): most records change little, and these were ~20% of their bytes
_LEFT_OUT_AT_DEFAULT: dict[str, Any] = {
    "superstep": 0, "run_input": None, "graph_state": {}, "node_states": {}, "partial_state": False,
    "removed_state": [], "appended_state": {}, "current_node": None, "history_start": 0, "skip_nodes": [],
    "skip_outputs": {}, "failure": None, "result": None, "inflight": {}, "node_extras": {}, "base_seq": None,
}


def lean(data: dict[str, Any]) -> dict[str, Any]:
    """A graph record without the fields that hold their default (compared by type too: 0 is not False)."""
    defaults = _LEFT_OUT_AT_DEFAULT
    return {key: value for key, value in data.items()
            if (default := defaults.get(key, _KEPT)) is _KEPT or type(value) is not type(default) or value != default}


_KEPT = object()

#: boundary records at least this large are read back from a local store when a record is built on
#: them (rare: in-flight journals, failures) rather than held in memory while the next one is built
_LARGE_RECORD = 1 << 18

#: ``on_stored(header, duration_s)``: a record is in the store, its write (encode + put) took
#: ``duration_s`` seconds (fires ``spark_ckpt_post_checkpoint``)
OnStored = Callable[[CheckpointHeader, float], Awaitable[None]]


class RecordWriter:
    """Encodes and stores the records of one execution under its lease (see the module docstring)."""

    def __init__(
        self, backend: Backend, codec: Codec, *, durability: str, owner: str, ttl_s: float,
        next_seq: int = 0, lease: Lease | None = None, on_stored: OnStored | None = None,
    ) -> None:
        self.backend = backend
        self.codec = codec
        self.durability = durability
        self.owner = owner
        self.ttl_s = ttl_s
        # a local backend's aput only calls put: calling put saves a coroutine per record
        self.put_directly = type(backend).aput is LocalBackend.aput
        self.tags_heads = codec.index_tags.enabled
        #: records at least this large go to the backend in parts (None: it takes bytes only)
        self.parts_from: int | None = backend.takes_blob_parts
        #: graph state values at least this large are stored apart, once (``value_parts``; the
        #: builder makes them ``ValuePart``); None: inline
        self.values_apart: int | None = (
            backend.takes_values if self.parts_from is not None and codec.writes_plain_json else None
        )
        self.on_stored = on_stored
        #: seq of the next record built; the one this process took the execution up at
        self.next_seq = self.first_seq = next_seq
        self.lease = lease
        #: monotonic time by which the lease must have been renewed before live work may start
        self.lease_deadline = float("inf")
        #: set when the lease was lost: this worker must stop
        self.fenced: LeaseError | None = None
        #: the last boundary record stored, as encoded, with its status, seq and id (None: none yet); a
        #: large one is read back when needed instead (``_LARGE_RECORD``: b"")
        self.last_blob: bytes | None = None
        self.last_id: str | None = None
        self.last_status: str | None = None
        self.last_seq: int | None = None
        #: under "exit" only the newest record is kept, as each then stands alone
        self.writes = DurableWriter(durability, newest_only=True)
        #: the execution's write totals, carried in its records (None: not kept, see ``resumed_on``)
        self.stats: WriteStats | None = WriteStats()
        #: which attempt at the execution this process makes, carried in every graph record
        #: (``engine.attempts``): one constant dict, nothing computed per record
        self.attempt: dict[str, Any] | None = None

    def resumed_on(self, blob: bytes, seq: int, checkpoint_id: str, writes: Any = None) -> None:
        """The record this execution resumes from is the base of the records built on a boundary;
        ``writes``: its ``extras["writes"]``, the totals carried on (none kept without them)."""
        self._boundary_stored(blob, RUNNING, seq, checkpoint_id)
        self.stats = WriteStats.resuming(writes, len(blob))

    def _boundary_stored(self, blob: bytes | BlobParts, status: str, seq: int, checkpoint_id: str) -> None:
        # a large record in a local store is not held until the next one is built: it is read back
        # if ever needed (a remote store's would be read with a blocking call inside the loop)
        if (len(blob) >= _LARGE_RECORD or type(blob) is BlobParts and blob.has_values) and self.put_directly:
            self.last_blob = b""
        else:
            self.last_blob = blob.join() if type(blob) is BlobParts else blob
        self.last_status, self.last_seq, self.last_id = status, seq, checkpoint_id

    def base_data(self) -> dict[str, Any]:
        """The last boundary record stored, decoded (records built on a boundary start from it)."""
        blob = self.last_blob or self.backend.get(self.last_id).blob
        data, _ = self.codec.decode_data(blob)
        return data

    @property
    def written(self) -> int:
        """Records built since this process took the execution up."""
        return self.next_seq - self.first_seq

    # -- storing ------------------------------------------------------------------------------------
    def encode(self, data: dict[str, Any]) -> tuple[CheckpointHeader, bytes | BlobParts]:
        """A record written outside a run (a manual checkpoint, an edited state's fork, an approval):
        its large graph state values stored apart as a run's are (``value_parts.parts_in_state``), so
        the bytes are ``BlobParts`` for a backend that takes them."""
        if self.values_apart is not None and data.get("graph_state") and not data.get("partial_state"):
            data = {**data, "graph_state": parts_in_state(data["graph_state"], self.values_apart)}
        return self._encoded(data, in_parts=self.parts_from is not None)

    def _encoded(self, data: dict[str, Any], *, in_parts: bool) -> tuple[CheckpointHeader, bytes | BlobParts]:
        """The record's header and bytes; ``in_parts``: a large one as ``BlobParts`` for a backend that
        writes parts (``Backend.takes_blob_parts``), so it is never copied into one buffer."""
        meta = data["graph_metadata"]
        identity = Identity(meta["graph_id"], meta["execution_id"], data["seq"])
        record = lean(data)
        values = None
        if self.values_apart is not None and record.get("graph_state"):
            record["graph_state"], values = take_values(record["graph_state"], apart=in_parts)
        try:
            if in_parts:
                blob: bytes | BlobParts = self.codec.encode_data_in_parts(record, identity, values)
                if type(blob) is BlobParts and not blob.has_values and len(blob) < self.parts_from:
                    blob = blob.join()  # (small: one buffer is cheaper)
            else:
                blob = self.codec.encode_data(record, identity)
        except CodecError as exc:
            raise type(exc)(f"graph {meta['graph_id']!r}, checkpoint seq {data['seq']}: {exc}") from None
        # (positional: a third cheaper than keywords, once per record)
        header = CheckpointHeader(data["checkpoint_id"], meta["graph_id"], meta["execution_id"], data["seq"],
                                  data["timestamp"], data["status"], GRAPH, len(blob))
        if self.tags_heads:
            header = attrs.evolve(header, tag=self.codec.index_tags.tag(header))
        return header, blob

    async def store(self, data: dict[str, Any], *, wait: bool) -> CheckpointHeader:
        """Encode now (so later mutation cannot leak in), write according to the durability mode
        (``wait``: stored before this returns)."""
        started = perf_counter()
        stats = self.stats
        extras = data.get("extras")
        if type(extras) is dict:  # a graph record
            if stats is not None:
                if stats.started_at is None:
                    stats.started_at = data.get("timestamp")
                extras[EXTRAS_KEY] = stats.as_data()
            if self.attempt is not None:
                extras[ATTEMPT_KEY] = self.attempt
        header, blob = self._encoded(data, in_parts=self.parts_from is not None)
        encode_s = perf_counter() - started
        if stats is not None:
            stats.encoded(encode_s)
        self.next_seq = header.seq + 1
        # in-flight records stack on the boundary record; they never replace it
        boundary = not (data["inflight"] and header.status == RUNNING)
        if wait and self.writes.idle:  # durability "sync": the write is stored before the next superstep
            await self._put(header, blob, boundary, encode_s)
        else:
            await self.writes.write(lambda: self._put(header, blob, boundary, encode_s), wait=wait)
        return header

    async def _put(self, header: CheckpointHeader, blob: bytes | BlobParts, boundary: bool, encode_s: float) -> None:
        started = perf_counter()
        if self.lease is None:  # a fresh execution's start record: takes the lease in the same write
            self.lease = await self.backend.astart_execution(header, blob, self.owner, self.ttl_s)
            self.lease_deadline = time.monotonic() + self.ttl_s / 2
        elif self.put_directly:
            self.backend.put(header, blob, lease=self.lease)
        else:
            await self.backend.aput(header, blob, lease=self.lease)
        put_s = perf_counter() - started
        if self.stats is not None:
            self.stats.stored(header.size, encode_s + put_s, put_s)
        if boundary:  # (only once stored: records built on it must never stack on a lost one)
            self._boundary_stored(blob, header.status, header.seq, header.checkpoint_id)
        if self.on_stored is not None:
            await self.on_stored(header, encode_s + put_s)

    async def flush(self) -> None:
        await self.writes.flush()

    # -- the lease ----------------------------------------------------------------------------------
    async def acquire(self, execution_id: str) -> None:
        self.lease = await self.backend.aacquire_lease(execution_id, self.owner, self.ttl_s)
        self.lease_deadline = time.monotonic() + self.ttl_s / 2

    async def renew(self) -> None:
        """Extend the lease under its own token; ``LeaseError`` (and ``fenced``) once it is gone."""
        try:
            self.lease = await self.backend.arenew_lease(self.lease, self.ttl_s)
        except LeaseError as exc:
            if self.fenced is None:
                log.error("lost the lease on execution %s; this worker stops: %s", self.lease.execution_id, exc)
                self.fenced = exc
            raise
        self.lease_deadline = time.monotonic() + self.ttl_s / 2

    async def check_lease(self) -> None:
        """Before live work once the lease is due (the renewer fell behind: a blocked loop, a stopped
        process): renew it now, or raise ``LeaseError`` if it was taken over."""
        if self.fenced is None and self.lease is not None:
            try:
                await self.renew()
            except LeaseError:
                pass  # recorded in fenced
        if self.fenced is not None:
            raise self.fenced

    async def release(self) -> None:
        await release_quietly(self.backend, self.lease)


class LeaseRenewer:
    """Renews a writer's lease every ttl/3 while its execution runs (``RecordWriter.renew``: the same
    token, so a worker whose lease was taken over while it stalled learns it and stops).

    A timer handle rather than a task: most runs finish long before the first renewal, and creating
    plus cancelling a task per run costs more than the whole record write.
    """

    def __init__(self, writer: RecordWriter) -> None:
        self.writer = writer
        self.interval = writer.ttl_s / 3
        self.loop = asyncio.get_running_loop()
        self.handle: asyncio.TimerHandle | None = self.loop.call_later(self.interval, self._due)
        self.task: asyncio.Task | None = None

    def _due(self) -> None:
        self.task = self.loop.create_task(self._renew())

    async def _renew(self) -> None:
        if self.writer.lease is not None:
            try:
                await self.writer.renew()
            except LeaseError:
                return  # the execution was taken over: this worker stops (``fenced``)
            except Exception:
                log.warning("lease renewal failed; retrying", exc_info=True)
        if self.handle is not None:
            self.handle = self.loop.call_later(self.interval, self._due)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.task is not None:
            self.task.cancel()


class RetentionSchedule:
    """Retention after a run: a count rule once the owner wrote half the count since it last pruned
    (and at its first run), so storage stays within 1.5x the count at an amortized cost; other rules
    after every run. Kept records that need older ones are rebased first (``retention.prune``)."""

    def __init__(self, config: Any, rules: list[Any]) -> None:
        self.rules = rules
        count = config.retention_count
        self.every = max(1, count // 2) if count is not None and not config.retention_max_age_s \
            and not config.retention else 1
        self.written = self.every

    def after_run(self, backend: Backend, graph_id: str, written: int, rebase: Any) -> None:
        self.written += written
        if not self.rules or self.written < self.every:
            return
        self.written = 0
        try:
            prune(backend, self.rules, graph_id=graph_id, rebase=rebase)
        except Exception:
            log.warning("retention pruning failed; checkpoints kept", exc_info=True)
