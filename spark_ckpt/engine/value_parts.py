"""Large graph state values stored once: a record holds a ``ValuePart`` where the value goes, and a
backend that ``takes_values`` keeps the value's JSON once by its SHA-256, however many records (of
however many executions) hold it. The start, final and every whole record of a run then cost a lookup
for a 1 MB value no step touched, not a 1 MB write.

Only with plain JSON records (no compression, no encryption: ``Codec.writes_plain_json``): the stored
record is then exactly the bytes it would be with the value inline, and every reader sees those bytes
(the backend puts the value back in on ``get``), so nothing above the backend changes.

The parts of large strings seen recently are kept (``_recent``, at most 64 MB of them) by identity:
the same object stays in the state run after run, so it is measured (SHA-256, CRC-32) once, not at
every whole record of every run. A mutable value's part is kept by the record builder while its JSON
stays the same (``RecordBuilder._part``): not across executions, and not once it changed, so values
that change are not held in memory.

No Spark import, no I/O.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import orjson

from ..codec.convert import dumps_data
from ..codec.envelope import unpack
from ..errors import EncodeError, SparkCkptError
from ..model import BlobParts, ValuePart

#: graph state values that cannot change in place (exact types: a subclass could)
IMMUTABLE = frozenset({str, int, float, bool, type(None)})

#: the parts kept for values seen recently hold at most this many bytes of JSON (a str's are counted
#: too: it is kept alive by its entry)
_RECENT_BYTES = 64 << 20


class _Recent:
    """Parts of values seen recently, least recently used dropped first."""

    def __init__(self) -> None:
        self.entries: OrderedDict[Any, ValuePart] = OrderedDict()
        self.held = 0
        self.lock = threading.Lock()

    def part(self, value: str) -> ValuePart:
        # by identity: the entry keeps the str alive, so its id is not reused
        key = id(value)
        with self.lock:
            part = self.entries.get(key)
            if part is not None and part.source is value:
                self.entries.move_to_end(key)
                return part
        part = ValuePart(value, dumps_data).measure()
        if part.size <= _RECENT_BYTES:
            with self.lock:
                old = self.entries.pop(key, None)
                self.held += part.size - (old.size if old is not None else 0)
                self.entries[key] = part
                while self.held > _RECENT_BYTES:
                    _, dropped = self.entries.popitem(last=False)
                    self.held -= dropped.size
        return part


_recent = _Recent()


def part_of(value: str) -> ValuePart:
    """The part of a large immutable ``str`` (one of those seen recently, if it is)."""
    return _recent.part(value)


def placeholder(index: int) -> orjson.Fragment:
    """What a record holds where its ``index``-th value stored apart goes (``Codec.encode_data_in_parts``)."""
    return orjson.Fragment(b"\0%d\0" % index)


def take_values(graph_state: dict[str, Any], *, apart: bool) -> tuple[dict[str, Any], list[ValuePart]]:
    """``graph_state`` with its ``ValuePart`` values replaced: by placeholders (``apart``; the parts
    returned in order), else by their JSON inline. The same dict when it holds none."""
    keys = [key for key, value in graph_state.items() if type(value) is ValuePart]
    if not keys:
        return graph_state, []
    state = dict(graph_state)
    values: list[ValuePart] = []
    for key in keys:
        part = state[key]
        if apart:
            state[key] = placeholder(len(values))
            values.append(part)
        else:
            state[key] = orjson.Fragment(part.data())
    return state, values


def parts_in_state(graph_state: dict[str, Any], apart: int) -> dict[str, Any]:
    """A graph state not built by a run (decoded from a record, or given: a rebase, a fork's start
    record, an edited state, an approval) for a whole record: its values at least ``apart`` long as
    ``ValuePart``, as the record builder makes them; the other mutable ones as their JSON (encoded
    once). A value that cannot be encoded stays as it is: the record refuses it, naming its path."""
    state: dict[str, Any] = {}
    for key, value in graph_state.items():
        kind = type(value)
        if kind is str:
            # (not kept among the recent parts: a decoded copy, which no live state holds)
            state[key] = ValuePart(value, dumps_data).measure() if len(value) >= apart else value
            continue
        if kind in IMMUTABLE or kind is ValuePart or kind is orjson.Fragment:
            state[key] = value
            continue
        try:
            mark = dumps_data(value)
        except EncodeError:
            state[key] = value
            continue
        state[key] = ValuePart(mark, dumps_data).measure() if len(mark) >= apart else orjson.Fragment(mark)
    return state


def blob_apart(blob: bytes, apart: int) -> "bytes | BlobParts":
    """A stored checkpoint's bytes (``export``) with its large graph state values as ``ValuePart``,
    for a store that keeps them once; the same bytes when it holds none, or is not a plain JSON record
    (compressed, encrypted, damaged: copied as it is).

    The record is split where each value's JSON is, not encoded again: the parts join to exactly the
    bytes given, whatever wrote them."""
    if len(blob) < apart:
        return blob
    try:
        envelope = unpack(blob)
    except SparkCkptError:
        return blob
    payload = envelope.payload
    if envelope.layers != [{"name": "json"}] or len(payload) < apart:
        return blob
    try:
        state = orjson.loads(payload).get("graph_state")
    except (orjson.JSONDecodeError, AttributeError):
        return blob
    if type(state) is not dict:
        return blob
    parts: list[Any] = [blob[: len(blob) - len(payload)]]  # the envelope's prefix, checksum included
    at = 0
    for value in state.values():
        if type(value) is not str and type(value) is not dict and type(value) is not list:
            continue
        text = orjson.dumps(value)
        found = payload.find(text, at) if len(text) >= apart else -1
        if found < 0:  # (orjson writes what it read as it was: not found means not that value's JSON)
            continue
        if found > at:
            parts.append(payload[at:found])
        parts.append(ValuePart(text, dumps_data).measure())
        at = found + len(text)
    if len(parts) == 1:
        return blob
    if at < len(payload):
        parts.append(payload[at:])
    return BlobParts(tuple(parts))
