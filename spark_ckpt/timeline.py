"""What happened to one execution, read back from its stored records: attempts, visits, checkpoints,
failures and forks (``spark-ckpt timeline`` draws it, ``spark-ckpt report`` charts it as HTML).

Nothing extra is written for it: the records already hold each visit's start and duration (the
journal), their seq, time, size and status, a failure record's failure, and, since attempts are
recorded (``engine.attempts``), the attempt that wrote each one: first run or recovery N, when it
began, which worker owned it and which record it resumed.

Read back:

* the journal is rebuilt in seq order from each record's ``history_start`` and visits; a visit is
  attributed to the attempt whose record journaled it first (the attempt that ran it live);
* recovery k replayed exactly the journal of the record it resumed (``from_seq``): those visits are
  marked ``replayed_by`` k, unless it continued from that record's frontier (``Attempt.frontier``:
  nothing replayed); visits journaled by an attempt and later cut by a recovery that resumed an
  older record (a fallback) are ``discarded``: they ran, but their work was redone;
* an attempt whose newest record is still "running" while a later attempt exists was stopped (a
  crash, a kill, a lost lease): the visit running then left no trace, so the gap from its last record
  to the next attempt is shown as "process stopped";
* records written before attempts were recorded count as the previous record's attempt (0 first);
* a visit first seen in a recovery's record that started before the recovery began was run by an
  earlier attempt whose records are gone (pruned): it counts as that one's, replayed.

No Spark import. Each record is decoded once.
"""

from __future__ import annotations

from typing import Any

import attrs

from .engine.attempts import ATTEMPT_KEY
from .errors import CheckpointNotFoundError
from .model import FAILED, GRAPH, RUNNING, GraphCheckpoint

LIVE, REPLAYED, SKIPPED, DISCARDED = "live", "replayed", "skipped", "discarded"


@attrs.define
class VisitSpan:
    """One journaled visit: ``attempt`` ran it (-1: the execution it was forked from did), ``mode``
    live or skipped, or discarded (redone after a fallback); ``replayed_by``: recoveries that replayed it."""

    node: str
    index: int
    superstep: int
    start: float
    end: float
    attempt: int
    mode: str = LIVE
    replayed_by: list[int] = attrs.field(factory=list)

    @property
    def shown_as(self) -> str:
        """How a chart colours it: replayed when a recovery reused it, else its mode."""
        return REPLAYED if self.replayed_by and self.mode == LIVE else self.mode


@attrs.define
class CheckpointMark:
    seq: int
    checkpoint_id: str
    time: float
    bytes: int
    status: str
    attempt: int


@attrs.define
class FailureMark:
    attempt: int
    seq: int
    time: float
    node: str
    index: int
    error_type: str
    error: str


@attrs.define
class Attempt:
    """One process's part of the execution. ``end``: completed, failed, waiting, stopped (a later
    attempt took over from its last record) or running (its newest record is the execution's newest)."""

    n: int
    began_at: float
    ended_at: float
    owner: str
    first_seq: int
    last_seq: int
    end: str = RUNNING
    from_seq: int | None = None
    #: the node a recovery continued from without replaying the journal (nothing replayed)
    frontier: str | None = None
    takeover: bool = False
    fork_of: str | None = None
    replayed: list[list[Any]] = attrs.field(factory=list)
    live: list[list[Any]] = attrs.field(factory=list)

    @property
    def label(self) -> str:
        name = "first run" if self.n == 0 else f"recovery {self.n}"
        if self.fork_of:
            name += f" (fork of {self.fork_of})"
        if self.owner:
            name += f" (worker {self.owner}{', took the lease over' if self.takeover else ''})"
        return name


@attrs.define
class Timeline:
    graph_id: str
    execution_id: str
    status: str
    started_at: float
    ended_at: float
    attempts: list[Attempt]
    visits: list[VisitSpan]
    checkpoints: list[CheckpointMark]
    failures: list[FailureMark]
    #: the checkpoint this execution was forked from; the fork that replaced it (and from which record)
    forked_from: str | None = None
    superseded_by: str | None = None
    fork_from: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(c.bytes for c in self.checkpoints)

    @property
    def nodes(self) -> list[str]:
        """Node keys in the order they first ran (failures included)."""
        seen: dict[str, None] = {}
        for visit in sorted(self.visits, key=lambda v: v.start):
            seen.setdefault(visit.node, None)
        for failure in self.failures:
            if failure.node:
                seen.setdefault(failure.node, None)
        return list(seen)

    def count(self, shown_as: str) -> int:
        return sum(1 for v in self.visits if v.shown_as == shown_as)

    def to_data(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        for attempt, raw in zip(self.attempts, data["attempts"]):
            raw["label"] = attempt.label
        for visit, raw in zip(self.visits, data["visits"]):
            raw["shown_as"] = visit.shown_as
        data["total_bytes"] = self.total_bytes
        return data


def build_timeline(backend: Any, codec: Any, execution_id: str) -> Timeline:
    """The timeline of ``execution_id`` from its stored records (``CheckpointNotFoundError`` if none)."""
    from .codec import Identity

    headers = sorted((h for h in backend.list(execution_id=execution_id) if h.kind == GRAPH), key=lambda h: h.seq)
    if not headers:
        raise CheckpointNotFoundError(
            f"no graph checkpoints of execution {execution_id!r}; `spark-ckpt list --executions` lists them")
    journal: list[VisitSpan | None] = []
    length_at: dict[int, int] = {}
    attempts: list[Attempt] = []
    by_n: dict[int, Attempt] = {}
    checkpoints, failures, discarded = [], [], []
    forked_from = superseded_by = fork_from = None
    current: dict[str, Any] = {"n": 0}
    record: GraphCheckpoint | None = None
    for header in headers:
        try:
            stored = backend.get(header.checkpoint_id)
        except CheckpointNotFoundError:  # pruned meanwhile
            continue
        record = codec.decode(stored.blob, GraphCheckpoint,
                              expected=Identity(header.graph_id, header.execution_id, header.seq))
        extras = record.extras if isinstance(record.extras, dict) else {}
        info = extras.get(ATTEMPT_KEY)
        if isinstance(info, dict) and type(info.get("n")) is int:
            current = info
        n = current["n"]
        attempt = by_n.get(n)
        if attempt is None:
            attempt = _new_attempt(current, record, attempts[-1] if attempts else None)
            attempts.append(attempt)
            by_n[n] = attempt
            if attempt.from_seq is not None and attempt.frontier is None:  # a recovery replays the journal of the record it resumed
                for visit in journal[: length_at.get(attempt.from_seq, record.history_start)]:
                    if visit is not None:
                        visit.replayed_by.append(n)
                        attempt.replayed.append([visit.node, visit.index])
        attempt.ended_at, attempt.last_seq = record.timestamp, record.seq
        attempt.end = record.status
        if forked_from is None and isinstance(extras.get("forked_from"), str):
            forked_from = extras["forked_from"]
        if isinstance(extras.get("superseded_by"), str):
            superseded_by, fork_from = extras["superseded_by"], extras.get("fork_from")
        inherited = record.seq == headers[0].seq and forked_from is not None
        _journal(journal, record, -1 if inherited else n, attempt, inherited, discarded)
        length_at[record.seq] = len(journal)
        checkpoints.append(CheckpointMark(record.seq, record.checkpoint_id, record.timestamp, header.size,
                                          record.status, n))
        if record.status == FAILED and record.failure is not None:
            f = record.failure
            failures.append(FailureMark(n, record.seq, record.timestamp, f.node_key, f.index, f.error_type, f.error))
    if record is None:
        raise CheckpointNotFoundError(f"the checkpoints of execution {execution_id!r} were deleted while reading")
    for earlier in attempts[:-1]:
        if earlier.end == RUNNING:
            earlier.end = "stopped"
    visits = [v for v in journal if v is not None] + discarded
    return Timeline(
        graph_id=record.graph_id, execution_id=execution_id, status=record.status,
        started_at=min([a.began_at for a in attempts] + [c.time for c in checkpoints]),
        ended_at=record.timestamp, attempts=attempts, visits=sorted(visits, key=lambda v: (v.start, v.node)),
        checkpoints=checkpoints, failures=failures, forked_from=forked_from or attempts[0].fork_of,
        superseded_by=superseded_by, fork_from=fork_from,
    )


def _new_attempt(info: dict[str, Any], record: GraphCheckpoint, previous: Attempt | None) -> Attempt:
    began = info.get("began_at")
    owner = info.get("owner") if isinstance(info.get("owner"), str) else ""
    from_seq = info.get("from_seq") if type(info.get("from_seq")) is int else None
    return Attempt(
        n=info["n"], began_at=float(began) if isinstance(began, (int, float)) else record.timestamp,
        ended_at=record.timestamp, owner=owner, first_seq=record.seq, last_seq=record.seq, from_seq=from_seq,
        takeover=previous is not None and bool(owner) and owner != previous.owner,
        fork_of=info.get("fork_of") if isinstance(info.get("fork_of"), str) else None,
        frontier=info.get("frontier") if isinstance(info.get("frontier"), str) else None,
    )


def _journal(journal: list[VisitSpan | None], record: GraphCheckpoint, n: int, attempt: Attempt,
             inherited: bool, discarded: list[VisitSpan]) -> None:
    """Lay the record's visits over the journal from its ``history_start``. A record continues where
    its previous one ended, or repeats the whole journal; one that starts before the end (a recovery
    that fell back to an older record) cuts the visits beyond: they ran, but were redone."""
    start = record.history_start
    if start > len(journal):  # the records that held those visits were pruned
        journal.extend([None] * (start - len(journal)))
    cut = journal[start:]
    del journal[start:]
    for offset, visit in enumerate(record.execution_history):
        before = cut[offset] if offset < len(cut) else None
        if before is not None and (before.node, before.index, before.start) == (
                visit.node_key, visit.index, visit.started_at):
            journal.append(before)  # the same visit stored again (a whole record)
            cut[offset] = None
            continue
        span = VisitSpan(visit.node_key, visit.index, visit.superstep, visit.started_at,
                         visit.started_at + max(visit.duration_s, 0.0), n,
                         SKIPPED if visit.status == "skipped" else LIVE)
        if inherited:  # a fork's start record: the source execution ran them, the fork replays them
            span.replayed_by.append(0)
        elif n > 0 and visit.started_at < attempt.began_at:
            # first seen in a recovery's record, but started before it began: an earlier attempt ran
            # it (its records were deleted), this one replayed it
            span.attempt = n - 1
            span.replayed_by.append(n)
            attempt.replayed.append([span.node, span.index])
        else:
            attempt.live.append([span.node, span.index])
        journal.append(span)
    for before in cut:
        if before is not None:
            before.mode = DISCARDED
            discarded.append(before)


@attrs.define
class Segment:
    """Where one attempt is drawn: its times ``t0``..``t1`` over ``x0``..``x1``."""

    attempt: int
    t0: float
    t1: float
    x0: float
    x1: float

    def x(self, t: float) -> float:
        span = self.t1 - self.t0
        share = (t - self.t0) / span if span > 0 else 0.0
        return self.x0 + min(max(share, 0.0), 1.0) * (self.x1 - self.x0)


class Layout:
    """A time axis for drawing: each attempt (and the visits a fork inherited, as attempt -1) gets an
    equal share of ``width``, scaled to its own duration, with ``gap`` between them for the time the
    execution was stopped. Milliseconds of work beside a minute of downtime stay readable."""

    def __init__(self, timeline: Timeline, width: float, gap: float) -> None:
        spans: dict[int, list[float]] = {}

        def widen(n: int, *times: float) -> None:
            span = spans.setdefault(n, [min(times), max(times)])
            span[0], span[1] = min(span[0], *times), max(span[1], *times)

        for visit in timeline.visits:
            widen(visit.attempt, visit.start, visit.end)
        for attempt in timeline.attempts:
            widen(attempt.n, attempt.began_at, attempt.ended_at)
        for mark in timeline.checkpoints:
            widen(mark.attempt, mark.time)
        order = sorted(spans, key=lambda n: (spans[n][0], n))
        share = (width - gap * (len(order) - 1)) / max(len(order), 1)
        self.segments: dict[int, Segment] = {}
        x = 0.0
        for n in order:
            self.segments[n] = Segment(n, spans[n][0], spans[n][1], x, x + share)
            x += share + gap
        self.order = order

    def x(self, t: float, attempt: int) -> float:
        return self.segments[attempt].x(t)
