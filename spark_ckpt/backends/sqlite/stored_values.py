"""Large values a SQLite store keeps once (``engine.value_parts``): written with the checkpoint that
first holds them, put back into its bytes on ``get``, dropped with the last checkpoint holding them.

A checkpoint row holding values keeps its bytes without them, so its ``size`` (that of the whole)
exceeds the length of its ``blob``: only such a row is looked up in ``value_refs`` (one row per value,
at its offset in the whole). Everything happens inside the caller's transaction: a value is never
without the checkpoint that references it, nor a reference without its value.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Iterable

from ...errors import BackendError, ChecksumMismatchError
from ...model import CheckpointHeader, ValuePart


def store(conn: sqlite3.Connection, sql: Any, values_table: str, position: int, parts: Iterable[Any],
          streamed_from: int) -> None:
    """The values among ``parts`` (``ValuePart``) not stored yet, and a reference to each from the row
    at ``position``. A value of ``streamed_from`` bytes or more is written into its row's pages."""
    offset = 0
    for part in parts:
        if type(part) is ValuePart:
            if conn.execute(sql.HAS_VALUE, (part.digest,)).fetchone() is None:
                data = part.data()
                if len(data) != part.size:  # (a source that changed after it was measured)
                    raise BackendError(f"value {part.digest[:16]} changed while it was stored; nothing was written")
                if len(data) >= streamed_from:
                    rowid = conn.execute(sql.INSERT_VALUE_ROOM, (part.digest, part.size, part.size)).lastrowid
                    with conn.blobopen(values_table, "data", rowid) as room:
                        room.write(data)
                else:
                    conn.execute(sql.INSERT_VALUE, (part.digest, part.size, data))
            conn.execute(sql.INSERT_REF, (position, offset, part.digest))
        offset += len(part)


def holds_values(blob: Any, size: int) -> bool:
    """Whether a row's stored bytes leave values out (see the module docstring)."""
    return type(blob) is bytes and len(blob) < size


def whole(stored: bytes, refs: list[tuple[int, str, Any]], header: CheckpointHeader, where: str) -> bytes:
    """The checkpoint's bytes with its values put back; ``ChecksumMismatchError`` when a value is
    missing or its row is not one this module wrote. A value's bytes are checked by the envelope's
    checksum, which covers the whole (``codec.envelope``), on every read, as inline bytes are."""
    pieces: list[bytes] = []
    at = logical = 0
    for offset, digest, data in refs:
        if type(data) is not bytes or offset < logical:
            state = "missing" if data is None else "damaged"
            raise ChecksumMismatchError(
                f"checkpoint {header.checkpoint_id!r} in {where}: the large value it holds ({digest[:16]}...) is "
                f"{state}; the store was changed outside spark-ckpt. Use an earlier checkpoint, or "
                "`spark-ckpt verify` to find intact ones"
            )
        take = offset - logical
        pieces.append(stored[at : at + take])
        pieces.append(data)
        at, logical = at + take, offset + len(data)
    pieces.append(stored[at:])
    blob = b"".join(pieces)
    if len(blob) != header.size:
        raise ChecksumMismatchError(
            f"checkpoint {header.checkpoint_id!r} in {where}: its stored bytes and large values make "
            f"{len(blob)} bytes, not {header.size}; the store was changed outside spark-ckpt. Use an earlier "
            "checkpoint, or `spark-ckpt verify` to find intact ones"
        )
    return blob


def drop_references(conn: sqlite3.Connection, sql: Any, ids: list[tuple[str]],
                    canonical: list[tuple[str, int, str]]) -> None:
    """Before the rows of these checkpoints are deleted or replaced: their references, then every
    value no reference is left to. Costs one query when the store holds no values."""
    if conn.execute(sql.ANY_REF).fetchone() is None:
        return
    before = conn.total_changes
    conn.executemany(sql.DROP_REFS_NAMED, ids)
    conn.executemany(sql.DROP_REFS_CANONICAL, canonical)
    if conn.total_changes != before:
        conn.execute(sql.DROP_UNREFERENCED_VALUES)
