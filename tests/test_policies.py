"""The built-in strategies "adaptive", "cost_aware" and "after_nodes": the checkpoints each decision rule
takes (counted on real Spark graphs over real SQLite), the measured checkpoint writes they learn from
(``CheckpointSaved.duration_s``/``size``, the totals records carry, ``spark-ckpt stats``), and a real
SIGKILL + recovery under each."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from spark.graphs import Graph
from spark.nodes import Node

import graphs
from spark_ckpt import CheckpointConfig, checkpoint_now, checkpointed, hookimpl, open_backend, plugins
from spark_ckpt.engine import store_path
from spark_ckpt.errors import ConfigError
from spark_ckpt.events import CheckpointDecision, CheckpointSaved, NodeEvent
from test_graph_crash import assert_recovered_like_uninterrupted, crash_and_recover


class Scripted(Node):
    """One visit per superstep: visit i returns ``script[i]`` (its checkpoint hints, its cost) and the
    loop's counters; with ``checkpoint_at == i`` it asks for a checkpoint."""

    async def process(self, context):
        content = context.inputs.content
        i, script = content["i"], content["script"]
        if content.get("checkpoint_at") == i:
            await checkpoint_now()
        return {**script[i], "i": i + 1, "script": script, "checkpoint_at": content.get("checkpoint_at"),
                "more": i + 1 < len(script)}


def config(tmp_path: Path, strategy: str, interval: float = 1, **options) -> CheckpointConfig:
    return CheckpointConfig(backend="sqlite", path=str(tmp_path / "p.db"), strategy=strategy, interval=interval,
                            policy_options=options)


def scripted(cfg: CheckpointConfig, hint: str | None = None):
    node = Scripted(id="work")
    if hint is not None:
        node.checkpoint_hint = hint
    node.on(more=True) >> node
    return checkpointed(Graph(start=node), config=cfg, graph_id="scripted")


def run_script(graph, script: list[dict], **extra) -> list[int]:
    asyncio.run(graph.run({"i": 0, "script": script, **extra}))
    return covered(graph)


def covered(graph) -> list[int]:
    """How many visits each checkpoint of the graph's last execution covers, oldest first: 0 is the start
    record, the last is the final one; the others are the boundaries the policy checkpointed."""
    execution = graph.get_last_checkpoint().execution_id
    return sorted(len(graph.get_checkpoint(offset=i).execution_history)
                  for i, h in enumerate(graph.list_checkpoints()) if h.execution_id == execution)


PLAIN = {}
EXPENSIVE, CHEAP, MILESTONE = {"expensive": True}, {"cheap": True}, {"significant_milestone": True}


# -- adaptive ----------------------------------------------------------------------------------------
def test_adaptive_operation_count(tmp_path) -> None:
    """Every ``interval`` live visits (operations), with no hint."""
    graph = scripted(config(tmp_path, "adaptive", 3))
    assert run_script(graph, [PLAIN] * 7) == [0, 3, 6, 7]


def test_adaptive_expensive_result_halves_the_interval(tmp_path) -> None:
    graph = scripted(config(tmp_path, "adaptive", 4))
    script = [PLAIN, EXPENSIVE] + [PLAIN] * 6
    # the expensive 2nd visit: 2 operations >= 4 / 2; then 4 plain ones again
    assert run_script(graph, script) == [0, 2, 6, 8]


def test_adaptive_cheap_results_double_the_interval(tmp_path) -> None:
    graph = scripted(config(tmp_path, "adaptive", 2))
    assert run_script(graph, [CHEAP] * 9) == [0, 4, 8, 9]
    # one visit that is not cheap brings the interval back to 2 for the operations around it
    assert run_script(graph, [CHEAP, CHEAP, PLAIN] + [CHEAP] * 6) == [0, 3, 7, 9]


def test_adaptive_expensive_wins_over_cheap(tmp_path) -> None:
    graph = scripted(config(tmp_path, "adaptive", 4))
    # (were the first visit cheap, the plain second one would keep the interval at 4)
    assert run_script(graph, [{"expensive": True, "cheap": True}, PLAIN, PLAIN, PLAIN, PLAIN]) == [0, 2, 5]


def test_adaptive_node_hints_from_the_options(tmp_path) -> None:
    graph = checkpointed(graphs.chain(8), config=config(tmp_path, "adaptive", 4, expensive=["s1"]), graph_id="hints")
    asyncio.run(graph.run({}))
    assert covered(graph) == [0, 2, 6, 8]


def test_adaptive_node_hint_attribute_and_the_options_override_it(tmp_path) -> None:
    graph = scripted(config(tmp_path, "adaptive", 2), hint="cheap")
    assert run_script(graph, [PLAIN] * 9) == [0, 4, 8, 9]
    # the config names the node expensive: interval 2 / 2 = 1, every boundary
    graph = scripted(CheckpointConfig(backend="sqlite", path=str(tmp_path / "o.db"), strategy="adaptive",
                                      interval=2, policy_options={"expensive": ["work"]}), hint="cheap")
    assert run_script(graph, [PLAIN] * 5) == [0, 1, 2, 3, 4, 5]
    # a result's own hint comes before its node's
    graph = scripted(CheckpointConfig(backend="sqlite", path=str(tmp_path / "r.db"), strategy="adaptive",
                                      interval=2), hint="expensive")
    assert run_script(graph, [CHEAP] * 5) == [0, 4, 5]


def test_adaptive_significant_milestone_checkpoints_its_superstep(tmp_path) -> None:
    graph = scripted(config(tmp_path, "adaptive", 100))
    assert run_script(graph, [PLAIN, PLAIN, MILESTONE] + [PLAIN] * 5) == [0, 3, 8]


def test_adaptive_time_limit(tmp_path) -> None:
    """The time-based rule, without timing anything: a limit every boundary is past, and the default 60 s
    one that no boundary of a short run reaches."""
    graph = scripted(config(tmp_path, "adaptive", 100, max_seconds=1e-9))
    assert run_script(graph, [PLAIN] * 5) == [0, 1, 2, 3, 4, 5]
    graph = scripted(CheckpointConfig(backend="sqlite", path=str(tmp_path / "t.db"), strategy="adaptive", interval=100))
    assert run_script(graph, [PLAIN] * 5) == [0, 5]
    # the rule itself, asked as the adapter asks it at a plain boundary
    policy = CheckpointConfig(strategy="adaptive", interval=100, policy_options={"max_seconds": 30}).make_policy()
    assert [policy.due(1, seconds) for seconds in (0.0, 29.9, 30.0, 31.0)] == [False, False, True, True]


def test_adaptive_checkpoint_now_is_always_taken(tmp_path) -> None:
    graph = scripted(config(tmp_path, "adaptive", 100))
    assert run_script(graph, [PLAIN] * 6, checkpoint_at=2) == [0, 3, 6]


def test_a_deferring_should_checkpoint_hook_gets_the_same_answers(tmp_path) -> None:
    """With a ``spark_ckpt_should_checkpoint`` hook registered the adapter asks ``should_checkpoint``
    with a decision instead of ``due``: a hook that defers leaves the same checkpoints."""

    class Defers:
        @hookimpl
        def spark_ckpt_should_checkpoint(self, decision):
            return None

    plugin = Defers()
    plugins.register(plugin)
    try:
        graph = scripted(config(tmp_path, "adaptive", 4))
        assert run_script(graph, [PLAIN, EXPENSIVE] + [PLAIN] * 6) == [0, 2, 6, 8]
    finally:
        plugins.unregister(plugin)


# -- after_nodes -------------------------------------------------------------------------------------
def test_after_nodes_checkpoints_the_supersteps_those_nodes_ran_in(tmp_path) -> None:
    graph = checkpointed(graphs.chain(6), config=config(tmp_path, "after_nodes", nodes=["s1", "s4"]), graph_id="an")
    asyncio.run(graph.run({}))
    assert covered(graph) == [0, 2, 5, 6]


def test_unknown_node_keys_name_the_graphs_nodes(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"'s9'.*its nodes are: s0, s1, s2"):
        checkpointed(graphs.chain(3), config=config(tmp_path, "after_nodes", nodes=["s1", "s9"]))
    with pytest.raises(ConfigError, match=r"'nope'.*its nodes are: s0, s1, s2"):
        checkpointed(graphs.chain(3), config=config(tmp_path, "adaptive", cheap=["nope"]))
    with pytest.raises(ConfigError, match="needs policy_options"):
        CheckpointConfig(strategy="after_nodes").make_policy()


# -- cost_aware --------------------------------------------------------------------------------------
def visit(policy, duration: float, output=None, replayed: bool = False) -> None:
    policy.observe_visit(NodeEvent("g", "e", "n", 0, 0, None, None, output, replayed=replayed, duration_s=duration))


def written(policy, duration: float) -> None:
    policy.observe_checkpoint(CheckpointSaved(header=None, backend="test", duration_s=duration))


def checkpoints_over(policy, visits: int, duration: float) -> list[int]:
    """The visits after which the policy checkpoints (one visit per superstep)."""
    taken = []
    for n in range(1, visits + 1):
        visit(policy, duration)
        if policy.due(1, 0.0):
            taken.append(n)
            policy.reset()
    return taken


def test_cost_aware_learns_the_checkpoint_cost_from_write_times() -> None:
    """redo cost x failure probability > checkpoint cost, with the cost learned from injected writes."""
    policy = CheckpointConfig(strategy="cost_aware", policy_options={"failure_probability": 0.1}).make_policy()
    assert checkpoints_over(policy, 3, 0.03) == [1, 2, 3]  # no write measured yet: protect every superstep
    written(policy, 0.01)
    assert checkpoints_over(policy, 12, 0.03) == [4, 8, 12]  # 0.12 s x 0.1 > 0.01 s
    for _ in range(30):  # the store got slower: the learned cost follows it to ~0.05 s
        written(policy, 0.05)
    assert 0.049 < policy.checkpoint_cost < 0.05
    assert checkpoints_over(policy, 40, 0.03) == [17, 34]  # 0.51 s x 0.1 > 0.05 s


def test_cost_aware_declared_cost_prior_and_replayed_visits() -> None:
    policy = CheckpointConfig(strategy="cost_aware", policy_options={"checkpoint_cost_s": 1.0}).make_policy()
    visit(policy, 50.0, replayed=True)  # a replayed visit is work a checkpoint holds already
    visit(policy, 0.0, output={"cost": 99.0})  # the guide's result['cost']: 99 x 0.01 < 1.0 (the prior)
    assert not policy.due(1, 0.0)
    visit(policy, 0.0, output={"cost": 2.0})
    assert policy.due(1, 0.0)
    policy.reset()
    visit(policy, 200.0, output={"cost": "n/a"})  # not a number: its measured duration counts
    assert policy.due(1, 0.0)


class FakeWriteClock:
    """``perf_counter`` for the store path: each reading is ``step`` later, so every write (two readings
    around the encoding, two around the put) takes exactly ``2 * step``."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


COSTS = [{"cost": c} for c in (0.4, 0.4, 0.4, 0.1, 5.0, 0.1, 0.1)]


@pytest.mark.parametrize("write_s,expected", [(0.01, [0, 3, 5, 7]), (0.05, [0, 5, 7])])
def test_cost_aware_run_with_injected_write_costs(tmp_path, monkeypatch, write_s, expected) -> None:
    """Declared costs against measured writes (default failure probability 0.01): with 10 ms writes a
    checkpoint once more than 1 s of work is unprotected, with 50 ms writes once more than 5 s is."""
    monkeypatch.setattr(store_path, "perf_counter", FakeWriteClock(write_s / 2))
    seen: list[CheckpointSaved] = []

    class Collect:
        @hookimpl
        def spark_ckpt_post_checkpoint(self, event):
            seen.append(event)

    plugin = Collect()
    plugins.register(plugin)
    try:
        graph = scripted(config(tmp_path, "cost_aware"))
        assert run_script(graph, COSTS) == expected
    finally:
        plugins.unregister(plugin)
    assert [e.duration_s for e in seen] == pytest.approx([write_s] * len(expected))
    assert [e.size for e in seen] == [e.header.size for e in seen] and all(e.size > 0 for e in seen)
    totals = graph.get_last_checkpoint().extras["writes"]  # the writes before the final record
    assert totals["records"] == totals["timed"] == len(expected) - 1
    assert totals["seconds"] == pytest.approx(write_s * (len(expected) - 1))
    assert totals["max_s"] == pytest.approx(write_s)
    assert totals["bytes"] == sum(e.size for e in seen[:-1])


def test_cost_aware_checkpoint_now_is_always_taken(tmp_path) -> None:
    graph = scripted(config(tmp_path, "cost_aware"))
    assert run_script(graph, [{"cost": 0}] * 6, checkpoint_at=2) == [0, 3, 6]


# -- registration and options ------------------------------------------------------------------------
@pytest.mark.parametrize("strategy,options", [
    ("adaptive", {"max_seconds": 5}), ("cost_aware", {"checkpoint_cost_s": 0.001}), ("after_nodes", {"nodes": ["n"]}),
])
def test_due_answers_like_should_checkpoint_and_explicit_is_always_taken(strategy, options) -> None:
    policy = CheckpointConfig(strategy=strategy, interval=3, policy_options=options).make_policy()
    answers = set()
    for since, seconds in [(1, 0.0), (2, 1.0), (3, 6.0), (4, 0.5)]:
        decision = CheckpointDecision(graph_id="g", execution_id="e", reason="superstep", superstep=since,
                                      supersteps_since_last=since, seconds_since_last=seconds,
                                      strategy=strategy, interval=3)
        assert policy.due(since, seconds) is policy.should_checkpoint(decision)
        answers.add(policy.due(since, seconds))
        for reason in ("explicit", "final"):
            assert policy.should_checkpoint(attrs.evolve(decision, reason=reason)) is True
        visit(policy, 0.2)  # (the node key "n": an after_nodes node)
    assert answers == {True, False}


def test_builtin_strategies_are_registered_through_the_plugin_hook() -> None:
    pm = plugins.build_plugin_manager(load_entry_points=False)
    impls = [impl.plugin_name for impl in pm.hook.spark_ckpt_register_policies.get_hookimpls()]
    assert "spark_ckpt.policies" in impls
    assert {"iteration", "time", "event", "adaptive", "cost_aware", "after_nodes"} <= set(plugins.policies())
    with pytest.raises(ConfigError, match="adaptive, after_nodes, cost_aware, event"):
        CheckpointConfig(strategy="cost-aware").make_policy()


@pytest.mark.parametrize("strategy,options,message", [
    ("adaptive", {"max_secs": 5}, "does not take policy_options 'max_secs'; it takes: cheap, expensive, max_seconds"),
    ("adaptive", {"max_seconds": 0}, "must be a positive number"),
    ("adaptive", {"expensive": "train"}, "must be a list of node keys"),
    ("adaptive", {"expensive": ["a"], "cheap": ["a"]}, "both as expensive and as cheap"),
    ("cost_aware", {"failure_probability": 1.5}, "probability in"),
    ("cost_aware", {"checkpoint_cost_s": True}, "positive number"),
    ("iteration", {"nodes": ["a"]}, "does not take policy_options 'nodes'; it takes: none"),
])
def test_bad_policy_options_are_config_errors(strategy, options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        CheckpointConfig(strategy=strategy, policy_options=options).make_policy()


def test_policy_options_must_be_a_dict() -> None:
    with pytest.raises(ConfigError, match="policy_options must be a dict"):
        CheckpointConfig(policy_options=[("nodes", ["a"])])


def test_a_bad_node_hint_attribute_is_a_config_error(tmp_path) -> None:
    node = Scripted(id="work")
    node.checkpoint_hint = "pricey"
    with pytest.raises(ConfigError, match="checkpoint_hint='pricey'"):
        checkpointed(Graph(start=node), config=config(tmp_path, "adaptive"))


# -- measured writes ---------------------------------------------------------------------------------
def test_checkpoint_saved_carries_the_write_and_records_carry_the_totals(tmp_path) -> None:
    seen: list[CheckpointSaved] = []

    class Collect:
        @hookimpl
        def spark_ckpt_post_checkpoint(self, event):
            seen.append(event)

    plugin = Collect()
    plugins.register(plugin)
    try:
        graph = checkpointed(graphs.chain(4), config=config(tmp_path, "iteration"), graph_id="measured")
        asyncio.run(graph.run({}))
    finally:
        plugins.unregister(plugin)
    headers = sorted(graph.list_checkpoints(), key=lambda h: h.seq)
    assert [e.header.seq for e in seen] == [h.seq for h in headers] == list(range(5))
    assert all(e.duration_s > 0 and e.size == h.size > 0 for e, h in zip(seen, headers))
    for n, header in enumerate(headers):  # each record: the totals of the writes before it
        totals = graph.get_checkpoint(offset=len(headers) - 1 - n).extras["writes"]
        assert totals["records"] == totals["timed"] == n
        assert totals["bytes"] == sum(h.size for h in headers[:n])
        assert totals["seconds"] == pytest.approx(sum(e.duration_s for e in seen[:n]), abs=1e-6)  # (stored to the microsecond)
        assert totals["started_at"] == headers[0].created_at


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "spark_ckpt.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_stats_command_shows_the_overhead_per_execution(tmp_path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    cfg = CheckpointConfig(backend=url)
    graph = checkpointed(graphs.chain(4), config=cfg, graph_id="measured")
    asyncio.run(graph.run({}))
    asyncio.run(graph.run({}))
    monkeypatch.setattr(store_path, "WriteStats", lambda: None)  # as an older spark-ckpt wrote them
    asyncio.run(checkpointed(graphs.chain(2), config=cfg, graph_id="old").run({}))

    done = cli("--store", url, "stats", "--json")
    assert done.returncode == 0, done.stderr
    rows = {(r["graph"], r["execution"]): r for r in json.loads(done.stdout)}
    headers = graph.list_checkpoints()
    measured = [r for (g, _), r in rows.items() if g == "measured"]
    assert len(measured) == 2
    for row in measured:
        mine = [h for h in headers if h.execution_id == row["execution"]]
        assert row["status"] == "completed" and row["checkpoints"] == len(mine) == 5
        assert row["bytes"] == sum(h.size for h in mine) and row["writes_timed"] == 4
        assert 0 < row["max_write_s"] <= row["write_s"] and row["mean_write_s"] == pytest.approx(row["write_s"] / 4)
        assert row["run_s"] == pytest.approx(max(h.created_at for h in mine) - min(h.created_at for h in mine))
        assert 0 < row["overhead"] <= 1 and row["note"] == ""
    (old,) = [r for (g, _), r in rows.items() if g == "old"]
    assert old["checkpoints"] is None and old["overhead"] is None and "without write times" in old["note"]

    table = cli("--store", url, "stats", "--graph", "measured")
    assert table.returncode == 0 and "overhead" in table.stdout.splitlines()[0]
    assert len(table.stdout.splitlines()) == 3 and table.stdout.count("%") == 2

    missing = cli("--store", f"sqlite:///{tmp_path}/none.db", "stats")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no checkpoint store" in missing.stderr


# -- a real crash under each policy ------------------------------------------------------------------
@pytest.mark.parametrize("strategy,options,crash_at", [
    ("adaptive", {"expensive": ["fetch"]}, "transform:3"),
    ("cost_aware", {"failure_probability": 1.0}, "report:0"),
    ("after_nodes", {"nodes": ["fetch", "review", "publish"]}, "report:0"),
])
def test_sigkill_and_recovery_under_each_policy(tmp_path, strategy, options, crash_at) -> None:
    """SIGKILL inside a node under the policy, recover in a new process: the uninterrupted result, with
    the visits the policy's checkpoints covered replayed, not run again."""
    store = f"sqlite:///{tmp_path}/ckpt.db"
    out = crash_and_recover(tmp_path, "pipeline", store, SPARK_CKPT_TEST_CRASH=crash_at,
                            SPARK_CKPT_TEST_STRATEGY=strategy, SPARK_CKPT_TEST_POLICY_OPTIONS=json.dumps(options),
                            SPARK_CKPT_TEST_INTERVAL="3")
    assert_recovered_like_uninterrupted(out, "pipeline")
    if strategy == "adaptive":  # 2 operations >= 3 / 2 after the expensive fetch; 3 more not reached
        assert out["replayed"] == ["fetch:0", "transform:0"]
    if strategy == "after_nodes":  # checkpointed after publish's superstep: only report runs again
        assert out["calls_after"] == ["report:0"]
    # the write totals went on across the crash: every record stored is counted, and all but the one
    # resumed from (timed by the process that died) and the newest (its write ends after it) are timed
    stats = cli("--store", store, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    (row,) = json.loads(stats.stdout)
    backend = open_backend(store)
    try:
        headers = backend.list(execution_id=row["execution"])
    finally:
        backend.close()
    assert row["status"] == "completed" and row["checkpoints"] == len(headers)
    assert row["bytes"] == sum(h.size for h in headers) and row["writes_timed"] == len(headers) - 2
