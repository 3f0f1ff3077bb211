"""Long-running (actor-style) graphs: per-message commits, recovered after a real SIGKILL with no
message lost and none processed twice (``spark_ckpt.adapters.graph_long_running``)."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import long_running_graphs as lrg
from spark_ckpt import CheckpointConfig, checkpointed
from spark_ckpt.errors import UnsupportedFeatureError

WORKER = Path(__file__).with_name("long_running_worker.py")
N = 12
NODES = ("source", "doubler", "counter")


def node_states(graph) -> dict:
    return {node.id: {"process_count": node._state.get("process_count"), "seen": node._state.get("seen")}
            for node in graph.nodes}


def calls_in(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def per_node(calls: list[str]) -> dict[str, int]:
    return dict(collections.Counter(call.split(":")[0] for call in calls))


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> dict:
    """The unwrapped graph's run: result, graph state, node states, processings per node."""
    calls = tmp_path_factory.mktemp("bare") / "calls.txt"
    os.environ["SPARK_CKPT_TEST_CALLS"] = str(calls)
    try:
        graph = lrg.build()
        result = asyncio.run(graph.run(lrg.task(N)))
    finally:
        del os.environ["SPARK_CKPT_TEST_CALLS"]
    return {"result": result.content, "state": graph.get_state_snapshot(), "nodes": node_states(graph),
            "calls": calls_in(calls)}


def test_bare_run_processes_every_message_once(bare):
    assert per_node(bare["calls"]) == {node: N for node in NODES}
    assert bare["result"] == {"count": N, "item": N - 1}
    assert bare["state"]["doubled"] == [2 * i for i in range(N)]


def test_wrapped_run_equals_bare(tmp_path, bare, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("SPARK_CKPT_TEST_CALLS", str(calls))
    graph = checkpointed(lrg.build(), config=CheckpointConfig(backend=f"sqlite:///{tmp_path}/s.db"), graph_id="lr")
    result = asyncio.run(graph.run(lrg.task(N)))
    assert result.content == bare["result"]
    assert graph.get_state_snapshot() == bare["state"]
    assert node_states(graph.graph) == bare["nodes"]
    assert sorted(calls_in(calls)) == sorted(bare["calls"])
    last = graph.get_last_checkpoint()
    assert last.status == "completed"
    # one record per processed message, plus the start and the final record
    assert len(last.execution_history) == 3 * N
    assert {v.input_from for v in last.execution_history if v.node_key == "source"} >= {"initial"}


def run_worker(mode: str, store: str, calls: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_TEST_")}
    environ.update(SPARK_CKPT_TEST_CALLS=str(calls), **env)
    return subprocess.run([sys.executable, str(WORKER), mode, store, "lr-crash", str(N)],
                          env=environ, capture_output=True, text=True, timeout=120)


CRASHES = {
    "early": {"SPARK_CKPT_TEST_CRASH": "source:1"},
    "middle": {"SPARK_CKPT_TEST_CRASH": "doubler:6"},
    "inside-processing-of-the-end-node": {"SPARK_CKPT_TEST_CRASH": "counter:4"},
    "just-after-a-commit": {"SPARK_CKPT_TEST_CRASH_AFTER_CKPT": "9"},
    "late": {"SPARK_CKPT_TEST_CRASH": "counter:11"},
}


@pytest.mark.parametrize("backend", ["sqlite", "file"])
@pytest.mark.parametrize("crash", list(CRASHES))
def test_killed_while_fed_messages_recovers_with_none_lost_or_twice(tmp_path, bare, crash, backend):
    if backend == "file" and crash not in ("middle", "just-after-a-commit"):
        pytest.skip("the file backend runs the two crash points that differ most")
    import json

    store = f"sqlite:///{tmp_path}/s.db" if backend == "sqlite" else f"file://{tmp_path}/store"
    first_calls, second_calls = tmp_path / "calls-1.txt", tmp_path / "calls-2.txt"
    first = run_worker("run", store, first_calls, **CRASHES[crash])
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    second = run_worker("recover", store, second_calls)
    assert second.returncode == 0, second.stderr[-3000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])
    before, after = calls_in(first_calls), calls_in(second_calls)

    assert out["result"] == bare["result"]
    assert out["state"] == bare["state"]
    assert out["nodes"] == bare["nodes"]
    # every message processed, by each node, as often as in the uninterrupted run ...
    assert sorted(set(before) | set(after)) == sorted(bare["calls"])
    # ... and none twice, except those whose visit was in flight at the kill (at most one per node)
    twice = collections.Counter(before + after) - collections.Counter(set(before + after))
    assert all(count == 1 for count in twice.values())
    assert len(twice) <= len(NODES)
    assert len({call.split(":")[0] for call in twice}) == len(twice)
    if crash != "just-after-a-commit":
        assert CRASHES[crash]["SPARK_CKPT_TEST_CRASH"] in twice  # the killed visit ran again
    # the recovering process ran live exactly what it processed
    assert per_node(after) == per_node([f"{k.split(':')[0]}:x" for k in out["live"]])


# -- in-process behaviour ------------------------------------------------------------------------------
def wrapped(tmp_path, graph=None, graph_id="lr"):
    return checkpointed(graph or lrg.build(), config=CheckpointConfig(backend=f"sqlite:///{tmp_path}/s.db"),
                        graph_id=graph_id)


def test_resume_from_a_spark_checkpoint_through_the_wrapper(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARK_CKPT_TEST_CALLS", raising=False)

    async def spark_checkpoint():
        graph = lrg.build()
        await graph.state.set("count", 100)
        await graph.state.set("total", 7)
        return await graph.checkpoint_state(iteration=0)

    checkpoint = asyncio.run(spark_checkpoint())
    bare_graph = lrg.build()
    bare_result = asyncio.run(bare_graph.resume_from(checkpoint, task=lrg.task(5)))
    graph = wrapped(tmp_path)
    result = asyncio.run(graph.resume_from(checkpoint, task=lrg.task(5)))
    assert result.content == bare_result.content == {"count": 105, "item": 4}
    assert graph.get_state_snapshot() == bare_graph.get_state_snapshot()
    last = graph.get_last_checkpoint()
    assert last.status == "completed" and last.graph_state["count"] == 105
    assert last.run_input["value"]["type"] == "resumable"


def test_a_failed_visit_is_recorded_failed_and_recovery_continues_from_the_committed_cut(tmp_path, monkeypatch, bare):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("SPARK_CKPT_TEST_CALLS", str(calls))
    failing = {"armed": True}
    original = lrg.Counter.process

    async def process(self, context):
        if failing["armed"] and context.inputs.content["item"] == 5:
            failing["armed"] = False
            raise RuntimeError("counter failed on item 5")
        return await original(self, context)

    monkeypatch.setattr(lrg.Counter, "process", process)
    graph = wrapped(tmp_path)
    with pytest.raises(RuntimeError, match="item 5"):  # as bare: the node's exception
        asyncio.run(graph.run(lrg.task(N)))
    last = graph.get_last_checkpoint()
    assert last.status == "failed" and last.failure.node_key == "counter"
    assert last.graph_state["count"] == 5  # items 0-4 committed, nothing of the failed visit
    again = wrapped(tmp_path)
    result = asyncio.run(again.recover_and_continue())
    assert result.content == bare["result"]
    assert again.get_state_snapshot() == bare["state"]
    assert node_states(again.graph) == {**bare["nodes"], "counter": {"process_count": N, "seen": N}}
    assert sorted(set(calls_in(calls))) == sorted(bare["calls"])


def test_stop_all_nodes_ends_the_run_as_bare_and_the_final_record_is_the_state(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARK_CKPT_TEST_CALLS", raising=False)
    graph = wrapped(tmp_path)

    async def main():
        run = asyncio.ensure_future(graph.run(lrg.task(400)))
        while (await graph.graph.state.get("count", 0)) < 3:
            await asyncio.sleep(0.01)
        graph.stop_all_nodes()  # Spark's own, through the wrapper
        return await asyncio.wait_for(run, 30)

    asyncio.run(main())
    last = graph.get_last_checkpoint()
    assert last.status == "completed"
    assert 3 <= last.graph_state["count"] < 400
    assert last.graph_state == {k: v for k, v in graph.graph.state.get_raw().items() if not k.startswith("__")}


def test_budget_timeout_raises_as_bare_and_is_recorded_failed(tmp_path, monkeypatch):
    from spark.graphs.tasks import Budget

    monkeypatch.delenv("SPARK_CKPT_TEST_CALLS", raising=False)
    task = lrg.task(400)
    task.budget = Budget(max_seconds=1)
    graph = wrapped(tmp_path)
    with pytest.raises(TimeoutError, match="max_seconds"):
        asyncio.run(graph.run(task))
    last = graph.get_last_checkpoint()
    assert last.status == "failed" and last.failure.error_type == "TimeoutError"
    assert 0 < last.graph_state["count"] < 400
    assert last.graph_state["doubled"][:last.graph_state["count"]] == [2 * i for i in range(last.graph_state["count"])]


class InPlace(lrg.Node):
    async def process(self, context):
        (await context.graph_state.get("xs")).append(context.inputs.content["i"])
        return {"done": True}


def test_a_value_changed_in_place_is_refused_not_checkpointed_wrong(tmp_path):
    from spark.graphs import Graph

    node = InPlace(id="inplace")
    graph = wrapped(tmp_path, Graph(start=node, end=node, initial_state={"xs": []}, idle_timeout=0.2), "inplace")
    with pytest.raises(UnsupportedFeatureError, match="'xs'.*in place"):
        asyncio.run(graph.run(lrg.task(1)))
    assert graph.get_last_checkpoint().status == "failed"
    assert graph.get_last_checkpoint().graph_state["xs"] == []


def test_event_edges_are_refused_before_anything_runs_or_is_stored(tmp_path, monkeypatch):
    from spark.graphs import Graph

    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("SPARK_CKPT_TEST_CALLS", str(calls))
    source, counter = lrg.Source(id="source"), lrg.Counter(id="counter")
    source >> counter
    source.on_event("topic") >> counter
    graph = wrapped(tmp_path, Graph(start=source, end=counter, idle_timeout=0.2), "events")
    with pytest.raises(UnsupportedFeatureError, match="event or timer edges.*Nothing was run or stored"):
        asyncio.run(graph.run(lrg.task(3)))
    assert not calls.exists()
    assert graph.backend.list(graph_id="events") == []


def test_a_fork_of_a_long_running_execution_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARK_CKPT_TEST_CALLS", raising=False)
    graph = wrapped(tmp_path)
    asyncio.run(graph.run(lrg.task(3)))
    headers = sorted(graph.backend.list(graph_id="lr"), key=lambda h: h.seq)
    again = wrapped(tmp_path)
    with pytest.raises(UnsupportedFeatureError, match="fork"):
        asyncio.run(again.continue_from_checkpoint(headers[2].checkpoint_id))
    assert len(graph.backend.list(graph_id="lr")) == len(headers)


def test_ledger_commits_a_visit_that_read_an_uncommitted_write_with_or_after_its_writer():
    from spark_ckpt.engine.mailbox_ledger import MailboxLedger

    ledger = MailboxLedger({"k": 0}, queued={"a": [{"id": "m1"}], "b": [{"id": "m2"}]})
    writer, reader = ledger.begin("a", "m1", 0.0), ledger.begin("b", "m2", 0.0)
    ledger.wrote(writer, "k", 1)
    ledger.read(reader, ["k"])  # a dirty read
    ledger.wrote(reader, "j", 2)
    ledger.finished(reader)
    assert ledger.committable() == []  # its writer is still running
    ledger.finished(writer)
    group = ledger.committable()
    assert group == [reader, writer]  # together, in the order they finished
    ledger.commit(group)
    assert ledger.shadow == {"k": 1, "j": 2}
    assert ledger.queued == {"a": [], "b": []}
    # two visits that read each other's writes commit in one group
    x, y = ledger.begin("a", "m3", 0.0), ledger.begin("b", "m4", 0.0)
    ledger.wrote(x, "p", 1)
    ledger.wrote(y, "q", 1)
    ledger.read(x, ["q"])
    ledger.read(y, ["p"])
    ledger.finished(x)
    assert ledger.committable() == []
    ledger.finished(y)
    assert set(ledger.committable()) == {x, y}


def test_ledger_never_lets_an_older_write_replace_a_newer_committed_one():
    """A visit writes a key, then a write outside any visit (committed at once) changes it again: when the
    visit commits, the committed state keeps the newer value, as the live state does."""
    from spark_ckpt.engine.mailbox_ledger import MailboxLedger

    ledger = MailboxLedger({})
    visit = ledger.begin("a", "initial", 0.0)
    ledger.wrote(visit, "k", "by the visit")
    ledger.wrote(None, "k", "outside, later")
    other = ledger.begin("b", "m2", 0.0)
    ledger.wrote(other, "j", "first")
    ledger.finished(other)
    ledger.commit(ledger.committable())
    ledger.wrote(None, "j", "outside, after b committed")
    ledger.finished(visit)
    ledger.commit(ledger.committable())
    assert ledger.shadow == {"k": "outside, later", "j": "outside, after b committed"}


def test_a_human_policy_is_refused_before_anything_runs_or_is_stored(tmp_path, monkeypatch):
    """In long-running mode a node's human answers are not journaled per message: refused up front (else a
    recovery would ask the human again), and resume_from refuses before it changes the live graph."""
    from spark.graphs import Graph

    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("SPARK_CKPT_TEST_CALLS", str(calls))
    source, counter = lrg.Source(id="source"), lrg.Counter(id="counter")
    source >> counter
    counter.human_policy = lambda node, context, result: result
    graph = wrapped(tmp_path, Graph(start=source, end=counter, idle_timeout=0.2, initial_state={"k": 1}), "human")
    with pytest.raises(UnsupportedFeatureError, match="human_policy"):
        asyncio.run(graph.run(lrg.task(3)))
    assert not calls.exists() and graph.backend.list(graph_id="human") == []
    spark_checkpoint = asyncio.run(graph.checkpoint_state())
    asyncio.run(graph.graph.state.set("k", 2))
    with pytest.raises(UnsupportedFeatureError, match="human_policy"):
        asyncio.run(graph.resume_from(spark_checkpoint))
    assert graph.get_state_snapshot()["k"] == 2
