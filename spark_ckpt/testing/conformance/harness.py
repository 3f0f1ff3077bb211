"""The base every topic of the conformance suite builds on: the backend author's hooks and fixtures.

``make_backend`` (required) and ``reopen_backend`` (durable backends) are what a backend author
overrides; ``lease_expiry_s`` and ``thread_count`` tune the timing and concurrency tests. The
``backend`` fixture gives each test a new, empty backend and closes it afterwards.

Invariants: a test touches the backend only through the public ``Backend`` API, so the suite runs
unchanged against local and remote stores.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ...backends.base import Backend
from ...model import CheckpointHeader


class ConformanceHarness:
    """Hooks and fixtures shared by every topic mixin of ``BackendConformance``."""

    #: seconds a lease of ``ttl_s=lease_expiry_s`` needs to be certainly expired (the suite sleeps 3x)
    lease_expiry_s: float = 0.05
    #: threads used by the concurrency tests
    thread_count: int = 4

    # -- hooks for the backend author --------------------------------------------------------------
    def make_backend(self, tmp_path: Path) -> Backend:
        """Return a new, empty backend. Must be overridden."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_backend(self, tmp_path)")

    def reopen_backend(self, backend: Backend, tmp_path: Path) -> Backend | None:
        """Return a second backend on the same storage as ``backend`` (durable backends), or None."""
        return None

    # -- fixtures ----------------------------------------------------------------------------------
    @pytest.fixture
    def backend(self, tmp_path: Path):
        opened = self.make_backend(tmp_path)
        yield opened
        opened.close()

    def put_all(self, backend: Backend, *headers: CheckpointHeader) -> None:
        for header in headers:
            backend.put(header, f"blob of {header.checkpoint_id}".encode())

    def wait_for_expiry(self) -> None:
        time.sleep(self.lease_expiry_s * 3)
