"""Shared fixtures for the core test suite."""

from __future__ import annotations

import pytest

# the public fixtures (temporary stores, scripted models, chaos), as a user's conftest.py enables them
pytest_plugins = ["spark_ckpt.testing.fixtures"]


@pytest.fixture
def no_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove SPARK_CKPT_* variables so a test sees only the configuration it builds itself."""
    import os

    for name in list(os.environ):
        if name.startswith("SPARK_CKPT_"):
            monkeypatch.delenv(name)
