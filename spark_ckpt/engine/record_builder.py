"""The record builder: an execution's next record, holding what changed since the one before.

A boundary record (after a superstep) is whole, or holds only the changes: the graph state keys
whose value changed (and the keys removed; for a list that only grew at its end, the new items), the
nodes read again, the adapter states (agents) that changed, and the visits since the last record.
Records built on the last boundary (an agent's in-flight calls, a failure, a continuation's skips)
carry none of that: they name their base (``base_seq``), and the chain reader makes any of them
whole (``chain``).

Invariants:

* a record holds the whole state when it is the execution's final one, under "exit" durability, the
  first record this process writes for the execution (the start record, the first after a
  recovery), and the one after the start record; it also holds the whole journal (it stands alone)
  unless it is the final one or a journal continued from a frontier, which link as below;
* every ``FULL_HISTORY_EVERY``-th record holds the whole state and agent states, and the journal
  since the whole record before the last one, which it names (``HISTORY_FROM``): bytes stay linear
  in the run's length, every visit is in two records, and one damaged record costs at most that
  many supersteps. The final record is built that way too (under "exit" durability it stands
  alone), and after a continuation from a frontier every whole record is (the process does not
  hold the visits before it);
* a record holding the whole state holds the visit counters (``COUNTS``), so a continuation can
  start from its frontier (``frontier``);
* the run input is only in whole records (it never changes);
* a graph state value is compared through its *mark*: an immutable value (exact str, int, float,
  bool, None) is its own mark; with JSON records a mutable value is marked by its JSON, which also
  goes into the record as it is (encoded once); with another serializer it is stored every time;
* in a whole record, a graph state value at least ``values_apart`` long (a str, or a mutable value's
  JSON) goes in as a ``ValuePart``: a backend that takes values stores it once (``value_parts``). A
  changes-only record holds a changed value inline (hashing each new version would cost more than
  sharing it saves: it is rarely held again);
* only nodes visited or fed since the last record (``dirty``) are read again;
* with JSON records a journal entry is encoded once, the first time a record holds it, and kept as
  that JSON (``_encode_entries``).

Framework-neutral: the adapter gives the live graph state (``StateSource``), reads a node into its
entry, and snapshots adapter nodes. No Spark import, no I/O.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Protocol

import orjson

from ..codec import to_data
from ..codec.convert import dumps_data, faithful_copy
from ..errors import EncodeError
from ..model import COMPLETED, CONTENT_VERSION, GRAPH, RUNNING, GraphCheckpoint, ValuePart, canonical_checkpoint_id
from . import deltas
from .chain import COUNTS, DELTA, HISTORY_FROM
from .value_parts import IMMUTABLE, part_of, parts_in_state

#: a record with the whole state at least this often (the others hold only changes)
FULL_HISTORY_EVERY = 64

_ABSENT = object()


class StateSource(Protocol):
    """The live graph state, as the framework holds it."""

    def raw(self) -> dict[str, Any]:
        """The state dict itself (read, never changed)."""

    def is_bookkeeping(self, key: str) -> bool:
        """Whether ``key`` is the framework's own, left out of records (called for keys starting "__")."""

    def without_bookkeeping(self) -> dict[str, Any]:
        """The state without those keys."""


def appended_json(old: Any, new: Any) -> bytes | None:
    """If JSON ``new`` is the list JSON ``old`` was with items added at its end, the JSON array of
    those items; else None. Compares bytes only: orjson writes a value the same way every time, so
    ``[a,b]`` -> ``[a,b,c]`` is the old text without its ``]``, a comma, then the new items."""
    if type(old) is not bytes or type(new) is not bytes or old[:1] != b"[" or len(new) <= len(old):
        return None
    if old == b"[]":
        return new
    if new[len(old) - 1] != 0x2C or not new.startswith(old[:-1]):  # 0x2C: ","
        return None
    return b"[" + new[len(old):]


def skip_outputs(skip: dict[str, Any]) -> dict[str, Any]:
    """The outputs ``skip_node`` requests were given (the rest pass their input through)."""
    return {key: output for key, output in skip.items() if output is not None}


class RecordBuilder:
    """Builds the records of one execution (see the module docstring)."""

    def __init__(
        self, *, execution_id: str, graph_id: str, graph_version: str, structure: str, json_records: bool,
        always_whole: bool, node_order: dict[str, int], adapter_keys: Iterable[str],
        readers: dict[str, Callable[[], dict[str, Any]]], snapshot_adapter: Callable[[str], Any],
        values_apart: int | None = None,
    ) -> None:
        #: the records' ``graph_metadata``: one dict shared by them (each is encoded at once)
        self.metadata = {"graph_id": graph_id, "graph_version": graph_version, "execution_id": execution_id}
        self.structure = structure
        self.json_records = json_records
        self.always_whole = always_whole  # durability "exit": only the newest record is ever written
        self.node_order = node_order
        self.adapter_keys = list(adapter_keys)
        #: per node, what reads it into its entry (the adapter's)
        self.readers = readers
        self.snapshot_adapter = snapshot_adapter
        #: graph state values whose JSON is at least this large go into whole records as ``ValuePart``
        #: (``value_parts``: stored once by the backend); None: always inline
        self.values_apart = values_apart
        #: the parts of the mutable values of the last whole record, by key (``_part``)
        self.parts: dict[str, ValuePart] = {}
        #: graph state as last stored, per key (see ``_mark``); None: the next record is whole
        self.marks: dict[str, Any] | None = None
        #: node entries as of the last record; only nodes in ``dirty`` are read again (None: all)
        self.node_states: dict[str, Any] = {}
        self.dirty: set[str] | None = None
        #: nodes whose entry has pending inputs (the record's ``current_node``)
        self.waiting: set[str] = set()
        #: per adapter node (agent): its state as last stored, the base of the next delta
        self.extras_stored: dict[str, Any] = {}
        self.since_whole = 0
        #: journal entries (``Journal.entries``) already replaced by their JSON (``_encode_entries``)
        self.entries_encoded = 0
        #: (where its journal ends, seq) of the last two whole records built, older first: the older
        #: one is where the next periodic record's journal starts, and the record it names
        self.whole_ends: list[tuple[int, int]] = []
        #: boundary records still to be written whole: the start record and the one after it
        self.whole_due = 2

    # -- boundary records ------------------------------------------------------------------------------
    def build(
        self, state: StateSource, *, seq: int, status: str, superstep: int, journal: Any, run_input: Any,
        skip: dict[str, Any], checkpoint_id: str | None = None, result: Any = None,
    ) -> dict[str, Any]:
        """The next boundary record as plain data, in ``GraphCheckpoint``'s layout.

        Built directly (not through cattrs) and encoded at once by the caller, so no deep copy is
        needed: this runs at every superstep boundary. ``result``: the final result, dumped.
        """
        node_states = self.node_states  # updated in place (encoded right away: sharing is safe)
        dirty, self.dirty = self.dirty, set()
        waiting, readers = self.waiting, self.readers
        for key in self.node_order if dirty is None else dirty:
            entry = node_states[key] = readers[key]()
            if "pending_inputs" in entry:
                waiting.add(key)
            else:
                waiting.discard(key)
        whole, periodic = self._whole_record(status, bool(journal.replay))
        node_extras = self._extras_fields(dirty, whole) if self.adapter_keys else {}
        if self.json_records:
            self._encode_entries(journal.entries)
        extras: dict[str, Any] = {"structure": self.structure}
        if whole and not journal.replay:
            extras[COUNTS] = dict(journal.counts)  # where a continuation from this record's frontier counts from
        if (periodic or (whole and (journal.offset or (status == COMPLETED and not self.always_whole)))
                and self.whole_ends):
            # the whole state, and the journal since the whole record before the last one: bytes
            # linear in the run's length, the chain reader goes from one such record to the one it
            # names, and every visit is in two records (the last whole one may be the damaged one).
            # The final record links too (retention makes it stand alone before the records it
            # names go); so does every whole record of a journal continued from a frontier
            # (``offset``: it holds no visit before the record it was read from).
            end, linked = self.whole_ends[0]
            history_start, history = end, journal.since(end)
            extras[HISTORY_FROM] = linked
        elif whole:
            # visits not yet replayed belong to the history too (the start record of a forked execution)
            history_start, history = 0, journal.whole()
        else:
            history_start, history = journal.since_persisted()
        if whole:
            self.whole_ends = [*self.whole_ends[-1:], (history_start + len(history), seq)]
        graph_state, appended, removed = self._graph_state_fields(state, whole)
        partial = removed is not None
        if partial and dirty is not None:  # only the nodes read again can have changed
            node_states = {key: node_states[key] for key in dirty}
        return {
            # unique without a random draw: execution ids are unique, and so is seq within one
            "checkpoint_id": checkpoint_id or canonical_checkpoint_id(self.metadata["execution_id"], seq),
            "seq": seq,
            "timestamp": time.time(),
            "graph_metadata": self.metadata,
            "status": status,
            "superstep": superstep,
            "run_input": None if partial else run_input,  # it never changes: the whole records hold it
            "graph_state": graph_state,
            "node_states": node_states,
            "partial_state": partial,
            "removed_state": removed or [],
            "appended_state": appended,
            "current_node": self._current_node(),
            "execution_history": history,
            "history_start": history_start,
            "skip_nodes": list(skip),
            "skip_outputs": skip_outputs(skip) if skip else {},
            "failure": None,
            "result": result,
            "inflight": {},
            "node_extras": node_extras,
            "extras": extras,
            "version": CONTENT_VERSION,
            "kind": GRAPH,
        }

    def _encode_entries(self, entries: list[Any]) -> None:
        """Replace the journal entries not yet encoded by their JSON (``orjson.Fragment``), in place: a
        visit is then encoded once, not again in every whole record (which holds the whole journal),
        and checking a record for values that need tags skips it. An entry that cannot be encoded is
        left as it is: the record reports it with its path."""
        for i in range(self.entries_encoded, len(entries)):
            entry = entries[i]
            if type(entry) is dict:
                try:
                    entries[i] = orjson.Fragment(dumps_data(entry))
                except EncodeError:
                    pass
        self.entries_encoded = len(entries)

    def _whole_record(self, status: str, replaying: bool) -> tuple[bool, bool]:
        """``(whole, periodic)``: whether this record holds the whole state and agent states, and
        whether only because ``FULL_HISTORY_EVERY`` boundaries passed (then it holds the journal since
        the last whole record, not all of it): see the module docstring. ``replaying``: visits remain to
        replay (they go into a whole record's history)."""
        standing_alone = bool(status == COMPLETED or self.always_whole or replaying or self.marks is None
                              or self.whole_due)
        periodic = not standing_alone and self.since_whole >= FULL_HISTORY_EVERY
        whole = standing_alone or periodic
        self.whole_due = max(0, self.whole_due - 1)
        self.since_whole = 0 if whole else self.since_whole + 1
        return whole, periodic

    def _current_node(self) -> str | None:
        """``current_node``: the node with input waiting, or several joined by commas in graph order."""
        waiting = self.waiting
        if len(waiting) == 1:
            return next(iter(waiting))
        return ",".join(sorted(waiting, key=self.node_order.__getitem__)) or None

    def _extras_fields(self, dirty: set[str] | None, whole: bool) -> dict[str, Any]:
        """Adapter states (agents) for ``node_extras``: whole, or the changes since the stored one.

        A node not visited since the last record is left out (unchanged). A visited one stores a delta
        against its last stored state, so a conversation that grows turn by turn stores each message
        once instead of the whole conversation at every record.
        """
        extras: dict[str, Any] = {}
        for key in self.adapter_keys:
            if not (whole or dirty is None or key in dirty or key not in self.extras_stored):
                continue
            # a private copy: the next delta is computed against it after the agent changed its state
            state = faithful_copy(self.snapshot_adapter(key), what=f"state of node {key!r}")
            previous = self.extras_stored.get(key)
            if whole or previous is None:
                extras[key] = state
            else:
                ops = deltas.diff(previous, state)
                if ops:
                    extras[key] = {DELTA: ops}
            self.extras_stored[key] = state
        return extras

    # -- graph state ------------------------------------------------------------------------------------
    def _graph_state_fields(
        self, state: StateSource, whole: bool
    ) -> tuple[dict[str, Any], dict[str, Any], list[str] | None]:
        """The graph state for a record: the whole state (removed None) when ``whole`` or nothing is
        stored yet; else the keys whose value changed, the items appended to lists that only grew at
        their end, and the keys removed since the last record.

        A key whose value is the very object it is marked by is unchanged: an immutable value that
        stays put. One quick pass finds the other keys, and only those are compared: immutables set
        again (by type and value), mutable values by their JSON (a change in place is seen too).
        """
        raw = state.raw()
        marks = None if whole else self.marks
        if marks is None:
            return self._whole_state(state, raw), {}, None
        changed: dict[str, Any] = {}
        appended: dict[str, Any] = {}
        for key in [key for key, value in raw.items() if marks.get(key, _ABSENT) is not value]:
            if key[:2] == "__" and state.is_bookkeeping(key):  # the framework's own
                continue
            mark, value = self._mark(raw[key])
            old = marks.get(key, _ABSENT)
            if old is not mark and (type(old) is not type(mark) or old != mark):
                items = appended_json(old, mark)
                if items is None:
                    changed[key] = value
                else:
                    appended[key] = orjson.Fragment(items)
            marks[key] = mark  # (updated in place: the marks are this execution's own)
        if marks.keys() <= raw.keys():  # every key stored before is still there
            return changed, appended, []
        removed = [key for key in marks if key not in raw]
        for key in removed:
            del marks[key]
        return changed, appended, removed

    def _whole_state(self, state: StateSource, raw: dict[str, Any]) -> dict[str, Any]:
        """The whole graph state for a record, and its marks for the next one to compare with: the raw
        dict itself, not a copy, when it holds neither values already encoded as JSON nor the
        framework's keys (the record is encoded right away)."""
        marks: dict[str, Any] = {}
        encoded: dict[str, Any] = {}  # key -> orjson.Fragment of a mutable value's JSON, or ValuePart
        parts: dict[str, ValuePart] = {}
        bookkeeping = False
        for key, value in raw.items():
            if key[:2] == "__" and state.is_bookkeeping(key):
                bookkeeping = True
                continue
            marks[key], stored = self._mark(value)
            if self.values_apart is not None:
                stored = self._part(key, value, marks[key], parts) or stored
            if stored is not value:
                encoded[key] = stored
        self.marks = marks
        self.parts = parts
        whole = state.without_bookkeeping() if bookkeeping else raw
        return {**whole, **encoded} if encoded else whole

    def _mark(self, value: Any) -> tuple[Any, Any]:
        """``(mark, value to store)`` for a graph state value (see the module docstring). A value that
        cannot be encoded gets a new mark every time: the record reports it with its key path."""
        if type(value) in IMMUTABLE:
            return value, value
        if not self.json_records:
            return object(), value
        try:
            mark = dumps_data(value)
        except EncodeError:
            return object(), value
        return mark, orjson.Fragment(mark)

    def _part(self, key: str, value: Any, mark: Any, parts: dict[str, ValuePart]) -> ValuePart | None:
        """A whole record's part for a value at least ``values_apart`` long (a str, or a mutable
        value's JSON ``mark``), else None. A mutable value's part is reused while its JSON is the same
        (``parts``: those of the last whole record); a str's, while it is the same object
        (``value_parts``, across executions: Spark keeps the state between runs)."""
        apart = self.values_apart
        if type(value) is str:
            return part_of(value) if len(value) >= apart else None
        if type(mark) is not bytes or len(mark) < apart:
            return None
        part = self.parts.get(key)
        if part is None or part.source is not mark and part.source != mark:
            part = ValuePart(mark, dumps_data).measure()
        parts[key] = part
        return part

    # -- records built on the last boundary ---------------------------------------------------------------
    def on_boundary(self, base: dict[str, Any], *, seq: int, base_seq: int | None, inflight: dict[str, Any],
                    skip: dict[str, Any], **changes: Any) -> dict[str, Any]:
        """A record on top of the last boundary record stored (``base``, decoded): its content with
        ``changes``, but no state, visits or adapter states of its own (they are the base's); the
        journals still ``inflight`` and the ``skip`` requests still to apply, whole."""
        data = base
        # its visits are stored already: the new record carries none, and starts where it ended
        data["history_start"] = data.get("history_start", 0) + len(data.get("execution_history", ()))
        data["execution_history"] = []
        data["node_extras"] = {}
        # and so is the state: a record that repeated the base's changes would apply its appends twice
        data.update(partial_state=True, graph_state={}, node_states={}, removed_state=[], appended_state={},
                    run_input=None)
        data["status"], data["failure"] = RUNNING, None  # (the base may be a failure record we resume)
        data["base_seq"] = base_seq  # its state is that record's, whatever was written after it
        data["extras"] = {k: v for k, v in data.get("extras", {}).items() if k != HISTORY_FROM}  # (the base's link)
        # never the base's own in-flight entries: they may be deltas against records before it
        data["inflight"] = dict(inflight)
        data["skip_nodes"], data["skip_outputs"] = list(skip), skip_outputs(skip)
        data.update(changes)
        data.update(checkpoint_id=canonical_checkpoint_id(self.metadata["execution_id"], seq), seq=seq,
                    timestamp=time.time(), graph_metadata=self.metadata, version=CONTENT_VERSION)
        return data

    def fork_start(self, source: GraphCheckpoint, *, seq: int, inflight: dict[str, Any],
                   skip: dict[str, Any]) -> dict[str, Any]:
        """A forked execution's start record: the (whole) source record as it is, under the new
        execution, so recovering the fork before its first boundary finds the journal, state, pending
        inputs and superstep the fork resumes from."""
        data = to_data(source)
        data.update(
            checkpoint_id=canonical_checkpoint_id(self.metadata["execution_id"], seq), seq=seq,
            timestamp=time.time(), graph_metadata=self.metadata, status=RUNNING, failure=None, result=None,
            base_seq=None, skip_nodes=list(skip), skip_outputs=skip_outputs(skip), inflight=dict(inflight),
            extras={"structure": self.structure, "forked_from": source.checkpoint_id}, version=CONTENT_VERSION,
        )
        if self.values_apart is not None and data.get("graph_state"):  # stored once, as the run's own
            data["graph_state"] = parts_in_state(data["graph_state"], self.values_apart)
        self.whole_due = 1  # (that one was whole)
        return data
