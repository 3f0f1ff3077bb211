"""The file store's executions index: one head file per execution (``spark_ckpt.backends.heads``).

``<root>/heads/<execution_id>.head`` holds the JSON header (and the writer's tag) of the highest seq
stored for the execution. It is rewritten in place after the checkpoint is published, under the
execution's lock: one page-aligned write of ``HEAD_SIZE`` bytes (JSON padded with spaces), which a
killed process leaves old or new. It is not fsynced: a crash in between leaves it one write behind,
never ahead, and readers take the later of it and the highest stored file. (A temp file renamed over
it cost ~3x as much next to the checkpoint's own fsync: ext4 flushes a file renamed over another.) It
goes when its execution directory does.

``executions()`` reads one header per execution (the file with the highest ``seq``) and its head file.

Invariants: a head file is created whole (temp file, link) and then only overwritten in place with
exactly ``HEAD_SIZE`` bytes; it is written only after its checkpoint is published, so it is never
ahead of the store.
"""

from __future__ import annotations

import os

import attrs
import orjson

from ...errors import BackendError, CorruptIndexError
from ...model import CheckpointHeader
from .. import heads
from ..base import newest_first
from ..rows import checked
from .layout import _header_dict, escape_name

#: a head file is one page, rewritten in place
HEAD_SIZE = 4096


def _head_json(h: CheckpointHeader) -> bytes:
    return orjson.dumps({**_header_dict(h), "tag": h.tag.hex() if h.tag is not None else None})


def _head_from_json(data: bytes) -> CheckpointHeader:
    fields = orjson.loads(data)
    if not isinstance(fields, dict):
        raise TypeError(f"it holds a JSON {type(fields).__name__}, not an object")
    tag = fields.pop("tag", None)
    return CheckpointHeader(**fields, tag=bytes.fromhex(tag) if tag is not None else None)


class HeadFiles:
    """Mixin of ``FileBackend``: reading and writing head files, and the answers built on them.
    Needs the host's ``_heads`` directory, ``_write_atomic`` and the tree-walking helpers."""

    _heads: str

    # -- the executions index -------------------------------------------------------------------------
    @staticmethod
    def _head_name(execution_id: str) -> str:
        return escape_name(execution_id, "execution_id") + ".head"

    def _write_head(self, head: CheckpointHeader) -> None:
        data = _head_json(head)
        if len(data) > HEAD_SIZE:
            raise BackendError(f"the head of execution {head.execution_id} does not fit the file backend's index; use shorter ids")
        name = self._head_name(head.execution_id)
        try:
            fd = os.open(os.path.join(self._heads, name), os.O_WRONLY)
        except FileNotFoundError:
            # created whole (temp file, fsync, link), so no reader or crash ever sees it empty
            self._write_atomic(self._heads, name, data.ljust(HEAD_SIZE), replace=False)
            return
        try:
            os.pwrite(fd, data.ljust(HEAD_SIZE), 0)
        finally:
            os.close(fd)

    def _read_head(self, execution_id: str) -> CheckpointHeader | None:
        try:
            with open(os.path.join(self._heads, self._head_name(execution_id)), "rb") as f:
                data = f.read().strip()
            head = _head_from_json(data) if data else None  # (blank: never written through)
        except FileNotFoundError:
            return None
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise CorruptIndexError(
                f"head file of execution {execution_id} in {self.describe()} is damaged ({exc}); the executions "
                "index cannot be trusted for it: restore the store from a backup"
            ) from exc
        return checked(head, self.describe(), row="head") if head is not None else None

    def _newest_stored(self, directory: str) -> CheckpointHeader | None:
        # Highest seq first; fall back to the next one if it vanished (deleted meanwhile).
        for _seq, path in sorted(self._checkpoint_files(directory), reverse=True):
            header = self._header_at(path)
            if header is not None:
                return header
        return None

    def execution_head(self, execution_id: str) -> CheckpointHeader | None:
        head = self._read_head(execution_id)
        stored = None
        for directory in self._execution_dirs(None, execution_id):
            stored = heads.newest(stored, self._newest_stored(directory))
        return heads.newest(head, stored)

    def executions(
        self, *, graph_id: str | None = None, unfinished_only: bool = False, limit: int | None = None
    ) -> list[CheckpointHeader]:
        newest = []
        for directory in self._execution_dirs(graph_id, None):
            stored = self._newest_stored(directory)
            if stored is None:
                continue
            head = heads.newest(self._read_head(stored.execution_id), stored)
            if head.tag is not None:
                head = attrs.evolve(head, tag=None)
            if not unfinished_only or head.unfinished:
                newest.append(head)
        newest.sort(key=newest_first, reverse=True)
        return newest[:limit] if limit is not None else newest
