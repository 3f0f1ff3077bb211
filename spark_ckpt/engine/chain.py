"""The chain reader: a graph checkpoint made whole from the records written before it.

Most records hold only what changed since the one before (``partial_state``, ``history_start > 0``,
``deltas`` entries in ``node_extras`` and ``inflight``). A record is made whole by reading the
execution's earlier records, newest first, until every part is complete.

Invariants:

* records are read by seq, never by time (a clock that stepped back must not reorder a chain);
* a record built on a boundary (in-flight and failure records, ``base_seq`` set) depends only on
  records up to its base, plus the in-flight journals of the same visit after it: a boundary record
  whose write failed (or was reported failed though it landed) is never mixed into its state;
* a record that holds the whole state (content version 4: the start record, the first record after
  a recovery, every ``FULL_HISTORY_EVERY``-th, the final one) completes the state, so the walk stops
  there for it and takes every adapter state it holds; the journal it may continue from the record
  it names (``HISTORY_FROM``);
* a part that cannot be completed, or content of the wrong shape, is a ``CorruptCheckpointError``
  naming the record.

No Spark import and no I/O of its own: the caller passes the earlier headers and a loader.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import attrs

from ..errors import CheckpointNotFoundError, CorruptCheckpointError
from ..model import GRAPH, CheckpointHeader, GraphCheckpoint
from . import deltas
from .attempts import ATTEMPT_KEY
from .damage import damaged

#: marks a ``node_extras``/``inflight`` entry holding changes (``deltas`` ops), not a whole state
DELTA = "__spark_ckpt_delta__"

#: ``extras`` key of a periodic whole record: the seq of the record whose journal ends where this
#: one's begins (``record_builder`` writes it)
HISTORY_FROM = "history_from"

#: ``extras`` key of a record holding the whole state: visits per node so far, the index of each
#: node's next visit (``frontier``)
COUNTS = "counts"

Loader = Callable[[CheckpointHeader], GraphCheckpoint]


def is_delta(entry: Any) -> bool:
    return isinstance(entry, dict) and DELTA in entry


def stands_alone(record: GraphCheckpoint) -> bool:
    """Whether ``record`` needs no earlier record."""
    return (
        record.history_start == 0 and not record.partial_state and record.base_seq is None
        and not any(is_delta(v) for v in record.node_extras.values())
        and not any(is_delta(v) for v in record.inflight.values())
    )


class DeltaChains:
    """One section of a record (``node_extras``, ``inflight``) made whole: per key, an entry is whole
    or holds ``deltas`` ops against the key's entry in an earlier record. ``feed`` the same
    section of earlier records, newest first, until ``missing`` is empty."""

    def __init__(self, section: dict[str, Any], wanted: Iterable[str] = ()) -> None:
        self.whole = {k: v for k, v in section.items() if not is_delta(v)}
        self.ops = {k: [v[DELTA]] for k, v in section.items() if is_delta(v)}
        self.missing = (set(wanted) | set(self.ops)) - set(self.whole)

    def want(self, keys: Iterable[str]) -> None:
        self.missing |= set(keys) - set(self.whole)

    def feed(self, earlier: dict[str, Any], belongs: Callable[[str, Any], bool] = lambda key, entry: True) -> None:
        for key in list(self.missing):
            entry = earlier.get(key)
            if entry is None or not belongs(key, entry):
                continue  # unchanged in that record (or another visit's): look further back
            if is_delta(entry):
                self.ops.setdefault(key, []).append(entry[DELTA])
                continue
            for ops in reversed(self.ops.pop(key, [])):
                entry = deltas.apply(entry, ops)
            self.whole[key] = entry
            self.missing.discard(key)


class _StateChain:
    """A record's graph and node state made whole: a record with ``partial_state`` holds only what
    changed since the one before, so ``feed`` earlier records, newest first, until ``whole``."""

    def __init__(self, record: GraphCheckpoint) -> None:
        self.records = [record]
        self.whole = not record.partial_state

    def feed(self, earlier: GraphCheckpoint) -> None:
        if not self.whole:
            self.records.append(earlier)
            self.whole = not earlier.partial_state

    @property
    def run_input(self) -> Any:
        """The execution's input, as the whole record holds it (changes-only records leave it out)."""
        return self.records[-1].run_input

    def made_whole(self) -> tuple[dict[str, Any], dict[str, Any]]:
        graph_state: dict[str, Any] = {}
        node_states: dict[str, Any] = {}
        for record in reversed(self.records):  # oldest first: newer values win
            graph_state.update(record.graph_state)
            for key, items in record.appended_state.items():
                base = graph_state.get(key)
                if not isinstance(base, list):
                    raise CorruptCheckpointError(
                        f"checkpoint {record.checkpoint_id} appends to graph state key {key!r}, which its "
                        "earlier checkpoints do not hold as a list: they are not the ones it was written after"
                    )
                graph_state[key] = base + items
            for key in record.removed_state:
                graph_state.pop(key, None)
            node_states.update(record.node_states)
        return graph_state, node_states


def make_whole(
    record: GraphCheckpoint, earlier: Iterable[CheckpointHeader], load: Loader, wanted_extras: Iterable[str] = (),
    *, newest_first: bool = False, with_history: bool = True,
) -> GraphCheckpoint:
    """``record`` with its execution's entire journal, whole state and every adapter state, read back
    from the ``earlier`` headers of its execution (any order; others are skipped) through ``load``.

    ``wanted_extras``: adapter nodes whose state the result must hold even if ``record`` does not
    mention them (a reader that knows the graph); without it, those of the whole record reached.
    ``newest_first``: ``earlier`` is already ordered by seq, newest first (read lazily: the walk stops
    once the record is whole, so a long execution's headers are not all gone through for each record).
    ``with_history``: False leaves the journal as the record holds it (``history_start`` unchanged):
    the state alone is made whole, reading back only to the record holding the whole state.
    """
    with damaged(f"checkpoint {record.checkpoint_id}"):  # content of the wrong shape, in it or before it
        earlier = _Rereadable(earlier)
        try:
            return _walk(record, earlier, load, wanted_extras, newest_first, with_history, links=True)
        except _LinkBroken:
            # a record named by a link is damaged, missing or does not continue the journal: the
            # records in between hold the same visits, one by one
            return _walk(record, earlier, load, wanted_extras, newest_first, with_history, links=False)


class _Rereadable:
    """An iterable read lazily (a listing is made only if the walk needs it), and again from the start."""

    def __init__(self, items: Iterable[CheckpointHeader]) -> None:
        self._items = iter(items)
        self._read: list[CheckpointHeader] = []

    def __iter__(self) -> Any:
        yield from self._read
        for item in self._items:
            self._read.append(item)
            yield item


class _LinkBroken(Exception):
    """The walk followed a ``HISTORY_FROM`` link and could not complete the journal that way (the
    error, as its cause, may come from the records the link skipped)."""


def journal_end(record: GraphCheckpoint) -> int:
    """The journal position after ``record``'s last visit."""
    return record.history_start + len(record.execution_history)


def link_of(record: GraphCheckpoint) -> int | None:
    """The seq of the record whose journal ends where ``record``'s begins, if it names one (a periodic
    whole record: ``record_builder.HISTORY_FROM``)."""
    link = record.extras.get(HISTORY_FROM) if record.execution_history and record.history_start else None
    return link if type(link) is int and link < record.seq else None


def _walk(
    record: GraphCheckpoint, earlier: Iterable[CheckpointHeader], load: Loader, wanted_extras: Iterable[str],
    newest_first: bool, with_history: bool, links: bool,
) -> GraphCheckpoint:
    extras = DeltaChains(record.node_extras, wanted_extras)
    inflight = DeltaChains(record.inflight)
    state = _StateChain(record)
    needed = record.history_start if with_history else 0  # visits [0, needed) still missing
    if needed == 0 and not extras.missing and not inflight.missing and state.whole and record.base_seq is None:
        return record
    # records after this one's base hold nothing it builds on but in-flight journals of the same visit
    limit = record.seq - 1 if record.base_seq is None else record.base_seq
    segments = [record.execution_history]
    same_visit = lambda key, entry: entry.get("visit_index") == record.inflight[key]["visit_index"]  # noqa: E731
    # when only the journal is missing, a periodic whole record names the record its journal
    # continues: the walk goes there without reading the records in between
    jump = link_of(record) if links and needed else None
    followed = False
    # a record that cannot be read is passed over only while the records read after it were written
    # by the attempt the walk is in (``record``'s, then, once the record it resumed, ``from_seq``, is
    # read, the attempt that wrote that one, and so on): another attempt's records may hold other
    # visits at the same positions (a recovery that fell back past them continued the execution
    # without them; they may lie below ``from_seq`` too)
    attempt = record.extras.get(ATTEMPT_KEY)
    passed_over: Exception | None = None
    for header in earlier if newest_first else sorted(earlier, key=lambda h: h.seq, reverse=True):
        if needed == 0 and not extras.missing and not inflight.missing and state.whole:
            break
        if header.seq >= record.seq or header.kind != GRAPH or header.execution_id != record.execution_id:
            continue
        if header.seq > limit:
            if inflight.missing:
                inflight.feed(load(header).inflight, same_visit)
            continue
        if jump is not None and header.seq > jump and state.whole and not extras.missing and not inflight.missing:
            followed = True
            continue
        try:
            older = load(header)
        except (CorruptCheckpointError, CheckpointNotFoundError) as exc:
            if followed:
                raise _LinkBroken() from exc
            if state.whole and not extras.missing and not inflight.missing and not links and attempt is not None:
                # only visits are still missing: a damaged periodic record's are in the records
                # around it too (the walk ends incomplete if they are not)
                passed_over = passed_over or exc
                continue
            raise
        written_by = older.extras.get(ATTEMPT_KEY)
        if written_by != attempt:
            resumed_from = attempt.get("from_seq") if isinstance(attempt, dict) else None
            if type(resumed_from) is int and older.seq == resumed_from:
                attempt = written_by  # the record the walk's attempt continued from
            elif passed_over is not None:
                raise passed_over
        was_whole = state.whole
        state.feed(older)
        if state.whole and not was_whole:
            extras.want(older.node_extras)  # the whole record holds every adapter state
        extras.feed(older.node_extras)
        # an in-flight journal continues only records of the same visit
        inflight.feed(older.inflight, same_visit)
        end = journal_end(older)
        if needed and older.execution_history and older.history_start < needed <= end:  # (not one covered already)
            segments.append(older.execution_history[: needed - older.history_start])
            needed = older.history_start
            jump = link_of(older) if links and needed else None
        elif followed and header.seq == jump:  # the named record does not end where the journal resumes
            raise _LinkBroken() from CorruptCheckpointError(f"checkpoint {header.checkpoint_id} does not continue the journal")
        if older.base_seq is not None:
            limit = min(limit, older.base_seq)
    if needed or extras.ops or inflight.ops or not state.whole:
        if followed:
            raise _LinkBroken() from CorruptCheckpointError("the journal is incomplete along its links")
        raise CorruptCheckpointError(
            f"checkpoint {record.checkpoint_id} of execution {record.execution_id} is incomplete without "
            "earlier checkpoints that are missing (pruned by hand, or damaged); use the execution's "
            "final checkpoint, or an earlier intact one"
        )
    if with_history:
        history, history_start = [visit for segment in reversed(segments) for visit in segment], 0
    else:
        history, history_start = record.execution_history, record.history_start
    graph_state, node_states = state.made_whole()
    return attrs.evolve(record, execution_history=history, history_start=history_start, node_extras=extras.whole,
                        inflight=inflight.whole, graph_state=graph_state, node_states=node_states,
                        partial_state=False, removed_state=[], appended_state={}, run_input=state.run_input,
                        base_seq=None)
