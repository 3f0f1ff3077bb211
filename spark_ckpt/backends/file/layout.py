"""Where the file store keeps everything, the ``.ckpt`` file format, and walking the tree.

Layout (every id is escaped: characters outside ``[A-Za-z0-9_-]`` become ``%XX``, so ``/`` and
``..`` can never form a path)::

    <root>/spark-ckpt-store                     marker + layout version; a non-empty directory
                                                without it is refused, never written into
    <root>/graphs/<graph_id>/<execution_id>/<seq:012d>.ckpt
    <root>/ids/<checkpoint_id>                  symlink to ../graphs/.../<seq>.ckpt (lookup by id)
    <root>/leases/<execution_id>.lease          JSON {owner, token, expires_at}
    <root>/leases/<execution_id>.lock           flock()ed around lease changes and puts
    <root>/heads/<execution_id>.head            the executions index: JSON header of the highest seq
                                                stored (``spark_ckpt.backends.heads``)

A ``.ckpt`` file is ``MAGIC`` + a 4-byte big-endian header length + the header as JSON + the blob.
The backend never decodes the blob: a damaged blob is returned as stored, for the codec to reject.

Listing reads directory entries and only the headers of the files it returns. Temp files and any
other foreign names are ignored by every listing; a file whose own header is damaged is left out.

Invariants: ``escape_name`` is reversible and never yields ``.``, ``..`` or a ``/``; a name never
exceeds ``MAX_NAME_BYTES``; changing any of this is a new ``LAYOUT_VERSION``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import orjson

from ...errors import BackendError, CorruptCheckpointError
from ...model import CheckpointHeader, StoredCheckpoint
from ..rows import checked

MAGIC = b"SCKPTF1\n"
LAYOUT_VERSION = "1"
MARKER = "spark-ckpt-store"
SUFFIX = ".ckpt"
_LENGTH_BYTES = 4
_PREFIX = len(MAGIC) + _LENGTH_BYTES
_CHECKPOINT_NAME = re.compile(r"^(-?\d+)\.ckpt$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
#: keep escaped names well under the usual 255-byte file name limit
MAX_NAME_BYTES = 200


def escape_name(value: str, what: str) -> str:
    """``value`` as one safe path component (reversible; never ``.``/``..``, never contains ``/``)."""
    if not isinstance(value, str) or not value:
        raise BackendError(f"{what} must be a non-empty string to be stored by the file backend, got {value!r}")
    escaped = _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), value)
    if len(escaped) > MAX_NAME_BYTES:
        raise BackendError(
            f"{what} {value[:40]!r}... is too long for a file name once escaped ({len(escaped)} > "
            f"{MAX_NAME_BYTES} bytes); use shorter ids or the sqlite backend"
        )
    return escaped


def _header_dict(h: CheckpointHeader) -> dict:
    return {
        "checkpoint_id": h.checkpoint_id, "graph_id": h.graph_id, "execution_id": h.execution_id,
        "seq": h.seq, "created_at": h.created_at, "status": h.status, "kind": h.kind, "size": h.size,
    }


class StoreLayout:
    """Mixin of ``FileBackend``: its paths, and reading checkpoint files and directories. Needs the
    host's ``_graphs`` and ``_ids`` directories."""

    _graphs: str
    _ids: str

    def _execution_dir(self, graph_id: str, execution_id: str) -> str:
        return os.path.join(
            self._graphs, escape_name(graph_id, "graph_id"), escape_name(execution_id, "execution_id")
        )

    def _id_link(self, checkpoint_id: str) -> str:
        return os.path.join(self._ids, escape_name(checkpoint_id, "checkpoint_id"))

    def _read_file(self, path: str, *, header_only: bool) -> StoredCheckpoint:
        with open(path, "rb") as f:
            prefix = f.read(_PREFIX)
            meta_len = int.from_bytes(prefix[len(MAGIC):], "big") if len(prefix) == _PREFIX else -1
            meta = f.read(meta_len) if meta_len >= 0 and prefix.startswith(MAGIC) else b""
            if len(meta) != meta_len:
                raise CorruptCheckpointError(
                    f"checkpoint file {os.path.realpath(path)!r} has a missing or truncated header; it is damaged. "
                    "Delete it (spark-ckpt prune) or restore it from a backup"
                )
            blob = b"" if header_only else f.read()
        try:
            header = CheckpointHeader(**orjson.loads(meta))
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise CorruptCheckpointError(f"checkpoint file {os.path.realpath(path)!r} has an unreadable header ({exc}); it is damaged") from exc
        return StoredCheckpoint(checked(header, f"checkpoint file {os.path.realpath(path)!r}"), blob)

    @staticmethod
    def _subdirs(path: str) -> Iterator[str]:
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                        yield entry.path
        except FileNotFoundError:
            return

    @staticmethod
    def _checkpoint_files(directory: str) -> list[tuple[int, str]]:
        """(seq, path) of the checkpoint files in one execution directory; foreign names ignored."""
        found = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    match = _CHECKPOINT_NAME.match(entry.name)
                    if match:
                        found.append((int(match.group(1)), entry.path))
        except FileNotFoundError:
            pass
        return found

    def _execution_dirs(self, graph_id: str | None, execution_id: str | None) -> Iterator[str]:
        try:
            graph_name = escape_name(graph_id, "graph_id") if graph_id is not None else None
            execution_name = escape_name(execution_id, "execution_id") if execution_id is not None else None
        except BackendError:  # no such id can have been stored
            return
        graph_dirs = (
            [os.path.join(self._graphs, graph_name)] if graph_name is not None else list(self._subdirs(self._graphs))
        )
        for graph_dir in graph_dirs:
            if execution_name is not None:
                candidate = os.path.join(graph_dir, execution_name)
                if os.path.isdir(candidate):
                    yield candidate
            else:
                yield from self._subdirs(graph_dir)

    def _header_at(self, path: str) -> CheckpointHeader | None:
        """The stored header; None if the file vanished meanwhile or its own header is damaged.

        Damaged files (only possible through outside interference, since writes are atomic) are
        left out of listings, so recovery falls back to the checkpoint before; ``get`` of their id
        raises ``CorruptCheckpointError`` and ``delete`` removes them.
        """
        try:
            return self._read_file(path, header_only=True).header
        except (FileNotFoundError, CorruptCheckpointError):
            return None
        except OSError as exc:
            raise BackendError(f"file backend could not read {path!r} ({exc.strerror})") from exc
