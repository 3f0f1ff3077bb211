"""Backend objects with the guide's constructor arguments ("State Backend Selection"): built by the user,
given to a config or to ``checkpointed``, queried with ``list_checkpoints`` / ``get_checkpoint`` /
``delete_checkpoint`` (with and without ``await``), several independent stores in one SQLite file by
``table_name``, and crash recovery through one in a process that was SIGKILLed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from agent_workers.scripted import ScriptedModel, charge, step
from spark.agents import Agent, AgentConfig
from spark.graphs import Graph
from spark.nodes import Node

import graphs
from spark_ckpt import (
    BackendError, CheckpointConfig, CheckpointInUseError, CheckpointNotFoundError, ConfigError, LeaseError,
    NothingToRecoverError, UnknownBackendError, checkpointed, open_backend,
)
from spark_ckpt.backends import FileBackend, MemoryBackend, SQLiteBackend, SqliteBackend
from spark_ckpt.codec.envelope import unpack
from spark_ckpt.codec import new_key
from spark_ckpt.model import AgentRecord, GraphCheckpoint

WORKER = Path(__file__).with_name("backend_object_worker.py")
TABLE = "graph_checkpoints"


class Produce(Node):
    """Puts a large value into graph state, so its checkpoint is past the compression threshold."""

    async def process(self, context):
        await context.graph_state.set("report", "line of the report\n" * 2000)
        return {"done": True}


def fail_at(graph, visit: str, monkeypatch) -> None:
    """Run ``graph`` so that ``visit`` ("node:index") raises: its execution stays failed (unfinished)."""
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", visit)
    with pytest.raises(RuntimeError):
        asyncio.run(graph.run({}))
    monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")


def tables(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


# -- the guide's snippets -----------------------------------------------------------------------------
def test_guide_sqlite_backend_with_a_table_name(tmp_path):
    """SQLiteBackend(db_path=..., table_name=...) given to a graph's config; the guide's create_checkpoint
    and `await backend.list_checkpoints(graph_id=..., limit=10)`; stored under that table name."""
    sqlite_backend = SQLiteBackend(db_path=str(tmp_path / "checkpoints.db"), table_name="graph_checkpoints")
    graph = checkpointed(graphs.chain(3), config=CheckpointConfig(backend=sqlite_backend),
                         graph_id="production_workflow")
    checkpoint = graph.create_checkpoint()
    asyncio.run(graph.run({}))

    async def query():
        return await sqlite_backend.list_checkpoints(graph_id="production_workflow", limit=10)

    recent_checkpoints = asyncio.run(query())
    assert recent_checkpoints == sqlite_backend.list_checkpoints(graph_id="production_workflow", limit=10)
    assert recent_checkpoints == sqlite_backend.list(graph_id="production_workflow")  # newest first
    assert recent_checkpoints[-1].checkpoint_id == checkpoint.checkpoint_id
    assert [h.status for h in recent_checkpoints][0] == "completed"
    assert len(sqlite_backend.list_checkpoints(graph_id="production_workflow", limit=2)) == 2
    assert sqlite_backend.list_checkpoints(graph_id="another_workflow") == []
    assert {"graph_checkpoints", "graph_checkpoints_executions", "graph_checkpoints_leases"} <= tables(
        tmp_path / "checkpoints.db")
    assert "checkpoints" not in tables(tmp_path / "checkpoints.db")  # the default store was never created
    graph.close()
    sqlite_backend.close()


def test_guide_file_backend_compresses_and_the_config_can_say_otherwise(tmp_path):
    """FileBackend(path=..., format='json', compression=True): records are gzip-compressed JSON; a config
    that leaves compression at its default follows the object, one that sets it wins."""
    backend = FileBackend(path=str(tmp_path / "checkpoints"), format="json", compression=True)
    graph = checkpointed(Graph(start=Produce(id="produce")), config=CheckpointConfig(backend=backend), graph_id="g")
    asyncio.run(graph.run({}))
    newest = backend.list_checkpoints(graph_id="g", limit=1)[0]
    layers = [layer["name"] for layer in unpack(backend.get(newest.checkpoint_id).blob).layers]
    assert "gzip" in layers
    assert backend.get_checkpoint(newest.checkpoint_id).graph_state["report"].startswith("line of the report")

    plain = FileBackend(path=str(tmp_path / "plain"))
    graph = checkpointed(Graph(start=Produce(id="produce")), config=CheckpointConfig(backend=plain), graph_id="g")
    asyncio.run(graph.run({}))
    stored = plain.get(plain.list_checkpoints(graph_id="g", limit=1)[0].checkpoint_id)
    assert "gzip" not in [layer["name"] for layer in unpack(stored.blob).layers]
    assert stored.header.size > newest.size * 5  # what compression saved

    # the config's own compression setting is kept (here: "gzip" stays; a backend's choice never removes it)
    config = CheckpointConfig(backend=FileBackend(path=str(tmp_path / "third"), compression=False), compression="gzip")
    assert config.make_codec() is not None
    assert config.compression == "gzip"


def test_file_backend_format_pickle_needs_the_signing_key(tmp_path):
    """format='pickle' asks for signed pickles: refused without pickle_signing_key, pickles with it."""
    backend = FileBackend(path=str(tmp_path / "pickles"), format="pickle")
    with pytest.raises(ConfigError, match="pickle_signing_key"):
        checkpointed(graphs.chain(2), config=CheckpointConfig(backend=backend), graph_id="p")
    graph = checkpointed(graphs.chain(2), config=CheckpointConfig(backend=backend, pickle_signing_key=new_key()),
                         graph_id="p")
    asyncio.run(graph.run({}))
    newest = backend.list_checkpoints(graph_id="p", limit=1)[0]
    assert "pickle" in [layer["name"] for layer in unpack(backend.get(newest.checkpoint_id).blob).layers]
    assert backend.get_checkpoint(newest.checkpoint_id).graph_state["count"] == 2  # the graph's codec is bound


def test_memory_backend_object(tmp_path):
    backend = MemoryBackend()
    graph = checkpointed(graphs.chain(2), config=CheckpointConfig(backend=backend), graph_id="m")
    asyncio.run(graph.run({}))
    assert graph.backend is backend
    assert len(backend.list_checkpoints(graph_id="m")) == 3
    assert MemoryBackend().list_checkpoints() == []  # each object is its own store


# -- get / delete ---------------------------------------------------------------------------------------
def test_get_checkpoint_sync_and_async_give_the_whole_record(tmp_path):
    backend = SQLiteBackend(db_path=str(tmp_path / "c.db"))
    graph = checkpointed(graphs.chain(4), config=CheckpointConfig(backend=backend), graph_id="g")
    asyncio.run(graph.run({}))
    headers = backend.list_checkpoints(graph_id="g")
    middle = headers[1]

    record = backend.get_checkpoint(middle.checkpoint_id)
    assert isinstance(record, GraphCheckpoint)
    assert record.checkpoint_id == middle.checkpoint_id
    # made whole: the graph's own reading of the same record, full history and state
    assert record == graph.get_checkpoint(offset=1)
    assert len(record.execution_history) == middle.seq

    async def read():
        return (await backend.get_checkpoint(middle.checkpoint_id), await backend.aget_checkpoint(middle.checkpoint_id),
                await backend.alist_checkpoints(graph_id="g"))

    awaited, twin, listed = asyncio.run(read())
    assert awaited == record == twin
    assert listed == headers
    assert backend.get_checkpoint(record) == record  # a record stands for its id

    with pytest.raises(CheckpointNotFoundError):
        backend.get_checkpoint("ck-nope-0")
    with pytest.raises(CheckpointNotFoundError):
        asyncio.run(backend.aget_checkpoint("ck-nope-0"))
    with pytest.raises(ConfigError, match="checkpoint id"):
        backend.get_checkpoint(42)


def test_get_checkpoint_without_a_graph_uses_the_environment_keys(tmp_path, monkeypatch):
    """A backend object no graph has used decodes with CheckpointConfig().make_codec(): keys from the
    environment, so encrypted records written by a graph read back in another object."""
    monkeypatch.setenv("SPARK_CKPT_KEYS", f"k1:{new_key()}")
    writer = SQLiteBackend(db_path=str(tmp_path / "c.db"))
    graph = checkpointed(graphs.chain(2), config=CheckpointConfig(backend=writer), graph_id="g")
    asyncio.run(graph.run({}))
    reader = SQLiteBackend(db_path=str(tmp_path / "c.db"))
    newest = reader.list_checkpoints(graph_id="g", limit=1)[0]
    assert reader.get(newest.checkpoint_id).blob.count(b"s0") == 0  # encrypted: no node key in clear
    assert reader.get_checkpoint(newest.checkpoint_id).graph_state["count"] == 2


def test_delete_checkpoint_keeps_later_records_whole(tmp_path):
    """Deleting a record of a finished execution: the later ones, which hold only changes, still read whole."""
    backend = SQLiteBackend(db_path=str(tmp_path / "c.db"))
    graph = checkpointed(graphs.chain(4), config=CheckpointConfig(backend=backend), graph_id="g")
    asyncio.run(graph.run({}))
    by_seq = {h.seq: h for h in backend.list_checkpoints(graph_id="g")}
    before = {seq: backend.get_checkpoint(h.checkpoint_id) for seq, h in by_seq.items()}

    deleted = backend.delete_checkpoint(by_seq[1].checkpoint_id)
    assert deleted == True and bool(deleted) and repr(deleted) == "True"  # noqa: E712
    assert asyncio.run(backend.adelete_checkpoint(by_seq[2].checkpoint_id)) is True
    assert {h.seq for h in backend.list_checkpoints(graph_id="g")} == {0, 3, 4}
    for seq in (3, 4):
        assert backend.get_checkpoint(by_seq[seq].checkpoint_id) == before[seq]

    async def delete_awaited():
        return await backend.delete_checkpoint(by_seq[0].checkpoint_id)

    assert asyncio.run(delete_awaited()) is True
    with pytest.raises(CheckpointNotFoundError):
        backend.delete_checkpoint(by_seq[0].checkpoint_id)
    with pytest.raises(CheckpointNotFoundError):
        asyncio.run(backend.adelete_checkpoint("ck-nope-1"))


def test_delete_checkpoint_refuses_what_recovery_needs(tmp_path, monkeypatch):
    """A checkpoint of an unfinished execution is refused (recovery reads them all) unless force=True;
    the execution then still recovers from what is left when that is its newest."""
    backend = SQLiteBackend(db_path=str(tmp_path / "c.db"))
    graph = checkpointed(graphs.chain(4), config=CheckpointConfig(backend=backend), graph_id="g")
    fail_at(graph, "s2:0", monkeypatch)
    headers = backend.list_checkpoints(graph_id="g")
    assert backend.executions(graph_id="g")[0].status == "failed"
    oldest = headers[-1]
    with pytest.raises(CheckpointInUseError, match="failed.*force=True"):
        backend.delete_checkpoint(oldest.checkpoint_id)
    with pytest.raises(CheckpointInUseError):
        asyncio.run(backend.adelete_checkpoint(oldest.checkpoint_id))
    assert backend.list_checkpoints(graph_id="g") == headers  # nothing was deleted
    graphs.CALLS.clear()
    asyncio.run(graph.recover_and_continue())
    assert graphs.CALLS == ["s2:0", "s3:0"]  # the refused deletion left recovery intact
    assert backend.delete_checkpoint(oldest.checkpoint_id) == True  # noqa: E712  (finished now)

    fail_at(graph, "s1:1", monkeypatch)  # (a node counts its visits across runs)
    failed = backend.list_checkpoints(graph_id="g", limit=1)[0]
    assert asyncio.run(backend.adelete_checkpoint(failed.checkpoint_id, force=True)) is True


def test_agent_records_through_a_backend_object(tmp_path):
    """An agent given a backend object: its records list, read whole (the agent state at that record) and
    the records its newest state is built on are refused for deletion."""
    backend = SQLiteBackend(db_path=str(tmp_path / "agent.db"), table_name="agent_checkpoints")
    agent = checkpointed(Agent(AgentConfig(model=ScriptedModel(), name="bot", tools=[step, charge])),
                         config=CheckpointConfig(backend=backend), agent_id="bot")
    asyncio.run(agent.run("task:2"))
    asyncio.run(agent.run("task:1"))
    headers = backend.list_checkpoints(graph_id="bot")
    assert headers == agent.list_checkpoints()
    finished = next(h for h in headers if h.status == "completed")
    record = backend.get_checkpoint(finished.checkpoint_id)
    assert isinstance(record, AgentRecord)
    assert record.state_full is not None and record.state_delta is None
    assert record.state_full["agent_id"] == "bot"
    assert [m["role"] for m in record.state_full["memory"]["messages"]][:2] == ["user", "assistant"]
    assert asyncio.run(backend.aget_checkpoint(finished.checkpoint_id)) == record
    needed = [h for h in headers if h.checkpoint_id in _needed(agent)]
    assert needed
    with pytest.raises(CheckpointInUseError, match="newest state"):
        backend.delete_checkpoint(needed[-1].checkpoint_id)
    agent.close()
    assert backend.list_checkpoints(graph_id="bot") == headers  # closing the agent left the object open
    backend.close()


def _needed(agent) -> set[str]:
    return agent._records.needed_ids()


# -- table_name ----------------------------------------------------------------------------------------
def test_table_names_keep_stores_in_one_file_independent(tmp_path, monkeypatch):
    """Two table names in one database file: listings, executions, recovery and leases do not meet."""
    db = str(tmp_path / "shared.db")
    first = SQLiteBackend(db_path=db, table_name="graph_checkpoints")
    second = SQLiteBackend(db_path=db, table_name="other_checkpoints")
    default = SQLiteBackend(db)  # the store every earlier version wrote

    a = checkpointed(graphs.chain(3), config=CheckpointConfig(backend=first), graph_id="etl")
    b = checkpointed(graphs.chain(3), config=CheckpointConfig(backend=second), graph_id="etl")
    fail_at(a, "s1:0", monkeypatch)  # an unfinished execution in the first store only
    asyncio.run(b.run({}))
    assert [h.status for h in first.executions(graph_id="etl")] == ["failed"]
    assert [h.status for h in second.executions(graph_id="etl")] == ["completed"]
    assert default.list_checkpoints() == []
    assert {h.checkpoint_id for h in first.list_checkpoints()}.isdisjoint(
        h.checkpoint_id for h in second.list_checkpoints())

    with pytest.raises(NothingToRecoverError):
        asyncio.run(b.recover_and_continue())  # the failed execution is not in its store
    graphs.CALLS.clear()
    asyncio.run(a.recover_and_continue())
    assert graphs.CALLS == ["s1:0", "s2:0"]

    # leases: one execution id, held by different owners in each store
    first.acquire_lease("ex-shared", "worker-1", 60)
    second.acquire_lease("ex-shared", "worker-2", 60)
    with pytest.raises(LeaseError):
        first.acquire_lease("ex-shared", "worker-3", 60)

    # each store migrated on its own, the default one too when it was opened
    assert first.applied_migrations() == second.applied_migrations() == default.applied_migrations()
    assert len(first.applied_migrations()) == 7
    reopened = SQLiteBackend(db_path=db, table_name="GRAPH_CHECKPOINTS")  # names compare in lower case
    assert reopened.list_checkpoints() == first.list_checkpoints()
    by_url = open_backend(f"sqlite://{db}?table_name=other_checkpoints")  # how the CLI's --store names it
    assert by_url.list_checkpoints() == second.list_checkpoints()
    by_url.close()
    for backend in (first, second, default, reopened):
        backend.close()


def test_a_table_set_written_by_an_early_version_is_migrated_on_its_own(tmp_path):
    """Migrations run per table set: a store under a table name left at the first schema is brought up
    to date and keeps its rows; the default store's tables are neither created nor touched."""
    from sqlite_utils import Database

    from spark_ckpt.backends.sqlite import _migrations
    from spark_ckpt.backends.sqlite.schema import sqlite_tables

    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        _migrations(sqlite_tables(TABLE)).apply(Database(conn), stop_before="m002_executions_table")
        for seq in range(3):
            conn.execute(f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (f"ck-exec-{seq}", "g", "exec", seq, 1000.0 + seq, "running", "graph", 3, b"old"))
    backend = SQLiteBackend(db_path=str(path), table_name=TABLE)
    assert backend.applied_migrations()[-1] == "m007_values_stored_once"
    assert [h.seq for h in backend.list_checkpoints(graph_id="g")] == [2, 1, 0]
    assert backend.executions(graph_id="g")[0].seq == 2
    assert backend.get("ck-exec-1").blob == b"old"
    assert "checkpoints" not in tables(path)
    backend.close()


@pytest.mark.parametrize("name, why", [
    ("bad name", "plain identifier"), ("1abc", "plain identifier"), ("x" * 41, "plain identifier"),
    ("graph_executions", "share tables"), ("graph_leases", "share tables"), ("executions", "share tables"),
    ("leases", "share tables"), ("sqlite_master", "share tables"), (42, "must be a string"),
])
def test_bad_table_names_are_refused(tmp_path, name, why):
    with pytest.raises(ConfigError, match=why):
        SQLiteBackend(db_path=str(tmp_path / "c.db"), table_name=name)
    assert not (tmp_path / "c.db").exists()  # refused before the file was created


# -- crash recovery through a backend object -------------------------------------------------------------
def _worker(mode: str, kind: str, location: str, calls: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_TEST_")}
    environ.update(SPARK_CKPT_TEST_CALLS=str(calls), **env)
    return subprocess.run([sys.executable, str(WORKER), mode, kind, location, "crashy"],
                          env=environ, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_sigkilled_run_recovers_through_a_backend_object(tmp_path, kind):
    """A process killed inside a node; a new process builds the same backend object and recovers: visits
    before the kill are replayed, the rest run once, and the result equals an uninterrupted run."""
    location = str(tmp_path / ("c.db" if kind == "sqlite" else "store"))
    first = _worker("run", kind, location, tmp_path / "calls-1", SPARK_CKPT_TEST_CRASH="s3:0")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    second = _worker("recover", kind, location, tmp_path / "calls-2")
    assert second.returncode == 0, second.stderr[-3000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])

    graphs.CALLS.clear()
    uninterrupted = graphs.chain(5)
    result = asyncio.run(uninterrupted.run({}))
    assert out["result"] == result.content
    assert out["state"] == uninterrupted.state.get_snapshot()
    assert out["replayed"] == ["s0:0", "s1:0", "s2:0"]
    assert (tmp_path / "calls-2").read_text().split() == out["live"] == ["s3:0", "s4:0"]
    assert out["checkpoints"] > 0
    if kind == "sqlite":  # only the object's table set holds the run
        assert SqliteBackend(location).list() == []
        other = SQLiteBackend(db_path=location, table_name="other_checkpoints")
        assert other.list_checkpoints() == []
        with closing(sqlite3.connect(location)) as conn:
            assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == out["checkpoints"]


# -- ownership and sharing -------------------------------------------------------------------------------
def test_a_backend_object_is_not_closed_by_the_graphs_using_it(tmp_path):
    """Two graphs and an agent share one object and run at once; closing them leaves it open. A backend
    spark-ckpt opened from a URL is still closed with its graph."""
    backend = SQLiteBackend(db_path=str(tmp_path / "shared.db"), table_name=TABLE)
    one = checkpointed(graphs.chain(3), config=CheckpointConfig(backend=backend), graph_id="one")
    two = checkpointed(graphs.chain(2), backend=backend, graph_id="two")  # checkpointed(..., backend=obj)
    agent = checkpointed(Agent(AgentConfig(model=ScriptedModel(), name="bot", tools=[step, charge])),
                         backend=backend, agent_id="bot")

    async def together():
        return await asyncio.gather(one.run({}), two.run({}), agent.run("task:1"))

    asyncio.run(together())
    for wrapped in (one, two, agent):
        assert wrapped.backend is backend
        wrapped.close()
    assert {h.graph_id for h in backend.list_checkpoints()} == {"one", "two", "bot"}
    assert [h.status for h in backend.executions(graph_id="one")] == ["completed"]
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.list_checkpoints()

    opened = checkpointed(graphs.chain(2), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "own.db")),
                          graph_id="own")
    asyncio.run(opened.run({}))
    opened.close()
    with pytest.raises(BackendError, match="closed"):
        opened.backend.list()


def test_checkpointed_backend_argument_overrides_the_config(tmp_path):
    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "config.db"), retention_count=7)
    backend = SQLiteBackend(db_path=str(tmp_path / "object.db"))
    graph = checkpointed(graphs.chain(2), config=config, backend=backend, graph_id="g")
    assert graph.backend is backend and graph.config.retention_count == 7 and graph.config.path is None
    by_name = checkpointed(graphs.chain(2), config=config, backend="memory", graph_id="g")
    assert by_name.backend.name == "memory"
    by_url = checkpointed(graphs.chain(2), config=config, backend=f"sqlite://{tmp_path}/url.db", graph_id="g")
    assert by_url.backend.path == f"{tmp_path}/url.db"
    for g in (graph, by_name, by_url):
        g.close()
    assert not (tmp_path / "config.db").exists()


# -- the config ------------------------------------------------------------------------------------------
def test_config_with_a_backend_object(tmp_path, monkeypatch):
    backend = SQLiteBackend(db_path=str(tmp_path / "c.db"), table_name=TABLE)
    config = CheckpointConfig(backend=backend)
    assert config.open_backend() is backend
    assert not config.owns_backend and CheckpointConfig().owns_backend
    assert config.backend_url() == backend.describe() == f"sqlite://{tmp_path}/c.db (table {TABLE})"
    assert repr(backend) in repr(config)
    monkeypatch.setenv("SPARK_CKPT_PATH", str(tmp_path / "env.db"))
    assert CheckpointConfig.from_env(backend=backend).open_backend() is backend
    with pytest.raises(ConfigError, match="no path= or backend_options="):
        CheckpointConfig(backend=backend, path="other.db")
    with pytest.raises(ConfigError, match="no path= or backend_options="):
        CheckpointConfig(backend=backend, backend_options={"synchronous": "FULL"})
    with pytest.raises(ConfigError, match="backend object"):
        CheckpointConfig(backend=42)
    with pytest.raises(ConfigError, match="backend object"):
        CheckpointConfig(backend=object())


def test_database_is_the_guides_name_for_sqlite_or_postgresql(tmp_path, monkeypatch):
    from spark_ckpt import plugins

    monkeypatch.chdir(tmp_path)
    config = CheckpointConfig(backend="database")
    assert config.backend_url() == "sqlite://./checkpoints.db"
    backend = config.open_backend()
    assert backend.name == "sqlite" and (tmp_path / "checkpoints.db").exists()
    backend.close()
    at = CheckpointConfig(backend="database", path=str(tmp_path / "runs.db")).open_backend()
    assert at.path == str(tmp_path / "runs.db")
    at.close()
    with pytest.raises(ConfigError, match="SQLite.*PostgreSQL"):
        CheckpointConfig(backend="database", path="s3://bucket/x").open_backend()
    if "postgres" not in plugins.backends():
        with pytest.raises(UnknownBackendError, match=r"pip install spark-ckpt\[postgres\]") as caught:
            CheckpointConfig(backend="database", path="postgresql://app:hunter2@db.example/ckpt").open_backend()
        assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("build, match", [
    (lambda p: SQLiteBackend(), "needs the database file"),
    (lambda p: SQLiteBackend(db_path=p / "a.db", tabel_name="x"), "unexpected keyword argument 'tabel_name'"),
    (lambda p: SQLiteBackend(db_path=p / "a.db", path=p / "b.db"), "not two different files"),
    (lambda p: SQLiteBackend(db_path=p / "a.db", compression="lz4"), "not a compression"),
    (lambda p: FileBackend(), "needs a directory"),
    (lambda p: FileBackend(path=p / "f", format="xml"), "not a checkpoint format"),
    (lambda p: FileBackend(path=p / "f", compression=3), "not a compression"),
    (lambda p: FileBackend(path=p / "f", compresion=True), "unexpected keyword argument 'compresion'"),
    (lambda p: MemoryBackend("x"), "too many positional arguments"),
])
def test_bad_constructor_arguments_are_config_errors(tmp_path, build, match):
    with pytest.raises(ConfigError, match=match):
        build(tmp_path)


def test_bad_query_arguments_are_config_errors(tmp_path):
    backend = MemoryBackend()
    with pytest.raises(ConfigError, match="limit"):
        backend.list_checkpoints(limit=-1)
    with pytest.raises(ConfigError, match="graph_id"):
        backend.list_checkpoints(graph_id=7)
    with pytest.raises(ConfigError, match="limit"):
        asyncio.run(backend.alist_checkpoints(limit="10"))
    with pytest.raises(ConfigError, match="checkpoint id"):
        backend.delete_checkpoint(None)


def test_format_and_compression_as_backend_options_of_a_name_apply_too(tmp_path) -> None:
    """backend_options={"compression": ...} with a name or URL is not silently ignored."""
    from spark_ckpt.codec import GzipTransform

    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "o.db"), backend_options={"compression": "gzip"})
    assert any(isinstance(layer, GzipTransform) for layer in config.make_codec().pipeline)
    with pytest.raises(ConfigError, match="not a compression"):
        CheckpointConfig(backend="file", path=str(tmp_path / "f"), backend_options={"compression": "lz9"}).make_codec()


@pytest.mark.parametrize("name", ["order", "select", "user", "_hidden"])
def test_table_names_that_sql_would_misread_are_refused(tmp_path, name) -> None:
    with pytest.raises(ConfigError, match="table_name"):
        SQLiteBackend(db_path=str(tmp_path / "k.db"), table_name=name)


def test_an_unknown_config_field_is_a_config_error_naming_the_close_one() -> None:
    with pytest.raises(ConfigError, match="did you mean 'interval'"):
        CheckpointConfig(checkpoint_interval=5)
