"""A record's frontier: what continuing an execution needs without replaying its journal.

Replaying a journal runs every visit again through the framework's loop (its recorded output, not
its work), so a recovery's cost grew with the history. A boundary record already holds what the next
superstep needs: the graph state, every node's state with its pending inputs, and (in records holding
the whole state, when written by this version or later) how many times each node was visited
(``COUNTS``). Reading it costs the records since the newest one holding the whole state (``W``, at most
``record_builder.FULL_HISTORY_EVERY`` back), whatever the execution's length.

The execution's journal stays whole in the store without being read: the records written after a
continuation from a frontier hold ``W``'s own visits, the ones since (both read here) and their own,
and name the record ``W`` names (``HISTORY_FROM``), whose journal ends where ``W``'s begins. So every
visit stays in two records, as with periodic records: a damaged ``W`` is read around.

Invariants:

* every record from ``W`` to the one continued is there, readable, and continues the journal of the
  one before it; the counters agree with the visits since ``W``. Otherwise ``read`` returns None and
  the caller replays the whole journal (which reads around damaged records);
* a frontier is only read for a long journal (``FRONTIER_AFTER_VISITS``): a short one replays as
  before, so plugins see its visits replayed one by one.

No Spark import, no I/O of its own: the caller passes the headers and a loader.
"""

from __future__ import annotations

from typing import Any, Iterable

import attrs

from ..errors import CheckpointNotFoundError, CorruptCheckpointError
from ..model import GraphCheckpoint
from . import chain
from .chain import COUNTS, journal_end
from .record_builder import FULL_HISTORY_EVERY

#: a recovery continues from the frontier when the record's journal is at least this long (replay
#: costs ~50 us per visit: a shorter one replays in a few milliseconds, visit by visit)
FRONTIER_AFTER_VISITS = FULL_HISTORY_EVERY

#: headers listed to find ``W``: whole records are at most ``FULL_HISTORY_EVERY`` boundary records
#: apart, plus room for records built on a boundary (in-flight journals, failures)
FRONTIER_LISTING = 4 * FULL_HISTORY_EVERY


@attrs.frozen
class Frontier:
    """Where a continuation starts: ``record`` with its state made whole and, as its journal, the
    visits from ``W``'s first on (``history_start``); ``linked``: the seq of the record holding the
    journal before that (None when ``W``'s journal starts at the execution's first visit)."""

    record: GraphCheckpoint
    linked: int | None
    counts: dict[str, int]

    @property
    def waiting(self) -> list[str]:
        """The nodes with pending inputs: the ones the next superstep runs."""
        return [key for key, snapshot in self.record.node_states.items() if snapshot.pending_inputs]


def read(record: GraphCheckpoint, earlier: Iterable[Any], load: chain.Loader,
         wanted_extras: Iterable[str] = ()) -> Frontier | None:
    """The frontier of ``record`` from its execution's ``earlier`` headers (newest first by seq), or
    None when it cannot be read whole (see the module docstring)."""
    earlier = [h for h in earlier if h.seq < record.seq and h.execution_id == record.execution_id]
    try:
        state = chain.make_whole(record, earlier, load, wanted_extras, newest_first=True, with_history=False)
        found = _since_whole_state(record, earlier, load)
    except (CorruptCheckpointError, CheckpointNotFoundError):
        return None
    if found is None:
        return None
    whole, visits = found
    counts = whole.extras.get(COUNTS)
    if not isinstance(counts, dict) or not all(type(n) is int for n in counts.values()):
        return None
    counts = dict(counts)  # (W's visits included)
    for visit in visits:
        if visit.index != counts.get(visit.node_key, 0):  # the counters do not match the journal
            return None
        counts[visit.node_key] = visit.index + 1
    linked = chain.link_of(whole)
    if whole.history_start and linked is None:
        return None  # its journal does not name where it continues from
    frontier = attrs.evolve(state, execution_history=[*whole.execution_history, *visits],
                            history_start=whole.history_start)
    return Frontier(frontier, linked, counts)


def _since_whole_state(record: GraphCheckpoint, earlier: list[Any], load: chain.Loader
                       ) -> tuple[GraphCheckpoint, list[Any]] | None:
    """``(W, the visits after W's journal up to record's)``: the records from ``record`` back to the
    newest one holding the whole state, each ending its journal where the next one begins."""
    needed = journal_end(record)
    limit = record.seq
    visits: list[Any] = []
    for header in [None, *earlier]:
        older = record if header is None else None
        if older is None:
            if header.seq > limit:
                continue  # after the boundary a record is built on: not part of its chain
            older = load(header)
        if journal_end(older) != needed:
            return None  # a record is missing from the listing, or the journal does not continue
        if not older.partial_state and older.base_seq is None:
            return older, visits
        visits[:0] = older.execution_history
        needed = older.history_start
        if older.base_seq is not None:
            limit = min(limit, older.base_seq)
    return None
