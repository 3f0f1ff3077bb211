"""``FileBackend``: the ``Backend`` contract over a directory tree, one file per checkpoint.

A put never replaces anything: under the execution's lock it checks the lease (fencing) and the
head's rules, writes a temp file, claims the id (``os.symlink`` is exclusive), then publishes the
file with ``os.link`` under its ``<seq>.ckpt`` name, which fails if that slot is taken, so two
writers of one ``(execution_id, seq)`` cannot both win; then it advances the head file. A crash
between the two steps leaves a dangling id link, treated as absent and taken over by the next put
of that id. A writer whose execution directory was removed meanwhile (by a ``delete`` in another
process) recreates it and tries again, so pruning never makes a concurrent ``put`` fail.

The mixins hold the other ideas: ``layout`` (paths, file format, walking the tree), ``writes``
(atomic writes and cleanup), ``head_files`` (the executions index) and ``lease_files`` (leases).

Invariants: an id link leads to a file whose header carries that id, or it is ignored (get and
delete check); a file is published only after its lease and head checks, under the execution's lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

import attrs
import orjson

from ...errors import (
    BackendError,
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    DuplicateCheckpointError,
)
from ...masking import mask_url
from ...model import CheckpointHeader, Lease, StoredCheckpoint
from .. import heads
from ..base import LocalBackend, newest_first
from ..codec_choices import compression_choice, serializer_choice
from ..leases import check_fence
from ..rows import storable
from .head_files import HeadFiles
from .layout import _LENGTH_BYTES, LAYOUT_VERSION, MAGIC, MARKER, SUFFIX, StoreLayout, _header_dict, escape_name
from .lease_files import LeaseFiles
from .writes import STALE_TEMP_AGE_S, AtomicWrites

#: a put retries this often when a concurrent delete removed its directory in between
_PUT_ATTEMPTS = 3


class FileBackend(HeadFiles, LeaseFiles, AtomicWrites, StoreLayout, LocalBackend):
    """Checkpoints as files in a directory tree (see ``spark_ckpt.backends.file.layout`` for the layout)."""

    name = "file"
    url_schemes = ("file",)
    durable = True

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        format: str | None = None,
        compression: bool | str | None = None,
        fsync: bool = True,
        read_only: bool = False,
    ) -> None:
        """``path`` (or ``root``): the store's directory. ``format`` ("json" or "pickle") and ``compression``
        (True = "gzip", "zstd") are the guide's codec choices: a config given this object applies each one
        it leaves at its default (``spark_ckpt.backends.codec_choices``; "pickle" needs the config's
        ``pickle_signing_key``). ``read_only``: read an existing store without creating, tidying or
        writing anything (every write raises ``BackendError``)."""
        if root is not None and path is not None and os.fspath(root) != os.fspath(path):
            raise ConfigError("FileBackend takes path= or root=, not two different directories")
        location = path if path is not None else root
        if location is None:
            raise ConfigError("FileBackend needs a directory: FileBackend(path='./checkpoints')")
        if not isinstance(location, (str, os.PathLike)) or not os.fspath(location):
            raise ConfigError(f"FileBackend path must be a directory path, got {location!r}")
        self.serializer_choice = serializer_choice(format, "FileBackend")
        self.compression_choice = compression_choice(compression, "FileBackend")
        self.root = os.path.abspath(os.path.expanduser(os.fspath(location)))
        self.fsync = bool(fsync)
        self.read_only = bool(read_only)
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
            raise ConfigError(f"file backend URL {mask_url(url)!r} has no directory; use file://./dir or file:///abs/dir")
        unknown = set(options) - {"fsync", "format", "compression", "read_only"}
        if unknown:
            raise ConfigError(
                f"unknown file backend option(s) {', '.join(sorted(unknown))}; known: fsync, format, compression, "
                "read_only"
            )
        return cls(location, **options)  # type: ignore[arg-type]

    def describe(self) -> str:
        return f"file://{self.root}"

    # -- directory setup -----------------------------------------------------------------------------
    def _open_store(self) -> None:
        marker = os.path.join(self.root, MARKER)
        if self.read_only and not os.path.exists(marker):
            raise BackendError(
                f"{self.root!r} is not a spark-ckpt file store (no {MARKER} file); opened read-only, nothing was created"
            )
        try:
            if not self.read_only:  # (read-only: the store as it is; missing subdirectories read as empty)
                self._create_layout(marker)
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

    def _create_layout(self, marker: str) -> None:
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

    def _refuse_if_read_only(self, what: str) -> None:
        if self.read_only:
            raise BackendError(f"file store {self.root!r} was opened read-only; it cannot {what}")

    # -- what a read-only store refuses ----------------------------------------------------------------
    def acquire_lease(self, execution_id: str, owner: str, ttl_s: float) -> Lease:
        self._refuse_if_read_only("take a lease")
        return super().acquire_lease(execution_id, owner, ttl_s)

    def renew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        self._refuse_if_read_only("renew a lease")
        return super().renew_lease(lease, ttl_s)

    def release_lease(self, lease: Lease) -> None:
        self._refuse_if_read_only("release a lease")
        super().release_lease(lease)

    def cleanup(self, *, max_temp_age_s: float = STALE_TEMP_AGE_S) -> int:
        self._refuse_if_read_only("clean up temporary files")
        return super().cleanup(max_temp_age_s=max_temp_age_s)

    # -- checkpoints ----------------------------------------------------------------------------------
    def check_header(self, header: CheckpointHeader) -> None:
        """Refuses (``BackendError``) ids that cannot be file names here once escaped (too long)."""
        escape_name(header.graph_id, "graph_id")
        escape_name(header.execution_id, "execution_id")
        escape_name(header.checkpoint_id, "checkpoint_id")

    def put(self, header: CheckpointHeader, blob: bytes, *, lease: Lease | None = None) -> None:
        self._refuse_if_read_only("store a checkpoint")
        h = header
        storable(h, self.describe())
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

    def delete(self, checkpoint_ids: Iterable[str]) -> int:
        self._refuse_if_read_only("delete checkpoints")
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

    def replace(self, header: CheckpointHeader, blob: bytes) -> None:
        """Swap an existing checkpoint file for one with new bytes (key rotation): temp file + os.replace."""
        self._refuse_if_read_only("replace a checkpoint")
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
