"""File backend: one file per checkpoint under a directory; no server, no database.

URLs: ``file://./relative/dir``, ``file:///absolute/dir`` (``CheckpointConfig(backend="file", path=...)``
builds the same). Option ``fsync`` (default True): fsync each file and its directory so a committed
checkpoint survives power loss; ``fsync=False`` only survives a crash of the process.

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

Writes are atomic and never replace anything: the bytes go to a temp file in the target directory
(fsynced), then ``os.link`` publishes it under its ``<seq>.ckpt`` name, which fails if that slot is
taken, so two writers of one ``(execution_id, seq)`` cannot both win. The id symlink is created
first (``os.symlink`` is exclusive too); a crash in between leaves a dangling link, treated as absent.
Temp files (``.tmp-<host>-<pid>-<random>.part``, host as a crc32 tag) and any other foreign names are
ignored by every listing.

Cleanup: ``delete`` removes the stale temp files of every execution directory it touched, then that
directory if it is empty, then its graph directory if that is empty too (never ``graphs/`` or the
root; ``rmdir`` only ever removes an empty directory). ``cleanup()`` does the same for the whole store
(plus temp files in the root and ``leases/``); it is not run on open, which stays O(1). A temp file is
stale when its writer was a process of this host that no longer exists, or when it is older than
``STALE_TEMP_AGE_S`` (other hosts sharing the directory, names without a pid). A writer whose
execution directory was removed meanwhile (by a ``delete`` in another process) recreates it and tries
again, so pruning never makes a concurrent ``put`` fail.

The head file is rewritten in place after the checkpoint is published, under the execution's lock:
one page-aligned write of ``HEAD_SIZE`` bytes (JSON padded with spaces), which a killed process
leaves old or new. It is not fsynced: a crash in between leaves it one write behind, never ahead, and
readers take the later of it and the highest stored file. (A temp file renamed over it cost ~3x as
much next to the checkpoint's own fsync: ext4 flushes a file renamed over another.) It goes when its
execution directory does.

Listing reads directory entries and only the headers of the files it returns; ``executions()`` reads
one header per execution (the file with the highest ``seq``) and its head file.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Self

import attrs
import orjson

from ..errors import (
    BackendError,
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    DuplicateCheckpointError,
)
from ..model import CheckpointHeader, Lease, StoredCheckpoint
from . import heads
from .base import LocalBackend, newest_first
from .leases import HOST, check_fence, extend_lease, grant_lease, local_process_is_dead

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
#: a temp file untouched this long is a dead writer's, whoever wrote it (no write stalls an hour;
#: generous because mtimes on a shared file system come from another clock)
STALE_TEMP_AGE_S = 3600.0
_HOST_TAG = f"{zlib.crc32(HOST.encode()):08x}"
#: exactly what ``_write_temp`` creates (mkstemp adds 8 of [a-z0-9_]); older versions wrote no host/pid
_TEMP_NAME = re.compile(r"^\.tmp-(?:([0-9a-f]{8})-(\d+)-)?[a-z0-9_]{8}\.part$")
#: a put retries this often when a concurrent delete removed its directory in between
_PUT_ATTEMPTS = 3
#: a head file is one page, rewritten in place
HEAD_SIZE = 4096


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


def _head_json(h: CheckpointHeader) -> bytes:
    return orjson.dumps({**_header_dict(h), "tag": h.tag.hex() if h.tag is not None else None})


def _head_from_json(data: bytes) -> CheckpointHeader:
    fields = orjson.loads(data)
    tag = fields.pop("tag", None)
    return CheckpointHeader(**fields, tag=bytes.fromhex(tag) if tag is not None else None)


class FileBackend(LocalBackend):
    """Checkpoints as files in a directory tree (see the module docstring for the layout)."""

    name = "file"
    url_schemes = ("file",)
    durable = True

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        self.fsync = bool(fsync)
        self._graphs = os.path.join(self.root, "graphs")
        self._ids = os.path.join(self.root, "ids")
        self._leases = os.path.join(self.root, "leases")
        self._heads = os.path.join(self.root, "heads")
        self._known_dirs: set[str] = set()
        self._dirs_lock = threading.Lock()
        self._open_store()

    @classmethod
    def from_url(cls, url: str, **options: object) -> FileBackend:
        location = url.split("://", 1)[1] if "://" in url else url
        if not location:
            raise ConfigError(f"file backend URL {url!r} has no directory; use file://./dir or file:///abs/dir")
        unknown = set(options) - {"fsync"}
        if unknown:
            raise ConfigError(f"unknown file backend option(s) {', '.join(sorted(unknown))}; known: fsync")
        return cls(location, **options)  # type: ignore[arg-type]

    def describe(self) -> str:
        return f"file://{self.root}"

    # -- directory setup -----------------------------------------------------------------------------
    def _open_store(self) -> None:
        marker = os.path.join(self.root, MARKER)
        try:
            if os.path.isdir(self.root) and not os.path.exists(marker) and any(
                not name.startswith(".") for name in os.listdir(self.root)
            ):
                raise BackendError(
                    f"{self.root!r} is a non-empty directory that is not a spark-ckpt file store; it was left "
                    "untouched. Point the file backend at an empty or new directory"
                )
            self._ensure_dir(self.root)
            if not os.path.exists(marker):
                self._write_atomic(self.root, MARKER, f"spark-ckpt file store, layout {LAYOUT_VERSION}\n".encode(), replace=True)
            for directory in (self._graphs, self._ids, self._leases, self._heads):
                self._ensure_dir(directory)
        except OSError as exc:
            raise BackendError(
                f"cannot use {self.root!r} as a checkpoint directory ({exc.strerror or exc}); "
                "choose a writable directory (its parent must exist or be creatable)"
            ) from exc
        with open(marker, "rb") as f:
            text = f.read().decode(errors="replace")
        if not text.rstrip().endswith(f"layout {LAYOUT_VERSION}"):
            raise BackendError(
                f"file store {self.root!r} uses an unsupported layout ({text.strip()!r}); "
                "upgrade spark-ckpt to read it"
            )

    def _ensure_dir(self, path: str) -> None:
        if path in self._known_dirs:
            return
        if not os.path.isdir(path):
            parent = os.path.dirname(path)
            if parent != path and not os.path.isdir(parent):
                self._ensure_dir(parent)
            try:
                os.mkdir(path)
            except FileExistsError:
                if not os.path.isdir(path):
                    raise
            else:
                self._fsync_dir(parent)
        with self._dirs_lock:
            self._known_dirs.add(path)

    def _fsync_dir(self, path: str) -> None:
        if not self.fsync:
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return  # emptied and removed by a concurrent delete(): nothing left in it to make durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_temp(self, directory: str, data: bytes) -> str:
        # Host and pid in the name let cleanup() see at once that the writer was killed.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".tmp-{_HOST_TAG}-{os.getpid()}-", suffix=".part")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def _write_atomic(self, directory: str, name: str, data: bytes, *, replace: bool) -> None:
        tmp = self._write_temp(directory, data)
        try:
            if replace:
                os.replace(tmp, os.path.join(directory, name))
            else:
                os.link(tmp, os.path.join(directory, name))
        finally:
            if not replace:
                os.unlink(tmp)
        self._fsync_dir(directory)

    # -- paths ----------------------------------------------------------------------------------------
    def _execution_dir(self, graph_id: str, execution_id: str) -> str:
        return os.path.join(
            self._graphs, escape_name(graph_id, "graph_id"), escape_name(execution_id, "execution_id")
        )

    def _id_link(self, checkpoint_id: str) -> str:
        return os.path.join(self._ids, escape_name(checkpoint_id, "checkpoint_id"))

    # -- checkpoints ----------------------------------------------------------------------------------
    def put(self, header: CheckpointHeader, blob: bytes, *, lease: Lease | None = None) -> None:
        h = header
        if not isinstance(h.seq, int) or h.seq < 0:
            raise BackendError(f"checkpoint seq must be a non-negative integer, got {h.seq!r}")
        directory = self._execution_dir(h.graph_id, h.execution_id)
        link = self._id_link(h.checkpoint_id)
        name = f"{h.seq:012d}{SUFFIX}"
        meta = orjson.dumps(_header_dict(h))
        data = b"".join((MAGIC, len(meta).to_bytes(_LENGTH_BYTES, "big"), meta, blob))
        try:
            for attempt in range(_PUT_ATTEMPTS):
                try:
                    self._ensure_dir(directory)
                    self._put_once(directory, name, link, data, h, lease)
                    return
                except FileNotFoundError:
                    # A directory we created or saw earlier was removed (delete() of the last checkpoint
                    # of this execution or graph, in another process, or by hand) before our temp file
                    # was in it: nothing was published, so recreate the directories and try again.
                    if attempt == _PUT_ATTEMPTS - 1:
                        raise
                    with self._dirs_lock:
                        self._known_dirs.clear()
                    self._ensure_dir(self._ids)
                    self._ensure_dir(self._leases)
                    self._ensure_dir(self._heads)
        except OSError as exc:
            raise BackendError(
                f"file backend could not store checkpoint {h.checkpoint_id!r} under {directory!r} "
                f"({exc.strerror or exc}); check the directory is writable and the disk is not full"
            ) from exc

    def _put_once(self, directory: str, name: str, link: str, data: bytes, h: CheckpointHeader, lease: Lease | None) -> None:
        with self._execution_lock(h.execution_id):
            if lease is not None:
                check_fence(self._read_lease(h.execution_id), lease, h.execution_id)
            advances = heads.advance(self._read_head(h.execution_id), h, leased=lease is not None)
            self._publish(directory, name, link, data, h)
            if advances:
                self._write_head(h)

    def _publish(self, directory: str, name: str, link: str, data: bytes, h: CheckpointHeader) -> None:
        # ids/ and graphs/ are siblings: the link target is relative, so the store can be moved.
        target = os.path.join("..", "graphs", *directory.rsplit(os.sep, 2)[1:], name)
        if os.path.exists(os.path.join(directory, name)):
            # refused before the id is claimed: a claimed id would point at another checkpoint's file
            # for a moment (get and delete check the header's id, so that moment is harmless too)
            raise self._duplicate_seq(h)
        tmp = self._write_temp(directory, data)
        try:
            self._claim_id(link, target, h)
            try:
                os.link(tmp, os.path.join(directory, name))
            except FileExistsError:
                self._unlink_quietly(link)
                raise self._duplicate_seq(h) from None
        finally:
            self._unlink_quietly(tmp)  # gone only if cleanup() judged it stale: never a reason to fail
        self._fsync_dir(directory)
        self._fsync_dir(self._ids)

    def _duplicate_seq(self, h: CheckpointHeader) -> DuplicateCheckpointError:
        return DuplicateCheckpointError(
            f"checkpoint seq {h.seq} of execution {h.execution_id} already exists in {self.describe()}; not overwritten"
        )

    @staticmethod
    def _unlink_quietly(path: str) -> bool:
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False

    def _claim_id(self, link: str, target: str, h: CheckpointHeader) -> None:
        try:
            os.symlink(target, link)
            return
        except FileExistsError:
            pass
        if os.path.exists(link) and not self._points_elsewhere(link, h.checkpoint_id):  # a live checkpoint owns this id
            raise DuplicateCheckpointError(
                f"checkpoint id {h.checkpoint_id!r} is already stored in {self.describe()}; not overwritten"
            )
        # A dangling link left by a crash between the two steps of an earlier put, or one a refused
        # duplicate left pointing at another checkpoint's file: take it over.
        tmp_link = f"{link}.tmp-{os.getpid()}-{threading.get_ident()}"
        os.symlink(target, tmp_link)
        os.replace(tmp_link, link)

    def _points_elsewhere(self, link: str, checkpoint_id: str) -> bool:
        """True when ``link`` leads to a readable checkpoint file of another id: a link that a put
        refused as a duplicate left behind (see ``_publish``). It does not own that file."""
        try:
            return self._read_file(link, header_only=True).header.checkpoint_id != checkpoint_id
        except (OSError, CorruptCheckpointError):
            return False

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
        return StoredCheckpoint(header, blob)

    def get(self, checkpoint_id: str) -> StoredCheckpoint:
        try:
            link = self._id_link(checkpoint_id)
        except BackendError:
            link = None
        if link is not None:
            try:
                stored = self._read_file(link, header_only=False)
                # a link left by a put refused as a duplicate points at another checkpoint's file
                if stored.header.checkpoint_id == checkpoint_id:
                    return stored
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise BackendError(
                    f"file backend could not read checkpoint {checkpoint_id!r} in {self.root!r} ({exc.strerror})"
                ) from exc
        raise CheckpointNotFoundError(f"no checkpoint with id {checkpoint_id!r} in {self.describe()}")

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
            return _head_from_json(data) if data else None  # (blank: never written through)
        except FileNotFoundError:
            return None
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise BackendError(
                f"head file of execution {execution_id} in {self.describe()} is damaged ({exc}); the executions "
                "index cannot be trusted for it: restore the store from a backup"
            ) from exc

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

    # -- listing ------------------------------------------------------------------------------------
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

    def list(
        self, *, graph_id: str | None = None, execution_id: str | None = None, limit: int | None = None
    ) -> list[CheckpointHeader]:
        headers = []
        for directory in self._execution_dirs(graph_id, execution_id):
            for _seq, path in self._checkpoint_files(directory):
                header = self._header_at(path)
                if header is not None:
                    headers.append(header)
        headers.sort(key=newest_first, reverse=True)
        return headers[:limit] if limit is not None else headers

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

    def delete(self, checkpoint_ids: Iterable[str]) -> int:
        deleted = 0
        touched: set[str] = set()
        for checkpoint_id in dict.fromkeys(checkpoint_ids):
            try:
                link = self._id_link(checkpoint_id)
            except BackendError:
                continue
            try:
                target = os.path.join(self._ids, os.readlink(link))
            except (FileNotFoundError, OSError):
                continue
            if not self._points_elsewhere(link, checkpoint_id):  # never delete another checkpoint's file
                touched.add(os.path.dirname(os.path.normpath(target)))
                deleted += self._unlink_quietly(target)
            self._unlink_quietly(link)
        for directory in touched:
            self._tidy_execution_dir(directory, STALE_TEMP_AGE_S)
        return deleted

    def cleanup(self, *, max_temp_age_s: float = STALE_TEMP_AGE_S) -> int:
        """Remove stale temp files everywhere in the store, and execution (and graph) directories
        left empty; returns how many temp files were removed. Safe while other processes write."""
        removed = self._remove_stale_temps(self.root, max_temp_age_s)
        removed += self._remove_stale_temps(self._leases, max_temp_age_s)
        removed += self._remove_stale_temps(self._heads, max_temp_age_s)
        for directory in list(self._execution_dirs(None, None)):
            removed += self._tidy_execution_dir(directory, max_temp_age_s)
        return removed

    def _tidy_execution_dir(self, directory: str, max_temp_age_s: float) -> int:
        """Remove the stale temp files of one execution directory, then the directory and its graph
        directory if they are left empty; returns how many temp files were removed."""
        graph_dir = os.path.dirname(directory)
        if os.path.dirname(graph_dir) != self._graphs:
            return 0  # a link retargeted by hand: only ever tidy <root>/graphs/<graph>/<execution>
        removed = self._remove_stale_temps(directory, max_temp_age_s)
        for path in (directory, graph_dir):
            with self._dirs_lock:
                self._known_dirs.discard(path)
            try:
                # Fails unless empty, atomically: a checkpoint or a live writer's temp file keeps it. A
                # writer that cached the directory and finds it gone recreates it (see put).
                os.rmdir(path)
            except OSError:
                break
            if path == directory:  # no checkpoint of the execution is left: its head goes too
                name = os.path.basename(directory) + ".head"
                self._unlink_quietly(os.path.join(self._heads, name))
        return removed

    @staticmethod
    def _remove_stale_temps(directory: str, max_age_s: float) -> int:
        removed = 0
        now = time.time()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    match = _TEMP_NAME.match(entry.name)
                    if not match or not entry.is_file(follow_symlinks=False):
                        continue
                    host_tag, pid = match.groups()
                    try:
                        age = now - entry.stat(follow_symlinks=False).st_mtime
                    except FileNotFoundError:
                        continue
                    # A writer of another host, or one whose pid is alive (maybe reused), only ages out.
                    dead = host_tag == _HOST_TAG and local_process_is_dead(int(pid))
                    if dead or age > max_age_s:
                        removed += FileBackend._unlink_quietly(entry.path)
        except FileNotFoundError:
            pass
        return removed

    def replace(self, header: CheckpointHeader, blob: bytes) -> None:
        """Swap an existing checkpoint file for one with new bytes (key rotation): temp file + os.replace."""
        h = header
        path = os.path.join(self._execution_dir(h.graph_id, h.execution_id), f"{h.seq:012d}{SUFFIX}")
        link = self._id_link(h.checkpoint_id)
        missing = CheckpointNotFoundError(
            f"no checkpoint {h.checkpoint_id!r} (seq {h.seq} of execution {h.execution_id}) in {self.describe()} to replace"
        )
        try:
            if not os.path.exists(path) or os.path.realpath(link) != os.path.realpath(path):
                raise missing
            meta = orjson.dumps(_header_dict(h))
            data = b"".join((MAGIC, len(meta).to_bytes(_LENGTH_BYTES, "big"), meta, blob))
            tmp = self._write_temp(os.path.dirname(path), data)
            os.replace(tmp, path)
            self._fsync_dir(os.path.dirname(path))
            if not os.path.lexists(link):  # deleted meanwhile: do not resurrect it
                os.unlink(path)
                raise missing
            if h.tag is not None:  # key rotation re-tags the index head
                with self._execution_lock(h.execution_id):
                    head = self._read_head(h.execution_id)
                    if head is not None and head.seq == h.seq:
                        self._write_head(attrs.evolve(head, tag=h.tag))
        except OSError as exc:
            raise BackendError(
                f"file backend could not replace checkpoint {h.checkpoint_id!r} ({exc.strerror or exc})"
            ) from exc

    # -- leases -------------------------------------------------------------------------------------
    def _lease_path(self, execution_id: str) -> str:
        return os.path.join(self._leases, escape_name(execution_id, "execution_id") + ".lease")

    def _execution_lock(self, execution_id: str) -> _FileLock:
        return _FileLock(os.path.join(self._leases, escape_name(execution_id, "execution_id") + ".lock"))

    def _read_lease(self, execution_id: str) -> Lease | None:
        try:
            with open(self._lease_path(execution_id), "rb") as f:
                data = orjson.loads(f.read())
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError as exc:
            raise BackendError(
                f"lease file {self._lease_path(execution_id)!r} is damaged ({exc}); delete it to let a worker "
                "take the execution over"
            ) from exc
        return Lease(execution_id, data["owner"], data["token"], data["expires_at"])

    def _write_lease(self, lease: Lease) -> None:
        data = orjson.dumps({"owner": lease.owner, "token": lease.token, "expires_at": lease.expires_at})
        self._write_atomic(self._leases, os.path.basename(self._lease_path(lease.execution_id)), data, replace=True)

    def acquire_lease(self, execution_id: str, owner: str, ttl_s: float) -> Lease:
        try:
            with self._execution_lock(execution_id):
                lease = grant_lease(self._read_lease(execution_id), execution_id, owner, ttl_s, time.time())
                self._write_lease(lease)
                return lease
        except OSError as exc:
            raise BackendError(
                f"file backend could not write the lease of execution {execution_id} under {self._leases!r} "
                f"({exc.strerror or exc}); check the directory is writable"
            ) from exc

    def renew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        try:
            with self._execution_lock(lease.execution_id):
                renewed = extend_lease(self._read_lease(lease.execution_id), lease, ttl_s, time.time())
                self._write_lease(renewed)
                return renewed
        except OSError as exc:
            raise BackendError(
                f"file backend could not renew the lease of execution {lease.execution_id} ({exc.strerror or exc})"
            ) from exc

    def release_lease(self, lease: Lease) -> None:
        try:
            with self._execution_lock(lease.execution_id):
                current = self._read_lease(lease.execution_id)
                if current is not None and current.token == lease.token and current.owner == lease.owner:
                    # Keep the token so the next owner's token still grows; just expire the lease.
                    self._write_lease(Lease(lease.execution_id, "", lease.token, 0.0))
        except OSError as exc:
            raise BackendError(
                f"file backend could not release the lease of execution {lease.execution_id} ({exc.strerror or exc})"
            ) from exc


class _FileLock:
    """An exclusive ``flock`` on a lock file; separate opens conflict, so threads exclude each other too."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1

    def __enter__(self) -> Self:
        import fcntl

        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX)
                    break
                except InterruptedError:
                    continue
        except BaseException:
            os.close(self._fd)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.close(self._fd)  # closing the descriptor drops the lock
