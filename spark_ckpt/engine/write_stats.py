"""What writing an execution's checkpoints cost: records, bytes and write time, carried in the records.

The guide's "Monitor Overhead" figure. A record writer measures each write (encoding, then the store's
put) with ``time.perf_counter`` and keeps running totals for its execution; every graph record carries
the totals *as of just before it was encoded* in ``extras["writes"]`` (a record cannot hold its own
write time: that write ends after it was encoded). So the newest record of an execution tells, without
reading the others:

* ``records`` / ``bytes``: the records stored before it, and their size;
* ``timed`` / ``seconds`` / ``max_s``: how many of those writes were timed, their total and longest
  time. ``seconds`` also holds the encoding of records never stored: under durability "exit" a held
  record replaced by a newer one was encoded for nothing, and that was overhead too;
* ``started_at``: the timestamp of the execution's first record, so ``newest.timestamp - started_at``
  is the run time those writes happened in (with durability "sync" every write it counts ended before
  the newest record was built).

An execution continued by recovery carries its totals on: the resumed record's own write counts as
stored but not timed (it was timed by the process that died), and the run time includes the time the
execution was stopped. Records lost in a crash are not counted. An execution resumed from a record
that carries no totals (written by an older spark-ckpt) keeps none from then on: partial totals would
understate the overhead.
"""

from __future__ import annotations

from typing import Any

#: key of the totals in a record's ``extras``
EXTRAS_KEY = "writes"


class WriteStats:
    __slots__ = ("records", "timed", "bytes", "seconds", "max_s", "started_at")

    def __init__(self) -> None:
        self.records = self.timed = self.bytes = 0
        self.seconds = self.max_s = 0.0
        self.started_at: float | None = None

    def encoded(self, seconds: float) -> None:
        self.seconds += seconds

    def stored(self, size: int, write_s: float, put_s: float) -> None:
        """A record of ``size`` bytes is in the store; ``write_s`` its whole write (encode + put), of
        which ``put_s`` is not counted yet (the encoding was, by ``encoded``)."""
        self.records += 1
        self.timed += 1
        self.bytes += size
        self.seconds += put_s
        if write_s > self.max_s:
            self.max_s = write_s

    def as_data(self) -> dict[str, Any]:
        # times to the microsecond: a full float repr would add ~20 bytes each to every record
        return {"records": self.records, "timed": self.timed, "bytes": self.bytes, "seconds": round(self.seconds, 6),
                "max_s": round(self.max_s, 6), "started_at": self.started_at}

    @classmethod
    def resuming(cls, data: Any, resumed_size: int) -> WriteStats | None:
        """The totals of the record an execution resumes from (``data``: its ``extras["writes"]``) carried
        on, that record itself counted as stored; None when it holds none (see the module docstring)."""
        if not isinstance(data, dict):
            return None
        stats = cls()
        for name in ("records", "timed", "bytes"):
            value = data.get(name)
            if type(value) is int and value >= 0:
                setattr(stats, name, value)
        for name in ("seconds", "max_s", "started_at"):
            value = data.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                setattr(stats, name, float(value))
        stats.records += 1
        stats.bytes += resumed_size
        return stats
