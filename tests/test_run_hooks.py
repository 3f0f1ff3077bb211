"""``spark_ckpt_run_started`` / ``spark_ckpt_run_ended``: one pair per run of an execution, fired only
to plugins implementing them, with the recovery report of a continuation."""

from __future__ import annotations

import asyncio

import graphs
import pytest

from spark_ckpt import CheckpointConfig, checkpointed, hookimpl, plugins
from spark_ckpt.errors import RunStopped


class RunLog:
    def __init__(self) -> None:
        self.seen: list[tuple] = []

    @hookimpl
    def spark_ckpt_run_started(self, event):
        self.seen.append(("started", event.execution_id, event.resumed, event.recovery is not None, event.status))

    @hookimpl
    def spark_ckpt_run_ended(self, event):
        report = event.recovery
        self.seen.append(("ended", event.execution_id, event.status, type(event.error).__name__ if event.error else None,
                          (len(report.replayed), len(report.live)) if report is not None else None))


@pytest.fixture
def run_log():
    plugin = RunLog()
    plugins.register(plugin)
    yield plugin
    plugins.unregister(plugin)


def test_a_failed_run_and_its_recovery_each_start_and_end(tmp_path, monkeypatch, run_log) -> None:
    g = checkpointed(graphs.chain(4), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "r.db")),
                     graph_id="run-hooks")
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "s2:0")
    with pytest.raises(RuntimeError, match="injected failure in s2"):
        asyncio.run(g.run({}))
    monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")
    asyncio.run(g.recover_and_continue())

    ex = g.last_recovery.execution_id
    replayed, live = len(g.last_recovery.replayed), len(g.last_recovery.live)
    assert replayed == 2 and live == 2
    assert run_log.seen == [
        ("started", ex, False, False, "running"),
        ("ended", ex, "failed", "RuntimeError", None),
        ("started", ex, True, True, "running"),
        ("ended", ex, "completed", None, (replayed, live)),
    ]


def test_run_stopped_from_run_started_stops_the_run_and_still_ends_it(tmp_path, run_log) -> None:
    class Refuse:
        @hookimpl
        def spark_ckpt_run_started(self, event):
            raise RunStopped("not today")

    refuse = Refuse()
    plugins.register(refuse)
    try:
        g = checkpointed(graphs.chain(2), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "s.db")),
                         graph_id="run-stopped")
        with pytest.raises(RunStopped, match="not today"):
            asyncio.run(g.run({}))
    finally:
        plugins.unregister(refuse)
    # the refusing plugin, registered last, is called first: the run ends before anything else saw it start
    (ended,) = run_log.seen
    assert ended[0] == "ended" and ended[2:] == ("failed", "RunStopped", None)
