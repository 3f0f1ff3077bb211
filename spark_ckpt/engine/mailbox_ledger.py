"""The mailbox ledger: the messages of one long-running execution and the committed cut of its state.

In a long-running (actor-style) execution every node consumes messages from its mailbox one at a
time. The unit of durability is one *visit*: one node processing one message. A visit commits
atomically: the message it consumed, the messages it sent (held back until the commit), its graph
state writes and the node's state go into one record together, and only then are its messages
delivered. The ledger keeps what a record needs:

* ``queued``: per node, in mailbox order, the messages committed as sent (or journaled from
  outside) and not yet consumed by a committed visit; a message being processed stays queued until
  its visit commits, so a crash puts it back at the front of its mailbox;
* ``shadow``: the committed graph state: the state before the run with the writes of committed
  visits applied in the order they were made (plus writes made outside any visit, applied at once).
  A record never holds a write of a visit that has not committed;
* ``counts``: visits begun per node, so a visit's key ``(node, index)`` and the ids of the messages
  it sends (``node:index:n``) are the same in every process that runs it.

Isolation. Visits of different nodes run concurrently over one shared graph state. A visit that
reads or overwrites a key whose last write belongs to a visit not committed yet *depends* on that
visit: it commits only together with it or after it (``committable``), so a record never holds an
effect derived from a write it does not hold. Visits that depend on each other commit in one record.

No Spark import, no I/O.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

#: the message Spark puts into the start node's mailbox when the run starts
INITIAL = "initial"
_ABSENT = object()
_DELETED = object()


class Visit:
    """One node processing one message (see the module docstring)."""

    __slots__ = ("node", "index", "message_id", "writes", "read_keys", "sends", "depends_on", "done",
                 "committed", "aborted", "started_at", "order")

    def __init__(self, node: str, index: int, message_id: str, started_at: float) -> None:
        self.node = node
        self.index = index
        self.message_id = message_id
        #: key -> (write seq, value as written or _DELETED)
        self.writes: dict[str, tuple[int, Any]] = {}
        self.read_keys: set[str] = set()
        #: (target node, message id, message as data, delivery handle), in the order sent
        self.sends: list[tuple[str, str, Any, Any]] = []
        self.depends_on: set[Visit] = set()
        self.done = False
        self.committed = False
        self.aborted = False
        self.started_at = started_at
        self.order = 0  # position in done order (commit order inside a group)

    def next_message_id(self) -> str:
        return f"{self.node}:{self.index}:{len(self.sends)}"


class MailboxLedger:
    """Messages, visits and the committed state of one long-running execution."""

    def __init__(self, shadow: dict[str, Any], *, queued: dict[str, list[dict[str, Any]]] | None = None,
                 counts: dict[str, int] | None = None, externals: int = 0) -> None:
        self.shadow = shadow
        self.queued: dict[str, list[dict[str, Any]]] = {k: list(v) for k, v in (queued or {}).items()}
        self.counts: dict[str, int] = dict(counts or {})
        #: messages journaled from outside the graph's visits (their ids: ``external:n``)
        self.externals = externals
        self._seq = 0
        #: key -> (seq, visit or None) of the last write made, committed or not
        self._last_write: dict[str, tuple[int, Visit | None]] = {}
        #: key -> seq of the write the committed state holds: an older write committing later never
        #: replaces a newer one (an outside write, or a visit that committed first)
        self._committed_seq: dict[str, int] = {}
        self._open: list[Visit] = []
        self._done_count = 0
        #: set when the execution ended (failed): nothing commits after it
        self.closed = False

    # -- visits ----------------------------------------------------------------------------------
    def begin(self, node: str, message_id: str, started_at: float) -> Visit:
        index = self.counts.get(node, 0)
        self.counts[node] = index + 1
        visit = Visit(node, index, message_id, started_at)
        self._open.append(visit)
        return visit

    def abort(self, visit: Visit) -> None:
        """The visit failed or was cut off: nothing of it commits (its message stays queued)."""
        visit.aborted = True
        if visit in self._open:
            self._open.remove(visit)

    def read(self, visit: Visit | None, keys: Iterable[str]) -> None:
        if visit is None or visit.committed:
            return
        for key in keys:
            visit.read_keys.add(key)
            self._depend(visit, key)

    def read_all(self, visit: Visit | None) -> None:
        self.read(visit, list(self._last_write))

    def wrote(self, visit: Visit | None, key: str, value: Any, *, deleted: bool = False) -> None:
        """A graph state write; outside a visit (or from a task a committed visit left behind) it is
        committed at once."""
        self._seq += 1
        stored = _DELETED if deleted else copy.deepcopy(value)
        if visit is None or visit.committed or visit.aborted:
            self._apply(key, stored, self._seq)
            self._last_write[key] = (self._seq, None)
            return
        self._depend(visit, key)
        visit.writes[key] = (self._seq, stored)
        self._last_write[key] = (self._seq, visit)

    def _depend(self, visit: Visit, key: str) -> None:
        last = self._last_write.get(key)
        if last is not None and last[1] is not None and last[1] is not visit and not last[1].committed:
            visit.depends_on.add(last[1])

    def sent(self, visit: Visit, target: str, message: Any, handle: Any) -> str:
        message_id = visit.next_message_id()
        visit.sends.append((target, message_id, message, handle))
        return message_id

    def external(self, target: str, message: dict[str, Any], *, front: bool = False) -> str:
        """A message from outside any visit, journaled as queued (``front``: it is being consumed now)."""
        message_id = f"external:{self.externals}"
        self.externals += 1
        entry = dict(message, id=message_id)
        queue = self.queued.setdefault(target, [])
        queue.insert(0, entry) if front else queue.append(entry)
        return message_id

    def enqueue(self, target: str, entry: dict[str, Any]) -> None:
        self.queued.setdefault(target, []).append(entry)

    # -- committing ----------------------------------------------------------------------------------
    def finished(self, visit: Visit) -> None:
        visit.done = True
        self._done_count += 1
        visit.order = self._done_count

    def committable(self) -> list[Visit]:
        """The finished visits that can commit now, in the order they finished: each one's
        dependencies are committed or commit with it."""
        group = {v for v in self._open if v.done and not v.aborted}
        changed = True
        while changed:
            changed = False
            for visit in list(group):
                if any(not d.committed and d not in group for d in visit.depends_on):
                    group.discard(visit)
                    changed = True
        return sorted(group, key=lambda v: v.order)

    def commit(self, group: list[Visit]) -> None:
        """Apply ``group`` to the committed cut: its writes, its consumed messages, its sends."""
        for visit in group:
            for key, (seq, value) in sorted(visit.writes.items(), key=lambda item: item[1][0]):
                self._apply(key, value, seq)  # unless a later write of the key is committed already
            queue = self.queued.get(visit.node, [])
            for position, entry in enumerate(queue):
                if entry["id"] == visit.message_id:
                    del queue[position]
                    break
            for target, message_id, message, _handle in visit.sends:
                self.queued.setdefault(target, []).append(dict(message, id=message_id))
            visit.committed = True
            if visit in self._open:
                self._open.remove(visit)

    def _apply(self, key: str, value: Any, seq: int) -> None:
        if seq < self._committed_seq.get(key, 0):
            return
        self._committed_seq[key] = seq
        if value is _DELETED:
            self.shadow.pop(key, None)
        else:
            self.shadow[key] = value

    def mutated_in_place(self, group: list[Visit], live: dict[str, Any], equal: Callable[[Any, Any], bool]) -> list[str]:
        """Keys ``group`` touched whose live value differs from the committed one although no write
        is outstanding on them: changed without the graph-state API (in place), which no record holds."""
        found = []
        for key in sorted({k for v in group for k in (*v.writes, *v.read_keys)}):
            last = self._last_write.get(key)
            if last is not None and last[1] is not None and not last[1].committed:
                continue  # an uncommitted write is outstanding: live differs by design
            if not equal(live.get(key, _ABSENT), self.shadow.get(key, _ABSENT)):
                found.append(key)
        return found

    def open_visits(self) -> list[Visit]:
        return list(self._open)

    # -- what records store --------------------------------------------------------------------------
    def record_extras(self) -> dict[str, Any]:
        return {"mailboxes": {k: list(v) for k, v in self.queued.items() if v}, "externals": self.externals}
