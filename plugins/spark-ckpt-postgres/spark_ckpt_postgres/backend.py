"""``PostgresBackend``: checkpoints in PostgreSQL through psycopg 3 connection pools.

* One table of checkpoints (header columns + ``bytea`` blob, unique ``(execution_id, seq)``), one of
  leases and one of executions, created and migrated by the backend itself (``spark_ckpt_migrations``
  records what ran).
* The executions index (``spark_ckpt.backends.heads``) is ``spark_ckpt_executions``: one row per
  execution holding its head, the header (and writer's ``tag``) of the highest seq ever stored.
  ``executions()`` answers from it (heads of executions that still have a checkpoint row), so
  deleting checkpoints never changes an execution's status. Migration 2 created it and filled it
  from each execution's newest stored checkpoint (no tag). Stop workers of older plugin versions
  before it runs: one still running afterwards stores checkpoints without advancing their heads
  (an execution it starts is not listed by ``executions()`` at all).
* Sync calls use a ``ConnectionPool``; the ``a*`` twins use an ``AsyncConnectionPool`` of the running
  event loop. Nothing is serialized behind a backend-wide lock: concurrency is the pool's size.
* ``put`` is one statement (so one implicit transaction and one round trip): it inserts the checkpoint
  and advances the head in data-modifying CTEs, the head with an upsert that only moves it forward.
  Under a lease it also reads the lease row ``FOR SHARE`` (a takeover, ``FOR UPDATE``, cannot slip in
  before the insert) and the head, and inserts only if the token is current and the head allows it;
  what stopped it comes back in the same answer. The head is read without a lock: a writer committing
  a later head meanwhile is ordered after this put, and the forward-only upsert leaves its head in
  place. Every put takes its locks in one order (lease, checkpoint, head), so two puts never deadlock.
* Lease times come from the database clock, so workers on machines with skewed clocks agree.
* A dropped connection or a restarted server: the pool checks connections before handing them
  out, and each call is retried once on ``OperationalError``. A retried ``put`` whose first attempt
  did commit finds its own row (same id, same bytes) and succeeds instead of duplicating it.

URL: ``postgresql://user@host:5432/db?schema=spark_ckpt&pool_max_size=8``; every other query
parameter goes to libpq unchanged. Pool options: ``pool_min_size``, ``pool_max_size``,
``pool_timeout`` (seconds to wait for a connection, default 10), ``retries`` (default 1).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import weakref
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from spark_ckpt.backends import heads
from spark_ckpt.backends.base import Backend
from spark_ckpt.backends.leases import check_fence, extend_lease, grant_lease
from spark_ckpt.errors import (
    BackendError,
    CheckpointNotFoundError,
    ConfigError,
    DuplicateCheckpointError,
)
from spark_ckpt.model import COMPLETED, UNFINISHED_STATUSES, CheckpointHeader, Lease, StoredCheckpoint

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_HEADER_COLUMNS = "checkpoint_id, graph_id, execution_id, seq, created_at, status, kind, size"
_NOW = "extract(epoch from clock_timestamp())::float8"

#: Append-only: (version, name, statements). ``{s}`` is the quoted schema name.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "checkpoints and leases",
        [
            """CREATE TABLE {s}.spark_ckpt_checkpoints (
                checkpoint_id text PRIMARY KEY,
                graph_id      text NOT NULL,
                execution_id  text NOT NULL,
                seq           bigint NOT NULL,
                created_at    double precision NOT NULL,
                status        text NOT NULL,
                kind          text NOT NULL,
                size          bigint NOT NULL,
                blob          bytea NOT NULL,
                UNIQUE (execution_id, seq)
            )""",
            "CREATE INDEX spark_ckpt_checkpoints_by_time ON {s}.spark_ckpt_checkpoints "
            "(created_at DESC, seq DESC)",
            "CREATE INDEX spark_ckpt_checkpoints_by_graph ON {s}.spark_ckpt_checkpoints "
            "(graph_id, created_at DESC, seq DESC)",
            """CREATE TABLE {s}.spark_ckpt_leases (
                execution_id text PRIMARY KEY,
                owner        text NOT NULL,
                token        bigint NOT NULL,
                expires_at   double precision NOT NULL
            )""",
        ],
    ),
    (
        2,
        "executions index",
        [
            # Every put rewrites its execution's row: free room on each page keeps those updates HOT
            # (no index entry written; only graph_id is indexed and it does not change).
            """CREATE TABLE {s}.spark_ckpt_executions (
                execution_id  text PRIMARY KEY,
                checkpoint_id text NOT NULL,
                graph_id      text NOT NULL,
                seq           bigint NOT NULL,
                created_at    double precision NOT NULL,
                status        text NOT NULL,
                kind          text NOT NULL,
                size          bigint NOT NULL,
                tag           bytea
            ) WITH (fillfactor = 50)""",
            "CREATE INDEX spark_ckpt_executions_by_graph ON {s}.spark_ckpt_executions (graph_id)",
            # executions stored before the index start from their newest checkpoint
            "INSERT INTO {s}.spark_ckpt_executions "
            "(checkpoint_id, graph_id, execution_id, seq, created_at, status, kind, size) "
            "SELECT DISTINCT ON (execution_id) checkpoint_id, graph_id, execution_id, seq, created_at, status, "
            "kind, size FROM {s}.spark_ckpt_checkpoints ORDER BY execution_id, seq DESC",
        ],
    ),
]

_OPTION_TYPES: dict[str, Callable[[str], Any]] = {
    "schema": str,
    "pool_min_size": int,
    "pool_max_size": int,
    "pool_timeout": float,
    "retries": int,
}


def _header(row: Sequence[Any]) -> CheckpointHeader:
    return CheckpointHeader(
        checkpoint_id=row[0], graph_id=row[1], execution_id=row[2], seq=int(row[3]),
        created_at=float(row[4]), status=row[5], kind=row[6], size=int(row[7]),
    )


def _where(graph_id: str | None, execution_id: str | None) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if graph_id is not None:
        clauses.append("graph_id = %s")
        params.append(graph_id)
    if execution_id is not None:
        clauses.append("execution_id = %s")
        params.append(execution_id)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _limit(limit: int | None) -> str:
    if limit is None:
        return ""
    if int(limit) != limit or limit < 0:
        raise ConfigError(f"limit must be a non-negative integer, got {limit!r}")
    return f" LIMIT {int(limit)}"


class PostgresBackend(Backend):
    """Checkpoints in PostgreSQL; see the module docstring for the guarantees."""

    name = "postgres"
    url_schemes = ("postgresql", "postgres")

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "public",
        pool_min_size: int = 1,
        pool_max_size: int = 8,
        pool_timeout: float = 10.0,
        retries: int = 1,
    ) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise ConfigError(
                f"PostgreSQL schema name {schema!r} is not a plain identifier; use letters, digits "
                "and underscores (e.g. schema=spark_ckpt)"
            )
        if pool_max_size < 1 or pool_min_size < 0 or pool_min_size > pool_max_size:
            raise ConfigError(
                f"pool sizes must satisfy 0 <= pool_min_size <= pool_max_size >= 1, got "
                f"{pool_min_size} and {pool_max_size}"
            )
        import psycopg
        from psycopg_pool import ConnectionPool

        self._psycopg = psycopg
        try:
            psycopg.conninfo.conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            raise ConfigError(f"invalid PostgreSQL connection string {self._masked(conninfo)!r}: {exc}") from None
        self._conninfo = conninfo
        self.schema = schema
        self._min_size, self._max_size = pool_min_size, pool_max_size
        self._timeout = pool_timeout
        self._retries = max(0, retries)
        s = f'"{schema}"'
        self._t_ckpt = f"{s}.spark_ckpt_checkpoints"
        self._t_lease = f"{s}.spark_ckpt_leases"
        self._t_exec = f"{s}.spark_ckpt_executions"
        self._pool = ConnectionPool(
            conninfo,
            kwargs={"autocommit": True},
            min_size=pool_min_size,
            max_size=pool_max_size,
            timeout=pool_timeout,
            check=ConnectionPool.check_connection,
            name=f"spark-ckpt-{schema}",
            open=False,
        )
        # One async pool per event loop (an async pool is bound to the loop that opened it).
        self._apools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._async_conns: weakref.WeakSet[Any] = weakref.WeakSet()
        try:
            try:
                self._pool.open(wait=pool_min_size > 0, timeout=pool_timeout)
            except psycopg.OperationalError as exc:
                raise self._unreachable(exc) from exc
            self._run(self._migrate)
        except BaseException:
            self._pool.close()
            raise

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, **options: object) -> "PostgresBackend":
        parts = urlsplit(url)
        if parts.scheme.lower() not in cls.url_schemes:
            raise ConfigError(f"not a PostgreSQL URL: {cls._masked(url)!r} (expected postgresql://...)")
        kept, ours = [], dict(options)
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            (ours.__setitem__(key, value) if key in _OPTION_TYPES else kept.append((key, value)))
        kwargs: dict[str, Any] = {}
        for key, value in ours.items():
            if key not in _OPTION_TYPES:
                raise ConfigError(
                    f"unknown postgres backend option {key!r}; known: {', '.join(sorted(_OPTION_TYPES))}"
                )
            try:
                kwargs[key] = _OPTION_TYPES[key](value)
            except (TypeError, ValueError):
                raise ConfigError(f"postgres backend option {key}={value!r} is not a valid value") from None
        conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(kept), ""))
        return cls(conninfo, **kwargs)

    @staticmethod
    def _masked(conninfo: str) -> str:
        """The DSN without its password, for messages."""
        return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", conninfo)

    def describe(self) -> str:
        return f"postgres ({self._masked(self._conninfo)}, schema {self.schema})"

    def _migrate(self, conn: Any, attempt: int) -> None:
        s = f'"{self.schema}"'
        lock_key = int.from_bytes(hashlib.blake2b(f"spark-ckpt:{self.schema}".encode(), digest_size=8).digest(), "big", signed=True)
        with conn.transaction():
            # Several workers may start at once: one migrates, the others wait and then see it done.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key])
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {s}.spark_ckpt_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = {row[0] for row in conn.execute(f"SELECT version FROM {s}.spark_ckpt_migrations")}
            known = {version for version, _, _ in MIGRATIONS}
            if applied - known:
                raise BackendError(
                    f"PostgreSQL schema {self.schema!r} was migrated by a newer spark-ckpt-postgres "
                    f"(versions {sorted(applied - known)}); upgrade spark-ckpt-postgres to use it"
                )
            for version, name, statements in MIGRATIONS:
                if version in applied:
                    continue
                for statement in statements:
                    conn.execute(statement.format(s=s))
                conn.execute(f"INSERT INTO {s}.spark_ckpt_migrations (version, name) VALUES (%s, %s)", [version, name])

    def schema_version(self) -> int:
        """The newest migration applied to this schema."""
        return self._run(
            lambda conn, _: conn.execute(f'SELECT max(version) FROM "{self.schema}".spark_ckpt_migrations').fetchone()[0]
        )

    # -- running statements with one retry -------------------------------------------------------
    def _unreachable(self, exc: Exception) -> BackendError:
        return BackendError(
            f"PostgreSQL at {self._masked(self._conninfo)} failed: {exc}. Check that the server is "
            "running and reachable; nothing was half-written (each call is one transaction)"
        )

    def _run(self, fn: Callable[[Any, int], Any]) -> Any:
        attempt = 0
        while True:
            try:
                with self._pool.connection() as conn:
                    return fn(conn, attempt)
            except self._psycopg.OperationalError as exc:
                if attempt >= self._retries:
                    raise self._unreachable(exc) from exc
                attempt += 1
                # Drop the connections that died with the server before trying again.
                self._pool.check()

    async def _arun(self, fn: Callable[[Any, int], Any]) -> Any:
        attempt = 0
        while True:
            try:
                pool = await self._apool()
                async with pool.connection() as conn:
                    return await fn(conn, attempt)
            except self._psycopg.OperationalError as exc:
                if attempt >= self._retries:
                    raise self._unreachable(exc) from exc
                attempt += 1
                await (await self._apool()).check()

    async def _apool(self) -> Any:
        loop = asyncio.get_running_loop()
        task = self._apools.get(loop)
        if task is None:
            task = loop.create_task(self._open_apool())
            self._apools[loop] = task
        try:
            return await asyncio.shield(task)
        except BaseException:
            if task.done() and task.exception() is not None:
                self._apools.pop(loop, None)
            raise

    async def _open_apool(self) -> Any:
        from psycopg_pool import AsyncConnectionPool

        async def track(conn: Any) -> None:
            self._async_conns.add(conn)

        pool = AsyncConnectionPool(
            self._conninfo,
            kwargs={"autocommit": True},
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=self._timeout,
            check=AsyncConnectionPool.check_connection,
            configure=track,
            name=f"spark-ckpt-async-{self.schema}",
            open=False,
        )
        await pool.open(wait=self._min_size > 0, timeout=self._timeout)
        return pool

    # -- checkpoints -----------------------------------------------------------------------------
    def _put_sql(self, leased: bool) -> str:
        """One statement: insert the checkpoint, then advance its execution's head (only forward).

        Under a lease the insert happens only if the token is still current and the head allows it
        (``heads.advance``: not completed, seq after it); the answer carries the lease and head rows
        so the caller can say what refused it without another round trip."""
        values = (
            "%(checkpoint_id)s, %(graph_id)s, %(execution_id)s, %(seq)s, %(created_at)s, %(status)s, "
            "%(kind)s, %(size)s"
        )
        advance = (
            f"advanced AS (INSERT INTO {self._t_exec} AS e ({_HEADER_COLUMNS}, tag) "
            f"SELECT {values}, %(tag)s FROM stored ON CONFLICT (execution_id) DO UPDATE SET "
            "checkpoint_id = EXCLUDED.checkpoint_id, graph_id = EXCLUDED.graph_id, seq = EXCLUDED.seq, "
            "created_at = EXCLUDED.created_at, status = EXCLUDED.status, kind = EXCLUDED.kind, "
            "size = EXCLUDED.size, tag = EXCLUDED.tag WHERE e.seq < EXCLUDED.seq)"
        )
        if not leased:
            return (
                f"WITH stored AS (INSERT INTO {self._t_ckpt} ({_HEADER_COLUMNS}, blob) VALUES ({values}, %(blob)s) "
                f"ON CONFLICT DO NOTHING RETURNING 1), {advance} "
                "SELECT count(*) FROM stored"
            )
        return (
            f"WITH lease AS (SELECT owner, token, expires_at FROM {self._t_lease} "
            "WHERE execution_id = %(execution_id)s FOR SHARE), "
            f"head AS (SELECT {_HEADER_COLUMNS} FROM {self._t_exec} WHERE execution_id = %(execution_id)s), "
            f"stored AS (INSERT INTO {self._t_ckpt} ({_HEADER_COLUMNS}, blob) SELECT {values}, %(blob)s "
            "WHERE EXISTS (SELECT 1 FROM lease WHERE owner = %(owner)s AND token = %(token)s) "
            f"AND NOT EXISTS (SELECT 1 FROM head WHERE status = '{COMPLETED}' OR seq >= %(seq)s) "
            f"ON CONFLICT DO NOTHING RETURNING 1), {advance} "
            "SELECT (SELECT count(*) FROM stored), l.owner, l.token, l.expires_at, "
            + ", ".join(f"h.{column}" for column in _HEADER_COLUMNS.split(", "))
            + " FROM (VALUES (1)) AS one LEFT JOIN lease l ON true LEFT JOIN head h ON true"
        )

    @staticmethod
    def _put_params(header: CheckpointHeader, blob: bytes, lease: Lease | None) -> dict[str, Any]:
        params = {
            "checkpoint_id": header.checkpoint_id, "graph_id": header.graph_id, "execution_id": header.execution_id,
            "seq": header.seq, "created_at": header.created_at, "status": header.status, "kind": header.kind,
            "size": header.size, "blob": bytes(blob), "tag": header.tag,
        }
        if lease is not None:
            params["owner"], params["token"] = lease.owner, lease.token
        return params

    def _existing_sql(self) -> str:
        return (
            f"SELECT {_HEADER_COLUMNS}, blob FROM {self._t_ckpt} "
            "WHERE checkpoint_id = %s OR (execution_id = %s AND seq = %s) LIMIT 1"
        )

    @staticmethod
    def _conflict(header: CheckpointHeader, blob: bytes, existing: Sequence[Any] | None, retried: bool) -> None:
        """After a refused insert: fine if it is our own earlier attempt, else a duplicate."""
        if retried and existing is not None and _header(existing) == header and bytes(existing[8]) == bytes(blob):
            return  # the first attempt committed before the connection dropped
        raise DuplicateCheckpointError(
            f"checkpoint seq {header.seq} of execution {header.execution_id} (or id "
            f"{header.checkpoint_id}) already exists in PostgreSQL; it was not overwritten"
        )

    @classmethod
    def _refused(
        cls, header: CheckpointHeader, blob: bytes, lease: Lease | None, row: Sequence[Any], existing: Sequence[Any] | None,
    ) -> None:
        """After a put that stored nothing (``row`` is its answer): return if ``existing`` is our own
        earlier attempt (retries only pass it), else raise what refused it: a superseded lease, the
        head's rules, or a duplicate."""
        if existing is not None:
            try:
                return cls._conflict(header, blob, existing, retried=True)
            except DuplicateCheckpointError:
                pass  # someone else's row: say why ours was refused
        if lease is not None:
            current = Lease(header.execution_id, row[1], int(row[2]), float(row[3])) if row[2] is not None else None
            check_fence(current, lease, header.execution_id)
            heads.advance(_header(row[4:]) if row[4] is not None else None, header, leased=True)
        cls._conflict(header, blob, None, retried=False)

    def _put(self, conn: Any, header: CheckpointHeader, blob: bytes, lease: Lease | None, attempt: int) -> None:
        """Store one checkpoint (in the caller's transaction, if any) and advance its head."""
        row = conn.execute(self._put_sql(lease is not None), self._put_params(header, blob, lease)).fetchone()
        if row[0]:
            return
        # (a retry may find its own first attempt, committed before the connection dropped)
        existing = None
        if attempt > 0:
            existing = conn.execute(self._existing_sql(), [header.checkpoint_id, header.execution_id, header.seq]).fetchone()
        self._refused(header, blob, lease, row, existing)

    async def _aput(self, conn: Any, header: CheckpointHeader, blob: bytes, lease: Lease | None, attempt: int) -> None:
        row = await (await conn.execute(self._put_sql(lease is not None), self._put_params(header, blob, lease))).fetchone()
        if row[0]:
            return
        existing = None
        if attempt > 0:
            cur = await conn.execute(self._existing_sql(), [header.checkpoint_id, header.execution_id, header.seq])
            existing = await cur.fetchone()
        self._refused(header, blob, lease, row, existing)

    def put(self, header: CheckpointHeader, blob: bytes, *, lease: Lease | None = None) -> None:
        # one statement in autocommit: its own transaction
        self._run(lambda conn, attempt: self._put(conn, header, blob, lease, attempt))

    async def aput(self, header: CheckpointHeader, blob: bytes, *, lease: Lease | None = None) -> None:
        await self._arun(lambda conn, attempt: self._aput(conn, header, blob, lease, attempt))

    def _head_sql(self) -> str:
        return f"SELECT {_HEADER_COLUMNS}, tag FROM {self._t_exec} WHERE execution_id = %s"

    @staticmethod
    def _head(row: Sequence[Any] | None) -> CheckpointHeader | None:
        if row is None:
            return None
        tag = row[8]
        return attrs.evolve(_header(row), tag=bytes(tag)) if tag is not None else _header(row)

    def execution_head(self, execution_id: str) -> CheckpointHeader | None:
        return self._head(self._run(lambda conn, _: conn.execute(self._head_sql(), [execution_id]).fetchone()))

    async def aexecution_head(self, execution_id: str) -> CheckpointHeader | None:
        async def work(conn: Any, _: int) -> Any:
            return await (await conn.execute(self._head_sql(), [execution_id])).fetchone()

        return self._head(await self._arun(work))

    def _get_sql(self) -> str:
        return f"SELECT {_HEADER_COLUMNS}, blob FROM {self._t_ckpt} WHERE checkpoint_id = %s"

    def _stored(self, checkpoint_id: str, row: Sequence[Any] | None) -> StoredCheckpoint:
        if row is None:
            raise CheckpointNotFoundError(
                f"no checkpoint with id {checkpoint_id!r} in PostgreSQL schema {self.schema!r}"
            )
        return StoredCheckpoint(_header(row), bytes(row[8]))

    def get(self, checkpoint_id: str) -> StoredCheckpoint:
        row = self._run(lambda conn, _: conn.execute(self._get_sql(), [checkpoint_id]).fetchone())
        return self._stored(checkpoint_id, row)

    async def aget(self, checkpoint_id: str) -> StoredCheckpoint:
        async def work(conn: Any, _: int) -> Any:
            return await (await conn.execute(self._get_sql(), [checkpoint_id])).fetchone()

        return self._stored(checkpoint_id, await self._arun(work))

    def _list_query(self, graph_id: str | None, execution_id: str | None, limit: int | None) -> tuple[str, list[Any]]:
        where, params = _where(graph_id, execution_id)
        return (
            f"SELECT {_HEADER_COLUMNS} FROM {self._t_ckpt}{where} ORDER BY created_at DESC, seq DESC, checkpoint_id DESC{_limit(limit)}",
            params,
        )

    def list(self, *, graph_id=None, execution_id=None, limit=None) -> list[CheckpointHeader]:
        query, params = self._list_query(graph_id, execution_id, limit)
        return [_header(r) for r in self._run(lambda conn, _: conn.execute(query, params).fetchall())]

    async def alist(self, *, graph_id=None, execution_id=None, limit=None) -> list[CheckpointHeader]:
        query, params = self._list_query(graph_id, execution_id, limit)

        async def work(conn: Any, _: int) -> Any:
            return await (await conn.execute(query, params)).fetchall()

        return [_header(r) for r in await self._arun(work)]

    def _executions_query(self, graph_id: str | None, unfinished_only: bool, limit: int | None) -> tuple[str, list[Any]]:
        # The heads of the executions that still hold a checkpoint (one index probe each).
        clauses, params = [f"EXISTS (SELECT 1 FROM {self._t_ckpt} c WHERE c.execution_id = e.execution_id)"], []
        if graph_id is not None:
            clauses.append("e.graph_id = %s")
            params.append(graph_id)
        if unfinished_only:
            clauses.append("e.status = ANY(%s)")
            params.append(sorted(UNFINISHED_STATUSES))
        return (
            f"SELECT {_HEADER_COLUMNS} FROM {self._t_exec} e WHERE {' AND '.join(clauses)} "
            f"ORDER BY created_at DESC, seq DESC, checkpoint_id DESC{_limit(limit)}",
            params,
        )

    def executions(self, *, graph_id=None, unfinished_only=False, limit=None) -> list[CheckpointHeader]:
        query, params = self._executions_query(graph_id, unfinished_only, limit)
        return [_header(r) for r in self._run(lambda conn, _: conn.execute(query, params).fetchall())]

    async def aexecutions(self, *, graph_id=None, unfinished_only=False, limit=None) -> list[CheckpointHeader]:
        query, params = self._executions_query(graph_id, unfinished_only, limit)

        async def work(conn: Any, _: int) -> Any:
            return await (await conn.execute(query, params)).fetchall()

        return [_header(r) for r in await self._arun(work)]

    def _delete_sql(self) -> str:
        return f"DELETE FROM {self._t_ckpt} WHERE checkpoint_id = ANY(%s)"

    def delete(self, checkpoint_ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(checkpoint_ids))
        if not ids:
            return 0
        # A retry after a dropped connection may find the rows already gone; count what the
        # committed attempt removed is not knowable then, so report what this attempt removed.
        return self._run(lambda conn, _: conn.execute(self._delete_sql(), [ids]).rowcount)

    async def adelete(self, checkpoint_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(checkpoint_ids))
        if not ids:
            return 0

        async def work(conn: Any, _: int) -> int:
            return (await conn.execute(self._delete_sql(), [ids])).rowcount

        return await self._arun(work)

    def replace(self, header: CheckpointHeader, blob: bytes) -> None:
        """Swap an existing checkpoint's bytes (key rotation, retention) in one UPDATE; a header with a tag
        at its execution's head seq also re-tags the head (key rotation), in the same statement."""
        query = f"UPDATE {self._t_ckpt} SET blob = %s, size = %s WHERE checkpoint_id = %s"
        params: list[Any] = [bytes(blob), header.size, header.checkpoint_id]
        if header.tag is not None:
            query = (
                f"WITH swapped AS ({query} RETURNING execution_id, seq), retagged AS (UPDATE {self._t_exec} e "
                "SET tag = %s FROM swapped WHERE e.execution_id = swapped.execution_id AND e.seq = swapped.seq) "
                "SELECT count(*) FROM swapped"
            )
            params.append(header.tag)
        updated = self._run(lambda conn, _: (
            conn.execute(query, params).fetchone()[0] if header.tag is not None else conn.execute(query, params).rowcount
        ))
        if not updated:
            raise CheckpointNotFoundError(
                f"no checkpoint with id {header.checkpoint_id!r} in PostgreSQL schema {self.schema!r} to replace"
            )

    # -- leases ----------------------------------------------------------------------------------
    def _lease_statements(self) -> tuple[str, str, str]:
        return (
            f"INSERT INTO {self._t_lease} (execution_id, owner, token, expires_at) VALUES (%s, '', 0, 0) "
            "ON CONFLICT DO NOTHING",
            f"SELECT owner, token, expires_at, {_NOW} FROM {self._t_lease} WHERE execution_id = %s FOR UPDATE",
            f"UPDATE {self._t_lease} SET owner = %s, token = %s, expires_at = %s WHERE execution_id = %s",
        )

    @staticmethod
    def _grant(execution_id: str, owner: str, ttl_s: float, row: Sequence[Any]) -> Lease:
        current = Lease(execution_id, row[0], int(row[1]), float(row[2])) if row[1] else None
        return grant_lease(current, execution_id, owner, ttl_s, float(row[3]))

    def _take_lease(self, conn: Any, execution_id: str, owner: str, ttl_s: float) -> Lease:
        """Grant (or renew) the lease inside the caller's transaction; the row is locked FOR UPDATE."""
        create, lock, update = self._lease_statements()
        conn.execute(create, [execution_id])
        lease = self._grant(execution_id, owner, ttl_s, conn.execute(lock, [execution_id]).fetchone())
        conn.execute(update, [lease.owner, lease.token, lease.expires_at, execution_id])
        return lease

    async def _atake_lease(self, conn: Any, execution_id: str, owner: str, ttl_s: float) -> Lease:
        create, lock, update = self._lease_statements()
        await conn.execute(create, [execution_id])
        row = await (await conn.execute(lock, [execution_id])).fetchone()
        lease = self._grant(execution_id, owner, ttl_s, row)
        await conn.execute(update, [lease.owner, lease.token, lease.expires_at, execution_id])
        return lease

    def acquire_lease(self, execution_id: str, owner: str, ttl_s: float) -> Lease:
        def work(conn: Any, _: int) -> Lease:
            with conn.transaction():
                return self._take_lease(conn, execution_id, owner, ttl_s)

        return self._run(work)

    async def aacquire_lease(self, execution_id: str, owner: str, ttl_s: float) -> Lease:
        async def work(conn: Any, _: int) -> Lease:
            async with conn.transaction():
                return await self._atake_lease(conn, execution_id, owner, ttl_s)

        return await self._arun(work)

    def start_execution(self, header: CheckpointHeader, blob: bytes, owner: str, ttl_s: float) -> Lease:
        """Lease and first checkpoint in one transaction: one round trip and commit instead of two."""
        def work(conn: Any, attempt: int) -> Lease:
            with conn.transaction():
                lease = self._take_lease(conn, header.execution_id, owner, ttl_s)
                self._put(conn, header, blob, lease, attempt)
                return lease

        return self._run(work)

    async def astart_execution(self, header: CheckpointHeader, blob: bytes, owner: str, ttl_s: float) -> Lease:
        async def work(conn: Any, attempt: int) -> Lease:
            async with conn.transaction():
                lease = await self._atake_lease(conn, header.execution_id, owner, ttl_s)
                await self._aput(conn, header, blob, lease, attempt)
                return lease

        return await self._arun(work)

    def _renew_sql(self) -> str:
        # only the presented token, while it is still the current one (``leases.extend_lease``)
        return (
            f"UPDATE {self._t_lease} SET expires_at = {_NOW} + %s "
            "WHERE execution_id = %s AND owner = %s AND token = %s RETURNING expires_at"
        )

    @staticmethod
    def _renewed(lease: Lease, row: Sequence[Any] | None) -> Lease:
        if row is None:  # no current lease of this owner and token: the shared rule words the refusal
            extend_lease(None, lease, 0.0, 0.0)
        return Lease(lease.execution_id, lease.owner, lease.token, float(row[0]))

    def renew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        params = [float(ttl_s), lease.execution_id, lease.owner, lease.token]
        return self._renewed(lease, self._run(lambda conn, _: conn.execute(self._renew_sql(), params).fetchone()))

    async def arenew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        params = [float(ttl_s), lease.execution_id, lease.owner, lease.token]

        async def work(conn: Any, _: int) -> Any:
            return await (await conn.execute(self._renew_sql(), params)).fetchone()

        return self._renewed(lease, await self._arun(work))

    def _release_sql(self) -> str:
        # Keep the token so the next owner's token still grows; just expire the lease.
        return (
            f"UPDATE {self._t_lease} SET owner = '', expires_at = 0 "
            "WHERE execution_id = %s AND owner = %s AND token = %s"
        )

    def release_lease(self, lease: Lease) -> None:
        self._run(lambda conn, _: conn.execute(self._release_sql(), [lease.execution_id, lease.owner, lease.token]))

    async def arelease_lease(self, lease: Lease) -> None:
        async def work(conn: Any, _: int) -> None:
            await conn.execute(self._release_sql(), [lease.execution_id, lease.owner, lease.token])

        await self._arun(work)

    # -- lifecycle -------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the async pool of the running loop (call before the loop ends) and the sync pool."""
        task = self._apools.pop(asyncio.get_running_loop(), None)
        if task is not None and task.done() and task.exception() is None:
            await task.result().close()
        self.close()

    def close(self) -> None:
        self._pool.close()
        # Async pools whose loop is gone cannot be awaited any more: close their sockets directly.
        for conn in list(self._async_conns):
            if not conn.closed:
                conn.pgconn.finish()
        self._apools.clear()

    def __enter__(self) -> "PostgresBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
