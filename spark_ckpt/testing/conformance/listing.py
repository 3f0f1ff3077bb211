"""Conformance: ``list()`` and ``executions()`` filter, limit and order alike in every backend."""

from __future__ import annotations

import asyncio

import pytest

from ...backends.base import Backend
from ...errors import BackendError, CheckpointNotFoundError, DuplicateCheckpointError
from ...model import COMPLETED, FAILED, RUNNING
from .harness import ConformanceHarness
from .headers import T0, _ids, make_header


class ListingConformance(ConformanceHarness):
    """Listing checkpoints and executions: newest first, ties broken by seq then id, filters, limits."""

    def test_list_empty_store(self, backend: Backend) -> None:
        """An empty store lists nothing and has no executions."""
        assert backend.list() == []
        assert backend.list(graph_id="nope", execution_id="nope", limit=3) == []
        assert backend.executions() == []

    def test_list_newest_first_by_time_then_seq(self, backend: Backend) -> None:
        """list() orders by created_at descending, then seq descending; not by insertion order."""
        headers = [
            make_header(0, created_at=T0 + 10),
            make_header(1, created_at=T0 + 30),
            make_header(2, created_at=T0 + 20),
            make_header(3, created_at=T0 + 30),  # ties on time: higher seq first
            make_header(0, execution_id="other", created_at=T0 + 25),
        ]
        self.put_all(backend, *headers[::-1])
        assert _ids(backend.list()) == ["exec-1-3", "exec-1-1", "other-0", "exec-1-2", "exec-1-0"]

    def test_an_id_is_never_stored_twice_whatever_its_shape(self, backend: Backend) -> None:
        """Ids shaped like the ones spark-ckpt derives (``ck-<x>-<n>`` for checkpoint n of execution
        ``<x>``) are unique too. A backend may refuse such an id at any other position (SQLite does:
        it finds derived ids by position) but never stores one twice; get/delete find a row by its own id."""
        backend.put(make_header(0, execution_id="a", checkpoint_id="ck-a-0"), b"derived")
        with pytest.raises(BackendError):  # DuplicateCheckpointError, or refused for its position
            backend.put(make_header(5, execution_id="b", checkpoint_id="ck-a-0"), b"named")
        try:
            backend.put(make_header(5, execution_id="b", checkpoint_id="ck-c-1"), b"named")
            named_stored = True
        except DuplicateCheckpointError:
            raise
        except BackendError:
            named_stored = False
        if named_stored:
            with pytest.raises(DuplicateCheckpointError):
                backend.put(make_header(1, execution_id="c", checkpoint_id="ck-c-1"), b"derived")
        else:
            backend.put(make_header(1, execution_id="c", checkpoint_id="ck-c-1"), b"derived")
        backend.put(make_header(0, execution_id="d", checkpoint_id="custom"), b"custom")
        assert backend.get("ck-a-0").blob == b"derived"
        assert backend.get("ck-c-1").blob == (b"named" if named_stored else b"derived")
        with pytest.raises(CheckpointNotFoundError):
            backend.get("ck-d-0")  # (d, 0) exists, under another id
        assert sorted(_ids(backend.list())) == ["ck-a-0", "ck-c-1", "custom"]
        assert backend.delete(["ck-c-1", "ck-a-0", "ck-d-0"]) == 2
        assert _ids(backend.list()) == ["custom"]

    def test_list_ties_on_time_and_seq_break_by_id(self, backend: Backend) -> None:
        """Checkpoints of different executions with equal time and seq list by checkpoint id,
        descending: every backend gives the same order, so tools comparing listings agree."""
        self.put_all(
            backend,
            make_header(0, execution_id="b", created_at=T0),
            make_header(0, execution_id="c", created_at=T0),
            make_header(0, execution_id="a", created_at=T0),
        )
        assert _ids(backend.list()) == ["c-0", "b-0", "a-0"]
        assert _ids(backend.executions()) == ["c-0", "b-0", "a-0"]

    def test_list_filters(self, backend: Backend) -> None:
        """graph_id and execution_id filter independently and together."""
        self.put_all(
            backend,
            make_header(0, graph_id="g1", execution_id="e1", created_at=T0 + 1),
            make_header(1, graph_id="g1", execution_id="e1", created_at=T0 + 3),
            make_header(0, graph_id="g1", execution_id="e2", created_at=T0 + 2),
            make_header(0, graph_id="g2", execution_id="e3", created_at=T0 + 4),
        )
        assert _ids(backend.list(graph_id="g1")) == ["e1-1", "e2-0", "e1-0"]
        assert _ids(backend.list(graph_id="g2")) == ["e3-0"]
        assert _ids(backend.list(execution_id="e1")) == ["e1-1", "e1-0"]
        assert _ids(backend.list(graph_id="g1", execution_id="e2")) == ["e2-0"]
        assert backend.list(graph_id="g2", execution_id="e1") == []
        assert backend.list(graph_id="unknown") == []

    def test_list_limit(self, backend: Backend) -> None:
        """limit keeps the newest N; a limit above the count returns everything."""
        self.put_all(backend, *(make_header(seq) for seq in range(6)))
        assert _ids(backend.list(limit=2)) == ["exec-1-5", "exec-1-4"]
        assert _ids(backend.list(execution_id="exec-1", limit=1)) == ["exec-1-5"]
        assert len(backend.list(limit=100)) == 6
        assert backend.list(limit=0) == []

    def test_tail_is_the_highest_seqs_whatever_their_times(self, backend: Backend) -> None:
        """tail(execution, n) returns the execution's n highest seqs, highest first, by seq alone (a clock
        that stepped back does not reorder them); other executions are left out."""
        self.put_all(
            backend,
            *(make_header(seq, created_at=T0 + 100 - seq) for seq in range(6)),
            make_header(9, execution_id="other", created_at=T0 + 500),
        )
        assert _ids(backend.tail("exec-1", 3)) == ["exec-1-5", "exec-1-4", "exec-1-3"]
        assert _ids(backend.tail("exec-1", 100)) == [f"exec-1-{seq}" for seq in range(5, -1, -1)]
        assert backend.tail("exec-1", 0) == [] and backend.tail("nope", 3) == []

        async def both() -> tuple:
            return await backend.atail("exec-1", 2), await backend.atail("other", 5)

        mine, other = asyncio.run(both())
        assert _ids(mine) == ["exec-1-5", "exec-1-4"] and _ids(other) == ["other-9"]

    def test_executions_newest_per_execution(self, backend: Backend) -> None:
        """executions() returns each execution's highest-seq header, executions ordered newest first."""
        self.put_all(
            backend,
            make_header(0, execution_id="old", created_at=T0 + 1),
            make_header(1, execution_id="old", created_at=T0 + 2, status=COMPLETED),
            make_header(0, execution_id="new", created_at=T0 + 5),
            make_header(1, execution_id="new", created_at=T0 + 6),
            make_header(2, execution_id="new", created_at=T0 + 7, status=FAILED),
            make_header(0, execution_id="mid", created_at=T0 + 4),
        )
        found = backend.executions()
        assert _ids(found) == ["new-2", "mid-0", "old-1"]
        assert [h.status for h in found] == [FAILED, RUNNING, COMPLETED]

    def test_executions_unfinished_only(self, backend: Backend) -> None:
        """unfinished_only keeps executions whose newest checkpoint is running or failed."""
        self.put_all(
            backend,
            make_header(0, execution_id="done"),
            make_header(1, execution_id="done", status=COMPLETED),
            make_header(0, execution_id="running"),
            make_header(0, execution_id="failed", status=FAILED),
            # completed earlier, newest says running again: unfinished
            make_header(0, execution_id="again", status=COMPLETED),
            make_header(1, execution_id="again"),
        )
        assert sorted(h.execution_id for h in backend.executions(unfinished_only=True)) == [
            "again", "failed", "running"
        ]
        assert len(backend.executions()) == 4

    def test_executions_graph_filter_and_limit(self, backend: Backend) -> None:
        """executions() filters by graph and keeps the newest N executions."""
        self.put_all(
            backend,
            make_header(0, graph_id="g1", execution_id="a", created_at=T0 + 1),
            make_header(0, graph_id="g1", execution_id="b", created_at=T0 + 3),
            make_header(0, graph_id="g2", execution_id="c", created_at=T0 + 2),
        )
        assert _ids(backend.executions(graph_id="g1")) == ["b-0", "a-0"]
        assert _ids(backend.executions(limit=2)) == ["b-0", "c-0"]
        assert _ids(backend.executions(graph_id="g2", unfinished_only=True, limit=5)) == ["c-0"]
        assert backend.executions(graph_id="none") == []

    def test_executions_uses_highest_seq_even_if_older(self, backend: Backend) -> None:
        """The newest checkpoint of an execution is its highest seq, even if its clock went backwards."""
        self.put_all(
            backend,
            make_header(0, created_at=T0 + 50),
            make_header(1, created_at=T0 + 40, status=COMPLETED),
        )
        (latest,) = backend.executions()
        assert (latest.seq, latest.status) == (1, COMPLETED)
