"""Large values a SQLite store keeps once (``engine.value_parts``): written with the checkpoint that
first holds them, put back into its bytes on ``get``, dropped with the last checkpoint holding them.

A checkpoint row holding values keeps its bytes without them, so its ``size`` (that of the whole)
exceeds the length of its ``blob``: only such a row is looked up in ``value_refs`` (one row per value:
its offset in the whole, its digest and size). Everything happens inside the caller's transaction: a
value is never without the checkpoint that references it, nor a reference without its value.

A value already stored is checked (size and SHA-256) the first time a backend object reuses it (its
size every time), and written again if it was damaged: one damaged row would otherwise spoil every checkpoint written on it
from then on. A value missing or damaged on read is put back as zeros of its size, so the envelope's
checksum, which covers the whole, refuses the checkpoint when it is decoded, as it refuses damaged
inline bytes; the bytes as stored can still be copied (``export_checkpoints(verify=False)``).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from typing import Any, Iterable

from ...errors import BackendError, ChecksumMismatchError
from ...model import CheckpointHeader, ValuePart

log = logging.getLogger("spark_ckpt.sqlite")


def store(conn: sqlite3.Connection, sql: Any, values_table: str, position: int, parts: Iterable[Any],
          streamed_from: int, checked: set[str], found_intact: set[str]) -> None:
    """The values among ``parts`` (``ValuePart``) not stored yet, and a reference to each from the row
    at ``position``. A value of ``streamed_from`` bytes or more is written into its row's pages.
    ``checked``: digests this backend object found intact already (see the module docstring); the
    ones found or made intact here go into ``found_intact``, for the caller to add once committed."""
    # (a reference left at this position can only be stale: an earlier release deleted its row)
    stale = conn.execute(sql.DROP_REFS_AT, (position,)).rowcount
    offset = 0
    for part in parts:
        if type(part) is ValuePart:
            # present with its size (always: retention may have dropped it since), and its bytes
            # intact (the first time this object reuses it)
            if part.digest in checked:
                found = conn.execute(sql.VALUE_SIZE, (part.digest,)).fetchone()
                intact = found is not None and found[0] == found[1] == part.size
            else:
                found = conn.execute(sql.VALUE_OF, (part.digest,)).fetchone()
                intact = found is not None and _intact(found, part)
            if not intact:
                if found is not None:
                    log.warning("stored value %s was damaged; written again", part.digest[:16])
                    conn.execute(sql.DROP_VALUE, (part.digest,))
                _write(conn, sql, values_table, part, streamed_from)
            found_intact.add(part.digest)
            conn.execute(sql.INSERT_REF, (position, offset, part.digest, part.size))
        offset += len(part)
    if stale:
        collect(conn, sql)


def _intact(found: tuple[int, Any], part: ValuePart) -> bool:
    size, data = found
    return size == part.size and type(data) is bytes and len(data) == size \
        and hashlib.sha256(data).hexdigest() == part.digest


def _write(conn: sqlite3.Connection, sql: Any, values_table: str, part: ValuePart, streamed_from: int) -> None:
    data = part.data()
    if len(data) != part.size:  # (a source that changed after it was measured)
        raise BackendError(f"value {part.digest[:16]} changed while it was stored; nothing was written")
    if len(data) >= streamed_from:
        rowid = conn.execute(sql.INSERT_VALUE_ROOM, (part.digest, part.size, part.size)).lastrowid
        with conn.blobopen(values_table, "data", rowid) as room:
            room.write(data)
    else:
        conn.execute(sql.INSERT_VALUE, (part.digest, part.size, data))


def holds_values(blob: Any, size: int) -> bool:
    """Whether a row's stored bytes leave values out (see the module docstring)."""
    return type(blob) is bytes and len(blob) < size


def whole(stored: bytes, refs: list[tuple[int, str, int, Any]], header: CheckpointHeader, where: str) -> bytes:
    """The checkpoint's bytes with its values put back (a missing or damaged one as zeros: the
    envelope's checksum then refuses it); ``ChecksumMismatchError`` when the references themselves do
    not fit the row."""
    pieces: list[bytes] = []
    at = logical = 0
    for offset, digest, size, data in refs:
        if offset < logical:
            break  # (checked below)
        if type(data) is not bytes or len(data) != size:
            log.warning("checkpoint %s in %s: the large value it holds (%s...) is %s", header.checkpoint_id,
                        where, digest[:16], "missing" if data is None else "damaged")
            data = bytes(size)
        take = offset - logical
        pieces.append(stored[at : at + take])
        pieces.append(data)
        at, logical = at + take, offset + size
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
                    canonical: list[tuple[str, int, str]], *, collect: bool = True) -> bool:
    """Before the rows of these checkpoints are deleted or replaced: their references, then (with
    ``collect``; else the caller calls ``collect``) every value no reference is left to. Whether any
    reference went. Costs one query when the store holds no values."""
    if conn.execute(sql.ANY_REF).fetchone() is None:
        return False
    before = conn.total_changes
    conn.executemany(sql.DROP_REFS_NAMED, ids)
    conn.executemany(sql.DROP_REFS_CANONICAL, canonical)
    dropped = conn.total_changes != before
    if dropped and collect:
        conn.execute(sql.DROP_UNREFERENCED_VALUES)
    return dropped


def collect(conn: sqlite3.Connection, sql: Any) -> None:
    """Every value no reference is left to."""
    conn.execute(sql.DROP_UNREFERENCED_VALUES)


def sweep(conn: sqlite3.Connection, sql: Any) -> None:
    """References whose row is gone (an earlier release deleted it), and the values left without one."""
    conn.execute(sql.DROP_DANGLING_REFS)
    collect(conn, sql)
