"""Opening a SQLite checkpoint database, and the one connection per file that a process shares.

Opening checks the path (a directory, or a file too small to be a database, is refused and left
untouched), switches the database to WAL with the chosen ``synchronous`` mode, turns ``secure_delete``
on (freed content is zeroed, so replaced plaintext does not linger in free pages) and applies the
pending migrations (``schema.migrate``). A new file switched to WAL by several processes at once
can answer "database is locked" without waiting on the busy timeout, so opening retries that.

The hot path (``put``/``get``) uses the plain ``sqlite3`` connection and its statement cache. Every
``SqliteBackend`` of a process on one file shares one connection (per settings), guarded by a lock
because a transaction spans several statements. The database file is never opened other than by
SQLite: on POSIX, closing any descriptor of a file drops every lock the process holds on it, and
without its locks another process closing the last connection it sees deletes the WAL in use, so
later commits would be invisible to others and lost in a crash.

Invariants: one ``_SharedConnection`` per (pid, real path, synchronous, busy timeout), never used
in a forked child (the pid is part of the key); it is closed when its last user releases it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Mapping

from ...errors import BackendError
from .schema import DEFAULT_TABLES, migrate

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
#: a database file holds at least one page of the smallest page size
MIN_DATABASE_SIZE = 512


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:  # absent (or unreachable: reported when SQLite opens it)
        return 0


class _SharedConnection:
    """The one connection of this process to one database file (with one set of settings), shared
    by every ``SqliteBackend`` on it and closed when the last of them closes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.users = 0
        #: per store (its migration set name), the number of each execution recorded in its executions
        #: table (rows are never removed, so a number never changes)
        self.numbers: dict[str, dict[str, int]] = {}
        #: the stores (migration set names) whose tables this connection has migrated
        self.migrated: set[str] = set()


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


def share_connection(
    path: str, synchronous: str, busy_timeout_s: float, tables: Mapping[str, str] = DEFAULT_TABLES,
    *, read_only: bool = False,
) -> tuple[tuple, _SharedConnection]:
    """The shared connection to ``path`` with these settings (opened if this process has none), with
    one more user and the store with these ``tables`` migrated (``read_only``: checked to need no
    migration); its registry key, for ``_release_connection``."""
    # (the pid: a connection must never be used in a forked child)
    key = (os.getpid(), os.path.realpath(path), synchronous, busy_timeout_s, read_only)
    store = tables["migrations"]
    with _SHARED_LOCK:
        shared = _SHARED.get(key)
        if shared is None:
            conn = (_connect_read_only(path, busy_timeout_s, tables) if read_only
                    else _connect_retrying(path, synchronous, busy_timeout_s, tables))
            shared = _SHARED[key] = _SharedConnection(conn)
            shared.migrated.add(store)
        shared.users += 1
    try:
        if store not in shared.migrated:  # another store in a file this process has open already
            with shared.lock:
                (_check_migrated if read_only else _migrate)(shared.conn, path, tables)
                shared.migrated.add(store)
    except BaseException:
        _release_connection(key, shared)
        raise
    shared.numbers.setdefault(store, {})
    return key, shared


def _connect_retrying(
    path: str, synchronous: str, busy_timeout_s: float, tables: Mapping[str, str]
) -> sqlite3.Connection:
    """Open, retrying "database is locked": switching a new file to WAL does not wait on the busy
    timeout, so processes opening one new store at the same moment can collide there."""
    deadline = time.monotonic() + max(busy_timeout_s, 1.0)
    while True:
        try:
            return _connect(path, synchronous, busy_timeout_s, tables)
        except BackendError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _connect(path: str, synchronous: str, busy_timeout_s: float, tables: Mapping[str, str]) -> sqlite3.Connection:
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
        conn.execute(f"PRAGMA synchronous={synchronous}")
        # deleted and replaced content is overwritten with zeros, not left in free pages: after a key
        # rotation (or a prune) no plaintext checkpoint stays readable in the file
        conn.execute("PRAGMA secure_delete=ON")
        _migrate(conn, path, tables)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise _unusable(path, exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_read_only(path: str, busy_timeout_s: float, tables: Mapping[str, str]) -> sqlite3.Connection:
    """Open for reading only: no WAL switch, no migration, no page written (SQLite itself refuses a
    write: "attempt to write a readonly database").

    ``mode=ro`` reads alongside live writers through the WAL index, which SQLite may have to create
    (``-wal``/``-shm``) next to the file. Where it cannot (a read-only directory or file system) and
    no ``-wal`` file says a writer has the database open, the file is read as ``immutable``: then
    nothing at all is created or locked."""
    from pathlib import Path
    from urllib.parse import quote

    if os.path.isdir(path):
        raise BackendError(f"sqlite backend path {path!r} is a directory; point it at a database file inside it")
    if not os.path.exists(path):
        raise BackendError(f"no sqlite checkpoint database at {path!r} (opened read-only, so none is created)")
    if _size(path) < MIN_DATABASE_SIZE:
        raise BackendError(f"{path!r} is not a SQLite database (too short); it was left untouched")
    absolute = Path(os.path.realpath(path))  # (also one leading slash: "//x" would read as a URI authority)
    coordinated = os.path.exists(f"{absolute}-wal") or os.access(absolute.parent, os.W_OK)
    uri = f"file:{quote(str(absolute))}?{'mode=ro' if coordinated else 'immutable=1'}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise BackendError(f"cannot open sqlite checkpoint database {path!r} read-only: {exc}") from exc
    try:
        _check_migrated(conn, path, tables)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise _unusable(path, exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


#: the migration a read-only open can do without (``schema`` m007: only rows that hold values, which
#: a store without its tables has none of, are ever looked up there)
READ_WITHOUT = "m007_values_stored_once"


def _check_migrated(conn: sqlite3.Connection, path: str, tables: Mapping[str, str]) -> None:
    """A read-only open cannot bring an older schema up to date: say so instead of misreading it."""
    from sqlite_utils import Database

    from .schema import _migrations

    db = Database(conn, execute_plugins=False, recursive_triggers=False)
    # (a store without the tables of values stored once holds no such values: it reads as it is)
    pending = [m.name for m in _migrations(tables).pending(db) if m.name != READ_WITHOUT]
    if pending:
        raise BackendError(
            f"sqlite checkpoint database {path!r} (store {tables['checkpoints']!r}) needs schema changes "
            f"({', '.join(pending)}) that a read-only open cannot make; open it once where it can be written"
        )


def _migrate(conn: sqlite3.Connection, path: str, tables: Mapping[str, str]) -> None:
    try:
        migrate(conn, tables)
    except sqlite3.DatabaseError as exc:
        raise _unusable(path, exc) from exc


def _unusable(path: str, exc: sqlite3.DatabaseError) -> BackendError:
    if "not a database" in str(exc) or "malformed" in str(exc):
        return BackendError(
            f"{path!r} is not a usable SQLite database ({exc}); it was left untouched. "
            "Point the sqlite backend at another file"
        )
    return BackendError(f"cannot open sqlite checkpoint database {path!r}: {exc}; check the path is writable")
