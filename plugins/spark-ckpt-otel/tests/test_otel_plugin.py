"""The OpenTelemetry plugin, loaded the way users get it: through its ``spark_ckpt`` entry point.

Real Spark graphs on real SQLite stores; the SDK's in-memory span exporter and metric reader."""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points

import pytest
from spark.graphs import Graph
from spark.nodes import Node

from spark_ckpt import CheckpointConfig, checkpointed, plugins

FAIL_ONCE: set[str] = set()  # node ids whose next visit raises (then the flag is consumed)


class Step(Node):
    async def process(self, context):
        if self.id in FAIL_ONCE:
            FAIL_ONCE.discard(self.id)
            raise RuntimeError(f"{self.id} broke")
        items = await context.graph_state.get("items", [])
        await context.graph_state.set("items", items + [self.id * 50])  # some bytes per checkpoint
        return {"seen": self.id}


def chain(*keys: str, **graph_kwargs) -> Graph:
    nodes = [Step(id=k) for k in keys]
    for a, b in zip(nodes, nodes[1:]):
        a >> b
    return Graph(start=nodes[0], **graph_kwargs)


@pytest.fixture(autouse=True)
def entry_point_plugins(monkeypatch):
    """The process-wide plugin manager built from the installed entry points, this plugin among them."""
    monkeypatch.delenv("SPARK_CKPT_DISABLE_PLUGINS", raising=False)
    monkeypatch.setenv("SPARK_CKPT_PLUGINS", "otel")
    plugins.reset_plugin_manager()
    yield plugins.get_plugin_manager()
    plugins.reset_plugin_manager()
    FAIL_ONCE.clear()


def config(tmp_path) -> CheckpointConfig:
    return CheckpointConfig(backend="sqlite", path=str(tmp_path / "otel.db"))


def named(spans, name):
    return [s for s in spans() if s.name == name]


def test_entry_point_is_installed_and_loaded(entry_point_plugins) -> None:
    assert [ep.value for ep in entry_points(group="spark_ckpt") if ep.name == "otel"] == ["spark_ckpt_otel.plugin"]
    plugin = entry_point_plugins.get_plugin("otel")
    assert plugin is not None and plugin.__name__ == "spark_ckpt_otel.plugin"


def test_a_run_has_a_run_span_visit_spans_and_checkpoint_write_spans(tmp_path, spans, metric_points) -> None:
    g = checkpointed(chain("a", "b", "c"), config=config(tmp_path), graph_id="otel-run")
    asyncio.run(g.run({}))

    (run,) = named(spans, "spark_ckpt.run")
    assert run.attributes["spark_ckpt.graph_id"] == "otel-run"
    assert run.attributes["spark_ckpt.attempt"] == "first" and run.attributes["spark_ckpt.recovery"] is False
    assert run.attributes["spark_ckpt.status"] == "completed" and run.status.is_ok
    execution_id = run.attributes["spark_ckpt.execution_id"]

    visits = named(spans, "spark_ckpt.visit")
    assert [(v.attributes["spark_ckpt.node"], v.attributes["spark_ckpt.replayed"]) for v in visits] == [
        ("a", False), ("b", False), ("c", False)]
    assert all(v.parent.span_id == run.context.span_id for v in visits)
    assert {v.attributes["spark_ckpt.status"] for v in visits} == {"completed"}

    writes = named(spans, "spark_ckpt.checkpoint.write")
    assert len(writes) >= 2  # the start record and the completed one at least
    assert [w.attributes["spark_ckpt.seq"] for w in writes] == sorted(w.attributes["spark_ckpt.seq"] for w in writes)
    assert writes[-1].attributes["spark_ckpt.checkpoint_status"] == "completed"
    assert all(w.attributes["spark_ckpt.bytes"] > 0 and w.parent.span_id == run.context.span_id for w in writes)
    assert writes[-1].attributes["spark_ckpt.checkpoint_id"] == g.get_last_checkpoint().checkpoint_id
    assert {w.attributes["spark_ckpt.execution_id"] for w in writes} == {execution_id}

    (durations,) = metric_points("spark_ckpt.checkpoint.write.duration", "otel-run")
    (sizes,) = metric_points("spark_ckpt.checkpoint.bytes", "otel-run")
    assert durations.count == sizes.count == len(writes)
    assert sizes.sum == sum(w.attributes["spark_ckpt.bytes"] for w in writes)
    assert durations.attributes["spark_ckpt.backend"] == "sqlite"
    (live,) = metric_points("spark_ckpt.visits.live", "otel-run")
    assert live.value == 3
    assert metric_points("spark_ckpt.visits.replayed", "otel-run") == []
    assert metric_points("spark_ckpt.recoveries", "otel-run") == []


def test_a_failure_and_its_recovery(tmp_path, spans, metric_points) -> None:
    g = checkpointed(chain("a", "b", "c", "d"), config=config(tmp_path), graph_id="otel-recovery")
    FAIL_ONCE.add("c")
    with pytest.raises(RuntimeError, match="c broke"):
        asyncio.run(g.run({}))

    (failed_run,) = named(spans, "spark_ckpt.run")
    assert failed_run.attributes["spark_ckpt.status"] == "failed" and not failed_run.status.is_ok
    assert [e.name for e in failed_run.events] == ["exception"]
    failed_visit = [v for v in named(spans, "spark_ckpt.visit") if v.attributes["spark_ckpt.node"] == "c"]
    assert [v.attributes["spark_ckpt.status"] for v in failed_visit] == ["failed"]
    assert "c broke" in failed_visit[0].status.description

    spans_before = len(spans())
    asyncio.run(g.recover_and_continue())
    recovered = spans()[spans_before:]
    (run,) = [s for s in recovered if s.name == "spark_ckpt.run"]
    assert run.attributes["spark_ckpt.attempt"] == "recovery" and run.attributes["spark_ckpt.recovery"] is True
    assert run.attributes["spark_ckpt.execution_id"] == failed_run.attributes["spark_ckpt.execution_id"]
    assert run.attributes["spark_ckpt.from_checkpoint"] == g.last_recovery.from_checkpoint
    assert run.attributes["spark_ckpt.status"] == "completed"

    visits = {(v.attributes["spark_ckpt.node"], v.attributes["spark_ckpt.replayed"])
              for v in recovered if v.name == "spark_ckpt.visit"}
    replayed = {(key, True) for key, _ in g.last_recovery.replayed}
    live = {(key, False) for key, _ in g.last_recovery.live}
    assert replayed and live and visits == replayed | live
    assert ("c", False) in visits and ("d", False) in visits  # the failed visit ran again, live

    (event,) = [e for e in run.events if e.name == "spark_ckpt.recovery"]
    assert event.attributes["spark_ckpt.replayed"] == len(g.last_recovery.replayed)
    assert event.attributes["spark_ckpt.live"] == len(g.last_recovery.live)

    (recoveries,) = metric_points("spark_ckpt.recoveries", "otel-recovery")
    assert recoveries.value == 1
    (replays,) = metric_points("spark_ckpt.visits.replayed", "otel-recovery")
    assert replays.value == len(g.last_recovery.replayed)


def test_a_run_span_is_a_child_of_the_callers_span(tmp_path, spans) -> None:
    from opentelemetry import trace

    g = checkpointed(chain("a", "b"), config=config(tmp_path), graph_id="otel-parent")

    async def main():
        with trace.get_tracer("app").start_as_current_span("handle-request") as outer:
            await g.run({})
        return outer

    outer = asyncio.run(main())
    (run,) = named(spans, "spark_ckpt.run")
    assert run.parent.span_id == outer.get_span_context().span_id


def test_checkpoint_events_on_sparks_own_telemetry(tmp_path, spans) -> None:
    from spark.telemetry import EventType, TelemetryConfig, TelemetryManager

    TelemetryManager.reset_instance()
    try:
        spark_graph = chain("a", "b", "c", telemetry_config=TelemetryConfig.create_memory())
        g = checkpointed(spark_graph, config=config(tmp_path), graph_id="otel-spark")
        FAIL_ONCE.add("c")
        with pytest.raises(RuntimeError):
            asyncio.run(g.run({}))
        asyncio.run(g.recover_and_continue())
        manager = spark_graph._telemetry_manager

        async def events():
            await manager.flush()
            return await manager.query_events(type=EventType.CUSTOM), await manager.query_traces()

        custom, spark_traces = asyncio.run(events())
    finally:
        TelemetryManager.reset_instance()

    writes = named(spans, "spark_ckpt.checkpoint.write")
    saved = [e for e in custom if e.name == "spark_ckpt.checkpoint.saved"]
    assert sorted(e.attributes["spark_ckpt.checkpoint_id"] for e in saved) == sorted(
        w.attributes["spark_ckpt.checkpoint_id"] for w in writes)
    assert all(e.attributes["spark_ckpt.bytes"] > 0 for e in saved)
    # every event is on the Spark trace of the run it happened in, the start records' too
    assert {e.trace_id for e in saved} <= {t.trace_id for t in spark_traces}
    assert len({e.trace_id for e in saved}) == 2  # the failed run and the recovery: two Spark traces
    replayed = [e for e in custom if e.name == "spark_ckpt.visit.replayed"]
    assert {e.attributes["spark_ckpt.node"] for e in replayed} == {"a", "b"}
    (recovery,) = [e for e in custom if e.name == "spark_ckpt.recovery"]
    assert recovery.attributes["spark_ckpt.replayed"] == 2


def test_telemetry_that_fails_never_fails_the_run(tmp_path, spans, monkeypatch) -> None:
    from spark_ckpt_otel import plugin

    def broken(*args, **kwargs):
        raise RuntimeError("exporter down")

    monkeypatch.setattr(plugin._tracer, "start_span", broken)
    g = checkpointed(chain("a", "b"), config=config(tmp_path), graph_id="otel-broken")
    asyncio.run(g.run({}))
    assert g.get_last_checkpoint().status == "completed"
    assert named(spans, "spark_ckpt.run") == []
