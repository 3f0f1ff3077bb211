"""Conformance: threads sharing one backend; racing writers and racing lease owners.

Threads start together at a barrier; every error they raise is collected and asserted on.
"""

from __future__ import annotations

import threading

from ...backends.base import Backend
from ...errors import DuplicateCheckpointError, LeaseError
from .harness import ConformanceHarness
from .headers import make_header


class ConcurrencyConformance(ConformanceHarness):
    """Concurrent puts and lease races from ``thread_count`` threads."""

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
