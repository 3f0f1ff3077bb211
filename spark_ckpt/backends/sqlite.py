"""SQLite backend: one database file, safe to share between processes on one machine.

URLs: ``sqlite://relative/path.db``, ``sqlite:///absolute/path.db`` (``CheckpointConfig(backend="sqlite",
path=...)`` builds the same). Options: ``synchronous`` and ``busy_timeout_s``.

Durability: the database runs in WAL mode with ``synchronous=NORMAL``. A committed checkpoint survives
a crash of the process (``kill -9``); after a power loss or OS crash the last few commits may be
lost (the database stays consistent). Pass ``synchronous="FULL"`` to fsync every commit and survive
power loss too, at roughly ten times the cost per checkpoint.

Schema: named, append-only migrations (sqlite-utils ``Migrations``, set ``spark_ckpt``) applied on
open inside one ``BEGIN IMMEDIATE`` transaction, so two processes opening a new file at once do not
race. Tables ``checkpoints`` (one row per checkpoint, the blob last so listings never read it),
``executions`` (execution -> its ``number`` and graph; written once per execution: by ``start_execution`` in
its transaction, else before the execution's first put; a trigger doing it on every insert cost ~14 us
per put) and ``leases`` (one row per execution).

Every B-tree a ``put`` writes costs a page write into the WAL, so a graph checkpoint's put writes
one: the table itself. A checkpoint's rowid is its position, ``number * 2**32 + seq + 2**31``, so
the table is ordered by (execution, seq): that makes (execution, seq) unique, finds a checkpoint
and lists an execution by rowid, and needs no separate index (the ``UNIQUE(execution_id, seq)``
index it replaced cost ~8 us per put). Seq must lie in [-2**31, 2**31). A graph checkpoint's id is
canonical (``ck-<execution_id>-<seq>``, derived from its position), so it needs no index either;
only other ids go into the partial unique index ``checkpoints_by_named_id``. A derived-shaped id
given for any other position is refused (it could shadow the checkpoint it names); checking that on
every put in SQL cost ~16 us, so it is checked in Python instead.

The executions index (``spark_ckpt.backends.heads``) lives in ``executions`` too: each row holds its
execution's head (the header of its highest seq ever stored, with the writer's tag). A put inserts
the checkpoint and advances the head in one transaction, so the index never lags or leads.

The hot path (``put``/``get``) uses the plain ``sqlite3`` connection and its statement cache. Every
``SqliteBackend`` of a process on one file shares one connection (per settings), guarded by a lock
because a transaction spans several statements. The database file is never opened other than by
SQLite: on POSIX, closing any descriptor of a file drops every lock the process holds on it, and
without its locks another process closing the last connection it sees deletes the WAL in use, so
later commits would be invisible to others and lost in a crash.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

from ..errors import (
    LeaseError,
    BackendError,
    CheckpointNotFoundError,
    ConfigError,
    DuplicateCheckpointError,
)
from ..model import (
    UNFINISHED_STATUSES, CheckpointHeader, Lease, StoredCheckpoint, canonical_checkpoint_id, canonical_key,
)
from . import heads
from .base import LocalBackend
from .leases import check_fence, extend_lease, grant_lease

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
#: a database file holds at least one page of the smallest page size
MIN_DATABASE_SIZE = 512
MIGRATION_SET = "spark_ckpt"

_HEADER_COLUMNS = "checkpoint_id, graph_id, execution_id, seq, created_at, status, kind, size"
_CHECKPOINT_HEADER_COLUMNS = ", ".join(f"c.{column}" for column in _HEADER_COLUMNS.split(", "))  # joined with executions

# A checkpoint's rowid is its position: its execution's number * SEQ_SPAN + seq + SEQ_OFFSET.
SEQ_SPAN = 1 << 32
SEQ_OFFSET = 1 << 31
_GET_NUMBER = "SELECT number FROM executions WHERE execution_id = ?"
_NUMBER_OF = f"({_GET_NUMBER})"
_POSITION = f"{_NUMBER_OF} * {SEQ_SPAN} + ? + {SEQ_OFFSET}"  # parameters: execution_id, seq
# the rows of execution ``e`` (an alias of executions)
_ROWS_OF_E = f"c.rowid BETWEEN e.number * {SEQ_SPAN} AND e.number * {SEQ_SPAN} + {SEQ_SPAN - 1}"
# A canonical row's id is derived from its (execution_id, seq) (``model.canonical_checkpoint_id``), so it
# needs no index of its own: only other ids go into the partial unique index. The expression must be
# written identically in the index and in the queries, or SQLite will not use the index.
_CANONICAL = "(seq >= 0 AND checkpoint_id = 'ck-' || execution_id || '-' || seq)"
_NAMED_ID = f"checkpoint_id = ? AND NOT {_CANONICAL}"


_INSERT = (
    "INSERT INTO checkpoints (rowid, checkpoint_id, graph_id, execution_id, seq, created_at, status, kind, size, blob) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# One statement, so one implicit transaction: the row is written only if the presented lease is still
# the execution's current one. Half the cost of BEGIN IMMEDIATE + SELECT + INSERT + COMMIT.
_INSERT_FENCED = (
    "INSERT INTO checkpoints (rowid, checkpoint_id, graph_id, execution_id, seq, created_at, status, kind, size, blob) "
    "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS "
    "(SELECT 1 FROM leases WHERE execution_id = ? AND token = ? AND owner = ?)"
)
# newest first; equal times are ordered by seq, then by id, so every backend lists ties alike
_NEWEST_FIRST = " ORDER BY created_at DESC, seq DESC, checkpoint_id DESC LIMIT ?"
_RECORD_EXECUTION = "INSERT OR IGNORE INTO executions (execution_id, graph_id) VALUES (?, ?)"
_GET_CANONICAL = f"SELECT {_HEADER_COLUMNS}, blob FROM checkpoints WHERE rowid = {_POSITION} AND checkpoint_id = ?"
_GET_NAMED = f"SELECT {_HEADER_COLUMNS}, blob FROM checkpoints WHERE {_NAMED_ID}"
_GET_LEASE = "SELECT execution_id, owner, token, expires_at FROM leases WHERE execution_id = ?"
_NEW_LEASE = "INSERT INTO leases (execution_id, owner, token, expires_at) VALUES (?, ?, ?, ?)"
_SET_LEASE = (
    f"{_NEW_LEASE} "
    "ON CONFLICT(execution_id) DO UPDATE SET owner = excluded.owner, token = excluded.token, "
    "expires_at = excluded.expires_at"
)
# The executions index: each execution's head, advanced in the put's transaction (``heads.advance``).
_HEAD_COLUMNS = "head_id, graph_id, execution_id, head_seq, head_created_at, head_status, head_kind, head_size"
_GET_HEAD = f"SELECT {_HEAD_COLUMNS}, head_tag FROM executions WHERE execution_id = ? AND head_seq IS NOT NULL"
_ADVANCE_HEAD = (
    "UPDATE executions SET head_seq = ?, head_id = ?, head_created_at = ?, head_status = ?, head_kind = ?, "
    "head_size = ?, head_tag = ? WHERE number = ? AND (head_seq IS NULL OR head_seq < ?)"
)
# under a lease: also only into an execution that has not completed
_ADVANCE_HEAD_LEASED = f"{_ADVANCE_HEAD} AND (head_status IS NULL OR head_status != 'completed')"


def _rebuild_checkpoints(db, checkpoint_id_column: str) -> None:
    """Recreate ``checkpoints`` with another definition of its id column (and none of its extra
    indexes), keeping every row: SQLite cannot drop a constraint in place. Migrations call this, so
    it must keep doing exactly this."""
    db.execute(
        f"""
        CREATE TABLE checkpoints_new (
            {checkpoint_id_column},
            graph_id TEXT NOT NULL,
            execution_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            created_at REAL NOT NULL,
            status TEXT NOT NULL,
            kind TEXT NOT NULL,
            size INTEGER NOT NULL,
            blob BLOB NOT NULL,
            UNIQUE (execution_id, seq)
        )
        """
    )
    db.execute(f"INSERT INTO checkpoints_new ({_HEADER_COLUMNS}, blob) SELECT {_HEADER_COLUMNS}, blob FROM checkpoints")
    db.execute("DROP TABLE checkpoints")
    db.execute("ALTER TABLE checkpoints_new RENAME TO checkpoints")


def _migrations():
    from sqlite_utils import Migrations

    migrations = Migrations(MIGRATION_SET)

    @migrations(name="m001_checkpoints_and_leases")
    def _initial(db) -> None:
        db.execute(
            """
            CREATE TABLE checkpoints (
                checkpoint_id TEXT PRIMARY KEY,
                graph_id TEXT NOT NULL,
                execution_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                created_at REAL NOT NULL,
                status TEXT NOT NULL,
                kind TEXT NOT NULL,
                size INTEGER NOT NULL,
                blob BLOB NOT NULL,
                UNIQUE (execution_id, seq)
            )
            """
        )
        db.execute("CREATE INDEX checkpoints_by_graph ON checkpoints (graph_id, created_at, seq)")
        db.execute(
            """
            CREATE TABLE leases (
                execution_id TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                token INTEGER NOT NULL,
                expires_at REAL NOT NULL
            )
            """
        )

    @migrations(name="m002_executions_table")
    def _executions(db) -> None:
        # The per-checkpoint (graph_id, created_at, seq) index and the separate TEXT primary key cost a
        # page write each per put; graph lookups go through a table written once per execution instead.
        _rebuild_checkpoints(db, "checkpoint_id TEXT NOT NULL UNIQUE")  # drops checkpoints_by_graph too
        db.execute("CREATE TABLE executions (execution_id TEXT PRIMARY KEY, graph_id TEXT NOT NULL) WITHOUT ROWID")
        db.execute("CREATE INDEX executions_by_graph ON executions (graph_id)")
        db.execute("INSERT OR IGNORE INTO executions SELECT execution_id, graph_id FROM checkpoints")

    @migrations(name="m003_canonical_ids_unindexed")
    def _canonical_ids(db) -> None:
        # Graph checkpoints' ids derive from (execution_id, seq): only other ids need an index.
        _rebuild_checkpoints(db, "checkpoint_id TEXT NOT NULL")
        db.execute(  # (the first form of derived ids; m004 replaces this index)
            "CREATE UNIQUE INDEX checkpoints_by_named_id ON checkpoints (checkpoint_id) WHERE NOT "
            "(substr(execution_id, 1, 3) = 'ex-' AND seq >= 0 AND checkpoint_id = 'ck-' || substr(execution_id, 4) || '-' || seq)"
        )

    @migrations(name="m004_derived_ids_name_the_whole_execution")
    def _derived_ids(db) -> None:
        # Derived ids became ck-<execution_id>-<seq> for any execution id (no "ex-" prefix games), so
        # a derived-shaped id given anywhere else can be refused on sight instead of checked per put.
        db.execute("DROP INDEX checkpoints_by_named_id")
        db.execute(f"CREATE UNIQUE INDEX checkpoints_by_named_id ON checkpoints (checkpoint_id) WHERE NOT {_CANONICAL}")

    @migrations(name="m005_checkpoints_keyed_by_position")
    def _positions(db) -> None:
        # The UNIQUE(execution_id, seq) index cost a page write per put (~8 us); a rowid that is the
        # checkpoint's position (execution number, seq) gives the same order and uniqueness for free.
        db.execute(
            "CREATE TABLE executions_new (number INTEGER PRIMARY KEY, execution_id TEXT NOT NULL UNIQUE, graph_id TEXT NOT NULL)"
        )
        db.execute("INSERT INTO executions_new (execution_id, graph_id) SELECT execution_id, graph_id FROM executions")
        db.execute("DROP TABLE executions")  # (and executions_by_graph)
        db.execute("ALTER TABLE executions_new RENAME TO executions")
        db.execute("CREATE INDEX executions_by_graph ON executions (graph_id)")
        db.execute(_RECORD_EXECUTION.replace("VALUES (?, ?)", "SELECT execution_id, graph_id FROM checkpoints"))
        (outside,) = db.execute(f"SELECT count(*) FROM checkpoints WHERE seq < -{SEQ_OFFSET} OR seq >= {SEQ_OFFSET}").fetchone()
        if outside:
            raise BackendError(
                f"{outside} stored checkpoint(s) have a seq outside [-2**31, 2**31), which this version of the "
                "sqlite backend cannot hold; export them with an older spark-ckpt first. Nothing was changed"
            )
        db.execute(
            """
            CREATE TABLE checkpoints_new (
                checkpoint_id TEXT NOT NULL,
                graph_id TEXT NOT NULL,
                execution_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                created_at REAL NOT NULL,
                status TEXT NOT NULL,
                kind TEXT NOT NULL,
                size INTEGER NOT NULL,
                blob BLOB NOT NULL
            )
            """
        )
        db.execute(
            f"INSERT INTO checkpoints_new (rowid, {_HEADER_COLUMNS}, blob) "
            f"SELECT e.number * {SEQ_SPAN} + c.seq + {SEQ_OFFSET}, {_CHECKPOINT_HEADER_COLUMNS}, c.blob "
            "FROM checkpoints c JOIN executions e ON e.execution_id = c.execution_id"
        )
        db.execute("DROP TABLE checkpoints")
        db.execute("ALTER TABLE checkpoints_new RENAME TO checkpoints")
        db.execute(f"CREATE UNIQUE INDEX checkpoints_by_named_id ON checkpoints (checkpoint_id) WHERE NOT {_CANONICAL}")

    @migrations(name="m006_executions_index_heads")
    def _heads(db) -> None:
        # The executions index: each execution's head (highest seq ever stored), which deleting
        # checkpoints never lowers. Existing executions start from their newest stored checkpoint.
        for column in ("head_seq INTEGER", "head_id TEXT", "head_created_at REAL", "head_status TEXT",
                       "head_kind TEXT", "head_size INTEGER", "head_tag BLOB"):
            db.execute(f"ALTER TABLE executions ADD COLUMN {column}")
        db.execute(
            "UPDATE executions SET (head_seq, head_id, head_created_at, head_status, head_kind, head_size) = "
            "(SELECT c.seq, c.checkpoint_id, c.created_at, c.status, c.kind, c.size FROM checkpoints c WHERE c.rowid = "
            f"(SELECT MAX(rowid) FROM checkpoints WHERE rowid BETWEEN executions.number * {SEQ_SPAN} "
            f"AND executions.number * {SEQ_SPAN} + {SEQ_SPAN - 1}))"
        )

    return migrations


def _row(number: int, h: CheckpointHeader, blob: bytes) -> tuple:
    """``_INSERT``'s parameters, for a checkpoint of the execution numbered ``number``."""
    position = number * SEQ_SPAN + h.seq + SEQ_OFFSET
    return position, h.checkpoint_id, h.graph_id, h.execution_id, h.seq, h.created_at, h.status, h.kind, h.size, blob


def _placeable(seq: int) -> bool:
    """Whether a checkpoint with this seq has a position (rowid) in its execution's range."""
    return -SEQ_OFFSET <= seq < SEQ_OFFSET


def _stored_position(checkpoint_id: str) -> tuple[str, int] | None:
    """``(execution_id, seq)`` where a derived-shaped id can be stored (``None``: it cannot be here)."""
    key = canonical_key(checkpoint_id)
    return key if key is not None and _placeable(key[1]) else None


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:  # absent (or unreachable: reported when SQLite opens it)
        return 0


def _header(row: tuple) -> CheckpointHeader:
    return CheckpointHeader(*row)


def _head_params(number: int, h: CheckpointHeader) -> tuple:
    """``_ADVANCE_HEAD``'s parameters."""
    return h.seq, h.checkpoint_id, h.created_at, h.status, h.kind, h.size, h.tag, number, h.seq


class _SharedConnection:
    """The one connection of this process to one database file (with one set of settings), shared
    by every ``SqliteBackend`` on it and closed when the last of them closes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.users = 0
        #: number of each execution recorded in ``executions`` (rows are never removed, so a number
        #: never changes)
        self.numbers: dict[str, int] = {}


_SHARED: dict[tuple, _SharedConnection] = {}
_SHARED_LOCK = threading.RLock()  # (re-entrant: a finalizer may run in a GC triggered while it is held)


def _release_connection(key: tuple, shared: _SharedConnection) -> None:
    with _SHARED_LOCK:
        shared.users -= 1
        if shared.users > 0:
            return
        if _SHARED.get(key) is shared:
            del _SHARED[key]
    with shared.lock:
        shared.conn.close()


def _closed_connection() -> sqlite3.Connection:
    """A closed connection: what a closed backend holds, so every use raises "closed"."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.close()
    return conn


class SqliteBackend(LocalBackend):
    """Checkpoints in one SQLite database file (WAL, ``synchronous=NORMAL`` by default)."""

    name = "sqlite"
    url_schemes = ("sqlite",)
    durable = True

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL", busy_timeout_s: float = 30.0) -> None:
        self.path = os.fspath(path)
        mode = str(synchronous).upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ConfigError(
                f"sqlite backend option synchronous={synchronous!r} is invalid; use one of {', '.join(SYNCHRONOUS_MODES)}"
            )
        if busy_timeout_s < 0:
            raise ConfigError(f"sqlite backend option busy_timeout_s must be >= 0, got {busy_timeout_s!r}")
        self.synchronous = mode
        # (the pid: a connection must never be used in a forked child)
        key = (os.getpid(), os.path.realpath(self.path), mode, busy_timeout_s)
        with _SHARED_LOCK:
            shared = _SHARED.get(key)
            if shared is None:
                shared = _SHARED[key] = _SharedConnection(self._connect_retrying(busy_timeout_s))
            shared.users += 1
        self._conn = shared.conn
        self._lock = shared.lock
        self._numbers = shared.numbers
        # Gives the connection back when the backend is closed or garbage-collected, so a backend
        # that was never closed explicitly does not leak it (Python 3.13 warns about unclosed ones).
        self._release = weakref.finalize(self, _release_connection, key, shared)

    def _connect_retrying(self, busy_timeout_s: float) -> sqlite3.Connection:
        """Open, retrying "database is locked": switching a new file to WAL does not wait on the busy
        timeout, so processes opening one new store at the same moment can collide there."""
        deadline = time.monotonic() + max(busy_timeout_s, 1.0)
        while True:
            try:
                return self._connect(busy_timeout_s)
            except BackendError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, **options: object) -> SqliteBackend:
        location = url.split("://", 1)[1] if "://" in url else url
        location = location.split("?", 1)[0]
        if not location:
            raise ConfigError(f"sqlite backend URL {url!r} has no path; use sqlite:///abs/path.db or sqlite://rel.db")
        if location == ":memory:" or location.startswith("file:"):
            raise ConfigError(
                f"sqlite backend URL {url!r} is not a database file path; use memory:// for an in-process store"
            )
        unknown = set(options) - {"synchronous", "busy_timeout_s"}
        if unknown:
            raise ConfigError(
                f"unknown sqlite backend option(s) {', '.join(sorted(unknown))}; known: synchronous, busy_timeout_s"
            )
        return cls(os.path.expanduser(location), **options)  # type: ignore[arg-type]

    def _connect(self, busy_timeout_s: float) -> sqlite3.Connection:
        path = self.path
        if os.path.isdir(path):
            raise BackendError(f"sqlite backend path {path!r} is a directory; point it at a database file inside it")
        # (its size, not its bytes: this process never opens the file other than through SQLite)
        if 0 < _size(path) < MIN_DATABASE_SIZE:  # SQLite takes such a stub for an empty database
            raise BackendError(
                f"{path!r} exists but is not a SQLite database; it was left untouched. "
                "Point the sqlite backend at another file"
            )
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise BackendError(
                f"cannot create directory {parent!r} for the sqlite checkpoint database ({exc.strerror}); "
                "choose a writable path"
            ) from exc
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (sqlite-utils accepts this mode too).
            conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open sqlite checkpoint database {path!r}: {exc}; choose a writable path") from exc
        try:
            journal = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(journal).lower() != "wal":
                raise BackendError(
                    f"sqlite database {path!r} could not switch to WAL mode (got {journal!r}); "
                    "put it on a local filesystem"
                )
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            self._migrate(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise BackendError(
                    f"{path!r} is not a usable SQLite database ({exc}); it was left untouched. "
                    "Point the sqlite backend at another file"
                ) from exc
            raise BackendError(
                f"cannot open sqlite checkpoint database {path!r}: {exc}; check the path is writable"
            ) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        from sqlite_utils import Database

        db = Database(conn, execute_plugins=False, recursive_triggers=False)
        migrations = _migrations()
        if not migrations.pending(db):
            return
        # One writer migrates at a time; the others wait here, then find nothing pending.
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrations.apply(db)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def applied_migrations(self) -> list[str]:
        """Names of the schema migrations applied to this database, oldest first."""
        from sqlite_utils import Database

        with self._lock:
            db = Database(self._conn, execute_plugins=False, recursive_triggers=False)
            return [m.name for m in _migrations().applied(db)]

    def describe(self) -> str:
        return f"sqlite://{self.path}"

    def close(self) -> None:
        self._conn = _closed_connection()
        self._release()

    # -- helpers -----------------------------------------------------------------------------------
    def _failed(self, what: str, exc: sqlite3.Error) -> BackendError:
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
            return BackendError(f"sqlite backend {self.path!r} is closed; open a new backend to {what}")
        return BackendError(f"sqlite backend {self.path!r} failed to {what}: {exc}")

    def _read_lease(self, execution_id: str) -> Lease | None:
        row = self._conn.execute(_GET_LEASE, (execution_id,)).fetchone()
        return Lease(*row) if row else None

    # -- checkpoints --------------------------------------------------------------------------------
    def check_header(self, header: CheckpointHeader) -> None:
        """A derived-shaped id (``ck-<x>-<n>``) is stored only as checkpoint n of execution <x>: that is
        how it is found, and why it needs no index. Anywhere else it could shadow, or be shadowed by, the
        checkpoint it names, so it is refused (spark-ckpt never writes one elsewhere)."""
        h = header
        if not _placeable(h.seq):
            raise BackendError(
                f"checkpoint seq {h.seq} of execution {h.execution_id} is outside [-2**31, 2**31), the range "
                f"{self.describe()} can hold; number checkpoints from 0"
            )
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
        try:
            if lease is None:
                conn.execute(_INSERT, _row(number, h, blob))
                conn.execute(_ADVANCE_HEAD, _head_params(number, h))  # forward only, never refused
                return
            cursor = conn.execute(_INSERT_FENCED, (*_row(number, h, blob), h.execution_id, lease.token, lease.owner))
        except sqlite3.IntegrityError as exc:
            raise self._duplicate(h, exc) from None
        if cursor.rowcount != 1:
            check_fence(self._read_lease(h.execution_id), lease, h.execution_id)
            raise LeaseError(f"write to execution {h.execution_id} refused: lease check failed")
        if conn.execute(_ADVANCE_HEAD_LEASED, _head_params(number, h)).rowcount != 1:
            heads.advance(self._read_head(h.execution_id), h, leased=True)  # raises what refused it
            raise BackendError(f"sqlite backend {self.path!r} could not advance the head of execution {h.execution_id}")

    def _read_head(self, execution_id: str) -> CheckpointHeader | None:
        row = self._conn.execute(_GET_HEAD, (execution_id,)).fetchone()
        return CheckpointHeader(*row[:8], tag=row[8]) if row else None

    def execution_head(self, execution_id: str) -> CheckpointHeader | None:
        with self._lock:
            try:
                return self._read_head(execution_id)
            except sqlite3.Error as exc:
                raise self._failed(f"read the head of execution {execution_id}", exc) from exc

    @staticmethod
    def _recorded_number(conn: sqlite3.Connection, h: CheckpointHeader) -> int:
        """Insert the execution's row if it has none; its number (no second query when just inserted)."""
        cursor = conn.execute(_RECORD_EXECUTION, (h.execution_id, h.graph_id))
        if cursor.rowcount == 1:
            return cursor.lastrowid
        return conn.execute(_GET_NUMBER, (h.execution_id,)).fetchone()[0]

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
                conn.execute(_NEW_LEASE, (lease.execution_id, lease.owner, lease.token, lease.expires_at))
            except sqlite3.IntegrityError:  # it has one (released, or another worker's): the usual rules
                lease = grant_lease(self._read_lease(h.execution_id), h.execution_id, owner, ttl_s, now)
                conn.execute(_SET_LEASE, (lease.execution_id, lease.owner, lease.token, lease.expires_at))
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
                row = self._conn.execute(_GET_CANONICAL, (*key, checkpoint_id)).fetchone() if key else None
                if row is None:
                    row = self._conn.execute(_GET_NAMED, (checkpoint_id,)).fetchone()
            except sqlite3.Error as exc:
                raise self._failed(f"read checkpoint {checkpoint_id!r}", exc) from exc
        if row is None:
            raise CheckpointNotFoundError(f"no checkpoint with id {checkpoint_id!r} in {self.describe()}")
        return StoredCheckpoint(_header(row[:8]), bytes(row[8]))

    def _query(self, what: str, sql: str, params: list) -> list[CheckpointHeader]:
        with self._lock:
            try:
                rows = self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._failed(what, exc) from exc
        return [_header(row) for row in rows]

    def list(
        self, *, graph_id: str | None = None, execution_id: str | None = None, limit: int | None = None
    ) -> list[CheckpointHeader]:
        if graph_id is None and execution_id is None:
            sql, params = f"SELECT {_HEADER_COLUMNS} FROM checkpoints", []
        else:  # each execution's rows are one rowid range
            where, params = self._executions_where(graph_id, execution_id)
            sql = f"SELECT {_CHECKPOINT_HEADER_COLUMNS} FROM executions e JOIN checkpoints c ON {_ROWS_OF_E}{where}"
        sql += _NEWEST_FIRST
        params.append(-1 if limit is None else limit)
        return self._query("list checkpoints", sql, params)

    def executions(
        self, *, graph_id: str | None = None, unfinished_only: bool = False, limit: int | None = None
    ) -> list[CheckpointHeader]:
        # The heads of the executions that still hold a checkpoint (one rowid seek each).
        where, params = self._executions_where(graph_id, None)
        stored = f"EXISTS (SELECT 1 FROM checkpoints c WHERE {_ROWS_OF_E})"
        sql = f"SELECT {_HEAD_COLUMNS} FROM executions e{where}{' AND' if where else ' WHERE'} head_seq IS NOT NULL AND {stored}"
        if unfinished_only:
            statuses = sorted(UNFINISHED_STATUSES)
            sql += f" AND head_status IN ({', '.join('?' * len(statuses))})"
            params.extend(statuses)
        sql += " ORDER BY head_created_at DESC, head_seq DESC, head_id DESC LIMIT ?"
        params.append(-1 if limit is None else limit)
        return self._query("list executions", sql, params)

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

        def change(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.executemany(f"DELETE FROM checkpoints WHERE {_NAMED_ID}", [(cid,) for cid in ids])
            conn.executemany(f"DELETE FROM checkpoints WHERE rowid = {_POSITION} AND checkpoint_id = ?", canonical)
            return conn.total_changes - before

        return self._write_transaction("delete checkpoints", change)

    def replace(self, header: CheckpointHeader, blob: bytes) -> None:
        """Swap the stored bytes (and size) of an existing checkpoint in one UPDATE (key rotation)."""
        h = header

        def change(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                f"UPDATE checkpoints SET blob = ?, size = ? WHERE rowid = {_POSITION} AND checkpoint_id = ?",
                (blob, h.size, h.execution_id, h.seq, h.checkpoint_id),
            )
            if h.tag is not None and cursor.rowcount:  # key rotation re-tags the index head
                conn.execute("UPDATE executions SET head_tag = ? WHERE execution_id = ? AND head_seq = ?",
                             (h.tag, h.execution_id, h.seq))
            return cursor.rowcount

        if self._write_transaction(f"replace checkpoint {h.checkpoint_id!r}", change) == 0:
            raise CheckpointNotFoundError(
                f"no checkpoint {h.checkpoint_id!r} (seq {h.seq} of execution {h.execution_id}) in "
                f"{self.describe()} to replace"
            )

    # -- leases -------------------------------------------------------------------------------------
    def _write_transaction(self, what: str, change: Any) -> Any:
        """``change(conn)`` inside one ``BEGIN IMMEDIATE`` transaction; rolled back if it raises."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = change(conn)
                    conn.execute("COMMIT")
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
            conn.execute(_SET_LEASE, (lease.execution_id, lease.owner, lease.token, lease.expires_at))
            return lease

        return self._write_transaction(f"acquire the lease of execution {execution_id}", change)

    def renew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        def change(conn: sqlite3.Connection) -> Lease:
            renewed = extend_lease(self._read_lease(lease.execution_id), lease, ttl_s, time.time())
            conn.execute(_SET_LEASE, (renewed.execution_id, renewed.owner, renewed.token, renewed.expires_at))
            return renewed

        return self._write_transaction(f"renew the lease of execution {lease.execution_id}", change)

    def release_lease(self, lease: Lease) -> None:
        def change(conn: sqlite3.Connection) -> None:
            current = self._read_lease(lease.execution_id)
            if current is not None and current.token == lease.token and current.owner == lease.owner:
                # Keep the token so the next owner's token still grows; just expire the lease.
                conn.execute(_SET_LEASE, (lease.execution_id, "", lease.token, 0.0))

        self._write_transaction(f"release the lease of execution {lease.execution_id}", change)
