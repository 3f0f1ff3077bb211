"""A cost-aware checkpoint policy: protect expensive work, skip checkpoints after cheap supersteps.

    CheckpointConfig(strategy="cost-aware", interval=2.0)   # seconds of work worth protecting

A superstep boundary checkpoints when the work since the last checkpoint took at least ``interval``
seconds, or when any single node visit since then took at least half of that. Explicit requests
(``checkpoint_now()``) and the final checkpoint always happen.
"""

from __future__ import annotations

import time
from typing import Any

from spark_ckpt import hookimpl


class CostAwarePolicy:
    def __init__(self, config: Any) -> None:
        self.budget_s = float(config.interval)
        self.slowest_visit_s = 0.0
        self.since = time.monotonic()

    def saw_visit(self, duration_s: float) -> None:
        self.slowest_visit_s = max(self.slowest_visit_s, duration_s)

    def should_checkpoint(self, decision: Any) -> bool:
        worth_it = (
            decision.reason != "superstep"
            or decision.seconds_since_last >= self.budget_s
            or self.slowest_visit_s >= self.budget_s / 2
        )
        if worth_it:
            self.slowest_visit_s = 0.0
        return worth_it


_policies: list[CostAwarePolicy] = []


def _factory(config: Any) -> CostAwarePolicy:
    policy = CostAwarePolicy(config)
    _policies.append(policy)
    return policy


@hookimpl
def spark_ckpt_register_policies(register):
    register("cost-aware", _factory)


@hookimpl
def spark_ckpt_post_node(event):
    if not event.replayed:
        for policy in _policies:
            policy.saw_visit(event.duration_s)
