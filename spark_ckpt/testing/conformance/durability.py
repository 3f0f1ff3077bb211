"""Conformance: a durable backend's checkpoints and leases are there for a second backend on its storage.

Runs only for backends whose class says ``durable = True`` and whose test class implements
``reopen_backend``; it is skipped otherwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ...backends.base import Backend
from ...errors import LeaseError
from .harness import ConformanceHarness
from .headers import _ids, make_header


class DurabilityConformance(ConformanceHarness):
    """Reopening the same storage: checkpoints readable, leases still held and still fencing."""

    def test_data_survives_reopen(self, backend: Backend, tmp_path: Path) -> None:
        """Durable backends: checkpoints and leases are there for a second backend on the same storage."""
        if not type(backend).durable:
            pytest.skip(f"{type(backend).__name__} is not durable")
        header = make_header(0, size=3)
        backend.put(header, b"abc")
        lease = backend.acquire_lease("exec-1", "worker-a", 30)
        reopened = self.reopen_backend(backend, tmp_path)
        if reopened is None:
            pytest.skip(f"{type(self).__name__} does not implement reopen_backend()")
        try:
            assert reopened.get(header.checkpoint_id) == backend.get(header.checkpoint_id)
            assert reopened.list() == [header]
            with pytest.raises(LeaseError):
                reopened.acquire_lease("exec-1", "worker-b", 30)
            reopened.put(make_header(1), b"def", lease=lease)
            assert _ids(backend.list()) == ["exec-1-1", "exec-1-0"]
        finally:
            reopened.close()
