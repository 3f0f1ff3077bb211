"""The SQL the SQLite backend runs on its hot path, and the rows it binds and reads.

Each statement is built once per store's table set (``Statements``), so the connection's statement
cache compiles it once. A checkpoint is found by its position (``schema``: ``number * SEQ_SPAN + seq +
SEQ_OFFSET``), a named id through the partial index, which only a query spelling ``_CANONICAL`` exactly as the index does
can use. A put under a lease is one ``INSERT ... SELECT ... WHERE EXISTS (lease)``: the fencing check
and the write cannot be separated. The head (``executions.head_*``) only moves forward, and under a
lease never into a completed execution (``spark_ckpt.backends.heads.advance`` in SQL).
"""

from __future__ import annotations

import functools
from typing import Mapping

from ...model import CheckpointHeader
from .schema import quoted, _CANONICAL, _CHECKPOINT_HEADER_COLUMNS, _HEADER_COLUMNS, SEQ_OFFSET, SEQ_SPAN

# the rows of execution ``e`` (an alias of the executions table)
_ROWS_OF_E = f"c.rowid BETWEEN e.number * {SEQ_SPAN} AND e.number * {SEQ_SPAN} + {SEQ_SPAN - 1}"
_NAMED_ID = f"checkpoint_id = ? AND NOT {_CANONICAL}"
# newest first; equal times are ordered by seq, then by id, so every backend lists ties alike
_NEWEST_FIRST = " ORDER BY created_at DESC, seq DESC, checkpoint_id DESC LIMIT ?"
_HEAD_COLUMNS = "head_id, graph_id, execution_id, head_seq, head_created_at, head_status, head_kind, head_size"


class Statements:
    """The statements on one store's tables (``schema.sqlite_tables``: the default store's are
    ``checkpoints``, ``executions`` and ``leases``); built once per table set (``statements_for``)."""

    def __init__(self, tables: Mapping[str, str]) -> None:
        checkpoints, executions, leases = tables["checkpoints"], tables["executions"], tables["leases"]
        self.GET_NUMBER = f"SELECT number FROM {executions} WHERE execution_id = ?"
        self.POSITION = f"({self.GET_NUMBER}) * {SEQ_SPAN} + ? + {SEQ_OFFSET}"  # parameters: execution_id, seq
        self.INSERT = (
            f"INSERT INTO {checkpoints} (rowid, checkpoint_id, graph_id, execution_id, seq, created_at, status, "
            "kind, size, blob) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        # One statement, so one implicit transaction: the row is written only if the presented lease is
        # still the execution's current one. Half the cost of BEGIN IMMEDIATE + SELECT + INSERT + COMMIT.
        self.INSERT_FENCED = (
            f"INSERT INTO {checkpoints} (rowid, checkpoint_id, graph_id, execution_id, seq, created_at, status, "
            "kind, size, blob) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS "
            f"(SELECT 1 FROM {leases} WHERE execution_id = ? AND token = ? AND owner = ?)"
        )
        # the same with room for the blob, written into its pages afterwards (``streamed``)
        self.INSERT_ROOM = self.INSERT.replace("?)", "zeroblob(?))")
        self.HOLDS_LEASE = f"SELECT 1 FROM {leases} WHERE execution_id = ? AND token = ? AND owner = ?"
        self.RECORD_EXECUTION = f"INSERT OR IGNORE INTO {executions} (execution_id, graph_id) VALUES (?, ?)"
        self.GET_CANONICAL = (
            f"SELECT {_HEADER_COLUMNS}, blob, rowid FROM {checkpoints} WHERE rowid = {self.POSITION} AND checkpoint_id = ?"
        )
        self.GET_NAMED = f"SELECT {_HEADER_COLUMNS}, blob, rowid FROM {checkpoints} WHERE {_NAMED_ID}"
        # large values stored once (``schema`` m007): a row's references, in the order of their offsets
        values, refs = quoted(tables["values"]), quoted(tables["value_refs"])
        self.VALUES_OF = (
            f"SELECT r.offset, r.digest, r.size, v.data FROM {refs} r LEFT JOIN {values} v ON v.digest = r.digest "
            "WHERE r.position = ? ORDER BY r.offset"
        )
        self.VALUE_OF = f"SELECT size, data FROM {values} WHERE digest = ?"
        self.VALUE_SIZE = f"SELECT size, length(data) FROM {values} WHERE digest = ?"
        self.DROP_VALUE = f"DELETE FROM {values} WHERE digest = ?"
        self.DROP_REFS_AT = f"DELETE FROM {refs} WHERE position = ?"
        self.DROP_DANGLING_REFS = (
            f"DELETE FROM {refs} WHERE NOT EXISTS (SELECT 1 FROM {checkpoints} c WHERE c.rowid = {refs}.position)"
        )
        self.INSERT_VALUE = f"INSERT INTO {values} (digest, size, data) VALUES (?, ?, ?)"
        self.INSERT_VALUE_ROOM = f"INSERT INTO {values} (digest, size, data) VALUES (?, ?, zeroblob(?))"
        self.INSERT_REF = f"INSERT INTO {refs} (position, offset, digest, size) VALUES (?, ?, ?, ?)"
        self.ANY_REF = f"SELECT 1 FROM {refs} LIMIT 1"
        self.DROP_REFS_NAMED = f"DELETE FROM {refs} WHERE position IN (SELECT rowid FROM {checkpoints} WHERE {_NAMED_ID})"
        self.DROP_REFS_CANONICAL = (
            f"DELETE FROM {refs} WHERE position IN "
            f"(SELECT rowid FROM {checkpoints} WHERE rowid = {self.POSITION} AND checkpoint_id = ?)"
        )
        self.DROP_UNREFERENCED_VALUES = (
            f"DELETE FROM {values} WHERE NOT EXISTS (SELECT 1 FROM {refs} r WHERE r.digest = {values}.digest)"
        )
        self.GET_LEASE = f"SELECT execution_id, owner, token, expires_at FROM {leases} WHERE execution_id = ?"
        self.NEW_LEASE = f"INSERT INTO {leases} (execution_id, owner, token, expires_at) VALUES (?, ?, ?, ?)"
        self.SET_LEASE = (
            f"{self.NEW_LEASE} "
            "ON CONFLICT(execution_id) DO UPDATE SET owner = excluded.owner, token = excluded.token, "
            "expires_at = excluded.expires_at"
        )
        # The executions index: each execution's head, advanced in the put's transaction (``heads.advance``).
        self.GET_HEAD = (
            f"SELECT {_HEAD_COLUMNS}, head_tag FROM {executions} WHERE execution_id = ? AND head_seq IS NOT NULL"
        )
        self.ADVANCE_HEAD = (
            f"UPDATE {executions} SET head_seq = ?, head_id = ?, head_created_at = ?, head_status = ?, "
            "head_kind = ?, head_size = ?, head_tag = ? WHERE number = ? AND (head_seq IS NULL OR head_seq < ?)"
        )
        # under a lease: also only into an execution that has not completed
        self.ADVANCE_HEAD_LEASED = f"{self.ADVANCE_HEAD} AND (head_status IS NULL OR head_status != 'completed')"
        self.LIST_ALL = f"SELECT {_HEADER_COLUMNS} FROM {checkpoints}"
        # each execution's rows are one rowid range
        self.LIST_OF_EXECUTIONS = (
            f"SELECT {_CHECKPOINT_HEADER_COLUMNS} FROM {executions} e JOIN {checkpoints} c ON {_ROWS_OF_E}"
        )
        # the heads of the executions that still hold a checkpoint (one rowid seek each)
        self.HEADS = f"SELECT {_HEAD_COLUMNS} FROM {executions} e"
        self.STILL_STORED = f"EXISTS (SELECT 1 FROM {checkpoints} c WHERE {_ROWS_OF_E})"
        self.DELETE_NAMED = f"DELETE FROM {checkpoints} WHERE {_NAMED_ID}"
        self.DELETE_CANONICAL = f"DELETE FROM {checkpoints} WHERE rowid = {self.POSITION} AND checkpoint_id = ?"
        self.POSITION_OF = f"SELECT rowid FROM {checkpoints} WHERE rowid = {self.POSITION} AND checkpoint_id = ?"
        self.REPLACE = f"UPDATE {checkpoints} SET blob = ?, size = ? WHERE rowid = {self.POSITION} AND checkpoint_id = ?"
        self.RETAG_HEAD = f"UPDATE {executions} SET head_tag = ? WHERE execution_id = ? AND head_seq = ?"


@functools.lru_cache(maxsize=None)
def _statements(tables: tuple[tuple[str, str], ...]) -> Statements:
    return Statements(dict(tables))


def statements_for(tables: Mapping[str, str]) -> Statements:
    """The (shared) statements of the store with these tables."""
    return _statements(tuple(sorted(tables.items())))


def _row(number: int, h: CheckpointHeader, blob: bytes) -> tuple:
    """``_INSERT``'s parameters, for a checkpoint of the execution numbered ``number``."""
    position = number * SEQ_SPAN + h.seq + SEQ_OFFSET
    return position, h.checkpoint_id, h.graph_id, h.execution_id, h.seq, h.created_at, h.status, h.kind, h.size, blob


def _header(row: tuple) -> CheckpointHeader:
    return CheckpointHeader(*row)


def _head_params(number: int, h: CheckpointHeader) -> tuple:
    """``_ADVANCE_HEAD``'s parameters."""
    return h.seq, h.checkpoint_id, h.created_at, h.status, h.kind, h.size, h.tag, number, h.seq
