"""Conformance: what is put comes back byte for byte, and nothing stored is ever overwritten."""

from __future__ import annotations

import pytest

from ...backends.base import Backend
from ...errors import CheckpointNotFoundError, DuplicateCheckpointError
from ...model import FAILED
from .harness import ConformanceHarness
from .headers import T0, _ids, make_header


class PutGetConformance(ConformanceHarness):
    """``put``/``get`` round trips, opaque ids, and refusing a second write of a seq or an id."""

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
