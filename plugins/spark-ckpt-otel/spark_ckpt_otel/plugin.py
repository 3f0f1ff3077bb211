"""The hook implementations: OpenTelemetry spans and metrics from spark-ckpt's hooks.

Spans (tracer ``spark_ckpt``):
  ``spark_ckpt.run``               one per run of an execution (a first run, a recovery or a fork), a
                                   child of whatever span is current where the run is awaited
  ``spark_ckpt.visit``             one per node visit, a child of its run; ``spark_ckpt.replayed`` tells
                                   a visit taken from the journal from one that ran live
  ``spark_ckpt.checkpoint.write``  one per checkpoint committed, timed as its write (encode and put)
  a recovery adds a ``spark_ckpt.recovery`` event to its run span (replayed and live counts, from checkpoint)
Metrics (meter ``spark_ckpt``, attributes ``spark_ckpt.graph_id``, and ``spark_ckpt.backend`` on writes):
  ``spark_ckpt.checkpoint.write.duration`` (histogram, s), ``spark_ckpt.checkpoint.bytes`` (histogram, By),
  ``spark_ckpt.visits.replayed``, ``spark_ckpt.visits.live``, ``spark_ckpt.recoveries`` (counters)

The global providers are used (the application sets exporters up); spans and instruments are made
through OpenTelemetry's proxies, so a provider set after this module was loaded is used too.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace import Status, StatusCode

from spark_ckpt import hookimpl

from .spark_telemetry import CHECKPOINT_SAVED, RECOVERY, VISIT_REPLAYED, SparkTelemetry

INSTRUMENTATION_NAME = "spark_ckpt"

_tracer = trace.get_tracer(INSTRUMENTATION_NAME)
_meter = metrics.get_meter(INSTRUMENTATION_NAME)
write_duration = _meter.create_histogram(
    "spark_ckpt.checkpoint.write.duration", unit="s", description="Time a checkpoint write took (encode and put)")
checkpoint_bytes = _meter.create_histogram(
    "spark_ckpt.checkpoint.bytes", unit="By", description="Bytes stored per checkpoint")
visits_replayed = _meter.create_counter(
    "spark_ckpt.visits.replayed", description="Node visits taken from the journal instead of run again")
visits_live = _meter.create_counter("spark_ckpt.visits.live", description="Node visits that ran")
recoveries = _meter.create_counter(
    "spark_ckpt.recoveries", description="Runs that continued stored work (recoveries and forks)")


class _Run:
    """What one running execution has open: its run span, its visits' spans, its Spark telemetry."""

    __slots__ = ("span", "visits", "spark")

    def __init__(self, span: Any, spark: SparkTelemetry | None) -> None:
        self.span = span
        self.visits: dict[tuple[str, int], Any] = {}
        self.spark = spark


#: execution id -> its run in this process (an execution runs in one place at a time: its lease)
_runs: dict[str, _Run] = {}


def _parent(execution_id: str) -> Any:
    run = _runs.get(execution_id)
    return trace.set_span_in_context(run.span) if run is not None else None


# optional: a spark-ckpt without the run hooks still gets visit and checkpoint spans (without a run span)
@hookimpl(optionalhook=True)
def spark_ckpt_run_started(event) -> None:
    recovery = event.recovery
    attempt = "fork" if event.fork_of else "recovery" if recovery is not None else "first"
    attributes = {"spark_ckpt.graph_id": event.graph_id, "spark_ckpt.execution_id": event.execution_id,
                  "spark_ckpt.attempt": attempt, "spark_ckpt.recovery": recovery is not None}
    if recovery is not None and recovery.from_checkpoint:
        attributes["spark_ckpt.from_checkpoint"] = recovery.from_checkpoint
        recoveries.add(1, {"spark_ckpt.graph_id": event.graph_id})
    if event.fork_of:
        attributes["spark_ckpt.fork_of"] = event.fork_of
    span = _tracer.start_span("spark_ckpt.run", attributes=attributes)
    _runs[event.execution_id] = _Run(span, SparkTelemetry.of(event.graph))


@hookimpl(optionalhook=True)
def spark_ckpt_run_ended(event) -> None:
    run = _runs.pop(event.execution_id, None)
    if run is None:
        return
    for span in run.visits.values():  # visits the run ended inside (cancelled, or a crash of the graph)
        span.set_attribute("spark_ckpt.status", "interrupted")
        span.end()
    span = run.span
    recovery = event.recovery
    if recovery is not None:
        counts = {"spark_ckpt.replayed": len(recovery.replayed), "spark_ckpt.live": len(recovery.live),
                  "spark_ckpt.from_checkpoint": recovery.from_checkpoint or ""}
        span.add_event(RECOVERY, counts)
        span.set_attributes(counts)
        if run.spark is not None:
            run.spark.record(RECOVERY, {"spark_ckpt.execution_id": event.execution_id, **counts})
    span.set_attribute("spark_ckpt.status", event.status)
    if event.status == "failed":
        if event.error is not None:
            span.record_exception(event.error)
        span.set_status(Status(StatusCode.ERROR, f"{type(event.error).__name__}: {event.error}"
                               if event.error is not None else "failed"))
    elif event.status == "completed":
        span.set_status(Status(StatusCode.OK))
    span.end()
    if run.spark is not None:
        run.spark.close()


@hookimpl
def spark_ckpt_pre_node(event) -> None:
    run = _runs.get(event.execution_id)
    span = _tracer.start_span("spark_ckpt.visit", context=_parent(event.execution_id), attributes={
        "spark_ckpt.graph_id": event.graph_id, "spark_ckpt.execution_id": event.execution_id,
        "spark_ckpt.node": event.node_key, "spark_ckpt.visit_index": event.visit_index,
        "spark_ckpt.superstep": event.superstep, "spark_ckpt.replayed": bool(event.replayed)})
    if run is not None:
        previous = run.visits.pop((event.node_key, event.visit_index), None)
        if previous is not None:
            previous.end()
        run.visits[(event.node_key, event.visit_index)] = span
        if run.spark is not None:
            run.spark.see_node(event.node)
    else:
        span.end()  # a run started before the plugin was registered: the visit stays a point


@hookimpl
def spark_ckpt_post_node(event) -> None:
    labels = {"spark_ckpt.graph_id": event.graph_id}
    (visits_replayed if event.replayed else visits_live).add(1, labels)
    run = _runs.get(event.execution_id)
    if run is None:
        return
    span = run.visits.pop((event.node_key, event.visit_index), None)
    if span is not None:
        span.set_attribute("spark_ckpt.status", "replayed" if event.replayed else "completed")
        span.set_status(Status(StatusCode.OK))
        span.end()
    if event.replayed and run.spark is not None:
        run.spark.record(VISIT_REPLAYED, {"spark_ckpt.execution_id": event.execution_id,
                                          "spark_ckpt.node": event.node_key,
                                          "spark_ckpt.visit_index": event.visit_index})


@hookimpl
def spark_ckpt_on_failure(event) -> None:
    run = _runs.get(event.execution_id)
    if run is None or event.node_key is None:
        return
    for (key, _index), span in list(run.visits.items()):
        if key == event.node_key:
            del run.visits[(key, _index)]
            span.set_attribute("spark_ckpt.status", "failed")
            if event.error is not None:
                span.record_exception(event.error)
            span.set_status(Status(StatusCode.ERROR, f"{event.error_type}: {event.message}"))
            span.end()


@hookimpl
def spark_ckpt_post_checkpoint(event) -> None:
    header = event.header
    end = time.time_ns()
    attributes = {"spark_ckpt.graph_id": header.graph_id, "spark_ckpt.execution_id": header.execution_id,
                  "spark_ckpt.checkpoint_id": header.checkpoint_id, "spark_ckpt.seq": header.seq,
                  "spark_ckpt.checkpoint_status": header.status, "spark_ckpt.bytes": event.size,
                  "spark_ckpt.duration_s": event.duration_s, "spark_ckpt.backend": event.backend}
    span = _tracer.start_span("spark_ckpt.checkpoint.write", context=_parent(header.execution_id),
                              start_time=end - int(event.duration_s * 1e9), attributes=attributes)
    span.set_status(Status(StatusCode.OK))
    span.end(end_time=end)
    labels = {"spark_ckpt.graph_id": header.graph_id, "spark_ckpt.backend": event.backend.split(":", 1)[0]}
    write_duration.record(event.duration_s, labels)
    checkpoint_bytes.record(event.size, labels)
    run = _runs.get(header.execution_id)
    if run is not None and run.spark is not None:
        run.spark.record(CHECKPOINT_SAVED, attributes)
