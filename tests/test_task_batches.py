"""Spark Tasks through a checkpointed graph: ``run(Task)`` as bare Spark, the Task stored with the
execution, and batches of scheduled tasks (``run_tasks``) finished after a real SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from spark.graphs.tasks import Budget, CampaignInfo, Task, TaskScheduler
from spark.nodes.types import NodeMessage

import graphs
from spark_ckpt import CheckpointConfig, checkpointed

WORKER = Path(__file__).with_name("task_batch_worker.py")


def worker(mode: str, store: str, calls: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_TEST_")}
    environ.update(SPARK_CKPT_TEST_CALLS=str(calls), **env)
    return subprocess.run([sys.executable, str(WORKER), mode, store], env=environ, capture_output=True, text=True,
                          timeout=120)


def uninterrupted(tmp_path: Path, **env: str) -> dict:
    out = worker("run", f"sqlite:///{tmp_path}/bare.db", tmp_path / "bare-calls.txt", **env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


# -- one task -----------------------------------------------------------------------------------------
def test_a_task_runs_as_bare_spark_and_is_stored_with_its_execution(tmp_path) -> None:
    task = Task(task_id="t1", inputs=NodeMessage(content={"n": 2}), budget=Budget(max_seconds=30),
                campaign=CampaignInfo(campaign_id="c"), metadata={"owner": "ops", "ids": [1, 2]}, correlation_id="x")
    bare = graphs.chain(3)
    bare_result = asyncio.run(bare.run(task.model_copy(deep=True)))
    graph = checkpointed(graphs.chain(3), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "t.db")),
                         graph_id="g")
    result = asyncio.run(graph.run(task))
    assert result.content == bare_result.content
    state, expected = graph.get_state_snapshot(), bare.state.get_snapshot()
    for volatile in ("started_at", "updated_at", "duration_seconds"):
        state["task_metadata"].pop(volatile), expected["task_metadata"].pop(volatile)
    assert state == expected and state["task_metadata"]["task_id"] == "t1" and state["campaign"]["campaign_id"] == "c"
    stored = graph.get_last_checkpoint().run_input
    assert stored["kind"] == "task" and stored["value"]["metadata"] == {"owner": "ops", "ids": [1, 2]}
    assert stored["value"]["budget"]["max_seconds"] == 30 and stored["value"]["correlation_id"] == "x"


def test_a_task_budget_times_out_as_bare_spark_and_the_task_is_recovered_with_its_budget(tmp_path, monkeypatch) -> None:
    class Slow(graphs.Step):
        async def process(self, context):
            if self.id == "s1" and os.environ.get("SLOW"):
                await asyncio.sleep(5)
            return await super().process(context)

    def build():
        nodes = [Slow(id=f"s{i}") for i in range(3)]
        nodes[0] >> nodes[1] >> nodes[2]
        from spark.graphs import Graph
        return Graph(start=nodes[0])

    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "b.db"))
    task = Task(task_id="slow", inputs=NodeMessage(content={}), budget=Budget(max_seconds=1))
    monkeypatch.setenv("SLOW", "1")
    with pytest.raises(TimeoutError, match="max_seconds budget of 1 seconds"):
        asyncio.run(checkpointed(build(), config=config, graph_id="g").run(task))
    monkeypatch.delenv("SLOW")
    recovered = checkpointed(build(), config=config, graph_id="g")
    result = asyncio.run(recovered.recover_and_continue())
    assert result.content["step"] == "s2"
    assert recovered.last_recovery.replayed == [("s0", 0)]
    assert recovered.get_state_snapshot()["task_metadata"]["budget"]["max_seconds"] == 1


def test_spark_graph_methods_work_on_a_wrapped_graph(tmp_path) -> None:
    from spark.graphs.base import BaseGraph
    from spark.graphs.checkpoint import GraphCheckpointConfig

    graph = checkpointed(graphs.chain(2), config=CheckpointConfig(backend="memory"), graph_id="g")
    graph.configure_checkpoints(GraphCheckpointConfig(enabled=True, every_n_iterations=1))
    asyncio.run(graph.run({}))
    assert graph.get_checkpoint_history(), "Spark's own auto-checkpoints run inside the wrapped loop"
    spark_checkpoint = asyncio.run(graph.checkpoint_state(iteration=9))
    assert spark_checkpoint.state["count"] == 2
    assert isinstance(graph, BaseGraph) and graph.get_checkpoint_config() is not None


# -- a batch ------------------------------------------------------------------------------------------
def test_run_tasks_through_the_wrapper_equals_bare_spark(tmp_path) -> None:
    bare = graphs.chain(3)
    expected = asyncio.run(bare.run_tasks(TaskScheduler([Task(task_id="a", inputs=NodeMessage(content={})),
                                                          Task(task_id="b", depends_on=["a"])])))
    graph = checkpointed(graphs.chain(3), config=CheckpointConfig(backend="memory"), graph_id="g")
    got = asyncio.run(graph.run_tasks(TaskScheduler([Task(task_id="a", inputs=NodeMessage(content={})),
                                                     Task(task_id="b", depends_on=["a"])])))
    assert {k: v.content for k, v in got.completed.items()} == {k: v.content for k, v in expected.completed.items()}
    executions = {h.execution_id for h in graph.backend.executions(graph_id="g")}
    assert executions == {f"{graph.last_batch}.a", f"{graph.last_batch}.b"}


@pytest.mark.parametrize("crash", [{"SPARK_CKPT_TEST_CRASH": "s1:1"}, {"SPARK_CKPT_TEST_CRASH": "s2:2"},
                                   {"SPARK_CKPT_TEST_CRASH_AFTER_TASK": "t2"}])
@pytest.mark.parametrize("recover_with", ["recover-default", "recover-tasks"])
def test_sigkill_mid_batch_finishes_the_batch_without_running_completed_work_again(tmp_path, crash, recover_with) -> None:
    """Killed inside a task's node, or between two tasks: the batch is finished by a new process; completed
    tasks are not run again, the task in flight continues from its last checkpoint, dependencies hold,
    and the results and graph state equal an uninterrupted batch's."""
    expected = uninterrupted(tmp_path)
    store = f"sqlite:///{tmp_path}/ckpt.db"
    first = worker("run", store, tmp_path / "calls-1.txt", **crash)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    second = worker(recover_with, store, tmp_path / "calls-2.txt")
    assert second.returncode == 0, second.stderr[-3000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])
    assert out["completed"] == expected["completed"] and out["failed"] == expected["failed"] == {}
    assert out["state"] == expected["state"]
    before, after = calls(tmp_path / "calls-1.txt"), calls(tmp_path / "calls-2.txt")
    in_flight = [crash["SPARK_CKPT_TEST_CRASH"]] if "SPARK_CKPT_TEST_CRASH" in crash else []
    assert sorted(before + after) == sorted(calls(tmp_path / "bare-calls.txt") + in_flight)
    assert set(before) & set(after) == set(in_flight)
    if recover_with == "recover-tasks":  # callbacks fire for the tasks this process ran
        assert out["callbacks"][-1] == "t4" and "t1" not in out["callbacks"]


def test_campaign_budgets_still_hold_after_a_crash(tmp_path) -> None:
    """Usage charged before the crash is charged again when the batch is finished: a budget the
    uninterrupted batch exceeds at t3 is exceeded at t3 after a recovery too."""
    expected = uninterrupted(tmp_path, TOKENS="50")
    assert expected["failed"] == {"t3": "CampaignBudgetError", "t4": "TaskDependencyError"}
    store = f"sqlite:///{tmp_path}/ckpt.db"
    first = worker("run", store, tmp_path / "c1.txt", TOKENS="50", SPARK_CKPT_TEST_CRASH_AFTER_TASK="t2")
    assert first.returncode == -signal.SIGKILL
    second = worker("recover-tasks", store, tmp_path / "c2.txt", TOKENS="50")
    assert second.returncode == 0, second.stderr[-3000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])
    assert (out["completed"], out["failed"]) == (expected["completed"], expected["failed"])


def test_a_batch_id_that_exists_is_refused_before_anything_runs(tmp_path) -> None:
    from spark_ckpt.errors import ConfigError

    graph = checkpointed(graphs.chain(2), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "x.db")),
                         graph_id="g")
    asyncio.run(graph.run_tasks(TaskScheduler([Task(task_id="a")]), batch_id="batch-nightly"))
    before = graph.backend.list()
    with pytest.raises(ConfigError, match="batch-nightly.*already exists.*has completed"):
        asyncio.run(graph.run_tasks(TaskScheduler([Task(task_id="a")]), batch_id="batch-nightly"))
    assert graph.backend.list() == before


def test_recover_and_continue_finishes_a_batch_named_by_the_user(tmp_path) -> None:
    """A batch id of the user's choosing: recover_and_continue() still finds the batch the in-flight task
    belongs to and finishes the whole batch (not only that task)."""
    expected = uninterrupted(tmp_path)
    store = f"sqlite:///{tmp_path}/ckpt.db"
    first = worker("run", store, tmp_path / "n1.txt", BATCH_ID="nightly", SPARK_CKPT_TEST_CRASH="s1:1")
    assert first.returncode == -signal.SIGKILL
    second = worker("recover-default", store, tmp_path / "n2.txt")
    assert second.returncode == 0, second.stderr[-3000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])
    assert (out["completed"], out["state"]) == (expected["completed"], expected["state"])


def test_a_running_batch_is_never_taken_over_by_a_second_worker(tmp_path) -> None:
    """The batch's lease is renewed while a task runs longer than the lease lifetime: a second worker trying
    to finish the batch gets LeaseError, and the first one completes it."""
    from spark.graphs import Graph
    from spark.nodes import Node

    from spark_ckpt.errors import LeaseError

    class Slow(Node):
        async def process(self, context):
            if context.inputs.content["n"] == 1:
                await asyncio.sleep(1.6)
            seen = await context.graph_state.get("seen", [])
            await context.graph_state.set("seen", seen + [context.inputs.content["n"]])
            return {"n": context.inputs.content["n"]}

    def build(worker_id):
        config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "l.db"), lease_ttl_s=0.6)
        return checkpointed(Graph(start=Slow(id="a")), config=config, graph_id="g", worker_id=worker_id)

    def batch():
        return TaskScheduler([Task(task_id="t1", inputs=NodeMessage(content={"n": 1})),
                              Task(task_id="t2", inputs=NodeMessage(content={"n": 2}))])

    async def race():
        first, second = build("w1"), build("w2")
        running = asyncio.create_task(first.run_tasks(batch(), batch_id="b1"))
        await asyncio.sleep(1.0)
        with pytest.raises(LeaseError):
            await second.recover_tasks(batch_id="b1")
        result = await running
        return sorted(result.completed), first.get_state_snapshot()["seen"]

    assert asyncio.run(race()) == (["t1", "t2"], [1, 2])


def test_sigkill_in_a_task_run_recovers_with_the_same_task(tmp_path) -> None:
    """A graph run with a Spark Task (budget, campaign, metadata, ids) killed mid-run: a new process
    recovers with the same Task, and result and graph state (task metadata included) equal an
    uninterrupted run's."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_graph_crash import assert_recovered_like_uninterrupted, crash_and_recover

    out = crash_and_recover(tmp_path, "pipeline", f"sqlite:///{tmp_path}/ckpt.db", SPARK_CKPT_TEST_TASK="1",
                            SPARK_CKPT_TEST_CRASH="transform:2")
    metadata = out["state"].pop("task_metadata")
    campaign = out["state"].pop("campaign")
    assert_recovered_like_uninterrupted(out, "pipeline")
    assert metadata["task_id"] == "nightly-1" and metadata["status"] == "completed"
    assert metadata["metadata"] == {"owner": "ops"} and metadata["budget"]["max_seconds"] == 60
    assert campaign["campaign_id"] == "c1" and out["replayed"]
