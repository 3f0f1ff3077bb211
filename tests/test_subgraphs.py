"""Spark SubgraphNodes in a checkpointed graph: the inner visits are journaled inside the outer visit,
so a process killed inside the inner loop re-runs only the inner superstep that was in flight.

Crash tests: a worker (``subgraph_worker.py``) SIGKILLs itself inside an inner node visit, a fresh
process recovers; result and graph state are compared with an uninterrupted bare Spark run, and the
executions of every node (inner nodes included) are counted across both processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import graphs
import subgraph_graphs

from spark.graphs import Graph
from spark.graphs.graph import SubgraphNode

from spark_ckpt import CheckpointConfig, checkpointed
from spark_ckpt.adapters.subgraphs import NOTHING_COMPLETED
from spark_ckpt.adapters.graph import CheckpointedGraph

WORKER = Path(__file__).with_name("subgraph_worker.py")
INPUT = {"n": 1}


def bare_run(name: str) -> tuple[dict, dict, list[str]]:
    graphs.CALLS.clear()
    graph = subgraph_graphs.build(name)
    result = asyncio.run(graph.run(INPUT))
    return result.content, graph.state.get_snapshot(), list(graphs.CALLS)


def run_worker(mode: str, name: str, store: str, calls: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_TEST_")}
    environ.update(SPARK_CKPT_TEST_CALLS=str(calls), **env)
    return subprocess.run([sys.executable, str(WORKER), mode, name, store, f"{name}-crash"],
                          env=environ, capture_output=True, text=True, timeout=120)


def read_calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def crash_and_recover(tmp_path: Path, name: str, store: str, crash_at: str) -> dict:
    first = run_worker("run", name, store, tmp_path / "calls-1.txt", SPARK_CKPT_TEST_CRASH=crash_at)
    assert first.returncode == -signal.SIGKILL, f"worker was meant to die by SIGKILL: {first.stderr[-2000:]}"
    second = run_worker("recover", name, store, tmp_path / "calls-2.txt")
    assert second.returncode == 0, second.stderr[-3000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])
    out["calls_before"], out["calls_after"] = read_calls(tmp_path / "calls-1.txt"), read_calls(tmp_path / "calls-2.txt")
    return out


def assert_like_uninterrupted(out: dict, name: str, *, ran_twice: list[str]) -> None:
    """Result and state as the uninterrupted run; every visit (inner ones too) executed exactly once
    over both processes, except ``ran_twice`` (the inner superstep in flight at the crash)."""
    result, state, visits = bare_run(name)
    assert out["result"] == result
    assert out["state"] == state
    executed = Counter(out["calls_before"]) + Counter(out["calls_after"])
    assert sorted(executed) == sorted(visits), "every visit of the uninterrupted run ran, and no other"
    assert sorted(v for v, n in executed.items() if n > 1) == sorted(ran_twice)
    assert max(executed.values()) <= 2


@pytest.fixture(params=["sqlite", "file"])
def store(request, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/ckpt.db" if request.param == "sqlite" else f"file://{tmp_path}/ckpt"


# -- uninterrupted ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(subgraph_graphs.BUILDERS))
def test_wrapped_runs_like_bare_spark(tmp_path: Path, name: str) -> None:
    """Template, factory, isolated state, a checkpointed template, siblings, nested: same result, state
    and visits as bare Spark, and the outer execution completes."""
    result, state, visits = bare_run(name)
    graphs.CALLS.clear()
    graph = checkpointed(subgraph_graphs.build(name), config=CheckpointConfig(backend=f"sqlite:///{tmp_path}/c.db"))
    assert asyncio.run(graph.run(INPUT)).content == result
    assert graph.get_state_snapshot() == state
    assert graphs.CALLS == visits
    assert graph.get_last_checkpoint().status == "completed"


# -- killed inside the inner loop ---------------------------------------------------------------------
@pytest.mark.parametrize("crash_at", ["loop:1", "loop:3", "tail:0"])
def test_sigkill_inside_the_inner_loop(tmp_path: Path, store: str, crash_at: str) -> None:
    """Only the inner superstep in flight runs again: the inner visits before it replay from the inner
    record stored in the outer visit's in-flight journal."""
    out = crash_and_recover(tmp_path, "sub", store, crash_at)
    assert_like_uninterrupted(out, "sub", ran_twice=[crash_at])
    assert out["calls_after"][0] == crash_at
    assert out["replayed"] == ["pre:0"] and out["live"] == ["sub:0", "post:0"]
    [inner] = out["subgraphs"]
    assert inner["resumed_from"] is not None and inner["reason"] is None
    before_crash = out["calls_before"][1:-1]  # the inner visits completed before the crash
    assert inner["replayed"] == before_crash and inner["live"][0] == crash_at


def test_sigkill_in_the_first_inner_superstep_runs_the_subgraph_from_its_start(tmp_path: Path) -> None:
    out = crash_and_recover(tmp_path, "sub", f"sqlite:///{tmp_path}/ckpt.db", "loop:0")
    assert_like_uninterrupted(out, "sub", ran_twice=["loop:0"])
    [inner] = out["subgraphs"]
    assert inner["resumed_from"] is None and inner["reason"] == NOTHING_COMPLETED


def test_sigkill_after_the_subgraph_completed_replays_its_outer_visit(tmp_path: Path) -> None:
    out = crash_and_recover(tmp_path, "sub", f"sqlite:///{tmp_path}/ckpt.db", "post:0")
    assert_like_uninterrupted(out, "sub", ran_twice=["post:0"])
    assert "sub:0" in out["replayed"] and out["subgraphs"] == []


@pytest.mark.parametrize("name", ["sub_factory", "sub_isolated", "sub_checkpointed"])
def test_sigkill_inside_other_kinds_of_subgraph(tmp_path: Path, name: str) -> None:
    """A graph_factory, share_state=False (the inner state is its own) and graph=checkpointed(...)."""
    out = crash_and_recover(tmp_path, name, f"sqlite:///{tmp_path}/ckpt.db", "loop:2")
    assert_like_uninterrupted(out, name, ran_twice=["loop:2"])
    [inner] = out["subgraphs"]
    assert inner["replayed"] == ["loop:0", "loop:1"]


@pytest.mark.parametrize("crash_at", ["loop:2", "m1:0"])
def test_sigkill_inside_a_nested_subgraph(tmp_path: Path, crash_at: str) -> None:
    """A subgraph inside a subgraph: the innermost record travels inside the middle one."""
    out = crash_and_recover(tmp_path, "sub_nested", f"sqlite:///{tmp_path}/ckpt.db", crash_at)
    assert_like_uninterrupted(out, "sub_nested", ran_twice=[crash_at])
    [middle] = out["subgraphs"]
    assert middle["resumed_from"] is not None and middle["replayed"][0] == "m0:0"
    if crash_at == "loop:2":
        [innermost] = middle["nested"]
        assert innermost["replayed"] == ["loop:0", "loop:1"] and innermost["live"][0] == "loop:2"
    else:
        assert "inner_sub:0" in middle["replayed"] and middle["nested"] == []


def test_sigkill_with_a_sibling_sharing_state_reruns_the_subgraph_from_its_start(tmp_path: Path) -> None:
    """share_state=True with a sibling visit in the same outer superstep: the inner snapshot would hold
    the sibling's partial effects and the sibling runs again, so no inner record is kept; the subgraph
    runs again from its start on the outer state restored from the outer boundary (still exact)."""
    out = crash_and_recover(tmp_path, "sub_siblings", f"sqlite:///{tmp_path}/ckpt.db", "loop:2")
    assert_like_uninterrupted(out, "sub_siblings", ran_twice=["side:0", "loop:0", "loop:1", "loop:2"])
    [inner] = out["subgraphs"]
    assert inner["resumed_from"] is None and "sibling" in inner["reason"]
    assert inner["live"][:3] == ["loop:0", "loop:1", "loop:2"]


# -- in process ---------------------------------------------------------------------------------------
def test_a_failure_inside_the_subgraph_is_continued_from_the_last_inner_superstep(tmp_path: Path, monkeypatch) -> None:
    result, state, visits = bare_run("sub")
    config = CheckpointConfig(backend=f"sqlite:///{tmp_path}/c.db")
    graphs.CALLS.clear()
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "loop:2")
    graph = checkpointed(subgraph_graphs.build("sub"), config=config, graph_id="failing")
    with pytest.raises(RuntimeError, match="injected failure in loop"):
        asyncio.run(graph.run(INPUT))
    assert graph.get_last_checkpoint().status == "failed"
    monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")
    first = list(graphs.CALLS)
    graphs.CALLS.clear()
    fresh = checkpointed(subgraph_graphs.build("sub"), config=config, graph_id="failing")
    assert asyncio.run(fresh.recover_and_continue()).content == result
    assert fresh.get_state_snapshot() == state
    assert graphs.CALLS == ["loop:2", "loop:3", "tail:0", "post:0"]
    assert sorted(Counter(first) + Counter(graphs.CALLS)) == sorted(visits)


def test_checkpointed_graph_as_a_subgraph_of_a_bare_graph_runs_as_its_own_execution(tmp_path: Path) -> None:
    """SubgraphNode(graph=checkpointed(...)) in an unwrapped outer graph: each subgraph execution is an
    execution of the inner graph, in the inner graph's own store."""
    result, state, visits = bare_run("sub")
    template = checkpointed(subgraph_graphs.inner(), config=CheckpointConfig(backend=f"sqlite:///{tmp_path}/in.db"),
                            graph_id="inner")
    outer = subgraph_graphs.around(SubgraphNode(id="sub", graph=template))
    graphs.CALLS.clear()
    assert asyncio.run(outer.run(INPUT)).content == result
    assert outer.state.get_snapshot() == state and graphs.CALLS == visits
    executions = {h.execution_id for h in template.list_checkpoints()}
    assert len(executions) == 1
    assert template.list_checkpoints(1)[0].status == "completed"
    # the template itself never ran: it stays clean for the next clone
    assert all(n._state.get("process_count", 0) == 0 for n in template.nodes)


def test_checkpointed_subgraph_inside_a_checkpointed_graph_is_journaled_in_the_outer_visit(tmp_path: Path) -> None:
    template = checkpointed(subgraph_graphs.inner(), config=CheckpointConfig(backend=f"sqlite:///{tmp_path}/in.db"),
                            graph_id="inner")
    outer = checkpointed(subgraph_graphs.around(SubgraphNode(id="sub", graph=template)),
                         config=CheckpointConfig(backend=f"sqlite:///{tmp_path}/out.db"))
    assert asyncio.run(outer.run(INPUT)).content == bare_run("sub")[0]
    assert template.list_checkpoints() == []  # its records went into the outer execution's visit


def test_copy_gives_a_clean_runnable_clone(tmp_path: Path) -> None:
    template = checkpointed(subgraph_graphs.inner(), config=CheckpointConfig(backend=f"sqlite:///{tmp_path}/in.db"),
                            graph_id="inner")
    clone = template.copy()
    assert isinstance(clone, CheckpointedGraph) and clone.graph is not template.graph
    assert (clone.graph_id, clone.structure, clone.node_keys) == (template.graph_id, template.structure,
                                                                   template.node_keys)
    for node in clone.graph.nodes:  # wrapped by the clone's wrapper, not the template's
        assert node._spark_ckpt_wrapped is clone
    graphs.CALLS.clear()
    asyncio.run(clone.run({}))
    assert graphs.CALLS == ["loop:0", "loop:1", "loop:2", "loop:3", "tail:0"]
    assert all(n._state.get("process_count", 0) == 0 for n in template.graph.nodes)


def test_state_and_event_bus_set_on_the_wrapper_reach_the_wrapped_graph() -> None:
    graph = checkpointed(Graph(start=graphs.Step(id="s0")), config=CheckpointConfig(backend="memory://sg-attrs"))
    other = Graph(start=graphs.Step(id="s1"))
    graph.state = other.state
    graph.event_bus = other.event_bus
    assert graph.graph.state is other.state and graph.graph.event_bus is other.event_bus


def test_a_graph_wrapped_elsewhere_is_a_bare_template_to_deep_copy() -> None:
    """A graph that was wrapped (and run) on its own is also used as a plain SubgraphNode template: Spark's
    deep copy gives the bare graph, without the wrapper's backend or node wrappers running the template."""
    import copy

    inner = graphs.chain(2)
    asyncio.run(checkpointed(inner, config=CheckpointConfig(backend="memory"), graph_id="inner").run({}))
    expected_inner = graphs.chain(2)
    asyncio.run(expected_inner.run({}))
    bare_outer = Graph(start=SubgraphNode(id="sub", graph=expected_inner))
    expected = asyncio.run(bare_outer.run({}))

    outer = Graph(start=SubgraphNode(id="sub", graph=inner))
    assert asyncio.run(outer.run({})).content == expected.content
    assert outer.state.get_snapshot() == bare_outer.state.get_snapshot()
    clone = copy.deepcopy(inner)
    assert all("_spark_ckpt_wrapped" not in n.__dict__ and "do" not in n.__dict__ for n in clone.nodes)
