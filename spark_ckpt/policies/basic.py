"""The plain strategies: "iteration", "time" and "event", and the base every built-in policy shares."""

from __future__ import annotations

from typing import Any

from ..events import CheckpointDecision
from .options import read_options


class BoundaryPolicy:
    """A policy that decides by ``due`` at superstep boundaries; explicit and final checkpoints are
    always taken (``spark_ckpt.policies`` describes the optional methods a policy may add)."""

    def should_checkpoint(self, decision: CheckpointDecision) -> bool:
        return decision.reason != "superstep" or self.due(decision.supersteps_since_last, decision.seconds_since_last)

    def due(self, supersteps_since_last: int, seconds_since_last: float) -> bool:
        raise NotImplementedError


class IterationPolicy(BoundaryPolicy):
    """Checkpoint every ``interval`` supersteps (1 = after every superstep)."""

    def __init__(self, config: Any) -> None:
        read_options(config, "iteration", {})
        self.every = max(1, int(config.interval))

    def due(self, supersteps_since_last: int, seconds_since_last: float) -> bool:
        return supersteps_since_last >= self.every


class TimePolicy(BoundaryPolicy):
    """Checkpoint at the first superstep boundary at least ``interval`` seconds after the last one."""

    def __init__(self, config: Any) -> None:
        read_options(config, "time", {})
        self.seconds = float(config.interval)

    def due(self, supersteps_since_last: int, seconds_since_last: float) -> bool:
        return seconds_since_last >= self.seconds


class EventPolicy(BoundaryPolicy):
    """Checkpoint only when asked (``await checkpoint_now()``), plus the start/final bookkeeping."""

    def __init__(self, config: Any) -> None:
        read_options(config, "event", {})

    def due(self, supersteps_since_last: int, seconds_since_last: float) -> bool:
        return False
