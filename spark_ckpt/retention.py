"""What to keep: retention rules applied after each checkpoint and by ``spark-ckpt prune``.

A rule never deletes a *protected* checkpoint: any checkpoint of an unfinished execution (recovery
reads the whole chain of one, see ``protected_ids``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .backends.base import Backend
from .markers import hookimpl
from .model import GRAPH, CheckpointHeader

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
    chain of an unfinished execution; none of it may go. (A finished execution's final checkpoint
    holds its whole history, so its earlier ones are free to prune.)
    """
    keep: set[str] = set()
    for latest in backend.executions(graph_id=graph_id, unfinished_only=True):
        keep.add(latest.checkpoint_id)
        for header in backend.list(execution_id=latest.execution_id):
            keep.add(header.checkpoint_id)
    return keep


def plan_prune(
    backend: Backend, rules: Iterable[Any], graph_id: str | None = None, *, kinds: Iterable[str] = (GRAPH,)
) -> list[CheckpointHeader]:
    """Headers the rules would delete for ``graph_id`` (all graphs if None), newest first.

    Only records of ``kinds`` are considered. Agent records (kind "agent") form delta chains whose
    bases only the agent adapter can see, so they are pruned by ``CheckpointedAgent.prune()``, which
    passes ``kinds=("agent",)`` together with the ids its chains still need.
    """
    kinds = frozenset(kinds)
    protected = protected_ids(backend, graph_id)
    headers = [h for h in backend.list(graph_id=graph_id) if h.kind in kinds]
    by_graph: dict[str, list[CheckpointHeader]] = {}
    for h in headers:
        by_graph.setdefault(h.graph_id, []).append(h)
    doomed: dict[str, CheckpointHeader] = {}
    for graph_headers in by_graph.values():
        for rule in rules:
            for h in rule.select_for_deletion(graph_headers, protected):
                doomed[h.checkpoint_id] = h
    return [h for h in headers if h.checkpoint_id in doomed]


def prune(
    backend: Backend, rules: Iterable[Any], graph_id: str | None = None, dry_run: bool = False
) -> list[CheckpointHeader]:
    """Apply the rules to graph checkpoints; return what was (or, with ``dry_run``, would be) deleted."""
    doomed = plan_prune(backend, list(rules), graph_id)
    if doomed and not dry_run:
        backend.delete([h.checkpoint_id for h in doomed])
    return doomed


@hookimpl
def spark_ckpt_register_retention(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("count", CountRetention)
    register("age", AgeRetention)
