"""Scheduled tasks (Spark's ``Graph.run_tasks``) through a checkpointed graph, and finishing a batch
after a crash.

Each task of a batch is its own execution (``<batch id>.<task id>``), run, checkpointed and recovered
like any other. The batch keeps its progress in the same store, under the graph id
``<graph id>~tasks`` (so the graph's own checkpoints never include it), as one execution per batch
holding the tasks as given, and after each task that completed: its execution and the campaign usage
it was charged. The batch holds its own lease while it runs: two workers never run one batch.

Finishing a batch (``recover_tasks``, or ``recover_and_continue()`` when the newest unfinished work is
a batch's) rebuilds the scheduler from the stored tasks (or takes the one given), charges the
completed tasks' usage to their campaigns again, marks them completed without running them (their
stored results are the batch's results), continues the task that was in flight from its last
checkpoint, retries the ones that failed from theirs, and runs the rest; dependencies and campaign
budgets hold as in an uninterrupted batch.

Invariants: the progress record of a task (its execution, result and usage) is written after the
task's execution completed and its usage was charged, before the callbacks run; a completed task's
execution, found completed in the store but not yet in the progress record (a crash in between), is
taken as completed, not run again, with the run time its records show. The batch's lease is renewed
while it runs and checked before each task: a worker whose batch was taken over stops.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from typing import TYPE_CHECKING, Any, Callable

from ..codec import to_data
from ..engine.store_path import LeaseRenewer, RecordWriter
from ..errors import ConfigError, LeaseError, NothingToRecoverError, UnrecoverableExecutionError, UnsafeToRetryError
from ..model import COMPLETED, FAILED, RUNNING, GraphCheckpoint, GraphMetadata, new_id
from .graph_state import dump_message, dump_task, load_message, load_task

if TYPE_CHECKING:
    from .graph import CheckpointedGraph

log = logging.getLogger("spark_ckpt.tasks")

#: the suffix of the graph id batches are stored under
BATCHES = "~tasks"


def batches_graph_id(graph_id: str) -> str:
    return graph_id + BATCHES


def task_execution_id(batch_id: str, task_id: str) -> str:
    """The execution of ``task_id`` in ``batch_id``: readable, and unique even where the task id has
    characters an id should not."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", task_id)[:64]
    if safe != task_id:
        safe += "-" + hashlib.sha256(task_id.encode()).hexdigest()[:8]
    return f"{batch_id}.{safe}"


class TaskBatch:
    """One batch of scheduled tasks as this process runs it (see the module docstring)."""

    def __init__(self, owner: CheckpointedGraph, batch_id: str) -> None:
        self.owner = owner
        self.batch_id = batch_id
        self.graph_id = batches_graph_id(owner.graph_id)
        self.manifest: dict[str, Any] = {}
        #: task id -> {"execution_id", "usage", "result"} of the tasks that completed
        self.completed: dict[str, Any] = {}
        self.writer = RecordWriter(owner.backend, owner.codec, durability="sync", owner=owner.worker_id,
                                   ttl_s=owner.config.lease_ttl_s)

    # -- the batch's own records ---------------------------------------------------------------------
    async def start(self, scheduler: Any, options: dict[str, Any]) -> None:
        tasks = getattr(scheduler, "_tasks", None)  # Spark's scheduler keeps its tasks here
        if not isinstance(tasks, dict):
            raise ConfigError("run_tasks needs a Spark TaskScheduler (spark.graphs.tasks.TaskScheduler)")
        existing = await self.owner._planner.head(self.batch_id)
        if existing is not None:
            what = "has completed" if existing.status == COMPLETED else "is unfinished: finish it with recover_tasks(batch_id=...)"
            raise ConfigError(f"task batch {self.batch_id!r} already exists in {self.owner.backend.describe()} and "
                              f"{what}; choose another batch_id. Nothing was run")
        usage = getattr(scheduler, "_campaign_usage", None)  # charged before this batch (Spark's own)
        self.manifest = {"tasks": [dump_task(task) for task in tasks.values()],
                         "completed_before": sorted(scheduler.completed), "options": options,
                         "campaign_usage": dict(usage) if isinstance(usage, dict) else {}}
        await self._store(RUNNING)

    async def resume(self) -> None:
        """Take the batch up: its lease first (another worker may be finishing it), then its progress."""
        planner = self.owner._planner
        lease, head = await planner.claim(self.batch_id, False, graph_id=self.graph_id)
        if lease is None:
            raise NothingToRecoverError(f"task batch {self.batch_id!r} has already completed")
        self.writer.lease = lease
        self.writer.next_seq = self.writer.first_seq = head.seq + 1
        try:
            record = planner.decode(self.owner.backend.get(head.checkpoint_id).blob, head)
        except BaseException:
            await self.writer.release()
            raise
        self.manifest = record.run_input
        self.completed = dict(record.graph_state.get("completed", {}))

    async def task_completed(self, task_id: str, execution_id: str, usage: dict[str, Any], outcome: Any) -> None:
        self.completed[task_id] = {"execution_id": execution_id, "usage": usage, "result": dump_message(outcome)}
        await self._store(RUNNING)

    async def finish(self, status: str) -> None:
        try:
            await self._store(status)
        finally:
            if status != COMPLETED:
                await self.writer.release()

    async def _store(self, status: str) -> None:
        seq = self.writer.next_seq
        record = GraphCheckpoint(
            checkpoint_id=new_id("ck-"), seq=seq, timestamp=time.time(),
            graph_metadata=GraphMetadata(graph_id=self.graph_id, graph_version="tasks", execution_id=self.batch_id),
            status=status, run_input=self.manifest, graph_state={"completed": self.completed},
        )
        await self.writer.store(to_data(record), wait=True)

    def scheduler(self) -> Any:
        from spark.graphs.tasks import TaskScheduler

        options = self.manifest.get("options", {})
        scheduler = TaskScheduler([load_task(t) for t in self.manifest["tasks"]],
                                  completed=self.manifest.get("completed_before", []),
                                  concurrency_limit=options.get("concurrency_limit"))
        for campaign, usage in (self.manifest.get("campaign_usage") or {}).items():
            scheduler._campaign_usage[campaign] = dict(usage)  # as it was when the batch started
        return scheduler


async def run_tasks(
    owner: CheckpointedGraph, scheduler: Any, *, continue_on_error: bool = False,
    on_task_completed: Callable[..., Any] | None = None, on_task_failed: Callable[..., Any] | None = None,
    usage_provider: Callable[..., Any] | None = None, batch_id: str | None = None, resumed: TaskBatch | None = None,
    allow_unsafe_rerun: bool = False,
) -> Any:
    """Spark's ``Graph.run_tasks`` loop, each task its own checkpointed execution (module docstring)."""
    # Spark's own callback caller: sync or async callbacks behave exactly as in bare run_tasks
    from spark.graphs.graph import _call_optional
    from spark.graphs.tasks import CampaignBudgetError, TaskBatchResult, TaskDependencyError

    results = TaskBatchResult()
    batch = resumed
    if batch is None:
        batch = TaskBatch(owner, batch_id or new_id("batch-"))
        await batch.start(scheduler, {"continue_on_error": continue_on_error,
                                      "concurrency_limit": getattr(scheduler, "_concurrency_limit", None)})
    else:  # finishing a batch: what completed before is charged and marked, not run again
        tasks = getattr(scheduler, "_tasks", {})
        for task_id, done in batch.completed.items():
            task = tasks.get(task_id)
            if task is None:
                continue
            usage = done.get("usage") or {}
            scheduler.record_campaign_usage(task, tokens=int(usage.get("tokens") or 0),
                                            seconds=float(usage.get("seconds") or 0.0),
                                            cost=float(usage.get("cost") or 0.0))
            scheduler.mark_completed(task_id)
            results.completed[task_id] = load_message(done["result"]) if done.get("result") is not None else None
        if batch.completed:  # Spark keeps graph state between runs: the next task starts where the last ended
            await owner._restore_task_end(list(batch.completed.values())[-1]["execution_id"])
    owner.last_batch = batch.batch_id

    async def failed(task: Any, exc: Exception) -> None:
        """A task failed (as Spark's loop: marked, reported; the batch stops unless continue_on_error)."""
        scheduler.mark_failed(task.task_id)
        results.failed[task.task_id] = exc
        await _call_optional(on_task_failed, task, exc)
        if not continue_on_error:
            raise exc

    renewer = LeaseRenewer(batch.writer)
    try:
        while True:
            task = scheduler.acquire_next_task()
            if task is None:
                break
            if not task.task_id:
                raise ValueError("Scheduled tasks must define task_id")
            await batch.writer.check_lease()  # another worker took the batch over: stop, run nothing more
            task_id = task.task_id
            execution_id = task_execution_id(batch.batch_id, task_id)
            start_time = time.perf_counter()
            try:
                outcome, seconds = await owner._run_task(execution_id, task, allow_unsafe_rerun)
            except (LeaseError, UnrecoverableExecutionError, UnsafeToRetryError):
                raise  # not the task's failure: the batch stops (it is finished later, from the store)
            except Exception as exc:
                await failed(task, exc)
                continue

            # (a task found completed in the store ran before the crash: its run time is the stored one)
            duration = time.perf_counter() - start_time if seconds is None else seconds
            usage = {"seconds": duration, "tokens": 0, "cost": 0.0}
            if usage_provider:
                user_usage = await _call_optional(usage_provider, task, outcome) or {}
                if isinstance(user_usage, dict):
                    usage.update({k: user_usage[k] for k in ("tokens", "seconds", "cost") if k in user_usage})
            try:
                scheduler.record_campaign_usage(task, tokens=int(usage.get("tokens") or 0),
                                                seconds=float(usage.get("seconds") or 0.0),
                                                cost=float(usage.get("cost") or 0.0))
            except CampaignBudgetError as budget_err:
                await failed(task, budget_err)
                continue

            scheduler.mark_completed(task_id)
            results.completed[task_id] = outcome
            await batch.task_completed(task_id, execution_id, usage, outcome)
            await _call_optional(on_task_completed, task, outcome)

        pending = [task_id for task_id in scheduler.pending if task_id not in results.failed]
        if pending:
            error = TaskDependencyError(
                "Unresolved task dependencies prevented execution: " + ", ".join(sorted(pending))
            )
            for task_id in pending:
                results.failed.setdefault(task_id, error)
            if not continue_on_error:
                raise error
    except BaseException as exc:
        renewer.stop()
        # another worker owns the batch now (its records are not ours), or a task's recovery was refused
        # before it ran anything (the batch stays unfinished: recovered again once allowed)
        if isinstance(exc, UnsafeToRetryError):
            await batch.writer.release()
        elif not isinstance(exc, LeaseError):
            await batch.finish(FAILED)
        raise
    renewer.stop()
    await batch.finish(COMPLETED if not results.failed else FAILED)
    return results


async def unfinished_batches(owner: CheckpointedGraph) -> list[Any]:
    """The heads of this graph's unfinished batches, newest first."""
    return await owner.backend.aexecutions(graph_id=batches_graph_id(owner.graph_id), unfinished_only=True)


def batch_holding(batches: list[Any], execution_id: str | None) -> Any:
    """The batch (of ``batches``) that ``execution_id`` is a task of, or None."""
    if execution_id is not None:
        for head in batches:
            if execution_id.startswith(head.execution_id + "."):
                return head
    return None


async def newest_unfinished_work(owner: CheckpointedGraph) -> tuple[str | None, str | None]:
    """``(batch id, None)`` when the newest unfinished work of the graph is a batch's (one of its tasks,
    or the batch between two tasks), else ``(None, execution id)``; ``NothingToRecoverError`` when
    there is neither."""
    planner = owner._planner
    batches = await unfinished_batches(owner)
    execution_id = None
    try:
        execution_id = await planner.newest_unfinished()
    except NothingToRecoverError:
        if not batches:
            raise
    batch = batch_holding(batches, execution_id)
    if batch is None and batches and (
            execution_id is None or batches[0].created_at >= (await planner.head(execution_id)).created_at):
        batch = batches[0]
    return (batch.execution_id, None) if batch is not None else (None, execution_id)


async def recover_tasks(
    owner: CheckpointedGraph, *, batch_id: str | None = None, scheduler: Any = None, allow_unsafe_rerun: bool = False,
    **callbacks: Any,
) -> Any:
    """Finish a batch after a crash or a failure (module docstring). ``scheduler``: the batch's tasks
    as the caller built them again (default: rebuilt from the stored tasks)."""
    if batch_id is None:
        batches = await unfinished_batches(owner)
        if not batches:
            raise NothingToRecoverError(
                f"graph {owner.graph_id!r} has no unfinished task batch in {owner.backend.describe()}"
            )
        batch_id = batches[0].execution_id
    batch = TaskBatch(owner, batch_id)
    await batch.resume()
    if scheduler is None:
        scheduler = batch.scheduler()
    options = batch.manifest.get("options", {})
    callbacks.setdefault("continue_on_error", options.get("continue_on_error", False))
    log.info("finishing task batch %s: %d task(s) completed before", batch.batch_id, len(batch.completed))
    return await run_tasks(owner, scheduler, resumed=batch, allow_unsafe_rerun=allow_unsafe_rerun, **callbacks)

