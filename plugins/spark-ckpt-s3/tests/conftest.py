"""Where the S3 tests find a server.

``SPARK_CKPT_TEST_S3_ENDPOINT`` (set by the project's CI script) names an S3 endpoint to use.
Without it a throwaway moto S3 server is started on loopback; without moto installed, the tests
are skipped with the reason (or fail if ``SPARK_CKPT_TEST_REQUIRE_SERVERS`` is set). Either way the backend talks to the server over HTTP.
"""

from __future__ import annotations

import importlib.util
import os
import uuid

import pytest

from spark_ckpt_s3.testing import MotoS3Server, set_test_credentials

BUCKET = "spark-ckpt-tests"


@pytest.fixture(scope="session")
def s3_endpoint():
    set_test_credentials()
    endpoint = os.environ.get("SPARK_CKPT_TEST_S3_ENDPOINT")
    if endpoint:
        yield endpoint
        return
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        reason = "no S3 server: set SPARK_CKPT_TEST_S3_ENDPOINT or pip install 'moto[s3]' flask flask-cors"
        if os.environ.get("SPARK_CKPT_TEST_REQUIRE_SERVERS"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = MotoS3Server().start()
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_url(s3_endpoint):
    """A URL of a fresh, empty prefix in the test bucket."""
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}?endpoint_url={s3_endpoint}&region=us-east-1&create_bucket=true"
