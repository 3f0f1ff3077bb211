"""Atomic writes into the file store, and removing what interrupted writers and deletes leave.

Writes are atomic: the bytes go to a temp file in the target directory (fsynced when ``fsync`` is
on), then are published under their name, by ``os.link`` where nothing may be replaced (it fails if
the name is taken) or ``os.replace`` where a whole new version replaces the old one; the directory
is fsynced after. Temp files (``.tmp-<host>-<pid>-<random>.part``, host as a crc32 tag) are ignored
by every listing.

Cleanup: ``delete`` removes the stale temp files of every execution directory it touched, then that
directory if it is empty, then its graph directory if that is empty too (never ``graphs/`` or the
root; ``rmdir`` only ever removes an empty directory). ``cleanup()`` does the same for the whole store
(plus temp files in the root, ``leases/`` and ``heads/``); it is not run on open, which stays O(1). A
temp file is stale when its writer was a process of this host that no longer exists, or when it is
older than ``STALE_TEMP_AGE_S`` (other hosts sharing the directory, names without a pid).

Invariants: a reader never sees a partly written file under its final name; cleanup never removes
a live writer's temp file of this host, nor a directory that is not empty.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
import zlib

from ..leases import HOST, local_process_is_dead

#: a temp file untouched this long is a dead writer's, whoever wrote it (no write stalls an hour;
#: generous because mtimes on a shared file system come from another clock)
STALE_TEMP_AGE_S = 3600.0
_HOST_TAG = f"{zlib.crc32(HOST.encode()):08x}"
#: exactly what ``_write_temp`` creates (mkstemp adds 8 of [a-z0-9_]); older versions wrote no host/pid
_TEMP_NAME = re.compile(r"^\.tmp-(?:([0-9a-f]{8})-(\d+)-)?[a-z0-9_]{8}\.part$")


class AtomicWrites:
    """Mixin of ``FileBackend``: creating directories, atomic writes, and tidying up after them.
    Needs the host's ``fsync`` setting, its ``_known_dirs`` cache (guarded by ``_dirs_lock``), its
    ``_graphs``, ``_leases`` and ``_heads`` directories, and ``_execution_dirs``."""

    root: str
    fsync: bool
    _known_dirs: set[str]
    _dirs_lock: threading.Lock
    _graphs: str
    _leases: str
    _heads: str

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

    @staticmethod
    def _unlink_quietly(path: str) -> bool:
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False

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
                        removed += AtomicWrites._unlink_quietly(entry.path)
        except FileNotFoundError:
            pass
        return removed
