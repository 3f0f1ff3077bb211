"""Where the PostgreSQL tests find a server.

``SPARK_CKPT_TEST_PG_DSN`` (set by the project's CI script) names a server to use. Without it a
throwaway cluster is started from the local PostgreSQL server binaries; without those, the tests
are skipped with the reason, or fail if ``SPARK_CKPT_TEST_REQUIRE_SERVERS`` is set (CI).
"""

from __future__ import annotations

import os
import uuid

import pytest


@pytest.fixture(scope="session")
def pg_dsn():
    dsn = os.environ.get("SPARK_CKPT_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    from spark_ckpt_postgres.testing import ThrowawayPostgres, find_pg_bin

    if find_pg_bin() is None:
        reason = "no PostgreSQL: set SPARK_CKPT_TEST_PG_DSN or install the postgresql server package"
        if os.environ.get("SPARK_CKPT_TEST_REQUIRE_SERVERS"):
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = ThrowawayPostgres().start()
    try:
        yield cluster.dsn
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_dsn):
    """A URL of a fresh, empty schema on the test server."""
    return f"{pg_dsn}?schema=t_{uuid.uuid4().hex[:12]}"
