"""When to checkpoint: the built-in strategies ("iteration", "time", "event")."""

from __future__ import annotations

from typing import Any, Callable

from .events import CheckpointDecision
from .markers import hookimpl


class IterationPolicy:
    """Checkpoint every ``interval`` supersteps (1 = after every superstep)."""

    def __init__(self, config: Any) -> None:
        self.every = max(1, int(config.interval))

    def should_checkpoint(self, decision: CheckpointDecision) -> bool:
        return decision.reason != "superstep" or decision.supersteps_since_last >= self.every


class TimePolicy:
    """Checkpoint at the first superstep boundary at least ``interval`` seconds after the last one."""

    def __init__(self, config: Any) -> None:
        self.seconds = float(config.interval)

    def should_checkpoint(self, decision: CheckpointDecision) -> bool:
        return decision.reason != "superstep" or decision.seconds_since_last >= self.seconds


class EventPolicy:
    """Checkpoint only when asked (``await checkpoint_now()``), plus the start/final bookkeeping."""

    def __init__(self, config: Any) -> None:
        pass

    def should_checkpoint(self, decision: CheckpointDecision) -> bool:
        return decision.reason != "superstep"


@hookimpl
def spark_ckpt_register_policies(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("iteration", IterationPolicy)
    register("time", TimePolicy)
    register("event", EventPolicy)
