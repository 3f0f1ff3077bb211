"""Conformance: the executions index (``spark_ckpt.backends.heads``) and the rules it enforces.

An execution's head is the header of its highest seq ever stored, with the writer's tag; deleting
checkpoints never moves it back, and a write under a lease must come after it, into an execution
that has not completed.
"""

from __future__ import annotations

import asyncio

import attrs
import pytest

from ...backends.base import Backend
from ...errors import DuplicateCheckpointError, ExecutionCompletedError
from ...model import COMPLETED, FAILED, WAITING
from .harness import ConformanceHarness
from .headers import _ids, make_header


class ExecutionsIndexConformance(ConformanceHarness):
    """``execution_head()``, and heads surviving deletes, re-tagging, and refusing leased writes behind them."""

    def test_deleting_the_newest_keeps_the_execution_head(self, backend: Backend) -> None:
        """Deleting an execution's newest checkpoint never moves its head back: executions() and
        execution_head() still report it (a deleted final checkpoint leaves the execution completed);
        once no checkpoint of it is left, executions() no longer lists it (and the store may forget it)."""
        self.put_all(backend, make_header(0), make_header(1, status=COMPLETED))
        backend.delete(["exec-1-1"])
        (latest,) = backend.executions()
        assert (latest.checkpoint_id, latest.seq, latest.status) == ("exec-1-1", 1, COMPLETED)
        assert backend.executions(unfinished_only=True) == []
        head_before = backend.execution_head("exec-1")
        assert head_before.seq == 1
        backend.delete(["exec-1-0"])
        assert backend.executions() == []
        assert backend.execution_head("exec-1") in (None, head_before)

    def test_a_waiting_execution_is_unfinished(self, backend: Backend) -> None:
        """An execution stopped at an approval gate (status ``waiting``) is listed with the unfinished
        ones (recovery continues it, retention keeps its records), and a leased write may follow it."""
        self.put_all(backend, make_header(0), make_header(1, status=WAITING),
                     make_header(0, execution_id="done"), make_header(1, execution_id="done", status=COMPLETED))
        assert [(h.execution_id, h.status) for h in backend.executions(unfinished_only=True)] == [("exec-1", WAITING)]
        assert backend.execution_head("exec-1").status == WAITING
        lease = backend.acquire_lease("exec-1", "resolver", 30)
        backend.put(make_header(2, status=WAITING), b"resolved", lease=lease)
        assert (backend.execution_head("exec-1").seq, backend.execution_head("exec-1").status) == (2, WAITING)

    # -- the executions index ------------------------------------------------------------------------
    def test_execution_head_is_the_highest_seq_with_its_tag(self, backend: Backend) -> None:
        """execution_head() is the header of the highest seq written, with the tag the writer gave;
        listings carry no tag; an unknown execution has no head."""
        assert backend.execution_head("exec-1") is None
        backend.put(attrs.evolve(make_header(0), tag=b"t0"), b"zero")
        backend.put(attrs.evolve(make_header(1, status=FAILED), tag=b"t1"), b"one")
        head = backend.execution_head("exec-1")
        assert (head.checkpoint_id, head.seq, head.status, head.tag) == ("exec-1-1", 1, FAILED, b"t1")
        assert head == backend.list(execution_id="exec-1")[0]
        assert backend.list()[0].tag is None and backend.executions()[0].tag is None
        assert backend.get("exec-1-1").header.tag is None
        assert asyncio.run(backend.aexecution_head("exec-1")).tag == b"t1"

    def test_replace_with_a_tag_retags_the_head(self, backend: Backend) -> None:
        """replace() with a tagged header at the head's seq re-tags the head (key rotation); at another
        seq, or without a tag, the head keeps its tag."""
        backend.put(attrs.evolve(make_header(0), tag=b"old0"), b"zero")
        backend.put(attrs.evolve(make_header(1), tag=b"old1"), b"one")
        backend.replace(attrs.evolve(make_header(1, size=3), tag=b"new1"), b"ONE")
        assert backend.execution_head("exec-1").tag == b"new1"
        backend.replace(attrs.evolve(make_header(0, size=4), tag=b"new0"), b"ZERO")
        backend.replace(make_header(1, size=1), b"x")
        head = backend.execution_head("exec-1")
        assert (head.seq, head.tag) == (1, b"new1")
        assert backend.get("exec-1-1").blob == b"x" and backend.get("exec-1-0").blob == b"ZERO"

    def test_unleased_puts_only_move_the_head_forward(self, backend: Backend) -> None:
        """Without a lease (copies between stores) an older seq is stored and leaves the head alone."""
        self.put_all(backend, make_header(2, status=COMPLETED), make_header(0), make_header(1))
        assert backend.execution_head("exec-1").seq == 2
        assert len(backend.list()) == 3
        assert backend.executions()[0].status == COMPLETED

    def test_leased_put_into_a_completed_execution_refused(self, backend: Backend) -> None:
        """A worker holding a lease cannot add to an execution whose head is completed, even after its
        final checkpoint was deleted; nothing is written."""
        lease = backend.acquire_lease("exec-1", "worker-a", 30)
        backend.put(make_header(0), b"start", lease=lease)
        backend.put(make_header(1, status=COMPLETED), b"final", lease=lease)
        backend.delete(["exec-1-1"])
        with pytest.raises(ExecutionCompletedError):
            backend.put(make_header(2), b"late", lease=lease)
        assert _ids(backend.list()) == ["exec-1-0"]
        assert backend.execution_head("exec-1").status == COMPLETED

    def test_leased_put_behind_the_head_refused(self, backend: Backend) -> None:
        """Under a lease a seq at or below the head is refused, even when its slot was emptied by a
        delete (a stalled worker cannot write into gaps retention left)."""
        lease = backend.acquire_lease("exec-1", "worker-a", 30)
        for seq in range(3):
            backend.put(make_header(seq), b"x", lease=lease)
        backend.delete(["exec-1-1", "exec-1-2"])
        for seq in (1, 2):
            with pytest.raises(DuplicateCheckpointError):
                backend.put(make_header(seq, checkpoint_id=f"again-{seq}"), b"y", lease=lease)
        assert _ids(backend.list()) == ["exec-1-0"]
        backend.put(make_header(3), b"next", lease=lease)
        assert backend.execution_head("exec-1").seq == 3
