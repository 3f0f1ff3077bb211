"""Leases of the file store: one JSON file per execution, changed under that execution's lock file.

``<root>/leases/<execution_id>.lease`` holds ``{owner, token, expires_at}``, replaced atomically
(temp file + ``os.replace``); ``<root>/leases/<execution_id>.lock`` is ``flock()``ed around every
lease change and every put of the execution, so a put's fencing check and its publication are one
step for every other process and thread. The rules themselves are ``spark_ckpt.backends.leases``.

Invariants: a lease file is only read and written while its lock is held; releasing keeps the token
(the next owner's token still grows).
"""

from __future__ import annotations

import os
import time
from typing import Self

import orjson

from ...errors import BackendError
from ...model import Lease
from ..leases import extend_lease, grant_lease
from .layout import escape_name


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


class LeaseFiles:
    """Mixin of ``FileBackend``: its leases and per-execution locks. Needs the host's ``_leases``
    directory and ``_write_atomic``."""

    _leases: str

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
