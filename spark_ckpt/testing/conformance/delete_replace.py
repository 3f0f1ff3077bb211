"""Conformance: ``delete()`` removes what exists and ignores the rest; ``replace()`` swaps bytes in place."""

from __future__ import annotations

import attrs
import pytest

from ...backends.base import Backend
from ...errors import CheckpointNotFoundError
from .harness import ConformanceHarness
from .headers import _ids, make_header


class DeleteReplaceConformance(ConformanceHarness):
    """Deleting checkpoints by id, and replacing a stored checkpoint's bytes (optional: key rotation)."""

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
