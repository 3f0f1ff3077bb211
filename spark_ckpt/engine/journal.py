"""The journal: the visits of one execution, recorded as they complete and replayed on recovery.

A visit is keyed by ``(node_key, index)``: ``index`` counts that node's visits within the execution, so
the key is the same in every process that runs the execution. What a visit consumed is kept with it
(``input_from``, see ``deliveries``), so a replay feeds it the same input whatever order siblings
delivered in.

Invariants:

* ``entries`` are the visits this process completed or replayed, in that order, as plain data
  (once a record held one, as its JSON: ``RecordBuilder._encode_entries``), from journal position
  ``offset`` (0, or, continued from a frontier, where the journal of the record holding the whole
  state it was read back to begins: ``frontier``); visits up to ``persisted`` are in stored records,
  the next record stores the rest;
* ``replay`` holds the visits of the record being resumed that were not replayed yet; every one
  lies in a superstep up to ``resumed_through`` (records are written at superstep boundaries), so
  when that superstep ends ``replay`` is empty, or the replay did not reproduce the run;
* an in-flight entry (a visit's calls journaled while it runs, e.g. an agent's) lives until that
  visit completes; stored records hold it whole, or as changes against the entry last stored for
  the same visit (``inflight_fields``).

No Spark import, no I/O.
"""

from __future__ import annotations

from typing import Any


from ..codec import to_data
from ..codec.convert import faithful_copy
from ..model import GraphCheckpoint, Visit
from . import deltas
from .chain import DELTA
from .deliveries import Deliveries
from .unsafe_visits import UnsafeVisits, split


class Journal:
    """The visits of one execution (see the module docstring)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.entries: list[dict[str, Any]] = []
        #: the journal position of ``entries[0]``
        self.offset = 0
        self.persisted = 0
        self.replay: dict[tuple[str, int], Visit] = {}
        #: last superstep covered by the record this execution resumed from (-1: a fresh run)
        self.resumed_through = -1
        #: the origin of each pending input (replay by what a visit consumed)
        self.deliveries = Deliveries()
        #: per node, the origins of the pending inputs the resumed record stored (restored in that
        #: order once the replayed prefix is done)
        self.frontier: dict[str, list[Any]] | None = None
        #: in-flight journals by node: ``{"visit_index": int, "data": ...}``
        self.inflight: dict[str, Any] = {}
        #: per node in flight: (its entry as last stored, records since a whole one)
        self.inflight_stored: dict[str, tuple[dict[str, Any], int]] = {}
        #: in-flight journals of the resumed record, handed to the visit that continues them
        self.inflight_recovered: dict[str, Any] = {}
        #: events published by visits still running, by visit key; they go into the visit's entry
        #: when it completes (``Visit.events``)
        self.published: dict[tuple[str, int], list[Any]] = {}
        #: visits of nodes not safe to re-run that started and are not yet in a stored boundary
        #: (``unsafe_visits``); None until the first one (or a resumed record holding some)
        self.unsafe: UnsafeVisits | None = None

    @classmethod
    def resuming(cls, record: GraphCheckpoint, *, same_execution: bool) -> "Journal":
        """The journal of an execution continued from ``record`` (made whole)."""
        journal = cls()
        journal.replay = {(v.node_key, v.index): v for v in record.execution_history}
        journal.persisted = len(record.execution_history) if same_execution else 0
        journal.resumed_through = max((v.superstep for v in record.execution_history), default=-1)
        if record.version >= 4 and journal.resumed_through >= 0:
            journal.frontier = {key: snap.pending_from or [None] * len(snap.pending_inputs)
                                for key, snap in record.node_states.items()}
        inflight, markers = split(record.inflight)
        journal.inflight_recovered = dict(inflight)
        # still in flight until those visits complete: a failure record must keep them
        journal.inflight = dict(inflight)
        if markers:  # (a recovery allowed to run them again): carried until they ran and were stored
            journal.unsafe = UnsafeVisits(markers)
        return journal

    @classmethod
    def at_frontier(cls, record: GraphCheckpoint, counts: dict[str, int]) -> "Journal":
        """The journal of an execution continued in place from the frontier of ``record``, which holds
        the visits from the first of the newest record holding the whole state on (``frontier.read``)."""
        journal = cls()
        journal.entries = [_visit_data(v) for v in record.execution_history]
        journal.offset = record.history_start
        journal.persisted = journal.offset + len(journal.entries)
        journal.counts = dict(counts)
        journal.resumed_through = record.superstep
        return journal

    # -- visits (the node wrapper counts them in ``counts`` inline: it runs once per visit) -------------
    def replayed(self, visit: Visit) -> None:
        self.entries.append(_visit_data(visit))

    def completed(self, entry: dict[str, Any]) -> None:
        """A live visit completed (``entry``: a ``Visit`` as data); its in-flight journal ends."""
        self.entries.append(entry)
        if self.inflight:
            key = entry["node_key"]
            self.inflight.pop(key, None)
            self.inflight_stored.pop(key, None)

    def unreached(self) -> tuple[int, tuple[str, int]] | None:
        """``(how many, the first)`` of the resumed visits not replayed yet, or None."""
        if not self.replay:
            return None
        return len(self.replay), min(self.replay)

    # -- what records store ---------------------------------------------------------------------------
    @property
    def end(self) -> int:
        """The journal position after the last visit."""
        return self.offset + len(self.entries)

    def whole(self) -> list[dict[str, Any]]:
        """Every visit of the execution (also those still to replay: a forked execution's start);
        only when this process holds them all (``offset`` 0)."""
        assert not self.offset, "a journal continued from a frontier holds only its newest visits"
        return self.entries + [_visit_data(v) for v in self.replay.values()]

    def since(self, start: int) -> list[dict[str, Any]]:
        """The visits from journal position ``start`` on."""
        return self.entries[start - self.offset:]

    def since_persisted(self) -> tuple[int, list[dict[str, Any]]]:
        """``(history_start, visits)``: what the next changes-only record holds."""
        return self.persisted, self.since(self.persisted)

    def stored(self, end: int) -> None:
        """Visits up to ``end`` are in a stored (or queued) record."""
        self.persisted = max(self.persisted, end)

    def inflight_fields(self, whole_every: int) -> dict[str, Any]:
        """The in-flight journals for an in-flight record: per visit, the changes since the record
        stored before (a visit making hundreds of calls stores each call once, not its whole journal
        again per call); whole the first time and every ``whole_every`` records."""
        fields: dict[str, Any] = {}
        for key, entry in self.inflight.items():
            # a private copy: the next delta is computed against it
            entry = faithful_copy(entry, what=f"in-flight journal of node {key!r}")
            stored = self.inflight_stored.get(key)
            if stored is not None and stored[0]["visit_index"] == entry["visit_index"] and stored[1] < whole_every:
                fields[key] = {"visit_index": entry["visit_index"], DELTA: deltas.diff(stored[0], entry)}
                self.inflight_stored[key] = (entry, stored[1] + 1)
            else:
                fields[key] = entry
                self.inflight_stored[key] = (entry, 0)
        return fields


def _visit_data(visit: Visit) -> dict[str, Any]:
    return to_data(visit)
