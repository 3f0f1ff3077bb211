"""PostgresBackend against a real PostgreSQL server: conformance, leases across processes,
migrations (the executions index filled from an existing schema), a put in one round trip, heads
under concurrent writers, dropped connections and a server restart in the middle of a run."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
import uuid

import attrs
import psycopg
import pytest
from spark_ckpt.testing.leases import check_leases

from spark_ckpt.config import open_backend
from spark_ckpt.errors import BackendError, ConfigError, DuplicateCheckpointError, ExecutionCompletedError
from spark_ckpt.model import COMPLETED, FAILED, RUNNING, CheckpointHeader
from spark_ckpt.testing.conformance import BackendConformance, make_header
from spark_ckpt_postgres import PostgresBackend
from spark_ckpt_postgres.backend import MIGRATIONS


class TestPostgresBackend(BackendConformance):
    @pytest.fixture(autouse=True)
    def _server(self, pg_dsn):
        self.dsn = pg_dsn

    def make_backend(self, tmp_path):
        self.schema = f"t_{uuid.uuid4().hex[:12]}"
        return PostgresBackend.from_url(f"{self.dsn}?schema={self.schema}")

    def reopen_backend(self, backend, tmp_path):
        return PostgresBackend.from_url(f"{self.dsn}?schema={backend.schema}")


def test_found_through_the_entry_point(pg_url):
    """The installed plugin makes postgresql:// and postgres:// URLs open a PostgresBackend."""
    backend = open_backend(pg_url)
    try:
        assert isinstance(backend, PostgresBackend)
    finally:
        backend.close()
    other = open_backend(pg_url.replace("postgresql://", "postgres://", 1))
    other.close()


def test_schema_is_migrated_once_by_concurrent_workers(pg_url):
    """Several backends opening one new schema at once: one migrates, none fails, version recorded."""
    opened, errors = [], []

    def open_one() -> None:
        try:
            opened.append(PostgresBackend.from_url(pg_url))
        except Exception as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert {b.schema_version() for b in opened} == {MIGRATIONS[-1][0]}
    finally:
        for backend in opened:
            backend.close()


def test_schema_from_a_newer_plugin_is_refused(pg_url):
    """A schema migrated by a newer plugin version is not written to by an older one."""
    backend = PostgresBackend.from_url(pg_url)
    try:
        backend._run(lambda conn, _: conn.execute(
            f'INSERT INTO "{backend.schema}".spark_ckpt_migrations (version, name) VALUES (999, %s)', ["future"]
        ))
    finally:
        backend.close()
    with pytest.raises(BackendError, match="newer spark-ckpt-postgres"):
        PostgresBackend.from_url(pg_url)


def _v1_schema(dsn: str, headers: list[CheckpointHeader]) -> str:
    """A new schema as the first plugin version left it (migration 1 only), holding ``headers``."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    s = f'"{schema}"'
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {s}")
        conn.execute(
            f"CREATE TABLE {s}.spark_ckpt_migrations (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        version, name, statements = MIGRATIONS[0]
        for statement in statements:
            conn.execute(statement.format(s=s))
        conn.execute(f"INSERT INTO {s}.spark_ckpt_migrations (version, name) VALUES (%s, %s)", [version, name])
        for h in headers:
            conn.execute(
                f"INSERT INTO {s}.spark_ckpt_checkpoints (checkpoint_id, graph_id, execution_id, seq, created_at, "
                "status, kind, size, blob) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [h.checkpoint_id, h.graph_id, h.execution_id, h.seq, h.created_at, h.status, h.kind, h.size, b"old"],
            )
    return schema


def test_migrating_an_existing_schema_fills_the_execution_heads(pg_dsn):
    """A schema written before the executions index keeps every execution listable: migration 2 makes
    each one's newest stored checkpoint its head, and from then on the head rules apply to it."""
    schema = _v1_schema(pg_dsn, [
        make_header(0, execution_id="done"), make_header(1, execution_id="done", status=COMPLETED),
        make_header(0, execution_id="gap"), make_header(2, execution_id="gap", status=FAILED),  # seq 1 pruned
        make_header(0, execution_id="other", graph_id="graph-b"),
    ])
    backend = PostgresBackend.from_url(f"{pg_dsn}?schema={schema}")
    try:
        assert backend.schema_version() == MIGRATIONS[-1][0]
        assert [(h.checkpoint_id, h.status) for h in backend.executions()] == [
            ("gap-2", FAILED), ("done-1", COMPLETED), ("other-0", RUNNING)
        ]
        assert [h.checkpoint_id for h in backend.executions(graph_id="graph-a", unfinished_only=True)] == ["gap-2"]
        head = backend.execution_head("done")
        assert (head, head.tag) == (make_header(1, execution_id="done", status=COMPLETED), None)
        backend.delete(["done-1"])
        assert backend.executions(graph_id="graph-a")[1].status == COMPLETED
        lease = backend.acquire_lease("done", "worker-a", 30)
        with pytest.raises(ExecutionCompletedError):
            backend.put(make_header(2, execution_id="done"), b"late", lease=lease)
        lease = backend.acquire_lease("gap", "worker-a", 30)
        with pytest.raises(DuplicateCheckpointError):
            backend.put(make_header(1, execution_id="gap"), b"into the gap", lease=lease)
        backend.put(make_header(3, execution_id="gap"), b"next", lease=lease)
        assert backend.execution_head("gap").seq == 3
    finally:
        backend.close()


def test_a_put_is_one_round_trip(pg_url):
    """The hot path: a put, with or without a lease, is one statement (no BEGIN/COMMIT round trips)."""
    backend = PostgresBackend.from_url(pg_url)
    lease = backend.acquire_lease("exec-1", "worker-a", 30)
    try:
        with backend._pool.connection() as conn:
            for seq in range(4):
                with tempfile.TemporaryFile("w+") as trace:
                    conn.pgconn.trace(trace.fileno())
                    conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
                    backend._put(conn, make_header(seq), b"x", lease if seq % 2 else None, 0)
                    conn.pgconn.untrace()
                    trace.seek(0)
                    sent = [line.split("\t")[2] for line in trace.read().splitlines() if line.startswith("F\t")]
                # one Sync ends one extended-protocol round trip; a Query would be a BEGIN or COMMIT
                assert (sent.count("Sync"), sent.count("Query")) == (1, 0), sent
        assert backend.execution_head("exec-1").seq == 3
    finally:
        backend.close()


def test_concurrent_writers_only_move_the_head_forward(pg_url):
    """Threads storing one execution's seqs out of order at once leave the highest as its head; a
    leased writer racing an unleased copy of the final checkpoint either lands first or is refused."""
    backend = PostgresBackend.from_url(pg_url)
    try:
        def write(start: int) -> None:
            for seq in range(start, 40, 4)[::-1]:
                backend.put(make_header(seq, status=COMPLETED if seq == 39 else RUNNING), b"x")

        threads = [threading.Thread(target=write, args=(start,)) for start in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(backend.list()) == 40
        assert (backend.execution_head("exec-1").seq, backend.executions()[0].status) == (39, COMPLETED)

        lease = backend.acquire_lease("e2", "worker-a", 30)
        backend.put(make_header(0, execution_id="e2"), b"x", lease=lease)
        outcomes: list[str] = []

        def leased() -> None:
            try:
                backend.put(make_header(1, execution_id="e2"), b"worker", lease=lease)
                outcomes.append("stored")
            except ExecutionCompletedError:
                outcomes.append("refused")

        copy = threading.Thread(target=backend.put, args=(make_header(2, execution_id="e2", status=COMPLETED), b"copy"))
        worker = threading.Thread(target=leased)
        copy.start()
        worker.start()
        copy.join()
        worker.join()
        head = backend.execution_head("e2")
        assert (head.seq, head.status) == (2, COMPLETED)
        assert len(backend.list(execution_id="e2")) == (3 if outcomes == ["stored"] else 2)
    finally:
        backend.close()


def test_leased_put_retried_after_commit_is_not_refused(pg_url):
    """A leased put whose first attempt committed (the answer was lost) succeeds on retry although
    the head is now its own seq; the same retry with other bytes is a duplicate."""
    backend = PostgresBackend.from_url(pg_url)
    try:
        lease = backend.acquire_lease("exec-1", "worker-a", 30)
        header = attrs.evolve(make_header(0, size=3), tag=b"mac")
        backend.put(header, b"abc", lease=lease)
        backend._run(lambda conn, _: backend._put(conn, header, b"abc", lease, 1))
        with pytest.raises(DuplicateCheckpointError):
            backend._run(lambda conn, _: backend._put(conn, header, b"abd", lease, 1))
        assert [h.seq for h in backend.list()] == [0]
        assert backend.execution_head("exec-1").tag == b"mac"
    finally:
        backend.close()


@pytest.mark.parametrize(
    "query, message",
    [("schema=bad-name", "plain identifier"), ("pool_max_size=0", "pool sizes"), ("retries=x", "retries"),
     ("bogus_option=1", "bogus_option")],
)
def test_bad_options_are_config_errors(pg_dsn, query, message):
    """Invalid backend options raise ConfigError naming the problem, before touching the server."""
    with pytest.raises(ConfigError, match=message):
        PostgresBackend.from_url(f"{pg_dsn}?{query}")


def test_unreachable_server_is_a_clear_backend_error():
    """A server that is not there gives BackendError with the address and no password."""
    with pytest.raises(BackendError, match="127.0.0.1:1/") as info:
        PostgresBackend.from_url("postgresql://user:secret@127.0.0.1:1/db?pool_timeout=1")
    assert "secret" not in str(info.value)


PASSWORD = "s3cr@t!"  # an unescaped '@': libpq alone would read "t!@127.0.0.1" as the host


def test_connection_failure_never_shows_the_password(caplog):
    """A closed port, with a password holding an unescaped '@': neither the error nor a log line shows
    any of it (the message still names the address)."""
    import logging

    caplog.set_level(logging.DEBUG)
    url = f"postgresql://alice:{PASSWORD}@127.0.0.1:1/db?pool_timeout=1&sslpassword={PASSWORD}"
    for open_it in (lambda: PostgresBackend.from_url(url), lambda: open_backend(url)):
        with pytest.raises(BackendError, match="127.0.0.1:1/db") as info:
            open_it()
        assert PASSWORD not in str(info.value) and "t!@" not in str(info.value)
    assert PASSWORD not in caplog.text and "t!@" not in caplog.text and "s3cr" not in caplog.text


def test_describe_and_repr_never_show_the_password(pg_dsn):
    """A live backend opened with such a password (the test server trusts any) describes itself masked."""
    from urllib.parse import urlsplit

    parts = urlsplit(pg_dsn)
    url = f"postgresql://{parts.username or 'postgres'}:{PASSWORD}@{parts.hostname}:{parts.port}{parts.path}" \
          f"?schema=t_{uuid.uuid4().hex[:12]}"
    try:
        backend = open_backend(url)
    except BackendError as exc:
        assert PASSWORD not in str(exc)
        pytest.skip(f"the test server checks passwords: {exc}")
    try:
        for text in (backend.describe(), repr(backend)):
            assert PASSWORD not in text and f"{parts.hostname}:{parts.port}" in text and "***" in text
    finally:
        backend.close()


def test_two_worker_processes_race_and_a_stalled_worker_is_fenced(pg_url, tmp_path):
    """Two real processes recover one execution: exactly one continues it, history does not fork.
    A worker frozen past its lease cannot write after another worker took the execution over."""
    check_leases(pg_url, tmp_path)


def test_dropped_connections_are_replaced(pg_url):
    """Connections killed server-side (pg_terminate_backend) are replaced; sync and async calls succeed."""
    backend = PostgresBackend.from_url(pg_url)
    killer = PostgresBackend.from_url(pg_url)

    def kill_others() -> int:
        return killer._run(lambda conn, _: conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND datname = current_database() AND backend_type = 'client backend'"
        ).fetchone()[0])

    try:
        backend.put(make_header(0), b"before")
        assert kill_others() >= 1
        backend.put(make_header(1), b"after")
        assert [h.seq for h in backend.list()] == [1, 0]

        async def scenario() -> bytes:
            await backend.aput(make_header(2), b"async before")
            kill_others()
            await backend.aput(make_header(3), b"async after")
            blob = (await backend.aget("exec-1-3")).blob
            await backend.aclose()
            return blob

        assert asyncio.run(scenario()) == b"async after"
    finally:
        backend.close()
        killer.close()


def test_put_retried_after_commit_is_not_duplicated(pg_url):
    """A put whose first attempt committed (connection lost before the answer) succeeds on retry, once."""
    backend = PostgresBackend.from_url(pg_url)
    try:
        header = make_header(0, size=3)
        backend.put(header, b"abc")
        # what the retry sees: its own row, same id and bytes -> success; different bytes -> duplicate
        backend._conflict(header, b"abc", backend._run(
            lambda conn, _: conn.execute(backend._existing_sql(), ["exec-1-0", "exec-1", 0]).fetchone()
        ), retried=True)
        with pytest.raises(DuplicateCheckpointError):
            backend._conflict(header, b"abd", backend._run(
                lambda conn, _: conn.execute(backend._existing_sql(), ["exec-1-0", "exec-1", 0]).fetchone()
            ), retried=True)
        assert len(backend.list()) == 1
    finally:
        backend.close()


def test_server_restart_mid_run_loses_no_acknowledged_checkpoint():
    """PostgreSQL restarted while a writer runs: the run completes, every acknowledged put is stored."""
    from spark_ckpt_postgres.testing import ThrowawayPostgres, find_pg_bin

    if find_pg_bin() is None:
        pytest.skip("needs the PostgreSQL server binaries to restart a private cluster")
    cluster = ThrowawayPostgres().start()
    backend = PostgresBackend.from_url(f"{cluster.dsn}?pool_timeout=20")
    acknowledged: list[str] = []
    failures: list[BaseException] = []
    total = 60
    started = threading.Event()

    def writer() -> None:
        try:
            for seq in range(total):
                header = CheckpointHeader(f"ck-{seq}", "g", "e", seq, time.time(), size=16)
                for _ in range(100):  # what a runtime does: retry the same checkpoint
                    try:
                        backend.put(header, f"checkpoint {seq:05d}".encode()[:16].ljust(16))
                        break
                    except BackendError:
                        time.sleep(0.1)
                else:
                    raise AssertionError(f"checkpoint {seq} never stored")
                acknowledged.append(header.checkpoint_id)
                if seq == 5:
                    started.set()
                time.sleep(0.02)
        except BaseException as exc:  # asserted below
            failures.append(exc)
            started.set()

    try:
        thread = threading.Thread(target=writer)
        thread.start()
        assert started.wait(60)
        cluster.restart()
        thread.join(timeout=300)
        assert not thread.is_alive()
        assert failures == []
        stored = {h.checkpoint_id for h in backend.list()}
        assert set(acknowledged) <= stored
        assert len(acknowledged) == total
        assert [h.seq for h in sorted(backend.list(), key=lambda h: h.seq)] == list(range(total))
    finally:
        backend.close()
        cluster.destroy()


def test_checkpointed_graph_survives_a_server_restart_mid_run():
    """A real checkpointed Spark graph on PostgreSQL; the server restarts inside a node. The run fails
    with a clear BackendError or completes; either way recovery (if needed) ends with the uninterrupted
    run's result and state, and no acknowledged checkpoint is missing."""
    from spark.graphs import Graph
    from spark.nodes import Node

    from spark_ckpt import CheckpointConfig, checkpointed
    from spark_ckpt.errors import NothingToRecoverError
    from spark_ckpt_postgres.testing import ThrowawayPostgres, find_pg_bin

    if find_pg_bin() is None:
        pytest.skip("needs the PostgreSQL server binaries to restart a private cluster")
    cluster = ThrowawayPostgres().start()

    class Step(Node):
        async def process(self, context):
            count = await context.graph_state.get("count", 0) + 1
            await context.graph_state.set("count", count)
            if self.id == "s3" and not restarted:
                restarted.append(True)
                cluster.restart()  # the next checkpoint write meets a restarted server
            return {"count": count}

    def build():
        nodes = [Step(id=f"s{i}") for i in range(6)]
        for a, b in zip(nodes, nodes[1:]):
            a >> b
        return Graph(start=nodes[0])

    restarted: list[bool] = []
    url = f"{cluster.dsn}?pool_timeout=20"
    acknowledged: list[str] = []

    class Acks:
        from spark_ckpt import hookimpl

        @hookimpl
        def spark_ckpt_post_checkpoint(self, event):
            acknowledged.append(event.header.checkpoint_id)

    from spark_ckpt import plugins

    acks = Acks()
    plugins.register(acks)
    try:
        graph = checkpointed(build(), config=CheckpointConfig(backend=url), graph_id="restart")
        try:
            result = asyncio.run(graph.run({}))
        except BackendError:
            graph = checkpointed(build(), config=CheckpointConfig(backend=url), graph_id="restart")
            result = asyncio.run(graph.recover_and_continue())
        else:
            with pytest.raises(NothingToRecoverError):
                asyncio.run(graph.recover_and_continue())
        assert restarted and result.content == {"count": 6}
        assert graph.get_state_snapshot()["count"] == 6
        stored = {h.checkpoint_id for h in graph.list_checkpoints()}
        assert set(acknowledged) <= stored
        graph.close()
    finally:
        plugins.unregister(acks)
        cluster.destroy()
