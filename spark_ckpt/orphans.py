"""Orphan recovery: a worker that finishes the executions whose worker died.

    report = await spark_ckpt.recover_orphans(build_graph, config, concurrency=4)   # one sweep
    await spark_ckpt.recover_orphans(build_graph, config, poll_s=10)               # a long-lived worker
    $ spark-ckpt worker myapp.workflows:build_graph --store postgresql://... --concurrency 4

An *orphan* is an unfinished execution nobody runs any more: its owner's process died (seen at once on
the same host) or its lease expired (a worker elsewhere stopped renewing it). Each sweep lists the store's
unfinished executions, oldest first, and for each one:

* ``waiting`` (an approval gate): skipped, it waits for a person, not for a worker;
* ``failed`` because its run raised: skipped, the error went to its caller (``run_with_recovery`` may be
  retrying it); ``include_failed=True`` recovers those too. A run that was *interrupted* (cancelled,
  Ctrl-C, a worker stopping) is recovered: it did not fail, it was stopped;
* a task of an unfinished task batch: skipped, the batch's recovery continues it;
* a graph id the factory does not serve: skipped;
* otherwise its lease is claimed: held by a live worker -> skipped quietly (``owned``); then a fresh
  wrapper from the factory continues it (``recover_and_continue``, ``recover_tasks`` for a batch).

Invariants: the lease decides who recovers an execution, so several workers (threads, processes, hosts)
started at once recover each orphan exactly once; a live owner's execution is never touched (only once
its lease expired can it be taken, and from then on the stalled owner's writes are refused by the
fencing token). One execution's failure never stops the others. Each execution gets one log line
(logger ``spark_ckpt.orphans``; ``owned`` at DEBUG) and one ``OrphanOutcome``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterable

import attrs

from .backends.leases import claim, release_quietly, worker_identity
from .errors import ConfigError, ExecutionCompletedError, LeaseError, NothingToRecoverError, SparkCkptError
from .model import AGENT, FAILED, WAITING, CheckpointHeader
from .orphan_factories import WrapperFactory, close_quietly, same_store

log = logging.getLogger("spark_ckpt.orphans")

#: outcomes
RECOVERED, WAITED, FAILED_OUTCOME, REFUSED, SKIPPED = "recovered", "waiting", "failed", "refused", "skipped"
#: a failure of these types is an interruption (the process or task was stopped), not the run failing
INTERRUPTIONS = frozenset({"CancelledError", "KeyboardInterrupt", "SystemExit", "GeneratorExit"})
#: the graph id suffix a task batch's own execution is stored under (``adapters.graph_tasks.BATCHES``)
BATCHES = "~tasks"


@attrs.define
class OrphanOutcome:
    """What a worker did with one unfinished execution.

    ``outcome``: "recovered" (continued to completion), "waiting" (continued up to an approval gate),
    "failed" (continued, and the run raised: ``error``), "refused" (spark-ckpt refused to continue it
    before anything ran, e.g. ``UnsafeToRetryError``, or the factory failed: ``error``), "skipped".
    ``reason`` (a skip's): "owned" (a live worker holds it), "waiting", "failed", "in-batch",
    "unknown-graph", "not-newest" (an agent's older run), "completed" (finished meanwhile), "not-started"
    (an ``update_state()`` fork nobody continued yet).
    """

    execution_id: str
    graph_id: str
    kind: str
    outcome: str
    reason: str = ""
    detail: str = ""
    error: BaseException | None = attrs.field(default=None, repr=False)
    result: Any = attrs.field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.outcome not in (FAILED_OUTCOME, REFUSED)

    def line(self) -> str:
        """One line for a log or a terminal."""
        what = self.outcome if not self.reason or self.outcome != SKIPPED else f"skipped ({self.reason})"
        return f"{what}: {self.kind} {self.graph_id!r} execution {self.execution_id}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {"execution_id": self.execution_id, "graph_id": self.graph_id, "kind": self.kind,
                "outcome": self.outcome, "reason": self.reason, "detail": self.detail,
                "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}"}


async def recover_orphans(
    factory: Any, config: Any = None, *, concurrency: int = 1, graph_ids: Iterable[str] | str | None = None,
    wait: bool | float = False, poll_s: float | None = None, include_failed: bool = False,
    on_outcome: Callable[[OrphanOutcome], Any] | None = None,
) -> list[OrphanOutcome]:
    """Recover every orphaned execution of the store (see the module docstring); returns one
    ``OrphanOutcome`` per unfinished execution found, in the order they ended.

    ``factory``: builds a fresh ``CheckpointedGraph``/``CheckpointedAgent`` for a graph id
    (``spark_ckpt.orphan_factories`` lists the forms: ``factory(graph_id)``, a zero-argument factory, a
    ``{graph_id: factory}`` mapping, a ``"module:function"`` string). ``config``: the store to scan
    (default: the config of the wrappers a zero-argument factory or mapping builds); the wrappers must
    use the same store. ``concurrency``: recoveries run at once (asyncio tasks, each its own wrapper).
    ``graph_ids``: only these graphs (default: the factory's, else every graph in the store).
    ``wait``: wait for a live owner's lease to end (True: up to two lease lifetimes; a number: seconds)
    instead of skipping its execution. ``poll_s``: keep sweeping every ``poll_s`` seconds until cancelled
    (a long-lived worker; cancelling stops the recoveries under way, which release their leases, so the
    next worker continues them). ``on_outcome``: called with each outcome as it ends (sync or async).
    """
    _check_arguments(concurrency, poll_s, wait)
    wanted = [graph_ids] if isinstance(graph_ids, str) else None if graph_ids is None else list(graph_ids)
    if wanted is not None and not all(isinstance(g, str) and g for g in wanted):
        raise ConfigError(f"graph_ids takes graph id strings, got {graph_ids!r}")
    wrappers = WrapperFactory(factory, config)
    try:
        config = config if config is not None else wrappers.learned_config()
        if config is None:
            raise ConfigError("recover_orphans(factory(graph_id), config=None): pass the config of the store to "
                              "scan (the factory only says which graph an execution needs)")
        wrappers.config = config
        backend = config.open_backend()
        try:
            worker = OrphanWorker(
                wrappers, backend, config.make_codec(), ttl_s=config.lease_ttl_s, concurrency=concurrency,
                graph_ids=wanted if wanted is not None else wrappers.known_ids, wait=wait,
                include_failed=include_failed, on_outcome=on_outcome,
            )
            if poll_s is None:
                return await worker.sweep()
            await worker.serve(poll_s)
            return worker.outcomes  # pragma: no cover - serve() only ends by cancellation
        finally:
            if config.owns_backend:
                backend.close()
    finally:
        wrappers.close_spares()


def _check_arguments(concurrency: Any, poll_s: Any, wait: Any) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency must be a whole number >= 1, got {concurrency!r}")
    if poll_s is not None and (isinstance(poll_s, bool) or not isinstance(poll_s, (int, float)) or poll_s <= 0):
        raise ConfigError(f"poll_s must be seconds > 0 (or None: one sweep), got {poll_s!r}")
    if not isinstance(wait, (bool, int, float)) or (not isinstance(wait, bool) and wait < 0):
        raise ConfigError(f"wait must be True/False or seconds >= 0, got {wait!r}")


class OrphanWorker:
    """The sweeps of one ``recover_orphans`` call (see the module docstring)."""

    def __init__(self, wrappers: WrapperFactory, backend: Any, codec: Any, *, ttl_s: float, concurrency: int,
                 graph_ids: list[str] | None, wait: bool | float, include_failed: bool,
                 on_outcome: Callable[[OrphanOutcome], Any] | None) -> None:
        self.wrappers = wrappers
        self.backend = backend
        self.codec = codec
        self.ttl_s = ttl_s
        self.concurrency = concurrency
        self.graph_ids = graph_ids
        self.wait = wait
        self.include_failed = include_failed
        self.on_outcome = on_outcome
        self.owner = worker_identity()
        self.outcomes: list[OrphanOutcome] = []
        #: execution id -> the head seq it had when it was last skipped, refused or failed: a polling
        #: worker neither retries nor logs it again until the execution changes
        self.settled: dict[str, int] = {}
        self.in_flight: set[str] = set()

    # -- sweeping ---------------------------------------------------------------------------------------
    async def scan(self) -> tuple[list[CheckpointHeader], set[str]]:
        """The unfinished executions to look at, oldest first, and the ids of the unfinished task batches."""
        if self.graph_ids is None:
            heads = await self.backend.aexecutions(unfinished_only=True)
        else:
            heads = []
            for graph_id in self.graph_ids:
                for gid in (graph_id, graph_id + BATCHES):
                    heads += await self.backend.aexecutions(graph_id=gid, unfinished_only=True)
        heads.sort(key=lambda h: (h.created_at, h.execution_id))
        batches = {h.execution_id for h in heads if h.graph_id.endswith(BATCHES)}
        fresh = [h for h in heads if h.execution_id not in self.in_flight
                 and self.settled.get(h.execution_id) != h.seq]
        return fresh, batches

    async def sweep(self) -> list[OrphanOutcome]:
        """One pass over the unfinished executions, ``concurrency`` at a time."""
        heads, batches = await self.scan()
        slots = asyncio.Semaphore(self.concurrency)

        async def one(head: CheckpointHeader) -> OrphanOutcome:
            async with slots:
                return await self._handle(head, batches)

        start = len(self.outcomes)
        await asyncio.gather(*(one(h) for h in heads))
        return self.outcomes[start:]

    async def serve(self, poll_s: float) -> None:
        """Sweep every ``poll_s`` seconds, starting a recovery as soon as a slot is free, until cancelled."""
        slots = asyncio.Semaphore(self.concurrency)
        running: set[asyncio.Task] = set()
        try:
            while True:
                heads, batches = await self.scan()
                for head in heads:
                    await slots.acquire()
                    self.in_flight.add(head.execution_id)
                    task = asyncio.create_task(self._handle(head, batches))
                    running.add(task)
                    task.add_done_callback(lambda t: (running.discard(t), slots.release()))
                await asyncio.sleep(poll_s)
        finally:
            for task in list(running):
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    # -- one execution ----------------------------------------------------------------------------------
    async def _handle(self, head: CheckpointHeader, batches: set[str]) -> OrphanOutcome:
        self.in_flight.add(head.execution_id)
        try:
            outcome = await self._decide_and_recover(head, batches)
        except Exception as exc:  # the store failing for this one (a lost connection...): the others go on
            outcome = OrphanOutcome(head.execution_id, head.graph_id, head.kind, FAILED_OUTCOME, type(exc).__name__,
                                    f"could not be looked at: {type(exc).__name__}: {exc}", error=exc)
        except asyncio.CancelledError:
            log.info("stopped: %s %r execution %s (its lease is released; the next worker continues it)",
                     head.kind, head.graph_id, head.execution_id)
            raise
        finally:
            self.in_flight.discard(head.execution_id)
        if outcome.outcome in (SKIPPED, REFUSED, FAILED_OUTCOME) and outcome.reason != "owned":
            fresh = await self._head_or_none(head.execution_id)
            if fresh is not None:
                self.settled[head.execution_id] = fresh.seq
        self._log(outcome)
        self.outcomes.append(outcome)
        if self.on_outcome is not None:
            called = self.on_outcome(outcome)
            if asyncio.iscoroutine(called):
                await called
        return outcome

    async def _decide_and_recover(self, head: CheckpointHeader, batches: set[str]) -> OrphanOutcome:
        execution_id, graph_id = head.execution_id, head.graph_id
        is_batch = graph_id.endswith(BATCHES)
        kind = "task batch" if is_batch else head.kind
        base_id = graph_id[: -len(BATCHES)] if is_batch else graph_id

        def outcome(what: str, reason: str, detail: str, **kw: Any) -> OrphanOutcome:
            return OrphanOutcome(execution_id, graph_id, kind, what, reason, detail, **kw)

        if head.status == WAITING:
            return outcome(SKIPPED, "waiting", "waits at an approval gate for a person (`spark-ckpt approvals`), "
                                               "not for a worker; continue it with recover_and_continue() once resolved")
        batch = next((b for b in batches if execution_id.startswith(b + ".")), None) if not is_batch else None
        if batch is not None:
            return outcome(SKIPPED, "in-batch", f"a task of unfinished task batch {batch}: recovered with that batch")
        if head.seq == 0 and head.kind != AGENT and self._is_unstarted_edit(head):
            return outcome(SKIPPED, "not-started", "an update_state() fork nobody has continued yet: it waits for "
                                                   "continue_from_checkpoint(), not for a worker")
        if head.status == FAILED and not self.include_failed:
            cause = self._failure_cause(head)
            if cause not in INTERRUPTIONS:
                return outcome(SKIPPED, "failed", f"its run failed ({cause or 'error unknown'}) and the error went to "
                                                  "its caller; include_failed=True (--include-failed) recovers it")
        if not self.wrappers.serves(base_id):
            known = self.wrappers.known_ids
            return outcome(SKIPPED, "unknown-graph", f"the factory serves {', '.join(map(repr, known))}" if known
                           else f"the factory returned None for graph {base_id!r}")

        # The lease decides: held by a live worker -> not an orphan. Claimed here only to see that;
        # released at once, and the wrapper claims it again for its own run (another worker taking it
        # in between makes that claim fail: it is then theirs).
        try:
            lease, head = await claim(self.backend, execution_id, self.owner, self.ttl_s, self.wait,
                                      lambda: self._read_head(execution_id))
        except LeaseError as exc:
            return outcome(SKIPPED, "owned", str(exc))
        except NothingToRecoverError:
            return outcome(SKIPPED, "completed", "gone from the store meanwhile")
        if lease is None:
            return outcome(SKIPPED, "completed", "another worker completed it meanwhile")
        await release_quietly(self.backend, lease)
        return await self._recover(head, base_id, is_batch, outcome)

    async def _recover(self, head: CheckpointHeader, base_id: str, is_batch: bool, outcome: Any) -> OrphanOutcome:
        execution_id = head.execution_id
        try:
            wrapper = self.wrappers.build(base_id)
        except Exception as exc:
            return outcome(REFUSED, "factory", f"the factory failed for graph {base_id!r}: {type(exc).__name__}: {exc}",
                           error=exc)
        if wrapper is None:
            return outcome(SKIPPED, "unknown-graph", f"the factory returned None for graph {base_id!r}")
        try:
            if not same_store(wrapper.backend, self.backend):
                raise ConfigError(f"the factory's wrapper for graph {base_id!r} uses {wrapper.backend.describe()}, "
                                  f"but this worker scans {self.backend.describe()}; give both the same store")
            if head.kind == AGENT:
                newest = await self.backend.aexecutions(graph_id=base_id, limit=1)
                if not newest or newest[0].execution_id != execution_id:
                    return outcome(SKIPPED, "not-newest", "an agent continues only its newest run; a newer one exists")
            log.info("recovering %s %r execution %s (status %s, seq %d): its owner is gone or its lease expired",
                     "task batch" if is_batch else head.kind, head.graph_id, execution_id, head.status, head.seq)
            if is_batch:
                result = await wrapper.recover_tasks(batch_id=execution_id)
            elif head.kind == AGENT:
                result = await wrapper.recover_and_continue()
            else:
                result = await wrapper.recover_and_continue(execution_id=execution_id)
        except asyncio.CancelledError:
            raise
        except ExecutionCompletedError as exc:
            return outcome(SKIPPED, "completed", str(exc))
        except LeaseError as exc:
            return outcome(SKIPPED, "owned", f"another worker took it over: {exc}")
        except BaseException as exc:
            if type(exc).__name__ == "ApprovalPendingError":
                return outcome(WAITED, "", "continued up to an approval gate; it waits for a person now", error=exc)
            if isinstance(exc, SparkCkptError):
                return outcome(REFUSED, type(exc).__name__, f"{type(exc).__name__}: {exc}", error=exc)
            if not isinstance(exc, Exception):
                raise
            return outcome(FAILED_OUTCOME, type(exc).__name__, f"the recovered run raised {type(exc).__name__}: {exc}",
                           error=exc)
        finally:
            close_quietly(wrapper)
        report = getattr(wrapper, "last_recovery", None)
        if report is not None and getattr(report, "already_completed", False):
            return outcome(SKIPPED, "completed", "another worker completed it meanwhile", result=result)
        return outcome(RECOVERED, "", _summary(report), result=result)

    # -- reading the store --------------------------------------------------------------------------------
    async def _read_head(self, execution_id: str) -> CheckpointHeader:
        head = await self._head_or_none(execution_id)
        if head is None:
            raise NothingToRecoverError(f"execution {execution_id} is no longer in {self.backend.describe()}")
        return head

    async def _head_or_none(self, execution_id: str) -> CheckpointHeader | None:
        head = await self.backend.aexecution_head(execution_id)
        if head is not None:
            self.codec.index_tags.check(head)  # with encryption on, an index entry must authenticate
        return head

    def _is_unstarted_edit(self, head: CheckpointHeader) -> bool:
        """Whether the execution is only the start record ``update_state()`` wrote (a state edit to be
        continued by a person, never run by a worker on its own)."""
        try:
            from .engine.records import decode_record

            stored = self.backend.get(head.checkpoint_id)
            return "state_update" in decode_record(self.codec, stored.blob, stored.header).extras
        except Exception:
            log.debug("could not read the start record of execution %s", head.execution_id, exc_info=True)
            return False

    def _failure_cause(self, head: CheckpointHeader) -> str | None:
        """The error type a failed execution's newest record names, or None if it cannot be read here."""
        try:
            stored = self.backend.get(head.checkpoint_id)
            if head.kind == AGENT:
                from .model import AgentRecord

                error = self.codec.decode(stored.blob, AgentRecord).error or ""
                return error.partition(":")[0] or None
            from .engine.records import decode_record

            failure = decode_record(self.codec, stored.blob, stored.header).failure
            return failure.error_type if failure is not None else None
        except Exception:
            log.debug("could not read why execution %s failed", head.execution_id, exc_info=True)
            return None

    def _log(self, outcome: OrphanOutcome) -> None:
        level = {RECOVERED: logging.INFO, WAITED: logging.INFO, SKIPPED: logging.INFO}.get(outcome.outcome,
                                                                                            logging.WARNING)
        if outcome.reason == "owned":
            level = logging.DEBUG  # a live worker's execution: the common case of a busy store, not news
        log.log(level, "%s", outcome.line())


def _summary(report: Any) -> str:
    if report is None:
        return "completed"
    replayed, live = len(getattr(report, "replayed", ()) or ()), len(getattr(report, "live", ()) or ())
    source = getattr(report, "from_checkpoint", None)
    return (f"completed from checkpoint {source}: {replayed} visit(s) replayed, {live} run live"
            if source else "completed")


__all__ = ["OrphanOutcome", "OrphanWorker", "recover_orphans"]
