"""When to checkpoint: the built-in strategies, registered through ``spark_ckpt_register_policies``
exactly as a plugin's are.

* "iteration", "time", "event" (``basic``): every ``interval`` supersteps, every ``interval`` seconds,
  only on ``checkpoint_now()``;
* "adaptive" (``adaptive``): the guide's Adaptive Checkpointing: time-based, operation-based with an
  interval adapted to expensive and cheap work, and event-based (``significant_milestone``);
* "cost_aware" (``cost_aware``): the guide's Cost-Benefit Analysis, with the checkpoint cost learned
  from measured write times;
* "after_nodes" (``after_nodes``): after the supersteps in which chosen nodes ran.

A policy (what a registered ``factory(config)`` returns) answers ``should_checkpoint(decision)``. It
may also offer, and the graph adapter then uses:

* ``due(supersteps_since_last, seconds_since_last) -> bool``: its answer at a superstep boundary,
  asked there instead when no ``spark_ckpt_should_checkpoint`` hook is registered (no decision object
  is built per superstep);
* ``bind(nodes)``: called once when a graph is wrapped, with ``{node key: Spark node}``; raise
  ``ConfigError`` for options that do not fit the graph (an unknown node key);
* ``observe_visit(event)``: after each *live* node visit, with its ``NodeEvent`` (``output``,
  ``duration_s``), before the superstep's boundary is decided (replayed and skipped visits are not
  passed: a checkpoint holds them already);
* ``observe_checkpoint(event)``: after each checkpoint write, with its ``CheckpointSaved``
  (``duration_s``, ``size``);
* ``reset()``: the counts since the last checkpoint start over: called when a checkpoint record is
  built (start, superstep, explicit, final) and when an execution is taken up (run, recovery, fork).

These are plain synchronous methods: they run on the graph's hot path.
"""

from __future__ import annotations

from typing import Any, Callable

from ..markers import hookimpl
from .adaptive import AdaptivePolicy
from .after_nodes import AfterNodesPolicy
from .basic import BoundaryPolicy, EventPolicy, IterationPolicy, TimePolicy
from .cost_aware import CostAwarePolicy

__all__ = ["AdaptivePolicy", "AfterNodesPolicy", "BoundaryPolicy", "CostAwarePolicy", "EventPolicy",
           "IterationPolicy", "TimePolicy"]


@hookimpl
def spark_ckpt_register_policies(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("iteration", IterationPolicy)
    register("time", TimePolicy)
    register("event", EventPolicy)
    register("adaptive", AdaptivePolicy)
    register("cost_aware", CostAwarePolicy)
    register("after_nodes", AfterNodesPolicy)
