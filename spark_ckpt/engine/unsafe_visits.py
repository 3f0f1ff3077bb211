"""Started-visit markers of nodes not safe to re-run: which such visits began and are not yet known
completed by the store.

Before a live visit of a marked node starts, a marker (its node key, visit index, superstep and input)
is stored in a record built on the last boundary, under ``inflight[MARKERS]``. Every record built on a
boundary after it carries the marker again until a stored boundary's journal holds that visit: only
then would recovery replay it instead of running it again. A boundary record stored while the visit
still runs (long-running graphs commit visit by visit) carries it in ``extras[MARKERS]``. The newest
record of an execution thus names every marked visit a recovery would run again (``in_record``).

Invariants:

* a marker is carried while its visit has not completed (it is running, or it failed), and after it
  completed until the base of the record being built (a stored boundary) covers its journal entry;
* the ``MARKERS`` entry is always whole (never a delta against an earlier record), and has an int
  ``visit_index`` like every in-flight entry, so readers of in-flight journals take it as they are.

No Spark import, no I/O.
"""

from __future__ import annotations

from typing import Any

#: the in-flight entry holding the markers (a graph with marked nodes refuses a node of that key)
MARKERS = "__not_safe_to_rerun__"


class UnsafeVisits:
    """The markers of one execution (see the module docstring)."""

    def __init__(self, recovered: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
        #: (node key, visit index) -> [marker data, journal position after its entry or None]
        self.markers: dict[tuple[str, int], list[Any]] = {
            (m["node_key"], m["index"]): [m, None] for m in recovered
        }

    def started(self, marker: dict[str, Any]) -> None:
        self.markers[(marker["node_key"], marker["index"])] = [marker, None]

    def forget(self, key: str, index: int) -> None:
        """The marker could not be stored: the visit does not start."""
        self.markers.pop((key, index), None)

    def completed(self, key: str, index: int, end: int) -> None:
        """The visit's entry is the journal's entry ``end - 1``."""
        entry = self.markers.get((key, index))
        if entry is not None:
            entry[1] = end

    def awaiting(self, stored_end: int) -> bool:
        """Whether a marker is not covered by the journal entries stored so far (``stored_end``)."""
        return any(end is None or end > stored_end for _, end in self.markers.values())

    def carry(self, data: dict[str, Any]) -> None:
        """Put the markers ``data`` (a record built on a boundary) must carry into its in-flight
        journals; drop those its base already covers."""
        self._drop_covered(data.get("history_start", 0))
        inflight = data["inflight"] = {k: v for k, v in data["inflight"].items() if k != MARKERS}
        if MARKERS in (data.get("extras") or {}):  # the base's (a boundary record's), not this one's
            data["extras"] = {k: v for k, v in data["extras"].items() if k != MARKERS}
        if self.markers:
            inflight[MARKERS] = {"visit_index": 0, "visits": self._visits()}

    def carry_in_boundary(self, data: dict[str, Any]) -> None:
        """Put the markers a boundary record ``data`` does not cover (visits still running while it is
        stored: long-running graphs) into its ``extras``, which records are only built on."""
        self._drop_covered(data.get("history_start", 0) + len(data.get("execution_history", ())))
        if self.markers:
            data["extras"] = {**data["extras"], MARKERS: self._visits()}

    def _drop_covered(self, covered: int) -> None:
        for visit, (_, end) in list(self.markers.items()):
            if end is not None and end <= covered:
                del self.markers[visit]

    def _visits(self) -> list[dict[str, Any]]:
        return [marker for marker, _ in self.markers.values()]

    def __bool__(self) -> bool:
        return bool(self.markers)


def split(inflight: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A record's in-flight journals without the markers, and the markers."""
    if MARKERS not in inflight:
        return inflight, []
    rest = {k: v for k, v in inflight.items() if k != MARKERS}
    return rest, list((inflight[MARKERS] or {}).get("visits") or [])


def in_record(inflight: dict[str, Any], extras: dict[str, Any]) -> list[dict[str, Any]]:
    """The markers a record carries: in its in-flight journals (a record built on a boundary) or in
    its extras (a boundary record stored while marked visits ran)."""
    return split(inflight)[1] + list((extras or {}).get(MARKERS) or [])
