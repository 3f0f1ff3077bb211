"""Where ``agent_delta`` was: the deltas now live in ``spark_ckpt.engine.deltas`` (graph records use them too)."""

from ..engine.deltas import apply, diff  # noqa: F401
