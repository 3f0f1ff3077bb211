"""Re-encrypt stored checkpoints under the active key (key rotation, plaintext migration).

Rotation: add the new key, make it active, run ``rekey_backend``; once it returns without error
every checkpoint is readable with the active key alone and the old key can be dropped.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs

from ..errors import BackendError, CheckpointNotFoundError, RekeyError, SparkCkptError
from . import Codec
from .envelope import Identity

Progress = Callable[[int, int], None]


def rekey_backend(
    backend: Any, codec: Codec, *, graph_id: str | None = None, progress: Progress | None = None
) -> int:
    """Re-encrypt every stored checkpoint (optionally of one graph) under ``codec``'s active key.

    Each checkpoint's serialized bytes are decrypted with whatever configured key wrote them (plaintext
    ones only if ``codec.allow_plaintext``), encrypted again for the same identity (no value is rebuilt
    on the way), verified to read back to the same bytes, and only then swapped in with ``backend.replace(header, blob)``, which each backend
    makes atomic. Checkpoints already under the active key are skipped, so running it again is
    safe. ``progress(done, total)`` is called after each checkpoint. Returns how many were
    re-encrypted. A checkpoint that cannot be read (wrong key, damaged) is left untouched and
    reported in a ``RekeyError`` raised at the end, after all the others were processed.
    """
    if not codec.encrypts:
        raise RekeyError(
            "no active encryption key is configured, so there is nothing to re-encrypt under; "
            "set encryption_keys/active_key or SPARK_CKPT_KEYS/SPARK_CKPT_ACTIVE_KEY"
        )
    headers = backend.list(graph_id=graph_id)
    total = len(headers)
    rekeyed = 0
    failures: list[tuple[str, SparkCkptError]] = []
    for done, header in enumerate(headers, 1):
        try:
            if _rekey_one(backend, codec, header):
                rekeyed += 1
        except CheckpointNotFoundError:
            pass  # pruned while we were working: nothing left to re-encrypt
        except NotImplementedError:
            raise BackendError(
                f"backend {getattr(backend, 'name', type(backend).__name__)!r} cannot replace stored "
                "checkpoints, which rekey needs; nothing was changed. Upgrade the backend (plugin), or "
                "export the checkpoints and import them into a backend that can"
            ) from None
        except SparkCkptError as exc:
            failures.append((header.checkpoint_id, exc))
        if progress is not None:
            progress(done, total)
    _retag_heads(backend, codec, {h.execution_id for h in headers})
    scrub = getattr(backend, "scrub", None)  # (a Backend has it; duck-typed stores may not)
    if scrub is not None:
        scrub()  # the replaced (plaintext, or old-key) bytes are gone from the store's own copies too
    if failures:
        listed = "; ".join(f"{cid}: {exc}" for cid, exc in failures[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        error = RekeyError(
            f"{len(failures)} of {total} checkpoints could not be re-encrypted and were left as they were "
            f"({rekeyed} were re-encrypted); keep the old keys configured until these are fixed or deleted: "
            f"{listed}{more}"
        )
        error.rekeyed = rekeyed  # type: ignore[attr-defined]
        error.failures = failures  # type: ignore[attr-defined]
        raise error
    return rekeyed


def _rekey_one(backend: Any, codec: Codec, header: Any) -> bool:
    stored = backend.get(header.checkpoint_id)
    if codec.is_current(stored.blob):
        return False
    identity = Identity(header.graph_id, header.execution_id, header.seq)
    # the serialized bytes as they are: no value is rebuilt (or changed) on the way
    serialized, payload = codec.decode_payload(stored.blob, expected=identity)
    if codec.serialized_is_current(serialized):
        blob = codec.encode_payload(serialized, payload, identity)
        same = codec.decode_payload(blob, expected=identity)[1] == payload
    else:  # a serializer format written before derived keys (a pickle signed the old way): sign it again
        data, _ = codec.decode_data(stored.blob, expected=identity)
        blob = codec.encode_data(data, identity)
        same = codec.decode_data(blob, expected=identity)[0] == data
    # never swap in bytes we cannot read back to the same content
    if not same:
        raise RekeyError(f"re-encoded checkpoint {header.checkpoint_id} does not read back identically; left as it was")
    backend.replace(attrs.evolve(stored.header, size=len(blob), tag=codec.index_tags.tag(stored.header)), blob)
    return True


def _retag_heads(backend: Any, codec: Codec, execution_ids: set[str]) -> None:
    """Tag each execution's index head under the active key (``index_tags``): a head whose record
    was already current, or was written before encryption or tagged the pre-``kdf`` way, gets its tag
    by a replace of the same bytes."""
    for execution_id in sorted(execution_ids):
        head = backend.execution_head(execution_id)
        if head is None or codec.index_tags.is_current(head):
            continue
        try:
            stored = backend.get(head.checkpoint_id)
        except CheckpointNotFoundError:
            continue  # its newest record is gone: ``spark-ckpt verify`` reports it
        backend.replace(attrs.evolve(stored.header, tag=codec.index_tags.tag(stored.header)), stored.blob)
