"""Recovery of a long execution from its newest record's frontier: Spark's loop starts at the node
waiting there, on the restored graph state, node states and pending inputs, instead of replaying
every journaled visit (``engine.frontier``, ``adapters.graph_frontier``).

Checked against an uninterrupted run of the same graph: the result, the graph state, every node's
state and the whole journal (visit by visit, with the superstep and the input each consumed), after
SIGKILL at varied points and timings, after a second SIGKILL during the recovered run, after a
failure, with checkpoints every few supersteps, and after retention pruned the execution. Graphs or
records that cannot continue from a frontier (a short journal, two waiting nodes, a damaged record
between the whole record and the newest) are replayed as before.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import frontier_graphs  # noqa: E402
from kill_at_marker import kill_when_marked  # noqa: E402
from server_availability import postgres_unavailable  # noqa: E402

from spark_ckpt.engine.chain import HISTORY_FROM  # noqa: E402
from spark_ckpt.engine.frontier import FRONTIER_AFTER_VISITS  # noqa: E402
from spark_ckpt.engine.records import RecordReader, readable_whole  # noqa: E402
from spark_ckpt.errors import SparkCkptError  # noqa: E402

WORKER = Path(__file__).parent / "frontier_worker.py"
STEPS = 150  # three visits per count: 450 visits, the crashes below land past FRONTIER_AFTER_VISITS


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(
    postgres_unavailable() is not None, reason=str(postgres_unavailable())))])
def store(request, tmp_path: Path) -> str:
    """Where the crashed run is stored: SQLite, or a fresh schema of the test PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "c.db")
    return f"{os.environ['SPARK_CKPT_TEST_PG_DSN']}?schema=frontier_{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _settings():
    yield
    frontier_graphs.Settings.fail_at, frontier_graphs.Settings.fail_in = None, "count"


def _visits(record) -> list[tuple]:
    return [(v.node_key, v.index, v.superstep, v.output, v.input_from, v.status) for v in record.execution_history]


def _reference(tmp_path: Path, **config):
    """The uninterrupted run: (result content, final record made whole)."""
    graph = frontier_graphs.build(tmp_path / f"reference-{len(list(tmp_path.glob('reference-*.db')))}.db",
                                  STEPS, **config)
    try:
        result = asyncio.run(graph.run({"go": 1}))
        return result.content, graph.get_checkpoint()
    finally:
        graph.close()


def _assert_same_run(graph, result, reference) -> None:
    content, expected = reference
    final = graph.get_checkpoint()
    assert result.content == content
    assert final.status == "completed"
    assert final.graph_state == expected.graph_state
    assert final.node_states == expected.node_states
    assert _visits(final) == _visits(expected)


def _worker(action: str, store: str, stall_at: int, delay_s: float, tmp_path: Path, interval: int = 1) -> None:
    """Run (or recover) in a worker process and SIGKILL it ``delay_s`` after the count reaches ``stall_at``."""
    marker = tmp_path / f"reached-{action}-{stall_at}"
    kill_when_marked([sys.executable, str(WORKER), action, store, str(STEPS), str(stall_at), str(marker),
                      str(interval)], marker, delay_s)


def _recover(store: Path | str, **config):
    graph = frontier_graphs.build(store, STEPS, **config)
    return graph, asyncio.run(graph.recover_and_continue())


@pytest.mark.parametrize("stall_at, delay_s, interval", [
    (90, 0.0, 1), (107, 0.03, 1), (133, 0.01, 1), (101, 0.02, 5), (120, 0.0, 7),
])
def test_recovery_after_sigkill_continues_from_the_frontier(tmp_path: Path, stall_at: int, delay_s: float,
                                                            interval: int) -> None:
    db = str(tmp_path / "c.db")
    _worker("run", db, stall_at, delay_s, tmp_path, interval)
    graph, result = _recover(db, interval=interval)
    try:
        report = graph.last_recovery
        assert report.replayed == [] and report.from_frontier == report.live[0][0]
        if interval == 1:  # the stalled visit is the first to run again
            assert report.live[0] == ("count", stall_at - 1)
        _assert_same_run(graph, result, _reference(tmp_path, interval=interval))
    finally:
        graph.close()


def test_a_second_sigkill_during_a_frontier_recovery(tmp_path: Path, store: str) -> None:
    _worker("run", store, 95, 0.0, tmp_path)
    _worker("recover", store, 128, 0.01, tmp_path)  # continued from the frontier, killed again
    graph, result = _recover(store)
    try:
        assert graph.last_recovery.from_frontier == "count"
        _assert_same_run(graph, result, _reference(tmp_path))
        # every record of the execution reads back whole, through the links the recoveries wrote
        headers = graph.backend.list(execution_id=graph.last_recovery.execution_id)
        assert readable_whole(RecordReader(graph.backend, graph.codec), headers) == {}
    finally:
        graph.close()


def test_a_failed_run_continues_from_the_frontier_of_its_failure_record(tmp_path: Path, store: str) -> None:
    frontier_graphs.Settings.fail_at = 120
    graph = frontier_graphs.build(store, STEPS)
    with pytest.raises(RuntimeError, match="failing at count 120"):
        asyncio.run(graph.run({"go": 1}))
    assert graph.get_checkpoint().status == "failed"
    graph.close()
    graph, result = _recover(store)
    try:
        assert graph.last_recovery.from_frontier == "count" and graph.last_recovery.replayed == []
        _assert_same_run(graph, result, _reference(tmp_path))
    finally:
        graph.close()


@pytest.mark.parametrize("keep", [1, 5])
def test_retention_after_a_frontier_recovery_keeps_the_whole_journal(tmp_path: Path, keep: int) -> None:
    # keep=1: only the final record stays. After a continuation from a frontier it links to earlier
    # records for its journal, so it is made to stand alone before they go
    db = str(tmp_path / "c.db")
    _worker("run", db, 110, 0.0, tmp_path)
    graph, result = _recover(db, retention_count=keep)
    try:
        assert graph.last_recovery.from_frontier == "count"
        assert len(graph.backend.list(execution_id=graph.last_recovery.execution_id)) <= keep
        _assert_same_run(graph, result, _reference(tmp_path))
    finally:
        graph.close()


def test_a_short_journal_is_replayed(tmp_path: Path) -> None:
    graph, result = _fail_then_recover(tmp_path, 20)
    try:
        report = graph.last_recovery
        assert report.from_frontier is None and len(report.replayed) == 3 * 19 < FRONTIER_AFTER_VISITS
        _assert_same_run(graph, result, _reference(tmp_path))
    finally:
        graph.close()


def test_two_waiting_nodes_are_replayed(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    frontier_graphs.Settings.fail_at, frontier_graphs.Settings.fail_in = 100, "left"
    graph = frontier_graphs.build(db, STEPS, shape="fan_out")
    with pytest.raises(RuntimeError):
        asyncio.run(graph.run({"go": 1}))
    newest = graph.get_checkpoint()
    assert len([k for k, s in newest.node_states.items() if s.pending_inputs]) == 2
    graph.close()
    graph = frontier_graphs.build(db, STEPS, shape="fan_out")
    try:
        asyncio.run(graph.recover_and_continue())
        report = graph.last_recovery
        assert report.from_frontier is None and len(report.replayed) >= FRONTIER_AFTER_VISITS
        final = graph.get_checkpoint()  # (the result is whichever branch ended last: set order)
        assert final.status == "completed" and final.graph_state["n"] == STEPS
    finally:
        graph.close()


def _damage(db: Path, seq: int) -> None:
    with sqlite3.connect(db) as conn:
        (rowid, blob), = conn.execute("SELECT rowid, blob FROM checkpoints WHERE seq = ?", (seq,)).fetchall()
        blob = bytearray(blob)
        blob[len(blob) // 2] ^= 0xFF
        conn.execute("UPDATE checkpoints SET blob = ? WHERE rowid = ?", (bytes(blob), rowid))
    conn.close()


def test_a_damaged_record_before_the_newest_is_replayed_around(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    frontier_graphs.Settings.fail_at = 120
    graph = frontier_graphs.build(db, STEPS)
    with pytest.raises(RuntimeError):
        asyncio.run(graph.run({"go": 1}))
    newest = graph.backend.list(execution_id=graph.get_checkpoint().execution_id, limit=1)[0]
    graph.close()
    _damage(db, newest.seq - 3)  # a changes-only boundary record: its visits are in no other record yet
    graph, result = _recover(db)
    try:
        report = graph.last_recovery
        assert report.from_frontier is None and report.fell_back and report.replayed
        _assert_same_run(graph, result, _reference(tmp_path))
    finally:
        graph.close()


def _fail_then_recover(tmp_path: Path, fail_at: int, fail_in: str = "count", **config):
    """A run failing in the visit of ``fail_in`` at count ``fail_at``, then recovered in place."""
    db = tmp_path / "c.db"
    frontier_graphs.Settings.fail_at, frontier_graphs.Settings.fail_in = fail_at, fail_in
    graph = frontier_graphs.build(db, STEPS, **config)
    with pytest.raises(RuntimeError, match=f"failing at count {fail_at}"):
        asyncio.run(graph.run({"go": 1}))
    graph.close()
    return _recover(db, **config)


def test_a_node_editing_its_input_edits_its_parents_output_after_a_frontier_recovery(tmp_path: Path) -> None:
    # Spark hands ``tag`` the very object ``produce`` output: restored from a frontier, ``tag``'s
    # pending input is ``produce``'s restored output again, so the edit reaches ``produce``
    graph, result = _fail_then_recover(tmp_path, 120, "tag", shape="editing")
    try:
        assert graph.last_recovery.from_frontier == "tag"
        _assert_same_run(graph, result, _reference(tmp_path, shape="editing"))
        seen = [v.output["content"]["seen_tag"] for v in graph.get_checkpoint().execution_history
                if v.node_key == "produce"]
        assert seen[120] == "tagged 120"  # the first visit of produce after the recovery
    finally:
        graph.close()


def test_an_output_delivered_twice_is_one_object_after_a_frontier_recovery(tmp_path: Path) -> None:
    # two edges from produce to tag: Spark queues produce's output object twice, and tag's second
    # visit sees its first visit's edit
    graph, result = _fail_then_recover(tmp_path, 40, "tag", shape="editing_twice")
    try:
        assert graph.last_recovery.from_frontier == "tag"
        _assert_same_run(graph, result, _reference(tmp_path, shape="editing_twice"))
    finally:
        graph.close()


@pytest.mark.parametrize("setup", ["exit durability", "a lifecycle hook", "a buffering node", "a wrapped queue"])
def test_graphs_a_frontier_would_change_are_replayed(tmp_path: Path, setup: str) -> None:
    config = {"durability": "exit"} if setup == "exit durability" else {}
    original = frontier_graphs.build

    def build(store, steps, **kwargs):
        graph = original(store, steps, **{**config, **kwargs})
        if setup == "a lifecycle hook":  # Spark numbers the iterations of a run from 0: it would see others
            from spark.graphs.hooks import GraphLifecycleEvent

            graph.graph.register_hook(GraphLifecycleEvent.BEFORE_ITERATION, lambda context: None)
        elif setup == "a buffering node":  # its own queue: Spark schedules it without pending inputs
            node = graph._nodes_by_key["merge"]
            node.enqueue_input = node.enqueue_input
        elif setup == "a wrapped queue":  # Spark's method under a wrapper of the user's: it may copy
            node = graph._nodes_by_key["left"]
            original_enqueue = node.enqueue_input
            node.enqueue_input = functools.wraps(original_enqueue)(lambda payload: original_enqueue(payload))
        return graph

    frontier_graphs.build = build
    try:
        graph, result = _fail_then_recover(tmp_path, 120)
    finally:
        frontier_graphs.build = original
    try:
        assert graph.last_recovery.from_frontier is None and len(graph.last_recovery.replayed) > 300
        _assert_same_run(graph, result, _reference(tmp_path, **config))
        headers = graph.backend.list(execution_id=graph.last_recovery.execution_id)
        assert readable_whole(RecordReader(graph.backend, graph.codec), headers) == {}
    finally:
        graph.close()


def test_records_after_a_frontier_recovery_read_around_a_damaged_record_before_it(tmp_path: Path) -> None:
    graph, result = _fail_then_recover(tmp_path, 120)
    execution = graph.last_recovery.execution_id
    stored = {h.seq: graph._planner.decode(graph.backend.get(h.checkpoint_id).blob, h)
              for h in graph.backend.list(execution_id=execution)}
    first = min(seq for seq, record in stored.items() if record.extras["attempt"]["n"] == 1)
    linked = stored[first].extras[HISTORY_FROM]  # where the journal of the recovery's records continues
    graph.close()
    _damage(tmp_path / "c.db", linked)
    graph = frontier_graphs.build(tmp_path / "c.db", STEPS)
    try:
        headers = graph.backend.list(execution_id=execution)
        problems = readable_whole(RecordReader(graph.backend, graph.codec), headers)
        after = sorted(int(cid.rsplit("-", 1)[1]) for cid in problems)
        # only the first attempt's records whose state is built on the damaged one: never the recovery's
        assert after and all(seq < first for seq in after)
        _assert_same_run(graph, result, _reference(tmp_path))
    finally:
        graph.close()


def test_the_timeline_shows_a_frontier_recovery_replayed_nothing(tmp_path: Path) -> None:
    from spark_ckpt.timeline import build_timeline

    graph, _ = _fail_then_recover(tmp_path, 120)
    try:
        timeline = build_timeline(graph.backend, graph.codec, graph.last_recovery.execution_id)
        recovery = timeline.attempts[1]
        assert recovery.frontier == "count" and recovery.replayed == [] and len(recovery.live) == 91
    finally:
        graph.close()


def _stored_records(graph, execution: str) -> dict:
    records = {}
    for header in graph.backend.list(execution_id=execution):
        try:
            records[header.seq] = graph._planner.decode(graph.backend.get(header.checkpoint_id).blob, header)
        except Exception as exc:  # (damaged on purpose)
            records[header.seq] = exc
    return records


def test_records_an_earlier_recovery_discarded_never_enter_a_journal(tmp_path: Path, monkeypatch) -> None:
    # X runs and fails; a damaged record makes B fall back past X's last records (discarded), and B
    # fails at once; the damage goes away (it was transient); A continues B's failure record from its
    # frontier, Z continues A's. With B's record and A's first two unreadable, the records Z wrote
    # must refuse to read rather than take X's discarded visits at those journal positions.
    ran_in = ["X"]
    count = frontier_graphs.Count.process

    async def tagged(self, context):
        return {**await count(self, context), "ran_in": ran_in[0]}

    monkeypatch.setattr(frontier_graphs.Count, "process", tagged)
    db = tmp_path / "c.db"

    def attempt(name: str, fail_at: int | None, execution: str | None = None):
        ran_in[0] = name
        frontier_graphs.Settings.fail_at, frontier_graphs.Settings.fail_in = fail_at, "count"
        graph = frontier_graphs.build(db, STEPS)
        try:
            run = graph.run({"go": 1}) if execution is None else graph.recover_and_continue(execution_id=execution)
            if fail_at is None:
                asyncio.run(run)
            else:
                with pytest.raises(RuntimeError):
                    asyncio.run(run)
            return graph.last_recovery.execution_id if execution else graph.get_checkpoint().execution_id
        finally:
            graph.close()

    execution = attempt("X", 100)
    graph = frontier_graphs.build(db, STEPS)
    records = _stored_records(graph, execution)
    head = max(records)
    resumed = max(s for s, r in records.items() if s < head - 4 and r.current_node == "count" and r.base_seq is None)
    n_then = graph._planner.make_whole(records[resumed]).graph_state["n"]
    graph.close()
    _damage(db, resumed + 1)
    attempt("B", n_then + 1, execution)  # fell back to ``resumed``, failed at its first live visit
    graph = frontier_graphs.build(db, STEPS)
    failure = max(_stored_records(graph, execution))
    graph.close()
    _damage(db, resumed + 1)  # (flipped back: the fallback was transient)
    attempt("A", 140, execution)
    attempt("Z", None, execution)
    graph = frontier_graphs.build(db, STEPS)
    records = _stored_records(graph, execution)
    z_first = min(s for s, r in records.items() if r.extras["attempt"]["n"] == 3)
    written = {seq: _visits(graph._planner.make_whole(records[seq])) for seq in (z_first, max(records))}
    graph.close()
    for seq in (failure, failure + 1, failure + 2):
        _damage(db, seq)
    graph = frontier_graphs.build(db, STEPS)
    try:
        headers = graph.backend.list(execution_id=execution)
        for seq, journal in written.items():
            header = next(h for h in headers if h.seq == seq)
            try:
                whole = RecordReader(graph.backend, graph.codec).whole(header, headers)
            except SparkCkptError:
                continue  # refused: right
            assert _visits(whole) == journal, seq
    finally:
        graph.close()
