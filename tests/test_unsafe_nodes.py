"""Graph nodes not safe to re-run (``@not_safe_to_rerun`` on a node, ``CheckpointConfig.unsafe_nodes``):
a worker SIGKILLed inside the marked node's visit, recovery refuses before anything runs, and runs it
again only when allowed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import graphs
import unsafe_node_graphs
from spark_ckpt import CheckpointConfig, checkpointed, not_safe_to_rerun
from spark_ckpt.errors import ConfigError, UnsafeToRetryError

WORKER = Path(__file__).with_name("unsafe_node_worker.py")


def worker(mode: str, graph: str, store: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_TEST_")}
    environ.update(SPARK_CKPT_TEST_CALLS=str(tmp_path / f"calls-{mode}.txt"),
                   SPARK_CKPT_TEST_EFFECTS=str(tmp_path / "effects.txt"), **env)
    return subprocess.run([sys.executable, str(WORKER), mode, graph, store], env=environ, capture_output=True,
                          text=True, timeout=120)


def output(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def uninterrupted(graph: str, tmp_path: Path) -> dict:
    bare = tmp_path / "bare"
    bare.mkdir()
    return output(worker("run", graph, f"sqlite:///{bare}/ckpt.db", bare))


def crash(graph: str, store: str, tmp_path: Path, **env: str) -> None:
    done = worker("run", graph, store, tmp_path, **env)
    assert done.returncode == -signal.SIGKILL, f"the worker was meant to die by SIGKILL: {done.stderr[-2000:]}"


def assert_refused(graph: str, store: str, tmp_path: Path, **env: str) -> dict:
    """Recovery refuses, twice, running nothing and making no payment."""
    effects = lines(tmp_path / "effects.txt")
    for _ in range(2):
        out = output(worker("recover", graph, store, tmp_path, **env))
        assert out["error"] == "UnsafeToRetryError", out
        assert "node 'charge' visit 0" in out["message"] and "{'amount': 42}" in out["message"]
        assert "allow_unsafe_rerun=True" in out["message"]
        assert lines(tmp_path / "calls-recover.txt") == []  # no node ran live
        assert lines(tmp_path / "effects.txt") == effects
    return out


def assert_allowed_completes(graph: str, store: str, tmp_path: Path, **env: str) -> dict:
    out = output(worker("recover-allow", graph, store, tmp_path, **env))
    expected = uninterrupted(graph, tmp_path)
    assert out["result"] == expected["result"] and out["state"] == expected["state"]
    assert "charge:0" in out["live"]
    return out


@pytest.fixture(params=["sqlite", "file"])
def store(request, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/ckpt.db" if request.param == "sqlite" else f"file://{tmp_path}/ckpt"


@pytest.mark.parametrize("when", ["before", "after"])
def test_killed_inside_a_marked_node_recovery_refuses_then_runs_it_again_when_allowed(tmp_path, store, when) -> None:
    crash("line", store, tmp_path, SPARK_CKPT_TEST_CRASH=f"charge:0:{when}")
    paid = ["charge:42"] if when == "after" else []
    assert lines(tmp_path / "effects.txt") == paid
    assert_refused("line", store, tmp_path)
    assert_allowed_completes("line", store, tmp_path)
    assert lines(tmp_path / "effects.txt") == paid + ["charge:42"]  # the allowed re-run paid (again)


def test_killed_in_a_fan_out_superstep_after_an_unmarked_sibling_completed(tmp_path) -> None:
    store = f"sqlite:///{tmp_path}/ckpt.db"
    crash("fanout", store, tmp_path, SPARK_CKPT_TEST_CRASH="charge:0:after", SPARK_CKPT_TEST_WAIT_FOR_NOTE="1")
    assert lines(tmp_path / "effects.txt") == ["note:0", "charge:42"]
    assert_refused("fanout", store, tmp_path)
    out = assert_allowed_completes("fanout", store, tmp_path)
    assert "note:0" in out["live"]  # the superstep ran again, the sibling with it


def test_killed_in_an_unmarked_node_after_the_marked_one_recovers_without_paying_again(tmp_path) -> None:
    # every 5 supersteps: the boundary after the payment is stored anyway, so it is replayed, not refused
    store = f"sqlite:///{tmp_path}/ckpt.db"
    crash("line", store, tmp_path, SPARK_CKPT_TEST_CRASH="receipt:0:before", SPARK_CKPT_TEST_INTERVAL="5")
    out = output(worker("recover", "line", store, tmp_path, SPARK_CKPT_TEST_INTERVAL="5"))
    expected = uninterrupted("line", tmp_path)
    assert out["result"] == expected["result"] and out["state"] == expected["state"]
    assert out["live"] == ["receipt:0"]
    assert lines(tmp_path / "effects.txt") == ["charge:42"]


def test_unsafe_nodes_config_marks_the_node(tmp_path) -> None:
    store = f"sqlite:///{tmp_path}/ckpt.db"
    crash("line", store, tmp_path, SPARK_CKPT_TEST_CRASH="charge:0:after", SPARK_CKPT_TEST_MARK="config")
    assert_refused("line", store, tmp_path, SPARK_CKPT_TEST_MARK="config")
    assert_allowed_completes("line", store, tmp_path, SPARK_CKPT_TEST_MARK="config")


def test_an_unmarked_node_killed_the_same_way_is_run_again(tmp_path) -> None:
    store = f"sqlite:///{tmp_path}/ckpt.db"
    crash("line", store, tmp_path, SPARK_CKPT_TEST_CRASH="charge:0:after", SPARK_CKPT_TEST_MARK="none")
    out = output(worker("recover", "line", store, tmp_path, SPARK_CKPT_TEST_MARK="none"))
    assert out["live"] == ["charge:0", "receipt:0"]
    assert lines(tmp_path / "effects.txt") == ["charge:42", "charge:42"]  # what the marker is for


@pytest.mark.parametrize("durability", ["async", "exit"])
def test_the_marker_is_stored_before_the_visit_under_async_and_exit_durability(tmp_path, durability) -> None:
    store = f"sqlite:///{tmp_path}/ckpt.db"
    env = {"SPARK_CKPT_TEST_DURABILITY": durability}
    crash("line", store, tmp_path, SPARK_CKPT_TEST_CRASH="charge:0:after", **env)
    assert_refused("line", store, tmp_path, **env)
    assert_allowed_completes("line", store, tmp_path, **env)


# -- in one process -------------------------------------------------------------------------------------
def wrapped(tmp_path: Path, mark: str = "class", name: str = "line", **options) -> object:
    store = f"sqlite:///{tmp_path}/ckpt.db"
    return checkpointed(unsafe_node_graphs.build(name, mark), config=unsafe_node_graphs.config_for(store, mark, **options),
                        graph_id=f"{name}-unsafe")


@pytest.fixture
def effects_file(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SPARK_CKPT_TEST_EFFECTS", str(tmp_path / "effects.txt"))
    return tmp_path / "effects.txt"


@pytest.mark.parametrize("mark", ["class", "method", "instance", "bound", "config"])
def test_a_failed_marked_visit_is_refused_too_whatever_marks_it(tmp_path, monkeypatch, effects_file, mark) -> None:
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "charge:0")
    with pytest.raises(RuntimeError, match="card declined"):
        asyncio.run(wrapped(tmp_path, mark).run({"amount": 7}))
    monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")
    graph = wrapped(tmp_path, mark)
    graphs.CALLS.clear()
    for _ in range(2):
        with pytest.raises(UnsafeToRetryError, match=r"node 'charge' visit 0 .*failed with RuntimeError: card declined"):
            asyncio.run(graph.recover_and_continue())
    assert graphs.CALLS == []
    result = asyncio.run(graph.recover_and_continue(allow_unsafe_rerun=True))
    assert result.content == {"receipt": "paid 7"} and lines(effects_file) == ["charge:7"]


def test_a_failed_unmarked_visit_is_recovered_as_before(tmp_path, monkeypatch, effects_file) -> None:
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "charge:0")
    with pytest.raises(RuntimeError):
        asyncio.run(wrapped(tmp_path, "none").run({"amount": 7}))
    monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")
    assert asyncio.run(wrapped(tmp_path, "none").recover_and_continue()).content == {"receipt": "paid 7"}


def test_continue_from_the_newest_checkpoint_refuses_and_skip_node_stands_in(tmp_path, monkeypatch, effects_file) -> None:
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "charge:0")
    with pytest.raises(RuntimeError):
        asyncio.run(wrapped(tmp_path).run({"amount": 7}))
    monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")
    graph = wrapped(tmp_path)
    with pytest.raises(UnsafeToRetryError):
        asyncio.run(graph.continue_from_checkpoint())
    # the payment went through after all: its output is given instead of running it
    graph.skip_node("charge", output={"charged": 7})
    assert asyncio.run(graph.continue_from_checkpoint()).content == {"receipt": "paid None"}
    assert lines(effects_file) == []


def test_the_marker_is_the_only_record_added_and_only_for_marked_nodes(tmp_path, effects_file) -> None:
    counts = {}
    for mark in ("none", "class"):
        (tmp_path / mark).mkdir()
        graph = wrapped(tmp_path / mark, mark)
        asyncio.run(graph.run({"amount": 1}))
        counts[mark] = len(graph.backend.list(graph_id="line-unsafe"))
    assert counts["class"] == counts["none"] + 1  # one marker record for the one marked visit


def test_unknown_unsafe_node_keys_are_refused_naming_the_graphs_nodes(tmp_path) -> None:
    config = CheckpointConfig(backend=f"sqlite:///{tmp_path}/ckpt.db", unsafe_nodes={"chrage"})
    with pytest.raises(ConfigError, match=r"'chrage'.*prepare, charge, receipt"):
        checkpointed(unsafe_node_graphs.build("line", "none"), config=config)
    with pytest.raises(ConfigError):
        CheckpointConfig(unsafe_nodes=5)


def test_marking_a_tool_is_unchanged() -> None:
    def pay() -> str:
        return "paid"

    assert not_safe_to_rerun(pay) is pay and pay() == "paid"


# -- other execution modes --------------------------------------------------------------------------------
def test_long_running_killed_inside_a_marked_node_refuses_then_completes_when_allowed(tmp_path) -> None:
    store = f"sqlite:///{tmp_path}/ckpt.db"
    crash("stream", store, tmp_path, SPARK_CKPT_TEST_CRASH="doubler:2")
    for _ in range(2):
        out = output(worker("recover", "stream", store, tmp_path))
        assert out["error"] == "UnsafeToRetryError" and "node 'doubler' visit 2" in out["message"], out
        assert lines(tmp_path / "calls-recover.txt") == []
    out = output(worker("recover-allow", "stream", store, tmp_path))
    bare = tmp_path / "bare"
    bare.mkdir()
    expected = output(worker("run", "stream", f"sqlite:///{bare}/ckpt.db", bare))
    assert out["result"] == expected["result"] and out["state"] == expected["state"]
    assert "doubler:2" in lines(tmp_path / "calls-recover-allow.txt")


def test_a_task_batch_stops_at_a_refused_task_and_finishes_when_allowed(tmp_path, monkeypatch, effects_file) -> None:
    from spark.graphs.tasks import Task, TaskScheduler
    from spark.nodes.types import NodeMessage

    def scheduler() -> TaskScheduler:
        tasks = TaskScheduler()
        for n in (1, 2, 3):
            tasks.add_task(Task(task_id=f"t{n}", inputs=NodeMessage(content={"amount": n})))
        return tasks

    monkeypatch.setenv("SPARK_CKPT_TEST_DECLINE", "2")
    with pytest.raises(RuntimeError, match="declined for 2"):
        asyncio.run(wrapped(tmp_path).run_tasks(scheduler()))
    monkeypatch.delenv("SPARK_CKPT_TEST_DECLINE")
    graph = wrapped(tmp_path)
    with pytest.raises(UnsafeToRetryError, match=r"node 'charge' visit 0 .*'amount': 2"):
        asyncio.run(graph.recover_tasks())
    with pytest.raises(UnsafeToRetryError):  # the batch is still unfinished: refused again
        asyncio.run(graph.recover_and_continue())
    assert lines(effects_file) == ["charge:1"]
    results = asyncio.run(graph.recover_tasks(allow_unsafe_rerun=True))
    assert sorted(results.completed) == ["t1", "t2", "t3"] and not results.failed
    assert lines(effects_file) == ["charge:1", "charge:2", "charge:3"]


def test_a_marked_node_inside_a_subgraph_marks_the_outer_visit(tmp_path, monkeypatch, effects_file) -> None:
    from spark.graphs import Graph
    from spark.graphs.graph import SubgraphNode

    def outer() -> Graph:
        prepare = unsafe_node_graphs.Prepare(id="order")
        pay = SubgraphNode(id="pay", graph=unsafe_node_graphs.build("line", "class"))
        prepare >> pay
        return Graph(start=prepare)

    def wrap() -> object:
        return checkpointed(outer(), config=CheckpointConfig(backend=f"sqlite:///{tmp_path}/ckpt.db"), graph_id="shop")

    monkeypatch.setenv("SPARK_CKPT_TEST_DECLINE", "5")
    with pytest.raises(RuntimeError, match="declined"):
        asyncio.run(wrap().run({"amount": 5}))
    monkeypatch.delenv("SPARK_CKPT_TEST_DECLINE")
    graph = wrap()
    with pytest.raises(UnsafeToRetryError, match=r"node 'pay' visit 0 \(superstep 1, inside it node 'charge' visit 0"):
        asyncio.run(graph.recover_and_continue())
    result = asyncio.run(graph.recover_and_continue(allow_unsafe_rerun=True))
    assert result.content == {"receipt": "paid 5"} and lines(effects_file) == ["charge:5"]
