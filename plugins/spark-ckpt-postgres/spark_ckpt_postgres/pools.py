"""Connections of the PostgreSQL backend: psycopg 3 pools, and running a call with one retry.

* Sync calls use a ``ConnectionPool``; the ``a*`` twins use an ``AsyncConnectionPool`` of the running
  event loop. Nothing is serialized behind a backend-wide lock: concurrency is the pool's size.
* A dropped connection or a restarted server: the pool checks connections before handing them
  out, and each call is retried once on ``OperationalError`` (``retries``). A call must therefore be
  safe to run again: one transaction, told by its ``attempt`` number that it is a retry.

Invariants: an async pool is used only on the loop that opened it (one per loop, held weakly) and
is closed before that loop ends, even when nobody calls ``aclose`` (``_close_when_cancelled``); a
backend still open when the interpreter exits is closed then (``close_at_exit``);
messages never show the DSN's password (``_masked``).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import weakref
from typing import Any, Callable

from spark_ckpt.errors import BackendError
from spark_ckpt.masking import mask_text, mask_url


#: the names of the async pools start so, and so do the names of their tasks (and of their guards)
ASYNC_POOL_PREFIX = "spark-ckpt-async-"


class PooledConnections:
    """Mixin of ``PostgresBackend``: ``_run``/``_arun`` a call on a pooled connection, and closing the
    pools. Needs the host's ``_pool``, ``_apools``, ``_apool_guards``, ``_async_conns``, ``_psycopg``,
    ``_conninfo``, ``_retries``, pool settings and ``schema``."""

    _pool: Any
    _apools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[Any]]
    _async_conns: weakref.WeakSet[Any]
    _apool_guards: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]]
    _psycopg: Any
    _conninfo: str
    _retries: int
    _min_size: int
    _max_size: int
    _timeout: float
    schema: str

    @staticmethod
    def _masked(conninfo: str) -> str:
        """The DSN without its password or secret parameters, for messages."""
        return mask_url(conninfo)

    # -- running statements with one retry -------------------------------------------------------
    def _unreachable(self, exc: Exception) -> BackendError:
        # the driver's message may quote parts of the DSN: its secrets are masked there too
        return BackendError(
            f"PostgreSQL at {self._masked(self._conninfo)} failed: {mask_text(str(exc), self._conninfo)}. Check "
            "that the server is running and reachable; nothing was half-written (each call is one transaction)"
        )

    def _run(self, fn: Callable[[Any, int], Any]) -> Any:
        attempt = 0
        while True:
            try:
                with self._pool.connection() as conn:
                    return fn(conn, attempt)
            except self._psycopg.OperationalError as exc:
                if attempt >= self._retries:
                    raise self._unreachable(exc) from exc
                attempt += 1
                # Drop the connections that died with the server before trying again.
                self._pool.check()

    async def _arun(self, fn: Callable[[Any, int], Any]) -> Any:
        attempt = 0
        while True:
            try:
                pool = await self._apool()
                async with pool.connection() as conn:
                    return await fn(conn, attempt)
            except self._psycopg.OperationalError as exc:
                if attempt >= self._retries:
                    raise self._unreachable(exc) from exc
                attempt += 1
                await (await self._apool()).check()

    async def _apool(self) -> Any:
        loop = asyncio.get_running_loop()
        task = self._apools.get(loop)
        if task is None:
            task = loop.create_task(self._open_apool())
            self._apools[loop] = task
        try:
            return await asyncio.shield(task)
        except BaseException:
            if task.done() and task.exception() is not None:
                self._apools.pop(loop, None)
            raise

    async def _open_apool(self) -> Any:
        from psycopg_pool import AsyncConnectionPool

        async def track(conn: Any) -> None:
            self._async_conns.add(conn)

        pool = AsyncConnectionPool(
            self._conninfo,
            kwargs={"autocommit": True},
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=self._timeout,
            check=AsyncConnectionPool.check_connection,
            configure=track,
            name=f"{ASYNC_POOL_PREFIX}{self.schema}",
            open=False,
        )
        await pool.open(wait=self._min_size > 0, timeout=self._timeout)
        loop = asyncio.get_running_loop()

        def forget() -> None:  # the next call on this loop opens a new pool
            if self._apool_guards.get(loop) is guard:
                self._apools.pop(loop, None)
                del self._apool_guards[loop]

        guard = loop.create_task(_close_when_cancelled(pool, forget, self._timeout), name=f"{pool.name}-guard")
        self._apool_guards[loop] = guard
        return pool

    # -- lifecycle -------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the async pool of the running loop (call before the loop ends) and the sync pool."""
        loop = asyncio.get_running_loop()
        task = self._apools.pop(loop, None)
        if task is not None and task.done() and task.exception() is None:
            try:
                await task.result().close()
            except asyncio.CancelledError:
                # the pool's workers were cancelled earlier (a task cancelling every task): closing
                # reports their end as its own; only a cancellation of this call goes on up
                if asyncio.current_task().cancelling():
                    raise
        guard = self._apool_guards.pop(loop, None)
        if guard is not None:
            guard.cancel()
        self.close()

    def close(self) -> None:
        _open_backends.discard(self)
        self._pool.close()
        # Async pools whose loop is gone cannot be awaited any more: close their sockets directly.
        for conn in list(self._async_conns):
            if not conn.closed:
                conn.pgconn.finish()
        self._apools.clear()


async def _close_when_cancelled(pool: Any, forget: Callable[[], None], wait_s: float) -> None:
    """Wait until cancelled, then close ``pool`` once the other tasks cancelled with it have ended.

    ``asyncio.run`` cancels every task when its main coroutine ends. psycopg_pool's maintenance
    workers survive that cancellation when it lands while they connect (they catch
    ``CancelledError`` to keep the pool consistent) and then wait on their queue for ever, so
    ``asyncio.run`` never returned: a run that ended with an error (a lost lease) and never closed
    its backend hung its process. Closing the pool sends the workers their stop message. The tasks
    cancelled at the same time may still need the pool while they end (a run storing its failure
    record, releasing its lease), so they are given ``wait_s`` to end first. Cancelling every task
    while the loop goes on (a shutdown handler) closes this pool too: the next call opens a new one.
    """
    try:
        await asyncio.Event().wait()
    finally:
        if not pool.closed:  # (``aclose`` closed it and cancelled this guard: nothing left to do)
            try:
                # not the pools' own tasks (theirs or another backend's): they end when their pool closes
                others = [task for task in asyncio.all_tasks() if not task.get_name().startswith(ASYNC_POOL_PREFIX)]
                if others:
                    await asyncio.wait(others, timeout=wait_s)
            finally:
                forget()
                await pool.close(timeout=1.0)


_open_backends: "weakref.WeakSet[PooledConnections]" = weakref.WeakSet()


def close_at_exit(backend: PooledConnections) -> None:
    """Close ``backend`` when the interpreter exits if nobody closed it before.

    A backend kept alive by an exception's traceback (a run that ended with an error, then
    ``asyncio.run`` raised) is otherwise collected during finalization, where the pool's worker
    threads can no longer run: psycopg_pool then waits 5 s per thread and the process hangs.
    ``atexit`` runs while they still can.
    """
    _open_backends.add(backend)


@atexit.register
def _close_open_backends() -> None:
    for backend in list(_open_backends):
        backend.close()


# a forked child shares its parent's connections: closing them at its exit would end the parent's
# sessions, so the child starts with none registered
os.register_at_fork(after_in_child=_open_backends.clear)


def _not_a_cancelled_connect(record: logging.LogRecord) -> bool:
    """psycopg_pool logs "error connecting" with an empty reason for a connection attempt that was
    cancelled because the loop ended; that is not an error, so the warning is dropped."""
    return not any(isinstance(arg, asyncio.CancelledError) for arg in (record.args or ()))


logging.getLogger("psycopg.pool").addFilter(_not_a_cancelled_connect)
