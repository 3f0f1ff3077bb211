"""When to checkpoint: the built-in strategies ("iteration", "time", "event").

A policy answers ``should_checkpoint(decision)``. It may also offer ``due(supersteps_since_last,
seconds_since_last)``: the same answer for a superstep boundary, which the graph adapter asks instead
when no ``spark_ckpt_should_checkpoint`` hook is registered (no decision object is built per superstep).
"""

from __future__ import annotations

from typing import Any, Callable

from .events import CheckpointDecision
from .markers import hookimpl


class _BoundaryPolicy:
    """A policy that decides by ``due`` at superstep boundaries; explicit and final checkpoints are
    always taken."""

    def should_checkpoint(self, decision: CheckpointDecision) -> bool:
        return decision.reason != "superstep" or self.due(decision.supersteps_since_last, decision.seconds_since_last)

    def due(self, supersteps_since_last: int, seconds_since_last: float) -> bool:
        raise NotImplementedError


class IterationPolicy(_BoundaryPolicy):
    """Checkpoint every ``interval`` supersteps (1 = after every superstep)."""

    def __init__(self, config: Any) -> None:
        self.every = max(1, int(config.interval))

    def due(self, supersteps_since_last: int, seconds_since_last: float) -> bool:
        return supersteps_since_last >= self.every


class TimePolicy(_BoundaryPolicy):
    """Checkpoint at the first superstep boundary at least ``interval`` seconds after the last one."""

    def __init__(self, config: Any) -> None:
        self.seconds = float(config.interval)

    def due(self, supersteps_since_last: int, seconds_since_last: float) -> bool:
        return seconds_since_last >= self.seconds


class EventPolicy(_BoundaryPolicy):
    """Checkpoint only when asked (``await checkpoint_now()``), plus the start/final bookkeeping."""

    def __init__(self, config: Any) -> None:
        pass

    def due(self, supersteps_since_last: int, seconds_since_last: float) -> bool:
        return False


@hookimpl
def spark_ckpt_register_policies(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("iteration", IterationPolicy)
    register("time", TimePolicy)
    register("event", EventPolicy)
