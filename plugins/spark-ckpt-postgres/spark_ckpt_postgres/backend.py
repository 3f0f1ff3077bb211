"""``PostgreSQLBackend`` (also ``PostgresBackend``): checkpoints in PostgreSQL through psycopg 3 connection pools.

Its tables and migrations are ``schema``, the statements it runs ``statements``, its pools and
retries ``pools``, its leases ``leases``; this module holds the backend itself: options, and storing,
reading, listing and deleting checkpoints.

* ``put`` is one statement in autocommit (``statements``): the checkpoint and its execution's head
  in one transaction. A retried ``put`` whose first attempt did commit finds its own row (same id,
  same bytes) and succeeds instead of duplicating it.
* ``executions()`` answers from the executions index, so deleting checkpoints never changes an
  execution's status.

URL: ``postgresql://user@host:5432/db?schema=spark_ckpt&pool_max_size=8``; every other query
parameter goes to libpq unchanged. Pool options: ``pool_min_size``, ``pool_max_size``,
``pool_timeout`` (seconds to wait for a connection, default 10), ``retries`` (default 1), ``table_name``
(several independent stores in one schema).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from spark_ckpt.backends import heads
from spark_ckpt.backends.base import Backend
from spark_ckpt.backends.codec_choices import compression_choice
from spark_ckpt.backends.leases import check_fence
from spark_ckpt.backends.rows import storable
from spark_ckpt.errors import (
    BackendError,
    CheckpointNotFoundError,
    ConfigError,
    DuplicateCheckpointError,
)
from spark_ckpt.masking import mask_text, userinfo_quoted
from spark_ckpt.model import CheckpointHeader, Lease, StoredCheckpoint

from .leases import PostgresLeases
from .pools import PooledConnections, close_at_exit
from .schema import _SCHEMA_NAME, DEFAULT_TABLE_NAME, migrate, postgres_tables
from .schema import MIGRATIONS as MIGRATIONS  # (read from here by tests and tools)
from .statements import PostgresStatements, _checked, _checked_blob, _header

#: the range of a ``bigint`` column (seq, size)
_BIGINT = range(-(2**63), 2**63)

_OPTION_TYPES: dict[str, Callable[[str], Any]] = {
    "schema": str,
    "pool_min_size": int,
    "pool_max_size": int,
    "pool_timeout": float,
    "retries": int,
    "table_name": str,
}


class PostgreSQLBackend(PostgresLeases, PostgresStatements, PooledConnections, Backend):
    """Checkpoints in PostgreSQL; see the module docstrings of ``spark_ckpt_postgres`` for the guarantees.

    ``PostgreSQLBackend(connection_string="postgresql://user@host/db", table_name="graph_checkpoints")``
    (the guide's form; ``conninfo`` is the same argument): ``table_name`` is the checkpoints table of this
    store, the others are named after it (``schema.postgres_tables``), so stores under different names in
    one database (and ``schema``) are independent. ``compression`` (True = "gzip", "zstd") is a codec choice
    a config given this object applies when it does not set its own (``spark_ckpt.backends.codec_choices``).
    """

    name = "postgres"
    url_schemes = ("postgresql", "postgres")

    def __init__(
        self,
        conninfo: str | None = None,
        *,
        connection_string: str | None = None,
        table_name: str = DEFAULT_TABLE_NAME,
        schema: str = "public",
        pool_min_size: int = 1,
        pool_max_size: int = 8,
        pool_timeout: float = 10.0,
        retries: int = 1,
        compression: bool | str | None = None,
    ) -> None:
        if conninfo is not None and connection_string is not None and conninfo != connection_string:
            raise ConfigError("PostgreSQLBackend takes connection_string= or conninfo=, not two different ones")
        conninfo = connection_string if connection_string is not None else conninfo
        if not isinstance(conninfo, str) or not conninfo:
            raise ConfigError(
                "PostgreSQLBackend needs a connection string: "
                "PostgreSQLBackend(connection_string='postgresql://user@host:5432/db')"
            )
        if "://" in conninfo:  # a URL: its own options (?schema=, ?pool_max_size=, ...) are read as from_url does
            conninfo, url_options = self._split_url(conninfo)
            schema = url_options.pop("schema", schema)
            table_name = url_options.pop("table_name", table_name)
            if url_options:
                raise ConfigError(
                    f"give {', '.join(sorted(url_options))} as PostgreSQLBackend arguments, not in the connection string"
                )
        self.tables = postgres_tables(table_name)
        self.table_name = self.tables["checkpoints"]
        self.compression_choice = compression_choice(compression, "PostgreSQLBackend")
        if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
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
            raise ConfigError(
                f"invalid PostgreSQL connection string {self._masked(conninfo)!r}: {mask_text(str(exc), conninfo)}"
            ) from None
        self._conninfo = conninfo
        self.schema = schema
        self._min_size, self._max_size = pool_min_size, pool_max_size
        self._timeout = pool_timeout
        self._retries = max(0, retries)
        s = f'"{schema}"'
        self._t_ckpt = f"{s}.{self.tables['checkpoints']}"
        self._t_lease = f"{s}.{self.tables['leases']}"
        self._t_exec = f"{s}.{self.tables['executions']}"
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
        self._apool_guards: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
            weakref.WeakKeyDictionary()
        )
        try:
            try:
                self._pool.open(wait=pool_min_size > 0, timeout=pool_timeout)
            except psycopg.OperationalError as exc:
                raise self._unreachable(exc) from exc
            self._run(lambda conn, _: migrate(conn, self.schema, self.tables))
        except BaseException:
            self._pool.close()
            raise
        close_at_exit(self)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def _split_url(cls, url: str) -> tuple[str, dict[str, Any]]:
        """``url`` as libpq's connection string, and spark-ckpt's own options from its query (typed)."""
        # libpq ends the user info at the first '@': an unescaped '@' (or '/', '?') in the password
        # would make the rest of it part of the host name (and of its error messages); encode it instead
        parts = urlsplit(userinfo_quoted(url))
        if parts.scheme.lower() not in cls.url_schemes:
            raise ConfigError(f"not a PostgreSQL URL: {cls._masked(url)!r} (expected postgresql://...)")
        kept, ours = [], {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            (ours.__setitem__(key, value) if key in _OPTION_TYPES else kept.append((key, value)))
        return urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(kept), "")), cls._typed(ours)

    @staticmethod
    def _typed(options: dict[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for key, value in options.items():
            if key not in _OPTION_TYPES:
                raise ConfigError(
                    f"unknown postgres backend option {key!r}; known: {', '.join(sorted(_OPTION_TYPES))}"
                )
            try:
                kwargs[key] = _OPTION_TYPES[key](value)
            except (TypeError, ValueError):
                raise ConfigError(f"postgres backend option {key}={value!r} is not a valid value") from None
        return kwargs

    @classmethod
    def from_url(cls, url: str, **options: object) -> "PostgreSQLBackend":
        conninfo, kwargs = cls._split_url(url)
        kwargs.update(cls._typed(dict(options)))
        return cls(conninfo, **kwargs)

    def describe(self) -> str:
        table = f", table {self.table_name}" if self.table_name != DEFAULT_TABLE_NAME else ""
        return f"postgres ({self._masked(self._conninfo)}, schema {self.schema}{table})"

    def _where(self, table: str) -> str:
        """``table`` of this store, for messages about one of its rows."""
        return f"table {table.rsplit('.', 1)[-1]} of {self.describe()}"

    def schema_version(self) -> int:
        """The newest migration applied to this schema."""
        return self._run(
            lambda conn, _: conn.execute(
                f'SELECT max(version) FROM "{self.schema}".{self.tables["migrations"]}'
            ).fetchone()[0]
        )

    # -- checkpoints -----------------------------------------------------------------------------
    def check_header(self, header: CheckpointHeader) -> None:
        """A header this store would refuse to read back is refused (``rows.storable``), and so is a seq
        or size a ``bigint`` column cannot hold; nothing is written."""
        storable(header, self.describe())
        for name in ("seq", "size"):
            if getattr(header, name) not in _BIGINT:
                raise BackendError(
                    f"checkpoint {header.checkpoint_id!r} was not stored in {self.describe()}: its {name} "
                    f"{getattr(header, name)} is outside the range of a bigint; nothing was written"
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

    @staticmethod
    def _conflict(header: CheckpointHeader, blob: bytes, existing: Sequence[Any] | None, retried: bool) -> None:
        """After a refused insert: fine if it is our own earlier attempt, else a duplicate."""
        if retried and existing is not None and _header(existing) == header and bytes(existing[8]) == bytes(blob):
            return  # the first attempt committed before the connection dropped
        raise DuplicateCheckpointError(
            f"checkpoint seq {header.seq} of execution {header.execution_id} (or id "
            f"{header.checkpoint_id}) already exists in PostgreSQL; it was not overwritten"
        )

    def _refused(
        self, header: CheckpointHeader, blob: bytes, lease: Lease | None, row: Sequence[Any], existing: Sequence[Any] | None,
    ) -> None:
        """After a put that stored nothing (``row`` is its answer): return if ``existing`` is our own
        earlier attempt (retries only pass it), else raise what refused it: a superseded lease, the
        head's rules, or a duplicate."""
        if existing is not None:
            try:
                return self._conflict(header, blob, existing, retried=True)
            except DuplicateCheckpointError:
                pass  # someone else's row: say why ours was refused
        if lease is not None:
            current = Lease(header.execution_id, row[1], int(row[2]), float(row[3])) if row[2] is not None else None
            check_fence(current, lease, header.execution_id)
            head = _checked(row[4:12], self._where(self._t_exec), head=True) if row[4] is not None else None
            heads.advance(head, header, leased=True)
        self._conflict(header, blob, None, retried=False)

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
        self.check_header(header)
        # one statement in autocommit: its own transaction
        self._run(lambda conn, attempt: self._put(conn, header, blob, lease, attempt))

    async def aput(self, header: CheckpointHeader, blob: bytes, *, lease: Lease | None = None) -> None:
        self.check_header(header)
        await self._arun(lambda conn, attempt: self._aput(conn, header, blob, lease, attempt))

    def _head(self, row: Sequence[Any] | None) -> CheckpointHeader | None:
        return _checked(row, self._where(self._t_exec), head=True) if row is not None else None

    def _headers(self, rows: Sequence[Sequence[Any]], table: str) -> list[CheckpointHeader]:
        """Rows of ``table`` (the checkpoints, or the executions index) as checked headers."""
        where, head = self._where(table), table == self._t_exec
        return [_checked(row, where, head=head) for row in rows]

    def execution_head(self, execution_id: str) -> CheckpointHeader | None:
        return self._head(self._run(lambda conn, _: conn.execute(self._head_sql(), [execution_id]).fetchone()))

    async def aexecution_head(self, execution_id: str) -> CheckpointHeader | None:
        async def work(conn: Any, _: int) -> Any:
            return await (await conn.execute(self._head_sql(), [execution_id])).fetchone()

        return self._head(await self._arun(work))

    def _stored(self, checkpoint_id: str, row: Sequence[Any] | None) -> StoredCheckpoint:
        if row is None:
            raise CheckpointNotFoundError(
                f"no checkpoint with id {checkpoint_id!r} in PostgreSQL schema {self.schema!r}"
            )
        where = self._where(self._t_ckpt)
        header = _checked(row, where)
        return StoredCheckpoint(header, _checked_blob(row[8], header, where))

    def get(self, checkpoint_id: str) -> StoredCheckpoint:
        row = self._run(lambda conn, _: conn.execute(self._get_sql(), [checkpoint_id]).fetchone())
        return self._stored(checkpoint_id, row)

    async def aget(self, checkpoint_id: str) -> StoredCheckpoint:
        async def work(conn: Any, _: int) -> Any:
            return await (await conn.execute(self._get_sql(), [checkpoint_id])).fetchone()

        return self._stored(checkpoint_id, await self._arun(work))

    def list(self, *, graph_id=None, execution_id=None, limit=None) -> list[CheckpointHeader]:
        query, params = self._list_query(graph_id, execution_id, limit)
        return self._headers(self._run(lambda conn, _: conn.execute(query, params).fetchall()), self._t_ckpt)

    async def alist(self, *, graph_id=None, execution_id=None, limit=None) -> list[CheckpointHeader]:
        query, params = self._list_query(graph_id, execution_id, limit)

        async def work(conn: Any, _: int) -> Any:
            return await (await conn.execute(query, params)).fetchall()

        return self._headers(await self._arun(work), self._t_ckpt)

    def tail(self, execution_id: str, count: int) -> list[CheckpointHeader]:
        query, params = self._tail_query(execution_id, count)
        return self._headers(self._run(lambda conn, _: conn.execute(query, params).fetchall()), self._t_ckpt)

    async def atail(self, execution_id: str, count: int) -> list[CheckpointHeader]:
        query, params = self._tail_query(execution_id, count)

        async def work(conn: Any, _: int) -> Any:
            return await (await conn.execute(query, params)).fetchall()

        return self._headers(await self._arun(work), self._t_ckpt)

    def executions(self, *, graph_id=None, unfinished_only=False, limit=None) -> list[CheckpointHeader]:
        query, params = self._executions_query(graph_id, unfinished_only, limit)
        return self._headers(self._run(lambda conn, _: conn.execute(query, params).fetchall()), self._t_exec)

    async def aexecutions(self, *, graph_id=None, unfinished_only=False, limit=None) -> list[CheckpointHeader]:
        query, params = self._executions_query(graph_id, unfinished_only, limit)

        async def work(conn: Any, _: int) -> Any:
            return await (await conn.execute(query, params)).fetchall()

        return self._headers(await self._arun(work), self._t_exec)

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

    def __enter__(self) -> "PostgreSQLBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: the name earlier versions used
PostgresBackend = PostgreSQLBackend
