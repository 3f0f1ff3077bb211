"""The PostgreSQL schema of spark-ckpt: its tables, and the migrations that create and change them.

* One table of checkpoints (header columns + ``bytea`` blob, unique ``(execution_id, seq)``), one of
  leases and one of executions, created and migrated by the backend itself (``spark_ckpt_migrations``
  records what ran).
* The executions index (``spark_ckpt.backends.heads``) is ``spark_ckpt_executions``: one row per
  execution holding its head, the header (and writer's ``tag``) of the highest seq ever stored.
  Migration 2 created it and filled it from each execution's newest stored checkpoint (no tag). Stop
  workers of older plugin versions before it runs: one still running afterwards stores checkpoints
  without advancing their heads (an execution it starts is not listed by ``executions()`` at all).

``PostgreSQLBackend(table_name=...)`` keeps another store in the same schema under tables named after it
(``postgres_tables``), migrated on its own (its own ``<t>_migrations``); ``MIGRATIONS`` spells the
default store's names and ``named`` renames them.

Invariants: ``MIGRATIONS`` is append-only, a released entry is never edited; migrating takes a
transaction-scoped advisory lock per schema, so of several workers starting at once one migrates
and the others then find nothing to do; a schema migrated by a newer version is refused.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Mapping

from spark_ckpt.backends.table_names import table_names
from spark_ckpt.errors import BackendError

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

#: the checkpoints table of the default store; another ``table_name`` gets tables named after it
DEFAULT_TABLE_NAME = "spark_ckpt_checkpoints"
#: the default store's tables, the names ``MIGRATIONS`` spells
DEFAULT_TABLES = {
    "checkpoints": "spark_ckpt_checkpoints",
    "executions": "spark_ckpt_executions",
    "leases": "spark_ckpt_leases",
    "migrations": "spark_ckpt_migrations",
}
_DEFAULT_NAME = re.compile(r"\bspark_ckpt_(checkpoints|executions|leases|migrations)")


def postgres_tables(table_name: object = DEFAULT_TABLE_NAME) -> dict[str, str]:
    """The tables of the store called ``table_name`` in its schema (``spark_ckpt.backends.table_names``:
    ``<t>``, ``<t>_executions``, ``<t>_leases``, ``<t>_migrations``; the default keeps the names above)."""
    return table_names(table_name, default=DEFAULT_TABLE_NAME, legacy=DEFAULT_TABLES, backend="postgres backend")


def named(statement: str, schema: str, tables: Mapping[str, str]) -> str:
    """A ``MIGRATIONS`` statement for the store with these tables: the default names it spells (and the
    index names that start with them) become the store's."""
    return _DEFAULT_NAME.sub(lambda m: tables[m.group(1)], statement.format(s=schema))

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


def migrate(conn: Any, schema: str, tables: Mapping[str, str] = DEFAULT_TABLES) -> None:
    """Bring the store with these tables in ``schema`` up to the newest migration, in one transaction."""
    s = f'"{schema}"'
    recorded = f"{s}.{tables['migrations']}"
    lock_key = int.from_bytes(hashlib.blake2b(f"spark-ckpt:{schema}".encode(), digest_size=8).digest(), "big", signed=True)
    with conn.transaction():
        # Several workers may start at once: one migrates, the others wait and then see it done.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key])
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {recorded} (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {row[0] for row in conn.execute(f"SELECT version FROM {recorded}")}
        known = {version for version, _, _ in MIGRATIONS}
        if applied - known:
            raise BackendError(
                f"PostgreSQL schema {schema!r} was migrated by a newer spark-ckpt-postgres "
                f"(versions {sorted(applied - known)}); upgrade spark-ckpt-postgres to use it"
            )
        for version, name, statements in MIGRATIONS:
            if version in applied:
                continue
            for statement in statements:
                conn.execute(named(statement, s, tables))
            conn.execute(f"INSERT INTO {recorded} (version, name) VALUES (%s, %s)", [version, name])
