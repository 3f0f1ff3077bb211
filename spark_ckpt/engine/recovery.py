"""The recovery planner: which execution to continue, from which record, or why not.

It claims the execution's lease first and reads the executions index again under it, so a finished
execution is never run again; then it picks the newest record that decodes, belongs to this graph and
can be made whole, passing over damaged ones (reported in ``RecoveryReport.fell_back``).

Invariants:

* the executions index head is the authority for status and newest seq (``backends.heads``);
  with encryption on it must authenticate (``codec.index_tags``);
* records the head says were written but that are gone stop recovery (``MissingCheckpointError``):
  continuing from older ones would run finished work again. A record that is there but damaged is
  passed over. When nothing verifies: ``UnrecoverableExecutionError``, never "nothing to recover";
* a record of another graph, or of this graph's changed structure (unless allowed), is refused
  (``GraphMismatchError``) before anything runs.

No Spark import.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

import attrs

from ..backends.leases import claim
from ..codec import Codec
from ..executions import what_exists
from ..errors import (
    CheckpointNotFoundError, CorruptCheckpointError, GraphMismatchError, MissingCheckpointError,
    NothingToRecoverError, UnrecoverableExecutionError,
)
from ..model import GRAPH, CheckpointHeader, GraphCheckpoint, Lease
from . import chain, frontier, records

log = logging.getLogger("spark_ckpt.recovery")


@attrs.define
class RecoveryReport:
    """What a recovery did: which visits came from the journal and which ran live."""

    execution_id: str
    from_checkpoint: str | None
    replayed: list[tuple[str, int]] = attrs.field(factory=list)
    live: list[tuple[str, int]] = attrs.field(factory=list)
    skipped: list[tuple[str, int]] = attrs.field(factory=list)
    fell_back: list[str] = attrs.field(factory=list)  # checkpoints that failed to verify and were passed over
    #: the execution had completed (another worker finished it): its stored result was returned, nothing ran
    already_completed: bool = False
    #: ``skip_node`` requests the continuation never reached (their node had no further visit)
    unused_skips: list[str] = attrs.field(factory=list)
    #: nested runs (a subgraph visit's inner run) that ran during this recovery: where each continued from
    subgraphs: list[Any] = attrs.field(factory=list)
    #: ``run_with_recovery``: its strategy, and every attempt it made (``RecoveryStep``), in order
    strategy: str | None = None
    steps: list[Any] = attrs.field(factory=list)
    #: the execution was closed by another that replaced it (a fork or fresh run of ``run_with_recovery``)
    superseded_by: str | None = None
    #: a long journal's recovery continued from the record's frontier, at this node, without replaying
    #: the visits before it one by one (``replayed`` is then empty: none ran again)
    from_frontier: str | None = None


class RecoveryPlanner:
    """Reads and chooses a graph's records for recovery (see the module docstring)."""

    def __init__(
        self, backend: Any, codec: Codec, *, graph_id: str, structure: str, allow_graph_change: bool,
        owner: str, ttl_s: float, wanted_extras: Iterable[str] = (),
        check_whole: Callable[[GraphCheckpoint], None] = lambda record: None,
    ) -> None:
        self.backend = backend
        self.codec = codec
        self.graph_id = graph_id
        self.structure = structure
        self.allow_graph_change = allow_graph_change
        self.owner = owner
        self.ttl_s = ttl_s
        #: adapter nodes whose state a record made whole must hold (``chain.make_whole``)
        self.wanted_extras = wanted_extras
        #: ``CorruptCheckpointError`` unless a record made whole can be continued (the adapter's
        #: check of what it rebuilds on replay): recovery falls back past one that cannot
        self.check_whole = check_whole

    # -- reading records ------------------------------------------------------------------------------
    def decode(self, blob: bytes, header: CheckpointHeader | None = None) -> GraphCheckpoint:
        return records.decode_record(self.codec, blob, header)

    def check(self, record: GraphCheckpoint) -> None:
        """``GraphMismatchError`` unless ``record`` is this graph's, of its structure (or a change is allowed)."""
        if record.kind != GRAPH:
            raise GraphMismatchError(f"checkpoint {record.checkpoint_id} is an {record.kind} checkpoint, not a graph's")
        if record.graph_id != self.graph_id:
            raise GraphMismatchError(
                f"checkpoint {record.checkpoint_id} belongs to graph {record.graph_id!r}, not {self.graph_id!r}; "
                "pass the matching graph_id to checkpointed()"
            )
        stored_structure = record.extras.get("structure")
        if stored_structure and stored_structure != self.structure and not self.allow_graph_change:
            raise GraphMismatchError(
                f"graph {self.graph_id!r} changed structure since checkpoint {record.checkpoint_id} was written "
                f"(structure {stored_structure} -> {self.structure}): replaying its journal could route "
                "differently. Restore the previous graph code, or set CheckpointConfig(allow_graph_change=True) "
                "if the change is compatible"
            )

    def make_whole(self, record: GraphCheckpoint, decoded: dict[int, GraphCheckpoint] | None = None) -> GraphCheckpoint:
        """``record`` with its execution's whole journal, state and adapter states (``chain``);
        ``decoded``: records already decoded, by seq (filled as more are read)."""
        def earlier() -> Any:  # listed only if the record does not stand alone
            yield from self.backend.list(execution_id=record.execution_id)

        return chain.make_whole(record, earlier(), self._loader({} if decoded is None else decoded), self.wanted_extras)

    def _loader(self, cache: dict[int, GraphCheckpoint]) -> chain.Loader:
        """Records read and decoded once each, by seq, into ``cache``."""
        def load(header: CheckpointHeader) -> GraphCheckpoint:
            found = cache.get(header.seq)
            if found is None:
                found = cache[header.seq] = self.decode(self.backend.get(header.checkpoint_id).blob, header)
            return found

        return load

    def load(self, checkpoint_id: str) -> GraphCheckpoint:
        """The record ``checkpoint_id``, checked and made whole."""
        stored = self.backend.get(checkpoint_id)
        record = self.decode(stored.blob, stored.header)
        self.check(record)
        return self.make_whole(record)

    # -- choosing the execution and its lease -----------------------------------------------------------
    async def newest_unfinished(self) -> str:
        unfinished = [h for h in await self.backend.aexecutions(graph_id=self.graph_id, unfinished_only=True)
                      if h.kind == GRAPH]
        if unfinished:
            return unfinished[0].execution_id
        raise NothingToRecoverError(
            f"graph {self.graph_id!r} has no unfinished execution in {self.backend.describe()}; nothing to "
            f"recover. Start a new run with `await graph.run(inputs)`. {what_exists(self.backend, graph_id=self.graph_id)}"
        )

    async def head(self, execution_id: str) -> CheckpointHeader | None:
        """The execution's head in the executions index, authenticated when encryption is on."""
        head = await self.backend.aexecution_head(execution_id)
        if head is not None:
            self.codec.index_tags.check(head)
        return head

    async def claim(self, execution_id: str, wait: bool | float, *, graph_id: str | None = None
                    ) -> tuple[Lease | None, CheckpointHeader]:
        """The lease of an unfinished execution, or ``(None, head)`` once it completed (``leases.claim``);
        ``graph_id``: an execution stored under another graph id than this graph's (a task batch's)."""
        graph_id = graph_id or self.graph_id

        async def read_head() -> CheckpointHeader:
            head = await self.head(execution_id)
            if head is None:
                raise NothingToRecoverError(
                    f"graph {graph_id!r} has no execution {execution_id!r} in {self.backend.describe()}; nothing "
                    f"to recover. {what_exists(self.backend, graph_id=graph_id, execution_id=execution_id)}"
                )
            if head.graph_id != graph_id or head.kind != GRAPH:
                owner = f"graph {head.graph_id!r}" if head.kind == GRAPH else f"{head.kind} {head.graph_id!r}"
                raise NothingToRecoverError(
                    f"execution {execution_id!r} in {self.backend.describe()} belongs to {owner}, not to graph "
                    f"{graph_id!r}; nothing was run. Recover it with the {head.kind} it belongs to"
                    + (f" (checkpointed(..., graph_id={head.graph_id!r}))" if head.kind == GRAPH else "")
                )
            return head

        return await claim(self.backend, execution_id, self.owner, self.ttl_s, wait, read_head)

    # -- choosing the record ---------------------------------------------------------------------------
    async def latest_verified(self, execution_id: str, head: CheckpointHeader) -> tuple[GraphCheckpoint, list[str]]:
        """Newest record of the execution that decodes, verifies and can be made whole; earlier ones
        when it does not (reported in ``fell_back``). Refuses when records behind the head are gone."""
        headers = sorted(await self.backend.alist(execution_id=execution_id), key=lambda h: h.seq, reverse=True)
        newest = headers[0].seq if headers else None
        fell_back: list[str] = []
        if (newest is None or newest < head.seq) and await self._present_but_damaged(head):
            fell_back.append(head.checkpoint_id)  # left out of listings (a damaged file header): damaged, not gone
        elif newest is None or newest < head.seq:
            missing = head.seq - newest if newest is not None else head.seq + 1
            raise MissingCheckpointError(
                f"execution {execution_id} of graph {self.graph_id!r}: the executions index says checkpoint "
                f"seq {head.seq} ({head.status}) was written, but the newest stored is "
                f"{'seq ' + str(newest) if newest is not None else 'none'}: {missing} checkpoint(s) are gone "
                "(deleted, or the store was partly restored from an older backup). Continuing from what is "
                "left would run finished work again, so nothing was run. Restore the missing checkpoints, "
                "or fork from one you choose with continue_from_checkpoint(<id>)"
            )
        decoded: dict[int, GraphCheckpoint] = {}
        for header in headers:
            try:
                record = decoded.get(header.seq) or self.decode((await self.backend.aget(header.checkpoint_id)).blob, header)
                decoded[header.seq] = record
            except CheckpointNotFoundError:
                continue  # deleted since the listing
            except CorruptCheckpointError as exc:
                # torn, altered or swapped bytes: an earlier record may be intact. Key and format
                # problems (wrong key, plaintext refused ...) are not: every earlier one fails alike.
                log.warning("checkpoint %s failed to verify (%s); falling back to the previous one", header.checkpoint_id, exc)
                fell_back.append(header.checkpoint_id)
                continue
            self.check(record)
            try:
                whole = self.make_whole(record, decoded)
                self.check_whole(whole)
                return whole, fell_back
            except CorruptCheckpointError as exc:
                log.warning("checkpoint %s cannot be completed (%s); falling back", header.checkpoint_id, exc)
                fell_back.append(header.checkpoint_id)
        raise UnrecoverableExecutionError(
            f"execution {execution_id} of graph {self.graph_id!r} has no checkpoint that verifies "
            f"({len(fell_back)} failed: {', '.join(fell_back) or 'none stored'}); nothing was run. "
            "Run `spark-ckpt verify`; start a new run, or continue from a checkpoint file you kept"
        )

    async def frontier(self, execution_id: str, head: CheckpointHeader,
                       eligible: Callable[[frontier.Frontier], bool]) -> frontier.Frontier | None:
        """The frontier of the execution's newest record (``frontier``), reading only the records since
        the newest one holding the whole state; None when its journal is short, ``eligible`` says the
        graph cannot continue from it, or anything about it is not whole and readable (then
        ``latest_verified`` reads the whole journal, and around damaged records)."""
        headers = await self.backend.atail(execution_id, frontier.FRONTIER_LISTING)
        if not headers or headers[0].seq != head.seq:
            return None
        load = self._loader({})
        try:
            record = load(headers[0])
        except (CorruptCheckpointError, CheckpointNotFoundError):
            return None
        self.check(record)  # another graph's, or a changed structure: refused, as on the other path
        if chain.journal_end(record) < frontier.FRONTIER_AFTER_VISITS:
            return None
        found = frontier.read(record, headers[1:], load, self.wanted_extras)
        if found is None or not eligible(found):
            return None
        try:
            self.check_whole(found.record)
        except CorruptCheckpointError:
            return None
        return found

    async def _present_but_damaged(self, header: CheckpointHeader) -> bool:
        try:
            await self.backend.aget(header.checkpoint_id)
        except CheckpointNotFoundError:
            return False
        except CorruptCheckpointError:
            return True
        return True  # readable by id though not listed: recovery reads what is listed, and falls back

    def completed(self, head: CheckpointHeader) -> GraphCheckpoint:
        """A completed execution's final record, made whole (``MissingCheckpointError`` if gone)."""
        try:
            stored = self.backend.get(head.checkpoint_id)
        except CheckpointNotFoundError:
            raise MissingCheckpointError(
                f"execution {head.execution_id} of graph {self.graph_id!r} completed (executions index, seq "
                f"{head.seq}), but its final checkpoint {head.checkpoint_id} is gone; it is not run again. "
                "Restore that checkpoint from a backup to read its result"
            ) from None
        record = self.decode(stored.blob, stored.header)
        self.check(record)
        return self.make_whole(record)
