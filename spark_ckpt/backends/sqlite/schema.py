"""The SQLite store's tables, where each checkpoint's row lives, and the migrations that build them.

Schema: named, append-only migrations (sqlite-utils ``Migrations``, set ``spark_ckpt``) applied on
open inside one ``BEGIN IMMEDIATE`` transaction, so two processes opening a new file at once do not
race. Tables ``checkpoints`` (one row per checkpoint, the blob last so listings never read it),
``executions`` (execution -> its ``number`` and graph; written once per execution: by ``start_execution`` in
its transaction, else before the execution's first put; a trigger doing it on every insert cost ~14 us
per put), ``leases`` (one row per execution), and ``checkpoints:values`` / ``checkpoints:value_refs``
(large values stored once, ``m007``; named so that no store's own tables can be called so).

Every B-tree a ``put`` writes costs a page write into the WAL, so a graph checkpoint's put writes
one: the table itself. A checkpoint's rowid is its position, ``number * 2**32 + seq + 2**31``, so
the table is ordered by (execution, seq): that makes (execution, seq) unique, finds a checkpoint
and lists an execution by rowid, and needs no separate index (the ``UNIQUE(execution_id, seq)``
index it replaced cost ~8 us per put). Seq must lie in [-2**31, 2**31). A graph checkpoint's id is
canonical (``ck-<execution_id>-<seq>``, derived from its position), so it needs no index either;
only other ids go into the partial unique index ``checkpoints_by_named_id``.

The executions index (``spark_ckpt.backends.heads``) lives in ``executions`` too: each row holds its
execution's head (the header of its highest seq ever stored, with the writer's tag).

Those are the default store's names. ``SqliteBackend(table_name=...)`` keeps another store in the same
file under tables named after it (``sqlite_tables``: ``<t>``, ``<t>_executions``, ``<t>_leases``, and
indexes ``<t>_by_named_id``, ...), migrated on its own (migration set ``<t>_migrations``).

Invariants: a released migration is never edited, removed or reordered (a database records by name
which ran); an execution's ``number`` never changes (its row is never removed), so neither does a
checkpoint's position; ``_CANONICAL`` is spelled identically in the index and in the queries.
"""

from __future__ import annotations

import sqlite3
from typing import Mapping

from ...errors import BackendError
from ...model import canonical_key
from ..table_names import table_names

MIGRATION_SET = "spark_ckpt"
#: the checkpoints table of the default store; another ``table_name`` gets tables named after it
DEFAULT_TABLE_NAME = "checkpoints"
#: the default store's tables (and the name its migrations are recorded under)
DEFAULT_TABLES = {"checkpoints": "checkpoints", "executions": "executions", "leases": "leases", "migrations": MIGRATION_SET}


def with_value_tables(tables: Mapping[str, str]) -> dict[str, str]:
    """``tables`` and the two of large values stored once (``m007``), named after the checkpoints table
    with a ":", which no ``table_name`` can hold (``table_names``): no store, of this release or an
    earlier one, can own a table of that name. (Quoted in SQL: ``quoted``.)"""
    return {**tables, "values": f"{tables['checkpoints']}:values", "value_refs": f"{tables['checkpoints']}:value_refs"}


def quoted(name: str) -> str:
    return f'"{name}"'



def sqlite_tables(table_name: object = DEFAULT_TABLE_NAME) -> dict[str, str]:
    """The tables of the store called ``table_name`` (``table_names``; ``ConfigError`` for a bad name).
    Its migrations are recorded as the set ``<table_name>_migrations``."""
    return with_value_tables(
        table_names(table_name, default=DEFAULT_TABLE_NAME, legacy=DEFAULT_TABLES, backend="sqlite backend"))

_HEADER_COLUMNS = "checkpoint_id, graph_id, execution_id, seq, created_at, status, kind, size"
_CHECKPOINT_HEADER_COLUMNS = ", ".join(f"c.{column}" for column in _HEADER_COLUMNS.split(", "))  # joined with executions

# A checkpoint's rowid is its position: its execution's number * SEQ_SPAN + seq + SEQ_OFFSET.
SEQ_SPAN = 1 << 32
SEQ_OFFSET = 1 << 31
# A canonical row's id is derived from its (execution_id, seq) (``model.canonical_checkpoint_id``), so it
# needs no index of its own: only other ids go into the partial unique index. The expression must be
# written identically in the index and in the queries, or SQLite will not use the index.
_CANONICAL = "(seq >= 0 AND checkpoint_id = 'ck-' || execution_id || '-' || seq)"


def _rebuild_checkpoints(db, checkpoint_id_column: str, checkpoints: str = "checkpoints") -> None:
    """Recreate ``checkpoints`` with another definition of its id column (and none of its extra
    indexes), keeping every row: SQLite cannot drop a constraint in place. Migrations call this, so
    it must keep doing exactly this."""
    db.execute(
        f"""
        CREATE TABLE {checkpoints}_new (
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
    db.execute(f"INSERT INTO {checkpoints}_new ({_HEADER_COLUMNS}, blob) SELECT {_HEADER_COLUMNS}, blob FROM {checkpoints}")
    db.execute(f"DROP TABLE {checkpoints}")
    db.execute(f"ALTER TABLE {checkpoints}_new RENAME TO {checkpoints}")


def _migrations(tables: Mapping[str, str] = DEFAULT_TABLES):
    from sqlite_utils import Migrations

    C, E, L = tables["checkpoints"], tables["executions"], tables["leases"]
    tables = with_value_tables(tables)
    V, R = quoted(tables["values"]), quoted(tables["value_refs"])
    R_BY_DIGEST = quoted(tables["value_refs"] + "_by_digest")
    migrations = Migrations(tables["migrations"])

    @migrations(name="m001_checkpoints_and_leases")
    def _initial(db) -> None:
        db.execute(
            f"""
            CREATE TABLE {C} (
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
        db.execute(f"CREATE INDEX {C}_by_graph ON {C} (graph_id, created_at, seq)")
        db.execute(
            f"""
            CREATE TABLE {L} (
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
        _rebuild_checkpoints(db, "checkpoint_id TEXT NOT NULL UNIQUE", C)  # drops its _by_graph index too
        db.execute(f"CREATE TABLE {E} (execution_id TEXT PRIMARY KEY, graph_id TEXT NOT NULL) WITHOUT ROWID")
        db.execute(f"CREATE INDEX {E}_by_graph ON {E} (graph_id)")
        db.execute(f"INSERT OR IGNORE INTO {E} SELECT execution_id, graph_id FROM {C}")

    @migrations(name="m003_canonical_ids_unindexed")
    def _canonical_ids(db) -> None:
        # Graph checkpoints' ids derive from (execution_id, seq): only other ids need an index.
        _rebuild_checkpoints(db, "checkpoint_id TEXT NOT NULL", C)
        db.execute(  # (the first form of derived ids; m004 replaces this index)
            f"CREATE UNIQUE INDEX {C}_by_named_id ON {C} (checkpoint_id) WHERE NOT "
            "(substr(execution_id, 1, 3) = 'ex-' AND seq >= 0 AND checkpoint_id = 'ck-' || substr(execution_id, 4) || '-' || seq)"
        )

    @migrations(name="m004_derived_ids_name_the_whole_execution")
    def _derived_ids(db) -> None:
        # Derived ids became ck-<execution_id>-<seq> for any execution id (no "ex-" prefix games), so
        # a derived-shaped id given anywhere else can be refused on sight instead of checked per put.
        db.execute(f"DROP INDEX {C}_by_named_id")
        db.execute(f"CREATE UNIQUE INDEX {C}_by_named_id ON {C} (checkpoint_id) WHERE NOT {_CANONICAL}")

    @migrations(name="m005_checkpoints_keyed_by_position")
    def _positions(db) -> None:
        # The UNIQUE(execution_id, seq) index cost a page write per put (~8 us); a rowid that is the
        # checkpoint's position (execution number, seq) gives the same order and uniqueness for free.
        db.execute(
            f"CREATE TABLE {E}_new (number INTEGER PRIMARY KEY, execution_id TEXT NOT NULL UNIQUE, graph_id TEXT NOT NULL)"
        )
        db.execute(f"INSERT INTO {E}_new (execution_id, graph_id) SELECT execution_id, graph_id FROM {E}")
        db.execute(f"DROP TABLE {E}")  # (and its _by_graph index)
        db.execute(f"ALTER TABLE {E}_new RENAME TO {E}")
        db.execute(f"CREATE INDEX {E}_by_graph ON {E} (graph_id)")
        db.execute(f"INSERT OR IGNORE INTO {E} (execution_id, graph_id) SELECT execution_id, graph_id FROM {C}")
        (outside,) = db.execute(f"SELECT count(*) FROM {C} WHERE seq < -{SEQ_OFFSET} OR seq >= {SEQ_OFFSET}").fetchone()
        if outside:
            raise BackendError(
                f"{outside} stored checkpoint(s) have a seq outside [-2**31, 2**31), which this version of the "
                "sqlite backend cannot hold; export them with an older spark-ckpt first. Nothing was changed"
            )
        db.execute(
            f"""
            CREATE TABLE {C}_new (
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
            f"INSERT INTO {C}_new (rowid, {_HEADER_COLUMNS}, blob) "
            f"SELECT e.number * {SEQ_SPAN} + c.seq + {SEQ_OFFSET}, {_CHECKPOINT_HEADER_COLUMNS}, c.blob "
            f"FROM {C} c JOIN {E} e ON e.execution_id = c.execution_id"
        )
        db.execute(f"DROP TABLE {C}")
        db.execute(f"ALTER TABLE {C}_new RENAME TO {C}")
        db.execute(f"CREATE UNIQUE INDEX {C}_by_named_id ON {C} (checkpoint_id) WHERE NOT {_CANONICAL}")

    @migrations(name="m006_executions_index_heads")
    def _heads(db) -> None:
        # The executions index: each execution's head (highest seq ever stored), which deleting
        # checkpoints never lowers. Existing executions start from their newest stored checkpoint.
        for column in ("head_seq INTEGER", "head_id TEXT", "head_created_at REAL", "head_status TEXT",
                       "head_kind TEXT", "head_size INTEGER", "head_tag BLOB"):
            db.execute(f"ALTER TABLE {E} ADD COLUMN {column}")
        db.execute(
            f"UPDATE {E} SET (head_seq, head_id, head_created_at, head_status, head_kind, head_size) = "
            f"(SELECT c.seq, c.checkpoint_id, c.created_at, c.status, c.kind, c.size FROM {C} c WHERE c.rowid = "
            f"(SELECT MAX(rowid) FROM {C} WHERE rowid BETWEEN {E}.number * {SEQ_SPAN} "
            f"AND {E}.number * {SEQ_SPAN} + {SEQ_SPAN - 1}))"
        )

    @migrations(name="m007_values_stored_once")
    def _values(db) -> None:
        # Large values stored once by their SHA-256 (``engine.value_parts``): a checkpoint row holding
        # some keeps its bytes without them (its ``size`` is that of the whole) and a reference per
        # value at its offset in the whole; a value goes with the last reference to it.
        db.execute(f"CREATE TABLE {V} (digest TEXT PRIMARY KEY, size INTEGER NOT NULL, data BLOB NOT NULL)")
        db.execute(
            f"CREATE TABLE {R} (position INTEGER NOT NULL, offset INTEGER NOT NULL, digest TEXT NOT NULL, "
            "size INTEGER NOT NULL, PRIMARY KEY (position, offset)) WITHOUT ROWID"
        )
        db.execute(f"CREATE INDEX {R_BY_DIGEST} ON {R} (digest)")

    return migrations


def migrate(conn: sqlite3.Connection, tables: Mapping[str, str] = DEFAULT_TABLES) -> None:
    """Apply the pending migrations of the store with these tables, one process at a time."""
    from sqlite_utils import Database

    db = Database(conn, execute_plugins=False, recursive_triggers=False)
    migrations = _migrations(tables)
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


def applied(conn: sqlite3.Connection, tables: Mapping[str, str] = DEFAULT_TABLES) -> list[str]:
    """Names of the migrations applied to the store with these tables, oldest first."""
    from sqlite_utils import Database

    db = Database(conn, execute_plugins=False, recursive_triggers=False)
    return [m.name for m in _migrations(tables).applied(db)]


def _placeable(seq: int) -> bool:
    """Whether a checkpoint with this seq has a position (rowid) in its execution's range."""
    return -SEQ_OFFSET <= seq < SEQ_OFFSET


def _stored_position(checkpoint_id: str) -> tuple[str, int] | None:
    """``(execution_id, seq)`` where a derived-shaped id can be stored (``None``: it cannot be here)."""
    key = canonical_key(checkpoint_id)
    return key if key is not None and _placeable(key[1]) else None
