"""Bytes linear in a run's length: a periodic whole record (every ``FULL_HISTORY_EVERY`` boundaries)
holds the whole state but only the journal since the whole record before the last one, and names
that record (``HISTORY_FROM``); the chain reader goes from one to the one it names. The final record
links the same way; only the start record, the one after it and the first record after a replaying
recovery hold the whole journal.

Checked: what each record holds, that every record reads back with the whole journal, how many
records making one whole reads, a damaged periodic record read around, and recovery after SIGKILL
at varied points across several periodic records.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import journal_loop_graphs  # noqa: E402
from kill_at_marker import kill_when_marked  # noqa: E402

from spark_ckpt.engine.chain import HISTORY_FROM  # noqa: E402
from spark_ckpt.engine.record_builder import FULL_HISTORY_EVERY  # noqa: E402
from spark_ckpt.engine.records import RecordReader, decode_record  # noqa: E402

WORKER = Path(__file__).parent / "journal_loop_worker.py"
STEPS = 4 * FULL_HISTORY_EVERY + 20


def _run(path: Path, steps: int = STEPS):
    graph = journal_loop_graphs.build(path, steps)
    asyncio.run(graph.run({"go": 1}))
    return graph


def _stored(graph) -> list:
    """Every record as stored (not made whole), oldest first."""
    headers = sorted(graph.backend.list(graph_id="journal-loop"), key=lambda h: h.seq)
    return [decode_record(graph.codec, graph.backend.get(h.checkpoint_id).blob, h) for h in headers]


def _counts(record) -> list[int]:
    return [visit.output["content"]["n"] for visit in record.execution_history]


def test_only_the_first_records_hold_the_whole_journal(tmp_path: Path) -> None:
    graph = _run(tmp_path / "c.db")
    try:
        records = _stored(graph)
        periodic = [r for r in records if HISTORY_FROM in r.extras]
        assert len(periodic) >= 3
        for record in records[2:]:  # (the start record and the one after it stand alone)
            assert len(record.execution_history) <= 2 * FULL_HISTORY_EVERY + 2, record.seq
        assert records[-1].status == "completed" and records[-1] in periodic  # the final record links too
        for record in periodic:
            assert not record.partial_state
            linked = records[record.extras[HISTORY_FROM]]
            assert linked.history_start + len(linked.execution_history) == record.history_start
        assert _counts(graph.get_checkpoint()) == list(range(1, STEPS + 1))  # and reads back whole
        # bytes grow with the run, not with its square: the records past the first periodic one
        # average about what a changes-only record costs
        sizes = [h.size for h in sorted(graph.backend.list(graph_id="journal-loop"), key=lambda h: h.seq)]
        middle = sizes[2:-1]
        assert sum(middle) < 1.8 * len(middle) * sorted(middle)[len(middle) // 2], sizes
    finally:
        graph.close()


def test_every_record_reads_back_with_the_whole_journal(tmp_path: Path) -> None:
    graph = _run(tmp_path / "c.db")
    try:
        for header in graph.backend.list(graph_id="journal-loop"):
            record = graph.get_checkpoint(header.checkpoint_id)
            assert _counts(record) == list(range(1, len(record.execution_history) + 1)), header.seq
            assert record.graph_state.get("n", 0) == len(record.execution_history)
    finally:
        graph.close()


class _CountingBackend:
    def __init__(self, backend) -> None:
        self.backend, self.gets = backend, 0

    def get(self, checkpoint_id):
        self.gets += 1
        return self.backend.get(checkpoint_id)

    def list(self, **filters):
        return self.backend.list(**filters)


def test_making_a_late_record_whole_reads_one_record_per_period(tmp_path: Path) -> None:
    steps = 16 * FULL_HISTORY_EVERY
    graph = _run(tmp_path / "c.db", steps)
    try:
        headers = sorted(graph.backend.list(graph_id="journal-loop"), key=lambda h: h.seq)
        target = headers[-3]  # a changes-only record near the end
        counting = _CountingBackend(graph.backend)
        whole = RecordReader(counting, graph.codec).whole(target)
        assert _counts(whole) == list(range(1, len(whole.execution_history) + 1))
        # back to the last periodic record one by one, then one record per period (not all ~1,000)
        assert counting.gets <= FULL_HISTORY_EVERY + steps // FULL_HISTORY_EVERY + 4, counting.gets
    finally:
        graph.close()


def _damage(db: Path, seq: int) -> None:
    with sqlite3.connect(db) as conn:
        (rowid, blob), = conn.execute("SELECT rowid, blob FROM checkpoints WHERE seq = ?", (seq,)).fetchall()
        blob = bytearray(blob)
        blob[len(blob) // 2] ^= 0xFF
        conn.execute("UPDATE checkpoints SET blob = ? WHERE rowid = ?", (bytes(blob), rowid))
    conn.close()


def _periodic_records(db: Path) -> list:
    """The periodic records of a run of the loop, as stored."""
    graph = _run(db)
    try:
        return [r for r in _stored(graph) if HISTORY_FROM in r.extras]
    finally:
        graph.close()


def _read_whole(db: Path, seq: int):
    """Record ``seq`` made whole by a graph opened afresh on ``db``."""
    graph = journal_loop_graphs.build(db, STEPS)
    try:
        return graph.get_checkpoint(next(h for h in graph.backend.list(graph_id="journal-loop") if h.seq == seq).checkpoint_id)
    finally:
        graph.close()


def test_a_damaged_periodic_record_is_read_around(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    periodic = _periodic_records(db)
    _damage(db, periodic[0].seq)  # the first periodic record, named by the second one's link
    record = _read_whole(db, periodic[1].seq + 3)
    # the visits the damaged record held come from the changes-only records that hold them too
    assert _counts(record) == list(range(1, len(record.execution_history) + 1))


def _crash_at(db: Path, steps: int, stall_at: int, delay_s: float) -> None:
    marker = db.parent / f"reached-{stall_at}"
    kill_when_marked([sys.executable, str(WORKER), str(db), str(steps), str(stall_at), str(marker)], marker, delay_s)


@pytest.mark.parametrize("stall_at, delay_s", [
    (FULL_HISTORY_EVERY + 1, 0.0), (2 * FULL_HISTORY_EVERY + 7, 0.05), (3 * FULL_HISTORY_EVERY + 30, 0.01),
])
def test_recovery_after_sigkill_across_periodic_records(tmp_path: Path, stall_at: int, delay_s: float) -> None:
    db = tmp_path / "c.db"
    _crash_at(db, STEPS, stall_at, delay_s)
    graph = journal_loop_graphs.build(db, STEPS)
    try:
        result = asyncio.run(graph.recover_and_continue())
        assert result.content == {"n": STEPS, "done": True}
        final = graph.get_checkpoint()
        assert _counts(final) == list(range(1, STEPS + 1))
        assert graph.last_recovery.execution_id == final.execution_id
    finally:
        graph.close()


def test_a_damaged_linked_record_is_read_around(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    periodic = _periodic_records(db)
    named = periodic[2].extras[HISTORY_FROM]
    assert named == periodic[0].seq  # (two periods back)
    _damage(db, named)  # on the link path of records after periodic[2]
    record = _read_whole(db, periodic[2].seq + 2)
    # the link fails; the walk one record at a time passes over the damaged one, whose visits the
    # next periodic record holds too
    assert _counts(record) == list(range(1, len(record.execution_history) + 1))


def test_another_attempts_records_are_never_mixed_into_a_journal() -> None:
    """A recovery that fell back past records continues the execution without them: their positions
    may hold other visits. With the new attempt's own whole records unreadable, making a later record
    whole must refuse, not take the older attempt's visits."""
    from spark_ckpt.engine import chain
    from spark_ckpt.errors import CorruptCheckpointError
    from spark_ckpt.model import CheckpointHeader, GraphCheckpoint, GraphMetadata, Visit

    def record(seq: int, start: int, visits: list, attempt: str, partial: bool = False, **extras) -> GraphCheckpoint:
        return GraphCheckpoint(checkpoint_id=f"ck-e-{seq}", seq=seq, timestamp=1.0,
                               graph_metadata=GraphMetadata(graph_id="g", graph_version="v", execution_id="e"),
                               graph_state={"n": seq}, partial_state=partial, execution_history=visits,
                               history_start=start, extras={"attempt": attempt, **extras})

    old = [Visit("n", i, i, {"from": "first attempt"}) for i in range(6)]
    new = old[:3] + [Visit("n", i, i, {"from": "second attempt"}) for i in range(3, 8)]
    records = {
        2: record(2, 0, old[:3], "A1"),  # where the recovery fell back to
        3: record(3, 3, old[3:5], "A1", partial=True),  # left behind
        4: record(4, 5, old[5:6], "A1", partial=True),
        5: record(5, 0, new[:5], "A2"),  # the recovery's whole records: unreadable
        6: record(6, 0, new[:6], "A2"),
        7: record(7, 6, new[6:7], "A2", partial=True),
        8: record(8, 5, new[5:8], "A2", history_from=5),
    }

    def load(header):
        if header.seq in (5, 6):
            raise CorruptCheckpointError(f"checkpoint {header.seq} is damaged")
        return records[header.seq]

    headers = [CheckpointHeader(f"ck-e-{seq}", "g", "e", seq, 1.0) for seq in records]
    with pytest.raises(CorruptCheckpointError):
        chain.make_whole(records[8], headers, load)
