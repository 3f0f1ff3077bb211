"""What to keep: retention rules applied after each run and by ``spark-ckpt prune``.

A rule never deletes a *protected* checkpoint: any checkpoint of an unfinished execution (recovery
reads the whole chain of one, see ``protected_ids``). Nor does pruning ever remove a record a kept one
needs: most records hold only what changed since the one before, so when an execution's older records
go and newer ones stay, the oldest kept one is first made to stand alone (``rebase``, given by a
caller that can decode records); without that, or if it fails, that execution's older records stay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .backends.base import Backend
from .markers import hookimpl
from .model import COMPLETED, GRAPH, CheckpointHeader

#: ``rebase(header) -> seq | None``: make the record at ``header`` (or the boundary record it is built on)
#: stand alone in place; the seq from which its execution's records must stay (``engine.records.rebase``)
Rebase = Callable[[CheckpointHeader], "int | None"]

class CountRetention:
    """Keep the newest ``retention_count`` checkpoints of each graph (plus protected ones)."""

    def __init__(self, config: Any) -> None:
        self.keep = config.retention_count

    def select_for_deletion(
        self, headers: Sequence[CheckpointHeader], protected: set[str]
    ) -> list[CheckpointHeader]:
        if self.keep is None:
            return []
        return [h for h in headers[self.keep :] if h.checkpoint_id not in protected]


class AgeRetention:
    """Delete checkpoints older than ``retention_max_age_s`` seconds (protected ones excepted)."""

    def __init__(self, config: Any) -> None:
        self.max_age = config.retention_max_age_s

    def select_for_deletion(
        self, headers: Sequence[CheckpointHeader], protected: set[str], now: float | None = None
    ) -> list[CheckpointHeader]:
        import time

        if self.max_age is None:
            return []
        cutoff = (now if now is not None else time.time()) - self.max_age
        return [h for h in headers if h.created_at < cutoff and h.checkpoint_id not in protected]


def protected_ids(backend: Backend, graph_id: str | None) -> set[str]:
    """Ids recovery may still need: every checkpoint of each unfinished execution.

    Graph checkpoints store only the visits since the previous one, so recovery reads the whole
    chain of an unfinished execution; none of it may go. (A finished execution's earlier checkpoints
    are free to prune once its final one stands alone: ``prune`` rebases it first when it does not.)
    """
    keep: set[str] = set()
    for latest in backend.executions(graph_id=graph_id, unfinished_only=True):
        keep.add(latest.checkpoint_id)
        for header in backend.list(execution_id=latest.execution_id):
            keep.add(header.checkpoint_id)
    return keep


def plan_prune(
    backend: Backend, rules: Iterable[Any], graph_id: str | None = None, *, kinds: Iterable[str] = (GRAPH,),
) -> list[CheckpointHeader]:
    """Headers the rules would delete for ``graph_id`` (all graphs if None), newest first, keeping what
    kept graph records need (nothing is rebased: see ``prune``).

    Only records of ``kinds`` are considered. Agent records (kind "agent") form delta chains whose
    bases only the agent adapter can see, so they are pruned by ``CheckpointedAgent.prune()``, which
    passes ``kinds=("agent",)`` together with the ids its chains still need.
    """
    return _plan(backend, rules, graph_id, kinds=kinds, can_rebase=False)[0]


def _plan(
    backend: Backend, rules: Iterable[Any], graph_id: str | None, *, kinds: Iterable[str], can_rebase: bool
) -> tuple[list[CheckpointHeader], list[CheckpointHeader]]:
    """``(doomed, bases)``: what goes, and per execution cut in two the oldest kept record, which must
    stand alone before the records before it go."""
    kinds = frozenset(kinds)
    # listed before the protected set is read: an execution started in between is in neither
    headers = [h for h in backend.list(graph_id=graph_id) if h.kind in kinds]
    protected = protected_ids(backend, graph_id) | _unfinished_when_listed(headers)
    by_graph: dict[str, list[CheckpointHeader]] = {}
    for h in headers:
        by_graph.setdefault(h.graph_id, []).append(h)
    doomed: dict[str, CheckpointHeader] = {}
    for graph_headers in by_graph.values():
        for rule in rules:
            for h in rule.select_for_deletion(graph_headers, protected):
                doomed[h.checkpoint_id] = h
    bases = _keep_what_kept_records_need(headers, doomed, can_rebase) if GRAPH in kinds else []
    return [h for h in headers if h.checkpoint_id in doomed], bases


def _unfinished_when_listed(headers: list[CheckpointHeader]) -> set[str]:
    """The listed records of each execution whose newest listed record is unfinished: one that finished
    after the listing (before the protected set was read) is judged by records that miss its end, so it
    stays as a running one would. A finished execution never changes again."""
    newest: dict[str, CheckpointHeader] = {}
    for h in headers:
        if h.execution_id not in newest or h.seq > newest[h.execution_id].seq:
            newest[h.execution_id] = h
    return {h.checkpoint_id for h in headers if newest[h.execution_id].unfinished}


def _keep_what_kept_records_need(
    headers: list[CheckpointHeader], doomed: dict[str, CheckpointHeader], can_rebase: bool
) -> list[CheckpointHeader]:
    """Take off ``doomed`` what the kept graph records of each execution need; return the records to
    make stand alone. A record needs every record of its execution back to the last whole one: the
    oldest kept record is rebased (which leaves one that stands alone as it is), or its past is kept.
    Planning without rebasing (a dry run) takes a final (completed) record to stand alone, as a short
    run's does (a long run's links its journal to earlier records: pruning rebases it)."""
    by_execution: dict[str, list[CheckpointHeader]] = {}
    for h in headers:
        if h.kind == GRAPH:
            by_execution.setdefault(h.execution_id, []).append(h)
    bases = []
    for execution in by_execution.values():
        kept = [h for h in execution if h.checkpoint_id not in doomed]
        if not kept or len(kept) == len(execution):
            continue
        oldest = min(kept, key=lambda h: h.seq)
        stands_alone = oldest.status == COMPLETED and not can_rebase
        if can_rebase:
            bases.append(oldest)
        for h in execution:
            if h.checkpoint_id in doomed and (h.seq > oldest.seq or not (stands_alone or can_rebase)):
                del doomed[h.checkpoint_id]
    return bases


def prune(
    backend: Backend, rules: Iterable[Any], graph_id: str | None = None, dry_run: bool = False,
    rebase: Rebase | None = None,
) -> list[CheckpointHeader]:
    """Apply the rules to graph checkpoints; return what was (or, with ``dry_run``, would be) deleted.

    ``rebase`` makes a record stand alone in place (``engine.records.rebase``); without it, an
    execution whose kept records need older ones keeps those too. (A dry run lists what the rules
    select; the run itself may keep a few more: the boundary record a kept in-flight record is built on.)
    """
    doomed, bases = _plan(backend, list(rules), graph_id, kinds=(GRAPH,), can_rebase=rebase is not None)
    if dry_run:
        return doomed
    return carry_out(backend, doomed, bases, rebase)


def plan_with_rebase(
    backend: Backend, rules: Iterable[Any], graph_id: str | None = None
) -> tuple[list[CheckpointHeader], list[CheckpointHeader]]:
    """``(doomed, bases)``: what ``prune`` with a ``rebase`` would delete, and the kept records it would
    make stand alone first; ``carry_out`` does exactly that later (the CLI shows the plan in between)."""
    return _plan(backend, list(rules), graph_id, kinds=(GRAPH,), can_rebase=True)


def carry_out(
    backend: Backend, doomed: list[CheckpointHeader], bases: list[CheckpointHeader], rebase: Rebase | None,
    *, still_stored: bool = False,
) -> list[CheckpointHeader]:
    """Make each of ``bases`` stand alone, then delete ``doomed`` but the records a base that could not
    be made to stand alone still needs (its whole execution) or that follow it; return what was deleted.
    ``still_stored``: a plan made a while ago (shown, confirmed): what went meanwhile is not reported."""
    for base in bases:
        keep_from = rebase(base)  # type: ignore[misc]
        if keep_from is None:  # it cannot be made to stand alone: none of that execution's records go
            doomed = [h for h in doomed if h.execution_id != base.execution_id]
        else:
            doomed = [h for h in doomed if not (h.execution_id == base.execution_id and h.seq >= keep_from)]
    if still_stored and doomed:
        stored = {h.checkpoint_id for execution in dict.fromkeys(h.execution_id for h in doomed)
                  for h in backend.list(execution_id=execution)}
        doomed = [h for h in doomed if h.checkpoint_id in stored]
    if doomed:
        backend.delete([h.checkpoint_id for h in doomed])
    return doomed


@hookimpl
def spark_ckpt_register_retention(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("count", CountRetention)
    register("age", AgeRetention)
