"""The backend conformance suite: every rule of ``spark_ckpt.backends.base``, as pytest tests.

A backend is done when it passes this suite. Subclass ``BackendConformance`` in a test module
(its name must start with ``Test`` so pytest collects it) and say how to build your backend::

    from spark_ckpt.testing.conformance import BackendConformance

    class TestMyBackend(BackendConformance):
        def make_backend(self, tmp_path):
            return MyBackend.from_url(f"mine://{tmp_path}/store")

        # Durable backends: open a second backend on the same storage; the suite checks that
        # checkpoints and leases survive. Without this hook that test is skipped.
        def reopen_backend(self, backend, tmp_path):
            return MyBackend.from_url(f"mine://{tmp_path}/store")

``make_backend`` must return an empty store each time (use ``tmp_path``, a fresh schema, a fresh
bucket prefix ...). The suite closes every backend it gets. Capabilities are read from the class:
``durable = False`` skips the reopen test. Override ``lease_expiry_s`` if your store's clock needs a
longer pause before a short lease counts as expired, ``thread_count`` for the concurrency tests.

Test bodies only use the public ``Backend`` API, so they run unchanged against local and remote
stores. pytest is imported here, so import this module only from tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from ..backends.base import Backend
from ..errors import (
    BackendError, CheckpointNotFoundError, DuplicateCheckpointError, ExecutionCompletedError, LeaseError,
)
from ..model import COMPLETED, FAILED, RUNNING, CheckpointHeader, Lease

#: A fixed base time keeps ordering tests independent of the clock.
T0 = 1_700_000_000.0


def make_header(
    seq: int = 0,
    *,
    checkpoint_id: str | None = None,
    graph_id: str = "graph-a",
    execution_id: str = "exec-1",
    created_at: float | None = None,
    status: str = RUNNING,
    kind: str = "graph",
    size: int = 0,
) -> CheckpointHeader:
    """A header with readable defaults; ``checkpoint_id`` defaults to ``<execution_id>-<seq>``."""
    return CheckpointHeader(
        checkpoint_id=checkpoint_id if checkpoint_id is not None else f"{execution_id}-{seq}",
        graph_id=graph_id,
        execution_id=execution_id,
        seq=seq,
        created_at=T0 + seq if created_at is None else created_at,
        status=status,
        kind=kind,
        size=size,
    )


def _ids(headers: list[CheckpointHeader]) -> list[str]:
    return [h.checkpoint_id for h in headers]


class BackendConformance:
    """Base class of the suite; subclass it as ``Test<YourBackend>`` and implement ``make_backend``."""

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

    # -- put / get -----------------------------------------------------------------------------------
    def test_put_get_round_trip(self, backend: Backend) -> None:
        """The bytes stored come back identical, as bytes."""
        header = make_header(0, size=11)
        backend.put(header, b"hello bytes")
        stored = backend.get(header.checkpoint_id)
        assert stored.blob == b"hello bytes"
        assert type(stored.blob) is bytes

    def test_header_fields_preserved(self, backend: Backend) -> None:
        """Every header field, including a fractional timestamp, round-trips exactly."""
        header = make_header(
            7, checkpoint_id="ck-7", graph_id="g-x", execution_id="e-y", created_at=T0 + 0.123456789,
            status=FAILED, kind="agent", size=42,
        )
        backend.put(header, b"x" * 42)
        assert backend.get("ck-7").header == header
        assert backend.list(execution_id="e-y") == [header]

    def test_put_accepts_bytearray_and_memoryview(self, backend: Backend) -> None:
        """Bytes-like blobs are stored and returned as bytes."""
        backend.put(make_header(0), bytearray(b"abc"))
        backend.put(make_header(1), memoryview(b"def"))
        assert backend.get("exec-1-0").blob == b"abc"
        assert backend.get("exec-1-1").blob == b"def"

    def test_empty_blob(self, backend: Backend) -> None:
        """A zero-length blob is stored and returned (not confused with a missing checkpoint)."""
        backend.put(make_header(0), b"")
        assert backend.get("exec-1-0").blob == b""

    def test_binary_blob_with_every_byte_value(self, backend: Backend) -> None:
        """All 256 byte values survive, including NUL and invalid UTF-8."""
        blob = bytes(range(256)) * 4 + b"\x00\xff\xfe"
        backend.put(make_header(0), blob)
        assert backend.get("exec-1-0").blob == blob

    def test_large_blob(self, backend: Backend) -> None:
        """A 5 MB blob round-trips."""
        blob = bytes(range(256)) * (5 * 1024 * 1024 // 256) + b"tail"
        backend.put(make_header(0, size=len(blob)), blob)
        stored = backend.get("exec-1-0")
        assert len(stored.blob) == len(blob)
        assert stored.blob == blob

    def test_unknown_id_raises_not_found(self, backend: Backend) -> None:
        """get() of an id never stored raises CheckpointNotFoundError naming the id."""
        with pytest.raises(CheckpointNotFoundError, match="no-such-id"):
            backend.get("no-such-id")
        backend.put(make_header(0), b"a")
        with pytest.raises(CheckpointNotFoundError):
            backend.get("no-such-id")

    def test_unusual_ids_are_opaque(self, backend: Backend) -> None:
        """Ids with slashes, dots, spaces, percent signs and non-ASCII are stored as given and kept apart."""
        odd = [
            make_header(0, checkpoint_id="../../etc/passwd", graph_id="../g", execution_id="a/b"),
            make_header(0, checkpoint_id="..", graph_id="g", execution_id="a%2Fb"),
            make_header(1, checkpoint_id="x y/ü:%", graph_id="g", execution_id="a%2Fb"),
            make_header(0, checkpoint_id=".", graph_id=".", execution_id="."),
        ]
        self.put_all(backend, *odd)
        for header in odd:
            stored = backend.get(header.checkpoint_id)
            assert stored.header == header
            assert stored.blob == f"blob of {header.checkpoint_id}".encode()
        assert _ids(backend.list(execution_id="a/b")) == ["../../etc/passwd"]
        assert _ids(backend.list(graph_id="g")) == ["x y/ü:%", ".."]
        assert _ids(backend.list(graph_id=".")) == ["."]

    # -- no overwrite ------------------------------------------------------------------------------
    def test_duplicate_seq_refused_first_kept(self, backend: Backend) -> None:
        """A second checkpoint at the same (execution_id, seq) is refused and the first stays intact."""
        backend.put(make_header(3, checkpoint_id="first"), b"first")
        with pytest.raises(DuplicateCheckpointError):
            backend.put(make_header(3, checkpoint_id="second", created_at=T0 + 99), b"second")
        assert backend.get("first").blob == b"first"
        with pytest.raises(CheckpointNotFoundError):
            backend.get("second")
        assert _ids(backend.list(execution_id="exec-1")) == ["first"]

    def test_same_seq_in_other_execution_allowed(self, backend: Backend) -> None:
        """Uniqueness is per execution: seq 0 of two executions coexist."""
        self.put_all(backend, make_header(0, execution_id="e1"), make_header(0, execution_id="e2"))
        assert backend.get("e1-0").header.execution_id == "e1"
        assert backend.get("e2-0").header.execution_id == "e2"

    def test_duplicate_checkpoint_id_refused(self, backend: Backend) -> None:
        """Re-using a checkpoint id (even at another seq) is refused; the stored one is unchanged."""
        backend.put(make_header(0, checkpoint_id="same"), b"one")
        with pytest.raises(DuplicateCheckpointError):
            backend.put(make_header(1, checkpoint_id="same"), b"two")
        stored = backend.get("same")
        assert (stored.header.seq, stored.blob) == (0, b"one")
        assert len(backend.list()) == 1

    def test_repeating_the_same_put_is_refused(self, backend: Backend) -> None:
        """Retrying an identical put raises DuplicateCheckpointError instead of writing twice."""
        header = make_header(0)
        backend.put(header, b"a")
        with pytest.raises(DuplicateCheckpointError):
            backend.put(header, b"a")
        assert backend.list() == [header]

    # -- listing -----------------------------------------------------------------------------------
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

    # -- delete ------------------------------------------------------------------------------------
    def test_delete_counts_and_ignores_unknown(self, backend: Backend) -> None:
        """delete() returns how many existed, skips unknown ids, and the rest stays readable."""
        self.put_all(backend, *(make_header(seq) for seq in range(4)))
        assert backend.delete(["exec-1-0", "nope", "exec-1-2", "exec-1-2"]) == 2
        assert _ids(backend.list()) == ["exec-1-3", "exec-1-1"]
        with pytest.raises(CheckpointNotFoundError):
            backend.get("exec-1-0")
        assert backend.get("exec-1-3").blob == b"blob of exec-1-3"
        assert backend.delete([]) == 0
        assert backend.delete(["exec-1-0"]) == 0

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

    def test_delete_accepts_a_generator(self, backend: Backend) -> None:
        """delete() takes any iterable of ids."""
        self.put_all(backend, make_header(0), make_header(1))
        assert backend.delete(cid for cid in ["exec-1-0", "exec-1-1"]) == 2
        assert backend.list() == []

    # -- replace (optional: key rotation) --------------------------------------------------------------
    def test_replace_swaps_bytes_of_existing_checkpoint(self, backend: Backend) -> None:
        """replace() swaps blob and size in place; others untouched; a missing checkpoint is refused."""
        header = make_header(1, size=3)
        self.put_all(backend, make_header(0), make_header(2))
        backend.put(header, b"old")
        new_header = attrs.evolve(header, size=9)
        try:
            backend.replace(new_header, b"new bytes")
        except NotImplementedError:
            pytest.skip(f"{type(backend).__name__} does not support replace()")
        stored = backend.get(header.checkpoint_id)
        assert (stored.blob, stored.header) == (b"new bytes", new_header)
        assert _ids(backend.list()) == ["exec-1-2", "exec-1-1", "exec-1-0"]
        assert backend.get("exec-1-0").blob == b"blob of exec-1-0"
        backend.delete([header.checkpoint_id])
        with pytest.raises(CheckpointNotFoundError):
            backend.replace(new_header, b"resurrected?")
        with pytest.raises(CheckpointNotFoundError):
            backend.get(header.checkpoint_id)
        assert len(backend.list()) == 2

    # -- leases ------------------------------------------------------------------------------------
    def test_lease_acquire_and_renew(self, backend: Backend) -> None:
        """The first owner gets a lease; renewing keeps the token and pushes the expiry out."""
        before = time.time()
        first = backend.acquire_lease("exec-1", "worker-a", 30)
        assert (first.execution_id, first.owner) == ("exec-1", "worker-a")
        assert first.expires_at >= before + 30 - 1
        renewed = backend.acquire_lease("exec-1", "worker-a", 60)
        assert renewed.token == first.token
        assert renewed.expires_at > first.expires_at

    def test_lease_refused_to_other_owner_while_valid(self, backend: Backend) -> None:
        """A second owner cannot take a lease that has not expired; the holder keeps it."""
        held = backend.acquire_lease("exec-1", "worker-a", 30)
        with pytest.raises(LeaseError, match="worker-a"):
            backend.acquire_lease("exec-1", "worker-b", 30)
        assert backend.acquire_lease("exec-1", "worker-a", 30).token == held.token

    def test_leases_are_per_execution(self, backend: Backend) -> None:
        """Holding one execution does not block another."""
        backend.acquire_lease("exec-1", "worker-a", 30)
        other = backend.acquire_lease("exec-2", "worker-b", 30)
        assert other.owner == "worker-b"

    def test_lease_takeover_after_expiry_grows_token(self, backend: Backend) -> None:
        """Once expired, another owner takes the lease with a larger fencing token."""
        stale = backend.acquire_lease("exec-1", "worker-a", self.lease_expiry_s)
        self.wait_for_expiry()
        taken = backend.acquire_lease("exec-1", "worker-b", 30)
        assert taken.owner == "worker-b"
        assert taken.token > stale.token
        with pytest.raises(LeaseError):
            backend.acquire_lease("exec-1", "worker-a", 30)

    def test_renew_extends_the_same_token(self, backend: Backend) -> None:
        """renew_lease keeps the token and pushes the expiry out, also for a lease that expired but
        was not taken over; a write under it is still accepted."""
        first = backend.acquire_lease("exec-1", "worker-a", self.lease_expiry_s)
        renewed = backend.renew_lease(first, 30)
        assert (renewed.owner, renewed.token) == ("worker-a", first.token)
        assert renewed.expires_at > first.expires_at
        short = backend.acquire_lease("exec-2", "worker-a", self.lease_expiry_s)
        self.wait_for_expiry()
        again = asyncio.run(backend.arenew_lease(short, 30))
        assert again.token == short.token
        backend.put(make_header(0, execution_id="exec-2"), b"x", lease=again)
        with pytest.raises(LeaseError):
            backend.acquire_lease("exec-2", "worker-b", 30)

    def test_renew_never_takes_a_lease_back(self, backend: Backend) -> None:
        """A stalled owner whose lease was taken over (even by an owner that is gone since) or
        released cannot renew it: LeaseError, and the current lease is untouched."""
        stale = backend.acquire_lease("exec-1", "worker-a", self.lease_expiry_s)
        self.wait_for_expiry()
        taken = backend.acquire_lease("exec-1", "worker-b", self.lease_expiry_s)
        self.wait_for_expiry()  # the new owner's lease has expired too
        with pytest.raises(LeaseError):
            backend.renew_lease(stale, 30)
        with pytest.raises(LeaseError):
            backend.put(make_header(0), b"zombie", lease=stale)
        assert backend.renew_lease(taken, 30).token == taken.token
        released = backend.acquire_lease("exec-2", "worker-a", 30)
        backend.release_lease(released)
        with pytest.raises(LeaseError):
            backend.renew_lease(released, 30)

    def test_put_with_current_lease_succeeds(self, backend: Backend) -> None:
        """A write fenced by the current lease is stored."""
        lease = backend.acquire_lease("exec-1", "worker-a", 30)
        backend.put(make_header(0), b"fenced", lease=lease)
        backend.put(make_header(1), b"fenced too", lease=backend.acquire_lease("exec-1", "worker-a", 30))
        assert backend.get("exec-1-0").blob == b"fenced"
        assert len(backend.list()) == 2

    def test_stale_lease_put_refused_and_nothing_written(self, backend: Backend) -> None:
        """After a takeover the old owner's put raises LeaseError and stores nothing."""
        stale = backend.acquire_lease("exec-1", "worker-a", self.lease_expiry_s)
        backend.put(make_header(0), b"before", lease=stale)
        self.wait_for_expiry()
        current = backend.acquire_lease("exec-1", "worker-b", 30)
        with pytest.raises(LeaseError):
            backend.put(make_header(1, checkpoint_id="zombie"), b"late write", lease=stale)
        with pytest.raises(CheckpointNotFoundError):
            backend.get("zombie")
        assert _ids(backend.list()) == ["exec-1-0"]
        # the slot is still free for the rightful owner
        backend.put(make_header(1), b"new owner", lease=current)
        assert backend.get("exec-1-1").blob == b"new owner"

    def test_put_with_lease_never_acquired_refused(self, backend: Backend) -> None:
        """A lease object the store never granted does not pass the fencing check."""
        forged = backend.acquire_lease("exec-2", "worker-a", 30)
        with pytest.raises(LeaseError):
            backend.put(make_header(0), b"x", lease=Lease("exec-1", "worker-a", forged.token, forged.expires_at))
        assert backend.list() == []

    def test_start_execution_leases_and_stores(self, backend: Backend) -> None:
        """start_execution stores the first checkpoint and returns a lease that fences later puts;
        another owner cannot start the same execution while that lease is valid."""
        lease = backend.start_execution(make_header(0), b"first", "worker-a", 30)
        assert (lease.execution_id, lease.owner) == ("exec-1", "worker-a")
        assert backend.get("exec-1-0").blob == b"first"
        backend.put(make_header(1), b"second", lease=lease)
        with pytest.raises(LeaseError):
            backend.start_execution(make_header(2), b"forked", "worker-b", 30)
        assert _ids(backend.list()) == ["exec-1-1", "exec-1-0"]
        assert backend.acquire_lease("exec-1", "worker-a", 30).token == lease.token
        other = asyncio.run(backend.astart_execution(make_header(0, execution_id="e2"), b"async", "worker-c", 30))
        assert (other.execution_id, other.owner, backend.get("e2-0").blob) == ("e2", "worker-c", b"async")

    def test_start_execution_after_a_release_takes_a_larger_token(self, backend: Backend) -> None:
        """An execution whose lease was held and released starts under a larger token, which fences
        the earlier owner's writes."""
        first = backend.acquire_lease("exec-1", "worker-a", 30)
        backend.release_lease(first)
        lease = backend.start_execution(make_header(0), b"first", "worker-b", 30)
        assert (lease.owner, lease.token > first.token) == ("worker-b", True)
        with pytest.raises(LeaseError):
            backend.put(make_header(1), b"stale", lease=first)
        assert _ids(backend.list()) == ["exec-1-0"]

    def test_start_execution_duplicate_leaves_no_lease(self, backend: Backend) -> None:
        """A start_execution whose checkpoint is refused as a duplicate keeps the stored one and holds
        no lease afterwards, so another worker can take the execution at once."""
        backend.put(make_header(0), b"kept")
        with pytest.raises(DuplicateCheckpointError):
            backend.start_execution(make_header(0), b"other", "worker-a", 30)
        assert backend.get("exec-1-0").blob == b"kept"
        assert backend.acquire_lease("exec-1", "worker-b", 30).owner == "worker-b"

    def test_release_lets_another_owner_in(self, backend: Backend) -> None:
        """After release another owner acquires at once, with a larger token; the old lease is fenced."""
        first = backend.acquire_lease("exec-1", "worker-a", 30)
        backend.release_lease(first)
        second = backend.acquire_lease("exec-1", "worker-b", 30)
        assert second.token > first.token
        with pytest.raises(LeaseError):
            backend.put(make_header(0), b"x", lease=first)
        assert backend.list() == []

    def test_release_of_superseded_lease_is_a_no_op(self, backend: Backend) -> None:
        """Releasing a lease that was taken over does not release the new owner's lease."""
        stale = backend.acquire_lease("exec-1", "worker-a", self.lease_expiry_s)
        self.wait_for_expiry()
        current = backend.acquire_lease("exec-1", "worker-b", 30)
        backend.release_lease(stale)
        with pytest.raises(LeaseError):
            backend.acquire_lease("exec-1", "worker-c", 30)
        backend.put(make_header(0), b"still mine", lease=current)
        assert backend.get("exec-1-0").blob == b"still mine"

    # -- async twins -------------------------------------------------------------------------------
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

    # -- concurrency -------------------------------------------------------------------------------
    def _run_threads(self, target, count: int) -> list[BaseException]:
        errors: list[BaseException] = []
        start = threading.Barrier(count)

        def run(index: int) -> None:
            try:
                start.wait()
                target(index)
            except Exception as exc:  # noqa: BLE001 - collected and asserted on by the caller
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return errors

    def test_concurrent_puts_from_threads(self, backend: Backend) -> None:
        """Threads writing different executions at once all succeed and nothing is mixed up."""
        per_thread = 15

        def write(index: int) -> None:
            for seq in range(per_thread):
                backend.put(make_header(seq, execution_id=f"t{index}"), f"t{index}-{seq}".encode())

        assert self._run_threads(write, self.thread_count) == []
        assert len(backend.list()) == self.thread_count * per_thread
        for index in range(self.thread_count):
            assert backend.get(f"t{index}-{per_thread - 1}").blob == f"t{index}-{per_thread - 1}".encode()
            assert len(backend.list(execution_id=f"t{index}")) == per_thread

    def test_concurrent_puts_of_one_seq_exactly_one_wins(self, backend: Backend) -> None:
        """Threads racing for the same (execution_id, seq): one stores, the others get DuplicateCheckpointError."""
        def write(index: int) -> None:
            backend.put(make_header(0, checkpoint_id=f"racer-{index}"), f"racer-{index}".encode())

        errors = self._run_threads(write, self.thread_count)
        assert len(errors) == self.thread_count - 1
        assert all(isinstance(e, DuplicateCheckpointError) for e in errors), errors
        (winner,) = backend.list()
        assert backend.get(winner.checkpoint_id).blob == winner.checkpoint_id.encode()

    def test_concurrent_lease_acquire_exactly_one_wins(self, backend: Backend) -> None:
        """Threads racing to acquire one execution's lease: exactly one owner gets it."""
        won: list[str] = []

        def acquire(index: int) -> None:
            backend.acquire_lease("exec-1", f"worker-{index}", 30)
            won.append(f"worker-{index}")

        errors = self._run_threads(acquire, self.thread_count)
        assert len(won) == 1
        assert len(errors) == self.thread_count - 1
        assert all(isinstance(e, LeaseError) for e in errors), errors

    # -- durability --------------------------------------------------------------------------------
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

