"""Leases of the PostgreSQL backend: one row per execution, changed under a row lock.

Taking a lease creates the row if needed, locks it ``FOR UPDATE`` and applies the shared rules
(``spark_ckpt.backends.leases``) with the database clock's ``now``, so workers on machines with
skewed clocks agree. ``start_execution`` takes the lease and stores the first checkpoint in one
transaction. Renewing and releasing are single conditional ``UPDATE`` statements.

Invariants: a lease changes only inside a transaction holding its row lock, or in one statement
conditional on the presented owner and token; releasing keeps the token (the next owner's grows).
"""

from __future__ import annotations

from typing import Any, Sequence

from spark_ckpt.backends.leases import extend_lease, grant_lease
from spark_ckpt.model import CheckpointHeader, Lease


class PostgresLeases:
    """Mixin of ``PostgresBackend``: acquire, renew and release leases, and ``start_execution``. Needs
    the host's ``_run``/``_arun``, the lease statements and ``_put``/``_aput``."""

    @staticmethod
    def _grant(execution_id: str, owner: str, ttl_s: float, row: Sequence[Any]) -> Lease:
        current = Lease(execution_id, row[0], int(row[1]), float(row[2])) if row[1] else None
        return grant_lease(current, execution_id, owner, ttl_s, float(row[3]))

    def _take_lease(self, conn: Any, execution_id: str, owner: str, ttl_s: float) -> Lease:
        """Grant (or renew) the lease inside the caller's transaction; the row is locked FOR UPDATE."""
        create, lock, update = self._lease_statements()
        conn.execute(create, [execution_id])
        lease = self._grant(execution_id, owner, ttl_s, conn.execute(lock, [execution_id]).fetchone())
        conn.execute(update, [lease.owner, lease.token, lease.expires_at, execution_id])
        return lease

    async def _atake_lease(self, conn: Any, execution_id: str, owner: str, ttl_s: float) -> Lease:
        create, lock, update = self._lease_statements()
        await conn.execute(create, [execution_id])
        row = await (await conn.execute(lock, [execution_id])).fetchone()
        lease = self._grant(execution_id, owner, ttl_s, row)
        await conn.execute(update, [lease.owner, lease.token, lease.expires_at, execution_id])
        return lease

    def acquire_lease(self, execution_id: str, owner: str, ttl_s: float) -> Lease:
        def work(conn: Any, _: int) -> Lease:
            with conn.transaction():
                return self._take_lease(conn, execution_id, owner, ttl_s)

        return self._run(work)

    async def aacquire_lease(self, execution_id: str, owner: str, ttl_s: float) -> Lease:
        async def work(conn: Any, _: int) -> Lease:
            async with conn.transaction():
                return await self._atake_lease(conn, execution_id, owner, ttl_s)

        return await self._arun(work)

    def start_execution(self, header: CheckpointHeader, blob: bytes, owner: str, ttl_s: float) -> Lease:
        """Lease and first checkpoint in one transaction: one round trip and commit instead of two."""
        self.check_header(header)  # before anything is written, the lease included

        def work(conn: Any, attempt: int) -> Lease:
            with conn.transaction():
                lease = self._take_lease(conn, header.execution_id, owner, ttl_s)
                self._put(conn, header, blob, lease, attempt)
                return lease

        return self._run(work)

    async def astart_execution(self, header: CheckpointHeader, blob: bytes, owner: str, ttl_s: float) -> Lease:
        self.check_header(header)

        async def work(conn: Any, attempt: int) -> Lease:
            async with conn.transaction():
                lease = await self._atake_lease(conn, header.execution_id, owner, ttl_s)
                await self._aput(conn, header, blob, lease, attempt)
                return lease

        return await self._arun(work)

    @staticmethod
    def _renewed(lease: Lease, row: Sequence[Any] | None) -> Lease:
        if row is None:  # no current lease of this owner and token: the shared rule words the refusal
            extend_lease(None, lease, 0.0, 0.0)
        return Lease(lease.execution_id, lease.owner, lease.token, float(row[0]))

    def renew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        params = [float(ttl_s), lease.execution_id, lease.owner, lease.token]
        return self._renewed(lease, self._run(lambda conn, _: conn.execute(self._renew_sql(), params).fetchone()))

    async def arenew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        params = [float(ttl_s), lease.execution_id, lease.owner, lease.token]

        async def work(conn: Any, _: int) -> Any:
            return await (await conn.execute(self._renew_sql(), params)).fetchone()

        return self._renewed(lease, await self._arun(work))

    def release_lease(self, lease: Lease) -> None:
        self._run(lambda conn, _: conn.execute(self._release_sql(), [lease.execution_id, lease.owner, lease.token]))

    async def arelease_lease(self, lease: Lease) -> None:
        async def work(conn: Any, _: int) -> None:
            await conn.execute(self._release_sql(), [lease.execution_id, lease.owner, lease.token])

        await self._arun(work)
