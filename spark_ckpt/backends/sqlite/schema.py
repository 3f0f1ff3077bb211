"""The SQLite store's tables, where each checkpoint's row lives, and the migrations that build them.

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
only other ids go into the partial unique index ``checkpoints_by_named_id``.

The executions index (``spark_ckpt.backends.heads``) lives in ``executions`` too: each row holds its
execution's head (the header of its highest seq ever stored, with the writer's tag).

Invariants: a released migration is never edited, removed or reordered (a database records by name
which ran); an execution's ``number`` never changes (its row is never removed), so neither does a
checkpoint's position; ``_CANONICAL`` is spelled identically in the index and in the queries.
"""

from __future__ import annotations

import sqlite3

from ...errors import BackendError
from ...model import canonical_key

MIGRATION_SET = "spark_ckpt"

_HEADER_COLUMNS = "checkpoint_id, graph_id, execution_id, seq, created_at, status, kind, size"
_CHECKPOINT_HEADER_COLUMNS = ", ".join(f"c.{column}" for column in _HEADER_COLUMNS.split(", "))  # joined with executions

# A checkpoint's rowid is its position: its execution's number * SEQ_SPAN + seq + SEQ_OFFSET.
SEQ_SPAN = 1 << 32
SEQ_OFFSET = 1 << 31
# A canonical row's id is derived from its (execution_id, seq) (``model.canonical_checkpoint_id``), so it
# needs no index of its own: only other ids go into the partial unique index. The expression must be
# written identically in the index and in the queries, or SQLite will not use the index.
_CANONICAL = "(seq >= 0 AND checkpoint_id = 'ck-' || execution_id || '-' || seq)"


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
        db.execute("INSERT OR IGNORE INTO executions (execution_id, graph_id) SELECT execution_id, graph_id FROM checkpoints")
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


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the pending migrations, one process at a time."""
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


def applied(conn: sqlite3.Connection) -> list[str]:
    """Names of the migrations applied to the database of ``conn``, oldest first."""
    from sqlite_utils import Database

    db = Database(conn, execute_plugins=False, recursive_triggers=False)
    return [m.name for m in _migrations().applied(db)]


def _placeable(seq: int) -> bool:
    """Whether a checkpoint with this seq has a position (rowid) in its execution's range."""
    return -SEQ_OFFSET <= seq < SEQ_OFFSET


def _stored_position(checkpoint_id: str) -> tuple[str, int] | None:
    """``(execution_id, seq)`` where a derived-shaped id can be stored (``None``: it cannot be here)."""
    key = canonical_key(checkpoint_id)
    return key if key is not None and _placeable(key[1]) else None
