"""The guide's "Recovery Strategies": run_with_recovery ("last", "progressive"), the manual sequence
(restore -> get_current_node -> skip_node -> continue_from_checkpoint), and run() after a restore,
which continues or refuses but never applies work twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from spark.graphs import Graph
from spark.nodes import Node

from spark_ckpt import CheckpointConfig, checkpointed
from spark_ckpt.errors import (
    ConfigError, NothingToRecoverError, RestoreConflictError, RunStopped, SparkCkptError,
)

CALLS: list[str] = []
#: node key -> how many more visits of it raise
FAILURES: dict[str, int] = {}
WORKER = Path(__file__).with_name("crash_worker.py")


class Step(Node):
    """Counts in graph state; raises while FAILURES says so (after changing state, as a real failure
    half-way through a node would)."""

    async def process(self, context):
        CALLS.append(self.id)
        count = await context.graph_state.get("count", 0)
        await context.graph_state.set("count", count + 1)
        await context.graph_state.set(f"seen_{self.id}", count)
        left = FAILURES.get(self.id, 0)
        if left:
            FAILURES[self.id] = left - 1
            error = FAILURES.get("error", RuntimeError)
            raise error(f"injected failure in {self.id}")
        return {"step": self.id, "count": count + 1, "input": context.inputs.content}


def chain(n: int = 4) -> Graph:
    nodes = [Step(id=f"s{i}") for i in range(n)]
    for a, b in zip(nodes, nodes[1:]):
        a >> b
    return Graph(start=nodes[0], initial_state={"count": 0})


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()
    FAILURES.clear()
    yield
    FAILURES.clear()


@pytest.fixture
def config(tmp_path) -> CheckpointConfig:
    return CheckpointConfig(backend="sqlite", path=str(tmp_path / "strategies.db"))


def uninterrupted(inputs=None, n: int = 4) -> tuple[dict, dict]:
    graph = chain(n)
    result = asyncio.run(graph.run(inputs if inputs is not None else {"job": 1}))
    CALLS.clear()
    return result.content, graph.state.get_snapshot()


# -- run_with_recovery ------------------------------------------------------------------------------
def test_last_strategy_recovers_from_the_newest_checkpoint_without_rerunning_completed_visits(config) -> None:
    expected, expected_state = uninterrupted()
    graph = checkpointed(chain(), config=config, graph_id="last")
    FAILURES["s2"] = 2
    result = asyncio.run(graph.run_with_recovery({"job": 1}, max_retries=3))
    assert result.content == expected and graph.get_state_snapshot() == expected_state
    assert CALLS == ["s0", "s1", "s2", "s2", "s2", "s3"]  # only the failing visit ran again
    steps = graph.last_recovery.steps
    assert [(s.step, s.outcome) for s in steps] == [("run", "failed"), ("last", "failed"), ("last", "completed")]
    assert len({s.execution_id for s in steps}) == 1 and steps[0].execution_id
    assert graph.last_recovery.replayed == [("s0", 0), ("s1", 0)]
    assert [h.status for h in graph.backend.executions(graph_id="last")] == ["completed"]


def test_retries_used_up_raise_the_last_error_and_leave_the_execution_recoverable(config) -> None:
    graph = checkpointed(chain(), config=config, graph_id="used-up")
    FAILURES["s1"] = 10
    with pytest.raises(RuntimeError, match="injected failure in s1"):
        asyncio.run(graph.run_with_recovery({"job": 1}, max_retries=2))
    assert [s.step for s in graph.last_recovery.steps] == ["run", "last", "last"]
    assert CALLS == ["s0", "s1", "s1", "s1"]
    FAILURES.clear()
    CALLS.clear()
    result = asyncio.run(graph.recover_and_continue())
    assert result.content["count"] == 4 and CALLS == ["s1", "s2", "s3"]


def test_progressive_goes_to_an_earlier_checkpoint_then_closes_the_failed_execution(config) -> None:
    expected, expected_state = uninterrupted()
    graph = checkpointed(chain(), config=config, graph_id="prog")
    FAILURES["s2"] = 2  # the first run and the recovery from the newest checkpoint both fail
    result = asyncio.run(graph.run_with_recovery({"job": 1}, strategy="progressive"))
    assert result.content == expected and graph.get_state_snapshot() == expected_state
    steps = graph.last_recovery.steps
    assert [(s.step, s.outcome) for s in steps] == [("run", "failed"), ("last", "failed"), ("earlier", "completed")]
    # "earlier" is one boundary before the newest (after s0): s1 onwards ran again, on that state
    assert CALLS == ["s0", "s1", "s2", "s2", "s1", "s2", "s3"]
    failed = steps[0].execution_id
    assert steps[2].execution_id != failed and steps[2].from_checkpoint.startswith(f"ck-{failed}-")
    # the failed execution is closed: no later recovery finishes its work a second time
    assert {h.execution_id: h.status for h in graph.backend.executions(graph_id="prog")}[failed] == "completed"
    with pytest.raises(NothingToRecoverError):
        asyncio.run(graph.recover_and_continue())
    CALLS.clear()
    again = asyncio.run(graph.recover_and_continue(execution_id=failed))
    assert again.content == expected and CALLS == []
    assert graph.last_recovery.superseded_by == steps[2].execution_id


def test_progressive_ends_with_a_fresh_run_from_the_state_the_run_started_with(config) -> None:
    expected, expected_state = uninterrupted()
    graph = checkpointed(chain(), config=config, graph_id="fresh")
    FAILURES["s1"] = 3  # run, newest and earlier (there is only the boundary after s0) fail
    result = asyncio.run(graph.run_with_recovery({"job": 1}, strategy="progressive", max_retries=3))
    steps = [(s.step, s.outcome) for s in graph.last_recovery.steps]
    assert steps[0] == ("run", "failed") and steps[-1] == ("fresh", "completed")
    # nothing the failed attempts wrote leaks into the fresh run: same result and state as uninterrupted
    assert result.content == expected and graph.get_state_snapshot() == expected_state
    assert [h.status for h in graph.backend.executions(graph_id="fresh")] == ["completed"] * len(
        graph.backend.executions(graph_id="fresh"))


def test_only_retry_on_exceptions_are_retried(config) -> None:
    graph = checkpointed(chain(), config=config, graph_id="retry-on")
    FAILURES.update(s1=1, error=ValueError)
    with pytest.raises(ValueError):
        asyncio.run(graph.run_with_recovery({"job": 1}, retry_on=(KeyError,)))
    assert CALLS == ["s0", "s1"]


def test_a_run_stopped_on_purpose_is_not_retried(config) -> None:
    graph = checkpointed(chain(), config=config, graph_id="stopped")
    FAILURES.update(s1=5, error=RunStopped)
    with pytest.raises(RunStopped):
        asyncio.run(graph.run_with_recovery({"job": 1}, max_retries=3))
    assert CALLS == ["s0", "s1"]


def test_backoff_waits_before_each_retry(config, monkeypatch) -> None:
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds, *args, **kwargs):
        slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr("spark_ckpt.adapters.graph_recovery_strategies.asyncio.sleep", sleep)
    graph = checkpointed(chain(), config=config, graph_id="backoff")
    FAILURES["s1"] = 2
    asyncio.run(graph.run_with_recovery({"job": 1}, backoff=0.5))
    assert slept == [0.5, 1.0]
    seen: list[int] = []
    FAILURES["s1"] = 2
    graph2 = checkpointed(chain(), config=config, graph_id="backoff-fn")
    asyncio.run(graph2.run_with_recovery({"job": 1}, backoff=lambda attempt: seen.append(attempt) or 0))
    assert seen == [1, 2]


@pytest.mark.parametrize("kwargs", [
    {"strategy": "newest"}, {"max_retries": -1}, {"backoff": -1}, {"retry_on": "RuntimeError"}, {"offset": 0},
])
def test_bad_arguments_are_refused_before_anything_runs(config, kwargs) -> None:
    graph = checkpointed(chain(), config=config, graph_id="bad")
    with pytest.raises(ConfigError):
        asyncio.run(graph.run_with_recovery({"job": 1}, **kwargs))
    assert CALLS == [] and graph.list_checkpoints() == []


# -- after a real crash -----------------------------------------------------------------------------
def _worker(mode: str, store: str, calls: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_TEST_")}
    environ.update(SPARK_CKPT_TEST_CALLS=str(calls), **env)
    return subprocess.run([sys.executable, str(WORKER), mode, "chain", store, "rwr", json.dumps({"n": 4})],
                          env=environ, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("strategy,crash_at", [("last", "s1:0"), ("last", "s3:0"), ("progressive", "s2:0")])
def test_run_with_recovery_after_sigkill_continues_the_crashed_run(tmp_path, strategy, crash_at) -> None:
    """A process running run_with_recovery is killed; the next one, called the same way, continues the
    crashed execution: what completed is replayed, only the rest runs."""
    store = f"sqlite:///{tmp_path}/rwr.db"
    first = _worker("run_with_recovery", store, tmp_path / "calls-1", SPARK_CKPT_TEST_CRASH=crash_at,
                    SPARK_CKPT_TEST_RECOVERY_STRATEGY=strategy)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    second = _worker("run_with_recovery", store, tmp_path / "calls-2", SPARK_CKPT_TEST_RECOVERY_STRATEGY=strategy)
    assert second.returncode == 0, second.stderr[-3000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])
    before = (tmp_path / "calls-1").read_text().split()
    after = (tmp_path / "calls-2").read_text().split()
    crashed = int(crash_at[1])
    assert before == [f"s{i}:0" for i in range(crashed + 1)]
    assert after == [f"s{i}:0" for i in range(crashed, 4)]  # the crashed visit and the rest, once
    assert out["replayed"] == [f"s{i}:0" for i in range(crashed)]
    assert out["steps"] == [["resume", "completed"]]
    assert out["result"]["count"] == 4 and out["state"]["count"] == 4


# -- the guide's manual recovery ----------------------------------------------------------------------
def test_guide_manual_recovery_from_a_restore_point_taken_before_the_run(config) -> None:
    """The guide's sequence as written: restore point, failed run, restore, get_current_node, skip_node,
    continue_from_checkpoint. It continues the run that failed (what completed is not run again)."""
    graph = checkpointed(chain(), config=config, graph_id="manual")
    checkpoint_id = graph.create_checkpoint()
    FAILURES["s2"] = 1
    with pytest.raises(RuntimeError):
        asyncio.run(graph.run({"job": 1}))
    graph.restore_from_checkpoint(checkpoint_id)
    failure_node = graph.get_current_node()
    assert failure_node == "s2"
    graph.skip_node(failure_node)
    result = asyncio.run(graph.continue_from_checkpoint())
    assert CALLS == ["s0", "s1", "s2", "s3"]
    assert graph.last_recovery.skipped == [("s2", 0)]
    assert result.content["step"] == "s3" and result.content["input"]["step"] == "s1"  # s2 passed its input on
    assert all(h.status == "completed" for h in graph.backend.executions(graph_id="manual"))


def test_a_restore_point_with_no_run_after_it_has_nothing_to_continue(config) -> None:
    graph = checkpointed(chain(), config=config, graph_id="nothing")
    point = graph.create_checkpoint()
    graph.restore_from_checkpoint(point)
    assert graph.get_current_node() is None
    with pytest.raises(ConfigError, match="no node to skip"):
        graph.skip_node(graph.get_current_node())
    with pytest.raises(NothingToRecoverError, match="restore point"):
        asyncio.run(graph.continue_from_checkpoint())
    assert CALLS == []


def test_guide_automatic_recovery_restore_then_run_continues_the_failed_run(config) -> None:
    """The guide's AutoRecoveringGraph loop (run; on failure restore the last checkpoint; run again)
    continues the failed execution instead of applying its completed work a second time."""
    expected, expected_state = uninterrupted()
    graph = checkpointed(chain(), config=config, graph_id="auto")
    FAILURES["s2"] = 1
    for attempt in range(3):
        try:
            result = asyncio.run(graph.run({"job": 1}))
            break
        except Exception:
            last_checkpoint = graph.get_last_checkpoint()
            assert last_checkpoint
            graph.restore_from_checkpoint(last_checkpoint)
    assert attempt == 1
    assert CALLS == ["s0", "s1", "s2", "s2", "s3"]
    assert result.content == expected and graph.get_state_snapshot() == expected_state
    assert len(graph.backend.executions(graph_id="auto")) == 1


def test_run_after_restoring_an_unfinished_run_with_other_inputs_is_refused(config) -> None:
    graph = checkpointed(chain(), config=config, graph_id="conflict")
    FAILURES["s1"] = 1
    with pytest.raises(RuntimeError):
        asyncio.run(graph.run({"job": 1}))
    graph.restore_from_checkpoint(graph.get_last_checkpoint())
    stored = len(graph.list_checkpoints())
    CALLS.clear()
    with pytest.raises(RestoreConflictError, match="continue_from_checkpoint"):
        asyncio.run(graph.run({"job": 2}))
    assert CALLS == [] and len(graph.list_checkpoints()) == stored


def test_run_after_restoring_a_restore_point(config) -> None:
    """Same inputs as the run that failed after the restore point: that run is continued. Other inputs:
    a new run starts on the restored state (the restore point's purpose)."""
    graph = checkpointed(chain(), config=config, graph_id="point-run")
    point = graph.create_checkpoint()
    FAILURES["s2"] = 1
    with pytest.raises(RuntimeError):
        asyncio.run(graph.run({"job": 1}))
    graph.restore_from_checkpoint(point)
    CALLS.clear()
    result = asyncio.run(graph.run({"job": 1}))
    assert CALLS == ["s2", "s3"] and result.content["count"] == 4
    graph.restore_from_checkpoint(point)
    CALLS.clear()
    result = asyncio.run(graph.run({"job": 2}))
    assert CALLS == ["s0", "s1", "s2", "s3"] and result.content["count"] == 4  # from the point's count 0


def test_run_after_restoring_a_completed_run_starts_on_its_state(config) -> None:
    """The guide's basic loop: restore an earlier checkpoint of a finished run, then keep processing."""
    graph = checkpointed(chain(2), config=config, graph_id="basic")
    asyncio.run(graph.run({"job": 1}))
    asyncio.run(graph.run({"job": 2}))
    first_run_end = graph.list_checkpoints()[-1].execution_id
    record = [h for h in graph.list_checkpoints(execution_id=first_run_end)][0]
    graph.restore_from_checkpoint(record.checkpoint_id)
    assert graph.get_state_snapshot()["count"] == 2
    result = asyncio.run(graph.run({"job": 3}))
    assert result.content["count"] == 4


# -- the guide's dict views -----------------------------------------------------------------------------
def test_checkpoints_read_like_the_guides_dicts(config) -> None:
    graph = checkpointed(chain(2), config=config, graph_id="dicts", graph_version="2.1.0")
    asyncio.run(graph.run({"job": 1}))
    ck = graph.get_last_checkpoint()
    assert ck["graph_state"] == graph.get_state_snapshot() and ck.get("graph_state")["count"] == 2
    assert ck["graph_metadata"] == {"graph_id": "dicts", "graph_version": "2.1.0", "execution_id": ck.execution_id}
    assert ck["version"] == "6.0" and ck["content_version"] == 6
    assert ck["timestamp"].endswith("Z") and ck["created_at"] == ck.timestamp
    assert set(ck["node_states"]["s1"]) >= {"context_snapshot", "processing", "process_count"}
    assert [v["node"] for v in ck["execution_history"]] == ["s0", "s1"]
    assert ck.get("no such field", "default") == "default" and "graph_state" in ck
    whole = ck.to_dict()
    assert list(whole)[:7] == ["version", "timestamp", "graph_metadata", "graph_state", "node_states",
                               "current_node", "execution_history"]
    assert whole["status"] == "completed" and dict(ck) == whole
    with pytest.raises(KeyError):
        ck["nope"]
    header = graph.list_checkpoints()[0]
    assert header["checkpoint_id"] == ck.checkpoint_id and header["timestamp"].endswith("Z")
    assert isinstance(ck, object) and bool(ck)


def test_the_error_is_one_of_ours() -> None:
    assert issubclass(RestoreConflictError, SparkCkptError)


def test_run_after_restoring_an_earlier_checkpoint_of_a_failed_run_replaces_that_run(config) -> None:
    """Restoring an earlier checkpoint of the failed run and running the same inputs continues from there
    (a fork); the failed run is closed, so recover_and_continue() cannot finish it a second time."""
    graph = checkpointed(chain(), config=config, graph_id="earlier-run")
    FAILURES["s2"] = 1
    with pytest.raises(RuntimeError):
        asyncio.run(graph.run({"job": 1}))
    failed = graph.list_checkpoints()[0].execution_id
    graph.restore_from_checkpoint(graph.get_checkpoint(offset=2))  # the boundary after s0
    CALLS.clear()
    result = asyncio.run(graph.run({"job": 1}))
    assert CALLS == ["s1", "s2", "s3"] and result.content["count"] == 4
    with pytest.raises(NothingToRecoverError):
        asyncio.run(graph.recover_and_continue())
    assert asyncio.run(graph.recover_and_continue(execution_id=failed)).content == result.content


def test_get_checkpoint_by_offset_or_id_and_bad_arguments(config) -> None:
    graph = checkpointed(chain(2), config=config, graph_id="get")
    asyncio.run(graph.run({"job": 1}))
    newest = graph.get_checkpoint(0)
    assert graph.get_checkpoint(newest.checkpoint_id).checkpoint_id == newest.checkpoint_id
    assert graph.get_checkpoint("ck-nope-0", missing_ok=True) is None
    for bad in (-1, 1.5, None, True):
        with pytest.raises(ConfigError):
            graph.get_checkpoint(bad)


# -- what run_with_recovery must never do ----------------------------------------------------------------
def test_a_run_refused_before_it_stored_anything_is_not_recovered_as_some_older_run(config) -> None:
    """A refusal before the run starts (here RestoreConflictError) is raised as it is: the retry must not
    recover whatever execution this graph object ran before (and return its result)."""
    graph = checkpointed(chain(), config=config, graph_id="stale")
    FAILURES["s1"] = 1
    with pytest.raises(RuntimeError):
        asyncio.run(graph.run({"job": "C"}))
    c_record = graph.get_last_checkpoint()
    asyncio.run(graph.run({"job": "A"}))
    graph.restore_from_checkpoint(c_record)
    with pytest.raises(RestoreConflictError):
        asyncio.run(graph.run_with_recovery({"job": "B"}))


def test_never_forks_an_execution_another_worker_holds(config) -> None:
    from spark_ckpt.errors import LeaseError

    graph = checkpointed(chain(5), config=config, graph_id="held")
    FAILURES["s2"] = 1
    with pytest.raises(RuntimeError):
        asyncio.run(graph.run({"job": 1}))
    failed = graph.list_checkpoints()[0].execution_id
    graph.backend.acquire_lease(failed, "other-worker", 60)  # another live worker is on it
    CALLS.clear()
    FAILURES["s2"] = 5
    with pytest.raises(LeaseError):
        asyncio.run(graph.run_with_recovery({"job": 1}, strategy="progressive"))
    assert CALLS == [] and [h.execution_id for h in graph.backend.executions(graph_id="held")] == [failed]


class Pay(Step):
    pass


def test_progressive_never_forks_past_a_completed_visit_not_safe_to_rerun(config) -> None:
    from spark_ckpt import not_safe_to_rerun
    from spark_ckpt.errors import UnsafeToRetryError

    def build():
        nodes = [Step(id="s0"), not_safe_to_rerun(Pay(id="pay")), Step(id="s2"), Step(id="s3")]
        for a, b in zip(nodes, nodes[1:]):
            a >> b
        return Graph(start=nodes[0], initial_state={"count": 0})

    graph = checkpointed(build(), config=config, graph_id="unsafe-fork")
    FAILURES["s3"] = 3  # run and "last" fail; "earlier" would fork from before pay
    with pytest.raises(UnsafeToRetryError, match="pay"):
        asyncio.run(graph.run_with_recovery({"job": 1}, strategy="progressive", offset=2))
    assert CALLS.count("pay") == 1
    FAILURES["s3"] = 0
    result = asyncio.run(graph.run_with_recovery({"job": 1}, strategy="progressive", allow_unsafe_rerun=True))
    assert result.content["count"] == 4 and CALLS.count("pay") == 1  # resumed in place: pay not run again


def test_a_crash_between_hand_over_and_fork_start_still_recovers_once(config, monkeypatch) -> None:
    """progressive hands the failed execution over to its fork before the fork starts: killed right then,
    the next run_with_recovery follows the hand-over and starts the fork under its id; nothing twice."""
    from spark_ckpt.adapters import graph as graph_module

    graph = checkpointed(chain(), config=config, graph_id="handover")
    FAILURES["s2"] = 2
    real_continue = graph_module.CheckpointedGraph._continue

    async def die_before_the_fork(self, record, **kwargs):
        if kwargs.get("fork_id"):
            raise KeyboardInterrupt  # the process stops here
        return await real_continue(self, record, **kwargs)

    monkeypatch.setattr(graph_module.CheckpointedGraph, "_continue", die_before_the_fork)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(graph.run_with_recovery({"job": 1}, strategy="progressive"))
    monkeypatch.setattr(graph_module.CheckpointedGraph, "_continue", real_continue)
    before = list(CALLS)
    again = checkpointed(chain(), config=config, graph_id="handover")
    result = asyncio.run(again.run_with_recovery({"job": 1}, strategy="progressive"))
    assert result.content["count"] == 4
    assert CALLS[len(before):] == ["s1", "s2", "s3"]  # the fork from the boundary after s0, once
    assert all(h.status == "completed" for h in again.backend.executions(graph_id="handover"))
    with pytest.raises(NothingToRecoverError):
        asyncio.run(again.recover_and_continue())


def test_a_subgraph_runs_under_any_strategy(config) -> None:
    import attrs
    import subgraph_graphs

    for strategy, options in [("after_nodes", {"nodes": ["pre"]}), ("adaptive", {"max_seconds": 5}),
                              ("cost_aware", {"failure_probability": 0.5})]:
        graph = checkpointed(subgraph_graphs.sub(), config=attrs.evolve(
            config, strategy=strategy, policy_options=options), graph_id=f"sub-{strategy}")
        assert asyncio.run(graph.run({"job": 1})) is not None


def test_the_guide_manual_sequence_only_follows_runs_started_after_that_restore_point(config) -> None:
    """A run that failed after the restore point but was not started from it (another graph object,
    another process) is not the one continue_from_checkpoint() picks up."""
    graph = checkpointed(chain(), config=config, graph_id="point-link")
    point = graph.create_checkpoint()
    other = checkpointed(chain(), config=config, graph_id="point-link")
    FAILURES["s2"] = 1
    with pytest.raises(RuntimeError):
        asyncio.run(other.run({"job": 9}))
    graph.restore_from_checkpoint(point)
    assert graph.get_current_node() is None
    with pytest.raises(NothingToRecoverError):
        asyncio.run(graph.continue_from_checkpoint())
