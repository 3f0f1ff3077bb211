"""``SQLiteBackend`` (also ``SqliteBackend``): the ``Backend`` contract over one SQLite database file.

Every write is one transaction on the process's shared connection (``connections``), taken under
its lock: a put inserts the checkpoint and advances its execution's head together, so the
executions index never lags or leads; ``start_execution`` also writes the lease in the same
commit. A put under a lease is fenced in the same statement that inserts it (``statements``).

A derived-shaped id (``ck-<x>-<n>``) is stored only as checkpoint n of execution ``<x>``, where its
position finds it without an index; given for any other position it is refused (it could shadow
the checkpoint it names). Checking that on every put in SQL cost ~16 us, so it is checked in Python
instead (``check_header``).

Invariants: nothing is written outside ``_write_transaction``; an execution's number is cached
(``_numbers``) only once its ``executions`` row is committed.
"""

from __future__ import annotations

import os
import sqlite3
import time
import weakref
from collections.abc import Iterable
from typing import Any

from ...errors import (
    LeaseError,
    BackendError,
    CheckpointNotFoundError,
    ConfigError,
    DuplicateCheckpointError,
)
from ...masking import mask_url
from ...model import (
    UNFINISHED_STATUSES, BlobParts, CheckpointHeader, Lease, StoredCheckpoint, canonical_checkpoint_id,
    canonical_key,
)
from .. import heads
from ..base import LocalBackend
from ..leases import check_fence, extend_lease, grant_lease
from ..rows import checked, checked_blob, storable
from ..codec_choices import compression_choice
from . import schema, stored_values
from .connections import SYNCHRONOUS_MODES, _closed_connection, _release_connection, share_connection
from .schema import DEFAULT_TABLE_NAME, _placeable, _stored_position, sqlite_tables
from .statements import _NEWEST_FIRST, _head_params, _header, _row, statements_for

#: blobs at least this large are written into their row's pages rather than bound as a parameter
#: (a 50 MB record then costs no extra 100 MB while it is stored)
STREAMED_BLOB_BYTES = 1 << 18
#: graph state values at least this large are stored once however many checkpoints hold them
VALUE_BYTES = 1 << 16


class SQLiteBackend(LocalBackend):
    """Checkpoints in one SQLite database file (WAL, ``synchronous=NORMAL`` by default)."""

    name = "sqlite"
    url_schemes = ("sqlite",)
    durable = True
    takes_blob_parts = STREAMED_BLOB_BYTES  # (written into the row's pages part after part)
    takes_values = VALUE_BYTES  # (stored once, ``stored_values``)

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        db_path: str | os.PathLike[str] | None = None,
        table_name: str = DEFAULT_TABLE_NAME,
        synchronous: str = "NORMAL",
        busy_timeout_s: float = 30.0,
        compression: bool | str | None = None,
        read_only: bool = False,
    ) -> None:
        """``db_path`` (or ``path``): the database file. ``read_only``: open an existing database for
        reading only (no schema change, nothing written; every write raises ``BackendError``). ``table_name``: the checkpoints table of this
        store; other stores in the same file under other names are independent (``schema``). The default
        keeps the tables every earlier version used. ``compression`` (True = "gzip", "zstd"): how a
        config given this object compresses checkpoints when it does not say itself (``codec_choices``)."""
        if path is not None and db_path is not None and os.fspath(path) != os.fspath(db_path):
            raise ConfigError("SQLiteBackend takes db_path= or path=, not two different files")
        location = db_path if db_path is not None else path
        if location is None:
            raise ConfigError("SQLiteBackend needs the database file: SQLiteBackend(db_path='./checkpoints.db')")
        if not isinstance(location, (str, os.PathLike)) or not os.fspath(location):
            raise ConfigError(f"SQLiteBackend db_path must be a file path, got {location!r}")
        self.path = os.fspath(location)
        self.tables = sqlite_tables(table_name)
        self.table_name = self.tables["checkpoints"]
        self.compression_choice = compression_choice(compression, "SQLiteBackend")
        self._sql = statements_for(self.tables)
        mode = str(synchronous).upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ConfigError(
                f"sqlite backend option synchronous={synchronous!r} is invalid; use one of {', '.join(SYNCHRONOUS_MODES)}"
            )
        if not isinstance(busy_timeout_s, (int, float)) or busy_timeout_s < 0:
            raise ConfigError(f"sqlite backend option busy_timeout_s must be >= 0, got {busy_timeout_s!r}")
        self.synchronous = mode
        self.read_only = bool(read_only)
        key, shared = share_connection(self.path, mode, busy_timeout_s, self.tables, read_only=self.read_only)
        self._conn = shared.conn
        self._lock = shared.lock
        self._numbers = shared.numbers[self.tables["migrations"]]
        #: digests of stored values this object found intact (``stored_values.store``), and those
        #: found so in the transaction under way (added to the first once it committed)
        self._checked_values: set[str] = set()
        self._found_intact: set[str] = set()
        # Gives the connection back when the backend is closed or garbage-collected, so a backend
        # that was never closed explicitly does not leak it (Python 3.13 warns about unclosed ones).
        self._release = weakref.finalize(self, _release_connection, key, shared)

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, **options: object) -> SQLiteBackend:
        location = url.split("://", 1)[1] if "://" in url else url
        location, _, query = location.partition("?")
        from urllib.parse import parse_qsl

        # ?table_name=... names the store in the file (the CLI's --store reaches it this way)
        options = {**{k: v for k, v in parse_qsl(query) if k == "table_name"}, **options}
        if not location:
            raise ConfigError(f"sqlite backend URL {mask_url(url)!r} has no path; use sqlite:///abs/path.db or sqlite://rel.db")
        if location == ":memory:" or location.startswith("file:"):
            raise ConfigError(
                f"sqlite backend URL {mask_url(url)!r} is not a database file path; use memory:// for an in-process store"
            )
        unknown = set(options) - {"synchronous", "busy_timeout_s", "table_name", "compression", "read_only"}
        if unknown:
            raise ConfigError(
                f"unknown sqlite backend option(s) {', '.join(sorted(unknown))}; known: synchronous, "
                "busy_timeout_s, table_name, compression, read_only"
            )
        return cls(os.path.expanduser(location), **options)  # type: ignore[arg-type]

    def applied_migrations(self) -> list[str]:
        """Names of the schema migrations applied to this database, oldest first."""
        with self._lock:
            return schema.applied(self._conn, self.tables)

    def describe(self) -> str:
        if self.table_name != DEFAULT_TABLE_NAME:
            return f"sqlite://{self.path} (table {self.table_name})"
        return f"sqlite://{self.path}"

    def close(self) -> None:
        self._conn = _closed_connection()
        self._release()

    # -- helpers -----------------------------------------------------------------------------------
    def _failed(self, what: str, exc: sqlite3.Error) -> BackendError:
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
            return BackendError(f"sqlite backend {self.path!r} is closed; open a new backend to {what}")
        if self.read_only and "readonly" in str(exc):
            return BackendError(f"sqlite backend {self.path!r} was opened read-only; it cannot {what}")
        return BackendError(f"sqlite backend {self.path!r} failed to {what}: {exc}")

    def _read_lease(self, execution_id: str) -> Lease | None:
        row = self._conn.execute(self._sql.GET_LEASE, (execution_id,)).fetchone()
        return Lease(*row) if row else None

    # -- checkpoints --------------------------------------------------------------------------------
    def check_header(self, header: CheckpointHeader) -> None:
        """A derived-shaped id (``ck-<x>-<n>``) is stored only as checkpoint n of execution <x>: that is
        how it is found, and why it needs no index. Anywhere else it could shadow, or be shadowed by, the
        checkpoint it names, so it is refused (spark-ckpt never writes one elsewhere). So is a header the
        store would refuse to read back (``rows``)."""
        h = header
        if type(h.seq) is int and not _placeable(h.seq):
            raise BackendError(
                f"checkpoint seq {h.seq} of execution {h.execution_id} is outside [-2**31, 2**31), the range "
                f"{self.describe()} can hold; number checkpoints from 0"
            )
        storable(h, self.describe())
        if h.seq >= 0 and h.checkpoint_id == canonical_checkpoint_id(h.execution_id, h.seq):
            return  # the derived id of its own position: the common case
        key = canonical_key(h.checkpoint_id)
        if key is not None and key != (h.execution_id, h.seq):
            raise BackendError(
                f"checkpoint id {h.checkpoint_id!r} has the form reserved for checkpoint {key[1]} of execution "
                f"{key[0]}, but was given for seq {h.seq} of execution {h.execution_id}; {self.describe()} "
                "stores it only there. Choose another id"
            )

    def put(self, header: CheckpointHeader, blob: bytes, *, lease: Lease | None = None) -> None:
        h = header
        self.check_header(h)

        def change(conn: sqlite3.Connection) -> int:
            number = self._numbers.get(h.execution_id)
            if number is None:
                number = self._recorded_number(conn, h)
            self._insert_and_advance(conn, number, h, blob, lease)
            return number

        number = self._write_transaction(f"store checkpoint {h.checkpoint_id!r}", change)
        if h.execution_id not in self._numbers:
            self._remember_number(h.execution_id, number)  # (only once committed)

    def _insert_and_advance(
        self, conn: sqlite3.Connection, number: int, h: CheckpointHeader, blob: bytes, lease: Lease | None
    ) -> None:
        """Insert the checkpoint (fenced by ``lease``) and advance its execution's head, inside the
        caller's transaction."""
        if type(blob) is BlobParts and blob.has_values:  # the row without them, then the values
            self._insert_and_advance(conn, number, h, blob.without_values(), lease)
            stored_values.store(conn, self._sql, self.tables["values"], _row(number, h, b"")[0], blob.parts,
                                STREAMED_BLOB_BYTES, self._checked_values, self._found_intact)
            return
        # a large blob is written into the row's pages (``streamed``): bound as a parameter, SQLite
        # would copy it twice more (the bound value, then the record it builds)
        streamed = len(blob) >= STREAMED_BLOB_BYTES
        if not streamed and type(blob) is BlobParts:
            blob = blob.join()
        sql = self._sql
        fence = () if lease is None else (h.execution_id, lease.token, lease.owner)
        try:
            if not streamed:
                inserted = conn.execute(sql.INSERT_FENCED if fence else sql.INSERT, (*_row(number, h, blob), *fence))
            # (INSERT ... SELECT would fill the room with zeros first: the fence is checked on its own,
            # inside this transaction, which holds the write lock)
            elif not fence or conn.execute(sql.HOLDS_LEASE, fence).fetchone() is not None:
                inserted = conn.execute(sql.INSERT_ROOM, _row(number, h, len(blob)))
            else:
                inserted = None
        except sqlite3.IntegrityError as exc:
            raise self._duplicate(h, exc) from None
        if fence and (inserted is None or inserted.rowcount != 1):
            check_fence(self._read_lease(h.execution_id), lease, h.execution_id)
            raise LeaseError(f"write to execution {h.execution_id} refused: lease check failed")
        if streamed:
            with conn.blobopen(self.tables["checkpoints"], "blob", _row(number, h, b"")[0]) as room:
                for part in blob.parts if type(blob) is BlobParts else (blob,):
                    room.write(part)
        if lease is None:
            conn.execute(sql.ADVANCE_HEAD, _head_params(number, h))  # forward only, never refused
            return
        if conn.execute(self._sql.ADVANCE_HEAD_LEASED, _head_params(number, h)).rowcount != 1:
            heads.advance(self._read_head(h.execution_id), h, leased=True)  # raises what refused it
            raise BackendError(f"sqlite backend {self.path!r} could not advance the head of execution {h.execution_id}")

    def _read_head(self, execution_id: str) -> CheckpointHeader | None:
        row = self._conn.execute(self._sql.GET_HEAD, (execution_id,)).fetchone()
        return checked(CheckpointHeader(*row[:8], tag=row[8]), self.describe(), row="head") if row else None

    def execution_head(self, execution_id: str) -> CheckpointHeader | None:
        with self._lock:
            try:
                return self._read_head(execution_id)
            except sqlite3.Error as exc:
                raise self._failed(f"read the head of execution {execution_id}", exc) from exc

    def _recorded_number(self, conn: sqlite3.Connection, h: CheckpointHeader) -> int:
        """Insert the execution's row if it has none; its number (no second query when just inserted)."""
        cursor = conn.execute(self._sql.RECORD_EXECUTION, (h.execution_id, h.graph_id))
        if cursor.rowcount == 1:
            return cursor.lastrowid
        return conn.execute(self._sql.GET_NUMBER, (h.execution_id,)).fetchone()[0]

    def _remember_number(self, execution_id: str, number: int) -> None:
        """Call only once the ``executions`` row is committed."""
        if len(self._numbers) > 10_000:  # bound the memory of very long-lived workers
            self._numbers.clear()
        self._numbers[execution_id] = number

    def _duplicate(self, h: CheckpointHeader, exc: sqlite3.IntegrityError) -> DuplicateCheckpointError:
        if "checkpoint_id" in str(exc):
            return DuplicateCheckpointError(
                f"checkpoint id {h.checkpoint_id!r} is already stored in {self.path!r}; not overwritten"
            )
        return DuplicateCheckpointError(
            f"checkpoint seq {h.seq} of execution {h.execution_id} already exists in {self.path!r}; not overwritten"
        )

    def start_execution(self, header: CheckpointHeader, blob: bytes, owner: str, ttl_s: float) -> Lease:
        """Lease and first checkpoint in one transaction: one commit (WAL append) instead of two."""
        h = header
        self.check_header(h)

        def change(conn: sqlite3.Connection) -> tuple[Lease, int]:
            now = time.time()
            lease = grant_lease(None, h.execution_id, owner, ttl_s, now)
            try:  # a new execution has no lease row yet: insert it without reading first
                conn.execute(self._sql.NEW_LEASE, (lease.execution_id, lease.owner, lease.token, lease.expires_at))
            except sqlite3.IntegrityError:  # it has one (released, or another worker's): the usual rules
                lease = grant_lease(self._read_lease(h.execution_id), h.execution_id, owner, ttl_s, now)
                conn.execute(self._sql.SET_LEASE, (lease.execution_id, lease.owner, lease.token, lease.expires_at))
            number = self._recorded_number(conn, h)
            self._insert_and_advance(conn, number, h, blob, lease)
            return lease, number

        lease, number = self._write_transaction(f"start execution {h.execution_id}", change)
        self._remember_number(h.execution_id, number)  # not inside change(): a rolled-back row is not recorded
        return lease

    def get(self, checkpoint_id: str) -> StoredCheckpoint:
        key = _stored_position(checkpoint_id)
        with self._lock:
            try:
                row, refs = self._read_row(key, checkpoint_id), None
                if row is not None and stored_values.holds_values(row[8], row[7]):
                    # read again with its references in one transaction: a delete could come between
                    conn = self._conn
                    conn.execute("BEGIN")
                    try:
                        row = self._read_row(key, checkpoint_id)
                        if row is not None:
                            refs = conn.execute(self._sql.VALUES_OF, (row[9],)).fetchall()
                    finally:
                        conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._failed(f"read checkpoint {checkpoint_id!r}", exc) from exc
        if row is None:
            raise CheckpointNotFoundError(f"no checkpoint with id {checkpoint_id!r} in {self.describe()}")
        header = checked(_header(row[:8]), self.describe())
        blob = checked_blob(row[8], header, self.describe())
        if refs:
            blob = stored_values.whole(blob, refs, header, self.describe())
        return StoredCheckpoint(header, blob)

    def _read_row(self, key: tuple[str, int] | None, checkpoint_id: str) -> tuple | None:
        row = self._conn.execute(self._sql.GET_CANONICAL, (*key, checkpoint_id)).fetchone() if key else None
        if row is None:
            row = self._conn.execute(self._sql.GET_NAMED, (checkpoint_id,)).fetchone()
        return row

    def _query(self, what: str, sql: str, params: list, *, row: str = "checkpoint") -> list[CheckpointHeader]:
        with self._lock:
            try:
                rows = self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._failed(what, exc) from exc
        where = self.describe()
        return [checked(_header(fields), where, row=row) for fields in rows]

    def list(
        self, *, graph_id: str | None = None, execution_id: str | None = None, limit: int | None = None
    ) -> list[CheckpointHeader]:
        if graph_id is None and execution_id is None:
            sql, params = self._sql.LIST_ALL, []
        else:  # each execution's rows are one rowid range
            where, params = self._executions_where(graph_id, execution_id)
            sql = f"{self._sql.LIST_OF_EXECUTIONS}{where}"
        sql += _NEWEST_FIRST
        params.append(-1 if limit is None else limit)
        return self._query("list checkpoints", sql, params)

    def tail(self, execution_id: str, count: int) -> list[CheckpointHeader]:
        # an execution's rows are one rowid range, in seq order: the last ``count`` of it, no sort
        where, params = self._executions_where(None, execution_id)
        return self._query("list checkpoints", f"{self._sql.LIST_OF_EXECUTIONS}{where} ORDER BY c.rowid DESC LIMIT ?",
                           [*params, count])

    def executions(
        self, *, graph_id: str | None = None, unfinished_only: bool = False, limit: int | None = None
    ) -> list[CheckpointHeader]:
        # The heads of the executions that still hold a checkpoint (one rowid seek each).
        where, params = self._executions_where(graph_id, None)
        sql = f"{self._sql.HEADS}{where}{' AND' if where else ' WHERE'} head_seq IS NOT NULL AND {self._sql.STILL_STORED}"
        if unfinished_only:
            statuses = sorted(UNFINISHED_STATUSES)
            sql += f" AND head_status IN ({', '.join('?' * len(statuses))})"
            params.extend(statuses)
        sql += " ORDER BY head_created_at DESC, head_seq DESC, head_id DESC LIMIT ?"
        params.append(-1 if limit is None else limit)
        return self._query("list executions", sql, params, row="head")

    @staticmethod
    def _executions_where(graph_id: str | None, execution_id: str | None) -> tuple[str, list]:
        """A WHERE clause on ``executions e`` (its graph as first recorded), and its parameters."""
        where, params = [], []
        if graph_id is not None:
            where.append("e.graph_id = ?")
            params.append(graph_id)
        if execution_id is not None:
            where.append("e.execution_id = ?")
            params.append(execution_id)
        return (" WHERE " + " AND ".join(where) if where else ""), params

    def delete(self, checkpoint_ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(checkpoint_ids))
        if not ids:
            return 0
        canonical = [(*key, cid) for cid in ids if (key := _stored_position(cid)) is not None]

        named = [(cid,) for cid in ids]

        def change(conn: sqlite3.Connection) -> int:
            stored_values.drop_references(conn, self._sql, named, canonical)
            before = conn.total_changes
            conn.executemany(self._sql.DELETE_NAMED, named)
            conn.executemany(self._sql.DELETE_CANONICAL, canonical)
            return conn.total_changes - before

        return self._write_transaction("delete checkpoints", change)

    def replace(self, header: CheckpointHeader, blob: bytes) -> None:
        """Swap the stored bytes (and size) of an existing checkpoint in one UPDATE (key rotation,
        retention's rebase; its values stored once, ``stored_values``, when given as parts)."""
        h = header
        parts = blob.parts if type(blob) is BlobParts and blob.has_values else None
        if type(blob) is BlobParts:
            blob = (blob.without_values() if parts else blob).join()

        def change(conn: sqlite3.Connection) -> int:
            # the references of the old bytes go, then the values only they held (not those the new
            # bytes hold again: they are referenced first)
            dropped = stored_values.drop_references(
                conn, self._sql, [], [(h.execution_id, h.seq, h.checkpoint_id)], collect=False)
            cursor = conn.execute(self._sql.REPLACE, (blob, h.size, h.execution_id, h.seq, h.checkpoint_id))
            if parts and cursor.rowcount:
                (position,) = conn.execute(self._sql.POSITION_OF, (h.execution_id, h.seq, h.checkpoint_id)).fetchone()
                stored_values.store(conn, self._sql, self.tables["values"], position, parts, STREAMED_BLOB_BYTES,
                                    self._checked_values, self._found_intact)
            if dropped:
                stored_values.collect(conn, self._sql)
            if h.tag is not None and cursor.rowcount:  # key rotation re-tags the index head
                conn.execute(self._sql.RETAG_HEAD, (h.tag, h.execution_id, h.seq))
            return cursor.rowcount

        if self._write_transaction(f"replace checkpoint {h.checkpoint_id!r}", change) == 0:
            raise CheckpointNotFoundError(
                f"no checkpoint {h.checkpoint_id!r} (seq {h.seq} of execution {h.execution_id}) in "
                f"{self.describe()} to replace"
            )

    def scrub(self) -> None:
        """Checkpoint the write-ahead log into the database and truncate it: pages a delete or a replace
        freed are zeroed in the database file (``secure_delete``, see ``connections``), but the log
        still holds the frames written before. Waits for other processes' readers (busy timeout)."""
        if self.read_only:
            raise BackendError(f"sqlite backend {self.path!r} was opened read-only; it cannot scrub its log")
        # references an earlier release left when it deleted rows, and the values only they held
        self._write_transaction("drop the values no checkpoint holds", lambda conn: stored_values.sweep(conn, self._sql))
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                raise self._failed("checkpoint its write-ahead log", exc) from exc

    # -- leases -------------------------------------------------------------------------------------
    def _write_transaction(self, what: str, change: Any) -> Any:
        """``change(conn)`` inside one ``BEGIN IMMEDIATE`` transaction; rolled back if it raises."""
        if self.read_only:
            raise BackendError(f"sqlite backend {self.path!r} was opened read-only; it cannot {what}")
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                found = self._found_intact
                found.clear()
                try:
                    result = change(conn)
                    conn.execute("COMMIT")
                    if found:  # (a rolled-back transaction may have put a damaged value back)
                        if len(self._checked_values) > 10_000:  # bound the memory of long-lived workers
                            self._checked_values.clear()
                        self._checked_values |= found
                except BaseException:
                    # (SQLite may have rolled back by itself, e.g. after SQLITE_FULL)
                    if conn.in_transaction:
                        try:
                            conn.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass
                    raise
            except sqlite3.Error as exc:
                raise self._failed(what, exc) from exc
        return result

    def acquire_lease(self, execution_id: str, owner: str, ttl_s: float) -> Lease:
        def change(conn: sqlite3.Connection) -> Lease:
            lease = grant_lease(self._read_lease(execution_id), execution_id, owner, ttl_s, time.time())
            conn.execute(self._sql.SET_LEASE, (lease.execution_id, lease.owner, lease.token, lease.expires_at))
            return lease

        return self._write_transaction(f"acquire the lease of execution {execution_id}", change)

    def renew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        def change(conn: sqlite3.Connection) -> Lease:
            renewed = extend_lease(self._read_lease(lease.execution_id), lease, ttl_s, time.time())
            conn.execute(self._sql.SET_LEASE, (renewed.execution_id, renewed.owner, renewed.token, renewed.expires_at))
            return renewed

        return self._write_transaction(f"renew the lease of execution {lease.execution_id}", change)

    def release_lease(self, lease: Lease) -> None:
        def change(conn: sqlite3.Connection) -> None:
            current = self._read_lease(lease.execution_id)
            if current is not None and current.token == lease.token and current.owner == lease.owner:
                # Keep the token so the next owner's token still grows; just expire the lease.
                conn.execute(self._sql.SET_LEASE, (lease.execution_id, "", lease.token, 0.0))

        self._write_transaction(f"release the lease of execution {lease.execution_id}", change)


#: the name earlier versions used
SqliteBackend = SQLiteBackend
