"""strategy="cost_aware": the guide's Cost-Benefit Analysis, with the checkpoint cost measured.

    CheckpointConfig(strategy="cost_aware",
                     policy_options={"failure_probability": 0.01,   # default 0.01
                                     "checkpoint_cost_s": 0.005})   # optional prior, seconds

At each superstep boundary: checkpoint when ``redo_cost * failure_probability > checkpoint_cost``.

* ``redo_cost``: the work a failure now would make the run redo, in seconds: the sum, over the live
  visits since the last checkpoint, of each visit's declared ``cost`` (a number in its output dict, the
  guide's ``result['cost']``) or else its measured duration. Replayed and skipped visits are work a
  checkpoint already holds and add nothing.
* ``checkpoint_cost``: the expected time to write one checkpoint (encode and store), learned online
  from the measured write times of this wrapped graph's checkpoints (``CheckpointSaved.duration_s``):
  an exponentially weighted mean (each write weighs ``SMOOTHING``), so it follows a store that slows
  down or speeds up. It starts from ``checkpoint_cost_s`` when given, else from the first write
  measured (the start record is written before the first superstep). Before any figure exists every
  boundary is checkpointed: unprotected work is never risked on a guess.

Why ``failure_probability`` defaults to 0.01: a checkpoint is then taken once the unprotected work is
worth 100 checkpoint writes, so writing checkpoints costs at most about 1% of the work time (the
overhead bound is ``failure_probability``), while a crash loses at most ~100 writes' worth of work.
Raise it for flaky environments (more checkpoints), lower it when the store is slow.

Explicit requests (``checkpoint_now()``) and the start and final records are always taken.
"""

from __future__ import annotations

from typing import Any

from .basic import BoundaryPolicy
from .options import declared_cost, output_hints, positive_number, probability, read_options

DEFAULT_FAILURE_PROBABILITY = 0.01
#: weight of the newest write time in the learned checkpoint cost
SMOOTHING = 0.25


class CostAwarePolicy(BoundaryPolicy):
    """See the module docstring."""

    def __init__(self, config: Any) -> None:
        options = read_options(config, "cost_aware", {
            "failure_probability": probability, "checkpoint_cost_s": positive_number,
        })
        self.failure_probability = options.get("failure_probability", DEFAULT_FAILURE_PROBABILITY)
        #: expected seconds per checkpoint write; None until a prior or a measurement exists
        self.checkpoint_cost: float | None = options.get("checkpoint_cost_s")
        self.writes_measured = 0
        self.reset()

    def reset(self) -> None:
        self.redo_cost = 0.0

    def observe_visit(self, event: Any) -> None:
        if event.replayed:
            return
        cost = declared_cost(output_hints(event.output))
        self.redo_cost += event.duration_s if cost is None else cost

    def observe_checkpoint(self, event: Any) -> None:
        duration = getattr(event, "duration_s", 0.0)
        if not duration > 0:
            return  # not measured (a plugin's own event, or a clock too coarse to see it)
        self.writes_measured += 1
        if self.checkpoint_cost is None:
            self.checkpoint_cost = duration
        else:
            self.checkpoint_cost += SMOOTHING * (duration - self.checkpoint_cost)

    def due(self, supersteps_since_last: int, seconds_since_last: float) -> bool:
        if self.checkpoint_cost is None:
            return self.redo_cost > 0
        return self.redo_cost * self.failure_probability > self.checkpoint_cost
