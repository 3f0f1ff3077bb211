"""SQLite backend: one database file, safe to share between processes on one machine.

URLs: ``sqlite://relative/path.db``, ``sqlite:///absolute/path.db`` (``CheckpointConfig(backend="sqlite",
path=...)`` builds the same). Options: ``synchronous``, ``busy_timeout_s``, ``table_name`` (several
independent stores in one file) and ``compression``. As an object (the guide's name ``SQLiteBackend``):
``SQLiteBackend(db_path="./checkpoints.db", table_name="graph_checkpoints")``.

Durability: the database runs in WAL mode with ``synchronous=NORMAL``. A committed checkpoint survives
a crash of the process (``kill -9``); after a power loss or OS crash the last few commits may be
lost (the database stays consistent). Pass ``synchronous="FULL"`` to fsync every commit and survive
power loss too, at roughly ten times the cost per checkpoint.

Modules:

- ``schema``: the tables, a checkpoint's position (its rowid), and the append-only migrations;
- ``statements``: the SQL of the hot path and the rows it binds;
- ``connections``: opening a database file, and the one connection per file a process shares;
- ``backend``: ``SQLiteBackend`` (``SqliteBackend``), the ``Backend`` contract as transactions on that connection.
"""

from .backend import SQLiteBackend, SqliteBackend
from .connections import MIN_DATABASE_SIZE, SYNCHRONOUS_MODES
from .schema import _CANONICAL as _CANONICAL
from .schema import _migrations as _migrations
from .schema import MIGRATION_SET, SEQ_OFFSET, SEQ_SPAN

__all__ = ["MIGRATION_SET", "MIN_DATABASE_SIZE", "SEQ_OFFSET", "SEQ_SPAN", "SYNCHRONOUS_MODES", "SQLiteBackend", "SqliteBackend"]
