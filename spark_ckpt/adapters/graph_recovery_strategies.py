"""The guide's "Recovery Strategies", built in: ``await graph.run_with_recovery(inputs, strategy=...)``.

A failed run is continued from its journal, never started over behind the user's back:

* ``"last"``: each retry is ``recover_and_continue`` of the failed execution, from its newest
  checkpoint. Completed visits are replayed, never executed again.
* ``"progressive"``: one step further down a ladder per retry: the newest checkpoint (as "last"), then an
  earlier one (``offset`` boundaries before the newest; the visits after it run again, the execution is
  forked from there), then a fresh run from the state the run started with (the execution's first
  record, forked: nothing of the failed attempts leaks into it).

A fork or fresh run that completes marks the executions it replaced as completed, pointing at it
(``extras["superseded_by"]``), so no later ``recover_and_continue()`` finishes their work a second time;
recovering one of them by id returns the result of the run that replaced it.

Called again with the same inputs after a crash (a new process), it first continues the newest
unfinished execution of this graph that was run with identical inputs (``resume=True``), so a crash and a
restart never run the work twice either.

Not retried, whatever ``retry_on`` says: ``UnsafeToRetryError`` (a side effect may have happened),
``RunStopped`` (a plugin stopped the run on purpose), an approval gate (the run waits, it did not fail).
spark-ckpt's own refusals to recover (``SparkCkptError``) end "last" at once and move "progressive" to
its next step.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable

import attrs

from ..codec.values import identical
from ..errors import ConfigError, ExecutionExistsError, LeaseError, RunStopped, SparkCkptError, UnsafeToRetryError
from ..model import COMPLETED, FAILED, RUNNING, canonical_checkpoint_id, new_id
from .graph_gates import is_approval_pending
from .graph_state import dump_run_input

if TYPE_CHECKING:
    from .graph import CheckpointedGraph

log = logging.getLogger("spark_ckpt.graph")

STRATEGIES = ("last", "progressive")
#: how many unfinished executions ``resume`` looks through for one with the same inputs
RESUME_SCAN = 20


@attrs.define
class RecoveryStep:
    """One attempt of ``run_with_recovery``: what it tried, on which execution, and how it ended."""

    attempt: int  # 0: the first run (or the resumed one); 1..max_retries: the retries
    step: str  # "run" | "resume" | "last" | "earlier" | "fresh"
    execution_id: str | None
    from_checkpoint: str | None = None
    outcome: str = "failed"  # "completed" | "failed" | "refused"
    error: str | None = None


def _not_retried(exc: BaseException) -> bool:
    return isinstance(exc, (UnsafeToRetryError, RunStopped, ExecutionExistsError)) or is_approval_pending(exc)


def _delay(backoff: float | Callable[[int], float], attempt: int) -> float:
    if callable(backoff):
        return max(0.0, float(backoff(attempt)))
    return float(backoff) * 2 ** (attempt - 1)


def _check_arguments(strategy: str, max_retries: int, backoff: Any, retry_on: Any, offset: int) -> tuple[type, ...]:
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown recovery strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise ConfigError(f"max_retries must be an int >= 0, got {max_retries!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 1:
        raise ConfigError(f"offset must be an int >= 1 (boundaries before the newest), got {offset!r}")
    if not callable(backoff) and (not isinstance(backoff, (int, float)) or isinstance(backoff, bool) or backoff < 0):
        raise ConfigError(f"backoff must be seconds >= 0 (doubled per retry) or a function of the attempt, got {backoff!r}")
    kinds = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if not kinds or not all(isinstance(k, type) and issubclass(k, BaseException) for k in kinds):
        raise ConfigError(f"retry_on must be an exception class or a tuple of them, got {retry_on!r}")
    return kinds


class RecoveryLoop:
    """One ``run_with_recovery`` call: the steps taken so far, and the executions a fork replaced."""

    def __init__(self, owner: CheckpointedGraph, inputs: Any, strategy: str, offset: int,
                 allow_unsafe_rerun: bool = False, execution_id: str | None = None) -> None:
        self.owner = owner
        #: the name the first run is given (``run(execution_id=...)``); forks get generated ids
        self.execution_id = execution_id
        self.allow_unsafe_rerun = allow_unsafe_rerun
        self.inputs = inputs
        self.strategy = strategy
        self.offset = offset
        self.steps: list[RecoveryStep] = []
        self.failed_execution: str | None = None
        #: executions a fork or fresh run replaces once it completes
        self.replaced: list[str] = []
        #: the failed execution's records at its first failure, newest first (for "earlier" and "fresh")
        self.history: list[Any] = []

    async def first(self, resume: bool) -> Any:
        if self.execution_id is not None:
            return await self._first_named(self.execution_id, resume)
        previous = await self._unfinished_with_same_inputs() if resume else None
        if previous is not None:
            self.failed_execution = previous
            return await self._attempt(0, "resume", previous, None, lambda: self.owner.recover_and_continue(
                execution_id=previous, allow_unsafe_rerun=self.allow_unsafe_rerun))
        return await self._attempt(0, "run", None, None, lambda: self.owner.run(self.inputs))

    async def _first_named(self, name: str, resume: bool) -> Any:
        """The named run: started, or (``resume``) the stored execution of that name continued by
        ``run(..., resume=True)``, which refuses one of another graph or run with other inputs."""
        owner = self.owner
        head = await owner._planner.head(name) if resume else None
        if head is not None and head.unfinished:
            self.failed_execution = name
            step = "resume"
        else:
            step = "run"
        return await self._attempt(0, step, name if step == "resume" else None, None,
                                   lambda: owner.run(self.inputs, execution_id=name, resume=resume))

    async def retry(self, attempt: int) -> Any:
        if self.failed_execution is None:  # nothing was stored: nothing ran, so run it again
            return await self._attempt(attempt, "fresh", None, None, lambda: self.owner.run(self.inputs))
        step = "last" if self.strategy == "last" else ("last", "earlier", "fresh")[min(attempt, 3) - 1]
        if step == "last":
            execution_id = self.failed_execution
            return await self._attempt(attempt, "last", execution_id, None, lambda: self.owner.recover_and_continue(
                execution_id=execution_id, allow_unsafe_rerun=self.allow_unsafe_rerun))
        checkpoint_id = self._earlier() if step == "earlier" else canonical_checkpoint_id(self.failed_execution, 0)
        if checkpoint_id is None:
            checkpoint_id, step = canonical_checkpoint_id(self.failed_execution, 0), "fresh"
        replaced = [self.failed_execution, *self.replaced]

        async def fork() -> Any:
            return await fork_replacing(self.owner, self.owner._load(checkpoint_id), replaced,
                                        allow_unsafe_rerun=self.allow_unsafe_rerun)

        return await self._attempt(attempt, step, self.failed_execution, checkpoint_id, fork, fork=True)

    def _earlier(self) -> str | None:
        boundaries = [h for h in self.history if h.status != FAILED and h.seq > 0]
        return boundaries[self.offset].checkpoint_id if len(boundaries) > self.offset else None

    async def _attempt(self, attempt: int, step: str, execution_id: str | None, checkpoint_id: str | None,
                       call: Callable[[], Any], *, fork: bool = False) -> Any:
        record = RecoveryStep(attempt, step, execution_id, checkpoint_id)
        self.steps.append(record)
        self.owner._runner.last_execution_id = None  # set again only by an execution this attempt starts
        log.info("run_with_recovery (%s) attempt %d: %s%s%s", self.strategy, attempt, step,
                 f" of execution {execution_id}" if execution_id else "",
                 f" from checkpoint {checkpoint_id}" if checkpoint_id else "")
        try:
            result = await call()
        except BaseException as exc:
            record.outcome = "refused" if isinstance(exc, SparkCkptError) else "failed"
            record.error = f"{type(exc).__name__}: {exc}"
            await self._note_failure(step)
            record.execution_id = record.execution_id or self.failed_execution
            raise
        record.outcome = "completed"
        ran = self.owner._runner.last_execution_id
        if ran is not None:
            record.execution_id = ran
        return result

    async def _note_failure(self, step: str) -> None:
        ran = self.owner._runner.last_execution_id  # None: the attempt failed before an execution started
        if ran is not None and await self.owner._planner.head(ran) is None:
            ran = None  # nothing of it was stored
        if self.failed_execution is None and step in ("run", "fresh"):
            self.failed_execution = ran
        elif ran is not None and ran != self.failed_execution and ran not in self.replaced:
            self.replaced.append(ran)  # a fork that failed in turn: replaced too when the next one starts
        if self.failed_execution is not None and not self.history:
            self.history = await self.owner.backend.alist(execution_id=self.failed_execution)

    async def _unfinished_with_same_inputs(self) -> str | None:
        owner = self.owner
        wanted = dump_run_input(self.inputs)
        heads = await owner.backend.aexecutions(graph_id=owner.graph_id, unfinished_only=True, limit=RESUME_SCAN)
        for head in heads:
            if head.kind != "graph":
                continue
            start = owner._start_record(head.execution_id)  # None: not this run's, as far as can be told
            # an update_state() fork runs on a changed state: not a run of these inputs to resume
            if start is not None and identical(start.run_input, wanted) and "state_update" not in start.extras:
                return head.execution_id
        return None


async def run_with_recovery(
    owner: CheckpointedGraph, inputs: Any, *, max_retries: int, strategy: str, backoff: Any, retry_on: Any,
    offset: int, resume: bool, allow_unsafe_rerun: bool = False, execution_id: str | None = None,
) -> Any:
    retryable = _check_arguments(strategy, max_retries, backoff, retry_on, offset)
    if execution_id is not None and owner.config.enabled:
        from ..executions import check_execution_id

        check_execution_id(execution_id, owner.backend, owner.graph_id)
    loop = RecoveryLoop(owner, inputs, strategy, offset, allow_unsafe_rerun, execution_id)
    attempt = 0
    try:
        try:
            return await loop.first(resume)
        except BaseException as exc:
            if _not_retried(exc) or not isinstance(exc, retryable) or max_retries == 0:
                raise
            if loop.failed_execution is None and isinstance(exc, SparkCkptError):
                raise  # refused before anything was stored (a RestoreConflictError, a lease...): nothing to recover
            last_error: BaseException = exc
        while True:
            attempt += 1
            if isinstance(last_error, LeaseError):
                raise last_error  # another worker holds it: never run or fork its work beside it
            refused = isinstance(last_error, SparkCkptError) and loop.steps[-1].step != "run"
            if refused and strategy == "last":
                raise last_error
            log.warning("run_with_recovery: attempt %d of %d after %s: %s", attempt, max_retries,
                        type(last_error).__name__, last_error)
            await asyncio.sleep(_delay(backoff, attempt))
            try:
                return await loop.retry(attempt)
            except BaseException as exc:
                if _not_retried(exc) or not (isinstance(exc, retryable) or isinstance(exc, SparkCkptError)):
                    raise
                if attempt >= max_retries:
                    raise
                last_error = exc
    finally:
        _report(owner, loop)


def _report(owner: CheckpointedGraph, loop: RecoveryLoop) -> None:
    if len(loop.steps) == 1 and loop.steps[0].step == "run":
        return  # no recovery happened: last_recovery is what the run left
    report = owner.last_recovery
    if report is None or report.execution_id not in {s.execution_id for s in loop.steps}:
        from ..engine.recovery import RecoveryReport

        report = owner.last_recovery = RecoveryReport(execution_id=loop.steps[-1].execution_id or "",
                                                      from_checkpoint=loop.steps[-1].from_checkpoint)
    report.strategy = loop.strategy
    report.steps = list(loop.steps)


async def fork_replacing(owner: CheckpointedGraph, record: Any, replaced: list[str], *,
                         allow_unsafe_rerun: bool = False) -> Any:
    """Continue ``record`` as a new execution that replaces the executions ``replaced``.

    In two steps, so a crash anywhere leaves one way on: first each replaced execution gets a record
    handing it over (still unfinished, ``superseded_by`` the fork's id, ``fork_from`` the record); any
    recovery of it follows that to the fork (``finish_replacement``), starting the fork itself if it never
    stored a record. Once the fork completed, each is closed (completed, ``superseded_by``). What would
    refuse the fork is checked before anything is written."""
    skips = {**{k: None for k in record.skip_nodes}, **record.skip_outputs, **owner._pending_skips}
    owner._check_continuable(record, fork=True, allow_unsafe_rerun=allow_unsafe_rerun, skips=skips)
    fork_id = new_id("ex-")
    for execution_id in replaced:
        await mark_superseded(owner, execution_id, fork_id, fork_from=record.checkpoint_id, final=False)
    result = await owner._continue(record, same_execution=False, fell_back=[], fork_id=fork_id,
                                   allow_unsafe_rerun=allow_unsafe_rerun)
    for execution_id in replaced:
        await mark_superseded(owner, execution_id, fork_id, fork_from=record.checkpoint_id, final=True)
    return result


async def finish_replacement(owner: CheckpointedGraph, handover: Any, *, wait: bool | float,
                             allow_unsafe_rerun: bool) -> Any:
    """Recovering an execution handed over to a fork (``fork_replacing``): continue the fork (start it,
    under its id, if it never stored a record), then close the execution."""
    fork_id, fork_from = handover.extras["superseded_by"], handover.extras.get("fork_from")
    log.info("execution %s was handed over to execution %s; continuing that one", handover.execution_id, fork_id)
    if await owner._planner.head(fork_id) is None and isinstance(fork_from, str):
        result = await owner._continue(owner._load(fork_from), same_execution=False, fell_back=[], fork_id=fork_id,
                                       allow_unsafe_rerun=allow_unsafe_rerun)
    else:
        result = await owner.recover_and_continue(execution_id=fork_id, wait=wait,
                                                  allow_unsafe_rerun=allow_unsafe_rerun)
    await mark_superseded(owner, handover.execution_id, fork_id, fork_from=fork_from, final=True)
    return result


async def mark_superseded(owner: CheckpointedGraph, execution_id: str, by: str, *, fork_from: str | None,
                          final: bool) -> None:
    """A record on ``execution_id``'s last boundary naming the execution ``by`` that replaces it
    (``extras["superseded_by"]``): still unfinished while ``by`` runs (``final=False``, a hand-over),
    completed once ``by`` completed. Raises ``LeaseError`` when another live worker holds it."""
    planner = owner._planner
    lease, head = await planner.claim(execution_id, wait=False)
    if lease is None:
        return  # completed meanwhile
    try:
        record, _ = await planner.latest_verified(execution_id, head)
        ex = owner._runner.new_execution(execution_id, record.run_input, next_seq=head.seq + 1, lease=lease)
        data = ex.builder.fork_start(record, seq=head.seq + 1, inflight={}, skip={})
        data.update(status=COMPLETED if final else RUNNING,
                    extras={"structure": data["extras"]["structure"], "superseded_by": by, "fork_from": fork_from})
        await ex.writer.store(data, wait=True)
        await ex.writer.flush()
        log.info("execution %s is %s: execution %s replaces it", execution_id,
                 "closed" if final else "handed over", by)
    finally:
        from ..backends.leases import release_quietly

        await release_quietly(owner.backend, lease)
