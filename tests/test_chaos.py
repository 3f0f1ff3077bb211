"""spark_ckpt.testing.chaos: seeded failure injection, recovery under chaos, real kills, the crash matrix,
and the public pytest fixtures (tests/conftest.py enables them as a user's conftest would)."""

from __future__ import annotations

import asyncio

import pytest
from spark.agents import Agent, AgentConfig
from spark.tools import tool

import chaos_graphs
import graphs
from spark_ckpt import CheckpointConfig, ConfigError, checkpointed
from spark_ckpt.backends.base import Backend
from spark_ckpt.testing.chaos import (
    ChaosError, ChaosPlugin, CrashMatrixFailure, crash_matrix, run_with_chaos, run_with_kills,
)
from spark_ckpt.testing.scripted_model import ScriptExhausted, ScriptedModel, tool_call


def chain_run(config, graph_id: str, **chaos_options):
    """Run graphs.chain(6) under run_with_chaos; (ChaosRun, wrapped graph)."""
    graph = checkpointed(graphs.chain(6), config=config, graph_id=graph_id)
    return asyncio.run(run_with_chaos(graph, {}, **chaos_options)), graph


# -- ChaosPlugin ------------------------------------------------------------------------------------------
def test_same_seed_fails_the_same_visits_and_another_seed_others(ckpt_config_factory) -> None:
    runs = [chain_run(ckpt_config_factory(), "g", failure_rate=0.3, seed=seed)[0] for seed in (11, 11, 12)]
    assert [str(f) for f in runs[0].injected] == [str(f) for f in runs[1].injected]
    assert runs[0].injected, "seed 11 must inject at least one failure for this test to mean anything"
    assert [str(f) for f in runs[2].injected] != [str(f) for f in runs[0].injected]
    assert {r.result.content["count"] for r in runs} == {6}


def test_per_node_rates_fail_only_those_nodes(ckpt_config) -> None:
    run, graph = chain_run(ckpt_config, "per-node", failure_rate={"s3": 1.0}, max_failures=2)
    assert [(f.where, f.index, f.attempt) for f in run.injected] == [("s3", 0, 0), ("s3", 0, 1)]
    assert run.attempts == 3 and run.result.content["count"] == 6
    # the failed visit was recorded as that node's failure, like any error of its own
    failed = [h for h in graph.list_checkpoints() if h.status == "failed"]
    assert len(failed) == 2


def test_replayed_visits_are_never_failed(ckpt_config) -> None:
    """Even at rate 1 for every node, a recovery's replayed visits pass: chaos hits live work only."""
    graph = checkpointed(graphs.chain(6), config=ckpt_config, graph_id="live-only")
    with ChaosPlugin(failure_rate={"s3": 1.0}):
        with pytest.raises(ChaosError, match="node 's3' visit 0"):
            asyncio.run(graph.run({}))
    assert graph.get_last_checkpoint().failure.node_key == "s3"  # recorded as that visit's own failure
    with ChaosPlugin(failure_rate=1.0) as everything:
        with pytest.raises(ChaosError):
            asyncio.run(graph.recover_and_continue())
    assert [(f.where, f.index) for f in everything.injected] == [("s3", 0)]
    assert graph.last_recovery.replayed == [("s0", 0), ("s1", 0), ("s2", 0)]


def test_run_with_chaos_gives_up_after_max_attempts_and_lets_own_errors_through(ckpt_config, monkeypatch) -> None:
    with pytest.raises(ChaosError, match="gave up: all 3 attempts"):
        chain_run(ckpt_config, "hopeless", failure_rate={"s1": 1.0}, max_attempts=3)
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "s2:0")  # graphs.Step fails there on its own
    with pytest.raises(RuntimeError, match="injected failure in s2"):
        chain_run(ckpt_config, "own-error", failure_rate=0.0)


def test_bad_options_are_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="from 0 to 1"):
        ChaosPlugin(failure_rate=1.5)
    with pytest.raises(ConfigError, match="'s1'"):
        ChaosPlugin(failure_rate={"s1": -0.1})
    with pytest.raises(ConfigError, match="mode"):
        ChaosPlugin(mode="explode")
    with pytest.raises(ConfigError, match="would kill the pytest process"):
        ChaosPlugin(mode="sigkill", failure_rate=0.5)
    with pytest.raises(ConfigError, match="checkpointed graph or agent"):
        asyncio.run(run_with_chaos(graphs.chain(2), {}))
    with pytest.raises(ConfigError, match="importable by a child process"):
        crash_matrix(lambda: graphs.chain(2))
    with pytest.raises(ConfigError, match="unknown kill point kind"):
        crash_matrix("chaos_graphs:fan_in", points="everywhere")


# -- agents -------------------------------------------------------------------------------------------
@tool
def lookup(order: int) -> str:
    """Look an order up.

    Args:
        order: the order number
    """
    return f"order {order}: shipped"


def support_agent(config, model) -> object:
    agent = Agent(config=AgentConfig(model=model, name="support", tools=[lookup]))
    return checkpointed(agent, config=config, agent_id="support")


SCRIPT = {"where is 42?": [tool_call("lookup", order=42), tool_call("lookup", order=43), "42 and 43 shipped"]}


def test_agent_calls_fail_under_chaos_and_recovery_replays_the_journaled_ones(ckpt_config_factory) -> None:
    reference_model = ScriptedModel(SCRIPT)
    reference = asyncio.run(support_agent(ckpt_config_factory(), reference_model).run("where is 42?"))
    model = ScriptedModel(SCRIPT)
    run = asyncio.run(run_with_chaos(support_agent(ckpt_config_factory(), model), "where is 42?",
                                     failure_rate=0.0, agent_call_failure_rate=0.5, seed=2))
    assert run.result.content == reference.content
    assert run.failures >= 1 and {f.kind for f in run.injected} == {"agent_call"}
    # every model call the journal held was replayed, not made again: the model saw each step of the
    # script at most once per injected failure before it
    assert len(model.calls) <= len(reference_model.calls) + run.failures
    assert sorted(set(model.calls)) == sorted(set(reference_model.calls))


def test_scripted_model_reads_its_script_per_request(ckpt_config) -> None:
    model = ScriptedModel({"hi": ["hello"], "*": [tool_call("lookup", order=1), "done"]})
    agent = support_agent(ckpt_config, model)
    assert asyncio.run(agent.run("hi")).content == "hello"
    assert asyncio.run(agent.run("order?")).content == "done"
    assert model.calls == [("hi", 0), ("order?", 0), ("order?", 1)]
    with pytest.raises(ScriptExhausted, match="no replies for the request 'bye'"):
        asyncio.run(ScriptedModel({"hi": ["x"]}).get_text([{"role": "user", "content": [{"text": "bye"}]}]))


# -- real processes -----------------------------------------------------------------------------------
def reference(factory, inputs):
    graph = checkpointed(factory(), config=CheckpointConfig(backend="memory"), graph_id="ref")
    result = asyncio.run(graph.run(inputs))
    return result.content, graph.get_state_snapshot()


def test_run_with_kills_recovers_in_new_processes_to_the_reference() -> None:
    run = run_with_kills("chaos_graphs:fan_in", {"value": 5}, failure_rate=0.4, seed=3)
    assert (run.result, run.state) == reference(chaos_graphs.fan_in, {"value": 5})
    assert run.failures >= 1 and run.attempts == run.failures + 1
    assert all("node" in fault.where for fault in run.injected)  # where each process was killed


def test_crash_matrix_of_a_fan_in_graph_recovers_at_every_point() -> None:
    report = crash_matrix(chaos_graphs.fan_in, {"value": 5})
    assert (report.result, report.state) == reference(chaos_graphs.fan_in, {"value": 5})
    by_kind = {}
    for outcome in report.outcomes:
        by_kind.setdefault(outcome.point.kind, []).append(outcome)
    # 5 supersteps, 7 visits (the join and the node after it run once per parent), 6 checkpoints
    assert {k: len(v) for k, v in by_kind.items()} == {"boundary": 5, "visit": 7, "before_write": 6,
                                                      "after_write": 6}
    assert report.ok and not report.failures
    assert by_kind["before_write"][0].status == "nothing_stored"
    assert by_kind["after_write"][-1].status == "already_completed"
    assert all(o.status == "recovered" for o in report.outcomes[:12])
    # killed later, a recovery replays more and runs less
    replayed = [o.replayed for o in by_kind["boundary"]]
    assert replayed == sorted(replayed) and replayed[0] < replayed[-1]


def test_crash_matrix_covers_boundaries_without_a_checkpoint() -> None:
    """Every second superstep checkpointed: a kill at a boundary without a write recovers too."""
    report = crash_matrix("chaos_graphs:fan_in", {"value": 2}, config=CheckpointConfig(interval=2),
                          points="boundaries")
    assert len(report.points) == 5 and report.ok


def test_crash_matrix_detects_a_graph_that_does_not_run_the_same_way_twice() -> None:
    with pytest.raises(CrashMatrixFailure) as failed:
        crash_matrix("chaos_graphs:unseeded", {}, points="writes")
    report = failed.value.report
    assert not report.ok and {o.status for o in report.failures} == {"diverged"}
    assert "result['roll']: expected" in str(failed.value)
    assert isinstance(failed.value, AssertionError)


# -- fixtures -----------------------------------------------------------------------------------------
def test_backend_fixtures_are_open_stores(sqlite_backend, file_backend, memory_backend) -> None:
    assert all(isinstance(b, Backend) for b in (sqlite_backend, file_backend, memory_backend))
    assert [b.name for b in (sqlite_backend, file_backend, memory_backend)] == ["sqlite", "file", "memory"]


def test_config_factory_gives_each_config_its_own_store(ckpt_config_factory, tmp_path) -> None:
    a, b = ckpt_config_factory(), ckpt_config_factory(interval=2)
    assert a.path != b.path and b.interval == 2 and str(tmp_path) in a.path
    with pytest.raises(ConfigError, match="'sqlite', 'file' or 'memory'"):
        ckpt_config_factory("postgresql")


def test_chaos_fixture_is_removed_after_the_test(chaos, ckpt_config) -> None:
    monkey = chaos(failure_rate={"s1": 1.0})
    graph = checkpointed(graphs.chain(3), config=ckpt_config, graph_id="fixture")
    with pytest.raises(ChaosError):
        asyncio.run(graph.run({}))
    assert monkey.failures == 1
