"""Checkpoint events on a Spark graph's own telemetry trace, when the graph has Spark telemetry enabled.

Spark (``Graph(telemetry_config=...)``) starts one trace per ``graph.run`` and hands its context to
every node (``node._telemetry_context``); spark-ckpt's hooks see the nodes, so the trace id of the
current run is read from the first visited node. Events from before it is known (the run's start
record is written before Spark starts its trace) wait and are recorded once it is. Everything here
is best effort: telemetry never fails a run.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("spark_ckpt_otel")

#: the ``name`` of each event recorded on Spark's trace (``EventType.CUSTOM``)
CHECKPOINT_SAVED = "spark_ckpt.checkpoint.saved"
VISIT_REPLAYED = "spark_ckpt.visit.replayed"
RECOVERY = "spark_ckpt.recovery"


def _context_of(graph: Any) -> Any:
    for node in getattr(graph, "nodes", None) or ():
        return getattr(node, "_telemetry_context", None)
    return None


class SparkTelemetry:
    """Records spark-ckpt events through one Spark graph's ``TelemetryManager``."""

    def __init__(self, manager: Any, stale_context: Any) -> None:
        self.manager = manager
        self._stale = stale_context  # the context a previous run left on the nodes: not this run's trace
        self.trace_id: str | None = None
        self._pending: list[tuple[str, dict[str, Any]]] = []

    @classmethod
    def of(cls, graph: Any) -> SparkTelemetry | None:
        """The bridge for ``graph``, or None when it has no Spark telemetry enabled."""
        try:
            manager = getattr(graph, "_telemetry_manager", None)
            if manager is None or not getattr(graph, "_telemetry_enabled", False):
                return None
            return cls(manager, _context_of(graph))
        except Exception:
            log.debug("Spark telemetry not usable", exc_info=True)
            return None

    def see_node(self, node: Any) -> None:
        """A visit of ``node``: learn the run's trace id from the context Spark gave it."""
        if self.trace_id is not None:
            return
        context = getattr(node, "_telemetry_context", None)
        if context is None or context is self._stale:
            return
        self.trace_id = getattr(context, "trace_id", None)
        if self.trace_id is not None:
            pending, self._pending = self._pending, []
            for name, attributes in pending:
                self._emit(name, attributes)

    def record(self, name: str, attributes: dict[str, Any]) -> None:
        if self.trace_id is None:
            self._pending.append((name, attributes))
        else:
            self._emit(name, attributes)

    def close(self) -> None:
        """The run ended: record what still waits for a trace id (without one if none was seen)."""
        pending, self._pending = self._pending, []
        for name, attributes in pending:
            self._emit(name, attributes)

    def _emit(self, name: str, attributes: dict[str, Any]) -> None:
        try:
            from spark.telemetry import EventType

            self.manager.record_event(type=EventType.CUSTOM, name=name, trace_id=self.trace_id,
                                      attributes=attributes)
        except Exception:
            log.warning("could not record %s on Spark's telemetry; ignored", name, exc_info=True)
