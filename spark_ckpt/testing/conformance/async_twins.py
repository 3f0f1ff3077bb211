"""Conformance: every ``a*`` method answers exactly as its synchronous twin."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ...backends.base import Backend
from ...errors import CheckpointNotFoundError, DuplicateCheckpointError, LeaseError
from ...model import FAILED
from .harness import ConformanceHarness
from .headers import _ids, make_header


class AsyncTwinsConformance(ConformanceHarness):
    """One scenario through the async API, checked against the sync answers."""

    def test_async_twins_match_sync(self, backend: Backend) -> None:
        """Every a* method gives the same answers as its sync twin."""

        async def scenario() -> dict[str, Any]:
            await backend.aput(make_header(0), b"zero")
            await backend.aput(make_header(1, status=FAILED), b"one")
            await backend.aput(make_header(0, execution_id="e2", graph_id="g2"), b"two")
            with pytest.raises(DuplicateCheckpointError):
                await backend.aput(make_header(1), b"again")
            with pytest.raises(CheckpointNotFoundError):
                await backend.aget("missing")
            lease = await backend.aacquire_lease("exec-1", "worker-a", 30)
            with pytest.raises(LeaseError):
                await backend.aacquire_lease("exec-1", "worker-b", 30)
            await backend.aput(make_header(2), b"fenced", lease=lease)
            await backend.arelease_lease(lease)
            return {
                "get": await backend.aget("exec-1-1"),
                "list": await backend.alist(),
                "list_filtered": await backend.alist(graph_id="graph-a", execution_id="exec-1", limit=2),
                "executions": await backend.aexecutions(),
                "unfinished": await backend.aexecutions(graph_id="graph-a", unfinished_only=True, limit=1),
                "deleted": await backend.adelete(["exec-1-0", "missing"]),
                "after": await backend.alist(),
                "taken": await backend.aacquire_lease("exec-1", "worker-b", 30),
                "released": lease,
            }

        got = asyncio.run(scenario())
        assert got["get"] == backend.get("exec-1-1")
        assert got["get"].blob == b"one"
        assert _ids(got["list"]) == ["exec-1-2", "exec-1-1", "exec-1-0", "e2-0"]
        assert _ids(got["list_filtered"]) == ["exec-1-2", "exec-1-1"]
        assert _ids(got["executions"]) == ["exec-1-2", "e2-0"]
        assert _ids(got["unfinished"]) == ["exec-1-2"]
        assert got["deleted"] == 1
        assert got["after"] == backend.list()
        assert got["taken"].owner == "worker-b"
        assert got["taken"].token > got["released"].token
