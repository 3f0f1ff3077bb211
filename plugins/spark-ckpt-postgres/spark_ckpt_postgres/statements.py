"""The SQL text of the PostgreSQL backend, and reading its rows back into headers.

* ``put`` is one statement (so one implicit transaction and one round trip): it inserts the checkpoint
  and advances the head in data-modifying CTEs, the head with an upsert that only moves it forward.
  Under a lease it also reads the lease row ``FOR SHARE`` (a takeover, ``FOR UPDATE``, cannot slip in
  before the insert) and the head, and inserts only if the token is current and the head allows it;
  what stopped it comes back in the same answer. The head is read without a lock: a writer committing
  a later head meanwhile is ordered after this put, and the forward-only upsert leaves its head in
  place. Every put takes its locks in one order (lease, checkpoint, head), so two puts never deadlock.
* ``executions()`` answers from the executions index (heads of executions that still have a
  checkpoint row), so deleting checkpoints never changes an execution's status.
* Lease times come from the database clock (``_NOW``), so workers on machines with skewed clocks agree.

Invariants: every listing orders by ``created_at DESC, seq DESC, checkpoint_id DESC``, as every
backend does; besides constants, only the schema name (checked to be a plain identifier) and a
checked integer ``LIMIT`` are formatted into SQL: values always go as parameters.
"""

from __future__ import annotations

from typing import Any, Sequence

from spark_ckpt.backends.rows import checked, checked_blob
from spark_ckpt.errors import ConfigError
from spark_ckpt.model import COMPLETED, UNFINISHED_STATUSES, CheckpointHeader

_HEADER_COLUMNS = "checkpoint_id, graph_id, execution_id, seq, created_at, status, kind, size"
_NOW = "extract(epoch from clock_timestamp())::float8"


def _header(row: Sequence[Any]) -> CheckpointHeader:
    """The header in the first eight columns of ``row``, as stored (unchecked: see ``_checked``)."""
    return CheckpointHeader(
        checkpoint_id=row[0], graph_id=row[1], execution_id=row[2], seq=row[3],
        created_at=row[4], status=row[5], kind=row[6], size=row[7],
    )


def _checked(row: Sequence[Any], where: str, *, head: bool = False) -> CheckpointHeader:
    """The header of ``row`` read back from ``where``, refused (``CorruptIndexError``) unless every
    field has its type and range; with ``head``, a row of the executions index (its tag in column 8,
    when selected)."""
    header = _header(row)
    if head and len(row) > 8 and row[8] is not None:
        tag = row[8]
        header = CheckpointHeader(*row[:8], tag=bytes(tag) if isinstance(tag, (bytearray, memoryview)) else tag)
    return checked(header, where, row="head" if head else "checkpoint")


def _checked_blob(value: Any, header: CheckpointHeader, where: str) -> bytes:
    """The ``bytea`` column of ``header``'s row, refused unless it holds bytes."""
    return checked_blob(bytes(value) if isinstance(value, (bytearray, memoryview)) else value, header, where)


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


class PostgresStatements:
    """Mixin of ``PostgresBackend``: the statements on its tables (``_t_ckpt``, ``_t_lease``, ``_t_exec``)."""

    _t_ckpt: str
    _t_lease: str
    _t_exec: str

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

    def _existing_sql(self) -> str:
        return (
            f"SELECT {_HEADER_COLUMNS}, blob FROM {self._t_ckpt} "
            "WHERE checkpoint_id = %s OR (execution_id = %s AND seq = %s) LIMIT 1"
        )

    def _head_sql(self) -> str:
        return f"SELECT {_HEADER_COLUMNS}, tag FROM {self._t_exec} WHERE execution_id = %s"

    def _get_sql(self) -> str:
        return f"SELECT {_HEADER_COLUMNS}, blob FROM {self._t_ckpt} WHERE checkpoint_id = %s"

    def _list_query(self, graph_id: str | None, execution_id: str | None, limit: int | None) -> tuple[str, list[Any]]:
        where, params = _where(graph_id, execution_id)
        return (
            f"SELECT {_HEADER_COLUMNS} FROM {self._t_ckpt}{where} ORDER BY created_at DESC, seq DESC, checkpoint_id DESC{_limit(limit)}",
            params,
        )

    def _tail_query(self, execution_id: str, count: int) -> tuple[str, list[Any]]:
        # the (execution_id, seq) unique index gives them in seq order, without a sort
        return (f"SELECT {_HEADER_COLUMNS} FROM {self._t_ckpt} WHERE execution_id = %s ORDER BY seq DESC LIMIT %s",
                [execution_id, count])

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

    def _delete_sql(self) -> str:
        return f"DELETE FROM {self._t_ckpt} WHERE checkpoint_id = ANY(%s)"

    def _lease_statements(self) -> tuple[str, str, str]:
        return (
            f"INSERT INTO {self._t_lease} (execution_id, owner, token, expires_at) VALUES (%s, '', 0, 0) "
            "ON CONFLICT DO NOTHING",
            f"SELECT owner, token, expires_at, {_NOW} FROM {self._t_lease} WHERE execution_id = %s FOR UPDATE",
            f"UPDATE {self._t_lease} SET owner = %s, token = %s, expires_at = %s WHERE execution_id = %s",
        )

    def _renew_sql(self) -> str:
        # only the presented token, while it is still the current one (``leases.extend_lease``)
        return (
            f"UPDATE {self._t_lease} SET expires_at = {_NOW} + %s "
            "WHERE execution_id = %s AND owner = %s AND token = %s RETURNING expires_at"
        )

    def _release_sql(self) -> str:
        # Keep the token so the next owner's token still grows; just expire the lease.
        return (
            f"UPDATE {self._t_lease} SET owner = '', expires_at = 0 "
            "WHERE execution_id = %s AND owner = %s AND token = %s"
        )
