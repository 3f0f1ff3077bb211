"""The rules that keep recovery exact, in one process: refusing a divergent replay before anything runs
live, an executions index that cannot be lowered without the key, records built on a boundary whose
write failed (or was reported failed though it landed), retention and `spark-ckpt verify` on chains,
skips a continuation never reached, one SQLite connection per file."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing

import pytest
from spark.graphs import Graph

import graphs
from spark_ckpt import CheckpointConfig, checkpointed
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
