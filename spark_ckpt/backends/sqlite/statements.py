"""The SQL the SQLite backend runs on its hot path, and the rows it binds and reads.

Each statement is a module constant, so the connection's statement cache compiles it once. A
checkpoint is found by its position (``schema``: ``number * SEQ_SPAN + seq + SEQ_OFFSET``), a named
id through the partial index, which only a query spelling ``_CANONICAL`` exactly as the index does
can use. A put under a lease is one ``INSERT ... SELECT ... WHERE EXISTS (lease)``: the fencing check
and the write cannot be separated. The head (``executions.head_*``) only moves forward, and under a
lease never into a completed execution (``spark_ckpt.backends.heads.advance`` in SQL).
"""

from __future__ import annotations

from ...model import CheckpointHeader
from .schema import _CANONICAL, _HEADER_COLUMNS, SEQ_OFFSET, SEQ_SPAN

_GET_NUMBER = "SELECT number FROM executions WHERE execution_id = ?"
_NUMBER_OF = f"({_GET_NUMBER})"
_POSITION = f"{_NUMBER_OF} * {SEQ_SPAN} + ? + {SEQ_OFFSET}"  # parameters: execution_id, seq
# the rows of execution ``e`` (an alias of executions)
_ROWS_OF_E = f"c.rowid BETWEEN e.number * {SEQ_SPAN} AND e.number * {SEQ_SPAN} + {SEQ_SPAN - 1}"
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


def _row(number: int, h: CheckpointHeader, blob: bytes) -> tuple:
    """``_INSERT``'s parameters, for a checkpoint of the execution numbered ``number``."""
    position = number * SEQ_SPAN + h.seq + SEQ_OFFSET
    return position, h.checkpoint_id, h.graph_id, h.execution_id, h.seq, h.created_at, h.status, h.kind, h.size, blob


def _header(row: tuple) -> CheckpointHeader:
    return CheckpointHeader(*row)


def _head_params(number: int, h: CheckpointHeader) -> tuple:
    """``_ADVANCE_HEAD``'s parameters."""
    return h.seq, h.checkpoint_id, h.created_at, h.status, h.kind, h.size, h.tag, number, h.seq
