"""Whether a remote backend's tests can run here: its plugin installed and its server named.

``SPARK_CKPT_TEST_PG_DSN`` / ``SPARK_CKPT_TEST_S3_ENDPOINT`` name the servers (the CI script sets
both); with ``SPARK_CKPT_TEST_REQUIRE_SERVERS`` set, an installed plugin without its server is a
failure of the test, not a skip.
"""

from __future__ import annotations

import importlib.util
import os


def unavailable(module: str, env_var: str) -> str | None:
    """Why this remote backend's tests cannot run, or None if they can."""
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed"
    if not os.environ.get(env_var):
        if os.environ.get("SPARK_CKPT_TEST_REQUIRE_SERVERS"):
            return None  # the test then fails on the missing server instead of skipping
        return f"{env_var} is not set"
    return None


def postgres_unavailable() -> str | None:
    return unavailable("spark_ckpt_postgres", "SPARK_CKPT_TEST_PG_DSN")


def s3_unavailable() -> str | None:
    return unavailable("spark_ckpt_s3", "SPARK_CKPT_TEST_S3_ENDPOINT")
