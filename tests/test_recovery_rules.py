"""The rules that keep recovery exact, in one process: refusing a divergent replay before anything runs
live, an executions index that cannot be lowered without the key, records built on a boundary whose
write failed (or was reported failed though it landed), retention and `spark-ckpt verify` on chains,
skips a continuation never reached, one SQLite connection per file."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from contextlib import closing

import pytest
from spark.graphs import Graph
from spark.nodes import Node

import graphs
from spark_ckpt import CheckpointConfig, checkpointed
from spark_ckpt.adapters.runtime import current_visit
from spark_ckpt.backends.sqlite import SqliteBackend
from spark_ckpt.cli import main as cli
from spark_ckpt.codec import new_key
from spark_ckpt.errors import (
    BackendError, MissingCheckpointError, RecoveryDivergedError, TamperedCheckpointError,
)
from spark_ckpt.model import COMPLETED, FAILED
from spark_ckpt.retention import prune


def fail_at(graph, visit: str, monkeypatch, error: type[BaseException] = RuntimeError) -> None:
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", visit)
    with pytest.raises(error):
        asyncio.run(graph.run({}))
    monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")


def uninterrupted_count(n: int) -> dict:
    graphs.CALLS.clear()
    graph = graphs.chain(n)
    asyncio.run(graph.run({}))
    return graph.state.get_snapshot()


# -- a replay that does not reproduce its run ------------------------------------------------------------
def test_a_replay_that_routes_differently_refuses_before_anything_runs_live(tmp_path, monkeypatch) -> None:
    """Recovering a journal into a graph that routes past a journaled visit raises RecoveryDivergedError
    at the first visit the journal does not hold: no node runs live, nothing is written."""
    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "d.db"), allow_graph_change=True)
    fail_at(checkpointed(graphs.chain(4), config=config, graph_id="g"), "s3:0", monkeypatch)
    s0, s1, s2, s3 = (graphs.Step(id=f"s{i}") for i in range(4))
    s0 >> s2  # s1 is skipped: its journaled visit is never reached
    s2 >> s3
    s1 >> s3
    rerouted = checkpointed(Graph(start=s0), config=config, graph_id="g")
    before = rerouted.list_checkpoints()
    graphs.CALLS.clear()
    with pytest.raises(RecoveryDivergedError, match="did not reproduce"):
        asyncio.run(rerouted.recover_and_continue())
    assert graphs.CALLS == []
    assert rerouted.list_checkpoints() == before
    s0, x, s1, s2, s3 = (graphs.Step(id=key) for key in ("s0", "x", "s1", "s2", "s3"))
    s0 >> x >> s1 >> s2 >> s3  # a node the journal never saw, inside the replayed supersteps
    detoured = checkpointed(Graph(start=s0), config=config, graph_id="g")
    with pytest.raises(RecoveryDivergedError, match="not in the journal"):
        asyncio.run(detoured.recover_and_continue())
    assert graphs.CALLS == []
    assert detoured.list_checkpoints() == before


# -- the executions index ------------------------------------------------------------------------------
def test_a_lowered_index_head_is_refused_with_encryption_on(tmp_path, monkeypatch) -> None:
    """With encryption on, deleting an execution's newest checkpoints and lowering its index head to
    match (without the key) fails authentication: nothing runs. Without the lowering, the deletion alone
    is a MissingCheckpointError."""
    path = tmp_path / "k.db"
    config = CheckpointConfig(backend="sqlite", path=str(path), encryption_keys={"k1": new_key()})
    graph = checkpointed(graphs.chain(6), config=config, graph_id="g")
    fail_at(graph, "s4:0", monkeypatch)
    (head,) = graph.backend.executions(graph_id="g")
    newest = sorted(graph.list_checkpoints(), key=lambda h: h.seq)[-2:]
    graph.backend.delete([h.checkpoint_id for h in newest])
    graphs.CALLS.clear()
    with pytest.raises(MissingCheckpointError, match=f"seq {head.seq}"):
        asyncio.run(graph.recover_and_continue())
    kept = max(h.seq for h in graph.list_checkpoints())
    with closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE executions SET head_seq = ?, head_id = ?, head_status = ? WHERE execution_id = ?",
                   (kept, f"ck-{head.execution_id}-{kept}", "running", head.execution_id))
        db.commit()
    with pytest.raises(TamperedCheckpointError, match="does not authenticate"):
        asyncio.run(graph.recover_and_continue())
    assert graphs.CALLS == []


class _LostAck(SqliteBackend):
    """Stores checkpoint ``seq`` and then reports the write failed (a reply lost after the commit)."""

    lost_seq = -1

    def put(self, header, blob, *, lease=None):
        super().put(header, blob, lease=lease)
        if header.seq == self.lost_seq and header.status != FAILED:
            raise BackendError("connection lost after the commit")


def test_a_write_reported_failed_after_it_landed_never_mixes_into_the_failure_record(tmp_path, monkeypatch) -> None:
    """The failure record after a boundary write that failed (or landed though reported failed) is built
    on the last boundary known stored and names it (base_seq): reading it never mixes in the landed
    record's state, and recovery re-runs that superstep once, exactly."""
    backend = _LostAck(tmp_path / "l.db")
    backend.lost_seq = 3  # the boundary after s2's superstep
    monkeypatch.setattr(CheckpointConfig, "open_backend", lambda self: backend)
    graph = checkpointed(graphs.chain(5), config=CheckpointConfig(), graph_id="g")
    with pytest.raises(BackendError, match="connection lost"):
        asyncio.run(graph.run({}))
    last = graph.get_last_checkpoint()
    assert (last.status, last.seq, last.base_seq) == (FAILED, 4, None)  # made whole: base cleared
    assert last.graph_state["count"] == 2  # the state of seq 2's boundary, not the landed seq 3's
    assert [v.node_key for v in last.execution_history] == ["s0", "s1"]
    backend.lost_seq = -1
    graphs.CALLS.clear()
    result = asyncio.run(graph.recover_and_continue())
    assert graphs.CALLS == ["s2:0", "s3:0", "s4:0"]
    assert result.content["count"] == 5
    assert graph.get_state_snapshot() == uninterrupted_count(5)


# -- retention and verify ------------------------------------------------------------------------------
def test_retention_rebases_the_oldest_kept_checkpoint_and_verify_checks_chains(tmp_path) -> None:
    """With retention on, the oldest kept checkpoint of a cut execution is made to stand alone before the
    ones before it go: every kept one reads back whole and `verify` finds nothing wrong. A checkpoint
    whose chain lost a link is reported INCOMPLETE; an execution missing its newest, MISSING."""
    url = f"sqlite:///{tmp_path}/r.db"
    graph = checkpointed(graphs.chain(8), config=CheckpointConfig(backend=url, retention_count=5), graph_id="g")
    for _ in range(3):
        asyncio.run(graph.run({}))
    headers = graph.list_checkpoints()
    assert len(headers) == 5
    for offset in range(5):
        assert not graph.get_checkpoint(offset=offset).partial_state
    assert cli(["--store", url, "verify"]) == 0

    more = checkpointed(graphs.chain(8), config=CheckpointConfig(backend=url, retention_count=None), graph_id="h")
    asyncio.run(more.run({}))
    by_seq = sorted(more.list_checkpoints(), key=lambda h: h.seq)
    more.backend.delete([by_seq[4].checkpoint_id])  # a middle link: 5.. need it
    out = _captured(["--store", url, "verify", "--graph", "h"])
    assert out[0] == 1 and "INCOMPLETE" in out[1] and by_seq[5].checkpoint_id in out[1]
    more.backend.delete([by_seq[-1].checkpoint_id])  # the final record
    out = _captured(["--store", url, "verify", "--graph", "h"])
    assert out[0] == 1 and "MISSING" in out[1] and "completed" in out[1]


def _captured(argv: list[str]) -> tuple[int, str]:
    import io

    buffer = io.StringIO()
    return cli(argv, out=buffer), buffer.getvalue()


def test_prune_without_rebase_keeps_what_kept_checkpoints_need(tmp_path) -> None:
    """Without a way to make a kept checkpoint stand alone, an execution whose oldest kept checkpoint is
    not its final one keeps all its older ones; a finished execution cut at its final one loses them."""
    url = f"sqlite:///{tmp_path}/p.db"
    graph = checkpointed(graphs.chain(6), config=CheckpointConfig(backend=url, retention_count=None), graph_id="g")
    asyncio.run(graph.run({}))
    rules = CheckpointConfig(retention_count=3).make_retention_rules()
    assert prune(graph.backend, rules, graph_id="g") == []
    assert len(graph.list_checkpoints()) == 7  # the start record, one per superstep (the last is final)
    rules = CheckpointConfig(retention_count=1).make_retention_rules()
    assert len(prune(graph.backend, rules, graph_id="g")) == 6
    (final,) = graph.list_checkpoints()
    assert final.status == COMPLETED and graph.get_checkpoint(offset=0).graph_state["count"] == 6


def test_default_retention_is_bounded() -> None:
    """Out of the box, finished runs do not grow storage without bound."""
    assert CheckpointConfig().retention_count == 100
    assert CheckpointConfig(retention_count=None).make_retention_rules() == []


# -- skips ---------------------------------------------------------------------------------------------
def test_a_skip_the_continuation_never_reaches_is_reported(tmp_path, monkeypatch) -> None:
    """skip_node for a node that has no further visit is not silently dropped: the recovery report lists
    it (and a warning says so)."""
    graph = checkpointed(graphs.chain(4), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "s.db")),
                         graph_id="g")
    fail_at(graph, "s2:0", monkeypatch)
    graph.skip_node("s1")  # already done: it has no further visit
    asyncio.run(graph.recover_and_continue())
    assert graph.last_recovery.unused_skips == ["s1"]


# -- SQLite ----------------------------------------------------------------------------------------------
def test_sqlite_backends_on_one_file_share_one_connection(tmp_path) -> None:
    """Backends on one file (and settings) in one process share one connection; it closes with the last."""
    first, second = SqliteBackend(tmp_path / "c.db"), SqliteBackend(tmp_path / "./c.db")
    other_settings = SqliteBackend(tmp_path / "c.db", synchronous="FULL")
    assert first._conn is second._conn and other_settings._conn is not first._conn
    shared = first._conn
    first.close()
    assert second.list() == []
    with pytest.raises(BackendError, match="closed"):
        first.list()
    second.close()
    other_settings.close()
    with pytest.raises(sqlite3.ProgrammingError):
        shared.execute("SELECT 1")


# -- in-flight journals (what an agent node stores call by call) ------------------------------------
class _Step(Node):
    async def process(self, context):
        count = await context.graph_state.get("count", 0)
        await context.graph_state.set("count", count + 1)
        if os.environ.get("SPARK_CKPT_TEST_FAIL") == self.id:
            raise RuntimeError(f"injected failure in {self.id}")
        return {"count": count + 1, "from": self.id}


class _Calls(_Step):
    """Journals three calls in flight (as an agent node does), resuming from what was recovered."""

    async def process(self, context):
        visit = current_visit()
        calls = list((visit.recovered_inflight or {}).get("calls", []))
        _RECOVERED.append(list(calls))
        for i in range(len(calls), 3):
            calls.append({"call": i})
            await visit.persist_inflight({"calls": list(calls)})
        if os.environ.get("SPARK_CKPT_TEST_STOP_AFTER_CALLS"):
            raise RuntimeError("stopped after the in-flight calls")
        return await super().process(context)


_RECOVERED: list[list] = []


def calls_graph(first: str = "a") -> Graph:
    """a -> calls (three in-flight records) -> c -> d; with ``first="calls"``, the journaling node starts."""
    nodes = {"a": _Step(id="a"), "calls": _Calls(id="calls"), "c": _Step(id="c"), "d": _Step(id="d")}
    order = ["calls", "a", "c", "d"] if first == "calls" else ["a", "calls", "c", "d"]
    for left, right in zip(order, order[1:]):
        nodes[left] >> nodes[right]
    return Graph(start=nodes[order[0]])


@pytest.mark.parametrize("keep", [3, 4, 5, 6])
def test_retention_never_cuts_between_in_flight_records_and_their_boundary(tmp_path, keep) -> None:
    """In-flight records depend on the boundary record they were built on: wherever retention cuts,
    every kept checkpoint still reads back whole."""
    url = f"sqlite:///{tmp_path}/i.db"
    graph = checkpointed(calls_graph(), config=CheckpointConfig(backend=url, retention_count=None), graph_id="g")
    asyncio.run(graph.run({}))
    rules = CheckpointConfig(retention_count=keep).make_retention_rules()
    prune(graph.backend, rules, graph_id="g", rebase=graph._rebase)
    for offset in range(len(graph.list_checkpoints())):
        assert graph.get_checkpoint(offset=offset).graph_state["count"] >= 1
    assert cli(["--store", url, "verify"]) == 0


def test_a_damaged_start_record_costs_nothing_when_the_first_node_journals_calls(tmp_path, monkeypatch) -> None:
    """The first boundary record after the start one is whole even when in-flight records come between."""
    path = tmp_path / "s.db"
    graph = checkpointed(calls_graph(first="calls"), config=CheckpointConfig(backend="sqlite", path=str(path)),
                         graph_id="g")
    fail_at(graph, "c", monkeypatch)
    with closing(sqlite3.connect(path)) as db:
        (blob,) = db.execute("SELECT blob FROM checkpoints WHERE seq = 0").fetchone()
        db.execute("UPDATE checkpoints SET blob = ? WHERE seq = 0", (blob[:40] + bytes([blob[40] ^ 1]) + blob[41:],))
        db.commit()
    result = asyncio.run(checkpointed(calls_graph(first="calls"), config=CheckpointConfig(
        backend="sqlite", path=str(path)), graph_id="g").recover_and_continue())
    assert result.content == {"count": 4, "from": "d"}


def test_a_skip_record_carries_the_in_flight_journal_whole(tmp_path, monkeypatch) -> None:
    """A continuation with a pending skip stores it at once; the record it writes holds the journals still
    in flight whole (never the base record's deltas again), so a recovery after it replays each call once."""
    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "k.db"))
    graph = checkpointed(calls_graph(), config=config, graph_id="g")
    monkeypatch.setenv("SPARK_CKPT_TEST_STOP_AFTER_CALLS", "1")
    with pytest.raises(RuntimeError, match="stopped"):
        asyncio.run(graph.run({}))
    for _ in range(2):  # each continuation stores its skip, then stops again before the skip is used
        graph.skip_node("d")
        with pytest.raises(RuntimeError, match="stopped"):
            asyncio.run(graph.recover_and_continue())
    monkeypatch.delenv("SPARK_CKPT_TEST_STOP_AFTER_CALLS")
    _RECOVERED.clear()
    asyncio.run(graph.recover_and_continue())
    assert _RECOVERED == [[{"call": 0}, {"call": 1}, {"call": 2}]]
    assert graph.last_recovery.skipped == [("d", 0)]


# -- forks and continuations -------------------------------------------------------------------------
def test_a_fork_is_recoverable_from_its_start_record(tmp_path, monkeypatch) -> None:
    """A forked execution's start record is the source record under the fork: a fork that fails before
    its first boundary is recovered exactly (pending inputs and superstep as the source stored them)."""
    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "f.db"))
    graph = checkpointed(graphs.chain(5), config=config, graph_id="g")
    asyncio.run(graph.run({}))
    source = sorted(graph.list_checkpoints(), key=lambda h: h.seq)[2]
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "s2:0")  # the fork's first live visit
    with pytest.raises(RuntimeError):
        asyncio.run(graph.continue_from_checkpoint(source.checkpoint_id))
    monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")
    fork = graph.last_recovery.execution_id
    assert fork != source.execution_id
    graphs.CALLS.clear()
    result = asyncio.run(graph.recover_and_continue(execution_id=fork))
    assert graphs.CALLS == ["s2:0", "s3:0", "s4:0"]
    assert result.content == {"step": "s4", "count": 5}


def test_continuing_a_record_another_worker_moved_past_forks(tmp_path, monkeypatch) -> None:
    """continue_from_checkpoint of a record that was the newest when restored, but that another worker
    continued before this one took the lease, forks a new execution instead of continuing a stale one."""
    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "c.db"))
    fail_at(checkpointed(graphs.chain(5), config=config, graph_id="g"), "s2:0", monkeypatch)
    operator = checkpointed(graphs.chain(5), config=config, graph_id="g")
    restored = operator.restore_from_checkpoint(operator.list_checkpoints()[0].checkpoint_id)
    real_acquire = operator.backend.aacquire_lease

    async def another_worker_moves_on_first(*args, **kwargs):
        other = checkpointed(graphs.chain(5), config=config, graph_id="g")
        monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "s3:0")
        with pytest.raises(RuntimeError):
            await other.recover_and_continue()  # s2 ran live there; it failed at s3
        monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")
        return await real_acquire(*args, **kwargs)

    monkeypatch.setattr(operator.backend, "aacquire_lease", another_worker_moves_on_first)
    asyncio.run(operator.continue_from_checkpoint())
    assert operator.last_recovery.execution_id != restored.execution_id
    assert operator.backend.executions(graph_id="g", unfinished_only=True)[0].execution_id == restored.execution_id


# -- graphs whose edges are not plain ----------------------------------------------------------------
class _Publisher(_Step):
    async def process(self, context):
        await self.publish_event("topic", {"x": 1})
        return await super().process(context)


def test_a_graph_with_event_edges_recovers_with_its_events_published_again(tmp_path, monkeypatch) -> None:
    """A replayed visit publishes its journaled events again, so the subscriber still runs once and the
    recovered run ends as the uninterrupted one (it used to be refused, and before that silently wrong)."""
    def build() -> Graph:
        a, b, c, listener = _Publisher(id="a"), _Step(id="b"), _Step(id="c"), _Step(id="listener")
        a >> b >> c
        a.on_event("topic") >> listener
        return Graph(start=a)

    bare = build()
    asyncio.run(bare.run({"n": 1}))
    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "e.db"))
    graph = checkpointed(build(), config=config, graph_id="g")
    fail_at(graph, "c", monkeypatch)
    journaled = {(v.node_key, v.index): v for v in graph.get_last_checkpoint().execution_history}
    assert journaled[("a", 0)].events[0]["topic"] == "topic"
    recovered = checkpointed(build(), config=config, graph_id="g")
    asyncio.run(recovered.recover_and_continue())
    assert ("a", 0) in recovered.last_recovery.replayed and ("c", 0) in recovered.last_recovery.live
    visits = recovered.last_recovery.replayed + recovered.last_recovery.live
    assert visits.count(("listener", 0)) == 1 and ("listener", 1) not in visits
    assert recovered.get_state_snapshot() == bare.state.get_snapshot()


def test_a_graph_with_timer_edges_still_recovers(tmp_path, monkeypatch) -> None:
    """A timer edge fires by wall-clock time, so its visit replays in another superstep than it ran in:
    replay is matched by visit there, and recovery finishes with the remaining visits run live."""
    def build() -> Graph:
        a, b, c, d, e = _Step(id="a"), _Slow(id="b"), _Step(id="c"), _Step(id="d"), _Step(id="e")
        a >> b >> c >> e
        a.on_timer(0.02) >> d  # fires while b runs
        return Graph(start=a)

    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "t.db"))
    graph = checkpointed(build(), config=config, graph_id="g")
    fail_at(graph, "e", monkeypatch)
    assert ("d", 0) in [(v.node_key, v.index) for v in graph.get_last_checkpoint().execution_history]
    recovered = checkpointed(build(), config=config, graph_id="g")
    asyncio.run(recovered.recover_and_continue())
    assert recovered.last_recovery.live == [("e", 0)]
    assert ("d", 0) in recovered.last_recovery.replayed


class _Slow(_Step):
    async def process(self, context):
        await asyncio.sleep(0.1)
        return await super().process(context)


def test_a_lease_that_expired_while_recovery_read_is_renewed_before_anything_runs(tmp_path, monkeypatch) -> None:
    """Recovery takes the lease, then reads the chain; if that outlasted the lease and another worker took
    the execution over meanwhile, this worker stops with LeaseError before its first live visit."""
    from spark_ckpt.errors import LeaseError

    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "l.db"), lease_ttl_s=0.3)
    fail_at(checkpointed(graphs.chain(4), config=config, graph_id="g"), "s1:0", monkeypatch)
    slow = checkpointed(graphs.chain(4), config=config, graph_id="g")
    other = checkpointed(graphs.chain(4), config=config, graph_id="g")
    read = slow._latest_verified

    async def slow_read(execution_id, head):
        await asyncio.sleep(0.4)  # a long chain to read: the lease expires meanwhile
        other.backend.acquire_lease(execution_id, other.worker_id, 60)
        return await read(execution_id, head)

    monkeypatch.setattr(slow, "_latest_verified", slow_read)
    graphs.CALLS.clear()
    with pytest.raises(LeaseError):
        asyncio.run(slow.recover_and_continue())
    assert graphs.CALLS == []


def test_file_store_newest_checkpoint_with_a_damaged_header_is_passed_over_not_missing(tmp_path, monkeypatch) -> None:
    """A checkpoint file whose own header is damaged is left out of listings; recovery takes it for damage
    (falls back, and says so), not for a deleted checkpoint."""
    config = CheckpointConfig(backend="file", path=str(tmp_path / "store"))
    graph = checkpointed(graphs.chain(5), config=config, graph_id="g")
    fail_at(graph, "s3:0", monkeypatch)
    newest = max(graph.list_checkpoints(), key=lambda h: h.seq)
    path = next((tmp_path / "store" / "graphs").rglob(f"{newest.seq:012d}.ckpt"))
    path.write_bytes(b"SCKPTF1\n\x00\x00\x10\x00{")
    graphs.CALLS.clear()
    result = asyncio.run(graph.recover_and_continue())
    assert graph.last_recovery.fell_back == [newest.checkpoint_id]
    assert result.content == {"step": "s4", "count": 5}


def test_file_store_blank_head_file_reads_as_absent(tmp_path) -> None:
    """A head file never written through (a crash right after it was created) is absent, not damage: the
    newest stored checkpoint stands in for it."""
    from spark_ckpt.backends.file import FileBackend
    from spark_ckpt.testing.conformance import make_header

    backend = FileBackend(tmp_path / "store", fsync=False)
    backend.put(make_header(0), b"x")
    (tmp_path / "store" / "heads" / "exec-1.head").write_bytes(b"")
    assert backend.execution_head("exec-1").seq == 0
    assert [h.seq for h in backend.executions()] == [0]


def test_an_agent_state_whose_write_failed_is_never_a_later_base(tmp_path, monkeypatch) -> None:
    """A standalone agent's state becomes the base of later deltas only once stored: after a run whose
    final write failed, the next run's state still reads back in a fresh process."""
    from spark.agents import Agent, AgentConfig

    from agent_workers.scripted import ScriptedModel, step

    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "a.db"))
    agent = checkpointed(Agent(AgentConfig(model=ScriptedModel(), name="bot", tools=[step])), config=config,
                         agent_id="bot")
    asyncio.run(agent.run("task:1"))
    real_put = agent.backend.put

    def full_disk_for_the_final_record(header, blob, *, lease=None):
        if header.status == COMPLETED:
            raise BackendError("disk full")
        return real_put(header, blob, lease=lease)

    monkeypatch.setattr(agent.backend, "put", full_disk_for_the_final_record)
    with pytest.raises(BackendError):
        asyncio.run(agent.run("task:1"))
    monkeypatch.undo()
    asyncio.run(agent.run("task:1"))
    fresh = checkpointed(Agent(AgentConfig(model=ScriptedModel(), name="bot", tools=[step])), config=config,
                         agent_id="bot")
    assert fresh.restore_latest()
    assert len(fresh.agent.memory_manager.memory) == len(agent.agent.memory_manager.memory)


def test_events_a_subgraph_publishes_on_the_outer_bus_are_published_again_when_its_visit_replays(
        tmp_path, monkeypatch) -> None:
    """A subgraph sharing the outer event bus publishes for its outer visit: when that visit replays,
    the outer subscribers get the events again (else the listener below would silently never run)."""
    from spark.graphs.graph import SubgraphNode

    def build() -> Graph:
        inner = Graph(start=_Publisher(id="emit"))
        a, c, listener = _Step(id="a"), _Step(id="c"), _Step(id="listener")
        sub = SubgraphNode(id="sub", graph=inner, share_event_bus=True)
        a >> sub >> c
        a.on_event("topic") >> listener
        return Graph(start=a)

    bare = build()
    asyncio.run(bare.run({}))
    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "s.db"))
    fail_at(checkpointed(build(), config=config, graph_id="g"), "c", monkeypatch)
    recovered = checkpointed(build(), config=config, graph_id="g")
    asyncio.run(recovered.recover_and_continue())
    report = recovered.last_recovery
    assert ("sub", 0) in report.replayed and ("listener", 0) in report.live + report.replayed
    assert recovered.get_state_snapshot() == bare.state.get_snapshot()
