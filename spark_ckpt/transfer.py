"""Copy checkpoints from one backend to another (``spark-ckpt export --from URL --to URL``).

Checkpoints are copied byte for byte with their headers (a destination that keeps large values once
stores theirs apart: they read back as the same bytes), oldest first, so a destination that is
interrupted half-way holds a prefix of each execution's history and a second run finishes the job:
checkpoints already in the destination with identical header and bytes are skipped. Encrypted
checkpoints stay encrypted (the ciphertext is bound to graph, execution and seq, which do not
change), and each execution's newest one carries the executions index tag it had. Leases are not
copied: they belong to the workers of the source store.
"""

from __future__ import annotations

from typing import Callable

import attrs

from .backends.base import Backend
from .codec.envelope import unpack
from .engine.value_parts import blob_apart
from .errors import (
    CheckpointNotFoundError,
    CheckpointSwappedError,
    CorruptCheckpointError,
    DuplicateCheckpointError,
)
from .model import CheckpointHeader, StoredCheckpoint

#: ``progress(done, total)`` after each checkpoint (copied or skipped)
Progress = Callable[[int, int], None]


def _verify(stored: StoredCheckpoint, source: Backend) -> None:
    """The envelope checksum holds and the bytes belong where the header says."""
    header = stored.header
    try:
        envelope = unpack(stored.blob)
    except CorruptCheckpointError as exc:
        raise type(exc)(
            f"checkpoint {header.checkpoint_id} (execution {header.execution_id}, seq {header.seq}) in "
            f"{source.describe()} is damaged: {exc}. Nothing was written for it; delete it from the source "
            "or export with verify=False to copy it as it is"
        ) from exc
    ident = envelope.identity
    if (ident.graph_id, ident.execution_id, ident.seq) != (header.graph_id, header.execution_id, header.seq):
        raise CheckpointSwappedError(
            f"checkpoint {header.checkpoint_id} in {source.describe()} is stored as "
            f"({header.graph_id}, {header.execution_id}, {header.seq}) but its bytes were written for "
            f"({ident.graph_id}, {ident.execution_id}, {ident.seq}); it was not copied"
        )


def _already_there(destination: Backend, stored: StoredCheckpoint) -> bool:
    """True if the destination has this exact checkpoint; error if it has a different one by that id."""
    try:
        existing = destination.get(stored.header.checkpoint_id)
    except CheckpointNotFoundError:
        return False
    if existing.header == stored.header and existing.blob == stored.blob:
        return True
    raise DuplicateCheckpointError(
        f"{destination.describe()} already holds a different checkpoint with id "
        f"{stored.header.checkpoint_id}; it was not overwritten. Export into an empty store, or delete "
        "that checkpoint from the destination first"
    )


def _with_head_tag(
    source: Backend, heads: dict[str, CheckpointHeader | None], header: CheckpointHeader
) -> CheckpointHeader:
    """``header`` with the tag the source's executions index holds for it, when it is its execution's
    head, so the copy's index authenticates as the original's did."""
    if header.execution_id not in heads:
        heads[header.execution_id] = source.execution_head(header.execution_id)
    head = heads[header.execution_id]
    if head is not None and head.seq == header.seq and head.tag is not None:
        return attrs.evolve(header, tag=head.tag)
    return header


def export_checkpoints(
    src_backend: Backend,
    dst_backend: Backend,
    *,
    graph_id: str | None = None,
    verify: bool = True,
    progress: Progress | None = None,
) -> int:
    """Copy every checkpoint (of ``graph_id``, or all) from ``src_backend`` to ``dst_backend``.

    Returns how many were written; identical ones already in the destination are skipped.
    ``verify`` checks each checkpoint's envelope checksum and identity before writing it.
    Raises ``CorruptCheckpointError`` for a damaged source checkpoint and
    ``DuplicateCheckpointError`` when the destination holds a different checkpoint at the same id
    or ``(execution_id, seq)``; checkpoints copied before the error stay copied.
    """
    # a destination that keeps large values once gets them apart (``value_parts.blob_apart``)
    apart = getattr(dst_backend, "takes_values", None) if getattr(dst_backend, "takes_blob_parts", None) else None
    headers: list[CheckpointHeader] = src_backend.list(graph_id=graph_id)
    headers.sort(key=lambda h: (h.execution_id, h.seq))  # each history oldest first
    total, copied = len(headers), 0
    source_heads: dict[str, CheckpointHeader | None] = {}
    for done, header in enumerate(headers, start=1):
        try:
            stored = src_backend.get(header.checkpoint_id)
        except CheckpointNotFoundError:
            stored = None  # deleted (retention) since the listing: nothing to copy
        if stored is not None:
            if verify:
                _verify(stored, src_backend)
            if not _already_there(dst_backend, stored):
                try:
                    blob = stored.blob if apart is None else blob_apart(stored.blob, apart)
                    dst_backend.put(_with_head_tag(src_backend, source_heads, stored.header), blob)
                except DuplicateCheckpointError as exc:
                    raise DuplicateCheckpointError(
                        f"{dst_backend.describe()} already holds another checkpoint at seq {header.seq} of "
                        f"execution {header.execution_id}; {header.checkpoint_id} was not copied. Export "
                        "into an empty store or delete that execution from the destination first"
                    ) from exc
                copied += 1
        if progress is not None:
            progress(done, total)
    return copied
